//! Prometheus metrics (text exposition format 0.0.4) with std atomics and a mutex, and
//! the per-request id.
//!
//! Every label value is a compile-time constant: the route label is one of [`ROUTES`]
//! (matched from [`route_table::path_template`], so nothing a client typed reaches a label) or
//! `unmatched`, the method one of a fixed list or `OTHER`, the status a number.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::route_table;

/// The route labels (every template of [`route_table::TABLE`] once).
pub const ROUTES: &[&str] = route_table::LABELS;

/// The route label of any path that no route template matches.
pub const UNMATCHED: &str = "unmatched";

/// Upper bounds of the latency histogram's buckets, nanoseconds (0.001 s … 5 s; +Inf implied).
const BUCKETS_NS: [u64; 8] = [1_000_000, 5_000_000, 10_000_000, 50_000_000, 100_000_000, 500_000_000, 1_000_000_000, 5_000_000_000];
const BUCKET_LABELS: [&str; 8] = ["0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5"];

/// The route template of `path` (one of [`ROUTES`]), or [`UNMATCHED`].
pub fn route_label(path: &str) -> &'static str {
    route_table::route_label(path).unwrap_or(UNMATCHED)
}

fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS_NS.len()],
    sum_ns: u128,
    count: u64,
}

#[derive(Default)]
struct Requests {
    counts: BTreeMap<(&'static str, &'static str, u16), u64>,
    durations: BTreeMap<&'static str, Histogram>,
}

/// The server's counters and gauges; one per [`crate::AppState`].
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<Requests>,
    longpoll_waiters: AtomicU64,
    signin_throttled: AtomicU64,
}

/// Counts one held snapshot long-poll while alive (dropped also when the client leaves).
pub struct LongPollGuard<'a> {
    metrics: &'a Metrics,
}

impl Drop for LongPollGuard<'_> {
    fn drop(&mut self) {
        self.metrics.longpoll_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The values read from elsewhere at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub changelog_version: u64,
    pub store_size_bytes: u64,
}

impl Metrics {
    /// Records one answered request (counter and histogram under one lock, so a scrape
    /// always sees `_count` equal to the sum of the route's counters).
    pub fn observe(&self, method: &warp::http::Method, path: &str, status: u16, elapsed: Duration) {
        let route = route_label(path);
        if route == "/auth/signin" && status == 429 {
            self.signin_throttled.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        *requests.counts.entry((route, method_label(method), status)).or_insert(0) += 1;
        let histogram = requests.durations.entry(route).or_default();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS_NS) {
            if ns <= bound {
                *bucket += 1;
            }
        }
        histogram.sum_ns += u128::from(ns);
        histogram.count += 1;
    }

