//! Fuzz target: the MessagePack codec (WebSocket binary frames) on arbitrary bytes, for client
//! and server messages (the property: `common/codec.rs`).
#![no_main]

#[path = "common/codec.rs"]
mod codec;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| codec::check(outlast_protocol::Codec::MsgPack, data));
