//! One ComfyUI server's HTTP API and WebSocket, typed (see docs/comfyui.md and the ComfyUI
//! reference). Only what the adapter needs; every call has a timeout.

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::messages::{Incoming, parse_binary, parse_text};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the request was certainly not received.
    #[error("connection refused or failed: {0}")]
    Refused(String),
    /// Nothing answered (refused, reset, timed out): the server is down or unreachable.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered, but not as the API says.
    #[error("{0}")]
    Protocol(String),
    /// A local I/O failure (writing a downloaded file).
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl CallError {
    fn from_reqwest(e: reqwest::Error) -> CallError {
        if e.is_connect() {
            CallError::Refused(e.to_string())
        } else if e.is_timeout() || e.is_request() || e.is_body() {
            CallError::Unreachable(e.to_string())
        } else {
            CallError::Protocol(e.to_string())
        }
    }
}

/// The answer to `POST /prompt`.
#[derive(Debug)]
pub enum Queued {
    /// Queued under this number.
    Accepted,
    /// HTTP 400: the body with `error` and `node_errors`.
    Rejected(Value),
}

/// `GET /queue`, reduced to prompt ids.
#[derive(Debug, Default)]
pub struct QueueView {
    /// Running prompt ids.
    pub running: Vec<String>,
    /// Pending prompts as (number, id), lowest number first.
    pub pending: Vec<(f64, String)>,
}

impl QueueView {
    /// Where `prompt` is: `Some(None)` running, `Some(Some(n))` n prompts ahead, `None` absent.
    pub fn find(&self, prompt: &str) -> Option<Option<usize>> {
        if self.running.iter().any(|p| p == prompt) {
            return Some(None);
        }
        let at = self.pending.iter().position(|(_, p)| p == prompt)?;
        Some(Some(at + self.running.len()))
    }
}

/// A file ComfyUI produced: an item of a node's `ui` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// File name.
    pub filename: String,
    /// Sub folder (may be empty).
    pub subfolder: String,
    /// `output`, `temp` or `input`.
    pub kind: String,
}

/// HTTP client of one server.
#[derive(Debug, Clone)]
pub struct Server {
    /// `http://host:port` without a trailing slash.
    pub base: String,
    http: reqwest::Client,
}

fn item(value: &Value) -> Option<String> {
    value.get(1)?.as_str().map(str::to_owned)
}

impl Server {
    /// A client for `base`.
    pub fn new(base: &str) -> Result<Server, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Server {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a short API call (30 s limit); a status other than 2xx is a protocol error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, CallError> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(CallError::from_reqwest)?;
        if !resp.status().is_success() {
            return Err(CallError::Protocol(format!(
                "{method} {path} answered {}",
                resp.status()
            )));
        }
        Ok(resp)
    }

