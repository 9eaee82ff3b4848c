//! Who is asking and what they may do: a credential (static token, signed token, ticket)
//! resolves to a [`Principal`] (owner, scopes, allowed backends, expiry). Without any configured
//! credential everyone is the local owner with every scope. The HTTP extractor that applies this
//! to a request is `http::owner::Owner`; the WebSocket session keeps its `Principal`.

pub mod jwt;
pub mod tickets;

use std::collections::BTreeMap;
use std::time::Duration;

use outlast_protocol::{ErrorCode, OwnerId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::AppError;

pub use jwt::{Claims, Keys, mint};
pub use tickets::Tickets;

/// One permission a credential may carry. A credential without a `scope` claim (and every
/// static token) has [`Scopes::ALL`]; `admin` implies the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Submit and cancel jobs.
    Submit,
    /// Read jobs: snapshots, events (WebSocket, SSE, long-poll), outputs.
    Read,
    /// Create and write uploads (tus and WebSocket).
    Upload,
    /// Everything, and the operator's endpoints.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Submit, Scope::Read, Scope::Upload, Scope::Admin];

    /// The name in a token's `scope` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Upload => "upload",
            Scope::Admin => "admin",
        }
    }

    /// The scope of a name.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    const fn bit(self) -> u8 {
        match self {
            Scope::Submit => 1,
            Scope::Read => 2,
            Scope::Upload => 4,
            Scope::Admin => 8,
        }
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope, `admin` included.
    pub const ALL: Scopes = Scopes(15);

    /// The set of these scopes.
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Scopes {
        Scopes(scopes.into_iter().fold(0, |acc, s| acc | s.bit()))
    }

    /// Whether `scope` is granted (directly or through `admin`).
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// The names, space-separated (the `scope` claim's form).
    pub fn to_claim(self) -> String {
        Scope::ALL
            .into_iter()
            .filter(|s| self.0 & s.bit() != 0)
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a request is allowed: resolved from its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Whose jobs and uploads these are.
    pub owner: OwnerId,
    /// What it may do.
    pub scopes: Scopes,
    /// The backends it may submit to; `None` means any.
    pub backends: Option<Vec<String>>,
    /// When the credential expires (Unix ms); `None` for static tokens and without auth.
    pub expires_at_ms: Option<u64>,
}

impl Principal {
    /// The local owner with every scope (auth off).
    pub fn local() -> Principal {
        Principal {
            owner: OwnerId::local(),
            scopes: Scopes::ALL,
            backends: None,
            expires_at_ms: None,
        }
    }

    /// Refuses (403) when `scope` is missing.
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        if self.scopes.allows(scope) {
            Ok(())
        } else {
            Err(AppError::new(
                ErrorCode::Forbidden,
                format!("this credential lacks the `{}` scope", scope.as_str()),
            ))
        }
    }

    /// Refuses (403) a submission to a backend the credential does not allow (or without the
    /// `submit` scope).
    pub fn may_submit(&self, backend: &str) -> Result<(), AppError> {
        self.require(Scope::Submit)?;
        match &self.backends {
            Some(list) if !list.iter().any(|b| b == backend) => Err(AppError::new(
                ErrorCode::Forbidden,
                "this credential may not submit to this backend",
            )),
            _ => Ok(()),
        }
    }
}

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
