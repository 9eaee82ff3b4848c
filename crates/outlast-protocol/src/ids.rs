//! Typed identifiers and stream positions: every id on the wire is one of these.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: expected {expected}")]
pub struct IdError {
    /// Which identifier was being parsed (`job id`, `upload id`, ...).
    pub kind: &'static str,
    /// What a valid value looks like.
    pub expected: &'static str,
}

macro_rules! random_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// The text every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random (v4) id: 122 random bits, so ids cannot be guessed.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID (storage keys use the raw 16 bytes).
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The raw 16 bytes, used as a compact, ordered storage key.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Rebuilds an id from storage bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = IdError {
                    kind: $kind,
                    expected: concat!("\"", $prefix, "\" followed by 32 lowercase hex digits"),
                };
                let hex = s.strip_prefix($prefix).ok_or(err.clone())?;
                if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(err);
                }
                Uuid::parse_str(hex).map(Self).map_err(|_| err)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

random_id!(
    /// A job, e.g. `job_4f0c2d1e9a7b4c3d8e2f1a0b9c8d7e6f`.
    JobId,
    "job_",
    "job id"
);
random_id!(
    /// An upload, e.g. `upl_4f0c2d1e9a7b4c3d8e2f1a0b9c8d7e6f`.
    UploadId,
    "upl_",
    "upload id"
);

/// The authenticated owner of uploads, jobs, events and outputs.
///
/// 1 to 64 characters from `[A-Za-z0-9_.-]`, so it is safe in paths and keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OwnerId(String);

impl OwnerId {
    /// The owner used when the gateway runs without configured auth.
    pub fn local() -> Self {
        Self("local".to_owned())
    }

    /// The owner name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OwnerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError {
                kind: "owner id",
                expected: "1-64 characters of [A-Za-z0-9_.-]",
            })
        }
    }
}

impl<'de> Deserialize<'de> for OwnerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen key that makes job submission idempotent: 1 to 200 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError {
                kind: "idempotency key",
                expected: "1-200 printable ASCII characters without spaces",
            })
        }
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The position of an event in its job's stream. The first event is `Seq(1)`;
/// `Seq(0)` means "nothing seen yet".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// Before the first event.
    pub const ZERO: Seq = Seq(0);

    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A byte offset into an upload.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_round_trips_and_rejects_near_misses() {
        let id = JobId::random();
        let text = id.to_string();
        assert!(text.starts_with("job_"));
        assert_eq!(text.parse::<JobId>(), Ok(id));
        for bad in [
            "",
            "job_",
            "upl_00000000000000000000000000000000",
            "job_0000000000000000000000000000000",
            "job_0000000000000000000000000000000g",
            "job_0000000000000000000000000000000A",
            "job_00000000-0000-0000-0000-000000000000",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn owner_and_key_validation() {
        assert!("alice".parse::<OwnerId>().is_ok());
        assert!("../etc".parse::<OwnerId>().is_err());
        assert!("".parse::<OwnerId>().is_err());
        assert!("a".repeat(65).parse::<OwnerId>().is_err());
        assert!("order-42".parse::<IdempotencyKey>().is_ok());
        assert!("has space".parse::<IdempotencyKey>().is_err());
        assert!("k".repeat(201).parse::<IdempotencyKey>().is_err());
    }
}
