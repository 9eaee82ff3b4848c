//! The WebSocket table, ComfyUI style (server.py 188-246, 929-944): one entry per client id,
//! no buffering, no replay, no pings, and the same-`clientId` reconnect bug kept on purpose.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::engine::App;

/// An open socket's sending half, as registered under its client id.
#[derive(Debug)]
struct Entry {
    tx: mpsc::UnboundedSender<Message>,
    /// Whether the socket negotiated `supports_preview_metadata`.
    metadata: Arc<AtomicBool>,
}

/// Client id → the socket messages for it go to.
#[derive(Debug)]
pub struct Sockets {
    // A std Mutex: nothing awaits while it is held.
    table: Mutex<HashMap<String, Entry>>,
    /// Bumped to make every socket task drop its connection without a close frame.
    kill: watch::Sender<u64>,
}

impl Default for Sockets {
    fn default() -> Self {
        Sockets {
            table: Mutex::new(HashMap::new()),
            kill: watch::channel(0).0,
        }
    }
}

fn frame(kind: &str, data: Value) -> Message {
    Message::Text(json!({"type": kind, "data": data}).to_string().into())
}

impl Sockets {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a JSON event to `sid`; silently dropped if it has no socket.
    pub fn send(&self, sid: &str, kind: &str, data: Value) {
        if let Some(e) = self.table().get(sid) {
            let _ = e.tx.send(frame(kind, data));
        }
    }

    /// Sends a JSON event to every registered socket.
    pub fn broadcast(&self, kind: &str, data: Value) {
        let msg = frame(kind, data);
        for e in self.table().values() {
            let _ = e.tx.send(msg.clone());
        }
    }

    /// A latent preview: type 4 with `metadata` to a socket that negotiated it, type 1
    /// otherwise; to every socket (type 1) when the prompt has no client.
    pub fn preview(&self, sid: Option<&str>, jpeg: &[u8], metadata: &Value) {
        let type1 = || {
            let mut b = Vec::with_capacity(8 + jpeg.len());
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(jpeg);
            Message::Binary(b.into())
        };
        let table = self.table();
        let Some(sid) = sid else {
            for e in table.values() {
                let _ = e.tx.send(type1());
            }
            return;
        };
        let Some(e) = table.get(sid) else {
            return;
        };
        let msg = if e.metadata.load(Ordering::Relaxed) {
            let meta = metadata.to_string();
            let mut b = Vec::with_capacity(8 + meta.len() + jpeg.len());
            b.extend_from_slice(&4u32.to_be_bytes());
            b.extend_from_slice(&(meta.len() as u32).to_be_bytes());
            b.extend_from_slice(meta.as_bytes());
            b.extend_from_slice(jpeg);
            Message::Binary(b.into())
        } else {
            type1()
        };
        let _ = e.tx.send(msg);
    }

    /// Drops every WebSocket connection at once, without a close frame.
    pub fn drop_all(&self) {
        self.kill.send_modify(|n| *n += 1);
    }

    fn register(&self, sid: &str) -> (mpsc::UnboundedReceiver<Message>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let metadata = Arc::new(AtomicBool::new(false));
        // Replaces an existing entry without closing its socket (ComfyUI does the same).
        self.table().insert(
            sid.to_owned(),
            Entry {
                tx,
                metadata: metadata.clone(),
            },
        );
        (rx, metadata)
    }

    /// ComfyUI's `finally: self.sockets.pop(sid)`: unconditional, so an old socket closing
    /// cuts off a newer one with the same id (issue #16010).
    fn unregister(&self, sid: &str) {
        self.table().remove(sid);
    }
}

/// Runs one `/ws` connection until the client leaves or `drop_ws`/`forget` kills it.
pub async fn serve(app: Arc<App>, mut socket: WebSocket, sid: String) {
    let mut kill = app.sockets.kill.subscribe();
    kill.mark_unchanged();
    let (mut rx, metadata) = app.sockets.register(&sid);
    eprintln!("comfy-standin: ws connected sid={sid}");
    let (remaining, last_node) = app.connect_info(&sid);
    let hello = frame(
        "status",
        json!({"status": {"exec_info": {"queue_remaining": remaining}}, "sid": sid}),
    );
    let mut ok = socket.send(hello).await.is_ok();
    if ok && let Some(node) = last_node {
        ok = socket
            .send(frame("executing", json!({"node": node})))
            .await
            .is_ok();
    }
    let mut first = true;
    let mut abrupt = false;
    // After a reconnect with the same id replaced our entry, nothing arrives here any more,
    // but the socket stays open until its client leaves.
    let mut replaced = false;
    while ok {
        tokio::select! {
            _ = kill.changed() => { abrupt = true; break; }
            out = rx.recv(), if !replaced => match out {
                Some(m) => ok = socket.send(m).await.is_ok(),
                None => replaced = true,
            },
            inc = socket.recv() => match inc {
                Some(Ok(Message::Text(t))) => {
                    if first
                        && let Ok(v) = serde_json::from_str::<Value>(&t)
                        && v["type"] == "feature_flags"
                    {
                        metadata.store(v["data"]["supports_preview_metadata"] == true, Ordering::Relaxed);
                        let reply = frame("feature_flags", json!({"supports_preview_metadata": true, "max_upload_size": 104_857_600}));
                        ok = socket.send(reply).await.is_ok();
                    }
                    first = false;
                }
                Some(Ok(Message::Close(_))) => {
                    // Unregister before the close reply goes out, so a client that saw its
                    // close complete knows the entry is gone (aiohttp does it a moment later).
                    app.sockets.unregister(&sid);
                    // Reading once more flushes tungstenite's queued close reply.
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.recv()).await;
                    break;
                }
                Some(Ok(_)) => first = false,
                Some(Err(_)) | None => break,
            },
        }
    }
    app.sockets.unregister(&sid);
    eprintln!("comfy-standin: ws closed sid={sid} abrupt={abrupt}");
    // Dropping the socket closes the TCP connection; after a kill no close frame is sent.
    drop(socket);
}
