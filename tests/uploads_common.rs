//! Helpers shared by the upload suites: a minimal tus client on reqwest, a WebSocket upload
//! client that survives cuts, and content helpers.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, bail};
use futures::SinkExt;
use outlast_e2e::ws::{Client, Incoming};
use outlast_protocol::upload::encode_data_header;
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, Offset, UploadId};
use rand::{Rng, SeedableRng};
use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

/// Pseudo-random content (reproducible per seed).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(v.as_mut_slice());
    v
}

/// sha256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A bare tus client: one method per request, answers returned unparsed.
#[derive(Debug, Clone)]
pub struct Tus {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Tus {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    pub fn with_token(base: &str, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..Self::new(base)
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut b = self
            .http
            .request(method, self.url(path))
            .header("Tus-Resumable", "1.0.0");
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        b
    }

    /// POST with Upload-Length; returns the upload's path.
    pub async fn create(&self, len: u64, extra: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut b = self
            .request("POST", "/v1/uploads")
            .header("Upload-Length", len.to_string());
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let r = b.send().await?;
        anyhow::ensure!(r.status() == 201, "create answered {}", r.status());
        header(r.headers(), "location").context("Location")
    }

    pub async fn patch(
        &self,
        path: &str,
        offset: u64,
        body: Vec<u8>,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .request("PATCH", path)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
            .await?)
    }

    pub async fn head(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self.request("HEAD", path).send().await?)
    }

    pub async fn offset(&self, path: &str) -> anyhow::Result<u64> {
        let r = self.head(path).await?;
        anyhow::ensure!(r.status() == 200, "HEAD answered {}", r.status());
        Ok(header(r.headers(), "upload-offset")
            .context("Upload-Offset")?
            .parse()?)
    }

    /// `GET /v1/uploads/{id}`: the JSON description.
    pub async fn info(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut b = self.http.get(self.url(path));
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        let r = b.send().await?;
        anyhow::ensure!(r.status() == 200, "GET answered {}", r.status());
        Ok(r.json().await?)
    }

    /// Uploads everything in chunks of `chunk` bytes.
    pub async fn upload(&self, bytes: &[u8], chunk: usize) -> anyhow::Result<String> {
        let path = self.create(bytes.len() as u64, &[]).await?;
        let mut off = 0;
        while off < bytes.len() {
            let end = (off + chunk).min(bytes.len());
            let r = self
                .patch(&path, off as u64, bytes[off..end].to_vec())
                .await?;
            anyhow::ensure!(r.status() == 204, "PATCH answered {}", r.status());
            off = end;
        }
        Ok(path)
    }
}

pub fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The upload id at the end of an upload path.
pub fn id_of(path: &str) -> UploadId {
    path.rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("upload path ends in an id")
}

/// Waits for the next control message that `pick` accepts (skipping others).
pub async fn wait_for<T>(
    client: &mut Client,
    timeout: Duration,
    mut pick: impl FnMut(&Control) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv(left).await? {
            Incoming::Msg(ServerMsg::Control(c)) => {
                if let Some(t) = pick(&c) {
                    return Ok(t);
                }
                if let Control::Error { code, message, .. } = &c {
                    bail!("error {code}: {message}");
                }
            }
            Incoming::Msg(_) => {}
            Incoming::Closed(_) => bail!("connection closed"),
        }
    }
}

/// Result of a WebSocket upload.
#[derive(Debug)]
pub struct WsUpload {
    pub id: UploadId,
    pub connections: u32,
    pub bytes_sent: u64,
    pub deduplicated: bool,
}

/// Uploads over the WebSocket with a window of unacknowledged bytes, reconnecting (to `url`)
/// and resuming from the server's durable offset whenever the connection breaks.
/// `on_ack` is called with every acknowledged (durable) offset (the proxy test cuts from there).
pub async fn ws_upload(
    url: &str,
    bytes: &[u8],
    chunk: usize,
    client_window: u64,
    declare_sha256: bool,
    mut on_ack: impl FnMut(u64),
) -> anyhow::Result<WsUpload> {
    let mut id: Option<UploadId> = None;
    let mut connections = 0;
    let mut bytes_sent = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "upload did not finish in time"
        );
        let Ok(mut client) = Client::connect(url, Codec::MsgPack).await else {
            // The gateway may be restarting: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        connections += 1;
        let msg = match id {
            None => ClientMsg::UploadCreate {
                req: Some(1),
                length: Some(bytes.len() as u64),
                metadata: [("filename".to_owned(), "data.bin".to_owned())].into(),
                sha256: declare_sha256.then(|| sha256_hex(bytes)),
            },
            Some(upload_id) => ClientMsg::UploadResume {
                req: Some(1),
                upload_id,
            },
        };
        if client.send(&msg).await.is_err() {
            continue;
        }
        let status = wait_for(&mut client, Duration::from_secs(10), |c| match c {
            Control::UploadStatus {
                upload,
                deduplicated,
                limits,
                ..
            } => Some((upload.clone(), *deduplicated, *limits)),
            _ => None,
        })
        .await;
        let Ok((info, dedup, limits)) = status else {
            continue;
        };
        id = Some(info.upload_id);
        if info.offset.0 == bytes.len() as u64 {
            return Ok(WsUpload {
                id: info.upload_id,
                connections,
                bytes_sent,
                deduplicated: dedup,
            });
        }
        let mut sent = info.offset.0;
        let mut acked = sent;
        let window = limits.window_bytes.min(client_window);
        'conn: loop {
            while sent < bytes.len() as u64 && sent - acked < window {
                let end = (sent as usize + chunk).min(bytes.len());
                let mut frame = encode_data_header(info.upload_id, Offset(sent)).to_vec();
                frame.extend_from_slice(&bytes[sent as usize..end]);
                if client.ws.send(Message::Binary(frame.into())).await.is_err() {
                    break 'conn;
                }
                bytes_sent += (end - sent as usize) as u64;
                sent = end as u64;
            }
            let ack = wait_for(&mut client, Duration::from_secs(10), |c| match c {
                Control::UploadAck {
                    upload_id,
                    offset,
                    complete,
                } if *upload_id == info.upload_id => Some((offset.0, *complete)),
                _ => None,
            })
            .await;
            match ack {
                Ok((_, true)) => {
                    return Ok(WsUpload {
                        id: info.upload_id,
                        connections,
                        bytes_sent,
                        deduplicated: false,
                    });
                }
                Ok((offset, false)) => {
                    acked = offset;
                    on_ack(offset);
                }
                Err(_) => break 'conn,
            }
        }
    }
}
