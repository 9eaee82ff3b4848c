//! Fuzz target: the JSON codec (WebSocket text frames, HTTP bodies) on arbitrary bytes, for
//! client and server messages (the property: `common/codec.rs`).
#![no_main]

#[path = "common/codec.rs"]
mod codec;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| codec::check(outlast_protocol::Codec::Json, data));
