//! Fuzz target: what arrives from a ComfyUI server on its WebSocket: text messages
//! (`{type, data}`) and binary preview frames. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outlast_gateway::backend::comfyui::messages::{parse_binary, parse_text};

fuzz_target!(|data: &[u8]| {
    let _ = parse_binary(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_text(text);
    }
});
