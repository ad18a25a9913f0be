//! Rate limits shared by every worker VM: the counter slots live in Envoy's shared data
//! and are updated with compare-and-swap (core places buckets and decides; this only
//! moves the bytes).

use keygate_core::decide::{rate_limited, Denial};
use keygate_core::ratelimit::{self, Admission, Slot, PROBES, SEED_BYTES};
use keygate_core::RateLimitTarget;
use std::hash::{BuildHasher, Hasher};

use crate::host;

/// CAS attempts before giving up under contention; the request is then admitted, since a
/// lost increment under a storm of concurrent requests is better than a spurious 429.
const CAS_ATTEMPTS: usize = 16;

/// Charges one request to `target` in a table of `slots` counters under the plugin's
/// shared-data namespace `ns`.
pub fn charge(ns: &str, target: &RateLimitTarget, now: u64, slots: u32) -> Result<(), Denial> {
    let placement = ratelimit::place(ns, &seed(ns), &target.bucket, slots);
    for _ in 0..CAS_ATTEMPTS {
        // Usually the first candidate settles it: one read.
        let mut slots = Vec::with_capacity(PROBES);
        let mut cases = Vec::with_capacity(PROBES);
        for key in &placement.keys {
            let (bytes, cas) = host::shared_get(key);
            let slot = bytes.as_deref().map(Slot::decode).unwrap_or_default();
            slots.push(slot);
            cases.push(cas);
            if ratelimit::settles(placement.fingerprint, &slot, now) {
                break;
            }
        }
        match ratelimit::admit(placement.fingerprint, &slots, target.per_hour, now) {
            Admission::Reject { retry_after } => return Err(rate_limited(retry_after)),
            Admission::Admit { probe, next } => {
                // A slot never written has no CAS token, so two workers creating it at once
                // can lose one count: once per slot in the life of the Envoy.
                let (Some(key), Some(cas)) = (placement.keys.get(probe), cases.get(probe)) else { return Ok(()) };
                if host::shared_set(key, &next.encode(), *cas) {
                    return Ok(());
                }
            }
        }
    }
    log::debug!("rate-limit counter under contention; request admitted");
    Ok(())
}

/// The secret that places buckets in slots, the same for every worker VM: the first VM
/// to need it stores a random one. Read on every charge, so if two VMs race to store it,
/// both use the survivor from then on.
fn seed(ns: &str) -> Vec<u8> {
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
