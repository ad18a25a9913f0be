//! The filter's copy of admin's state, as a pure state machine: which feed request to
//! make next, and what a response does to the snapshot. The wasm shell only moves bytes.
//!
//! With a snapshot at version V the next poll is `?since=V&wait=S`: admin answers at once
//! when something changed after V, else after S seconds with an empty delta. Either answer
//! confirms the snapshot is current. A 410 means V is older than admin's changelog: the
//! next poll asks for a full snapshot. Anything else is a failure: the last good snapshot
//! is kept (it keeps deciding until `max_staleness`).

use crate::decide::Synced;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::UnixTime;

pub const SNAPSHOT_PATH: &str = "/v1/snapshot";

/// Largest feed response the filter accepts (a full snapshot included).
pub const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A full snapshot or a non-empty delta was applied.
    Applied { version: u64, full: bool, keys: usize },
    /// Admin confirmed nothing changed.
    Unchanged { version: u64 },
    /// Admin no longer has the changes since our version; a full snapshot comes next.
    Resync,
    /// The poll failed; the last good snapshot stays.
    Failed(SyncFailure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFailure {
    /// No response (timeout, connection refused, cluster missing).
    Unreachable,
    /// An HTTP status other than 200/410.
    Status(u16),
    /// The body was not a snapshot we can apply.
    Rejected(SnapshotError),
}

impl std::fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncFailure::Unreachable => f.write_str("admin unreachable"),
            SyncFailure::Status(s) => write!(f, "admin answered HTTP {s}"),
            SyncFailure::Rejected(e) => write!(f, "snapshot rejected: {e}"),
        }
    }
}

/// Health transitions worth one log line each (never one per request or per poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Failing,
}

#[derive(Debug, Default)]
pub struct Replica {
    snapshot: Option<Snapshot>,
    confirmed_at: UnixTime,
    need_full: bool,
    failing: bool,
    pub failures: u64,
}

impl Replica {
    pub fn new() -> Replica {
        Replica::default()
    }

    /// The `:path` of the next feed request.
    pub fn next_path(&self, wait_secs: u64) -> String {
        match &self.snapshot {
            Some(s) if !self.need_full => format!("{SNAPSHOT_PATH}?since={}&wait={wait_secs}", s.version()),
            _ => SNAPSHOT_PATH.to_owned(),
        }
    }

    /// Applies one feed response (`status: None` when there was none). Returns what
    /// happened and, when health changed, the new health.
    pub fn on_response(&mut self, status: Option<u16>, body: &[u8], now: UnixTime) -> (SyncOutcome, Option<Health>) {
        let outcome = match status {
            None => SyncOutcome::Failed(SyncFailure::Unreachable),
            Some(410) => {
                self.need_full = true;
                SyncOutcome::Resync
            }
            Some(200) => self.apply(body, now),
            Some(other) => SyncOutcome::Failed(SyncFailure::Status(other)),
        };
        let failed = matches!(outcome, SyncOutcome::Failed(_));
        if failed {
            self.failures += 1;
        }
        let change = (failed != self.failing).then_some(if failed { Health::Failing } else { Health::Healthy });
        self.failing = failed;
        (outcome, change)
    }

    fn apply(&mut self, body: &[u8], now: UnixTime) -> SyncOutcome {
        let wire = match Snapshot::decode(body) {
            Ok(wire) => wire,
            Err(e) => return SyncOutcome::Failed(SyncFailure::Rejected(e)),
        };
        let full = wire.since.is_none();
        let changed = full || !wire.keys.is_empty() || !wire.removed_keys.is_empty() || !wire.signing_keys.is_empty() || !wire.removed_signing_keys.is_empty() || !wire.revoked_sessions.is_empty();
        let result = match (&mut self.snapshot, full) {
            (Some(current), false) => current.apply(wire),
            (None, false) => Err(SnapshotError::NotFull),
            (slot, true) => Snapshot::from_full(wire).map(|s| *slot = Some(s)),
        };
        match (result, &mut self.snapshot) {
            (Ok(()), Some(snapshot)) => {
                self.need_full = false;
                self.confirmed_at = now;
                snapshot.forget_expired_revocations(now);
                if changed {
                    SyncOutcome::Applied { version: snapshot.version(), full, keys: snapshot.key_count() }
                } else {
                    SyncOutcome::Unchanged { version: snapshot.version() }
                }
            }
            (Ok(()), None) => SyncOutcome::Failed(SyncFailure::Rejected(SnapshotError::NotFull)),
            (Err(e @ SnapshotError::VersionGap { .. }), _) | (Err(e @ SnapshotError::NotFull), _) => {
                self.need_full = true;
                SyncOutcome::Failed(SyncFailure::Rejected(e))
            }
            (Err(e), _) => SyncOutcome::Failed(SyncFailure::Rejected(e)),
        }
    }

    /// What `decide` reads: the snapshot and when admin last confirmed it.
    pub fn synced(&self) -> Option<Synced<'_>> {
        self.snapshot.as_ref().map(|snapshot| Synced { snapshot, confirmed_at: self.confirmed_at })
    }

    pub fn version(&self) -> Option<u64> {
        self.snapshot.as_ref().map(Snapshot::version)
    }

    pub fn confirmed_at(&self) -> UnixTime {
        self.confirmed_at
    }
}
