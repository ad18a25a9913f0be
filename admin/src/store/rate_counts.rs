//! Fleet-wide rate-limit counts (`POST /v1/rate-counts`): every Envoy reports its own
//! admitted requests per counter (bucket, window) and sub-window, and learns the sum of
//! every other Envoy's for the same sub-windows.
//!
//! Soft state, never in the changelog: the reports carry absolute counts, so what is held
//! is the max of what each proxy said (a retry or a reordered report changes nothing), and
//! an admin that lost it all rebuilds it from the next round of reports. Sub-windows are
//! matched by their absolute index (`t_ms / (window_ms / 10)`, the same on every Envoy),
//! never by their position in a report.
//!
//! [`RateCounts`] is the one interface; [`LocalRateCounts`] holds the counts in memory (a
//! store only one process opens: sled), the PostgreSQL engine in an UNLOGGED table every
//! replica on the database shares (`pg_engine/rate_counts.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Store, StoreError};

/// Counts per counter in a report and an answer: sub-windows head-10 ..= head.
pub const SPAN: usize = keygate_core::ratelimit::RING;
/// A proxy not heard for this long no longer counts among the `proxies` of an answer.
pub const PROXY_TTL_MS: u64 = 60_000;
/// The largest count taken or answered (JSON's exact integers; sums are clamped to it).
pub const MAX_COUNT: u64 = (1 << 53) - 1;
/// Sub-windows kept beyond the window itself, on either side of admin's clock: one behind
/// (a request is remembered between W and W + one sub-window), and a whole window ahead
/// for proxies whose clock runs ahead of admin's (their counts are kept from the start).
const KEPT_BEHIND: u64 = SPAN as u64;
const KEPT_AHEAD: u64 = SPAN as u64;
/// How often expired counts are dropped (at most; from a report).
pub const PURGE_EVERY_MS: u64 = 10_000;
/// The in-memory table's bound, in (proxy, bucket, window) rows (each holds at most
/// `KEPT_BEHIND + KEPT_AHEAD + 1` sub-window counts, a few hundred bytes).
pub const MAX_LOCAL_ROWS: usize = 1_000_000;

/// The windows a limit may have: the filter's own (one definition of the sub-window grid).
pub use keygate_core::ratelimit::Window;

/// Which sub-windows of a window admin keeps, by its clock.
pub trait Kept {
    /// Its place in [`Window::ALL`].
    fn index(self) -> usize;
    /// The oldest sub-window still kept at `now_ms`: older ones are out of every proxy's
    /// window by admin's clock.
    fn oldest_kept(self, now_ms: u64) -> u64;
    /// The newest sub-window taken at `now_ms`: later ones come from a clock far ahead.
    fn newest_kept(self, now_ms: u64) -> u64;
}

impl Kept for Window {
    fn index(self) -> usize {
        self as usize
    }

    fn oldest_kept(self, now_ms: u64) -> u64 {
        self.sub_index(now_ms).saturating_sub(KEPT_BEHIND)
    }

    fn newest_kept(self, now_ms: u64) -> u64 {
        self.sub_index(now_ms).saturating_add(KEPT_AHEAD)
    }
}

/// One counter of a report, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterCounts {
    pub bucket: String,
    pub window: Window,
    /// The sub-window of `counts`' last entry (at least `SPAN - 1`).
    pub head: u64,
    /// Sub-windows head-10 ..= head, oldest first.
    pub counts: [u64; SPAN],
}

impl CounterCounts {
    /// The sub-window of `counts[i]`.
    pub fn sub(&self, i: usize) -> u64 {
        (self.head + i as u64).saturating_sub(SPAN as u64 - 1)
    }
}

/// One proxy's report, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateReport {
    pub proxy: String,
    pub counters: Vec<CounterCounts>,
}

/// What a report is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateAnswer {
    /// Proxies heard in the last [`PROXY_TTL_MS`], the reporter included.
    pub proxies: u64,
    /// Per counter of the report, in its order: per sub-window, the sum of every other
    /// proxy's count.
    pub others: Vec<[u64; SPAN]>,
}