    pub fn hold_longpoll(&self) -> LongPollGuard<'_> {
        self.longpoll_waiters.fetch_add(1, Ordering::Relaxed);
        LongPollGuard { metrics: self }
    }

    /// The whole exposition, text format 0.0.4.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut out, gauges);
        out
    }

    fn render_into(&self, out: &mut String, gauges: Gauges) -> std::fmt::Result {
        {
            let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            writeln!(out, "# HELP keygate_admin_requests_total Requests answered, by route template, method and status.")?;
            writeln!(out, "# TYPE keygate_admin_requests_total counter")?;
            for ((route, method, status), n) in &requests.counts {
                writeln!(out, "keygate_admin_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}")?;
            }
            writeln!(out, "# HELP keygate_admin_request_duration_seconds Time to answer a request, by route template.")?;
            writeln!(out, "# TYPE keygate_admin_request_duration_seconds histogram")?;
            for (route, h) in &requests.durations {
                for (le, n) in BUCKET_LABELS.iter().zip(h.buckets) {
                    writeln!(out, "keygate_admin_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {n}")?;
                }
                writeln!(out, "keygate_admin_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count)?;
                let secs = Duration::from_nanos(u64::try_from(h.sum_ns).unwrap_or(u64::MAX)).as_secs_f64();
                writeln!(out, "keygate_admin_request_duration_seconds_sum{{route=\"{route}\"}} {secs}")?;
                writeln!(out, "keygate_admin_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count)?;
            }
        }
        let rows: [(&str, &str, &str, u64); 4] = [
            ("keygate_admin_changelog_version", "gauge", "The durable changelog version.", gauges.changelog_version),
            ("keygate_admin_store_size_bytes", "gauge", "Size of the sled store on disk, bytes.", gauges.store_size_bytes),
            (
                "keygate_admin_longpoll_waiters",
                "gauge",
                "Snapshot long-polls currently held.",
                self.longpoll_waiters.load(Ordering::Relaxed),
            ),
            (
                "keygate_admin_signin_throttled_total",
                "counter",
                "Sign-ins answered 429 by the throttle.",
                self.signin_throttled.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in rows {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} {kind}")?;
            writeln!(out, "{name} {value}")?;
        }
        Ok(())
    }
}

/// Longest client-given request id kept.
pub const MAX_REQUEST_ID_CHARS: usize = 64;

/// A client's `x-request-id` if it is 1..=64 characters of `A-Z a-z 0-9 . _ -`.
pub fn sane_request_id(value: &[u8]) -> Option<String> {
    let ok = (1..=MAX_REQUEST_ID_CHARS).contains(&value.len())
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    // All ASCII, checked just above.
    ok.then(|| String::from_utf8_lossy(value).into_owned())
}

/// A fresh request id: `req_` + 16 random base62 characters (a counter if the
/// generator fails, so a request is never refused for want of an id).
pub fn new_request_id() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    crate::random::id("req_").unwrap_or_else(|_| format!("req_n{}", FALLBACK.fetch_add(1, Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates() {
        assert_eq!(route_label("/v1/keys/key_abc/rotate"), "/v1/keys/{id}/rotate");
        assert_eq!(route_label("/v1/keys/sk_live_secret/rotate"), "/v1/keys/{id}/rotate");
        assert_eq!(route_label("/v1/businesses/biz_x/keys"), "/v1/businesses/{id}/keys");
        assert_eq!(route_label("/v1/businesses"), "/v1/businesses");
        assert_eq!(route_label("/healthz"), "/healthz");
        assert_eq!(route_label("/sk_live_secret"), UNMATCHED);
        assert_eq!(route_label("/"), UNMATCHED);
        assert_eq!(route_label("/v1/keys/a/b/c/d/e/f/g/h/i"), UNMATCHED);
    }

    #[test]
    fn request_ids() {
        assert_eq!(sane_request_id(b"abc-1.2_3").as_deref(), Some("abc-1.2_3"));
        assert!(sane_request_id(&[b'a'; 64]).is_some());
        for bad in [&b""[..], &[b'a'; 65], b"a b", b"a/b", "é".as_bytes(), b"a\"b"] {
            assert!(sane_request_id(bad).is_none(), "{bad:?}");
        }
        let id = new_request_id();
        assert!(id.starts_with("req_") && sane_request_id(id.as_bytes()).is_some(), "{id}");
    }

    #[test]
    fn histogram_count_matches_counters() {
        let m = Metrics::default();
        let get = warp::http::Method::GET;
        m.observe(&get, "/healthz", 200, Duration::from_micros(500));
        m.observe(&get, "/healthz", 200, Duration::from_secs(10));
        m.observe(&warp::http::Method::POST, "/auth/signin", 429, Duration::from_millis(2));
        let text = m.render(Gauges { changelog_version: 7, store_size_bytes: 9 });
        assert!(text.contains("keygate_admin_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("keygate_admin_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("keygate_admin_request_duration_seconds_bucket{route=\"/healthz\",le=\"5\"} 1\n"), "{text}");
        assert!(text.contains("keygate_admin_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("keygate_admin_request_duration_seconds_count{route=\"/healthz\"} 2\n"), "{text}");
        assert!(text.contains("keygate_admin_signin_throttled_total 1\n"), "{text}");
        assert!(text.contains("keygate_admin_changelog_version 7\n"), "{text}");
        let guard = m.hold_longpoll();
        assert!(m.render(Gauges::default()).contains("keygate_admin_longpoll_waiters 1\n"));
        drop(guard);
        assert!(m.render(Gauges::default()).contains("keygate_admin_longpoll_waiters 0\n"));
    }
}
