//! The prompt queue, the single worker that executes prompts, the output cache and the
//! in-memory history: ComfyUI's `PromptQueue` + `PromptExecutor` (execution.py, main.py)
//! reduced to what the stand-in's node classes need, with the same message order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::files::{self, Dirs};
use crate::nodes::{self, Arg, Args, NodeFailure};
use crate::sockets::Sockets;
use crate::validate::{self, class_of, sort_ids};

/// ComfyUI keeps at most this many history entries.
const MAX_HISTORY: usize = 10_000;

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long one sampler step takes.
    pub step: Duration,
    /// `--preview-method auto`: latent previews unless a prompt turns them off.
    pub previews: bool,
}

/// A queued prompt: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
#[derive(Debug, Clone)]
pub struct Item {
    number: f64,
    number_json: Value,
    prompt_id: String,
    prompt: Value,
    extra_data: Value,
    outputs: Vec<String>,
}

impl Item {
    fn to_json(&self) -> Value {
        json!([
            self.number_json,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs
        ])
    }
    fn client(&self) -> Option<String> {
        self.extra_data["client_id"].as_str().map(str::to_owned)
    }
}

#[derive(Debug)]
struct Running {
    item: Item,
    /// The node of the last `executing` sent to the client (sent again on connect).
    last_node: Option<String>,
}

/// What a node produced, kept across prompts under its cache key.
#[derive(Debug)]
struct Cached {
    outputs: nodes::Outputs,
    ui: Option<Value>,
}

#[derive(Debug, Default)]
struct Stats {
    executed_prompts: Vec<String>,
    interrupts: u64,
    uploads: u64,
    /// What happened to prompts, in the order it happened: `{"event", "prompt_id", "at_ms"}`
    /// with event `queued`, `started`, `interrupt` (an `/interrupt` that hit it), `deleted`
    /// (removed while pending) or `ended` (history written; with `status`: `success`, `error`
    /// or `interrupted`).
    log: Vec<Value>,
}

impl Stats {
    fn note(&mut self, event: &str, prompt_id: &str, extra: Option<(&str, &str)>) {
        let mut entry = json!({"event": event, "prompt_id": prompt_id, "at_ms": now_ms()});
        if let Some((k, v)) = extra {
            entry[k] = json!(v);
        }
        self.log.push(entry);
    }
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<Item>,
    running: Option<Running>,
    history: Vec<(String, Value)>,
    counter: u64,
    /// Bumped by `forget`: a run of an older generation stops silently.
    generation: u64,
    cache: HashMap<String, Arc<Cached>>,
    /// class_type → (exception_message, exception_type) for the next execution.
    fail: HashMap<String, (String, String)>,
    stall_until: Option<Instant>,
    stats: Stats,
}

impl State {
    fn remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }
}

