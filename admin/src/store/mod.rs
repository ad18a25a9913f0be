//! The store: the only module that touches sled.
//!
//! Trees: `businesses`, `users`, `users_by_email`, `keys` (by id), `key_hashes` (SHA-256 →
//! key id), `sessions`, `key_sessions` ((key id, client session id) → session id),
//! `refresh_tokens` (SHA-256 → session id), `revocations` (session id → until),
//! `signing_keys`, `meta` (token hashes, changelog head and floor) and `changelog`
//! (big-endian version → [`ChangeRecord`]).
//!
//! Every write is one sled transaction over all trees, taken under one writer mutex, so
//! changelog versions are assigned in commit order and a change and its changelog entry
//! commit together or not at all. Durability is [`durable`]'s group commit.

mod durable;
pub mod records;

pub use durable::{Durable, Flusher, Ticket, FLUSH_TIMEOUT};
pub use records::{Business, Change, ChangeRecord, IssuedToken, Key, Session, SessionOwner, SigningKey, User};

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use keygate_core::snapshot::{KeyEntry, RevokedSession, SigningKeyEntry};
use keygate_core::{KeyHash, SnapshotWire, UnixTime};
use serde::de::DeserializeOwned;
use serde::Serialize;
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
const SCHEMA_VERSION: u64 = 1;

struct Trees {
    businesses: sled::Tree,
    users: sled::Tree,
    users_by_email: sled::Tree,
    keys: sled::Tree,
    key_hashes: sled::Tree,
    sessions: sled::Tree,
    key_sessions: sled::Tree,
    refresh_tokens: sled::Tree,
    revocations: sled::Tree,
    signing_keys: sled::Tree,
    meta: sled::Tree,
    changelog: sled::Tree,
}

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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_capacity_bytes: 64 * 1024 * 1024, changelog_retain: 100_000 }
    }
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn from_be(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { tree, detail: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()) })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
}

fn key_session_index(key_id: &str, client_session: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + 1 + client_session.len());
    k.extend_from_slice(key_id.as_bytes());
    k.push(0);
    k.extend_from_slice(client_session.as_bytes());
    k
}

/// One tree inside a transaction, with typed helpers.
struct TxTree<'a> {
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

/// The view a write closure gets: every tree, plus the changelog appender.
struct Tx<'a> {
    businesses: TxTree<'a>,
    users: TxTree<'a>,
    users_by_email: TxTree<'a>,
    keys: TxTree<'a>,
    key_hashes: TxTree<'a>,
    sessions: TxTree<'a>,
    key_sessions: TxTree<'a>,
    refresh_tokens: TxTree<'a>,
    revocations: TxTree<'a>,
    signing_keys: TxTree<'a>,
    meta: TxTree<'a>,
    changelog: TxTree<'a>,
    appended: Cell<Option<u64>>,
    now: UnixTime,
    retain: u64,
}