/// Where the counts are kept.
pub trait RateCounts: Send + Sync {
    /// Keeps `report`'s counts (each the max of what was held and what was sent) and
    /// answers the others' sums for its counters' sub-windows, at `now_ms` (admin's clock).
    fn exchange(&self, report: &RateReport, now_ms: u64) -> Result<RateAnswer, StoreError>;
}

/// A counter as the store keys it.
pub(super) type CounterKey<'a> = (&'a str, Window);

/// The counts of `report` worth keeping at `now_ms`, one per (counter, sub-window) (of a
/// counter given twice, the larger), in key order: zeros change nothing under a max, and
/// sub-windows outside what is kept would only be dropped.
pub(super) fn counts_to_keep(report: &RateReport, now_ms: u64) -> BTreeMap<(CounterKey<'_>, u64), u64> {
    let mut kept = BTreeMap::new();
    for counter in &report.counters {
        let (oldest, newest) = (counter.window.oldest_kept(now_ms), counter.window.newest_kept(now_ms));
        for (i, &count) in counter.counts.iter().enumerate() {
            let sub = counter.sub(i);
            if count > 0 && (oldest..=newest).contains(&sub) {
                let held = kept.entry(((counter.bucket.as_str(), counter.window), sub)).or_insert(0);
                *held = count.max(*held);
            }
        }
    }
    kept
}

/// The sub-windows whose others' counts `report` asks for at `now_ms`, per counter (one
/// span for a counter given twice), expired ones left out: first and last, inclusive.
pub(super) fn spans_to_read(report: &RateReport, now_ms: u64) -> BTreeMap<CounterKey<'_>, (u64, u64)> {
    let mut spans: BTreeMap<CounterKey<'_>, (u64, u64)> = BTreeMap::new();
    for counter in &report.counters {
        let first = counter.sub(0).max(counter.window.oldest_kept(now_ms));
        let last = counter.head;
        if first > last {
            continue;
        }
        let span = spans.entry((counter.bucket.as_str(), counter.window)).or_insert((first, last));
        *span = (span.0.min(first), span.1.max(last));
    }
    spans
}

