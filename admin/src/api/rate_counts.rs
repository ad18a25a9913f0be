//! Fleet-wide rate limits: `POST /v1/rate-counts` (proxy token). Each Envoy's leader VM
//! sends its own counts per counter and sub-window, and gets back every other proxy's sum
//! for the same sub-windows (see `store::rate_counts`). The body is untrusted: every field
//! is checked before anything is kept, and refusals name fields and limits, never values.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{blocking, ok_json};
use crate::clock;
use crate::error::AdminError;
use crate::state::AppState;
use crate::store::rate_counts::{CounterCounts, RateReport, Window, MAX_COUNT, SPAN};

/// Body cap.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Counters per report, at most.
pub const MAX_COUNTERS: usize = 5000;
pub const MAX_PROXY_CHARS: usize = 64;
pub const MAX_BUCKET_BYTES: usize = 300;
/// The largest `head` taken (JSON's exact integers; real ones are near 2^35).
pub const MAX_HEAD: u64 = MAX_COUNT;

/// One proxy's report.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateCountsReport {
    /// The reporting Envoy, stable while it runs.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    proxy: String,
    /// At most 5000; none is a heartbeat (keeps the proxy counted in `proxies`).
    #[schema(max_items = 5000)]
    counters: Vec<CounterSpan>,
}

/// A counter's counts in 11 consecutive sub-windows (a sub-window is a tenth of the window).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CounterSpan {
    /// What is counted, e.g. `key:key_abc`, `biz:biz_1`, `ip:192.0.2.1@/v1/`: 1 to 300 bytes, no control characters.
    #[schema(min_length = 1, max_length = 300)]
    bucket: String,
    /// The window: 1000, 60000, 3600000 or 86400000.
    #[schema(minimum = 1000, maximum = 86400000)]
    window_ms: u64,
    /// The sub-window index (`t_ms / (window_ms / 10)`) of the last count.
    #[schema(minimum = 10, maximum = 9007199254740991_u64)]
    head: u64,
    /// Sub-windows head-10 ..= head, oldest first: in a report the proxy's own admitted
    /// requests (absolute, not increments), in an answer the sum over every other proxy.
    #[schema(min_items = 11, max_items = 11)]
    counts: Vec<u64>,
}

/// The answer to a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateCountsAnswer {
    /// Distinct proxies that reported in the last 60 s, the reporter included.
    proxies: u64,
    /// `others[i]` answers `counters[i]`: the same bucket, window and head.
    others: Vec<CounterSpan>,
}

fn invalid(message: String) -> AdminError {
    AdminError::InvalidRequest(message)
}

/// The report, checked.
fn checked(report: RateCountsReport) -> Result<RateReport, AdminError> {
    let proxy_ok = (1..=MAX_PROXY_CHARS).contains(&report.proxy.len())
        && report.proxy.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !proxy_ok {
        return Err(invalid(format!("proxy must be 1 to {MAX_PROXY_CHARS} characters of A-Z a-z 0-9 _ -")));
    }
    if report.counters.len() > MAX_COUNTERS {
        return Err(invalid(format!("at most {MAX_COUNTERS} counters per report")));
    }
    let mut counters = Vec::with_capacity(report.counters.len());
    for (i, c) in report.counters.into_iter().enumerate() {
        if c.bucket.is_empty() || c.bucket.len() > MAX_BUCKET_BYTES || c.bucket.chars().any(char::is_control) {
            return Err(invalid(format!("counters[{i}].bucket must be 1 to {MAX_BUCKET_BYTES} bytes without control characters")));
        }
        let window = Window::from_ms(c.window_ms)
            .ok_or_else(|| invalid(format!("counters[{i}].window_ms must be one of 1000, 60000, 3600000, 86400000")))?;
        if !(SPAN as u64 - 1..=MAX_HEAD).contains(&c.head) {
            return Err(invalid(format!("counters[{i}].head must be {} to {MAX_HEAD}", SPAN - 1)));
        }
        let counts: [u64; SPAN] =
            c.counts.try_into().map_err(|_| invalid(format!("counters[{i}].counts must hold exactly {SPAN} counts")))?;
        if counts.iter().any(|&n| n > MAX_COUNT) {
            return Err(invalid(format!("counters[{i}].counts must be 0 to {MAX_COUNT}")));
        }
        counters.push(CounterCounts { bucket: c.bucket, window, head: c.head, counts });
    }
    Ok(RateReport { proxy: report.proxy, counters })
}

