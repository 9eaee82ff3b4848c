//! MessagePack and JSON codecs: the same messages, two encodings, chosen by subprotocol.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ErrorCode;
use crate::v1::{CLIENT_TYPES, ClientMsg};

/// Subprotocol for MessagePack in binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "outlast.v1.msgpack";
/// Subprotocol for JSON in text frames.
pub const SUBPROTOCOL_JSON: &str = "outlast.v1.json";

/// The encoding of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// MessagePack maps with field names, in binary frames.
    MsgPack,
    /// UTF-8 JSON, in text frames.
    Json,
}

/// An encoded message and the frame type it must travel in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A binary frame (MessagePack).
    Binary(Vec<u8>),
    /// A text frame (JSON).
    Text(String),
}

impl Frame {
    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Binary(b) => b.len(),
            Frame::Text(t) => t.len(),
        }
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why bytes could not be decoded into a message. Never fatal to a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not valid MessagePack/JSON, or not a map with a string `type`.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The `type` is not one this protocol version knows.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The `type` is known but the fields are wrong.
    #[error("invalid {kind} message: {reason}")]
    Invalid {
        /// The message type.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// Larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A text frame on a MessagePack connection or a binary frame on a JSON one.
    #[error("{0} frames are not used by this subprotocol")]
    WrongFrameType(&'static str),
}

impl DecodeError {
    /// The error code sent back to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Malformed(_) | DecodeError::WrongFrameType(_) => {
                ErrorCode::MalformedMessage
            }
            DecodeError::UnknownType(_) => ErrorCode::UnknownMessageType,
            DecodeError::Invalid { .. } => ErrorCode::InvalidMessage,
            DecodeError::TooLarge { .. } => ErrorCode::MessageTooLarge,
        }
    }
}

/// Just enough of a message to classify a decode failure and answer with its `req`.
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    req: Option<u64>,
}

impl Codec {
    /// The codec for a negotiated subprotocol.
    pub fn from_subprotocol(name: &str) -> Option<Codec> {
        match name {
            SUBPROTOCOL_MSGPACK => Some(Codec::MsgPack),
            SUBPROTOCOL_JSON => Some(Codec::Json),
            _ => None,
        }
    }

    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::MsgPack => SUBPROTOCOL_MSGPACK,
            Codec::Json => SUBPROTOCOL_JSON,
        }
    }

    /// Encodes any wire message. Only fails for values serde cannot represent,
    /// which the protocol's types never contain.
    pub fn encode<T: Serialize>(self, msg: &T) -> Result<Frame, EncodeError> {
        match self {
            Codec::MsgPack => rmp_serde::to_vec_named(msg)
                .map(Frame::Binary)
                .map_err(|e| EncodeError(e.to_string())),
            Codec::Json => serde_json::to_string(msg)
                .map(Frame::Text)
                .map_err(|e| EncodeError(e.to_string())),
        }
    }

    /// Decodes any wire message from a frame payload (no classification of failures).
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        match self {
            Codec::MsgPack => {
                rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
            }
            Codec::Json => {
                serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
            }
        }
    }

    /// Decodes a client message, telling malformed bytes, unknown types and bad fields apart.
    /// On failure also returns the request's `req` when it could be read, for the error reply.
    pub fn decode_client(
        self,
        bytes: &[u8],
        limit: usize,
    ) -> Result<ClientMsg, (DecodeError, Option<u64>)> {
        if bytes.len() > limit {
            return Err((
                DecodeError::TooLarge {
                    size: bytes.len(),
                    limit,
                },
                None,
            ));
        }
        match self.decode::<ClientMsg>(bytes) {
            Ok(msg) => Ok(msg),
            Err(DecodeError::Malformed(reason)) => match self.decode::<Probe>(bytes) {
                Ok(probe) if !CLIENT_TYPES.contains(&probe.kind.as_str()) => Err((
                    DecodeError::UnknownType(truncate(&probe.kind, 64)),
                    probe.req,
                )),
                Ok(probe) => Err((
                    DecodeError::Invalid {
                        kind: probe.kind,
                        reason,
                    },
                    probe.req,
                )),
                Err(_) => Err((DecodeError::Malformed(reason), None)),
            },
            Err(other) => Err((other, None)),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// A value could not be encoded (never happens for protocol types).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encode failed: {0}")]
pub struct EncodeError(pub String);
