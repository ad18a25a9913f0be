//! Rate limits shared by every worker VM: the counter slots live in Envoy's shared data
//! and are updated with compare-and-swap (core places counters, chooses slots and decides;
//! this only moves the bytes). The fleet's counts reach the same slots through `fleet`.

use keygate_core::decide::{rate_limited, Denial};
use keygate_core::ratelimit::fleet::FleetView;
use keygate_core::ratelimit::{self, headers, Choice, LimitCheck, LimitPolicy, Slot, Standing, PROBES, SEED_BYTES};
use std::hash::{BuildHasher, Hasher};

use crate::host;

/// CAS attempts before giving up under contention; the request is then admitted, since a
/// lost increment under a storm of concurrent requests is better than a spurious 429.
const CAS_ATTEMPTS: usize = 16;

/// What charging a request did: admitted or refused, and the RateLimit headers.
pub struct Charged {
    pub result: Result<(), Denial>,
    pub headers: Vec<(&'static str, String)>,
    /// Counters that got their first admission of a sub-window here (the fleet sync
    /// reports them).
    pub started: Vec<String>,
}

/// A counter's candidate slot as read: where, what, and its CAS token.
struct Read {
    key: String,
    choice: Choice,
    cas: Option<u32>,
}

/// A counter's candidate slots with their CAS tokens, read up to the first that settles
/// where it counts (usually the first: one read).
pub fn probe(placement: &ratelimit::Placement) -> (Vec<Slot>, Vec<Option<u32>>) {
    let mut slots = Vec::with_capacity(PROBES);
    let mut cases = Vec::with_capacity(PROBES);
    for key in &placement.keys {
        let (bytes, cas) = host::shared_get(key);
        let slot = bytes.as_deref().map(Slot::decode).unwrap_or_default();
        slots.push(slot);
        cases.push(cas);
        if ratelimit::settles(placement.fingerprint, &slot) {
            break;
        }
    }
    (slots, cases)
}

fn read(placement: &ratelimit::Placement, check: &LimitCheck, now_ms: u64) -> Option<Read> {
    let (slots, cases) = probe(placement);
    let choice = ratelimit::choose(placement.fingerprint, check.limit.window, &slots, now_ms)?;
    Some(Read { key: placement.keys.get(choice.probe)?.clone(), choice, cas: cases.get(choice.probe).copied().flatten() })
}

/// Charges one request to every limit in `checks` (all must have room) in a table of
/// `policy.counter_slots` counters under the plugin's shared-data namespace `ns`.
pub fn charge(ns: &str, policy: &LimitPolicy, checks: &[LimitCheck], fleet: FleetView, now_ms: u64) -> Charged {
    let seed = seed(ns);
    let placements: Vec<_> = checks.iter().map(|c| ratelimit::place(ns, &seed, &c.counter(), policy.counter_slots)).collect();
    let share = |check: &LimitCheck| fleet.share(policy, check.limit, now_ms);
    let standing = |check: &LimitCheck, slot: &Slot| ratelimit::standing(check.policy_name(), slot, check.limit, share(check), now_ms);
    let mut standings: Vec<Standing> = Vec::with_capacity(checks.len());
    let mut started = Vec::new();
    let mut done = 0;
    for _ in 0..CAS_ATTEMPTS {
        let reads: Vec<Option<Read>> = checks.iter().zip(&placements).skip(done).map(|(c, p)| read(p, c, now_ms)).collect();
        // The request fits once every limit has room: wait for the last of them.
        let refusal = checks
            .iter()
            .skip(done)
            .zip(&reads)
            .filter_map(|(check, read)| ratelimit::fits(&read.as_ref()?.choice.slot, check.limit, share(check), now_ms).err())
            .max();
        if let Some(retry_after) = refusal {
            let rest = checks.iter().skip(done).zip(&reads).filter_map(|(c, r)| r.as_ref().map(|r| standing(c, &r.choice.slot)));
            standings.extend(rest);
            return Charged { result: Err(rate_limited(retry_after)), headers: headers_of(policy, &standings), started };
        }
        let mut lost_race = false;
        for (check, read) in checks.iter().skip(done).zip(reads) {
            // No slot to count in (not reachable with PROBES candidates): refuse nothing.
            let Some(read) = read else {
                done += 1;
                continue;
            };
            let mut slot = read.choice.slot;
            slot.charge();
            // A slot never written has no CAS token, so two workers creating it at once
            // can lose one count: once per slot in the life of the Envoy.
            if !host::shared_set(&read.key, &slot.encode(), read.cas) {
                lost_race = true;
                break;
            }
            if read.choice.new_sub {
                started.push(check.counter());
            }
            standings.push(standing(check, &slot));
            done += 1;
        }
        if !lost_race {
            return Charged { result: Ok(()), headers: headers_of(policy, &standings), started };
        }
    }
    log::debug!("rate-limit counter under contention; request admitted");
    Charged { result: Ok(()), headers: headers_of(policy, &standings), started }
}

fn headers_of(policy: &LimitPolicy, standings: &[Standing]) -> Vec<(&'static str, String)> {
    if policy.headers {
        headers::headers(standings)
    } else {
        Vec::new()
    }
}

/// The secret that places counters in slots, the same for every worker VM: the first VM
/// to need it stores a random one. Read on every charge, so if two VMs race to store it,
/// both use the survivor from then on.
pub fn seed(ns: &str) -> Vec<u8> {
    let key = ratelimit::seed_key(ns);
    match host::shared_get(&key) {
        (Some(seed), _) if seed.len() == SEED_BYTES => seed,
        (_, cas) => {
            // RandomState is seeded from WASI's random_get.
            let random = || std::collections::hash_map::RandomState::new().build_hasher().finish();
            let mut fresh = Vec::with_capacity(SEED_BYTES);
            fresh.extend_from_slice(&random().to_le_bytes());
            fresh.extend_from_slice(&random().to_le_bytes());
            host::shared_set(&key, &fresh, cas);
            match host::shared_get(&key) {
                (Some(seed), _) if seed.len() == SEED_BYTES => seed,
                _ => fresh,
            }
        }
    }
}

/// This Envoy's name in the fleet's counts: derived from its seed (so every worker VM
/// agrees, and it changes when the Envoy restarts), never revealing the seed.
pub fn proxy_id(ns: &str) -> String {
    ratelimit::fleet::proxy_id(&seed(ns))
}
