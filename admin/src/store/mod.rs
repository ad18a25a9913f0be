//! The store: the only module that touches sled.
//!
//! The trees are declared once, each with what it holds, in the `trees!` list below.
//!
//! Every write is one sled transaction over all trees, taken under one writer mutex, so
//! changelog versions are assigned in commit order and a change and its changelog entry
//! commit together or not at all. Durability is [`durable`]'s group commit.

mod durable;
pub mod records;

pub use durable::{Durable, Flusher, Ticket, FLUSH_TIMEOUT};
pub use records::{
    Business, Change, ChangeRecord, GraceHash, IssuedToken, Key, KeyUsageRecord, OwnedSession, Session, SessionOwner, SigningKey, User,
    USAGE_HOURS,
};

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use keygate_core::revoked;
use keygate_core::snapshot::{History, KeyEntry, RevokedSession, SigningKeyEntry};
use keygate_core::{KeyHash, SnapshotWire, UnixTime};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sled::transaction::{abort, ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree};

use durable::Durability;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error")]
    Sled(#[from] sled::Error),
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

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// Which shared secret a stored hash belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    Operator,
    Proxy,
}

impl TokenRole {
    fn meta_key(self) -> &'static [u8] {
        match self {
            TokenRole::Operator => b"operator_token_sha256",
            TokenRole::Proxy => b"proxy_token_sha256",
        }
    }
}

const META_HEAD: &[u8] = b"changelog_head";
const META_FLOOR: &[u8] = b"changelog_floor";
const META_SCHEMA: &[u8] = b"schema";
/// The history at the head (32 bytes), at the version the history started from, and at
/// the changelog floor (each `be(version)` + 32 bytes): see [`History`].
const META_HISTORY: &[u8] = b"history_head";
const META_HISTORY_BASE: &[u8] = b"history_base";
const META_HISTORY_FLOOR: &[u8] = b"history_floor";
/// 2: the `business_keys` index (built from the keys on opening a schema-1 store).
/// 3: the `revoked_by_digest` index (built from the revocations on opening an older store).
const SCHEMA_VERSION: u64 = 3;

struct WriterState {
    /// Count of committed writes that changed something.
    seq: u64,
    /// Changelog head after the last commit.
    head: u64,
}

pub(crate) struct Inner {
    db: sled::Db,
    trees: Trees,
    writer: Mutex<WriterState>,
    durability: Durability,
    changelog_retain: u64,
    flush_per_write: bool,
    /// sled's log file, for an `fdatasync` after each flush (see [`Store::flush_to_disk`]).
    log_file: Option<std::fs::File>,
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
    /// sled's page cache, bytes.
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

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn from_be(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
thread_local! {
    /// Key records decoded by this thread, so tests can tell a lookup from a scan.
    static KEY_DECODES: Cell<usize> = const { Cell::new(0) };
}

/// A `revoked_by_digest` value: until (8 bytes, big-endian), then the session id.
fn digest_entry(sid: &str, until: UnixTime) -> Vec<u8> {
    let mut out = be(until).to_vec();
    out.extend_from_slice(sid.as_bytes());
    out
}

fn digest(bytes: &[u8]) -> Option<History> {
    bytes.try_into().ok().map(|b| History(KeyHash(b)))
}

/// The history after one more changelog record.
fn chain(previous: &History, record: &[u8]) -> History {
    let mut h = Sha256::new();
    h.update(b"keygate-history\0");
    h.update(previous.0 .0);
    h.update(record);
    History(KeyHash(h.finalize().into()))
}

fn versioned(version: u64, history: &History) -> Vec<u8> {
    let mut out = be(version).to_vec();
    out.extend_from_slice(&history.0 .0);
    out
}

fn from_versioned(bytes: &[u8]) -> Option<(u64, History)> {
    let (version, history) = bytes.split_at_checked(8)?;
    Some((from_be(version)?, digest(history)?))
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    #[cfg(test)]
    if tree == "keys" {
        KEY_DECODES.with(|n| n.set(n.get() + 1));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { tree, detail: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()) })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
}

/// `<business>\0<key id>`: a business's keys are one prefix scan of `business_keys`.
fn business_key_index(business: &str, key_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(business.len() + 1 + key_id.len());
    k.extend_from_slice(business.as_bytes());
    k.push(0);
    k.extend_from_slice(key_id.as_bytes());
    k
}

fn key_session_index(key_id: &str, client_session: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + 1 + client_session.len());
    k.extend_from_slice(key_id.as_bytes());
    k.push(0);
    k.extend_from_slice(client_session.as_bytes());
    k
}

/// One tree inside a transaction, with typed helpers.
pub(super) struct TxTree<'a> {
    tree: &'a TransactionalTree,
    name: &'static str,
    dirty: &'a Cell<bool>,
}