    async fn get_json(&self, path: &str) -> Result<Value, CallError> {
        let resp = self.call(reqwest::Method::GET, path, None).await?;
        resp.json().await.map_err(CallError::from_reqwest)
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<(), CallError> {
        self.call(reqwest::Method::POST, path, Some(body))
            .await
            .map(drop)
    }

    /// `GET /system_stats`: is the server up?
    pub async fn probe(&self) -> Result<(), CallError> {
        tokio::time::timeout(Duration::from_secs(5), self.get_json("/system_stats"))
            .await
            .map_err(|_| CallError::Unreachable("no answer to /system_stats within 5 s".into()))?
            .map(drop)
    }

    /// `POST /prompt` with our own prompt id and client id.
    pub async fn queue_prompt(
        &self,
        prompt: &Value,
        prompt_id: &str,
        client_id: &str,
    ) -> Result<Queued, CallError> {
        let body = json!({"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id});
        let resp = self
            .http
            .post(self.url("/prompt"))
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        let status = resp.status();
        let text = resp.text().await.map_err(CallError::from_reqwest)?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            CallError::Protocol(format!(
                "POST /prompt answered {status} with a non-JSON body: {}",
                text.chars().take(300).collect::<String>()
            ))
        })?;
        if status.is_success() {
            match value.get("prompt_id").and_then(Value::as_str) {
                Some(id) if id == prompt_id => Ok(Queued::Accepted),
                other => Err(CallError::Protocol(format!(
                    "POST /prompt queued prompt {other:?}, not the requested {prompt_id}"
                ))),
            }
        } else if status.as_u16() == 400 {
            Ok(Queued::Rejected(value))
        } else {
            Err(CallError::Protocol(format!(
                "POST /prompt answered {status}: {value}"
            )))
        }
    }

    /// `GET /history/{id}`: the entry once the prompt finished, `None` before (or if unknown).
    pub async fn history(&self, prompt_id: &str) -> Result<Option<Value>, CallError> {
        let all = self.get_json(&format!("/history/{prompt_id}")).await?;
        Ok(all.get(prompt_id).cloned())
    }

    /// `GET /queue`.
    pub async fn queue(&self) -> Result<QueueView, CallError> {
        let q = self.get_json("/queue").await?;
        let list = |key: &str| -> Vec<Value> {
            q.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let mut pending: Vec<(f64, String)> = list("queue_pending")
            .iter()
            .filter_map(|i| Some((i.get(0)?.as_f64()?, item(i)?)))
            .collect();
        pending.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(QueueView {
            running: list("queue_running").iter().filter_map(item).collect(),
            pending,
        })
    }

    /// Stops `prompt_id` wherever it is: removed if pending, interrupted if running.
    pub async fn cancel(&self, prompt_id: &str) -> Result<(), CallError> {
        self.post_json("/queue", &json!({"delete": [prompt_id]}))
            .await?;
        if self.queue().await?.find(prompt_id) == Some(None) {
            // With a prompt id ComfyUI only interrupts if that prompt is the running one.
            self.post_json("/interrupt", &json!({"prompt_id": prompt_id}))
                .await?;
        }
        Ok(())
    }

    /// `POST /upload/image` (type `input`, sub folder `outlast`): returns the value a loader
    /// node takes, `subfolder/name`.
    pub async fn upload(&self, path: &Path, filename: &str) -> Result<String, CallError> {
        let file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let part =
            reqwest::multipart::Part::stream_with_length(body, size).file_name(filename.to_owned());
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", "input")
            .text("subfolder", "outlast");
        let resp = self
            .http
            .post(self.url("/upload/image"))
            .multipart(form)
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(CallError::Protocol(format!(
                "POST /upload/image answered {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        let v: Value = resp.json().await.map_err(CallError::from_reqwest)?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| CallError::Protocol(format!("upload answer without name: {v}")))?;
        let sub = v.get("subfolder").and_then(Value::as_str).unwrap_or("");
        Ok(if sub.is_empty() {
            name.to_owned()
        } else {
            format!("{sub}/{name}")
        })
    }

    /// `GET /view` into `dest`; returns the media type ComfyUI named.
    pub async fn download(&self, file: &FileRef, dest: &Path) -> Result<String, CallError> {
        use tokio::io::AsyncWriteExt;
        let resp = self
            .http
            .get(self.url("/view"))
            .query(&[
                ("filename", file.filename.as_str()),
                ("subfolder", file.subfolder.as_str()),
                ("type", file.kind.as_str()),
            ])
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        if !resp.status().is_success() {
            return Err(CallError::Protocol(format!(
                "GET /view of {:?} answered {}",
                file.filename,
                resp.status()
            )));
        }
        let mime = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_else(|| "application/octet-stream".into());
        let mut out = tokio::fs::File::create(dest).await?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.map_err(CallError::from_reqwest)?)
                .await?;
        }
        out.flush().await?;
        Ok(mime)
    }

    /// Opens `/ws?clientId=…` and asks for previews with metadata (binary type 4).
    pub async fn connect(&self, client_id: &str) -> Result<Socket, CallError> {
        let url = format!(
            "{}/ws?clientId={client_id}",
            self.base.replacen("http", "ws", 1)
        );
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| CallError::Unreachable("WebSocket connect timed out".into()))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Io(io) => CallError::Refused(io.to_string()),
            other => CallError::Unreachable(other.to_string()),
        })?;
        let flags = json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}});
        ws.send(Message::text(flags.to_string()))
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        Ok(Socket { ws })
    }
}

/// An open WebSocket to ComfyUI.
#[derive(Debug)]
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    /// The next message; `None` when the socket is closed or broken. Cancel-safe.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(_) => return None,
            };
            return Some(match msg {
                Message::Text(text) => parse_text(&text),
                Message::Binary(b) => parse_binary(&b),
                Message::Pong(_) => Incoming::Pong,
                Message::Close(_) => return None,
                Message::Ping(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// Sends a ping; false if the socket is broken.
    pub async fn ping(&mut self) -> bool {
        self.ws.send(Message::Ping(Vec::new().into())).await.is_ok()
    }

    /// Closes the socket and waits (bounded) until the server has closed its side, so that
    /// ComfyUI forgets this socket before the same client id connects again.
    pub async fn close(mut self) {
        let _ = self.ws.send(Message::Close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_positions_count_the_running_prompt() {
        let q = QueueView {
            running: vec!["r".into()],
            pending: vec![(1.0, "a".into()), (2.0, "b".into())],
        };
        assert_eq!(q.find("r"), Some(None));
        assert_eq!(q.find("a"), Some(Some(1)));
        assert_eq!(q.find("b"), Some(Some(2)));
        assert_eq!(q.find("z"), None);
    }
}
