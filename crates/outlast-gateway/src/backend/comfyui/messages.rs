//! ComfyUI's WebSocket messages, typed: the JSON `{type, data}` events and the binary preview
//! frames (see docs/comfyui.md and the ComfyUI reference).
//!
//! Parsing is lenient the way ComfyUI needs: fields ComfyUI sometimes leaves out are optional,
//! an unknown `type` is [`Event::Other`], and a frame that cannot be read is
//! [`Incoming::Ignored`]. Every frame but a pong still counts as a sign of life.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What arrives on ComfyUI's WebSocket.
#[derive(Debug)]
pub enum Incoming {
    /// A JSON message `{type, data}`.
    Event(Event),
    /// A binary preview image (type 1, or type 4 with its metadata's prompt id).
    Preview {
        /// Media type of `image`.
        mime: &'static str,
        /// The encoded image.
        image: Vec<u8>,
        /// Set by type 4 frames.
        prompt_id: Option<String>,
    },
    /// An answer to our ping.
    Pong,
    /// Anything else (other binary types, text that is not JSON).
    Ignored,
}

/// A JSON event, by its `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `status`: the queue length (sent to every socket).
    Status(Status),
    /// `execution_start`: a prompt began.
    ExecutionStart(PromptRef),
    /// `executing`: a node began; `node: null` with a prompt id means the prompt ended.
    Executing(Executing),
    /// `progress`: a step of a node (sampler steps).
    Progress(Progress),
    /// `executed`: a node finished with UI output.
    Executed(Executed),
    /// `execution_error`: a node raised.
    ExecutionError(ExecutionError),
    /// `execution_interrupted`: the prompt was interrupted.
    ExecutionInterrupted(ExecutionInterrupted),
    /// `execution_cached`: nodes whose results came from ComfyUI's cache.
    ExecutionCached(ExecutionCached),
    /// `execution_success`: the prompt finished.
    ExecutionSuccess(PromptRef),
    /// A type the adapter does not read, or a known type whose `data` is malformed.
    Other(String),
}

/// `status` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Status {
    /// `{"exec_info": {"queue_remaining": n}}`; the adapter counts from `/queue` instead.
    #[serde(default)]
    pub status: Option<Value>,
    /// The socket's client id (sent on connect).
    #[serde(default)]
    pub sid: Option<String>,
}

/// Data of events that only name their prompt.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PromptRef {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
}

/// `executing` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Executing {
    /// The node that began; `None` when the prompt ended (or on connect).
    #[serde(default)]
    pub node: Option<String>,
    /// The prompt; absent in the message sent right after connecting.
    #[serde(default)]
    pub prompt_id: Option<String>,
}

/// `progress` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Progress {
    /// Steps done.
    #[serde(default)]
    pub value: Option<u64>,
    /// Steps in all.
    #[serde(default)]
    pub max: Option<u64>,
    /// The node stepping.
    #[serde(default)]
    pub node: Option<String>,
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
}

/// `executed` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Executed {
    /// The node.
    #[serde(default)]
    pub node: Option<String>,
    /// Its UI output (the files it wrote). The adapter reads results from the history.
    #[serde(default)]
    pub output: Option<Value>,
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
}

/// `execution_error` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecutionError {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The failing node.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Its class.
    #[serde(default)]
    pub node_type: Option<String>,
    /// The Python exception's class.
    #[serde(default)]
    pub exception_type: Option<String>,
    /// The Python exception's message.
    #[serde(default)]
    pub exception_message: Option<String>,
    /// The Python traceback, one item per line group.
    #[serde(default)]
    pub traceback: Option<Vec<Value>>,
}

/// `execution_interrupted` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecutionInterrupted {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The node that was running.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Its class.
    #[serde(default)]
    pub node_type: Option<String>,
}

/// `execution_cached` data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecutionCached {
    /// The nodes answered from the cache.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
}

