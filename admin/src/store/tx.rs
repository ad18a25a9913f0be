//! Transaction plumbing: the trees, declared once; the typed view a write gets; the writer
//! (one sled transaction over every tree, under the writer mutex); the changelog appender
//! with its history digest; and how values are encoded.

use std::cell::Cell;
use std::sync::PoisonError;

use keygate_core::snapshot::History;
use keygate_core::{KeyHash, UnixTime};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sled::transaction::{abort, ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree};

use super::{Change, ChangeRecord, Store, StoreError, Ticket};
use crate::clock::now;

pub(super) type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

pub(super) const META_HEAD: &[u8] = b"changelog_head";
pub(super) const META_FLOOR: &[u8] = b"changelog_floor";
/// The history at the head (32 bytes), at the version the history started from, and at
/// the changelog floor (each `be(version)` + 32 bytes): see [`History`].
pub(super) const META_HISTORY: &[u8] = b"history_head";
pub(super) const META_HISTORY_BASE: &[u8] = b"history_base";
pub(super) const META_HISTORY_FLOOR: &[u8] = b"history_floor";

pub(super) fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(super) fn from_be(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
thread_local! {
    /// Key records decoded by this thread, so tests can tell a lookup from a scan.
    pub(super) static KEY_DECODES: Cell<usize> = const { Cell::new(0) };
}

pub(super) fn digest(bytes: &[u8]) -> Option<History> {
    bytes.try_into().ok().map(|b| History(KeyHash(b)))
}

/// The history after one more changelog record.
pub(super) fn chain(previous: &History, record: &[u8]) -> History {
    let mut h = Sha256::new();
    h.update(b"keygate-history\0");
    h.update(previous.0 .0);
    h.update(record);
    History(KeyHash(h.finalize().into()))
}

pub(super) fn versioned(version: u64, history: &History) -> Vec<u8> {
    let mut out = be(version).to_vec();
    out.extend_from_slice(&history.0 .0);
    out
}

pub(super) fn from_versioned(bytes: &[u8]) -> Option<(u64, History)> {
    let (version, history) = bytes.split_at_checked(8)?;
    Some((from_be(version)?, digest(history)?))
}

pub(super) fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    #[cfg(test)]
    if tree == "keys" {
        KEY_DECODES.with(|n| n.set(n.get() + 1));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { tree, detail: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()) })
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
}

/// One tree inside a transaction, with typed helpers.
pub(super) struct TxTree<'a> {
    tree: &'a TransactionalTree,
    name: &'static str,
    dirty: &'a Cell<bool>,
}

impl TxTree<'_> {
    pub(super) fn get_raw(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(self.tree.get(key)?)
    }

    pub(super) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> TxResult<Option<T>> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => match decode(self.name, &bytes) {
                Ok(v) => Ok(Some(v)),
                Err(e) => abort(e),
            },
        }
    }

    pub(super) fn contains(&self, key: &[u8]) -> TxResult<bool> {
        Ok(self.tree.get(key)?.is_some())
    }

    pub(super) fn put_raw(&self, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.tree.insert(key, value)?;
        self.dirty.set(true);
        Ok(())
    }

    pub(super) fn put<T: Serialize>(&self, key: &[u8], value: &T) -> TxResult<()> {
        match encode(value) {
            Ok(bytes) => self.put_raw(key, &bytes),
            Err(e) => abort(e),
        }
    }

    pub(super) fn remove(&self, key: &[u8]) -> TxResult<()> {
        self.tree.remove(key)?;
        self.dirty.set(true);
        Ok(())
    }
}

/// Declares the trees once: `Trees` (the open sled trees), `Tx` (the view a write closure
/// gets: every tree, plus the changelog appender) and the list a transaction spans all
/// follow from this one list, in this order.
macro_rules! trees {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        pub(super) struct Trees {
            $($(#[$doc])* pub(super) $name: sled::Tree,)*
        }

        impl Trees {
            pub(super) fn open(db: &sled::Db) -> sled::Result<Trees> {
                Ok(Trees { $($name: db.open_tree(stringify!($name))?,)* })
            }

            /// Every tree, in declaration order: what a transaction spans.
            fn all(&self) -> Vec<&sled::Tree> {
                vec![$(&self.$name,)*]
            }
        }

        pub(super) struct Tx<'a> {
            $(pub(super) $name: TxTree<'a>,)*
            appended: Cell<Option<u64>>,
            pub(super) now: UnixTime,
            retain: u64,
        }

        impl<'a> Tx<'a> {
            /// The view over `views`, which sled hands out in the order of [`Trees::all`].
            fn new(views: &'a [TransactionalTree], dirty: &'a Cell<bool>, now: UnixTime, retain: u64) -> TxResult<Tx<'a>> {
                let [$($name,)*] = views else {
                    return abort(StoreError::Task("a transaction's views do not match the trees".into()));
                };
                Ok(Tx {
                    $($name: TxTree { tree: $name, name: stringify!($name), dirty },)*
                    appended: Cell::new(None),
                    now,
                    retain,
                })
            }
        }
    };
}

