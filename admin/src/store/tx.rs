//! Transaction plumbing: the trees, declared once; the typed view a write gets; the writer
//! (one engine transaction over every tree, under the writer mutex); the changelog appender
//! with its history digest; and how values are encoded.

use std::cell::Cell;
use std::ops::{Bound, RangeBounds};
use std::sync::PoisonError;

use super::engine::{Announcement, Engine, EngineTx, Entries, Entry, TxError};
use super::{Change, ChangeRecord, Store, StoreError, Ticket};
use crate::clock::now;
use keygate_core::snapshot::History;
use keygate_core::{KeyHash, UnixTime};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub(super) type TxResult<T> = Result<T, TxError>;

/// Ends a transaction's body with `e`: nothing it wrote is kept.
pub(super) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(TxError::Abort(e))
}

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
    tx: &'a dyn EngineTx,
    tree: usize,
    name: &'static str,
    dirty: &'a Cell<bool>,
}

impl TxTree<'_> {
    pub(super) fn get_raw(&self, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        self.tx.get(self.tree, key)
    }

    pub(super) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> TxResult<Option<T>> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(self.name, &bytes)?)),
        }
    }

    /// The values of `keys`, in the order asked, read together.
    pub(super) fn get_many<T: DeserializeOwned>(&self, keys: &[Vec<u8>]) -> TxResult<Vec<Option<T>>> {
        let values = self.tx.get_many(self.tree, keys)?;
        Ok(values.iter().map(|value| value.as_deref().map(|bytes| decode(self.name, bytes)).transpose()).collect::<Result<_, _>>()?)
    }

    /// Writes every entry together.
    pub(super) fn put_many<'v, T: Serialize + 'v>(&self, entries: impl IntoIterator<Item = (&'v [u8], &'v T)>) -> TxResult<()> {
        let entries = entries.into_iter().map(|(key, value)| Ok((key.to_vec(), encode(value)?))).collect::<Result<Vec<_>, StoreError>>()?;
        if !entries.is_empty() {
            self.tx.insert_many(self.tree, entries)?;
            self.dirty.set(true);
        }
        Ok(())
    }

    pub(super) fn contains(&self, key: &[u8]) -> TxResult<bool> {
        Ok(self.get_raw(key)?.is_some())
    }

    pub(super) fn put_raw(&self, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.tx.insert(self.tree, key, value)?;
        self.dirty.set(true);
        Ok(())
    }

    pub(super) fn put<T: Serialize>(&self, key: &[u8], value: &T) -> TxResult<()> {
        self.put_raw(key, &encode(value)?)
    }

    pub(super) fn remove(&self, key: &[u8]) -> TxResult<()> {
        self.tx.remove(self.tree, key)?;
        self.dirty.set(true);
        Ok(())
    }
}

/// One tree outside any transaction: reads see what is committed.
pub(super) struct Tree<'a> {
    engine: &'a dyn Engine,
    tree: usize,
    name: &'static str,
}

impl Tree<'_> {
    pub(super) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(self.tree, key.as_ref())
    }

    /// The value at `key`, decoded.
    pub(super) fn read<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>, StoreError> {
        self.get(key)?.map(|bytes| decode(self.name, &bytes)).transpose()
    }

    pub(super) fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    pub(super) fn iter(&self) -> Entries<'_> {
        self.engine.range(self.tree, Bound::Unbounded, Bound::Unbounded)
    }

    pub(super) fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Entries<'_> {
        let owned = |b: Bound<&K>| b.map(|k| k.as_ref().to_vec());
        self.engine.range(self.tree, owned(range.start_bound()), owned(range.end_bound()))
    }

    pub(super) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Entries<'_> {
        self.engine.scan_prefix(self.tree, prefix.as_ref())
    }

    pub(super) fn is_empty(&self) -> Result<bool, StoreError> {
        self.engine.is_empty(self.tree)
    }

    /// A write outside any transaction: for opening and migrations only.
    pub(super) fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.engine.put(self.tree, key.as_ref(), value.as_ref())
    }

    /// Empties the tree, outside any transaction: for rebuilding an index.
    pub(super) fn clear(&self) -> Result<(), StoreError> {
        self.engine.clear(self.tree)
    }

    /// Writes `entries` at once, outside any transaction: for rebuilding an index.
    pub(super) fn put_many(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        self.engine.put_many(self.tree, entries)
    }
}

