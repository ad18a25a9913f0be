//! The snapshot feed: full snapshots (whole, or in pages: keys by hash, then revocations by
//! digest), deltas from the changelog, and the history that ties both to one store.

use std::collections::BTreeMap;
use std::sync::PoisonError;

use keygate_core::oidc::IssuerEntry;
use keygate_core::snapshot::{BusinessLimits, History, KeyEntry, RevokedSession, SigningKeyEntry};
use keygate_core::{KeyHash, SnapshotWire, UnixTime};

use super::tx::{be, decode, from_be, from_versioned, META_FLOOR, META_HISTORY_BASE, META_HISTORY_FLOOR};
use super::{Business, Change, ChangeRecord, Key, SigningKey, Store, StoreError};

impl Store {
    /// The whole state the filter needs, at the changelog head. Holds the writer mutex
    /// while reading so the trees and the version agree. The head may not be durable yet:
    /// the caller waits for [`Store::wait_version`] before serving it.
    pub fn full_snapshot(&self, now: UnixTime) -> Result<SnapshotWire, StoreError> {
        let t = self.trees();
        let w = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wire = SnapshotWire { version: w.head.max(self.durable_version()), since: None, ..SnapshotWire::default() };
        for item in t.keys.iter() {
            let (_, bytes) = item?;
            wire.keys.extend(decode::<Key>("keys", &bytes)?.entries(now));
        }
        self.snapshot_extras(now, &mut wire)?;
        drop(w);
        wire.history = self.history_at(wire.version)?;
        Ok(wire)
    }

