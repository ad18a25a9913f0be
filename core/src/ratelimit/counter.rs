//! One counter in Envoy's shared data: a sliding window cut into [`SUBS`] sub-windows,
//! holding this Envoy's own admissions and, from the fleet sync, the other Envoys'.
//!
//! Why sub-windows: fixed windows let 2× the limit through around a boundary (all of one
//! window's allowance at its end, all of the next at its start). A request at sub-window k
//! counts sub-windows k-10 ..= k (11 of them, a little over one window), so in any span of
//! one window length at most the limit is admitted; the price is that a request is
//! remembered for up to one sub-window (a tenth) longer than the window. An exact log of
//! every request would need memory per request; 11 counters per counter do not.

use super::{Limit, Window};

/// Sub-windows per window.
pub const SUBS: usize = 10;
/// Sub-windows a counter holds: the current one and the [`SUBS`] before it.
pub const RING: usize = SUBS + 1;
/// Bytes of one stored counter slot.
pub const SLOT_BYTES: usize = 8 + 4 + 8 + 4 * RING * 2;

/// A counter slot. `head` is the newest sub-window index held; sub-window `s` (within
/// `head - SUBS ..= head`) is at ring position `s % RING`. A zero fingerprint is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub fingerprint: u64,
    pub window_ms: u32,
    pub head: u64,
    /// This Envoy's admissions per sub-window.
    pub local: [u32; RING],
    /// The other Envoys' admissions per sub-window, as the last fleet sync told.
    pub others: [u32; RING],
}

fn ring(s: u64) -> usize {
    (s % RING as u64) as usize
}

impl Slot {
    pub fn fresh(fingerprint: u64, window: Window, now_ms: u64) -> Slot {
        Slot { fingerprint, window_ms: window_ms(window), head: window.sub_index(now_ms), ..Slot::default() }
    }

