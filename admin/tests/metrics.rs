//! `GET /metrics` (Prometheus text format 0.0.4) and the per-request `x-request-id`, over
//! real HTTP against a server on 127.0.0.1:0 (see `common`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Server, OPERATOR, PROXY};
use reqwest::StatusCode;
use serde_json::json;

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the exposition line by line; panics on any line that is not a comment, blank,
/// or a well-formed sample.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            assert!(name.starts_with("keygate_admin_"), "{line}");
            if kind == "TYPE" {
                assert!(["counter", "gauge", "histogram"].contains(&words.next().unwrap()), "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").map(|p| p.trim_end_matches('"')) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{line}");
                    assert!(!v.contains(['"', '\\', '\n']), "{line}");
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(name.starts_with("keygate_admin_") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{line}");
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    samples
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))).collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

async fn scrape(server: &Server) -> (String, Vec<Sample>) {
    let response = server.client.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_template() {
    let server = Server::fresh_with(|config| {
        config.throttle.pair_free = 1;
    })
    .await;

    let biz = server.business("Acme").await;
    let user = server.user("ann@example.com", "correct horse", &[&biz]).await;
    let key = server.key(&biz).await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (status, rotated) = server.post(&format!("/v1/keys/{key_id}/rotate"), Some(OPERATOR), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, login) = server.login(rotated["key"].as_str().unwrap(), None).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (status, _) = server.get("/v1/keys/key_0000000000000000/usage", Some(OPERATOR)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get("/sk_test_not-a-route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, signin) = server.signin("ann@example.com", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{signin}");
    // One failure blocks the pair (pair_free = 1): the next attempt is answered 429.
    let (status, _) = server.signin("ann@example.com", "wrong horse").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.signin("ann@example.com", "correct horse").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = server.snapshot("").await;
    assert_eq!(status, StatusCode::OK);
    // The dashboard's routes: the member's own endpoints, the expiry change, the page.
    let member = signin["accessToken"].as_str().unwrap();
    assert_eq!(server.get("/v1/me", Some(member)).await.0, StatusCode::OK);
    assert_eq!(server.get("/v1/sessions", Some(member)).await.0, StatusCode::OK);
    let (status, _) =
        server.send(reqwest::Method::PATCH, &format!("/v1/keys/{key_id}"), Some(OPERATOR), Some(json!({"expires_at": null}))).await;
    assert_eq!(status, StatusCode::OK);
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for (path, want) in [("/ui", 301), ("/ui/", 200), ("/ui/app.js", 200), ("/ui/sk_live_typed.js", 404)] {
        let status = no_redirect.get(format!("{}{path}", server.base)).send().await.unwrap().status();
        assert_eq!(status.as_u16(), want, "{path}");
    }
    let (_, health) = server.get("/healthz", None).await;

    let (text, samples) = scrape(&server).await;
    let requests = "keygate_admin_requests_total";
    assert_eq!(value(&samples, requests, &[("route", "/v1/businesses"), ("method", "POST"), ("status", "201")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/users"), ("method", "POST"), ("status", "201")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/businesses/{id}/keys"), ("method", "POST"), ("status", "201")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/keys/{id}/rotate"), ("method", "POST"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/keys/{id}/usage"), ("method", "GET"), ("status", "404")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "unmatched"), ("method", "GET"), ("status", "404")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/auth/signin"), ("method", "POST"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/auth/signin"), ("method", "POST"), ("status", "401")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/auth/signin"), ("method", "POST"), ("status", "429")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/snapshot"), ("method", "GET"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/me"), ("method", "GET"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/sessions"), ("method", "GET"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/v1/keys/{id}"), ("method", "PATCH"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/ui"), ("method", "GET"), ("status", "301")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/ui"), ("method", "GET"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/ui/{id}"), ("method", "GET"), ("status", "200")]), 1.0);
    assert_eq!(value(&samples, requests, &[("route", "/ui/{id}"), ("method", "GET"), ("status", "404")]), 1.0);
    assert_eq!(value(&samples, "keygate_admin_signin_throttled_total", &[]), 1.0);
    assert_eq!(value(&samples, "keygate_admin_changelog_version", &[]), health["version"].as_f64().unwrap());
    assert!(value(&samples, "keygate_admin_store_size_bytes", &[]) > 0.0);
    assert_eq!(value(&samples, "keygate_admin_longpoll_waiters", &[]), 0.0);

    // Every route's histogram: buckets cumulative, +Inf = _count = the route's requests.
    let routes: Vec<&String> = find(&samples, requests, &[]).iter().map(|s| &s.labels["route"]).collect();
    for route in &routes {
        assert!(route.as_str() == "unmatched" || keygate_admin::metrics::ROUTES.contains(&route.as_str()), "{route}");
        let total: f64 = find(&samples, requests, &[("route", route.as_str())]).iter().map(|s| s.value).sum();
        let count = value(&samples, "keygate_admin_request_duration_seconds_count", &[("route", route.as_str())]);
        assert_eq!(count, total, "{route}");
        let buckets = find(&samples, "keygate_admin_request_duration_seconds_bucket", &[("route", route.as_str())]);
        let les: Vec<&str> = buckets.iter().map(|b| b.labels["le"].as_str()).collect();
        assert_eq!(les, ["0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "+Inf"], "{route}");
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value), "{route}");
        assert_eq!(buckets.last().unwrap().value, count, "{route}");
        assert!(value(&samples, "keygate_admin_request_duration_seconds_sum", &[("route", route.as_str())]) >= 0.0);
    }

    // Nothing a client sent or was given reaches the exposition.
    let secrets = [
        biz.as_str(),
        &biz[4..],
        user["id"].as_str().unwrap(),
        &user["id"].as_str().unwrap()[4..],
        "ann@example.com",
        "example.com",
        &key_id,
        &key_id[4..],
        key["key"].as_str().unwrap(),
        rotated["key"].as_str().unwrap(),
        login["access_token"].as_str().unwrap(),
        signin["accessToken"].as_str().unwrap(),
        signin["refreshToken"].as_str().unwrap(),
        OPERATOR,
        PROXY,
        "sk_test",
        "sk_live_typed",
        "0000000000000000",
        "correct horse",
    ];
    for line in text.lines() {
        for secret in secrets {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }

    // The scrape itself is counted from the next one on.
    let (_, samples) = scrape(&server).await;
    assert_eq!(value(&samples, requests, &[("route", "/metrics"), ("method", "GET"), ("status", "200")]), 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longpoll_gauge_counts_held_polls() {
    let server = Arc::new(Server::fresh().await);
    let biz = server.business("Acme").await;
    let (_, health) = server.get("/healthz", None).await;
    let version = health["version"].as_u64().unwrap();

    let poller = server.clone();
    let poll = tokio::spawn(async move { poller.snapshot(&format!("?since={version}&wait=5")).await });
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, samples) = scrape(&server).await;
        if value(&samples, "keygate_admin_longpoll_waiters", &[]) == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the long-poll was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A change to the keys answers the poll at once.
    server.key(&biz).await;
    let (status, delta) = tokio::time::timeout(Duration::from_secs(4), poll).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "{delta}");
    let (_, samples) = scrape(&server).await;
    assert_eq!(value(&samples, "keygate_admin_longpoll_waiters", &[]), 0.0);
    assert_eq!(value(&samples, "keygate_admin_requests_total", &[("route", "/v1/snapshot"), ("method", "GET"), ("status", "200")]), 1.0);
    Arc::into_inner(server).unwrap().stop().await;
}

