//! The rate-limit counts every replica on the database shares ([`RateCounts`]), in UNLOGGED
//! tables of their own: rewritten by every report, they need no fsync, and a database crash
//! that empties them is made good by the next round of reports (each carries absolute
//! counts). Soft counts, not acknowledged writes: no changelog, no write lock.
//!
//! One report is one statement (one round trip): the reporter's heartbeat and its counts
//! written (each the max of the held and the sent), and the others' sums read. The read
//! sees the table as it was when the statement began, which is all it needs: it leaves the
//! reporter's own rows out. Time is admin's clock, as the sub-window indexes are the
//! proxies' (all NTP-synced).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Connection, PgEngine, StoreError};
use crate::store::rate_counts::{
    counts_to_keep, others_from, spans_to_read, CounterKey, RateAnswer, RateCounts, RateReport, MAX_COUNT, PROXY_TTL_MS, PURGE_EVERY_MS,
};

pub(super) const CREATE_RATE_COUNTS: &str = "CREATE UNLOGGED TABLE IF NOT EXISTS keygate_rate_counts (
    bucket text NOT NULL,
    window_ms bigint NOT NULL,
    sub bigint NOT NULL,
    proxy text NOT NULL,
    count bigint NOT NULL,
    reported_at bigint NOT NULL,
    PRIMARY KEY (bucket, window_ms, sub, proxy)
);
CREATE UNLOGGED TABLE IF NOT EXISTS keygate_rate_proxies (
    proxy text PRIMARY KEY,
    reported_at bigint NOT NULL
)";

/// The shared table's bound, in (bucket, window, sub-window, proxy) rows (a few hundred
/// bytes each with the index). Past it, reports only update the rows held (see
/// [`RateUpkeep::full`]).
const MAX_SHARED_ROWS: i64 = 5_000_000;

/// A report's writes, for a table with room: the heartbeat, then the counts inserted or
/// raised. `$1` proxy, `$2` now (ms), `$3..$6` bucket, window, sub-window and count arrays.
const UPSERT_COUNTS: &str = "counted AS (
    INSERT INTO keygate_rate_counts (bucket, window_ms, sub, proxy, count, reported_at)
    SELECT b, w, s, $1::text, n, $2::bigint FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) AS r(b, w, s, n)
    ON CONFLICT (bucket, window_ms, sub, proxy)
    DO UPDATE SET count = GREATEST(keygate_rate_counts.count, EXCLUDED.count), reported_at = EXCLUDED.reported_at
)";

/// The same for a full table: only the rows held are raised.
const UPDATE_COUNTS: &str = "counted AS (
    UPDATE keygate_rate_counts c SET count = GREATEST(c.count, r.n), reported_at = $2::bigint
    FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) AS r(b, w, s, n)
    WHERE c.bucket = r.b AND c.window_ms = r.w AND c.sub = r.s AND c.proxy = $1::text
)";

/// The whole report: `counted` is one of the two above; `$7..$10` the counters read (bucket,
/// window, first and last sub-window). The first row (bucket NULL) is the proxies heard in
/// the last minute, the reporter counted once whether or not its heartbeat was there before;
/// then one row per (counter, sub-window) with the others' sum.
fn exchange_sql(counted: &str) -> String {
    format!(
        "WITH heard AS (
            INSERT INTO keygate_rate_proxies (proxy, reported_at) VALUES ($1::text, $2::bigint)
            ON CONFLICT (proxy) DO UPDATE SET reported_at = GREATEST(keygate_rate_proxies.reported_at, EXCLUDED.reported_at)
        ), {counted}
        SELECT NULL::text, NULL::bigint, NULL::bigint,
               (SELECT count(*) FROM keygate_rate_proxies WHERE proxy <> $1::text AND reported_at > $2::bigint - {PROXY_TTL_MS}) + 1
        UNION ALL
        SELECT c.bucket, c.window_ms, c.sub, LEAST(sum(c.count), {MAX_COUNT})::bigint
        FROM unnest($7::text[], $8::bigint[], $9::bigint[], $10::bigint[]) AS q(b, w, first, last)
        JOIN keygate_rate_counts c ON c.bucket = q.b AND c.window_ms = q.w AND c.sub BETWEEN q.first AND q.last
        WHERE c.proxy <> $1::text
        GROUP BY c.bucket, c.window_ms, c.sub"
    )
}

