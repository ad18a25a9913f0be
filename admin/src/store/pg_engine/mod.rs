//! The PostgreSQL engine: every store tree in one table, `keygate_kv(tree, key, value)`,
//! keyed by (tree number, key). `bytea` compares bytewise, as sled does, so ranges and
//! prefix scans come back in the same order on both engines.
//!
//! Why threads: the store is called straight from async handlers on tokio's worker
//! threads, and the blocking `postgres::Client` drives each call with its own runtime's
//! `block_on`, which panics inside a tokio context (so does dropping that runtime there).
//! So every `Client` lives on a thread of its own and is only ever touched there: a small
//! pool of connection threads takes jobs from one channel, and each engine call sends a
//! job and blocks on its reply, as a sled call blocks on its disk. A transaction holds one
//! connection thread from `BEGIN` to `COMMIT`/`ROLLBACK`, feeding it one job per read or
//! write.
//!
//! Replicas: any number of admins may share one database. Every transaction takes one
//! transaction-level advisory lock right after `BEGIN`, so writes from all replicas run
//! one at a time, as they do under one admin's writer mutex: changelog versions are
//! assigned in commit order across the fleet, and a read-then-write (a refresh token's
//! reuse check) sees every earlier commit. A commit that moved the changelog sends a
//! `NOTIFY` (delivered only if it commits, in commit order) that a listening connection
//! on every replica turns into an [`Announcement`] (`follow.rs`). Start-up (schema,
//! history, the first signing key) runs under a session-level lock, one replica at a time.
//!
//! Every connection of a replica is named `keygate-admin` (`application_name`) unless the
//! URL names it, so a copy between stores (`migrate`, connected under another name) can
//! tell that replicas are still running (`maintenance.rs`).
//!
//! Durability: a `COMMIT` under PostgreSQL's default `synchronous_commit = on` returns
//! only once the commit is on disk, so [`Engine::flush`] has nothing left to do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::str::FromStr;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use postgres::error::SqlState;

use super::engine::{Announcement, Engine, EngineTx, Entries, Entry, OnAnnouncement, TxBody, TxError};
use super::StoreError;

mod connection;
mod follow;
mod limits;
mod maintenance;
mod range;
mod rate_counts;

use range::{prefix_end, RangePages};

use connection::Connection;

/// Connections for reads and transactions.
const POOL_SIZE: usize = 4;
/// Rows fetched per query when walking a range.
const PAGE: i64 = 1000;
/// Entries written per statement by `put_many`.
const PUT_BATCH: usize = 1000;
/// The advisory lock every write transaction takes ("keygate" in ASCII).
const WRITE_LOCK: i64 = 0x006b_6579_6761_7465;
/// The advisory lock a replica holds while it starts up ("keygate" + 1).
const STARTUP_LOCK: i64 = WRITE_LOCK + 1;
/// The channel commits are announced on.
const CHANNEL: &str = "keygate_changes";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS keygate_kv (
    tree smallint NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tree, key)
)";

/// Work for a connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// What a transaction runs on its connection.
/// Its answer: the values read, if it read any.
type TxJob = Box<dyn FnOnce(&mut Connection) -> Result<Vec<Option<Vec<u8>>>, StoreError> + Send>;

pub(super) struct PgEngine {
    config: Arc<postgres::Config>,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Held from open until start-up ends (see [`Engine::end_startup`]).
    startup: Mutex<Option<follow::SessionLock>>,
    /// Tells the listener, if any, to stop.
    listener: Mutex<Option<follow::Listener>>,
    /// The `application_name` of replicas opened with this URL.
    replica_name: String,
    /// When this replica last dropped expired rate counts (see `rate_counts.rs`).
    rate_upkeep: Arc<rate_counts::RateUpkeep>,
}

impl PgEngine {
    /// Connects to the database at `url`, waits for any other replica's start-up to end,
    /// and creates the table if it is missing.
    pub(super) fn open(url: &str) -> Result<PgEngine, StoreError> {
        PgEngine::open_as(url, None)
    }

