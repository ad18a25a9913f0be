//! What the store needs of a storage engine: named trees of ordered byte keys, reads
//! outside transactions, one transaction at a time over every tree, and a flush that makes
//! what was committed durable. The store's rules (indexes, the changelog, session caps)
//! are written once above this; an engine only stores bytes.
//!
//! A tree is named by its position in the list the engine was opened with.

use std::ops::Bound;

use super::limits::SharedLimits;
use super::rate_counts::RateCounts;
use super::StoreError;

/// One stored entry: key and value.
pub(super) type Entry = (Vec<u8>, Vec<u8>);

/// Entries in key order, each read as the iterator reaches it.
pub(super) type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;

/// Why a transaction's body stopped early.
#[derive(Debug)]
pub(super) enum TxError {
    /// A rule refused the change (or the engine failed): nothing is written and the
    /// error reaches the caller.
    Abort(StoreError),
    /// The engine saw a concurrent change: the body runs again from the start.
    Conflict,
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> TxError {
        TxError::Abort(e)
    }
}

/// What a commit tells the other processes sharing the store (replicas on one database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Announcement {
    /// A commit reached changelog `version`; `signing` when it added or removed a signing key.
    Committed { version: u64, signing: bool },
    /// Announcements may have been missed (the listening connection was lost): read the
    /// head again.
    Missed,
    /// The listening connection is lost: until the next `Missed`, other processes'
    /// commits go unheard.
    Lost,
}

/// Called for every announcement, on a thread of the engine's.
pub(super) type OnAnnouncement = Box<dyn Fn(Announcement) + Send + Sync>;

/// The reads and writes a transaction's body makes; nothing is visible to others, and
/// nothing is kept, unless the body returns `Ok`.
pub(super) trait EngineTx {
    fn get(&self, tree: usize, key: &[u8]) -> Result<Option<Vec<u8>>, TxError>;
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), TxError>;
    fn remove(&self, tree: usize, key: &[u8]) -> Result<(), TxError>;
    /// The values of `keys`, in the order asked (an engine over a network reads them in
    /// one round trip).
    fn get_many(&self, tree: usize, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TxError> {
        keys.iter().map(|key| self.get(tree, key)).collect()
    }
    /// Writes every entry; of two with one key, the later wins.
    fn insert_many(&self, tree: usize, entries: Vec<Entry>) -> Result<(), TxError> {
        entries.iter().try_for_each(|(key, value)| self.insert(tree, key, value))
    }
    /// Announces `what` to every follower when (and only if) this transaction commits.
    /// An engine only one process can open has no one to tell.
    fn announce(&self, _what: Announcement) -> Result<(), TxError> {
        Ok(())
    }
}

/// A transaction's body: it may run more than once (see [`TxError::Conflict`]).
pub(super) type TxBody<'a> = dyn FnMut(&dyn EngineTx) -> Result<(), TxError> + 'a;

pub(super) trait Engine: Send + Sync {
    fn get(&self, tree: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The entries whose keys fall between `from` and `to`, in key order.
    fn range(&self, tree: usize, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Entries<'_>;
    /// The entries whose keys start with `prefix`, in key order.
    fn scan_prefix(&self, tree: usize, prefix: &[u8]) -> Entries<'_>;
    fn is_empty(&self, tree: usize) -> Result<bool, StoreError>;
    /// Runs `body` as one transaction over every tree; callers run one at a time.
    fn transact(&self, body: &mut TxBody<'_>) -> Result<(), StoreError>;
    /// Writes outside any transaction, for opening and migrations only.
    fn put(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Empties a tree, for rebuilding an index; outside any transaction.
    fn clear(&self, tree: usize) -> Result<(), StoreError>;
    /// Writes many entries at once, outside any transaction, for rebuilding an index.
    fn put_many(&self, tree: usize, entries: Vec<Entry>) -> Result<(), StoreError>;
    /// Removes the entries whose keys fall between `from` and `to`, outside any
    /// transaction, in as few statements as the engine allows (a store starting a new
    /// history drops its old changelog this way).
    fn remove_range(&self, tree: usize, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<(), StoreError>;
    /// How many entries the tree holds.
    fn len(&self, tree: usize) -> Result<u64, StoreError>;
    /// Where the store lives, as a string that changes when it is moved, copied or
    /// restored from a backup (see `history.rs`); never holds a secret.
    fn location(&self) -> Result<String, StoreError>;
    /// The other keygate-admin processes that have this store open, as far as the engine
    /// can tell cheaply (replicas on one database); an engine only one process can open
    /// has none.
    fn other_processes(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    /// Makes everything committed so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes on disk (an estimate).
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Calls `on_announcement` for each commit announced from now on, by any process on
    /// the same store, until the engine is dropped. An engine only one process can open
    /// never calls it: the store sees all its own commits.
    fn follow(&self, _on_announcement: OnAnnouncement) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether other processes may write to this store at the same time (replicas on one
    /// database).
    fn shared(&self) -> bool {
        false
    }
    /// The counters replicas share, if other processes can open this store.
    fn shared_limits(&self) -> Option<&dyn SharedLimits> {
        None
    }
    /// The rate-limit counts replicas share, if other processes can open this store.
    fn shared_rate_counts(&self) -> Option<&dyn RateCounts> {
        None
    }
    /// Ends the start-up section that keeps two processes from setting up one store at
    /// once (see [`super::Store::startup_done`]).
    fn end_startup(&self) {}
}