#[utoipa::path(post, path = "/v1/rate-counts", tag = "feed", summary = "Filters exchange fleet-wide rate-limit counts", security(("proxy" = [])),
    request_body(content = RateCountsReport, description = "At most 5000 counters and 1 MiB per report"),
    responses(
        (status = 200, description = "The other proxies' counts for the reported counters, in their order", body = RateCountsAnswer)
    )
)]
pub async fn rate_counts(state: AppState, report: RateCountsReport) -> Result<Response, AdminError> {
    let report = checked(report)?;
    let now_ms = clock::now_ms();
    let (report, answer) = blocking(state.store(), move |s| {
        let answer = s.rate_counts().exchange(&report, now_ms)?;
        Ok((report, answer))
    })
    .await?;
    let others = report
        .counters
        .into_iter()
        .zip(answer.others)
        .map(|(c, others)| CounterSpan { bucket: c.bucket, window_ms: c.window.ms(), head: c.head, counts: others.to_vec() })
        .collect();
    ok_json(StatusCode::OK, &RateCountsAnswer { proxies: answer.proxies, others })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(value: serde_json::Value) -> Result<RateReport, AdminError> {
        checked(serde_json::from_value(value).unwrap())
    }

    fn message(value: serde_json::Value) -> String {
        match report(value) {
            Err(AdminError::InvalidRequest(message)) => message,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn one(counter: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"proxy": "3f9a0c1d5e7b2a48", "counters": [counter]})
    }

    #[test]
    fn a_report_as_the_design_writes_it_is_taken() {
        let counter =
            serde_json::json!({"bucket": "key:key_abc", "window_ms": 3600000, "head": 4907291, "counts": [0,0,0,0,0,0,0,0,0,3,5]});
        let taken = report(one(counter)).unwrap();
        assert_eq!(taken.proxy, "3f9a0c1d5e7b2a48");
        assert_eq!(taken.counters[0].window, Window::Hour);
        assert_eq!(taken.counters[0].counts[10], 5);
        assert!(report(serde_json::json!({"proxy": "a", "counters": []})).unwrap().counters.is_empty());
    }

    #[test]
    fn out_of_bounds_values_are_refused_by_name() {
        let good = || serde_json::json!({"bucket": "key:k", "window_ms": 1000, "head": 100, "counts": vec![0u64; 11]});
        for proxy in ["", "has space", "é", &"a".repeat(65)] {
            assert!(message(serde_json::json!({"proxy": proxy, "counters": []})).starts_with("proxy"), "{proxy}");
        }
        let cases: [(&str, serde_json::Value); 7] = [
            ("bucket", serde_json::json!("")),
            ("bucket", serde_json::json!("x".repeat(301))),
            ("bucket", serde_json::json!("key:a\u{0}")),
            ("window_ms", serde_json::json!(30000)),
            ("head", serde_json::json!(9)),
            ("head", serde_json::json!(MAX_HEAD + 1)),
            ("counts", serde_json::json!(vec![0u64; 10])),
        ];
        for (field, value) in cases {
            let mut counter = good();
            counter[field] = value;
            let text = message(one(counter));
            assert!(text.starts_with(&format!("counters[0].{field}")), "{field}: {text}");
        }
        let mut counter = good();
        counter["counts"][3] = serde_json::json!(MAX_COUNT + 1);
        assert!(message(one(counter)).starts_with("counters[0].counts"));
        let many: Vec<_> = (0..=MAX_COUNTERS).map(|_| good()).collect();
        assert!(message(serde_json::json!({"proxy": "a", "counters": many})).contains("5000"));
    }
}
