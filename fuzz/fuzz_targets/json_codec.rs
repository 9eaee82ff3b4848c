//! Fuzz target: the JSON codec (WebSocket text frames, HTTP bodies) on arbitrary bytes, for
//! client and server messages. Whatever decodes must encode again, and encoding what that
//! decodes to gives the same bytes (no value changes on a round trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outlast_protocol::Codec;
use outlast_protocol::codec::Frame;
use outlast_protocol::v1::{ClientMsg, ServerMsg};

fn bytes(frame: &Frame) -> &[u8] {
    match frame {
        Frame::Binary(b) => b,
        Frame::Text(t) => t.as_bytes(),
    }
}

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(codec: Codec, msg: &T) {
    let first = codec.encode(msg).expect("a decoded message encodes");
    let again: T = codec
        .decode(bytes(&first))
        .expect("an encoded message decodes");
    let second = codec.encode(&again).expect("encodes twice");
    assert_eq!(
        bytes(&first),
        bytes(&second),
        "round trip changed the message"
    );
}

fuzz_target!(|data: &[u8]| {
    let codec = Codec::Json;
    if let Ok(msg) = codec.decode_client(data, 1 << 20) {
        round_trip::<ClientMsg>(codec, &msg);
    }
    if let Ok(msg) = codec.decode::<ServerMsg>(data) {
        round_trip(codec, &msg);
    }
});
