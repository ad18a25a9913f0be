//! Rate limits shared by every worker VM: the window for a bucket lives in Envoy's shared
//! data and is updated with compare-and-swap (core decides; this only moves the bytes).

use keygate_core::decide::{rate_limited, Denial};
use keygate_core::ratelimit::{Admission, Window};
use keygate_core::RateLimitTarget;

use crate::host;
use crate::shared;

/// CAS attempts before giving up under contention; the request is then admitted, since a
/// lost increment under a storm of concurrent requests is better than a spurious 429.
const CAS_ATTEMPTS: usize = 16;

pub fn charge(ns: &str, target: &RateLimitTarget, now: u64) -> Result<(), Denial> {
    let key = shared::rate_limit_name(ns, &target.bucket);
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = host::shared_get(&key);
        let window = bytes.as_deref().map(Window::decode).unwrap_or_default();
        match window.admit(target.per_hour, now) {
            Admission::Reject { retry_after } => return Err(rate_limited(retry_after)),
            Admission::Admit { next } if host::shared_set(&key, &next.encode(), cas) => return Ok(()),
            Admission::Admit { .. } => continue,
        }
    }
    log::debug!("rate-limit counter under contention; request admitted");
    Ok(())
}
