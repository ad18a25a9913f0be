//! Where a store lives, and the new history it starts when that changes. A proxy resumes
//! the feed with `since=V` and the history it was sent with V; a store moved to another
//! place, copied, or restored from a backup may have gone on from V differently (or not
//! reached V), so it must not vouch for the old history: at open, a store whose recorded
//! location differs from the one its engine reads starts a new history, and every proxy
//! takes a full snapshot.

use std::ops::Bound;

use keygate_core::snapshot::History;
use keygate_core::KeyHash;

use super::engine::{Engine, TxError};
use super::tx::{
    be, chain, from_be, versioned, TreeNumber, Trees, META_FLOOR, META_HEAD, META_HISTORY, META_HISTORY_BASE, META_HISTORY_FLOOR,
};
use super::StoreError;

/// Where the store was last opened ([`Engine::location`]).
pub(super) const META_LOCATION: &[u8] = b"location";
/// The location a copy is given (`migrate`): no engine reads it, so the copy's first
/// open starts a new history.
pub(super) const COPIED: &[u8] = b"copied";

/// A history no store has had: a random start.
pub(super) fn fresh_history() -> Result<History, StoreError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| StoreError::Task(format!("no random history id: {e}")))?;
    Ok(chain(&History(KeyHash(seed)), b""))
}

/// At open: records where the store lives the first time, and starts a new history when it
/// was moved since (see the module's note). A store from before locations were recorded
/// just records its own. Returns whether a new history began.
pub(super) fn settle_location(engine: &dyn Engine, trees: &Trees<'_>) -> Result<bool, StoreError> {
    let here = engine.location()?;
    let moved = match trees.meta.get(META_LOCATION)? {
        Some(recorded) if recorded == here.as_bytes() => return Ok(false),
        Some(_) => true,
        None => false,
    };
    if moved {
        let head = start_new_history(engine)?;
        tracing::warn!(version = head, "the store was moved, copied or restored: a new feed history begins (proxies take a full snapshot)");
    }
    trees.meta.insert(META_LOCATION, here.as_bytes())?;
    // Recorded last and durable before any request: a crash before this point starts
    // the new history again on the next open.
    engine.flush()?;
    Ok(moved)
}

/// A new history from the changelog head on: the history id is fresh, the floor moves to
/// the head (no delta from an older version), and the old changelog goes. One transaction
/// (under the write lock replicas take) moves the floor and the history and drops the
/// record at the head, whose history would vouch for the old one; the older records,
/// below the floor and so never served, go after it in one range delete. Returns the head.
pub(super) fn start_new_history(engine: &dyn Engine) -> Result<u64, StoreError> {
    let start = fresh_history()?;
    let (meta, changelog) = (TreeNumber::meta as usize, TreeNumber::changelog as usize);
    let mut head = 0;
    engine.transact(&mut |tx| {
        head = tx.get(meta, META_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        tx.insert(meta, META_HISTORY, &start.0 .0)?;
        tx.insert(meta, META_HISTORY_BASE, &versioned(head, &start))?;
        tx.remove(meta, META_HISTORY_FLOOR)?;
        tx.insert(meta, META_FLOOR, &be(head))?;
        tx.remove(changelog, &be(head))?;
        Ok::<(), TxError>(())
    })?;
    engine.remove_range(changelog, Bound::Unbounded, Bound::Excluded(be(head).to_vec()))?;
    Ok(head)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use crate::store::testing::{add_business, key};
    use crate::store::{Store, StoreError, StoreOptions};

    /// Opens the store at `dir` once sled has let go of it: a dropped database's last
    /// background writes can hold its lock a moment longer (on a loaded machine, longer).
    fn open(dir: &Path, retain: u64) -> Store {
        let options = StoreOptions { cache_capacity_bytes: 1 << 20, changelog_retain: retain, ..StoreOptions::default() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Store::open(dir, &options) {
                Err(StoreError::Sled(sled::Error::Io(e))) if Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn a_copied_directory_starts_a_new_history_and_the_original_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (head, history) = {
            let store = open(dir.path(), 3);
            add_business(&store, "biz_a");
            for i in 1..=5u8 {
                let _ = store.create_key(&key(&format!("key_{i}"), "biz_a", i)).unwrap();
            }
            store.flush_blocking().unwrap();
            let head = store.durable_version();
            (head, store.history_at(head).unwrap().unwrap())
        };
        {
            // Opened again where it is: the same history, deltas as before.
            let store = open(dir.path(), 3);
            assert_eq!(store.history_at(head).unwrap(), Some(history));
            assert!(store.delta(head - 1, head, 0).is_ok());
        }
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let store = open(copy.path(), 3);
        let new = store.history_at(head).unwrap().expect("a history at the head");
        assert_ne!(new, history, "a copy vouches for the old history");
        assert!(matches!(store.check_history(head, &history), Err(StoreError::Gone)));
        assert_eq!(store.changelog_floor().unwrap(), head);
        assert!(matches!(store.delta(head - 1, head, 0), Err(StoreError::Gone)));
        assert_eq!(store.trees().changelog.iter().count(), 0, "the old changelog is gone");
        assert_eq!(store.full_snapshot(0).unwrap().keys.len(), 5, "what the store holds is all there");
        // It goes on from the head, in its new history; the floor never falls below it.
        let next = store.create_key(&key("key_6", "biz_a", 6)).unwrap();
        assert_eq!(next.version, head + 1);
        let delta = store.delta(head, head + 1, 0).unwrap();
        assert_eq!((delta.since_history, delta.keys.len()), (Some(new), 1));
        assert_eq!(store.changelog_floor().unwrap(), head);
        // Past the retained 3, the oldest records of the new history are trimmed as usual.
        let mut version = next.version;
        for i in 7..=12u8 {
            version = store.create_key(&key(&format!("key_{i}"), "biz_a", i)).unwrap().version;
        }
        assert_eq!(store.changelog_floor().unwrap(), version - 3);
        assert!(store.delta(version - 3, version, 0).is_ok());
        store.flush_blocking().unwrap();
        let at = store.history_at(version).unwrap();
        drop(store);
        // Reopened where the copy now lives: no further new history.
        let store = open(copy.path(), 3);
        assert_eq!(store.history_at(version).unwrap(), at);
    }

    /// A backup copied back over the directory it was taken from: same path, same
    /// contents as when the history was recorded there, yet a new history.
    #[test]
    fn a_backup_restored_in_place_starts_a_new_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let (head, history) = {
            let store = open(&path, 100);
            add_business(&store, "biz_a");
            let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
            store.flush_blocking().unwrap();
            (store.durable_version(), store.history_at(store.durable_version()).unwrap().unwrap())
        };
        let backup = dir.path().join("backup");
        copy_dir(&path, &backup);
        std::fs::remove_dir_all(&path).unwrap();
        copy_dir(&backup, &path);
        let store = open(&path, 100);
        assert_eq!(store.durable_version(), head);
        assert!(matches!(store.check_history(head, &history), Err(StoreError::Gone)));
    }
}
