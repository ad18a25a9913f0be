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
mod audit;
pub mod credits;
mod durable;
mod engine;
mod feed;
mod history;
mod issuers;
mod keys;
pub mod limits;
pub mod migrate;
mod pg_engine;
pub mod rate_counts;
pub mod records;
mod schema;
mod sealing;
mod sessions;
mod signing;
mod sled_engine;
mod sweep;
mod tx;

/// Re-exported from [`crate::clock`] for callers that name it `store::now`.
pub use crate::clock::now;
pub use accounts::TokenRole;
pub use audit::{Actor, ActorKind, Audit, AuditObject, AuditPage, AuditQuery, AuditRecord, AuditViewer, AUDIT_MAX_PAGE};
pub use durable::{Durable, Flusher, Ticket, FLUSH_TIMEOUT};
pub use keys::ImportOutcome;
pub use records::{
    Business, Change, ChangeRecord, GraceHash, IssuedToken, IssuerRecord, IssuerSource, Key, KeyUsageRecord, OwnedSession, Session,
    SessionOwner, SigningKey, User, USAGE_HOURS,
};
pub use sessions::RefreshOutcome;
pub use sweep::SweepReport;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use durable::Durability;
use engine::{Announcement, Engine};
use pg_engine::PgEngine;
use sled_engine::SledEngine;
use tx::{from_be, versioned, Trees, META_HEAD, META_HISTORY, META_HISTORY_BASE, TREE_NAMES};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error")]
    Sled(#[from] sled::Error),
    #[error("PostgreSQL error")]
    Postgres(#[source] postgres::Error),
    /// The database cannot be reached (down, restarting, out of connections): worth a retry.
    #[error("the database cannot be reached")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Another replica held the database's start-up lock for longer than a start-up takes.
    #[error("another keygate-admin has been starting up on this database for a minute")]
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
    #[error("issuer not found")]
    UnknownIssuer,
    #[error("this issuer is already registered for this business")]
    IssuerExists,
    #[error("a freshly generated id or hash already exists")]
    Collision,
    #[error("the changelog no longer holds the versions asked for")]
    Gone,
    #[error("the write could not be made durable")]
    NotDurable,
    #[error("a background store task failed: {0}")]
    Task(String),
    /// A copy between stores (`migrate`) would not start: the reason says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// A step of a copy between stores failed: what it was doing, and the error underneath.
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<StoreError>,
    },
    /// The key is at its session cap and no live session is the caller's client's to give up.
    #[error("the key is at its session limit")]
    SessionLimit { retry_after_secs: u64 },
    /// A stored signing seed is sealed with a seal key that is not configured (named by its id).
    #[error("signing key {kid} is sealed with seal key {seal_key}, which is not configured: list it among the seal keys (keygate-admin seal-key id shows the ids of those configured)")]
    SealKeyMissing { kid: String, seal_key: String },
}

impl From<postgres::Error> for StoreError {
    /// Tells an unreachable database (worth a retry: 503) from a failed statement (a bug: 500).
    fn from(e: postgres::Error) -> StoreError {
        use postgres::error::SqlState;
        let unreachable_codes = [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_DOES_NOT_EXIST,
            SqlState::CONNECTION_FAILURE,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ];
        let unreachable = match e.code() {
            Some(code) => unreachable_codes.contains(code),
            // No SQL state: the connection itself failed (refused, reset, closed).
            None => true,
        };
        if unreachable {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Postgres(e)
        }
    }
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
    /// Counts the changes to the signing keys made through other replicas.
    signing_changes: tokio::sync::watch::Sender<u64>,
    /// Whether this process hears every commit (always, unless other processes share the
    /// store and the connection that listens for their commits is lost).
    following: tokio::sync::watch::Sender<bool>,
    changelog_retain: u64,
    /// Audit entries kept at most, and for how long (seconds).
    audit_max_entries: u64,
    audit_max_age_secs: u64,
    flush_per_write: bool,
    /// The rate-limit counts when the engine has no shared table for them (sled).
    local_rate_counts: rate_counts::LocalRateCounts,
}

