//! Fixed-window rate limiting ("1000 requests per hour", as the seed APIs state it): the
//! count for a bucket resets at the top of each window.
//!
//! The counters live in Envoy's shared data, updated with compare-and-swap, so one limit
//! holds across all worker VMs. Shared data has no delete, so a counter per bucket would
//! stay forever (one per client address ever seen). Instead each table is a fixed set of
//! `slots` entries (`keygate.rl.<table>.<n>`): a bucket hashes (with a secret per-Envoy
//! seed) to [`PROBES`] candidate slots; a slot holds (bucket fingerprint, window start,
//! count), and a slot whose window has ended is free for any bucket. Memory is therefore
//! at most `slots` entries per table, whatever the number of clients.
//!
//! When every candidate slot is held by other buckets in the current window, the request
//! is counted in the least loaded of them, together with its holder: a bucket is then
//! limited at most earlier than its own count alone would, never later.

use sha2::{Digest, Sha256};
use std::net::IpAddr;

use crate::UnixTime;

pub const WINDOW_SECS: u64 = 3600;

/// Candidate slots per bucket.
pub const PROBES: usize = 4;

/// Bytes of one stored slot.
pub const SLOT_BYTES: usize = 24;

/// Shared-data key of the secret that places buckets in slots.
/// The shared-data name of the seed, under the plugin's namespace `ns`.
pub fn seed_key(ns: &str) -> String {
    format!("{ns}rl.seed")
}

/// Bytes of a usable seed.
pub const SEED_BYTES: usize = 16;

/// One counter slot: which bucket holds it, its window, and the requests admitted in it.
/// A zero fingerprint is an empty slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub fingerprint: u64,
    pub start: UnixTime,
    pub count: u64,
}

impl Slot {
    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut out = [0u8; SLOT_BYTES];
        out[..8].copy_from_slice(&self.fingerprint.to_le_bytes());
        out[8..].copy_from_slice(&crate::pair::pack(self.start, self.count));
        out
    }

    /// Decodes stored state; anything malformed reads as an empty slot.
    pub fn decode(bytes: &[u8]) -> Slot {
        if bytes.len() != SLOT_BYTES {
            return Slot::default();
        }
        let (fp, rest) = bytes.split_at(8);
        match (fp.try_into().map(u64::from_le_bytes), crate::pair::unpack(rest)) {
            (Ok(fingerprint), Some((start, count))) => Slot { fingerprint, start, count },
            _ => Slot::default(),
        }
    }

    fn current(&self, start: UnixTime) -> bool {
        self.fingerprint != 0 && self.start == start
    }
}

/// Where a bucket may be counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Never zero.
    pub fingerprint: u64,
    /// Shared-data keys of the candidate slots, in probe order.
    pub keys: [String; PROBES],
}

/// The table a bucket counts in: per-key buckets apart from per-address ones, so a flood
/// of client addresses on public routes cannot crowd out key holders' counters.
fn table(bucket: &str) -> &'static str {
    if bucket.starts_with("key:") {
        "key"
    } else {
        "ip"
    }
}

/// The candidate slots of `bucket` in a table of `slots` entries, keyed by `seed` so that
/// a client cannot pick addresses that land on a chosen victim's slots. Slot names start
/// with the plugin's shared-data namespace `ns`.
pub fn place(ns: &str, seed: &[u8], bucket: &str, slots: u32) -> Placement {
    let digest =
        Sha256::new().chain_update((seed.len() as u64).to_le_bytes()).chain_update(seed).chain_update(bucket.as_bytes()).finalize();
    let word = |i: usize| digest.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    let slots = u64::from(slots.max(1));
    let (first, step) = (word(1) % slots, word(2) % slots);
    // An odd step visits distinct slots whenever the table size is a power of two; other
    // sizes may repeat a slot, which only means fewer distinct candidates.
    let step = step | 1;
    let table = table(bucket);
    let keys = std::array::from_fn(|i| format!("{ns}rl.{table}.{}", (first + step * i as u64) % slots));
    Placement { fingerprint: word(0) | 1, keys }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; store `next` in candidate slot `probe` (with CAS) before letting the
    /// request through.
    Admit { probe: usize, next: Slot },
    /// Over the limit until the window ends.
    Reject { retry_after: u64 },
}