fn typed<T: DeserializeOwned>(kind: &str, data: Value, wrap: fn(T) -> Event) -> Event {
    match serde_json::from_value(data) {
        Ok(v) => wrap(v),
        Err(_) => Event::Other(kind.to_owned()),
    }
}

impl Event {
    /// The event `kind` with its `data` (as on the socket, or in a history entry's
    /// `status.messages`).
    pub fn from_parts(kind: &str, data: Value) -> Event {
        match kind {
            "status" => typed(kind, data, Event::Status),
            "execution_start" => typed(kind, data, Event::ExecutionStart),
            "executing" => typed(kind, data, Event::Executing),
            "progress" => typed(kind, data, Event::Progress),
            "executed" => typed(kind, data, Event::Executed),
            "execution_error" => typed(kind, data, Event::ExecutionError),
            "execution_interrupted" => typed(kind, data, Event::ExecutionInterrupted),
            "execution_cached" => typed(kind, data, Event::ExecutionCached),
            "execution_success" => typed(kind, data, Event::ExecutionSuccess),
            other => Event::Other(other.to_owned()),
        }
    }

    /// The prompt the event is about, when it names one.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            Event::ExecutionStart(d) | Event::ExecutionSuccess(d) => d.prompt_id.as_deref(),
            Event::Executing(d) => d.prompt_id.as_deref(),
            Event::Progress(d) => d.prompt_id.as_deref(),
            Event::Executed(d) => d.prompt_id.as_deref(),
            Event::ExecutionError(d) => d.prompt_id.as_deref(),
            Event::ExecutionInterrupted(d) => d.prompt_id.as_deref(),
            Event::ExecutionCached(d) => d.prompt_id.as_deref(),
            Event::Status(_) | Event::Other(_) => None,
        }
    }
}

/// Parses a text frame: `{"type": …, "data": …}`.
pub fn parse_text(text: &str) -> Incoming {
    match serde_json::from_str::<Value>(text) {
        Ok(mut v) => {
            let kind = v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let data = v.get_mut("data").map(Value::take).unwrap_or(Value::Null);
            Incoming::Event(Event::from_parts(&kind, data))
        }
        Err(_) => Incoming::Ignored,
    }
}

