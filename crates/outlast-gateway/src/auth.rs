//! Who is asking: bearer tokens map to owners; without tokens everyone is the local owner.
//! The HTTP extractor that applies this to a request is `http::owner::Owner`.

use std::collections::BTreeMap;

use outlast_protocol::{ErrorCode, OwnerId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::AppError;

/// Resolves credentials to owners.
#[derive(Debug, Clone)]
pub struct Auth {
    /// sha256(secret) -> owner. Hashing first makes the comparison length-independent.
    tokens: Vec<([u8; 32], OwnerId)>,
}

impl Auth {
    /// From the configured `secret -> owner` map; empty means no auth.
    pub fn new(tokens: &BTreeMap<String, OwnerId>) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|(s, o)| (Sha256::digest(s.as_bytes()).into(), o.clone()))
                .collect(),
        }
    }

    /// True when tokens are configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The owner for a presented token (or the local owner when auth is off).
    pub fn owner_for(&self, token: Option<&str>) -> Result<OwnerId, AppError> {
        if !self.enabled() {
            return Ok(OwnerId::local());
        }
        let unauthorized =
            || AppError::new(ErrorCode::Unauthorized, "missing or invalid access token");
        let digest: [u8; 32] = Sha256::digest(token.ok_or_else(unauthorized)?.as_bytes()).into();
        let mut found = None;
        for (candidate, owner) in &self.tokens {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(owner.clone());
            }
        }
        found.ok_or_else(unauthorized)
    }
}