impl Tx<'_> {
    /// Appends the next changelog version in this same transaction, trimming the oldest
    /// entry once more than `retain` are kept.
    fn append(&self, change: Change) -> TxResult<u64> {
        let head = self.meta.get_raw(META_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        let version = head.saturating_add(1);
        self.changelog.put(&be(version), &ChangeRecord { version, at: self.now, change })?;
        self.meta.put_raw(META_HEAD, &be(version))?;
        if version > self.retain {
            let oldest = version - self.retain;
            self.changelog.remove(&be(oldest))?;
            self.meta.put_raw(META_FLOOR, &be(oldest))?;
        }
        self.appended.set(Some(version));
        Ok(version)
    }
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
        let tree = |name: &str| db.open_tree(name);
        let trees = Trees {
            businesses: tree("businesses")?,
            users: tree("users")?,
            users_by_email: tree("users_by_email")?,
            keys: tree("keys")?,
            key_hashes: tree("key_hashes")?,
            sessions: tree("sessions")?,
            key_sessions: tree("key_sessions")?,
            refresh_tokens: tree("refresh_tokens")?,
            revocations: tree("revocations")?,
            signing_keys: tree("signing_keys")?,
            meta: tree("meta")?,
            changelog: tree("changelog")?,
        };
        if trees.meta.get(META_SCHEMA)?.is_none() {
            trees.meta.insert(META_SCHEMA, &be(SCHEMA_VERSION))?;
        }
        let head = trees.meta.get(META_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        // Whatever sled recovered on open was on disk, so it is durable.
        let inner = Inner {
            db,
            trees,
            writer: Mutex::new(WriterState { seq: 0, head }),
            durability: Durability::new(head),
            changelog_retain: options.changelog_retain.max(1),
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
        let t = &self.inner.trees;
        let mut w = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now();
        let retain = self.inner.changelog_retain;
        let result = (
            &t.businesses,
            &t.users,
            &t.users_by_email,
            &t.keys,
            &t.key_hashes,
            &t.sessions,
            &t.key_sessions,
            &t.refresh_tokens,
            &t.revocations,
            &t.signing_keys,
            &t.meta,
            &t.changelog,
        )
            .transaction(|(b, u, ue, k, kh, s, ks, rt, rv, sk, m, cl)| {
                let dirty = Cell::new(false);
                let tt = |tree, name| TxTree { tree, name, dirty: &dirty };
                let tx = Tx {
                    businesses: tt(b, "businesses"),
                    users: tt(u, "users"),
                    users_by_email: tt(ue, "users_by_email"),
                    keys: tt(k, "keys"),
                    key_hashes: tt(kh, "key_hashes"),
                    sessions: tt(s, "sessions"),
                    key_sessions: tt(ks, "key_sessions"),
                    refresh_tokens: tt(rt, "refresh_tokens"),
                    revocations: tt(rv, "revocations"),
                    signing_keys: tt(sk, "signing_keys"),
                    meta: tt(m, "meta"),
                    changelog: tt(cl, "changelog"),
                    appended: Cell::new(None),
                    now,
                    retain,
                };
                let out = f(&tx)?;
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
        Ok((out, Ticket { seq: w.seq, version: w.head }))
    }

    fn read<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|bytes| decode(name, &bytes)).transpose()
    }

    // ----- shared secrets -----

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
            tx.append(Change::KeyUpsert { key: key.entry() })?;
            Ok(())
        })?;
        Ok(ticket)
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
                tx.append(Change::KeyUpsert { key: key.entry() })?;
            }
            Ok(key)
        })
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

    pub fn keys_of_business(&self, business: &str) -> Result<Vec<Key>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.trees.keys.iter() {
            let (_, bytes) = item?;
            let key: Key = decode("keys", &bytes)?;
            if key.business == business {
                out.push(key);
            }
        }
        Ok(out)
    }

    // ----- sessions -----

    /// Stores a sign-in session and the index from its refresh-token hash.
    pub fn create_signin_session(&self, session: &Session, refresh_sha256: &[u8; 32]) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.sessions.contains(session.id.as_bytes())? || tx.refresh_tokens.contains(refresh_sha256)? {
                return abort(StoreError::Collision);
            }
            tx.sessions.put(session.id.as_bytes(), session)?;
            tx.refresh_tokens.put_raw(refresh_sha256, session.id.as_bytes())
        })?;
        Ok(ticket)
    }

    /// The session behind an API-key login for (`key_id`, `client_session`), with the
    /// token it hands out. A live session whose current token `reusable` accepts is
    /// returned untouched (the caller re-signs the same claims: the same token); otherwise
    /// `fresh` becomes its current token. Without a live session, `candidate` (whose
    /// `current` is `fresh`) is stored and indexed. Claims' `sid` always names the session.
    pub fn key_session_token(
        &self,
        key_id: &str,
        client_session: &str,
        candidate: &Session,
        reusable: impl Fn(&IssuedToken) -> bool,
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
                tx.sessions.put(session.id.as_bytes(), &session)?;
                return Ok(session);
            }
            if tx.sessions.contains(candidate.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.sessions.put(candidate.id.as_bytes(), candidate)?;
            tx.key_sessions.put_raw(&index, candidate.id.as_bytes())?;
            Ok(candidate.clone())
        })
    }

    pub fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        Self::read(&self.inner.trees.sessions, "sessions", id.as_bytes())
    }

    /// When the session is revoked and still matters (`until` in the future), that time.
    pub fn revoked_until(&self, sid: &str) -> Result<Option<UnixTime>, StoreError> {
        Ok(self.inner.trees.revocations.get(sid.as_bytes())?.and_then(|b| from_be(&b)))
    }

    /// Revokes a session: its tokens fail everywhere until `until` (its last token's
    /// expiry plus `leeway`), after which none can be valid anyway. Idempotent.
    pub fn revoke_session(&self, sid: &str, leeway: u64) -> Result<(RevokedSession, Ticket), StoreError> {
        self.write(|tx| {
            let Some(mut session) = tx.sessions.get::<Session>(sid.as_bytes())? else {
                return abort(StoreError::UnknownSession);
            };
            if session.revoked_at.is_some() {
                let until = tx.revocations.get_raw(sid.as_bytes())?.and_then(|b| from_be(&b)).unwrap_or(tx.now);
                return Ok(RevokedSession { sid: sid.to_owned(), until });
            }
            let until = session.last_exp.max(tx.now).saturating_add(leeway);
            session.revoked_at = Some(tx.now);
            tx.sessions.put(sid.as_bytes(), &session)?;
            tx.revocations.put_raw(sid.as_bytes(), &be(until))?;
            if let SessionOwner::Key { key_id, client_session } = &session.owner {
                // The next login for this pair opens a new session.
                tx.key_sessions.remove(&key_session_index(key_id, client_session))?;
            }
            let revoked = RevokedSession { sid: sid.to_owned(), until };
            tx.append(Change::SessionRevoked { session: revoked.clone() })?;
            Ok(revoked)
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
            wire.keys.push(decode::<Key>("keys", &bytes)?.entry());
        }
        for item in t.signing_keys.iter() {
            let (_, bytes) = item?;
            wire.signing_keys.push(decode::<SigningKey>("signing_keys", &bytes)?.public);
        }
        for item in t.revocations.iter() {
            let (sid, until) = item?;
            let until = from_be(&until).unwrap_or(0);
            if until > now {
                wire.revoked_sessions.push(RevokedSession { sid: String::from_utf8_lossy(&sid).into_owned(), until });
            }
        }
        drop(w);
        Ok(wire)
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
        let mut wire = SnapshotWire { version: upto, since: Some(since), revoked_sessions: revoked, ..SnapshotWire::default() };
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
        }
    }

    fn open(dir: &Path, retain: u64) -> Store {
        Store::open(dir, &StoreOptions { cache_capacity_bytes: 1 << 20, changelog_retain: retain }).unwrap()
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
