//! The store: every rule about what is kept, written once over a storage engine
//! (`engine`: named trees of ordered bytes and transactions over all of them) that only
//! stores bytes. `sled_engine` is the embedded one, and the only module that touches sled;
//! `pg_engine` keeps the same trees in one PostgreSQL table.
//!
//! The trees are declared once, each with what it holds, in the `trees!` list of `tx`.
//! By concern: `tx` (transaction plumbing), `accounts`, `keys`, `sessions`, `signing`,
//! `sweep`, `feed` and `schema`; [`records`] are the stored values.
//!
//! Every write is one engine transaction over all trees, taken under one writer mutex, so
//! changelog versions are assigned in commit order and a change and its changelog entry
//! commit together or not at all. Durability is [`durable`]'s group commit.

mod accounts;
mod durable;
mod engine;
mod feed;
mod keys;
mod pg_engine;
pub mod records;
mod schema;
mod sessions;
mod signing;
mod sled_engine;
mod sweep;
mod tx;

/// Re-exported from [`crate::clock`] for callers that name it `store::now`.
pub use crate::clock::now;
pub use accounts::TokenRole;
pub use durable::{Durable, Flusher, Ticket, FLUSH_TIMEOUT};
pub use keys::ImportOutcome;
pub use records::{
    Business, Change, ChangeRecord, GraceHash, IssuedToken, Key, KeyUsageRecord, OwnedSession, Session, SessionOwner, SigningKey, User,
    USAGE_HOURS,
};
pub use sessions::RefreshOutcome;
pub use sweep::SweepReport;

use std::path::Path;
use std::sync::{Arc, Mutex};

use keygate_core::snapshot::History;
use keygate_core::KeyHash;

use durable::Durability;
use engine::Engine;
use pg_engine::PgEngine;
use sled_engine::SledEngine;
use tx::{chain, from_be, versioned, Trees, META_HEAD, META_HISTORY, META_HISTORY_BASE, TREE_NAMES};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error")]
    Sled(#[from] sled::Error),
    #[error("PostgreSQL error")]
    Postgres(#[from] postgres::Error),
    /// Another process holds the database's one-admin lock.
    #[error("another keygate-admin is using this database")]
    InUse,
    /// `detail` is the decoder's category and position only: its message could quote
    /// the stored value, which may be a secret's hash.
    #[error("a stored value in tree {tree} is corrupt ({detail})")]
    Corrupt { tree: &'static str, detail: String },
    #[error("a value could not be encoded")]
    Encode(#[source] serde_json::Error),
    #[error("the email is already registered")]
    EmailTaken,
    #[error("business not found")]
    UnknownBusiness,
    #[error("key not found")]
    UnknownKey,
    #[error("session not found")]
    UnknownSession,
    #[error("a freshly generated id or hash already exists")]
    Collision,
    #[error("the changelog no longer holds the versions asked for")]
    Gone,
    #[error("the write could not be made durable")]
    NotDurable,
    #[error("a background store task failed: {0}")]
    Task(String),
    /// The key is at its session cap and no live session is the caller's client's to give up.
    #[error("the key is at its session limit")]
    SessionLimit { retry_after_secs: u64 },
}

struct WriterState {
    /// Count of committed writes that changed something.
    seq: u64,
    /// Changelog head after the last commit.
    head: u64,
}

pub(crate) struct Inner {
    engine: Box<dyn Engine>,
    writer: Mutex<WriterState>,
    durability: Durability,
    changelog_retain: u64,
    flush_per_write: bool,
}

/// A handle on the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("durable", &*self.inner.durability.state.borrow()).finish_non_exhaustive()
    }
}

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, bytes (unused by PostgreSQL).
    pub cache_capacity_bytes: u64,
    /// How many changelog entries to keep for deltas; older `since` values get 410.
    pub changelog_retain: u64,
    /// Baseline for measurements only: every write makes its own blocking flush under
    /// the writer lock before it returns, instead of joining the group commit.
    #[doc(hidden)]
    pub flush_per_write: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_capacity_bytes: 64 * 1024 * 1024, changelog_retain: 100_000, flush_per_write: false }
    }
}

