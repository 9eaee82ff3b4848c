//! Shared by the codec fuzz targets: decode arbitrary bytes as client and server messages; a
//! message that decodes must encode, and encoding what that decodes to gives the same bytes.

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

/// The property, for one codec.
pub fn check(codec: Codec, data: &[u8]) {
    if let Ok(msg) = codec.decode_client(data, 1 << 20) {
        round_trip::<ClientMsg>(codec, &msg);
    }
    if let Ok(msg) = codec.decode::<ServerMsg>(data) {
        round_trip(codec, &msg);
    }
}
