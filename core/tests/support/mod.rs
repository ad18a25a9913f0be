//! Fixtures shared by core's test binaries: the clock, keys and their snapshot entries,
//! request headers, and reading a decision. Each binary uses only a part of this.
#![allow(dead_code)]

pub mod world;

use keygate_core::snapshot::KeyEntry;
use keygate_core::{Allowed, ApiKey, Decision, DenyCode, KeyKind, Mode};

pub const NOW: u64 = 1_800_000_000;
pub const BIZ: &str = "biz_acme";

/// A live sk key, the same on every run.
pub fn live_sk() -> ApiKey {
    ApiKey::generate(KeyKind::Sk, Mode::Live, (0..200u8).map(|i| i.wrapping_mul(31).wrapping_add(5))).unwrap()
}

/// The snapshot entry of an active, unscoped, unexpiring `key`.
pub fn entry(key: &ApiKey, id: &str, business: &str) -> KeyEntry {
    KeyEntry {
        hash: key.hash(),
        id: id.into(),
        business: business.into(),
        kind: key.kind(),
        mode: key.mode(),
        scopes: vec![],
        expires_at: None,
        active: true,
        credits: None,
        allowed_ips: vec![],
        rate_limits: None,
    }
}

/// Headers as `RequestView` takes them.
pub fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The three credentials: `token` as the bearer, `raw_key` and `business`.
pub fn all_three(token: &str, raw_key: &str, business: &str) -> Vec<(String, String)> {
    owned(&[("authorization", &format!("Bearer {token}")), ("secret_key", raw_key), ("businessid", business)])
}

/// The status and code of a refusal; panics on an allowed request.
pub fn denied(d: &Decision) -> (u16, DenyCode) {
    match d {
        Decision::Deny(denial) => (denial.status(), denial.code),
        Decision::Allow(a) => panic!("expected a denial, got {a:?}"),
    }
}

/// What an allowed request becomes; panics on a refusal.
pub fn allowed(d: Decision) -> Allowed {
    match d {
        Decision::Allow(a) => a,
        Decision::Deny(denial) => panic!("expected allow, got {denial:?}"),
    }
}