/// Whether a candidate slot settles where the bucket counts, so the later candidates need
/// not be read: the bucket's own slot in this window, or one never written. A slot left
/// from an earlier window does not settle it: after a lost CAS race, a new seed or a new
/// table size the bucket's own slot can lie beyond it, and counting afresh there would
/// split the bucket's count (only the first request of a window reads further).
pub fn settles(fingerprint: u64, slot: &Slot, now: UnixTime) -> bool {
    let start = now - now % WINDOW_SECS;
    *slot == Slot::default() || (slot.current(start) && slot.fingerprint == fingerprint)
}

/// Decides one request of the bucket with `fingerprint` against `per_hour` at `now`, given
/// the current contents of its candidate slots (in probe order). The bucket's own slot if
/// it holds one in this window; else the first free one; else the least loaded, shared.
pub fn admit(fingerprint: u64, probed: &[Slot], per_hour: u32, now: UnixTime) -> Admission {
    let start = now - now % WINDOW_SECS;
    let own = probed.iter().position(|s| s.current(start) && s.fingerprint == fingerprint);
    let free = || probed.iter().position(|s| !s.current(start));
    let least_loaded = || probed.iter().enumerate().min_by_key(|(_, s)| s.count).map(|(i, _)| i);
    let (probe, holder, count) = match own.or_else(free) {
        Some(i) => (i, fingerprint, probed.get(i).filter(|s| s.current(start)).map_or(0, |s| s.count)),
        None => match least_loaded().and_then(|i| probed.get(i).map(|s| (i, s))) {
            Some((i, s)) => (i, s.fingerprint, s.count),
            // No slot to count in (not reachable with PROBES candidates): refuse nothing.
            None => return Admission::Admit { probe: 0, next: Slot { fingerprint, start, count: 1 } },
        },
    };
    if count >= u64::from(per_hour) {
        Admission::Reject { retry_after: (start + WINDOW_SECS).saturating_sub(now).max(1) }
    } else {
        Admission::Admit { probe, next: Slot { fingerprint: holder, start, count: count + 1 } }
    }
}

