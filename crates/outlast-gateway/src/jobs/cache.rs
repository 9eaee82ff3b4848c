//! The result cache: a job whose owner, backend, workflow and input contents equal those of a job
//! completed within `cache_ttl` is answered at once from that job's outputs (`completed
//! {cached: true}`) instead of running again.
//!
//! - Only backends that declare themselves [`Backend::deterministic`] take part, and only jobs
//!   with the `cache` option (default true).
//! - The key is SHA-256 over a canonical encoding of (owner, backend, workflow, input name ->
//!   content SHA-256); never the idempotency key or other options. The owner is part of the key,
//!   so one owner never learns what another ran.
//! - Only real completions become sources. A cached answer never replaces an entry, so the key
//!   keeps pointing at the run that produced the bytes; failed and canceled jobs never become
//!   sources.
//! - The cache only ever saves work: any doubt (an expired entry, a source whose outputs are
//!   gone, an error) means the job simply runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use outlast_protocol::{EventKind, JobId, JobSnapshot, JobSpec, JobState};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, InputFile, InputResolver};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::outputs::OutputStore;
use crate::store::{CacheEntry, CacheKey, JobRecord, JobStore, StoreError};

/// Why a lookup or a recording could not be done; the job then simply runs (or is not
/// recorded). Only logged, never answered to a client.
#[derive(Debug, thiserror::Error)]
enum CacheError {
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading an input to hash it failed.
    #[error("hashing an input: {0}")]
    Io(#[from] std::io::Error),
    /// The workflow could not be encoded.
    #[error("encoding the workflow: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The outcome of a lookup.
enum Lookup {
    /// Answered: the job's snapshot after its cached completion.
    Hit(Box<JobSnapshot>),
    /// The job must run; why (for the debug log).
    Miss(&'static str),
}

/// SHA-256 (hex) of every input: the resolver's (computed as the upload arrived), or hashed
/// here, streamed on a blocking thread, when it has none.
async fn input_digests(
    inputs: &BTreeMap<String, InputFile>,
) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, file) in inputs {
        let digest = match &file.sha256 {
            Some(d) => d.clone(),
            None => hash_file(file.path.clone()).await?,
        };
        out.insert(name.clone(), digest);
    }
    Ok(out)
}

async fn hash_file(path: PathBuf) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut file, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The cache's policy; its data lives in the [`JobStore`] (key -> job) and the
/// [`OutputStore`] (the files, shared by hard link).
#[derive(Debug, Clone, Copy)]
pub struct ResultCache {
    ttl: Duration,
}

impl ResultCache {
    /// A cache whose entries answer for `ttl` after their job completed; zero disables it.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl }
    }

    /// No caching at all.
    pub fn disabled() -> Self {
        Self::new(Duration::ZERO)
    }

    /// May `spec` on `backend` be answered from the cache, and become a source for it?
    pub fn applies(&self, spec: &JobSpec, backend: &dyn Backend) -> bool {
        !self.ttl.is_zero() && spec.cache && backend.deterministic()
    }

    fn fresh(&self, completed_at_ms: u64, now_ms: u64) -> bool {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_sub(completed_at_ms) <= ttl
    }

    /// Answers the new job `record` from the cache if an identical job completed within the
    /// ttl and all its outputs still exist: shares them into the new job and stores one
    /// `output` event per output and `completed {cached: true}` in one durable write. Returns
    /// the job's snapshot afterwards, or `None` when the job must be queued as usual (also on
    /// any error: the cache never fails a submission).
    pub async fn answer(
        &self,
        store: &dyn JobStore,
        outputs: &OutputStore,
        backend: &dyn Backend,
        record: &JobRecord,
        inputs: &BTreeMap<String, InputFile>,
    ) -> Option<JobSnapshot> {
        if !self.applies(&record.spec, backend) {
            return None;
        }
        let job = record.snapshot.job_id;
        let answer = match self.lookup(store, outputs, record, inputs).await {
            Ok(Lookup::Hit(snapshot)) => Some(*snapshot),
            Ok(Lookup::Miss(why)) => {
                tracing::debug!(%job, why, "result cache miss");
                None
            }
            Err(e) => {
                tracing::warn!(%job, error = %e, "result cache lookup failed; the job runs");
                None
            }
        };
        let name = backend.name();
        if answer.is_some() {
            tracing::info!(%job, backend = name, "job answered from the result cache");
            metrics::counter!(m::CACHE_HITS, "backend" => name).increment(1);
        } else {
            metrics::counter!(m::CACHE_MISSES, "backend" => name).increment(1);
        }
        answer
    }