/// The whole stand-in: configuration, directories, sockets and the queue state.
#[derive(Debug)]
pub struct App {
    pub cfg: Config,
    pub dirs: Dirs,
    pub sockets: Sockets,
    // A std Mutex: it is never held across an await.
    state: Mutex<State>,
    wake: Notify,
    interrupt: AtomicBool,
    /// `/_standin/slow_view`: every `/view` answer waits this long first.
    pub slow_view_ms: std::sync::atomic::AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn status(remaining: usize) -> Value {
    json!({"status": {"exec_info": {"queue_remaining": remaining}}})
}

/// A response: HTTP status and JSON body (None: empty body).
pub type Reply = (u16, Option<Value>);

impl App {
    pub fn new(cfg: Config, dirs: Dirs) -> App {
        App {
            cfg,
            dirs,
            sockets: Sockets::default(),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            interrupt: AtomicBool::new(false),
            slow_view_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every socket how many prompts remain.
    fn queue_updated(&self) {
        let remaining = self.state().remaining();
        self.sockets.broadcast("status", status(remaining));
    }

    /// For a new socket: queue size and, if `sid` is the running prompt's client, its last node.
    pub fn connect_info(&self, sid: &str) -> (usize, Option<String>) {
        let s = self.state();
        let last = s
            .running
            .as_ref()
            .filter(|r| r.item.client().as_deref() == Some(sid))
            .and_then(|r| r.last_node.clone());
        (s.remaining(), last)
    }

    pub fn queue_remaining(&self) -> usize {
        self.state().remaining()
    }

    /// `POST /prompt` (server.py 674-720).
    pub fn submit(&self, body: &Value) -> Reply {
        let (number, number_json) = match body.get("number") {
            Some(n) => match nodes::to_float(n) {
                Some(f) => (f, json!(f)),
                None => return (500, None),
            },
            None => {
                let mut s = self.state();
                let mut n = s.counter as i64;
                s.counter += 1;
                if body.get("front").is_some_and(truthy) {
                    n = -n;
                }
                (n as f64, json!(n))
            }
        };
        let Some(prompt) = body.get("prompt") else {
            return (
                400,
                Some(
                    json!({"error": {"type": "no_prompt", "message": "No prompt provided",
                    "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}),
                ),
            );
        };
        let prompt_id = match body.get("prompt_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(v) => {
                let text = nodes::py_str(v);
                match uuid::Uuid::parse_str(&text) {
                    Ok(u) if u.hyphenated().to_string() == text => text,
                    _ => {
                        return (
                            400,
                            Some(json!({"error": {"type": "invalid_prompt_id",
                                "message": "Invalid prompt_id format. prompt_id must be a valid UUID.",
                                "details": text, "extra_info": {}}, "node_errors": {}})),
                        );
                    }
                }
            }
        };
        let targets: Option<Vec<String>> = body
            .get("partial_execution_targets")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(nodes::py_str).collect());
        let valid = match validate::validate(prompt, targets.as_deref(), &self.dirs.input) {
            Ok(v) => v,
            Err(e) => {
                return (
                    400,
                    Some(json!({"error": e.error, "node_errors": e.node_errors})),
                );
            }
        };
        let mut extra_data = match body.get("extra_data") {
            Some(Value::Object(m)) => Value::Object(m.clone()),
            _ => json!({}),
        };
        if let Some(c) = body.get("client_id") {
            extra_data["client_id"] = c.clone();
        }
        let item = Item {
            number,
            number_json: number_json.clone(),
            prompt_id: prompt_id.clone(),
            prompt: prompt.clone(),
            extra_data,
            outputs: valid.outputs,
        };
        {
            let mut s = self.state();
            s.stats.note("queued", &prompt_id, None);
            s.pending.push(item);
        }
        self.queue_updated();
        self.wake.notify_one();
        (
            200,
            Some(
                json!({"prompt_id": prompt_id, "number": number_json, "node_errors": valid.node_errors}),
            ),
        )
    }

    /// `GET /queue`.
    pub fn queue(&self) -> Value {
        let s = self.state();
        let mut pending: Vec<&Item> = s.pending.iter().collect();
        pending.sort_by(|a, b| priority(a, b));
        json!({
            "queue_running": s.running.iter().map(|r| r.item.to_json()).collect::<Vec<_>>(),
            "queue_pending": pending.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
        })
    }

    /// `POST /queue` `{"clear"}` / `{"delete": [ids]}` (pending only).
    pub fn edit_queue(&self, body: &Value) {
        let mut changed = false;
        {
            let mut s = self.state();
            if body.get("clear").is_some_and(truthy) {
                s.pending.clear();
                changed = true;
            }
            if let Some(ids) = body.get("delete").and_then(Value::as_array) {
                let (gone, kept): (Vec<Item>, Vec<Item>) = std::mem::take(&mut s.pending)
                    .into_iter()
                    .partition(|i| ids.iter().any(|d| d.as_str() == Some(&i.prompt_id)));
                s.pending = kept;
                changed |= !gone.is_empty();
                for i in &gone {
                    s.stats.note("deleted", &i.prompt_id, None);
                }
            }
        }
        if changed {
            self.queue_updated();
        }
    }

    /// `POST /interrupt`: a named prompt that is not running is left alone.
    pub fn interrupt(&self, body: &Value) {
        let mut s = self.state();
        let running = s.running.as_ref().map(|r| r.item.prompt_id.clone());
        let hit = match body.get("prompt_id").and_then(Value::as_str) {
            Some(p) => running.as_deref() == Some(p),
            None => true,
        };
        if hit {
            self.interrupt.store(true, Ordering::SeqCst);
            if let Some(p) = running {
                s.stats.interrupts += 1;
                s.stats.note("interrupt", &p, None);
            }
        }
    }

    /// `GET /history?max_items&offset` (execution.py 1173-1189).
    pub fn history(&self, max_items: Option<i64>, offset: Option<i64>) -> Value {
        let s = self.state();
        let mut offset = offset.unwrap_or(-1);
        if offset < 0
            && let Some(m) = max_items
        {
            offset = s.history.len() as i64 - m;
        }
        let mut out = Map::new();
        for (i, (id, entry)) in s.history.iter().enumerate() {
            if i as i64 >= offset {
                out.insert(id.clone(), entry.clone());
                if max_items.is_some_and(|m| out.len() as i64 >= m) {
                    break;
                }
            }
        }
        Value::Object(out)
    }

    /// `GET /history/{id}`: `{}` while unknown or unfinished.
    pub fn history_of(&self, id: &str) -> Value {
        let s = self.state();
        let mut out = Map::new();
        if let Some((k, v)) = s.history.iter().find(|(k, _)| k == id) {
            out.insert(k.clone(), v.clone());
        }
        Value::Object(out)
    }

    /// `POST /history` `{"clear"}` / `{"delete": [ids]}`.
    pub fn edit_history(&self, body: &Value) {
        let mut s = self.state();
        if body.get("clear").is_some_and(truthy) {
            s.history.clear();
        }
        if let Some(ids) = body.get("delete").and_then(Value::as_array) {
            s.history
                .retain(|(k, _)| !ids.iter().any(|d| d.as_str() == Some(k)));
        }
    }

    /// `GET /api/jobs/{id}` (ComfyUI v0.38's jobs.py, reduced).
    pub fn job(&self, id: &str) -> Reply {
        let s = self.state();
        if let Some(i) = s.pending.iter().find(|i| i.prompt_id == id) {
            return (
                200,
                Some(json!({"id": id, "status": "pending", "priority": i.number_json})),
            );
        }
        if let Some(r) = s.running.as_ref().filter(|r| r.item.prompt_id == id) {
            return (
                200,
                Some(json!({"id": id, "status": "in_progress", "priority": r.item.number_json})),
            );
        }
        if let Some((_, e)) = s.history.iter().find(|(k, _)| k == id) {
            let interrupted = e["status"]["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m[0] == "execution_interrupted"));
            let status = match (e["status"]["status_str"].as_str(), interrupted) {
                (Some("success"), _) => "completed",
                (_, true) => "cancelled",
                _ => "failed",
            };
            return (
                200,
                Some(
                    json!({"id": id, "status": status, "priority": e["prompt"][0], "outputs": e["outputs"]}),
                ),
            );
        }
        (404, Some(json!({"error": "Job not found"})))
    }

    /// Counts an upload for `/_standin/stats`.
    pub fn count_upload(&self) {
        self.state().stats.uploads += 1;
    }

    /// `/_standin/stall`: the worker sends nothing and makes no progress for `ms`.
    pub fn stall(&self, ms: u64) {
        self.state().stall_until = Some(Instant::now() + Duration::from_millis(ms));
    }

    /// `/_standin/fail`: the next execution of `class` raises.
    pub fn fail_next(&self, class: &str, message: &str, kind: &str) {
        self.state()
            .fail
            .insert(class.to_owned(), (message.to_owned(), kind.to_owned()));
    }

    /// `/_standin/forget`: an in-process restart (stats are kept: they describe the test).
    pub fn forget(&self) {
        {
            let mut s = self.state();
            s.pending.clear();
            s.running = None;
            s.history.clear();
            s.cache.clear();
            s.fail.clear();
            s.stall_until = None;
            s.counter = 0;
            s.generation += 1;
        }
        self.interrupt.store(false, Ordering::SeqCst);
        self.sockets.drop_all();
    }

    /// `/_standin/stats`.
    pub fn stats(&self) -> Value {
        let s = self.state();
        json!({
            "executed_prompts": s.stats.executed_prompts,
            "interrupts": s.stats.interrupts,
            "uploads": s.stats.uploads,
            "log": s.stats.log,
        })
    }

    fn stalled(&self) -> bool {
        self.state().stall_until.is_some_and(|t| t > Instant::now())
    }

    /// The worker: takes the lowest `number` first and executes one prompt at a time.
    pub async fn worker(self: Arc<Self>) {
        loop {
            if self.stalled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let picked = {
                let mut s = self.state();
                let best = s
                    .pending
                    .iter()
                    .enumerate()
                    .min_by(|a, b| priority(a.1, b.1))
                    .map(|(i, _)| i);
                best.map(|i| {
                    let item = s.pending.remove(i);
                    s.stats.note("started", &item.prompt_id, None);
                    s.running = Some(Running {
                        item: item.clone(),
                        last_node: None,
                    });
                    // ComfyUI clears the interrupt flag when a prompt starts.
                    self.interrupt.store(false, Ordering::SeqCst);
                    (item, s.generation)
                })
            };
            let Some((item, generation)) = picked else {
                self.wake.notified().await;
                continue;
            };
            self.queue_updated();
            eprintln!("comfy-standin: executing prompt {}", item.prompt_id);
            let mut run = Run::new(&self, item, generation);
            if run.execute().await.is_err() {
                eprintln!("comfy-standin: run forgotten");
            }
        }
    }
}

fn priority(a: &Item, b: &Item) -> std::cmp::Ordering {
    a.number
        .total_cmp(&b.number)
        .then_with(|| a.prompt_id.cmp(&b.prompt_id))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The run was abandoned by `forget`.
#[derive(Debug)]
struct Forgotten;

/// Why a run stopped before the end.
#[derive(Debug)]
enum Halt {
    Forgotten,
    Failed(Value),
    Interrupted { node_id: String, node_type: String },
}

impl From<Forgotten> for Halt {
    fn from(_: Forgotten) -> Self {
        Halt::Forgotten
    }
}

/// Who receives an event.
#[derive(Debug, Clone, Copy)]
enum To {
    /// The prompt's client; nothing if it has none.
    Client,
    /// The prompt's client, or every socket if it has none.
    ClientOrAll,
}

#[derive(Debug, Clone)]
struct NodeProgress {
    value: Value,
    max: Value,
    state: &'static str,
}

/// One prompt's execution.
struct Run<'a> {
    app: &'a App,
    item: Item,
    generation: u64,
    client: Option<String>,
    graph: Map<String, Value>,
    keys: HashMap<String, String>,
    messages: Vec<Value>,
    progress: Vec<(String, NodeProgress)>,
    outputs: Map<String, Value>,
    meta: Map<String, Value>,
    executed: Vec<String>,
    results: HashMap<String, Arc<Cached>>,
    previews: bool,
}

impl<'a> Run<'a> {
    fn new(app: &'a App, item: Item, generation: u64) -> Run<'a> {
        let previews = match item.extra_data["preview_method"].as_str() {
            None | Some("default") => app.cfg.previews,
            Some("none") => false,
            Some(_) => true,
        };
        Run {
            app,
            client: item.client(),
            graph: item.prompt.as_object().cloned().unwrap_or_default(),
            item,
            generation,
            keys: HashMap::new(),
            messages: Vec::new(),
            progress: Vec::new(),
            outputs: Map::new(),
            meta: Map::new(),
            executed: Vec::new(),
            results: HashMap::new(),
            previews,
        }
    }

    fn pid(&self) -> &str {
        &self.item.prompt_id
    }

    /// Waits out a stall; fails if the stand-in forgot this run meanwhile.
    async fn pause(&self) -> Result<(), Forgotten> {
        loop {
            let (generation, until) = {
                let s = self.app.state();
                (s.generation, s.stall_until)
            };
            if generation != self.generation {
                return Err(Forgotten);
            }
            match until {
                Some(t) if t > Instant::now() => {
                    let left = t - Instant::now();
                    tokio::time::sleep(left.min(Duration::from_millis(10))).await;
                }
                _ => return Ok(()),
            }
        }
    }

    async fn emit(&self, kind: &str, data: Value, to: To) -> Result<(), Forgotten> {
        self.pause().await?;
        match (to, &self.client) {
            (_, Some(c)) => self.app.sockets.send(c, kind, data),
            (To::ClientOrAll, None) => self.app.sockets.broadcast(kind, data),
            (To::Client, None) => {}
        }
        Ok(())
    }

    /// `add_message`: timestamped, kept for the history, sent to the client (or everyone).
    async fn message(
        &mut self,
        kind: &str,
        mut data: Value,
        broadcast: bool,
    ) -> Result<(), Forgotten> {
        data["timestamp"] = json!(now_ms());
        self.messages.push(json!([kind, data]));
        let to = if broadcast {
            To::ClientOrAll
        } else {
            To::Client
        };
        self.emit(kind, data, to).await
    }

    async fn progress_state(&self) -> Result<(), Forgotten> {
        let mut nodes = Map::new();
        for (id, p) in &self.progress {
            nodes.insert(
                id.clone(),
                json!({"value": p.value, "max": p.max, "state": p.state, "node_id": id,
                    "prompt_id": self.pid(), "display_node_id": id, "parent_node_id": null, "real_node_id": id}),
            );
        }
        self.emit(
            "progress_state",
            json!({"prompt_id": self.pid(), "nodes": nodes}),
            To::ClientOrAll,
        )
        .await
    }

    fn set_progress(&mut self, id: &str, value: Value, max: Value, state: &'static str) {
        let p = NodeProgress { value, max, state };
        match self.progress.iter_mut().find(|(k, _)| k == id) {
            Some((_, old)) => *old = p,
            None => self.progress.push((id.to_owned(), p)),
        }
    }

    /// Cache keys: class + literal inputs + the keys of linked nodes.
    fn compute_keys(&mut self) {
        fn key(
            graph: &Map<String, Value>,
            id: &str,
            changed: &HashMap<String, String>,
            keys: &mut HashMap<String, String>,
            depth: u32,
        ) -> String {
            if let Some(k) = keys.get(id) {
                return k.clone();
            }
            let node = graph.get(id).cloned().unwrap_or(Value::Null);
            let mut inputs = Map::new();
            if let Some(m) = node["inputs"].as_object() {
                for (name, v) in m {
                    let v = match v.as_array().map(Vec::as_slice) {
                        Some([Value::String(from), idx]) if depth < 1000 => {
                            json!([key(graph, from, changed, keys, depth + 1), idx])
                        }
                        _ => v.clone(),
                    };
                    inputs.insert(name.clone(), v);
                }
            }
            let text = json!([node["class_type"], inputs, changed.get(id)]).to_string();
            let k = hex::encode(Sha256::digest(text.as_bytes()));
            keys.insert(id.to_owned(), k.clone());
            k
        }
        // LoadImage's IS_CHANGED: the file's hash, so a re-uploaded file is read again.
        let mut changed = HashMap::new();
        for (id, node) in &self.graph {
            if node["class_type"] == "LoadImage" {
                let name = nodes::py_str(&node["inputs"]["image"]);
                let hash = files::annotated_input(&self.app.dirs.input, &name)
                    .and_then(|p| std::fs::read(p).ok())
                    .map(|b| hex::encode(Sha256::digest(b)));
                changed.insert(id.clone(), hash.unwrap_or_default());
            }
        }
        let ids: Vec<String> = self.graph.keys().cloned().collect();
        for id in ids {
            key(&self.graph, &id, &changed, &mut self.keys, 0);
        }
    }

    fn is_output(&self, id: &str) -> bool {
        class_of(&self.graph, id)
            .and_then(nodes::find)
            .is_some_and(|d| d.output_node)
    }

    /// Topological order from the outputs; cached nodes that are not outputs are skipped
    /// together with everything only they need.
    fn order(&self, cached: &HashSet<String>) -> Vec<String> {
        fn visit(
            run: &Run<'_>,
            id: &str,
            cached: &HashSet<String>,
            seen: &mut HashSet<String>,
            out: &mut Vec<String>,
        ) {
            if !seen.insert(id.to_owned()) {
                return;
            }
            let is_cached = cached.contains(id);
            if is_cached && !run.is_output(id) {
                return;
            }
            if !is_cached && let Some(def) = class_of(&run.graph, id).and_then(nodes::find) {
                for i in &def.inputs {
                    if let Some(Value::String(from)) = run.graph[id]["inputs"][i.name].get(0) {
                        visit(run, from, cached, seen, out);
                    }
                }
            }
            out.push(id.to_owned());
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut outputs = self.item.outputs.clone();
        sort_ids(&mut outputs);
        for o in &outputs {
            visit(self, o, cached, &mut seen, &mut out);
        }
        out
    }

    async fn execute(&mut self) -> Result<(), Forgotten> {
        self.app
            .state()
            .stats
            .executed_prompts
            .push(self.item.prompt_id.clone());
        let pid = self.pid().to_owned();
        self.message("execution_start", json!({"prompt_id": pid}), false)
            .await?;
        self.compute_keys();
        let mut ids: Vec<String> = self.graph.keys().cloned().collect();
        sort_ids(&mut ids);
        let cached_nodes: Vec<String> = {
            let mut s = self.app.state();
            // ComfyUI's classic cache keeps only what the current prompt can use.
            let wanted: HashSet<&String> = self.keys.values().collect();
            s.cache.retain(|k, _| wanted.contains(k));
            ids.iter()
                .filter(|id| s.cache.contains_key(&self.keys[*id]))
                .cloned()
                .collect()
        };
        self.message(
            "execution_cached",
            json!({"nodes": cached_nodes, "prompt_id": pid}),
            false,
        )
        .await?;
        let cached: HashSet<String> = cached_nodes.into_iter().collect();
        let mut halt = None;
        for id in self.order(&cached) {
            if let Err(h) = self.node(&id).await {
                halt = Some(h);
                break;
            }
        }
        match halt {
            None => {
                self.message("execution_success", json!({"prompt_id": pid}), false)
                    .await?;
                self.finish(true).await
            }
            Some(Halt::Forgotten) => Err(Forgotten),
            Some(Halt::Failed(data)) => {
                self.message("execution_error", data, false).await?;
                self.finish(false).await
            }
            Some(Halt::Interrupted { node_id, node_type }) => {
                let data = json!({"prompt_id": pid, "node_id": node_id, "node_type": node_type, "executed": self.executed});
                self.message("execution_interrupted", data, true).await?;
                self.finish(false).await
            }
        }
    }

    /// Writes the history entry, then `status` and `executing null`.
    async fn finish(&mut self, success: bool) -> Result<(), Forgotten> {
        let interrupted = self
            .messages
            .last()
            .is_some_and(|m| m[0] == "execution_interrupted");
        let status = match (success, interrupted) {
            (true, _) => "success",
            (false, true) => "interrupted",
            (false, false) => "error",
        };
        self.pause().await?;
        let entry = json!({
            "prompt": self.item.to_json(),
            "outputs": self.outputs,
            "status": {"status_str": if success {"success"} else {"error"}, "completed": success, "messages": self.messages},
            "meta": self.meta,
        });
        {
            let mut s = self.app.state();
            if s.generation != self.generation {
                return Err(Forgotten);
            }
            s.running = None;
            s.stats
                .note("ended", &self.item.prompt_id, Some(("status", status)));
            s.history.retain(|(k, _)| *k != self.item.prompt_id);
            s.history.push((self.item.prompt_id.clone(), entry));
            if s.history.len() > MAX_HISTORY {
                s.history.remove(0);
            }
        }
        self.app.queue_updated();
        let pid = self.pid().to_owned();
        self.emit(
            "executing",
            json!({"node": null, "prompt_id": pid}),
            To::Client,
        )
        .await
    }

    fn check_interrupt(&self, id: &str, class: &str) -> Result<(), Halt> {
        if self.app.interrupt.swap(false, Ordering::SeqCst) {
            return Err(Halt::Interrupted {
                node_id: id.to_owned(),
                node_type: class.to_owned(),
            });
        }
        Ok(())
    }

    fn record_ui(&mut self, id: &str, ui: &Value) {
        self.outputs.insert(id.to_owned(), ui.clone());
        self.meta.insert(
            id.to_owned(),
            json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
        );
    }

    fn lookup(&self, id: &str) -> Option<Arc<Cached>> {
        if let Some(r) = self.results.get(id) {
            return Some(r.clone());
        }
        let key = self.keys.get(id)?;
        self.app.state().cache.get(key).cloned()
    }

    fn args(&self, id: &str, def: &nodes::NodeDef) -> Result<Args, NodeFailure> {
        let mut args = Args::default();
        for i in &def.inputs {
            let v = &self.graph[id]["inputs"][i.name];
            let arg = match v.as_array().map(Vec::as_slice) {
                Some([Value::String(from), idx]) => {
                    let idx = idx.as_u64().unwrap_or(0) as usize;
                    let data = self
                        .lookup(from)
                        .and_then(|c| c.outputs.get(idx).cloned())
                        .ok_or_else(|| {
                            NodeFailure::runtime(
                                "KeyError",
                                format!("no output {idx} of node {from}"),
                            )
                        })?;
                    Arg::Link(data)
                }
                _ => Arg::Literal(v.clone()),
            };
            args.0.push((i.name.to_owned(), arg));
        }
        Ok(args)
    }

    fn failure(&self, id: &str, class: &str, args: &Args, f: &NodeFailure) -> Halt {
        let current_outputs: Vec<&String> = {
            let s = self.app.state();
            let mut ids: Vec<&String> = self
                .graph
                .keys()
                .filter(|k| s.cache.contains_key(&self.keys[*k]))
                .collect();
            ids.sort();
            ids
        };
        let fn_name = match class {
            "KSampler" => "sample",
            "SaveImage" | "PreviewImage" => "save_images",
            "LoadImage" => "load_image",
            _ => "execute",
        };
        Halt::Failed(json!({
            "prompt_id": self.pid(),
            "node_id": id,
            "node_type": class,
            "executed": self.executed,
            "exception_message": f.message,
            "exception_type": f.exception_type,
            "traceback": [
                "  File \"/ComfyUI/execution.py\", line 496, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
                "  File \"/ComfyUI/execution.py\", line 315, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n",
                format!("  File \"/ComfyUI/nodes.py\", line 1, in {fn_name}\n    raise {}({:?})\n", f.exception_type, f.message),
            ],
            "current_inputs": args.formatted(),
            "current_outputs": current_outputs,
        }))
    }

    async fn node(&mut self, id: &str) -> Result<(), Halt> {
        let class = class_of(&self.graph, id).unwrap_or_default().to_owned();
        let def = nodes::find(&class).ok_or_else(|| {
            Halt::Failed(json!({"prompt_id": self.pid(), "node_id": id, "node_type": class,
                "executed": self.executed, "exception_message": "unknown class", "exception_type": "KeyError",
                "traceback": [], "current_inputs": {}, "current_outputs": []}))
        })?;
        let pid = self.pid().to_owned();
        if let Some(c) = self
            .keys
            .get(id)
            .and_then(|k| self.app.state().cache.get(k).cloned())
        {
            // A cached output node: its ui again, no `executing`, no new file.
            if let Some(ui) = &c.ui {
                self.record_ui(id, ui);
                self.emit(
                    "executed",
                    json!({"node": id, "display_node": id, "output": ui, "prompt_id": pid}),
                    To::Client,
                )
                .await?;
            }
            self.results.insert(id.to_owned(), c);
            self.set_progress(id, json!(1.0), json!(1.0), "finished");
            self.progress_state().await?;
            self.executed.push(id.to_owned());
            return Ok(());
        }

        self.set_progress(id, json!(0.0), json!(1.0), "running");
        self.progress_state().await?;
        self.emit(
            "executing",
            json!({"node": id, "display_node": id, "prompt_id": pid}),
            To::Client,
        )
        .await?;
        if self.client.is_some() {
            let mut s = self.app.state();
            if let Some(r) = s.running.as_mut() {
                r.last_node = Some(id.to_owned());
            }
        }
        self.check_interrupt(id, &class)?;
        let args = match self.args(id, &def) {
            Ok(a) => a,
            Err(f) => return Err(self.failure(id, &class, &Args::default(), &f)),
        };
        let injected = self.app.state().fail.remove(&class);
        if let Some((message, kind)) = injected {
            return Err(self.failure(id, &class, &args, &NodeFailure::runtime(&kind, message)));
        }
        let mut max = json!(1.0);
        let produced = match class.as_str() {
            "KSampler" => {
                let steps = nodes::steps(&args).map_err(|f| self.failure(id, &class, &args, &f))?;
                self.sample_steps(id, &class, steps).await?;
                max = json!(steps);
                nodes::sample(&args).map(|o| Cached {
                    outputs: o,
                    ui: None,
                })
            }
            "SaveImage" | "PreviewImage" => self.save(&class, &args).await,
            _ => {
                let dir = self.app.dirs.input.clone();
                let class2 = class.clone();
                let args2 = Args(args.0.clone());
                tokio::task::spawn_blocking(move || nodes::compute(&class2, &args2, &dir))
                    .await
                    .unwrap_or_else(|e| Err(NodeFailure::runtime("RuntimeError", e.to_string())))
                    .map(|o| Cached {
                        outputs: o,
                        ui: None,
                    })
            }
        };
        let produced = Arc::new(produced.map_err(|f| self.failure(id, &class, &args, &f))?);
        {
            let mut s = self.app.state();
            if s.generation != self.generation {
                return Err(Halt::Forgotten);
            }
            if let Some(k) = self.keys.get(id) {
                s.cache.insert(k.clone(), produced.clone());
            }
        }
        self.results.insert(id.to_owned(), produced.clone());
        if let Some(ui) = &produced.ui {
            self.record_ui(id, ui);
            self.emit(
                "executed",
                json!({"node": id, "display_node": id, "output": ui, "prompt_id": pid}),
                To::Client,
            )
            .await?;
        }
        self.set_progress(id, max.clone(), max, "finished");
        self.progress_state().await?;
        self.executed.push(id.to_owned());
        Ok(())
    }

    /// The sampler's steps: each sends `progress` + `progress_state` (+ a preview).
    async fn sample_steps(&mut self, id: &str, class: &str, steps: u64) -> Result<(), Halt> {
        let pid = self.pid().to_owned();
        for i in 1..=steps {
            self.check_interrupt(id, class)?;
            tokio::time::sleep(self.app.cfg.step).await;
            self.pause().await?;
            // The progress hook checks for an interrupt before reporting.
            self.check_interrupt(id, class)?;
            self.emit(
                "progress",
                json!({"value": i, "max": steps, "prompt_id": pid, "node": id}),
                To::ClientOrAll,
            )
            .await?;
            self.set_progress(id, json!(i), json!(steps), "running");
            self.progress_state().await?;
            if self.previews {
                self.pause().await?;
                let meta = json!({"node_id": id, "prompt_id": pid, "display_node_id": id,
                    "parent_node_id": null, "real_node_id": id, "image_type": "image/jpeg"});
                self.app.sockets.preview(
                    self.client.as_deref(),
                    &nodes::preview_jpeg(i, steps),
                    &meta,
                );
            }
        }
        Ok(())
    }

    /// `SaveImage` / `PreviewImage`: PNGs on disk and the ui listing them.
    async fn save(&self, class: &str, args: &Args) -> Result<Cached, NodeFailure> {
        let images = nodes::output_images(args)?;
        let (root, prefix, kind) = if class == "SaveImage" {
            (
                self.app.dirs.output.clone(),
                nodes::filename_prefix(args)?,
                "output",
            )
        } else {
            let tag: String = uuid::Uuid::new_v4()
                .as_bytes()
                .iter()
                .take(5)
                .map(|b| char::from(b'a' + b % 26))
                .collect();
            (
                self.app.dirs.temp.clone(),
                format!("ComfyUI_temp_{tag}"),
                "temp",
            )
        };
        let ui = tokio::task::spawn_blocking(move || -> Result<Value, NodeFailure> {
            let (folder, stem, subfolder, mut counter) = files::save_path(&root, &prefix)
                .map_err(|m| NodeFailure::runtime("Exception", m))?;
            std::fs::create_dir_all(&folder)
                .map_err(|e| NodeFailure::runtime("OSError", e.to_string()))?;
            let mut list = Vec::new();
            for img in images.iter() {
                let file = format!("{stem}_{counter:05}_.png");
                img.save(folder.join(&file))
                    .map_err(|e| NodeFailure::runtime("OSError", e.to_string()))?;
                list.push(json!({"filename": file, "subfolder": subfolder, "type": kind}));
                counter += 1;
            }
            Ok(json!({"images": list}))
        })
        .await
        .unwrap_or_else(|e| Err(NodeFailure::runtime("RuntimeError", e.to_string())))?;
        Ok(Cached {
            outputs: Vec::new(),
            ui: Some(ui),
        })
    }
}