impl TxTree<'_> {
    fn get_raw(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(self.tree.get(key)?)
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> TxResult<Option<T>> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => match decode(self.name, &bytes) {
                Ok(v) => Ok(Some(v)),
                Err(e) => abort(e),
            },
        }
    }

    fn contains(&self, key: &[u8]) -> TxResult<bool> {
        Ok(self.tree.get(key)?.is_some())
    }

    fn put_raw(&self, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.tree.insert(key, value)?;
        self.dirty.set(true);
        Ok(())
    }

    fn put<T: Serialize>(&self, key: &[u8], value: &T) -> TxResult<()> {
        match encode(value) {
            Ok(bytes) => self.put_raw(key, &bytes),
            Err(e) => abort(e),
        }
    }

    fn remove(&self, key: &[u8]) -> TxResult<()> {
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
            fn open(db: &sled::Db) -> sled::Result<Trees> {
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
    /// Business id → [`Business`].
    businesses,
    /// User id → [`User`].
    users,
    /// Email → user id.
    users_by_email,
    /// Key id → [`Key`].
    keys,
    /// SHA-256 → key id, for the current raw key and any still in a rotation grace.
    key_hashes,
    /// Session id → [`Session`].
    sessions,
    /// (key id, client session id) → session id.
    key_sessions,
    /// SHA-256 → session id.
    refresh_tokens,
    /// Session id → until.
    revocations,
    /// Kid → [`SigningKey`].
    signing_keys,
    /// Token hashes, changelog head and floor, history, schema version.
    meta,
    /// Big-endian version → [`ChangeRecord`].
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
    fn append(&self, change: Change) -> TxResult<u64> {
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

fn owner_key(owner: &SessionOwner) -> Vec<u8> {
    match owner {
        SessionOwner::Key { key_id, .. } => format!("k:{key_id}").into_bytes(),
        SessionOwner::User { user_id } => format!("u:{user_id}").into_bytes(),
    }
}

/// Whether a session can still hand out or refresh a token at `now`.
fn session_alive(session: &Session, now: UnixTime) -> bool {
    session.revoked_at.is_none()
        && match session.owner {
            SessionOwner::Key { .. } => session.last_exp > now,
            SessionOwner::User { .. } => session.refresh_expires_at.unwrap_or(session.last_exp).max(session.last_exp) > now,
        }
}

/// What a refresh attempt came to.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The session with its new token and refresh-token hash.
    Refreshed(Box<Session>),
    /// A spent refresh token was presented again: the session is now revoked.
    Reused(Option<RevokedSession>),
    /// Unknown, expired, or its session revoked.
    Invalid,
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

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub sessions: usize,
    pub revocations: usize,
    pub grace_hashes: usize,
    pub signing_keys: usize,
    pub spent_refresh: usize,
}

impl Tx<'_> {
    /// Records that `sid` is revoked until `until`.
    fn put_revocation(&self, sid: &str, until: UnixTime) -> TxResult<()> {
        self.revoked_by_digest.put_raw(&revoked::digest(sid).0, &digest_entry(sid, until))?;
        self.revocations.put_raw(sid.as_bytes(), &be(until))
    }

    fn remove_revocation(&self, sid: &[u8]) -> TxResult<()> {
        self.revoked_by_digest.remove(&revoked::digest(&String::from_utf8_lossy(sid)).0)?;
        self.revocations.remove(sid)
    }

    /// Revokes `session` (idempotent): a revocation entry until its last token's expiry
    /// plus `leeway`, the (key, client session) index dropped, and a changelog entry.
    fn revoke(&self, mut session: Session, leeway: u64) -> TxResult<RevokedSession> {
        let sid = session.id.clone();
        if session.revoked_at.is_some() {
            let until = self.revocations.get_raw(sid.as_bytes())?.and_then(|b| from_be(&b)).unwrap_or(self.now);
            return Ok(RevokedSession { sid, until });
        }
        let until = session.last_exp.max(self.now).saturating_add(leeway);
        session.revoked_at = Some(self.now);
        self.sessions.put(sid.as_bytes(), &session)?;
        self.put_revocation(&sid, until)?;
        if let SessionOwner::Key { key_id, client_session } = &session.owner {
            // The next login for this pair opens a new session.
            let index = key_session_index(key_id, client_session);
            if self.key_sessions.get_raw(&index)?.as_deref() == Some(sid.as_bytes()) {
                self.key_sessions.remove(&index)?;
            }
        }
        let revoked = RevokedSession { sid, until };
        self.append(Change::SessionRevoked { session: revoked.clone() })?;
        Ok(revoked)
    }

    /// The live sessions in an owner's list, oldest first (dead ones pruned).
    fn live_owned(&self, owner: &[u8]) -> TxResult<Vec<(OwnedSession, Session)>> {
        let list: Vec<OwnedSession> = self.owner_sessions.get(owner)?.unwrap_or_default();
        let mut live = Vec::with_capacity(list.len());
        for entry in list {
            if let Some(session) = self.sessions.get::<Session>(entry.sid.as_bytes())? {
                if session_alive(&session, self.now) {
                    live.push((entry, session));
                }
            }
        }
        live.sort_by_key(|(o, _)| o.created_at);
        Ok(live)
    }

    /// Adds a new session to its owner's list; at `cap` live sessions the oldest are
    /// revoked (changelog) to make room. With a `client` (API-key logins) only that
    /// client's own sessions (or ones stored without a client) may go: one client
    /// cannot end another's session by logging in. If none may, the write is refused with
    /// the time until the first of the others expires.
    fn register(&self, session: &Session, client: Option<&str>, cap: usize, leeway: u64) -> TxResult<Vec<RevokedSession>> {
        let owner = owner_key(&session.owner);
        let mut live = self.live_owned(&owner)?;
        let mut evicted = Vec::new();
        while live.len() >= cap.max(1) {
            let displaceable = match client {
                None => Some(0),
                Some(client) => live.iter().position(|(o, _)| o.client.as_deref().is_none_or(|c| c == client)),
            };
            let Some(at) = displaceable else {
                let first_expiry = live.iter().map(|(_, s)| s.last_exp).min().unwrap_or(self.now);
                return abort(StoreError::SessionLimit { retry_after_secs: first_expiry.saturating_sub(self.now).max(1) });
            };
            let (_, oldest) = live.remove(at);
            evicted.push(self.revoke(oldest, leeway)?);
        }
        let mut list: Vec<OwnedSession> = live.into_iter().map(|(o, _)| o).collect();
        list.push(OwnedSession { sid: session.id.clone(), created_at: session.created_at, client: client.map(str::to_owned) });
        self.owner_sessions.put(&owner, &list)?;
        Ok(evicted)
    }

    /// Deletes a dead session and its indexes.
    fn delete_session(&self, session: &Session) -> TxResult<()> {
        let sid = session.id.as_bytes();
        self.sessions.remove(sid)?;
        if let SessionOwner::Key { key_id, client_session } = &session.owner {
            let index = key_session_index(key_id, client_session);
            if self.key_sessions.get_raw(&index)?.as_deref() == Some(sid) {
                self.key_sessions.remove(&index)?;
            }
        }
        if let Some(hash) = session.refresh_sha256.as_deref().and_then(crate::random::unhex::<32>) {
            if self.refresh_tokens.get_raw(&hash)?.as_deref() == Some(sid) {
                self.refresh_tokens.remove(&hash)?;
            }
        }
        let owner = owner_key(&session.owner);
        if let Some(mut list) = self.owner_sessions.get::<Vec<OwnedSession>>(&owner)? {
            list.retain(|o| o.sid != session.id);
            if list.is_empty() {
                self.owner_sessions.remove(&owner)?;
            } else {
                self.owner_sessions.put(&owner, &list)?;
            }
        }
        Ok(())
    }
}

/// Builds `index` afresh from every record of `source` (`entry` gives the index's key and
/// value for one record), in batches. From scratch, so an interrupted build is simply done
/// again on the next open (the schema version is written only after a flush).
fn rebuild_index(
    source: &sled::Tree,
    index: &sled::Tree,
    entry: impl Fn(&[u8], &[u8]) -> Result<(Vec<u8>, Vec<u8>), StoreError>,
) -> Result<(), StoreError> {
    index.clear()?;
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for item in source.iter() {
        let (key, value) = item?;
        let (k, v) = entry(&key, &value)?;
        batch.insert(k, v);
        pending += 1;
        if pending == 10_000 {
            index.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    index.apply_batch(batch)?;
    Ok(())
}

/// Schema 2: the `business_keys` index.
fn migrate_to_2(trees: &Trees) -> Result<(), StoreError> {
    rebuild_index(&trees.keys, &trees.business_keys, |_, bytes| {
        let key: Key = decode("keys", bytes)?;
        Ok((business_key_index(&key.business, &key.id), Vec::new()))
    })
}

/// Schema 3: the `revoked_by_digest` index.
fn migrate_to_3(trees: &Trees) -> Result<(), StoreError> {
    rebuild_index(&trees.revocations, &trees.revoked_by_digest, |sid, until| {
        let sid = String::from_utf8_lossy(sid);
        Ok((revoked::digest(&sid).0.to_vec(), digest_entry(&sid, from_be(until).unwrap_or(0))))
    })
}

pub fn now() -> UnixTime {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Store {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity_bytes)
            // Durability is ours: the group-commit flusher flushes before every 2xx.
            .flush_every_ms(None)
            .open()?;
        let trees = Trees::open(&db)?;
        let log_file = std::fs::File::open(path.join("db")).ok();
        // A store written before the schema was recorded is schema 1.
        let schema = trees.meta.get(META_SCHEMA)?.and_then(|b| from_be(&b)).unwrap_or(1);
        if schema < 2 {
            migrate_to_2(&trees)?;
        }
        if schema < 3 {
            migrate_to_3(&trees)?;
        }
        if schema < SCHEMA_VERSION {
            trees.meta.insert(META_SCHEMA, &be(SCHEMA_VERSION))?;
            // Durable before the first request is served: a crash before this point
            // reopens at the old schema and builds the indexes again.
            db.flush()?;
            if let Some(file) = &log_file {
                file.sync_data().map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
            }
        }
        let head = trees.meta.get(META_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        if trees.meta.get(META_HISTORY)?.is_none() {
            // A new store (or one from before histories): a random start, so no two stores
            // ever share a history.
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| StoreError::Task(format!("no random history id: {e}")))?;
            let start = chain(&History(KeyHash(seed)), b"");
            trees.meta.insert(META_HISTORY_BASE, versioned(head, &start))?;
            trees.meta.insert(META_HISTORY, &start.0 .0)?;
        }
        // Whatever sled recovered on open was on disk, so it is durable.
        let inner = Inner {
            db,
            trees,
            writer: Mutex::new(WriterState { seq: 0, head }),
            durability: Durability::new(head),
            changelog_retain: options.changelog_retain.max(1),
            flush_per_write: options.flush_per_write,
            log_file,
        };
        Ok(Store { inner: Arc::new(inner) })
    }

    /// (write sequence, changelog head) of what is committed in memory.
    fn committed(&self) -> (u64, u64) {
        let w = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        (w.seq, w.head)
    }

    /// Runs `f` as one transaction over every tree, under the writer mutex.
    fn write<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<(T, Ticket), StoreError> {
        self.write_after(|_| Ok(()), |tx, ()| f(tx))
    }

    /// [`Store::write`], with `read` run first under the same writer mutex (so no other write
    /// comes between) and its result handed to `f`: for what a transaction cannot read
    /// itself, such as a whole tree (sled's iterators would deadlock inside one).
    fn write_after<P, T>(
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

    /// sled's `flush` writes its buffers out with `sync_file_range` on Linux, which
    /// survives a killed process but neither flushes the drive's write cache nor the
    /// file's size; an `fdatasync` of its log file afterwards does both.
    pub(crate) fn flush_to_disk(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        if let Some(file) = &self.inner.log_file {
            file.sync_data().map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        }
        Ok(())
    }

    fn read<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|bytes| decode(name, &bytes)).transpose()
    }

    // ----- shared secrets -----

    /// The store's size on disk, bytes (sled's estimate; reads file metadata).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    pub fn token_hash(&self, role: TokenRole) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.inner.trees.meta.get(role.meta_key())?.and_then(|b| <[u8; 32]>::try_from(b.as_ref()).ok()))
    }

    pub fn set_token_hash(&self, role: TokenRole, hash: [u8; 32]) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.meta.get_raw(role.meta_key())?.as_deref() != Some(&hash[..]) {
                tx.meta.put_raw(role.meta_key(), &hash)?;
            }
            Ok(())
        })?;
        Ok(ticket)
    }

    // ----- businesses and users -----

    pub fn create_business(&self, business: &Business) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.businesses.contains(business.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.businesses.put(business.id.as_bytes(), business)
        })?;
        Ok(ticket)
    }

    pub fn business(&self, id: &str) -> Result<Option<Business>, StoreError> {
        Self::read(&self.inner.trees.businesses, "businesses", id.as_bytes())
    }

    pub fn create_user(&self, user: &User) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.users_by_email.contains(user.email.as_bytes())? {
                return abort(StoreError::EmailTaken);
            }
            for business in &user.businesses {
                if !tx.businesses.contains(business.as_bytes())? {
                    return abort(StoreError::UnknownBusiness);
                }
            }
            if tx.users.contains(user.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.users.put(user.id.as_bytes(), user)?;
            tx.users_by_email.put_raw(user.email.as_bytes(), user.id.as_bytes())
        })?;
        Ok(ticket)
    }

    pub fn email_taken(&self, email: &str) -> Result<bool, StoreError> {
        Ok(self.inner.trees.users_by_email.contains_key(email.as_bytes())?)
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        Self::read(&self.inner.trees.users, "users", id.as_bytes())
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match self.inner.trees.users_by_email.get(email.as_bytes())? {
            None => Ok(None),
            Some(id) => Self::read(&self.inner.trees.users, "users", &id),
        }
    }

    // ----- API keys -----

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
        self.write(|tx| {
            let Some(mut key) = tx.keys.get::<Key>(key_id.as_bytes())? else {
                return abort(StoreError::UnknownKey);
            };
            if key.active != active {
                key.active = active;
                tx.keys.put(key_id.as_bytes(), &key)?;
                for entry in key.entries(tx.now) {
                    tx.append(Change::KeyUpsert { key: entry })?;
                }
            }
            Ok(key)
        })
    }

    /// Sets or clears a key's expiry; a changelog entry tells the filters (as for
    /// activation). Unchanged keys write nothing.
    pub fn set_key_expiry(&self, key_id: &str, expires_at: Option<UnixTime>) -> Result<(Key, Ticket), StoreError> {
        self.write(|tx| {
            let Some(mut key) = tx.keys.get::<Key>(key_id.as_bytes())? else {
                return abort(StoreError::UnknownKey);
            };
            if key.expires_at != expires_at {
                key.expires_at = expires_at;
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
        self.write(|tx| {
            let (mut accepted, mut ignored) = (0, 0);
            for item in items {
                let known = item.key_id.len() <= 64 && item.key_id.starts_with("key_");
                let Some(mut key) = (if known { tx.keys.get::<Key>(item.key_id.as_bytes())? } else { None }) else {
                    ignored += 1;
                    continue;
                };
                let at = item.last_used_at.min(tx.now.saturating_add(60));
                if key.last_used_at.is_none_or(|last| last < at) {
                    key.last_used_at = Some(at);
                    tx.keys.put(item.key_id.as_bytes(), &key)?;
                }
                if item.count > 0 {
                    let mut record: KeyUsageRecord = tx.usage.get(item.key_id.as_bytes())?.unwrap_or_default();
                    record.add(at, item.count);
                    tx.usage.put(item.key_id.as_bytes(), &record)?;
                }
                accepted += 1;
            }
            Ok((accepted, ignored))
        })
    }

    pub fn key_usage(&self, key_id: &str) -> Result<KeyUsageRecord, StoreError> {
        Ok(Self::read(&self.inner.trees.usage, "usage", key_id.as_bytes())?.unwrap_or_default())
    }

    pub fn key(&self, id: &str) -> Result<Option<Key>, StoreError> {
        Self::read(&self.inner.trees.keys, "keys", id.as_bytes())
    }

    pub fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<Key>, StoreError> {
        match self.inner.trees.key_hashes.get(hash.0)? {
            None => Ok(None),
            Some(id) => Self::read(&self.inner.trees.keys, "keys", &id),
        }
    }

    /// A business's keys, by key id: one prefix scan of `business_keys`, then one read per
    /// key of that business (no other business's records are read).
    pub fn keys_of_business(&self, business: &str) -> Result<Vec<Key>, StoreError> {
        let t = &self.inner.trees;
        let prefix = business_key_index(business, "");
        let mut out = Vec::new();
        for item in t.business_keys.scan_prefix(&prefix) {
            let (index, _) = item?;
            let id = &index[prefix.len()..];
            if let Some(key) = Self::read::<Key>(&t.keys, "keys", id)? {
                if key.business == business {
                    out.push(key);
                }
            }
        }
        Ok(out)
    }

    // ----- sessions -----

    /// Stores a sign-in session and the index from its refresh-token hash. At `cap` live
    /// sessions of the user, the oldest are revoked (returned).
    pub fn create_signin_session(
        &self,
        session: &Session,
        refresh_sha256: &[u8; 32],
        cap: usize,
        leeway: u64,
    ) -> Result<(Vec<RevokedSession>, Ticket), StoreError> {
        self.write(|tx| {
            if tx.sessions.contains(session.id.as_bytes())? || tx.refresh_tokens.contains(refresh_sha256)? {
                return abort(StoreError::Collision);
            }
            let evicted = tx.register(session, None, cap, leeway)?;
            tx.sessions.put(session.id.as_bytes(), session)?;
            tx.refresh_tokens.put_raw(refresh_sha256, session.id.as_bytes())?;
            Ok(evicted)
        })
    }

    /// The session a refresh token (current or spent) belongs to.
    pub fn refresh_session_id(&self, refresh_sha256: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let t = &self.inner.trees;
        let found = match t.refresh_tokens.get(refresh_sha256)? {
            Some(sid) => Some(sid),
            None => t.spent_refresh.get(refresh_sha256)?,
        };
        Ok(found.map(|sid| String::from_utf8_lossy(&sid).into_owned()))
    }

    /// Rotates a sign-in session's refresh token: `old` is spent, `new` takes its place,
    /// `issued` becomes the current access token, and the refresh window runs until
    /// `issued.exp + refresh_ttl`. A spent `old` revokes the session (theft detection).
    pub fn refresh(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        issued: &IssuedToken,
        refresh_ttl: u64,
        leeway: u64,
    ) -> Result<(RefreshOutcome, Ticket), StoreError> {
        self.write(|tx| {
            if let Some(sid) = tx.spent_refresh.get_raw(old)? {
                let revoked = match tx.sessions.get::<Session>(&sid)? {
                    Some(session) => Some(tx.revoke(session, leeway)?),
                    None => None,
                };
                return Ok(RefreshOutcome::Reused(revoked));
            }
            let Some(sid) = tx.refresh_tokens.get_raw(old)? else { return Ok(RefreshOutcome::Invalid) };
            let Some(mut session) = tx.sessions.get::<Session>(&sid)? else { return Ok(RefreshOutcome::Invalid) };
            let current = session.refresh_sha256.as_deref().and_then(crate::random::unhex::<32>);
            let window_open = session.refresh_expires_at.is_some_and(|at| at > tx.now);
            if session.revoked_at.is_some() || current.as_ref() != Some(old) || !window_open || issued.claims.sid != session.id {
                return Ok(RefreshOutcome::Invalid);
            }
            if tx.refresh_tokens.contains(new)? {
                return abort(StoreError::Collision);
            }
            tx.refresh_tokens.remove(old)?;
            tx.spent_refresh.put_raw(old, &sid)?;
            tx.refresh_tokens.put_raw(new, &sid)?;
            session.refresh_sha256 = Some(crate::random::hex(new));
            session.last_exp = session.last_exp.max(issued.claims.exp);
            session.refresh_expires_at = Some(issued.claims.exp.saturating_add(refresh_ttl));
            session.current = Some(issued.clone());
            tx.sessions.put(&sid, &session)?;
            Ok(RefreshOutcome::Refreshed(Box::new(session)))
        })
    }

    /// The live session of (key, client session) if its current token may be handed out
    /// again: a read, no write, so the common "same key, same session" login needs no
    /// transaction. What it read may have been written by a concurrent request and not be
    /// on disk yet: the ticket covers it (wait for it before handing the token out; it is
    /// usually durable already).
    pub fn reusable_key_session(
        &self,
        key_id: &str,
        client_session: &str,
        reusable: impl Fn(&IssuedToken) -> bool,
    ) -> Result<Option<(Session, Ticket)>, StoreError> {
        let t = &self.inner.trees;
        let Some(sid) = t.key_sessions.get(key_session_index(key_id, client_session))? else { return Ok(None) };
        let session: Option<Session> = Self::read(&t.sessions, "sessions", &sid)?;
        let Some(session) = session.filter(|s| s.revoked_at.is_none() && s.current.as_ref().is_some_and(&reusable)) else {
            return Ok(None);
        };
        Ok(Some((session, self.read_ticket())))
    }

    /// A ticket covering every write visible to a read made before this call: a write is
    /// applied and its sequence number taken under the writer mutex, so once the mutex
    /// is ours, whatever we saw has its number.
    fn read_ticket(&self) -> Ticket {
        let (seq, version) = self.committed();
        Ticket { seq, version }
    }

    /// The session behind an API-key login for (`key_id`, `client_session`), with the
    /// token it hands out. A live session whose current token `reusable` accepts is
    /// returned untouched (the caller re-signs the same claims: the same token); otherwise
    /// `fresh` becomes its current token. Without a live session, `candidate` (whose
    /// `current` is `fresh`) is stored and indexed. Claims' `sid` always names the session.
    /// A new session counts against the key's `cap` live sessions; at the cap the oldest
    /// of `client`'s own (the caller's address as [`crate::throttle::client_net`] gives
    /// it) is revoked, and with none of its own the write is refused
    /// ([`StoreError::SessionLimit`]).
    #[allow(clippy::too_many_arguments)]
    pub fn key_session_token(
        &self,
        key_id: &str,
        client_session: &str,
        client: &str,
        candidate: &Session,
        reusable: impl Fn(&IssuedToken) -> bool,
        cap: usize,
        leeway: u64,
    ) -> Result<(Session, Ticket), StoreError> {
        let index = key_session_index(key_id, client_session);
        self.write(|tx| {
            let existing = match tx.key_sessions.get_raw(&index)? {
                Some(sid) => tx.sessions.get::<Session>(&sid)?,
                None => None,
            };
            if let Some(mut session) = existing.filter(|s| s.revoked_at.is_none()) {
                if session.current.as_ref().is_some_and(&reusable) {
                    return Ok(session);
                }
                let mut issued = candidate.current.clone();
                if let Some(issued) = issued.as_mut() {
                    issued.claims.sid = session.id.clone();
                    session.last_exp = session.last_exp.max(issued.claims.exp);
                }
                session.current = issued;
                // An expired session coming back to life counts against the cap again
                // (a newer registration may have pruned it from the key's list).
                let listed: Vec<OwnedSession> = tx.owner_sessions.get(&owner_key(&session.owner))?.unwrap_or_default();
                if !listed.iter().any(|o| o.sid == session.id) {
                    let _evicted = tx.register(&session, Some(client), cap, leeway)?;
                }
                tx.sessions.put(session.id.as_bytes(), &session)?;
                return Ok(session);
            }
            if tx.sessions.contains(candidate.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            let _evicted = tx.register(candidate, Some(client), cap, leeway)?;
            tx.sessions.put(candidate.id.as_bytes(), candidate)?;
            tx.key_sessions.put_raw(&index, candidate.id.as_bytes())?;
            Ok(candidate.clone())
        })
    }

    pub fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        Self::read(&self.inner.trees.sessions, "sessions", id.as_bytes())
    }

    /// A user's live sign-in sessions (unrevoked, still refreshable), oldest first.
    pub fn live_user_sessions(&self, user_id: &str, now: UnixTime) -> Result<Vec<Session>, StoreError> {
        let t = &self.inner.trees;
        let owner = owner_key(&SessionOwner::User { user_id: user_id.to_owned() });
        let list: Vec<OwnedSession> = Self::read(&t.owner_sessions, "owner_sessions", &owner)?.unwrap_or_default();
        let mut live = Vec::with_capacity(list.len());
        for entry in list {
            if let Some(session) = self.session(&entry.sid)? {
                if session_alive(&session, now) {
                    live.push(session);
                }
            }
        }
        live.sort_by_key(|s| s.created_at);
        Ok(live)
    }

    /// When the session is revoked and still matters (`until` in the future), that time.
    pub fn revoked_until(&self, sid: &str) -> Result<Option<UnixTime>, StoreError> {
        Ok(self.inner.trees.revocations.get(sid.as_bytes())?.and_then(|b| from_be(&b)))
    }

    /// Revokes a session: its tokens fail everywhere until `until` (its last token's
    /// expiry plus `leeway`), after which none can be valid anyway. Idempotent.
    pub fn revoke_session(&self, sid: &str, leeway: u64) -> Result<(RevokedSession, Ticket), StoreError> {
        self.write(|tx| {
            let Some(session) = tx.sessions.get::<Session>(sid.as_bytes())? else {
                return abort(StoreError::UnknownSession);
            };
            tx.revoke(session, leeway)
        })
    }

    // ----- signing keys -----

    pub fn signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.trees.signing_keys.iter() {
            let (_, bytes) = item?;
            out.push(decode("signing_keys", &bytes)?);
        }
        Ok(out)
    }

    /// Stores a new signing key and publishes its public half through the changelog.
    pub fn add_signing_key(&self, key: &SigningKey) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.signing_keys.contains(key.kid.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.signing_keys.put(key.kid.as_bytes(), key)?;
            tx.append(Change::SigningKeyAdded { key: key.public.clone() })?;
            Ok(())
        })?;
        Ok(ticket)
    }

    /// Makes `key` the signer: every unretired key is retired now and withdrawn after
    /// `remove_after` (when every token it signed has expired). Returns the kid of the
    /// signer it replaced (the newest key retired).
    pub fn rotate_signing_key(&self, key: &SigningKey, remove_after: UnixTime) -> Result<(Option<String>, Ticket), StoreError> {
        // Listed under the writer lock: a list taken before it could miss a key that a
        // concurrent rotation adds, which would then never be retired.
        self.write_after(Store::signing_keys, |tx, all| {
            if tx.signing_keys.contains(key.kid.as_bytes())? {
                return abort(StoreError::Collision);
            }
            let mut replaced: Option<(UnixTime, String)> = None;
            for old in all {
                if let Some(mut old) = tx.signing_keys.get::<SigningKey>(old.kid.as_bytes())? {
                    if old.retired_at.is_none() {
                        old.retired_at = Some(tx.now);
                        old.remove_after = Some(remove_after);
                        tx.signing_keys.put(old.kid.as_bytes(), &old)?;
                        if replaced.as_ref().is_none_or(|(at, _)| old.created_at >= *at) {
                            replaced = Some((old.created_at, old.kid.clone()));
                        }
                    }
                }
            }
            tx.signing_keys.put(key.kid.as_bytes(), key)?;
            tx.append(Change::SigningKeyAdded { key: key.public.clone() })?;
            Ok(replaced.map(|(_, kid)| kid))
        })
    }

    // ----- housekeeping -----

    /// Removes what can no longer matter at `now`: dead sessions (revoked ones once
    /// their revocation lapsed; others once no token or refresh is possible) with their
    /// indexes, lapsed revocations, spent refresh tokens of deleted sessions, rotated-away
    /// key hashes past their grace (changelog `KeyRemoved`), and retired signing keys past
    /// `remove_after` (changelog `SigningKeyRemoved`). Bounded work per call.
    pub fn sweep(&self, now: UnixTime, leeway: u64) -> Result<(SweepReport, Option<Ticket>), StoreError> {
        const BATCH: usize = 512;
        let t = &self.inner.trees;
        let mut report = SweepReport::default();
        let mut last = None;

        let mut lapsed = Vec::new();
        for item in t.revocations.iter() {
            let (sid, until) = item?;
            if from_be(&until).unwrap_or(0) <= now {
                lapsed.push(sid);
            }
            if lapsed.len() >= BATCH {
                break;
            }
        }
        let mut dead = Vec::new();
        for item in t.sessions.iter() {
            let (_, bytes) = item?;
            let session: Session = decode("sessions", &bytes)?;
            let gone = match session.revoked_at {
                Some(_) => {
                    let until = t.revocations.get(session.id.as_bytes())?.and_then(|b| from_be(&b)).unwrap_or(0);
                    until <= now
                }
                None => !session_alive(&session, now) && session.last_exp.saturating_add(leeway) <= now,
            };
            if gone {
                dead.push(session);
            }
            if dead.len() >= BATCH {
                break;
            }
        }
        if !lapsed.is_empty() || !dead.is_empty() {
            let (n, ticket) = self.write(|tx| {
                let mut n = (0, 0);
                for sid in &lapsed {
                    if tx.revocations.get_raw(sid)?.and_then(|b| from_be(&b)).is_some_and(|u| u <= now) {
                        tx.remove_revocation(sid)?;
                        n.0 += 1;
                    }
                }
                for session in &dead {
                    if tx.sessions.contains(session.id.as_bytes())? {
                        tx.delete_session(session)?;
                        if tx.revocations.contains(session.id.as_bytes())? {
                            tx.remove_revocation(session.id.as_bytes())?;
                            n.0 += 1;
                        }
                        n.1 += 1;
                    }
                }
                Ok(n)
            })?;
            report.revocations = n.0;
            report.sessions = n.1;
            last = Some(ticket);
        }

        let mut orphans = Vec::new();
        for item in t.spent_refresh.iter() {
            let (hash, sid) = item?;
            if !t.sessions.contains_key(&sid)? {
                orphans.push(hash);
            }
            if orphans.len() >= BATCH {
                break;
            }
        }
        if !orphans.is_empty() {
            let (n, ticket) = self.write(|tx| {
                for hash in &orphans {
                    tx.spent_refresh.remove(hash)?;
                }
                Ok(orphans.len())
            })?;
            report.spent_refresh = n;
            last = Some(ticket);
        }

        let mut graced = Vec::new();
        for item in t.keys.iter() {
            let (id, bytes) = item?;
            let key: Key = decode("keys", &bytes)?;
            if key.grace.iter().any(|g| g.until <= now) {
                graced.push(id);
            }
            if graced.len() >= BATCH {
                break;
            }
        }
        if !graced.is_empty() {
            let (n, ticket) = self.write(|tx| {
                let mut n = 0;
                for id in &graced {
                    let Some(mut key) = tx.keys.get::<Key>(id)? else { continue };
                    let (over, keep): (Vec<GraceHash>, Vec<GraceHash>) = key.grace.into_iter().partition(|g| g.until <= now);
                    key.grace = keep;
                    for g in over {
                        if tx.key_hashes.get_raw(&g.hash.0)?.as_deref() == Some(&id[..]) {
                            tx.key_hashes.remove(&g.hash.0)?;
                        }
                        tx.append(Change::KeyRemoved { hash: g.hash })?;
                        n += 1;
                    }
                    tx.keys.put(id, &key)?;
                }
                Ok(n)
            })?;
            report.grace_hashes = n;
            last = Some(ticket);
        }

        let withdrawn: Vec<String> =
            self.signing_keys()?.into_iter().filter(|k| k.remove_after.is_some_and(|at| at <= now)).map(|k| k.kid).collect();
        if !withdrawn.is_empty() {
            let (n, ticket) = self.write(|tx| {
                let mut n = 0;
                for kid in &withdrawn {
                    if tx.signing_keys.contains(kid.as_bytes())? {
                        tx.signing_keys.remove(kid.as_bytes())?;
                        tx.append(Change::SigningKeyRemoved { kid: kid.clone() })?;
                        n += 1;
                    }
                }
                Ok(n)
            })?;
            report.signing_keys = n;
            last = Some(ticket);
        }
        Ok((report, last))
    }

    // ----- the snapshot feed -----

    /// The whole state the filter needs, at the changelog head. Holds the writer mutex
    /// while reading so the trees and the version agree. The head may not be durable yet:
    /// the caller waits for [`Store::wait_version`] before serving it.
    pub fn full_snapshot(&self, now: UnixTime) -> Result<SnapshotWire, StoreError> {
        let t = &self.inner.trees;
        let w = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wire = SnapshotWire { version: w.head, since: None, ..SnapshotWire::default() };
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
        let t = &self.inner.trees;
        let head = || self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner).head;
        let mut wire = SnapshotWire { version: head(), since: None, ..SnapshotWire::default() };
        let start = match after {
            Some(hash) => std::ops::Bound::Excluded(hash.0.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        if revoked {
            let mut last = None;
            for item in t.revoked_by_digest.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
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
            for item in t.key_hashes.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
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
            wire.revocation_pages = wire.next_after.is_none() && !t.revoked_by_digest.is_empty();
        }
        wire.history = self.history_at(wire.version)?;
        Ok((wire, head()))
    }

    fn signing_extras(&self, wire: &mut SnapshotWire) -> Result<(), StoreError> {
        for item in self.inner.trees.signing_keys.iter() {
            let (_, bytes) = item?;
            wire.signing_keys.push(decode::<SigningKey>("signing_keys", &bytes)?.public);
        }
        Ok(())
    }

    /// What an unpaged full snapshot carries besides keys: every published signing key
    /// and the revocations still in force.
    fn snapshot_extras(&self, now: UnixTime, wire: &mut SnapshotWire) -> Result<(), StoreError> {
        self.signing_extras(wire)?;
        for item in self.inner.trees.revocations.iter() {
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
        let t = &self.inner.trees;
        let floor = t.meta.get(META_FLOOR)?.and_then(|b| from_be(&b)).unwrap_or(0);
        if since < floor {
            return Err(StoreError::Gone);
        }
        let mut keys: BTreeMap<KeyHash, Option<KeyEntry>> = BTreeMap::new();
        let mut signing: BTreeMap<String, Option<SigningKeyEntry>> = BTreeMap::new();
        let mut revoked = Vec::new();
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
        Ok(wire)
    }

    /// The store's history at `version`: `None` when no longer known (before the floor,
    /// or from before histories existed).
    pub fn history_at(&self, version: u64) -> Result<Option<History>, StoreError> {
        let t = &self.inner.trees;
        if let Some(record) = Store::read::<ChangeRecord>(&t.changelog, "changelog", &be(version))? {
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
        Ok(self.inner.trees.meta.get(META_FLOOR)?.and_then(|b| from_be(&b)).unwrap_or(0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use keygate_core::{KeyKind, Mode};

    fn key(id: &str, business: &str, byte: u8) -> Key {
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

    fn open(dir: &Path, retain: u64) -> Store {
        Store::open(dir, &StoreOptions { cache_capacity_bytes: 1 << 20, changelog_retain: retain, ..StoreOptions::default() }).unwrap()
    }

    #[test]
    fn changelog_versions_follow_commits_and_deltas_fold_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let _ = store.create_business(&Business { id: "biz_a".into(), name: "A".into(), created_at: 1 }).unwrap();
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

    #[test]
    fn rotation_grace_ends_with_a_sweep_that_removes_the_old_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let _ = store.create_business(&Business { id: "biz_a".into(), name: "A".into(), created_at: 1 }).unwrap();
        let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let (rotated, revoked, t) = store.rotate_key("key_1", KeyHash([2; 32]), "sk_test_efgh", 1, 0).unwrap();
        assert!(revoked.is_empty());
        assert_eq!(rotated.grace.len(), 1);
        let now = now();
        assert!(rotated.accepts(&KeyHash([1; 32]), now) && rotated.accepts(&KeyHash([2; 32]), now));
        assert_eq!(store.full_snapshot(now).unwrap().keys.len(), 2, "both raw keys in the feed during the grace");
        let (report, _) = store.sweep(now + 2, 0).unwrap();
        assert_eq!(report.grace_hashes, 1);
        assert!(store.key_by_hash(&KeyHash([1; 32])).unwrap().is_none());
        let delta = store.delta(t.version, t.version + 1, now + 2).unwrap();
        assert_eq!(delta.removed_keys, vec![KeyHash([1; 32])]);
        assert_eq!(store.full_snapshot(now + 2).unwrap().keys.len(), 1);
    }

    /// A page of the full snapshot stays within its size whatever the number of sessions
    /// revoked (past ~1.2 M the first page outgrew the filter's 64 MiB limit).
    #[test]
    fn snapshot_pages_are_bounded_whatever_the_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let _ = store.create_business(&Business { id: "biz_a".into(), name: "A".into(), created_at: 1 }).unwrap();
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
    fn rotation_without_grace_stops_every_earlier_raw_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let _ = store.create_business(&Business { id: "biz_a".into(), name: "A".into(), created_at: 1 }).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let _ = store.create_business(&Business { id: "biz_a".into(), name: "A".into(), created_at: 1 }).unwrap();
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
            let _ = store.create_business(&Business { id: b.into(), name: b.into(), created_at: 1 }).unwrap();
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

    #[test]
    fn a_schema_2_store_gets_the_revocation_index_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let sids: Vec<String> = (0..5).map(|i| format!("ses_{i:04}")).collect();
        {
            let store = open(dir.path(), 100);
            let _ = store.write(|tx| sids.iter().try_for_each(|sid| tx.put_revocation(sid, u64::MAX))).unwrap();
            // What a schema-2 store holds: revocations, no digest index.
            let t = &store.inner.trees;
            t.revoked_by_digest.clear().unwrap();
            t.meta.insert(META_SCHEMA, &be(2)).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = open(dir.path(), 100);
        assert_eq!(store.inner.trees.meta.get(META_SCHEMA).unwrap().and_then(|b| from_be(&b)), Some(SCHEMA_VERSION));
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
                let _ = store.create_business(&Business { id: b.into(), name: b.into(), created_at: 1 }).unwrap();
            }
            for i in 0..5u8 {
                let _ = store.create_key(&key(&format!("key_a{i}"), "biz_a", 1 + i)).unwrap();
                let _ = store.create_key(&key(&format!("key_b{i}"), "biz_b", 100 + i)).unwrap();
            }
            // What a schema-1 store holds: no index, schema 1.
            let t = &store.inner.trees;
            t.business_keys.clear().unwrap();
            t.meta.insert(META_SCHEMA, &be(1)).unwrap();
            store.flush_blocking().unwrap();
            assert!(store.keys_of_business("biz_a").unwrap().is_empty(), "the index is what lists keys");
        }
        let store = open(dir.path(), 100);
        let t = &store.inner.trees;
        assert_eq!(t.meta.get(META_SCHEMA).unwrap().and_then(|b| from_be(&b)), Some(SCHEMA_VERSION));
        assert_eq!(t.business_keys.len(), 10);
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

    #[test]
    fn hourly_usage_is_bounded_to_a_week() {
        let mut record = KeyUsageRecord::default();
        for h in 0..400u64 {
            record.add(1_000_000 * 3600 + h * 3600 + 5, 2);
        }
        record.add(1_000_000 * 3600 + 399 * 3600, 1);
        assert_eq!(record.hours.len() as u64, USAGE_HOURS);
        assert_eq!(record.hours.last().unwrap().1, 3);
        assert!(record.hours.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn trimmed_changelog_answers_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 2);
        let _ = store.create_business(&Business { id: "biz_a".into(), name: "A".into(), created_at: 1 }).unwrap();
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

    #[test]
    fn flushed_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 100);
            let _ = store.create_business(&Business { id: "biz_a".into(), name: "A".into(), created_at: 1 }).unwrap();
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
