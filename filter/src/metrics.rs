//! Envoy stats for the filter (shown by Envoy as `wasmcustom.keygate.*`). Counters with the
//! same name are shared by every worker VM; gauges are last-writer-wins.

use keygate_core::decide::{Decision, DenyCode};
use keygate_core::sync::SyncOutcome;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

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
}