/// Drops the expired counts (one sub-window later than a report stops reading them, so a
/// replica whose clock is a little ahead deletes nothing another is still writing) and the
/// proxies not heard for a minute; answers how many count rows are left. `$1` now (ms).
const PURGE: &str = "WITH gone AS (
    DELETE FROM keygate_rate_counts WHERE sub < $1::bigint / (window_ms / 10) - 12 RETURNING 1
), forgotten AS (
    DELETE FROM keygate_rate_proxies WHERE reported_at <= $1::bigint - 60000
)
SELECT (SELECT count(*) FROM keygate_rate_counts) - (SELECT count(*) FROM gone)";

/// When this replica last purged the tables, and whether they were full then.
#[derive(Debug, Default)]
pub(super) struct RateUpkeep {
    purged_at_ms: AtomicU64,
    /// At [`MAX_SHARED_ROWS`] as of the last purge: reports only raise the rows held (new
    /// counters go unshared, and each proxy counts them alone, until old ones expire)
    /// rather than evicting counts of requests already admitted.
    full: AtomicBool,
}

/// Milliseconds as the table's `bigint` (every value here is far below `i64::MAX`).
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl PgEngine {
    /// Purges the tables on a pooled connection without waiting, if this replica has not
    /// for [`PURGE_EVERY_MS`].
    fn purge_now_and_then(&self, now_ms: u64) {
        let upkeep = Arc::clone(&self.rate_upkeep);
        let last = upkeep.purged_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < PURGE_EVERY_MS
            || upkeep.purged_at_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let sent = self.send(Box::new(move |c: &mut Connection| {
            let purged = c.retrying(|c| c.query(PURGE, &[&ms(now_ms)]));
            let left = purged.and_then(|rows| Ok(rows.first().map(|row| row.try_get::<_, i64>(0)).transpose()?.unwrap_or(0)));
            match left {
                Ok(left) => {
                    let full = left >= MAX_SHARED_ROWS;
                    if upkeep.full.swap(full, Ordering::Relaxed) != full {
                        if full {
                            tracing::warn!(
                                rows = left,
                                "the shared rate-count table is full: counts for new counters are not shared until old ones expire"
                            );
                        } else {
                            tracing::info!(rows = left, "the shared rate-count table has room again");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot drop the expired rate counts"),
            }
        }));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot drop the expired rate counts");
        }
    }
}

impl RateCounts for PgEngine {
    fn exchange(&self, report: &RateReport, now_ms: u64) -> Result<RateAnswer, StoreError> {
        // In key order: two reports from one proxy (a retry racing the original) lock
        // their rows in the same order.
        let kept = counts_to_keep(report, now_ms);
        let (mut buckets, mut windows, mut subs, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (((bucket, window), sub), count) in kept {
            buckets.push(bucket.to_owned());
            windows.push(ms(window.ms()));
            subs.push(ms(sub));
            counts.push(ms(count));
        }
        let spans = spans_to_read(report, now_ms);
        let (mut read_buckets, mut read_windows, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((bucket, window), (first, last)) in &spans {
            read_buckets.push((*bucket).to_owned());
            read_windows.push(ms(window.ms()));
            firsts.push(ms(*first));
            lasts.push(ms(*last));
        }
        let sql = exchange_sql(if self.rate_upkeep.full.load(Ordering::Relaxed) { UPDATE_COUNTS } else { UPSERT_COUNTS });
        let (proxy, now) = (report.proxy.clone(), ms(now_ms));
        // Run again on a new connection after a lost one, harmlessly: the writes are maxima.
        let rows = self.run(move |c| {
            c.query(&sql, &[&proxy, &now, &buckets, &windows, &subs, &counts, &read_buckets, &read_windows, &firsts, &lasts])
        })?;
        self.purge_now_and_then(now_ms);

        // A row's counter as the report names it, found by the row's bucket and window.
        let counters: HashMap<(&str, i64), CounterKey<'_>> =
            spans.keys().map(|&(bucket, window)| ((bucket, ms(window.ms())), (bucket, window))).collect();
        let mut proxies = 1;
        let mut sums = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (bucket, window_ms, sub, value): (Option<String>, Option<i64>, Option<i64>, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let value = u64::try_from(value).unwrap_or(0);
            match (bucket, window_ms, sub) {
                (Some(bucket), Some(window_ms), Some(sub)) => {
                    if let (Some(&counter), Ok(sub)) = (counters.get(&(bucket.as_str(), window_ms)), u64::try_from(sub)) {
                        sums.insert((counter, sub), value);
                    }
                }
                _ => proxies = value.max(1),
            }
        }
        Ok(RateAnswer { proxies, others: others_from(report, &sums) })
    }
}