/// The answer's `others`, from the others' sums per (counter, sub-window); what a sum is
/// missing for is 0.
pub(super) fn others_from(report: &RateReport, sums: &HashMap<(CounterKey<'_>, u64), u64>) -> Vec<[u64; SPAN]> {
    report
        .counters
        .iter()
        .map(|counter| {
            let mut others = [0; SPAN];
            for (i, other) in others.iter_mut().enumerate() {
                *other = sums.get(&((counter.bucket.as_str(), counter.window), counter.sub(i))).copied().unwrap_or(0).min(MAX_COUNT);
            }
            others
        })
        .collect()
}

/// One proxy's counts for one counter: (sub-window, count), oldest first.
type SubCounts = Vec<(u64, u64)>;

/// The counts in this process's memory, for a store no other process opens. Bounded: at
/// most [`MAX_LOCAL_ROWS`] (proxy, counter) rows. When full, a report's counts for rows
/// not yet held are refused (not kept; the answer is still given) rather than evicting
/// held ones: held counts are requests already admitted, and the table drains by itself
/// as the windows pass (a warning says so, at most once a minute).
#[derive(Debug, Default)]
pub struct LocalRateCounts {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Per window (by [`Window::index`]), per bucket, per proxy: looked up by the
    /// report's `&str` without copying it.
    counters: [HashMap<String, HashMap<Arc<str>, SubCounts>>; 4],
    /// How many (proxy, counter) rows `counters` holds.
    rows: usize,
    /// When each proxy last reported.
    heard: HashMap<Arc<str>, u64>,
    purged_at_ms: u64,
    warned_full_at_ms: Option<u64>,
}

/// Keeps the larger of what is held for `sub` and `count`; drops what expired before `oldest`.
fn merge(subs: &mut SubCounts, oldest: u64, sub: u64, count: u64) {
    subs.retain(|&(s, _)| s >= oldest);
    match subs.binary_search_by_key(&sub, |&(s, _)| s) {
        Ok(i) => subs[i].1 = subs[i].1.max(count),
        Err(i) => subs.insert(i, (sub, count)),
    }
}

impl Table {
    /// Drops expired sub-windows, the rows and counters left empty, and proxies not heard
    /// for [`PROXY_TTL_MS`]. It walks every row under the lock, so it runs at most every
    /// [`PURGE_EVERY_MS`] (the rows a report touches lose their expired counts as it merges).
    fn purge(&mut self, now_ms: u64) {
        let mut rows = 0;
        for window in Window::ALL {
            let oldest = window.oldest_kept(now_ms);
            self.counters[window.index()].retain(|_, proxies| {
                proxies.retain(|_, subs| {
                    subs.retain(|&(s, _)| s >= oldest);
                    !subs.is_empty()
                });
                rows += proxies.len();
                !proxies.is_empty()
            });
        }
        self.rows = rows;
        self.heard.retain(|_, &mut at| now_ms.saturating_sub(at) < PROXY_TTL_MS);
        self.purged_at_ms = now_ms;
    }
}

impl RateCounts for LocalRateCounts {
    fn exchange(&self, report: &RateReport, now_ms: u64) -> Result<RateAnswer, StoreError> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if now_ms.saturating_sub(table.purged_at_ms) >= PURGE_EVERY_MS {
            table.purge(now_ms);
        }
        // One shared name for every row this proxy has.
        let proxy: Arc<str> =
            table.heard.get_key_value(report.proxy.as_str()).map_or_else(|| Arc::from(report.proxy.as_str()), |(p, _)| p.clone());
        table.heard.insert(proxy.clone(), now_ms);

        let mut refused = 0usize;
        for (((bucket, window), sub), count) in counts_to_keep(report, now_ms) {
            let Table { counters, rows, .. } = &mut *table;
            let full = *rows >= MAX_LOCAL_ROWS;
            let buckets = &mut counters[window.index()];
            let proxies = match buckets.get_mut(bucket) {
                Some(proxies) => proxies,
                None if full => {
                    refused += 1;
                    continue;
                }
                None => buckets.entry(bucket.to_owned()).or_default(),
            };
            let subs = match proxies.get_mut(&proxy) {
                Some(subs) => subs,
                None if full => {
                    refused += 1;
                    continue;
                }
                None => {
                    *rows += 1;
                    proxies.entry(proxy.clone()).or_default()
                }
            };
            merge(subs, window.oldest_kept(now_ms), sub, count);
        }
        if refused > 0 && table.warned_full_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= PROXY_TTL_MS) {
            table.warned_full_at_ms = Some(now_ms);
            tracing::warn!(
                rows = table.rows,
                refused,
                "the rate-count table is full: counts for new counters are not shared until old ones expire"
            );
        }

        let mut sums = HashMap::new();
        for ((bucket, window), (first, last)) in spans_to_read(report, now_ms) {
            let Some(proxies) = table.counters[window.index()].get(bucket) else { continue };
            for (other, subs) in proxies {
                if **other == *report.proxy {
                    continue;
                }
                for &(sub, count) in subs.iter().filter(|(s, _)| (first..=last).contains(s)) {
                    let sum: &mut u64 = sums.entry(((bucket, window), sub)).or_insert(0);
                    *sum = sum.saturating_add(count);
                }
            }
        }
        let proxies = table.heard.values().filter(|&&at| now_ms.saturating_sub(at) < PROXY_TTL_MS).count();
        Ok(RateAnswer { proxies: proxies.max(1) as u64, others: others_from(report, &sums) })
    }
}

