//! Who is asking and what they may do: a credential (static token, signed token, ticket)
//! resolves to a [`Principal`] (owner, scopes, allowed backends, expiry). Without any configured
//! credential everyone is the local owner with every scope. The HTTP extractor that applies this
//! to a request is `http::owner::Owner`; the WebSocket session keeps its `Principal`.

pub mod jwt;
pub mod principal;
pub mod tickets;

use std::collections::BTreeMap;
use std::time::Duration;

use outlast_protocol::{ErrorCode, OwnerId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::AppError;

pub use jwt::{Claims, Keys, mint};
pub use principal::{Principal, Scope, Scopes};
pub use tickets::Tickets;

/// A credential as presented.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// `Authorization: Bearer` (or an enabled `?access_token=`, or a `refresh` message): a
    /// static token or a signed token.
    Bearer(&'a str),
    /// A single-use ticket from `POST /v1/tickets`.
    Ticket(&'a str),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(..)"),
            Credential::Ticket(_) => f.write_str("Ticket(..)"),
        }
    }
}

/// How credentials are checked: from the configuration.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Static tokens: secret -> owner.
    pub tokens: BTreeMap<String, OwnerId>,
    /// Signed-token verification keys by `kid`.
    pub jwt_keys: BTreeMap<String, String>,
    /// How long a ticket is valid.
    pub ticket_ttl: Duration,
    /// Whether `?access_token=` is accepted.
    pub allow_query_token: bool,
}

impl AuthSettings {
    /// From the configuration: `auth.tokens`, `jwt.keys`, `tickets.ttl`,
    /// `http.allow_query_token`.
    pub fn from_config(config: &Config) -> AuthSettings {
        AuthSettings {
            tokens: config.tokens.clone(),
            jwt_keys: config.jwt.keys.clone(),
            ticket_ttl: config.tickets.ttl,
            allow_query_token: config.http.allow_query_token,
        }
    }
}

/// Resolves credentials to principals.
#[derive(Debug)]
pub struct Auth {
    /// sha256(secret) -> owner. Hashing first makes the comparison length-independent.
    tokens: Vec<([u8; 32], OwnerId)>,
    keys: Keys,
    tickets: Tickets,
    allow_query_token: bool,
}

impl Auth {
    /// From the configured credentials; none configured means no auth.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            tokens: settings
                .tokens
                .iter()
                .map(|(s, o)| (Sha256::digest(s.as_bytes()).into(), o.clone()))
                .collect(),
            keys: Keys::new(&settings.jwt_keys),
            tickets: Tickets::new(settings.ticket_ttl),
            allow_query_token: settings.allow_query_token,
        }
    }

    /// True when any credential is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || !self.keys.is_empty()
    }

    /// Whether long-lived tokens are accepted in `?access_token=`.
    pub fn allow_query_token(&self) -> bool {
        self.allow_query_token
    }

    /// The tickets.
    pub fn tickets(&self) -> &Tickets {
        &self.tickets
    }

    /// The principal of a presented credential (the local owner when auth is off; a ticket is
    /// spent even then).
    pub fn resolve(&self, credential: Option<Credential<'_>>) -> Result<Principal, AppError> {
        match credential {
            Some(Credential::Ticket(t)) => self.tickets.redeem(t).ok_or_else(|| {
                AppError::new(
                    ErrorCode::Unauthorized,
                    "unknown, used or expired ticket; get a new one from POST /v1/tickets",
                )
            }),
            _ if !self.enabled() => Ok(Principal::local()),
            None => Err(unauthorized("missing access token")),
            Some(Credential::Bearer(token)) => self.bearer(token),
        }
    }

    /// A bearer token: a static token, else a signed one.
    fn bearer(&self, token: &str) -> Result<Principal, AppError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (candidate, owner) in &self.tokens {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(owner.clone());
            }
        }
        if let Some(owner) = found {
            return Ok(Principal {
                owner,
                scopes: Scopes::ALL,
                backends: None,
                expires_at_ms: None,
            });
        }
        if self.keys.is_empty() || !jwt::looks_like_jwt(token) {
            return Err(unauthorized("invalid access token"));
        }
        self.keys.verify(token)
    }
}

fn unauthorized(message: &str) -> AppError {
    AppError::new(ErrorCode::Unauthorized, message)
}
