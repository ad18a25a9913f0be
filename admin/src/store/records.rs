//! What the store keeps, one serde_json value per sled entry. Every struct that holds a
//! secret-derived value (password PHC string, signing seed, refresh-token hash) has a
//! hand-written `Debug` that leaves it out.

use keygate_core::snapshot::{KeyEntry, RevokedSession, SigningKeyEntry};
use keygate_core::{AccessClaims, KeyHash, KeyKind, Mode, UnixTime};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Business {
    pub id: String,
    pub name: String,
    pub created_at: UnixTime,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// Normalised: trimmed, lowercase.
    pub email: String,
    /// argon2id PHC string.
    pub password_phc: String,
    pub businesses: Vec<String>,
    pub created_at: UnixTime,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("id", &self.id).field("businesses", &self.businesses).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    pub business: String,
    pub kind: KeyKind,
    pub mode: Mode,
    /// SHA-256 of the raw key; `KeyHash`'s own `Debug` prints no digits.
    pub hash: KeyHash,
    /// `sk_live_` plus four characters: enough to recognise a key, useless to an attacker.
    pub prefix: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<UnixTime>,
    pub created_at: UnixTime,
    pub active: bool,
    #[serde(default)]
    pub last_used_at: Option<UnixTime>,
}

impl Key {
    /// The key as the filter sees it in a snapshot.
    pub fn entry(&self) -> KeyEntry {
        KeyEntry {
            hash: self.hash,
            id: self.id.clone(),
            business: self.business.clone(),
            kind: self.kind,
            mode: self.mode,
            scopes: self.scopes.clone(),
            expires_at: self.expires_at,
            active: self.active,
        }
    }

    pub fn usable_at(&self, now: UnixTime) -> bool {
        self.active && self.expires_at.is_none_or(|at| now < at)
    }
}

/// Whose session it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionOwner {
    /// Opened by `POST /auth/signin`.
    User { user_id: String },
    /// Opened by `POST /auth/login`: one per (key, client session id).
    Key { key_id: String, client_session: String },
}

/// The claims of the token a session currently hands out, and the key that signs them.
/// Ed25519 signatures are deterministic, so re-signing these gives the same token bytes:
/// the token itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub kid: String,
    pub claims: AccessClaims,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub owner: SessionOwner,
    pub created_at: UnixTime,
    /// SHA-256 (hex) of the refresh token, for sign-in sessions.
    #[serde(default)]
    pub refresh_sha256: Option<String>,
    #[serde(default)]
    pub refresh_expires_at: Option<UnixTime>,
    #[serde(default)]
    pub current: Option<IssuedToken>,
    /// The latest `exp` of any token this session issued: a revocation must outlive it.
    pub last_exp: UnixTime,
    #[serde(default)]
    pub revoked_at: Option<UnixTime>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("last_exp", &self.last_exp)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    /// The Ed25519 seed, hex. Never logged, never served.
    pub seed_hex: String,
    pub public: SigningKeyEntry,
    pub created_at: UnixTime,
    /// Set when a newer key took over signing; the public half stays published while
    /// tokens it signed may live.
    #[serde(default)]
    pub retired_at: Option<UnixTime>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("retired_at", &self.retired_at).finish_non_exhaustive()
    }
}

/// One changelog entry: what the filter must learn. It carries the whole new state of the
/// thing that changed, so a delta is built from the changelog alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    KeyUpsert { key: KeyEntry },
    KeyRemoved { hash: KeyHash },
    SigningKeyAdded { key: SigningKeyEntry },
    SigningKeyRemoved { kid: String },
    SessionRevoked { session: RevokedSession },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub version: u64,
    pub at: UnixTime,
    pub change: Change,
}
