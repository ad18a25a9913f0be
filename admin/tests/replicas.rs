//! Two admin replicas on one PostgreSQL database (`KEYGATE_TEST_POSTGRES`; skipped on sled,
//! which one process opens at a time): what one replica does, the other knows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use keygate_admin::{Config, StoreLocation};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Two replicas on one new database, each with the test configuration changed by `edit`;
/// `None` (with a note) without a PostgreSQL server.
async fn two_replicas(edit: impl Fn(&mut Config)) -> Option<(Server, Server)> {
    let Some(server) = postgres_under_test() else {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; replica test skipped");
        return None;
    };
    let url = fresh_database(&server);
    let mut configs = [0, 1].map(|_| config_at(StoreLocation::Postgres(url.clone())));
    configs.iter_mut().for_each(&edit);
    let [a, b] = configs;
    Some((Server::start_with(a).await, Server::start_with(b).await))
}

/// A key created through one replica wakes a long-poll waiting on the other at once, and the
/// delta it answers carries the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_wakes_the_long_polls_of_the_other() {
    let Some((a, b)) = two_replicas(|_| {}).await else { return };
    let biz = a.business("Acme").await;
    let (_, start) = b.snapshot("").await;
    let version = start["version"].as_u64().unwrap();
    let history = start["history"].as_str().unwrap().to_owned();
    let poll = {
        let (client, base) = (b.client.clone(), b.base.clone());
        tokio::spawn(async move {
            let response = client
                .get(format!("{base}/v1/snapshot?since={version}&history={history}&wait=20"))
                .bearer_auth(PROXY)
                .send()
                .await
                .unwrap();
            (Instant::now(), response.json::<serde_json::Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created_at = Instant::now();
    let _key = a.key(&biz).await;
    let (answered_at, delta) = poll.await.unwrap();
    let latency = answered_at.saturating_duration_since(created_at);
    assert!(latency < Duration::from_secs(2), "the other replica's long-poll answered after {latency:?}");
    assert_eq!(delta["since"], json!(version), "{delta}");
    assert!(delta["version"].as_u64().unwrap() > version, "{delta}");
    assert_eq!(delta["keys"].as_array().map(Vec::len), Some(1), "{delta}");
    a.stop().await;
    b.stop().await;
}

/// Wrong passwords through both replicas count together: the pair is blocked after its free
/// failures in all, not after that many on each replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_through_both_replicas_count_together() {
    let Some((a, b)) = two_replicas(|c| c.throttle.pair_free = 4).await else { return };
    let biz = a.business("Acme").await;
    let _ = a.user("ann@example.com", "correct horse", &[&biz]).await;
    for n in 0..4 {
        let replica = if n % 2 == 0 { &a } else { &b };
        let (status, body) = replica.signin("ann@example.com", "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {n}: {body}");
    }
    for replica in [&a, &b] {
        let (status, body) = replica.signin("ann@example.com", "correct horse").await;
        assert_error(status, &body, 429, "rate_limited");
    }
    a.stop().await;
    b.stop().await;
}

/// An API key's logins through both replicas draw on one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_logins_through_both_replicas_share_one_bucket() {
    let Some((a, b)) = two_replicas(|c| {
        c.login_limit.per_key_per_minute = 4;
        c.login_limit.per_client_per_minute = 1000;
    })
    .await
    else {
        return;
    };
    let biz = a.business("Acme").await;
    let key = a.key(&biz).await;
    let raw = key["key"].as_str().unwrap();
    for n in 0..4 {
        let replica = if n % 2 == 0 { &a } else { &b };
        let (status, body) = replica.login(raw, Some(&format!("client-session-{n}"))).await;
        assert_eq!(status, StatusCode::OK, "login {n}: {body}");
    }
    for replica in [&a, &b] {
        let (status, body) = replica.login(raw, Some("client-session-over")).await;
        assert_error(status, &body, 429, "rate_limited");
    }
    a.stop().await;
    b.stop().await;
}

/// A signing key rotated through one replica signs the other's next token, and the tokens
/// each replica signs verify on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_rotated_through_one_replica_signs_on_the_other() {
    let Some((a, b)) = two_replicas(|_| {}).await else { return };
    let biz = a.business("Acme").await;
    let _ = a.user("ann@example.com", "correct horse", &[&biz]).await;
    let (status, rotated) = a.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let token = loop {
        let (status, signin) = b.signin("ann@example.com", "correct horse").await;
        assert_eq!(status, StatusCode::OK, "{signin}");
        let token = signin["accessToken"].as_str().unwrap().to_owned();
        if keygate_core::token::checked_kid(&token).ok().as_deref() == Some(new_kid.as_str()) {
            break token;
        }
        assert!(Instant::now() < deadline, "the other replica still signs with the old key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status, body) = a.get(&format!("/v1/businesses/{biz}/keys"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, jwks) = b.get("/.well-known/jwks.json", None).await;
    assert!(jwks.to_string().contains(&new_kid), "{jwks}");
    a.stop().await;
    b.stop().await;
}

/// A login cached on replica B ends the moment replica A's write commits, with no wait for
/// B to hear of it: a session revoked through A gets a new session through B, a key
/// deactivated through A is refused by B; a signing key rotated through A signs B's next
/// logins once B has loaded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_cached_on_one_replica_ends_when_the_other_revokes() {
    let Some((a, b)) = two_replicas(|_| {}).await else { return };
    let biz = a.business("Acme").await;
    let key = a.key(&biz).await;
    let (id, raw) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let hits = || b.state.login_cache().hits();

    let (status, first) = b.login(raw, Some("job-1")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let before = hits();
    let (_, again) = b.login(raw, Some("job-1")).await;
    assert_eq!(again["access_token"], first["access_token"]);
    assert_eq!(hits(), before + 1, "B answers the repeat from its cache");

    let sid = sid_of(first["access_token"].as_str().unwrap());
    let (status, body) = a.send(Method::DELETE, &format!("/v1/sessions/{sid}"), Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, renewed) = b.login(raw, Some("job-1")).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_ne!(sid_of(renewed["access_token"].as_str().unwrap()), sid, "B handed out a session A revoked");
    let before = hits();
    let (_, again) = b.login(raw, Some("job-1")).await;
    assert_eq!(again["access_token"], renewed["access_token"]);
    assert_eq!(hits(), before + 1);

    let (status, rotated) = a.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_kid = rotated["kid"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, login) = b.login(raw, Some("job-1")).await;
        assert_eq!(status, StatusCode::OK, "{login}");
        let token = login["access_token"].as_str().unwrap();
        let kid = keygate_core::token::checked_kid(token).unwrap();
        if kid == new_kid {
            break;
        }
        // Until B loads the new key, it hands out the token it signed (still published).
        assert_eq!(login["access_token"], renewed["access_token"]);
        assert!(Instant::now() < deadline, "B still signs with the old key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = a.post(&format!("/v1/keys/{id}/deactivate"), Some(OPERATOR), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b.login(raw, Some("job-1")).await;
    assert_error(status, &body, 401, "invalid_api_key");
    a.stop().await;
    b.stop().await;
}

/// Runs `sql` on the test server, on a thread of its own (the blocking client cannot run
/// inside the tests' runtime).
fn run_sql(server: &str, sql: String) {
    let server = server.to_owned();
    std::thread::spawn(move || postgres::Client::connect(&server, postgres::NoTls).unwrap().batch_execute(&sql).unwrap()).join().unwrap();
}

/// Polls `/healthz` until it answers `status` (10 s at most).
async fn health_becomes(server: &Server, status: StatusCode) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = server.get("/healthz", None).await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/healthz still answers {got} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica whose listening connection is lost (and cannot come back: the database takes
/// no new connections) cannot hear other replicas' commits: its health check and its
/// long-polls say so, while requests on its open connections still work; once it listens
/// again, both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_hear_the_others_says_so_until_it_can() {
    let Some(server_url) = postgres_under_test() else {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; replica test skipped");
        return;
    };
    let url = fresh_database(&server_url);
    let database = url.rsplit('/').next().unwrap().to_owned();
    let replica = Server::start_with(config_at(StoreLocation::Postgres(url.clone()))).await;
    let biz = replica.business("Acme").await;
    assert_eq!(health_becomes(&replica, StatusCode::OK).await["status"], json!("ok"));

    run_sql(&server_url, format!("ALTER DATABASE {database} ALLOW_CONNECTIONS false"));
    run_sql(
        &server_url,
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND query LIKE 'LISTEN%'"),
    );
    let body = health_becomes(&replica, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["status"], json!("not_following"), "{body}");
    let (_, full) = replica.snapshot("").await;
    let version = full["version"].as_u64().unwrap();
    let (status, body) = replica.snapshot(&format!("?since={version}&wait=5")).await;
    assert_error(status, &body, 503, "storage_unavailable");

    run_sql(&server_url, format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"));
    assert_eq!(health_becomes(&replica, StatusCode::OK).await["status"], json!("ok"));
    let _key = replica.key(&biz).await;
    let (status, delta) = replica.snapshot(&format!("?since={version}&wait=5")).await;
    assert_eq!(status, StatusCode::OK, "{delta}");
    assert_eq!(delta["keys"].as_array().map(Vec::len), Some(1), "{delta}");
    replica.stop().await;
}

/// Envoys fed by different replicas learn each other's rate-limit counts: the counts are
/// in a table every replica shares, and so is the count of proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counts_reported_through_one_replica_count_on_the_other() {
    let Some((a, b)) = two_replicas(|_| {}).await else { return };
    let head = keygate_admin::clock::now_ms() / 360_000;
    let counter = |counts: [u64; 11]| json!({"bucket": "key:key_abc", "window_ms": 3_600_000, "head": head, "counts": counts});
    let report = |proxy: &str, counts: [u64; 11]| json!({"proxy": proxy, "counters": [counter(counts)]});
    let (status, body) = a.post("/v1/rate-counts", Some(PROXY), report("envoy-1", [0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 5])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b.post("/v1/rate-counts", Some(PROXY), report("envoy-2", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"proxies": 2, "others": [counter([0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 5])]}));
    let (status, body) = a.post("/v1/rate-counts", Some(PROXY), report("envoy-1", [0; 11])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"proxies": 2, "others": [counter([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])]}));
    a.stop().await;
    b.stop().await;
}
