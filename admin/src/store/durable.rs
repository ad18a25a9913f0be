//! Group commit. Writers commit under the writer mutex and get a [`Ticket`]; before
//! answering 2xx they wait for a flush ([`Store::flush_to_disk`]: for sled its flush plus an
//! `fdatasync`; for PostgreSQL nothing, its commit was already durable) that *started after*
//! their write to finish. One flusher task runs the blocking flush on the blocking pool (for
//! sled never `flush_async`, which can hang: sled issues 1241 and 1357) and publishes what it made
//! durable on a `watch` channel, so one fsync covers every write that queued behind it.
//! The snapshot feed reads the same channel and never serves a version a crash could undo.

use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{Store, StoreError};

/// How long a writer waits for its flush before giving up with an error.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed flush before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What is on disk: every write with `seq <= self.seq` and every changelog version
/// `<= self.version`. `failed_seq` is the highest write sequence whose flush failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durable {
    pub seq: u64,
    pub version: u64,
    pub failed_seq: u64,
}

/// The receipt of one committed write: its write sequence number and the changelog head
/// right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "wait for the ticket to be durable before acknowledging the write"]
pub struct Ticket {
    pub seq: u64,
    pub version: u64,
}

pub(super) struct Durability {
    pub(super) state: watch::Sender<Durable>,
    pub(super) requested: Notify,
    /// Tests hold this to keep the flusher from flushing (see [`Store::hold_flushes`]).
    #[cfg(test)]
    hold: tokio::sync::Mutex<()>,
}

impl Durability {
    pub(super) fn new(version: u64) -> Durability {
        let (state, _) = watch::channel(Durable { seq: 0, version, failed_seq: 0 });
        Durability {
            state,
            requested: Notify::new(),
            #[cfg(test)]
            hold: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn publish(&self, seq: u64, version: u64) {
        self.state.send_modify(|d| {
            d.seq = d.seq.max(seq);
            d.version = d.version.max(version);
        });
    }

    fn publish_failure(&self, seq: u64) {
        self.state.send_modify(|d| d.failed_seq = d.failed_seq.max(seq));
    }
}

/// The running flusher; [`Flusher::shutdown`] makes a last flush and stops it.
pub struct Flusher {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), StoreError>>,
}

impl Flusher {
    pub(super) fn start(store: Store) -> Flusher {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(flush_loop(store, stop_rx));
        Flusher { stop, task }
    }

    /// Stops the loop and flushes whatever is still in memory.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.stop.send_replace(true);
        self.task.await.map_err(|e| StoreError::Task(e.to_string()))?
    }
}

async fn flush_once(store: &Store) -> Result<(), StoreError> {
    #[cfg(test)]
    let _held = store.inner.durability.hold.lock().await;
    let (seq, version) = store.committed();
    let current = *store.inner.durability.state.borrow();
    if seq <= current.seq && version <= current.version {
        return Ok(());
    }
    let flusher = store.clone();
    let flushed = tokio::task::spawn_blocking(move || flusher.flush_to_disk()).await;
    match flushed {
        Ok(Ok(_)) => {
            store.inner.durability.publish(seq, version);
            Ok(())
        }
        Ok(Err(e)) => {
            store.inner.durability.publish_failure(seq);
            Err(e)
        }
        Err(e) => {
            store.inner.durability.publish_failure(seq);
            Err(StoreError::Task(e.to_string()))
        }
    }
}

async fn flush_loop(store: Store, mut stop: watch::Receiver<bool>) -> Result<(), StoreError> {
    loop {
        tokio::select! {
            _ = store.inner.durability.requested.notified() => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = flush_once(&store).await {
            tracing::error!(error = %e, "store flush failed; writes waiting on it are answered with an error");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    flush_once(&store).await
}

impl Store {
    /// Starts the group-commit flusher. Needs a tokio runtime; `run` does this.
    pub fn start_flusher(&self) -> Flusher {
        Flusher::start(self.clone())
    }

    /// What is durable now; changes are published on the returned channel.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.inner.durability.state.subscribe()
    }

    pub fn durable_version(&self) -> u64 {
        self.inner.durability.state.borrow().version
    }

    /// Waits until the write behind `ticket` is on disk (a flush that started after it
    /// completed). Errors if that flush failed or took longer than [`FLUSH_TIMEOUT`].
    pub async fn wait_durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.wait(move |d| d.seq >= ticket.seq, move |d| d.failed_seq >= ticket.seq).await
    }

    /// Waits until changelog version `version` is on disk.
    pub async fn wait_version(&self, version: u64) -> Result<(), StoreError> {
        self.wait(move |d| d.version >= version, |_| false).await
    }

    async fn wait(&self, done: impl Fn(&Durable) -> bool, failed: impl Fn(&Durable) -> bool) -> Result<(), StoreError> {
        let mut rx = self.durable();
        if done(&rx.borrow()) {
            return Ok(());
        }
        self.inner.durability.requested.notify_one();
        let outcome = tokio::time::timeout(FLUSH_TIMEOUT, rx.wait_for(|d| done(d) || failed(d))).await;
        match outcome {
            Ok(Ok(d)) if done(&d) => Ok(()),
            Ok(Ok(_)) => Err(StoreError::NotDurable),
            Ok(Err(_closed)) => Err(StoreError::NotDurable),
            Err(_elapsed) => Err(StoreError::NotDurable),
        }
    }

    /// Keeps the flusher from flushing until the guard is dropped: lets a test see what
    /// is answered while a write is committed but not yet on disk.
    #[cfg(test)]
    pub(crate) async fn hold_flushes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.durability.hold.lock().await
    }

    /// Flushes on the calling thread and publishes the result: for start-up and tools,
    /// before any flusher runs.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let (seq, version) = self.committed();
        self.flush_to_disk()?;
        self.inner.durability.publish(seq, version);
        Ok(())
    }
}
