//! Envoy stats for the filter (shown by Envoy as `wasmcustom.keygate.*`). Counters with the
//! same name are shared by every worker VM; gauges are last-writer-wins.

use keygate_core::decide::{Decision, DenyCode};
use keygate_core::hold::Admission;
use keygate_core::sync::SyncOutcome;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::Cell;

#[derive(Debug, Default)]
pub struct Metrics {
    allowed: Option<u32>,
    shadow_denied: Option<u32>,
    denied: Vec<(DenyCode, Option<u32>)>,
    sync_failures: Option<u32>,
    sync_applied: Option<u32>,
    snapshot_version: Option<u32>,
    snapshot_keys: Option<u32>,
    snapshot_age: Option<u32>,
    usage_dropped: Option<u32>,
    /// Exchanges of rate-limit counts with admin: answered, and failed.
    limit_exchanges: Option<u32>,
    limit_exchange_failures: Option<u32>,
    hold: HoldMetrics,
}

/// `keygate.hold.*`: requests held for a key or signing key not yet in the snapshot.
#[derive(Debug, Default)]
struct HoldMetrics {
    held: Option<u32>,
    released: Option<u32>,
    timed_out: Option<u32>,
    refused_full: Option<u32>,
    negative_hits: Option<u32>,
    /// A gauge every VM adds its own changes to, so Envoy shows the sum over the VMs.
    waiting: Option<u32>,
    /// What this VM has added to `waiting` so far.
    waiting_here: Cell<i64>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).map_err(|s| log::warn!("cannot define metric {name}: {s:?}")).ok()
}

fn add(id: Option<u32>, by: i64) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, by);
    }
}

fn set(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            allowed: define(MetricType::Counter, "keygate.allowed"),
            shadow_denied: define(MetricType::Counter, "keygate.shadow_denied"),
            denied: DenyCode::ALL.iter().map(|c| (*c, define(MetricType::Counter, &format!("keygate.denied.{}", c.as_str())))).collect(),
            sync_failures: define(MetricType::Counter, "keygate.sync.failures"),
            sync_applied: define(MetricType::Counter, "keygate.sync.applied"),
            snapshot_version: define(MetricType::Gauge, "keygate.snapshot.version"),
            snapshot_keys: define(MetricType::Gauge, "keygate.snapshot.keys"),
            snapshot_age: define(MetricType::Gauge, "keygate.snapshot.age_seconds"),
            usage_dropped: define(MetricType::Counter, "keygate.usage.dropped"),
            limit_exchanges: define(MetricType::Counter, "keygate.limits.exchanges"),
            limit_exchange_failures: define(MetricType::Counter, "keygate.limits.exchange_failures"),
            hold: HoldMetrics {
                held: define(MetricType::Counter, "keygate.hold.held"),
                released: define(MetricType::Counter, "keygate.hold.released"),
                timed_out: define(MetricType::Counter, "keygate.hold.timed_out"),
                refused_full: define(MetricType::Counter, "keygate.hold.refused_full"),
                negative_hits: define(MetricType::Counter, "keygate.hold.negative_hits"),
                waiting: define(MetricType::Gauge, "keygate.hold.waiting"),
                waiting_here: Cell::new(0),
            },
        }
    }

    pub fn decision(&self, decision: &Decision) {
        match decision {
            Decision::Allow(a) if a.shadow_denial.is_some() => add(self.shadow_denied, 1),
            Decision::Allow(_) => add(self.allowed, 1),
            Decision::Deny(d) => {
                let id = self.denied.iter().find(|(c, _)| *c == d.code).and_then(|(_, id)| *id);
                add(id, 1);
            }
        }
    }

    pub fn sync(&self, outcome: &SyncOutcome) {
        match outcome {
            SyncOutcome::Applied { .. } => add(self.sync_applied, 1),
            SyncOutcome::Failed(_) => add(self.sync_failures, 1),
            SyncOutcome::Unchanged { .. } | SyncOutcome::Resync => {}
        }
    }

    /// The version and key count the shared buckets now hold.
    pub fn snapshot(&self, version: u64, keys: u64) {
        set(self.snapshot_version, version);
        set(self.snapshot_keys, keys);
    }

    pub fn snapshot_age(&self, seconds: u64) {
        set(self.snapshot_age, seconds);
    }

    /// Keys whose usage admin refused for good (and will not be sent again).
    pub fn usage_dropped(&self, keys: usize) {
        add(self.usage_dropped, i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// An exchange of rate-limit counts with admin: answered or not.
    pub fn limit_exchange(&self, answered: bool) {
        add(if answered { self.limit_exchanges } else { self.limit_exchange_failures }, 1);
    }

    /// What became of a pending request: held, or refused at once (and why).
    pub fn admission(&self, admission: Admission) {
        match admission {
            Admission::Held => add(self.hold.held, 1),
            Admission::NegativeHit => add(self.hold.negative_hits, 1),
            Admission::Full => add(self.hold.refused_full, 1),
            Admission::Off => {}
        }
    }

    /// A held request decided before its time was up.
    pub fn released(&self) {
        add(self.hold.released, 1);
    }

    /// A held request refused when its time was up.
    pub fn timed_out(&self) {
        add(self.hold.timed_out, 1);
    }

    /// This VM now holds `count` requests.
    pub fn waiting(&self, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let change = count - self.hold.waiting_here.replace(count);
        if change != 0 {
            add(self.hold.waiting, change);
        }
    }
}