    /// [`PgEngine::open`], its connections named `application_name` instead of what
    /// replicas are named (see [`Engine::other_processes`]).
    pub(super) fn open_as(url: &str, application_name: Option<&str>) -> Result<PgEngine, StoreError> {
        // The parser's message could quote the URL, password and all.
        let mut config =
            postgres::Config::from_str(url).map_err(|_| StoreError::Task("the PostgreSQL connection URL is not valid".to_owned()))?;
        let replica_name = config.get_application_name().unwrap_or(maintenance::REPLICA_NAME).to_owned();
        config.application_name(application_name.unwrap_or(&replica_name));
        if config.get_connect_timeout().is_none() {
            // An unreachable server answers 503 in seconds rather than holding requests.
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let config = Arc::new(config);
        let startup = follow::SessionLock::take(&config, STARTUP_LOCK)?;
        let (jobs, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::with_capacity(POOL_SIZE);
        for n in 0..POOL_SIZE {
            let receiver = Arc::clone(&receiver);
            let config = Arc::clone(&config);
            let worker = std::thread::Builder::new()
                .name(format!("keygate-pg-{n}"))
                .spawn(move || {
                    serve_jobs(Connection { config, client: None, statements: HashMap::new(), in_transaction: false }, &receiver)
                })
                .map_err(|e| StoreError::Task(format!("cannot start a PostgreSQL connection thread: {e}")))?;
            workers.push(worker);
        }
        let engine = PgEngine {
            config,
            jobs: Some(jobs),
            workers,
            startup: Mutex::new(Some(startup)),
            listener: Mutex::new(None),
            replica_name,
            rate_upkeep: Arc::default(),
        };
        engine.run(|c| {
            c.client()?.batch_execute(CREATE_TABLE)?;
            c.client()?.batch_execute(limits::CREATE_LIMITS)?;
            c.client()?.batch_execute(rate_counts::CREATE_RATE_COUNTS)?;
            Ok(())
        })?;
        Ok(engine)
    }

    /// Runs `work` on a pooled connection and waits for its answer.
    fn run<T: Send + 'static>(&self, work: impl Fn(&mut Connection) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let (reply, answer) = sync_channel(1);
        self.send(Box::new(move |connection| {
            let _ = reply.send(connection.retrying(&work));
        }))?;
        answer.recv().map_err(|_| gone())?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.as_ref().ok_or_else(gone)?.send(job).map_err(|_| gone())
    }
}

fn gone() -> StoreError {
    StoreError::Task("the PostgreSQL connection threads have stopped".to_owned())
}

fn serve_jobs(mut connection: Connection, jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(&mut connection),
            Err(_) => return,
        }
    }
}

impl Drop for PgEngine {
    /// Closes every connection before returning, so the database can be opened again
    /// (its lock free) as soon as the store is gone.
    fn drop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        self.end_startup();
        if let Some(listener) = self.listener.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            listener.stop();
        }
    }
}

fn tree_number(tree: usize) -> Result<i16, StoreError> {
    i16::try_from(tree).map_err(|_| StoreError::Task(format!("no tree number {tree}")))
}

/// A transaction's side of its connection thread: each read or write is a job there.
struct PgTx {
    jobs: Sender<TxJob>,
    answers: Receiver<Result<Vec<Option<Vec<u8>>>, StoreError>>,
}

impl PgTx {
    fn run(&self, job: TxJob) -> Result<Vec<Option<Vec<u8>>>, TxError> {
        self.jobs.send(job).map_err(|_| TxError::Abort(gone()))?;
        match self.answers.recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(tx_error(e)),
            Err(_) => Err(TxError::Abort(gone())),
        }
    }
}

/// A serialization failure or deadlock means "run it again"; anything else ends the
/// transaction.
fn tx_error(e: StoreError) -> TxError {
    match &e {
        StoreError::Postgres(pg)
            if pg.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) || pg.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
        {
            TxError::Conflict
        }
        _ => TxError::Abort(e),
    }
}

impl EngineTx for PgTx {
    fn get(&self, tree: usize, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        let (tree, key) = (tree_number(tree)?, key.to_vec());
        Ok(self.run(Box::new(move |c| c.get(tree, &key).map(|value| vec![value])))?.into_iter().next().flatten())
    }

    fn get_many(&self, tree: usize, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TxError> {
        let (tree, keys) = (tree_number(tree)?, keys.to_vec());
        self.run(Box::new(move |c| c.get_many(tree, &keys)))
    }

    fn insert_many(&self, tree: usize, entries: Vec<Entry>) -> Result<(), TxError> {
        let tree = tree_number(tree)?;
        let entries: BTreeMap<Vec<u8>, Vec<u8>> = entries.into_iter().collect();
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = entries.into_iter().unzip();
        self.run(Box::new(move |c| c.insert_many(tree, &keys, &values).map(|()| Vec::new())))?;
        Ok(())
    }

    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        let (tree, key, value) = (tree_number(tree)?, key.to_vec(), value.to_vec());
        self.run(Box::new(move |c| c.insert(tree, &key, &value).map(|()| Vec::new())))?;
        Ok(())
    }

    fn remove(&self, tree: usize, key: &[u8]) -> Result<(), TxError> {
        let (tree, key) = (tree_number(tree)?, key.to_vec());
        self.run(Box::new(move |c| c.remove(tree, &key).map(|()| Vec::new())))?;
        Ok(())
    }

    fn announce(&self, what: Announcement) -> Result<(), TxError> {
        let payload = follow::payload(what);
        self.run(Box::new(move |c| c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).map(|_| Vec::new())))?;
        Ok(())
    }
}

/// `BEGIN`, then the write lock: held until `COMMIT` or `ROLLBACK`.
fn begin() -> TxJob {
    Box::new(|c| {
        c.retrying(|c| {
            c.client()?.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"))?;
            c.in_transaction = true;
            Ok(Vec::new())
        })
    })
}