    /// One page of the full snapshot, sorted by key hash so the filter can build its hash
    /// buckets as a stream: up to `limit` keys after `after`; the first page (no `after`)
    /// also carries the signing keys. The last key page says whether revoked sessions
    /// follow (`revocation_pages`); those pages (`revoked`) hold up to `limit` of them after
    /// `after`, sorted by the SHA-256 of the session id. So a page stays within `limit`
    /// records whatever the number of keys or revocations. `version` is the head *before*
    /// the page is read, so the page may hold later changes too, which the deltas since
    /// `version` replay in order. Returns the page and the head after reading it (the
    /// caller waits for that to be durable before serving).
    pub fn snapshot_page(
        &self,
        now: UnixTime,
        after: Option<KeyHash>,
        limit: usize,
        revoked: bool,
    ) -> Result<(SnapshotWire, u64), StoreError> {
        let t = self.trees();
        let head = || self.head();
        let mut wire = SnapshotWire { version: head(), since: None, ..SnapshotWire::default() };
        let start = match after {
            Some(hash) => std::ops::Bound::Excluded(hash.0.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        if revoked {
            let mut last = None;
            for item in t.revoked_by_digest.range::<Vec<u8>>((start, std::ops::Bound::Unbounded)) {
                let (digest, entry) = item?;
                if wire.revoked_sessions.len() >= limit {
                    wire.next_after = last;
                    break;
                }
                let Some((until, sid)) = entry.split_at_checked(8) else { continue };
                let until = from_be(until).unwrap_or(0);
                last = <[u8; 32]>::try_from(&digest[..]).ok().map(KeyHash);
                if until > now {
                    wire.revoked_sessions.push(RevokedSession { sid: String::from_utf8_lossy(sid).into_owned(), until });
                }
            }
        } else {
            for item in t.key_hashes.range::<Vec<u8>>((start, std::ops::Bound::Unbounded)) {
                let (hash, id) = item?;
                if wire.keys.len() >= limit {
                    wire.next_after = wire.keys.last().map(|k| k.hash);
                    break;
                }
                let Some(bytes) = t.keys.get(&id)? else { continue };
                let key: Key = decode("keys", &bytes)?;
                wire.keys.extend(key.entries(now).into_iter().filter(|e| e.hash.0[..] == hash[..]));
            }
            if after.is_none() {
                self.signing_extras(&mut wire)?;
            }
            wire.revocation_pages = wire.next_after.is_none() && !t.revoked_by_digest.is_empty()?;
        }
        wire.history = self.history_at(wire.version)?;
        Ok((wire, head()))
    }

    pub(super) fn signing_extras(&self, wire: &mut SnapshotWire) -> Result<(), StoreError> {
        for item in self.trees().signing_keys.iter() {
            let (_, bytes) = item?;
            wire.signing_keys.push(decode::<SigningKey>("signing_keys", &bytes)?.public);
        }
        wire.issuers = self.issuer_entries()?;
        // Businesses' own limits travel with the signing keys: every VM holds them.
        for item in self.trees().businesses.iter() {
            let (_, bytes) = item?;
            let limits = decode::<Business>("businesses", &bytes)?.limits();
            if !limits.is_empty() {
                wire.business_limits.push(limits);
            }
        }
        Ok(())
    }

    /// What an unpaged full snapshot carries besides keys: every published signing key,
    /// the businesses' own limits and the revocations still in force.
    pub(super) fn snapshot_extras(&self, now: UnixTime, wire: &mut SnapshotWire) -> Result<(), StoreError> {
        self.signing_extras(wire)?;
        for item in self.trees().revocations.iter() {
            let (sid, until) = item?;
            let until = from_be(&until).unwrap_or(0);
            if until > now {
                wire.revoked_sessions.push(RevokedSession { sid: String::from_utf8_lossy(&sid).into_owned(), until });
            }
        }
        Ok(())
    }

    /// What changed after `since`, up to and including `upto`, from the changelog alone:
    /// O(changes). [`StoreError::Gone`] when the changelog no longer reaches back to
    /// `since` (or `since` is ahead of `upto`).
    pub fn delta(&self, since: u64, upto: u64, now: UnixTime) -> Result<SnapshotWire, StoreError> {
        if since > upto {
            return Err(StoreError::Gone);
        }
        let t = self.trees();
        let floor = t.meta.get(META_FLOOR)?.and_then(|b| from_be(&b)).unwrap_or(0);
        if since < floor {
            return Err(StoreError::Gone);
        }
        let mut keys: BTreeMap<KeyHash, Option<KeyEntry>> = BTreeMap::new();
        let mut signing: BTreeMap<String, Option<SigningKeyEntry>> = BTreeMap::new();
        let mut revoked = Vec::new();
        let mut issuers: BTreeMap<String, Option<IssuerEntry>> = BTreeMap::new();
        let mut business_limits: BTreeMap<String, BusinessLimits> = BTreeMap::new();
        let mut expected = since.saturating_add(1);
        if since < upto {
            for item in t.changelog.range(be(expected)..=be(upto)) {
                let (_, bytes) = item?;
                let record: ChangeRecord = decode("changelog", &bytes)?;
                if record.version != expected {
                    // Trimmed underneath us: the client must take a full snapshot.
                    return Err(StoreError::Gone);
                }
                expected = expected.saturating_add(1);
                match record.change {
                    Change::KeyUpsert { key } => {
                        keys.insert(key.hash, Some(key));
                    }
                    Change::KeyRemoved { hash } => {
                        keys.insert(hash, None);
                    }
                    Change::SigningKeyAdded { key } => {
                        signing.insert(key.kid.clone(), Some(key));
                    }
                    Change::SigningKeyRemoved { kid } => {
                        signing.insert(kid, None);
                    }
                    Change::SessionRevoked { session } => {
                        if session.until > now {
                            revoked.push(session);
                        }
                    }
                    Change::IssuerUpsert { issuer } => {
                        issuers.insert(issuer.id.clone(), Some(issuer));
                    }
                    Change::IssuerRemoved { id } => {
                        issuers.insert(id, None);
                    }
                    Change::BusinessLimits { limits } => {
                        business_limits.insert(limits.business.clone(), limits);
                    }
                }
            }
            if expected != upto.saturating_add(1) {
                return Err(StoreError::Gone);
            }
        }
        let history = self.history_at(upto)?;
        let since_history = self.history_at(since)?;
        let mut wire = SnapshotWire {
            version: upto,
            since: Some(since),
            revoked_sessions: revoked,
            history,
            since_history,
            business_limits: business_limits.into_values().collect(),
            ..SnapshotWire::default()
        };
        for (hash, entry) in keys {
            match entry {
                Some(entry) => wire.keys.push(entry),
                None => wire.removed_keys.push(hash),
            }
        }
        for (kid, entry) in signing {
            match entry {
                Some(entry) => wire.signing_keys.push(entry),
                None => wire.removed_signing_keys.push(kid),
            }
        }
        for (id, entry) in issuers {
            match entry {
                Some(entry) => wire.issuers.push(entry),
                None => wire.removed_issuers.push(id),
            }
        }
        Ok(wire)
    }

    /// The store's history at `version`: `None` when no longer known (before the floor,
    /// or from before histories existed).
    pub fn history_at(&self, version: u64) -> Result<Option<History>, StoreError> {
        let t = self.trees();
        if let Some(record) = t.changelog.read::<ChangeRecord>(&be(version))? {
            return Ok(record.history);
        }
        for name in [META_HISTORY_BASE, META_HISTORY_FLOOR] {
            if let Some((at, history)) = t.meta.get(name)?.and_then(|b| from_versioned(&b)) {
                if at == version {
                    return Ok(Some(history));
                }
            }
        }
        Ok(None)
    }

    /// [`StoreError::Gone`] unless this store's history at `version` is `expected`: a
    /// client from another history (this store restored from a backup and moved on) must
    /// start over with a full snapshot.
    pub fn check_history(&self, version: u64, expected: &History) -> Result<(), StoreError> {
        match self.history_at(version)? {
            Some(history) if history == *expected => Ok(()),
            _ => Err(StoreError::Gone),
        }
    }

    /// The oldest `since` a delta can still be built from.
    pub fn changelog_floor(&self) -> Result<u64, StoreError> {
        Ok(self.trees().meta.get(META_FLOOR)?.and_then(|b| from_be(&b)).unwrap_or(0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::testing::{key, with_business};

    use keygate_core::revoked;

    /// A page of the full snapshot stays within its size whatever the number of sessions
    /// revoked (past ~1.2 M the first page outgrew the filter's 64 MiB limit).
    #[test]
    fn snapshot_pages_are_bounded_whatever_the_revocations() {
        let (_dir, store) = with_business(100);
        for i in 1..=3u8 {
            let _ = store.create_key(&key(&format!("key_{i}"), "biz_a", i)).unwrap();
        }
        const R: usize = 20_000;
        let _ = store
            .write(|tx| {
                for i in 0..R {
                    tx.put_revocation(&format!("ses_{i:016}"), u64::MAX)?;
                }
                Ok(())
            })
            .unwrap();
        let limit = 100;
        // A page of `limit` entries of ~100 bytes each, plus the signing keys.
        let bound = limit * 100 + 4096;
        let (first, _) = store.snapshot_page(0, None, limit, false).unwrap();
        let bytes = serde_json::to_vec(&first).unwrap().len();
        assert!(bytes <= bound, "the first page is {bytes} bytes with {R} revocations");
        // They come in pages of their own, each within the bound, sorted by digest, all of them.
        assert!(first.revocation_pages && first.next_after.is_none());
        let (mut after, mut seen, mut last) = (None, 0, None);
        loop {
            let (page, _) = store.snapshot_page(0, after, limit, true).unwrap();
            assert!(serde_json::to_vec(&page).unwrap().len() <= bound);
            for r in &page.revoked_sessions {
                let d = revoked::digest(&r.sid);
                assert!(last < Some(d));
                last = Some(d);
            }
            seen += page.revoked_sessions.len();
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, R);
    }

    #[test]
    fn trimmed_changelog_answers_gone() {
        let (_dir, store) = with_business(2);
        for i in 1..=5u8 {
            let _ = store.create_key(&key(&format!("key_{i}"), "biz_a", i)).unwrap();
        }
        assert_eq!(store.changelog_floor().unwrap(), 3);
        assert!(matches!(store.delta(2, 5, 0), Err(StoreError::Gone)));
        assert_eq!(store.delta(3, 5, 0).unwrap().keys.len(), 2);
        assert!(matches!(store.delta(6, 5, 0), Err(StoreError::Gone)));
        assert_eq!(store.delta(5, 5, 0).unwrap().keys.len(), 0);
        // The history is known from the floor on, and chains version to version.
        let at3 = store.history_at(3).unwrap().unwrap();
        let delta = store.delta(3, 5, 0).unwrap();
        assert_eq!((delta.since_history, delta.history), (Some(at3), store.history_at(5).unwrap()));
        assert!(store.check_history(3, &at3).is_ok());
        assert!(matches!(store.check_history(4, &at3), Err(StoreError::Gone)));
        assert_eq!(store.history_at(2).unwrap(), None);
    }
}
