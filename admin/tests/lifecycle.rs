//! Issue 4's remaining lifecycle over real HTTP: refresh with rotation and reuse
//! detection, logout, key rotation (with and without grace), usage reports, signing-key
//! rotation and withdrawal, sign-in throttling, session caps and housekeeping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{assert_error, sid_of, Server, OPERATOR, PROXY};
use keygate_core::KeyHash;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn kid_of(jwt: &str) -> String {
    keygate_core::token::checked_kid(jwt).unwrap()
}

async fn revoked(server: &Server) -> Vec<String> {
    let (_, full) = server.snapshot("").await;
    full["revoked_sessions"].as_array().unwrap().iter().map(|r| r["sid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_session() {
    let server = Server::fresh_with(|cfg| {
        cfg.token_ttl_secs = 3;
        cfg.token_leeway_secs = 0;
    })
    .await;
    let biz = server.business("Acme").await;
    let first = server.signed_in("ann@example.com", "correct horse", &[&biz]).await;
    let sid = sid_of(first["accessToken"].as_str().unwrap());

    // After the access token expired: still refreshable (grace), same shape as sign-in.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, body) = server.get(&format!("/v1/businesses/{biz}/keys"), first["accessToken"].as_str()).await;
    assert_error(status, &body, 401, "unauthorized");
    let r1 = first["refreshToken"].as_str().unwrap();
    let (status, second) = server.post("/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!((second["tokenType"].as_str(), second["expiresIn"].as_u64()), (Some("Bearer"), Some(3)));
    assert_eq!(second["businesses"], json!([{"id": biz, "name": "Acme"}]));
    assert_ne!(second["refreshToken"], first["refreshToken"], "the refresh token rotates");
    assert_ne!(second["accessToken"], first["accessToken"]);
    assert_eq!(sid_of(second["accessToken"].as_str().unwrap()), sid, "same session");
    let (status, _) = server.get(&format!("/v1/businesses/{biz}/keys"), second["accessToken"].as_str()).await;
    assert_eq!(status, StatusCode::OK);

    // The spent one again: refused, and the whole session is revoked (theft detection).
    assert!(!revoked(&server).await.contains(&sid));
    let (status, body) = server.post("/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_error(status, &body, 401, "invalid_token");
    assert!(revoked(&server).await.contains(&sid), "reuse revokes the session in the feed");
    let r2 = second["refreshToken"].as_str().unwrap();
    let (status, body) = server.post("/auth/refresh", None, json!({"refresh_token": r2})).await;
    assert_error(status, &body, 401, "invalid_token");

    // Garbage and wrong types.
    let (status, body) = server.post("/auth/refresh", None, json!({"refresh_token": "rt_nope"})).await;
    assert_error(status, &body, 401, "invalid_token");
    let (status, body) = server.post("/auth/refresh", None, json!({"refresh_token": 5})).await;
    assert_error(status, &body, 400, "invalid_json");
    let (status, body) = server.post("/auth/refresh", None, json!({"refresh_token": r2, "extra": 1})).await;
    assert_error(status, &body, 400, "invalid_json");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_callers_session() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let s = server.signed_in("ann@example.com", "correct horse", &[&biz]).await;
    let token = s["accessToken"].as_str().unwrap();
    let (status, body) = server.post("/auth/logout", Some(token), json!({})).await;
    assert_eq!((status, body["revoked"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    assert!(revoked(&server).await.contains(&sid_of(token)));
    let (status, body) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(token)).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = server.post("/auth/logout", None, json!({})).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = server.post("/auth/logout", Some("not.a.jwt"), json!({})).await;
    assert_error(status, &body, 401, "unauthorized");

    // An API-key login token logs out its own session.
    let key = server.key(&biz).await;
    let (_, login) = server.login(key["key"].as_str().unwrap(), Some("job-1")).await;
    let jwt = login["access_token"].as_str().unwrap();
    let (status, _) = server.post("/auth/logout", Some(jwt), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked(&server).await.contains(&sid_of(jwt)));
    let (_, again) = server.login(key["key"].as_str().unwrap(), Some("job-1")).await;
    assert_ne!(again["access_token"], login["access_token"], "a revoked session is not handed out again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_key_keeps_its_id_and_retires_the_old_raw_key() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let other = server.business("Other").await;
    let outsider = server.signed_in("o@example.com", "correct horse", &[&other]).await;
    let key = server.key(&biz).await;
    let (id, old_raw) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap().to_owned());
    let (_, login) = server.login(&old_raw, None).await;
    let (_, before) = server.snapshot("").await;
    let version = before["version"].as_u64().unwrap();

    let (status, body) = server.post(&format!("/v1/keys/{id}/rotate"), outsider["accessToken"].as_str(), json!({})).await;
    assert_error(status, &body, 403, "forbidden");

    // No grace: the old raw key stops at once, its login sessions are revoked.
    let (status, rotated) = server.send(Method::POST, &format!("/v1/keys/{id}/rotate"), Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["id"], json!(id));
    let new_raw = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new_raw, old_raw);
    assert!(rotated["rotated_at"].is_string());
    let (status, body) = server.login(&old_raw, None).await;
    assert_error(status, &body, 401, "invalid_api_key");
    let (status, fresh) = server.login(&new_raw, None).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_ne!(fresh["access_token"], login["access_token"]);
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(delta["removed_keys"], json!([KeyHash::of_raw(&old_raw).to_hex()]), "{delta}");
    assert!(delta["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["hash"] == json!(KeyHash::of_raw(&new_raw).to_hex()) && k["id"] == json!(id)));
    assert_eq!(delta["revoked_sessions"][0]["sid"], json!(sid_of(login["access_token"].as_str().unwrap())));
    let (_, listed) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(OPERATOR)).await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1, "same record, not a new key");

    // With grace: both raw keys work; the old one carries the grace end as its expiry.
    let (status, graced) = server.post(&format!("/v1/keys/{id}/rotate"), Some(OPERATOR), json!({"grace_secs": 600})).await;
    assert_eq!(status, StatusCode::OK, "{graced}");
    assert!(graced["previous_key_valid_until"].is_string(), "{graced}");
    let newest = graced["key"].as_str().unwrap();
    assert_eq!(server.login(&new_raw, Some("x")).await.0, StatusCode::OK);
    assert_eq!(server.login(newest, Some("y")).await.0, StatusCode::OK);
    let (_, full) = server.snapshot("").await;
    let entries: Vec<&Value> = full["keys"].as_array().unwrap().iter().filter(|k| k["id"] == json!(id)).collect();
    assert_eq!(entries.len(), 2, "{full}");
    let old_entry = entries.iter().find(|k| k["hash"] == json!(KeyHash::of_raw(&new_raw).to_hex())).unwrap();
    assert!(old_entry["expires_at"].as_u64().unwrap() > keygate_admin::store::now() + 500);

    // Bad input on rotate.
    let (status, body) = server.post(&format!("/v1/keys/{id}/rotate"), Some(OPERATOR), json!({"grace": 5})).await;
    assert_error(status, &body, 400, "invalid_json");
    let (status, body) = server.post(&format!("/v1/keys/{id}/rotate"), Some(OPERATOR), json!({"grace_secs": -1})).await;
    assert_error(status, &body, 400, "invalid_json");
    let (status, body) = server.post(&format!("/v1/keys/{id}/rotate"), Some(OPERATOR), json!({"grace_secs": 99_999_999})).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = server.post("/v1/keys/key_0000000000000000/rotate", Some(OPERATOR), json!({})).await;
    assert_error(status, &body, 404, "key_not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_update_last_used_and_hourly_counts() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let id = key["id"].as_str().unwrap();
    let (_, before) = server.snapshot("").await;
    let at = keygate_admin::store::now() - 5;
    let report = json!({"usage": [
        {"key_id": id, "count": 3, "last_used_at": at},
        {"key_id": "key_0000000000000000", "count": 1, "last_used_at": at},
        {"key_id": "nonsense", "count": 1, "last_used_at": at},
    ]});
    let (status, body) = server.post("/v1/usage", Some(OPERATOR), report.clone()).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = server.post("/v1/usage", Some(PROXY), report).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"accepted": 1, "ignored": 2}));
    // An older report does not move last_used_at back; counts add up.
    let (status, _) = server.post("/v1/usage", Some(PROXY), json!({"usage": [{"key_id": id, "count": 2, "last_used_at": at - 100}]})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(OPERATOR)).await;
    assert_eq!(listed["keys"][0]["last_used_at"], json!(keygate_admin::rfc3339::format(at)));
    let (status, usage) = server.get(&format!("/v1/keys/{id}/usage"), Some(OPERATOR)).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["total"], json!(5));
    // One key twice in one report: both count, the later time wins.
    let twice = json!({"usage": [{"key_id": id, "count": 3, "last_used_at": at + 1}, {"key_id": id, "count": 4, "last_used_at": at + 2}]});
    let (status, body) = server.post("/v1/usage", Some(PROXY), twice).await;
    assert_eq!(body, json!({"accepted": 2, "ignored": 0}), "{status}");
    let (_, usage) = server.get(&format!("/v1/keys/{id}/usage"), Some(OPERATOR)).await;
    assert_eq!(usage["total"], json!(12), "{usage}");
    let (_, listed) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(OPERATOR)).await;
    assert_eq!(listed["keys"][0]["last_used_at"], json!(keygate_admin::rfc3339::format(at + 2)));
    assert!(!usage["hours"].as_array().unwrap().is_empty());
    // Usage is not in the changelog.
    let (_, after) = server.snapshot("").await;
    assert_eq!(after["version"], before["version"]);

    let (status, body) =
        server.post("/v1/usage", Some(PROXY), json!({"usage": [{"key_id": id, "count": "many", "last_used_at": at}]})).await;
    assert_error(status, &body, 400, "invalid_json");
    let (status, body) = server.post("/v1/usage", Some(PROXY), json!({"usage": [], "more": true})).await;
    assert_error(status, &body, 400, "invalid_json");
    // A full batch (10 000 keys, far over the 64 KiB of other routes) fits the route's limit.
    let full: Vec<Value> = (0..keygate_core::usage::MAX_BATCH_KEYS)
        .map(|i| json!({"key_id": format!("key_{i:016}"), "count": 1, "last_used_at": at}))
        .collect();
    let body = serde_json::to_vec(&json!({ "usage": full })).unwrap();
    assert!(body.len() > 512 * 1024 && body.len() <= keygate_core::usage::MAX_REPORT_BYTES, "{}", body.len());
    let (status, answer) = server.raw(Method::POST, "/v1/usage", Some(PROXY), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["ignored"], json!(keygate_core::usage::MAX_BATCH_KEYS));
    let big = vec![b'x'; keygate_core::usage::MAX_REPORT_BYTES + 1];
    let (status, body) = server.raw(Method::POST, "/v1/usage", Some(PROXY), big).await;
    assert_error(status, &body, 413, "payload_too_large");
    let (status, body) = server.get("/v1/keys/key_0000000000000000/usage", Some(OPERATOR)).await;
    assert_error(status, &body, 404, "key_not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_keeps_the_old_key_published_until_its_tokens_expire() {
    let server = Server::fresh_with(|cfg| {
        cfg.token_ttl_secs = 2;
        cfg.token_leeway_secs = 0;
    })
    .await;
    let biz = server.business("Acme").await;
    let old = server.signed_in("ann@example.com", "correct horse", &[&biz]).await;
    let old_token = old["accessToken"].as_str().unwrap();
    let old_kid = kid_of(old_token);
    let (_, before) = server.snapshot("").await;
    let version = before["version"].as_u64().unwrap();

    let (status, body) = server.post("/v1/signing-keys/rotate", None, json!({})).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, rotated) = server.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["previous_kid"], json!(old_kid));
    let text = rotated.to_string();
    assert!(!text.contains("seed") && !text.contains("\"d\""), "{text}");
    let new_kid = rotated["kid"].as_str().unwrap();
    let (_, jwks) = server.get("/.well-known/jwks.json", None).await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid), "{jwks}");
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(delta["signing_keys"][0]["kid"], json!(new_kid), "{delta}");
    // Old tokens still verify; new ones carry the new kid.
    let (status, _) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(old_token)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, new) = server.signin("ann@example.com", "correct horse").await;
    assert_eq!(kid_of(new["accessToken"].as_str().unwrap()), new_kid);

    // Once every token of the old key has expired, housekeeping withdraws it.
    let (_, mid) = server.snapshot("").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report = keygate_admin::sweep_once(&server.state).await.unwrap();
    assert_eq!(report.signing_keys, 1, "{report:?}");
    let (_, jwks) = server.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["kid"], json!(new_kid));
    let (_, delta) = server.snapshot(&format!("?since={}", mid["version"])).await;
    assert_eq!(delta["removed_signing_keys"], json!([old_kid]), "{delta}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_are_throttled_per_client_without_locking_the_owner_out() {
    let server = Server::fresh_with(|cfg| {
        cfg.throttle.pair_free = 3;
    })
    .await;
    let biz = server.business("Acme").await;
    server.user("ann@example.com", "correct horse", &[&biz]).await;
    for _ in 0..3 {
        let (status, body) = server.signin("ann@example.com", "wrong horse").await;
        assert_error(status, &body, 401, "invalid_credentials");
    }
    let response = server
        .client
        .post(format!("{}/auth/signin", server.base))
        .json(&json!({"email": "ann@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], json!("rate_limited"));

    // The owner, from another address, signs in.
    let elsewhere = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let response = elsewhere
        .post(format!("{}/auth/signin", server.base))
        .json(&json!({"email": "ann@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_per_key_and_per_user_and_swept_when_dead() {
    let server = Server::fresh_with(|cfg| {
        cfg.max_sessions_per_key = 2;
        cfg.max_sessions_per_user = 2;
        cfg.token_leeway_secs = 0;
    })
    .await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let raw = key["key"].as_str().unwrap();
    let mut sids = Vec::new();
    for s in ["a", "b", "c"] {
        let (status, login) = server.login(raw, Some(s)).await;
        assert_eq!(status, StatusCode::OK, "{login}");
        sids.push(sid_of(login["access_token"].as_str().unwrap()));
    }
    let gone = revoked(&server).await;
    assert_eq!(gone, vec![sids[0].clone()], "the oldest is evicted and revoked");
    let (_, again) = server.login(raw, Some("b")).await;
    assert_eq!(sid_of(again["access_token"].as_str().unwrap()), sids[1], "the others live on");

    server.user("ann@example.com", "correct horse", &[&biz]).await;
    let mut users = Vec::new();
    for _ in 0..3 {
        let (_, s) = server.signin("ann@example.com", "correct horse").await;
        users.push(sid_of(s["accessToken"].as_str().unwrap()));
    }
    assert!(revoked(&server).await.contains(&users[0]));

    // Nothing is dead yet: a sweep now removes nothing.
    let report = keygate_admin::sweep_once(&server.state).await.unwrap();
    assert_eq!(report, keygate_admin::store::SweepReport::default());
    // Past every expiry and refresh window, a sweep removes all six sessions and both
    // revocations, and the full snapshot carries none.
    let store = server.state.store().clone();
    let later = keygate_admin::store::now() + 7200 + 31 * 24 * 3600;
    let (report, ticket) = tokio::task::spawn_blocking(move || store.sweep(later, 0)).await.unwrap().unwrap();
    server.state.store().wait_durable(ticket.unwrap()).await.unwrap();
    assert_eq!((report.sessions, report.revocations), (6, 2), "{report:?}");
    assert!(revoked(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_refused_and_carry_their_expiry_in_the_feed() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let expires = keygate_admin::store::now() + 2;
    let (status, key) =
        server.key_as(OPERATOR, &biz, json!({"kind": "sk", "mode": "test", "expires_at": keygate_admin::rfc3339::format(expires)})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let raw = key["key"].as_str().unwrap();
    let (status, login) = server.login(raw, None).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert!(login["expires_in"].as_u64().unwrap() <= 2, "a token never outlives its key: {login}");
    let (_, full) = server.snapshot("").await;
    assert_eq!(full["keys"][0]["expires_at"], json!(expires));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = server.login(raw, None).await;
    assert_error(status, &body, 401, "invalid_api_key");
    server.stop().await;
}

/// A client whose connections come from 127.0.0.`last` (all of 127/8 is loopback).
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, last])).build().unwrap()
}

/// One API-key login from `client`: status, `Retry-After` (if any) and body.
async fn login_from(server: &Server, client: &reqwest::Client, key: &str, session: &str) -> (StatusCode, Option<u64>, Value) {
    let response =
        client.post(format!("{}/auth/login", server.base)).json(&json!({"api_key": key, "session_id": session})).send().await.unwrap();
    let status = response.status();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    (status, retry, response.json().await.unwrap())
}

async fn signin_from(server: &Server, client: &reqwest::Client, email: &str, password: &str) -> (StatusCode, Option<u64>, Value) {
    let response =
        client.post(format!("{}/auth/signin", server.base)).json(&json!({"email": email, "password": password})).send().await.unwrap();
    let status = response.status();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    (status, retry, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_logins_are_throttled_and_never_end_another_clients_session() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let (status, key) = server.key_as(OPERATOR, &biz, json!({"kind": "pk", "mode": "test"})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let raw = key["key"].as_str().unwrap();
    // Another client's session, opened first (the oldest of the key).
    let other = client_from(2);
    let (status, _, first) = login_from(&server, &other, raw, "theirs").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let theirs = sid_of(first["access_token"].as_str().unwrap());

    let me = client_from(1);
    let (mut ok, mut throttled) = (0, 0);
    let started = std::time::Instant::now();
    for i in 0..300 {
        let (status, retry, body) = login_from(&server, &me, raw, &format!("s-{i}")).await;
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                throttled += 1;
                assert_eq!(body["code"], json!("rate_limited"), "{body}");
                assert!(retry.is_some_and(|r| (1..=60).contains(&r)), "Retry-After {retry:?}");
            }
            other => panic!("login {i}: {other} {body}"),
        }
    }
    let gone = revoked(&server).await;
    println!("300 logins from one client: {ok} × 200, {throttled} × 429, {} revocations", gone.len());
    // The client's 30 a minute refill evenly (one per 2 s), so a slower store's loop earns
    // the logins that refilled while it ran, and no more.
    let refilled = started.elapsed().as_secs() / 2 + 1;
    assert!(
        throttled > 0 && ok <= 30 + refilled,
        "one client's logins are throttled: {ok} × 200 (allowed 30 + {refilled} refilled), {throttled} × 429, {} revocations",
        gone.len()
    );
    assert!(!gone.contains(&theirs), "another client's session was revoked ({} revocations)", gone.len());
    // The other client still gets its own token back.
    let (status, _, again) = login_from(&server, &other, raw, "theirs").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["access_token"], first["access_token"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_key_session_cap_a_login_displaces_only_its_own_clients_sessions() {
    let server = Server::fresh_with(|cfg| {
        cfg.max_sessions_per_key = 3;
        cfg.login_limit.per_client_per_minute = 1000;
        cfg.login_limit.per_key_per_minute = 1000;
    })
    .await;
    let biz = server.business("Acme").await;
    let (_, key) = server.key_as(OPERATOR, &biz, json!({"kind": "pk", "mode": "test"})).await;
    let raw = key["key"].as_str().unwrap();
    let (b, a, c) = (client_from(2), client_from(1), client_from(3));
    let (status, _, theirs) = login_from(&server, &b, raw, "b1").await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    let theirs_sid = sid_of(theirs["access_token"].as_str().unwrap());
    let mut mine = Vec::new();
    for s in ["a1", "a2", "a3", "a4"] {
        let (status, _, body) = login_from(&server, &a, raw, s).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        mine.push(sid_of(body["access_token"].as_str().unwrap()));
    }
    let mut gone = revoked(&server).await;
    gone.sort();
    assert!(!gone.contains(&theirs_sid), "client 1's logins revoked client 2's session: {gone:?}");
    let mut expected = vec![mine[0].clone(), mine[1].clone()];
    expected.sort();
    assert_eq!(gone, expected, "client 1's own oldest sessions make room");
    // A third client finds only others' sessions: refused until the oldest expires.
    let (status, retry, body) = login_from(&server, &c, raw, "c1").await;
    assert_error(status, &body, 429, "session_limit_reached");
    assert!(retry.is_some_and(|r| (1..=7200).contains(&r)), "Retry-After {retry:?}");
    assert_eq!(revoked(&server).await.len(), 2);
    let (status, _, again) = login_from(&server, &b, raw, "b1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["access_token"], theirs["access_token"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_for_one_account_are_mostly_refused_before_argon2() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    server.user("ann@example.com", "correct horse", &[&biz]).await;
    let guesser = client_from(1);
    let owner = client_from(2);
    let guesses =
        (0..60).map(|i| signin_from(&server, &guesser, "ann@example.com", if i % 2 == 0 { "wrong horse" } else { "wrong pony!" }));
    let (answers, (owner_status, _, owner_body)) =
        tokio::join!(futures_util::future::join_all(guesses), signin_from(&server, &owner, "ann@example.com", "correct horse"));
    let checked = answers.iter().filter(|(s, _, _)| *s == StatusCode::UNAUTHORIZED).count();
    let throttled = answers.iter().filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS).count();
    for (status, retry, body) in &answers {
        assert!(matches!(status.as_u16(), 401 | 429), "{status} {body}");
        if *status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["code"], json!("rate_limited"), "{body}");
            assert!(retry.is_some(), "429 without Retry-After");
        }
    }
    println!("60 parallel wrong passwords: {checked} checked by argon2 (401), {throttled} × 429; owner {owner_status}");
    // Five free failures for the pair (the default), so at most five reach argon2 (one
    // more may if the batch outlasts the first one-second block).
    assert!(checked <= 7 && throttled >= 53, "{checked} checked by argon2, {throttled} throttled");
    assert_eq!(owner_status, StatusCode::OK, "the owner, from another address: {owner_body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_check_queue_is_bounded() {
    let server = Server::fresh_with(|cfg| {
        cfg.max_concurrent_password_hashes = 1;
        cfg.max_queued_password_hashes = 2;
        cfg.throttle.pair_free = 1000;
        cfg.throttle.client_free = 1000;
    })
    .await;
    let client = client_from(1);
    let attempts = (0..30).map(|i| {
        let email = format!("nobody{i}@example.com");
        let client = &client;
        let server = &server;
        async move { signin_from(server, client, &email, "whatever-password").await }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let mut busy = 0;
    for (status, retry, body) in &answers {
        match status.as_u16() {
            401 => {}
            503 => {
                busy += 1;
                assert_eq!(body["code"], json!("busy"), "{body}");
                assert!(retry.is_some_and(|r| r >= 1), "503 without Retry-After");
            }
            other => panic!("{other} {body}"),
        }
    }
    println!("30 parallel password checks, 1 slot + 2 queued: {busy} × 503");
    assert!(busy > 0, "30 parallel password checks with 1 slot and 2 queue places: none refused");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signing_key_rotations_leave_exactly_one_signer() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    for round in 0..5 {
        let rotations = (0..8).map(|_| server.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None));
        for (status, body) in futures_util::future::join_all(rotations).await {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let keys = server.state.store().signing_keys().unwrap();
        let current: Vec<&str> = keys.iter().filter(|k| k.retired_at.is_none()).map(|k| k.kid.as_str()).collect();
        assert_eq!(current.len(), 1, "round {round}: unretired signing keys {current:?}");
        // The one unretired key is the one that signs.
        let (_, login) = server.login(key["key"].as_str().unwrap(), Some(&format!("r{round}"))).await;
        assert_eq!(kid_of(login["access_token"].as_str().unwrap()), current[0]);
    }
    server.stop().await;
}

/// Claims picked just before a rotation are signed by the key they name (still published),
/// never refused with a 500: logins and rotations race here on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_racing_signing_key_rotations_all_succeed() {
    let server = Server::fresh_with(|cfg| {
        cfg.login_limit.per_client_per_minute = 1000;
        cfg.login_limit.per_key_per_minute = 1000;
    })
    .await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let raw = key["key"].as_str().unwrap();
    let owned = server;
    let server = &owned;
    let rotations = async {
        for _ in 0..30 {
            let (status, body) = server.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let logins = futures_util::future::join_all((0..90).map(|i| async move {
        let session = format!("race-{i}");
        server.login(raw, Some(&session)).await
    }));
    let ((), answers) = tokio::join!(rotations, logins);
    let (_, jwks) = server.get("/.well-known/jwks.json", None).await;
    let published: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        let kid = kid_of(body["access_token"].as_str().unwrap());
        assert!(published.contains(&kid.as_str()), "{kid} not in {published:?}");
    }
    owned.stop().await;
}

/// A repeated login (same key, same session) is answered from the login cache: the same
/// token, no signature and no key or session read. Every change that would refuse it or
/// change its answer ends that at once: a revoked session (a new session and token), a
/// rotated signing key (a token from the new key), a deactivated key (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_login_comes_from_the_cache_until_the_store_changes() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let (id, raw) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let hits = || server.state.login_cache().hits();

    let (status, first) = server.login(raw, Some("job-1")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let before = hits();
    for _ in 0..5 {
        let (status, again) = server.login(raw, Some("job-1")).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["access_token"], first["access_token"]);
        assert_eq!(again["session_id"], json!("job-1"));
        assert!(again["expires_in"].as_u64().unwrap() <= first["expires_in"].as_u64().unwrap());
    }
    assert_eq!(hits(), before + 5, "repeated logins are answered from the cache");
    let token = first["access_token"].as_str().unwrap();
    let (status, me) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(token)).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED, "the cached token is a valid one: {me}");

    // The session revoked: the next login opens a new session, with a new token.
    let sid = sid_of(token);
    let (status, body) = server.send(Method::DELETE, &format!("/v1/sessions/{sid}"), Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = hits();
    let (status, renewed) = server.login(raw, Some("job-1")).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(hits(), before, "not from the cache");
    assert_ne!(renewed["access_token"], first["access_token"], "a revoked session's token is not handed out again");
    assert_ne!(sid_of(renewed["access_token"].as_str().unwrap()), sid);
    let (_, again) = server.login(raw, Some("job-1")).await;
    assert_eq!(again["access_token"], renewed["access_token"]);
    assert_eq!(hits(), before + 1);

    // The signing key rotated: the next login is signed by the new key.
    let (status, rotated) = server.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let before = hits();
    let (status, resigned) = server.login(raw, Some("job-1")).await;
    assert_eq!(status, StatusCode::OK, "{resigned}");
    assert_eq!(hits(), before, "not from the cache");
    assert_eq!(kid_of(resigned["access_token"].as_str().unwrap()), rotated["kid"].as_str().unwrap());
    let (_, again) = server.login(raw, Some("job-1")).await;
    assert_eq!(again["access_token"], resigned["access_token"]);
    assert_eq!(hits(), before + 1);

    // The key deactivated: refused at once.
    let (status, body) = server.post(&format!("/v1/keys/{id}/deactivate"), Some(OPERATOR), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = hits();
    let (status, body) = server.login(raw, Some("job-1")).await;
    assert_error(status, &body, 401, "invalid_api_key");
    assert_eq!(hits(), before);
    server.stop().await;
}

/// What time alone ends, with no write in between (the housekeeping sweep held off): a
/// cached token once it expires (the next login gets a new one), and a raw key rotated
/// away once its grace ends (refused, although its login was cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_login_ends_with_its_token_and_with_its_rotation_grace() {
    let server = Server::fresh_with(|cfg| {
        // Longer than the grace below, so that the grace ends first.
        cfg.token_ttl_secs = 3;
        cfg.token_leeway_secs = 0;
        cfg.sweep_interval_secs = 3600;
    })
    .await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let (id, old_raw) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap().to_owned());
    let hits = || server.state.login_cache().hits();

    let (_, first) = server.login(&old_raw, None).await;
    let before = hits();
    let (_, again) = server.login(&old_raw, None).await;
    assert_eq!(again["access_token"], first["access_token"]);
    assert_eq!(hits(), before + 1);
    tokio::time::sleep(Duration::from_secs(first["expires_in"].as_u64().unwrap() + 1)).await;
    let (status, later) = server.login(&old_raw, None).await;
    assert_eq!(status, StatusCode::OK, "{later}");
    assert_ne!(later["access_token"], first["access_token"], "an expired token is not handed out again");
    assert!(later["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(hits(), before + 1, "not from the cache");

    let (status, rotated) = server.post(&format!("/v1/keys/{id}/rotate"), Some(OPERATOR), json!({"grace_secs": 1})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let end = keygate_admin::store::now() + 1;
    let asked_at = keygate_admin::store::now();
    let (status, graced) = server.login(&old_raw, Some("grace")).await;
    assert_eq!(status, StatusCode::OK, "{graced}");
    let graced_exp = asked_at + graced["expires_in"].as_u64().unwrap(); // at most its `exp`
    let before = hits();
    let (_, again) = server.login(&old_raw, Some("grace")).await;
    assert_eq!(again["access_token"], graced["access_token"]);
    assert_eq!(hits(), before + 1);
    while keygate_admin::store::now() <= end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(keygate_admin::store::now() < graced_exp, "the cached token outlives the grace, so only the grace refuses");
    let (status, body) = server.login(&old_raw, Some("grace")).await;
    assert_error(status, &body, 401, "invalid_api_key");
    let (status, fresh) = server.login(rotated["key"].as_str().unwrap(), Some("grace")).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    server.stop().await;
}
