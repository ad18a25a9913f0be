//! Per-key usage, batched in the filter and posted to admin (`POST /v1/usage`) off the
//! request path, so `last_used_at` and request counts reach admin without a call per request.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::UnixTime;

/// Most distinct keys one VM's batch holds; a request for a further key is not counted
/// (the filter flushes early, from half this, so that takes thousands of new keys within
/// one 100 ms tick). Also the most keys admin takes in one report.
pub const MAX_BATCH_KEYS: usize = 10_000;

/// Largest `POST /v1/usage` body, bytes: admin's limit for the route, and what the filter
/// splits a batch to fit. A full batch of admin-issued key ids (about 80 bytes an item)
/// fits in one body.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// `{"usage":[` and `]}` around the items.
const REPORT_FRAME_BYTES: usize = r#"{"usage":[]}"#.len();

/// One `POST /v1/usage` body and the items it carries (to put back if it is not delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBody {
    pub body: Vec<u8>,
    pub items: Vec<KeyUsage>,
}

/// Encodes `usage` as report bodies of at most `max_bytes` bytes and [`MAX_BATCH_KEYS`]
/// items each, in order. An item that could never fit in a body on its own (or be encoded)
/// is returned apart, for the caller to drop: sending it would fail forever.
pub fn split_report(usage: Vec<KeyUsage>, max_bytes: usize) -> (Vec<ReportBody>, Vec<KeyUsage>) {
    let mut bodies = Vec::new();
    let mut unsendable = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut items: Vec<KeyUsage> = Vec::new();
    for item in usage {
        let Ok(encoded) = serde_json::to_vec(&item) else {
            unsendable.push(item);
            continue;
        };
        if REPORT_FRAME_BYTES + encoded.len() > max_bytes {
            unsendable.push(item);
            continue;
        }
        // The comma before this item, if any, and the closing `]}`.
        let separator = usize::from(!items.is_empty());
        let full = items.len() >= MAX_BATCH_KEYS || body.len() + separator + encoded.len() + 2 > max_bytes;
        if full && !items.is_empty() {
            body.extend_from_slice(b"]}");
            bodies.push(ReportBody { body: std::mem::take(&mut body), items: std::mem::take(&mut items) });
        }
        if items.is_empty() {
            body.extend_from_slice(br#"{"usage":["#);
        } else {
            body.push(b',');
        }
        body.extend_from_slice(&encoded);
        items.push(item);
    }
    if !items.is_empty() {
        body.extend_from_slice(b"]}");
        bodies.push(ReportBody { body, items });
    }
    (bodies, unsendable)
}

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

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Takes everything recorded so far as one report.
    pub fn drain(&mut self) -> UsageReport {
        let usage = self.keys.drain().map(|(key_id, (count, last_used_at))| KeyUsage { key_id, count, last_used_at }).collect();
        UsageReport { usage }
    }

    /// Puts items that could not be delivered back, so their counts are not lost.
    pub fn restore(&mut self, usage: Vec<KeyUsage>) {
        for u in usage {
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
        assert_eq!(
            report.usage,
            vec![
                KeyUsage { key_id: "key_a".into(), count: 2, last_used_at: 12 },
                KeyUsage { key_id: "key_b".into(), count: 1, last_used_at: 11 }
            ]
        );
        assert!(b.is_empty());
        b.record("key_a", 20);
        b.restore(report.usage);
        let again = b.drain();
        let a = again.usage.iter().find(|u| u.key_id == "key_a").unwrap();
        assert_eq!((a.count, a.last_used_at), (3, 20));
    }

    fn items(n: usize) -> Vec<KeyUsage> {
        (0..n).map(|i| KeyUsage { key_id: format!("key_{i:016}"), count: i as u64 + 1, last_used_at: 1_700_000_000 + i as u64 }).collect()
    }

    #[test]
    fn split_bodies_are_reports_under_the_limit_holding_every_item_once() {
        for (n, limit) in [(0, 1000), (1, 1000), (3000, 65_536), (10_000, 65_536), (10_000, MAX_REPORT_BYTES), (50, 200), (7, 90)] {
            let all = items(n);
            let (bodies, unsendable) = split_report(all.clone(), limit);
            assert!(unsendable.is_empty(), "n={n} limit={limit}");
            let mut seen = Vec::new();
            for b in &bodies {
                assert!(b.body.len() <= limit, "n={n} limit={limit}: a body of {} bytes", b.body.len());
                assert!(!b.items.is_empty() && b.items.len() <= MAX_BATCH_KEYS);
                let parsed: UsageReport = serde_json::from_slice(&b.body).unwrap();
                assert_eq!(parsed.usage, b.items, "a body carries exactly its items");
                seen.extend(parsed.usage);
            }
            assert_eq!(seen, all, "n={n} limit={limit}: every item once, in order");
        }
        // 3 000 keys no longer fit in one 64 KiB body: several, each nearly full.
        let (bodies, _) = split_report(items(3000), 65_536);
        assert!(bodies.len() >= 3 && bodies[..bodies.len() - 1].iter().all(|b| b.body.len() > 65_536 - 100), "{}", bodies.len());
        // A full batch of admin-issued key ids is one body at the route's limit.
        assert_eq!(split_report(items(MAX_BATCH_KEYS), MAX_REPORT_BYTES).0.len(), 1);
    }

    #[test]
    fn an_item_too_large_for_any_body_is_set_apart() {
        let mut all = items(3);
        all.insert(1, KeyUsage { key_id: "k".repeat(500), count: 1, last_used_at: 1 });
        let (bodies, unsendable) = split_report(all.clone(), 200);
        assert_eq!(unsendable, vec![all[1].clone()]);
        let sent: Vec<KeyUsage> = bodies.into_iter().flat_map(|b| b.items).collect();
        assert_eq!(sent, vec![all[0].clone(), all[2].clone(), all[3].clone()]);
        let (bodies, unsendable) = split_report(all, 10);
        assert!(bodies.is_empty());
        assert_eq!(unsendable.len(), 4);
    }
}
