//! Rate limits: sliding windows (see [`counter`]) per key, per business and per client
//! address, counted across every worker VM of an Envoy in its shared data and across the
//! fleet through admin (see [`fleet`]).
//!
//! Shared data has no delete, so a counter per bucket would stay forever (one per client
//! address ever seen). Instead each table is a fixed set of `slots` entries
//! (`keygate.<ns>.rl.<table>.<n>`): a counter hashes (with a secret per-Envoy seed) to
//! [`PROBES`] candidate slots, and a slot that counts nothing in its window is free for any
//! counter. Memory is therefore at most `slots` entries per table, whatever the number of
//! clients. When every candidate slot is held by other counters, the request is counted in
//! the least loaded of them, together with its holder: a counter is then limited at most
//! earlier than its own count alone would, never later.

mod counter;
pub mod fleet;
pub mod headers;
mod limit;

pub use counter::{choose, fits, settles, share_of, standing, Choice, Slot, Standing, RING, SLOT_BYTES, SUBS};
pub use limit::{check_list, counter_name, Limit, LimitCheck, LimitPolicy, Scope, Window, MAX_LIMITS};

use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// Candidate slots per bucket.
pub const PROBES: usize = 4;

/// Shared-data key of the secret that places buckets in slots.
/// The shared-data name of the seed, under the plugin's namespace `ns`.
pub fn seed_key(ns: &str) -> String {
    format!("{ns}rl.seed")
}

/// Bytes of a usable seed.
pub const SEED_BYTES: usize = 16;

/// Where a bucket may be counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Never zero.
    pub fingerprint: u64,
    /// Shared-data keys of the candidate slots, in probe order.
    pub keys: [String; PROBES],
}

/// The table a counter counts in: per-key and per-business counters apart from
/// per-address ones, so a flood of client addresses on public routes cannot crowd out key
/// holders' counters (only keys and businesses admin made create the others).
fn table(counter: &str) -> &'static str {
    if counter.starts_with("key:") || counter.starts_with("biz:") {
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

/// The client a public request is counted as: an IPv4 address as it is, an IPv6 address
/// by its first `v6_prefix_len` bits (a single host usually holds a whole /64), an
/// IPv4-mapped IPv6 address as the IPv4 address. Accepts `ip`, `ip:port`, `[ip]:port` or
/// `[ip]`; anything else (or nothing) is the one shared `unknown` client.
pub fn client_id(address: Option<&str>, v6_prefix_len: u8) -> String {
    match address.and_then(crate::cidr::parse_address) {
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
