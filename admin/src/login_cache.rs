//! The tokens `POST /auth/login` handed out, kept in memory per (raw key's hash, client
//! session) so that a repeated login answers without the store's key and session reads
//! and without signing the same claims again.
//!
//! An entry is only ever answered from while it is exactly what a login would find in the
//! store: it records the store's change generation ([`Store::change_generation`]) read
//! *before* the key and session reads it stands for, and a hit reads the generation again
//! (one engine read: on PostgreSQL from the database, so a revocation through another
//! replica counts at once, as it does for the reads it replaces). Any changelog append
//! since (a key deactivated, rotated, changed or expired early, a session revoked or
//! evicted, a signing key rotated in or withdrawn, by this replica or another) changes the
//! generation: the login reads the store as before, and only the signature may still be
//! saved (when the session's token is the one already signed). What time alone ends is
//! checked on every hit: the key's own expiry and its rotation grace (the stored key's
//! [`Key::accepts`]), and the token (signed by the current signer, for this issuer and
//! audience, unexpired: [`TokenService::still_good`]).
//!
//! Bounded: at [`MAX_ENTRIES`] the entries that cannot answer any more go, and if that is
//! not enough, all of them (each comes back on its next login).
//!
//! [`Store::change_generation`]: crate::store::Store::change_generation

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use keygate_core::{KeyHash, UnixTime};

use crate::store::{IssuedToken, Key};
use crate::tokens::TokenService;

/// Entries kept at most (each holds a token and its key's record: about 1–2 KB).
pub const MAX_ENTRIES: usize = 10_000;

struct Entry {
    /// The store's change generation read before the reads this entry stands for.
    generation: [u8; 32],
    key: Arc<Key>,
    issued: IssuedToken,
    token: Arc<str>,
}

/// A token a repeated login may hand out again, with its expiry.
#[derive(Debug, Clone)]
pub struct Hit {
    pub token: Arc<str>,
    pub exp: UnixTime,
}

#[derive(Default)]
pub struct LoginCache {
    entries: Mutex<HashMap<(KeyHash, String), Entry>>,
    /// Logins answered from an entry, since start.
    hits: AtomicU64,
}

impl std::fmt::Debug for LoginCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCache").field("entries", &self.len()).field("hits", &self.hits()).finish()
    }
}

impl LoginCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(KeyHash, String), Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logins answered from an entry (with no store read but the generation's, and no
    /// signature), since start.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The token for (`hash`, `client_session`) if nothing changed in the store since it
    /// was checked (`generation` is the one read now, before anything else) and it is
    /// still good at `now`.
    pub fn hit(&self, hash: &KeyHash, client_session: &str, generation: &[u8; 32], now: UnixTime, tokens: &TokenService) -> Option<Hit> {
        let entries = self.entries();
        let entry = entries.get(&(*hash, client_session.to_owned()))?;
        let good = entry.generation == *generation && entry.key.accepts(hash, now) && tokens.still_good(&entry.issued, now);
        if !good {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Hit { token: Arc::clone(&entry.token), exp: entry.issued.claims.exp })
    }

    /// The token already signed for `issued` under (`hash`, `client_session`), whatever
    /// its generation: the claims are the same, so the signature would be too.
    pub fn signed(&self, hash: &KeyHash, client_session: &str, issued: &IssuedToken) -> Option<Arc<str>> {
        let entries = self.entries();
        let entry = entries.get(&(*hash, client_session.to_owned()))?;
        (entry.issued == *issued).then(|| Arc::clone(&entry.token))
    }

    /// Keeps `signed` (claims and the token signing them gave) for (`hash`,
    /// `client_session`), as found with `key` by reads made after `generation` was read.
    pub fn insert(
        &self,
        hash: KeyHash,
        client_session: String,
        generation: [u8; 32],
        key: Arc<Key>,
        (issued, token): (IssuedToken, Arc<str>),
        now: UnixTime,
    ) {
        let mut entries = self.entries();
        let slot = (hash, client_session);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&slot) {
            entries.retain(|_, e| e.generation == generation && e.issued.claims.exp > now && e.key.usable_at(now));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(slot, Entry { generation, key, issued, token });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keygate_core::{AccessClaims, KeyKind, Mode};

    fn issued(jti: &str) -> IssuedToken {
        IssuedToken {
            kid: "sig_a".into(),
            claims: AccessClaims {
                iss: "i".into(),
                aud: "a".into(),
                sub: "key_1".into(),
                sid: "ses_1".into(),
                businesses: vec!["biz_a".into()],
                mode: Some(Mode::Test),
                scope: String::new(),
                iat: 1,
                exp: u64::MAX,
                nbf: None,
                jti: jti.into(),
            },
        }
    }

    #[test]
    fn the_signature_is_reused_only_for_the_same_claims_and_the_cache_stays_bounded() {
        let cache = LoginCache::default();
        let key = Arc::new(Key::new("key_1".into(), "biz_a".into(), KeyKind::Sk, Mode::Test, KeyHash([1; 32]), "sk_test_abcd".into(), 1));
        cache.insert(KeyHash([1; 32]), "s".into(), [0; 32], Arc::clone(&key), (issued("j1"), Arc::from("token-1")), 2);
        assert_eq!(cache.signed(&KeyHash([1; 32]), "s", &issued("j1")).as_deref(), Some("token-1"));
        assert_eq!(cache.signed(&KeyHash([1; 32]), "s", &issued("j2")), None, "other claims, another signature");
        assert_eq!(cache.signed(&KeyHash([1; 32]), "t", &issued("j1")), None);
        for n in 0..MAX_ENTRIES + 5 {
            cache.insert(KeyHash([2; 32]), format!("s{n}"), [0; 32], Arc::clone(&key), (issued("j"), Arc::from("t")), 2);
            assert!(cache.len() <= MAX_ENTRIES);
        }
        assert!(!cache.is_empty());
    }
}
