//! Per-key usage, batched in the filter and posted to admin (`POST /v1/usage`) off the
//! request path, so `last_used_at` and request counts reach admin without a call per request.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::UnixTime;

/// Most keys one batch carries; beyond that, counts wait for the next flush.
pub const MAX_BATCH_KEYS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUsage {
    pub key_id: String,
    pub count: u64,
    pub last_used_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub usage: Vec<KeyUsage>,
}

#[derive(Debug, Default)]
pub struct UsageBatch {
    keys: HashMap<String, (u64, UnixTime)>,
}

impl UsageBatch {
    pub fn record(&mut self, key_id: &str, now: UnixTime) {
        if let Some((count, last)) = self.keys.get_mut(key_id) {
            *count += 1;
            *last = (*last).max(now);
        } else if self.keys.len() < MAX_BATCH_KEYS {
            self.keys.insert(key_id.to_owned(), (1, now));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Takes everything recorded so far as one report.
    pub fn drain(&mut self) -> UsageReport {
        let usage = self.keys.drain().map(|(key_id, (count, last_used_at))| KeyUsage { key_id, count, last_used_at }).collect();
        UsageReport { usage }
    }

    /// Puts a report that could not be delivered back, so its counts are not lost.
    pub fn restore(&mut self, report: UsageReport) {
        for u in report.usage {
            let entry = self.keys.entry(u.key_id).or_insert((0, 0));
            entry.0 += u.count;
            entry.1 = entry.1.max(u.last_used_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_counts_and_latest_use_and_restores_failed_reports() {
        let mut b = UsageBatch::default();
        b.record("key_a", 10);
        b.record("key_a", 12);
        b.record("key_b", 11);
        let mut report = b.drain();
        report.usage.sort_by(|x, y| x.key_id.cmp(&y.key_id));
        assert_eq!(report.usage, vec![KeyUsage { key_id: "key_a".into(), count: 2, last_used_at: 12 }, KeyUsage { key_id: "key_b".into(), count: 1, last_used_at: 11 }]);
        assert!(b.is_empty());
        b.record("key_a", 20);
        b.restore(report);
        let again = b.drain();
        let a = again.usage.iter().find(|u| u.key_id == "key_a").unwrap();
        assert_eq!((a.count, a.last_used_at), (3, 20));
    }
}