/// The JSON log lines of this test binary (one global subscriber for the process).
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("info,warp::filters::trace=off")
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
    .clone()
}

async fn request_id_of(server: &Server, path: &str, sent: Option<reqwest::header::HeaderValue>) -> (StatusCode, String) {
    let mut request = server.client.get(format!("{}{path}", server.base));
    if let Some(value) = sent {
        request = request.header("x-request-id", value);
    }
    let response = request.send().await.unwrap();
    let ids: Vec<_> = response.headers().get_all("x-request-id").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    (response.status(), ids[0].clone())
}

fn generated(id: &str) -> bool {
    id.strip_prefix("req_").is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_generated_and_logged() {
    let log = captured_log();
    let server = Server::fresh().await;
    use reqwest::header::HeaderValue;

    let sane = "trace-Me_1.2-3";
    assert_eq!(request_id_of(&server, "/healthz", Some(HeaderValue::from_static(sane))).await, (StatusCode::OK, sane.to_owned()));
    let longest = "a".repeat(64);
    assert_eq!(request_id_of(&server, "/healthz", Some(HeaderValue::from_str(&longest).unwrap())).await.1, longest);
    // Errors carry it too.
    let (status, id) = request_id_of(&server, "/no/such/route", Some(HeaderValue::from_static("err-1"))).await;
    assert_eq!((status, id.as_str()), (StatusCode::NOT_FOUND, "err-1"));

    let (_, first) = request_id_of(&server, "/healthz", None).await;
    let (_, second) = request_id_of(&server, "/healthz", None).await;
    assert!(generated(&first) && generated(&second) && first != second, "{first} {second}");
    let too_long = "a".repeat(65);
    let insane = [
        HeaderValue::from_static(""),
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_static("a b"),
        HeaderValue::from_static("a/b"),
        HeaderValue::from_static("x\"y"),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    ];
    for value in insane {
        let (status, id) = request_id_of(&server, "/healthz", Some(value.clone())).await;
        assert_eq!(status, StatusCode::OK);
        assert!(generated(&id), "{value:?} -> {id}");
    }

    // The request's log line carries the id (in its span, JSON format).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        let line = text.lines().find(|l| l.contains("keygate_admin::http") && l.contains("err-1"));
        if let Some(line) = line {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["span"]["request_id"], json!("err-1"), "{line}");
            assert_eq!(v["fields"]["status"], json!(404), "{line}");
            assert!(text.lines().any(|l| l.contains("keygate_admin::http") && l.contains(&first)), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no request line with the id: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}