trees! {
    /// Business id → [`Business`](super::Business).
    businesses,
    /// User id → [`User`](super::User).
    users,
    /// Email → user id.
    users_by_email,
    /// Key id → [`Key`](super::Key).
    keys,
    /// SHA-256 → key id, for the current raw key and any still in a rotation grace.
    key_hashes,
    /// Session id → [`Session`](super::Session).
    sessions,
    /// (key id, client session id) → session id.
    key_sessions,
    /// SHA-256 → session id.
    refresh_tokens,
    /// Session id → until.
    revocations,
    /// Kid → [`SigningKey`](super::SigningKey).
    signing_keys,
    /// Token hashes, changelog head and floor, history, schema version.
    meta,
    /// Big-endian version → [`ChangeRecord`](super::ChangeRecord).
    changelog,
    /// `k:<key id>` / `u:<user id>` → that owner's live sessions, for the per-owner cap.
    owner_sessions,
    /// SHA-256 of rotated-away refresh tokens → session id, for reuse detection.
    spent_refresh,
    /// Key id → hourly counts.
    usage,
    /// `<business id>\0<key id>` → empty, so listing one business's keys reads only its own.
    business_keys,
    /// SHA-256 of the session id → until and session id: the order a full snapshot pages them in.
    revoked_by_digest,
}

impl Tx<'_> {
    /// Appends the next changelog version in this same transaction, trimming the oldest
    /// entry once more than `retain` are kept.
    pub(super) fn append(&self, change: Change) -> TxResult<u64> {
        let head = self.meta.get_raw(META_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        let version = head.saturating_add(1);
        let mut record = ChangeRecord { version, at: self.now, change, history: None };
        let previous = self.meta.get_raw(META_HISTORY)?.and_then(|b| digest(&b));
        if let Some(previous) = previous {
            let history = chain(&previous, &encode(&record).map_err(sled::transaction::ConflictableTransactionError::Abort)?);
            self.meta.put_raw(META_HISTORY, &history.0 .0)?;
            record.history = Some(history);
        }
        self.changelog.put(&be(version), &record)?;
        self.meta.put_raw(META_HEAD, &be(version))?;
        if version > self.retain {
            let oldest = version - self.retain;
            // Keep the history at the floor: a delta can still start there.
            match self.changelog.get::<ChangeRecord>(&be(oldest))?.and_then(|r| r.history) {
                Some(history) => self.meta.put_raw(META_HISTORY_FLOOR, &versioned(oldest, &history))?,
                None => self.meta.remove(META_HISTORY_FLOOR)?,
            }
            self.changelog.remove(&be(oldest))?;
            self.meta.put_raw(META_FLOOR, &be(oldest))?;
        }
        self.appended.set(Some(version));
        Ok(version)
    }
}

impl Store {
    /// (write sequence, changelog head) of what is committed in memory.
    pub(super) fn committed(&self) -> (u64, u64) {
        let w = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        (w.seq, w.head)
    }

    /// Runs `f` as one transaction over every tree, under the writer mutex.
    pub(super) fn write<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<(T, Ticket), StoreError> {
        self.write_after(|_| Ok(()), |tx, ()| f(tx))
    }

    /// [`Store::write`], with `read` run first under the same writer mutex (so no other write
    /// comes between) and its result handed to `f`: for what a transaction cannot read
    /// itself, such as a whole tree (sled's iterators would deadlock inside one).
    pub(super) fn write_after<P, T>(
        &self,
        read: impl FnOnce(&Store) -> Result<P, StoreError>,
        f: impl Fn(&Tx<'_>, &P) -> TxResult<T>,
    ) -> Result<(T, Ticket), StoreError> {
        let mut w = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let read = read(self)?;
        let now = now();
        let retain = self.inner.changelog_retain;
        let result = self.inner.trees.all()[..].transaction(|views: &Vec<TransactionalTree>| {
            let dirty = Cell::new(false);
            let tx = Tx::new(views, &dirty, now, retain)?;
            let out = f(&tx, &read)?;
            let appended = tx.appended.get();
            Ok((out, dirty.get(), appended))
        });
        let (out, dirty, appended) = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })?;
        if dirty {
            w.seq += 1;
        }
        if let Some(version) = appended {
            w.head = version;
        }
        let ticket = Ticket { seq: w.seq, version: w.head };
        if self.inner.flush_per_write && dirty {
            // The baseline: this write's own flush, under the writer lock, so no two
            // writes share one.
            self.flush_to_disk()?;
            self.inner.durability.publish(ticket.seq, ticket.version);
        }
        drop(w);
        Ok((out, ticket))
    }

    pub(super) fn read<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|bytes| decode(name, &bytes)).transpose()
    }

    /// A ticket covering every write visible to a read made before this call: a write is
    /// applied and its sequence number taken under the writer mutex, so once the mutex
    /// is ours, whatever we saw has its number.
    pub(super) fn read_ticket(&self) -> Ticket {
        let (seq, version) = self.committed();
        Ticket { seq, version }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::store::testing::{key, with_business};
    use crate::store::StoreError;

    #[test]
    fn changelog_versions_follow_commits_and_deltas_fold_them() {
        let (_dir, store) = with_business(100);
        let t1 = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let t2 = store.create_key(&key("key_2", "biz_a", 2)).unwrap();
        assert_eq!((t1.version, t2.version), (1, 2));
        assert!(t2.seq > t1.seq);
        let (_, t3) = store.set_key_active("key_1", false).unwrap();
        assert_eq!(t3.version, 3);
        let delta = store.delta(1, 3, 0).unwrap();
        assert_eq!(delta.since, Some(1));
        assert_eq!(delta.keys.len(), 2);
        assert!(delta.keys.iter().any(|k| k.id == "key_1" && !k.active));
        let full = store.full_snapshot(0).unwrap();
        assert_eq!((full.version, full.keys.len()), (3, 2));
        assert!(matches!(store.create_key(&key("key_3", "biz_nope", 3)), Err(StoreError::UnknownBusiness)));
        assert!(matches!(store.create_key(&key("key_4", "biz_a", 2)), Err(StoreError::Collision)));
        assert_eq!(store.full_snapshot(0).unwrap().version, 3, "aborted writes take no version");
    }
}