impl Store {
    /// Where the rate-limit counts are kept: the table replicas share, or this process's
    /// memory when no other process opens the store.
    pub fn rate_counts(&self) -> &dyn RateCounts {
        self.inner.engine.shared_rate_counts().unwrap_or(&self.inner.local_rate_counts)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// 2024-01-01T00:00:00Z: a plausible now.
    pub(crate) const NOW_MS: u64 = 1_704_067_200_000;

    pub(crate) fn counter(bucket: &str, window: Window, head: u64, counts: [u64; SPAN]) -> CounterCounts {
        CounterCounts { bucket: bucket.to_owned(), window, head, counts }
    }

    pub(crate) fn report(proxy: &str, counters: Vec<CounterCounts>) -> RateReport {
        RateReport { proxy: proxy.to_owned(), counters }
    }

    /// `values` at the end of a span, zeros before.
    pub(crate) fn tail(values: &[u64]) -> [u64; SPAN] {
        let mut counts = [0; SPAN];
        counts[SPAN - values.len()..].copy_from_slice(values);
        counts
    }

    /// The aggregation rules, run against any [`RateCounts`] (the PostgreSQL tests run them
    /// over a real database).
    pub(crate) fn check_aggregation(counts: &dyn RateCounts) {
        let w = Window::Hour;
        let head = w.sub_index(NOW_MS);
        let bucket = "key:key_abc";

        // Alone: nobody else's counts.
        let a = counts.exchange(&report("proxy-a", vec![counter(bucket, w, head, tail(&[3, 5]))]), NOW_MS).unwrap();
        assert_eq!(a, RateAnswer { proxies: 1, others: vec![[0; SPAN]] });

        // B sees A's, not its own.
        let b = counts.exchange(&report("proxy-b", vec![counter(bucket, w, head, tail(&[1, 0, 2]))]), NOW_MS).unwrap();
        assert_eq!(b, RateAnswer { proxies: 2, others: vec![tail(&[3, 5])] });

        // A sees B's; an older, smaller report from A (a retry, a reorder) changes nothing.
        let stale = report("proxy-a", vec![counter(bucket, w, head, tail(&[1, 1]))]);
        let a = counts.exchange(&stale, NOW_MS).unwrap();
        assert_eq!(a.others, vec![tail(&[1, 0, 2])]);
        let c = counts.exchange(&report("proxy-c", vec![counter(bucket, w, head, [0; SPAN])]), NOW_MS).unwrap();
        assert_eq!(c, RateAnswer { proxies: 3, others: vec![tail(&[1, 3, 7])] }, "A's 3 and 5 held, B's added");

        // The same report again: the same answer (max-merge is idempotent).
        let again = counts.exchange(&report("proxy-c", vec![counter(bucket, w, head, [0; SPAN])]), NOW_MS).unwrap();
        assert_eq!(again, c);

        // A head one sub-window ahead lines up by absolute index: D's span starts one later.
        let d = counts.exchange(&report("proxy-d", vec![counter(bucket, w, head + 1, tail(&[7]))]), NOW_MS).unwrap();
        assert_eq!(d.others, vec![tail(&[1, 3, 7, 0])]);
        let a = counts.exchange(&report("proxy-a", vec![counter(bucket, w, head, [0; SPAN])]), NOW_MS).unwrap();
        assert_eq!(a.others, vec![tail(&[1, 0, 2])], "D's count is in a sub-window after A's head");
        let a = counts.exchange(&report("proxy-a", vec![counter(bucket, w, head + 1, [0; SPAN])]), NOW_MS).unwrap();
        assert_eq!(a.others, vec![tail(&[1, 0, 2, 7])]);

        // Other counters, another window of the same bucket, are apart; a counter given
        // twice is answered twice.
        let other = counter(bucket, Window::Minute, Window::Minute.sub_index(NOW_MS), tail(&[9]));
        let e = counts.exchange(&report("proxy-e", vec![other.clone(), counter("biz:biz_1", w, head, tail(&[4]))]), NOW_MS).unwrap();
        assert_eq!(e.others, vec![[0; SPAN], [0; SPAN]]);
        let f = counts.exchange(&report("proxy-f", vec![other.clone(), other]), NOW_MS).unwrap();
        assert_eq!(f.others, vec![tail(&[9]), tail(&[9])]);
        assert_eq!(f.proxies, 6);

        // A heartbeat counts its proxy.
        let g = counts.exchange(&report("proxy-g", vec![]), NOW_MS).unwrap();
        assert_eq!(g, RateAnswer { proxies: 7, others: vec![] });
    }

    /// Counts expire one window and one sub-window after their sub-window ends, by admin's
    /// clock; counts far from admin's clock are not kept; proxies stop counting a minute
    /// after their last report.
    pub(crate) fn check_expiry(counts: &dyn RateCounts) {
        let w = Window::Second;
        let head = w.sub_index(NOW_MS);
        let bucket = "ip:192.0.2.1";
        let later = |subs: u64| NOW_MS + subs * w.sub_millis();
        let zeros_at = |subs: u64| counter(bucket, w, head + subs, [0; SPAN]);
        counts.exchange(&report("proxy-a", vec![counter(bucket, w, head, tail(&[2, 3]))]), NOW_MS).unwrap();
        // Ten sub-windows on, B's span covers both (A's older one ended a window ago).
        let b = counts.exchange(&report("proxy-b", vec![zeros_at(9)]), later(10)).unwrap();
        assert_eq!(b.others, vec![[2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]]);
        // A window and a sub-window after it ended, the older one is gone; then both.
        let b = counts.exchange(&report("proxy-b", vec![zeros_at(9)]), later(11)).unwrap();
        assert_eq!(b.others, vec![[0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]]);
        let b = counts.exchange(&report("proxy-b", vec![zeros_at(9)]), later(12)).unwrap();
        assert_eq!(b.others, vec![[0; SPAN]]);
        // Counts more than a window ahead of admin's clock, or already expired, are not kept.
        let ahead = counter(bucket, w, head + 40, tail(&[5]));
        let behind = counter(bucket, w, head, tail(&[4]));
        let now = counter(bucket, w, head + 12, tail(&[6]));
        counts.exchange(&report("proxy-c", vec![ahead.clone(), behind, now]), later(12)).unwrap();
        let b = counts.exchange(&report("proxy-b", vec![ahead, zeros_at(12)]), later(12)).unwrap();
        assert_eq!(b.others, vec![[0; SPAN], tail(&[6])]);
        assert_eq!(b.proxies, 3);
        // A minute without a report: only the reporter is counted.
        let b = counts.exchange(&report("proxy-b", vec![]), later(12) + PROXY_TTL_MS).unwrap();
        assert_eq!(b.proxies, 1);
    }

    #[test]
    fn others_exclude_the_reporter_and_merge_by_max_in_memory() {
        check_aggregation(&LocalRateCounts::default());
    }

    #[test]
    fn counts_expire_in_memory() {
        check_expiry(&LocalRateCounts::default());
    }

    #[test]
    fn sub_windows_are_absolute() {
        assert_eq!(Window::from_millis(60_000), Some(Window::Minute));
        assert_eq!(Window::from_millis(30_000), None);
        assert_eq!(Window::Day.sub_millis(), 8_640_000);
        let c = counter("b", Window::Second, 100, [0; SPAN]);
        assert_eq!((c.sub(0), c.sub(SPAN - 1)), (90, 100));
        assert_eq!(Window::Second.oldest_kept(12_345), 123 - 11);
    }

    #[test]
    fn the_memory_table_purges_what_expired() {
        let counts = LocalRateCounts::default();
        let w = Window::Second;
        let head = w.sub_index(NOW_MS);
        counts.exchange(&report("proxy-a", vec![counter("key:a", w, head, tail(&[1]))]), NOW_MS).unwrap();
        counts
            .exchange(&report("proxy-b", vec![counter("key:b", Window::Day, Window::Day.sub_index(NOW_MS), tail(&[1]))]), NOW_MS)
            .unwrap();
        assert_eq!(counts.table.lock().unwrap().rows, 2);
        let later = NOW_MS + PURGE_EVERY_MS + 2 * w.millis();
        counts.exchange(&report("proxy-c", vec![]), later).unwrap();
        let table = counts.table.lock().unwrap();
        assert_eq!(table.rows, 1, "the one-second counter is gone, the day's is kept");
        assert_eq!(table.counters.iter().map(HashMap::len).sum::<usize>(), 1);
        assert_eq!(table.heard.len(), 3, "heard within the minute");
    }

    #[test]
    fn a_full_memory_table_refuses_new_rows_and_keeps_merging_held_ones() {
        let counts = LocalRateCounts::default();
        let w = Window::Hour;
        let head = w.sub_index(NOW_MS);
        counts.exchange(&report("proxy-a", vec![counter("key:a", w, head, tail(&[1]))]), NOW_MS).unwrap();
        counts.table.lock().unwrap().rows = MAX_LOCAL_ROWS;
        let a = report("proxy-a", vec![counter("key:a", w, head, tail(&[4])), counter("key:new", w, head, tail(&[2]))]);
        counts.exchange(&a, NOW_MS).unwrap();
        let b = counts
            .exchange(&report("proxy-b", vec![counter("key:a", w, head, [0; SPAN]), counter("key:new", w, head, [0; SPAN])]), NOW_MS)
            .unwrap();
        assert_eq!(b.others, vec![tail(&[4]), [0; SPAN]]);
    }
}