    async fn lookup(
        &self,
        store: &dyn JobStore,
        outputs: &OutputStore,
        record: &JobRecord,
        inputs: &BTreeMap<String, InputFile>,
    ) -> Result<Lookup, CacheError> {
        let job = record.snapshot.job_id;
        let key = CacheKey::new(&record.owner, &record.spec, &input_digests(inputs).await?)?;
        let Some(entry) = store.cache_entry(key).await? else {
            return Ok(Lookup::Miss("no entry"));
        };
        if !self.fresh(entry.completed_at_ms, now_ms()) {
            return Ok(Lookup::Miss("expired"));
        }
        let Some(source) = store.get(entry.job).await? else {
            return Ok(Lookup::Miss("the source job is gone"));
        };
        // The owner is in the key; checked again so a foreign job can never answer.
        if source.owner != record.owner
            || source.snapshot.state != JobState::Completed
            || source.snapshot.cached
            || entry.job == job
        {
            return Ok(Lookup::Miss(
                "the entry names no completed run of this owner",
            ));
        }
        for info in &source.snapshot.outputs {
            if let Err(e) = outputs.share(entry.job, job, info).await {
                tracing::debug!(%job, source = %entry.job, output = info.name, error = %e, "cannot share a cached output");
                outputs.remove_all(job).await;
                return Ok(Lookup::Miss("the source's outputs are gone"));
            }
        }
        let batch: Vec<(JobId, EventKind)> = source
            .snapshot
            .outputs
            .iter()
            .map(|info| (job, EventKind::Output(info.clone())))
            .chain(std::iter::once((
                job,
                EventKind::Completed { cached: true },
            )))
            .collect();
        // One write: the job shows all outputs and its completion, or (crash, error) nothing
        // and recovery queues it like any other.
        let stored = store.append(batch).await?;
        let mut snapshot = record.snapshot.clone();
        for result in stored {
            match result {
                Ok(event) => snapshot.apply(&event),
                // Canceled meanwhile (through its idempotency key): the runner drops it.
                Err(_) => {
                    outputs.remove_all(job).await;
                    return Ok(Lookup::Miss("the job ended meanwhile"));
                }
            }
        }
        Ok(Lookup::Hit(Box::new(snapshot)))
    }

    /// Makes the job of `record`, whose run just succeeded, the source for its key (if the
    /// cache applies to it). Called *before* its `completed` event is stored, so that anyone
    /// who saw the completion finds the entry; if the completion is then refused (canceled at
    /// the last moment), lookups see a source that is not completed and miss. The inputs are
    /// resolved again for their digests. Errors are only logged: an unrecorded result means a
    /// later identical job runs again.
    pub async fn remember(
        &self,
        store: &dyn JobStore,
        inputs: &dyn InputResolver,
        backend: &dyn Backend,
        record: &JobRecord,
    ) {
        let job = record.snapshot.job_id;
        match self.record(store, inputs, backend, record).await {
            Ok(true) => tracing::debug!(%job, "result cached"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%job, error = %e, "could not record the result in the cache"),
        }
    }

    async fn record(
        &self,
        store: &dyn JobStore,
        inputs: &dyn InputResolver,
        backend: &dyn Backend,
        record: &JobRecord,
    ) -> Result<bool, CacheError> {
        if !self.applies(&record.spec, backend) {
            return Ok(false);
        }
        let mut files = BTreeMap::new();
        for (name, upload) in &record.spec.inputs {
            match inputs.resolve(&record.owner, *upload).await {
                Ok(file) => {
                    files.insert(name.clone(), file);
                }
                // Removed meanwhile: a later job cannot name it either.
                Err(_) => return Ok(false),
            }
        }
        let key = CacheKey::new(&record.owner, &record.spec, &input_digests(&files).await?)?;
        let entry = CacheEntry {
            job: record.snapshot.job_id,
            completed_at_ms: now_ms(),
        };
        store.put_cache_entry(key, entry).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn key(owner: &str, spec: &JobSpec, inputs: &[(&str, &str)]) -> CacheKey {
        CacheKey::new(&owner.parse().expect("owner"), spec, &digests(inputs)).expect("encodable")
    }

    #[test]
    fn serde_json_writes_object_keys_sorted() {
        // Fails if serde_json's `preserve_order` feature gets enabled anywhere in the build:
        // the key would then depend on the order the client wrote its fields in.
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"z": 2, "y": 3}}"#).expect("json");
        assert_eq!(
            serde_json::to_vec(&v).expect("encode"),
            br#"{"a":{"y":3,"z":2},"b":1}"#
        );
    }

    #[test]
    fn what_the_key_covers() {
        let spec = |wf: serde_json::Value| JobSpec::new("demo", wf);
        let base = spec(serde_json::json!({"steps": 2, "step_ms": 5}));
        let k = key("alice", &base, &[("image", "AB")]);

        // Field order in the client's JSON, letter case of the digest, options: not covered.
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"step_ms": 5, "steps": 2}"#).expect("json");
        assert_eq!(k, key("alice", &spec(reordered), &[("image", "ab")]));
        let mut options = base.clone();
        options.cache = false;
        options.retries = 3;
        options.idempotency_key = Some("order-1".parse().expect("key"));
        assert_eq!(k, key("alice", &options, &[("image", "ab")]));

        // Owner, backend, workflow, input names and contents: covered.
        assert_ne!(k, key("bob", &base, &[("image", "ab")]));
        let mut other_backend = base.clone();
        other_backend.backend = "comfyui".into();
        assert_ne!(k, key("alice", &other_backend, &[("image", "ab")]));
        assert_ne!(
            k,
            key(
                "alice",
                &spec(serde_json::json!({"steps": 3, "step_ms": 5})),
                &[("image", "ab")]
            )
        );
        assert_ne!(k, key("alice", &base, &[("image", "ac")]));
        assert_ne!(k, key("alice", &base, &[("mask", "ab")]));
        assert_ne!(k, key("alice", &base, &[]));
        // Length prefixes: moving bytes between fields changes the key.
        assert_ne!(
            key("alice", &base, &[("ab", "c")]),
            key("alice", &base, &[("a", "bc")])
        );
    }

    #[test]
    fn freshness_is_inclusive_and_tolerates_clock_steps() {
        let cache = ResultCache::new(Duration::from_secs(10));
        assert!(cache.fresh(1_000, 11_000));
        assert!(!cache.fresh(1_000, 11_001));
        assert!(
            cache.fresh(5_000, 1_000),
            "a clock stepped back is not expiry"
        );
    }
}
