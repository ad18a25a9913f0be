//! What the store keeps, one serde_json value per tree entry. Every struct that holds a
//! secret-derived value (password PHC string, signing seed, refresh-token hash) has a
//! hand-written `Debug` that leaves it out.

use keygate_core::cidr::Cidr;
use keygate_core::credits::CreditsEntry;
use keygate_core::oidc::{IssuerEntry, IssuerKey};
use keygate_core::ratelimit::Limit;
use keygate_core::snapshot::{BusinessLimits, History, KeyEntry, RevokedSession, SigningKeyEntry};
use keygate_core::{AccessClaims, KeyHash, KeyKind, Mode, UnixTime};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::seal::SealedSeed;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Business {
    pub id: String,
    pub name: String,
    pub created_at: UnixTime,
    /// Limits for each of its keys, replacing the filters' rule and kind defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key_limits: Option<Vec<Limit>>,
    /// Limits shared by all its keys, replacing the filters' `rate_limits.business`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_limits: Option<Vec<Limit>>,
}

impl Business {
    pub fn new(id: String, name: String, created_at: UnixTime) -> Business {
        Business { id, name, created_at, per_key_limits: None, shared_limits: None }
    }

    /// The business's overrides as the filter sees them (both absent: none).
    pub fn limits(&self) -> BusinessLimits {
        BusinessLimits { business: self.id.clone(), per_key: self.per_key_limits.clone(), shared: self.shared_limits.clone() }
    }
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
    /// When the raw key was last rotated (same id, new hash).
    #[serde(default)]
    pub rotated_at: Option<UnixTime>,
    /// Hashes of earlier raw keys that still work until their `until` (rotation grace).
    #[serde(default)]
    pub grace: Vec<GraceHash>,
    /// Uses left, when the key has credits (see `store::credits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsEntry>,
    /// When not empty, the only client addresses the filters let the key in from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<Cidr>,
    /// The key's own limits, replacing its business's, its rule's and its kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<Limit>>,
}

/// A rotated-away raw key that keeps working until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceHash {
    pub hash: KeyHash,
    pub until: UnixTime,
}

impl Key {
    /// A key as it is first stored, created or imported: active, never used or rotated,
    /// without name, scopes or expiry until the caller sets them.
    pub fn new(id: String, business: String, kind: KeyKind, mode: Mode, hash: KeyHash, prefix: String, created_at: UnixTime) -> Key {
        Key {
            id,
            business,
            kind,
            mode,
            hash,
            prefix,
            name: None,
            scopes: vec![],
            expires_at: None,
            created_at,
            active: true,
            last_used_at: None,
            rotated_at: None,
            grace: vec![],
            credits: None,
            allowed_ips: vec![],
            rate_limits: None,
        }
    }

    /// The key as the filter sees it in a snapshot (its current raw key).
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
            credits: self.credits,
            allowed_ips: self.allowed_ips.clone(),
            rate_limits: self.rate_limits.clone(),
        }
    }

    /// The entry of an earlier raw key in its rotation grace: the same key, expiring at
    /// the end of the grace (or the key's own expiry, if sooner).
    pub fn grace_entry(&self, grace: &GraceHash) -> KeyEntry {
        let mut entry = self.entry();
        entry.hash = grace.hash;
        entry.expires_at = Some(self.expires_at.map_or(grace.until, |at| at.min(grace.until)));
        entry
    }

    /// Every snapshot entry of this key: the current raw key and those in grace.
    pub fn entries(&self, now: UnixTime) -> Vec<KeyEntry> {
        let mut out = vec![self.entry()];
        out.extend(self.grace.iter().filter(|g| g.until > now).map(|g| self.grace_entry(g)));
        out
    }

    pub fn usable_at(&self, now: UnixTime) -> bool {
        self.active && self.expires_at.is_none_or(|at| now < at)
    }

    /// Whether the raw key with `hash` opens this key at `now`: the current one, or an
    /// earlier one still in its rotation grace; and the key active and unexpired.
    pub fn accepts(&self, hash: &KeyHash, now: UnixTime) -> bool {
        self.usable_at(now) && (self.hash == *hash || self.grace.iter().any(|g| g.hash == *hash && g.until > now))
    }
}

/// Hourly request counts of one key (from the filters' usage reports), oldest first,
/// bounded to [`USAGE_HOURS`] hours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsageRecord {
    /// (hour start, unix seconds, multiple of 3600; count)
    pub hours: Vec<(UnixTime, u64)>,
}

