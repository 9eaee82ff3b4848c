//! Fuzz target: `outlast.toml` text. Every input is a validated configuration or a typed
//! error naming a key; nothing may panic.
#![no_main]

use std::path::Path;

use clap::Parser as _;
use libfuzzer_sys::fuzz_target;
use outlast_gateway::config::{Args, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(args) = Args::try_parse_from(["outlast"]) else {
        return;
    };
    if let Err(e) = Config::from_sources(args, Some((Path::new("fuzz.toml"), text))) {
        assert!(!e.to_string().is_empty());
    }
});