    pub fn window(&self) -> Option<Window> {
        Window::from_millis(u64::from(self.window_ms))
    }

    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut out = [0u8; SLOT_BYTES];
        out[..8].copy_from_slice(&self.fingerprint.to_le_bytes());
        out[8..12].copy_from_slice(&self.window_ms.to_le_bytes());
        out[12..20].copy_from_slice(&self.head.to_le_bytes());
        for (i, n) in self.local.iter().chain(self.others.iter()).enumerate() {
            let at = 20 + 4 * i;
            out[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Decodes stored state; anything malformed (or of another window length than any
    /// known) reads as an empty slot.
    pub fn decode(bytes: &[u8]) -> Slot {
        let Ok(bytes) = <&[u8; SLOT_BYTES]>::try_from(bytes) else { return Slot::default() };
        let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let long = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        let mut slot = Slot { fingerprint: long(0), window_ms: word(8), head: long(12), ..Slot::default() };
        for i in 0..RING {
            slot.local[i] = word(20 + 4 * i);
            slot.others[i] = word(20 + 4 * (RING + i));
        }
        if slot.window().is_none() {
            return Slot::default();
        }
        slot
    }

    /// Moves the slot to `now_ms`: sub-windows that left the window are cleared. A slot
    /// ahead of `now_ms` (another worker's clock a hair later) stays as it is.
    pub fn advanced(mut self, now_ms: u64) -> Slot {
        let Some(window) = self.window() else { return Slot::default() };
        let k = window.sub_index(now_ms);
        if k > self.head {
            let steps = (k - self.head).min(RING as u64);
            for i in 1..=steps {
                let at = ring(self.head.wrapping_add(i));
                self.local[at] = 0;
                self.others[at] = 0;
            }
            self.head = k;
        }
        self
    }

    /// Admissions in the window, this Envoy's and the others'.
    pub fn total(&self) -> u64 {
        self.own() + self.others.iter().map(|&n| u64::from(n)).sum::<u64>()
    }

    /// This Envoy's admissions in the window.
    pub fn own(&self) -> u64 {
        self.local.iter().map(|&n| u64::from(n)).sum()
    }

    /// Whether it counts anything in the window at `now_ms` (else any counter may take it).
    pub fn live(&self, now_ms: u64) -> bool {
        self.fingerprint != 0 && self.advanced(now_ms).total() > 0
    }

    /// Counts one admission in the current sub-window.
    pub fn charge(&mut self) {
        let at = ring(self.head);
        self.local[at] = self.local[at].saturating_add(1);
    }

    /// Sub-window indices held, oldest first.
    pub fn subs(&self) -> impl Iterator<Item = u64> {
        let head = self.head;
        (0..RING as u64).filter_map(move |back| head.checked_sub(SUBS as u64 - back))
    }

    /// Seconds from `now_ms` until at least `over` of the counted admissions (only this
    /// Envoy's with `own_only`) have left the window; at least 1.
    pub fn frees_in(&self, over: u64, own_only: bool, now_ms: u64) -> u64 {
        let Some(window) = self.window() else { return 1 };
        let mut dropped = 0u64;
        // Saturating: a slot's bytes are untrusted like any shared data.
        let leaves = |s: u64| s.saturating_add(RING as u64).saturating_mul(window.sub_millis());
        let mut leaves_at = leaves(self.head);
        for s in self.subs() {
            let at = ring(s);
            dropped += u64::from(self.local[at]) + if own_only { 0 } else { u64::from(self.others[at]) };
            if dropped >= over {
                leaves_at = leaves(s);
                break;
            }
        }
        leaves_at.saturating_sub(now_ms).div_ceil(1000).max(1)
    }

    /// This Envoy's counts for sub-windows `head - SUBS ..= head`, oldest first (what it
    /// reports to the fleet).
    pub fn local_counts(&self) -> [u32; RING] {
        let mut out = [0u32; RING];
        let first = self.head.saturating_sub(SUBS as u64);
        for s in self.subs() {
            if let Some(slot) = out.get_mut((s - first) as usize) {
                *slot = self.local[ring(s)];
            }
        }
        out
    }

    /// Takes the others' counts the fleet reported for sub-windows `head - SUBS ..= head`
    /// (oldest first), where they overlap this slot's window at `now_ms`.
    pub fn set_others(mut self, head: u64, counts: &[u64], now_ms: u64) -> Slot {
        self = self.advanced(now_ms);
        let first = head.saturating_sub(SUBS as u64);
        let held = self.head.saturating_sub(SUBS as u64)..=self.head;
        for (i, &n) in counts.iter().take(RING).enumerate() {
            let s = first.saturating_add(i as u64);
            if held.contains(&s) && s <= head {
                self.others[ring(s)] = u32::try_from(n).unwrap_or(u32::MAX);
            }
        }
        self
    }
}

fn window_ms(window: Window) -> u32 {
    u32::try_from(window.millis()).unwrap_or(u32::MAX)
}

/// Where a counter is counted among its candidate slots, and the slot as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub probe: usize,
    /// The slot moved to now (fresh when the counter takes a free one).
    pub slot: Slot,
    /// Whether no request of this Envoy has been counted in this sub-window yet (the fleet
    /// sync is told of the counter).
    pub new_sub: bool,
}

/// Whether a candidate settles where the counter counts, so later ones need not be read:
/// the counter's own slot, or one never written.
pub fn settles(fingerprint: u64, slot: &Slot) -> bool {
    *slot == Slot::default() || slot.fingerprint == fingerprint
}

/// The counter's own slot; else the first that counts nothing in its window (taken
/// afresh); else the least loaded, shared with its holder (then the counter is limited at
/// most earlier than its own count alone would, never later).
pub fn choose(fingerprint: u64, window: Window, probed: &[Slot], now_ms: u64) -> Option<Choice> {
    let here = |probe: usize, slot: Slot| Choice { probe, new_sub: slot.local[ring(slot.head)] == 0, slot };
    if let Some((i, s)) = probed.iter().enumerate().find(|(_, s)| s.fingerprint == fingerprint && s.window().is_some()) {
        return Some(here(i, s.advanced(now_ms)));
    }
    if let Some(i) = probed.iter().position(|s| !s.live(now_ms)) {
        return Some(here(i, Slot::fresh(fingerprint, window, now_ms)));
    }
    let (i, s) = probed.iter().enumerate().min_by_key(|(_, s)| s.advanced(now_ms).total())?;
    Some(here(i, s.advanced(now_ms)))
}

/// How a counter stands after a request: for the RateLimit headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub name: String,
    pub limit: Limit,
    pub remaining: u64,
    /// Seconds until some of the quota frees (the oldest counted admission leaves).
    pub reset_secs: u64,
}

/// Whether one more request fits `limit` in `slot` (and, when the fleet cannot be
/// reached, this Envoy's `share`). `Err` holds the seconds until it would.
pub fn fits(slot: &Slot, limit: Limit, share: Option<u64>, now_ms: u64) -> Result<(), u64> {
    let quota = u64::from(limit.count);
    let total = slot.total();
    if total >= quota {
        return Err(slot.frees_in(total + 1 - quota, false, now_ms));
    }
    if let Some(share) = share {
        let own = slot.own();
        if own >= share {
            return Err(slot.frees_in(own + 1 - share, true, now_ms));
        }
    }
    Ok(())
}

/// The standing of `slot` against `limit` (after this request was charged, if it was).
pub fn standing(name: String, slot: &Slot, limit: Limit, share: Option<u64>, now_ms: u64) -> Standing {
    let quota = u64::from(limit.count);
    let mut remaining = quota.saturating_sub(slot.total());
    if let Some(share) = share {
        remaining = remaining.min(share.saturating_sub(slot.own()));
    }
    let reset_secs = if slot.total() == 0 { limit.window.secs() } else { slot.frees_in(1, false, now_ms) };
    Standing { name, limit, remaining, reset_secs }
}

/// This Envoy's share of `limit` among `proxies`, rounded up.
pub fn share_of(limit: Limit, proxies: u64) -> u64 {
    u64::from(limit.count).div_ceil(proxies.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: u64 = 0xabc1;
    const SEC: Limit = Limit { count: 5, window: Window::Second };

    /// Admits as the filter does, against one slot.
    fn request(slot: &mut Slot, limit: Limit, now_ms: u64) -> bool {
        *slot = slot.advanced(now_ms);
        if fits(slot, limit, None, now_ms).is_ok() {
            slot.charge();
            true
        } else {
            false
        }
    }

    #[test]
    fn slots_round_trip_and_junk_reads_as_empty() {
        let mut s = Slot::fresh(5, Window::Hour, 7_200_000);
        s.local[3] = 9;
        s.others[10] = u32::MAX;
        assert_eq!(Slot::decode(&s.encode()), s);
        assert_eq!(Slot::decode(b"short"), Slot::default());
        assert_eq!(Slot::decode(&[1u8; SLOT_BYTES]), Slot::default(), "a window length no limit has");
        assert_eq!(Slot::decode(&[1u8; SLOT_BYTES + 1]), Slot::default());
    }

    #[test]
    fn admits_up_to_the_limit_then_refuses_until_the_oldest_leaves() {
        let mut slot = Slot::fresh(FP, Window::Second, 10_000);
        for i in 0..5 {
            assert!(request(&mut slot, SEC, 10_000 + i), "{i}");
        }
        assert!(!request(&mut slot, SEC, 10_050));
        // All five in sub-window 100 (10.0–10.1 s): counted until sub-window 111 starts.
        assert_eq!(fits(&slot, SEC, None, 10_050), Err(2));
        assert!(!request(&mut slot, SEC, 11_099));
        assert!(request(&mut slot, SEC, 11_100));
    }

    #[test]
    fn no_window_length_span_admits_more_than_the_limit() {
        // Requests every 7 ms for 5 s, against 5/s: in every 1 s span at most 5 admitted.
        let mut slot = Slot::fresh(FP, Window::Second, 0);
        let admitted: Vec<u64> = (0..700u64).map(|i| i * 7).filter(|&t| request(&mut slot, SEC, t)).collect();
        for (i, &t) in admitted.iter().enumerate() {
            let in_span = admitted[i..].iter().take_while(|&&u| u < t + 1000).count();
            assert!(in_span <= 5, "{in_span} admitted in the second from {t} ms");
        }
        // And the steady rate is close to the limit (a tenth is the price of sub-windows).
        assert!(admitted.len() >= 5 * 5 * 10 / 11 - 1, "{}", admitted.len());
    }

    #[test]
    fn a_fixed_window_edge_burst_is_refused() {
        // Five at the very end of one second, then as many as possible right after.
        let mut slot = Slot::fresh(FP, Window::Second, 9_990);
        assert!((0..5).all(|_| request(&mut slot, SEC, 9_990)));
        assert!((0..5).all(|_| !request(&mut slot, SEC, 10_010)), "a fixed window would admit five more here");
    }

    #[test]
    fn others_counts_take_from_the_limit_and_line_up_by_sub_window() {
        let now = 50_000;
        let mut slot = Slot::fresh(FP, Window::Second, now);
        let head = Window::Second.sub_index(now);
        // The fleet says: 2 in the sub-window before, 2 in this one.
        let mut counts = [0u64; RING];
        counts[SUBS - 1] = 2;
        counts[SUBS] = 2;
        slot = slot.set_others(head, &counts, now);
        assert_eq!(slot.total(), 4);
        assert!(request(&mut slot, SEC, now));
        assert!(!request(&mut slot, SEC, now));
        // An answer about a later head lines up by index: only the overlap is taken.
        let later = slot.set_others(head + 1, &[7; RING], now);
        assert_eq!(later.others.iter().map(|&n| u64::from(n)).sum::<u64>(), 7 * SUBS as u64, "sub-window head+1 is not held yet");
        // Old sub-windows leave with time.
        let moved = slot.advanced(now + 1_100);
        assert_eq!(moved.total(), 0, "{moved:?}");
    }

    #[test]
    fn local_counts_are_oldest_first_and_round_trip_through_set_others() {
        let mut slot = Slot::fresh(FP, Window::Minute, 600_000);
        slot.charge();
        slot = slot.advanced(606_000);
        slot.charge();
        slot.charge();
        let counts = slot.local_counts();
        assert_eq!(counts[SUBS], 2);
        assert_eq!(counts[SUBS - 1], 1);
        let wide: Vec<u64> = counts.iter().map(|&n| u64::from(n)).collect();
        let mirrored = Slot::fresh(9, Window::Minute, 606_000).set_others(slot.head, &wide, 606_000);
        assert_eq!(mirrored.total(), 3);
    }

    #[test]
    fn when_the_fleet_is_unreachable_an_envoy_admits_only_its_share() {
        let limit = Limit { count: 10, window: Window::Minute };
        let share = share_of(limit, 3);
        assert_eq!(share, 4);
        let mut slot = Slot::fresh(FP, Window::Minute, 0);
        let mut admitted = 0;
        for t in 0..20 {
            slot = slot.advanced(t);
            if fits(&slot, limit, Some(share), t).is_ok() {
                slot.charge();
                admitted += 1;
            }
        }
        assert_eq!(admitted, 4);
        assert_eq!(standing("key-1m".into(), &slot, limit, Some(share), 20).remaining, 0);
        assert_eq!(share_of(limit, 0), 10);
    }

    #[test]
    fn choosing_keeps_the_own_slot_takes_a_free_one_or_shares_the_least_loaded() {
        let now = 3_600_000;
        let busy = |fp: u64, n: u32| {
            let mut s = Slot::fresh(fp, Window::Hour, now);
            s.local[ring(s.head)] = n;
            s
        };
        let stale = Slot { head: 0, ..busy(8, 50) };
        let probed = [busy(1, 3), stale, busy(FP, 2), Slot::default()];
        assert_eq!(choose(FP, Window::Hour, &probed, now).map(|c| (c.probe, c.new_sub)), Some((2, false)));
        let merged_only = busy(FP, 0).set_others(Window::Hour.sub_index(now), &[1; RING], now);
        let c = choose(FP, Window::Hour, &[merged_only], now).unwrap();
        assert!(c.new_sub, "the fleet's counts alone do not make this Envoy's first admission of the sub-window");
        let probed = [busy(1, 3), stale, Slot::default(), Slot::default()];
        let c = choose(FP, Window::Hour, &probed, now).unwrap();
        assert_eq!((c.probe, c.slot.fingerprint, c.slot.total(), c.new_sub), (1, FP, 0, true));
        let probed = [busy(1, 3), busy(2, 1), busy(3, 4), busy(4, 2)];
        let c = choose(FP, Window::Hour, &probed, now).unwrap();
        assert_eq!((c.probe, c.slot.fingerprint), (1, 2), "shared with the least loaded holder");
        assert!(choose(FP, Window::Hour, &[], now).is_none());
        assert!(settles(FP, &Slot::default()) && settles(FP, &busy(FP, 1)) && !settles(FP, &busy(2, 1)));
    }

    #[test]
    fn extreme_heads_from_shared_data_or_admin_do_not_overflow() {
        let mut slot = Slot::fresh(FP, Window::Day, 0);
        slot.head = u64::MAX;
        slot.local[ring(u64::MAX)] = 3;
        assert!(fits(&slot, Limit { count: 3, window: Window::Day }, None, 0).is_err());
        let _ = Slot::decode(&slot.encode()).advanced(u64::MAX).set_others(u64::MAX, &[u64::MAX; RING], u64::MAX);
        let _ = Slot::fresh(FP, Window::Second, u64::MAX).set_others(0, &[1; RING], 0).local_counts();
    }

    #[test]
    fn standing_reports_remaining_and_when_quota_frees() {
        let limit = Limit { count: 100, window: Window::Hour };
        let mut slot = Slot::fresh(FP, Window::Hour, 0);
        slot.charge();
        let s = standing("key-1h".into(), &slot, limit, None, 0);
        assert_eq!((s.remaining, s.reset_secs), (99, 3960), "the first admission leaves after 11 sub-windows of 6 min");
        let empty = standing("key-1h".into(), &Slot::fresh(FP, Window::Hour, 0), limit, None, 0);
        assert_eq!((empty.remaining, empty.reset_secs), (100, 3600));
    }
}