/// Parses a binary frame: `[u32 type][payload]`, big-endian.
pub fn parse_binary(frame: &[u8]) -> Incoming {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
    };
    let mime = |fmt: u32| if fmt == 2 { "image/png" } else { "image/jpeg" };
    match u32_at(0) {
        Some(1) => match (u32_at(4), frame.get(8..)) {
            (Some(fmt), Some(image)) if !image.is_empty() => Incoming::Preview {
                mime: mime(fmt),
                image: image.to_vec(),
                prompt_id: None,
            },
            _ => Incoming::Ignored,
        },
        Some(4) => {
            let Some(len) = u32_at(4).and_then(|l| usize::try_from(l).ok()) else {
                return Incoming::Ignored;
            };
            let (Some(meta), Some(image)) = (
                frame.get(8..8 + len),
                frame.get(8usize.saturating_add(len)..),
            ) else {
                return Incoming::Ignored;
            };
            let Ok(meta) = serde_json::from_slice::<Value>(meta) else {
                return Incoming::Ignored;
            };
            if image.is_empty() {
                return Incoming::Ignored;
            }
            let mime = match meta.get("image_type").and_then(Value::as_str) {
                Some("image/png") => "image/png",
                Some("image/webp") => "image/webp",
                _ => "image/jpeg",
            };
            Incoming::Preview {
                mime,
                image: image.to_vec(),
                prompt_id: meta
                    .get("prompt_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }
        }
        _ => Incoming::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> Event {
        match parse_text(text) {
            Incoming::Event(e) => e,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn json_events_parse_by_type_and_name_their_prompt() {
        let cases: &[(&str, Event)] = &[
            (
                r#"{"type":"executing","data":{"node":"3","display_node":"3","prompt_id":"p"}}"#,
                Event::Executing(Executing {
                    node: Some("3".into()),
                    prompt_id: Some("p".into()),
                }),
            ),
            (
                r#"{"type":"executing","data":{"node":null}}"#,
                Event::Executing(Executing {
                    node: None,
                    prompt_id: None,
                }),
            ),
            (
                r#"{"type":"progress","data":{"value":2,"max":20,"node":"3","prompt_id":"p"}}"#,
                Event::Progress(Progress {
                    value: Some(2),
                    max: Some(20),
                    node: Some("3".into()),
                    prompt_id: Some("p".into()),
                }),
            ),
            (
                r#"{"type":"execution_success","data":{"prompt_id":"p","timestamp":1}}"#,
                Event::ExecutionSuccess(PromptRef {
                    prompt_id: Some("p".into()),
                }),
            ),
            (
                r#"{"type":"execution_cached","data":{"nodes":["1"],"prompt_id":"p"}}"#,
                Event::ExecutionCached(ExecutionCached {
                    nodes: Some(vec!["1".into()]),
                    prompt_id: Some("p".into()),
                }),
            ),
            (
                r#"{"type":"execution_interrupted","data":{"prompt_id":"p","node_id":"2","node_type":"KSampler","executed":[]}}"#,
                Event::ExecutionInterrupted(ExecutionInterrupted {
                    prompt_id: Some("p".into()),
                    node_id: Some("2".into()),
                    node_type: Some("KSampler".into()),
                }),
            ),
            (
                r#"{"type":"crystools.monitor","data":{"cpu":3}}"#,
                Event::Other("crystools.monitor".into()),
            ),
            (
                r#"{"type":"progress","data":"not an object"}"#,
                Event::Other("progress".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&event(text), want, "{text}");
        }
        let status = event(
            r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":0}},"sid":"c"}}"#,
        );
        assert!(matches!(&status, Event::Status(s) if s.sid.as_deref() == Some("c")));
        assert_eq!(status.prompt_id(), None);
        let error = event(
            r#"{"type":"execution_error","data":{"prompt_id":"p","node_id":"2","node_type":"SaveImage","exception_message":"disk full","exception_type":"OSError","traceback":["a"]}}"#,
        );
        assert_eq!(error.prompt_id(), Some("p"));
        assert!(matches!(parse_text("not json"), Incoming::Ignored));
    }

    #[test]
    fn binary_previews_of_both_types_parse_and_junk_is_ignored() {
        let mut t1 = vec![0, 0, 0, 1, 0, 0, 0, 1];
        t1.extend_from_slice(b"\xff\xd8jpeg");
        match parse_binary(&t1) {
            Incoming::Preview {
                mime,
                image,
                prompt_id,
            } => {
                assert_eq!(mime, "image/jpeg");
                assert_eq!(image, b"\xff\xd8jpeg");
                assert_eq!(prompt_id, None);
            }
            other => panic!("{other:?}"),
        }
        let meta = br#"{"node_id":"3","prompt_id":"p-1","image_type":"image/png"}"#;
        let mut t4 = vec![0, 0, 0, 4];
        t4.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        t4.extend_from_slice(meta);
        t4.extend_from_slice(b"png!");
        match parse_binary(&t4) {
            Incoming::Preview {
                mime,
                image,
                prompt_id,
            } => {
                assert_eq!(mime, "image/png");
                assert_eq!(image, b"png!");
                assert_eq!(prompt_id.as_deref(), Some("p-1"));
            }
            other => panic!("{other:?}"),
        }
        for junk in [
            &b""[..],
            &[0, 0, 0, 1],
            &[0, 0, 0, 4, 255, 255, 255, 255, 1],
            &[0, 0, 0, 3, 0, 0, 0, 1, b'x'],
            &[0, 0, 0, 4, 0, 0, 0, 2, b'{', b'}'],
        ] {
            assert!(matches!(parse_binary(junk), Incoming::Ignored), "{junk:?}");
        }
    }
}
