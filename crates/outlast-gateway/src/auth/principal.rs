//! What a credential grants: the owner, [`Scopes`], the allowed backends and the expiry.

use outlast_protocol::{ErrorCode, OwnerId};

use crate::error::AppError;

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
