//! Counting across the fleet: what an Envoy's leader sends admin (`POST /v1/rate-counts`,
//! this Envoy's absolute counts per sub-window of every active counter) and what it gets
//! back (the sum of every other proxy's counts for the same sub-windows), and the small
//! record of how the last exchange went that every worker VM reads.
//!
//! Counts are absolute, not increments: a report sent twice, or late, changes nothing
//! (admin keeps the larger of what it holds and what it gets), and an admin that lost its
//! counts (restarted, or another replica) has them all again after one round.

use serde::{Deserialize, Serialize};

use super::counter::{Slot, RING};
use super::{Limit, LimitPolicy, Window};

pub const PATH: &str = "/v1/rate-counts";
/// Counters per report (admin refuses more).
pub const MAX_COUNTERS: usize = 5000;
/// Longest bucket name admin takes.
pub const MAX_BUCKET_BYTES: usize = 300;
/// Most bytes of an answer the filter reads (5 000 counters of the longest buckets fit).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// A report is sent at least this often while nothing is counted, so admin keeps this
/// Envoy among the proxies it divides a limit by when the fleet is cut off.
pub const HEARTBEAT_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterCounts {
    pub bucket: String,
    pub window_ms: u64,
    /// The sub-window index of the last entry of `counts`.
    pub head: u64,
    /// Sub-windows `head - 10 ..= head`, oldest first.
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountReport {
    pub proxy: String,
    pub counters: Vec<CounterCounts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountAnswer {
    /// Proxies that reported in the last minute, the asking one included.
    pub proxies: u64,
    /// `others[i]` answers `counters[i]` of the report.
    pub others: Vec<CounterCounts>,
}

/// The report entry of a counter slot.
pub fn entry(bucket: &str, slot: &Slot) -> CounterCounts {
    CounterCounts {
        bucket: bucket.to_owned(),
        window_ms: u64::from(slot.window_ms),
        head: slot.head,
        counts: slot.local_counts().iter().map(|&n| u64::from(n)).collect(),
    }
}

/// An answer's entry taken into a slot (the others' counts where the sub-windows overlap).
/// `None` when the entry is malformed.
pub fn merge(slot: Slot, answer: &CounterCounts, now_ms: u64) -> Option<Slot> {
    if answer.counts.len() != RING || u64::from(slot.window_ms) != answer.window_ms {
        return None;
    }
    Some(slot.set_others(answer.head, &answer.counts, now_ms))
}

/// Parses an answer; anything malformed is `None` (the exchange counts as failed).
pub fn parse_answer(body: &[u8], asked: usize) -> Option<CountAnswer> {
    let answer: CountAnswer = serde_json::from_slice(body).ok()?;
    (answer.others.len() == asked).then_some(answer)
}

/// The counter named in a worker's note to the leader (`<bucket>#<unit>`, see
/// [`super::counter_name`]).
pub fn parse_counter(name: &str) -> Option<(&str, Window)> {
    let (bucket, unit) = name.rsplit_once('#')?;
    let window = Window::ALL.into_iter().find(|w| w.unit() == unit)?;
    (!bucket.is_empty() && bucket.len() <= MAX_BUCKET_BYTES).then_some((bucket, window))
}

/// An Envoy's name in the fleet's counts, from its secret seed (every worker VM agrees;
/// the seed cannot be read back from it).
pub fn proxy_id(seed: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(b"keygate proxy id").chain_update(seed).finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// How an exchange with admin stands for an Envoy, as its workers last recorded it in
/// shared data (every worker reads it each tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetView {
    /// When an exchange last succeeded (0: never).
    pub synced_at_ms: u64,
    /// When the exchanges started failing (0: the last one succeeded).
    pub failing_since_ms: u64,
    /// Proxies admin last counted.
    pub proxies: u64,
}

pub const FLEET_VIEW_BYTES: usize = 24;

impl FleetView {
    pub fn encode(&self) -> [u8; FLEET_VIEW_BYTES] {
        let mut out = [0u8; FLEET_VIEW_BYTES];
        for (i, n) in [self.synced_at_ms, self.failing_since_ms, self.proxies].iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&n.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> FleetView {
        let Ok(bytes) = <&[u8; FLEET_VIEW_BYTES]>::try_from(bytes) else { return FleetView::default() };
        let long = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_le_bytes(word)
        };
        FleetView { synced_at_ms: long(0), failing_since_ms: long(1), proxies: long(2) }
    }

    /// After an exchange: `Some(proxies)` if it succeeded.
    pub fn after(self, answered: Option<u64>, now_ms: u64) -> FleetView {
        match answered {
            Some(proxies) => FleetView { synced_at_ms: now_ms, failing_since_ms: 0, proxies },
            None if self.failing_since_ms == 0 => FleetView { failing_since_ms: now_ms.max(1), ..self },
            None => self,
        }
    }

    /// This Envoy's share of `limit` while the fleet cannot be reached (no successful
    /// exchange for `fleet_timeout_ms`, and the last one failed); `None` otherwise.
    pub fn share(&self, policy: &LimitPolicy, limit: Limit, now_ms: u64) -> Option<u64> {
        let cut_off = policy.sync_interval_ms > 0
            && self.failing_since_ms != 0
            && now_ms.saturating_sub(self.synced_at_ms) >= policy.fleet_timeout_ms;
        cut_off.then(|| super::share_of(limit, self.proxies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::SUBS;

    #[test]
    fn a_slot_reported_and_answered_gets_the_others_counts() {
        let now = 7_200_000;
        let mut slot = Slot::fresh(3, Window::Hour, now);
        slot.charge();
        let sent = entry("key:k", &slot);
        assert_eq!((sent.counts.len(), sent.counts[SUBS], sent.window_ms), (RING, 1, 3_600_000));
        let answer = CounterCounts { counts: vec![1; RING], ..sent.clone() };
        let merged = merge(slot, &answer, now).unwrap();
        assert_eq!(merged.total(), 1 + RING as u64);
        assert_eq!(merge(slot, &CounterCounts { counts: vec![1; 3], ..sent.clone() }, now), None);
        assert_eq!(merge(slot, &CounterCounts { window_ms: 1000, ..sent }, now), None);
    }

    #[test]
    fn answers_parse_only_when_they_answer_every_counter() {
        let body = br#"{"proxies": 3, "others": [{"bucket": "key:k", "window_ms": 1000, "head": 5, "counts": [0,0,0,0,0,0,0,0,0,0,1]}]}"#;
        assert_eq!(parse_answer(body, 1).map(|a| a.proxies), Some(3));
        assert_eq!(parse_answer(body, 2), None);
        assert_eq!(parse_answer(b"{", 0), None);
        assert_eq!(parse_answer(br#"{"proxies": -1, "others": []}"#, 0), None);
    }

    #[test]
    fn proxy_ids_are_short_hex_and_differ_per_seed() {
        let id = proxy_id(&[1; 16]);
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, proxy_id(&[2; 16]));
    }

    #[test]
    fn counter_notes_parse_back_to_bucket_and_window() {
        assert_eq!(parse_counter("key:k@/a#b/#h"), Some(("key:k@/a#b/", Window::Hour)));
        assert_eq!(parse_counter(&super::super::counter_name("ip:1.2.3.4", Window::Second)), Some(("ip:1.2.3.4", Window::Second)));
        assert_eq!(parse_counter("key:k#x"), None);
        assert_eq!(parse_counter("#s"), None);
        assert_eq!(parse_counter("no window"), None);
    }

    #[test]
    fn the_share_applies_only_once_the_fleet_has_been_unreachable_long_enough() {
        let policy = LimitPolicy::default();
        let limit = Limit::per_hour(100);
        let healthy = FleetView::default().after(Some(3), 1_000);
        assert_eq!(healthy.share(&policy, limit, 60_000), None, "the last exchange succeeded");
        let failing = healthy.after(None, 2_000).after(None, 2_500);
        assert_eq!(failing.failing_since_ms, 2_000);
        assert_eq!(failing.share(&policy, limit, 3_999), None, "not yet fleet_timeout_ms since the last success");
        assert_eq!(failing.share(&policy, limit, 4_000), Some(34));
        let off = LimitPolicy { sync_interval_ms: 0, ..LimitPolicy::default() };
        assert_eq!(failing.share(&off, limit, 60_000), None, "each Envoy counts alone anyway");
        assert_eq!(FleetView::decode(&failing.encode()), failing);
        assert_eq!(FleetView::decode(b"junk"), FleetView::default());
        assert_eq!(failing.after(Some(2), 9_000), FleetView { synced_at_ms: 9_000, failing_since_ms: 0, proxies: 2 });
    }
}