/// What another replica's commit means here: the changelog it reached is committed, so
/// durable (the feed may serve it and its long-polls wake), and the signing keys may need a
/// reload.
fn hear(store: &Weak<Inner>, what: Announcement) {
    let Some(inner) = store.upgrade() else { return };
    let store = Store { inner, audit: None };
    let (version, signing) = match what {
        Announcement::Lost => {
            store.inner.following.send_replace(false);
            return;
        }
        Announcement::Committed { version, signing } => (version, signing),
        Announcement::Missed => match store.trees().meta.get(META_HEAD) {
            Ok(head) => (head.and_then(|b| from_be(&b)).unwrap_or(0), true),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the changelog head after missing announcements");
                return;
            }
        },
    };
    store.inner.durability.publish(0, version);
    store.inner.following.send_if_modified(|following| !std::mem::replace(following, true));
    if signing {
        store.inner.signing_changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A handle on the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// The change this handle's writes record in the audit log ([`Store::audited`]).
    audit: Option<Arc<Audit>>,
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
    /// Audit log entries kept at most (the oldest goes when a new one comes).
    pub audit_max_entries: u64,
    /// Audit log entries older than this are swept, seconds.
    pub audit_max_age_secs: u64,
    /// Baseline for measurements only: every write makes its own blocking flush under
    /// the writer lock before it returns, instead of joining the group commit.
    #[doc(hidden)]
    pub flush_per_write: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            changelog_retain: 100_000,
            audit_max_entries: 100_000,
            audit_max_age_secs: 90 * 86_400,
            flush_per_write: false,
        }
    }
}

impl Store {
    /// Opens (or creates) the sled store at `path`.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let engine = SledEngine::open(path, options.cache_capacity_bytes, TREE_NAMES)?;
        Store::over(Box::new(engine), options)
    }

    /// Opens (or creates) the store in the PostgreSQL database at `url`
    /// (`postgres://user@host:port/dbname`), which any number of replicas may share. It
    /// holds the database's start-up lock (other replicas wait in their `open_postgres`)
    /// until [`Store::startup_done`] is called or the store is dropped.
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
            let start = history::fresh_history()?;
            trees.meta.insert(META_HISTORY_BASE, versioned(head, &start))?;
            trees.meta.insert(META_HISTORY, start.0 .0)?;
        }
        history::settle_location(&*engine, &trees)?;
        // Whatever the engine recovered on open was on disk, so it is durable.
        let inner = Inner {
            engine,
            writer: Mutex::new(WriterState { seq: 0, head }),
            durability: Durability::new(head),
            signing_changes: tokio::sync::watch::channel(0).0,
            following: tokio::sync::watch::channel(true).0,
            changelog_retain: options.changelog_retain.max(1),
            audit_max_entries: options.audit_max_entries.max(1),
            audit_max_age_secs: options.audit_max_age_secs,
            flush_per_write: options.flush_per_write,
            local_rate_counts: rate_counts::LocalRateCounts::default(),
        };
        let inner = Arc::new(inner);
        // Weak: the engine's listener must not keep the store alive.
        let store = Arc::downgrade(&inner);
        inner.engine.follow(Box::new(move |what| hear(&store, what)))?;
        Ok(Store { inner, audit: None })
    }

    /// Lets other replicas start: what had to be set up once (schema, history, tokens,
    /// the first signing key) is in place.
    pub fn startup_done(&self) {
        self.inner.engine.end_startup();
    }

    /// Changes when another replica adds or removes a signing key: reload them then.
    /// Whether this process hears every commit: `false` while a replica cannot hear the
    /// others' (its feed could then be behind without knowing it).
    pub fn following(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.following.subscribe()
    }

    pub fn signing_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.signing_changes.subscribe()
    }

    /// The changelog head as far as this replica knows: its own last commit, or a later
    /// one announced by another replica.
    pub(super) fn head(&self) -> u64 {
        let own = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner).head;
        own.max(self.durable_version())
    }

    /// The store's change generation, read from the engine (so, on a database replicas
    /// share, as fresh as any other read there, with no wait for another replica's
    /// announcement): the history digest at the changelog head, which every changelog
    /// append replaces with a new one in the same transaction and a new history replaces
    /// with a random one, so it never comes back. Every change that decides whether a
    /// key or a session is accepted (a key's state, its raw values, a session's
    /// revocation, the signing keys) is appended to the changelog, or the proxies fed
    /// from it would miss it; so while this reads the same, whatever was read after an
    /// earlier read of it still holds. `None` for a store without a history (never once
    /// opened).
    pub fn change_generation(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.trees().meta.get(META_HISTORY)?.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()))
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
    use keygate_core::KeyHash;

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
        Key::new(id.into(), business.into(), KeyKind::Sk, Mode::Test, KeyHash([byte; 32]), "sk_test_abcd".into(), 1)
    }

    /// Opens the sled store in `dir`. A store just dropped in this process may hold the
    /// directory's lock a moment longer (sled's threads let go of it after the drop).
    pub(super) fn open(dir: &Path, retain: u64) -> Store {
        let options = StoreOptions { cache_capacity_bytes: 1 << 20, changelog_retain: retain, ..StoreOptions::default() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir, &options) {
                Err(super::StoreError::Sled(sled::Error::Io(e)))
                    if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened.unwrap(),
            }
        }
    }

    /// Creates business `id` (named after itself).
    pub(super) fn add_business(store: &Store, id: &str) {
        let _ = store.create_business(&Business::new(id.into(), id.into(), 1)).unwrap();
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
