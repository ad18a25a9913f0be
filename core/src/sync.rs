//! What a feed request can come to, shared by the filter's leader ([`crate::feed`]).
//!
//! With data at version V the next poll is `?since=V&wait=S`: admin answers at once when
//! something changed after V, else after S seconds with an empty delta. Either answer
//! confirms the data is current. A 410 means V is older than admin's changelog: the next
//! poll asks for a full snapshot. Anything else is a failure: the last good data is kept
//! (it keeps deciding until `max_staleness`).

use crate::snapshot::SnapshotError;

pub const SNAPSHOT_PATH: &str = "/v1/snapshot";

/// Largest feed answer the filter reads. Full snapshots come in pages far below it; a
/// delta above it (a huge batch of changes) is dropped for a paged full snapshot instead.
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

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
