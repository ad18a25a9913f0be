//! `POST /v1/rate-counts` over real HTTP (sled, or PostgreSQL with `KEYGATE_TEST_POSTGRES`):
//! proxies exchange their rate-limit counts through admin. Replicas sharing them: `replicas.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_error, Server, OPERATOR, PROXY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const HOUR_MS: u64 = 3_600_000;

/// The current sub-window of an hour's limit (six minutes long: a test does not see it change
/// often, and the two before it are kept whenever it does).
fn hour_head() -> u64 {
    keygate_admin::clock::now_ms() / (HOUR_MS / 10)
}

fn counts_ending(values: &[u64]) -> Vec<u64> {
    let mut counts = vec![0; 11 - values.len()];
    counts.extend_from_slice(values);
    counts
}

async fn exchange(server: &Server, proxy: &str, counters: Value) -> Value {
    let (status, body) = server.post("/v1/rate-counts", Some(PROXY), json!({"proxy": proxy, "counters": counters})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counts_of_other_proxies_are_summed() {
    let server = Server::fresh().await;
    let head = hour_head();
    let counter = |bucket: &str, counts: Vec<u64>| json!({"bucket": bucket, "window_ms": HOUR_MS, "head": head, "counts": counts});

    let a = exchange(&server, "proxy-a", json!([counter("key:key_abc", counts_ending(&[3, 5]))])).await;
    assert_eq!(a, json!({"proxies": 1, "others": [counter("key:key_abc", vec![0; 11])]}));

    let b = exchange(&server, "proxy-b", json!([counter("key:key_abc", counts_ending(&[1])), counter("biz:biz_1", vec![0; 11])])).await;
    assert_eq!(b["proxies"], json!(2));
    assert_eq!(b["others"], json!([counter("key:key_abc", counts_ending(&[3, 5])), counter("biz:biz_1", vec![0; 11])]));

    // A retry of an older report changes nothing; a heartbeat is answered with the count.
    let a = exchange(&server, "proxy-a", json!([counter("key:key_abc", counts_ending(&[1, 1]))])).await;
    assert_eq!(a["others"], json!([counter("key:key_abc", counts_ending(&[1]))]));
    let c = exchange(&server, "proxy-c", json!([counter("key:key_abc", vec![0; 11])])).await;
    assert_eq!(c["others"], json!([counter("key:key_abc", counts_ending(&[3, 6]))]));
    assert_eq!(exchange(&server, "proxy-d", json!([])).await, json!({"proxies": 4, "others": []}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counts_reports_are_checked() {
    let server = Server::fresh().await;
    let good = || json!({"bucket": "key:k", "window_ms": 1000, "head": keygate_admin::clock::now_ms() / 100, "counts": vec![0; 11]});
    let post = |bearer: Option<&'static str>, body: Value| {
        let server = &server;
        async move { server.post("/v1/rate-counts", bearer, body).await }
    };

    let (s, b) = post(None, json!({"proxy": "a", "counters": []})).await;
    assert_error(s, &b, 401, "unauthorized");
    let (s, b) = post(Some(OPERATOR), json!({"proxy": "a", "counters": []})).await;
    assert_error(s, &b, 401, "unauthorized");

    let mut bad_counters = Vec::new();
    for (field, value) in [
        ("bucket", json!("")),
        ("window_ms", json!(5000)),
        ("head", json!(3)),
        ("counts", json!(vec![0; 12])),
        ("counts", json!([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1])),
        ("counts", json!([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1.5])),
        ("head", json!("1")),
    ] {
        let mut counter = good();
        counter[field] = value;
        bad_counters.push(counter);
    }
    let mut unknown = good();
    unknown["window"] = json!(1000);
    bad_counters.push(unknown);
    for counter in bad_counters {
        let (s, b) = post(Some(PROXY), json!({"proxy": "a", "counters": [counter]})).await;
        assert_error(s, &b, 400, "invalid_request");
    }
    for body in [json!({"proxy": "not ok", "counters": []}), json!({"counters": []}), json!([]), json!({"proxy": "a", "counters": {}})] {
        let (s, b) = post(Some(PROXY), body).await;
        assert_error(s, &b, 400, "invalid_request");
    }
    let many: Vec<Value> = (0..5001).map(|_| good()).collect();
    let (s, b) = post(Some(PROXY), json!({"proxy": "a", "counters": many})).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = server.raw(Method::POST, "/v1/rate-counts", Some(PROXY), b"{\"proxy\": ".to_vec()).await;
    assert_error(s, &b, 400, "invalid_json");
    let (s, b) = server.raw(Method::POST, "/v1/rate-counts", Some(PROXY), vec![b' '; 1024 * 1024 + 1]).await;
    assert_error(s, &b, 413, "payload_too_large");

    // The largest report taken: 5000 counters with long buckets, under 1 MiB.
    let full: Vec<Value> = (0..5000)
        .map(|i| json!({"bucket": format!("ip:2001:db8:{i:x}::/64@/v1/some/route"), "window_ms": 86400000, "head": keygate_admin::clock::now_ms() / 8_640_000, "counts": vec![1; 11]}))
        .collect();
    let (s, b) = post(Some(PROXY), json!({"proxy": "a", "counters": full})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["others"].as_array().map(Vec::len), Some(5000));
    server.stop().await;
}
