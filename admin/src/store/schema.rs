//! Schema versions, and the migrations run on opening a store written at an older one.

use keygate_core::revoked;

use super::engine::Engine;
use super::keys::business_key_index;
use super::sessions::digest_entry;
use super::tx::{be, decode, from_be, Tree, Trees};
use super::{Key, StoreError};

pub(super) const META_SCHEMA: &[u8] = b"schema";

/// 2: the `business_keys` index (built from the keys on opening a schema-1 store).
/// 3: the `revoked_by_digest` index (built from the revocations on opening an older store).
pub(super) const SCHEMA_VERSION: u64 = 3;

/// Builds `index` afresh from every record of `source` (`entry` gives the index's key and
/// value for one record), in batches. From scratch, so an interrupted build is simply done
/// again on the next open (the schema version is written only after a flush).
pub(super) fn rebuild_index(
    source: &Tree<'_>,
    index: &Tree<'_>,
    entry: impl Fn(&[u8], &[u8]) -> Result<(Vec<u8>, Vec<u8>), StoreError>,
) -> Result<(), StoreError> {
    const BATCH: usize = 10_000;
    index.clear()?;
    let mut batch = Vec::with_capacity(BATCH);
    for item in source.iter() {
        let (key, value) = item?;
        batch.push(entry(&key, &value)?);
        if batch.len() == BATCH {
            index.put_many(std::mem::take(&mut batch))?;
        }
    }
    index.put_many(batch)?;
    Ok(())
}

/// Schema 2: the `business_keys` index.
pub(super) fn migrate_to_2(trees: &Trees<'_>) -> Result<(), StoreError> {
    rebuild_index(&trees.keys, &trees.business_keys, |_, bytes| {
        let key: Key = decode("keys", bytes)?;
        Ok((business_key_index(&key.business, &key.id), Vec::new()))
    })
}

/// Schema 3: the `revoked_by_digest` index.
pub(super) fn migrate_to_3(trees: &Trees<'_>) -> Result<(), StoreError> {
    rebuild_index(&trees.revocations, &trees.revoked_by_digest, |sid, until| {
        let sid = String::from_utf8_lossy(sid);
        Ok((revoked::digest(&sid).0.to_vec(), digest_entry(&sid, from_be(until).unwrap_or(0))))
    })
}

/// Brings a store written at an older schema up to [`SCHEMA_VERSION`]: its indexes built,
/// and the new version durable before the first request is served.
pub(super) fn upgrade(engine: &dyn Engine, trees: &Trees<'_>) -> Result<(), StoreError> {
    // A store written before the schema was recorded is schema 1.
    let schema = trees.meta.get(META_SCHEMA)?.and_then(|b| from_be(&b)).unwrap_or(1);
    if schema < 2 {
        migrate_to_2(trees)?;
    }
    if schema < 3 {
        migrate_to_3(trees)?;
    }
    if schema < SCHEMA_VERSION {
        trees.meta.insert(META_SCHEMA, be(SCHEMA_VERSION))?;
        // Durable before the first request is served: a crash before this point
        // reopens at the old schema and builds the indexes again.
        engine.flush()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::store::testing::{add_business, key, open};
    use crate::store::tx::KEY_DECODES;

    use keygate_core::KeyHash;

    #[test]
    fn a_schema_2_store_gets_the_revocation_index_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let sids: Vec<String> = (0..5).map(|i| format!("ses_{i:04}")).collect();
        {
            let store = open(dir.path(), 100);
            let _ = store.write(|tx| sids.iter().try_for_each(|sid| tx.put_revocation(sid, u64::MAX))).unwrap();
            // What a schema-2 store holds: revocations, no digest index.
            let t = store.trees();
            t.revoked_by_digest.clear().unwrap();
            t.meta.insert(META_SCHEMA, be(2)).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = open(dir.path(), 100);
        assert_eq!(store.trees().meta.get(META_SCHEMA).unwrap().and_then(|b| from_be(&b)), Some(SCHEMA_VERSION));
        let (page, _) = store.snapshot_page(0, None, 100, true).unwrap();
        let mut got: Vec<String> = page.revoked_sessions.into_iter().map(|r| r.sid).collect();
        got.sort();
        assert_eq!(got, sids, "every revocation is paged after the migration");
    }

    #[test]
    fn a_schema_1_store_gets_the_business_index_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 100);
            for b in ["biz_a", "biz_b"] {
                add_business(&store, b);
            }
            for i in 0..5u8 {
                let _ = store.create_key(&key(&format!("key_a{i}"), "biz_a", 1 + i)).unwrap();
                let _ = store.create_key(&key(&format!("key_b{i}"), "biz_b", 100 + i)).unwrap();
            }
            // What a schema-1 store holds: no index, schema 1.
            let t = store.trees();
            t.business_keys.clear().unwrap();
            t.meta.insert(META_SCHEMA, be(1)).unwrap();
            store.flush_blocking().unwrap();
            assert!(store.keys_of_business("biz_a").unwrap().is_empty(), "the index is what lists keys");
        }
        let store = open(dir.path(), 100);
        let t = store.trees();
        assert_eq!(t.meta.get(META_SCHEMA).unwrap().and_then(|b| from_be(&b)), Some(SCHEMA_VERSION));
        assert_eq!(t.business_keys.iter().count(), 10);
        KEY_DECODES.with(|n| n.set(0));
        let ids: Vec<String> = store.keys_of_business("biz_a").unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, (0..5).map(|i| format!("key_a{i}")).collect::<Vec<_>>());
        assert_eq!(KEY_DECODES.with(Cell::get), 5);
        // Writes after the migration keep it current, imports and rotations included.
        let _ = store.import_keys(&[key("key_a9", "biz_a", 50)]).unwrap();
        let _ = store.rotate_key("key_a0", KeyHash([60; 32]), "sk_test_new", 0, 0).unwrap();
        assert_eq!(store.keys_of_business("biz_a").unwrap().len(), 6);
        assert_eq!(store.keys_of_business("biz_b").unwrap().len(), 5);
    }
}