/// Declares the trees once: their names (the order an engine opens them in), `Trees` (each
/// tree outside a transaction) and `Tx` (the view a write closure gets: every tree, plus
/// the changelog appender) all follow from this one list.
macro_rules! trees {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Every tree's name, in declaration order: a tree's number is its place here.
        pub(super) const TREE_NAMES: &[&str] = &[$(stringify!($name),)*];

        /// Each tree's number: its place in [`TREE_NAMES`].
        #[allow(non_camel_case_types)]
        pub(super) enum TreeNumber { $($name,)* }

        pub(super) struct Trees<'a> {
            $($(#[$doc])* pub(super) $name: Tree<'a>,)*
        }

        impl<'a> Trees<'a> {
            pub(super) fn new(engine: &'a dyn Engine) -> Trees<'a> {
                Trees { $($name: Tree { engine, tree: TreeNumber::$name as usize, name: stringify!($name) },)* }
            }
        }

        pub(super) struct Tx<'a> {
            $(pub(super) $name: TxTree<'a>,)*
            appended: Cell<Option<u64>>,
            /// Whether a signing key was added or removed.
            signing: Cell<bool>,
            pub(super) now: UnixTime,
            retain: u64,
            pub(super) audit_max_entries: u64,
        }

        impl<'a> Tx<'a> {
            fn new(tx: &'a dyn EngineTx, dirty: &'a Cell<bool>, now: UnixTime, retain: u64, audit_max_entries: u64) -> Tx<'a> {
                Tx {
                    $($name: TxTree { tx, tree: TreeNumber::$name as usize, name: stringify!($name), dirty },)*
                    appended: Cell::new(None),
                    signing: Cell::new(false),
                    now,
                    retain,
                    audit_max_entries,
                }
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
    /// Key id → [`CreditSpend`](super::credits::CreditSpend): what each proxy spent of the key's credits.
    credit_spend,
    /// `u64::MAX - entry number` (big-endian) → [`AuditRecord`](super::AuditRecord): newest first.
    audit,
    /// `<business id>\0<u64::MAX - entry number>` → empty: one business's audit entries.
    audit_by_business,
    /// Issuer id → [`IssuerRecord`](super::IssuerRecord): trusted identity providers.
    issuers,
}

impl Tx<'_> {
    /// Appends the next changelog version in this same transaction, trimming the oldest
    /// entry once more than `retain` are kept.
    pub(super) fn append(&self, change: Change) -> TxResult<u64> {
        let head = self.meta.get_raw(META_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        let version = head.saturating_add(1);
        if matches!(change, Change::SigningKeyAdded { .. } | Change::SigningKeyRemoved { .. }) {
            self.signing.set(true);
        }
        let mut record = ChangeRecord { version, at: self.now, change, history: None };
        let previous = self.meta.get_raw(META_HISTORY)?.and_then(|b| digest(&b));
        if let Some(previous) = previous {
            let history = chain(&previous, &encode(&record)?);
            self.meta.put_raw(META_HISTORY, &history.0 .0)?;
            record.history = Some(history);
        }
        self.changelog.put(&be(version), &record)?;
        self.meta.put_raw(META_HEAD, &be(version))?;
        if version > self.retain {
            let oldest = version - self.retain;
            // No record there: below the floor of a history begun since (see `history`),
            // which stays where it is.
            if let Some(record) = self.changelog.get::<ChangeRecord>(&be(oldest))? {
                // Keep the history at the floor: a delta can still start there.
                match record.history {
                    Some(history) => self.meta.put_raw(META_HISTORY_FLOOR, &versioned(oldest, &history))?,
                    None => self.meta.remove(META_HISTORY_FLOOR)?,
                }
                self.changelog.remove(&be(oldest))?;
                self.meta.put_raw(META_FLOOR, &be(oldest))?;
            }
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

    /// [`Store::write`], with `read` run first, once no other write can come between, and
    /// its result handed to `f`: for what a transaction cannot read itself, such as a whole
    /// tree (an engine need not offer scans inside a transaction). Under the writer mutex
    /// that is before the transaction; on a store other replicas write too, only inside it
    /// (after the write lock every replica takes), so there it runs again on a retry. (Not
    /// inside for sled: a plain read inside its transaction would wait for that transaction.)
    pub(super) fn write_after<P, T>(
        &self,
        read: impl Fn(&Store) -> Result<P, StoreError>,
        f: impl Fn(&Tx<'_>, &P) -> TxResult<T>,
    ) -> Result<(T, Ticket), StoreError> {
        let mut w = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let before = if self.inner.engine.shared() { None } else { Some(read(self)?) };
        let now = now();
        let retain = self.inner.changelog_retain;
        let mut done = None;
        self.inner.engine.transact(&mut |etx| {
            let inside;
            let read = match &before {
                Some(read) => read,
                None => {
                    inside = read(self)?;
                    &inside
                }
            };
            let dirty = Cell::new(false);
            let tx = Tx::new(etx, &dirty, now, retain, self.inner.audit_max_entries);
            let out = f(&tx, read)?;
            // The change's audit entry, when it changed something.
            if let Some(audit) = self.audit.as_deref().filter(|_| dirty.get()) {
                tx.audit(audit)?;
            }
            if let Some(version) = tx.appended.get() {
                etx.announce(Announcement::Committed { version, signing: tx.signing.get() })?;
            }
            done = Some((out, dirty.get(), tx.appended.get()));
            Ok(())
        })?;
        let (out, dirty, appended) = done.ok_or_else(|| StoreError::Task("a transaction ended without running".into()))?;
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

    /// Every tree, outside any transaction.
    pub(super) fn trees(&self) -> Trees<'_> {
        Trees::new(&*self.inner.engine)
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
