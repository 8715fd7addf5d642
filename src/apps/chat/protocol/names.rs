//! Validated names: user and room names (1–32 and 1–64 of `[A-Za-z0-9_.-]`),
//! checked once when they enter — from a client frame, a query string or the
//! shared store — so everything past the protocol can trust them. This is the
//! protocol's leaf module: a bad name is reported as an [`InvalidName`], which
//! `errors` turns into a [`ChatError`](super::ChatError).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest user name (docs/chat-protocol.md).
pub const MAX_USER_LEN: usize = 32;
/// Longest room name. The spec only fixes user names; rooms use the same
/// characters so they can appear in URLs and cursors without escaping.
pub const MAX_ROOM_LEN: usize = 64;

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A name that is not 1–N of `[A-Za-z0-9_.-]`, with the offending value
/// (truncated). Its text is the client-facing message of the `invalid_user` /
/// `invalid_room` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("invalid user name {}: use 1-32 of A-Z a-z 0-9 _ . -", crate::quoted::Quoted(.0))]
    User(String),
    #[error("invalid room name {}: use 1-64 of A-Z a-z 0-9 _ . -", crate::quoted::Quoted(.0))]
    Room(String),
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidName> {
                if valid_name(s, $max) {
                    Ok(Self(Arc::from(s)))
                } else {
                    Err($err(s))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Deserializing validates too, so names read back from a shared store
        /// (the Redis bus) are as trustworthy as names from a client.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A user name: 1–32 of `[A-Za-z0-9_.-]`.
    UserName,
    MAX_USER_LEN,
    |s: &str| InvalidName::User(truncate(s))
);
name_type!(
    /// A room name: 1–64 of `[A-Za-z0-9_.-]`.
    RoomName,
    MAX_ROOM_LEN,
    |s: &str| InvalidName::Room(truncate(s))
);

impl UserName {
    /// `guest-` and eight random lowercase letters and digits, for clients that
    /// did not say who they are.
    pub fn guest() -> Self {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let tail: String = (0..8)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        Self(Arc::from(format!("guest-{tail}")))
    }
}

/// Keeps error messages short when a client sends a huge bad value.
pub(super) fn truncate(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