/// `COMMIT` or `ROLLBACK`.
fn end(sql: &'static str) -> TxJob {
    Box::new(move |c| {
        c.client()?.batch_execute(sql)?;
        c.in_transaction = false;
        Ok(Vec::new())
    })
}

impl PgEngine {
    /// One attempt at `body` as a transaction on one pooled connection.
    fn attempt(&self, body: &mut TxBody<'_>) -> Result<(), TxError> {
        let (jobs, tx_jobs) = channel::<TxJob>();
        let (answer, answers) = channel();
        self.send(Box::new(move |connection| {
            for job in tx_jobs {
                if answer.send(job(connection)).is_err() {
                    break;
                }
            }
            // A transaction left open (its COMMIT or ROLLBACK failed, or its caller is
            // gone) leaves nothing behind: the connection is closed, and opened afresh.
            if connection.in_transaction {
                connection.in_transaction = false;
                connection.client = None;
            }
        }))?;
        let tx = PgTx { jobs, answers };
        tx.run(begin())?;
        match body(&tx) {
            Ok(()) => tx.run(end("COMMIT")).map(|_| ()),
            Err(e) => {
                let _ = tx.run(end("ROLLBACK"));
                Err(e)
            }
        }
    }
}

impl Engine for PgEngine {
    fn get(&self, tree: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (tree, key) = (tree_number(tree)?, key.to_vec());
        self.run(move |c| c.get(tree, &key))
    }

    fn range(&self, tree: usize, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Entries<'_> {
        match tree_number(tree) {
            Ok(tree) => Box::new(RangePages { engine: self, tree, from, to, page: VecDeque::new(), done: false }),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn scan_prefix(&self, tree: usize, prefix: &[u8]) -> Entries<'_> {
        self.range(tree, Bound::Included(prefix.to_vec()), prefix_end(prefix))
    }

    fn is_empty(&self, tree: usize) -> Result<bool, StoreError> {
        let tree = tree_number(tree)?;
        let rows = self.run(move |c| c.query("SELECT 1 FROM keygate_kv WHERE tree = $1 LIMIT 1", &[&tree]))?;
        Ok(rows.is_empty())
    }

    fn transact(&self, body: &mut TxBody<'_>) -> Result<(), StoreError> {
        loop {
            match self.attempt(body) {
                Ok(()) => return Ok(()),
                Err(TxError::Conflict) => continue,
                Err(TxError::Abort(e)) => return Err(e),
            }
        }
    }

    fn put(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let (tree, key, value) = (tree_number(tree)?, key.to_vec(), value.to_vec());
        self.run(move |c| c.insert(tree, &key, &value))
    }

    fn clear(&self, tree: usize) -> Result<(), StoreError> {
        let tree = tree_number(tree)?;
        self.run(move |c| c.execute("DELETE FROM keygate_kv WHERE tree = $1", &[&tree]).map(|_| ()))
    }

    fn put_many(&self, tree: usize, entries: Vec<Entry>) -> Result<(), StoreError> {
        let tree = tree_number(tree)?;
        // One statement may not write a key twice; the last value wins, as in a sled batch.
        let entries: BTreeMap<Vec<u8>, Vec<u8>> = entries.into_iter().collect();
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = entries.by_ref().take(PUT_BATCH).unzip();
            self.run(move |c| c.insert_many(tree, &keys, &values))?;
        }
        Ok(())
    }

    fn remove_range(&self, tree: usize, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<(), StoreError> {
        let tree = tree_number(tree)?;
        self.run(move |c| c.remove_range(tree, &from, &to).map(|_| ()))
    }

    fn len(&self, tree: usize) -> Result<u64, StoreError> {
        self.count(tree)
    }

    fn location(&self) -> Result<String, StoreError> {
        self.location_now()
    }

    fn other_processes(&self) -> Result<Vec<String>, StoreError> {
        self.replica_sessions()
    }

    /// Nothing to do: every commit was durable when it returned (see the module's note).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let row = self.run(|c| c.query("SELECT pg_total_relation_size('keygate_kv')", &[]))?;
        let bytes: i64 = row.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    fn follow(&self, on_announcement: OnAnnouncement) -> Result<(), StoreError> {
        let listener = follow::Listener::start(Arc::clone(&self.config), on_announcement)?;
        if let Some(old) = self.listener.lock().unwrap_or_else(PoisonError::into_inner).replace(listener) {
            old.stop();
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn shared_limits(&self) -> Option<&dyn crate::store::limits::SharedLimits> {
        Some(self)
    }

    fn shared_rate_counts(&self) -> Option<&dyn crate::store::rate_counts::RateCounts> {
        Some(self)
    }

    fn end_startup(&self) {
        if let Some(lock) = self.startup.lock().unwrap_or_else(PoisonError::into_inner).take() {
            lock.release();
        }
    }
}

/// These need a PostgreSQL server: its URL in `KEYGATE_TEST_POSTGRES` (`cargo xtask test`
/// starts one); without it they pass with a note.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