/// How many hours of counts a key keeps: one week.
pub const USAGE_HOURS: u64 = 7 * 24;

impl KeyUsageRecord {
    pub fn add(&mut self, at: UnixTime, count: u64) {
        let hour = at - at % 3600;
        match self.hours.binary_search_by_key(&hour, |(h, _)| *h) {
            Ok(i) => self.hours[i].1 = self.hours[i].1.saturating_add(count),
            Err(i) => self.hours.insert(i, (hour, count)),
        }
        let newest = self.hours.last().map_or(hour, |(h, _)| *h);
        let floor = newest.saturating_sub((USAGE_HOURS - 1) * 3600);
        self.hours.retain(|(h, _)| *h >= floor);
    }
}

/// One live session in an owner's list (a key's or a user's), for the per-owner cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedSession {
    pub sid: String,
    pub created_at: UnixTime,
    /// For an API-key login session: the client address (an IPv6 client's /64) that
    /// opened it; past the key's cap a login only displaces sessions of its own client.
    /// Absent on sign-in sessions and on sessions stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
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
    /// The Ed25519 seed, hex, on a sled store run without a seal key; empty once sealed.
    /// Never logged, never served.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seed_hex: String,
    /// The seed sealed with a seal key ([`crate::seal`]): what a store run with one keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_seed: Option<SealedSeed>,
    pub public: SigningKeyEntry,
    pub created_at: UnixTime,
    /// Set when a newer key took over signing; the public half stays published while
    /// tokens it signed may live.
    #[serde(default)]
    pub retired_at: Option<UnixTime>,
    /// When a retired key's public half is withdrawn: after every token it signed expired.
    #[serde(default)]
    pub remove_after: Option<UnixTime>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("retired_at", &self.retired_at)
            .field("remove_after", &self.remove_after)
            .finish_non_exhaustive()
    }
}

/// One changelog entry: what the filter must learn. It carries the whole new state of the
/// thing that changed, so a delta is built from the changelog alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    KeyUpsert {
        key: KeyEntry,
    },
    KeyRemoved {
        hash: KeyHash,
    },
    SigningKeyAdded {
        key: SigningKeyEntry,
    },
    SigningKeyRemoved {
        kid: String,
    },
    SessionRevoked {
        session: RevokedSession,
    },
    /// A business's limits were set or cleared (both absent).
    BusinessLimits {
        limits: BusinessLimits,
    },
    /// A trusted issuer registered, or its pinned keys changed.
    IssuerUpsert {
        issuer: IssuerEntry,
    },
    IssuerRemoved {
        id: String,
    },
}

/// A trusted issuer: a business's own identity provider whose access tokens the filter
/// accepts (see [`keygate_core::oidc`]), with the signing keys admin fetched and pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerRecord {
    /// `iss_…`
    pub id: String,
    /// The business it was registered for: the only one it vouches for.
    pub business: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Where the keys come from: `discovery` (`<issuer>/.well-known/openid-configuration`
    /// names the JWKS), `jwks_uri`, or `static` (a JWKS document given at registration).
    pub source: IssuerSource,
    /// The JWKS URL fetched (given, or found through discovery); none for a static JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub businesses_claim: String,
    /// The pinned public keys: what the filter verifies with.
    pub keys: Vec<IssuerKey>,
    pub created_at: UnixTime,
    /// When the pinned keys last changed.
    pub keys_changed_at: UnixTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssuerSource {
    Discovery,
    JwksUri,
    Static,
}

impl IssuerRecord {
    /// The issuer as the feed carries it.
    pub fn entry(&self) -> IssuerEntry {
        IssuerEntry {
            id: self.id.clone(),
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            algorithms: self.algorithms.clone(),
            businesses_claim: self.businesses_claim.clone(),
            businesses: vec![self.business.clone()],
            keys: self.keys.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub version: u64,
    pub at: UnixTime,
    pub change: Change,
    /// The store's history at this version: H(history at version − 1, this record without
    /// it). Absent from records written before histories existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hourly_usage_is_bounded_to_a_week() {
        let mut record = KeyUsageRecord::default();
        for h in 0..400u64 {
            record.add(1_000_000 * 3600 + h * 3600 + 5, 2);
        }
        record.add(1_000_000 * 3600 + 399 * 3600, 1);
        assert_eq!(record.hours.len() as u64, USAGE_HOURS);
        assert_eq!(record.hours.last().unwrap().1, 3);
        assert!(record.hours.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
