//! What the filter knows: key hashes, public signing keys and revoked sessions, at a
//! changelog version. [`SnapshotWire`] is the JSON admin serves (full, or a delta since a
//! version); [`Snapshot`] is the indexed form `decide` reads. A wire message is checked
//! whole before anything is applied: a bad one leaves the snapshot as it was.

use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::cidr::Cidr;
use crate::credits::CreditsEntry;
use crate::key::{KeyHash, KeyKind, Mode};
use crate::oidc::{IssuerEntry, Issuers, TrustedIssuer};
use crate::ratelimit::Limit;
use crate::UnixTime;

/// The algorithm name every signing key carries; the only one keygate accepts.
pub const SIGNING_ALG: &str = "EdDSA";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub hash: KeyHash,
    /// Public id (`key_…`), safe to log and to send upstream.
    pub id: String,
    pub business: String,
    pub kind: KeyKind,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<UnixTime>,
    pub active: bool,
    /// Uses left (see [`crate::credits`]); `None`: unlimited. Packed in the keystore
    /// record's extension object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsEntry>,
    /// When not empty, the only client addresses the key may be used from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<Cidr>,
    /// The key's own limits: they replace its business's, its rule's and its kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<Limit>>,
}

/// A business's own limits, set through admin. `per_key` replaces the rule's and the kind's
/// defaults for each of its keys (a key's own limits still win); `shared` replaces the
/// plugin's `rate_limits.business` for it. Both absent: no override (on a delta, a removal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessLimits {
    pub business: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key: Option<Vec<Limit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<Vec<Limit>>,
}

impl BusinessLimits {
    pub fn is_empty(&self) -> bool {
        self.per_key.is_none() && self.shared.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyEntry {
    pub kid: String,
    pub alg: String,
    /// The Ed25519 public key, base64url without padding (as in a JWK's `x`).
    pub x: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSession {
    pub sid: String,
    /// After this time no token of the session can be valid anyway, so the entry may go.
    pub until: UnixTime,
}

/// Where a version sits in admin's history: a digest of every change up to that version,
/// chained from a random id made when admin's store was created. A store restored from a
/// backup that has since made other changes reaches the same version numbers with other
/// digests, so a proxy never mixes two histories. 64 hex digits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History(pub KeyHash);

impl History {
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    pub fn from_hex(text: &str) -> Option<History> {
        KeyHash::from_hex(text).map(History)
    }
}

/// The feed's message. `since: None` is a full snapshot; `since: Some(v)` a delta that
/// turns version `v` into `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotWire {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_keys: Vec<KeyHash>,
    #[serde(default)]
    pub signing_keys: Vec<SigningKeyEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_signing_keys: Vec<String>,
    #[serde(default)]
    pub revoked_sessions: Vec<RevokedSession>,
    /// On a page of a paged full snapshot: the last key hash of this page, to ask for the
    /// next page with `?after=`. Absent on the last page (and on deltas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<KeyHash>,
    /// Admin's history at `version` (absent from admins that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// On the last key page of a paged full snapshot: the revoked sessions follow in pages
    /// of their own (`?limit=N&revoked=1`, then `&after=<next_after>`), sorted by the
    /// SHA-256 of the session id, instead of in `revoked_sessions` of the first page.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revocation_pages: bool,
    /// On a delta: admin's history at `since`, which must be the proxy's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_history: Option<History>,
    /// Trusted issuers (tokens from a business's own identity provider, [`crate::oidc`]):
    /// all of them in a full snapshot (its first page), those added or changed in a delta.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerEntry>,
    /// On a delta: ids of trusted issuers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_issuers: Vec<String>,
    /// Businesses' own limits: all of them on a full snapshot's first page, the changed
    /// ones on a delta (an empty one removes the override).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub business_limits: Vec<BusinessLimits>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot is not valid JSON of the expected shape: {0}")]
    Decode(String),
    #[error("a delta was offered where a full snapshot is needed")]
    NotFull,
    #[error("the delta starts at version {since} but the snapshot is at {have}")]
    VersionGap { since: u64, have: u64 },
    #[error("signing key {kid:?} is not a valid Ed25519 public key")]
    BadSigningKey { kid: String },
}

/// A key as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub business: String,
    pub kind: KeyKind,
    pub mode: Mode,
    pub scopes: Vec<String>,
    pub expires_at: Option<UnixTime>,
    pub active: bool,
    pub credits: Option<CreditsEntry>,
    pub allowed_ips: Vec<Cidr>,
    pub rate_limits: Option<Vec<Limit>>,
}

#[derive(Clone, Default)]
pub struct Snapshot {
    version: u64,
    keys: HashMap<KeyHash, KeyRecord>,
    signing: HashMap<String, DecodingKey>,
    revoked: HashMap<String, UnixTime>,
    issuers: Issuers,
    business_limits: HashMap<String, BusinessLimits>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("keys", &self.keys.len())
            .field("signing_keys", &self.signing.len())
            .field("revoked_sessions", &self.revoked.len())
            .field("issuers", &self.issuers.len())
            .field("business_limits", &self.business_limits.len())
            .finish()
    }
}

