//! Counters every replica on one database shares: sign-in failures with their blocks, and
//! the API-key login buckets. With one process on the store (sled) the in-memory counters
//! of [`crate::throttle`] are the whole truth and there is nothing to share; with several
//! replicas each would otherwise count alone, and N replicas would give N times the guesses.
//!
//! The rules (how long a block lasts, how a bucket refills) are the pure functions here,
//! used by the in-memory counters and the shared ones alike.

use super::{Store, StoreError};

/// What a counter counts, as a digest: no email or address is stored in the clear.
pub type Subject = [u8; 32];

/// How long a block lasts after `failures` failures when `free` are let through: none
/// before `free`, then `base_secs` doubling with each further failure, at most `max_secs`.
pub fn block_secs(failures: u32, free: u32, base_secs: u64, max_secs: u64) -> Option<u64> {
    let free = free.max(1);
    if failures < free {
        return None;
    }
    let doublings = (failures - free).min(30);
    Some(base_secs.max(1).saturating_mul(1u64 << doublings).min(max_secs.max(1)))
}

/// A bucket's level after `elapsed_secs` of refilling at `capacity` per minute, full at
/// `capacity`.
pub fn refilled(level: f64, elapsed_secs: f64, capacity: f64) -> f64 {
    (level + elapsed_secs.max(0.0) * capacity / 60.0).min(capacity)
}

/// Seconds until a bucket at `level` holds one whole login again.
pub fn wait_for_one(level: f64, capacity: f64) -> f64 {
    if level >= 1.0 {
        0.0
    } else {
        (1.0 - level) / (capacity / 60.0)
    }
}

/// The sign-in throttle's rule, as the shared counters need it.
#[derive(Debug, Clone, Copy)]
pub struct FailureRule {
    pub free: u32,
    pub base_secs: u64,
    pub max_secs: u64,
    pub forget_secs: u64,
}

/// Counters held in the database, shared by every replica on it. Each call is atomic
/// across replicas.
pub trait SharedLimits: Send + Sync {
    /// Whole seconds until the last block among `subjects` ends; 0 when none is blocked.
    fn blocked_secs(&self, subjects: &[Subject]) -> Result<u64, StoreError>;
    /// Counts one failure for `subject` (a count idle for `forget_secs` starts again) and
    /// blocks it as `rule` says.
    fn count_failure(&self, subject: Subject, rule: FailureRule) -> Result<(), StoreError>;
    /// Forgets `subject`'s failures and block.
    fn clear(&self, subject: Subject) -> Result<(), StoreError>;
    /// Takes one login from every bucket (subject and capacity per minute), or from none
    /// and `Err(seconds)` until all of them hold one.
    fn take(&self, buckets: &[(Subject, f64)]) -> Result<Result<(), f64>, StoreError>;
    /// Drops counters untouched for `idle_secs` and not blocking; returns how many.
    fn prune(&self, idle_secs: u64) -> Result<u64, StoreError>;
}

impl Store {
    /// The counters shared with other replicas, or `None` when this process is the only
    /// one on the store (sled).
    pub fn shared_limits(&self) -> Option<&dyn SharedLimits> {
        self.inner.engine.shared_limits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_double_from_the_first_failure_past_the_free_ones_up_to_the_cap() {
        assert_eq!(block_secs(4, 5, 1, 300), None);
        assert_eq!(block_secs(5, 5, 1, 300), Some(1));
        assert_eq!(block_secs(6, 5, 1, 300), Some(2));
        assert_eq!(block_secs(13, 5, 1, 300), Some(256));
        assert_eq!(block_secs(14, 5, 1, 300), Some(300));
        assert_eq!(block_secs(u32::MAX, 5, 1, 300), Some(300));
        assert_eq!(block_secs(0, 0, 0, 0), None, "at least one is free");
        assert_eq!(block_secs(1, 0, 0, 0), Some(1), "a block lasts at least a second");
    }

    #[test]
    fn buckets_refill_evenly_over_a_minute_and_stop_when_full() {
        assert_eq!(refilled(0.0, 30.0, 60.0), 30.0);
        assert_eq!(refilled(50.0, 60.0, 60.0), 60.0);
        assert_eq!(refilled(0.5, -5.0, 60.0), 0.5, "a clock going back refills nothing");
        assert_eq!(wait_for_one(0.5, 60.0), 0.5);
        assert_eq!(wait_for_one(1.0, 60.0), 0.0);
    }
}
