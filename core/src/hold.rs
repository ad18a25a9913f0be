//! The requests one worker VM holds for a key or signing key its snapshot does not hold yet
//! ([`crate::Outcome::Pending`]), and what bounds their cost: at most `max_held` at once
//! (beyond, refused at once), each for at most `timeout_ms`, and a negative cache of what
//! timed out, refused at once for `negative_ttl_secs`. Pure bookkeeping on the caller's
//! millisecond clock; the filter pauses, resumes and answers the requests.

use std::collections::{HashMap, VecDeque};

use crate::config::HoldUnknown;
use crate::decide::Awaited;

/// One held request: the filter's context id, what it waits for, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub context: u32,
    /// [`Awaited::digest`] of what it waits for.
    pub awaited: [u8; 16],
    pub deadline_ms: u64,
    /// The snapshot version it was last decided on.
    pub version: Option<u64>,
}

impl Held {
    pub fn timed_out(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms
    }
}

/// What becomes of a pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Held until the snapshot moves or its time is up.
    Held,
    /// Refused at once: it timed out a moment ago.
    NegativeHit,
    /// Refused at once: `max_held` requests are held already.
    Full,
    /// Refused at once: holding is off.
    Off,
}

/// Digests that timed out, each until an expiry; oldest first, at most `capacity`. All
/// entries live equally long, so the oldest is also the first to expire.
#[derive(Debug, Default)]
struct NegativeCache {
    capacity: usize,
    ttl_ms: u64,
    until: HashMap<[u8; 16], u64>,
    order: VecDeque<([u8; 16], u64)>,
}

impl NegativeCache {
    fn contains(&self, digest: &[u8; 16], now_ms: u64) -> bool {
        self.until.get(digest).is_some_and(|until| *until > now_ms)
    }

    fn insert(&mut self, digest: [u8; 16], now_ms: u64) {
        if self.capacity == 0 {
            return;
        }
        while let Some(&(oldest, until)) = self.order.front() {
            if until > now_ms && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            // A digest inserted again has a later entry of its own: keep it.
            if self.until.get(&oldest) == Some(&until) {
                self.until.remove(&oldest);
            }
        }
        let until = now_ms.saturating_add(self.ttl_ms);
        self.until.insert(digest, until);
        self.order.push_back((digest, until));
    }
}

/// The held requests and the negative cache of one worker VM.
#[derive(Debug)]
pub struct Holding {
    settings: HoldUnknown,
    held: HashMap<u32, Held>,
    negative: NegativeCache,
    /// The filter set its fast tick for the held requests.
    pub fast_tick: bool,
}

impl Default for Holding {
    fn default() -> Holding {
        Holding::new(HoldUnknown::default())
    }
}

impl Holding {
    pub fn new(settings: HoldUnknown) -> Holding {
        let negative = NegativeCache {
            capacity: settings.negative_entries,
            ttl_ms: settings.negative_ttl_secs.saturating_mul(1000),
            ..NegativeCache::default()
        };
        Holding { settings, held: HashMap::new(), negative, fast_tick: false }
    }

    /// New settings (a new plugin configuration); requests held already stay, with their
    /// deadlines, and the negative cache starts empty.
    pub fn configure(&mut self, settings: HoldUnknown) {
        let held = std::mem::take(&mut self.held);
        let fast_tick = self.fast_tick;
        *self = Holding { held, fast_tick, ..Holding::new(settings) };
    }

