//! The run's resume state: one JSON file per run, written atomically (temp file, fsync,
//! rename, fsync of the directory) so a `kill -9` at any moment leaves either the old or the
//! new state, never a torn one.
//!
//! What it holds: per file its prepared hash and upload id; per job its idempotency key, id,
//! last seq seen, outputs and downloads. The server stays the truth for upload offsets and job
//! state; the file only says which server objects belong to this run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use outlast_protocol::{JobId, JobState, OutputInfo, UploadId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::prepare::Prepared;

/// Format version of the state file.
const VERSION: u32 = 1;

/// The whole state of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// [`VERSION`].
    pub version: u32,
    /// Random per run; mixed into every idempotency key, so `--fresh` makes new jobs.
    pub nonce: String,
    /// Files by relative name.
    pub files: Vec<FileState>,
    /// Jobs in submission order.
    pub jobs: Vec<JobRecord>,
}

/// One input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileState {
    /// Relative name (see [`crate::walk::Input::rel`]).
    pub rel: String,
    /// Source size and modification time when prepared; a change means prepare again.
    pub source_size: u64,
    /// Milliseconds since the epoch.
    pub source_mtime_ms: u64,
    /// What is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Prepared>,
    /// The server's upload, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<UploadId>,
    /// The upload is complete on the server.
    #[serde(default)]
    pub uploaded: bool,
}

/// One job of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// The relative names of its input files, in input-name order.
    pub files: Vec<String>,
    /// Its idempotency key (the same on every rerun of the same command).
    pub key: String,
    /// Results are saved as `--out/<prefix><output name>` (named after the input file).
    pub out_prefix: String,
    /// The job, once the gateway answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// Newest event seq seen.
    #[serde(default)]
    pub last_seq: u64,
    /// Newest known state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// Failure or refusal, for the summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Outputs announced so far.
    #[serde(default)]
    pub outputs: Vec<OutputInfo>,
    /// Output names downloaded and verified (stored under `--out`).
    #[serde(default)]
    pub downloaded: Vec<String>,
}

/// The state and its file; mutate through [`Store::update`], then [`Store::save`].
///
/// A std `Mutex` because no `.await` ever happens while it is held; saving copies the state
/// out under the lock and writes it outside (serialised by `write_lock`).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    state: Mutex<(State, u64)>,
    write_lock: tokio::sync::Mutex<u64>,
}

impl Store {
    /// Loads the state at `path`, or starts an empty one (also with `fresh`).
    pub fn open(path: PathBuf, fresh: bool) -> anyhow::Result<Store> {
        let state = match std::fs::read(&path) {
            Ok(bytes) if !fresh => {
                let s: State = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: unreadable state ({e}); remove it or use --fresh",
                        path.display()
                    )
                })?;
                anyhow::ensure!(
                    s.version == VERSION,
                    "{}: state version {} is not {VERSION}; use --fresh",
                    path.display(),
                    s.version
                );
                s
            }
            _ => State {
                version: VERSION,
                nonce: uuid::Uuid::new_v4().simple().to_string(),
                ..State::default()
            },
        };
        Ok(Store {
            path,
            state: Mutex::new((state, 1)),
            write_lock: tokio::sync::Mutex::new(0),
        })
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard.0)
    }

    /// Changes the state in memory (call [`Store::save`] to persist).
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.1 += 1;
        f(&mut guard.0)
    }

    /// Writes the current state atomically; a save that finds a newer one already written
    /// does nothing.
    pub async fn save(&self) -> anyhow::Result<()> {
        let mut written = self.write_lock.lock().await;
        let (bytes, generation) = {
            let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (serde_json::to_vec_pretty(&guard.0)?, guard.1)
        };
        if generation <= *written {
            return Ok(());
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await??;
        *written = generation;
        Ok(())
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `bytes` to `path` so that readers (and a crash) see the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself must be durable before anyone acts on it.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The run key: what makes "the same command". Output, display and transport flags do not
/// count; what is sent and how it is processed does.
pub fn run_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

/// The idempotency key of a job: stable for the same run, files and contents.
pub fn job_key(nonce: &str, files: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    h.update(nonce.as_bytes());
    for (rel, sha) in files {
        h.update([0]);
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(sha.as_bytes());
    }
    format!("olu-{}", hex::encode(&h.finalize()[..20]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        let a = job_key("n", &[("a.jpg", "00")]);
        assert_eq!(a, job_key("n", &[("a.jpg", "00")]));
        assert_ne!(a, job_key("n", &[("a.jpg", "01")]));
        assert_ne!(a, job_key("m", &[("a.jpg", "00")]));
        assert!(a.len() <= 200 && !a.contains(' '));
        assert_ne!(run_key(&["a", "bc"]), run_key(&["ab", "c"]));
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("olu-state-{}", std::process::id()));
        let p = dir.join("s.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
