//! API keys: create, import, activate, expiry, rotate, usage, and the per-business index.

use std::collections::{BTreeSet, HashMap};

use keygate_core::cidr::Cidr;
use keygate_core::ratelimit::Limit;
use keygate_core::snapshot::RevokedSession;
use keygate_core::{KeyHash, UnixTime};

use super::tx::abort;
use super::{Change, GraceHash, Key, KeyUsageRecord, Store, StoreError, Ticket};

/// `<business>\0<key id>`: a business's keys are one prefix scan of `business_keys`.
pub(super) fn business_key_index(business: &str, key_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(business.len() + 1 + key_id.len());
    k.extend_from_slice(business.as_bytes());
    k.push(0);
    k.extend_from_slice(key_id.as_bytes());
    k
}

/// What [`Store::import_keys`] did with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported,
    /// Already stored as this key (same hash, business, kind and mode).
    Skipped {
        key_id: String,
    },
    Refused(&'static str),
}

impl Store {
    /// Stores a new key, its hash index and a changelog entry, atomically.
    pub fn create_key(&self, key: &Key) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if !tx.businesses.contains(key.business.as_bytes())? {
                return abort(StoreError::UnknownBusiness);
            }
            if tx.keys.contains(key.id.as_bytes())? || tx.key_hashes.contains(&key.hash.0)? {
                return abort(StoreError::Collision);
            }
            tx.keys.put(key.id.as_bytes(), key)?;
            tx.key_hashes.put_raw(&key.hash.0, key.id.as_bytes())?;
            tx.business_keys.put_raw(&business_key_index(&key.business, &key.id), &[])?;
            tx.append(Change::KeyUpsert { key: key.entry() })?;
            Ok(())
        })?;
        Ok(ticket)
    }

    /// Imports a batch of keys in one transaction (one changelog entry per new key). Per key,
    /// in order: imported; skipped when its hash is already stored with the same business,
    /// kind and mode (a re-run); or refused with the reason.
    pub fn import_keys(&self, keys: &[Key]) -> Result<(Vec<ImportOutcome>, Ticket), StoreError> {
        self.write(|tx| {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(id) = tx.key_hashes.get_raw(&key.hash.0)? {
                    let existing: Option<Key> = tx.keys.get(&id)?;
                    out.push(match existing {
                        Some(k) if k.business == key.business && k.kind == key.kind && k.mode == key.mode => {
                            ImportOutcome::Skipped { key_id: k.id }
                        }
                        _ => ImportOutcome::Refused("this key is already stored under another business, kind or mode"),
                    });
                    continue;
                }
                if !tx.businesses.contains(key.business.as_bytes())? {
                    out.push(ImportOutcome::Refused("business not found"));
                    continue;
                }
                if tx.keys.contains(key.id.as_bytes())? {
                    return abort(StoreError::Collision);
                }
                tx.keys.put(key.id.as_bytes(), key)?;
                tx.key_hashes.put_raw(&key.hash.0, key.id.as_bytes())?;
                tx.business_keys.put_raw(&business_key_index(&key.business, &key.id), &[])?;
                tx.append(Change::KeyUpsert { key: key.entry() })?;
                out.push(ImportOutcome::Imported);
            }
            Ok(out)
        })
    }

    /// Activates or deactivates a key (kept, never deleted); a changelog entry tells the
    /// filters. Unchanged keys write nothing.
    pub fn set_key_active(&self, key_id: &str, active: bool) -> Result<(Key, Ticket), StoreError> {
        self.update_key(key_id, |key| std::mem::replace(&mut key.active, active) != active)
    }

    /// Changes a key's expiry, address allowlist (empty: none) and own limits, each only
    /// when given; a changelog entry tells the filters. Unchanged keys write nothing.
    pub fn update_key_settings(
        &self,
        key_id: &str,
        expires_at: Option<Option<UnixTime>>,
        allowed_ips: Option<Vec<Cidr>>,
        rate_limits: Option<Option<Vec<Limit>>>,
    ) -> Result<(Key, Ticket), StoreError> {
        self.update_key(key_id, |key| {
            let mut changed = false;
            if let Some(at) = expires_at {
                changed |= std::mem::replace(&mut key.expires_at, at) != at;
            }
            if let Some(ips) = &allowed_ips {
                changed |= std::mem::replace(&mut key.allowed_ips, ips.clone()) != *ips;
            }
            if let Some(limits) = &rate_limits {
                changed |= std::mem::replace(&mut key.rate_limits, limits.clone()) != *limits;
            }
            changed
        })
    }

    /// Applies `change` to a stored key; when it reports a change, the key is written and
    /// its entries go to the changelog.
    fn update_key(&self, key_id: &str, change: impl Fn(&mut Key) -> bool) -> Result<(Key, Ticket), StoreError> {
        self.write(|tx| {
            let Some(mut key) = tx.keys.get::<Key>(key_id.as_bytes())? else {
                return abort(StoreError::UnknownKey);
            };
            if change(&mut key) {
                tx.keys.put(key_id.as_bytes(), &key)?;
                for entry in key.entries(tx.now) {
                    tx.append(Change::KeyUpsert { key: entry })?;
                }
            }
            Ok(key)
        })
    }

    /// Gives key `key_id` a new raw key (`new_hash`), keeping its id. With `grace_secs` 0
    /// every earlier raw key stops at once (the replaced one and any still in an earlier
    /// grace: hashes dropped, the key's login sessions revoked). Otherwise the replaced raw
    /// key works until the end of the grace (its hash stays, as an entry that expires then)
    /// and raw keys in an earlier grace keep their own end, capped at this one.
    pub fn rotate_key(
        &self,
        key_id: &str,
        new_hash: KeyHash,
        new_prefix: &str,
        grace_secs: u64,
        leeway: u64,
    ) -> Result<(Key, Vec<RevokedSession>, Ticket), StoreError> {
        let ((key, revoked), ticket) = self.write(|tx| {
            let Some(mut key) = tx.keys.get::<Key>(key_id.as_bytes())? else {
                return abort(StoreError::UnknownKey);
            };
            if tx.key_hashes.contains(&new_hash.0)? {
                return abort(StoreError::Collision);
            }
            let old = key.hash;
            let now = tx.now;
            let (mut earlier, lapsed): (Vec<GraceHash>, Vec<GraceHash>) =
                std::mem::take(&mut key.grace).into_iter().partition(|g| g.until > now);
            let mut stopped: Vec<KeyHash> = lapsed.into_iter().map(|g| g.hash).collect();
            let mut revoked = Vec::new();
            if grace_secs > 0 {
                // The grace covers the value being replaced; earlier values keep their own
                // end, cut to this one's, so a rotation never lengthens an older key's life.
                let end = now.saturating_add(grace_secs);
                for g in &mut earlier {
                    g.until = g.until.min(end);
                }
                earlier.push(GraceHash { hash: old, until: end });
                key.grace = earlier;
            } else {
                // No grace stops every earlier raw value at once, not only the one replaced.
                stopped.push(old);
                stopped.extend(earlier.into_iter().map(|g| g.hash));
                for (_, session) in tx.live_owned(format!("k:{key_id}").as_bytes())? {
                    revoked.push(tx.revoke(session, leeway)?);
                }
            }
            for hash in stopped {
                if tx.key_hashes.get_raw(&hash.0)?.as_deref() == Some(key_id.as_bytes()) {
                    tx.key_hashes.remove(&hash.0)?;
                }
                tx.append(Change::KeyRemoved { hash })?;
            }
            key.hash = new_hash;
            key.prefix = new_prefix.to_owned();
            key.rotated_at = Some(now);
            tx.keys.put(key_id.as_bytes(), &key)?;
            tx.key_hashes.put_raw(&new_hash.0, key_id.as_bytes())?;
            // The business never changes; written again so the index can't miss a key.
            tx.business_keys.put_raw(&business_key_index(&key.business, key_id), &[])?;
            for entry in key.entries(now) {
                tx.append(Change::KeyUpsert { key: entry })?;
            }
            Ok((key, revoked))
        })?;
        Ok((key, revoked, ticket))
    }

    /// Applies the filters' usage reports: `last_used_at` (the latest wins, never in the
    /// future) and hourly counts. Unknown keys are skipped. Not in the changelog.
    /// Returns (accepted, ignored).
    pub fn record_usage(&self, items: &[keygate_core::usage::KeyUsage]) -> Result<((usize, usize), Ticket), StoreError> {
        let wanted: Vec<_> = items.iter().filter(|item| item.key_id.len() <= 64 && item.key_id.starts_with("key_")).collect();
        let ids: Vec<Vec<u8>> = wanted.iter().map(|item| item.key_id.as_bytes().to_vec()).collect();
        self.write(|tx| {
            // Read together and written together: over a network each is one round trip
            // rather than one per key, and the write lock is held that much shorter.
            let mut keys: HashMap<&[u8], Key> =
                ids.iter().zip(tx.keys.get_many::<Key>(&ids)?).filter_map(|(id, key)| Some((id.as_slice(), key?))).collect();
            let mut records: HashMap<&[u8], KeyUsageRecord> =
                ids.iter().zip(tx.usage.get_many::<KeyUsageRecord>(&ids)?).filter_map(|(id, r)| Some((id.as_slice(), r?))).collect();
            let (mut keys_used, mut records_used) = (BTreeSet::new(), BTreeSet::new());
            let (mut accepted, mut ignored) = (0, items.len() - wanted.len());
            for item in &wanted {
                let id = item.key_id.as_bytes();
                let Some(key) = keys.get_mut(id) else {
                    ignored += 1;
                    continue;
                };
                let at = item.last_used_at.min(tx.now.saturating_add(60));
                if key.last_used_at.is_none_or(|last| last < at) {
                    key.last_used_at = Some(at);
                    keys_used.insert(id);
                }
                if item.count > 0 {
                    records.entry(id).or_default().add(at, item.count);
                    records_used.insert(id);
                }
                accepted += 1;
            }
            tx.keys.put_many(keys_used.iter().filter_map(|id| Some((*id, keys.get(id)?))))?;
            tx.usage.put_many(records_used.iter().filter_map(|id| Some((*id, records.get(id)?))))?;
            Ok((accepted, ignored))
        })
    }

    pub fn key_usage(&self, key_id: &str) -> Result<KeyUsageRecord, StoreError> {
        Ok(self.trees().usage.read(key_id.as_bytes())?.unwrap_or_default())
    }

    pub fn key(&self, id: &str) -> Result<Option<Key>, StoreError> {
        self.trees().keys.read(id.as_bytes())
    }

    pub fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<Key>, StoreError> {
        match self.trees().key_hashes.get(hash.0)? {
            None => Ok(None),
            Some(id) => self.trees().keys.read(&id),
        }
    }

    /// A business's keys, by key id: one prefix scan of `business_keys`, then one read per
    /// key of that business (no other business's records are read).
    pub fn keys_of_business(&self, business: &str) -> Result<Vec<Key>, StoreError> {
        let t = self.trees();
        let prefix = business_key_index(business, "");
        let mut out = Vec::new();
        for item in t.business_keys.scan_prefix(&prefix) {
            let (index, _) = item?;
            let id = &index[prefix.len()..];
            if let Some(key) = t.keys.read::<Key>(id)? {
                if key.business == business {
                    out.push(key);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::clock::now;
    use crate::store::testing::{add_business, key, open, with_business};
    use crate::store::tx::KEY_DECODES;

    #[test]
    fn rotation_without_grace_stops_every_earlier_raw_key() {
        let (_dir, store) = with_business(100);
        let t0 = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let (k1, _, _) = store.rotate_key("key_1", KeyHash([2; 32]), "sk_test_k1", 86_400, 0).unwrap();
        let now = now();
        assert!(k1.accepts(&KeyHash([1; 32]), now), "K0 in its grace");
        let (k2, _, t) = store.rotate_key("key_1", KeyHash([3; 32]), "sk_test_k2", 0, 0).unwrap();
        for old in [KeyHash([1; 32]), KeyHash([2; 32])] {
            assert!(!k2.accepts(&old, now), "an earlier raw key still opens the key after a rotation with no grace");
            assert!(store.key_by_hash(&old).unwrap().is_none(), "an earlier raw key is still indexed");
        }
        assert!(k2.accepts(&KeyHash([3; 32]), now) && k2.grace.is_empty());
        let full = store.full_snapshot(now).unwrap();
        assert_eq!(full.keys.iter().map(|k| k.hash).collect::<Vec<_>>(), vec![KeyHash([3; 32])], "only K2 in the feed");
        let delta = store.delta(t0.version, t.version, now).unwrap();
        assert!(delta.removed_keys.contains(&KeyHash([1; 32])) && delta.removed_keys.contains(&KeyHash([2; 32])), "{delta:?}");
        assert!(delta.keys.iter().all(|k| k.hash == KeyHash([3; 32])), "{delta:?}");
    }

    #[test]
    fn a_second_grace_never_extends_an_earlier_one() {
        let (_dir, store) = with_business(100);
        let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let (k1, _, _) = store.rotate_key("key_1", KeyHash([2; 32]), "sk_test_k1", 100, 0).unwrap();
        let k0_until = k1.grace[0].until;
        // A longer grace for K1 leaves K0's end where it was.
        let (k2, _, _) = store.rotate_key("key_1", KeyHash([3; 32]), "sk_test_k2", 1000, 0).unwrap();
        let until = |k: &Key, b: u8| k.grace.iter().find(|g| g.hash == KeyHash([b; 32])).map(|g| g.until);
        assert_eq!(until(&k2, 1), Some(k0_until));
        assert!(until(&k2, 2).unwrap() >= k0_until + 800);
        // A shorter grace ends every earlier value no later than the replaced one's.
        let (k3, _, _) = store.rotate_key("key_1", KeyHash([4; 32]), "sk_test_k3", 10, 0).unwrap();
        let end = until(&k3, 3).unwrap();
        assert!(end < k0_until);
        assert_eq!((until(&k3, 1), until(&k3, 2)), (Some(end), Some(end)));
        let entries = store.full_snapshot(now()).unwrap().keys;
        assert_eq!(entries.len(), 4);
        assert!(entries.iter().filter(|e| e.hash != KeyHash([4; 32])).all(|e| e.expires_at == Some(end)), "{entries:?}");
    }

    #[test]
    fn listing_one_business_decodes_only_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1000);
        for b in ["biz_a", "biz_b"] {
            add_business(&store, b);
        }
        let _ = store.create_key(&key("key_a1", "biz_a", 1)).unwrap();
        let _ = store.create_key(&key("key_a2", "biz_a", 2)).unwrap();
        for i in 0..50u8 {
            let _ = store.create_key(&key(&format!("key_b{i}"), "biz_b", 10 + i)).unwrap();
        }
        KEY_DECODES.with(|n| n.set(0));
        let listed = store.keys_of_business("biz_a").unwrap();
        let decoded = KEY_DECODES.with(Cell::get);
        assert_eq!(listed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), vec!["key_a1", "key_a2"]);
        assert!(decoded <= 2, "listing biz_a decoded {decoded} key records");
        assert_eq!(store.keys_of_business("biz_b").unwrap().len(), 50);
        assert!(store.keys_of_business("biz_c").unwrap().is_empty());
    }
}