impl Store {
    /// Opens (or creates) the sled store at `path`.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let engine = SledEngine::open(path, options.cache_capacity_bytes, TREE_NAMES)?;
        Store::over(Box::new(engine), options)
    }

    /// Opens (or creates) the store in the PostgreSQL database at `url`
    /// (`postgres://user@host:port/dbname`); one admin per database.
    pub fn open_postgres(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        Store::over(Box::new(PgEngine::open(url)?), options)
    }

    /// The store over an opened engine: its schema brought up to date and its history begun.
    fn over(engine: Box<dyn Engine>, options: &StoreOptions) -> Result<Store, StoreError> {
        let trees = Trees::new(&*engine);
        schema::upgrade(&*engine, &trees)?;
        let head = trees.meta.get(META_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        if trees.meta.get(META_HISTORY)?.is_none() {
            // A new store (or one from before histories): a random start, so no two stores
            // ever share a history.
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| StoreError::Task(format!("no random history id: {e}")))?;
            let start = chain(&History(KeyHash(seed)), b"");
            trees.meta.insert(META_HISTORY_BASE, versioned(head, &start))?;
            trees.meta.insert(META_HISTORY, start.0 .0)?;
        }
        // Whatever the engine recovered on open was on disk, so it is durable.
        let inner = Inner {
            engine,
            writer: Mutex::new(WriterState { seq: 0, head }),
            durability: Durability::new(head),
            changelog_retain: options.changelog_retain.max(1),
            flush_per_write: options.flush_per_write,
        };
        Ok(Store { inner: Arc::new(inner) })
    }

    /// Makes every committed write durable.
    pub(crate) fn flush_to_disk(&self) -> Result<(), StoreError> {
        self.inner.engine.flush()
    }

    /// The store's size on disk, bytes (sled's estimate from file metadata, or the
    /// PostgreSQL table's size with its index).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.engine.size_on_disk()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::testing::{add_business, key, open};
    use super::*;

    #[test]
    fn flushed_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 100);
            add_business(&store, "biz_a");
            let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
            store.flush_blocking().unwrap();
            assert_eq!(store.durable_version(), 1);
        }
        let store = open(dir.path(), 100);
        assert_eq!(store.durable_version(), 1);
        assert!(store.key_by_hash(&KeyHash([1; 32])).unwrap().is_some());
        let t = store.create_key(&key("key_2", "biz_a", 2)).unwrap();
        assert_eq!(t.version, 2);
    }
}

/// What the store's unit tests share.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testing {
    use std::path::Path;

    use keygate_core::{KeyHash, KeyKind, Mode};

    use tempfile::TempDir;

    use super::{Business, Key, Store, StoreOptions};

    pub(super) fn key(id: &str, business: &str, byte: u8) -> Key {
        Key {
            id: id.into(),
            business: business.into(),
            kind: KeyKind::Sk,
            mode: Mode::Test,
            hash: KeyHash([byte; 32]),
            prefix: "sk_test_abcd".into(),
            name: None,
            scopes: vec![],
            expires_at: None,
            created_at: 1,
            active: true,
            last_used_at: None,
            rotated_at: None,
            grace: vec![],
        }
    }

    pub(super) fn open(dir: &Path, retain: u64) -> Store {
        Store::open(dir, &StoreOptions { cache_capacity_bytes: 1 << 20, changelog_retain: retain, ..StoreOptions::default() }).unwrap()
    }

    /// Creates business `id` (named after itself).
    pub(super) fn add_business(store: &Store, id: &str) {
        let _ = store.create_business(&Business { id: id.into(), name: id.into(), created_at: 1 }).unwrap();
    }

    /// A fresh store (keeping `retain` changelog records) holding one business, `biz_a`;
    /// the directory lives as long as the returned guard.
    pub(super) fn with_business(retain: u64) -> (TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), retain);
        add_business(&store, "biz_a");
        (dir, store)
    }
}