fn decoding_key(entry: &SigningKeyEntry) -> Result<DecodingKey, SnapshotError> {
    let bad = || SnapshotError::BadSigningKey { kid: entry.kid.clone() };
    if entry.alg != SIGNING_ALG {
        return Err(bad());
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&entry.x).map_err(|_| bad())?;
    if raw.len() != 32 {
        return Err(bad());
    }
    DecodingKey::from_ed_components(&entry.x).map_err(|_| bad())
}

fn record(entry: KeyEntry) -> (KeyHash, KeyRecord) {
    let KeyEntry { hash, id, business, kind, mode, scopes, expires_at, active, allowed_ips, rate_limits, credits } = entry;
    (hash, KeyRecord { id, business, kind, mode, scopes, expires_at, active, allowed_ips, rate_limits, credits })
}

impl crate::revoked::RevocationLookup for Snapshot {
    fn is_revoked(&self, sid: &str) -> bool {
        self.revoked.contains_key(sid)
    }
}

impl Snapshot {
    pub fn decode(bytes: &[u8]) -> Result<SnapshotWire, SnapshotError> {
        serde_json::from_slice(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))
    }

    /// Builds a snapshot from a full wire message.
    pub fn from_full(wire: SnapshotWire) -> Result<Snapshot, SnapshotError> {
        if wire.since.is_some() {
            return Err(SnapshotError::NotFull);
        }
        let mut snapshot = Snapshot { version: wire.version, ..Snapshot::default() };
        snapshot.merge(wire)?;
        Ok(snapshot)
    }

    /// Applies a full snapshot (replacing everything) or a delta that starts at this
    /// snapshot's version. On error nothing changes.
    pub fn apply(&mut self, wire: SnapshotWire) -> Result<(), SnapshotError> {
        match wire.since {
            None => {
                *self = Snapshot::from_full(wire)?;
                Ok(())
            }
            Some(since) if since != self.version => Err(SnapshotError::VersionGap { since, have: self.version }),
            Some(_) => self.merge(wire),
        }
    }

    fn merge(&mut self, wire: SnapshotWire) -> Result<(), SnapshotError> {
        // Everything that can fail is done before the first mutation.
        let signing = wire
            .signing_keys
            .iter()
            .map(|entry| Ok((entry.kid.clone(), decoding_key(entry)?)))
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        let issuers: Vec<TrustedIssuer> = wire.issuers.into_iter().map(TrustedIssuer::new).collect();
        for hash in &wire.removed_keys {
            self.keys.remove(hash);
        }
        self.keys.extend(wire.keys.into_iter().map(record));
        for kid in &wire.removed_signing_keys {
            self.signing.remove(kid);
        }
        self.signing.extend(signing);
        self.revoked.extend(wire.revoked_sessions.into_iter().map(|r| (r.sid, r.until)));
        for id in &wire.removed_issuers {
            self.issuers.remove(id);
        }
        for issuer in issuers {
            self.issuers.insert(issuer);
        }
        for limits in wire.business_limits {
            if limits.is_empty() {
                self.business_limits.remove(&limits.business);
            } else {
                self.business_limits.insert(limits.business.clone(), limits);
            }
        }
        self.version = wire.version;
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn key(&self, hash: &KeyHash) -> Option<&KeyRecord> {
        self.keys.get(hash)
    }

    /// The business's own limits, if admin set any.
    pub fn business_limits(&self, business: &str) -> Option<&BusinessLimits> {
        self.business_limits.get(business)
    }

    pub fn signing_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.signing.get(kid)
    }

    pub fn is_revoked(&self, sid: &str) -> bool {
        self.revoked.contains_key(sid)
    }

    /// The trusted issuers (tokens from a business's own identity provider).
    pub fn issuers(&self) -> &Issuers {
        &self.issuers
    }

    /// Drops revocations whose tokens have all expired; bounded memory over time.
    pub fn forget_expired_revocations(&mut self, now: UnixTime) {
        self.revoked.retain(|_, until| *until > now);
    }
}