    pub fn enabled(&self) -> bool {
        self.settings.timeout_ms > 0 && self.settings.max_held > 0
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds the request of `context`, pending for `awaited`, decided on snapshot
    /// `version` at `now_ms`, unless it timed out lately, too many are held, or holding is off.
    pub fn admit(&mut self, context: u32, awaited: &Awaited, now_ms: u64, version: Option<u64>) -> Admission {
        if !self.enabled() {
            return Admission::Off;
        }
        let digest = awaited.digest();
        if self.negative.contains(&digest, now_ms) {
            return Admission::NegativeHit;
        }
        if self.held.len() >= self.settings.max_held && !self.held.contains_key(&context) {
            return Admission::Full;
        }
        let deadline_ms = now_ms.saturating_add(self.settings.timeout_ms);
        self.held.insert(context, Held { context, awaited: digest, deadline_ms, version });
        Admission::Held
    }

    /// Takes out the held requests to decide again: those whose snapshot moved on from
    /// the version they were decided on, and those whose time is up.
    pub fn take_due(&mut self, now_ms: u64, version: Option<u64>) -> Vec<Held> {
        let due: Vec<u32> = self.held.values().filter(|h| h.version != version || h.timed_out(now_ms)).map(|h| h.context).collect();
        due.iter().filter_map(|context| self.held.remove(context)).collect()
    }

    /// Puts back a request that is still pending after [`Holding::take_due`], decided on
    /// `version` now; its deadline stays.
    pub fn keep(&mut self, held: Held, version: Option<u64>) {
        self.held.insert(held.context, Held { version, ..held });
    }

    /// Remembers that `awaited` never came: refused at once for `negative_ttl_secs`.
    pub fn timed_out(&mut self, awaited: &Awaited, now_ms: u64) {
        self.negative.insert(awaited.digest(), now_ms);
    }

    /// Forgets the request of `context` (the stream ended while held); whether it was held.
    pub fn forget(&mut self, context: u32) -> bool {
        self.held.remove(&context).is_some()
    }

    /// Digests remembered as timed out (expired ones included until pushed out).
    pub fn negative_len(&self) -> usize {
        self.negative.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyHash;

    fn settings(max_held: usize, negative_entries: usize) -> HoldUnknown {
        HoldUnknown { timeout_ms: 300, max_held, negative_ttl_secs: 10, negative_entries }
    }

    fn key(n: u8) -> Awaited {
        Awaited::Key(KeyHash([n; 32]))
    }

    #[test]
    fn holds_up_to_max_held_and_refuses_beyond() {
        let mut h = Holding::new(settings(2, 16));
        assert_eq!(h.admit(1, &key(1), 1000, Some(5)), Admission::Held);
        assert_eq!(h.admit(2, &key(2), 1000, Some(5)), Admission::Held);
        assert_eq!(h.admit(3, &key(3), 1000, Some(5)), Admission::Full);
        assert_eq!(h.len(), 2);
        assert!(h.forget(1));
        assert!(!h.forget(1));
        assert_eq!(h.admit(3, &key(3), 1001, Some(5)), Admission::Held);
    }

    #[test]
    fn off_when_timeout_or_max_held_is_zero() {
        for off in [HoldUnknown { timeout_ms: 0, ..settings(4, 4) }, settings(0, 4)] {
            let mut h = Holding::new(off);
            assert!(!h.enabled());
            assert_eq!(h.admit(1, &key(1), 0, None), Admission::Off);
            assert!(h.is_empty());
        }
    }

    #[test]
    fn due_when_the_snapshot_moves_or_the_time_is_up() {
        let mut h = Holding::new(settings(8, 16));
        h.admit(1, &key(1), 1000, Some(5));
        h.admit(2, &key(2), 1200, Some(5));
        assert!(h.take_due(1100, Some(5)).is_empty(), "nothing changed, nothing timed out");
        let moved = h.take_due(1100, Some(6));
        assert_eq!(moved.len(), 2);
        assert!(moved.iter().all(|held| !held.timed_out(1100)));
        // Still pending on version 6: back in, deadlines unchanged.
        for held in moved {
            h.keep(held, Some(6));
        }
        assert!(h.take_due(1299, Some(6)).is_empty());
        let late = h.take_due(1300, Some(6));
        assert_eq!(late.iter().map(|held| (held.context, held.timed_out(1300))).collect::<Vec<_>>(), vec![(1, true)]);
        assert_eq!(h.take_due(1500, Some(6)).len(), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn what_timed_out_is_refused_at_once_until_its_ttl_ends() {
        let mut h = Holding::new(settings(8, 16));
        h.timed_out(&key(1), 1000);
        assert_eq!(h.admit(1, &key(1), 1001, None), Admission::NegativeHit);
        assert_eq!(h.admit(2, &Awaited::SigningKey("k9".into()), 1001, None), Admission::Held);
        assert_eq!(h.admit(3, &key(1), 10_999, None), Admission::NegativeHit);
        assert_eq!(h.admit(3, &key(1), 11_000, None), Admission::Held);
    }

    #[test]
    fn the_negative_cache_is_bounded_and_pushes_out_the_oldest() {
        let mut h = Holding::new(settings(8, 3));
        for n in 0..100u8 {
            h.timed_out(&key(n), 1000 + u64::from(n));
            assert!(h.negative_len() <= 3);
        }
        assert_eq!(h.admit(1, &key(99), 1200, None), Admission::NegativeHit);
        assert_eq!(h.admit(2, &key(0), 1200, None), Admission::Held);
        // Timing out again refreshes an entry; the older copy going out keeps the new one.
        let mut h = Holding::new(settings(8, 2));
        h.timed_out(&key(1), 0);
        h.timed_out(&key(1), 5000);
        h.timed_out(&key(2), 5001);
        assert_eq!(h.admit(1, &key(1), 12_000, None), Admission::NegativeHit);
        // No negative cache at all.
        let mut h = Holding::new(settings(8, 0));
        h.timed_out(&key(1), 0);
        assert_eq!(h.admit(1, &key(1), 1, None), Admission::Held);
    }

    #[test]
    fn a_kid_and_a_key_never_share_a_digest() {
        let kid = Awaited::SigningKey(String::from_utf8(vec![b'x'; 8000]).unwrap());
        assert_ne!(kid.digest(), key(0).digest());
        assert_eq!(kid.digest(), kid.clone().digest());
    }
}