/// The client a public request is counted as: an IPv4 address as it is, an IPv6 address
/// by its first `v6_prefix_len` bits (a single host usually holds a whole /64), an
/// IPv4-mapped IPv6 address as the IPv4 address. Accepts `ip`, `ip:port`, `[ip]:port` or
/// `[ip]`; anything else (or nothing) is the one shared `unknown` client.
pub fn client_id(address: Option<&str>, v6_prefix_len: u8) -> String {
    let parsed = address.map(str::trim).and_then(|a| {
        a.parse::<IpAddr>()
            .ok()
            .or_else(|| a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
            .or_else(|| a.strip_prefix('[').and_then(|a| a.strip_suffix(']')).and_then(|a| a.parse::<IpAddr>().ok()))
    });
    match parsed {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let len = u32::from(v6_prefix_len.clamp(1, 128));
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: u64 = 0xabc1;

    fn run(slots: &mut [Slot], fp: u64, per_hour: u32, now: UnixTime) -> Result<usize, u64> {
        match admit(fp, slots, per_hour, now) {
            Admission::Admit { probe, next } => {
                slots[probe] = next;
                Ok(probe)
            }
            Admission::Reject { retry_after } => Err(retry_after),
        }
    }

    #[test]
    fn admits_up_to_the_limit_then_rejects_until_the_window_ends() {
        let now = 7 * WINDOW_SECS + 100;
        let mut slots = [Slot::default(); PROBES];
        for _ in 0..3 {
            assert_eq!(run(&mut slots, FP, 3, now), Ok(0));
        }
        assert_eq!(run(&mut slots, FP, 3, now + 5), Err(WINDOW_SECS - 105));
        // The next window starts from zero, in the same slot.
        assert_eq!(run(&mut slots, FP, 3, 8 * WINDOW_SECS), Ok(0));
        assert_eq!(slots[0], Slot { fingerprint: FP, start: 8 * WINDOW_SECS, count: 1 });
    }

    #[test]
    fn a_bucket_takes_the_first_free_slot_and_keeps_it_for_the_window() {
        let now = 10 * WINDOW_SECS + 7;
        let start = now - 7;
        let other = Slot { fingerprint: 99, start, count: 5 };
        let stale = Slot { fingerprint: 98, start: start - WINDOW_SECS, count: 500 };
        let mut slots = [other, stale, Slot::default(), Slot::default()];
        // An ended window is free: the bucket claims it, counting from zero.
        assert_eq!(run(&mut slots, FP, 2, now), Ok(1));
        assert_eq!(slots[1], Slot { fingerprint: FP, start, count: 1 });
        assert_eq!(run(&mut slots, FP, 2, now), Ok(1));
        assert_eq!(run(&mut slots, FP, 2, now), Err(WINDOW_SECS - 7));
        // Another bucket is not affected.
        assert_eq!(run(&mut slots, 77, 2, now), Ok(2));
    }

    #[test]
    fn reading_candidates_up_to_the_first_settling_one_decides_as_reading_all() {
        let now = 9 * WINDOW_SECS + 1;
        let busy = |fingerprint, count| Slot { fingerprint, start: now - 1, count };
        let old = Slot { fingerprint: 5, start: now - 1 - WINDOW_SECS, count: 9 };
        let tables = [
            [busy(1, 3), busy(FP, 2), Slot::default(), busy(2, 1)],
            [busy(1, 3), old, busy(FP, 2), busy(2, 1)],
            [busy(1, 3), busy(2, 1), busy(3, 1), busy(4, 0)],
            [Slot::default(); PROBES],
        ];
        for slots in tables {
            let read = slots.iter().position(|s| settles(FP, s, now)).map_or(PROBES, |i| i + 1);
            assert_eq!(admit(FP, &slots[..read], 3, now), admit(FP, &slots, 3, now), "{slots:?}");
        }
    }

    #[test]
    fn the_own_slot_wins_over_an_earlier_free_one() {
        let now = 3 * WINDOW_SECS;
        let mut slots = [Slot::default(), Slot { fingerprint: FP, start: now, count: 2 }, Slot::default(), Slot::default()];
        assert_eq!(run(&mut slots, FP, 2, now), Err(WINDOW_SECS));
    }

    #[test]
    fn when_every_candidate_is_busy_the_request_counts_with_the_least_loaded_holder() {
        let now = 5 * WINDOW_SECS;
        let busy = |fingerprint, count| Slot { fingerprint, start: now, count };
        let mut slots = [busy(1, 9), busy(2, 4), busy(3, 7), busy(4, 8)];
        assert_eq!(run(&mut slots, FP, 6, now), Ok(1));
        // The slot stays its holder's; both now count there.
        assert_eq!(slots[1], busy(2, 5));
        assert_eq!(run(&mut slots, FP, 6, now), Ok(1));
        assert_eq!(run(&mut slots, FP, 6, now), Err(WINDOW_SECS));
        // Sharing never lets a bucket past its own limit.
        let mut full = [busy(1, 10), busy(2, 10), busy(3, 10), busy(4, 10)];
        assert!(run(&mut full, FP, 10, now).is_err());
    }

    #[test]
    fn slots_round_trip_and_junk_reads_as_empty() {
        let s = Slot { fingerprint: 5, start: 3600, count: 42 };
        assert_eq!(Slot::decode(&s.encode()), s);
        assert_eq!(Slot::decode(b"short"), Slot::default());
        assert_eq!(Slot::decode(&[1u8; 16]), Slot::default());
        assert_eq!(Slot::decode(&[1u8; 25]), Slot::default());
    }

    #[test]
    fn placement_is_bounded_keyed_and_separates_keys_from_addresses() {
        let seed = [3u8; SEED_BYTES];
        let p = place("keygate.", &seed, "ip:192.0.2.1", 1000);
        assert_eq!(p, place("keygate.", &seed, "ip:192.0.2.1", 1000), "deterministic for one seed");
        assert_ne!(p.fingerprint, 0);
        for key in &p.keys {
            let n: u32 = key.strip_prefix("keygate.rl.ip.").unwrap().parse().unwrap();
            assert!(n < 1000, "{key}");
        }
        assert_ne!(p, place("keygate.", &[4u8; SEED_BYTES], "ip:192.0.2.1", 1000), "another seed places elsewhere");
        assert!(place("keygate.", &seed, "key:key_1", 1000).keys.iter().all(|k| k.starts_with("keygate.rl.key.")));
        assert!(place("keygate.", &seed, "key:key_1@/reports/", 1000).keys.iter().all(|k| k.starts_with("keygate.rl.key.")));
        // Power-of-two tables: the candidates are distinct slots.
        let q = place("keygate.", &seed, "ip:192.0.2.9", 1 << 16);
        let distinct: std::collections::HashSet<_> = q.keys.iter().collect();
        assert_eq!(distinct.len(), PROBES);
        // A one-slot table still works.
        assert!(place("keygate.", &seed, "ip:x", 1).keys.iter().all(|k| k == "keygate.rl.ip.0"));
        assert!(place("keygate.", &seed, "ip:x", 0).keys.iter().all(|k| k == "keygate.rl.ip.0"));
    }

    #[test]
    fn every_bucket_of_a_large_population_uses_only_the_table() {
        let seed = [9u8; SEED_BYTES];
        let mut used = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            used.extend(place("keygate.", &seed, &format!("ip:10.0.{}.{}", i / 256, i % 256), 64).keys);
        }
        assert!(used.len() <= 64, "{}", used.len());
    }

    #[test]
    fn ipv6_clients_count_per_prefix_in_any_spelling() {
        let id = |a: &str| client_id(Some(a), 64);
        assert_eq!(id("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(id("2001:DB8:1:2:bbbb:cccc:dddd:eeee"), "2001:db8:1:2::/64");
        assert_eq!(id("2001:0db8:0001:0002:0000:0000:0000:0009"), "2001:db8:1:2::/64");
        assert_eq!(id("[2001:db8:1:2::7]:443"), "2001:db8:1:2::/64");
        assert_eq!(id("[2001:db8:1:2::8]"), "2001:db8:1:2::/64");
        assert_ne!(id("2001:db8:1:3::1"), id("2001:db8:1:2::1"));
        // The prefix length is configurable.
        assert_eq!(client_id(Some("2001:db8:1:2::1"), 48), "2001:db8:1::/48");
        assert_eq!(client_id(Some("2001:db8:1:2::1"), 128), "2001:db8:1:2::1/128");
        assert_eq!(client_id(Some("2001:db8:1:2::1"), 1), "::/1");
    }

    #[test]
    fn ipv4_counts_per_address_and_v4_mapped_v6_is_the_v4_address() {
        let id = |a: &str| client_id(Some(a), 64);
        assert_eq!(id("192.0.2.7"), "192.0.2.7");
        assert_eq!(id("192.0.2.7:5555"), "192.0.2.7");
        assert_ne!(id("192.0.2.8"), id("192.0.2.7"));
        assert_eq!(id("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(id("[::FFFF:c000:0207]:80"), "192.0.2.7");
    }

    #[test]
    fn garbage_and_missing_addresses_are_one_unknown_client() {
        for junk in ["", "not an ip", "999.1.1.1", "1.2.3", "fe80::1%eth0", "[::1", "::1]:80", "1.2.3.4:port", "\u{0}"] {
            assert_eq!(client_id(Some(junk), 64), "unknown", "{junk:?}");
        }
        assert_eq!(client_id(None, 64), "unknown");
    }
}
