//! Signed tokens: HS256 JWTs (`jsonwebtoken`) with `sub` (owner), `exp`, optional `scope`
//! (space-separated: submit read upload admin) and optional `backends`; verification keys by
//! `kid` for rotation. `mint` is what `outlast token` runs.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use outlast_protocol::{ErrorCode, OwnerId};
use serde::{Deserialize, Serialize};

use super::principal::{Principal, Scope, Scopes};
use crate::error::AppError;

/// The claims of an Outlast token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The owner.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Space-separated scopes; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Backends the token may submit to; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
}

/// The verification keys, by `kid`.
pub struct Keys {
    keys: Vec<(String, DecodingKey)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Keys").field("kids", &kids).finish()
    }
}

/// Three base64url parts: worth trying as a JWT.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Keys {
    /// From `kid -> secret`.
    pub fn new(keys: &BTreeMap<String, String>) -> Keys {
        Keys {
            keys: keys
                .iter()
                .map(|(kid, secret)| (kid.clone(), DecodingKey::from_secret(secret.as_bytes())))
                .collect(),
        }
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a token: HS256 only, `kid` names a key (or, without `kid`, exactly one key is
    /// configured), signature, `exp` (no leeway), `sub` a valid owner, known scope names.
    pub fn verify(&self, token: &str) -> Result<Principal, AppError> {
        let bad = |m: &str| AppError::new(ErrorCode::Unauthorized, m.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed token"))?;
        if header.alg != Algorithm::HS256 {
            return Err(bad("token algorithm must be HS256"));
        }
        let key = match (&header.kid, self.keys.as_slice()) {
            (Some(kid), keys) => keys
                .iter()
                .find(|(k, _)| k == kid)
                .map(|(_, key)| key)
                .ok_or_else(|| bad("token signed with an unknown key (kid)"))?,
            (None, [(_, only)]) => only,
            (None, _) => return Err(bad("token without kid; several keys are configured")),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => bad("token expired"),
            ErrorKind::InvalidSignature => bad("token signature does not verify"),
            _ => bad("invalid token"),
        })?;
        let claims = data.claims;
        let owner: OwnerId = claims
            .sub
            .parse()
            .map_err(|_| bad("token subject is not a valid owner"))?;
        let scopes = match &claims.scope {
            None => Scopes::ALL,
            Some(text) => {
                let mut list = Vec::new();
                for name in text.split_ascii_whitespace() {
                    list.push(
                        Scope::parse(name).ok_or_else(|| bad("token names an unknown scope"))?,
                    );
                }
                Scopes::of(list)
            }
        };
        Ok(Principal {
            owner,
            scopes,
            backends: claims.backends,
            expires_at_ms: Some(claims.exp.saturating_mul(1000)),
        })
    }
}

/// Signs `claims` with `secret` under `kid` (HS256).
pub fn mint(
    claims: &Claims,
    kid: &str,
    secret: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn keys() -> Keys {
        Keys::new(&BTreeMap::from([("k1".to_owned(), SECRET.to_owned())]))
    }

    fn claims(exp: u64, scope: Option<&str>) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            iat: None,
            scope: scope.map(str::to_owned),
            backends: None,
        }
    }

    fn later() -> u64 {
        crate::clock::now_ms() / 1000 + 3600
    }

    #[test]
    fn valid_token_resolves_owner_and_scopes() {
        let t = mint(&claims(later(), Some("read upload")), "k1", SECRET).unwrap();
        let p = keys().verify(&t).unwrap();
        assert_eq!(p.owner.as_str(), "alice");
        assert!(p.scopes.allows(Scope::Read) && p.scopes.allows(Scope::Upload));
        assert!(!p.scopes.allows(Scope::Submit));
    }

    #[test]
    fn refusals() {
        let expired = mint(&claims(1000, None), "k1", SECRET).unwrap();
        let wrong_key = mint(
            &claims(later(), None),
            "k1",
            "another-secret-another-secret-xx",
        )
        .unwrap();
        let unknown_kid = mint(&claims(later(), None), "k9", SECRET).unwrap();
        let bad_scope = mint(&claims(later(), Some("root")), "k1", SECRET).unwrap();
        for (t, msg) in [
            (expired, "token expired"),
            (wrong_key, "token signature does not verify"),
            (unknown_kid, "token signed with an unknown key (kid)"),
            (bad_scope, "token names an unknown scope"),
        ] {
            let e = keys().verify(&t).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (ErrorCode::Unauthorized, msg));
        }
    }
}
