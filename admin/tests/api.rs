//! The admin API over real HTTP: a server bound to 127.0.0.1:0 over a temporary sled
//! directory (see `common`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{assert_error, copy_dir, Server, OPERATOR, PROXY};
use jsonwebtoken::DecodingKey;
use keygate_admin::store::{Store, StoreOptions};
use keygate_core::token::{self, TokenExpectations};
use keygate_core::{AccessClaims, ApiKey, KeyHash, KeyKind, Mode};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

async fn verify(server: &Server, jwt: &str) -> AccessClaims {
    let (status, jwks) = server.get("/.well-known/jwks.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let kid = token::checked_kid(jwt).unwrap();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == json!(kid)).expect("kid in JWKS");
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str(), jwk["use"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
    );
    let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let expect = TokenExpectations { issuer: "keygate".into(), audience: "keygate-api".into(), leeway: 0 };
    token::verify(jwt, &key, &expect, keygate_admin::store::now()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_user_and_signin() {
    let server = Server::fresh().await;

    let (status, health) = server.get("/healthz", None).await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("ok")));

    let biz = server.business("Acme").await;
    assert!(is_id(&biz, "biz_"), "{biz}");
    let user = server.user("  Ann@Example.COM ", "correct horse", &[&biz]).await;
    assert!(is_id(user["id"].as_str().unwrap(), "usr_"));
    assert_eq!(user["email"], json!("ann@example.com"));

    let (status, body) =
        server.post("/v1/users", Some(OPERATOR), json!({"email": "ANN@example.com", "password": "another one", "businesses": [biz]})).await;
    assert_error(status, &body, 409, "email_taken");
    let (status, body) = server
        .post(
            "/v1/users",
            Some(OPERATOR),
            json!({"email": "bob@example.com", "password": "another one", "businesses": ["biz_0000000000000000"]}),
        )
        .await;
    assert_error(status, &body, 404, "business_not_found");

    let (status, signin) = server.signin("ann@example.com", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{signin}");
    assert_eq!((signin["tokenType"].as_str(), signin["expiresIn"].as_u64()), (Some("Bearer"), Some(7200)));
    assert_eq!(signin["businesses"], json!([{"id": biz, "name": "Acme"}]));
    let refresh = signin["refreshToken"].as_str().unwrap();
    assert!(refresh.starts_with("rt_") && refresh.len() == 46, "{refresh}");
    let claims = verify(&server, signin["accessToken"].as_str().unwrap()).await;
    assert_eq!(claims.sub, user["id"].as_str().unwrap());
    assert_eq!(claims.businesses, vec![biz.clone()]);
    assert!(is_id(&claims.sid, "ses_"));
    assert_eq!(claims.exp - claims.iat, 7200);

    // Wrong password and unknown email: the same answer, byte for byte.
    let wrong_password = server
        .client
        .post(format!("{}/auth/signin", server.base))
        .json(&json!({"email": "ann@example.com", "password": "wrong horse"}))
        .send()
        .await
        .unwrap();
    let wrong_email = server
        .client
        .post(format!("{}/auth/signin", server.base))
        .json(&json!({"email": "nobody@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_email.status(), StatusCode::UNAUTHORIZED);
    let (a, b) = (wrong_password.text().await.unwrap(), wrong_email.text().await.unwrap());
    assert_eq!(a, b);
    let body: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(body["code"], json!("invalid_credentials"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_api_key_login_sessions() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;

    let (status, created) = server
        .key_as(
            OPERATOR,
            &biz,
            json!({"kind": "pk", "mode": "live", "name": "web", "scopes": ["read", "orders:write"], "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let raw = created["key"].as_str().unwrap();
    let parsed = ApiKey::parse(raw).unwrap();
    assert_eq!((parsed.kind(), parsed.mode()), (KeyKind::Pk, Mode::Live));
    assert!(raw.starts_with(created["prefix"].as_str().unwrap()));
    assert!(is_id(created["id"].as_str().unwrap(), "key_"));
    assert_eq!((created["kind"].as_str(), created["mode"].as_str(), created["active"].as_bool()), (Some("pk"), Some("live"), Some(true)));
    assert_eq!(created["expires_at"], json!("2099-01-01T00:00:00Z"));
    assert_eq!(created["scopes"], json!(["read", "orders:write"]));

    // The same key and session: the same token. A new session: a new token.
    let (status, first) = server.login(raw, None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!((first["token_type"].as_str(), first["session_id"].as_str()), (Some("Bearer"), Some("default")));
    assert!(first["expires_in"].as_u64().unwrap() > 7190);
    let (_, again) = server.login(raw, None).await;
    assert_eq!(again["access_token"], first["access_token"]);
    let (_, tab) = server.login(raw, Some("tab-1")).await;
    assert_eq!(tab["session_id"], json!("tab-1"));
    assert_ne!(tab["access_token"], first["access_token"]);
    let (_, tab_again) = server.login(raw, Some("tab-1")).await;
    assert_eq!(tab_again["access_token"], tab["access_token"]);

    let claims = verify(&server, first["access_token"].as_str().unwrap()).await;
    assert_eq!(claims.sub, created["id"].as_str().unwrap());
    assert_eq!((claims.businesses.clone(), claims.mode, claims.scope.as_str()), (vec![biz.clone()], Some(Mode::Live), "read orders:write"));
    let tab_claims = verify(&server, tab["access_token"].as_str().unwrap()).await;
    assert_ne!(tab_claims.sid, claims.sid);
    assert!(is_id(&claims.sid, "ses_"));

    // Every way of being a wrong key gives the same 401.
    let mut typo = raw.to_owned().into_bytes();
    typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
    let unknown = ApiKey::generate(KeyKind::Sk, Mode::Test, (0..96u8).map(|i| i.wrapping_mul(7))).unwrap();
    for bad in ["", "sk_live_short", std::str::from_utf8(&typo).unwrap(), unknown.expose()] {
        let (status, body) = server.login(bad, None).await;
        assert_error(status, &body, 401, "invalid_api_key");
        assert_eq!(body["error"], json!("Invalid API key"));
    }
    let (status, body) = server.login(raw, Some("has space")).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = server.login(raw, Some(&"x".repeat(129))).await;
    assert_error(status, &body, 400, "invalid_request");

    // Deactivated: login refused, and the feed says so.
    let key_id = created["id"].as_str().unwrap();
    let (status, body) = server.post(&format!("/v1/keys/{key_id}/deactivate"), Some(OPERATOR), json!({})).await;
    assert_eq!((status, body["active"].as_bool()), (StatusCode::OK, Some(false)), "{body}");
    let (status, body) = server.login(raw, None).await;
    assert_error(status, &body, 401, "invalid_api_key");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_manage_keys_of_their_own_businesses_only() {
    let server = Server::fresh().await;
    let mine = server.business("Mine").await;
    let theirs = server.business("Theirs").await;
    let signin = server.signed_in("m@example.com", "password1", &[&mine]).await;
    let member = signin["accessToken"].as_str().unwrap().to_owned();

    let (status, body) = server.key_as(&member, &mine, json!({"kind": "sk", "mode": "test"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.key_as(&member, &theirs, json!({"kind": "sk", "mode": "test"})).await;
    assert_error(status, &body, 403, "forbidden");
    let (status, listed) = server.get(&format!("/v1/businesses/{mine}/keys"), Some(&member)).await;
    assert_eq!(status, StatusCode::OK);
    let listed = listed["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("key").is_none() && listed[0].get("hash").is_none(), "{listed:?}");

    // A token from an API-key login speaks for a key, not a person.
    let (_, login) = server.login(body_key(&server, &mine).await.as_str(), None).await;
    let (status, body) = server.key_as(login["access_token"].as_str().unwrap(), &mine, json!({"kind": "sk", "mode": "test"})).await;
    assert_error(status, &body, 403, "forbidden");

    // A revoked session's token stops working here too, and the feed carries the revocation.
    let (_, before) = server.snapshot("").await;
    let version = before["version"].as_u64().unwrap();
    let sid = verify(&server, &member).await.sid;
    let (status, body) = server.send(Method::DELETE, &format!("/v1/sessions/{sid}"), Some(&member), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.key_as(&member, &mine, json!({"kind": "sk", "mode": "test"})).await;
    assert_error(status, &body, 401, "unauthorized");
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(delta["revoked_sessions"][0]["sid"], json!(sid), "{delta}");

    // A paged full snapshot: the key pages carry no revocation; the last says that
    // revocation pages follow, and they hold the revoked session.
    let mut query = "?limit=1".to_owned();
    let last_key_page = loop {
        let (status, page) = server.snapshot(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page["revoked_sessions"].as_array().is_none_or(Vec::is_empty), "{page}");
        match page["next_after"].as_str() {
            Some(after) => query = format!("?limit=1&after={after}"),
            None => break page,
        }
    };
    assert_eq!(last_key_page["revocation_pages"], json!(true), "{last_key_page}");
    let (status, revoked) = server.snapshot("?limit=10&revoked=1").await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_sessions"].as_array().unwrap().iter().any(|r| r["sid"] == json!(sid)), "{revoked}");
    assert!(revoked["keys"].as_array().unwrap().is_empty() && revoked.get("next_after").is_none());
    server.stop().await;
}

async fn body_key(server: &Server, business: &str) -> String {
    server.key(business).await["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_full_delta_and_long_poll() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let first = server.key(&biz).await;

    let (status, full) = server.snapshot("").await;
    assert_eq!(status, StatusCode::OK, "{full}");
    assert!(full.get("since").is_none());
    let hash = KeyHash::of_raw(first["key"].as_str().unwrap()).to_hex();
    let entry = full["keys"].as_array().unwrap().iter().find(|k| k["hash"] == json!(hash)).expect("key in snapshot");
    assert_eq!((entry["id"].clone(), entry["business"].clone(), entry["active"].clone()), (first["id"].clone(), json!(biz), json!(true)));
    let (_, jwks) = server.get("/.well-known/jwks.json", None).await;
    assert_eq!(full["signing_keys"][0]["kid"], jwks["keys"][0]["kid"]);
    assert_eq!(full["signing_keys"][0]["x"], jwks["keys"][0]["x"]);
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(full["signing_keys"][0]["x"].as_str().unwrap()).unwrap();
    assert_eq!(x.len(), 32);
    // The core decodes what admin serves.
    let decoded = keygate_core::Snapshot::from_full(serde_json::from_value(full.clone()).unwrap()).unwrap();
    assert_eq!(decoded.key_count(), 1);
    let version = full["version"].as_u64().unwrap();
    let (_, health) = server.get("/healthz", None).await;
    assert_eq!(health["version"].as_u64(), Some(version));

    // A delta holds just what changed.
    let second = server.key(&biz).await;
    let (status, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(status, StatusCode::OK, "{delta}");
    assert_eq!((delta["since"].as_u64(), delta["version"].as_u64()), (Some(version), Some(version + 1)));
    let keys = delta["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], second["id"]);
    assert!(delta["signing_keys"].as_array().unwrap().is_empty());
    let mut applied = decoded;
    applied.apply(serde_json::from_value(delta.clone()).unwrap()).unwrap();
    assert_eq!(applied.key_count(), 2);

    // Ahead of the server: gone, take a full snapshot.
    let (status, body) = server.snapshot(&format!("?since={}", version + 50)).await;
    assert_error(status, &body, 410, "snapshot_gone");

    // Nothing changes: the long-poll answers an empty delta after `wait`.
    let now_version = version + 1;
    let started = Instant::now();
    let (status, empty) = server.snapshot(&format!("?since={now_version}&wait=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!((empty["version"].as_u64(), empty["since"].as_u64()), (Some(now_version), Some(now_version)));
    assert!(empty["keys"].as_array().unwrap().is_empty());

    // A key created meanwhile ends the long-poll at once.
    let poll = {
        let client = server.client.clone();
        let url = format!("{}/v1/snapshot?since={now_version}&wait=30", server.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client.get(url).bearer_auth(PROXY).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = server.key(&biz).await;
    let (status, body, took) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(body["version"].as_u64(), Some(now_version + 1));
    assert_eq!(body["keys"][0]["id"], third["id"]);
    server.stop().await;
}

/// The `since` query a proxy sends once it holds `snapshot` (its history, when admin gave one).
fn since_query(snapshot: &Value) -> String {
    let version = snapshot["version"].as_u64().unwrap();
    match snapshot["history"].as_str() {
        Some(history) => format!("?since={version}&history={history}"),
        None => format!("?since={version}"),
    }
}

/// A proxy synced at version N from one history; admin is restored from an older backup
/// and makes other writes past N. The proxy's `since=N` must not get that history's delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_admin_sends_no_delta_of_another_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let biz = server.business("Acme").await;
    server.key(&biz).await;
    server.stop().await;
    let backup = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), backup.path());

    // The original goes on to N; a proxy syncs there.
    let server = Server::start(dir.path()).await;
    for _ in 0..4 {
        server.key(&biz).await;
    }
    let (status, synced) = server.snapshot("?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    let n = synced["version"].as_u64().unwrap();
    let (status, delta) = server.snapshot(&since_query(&synced)).await;
    assert_eq!((status, delta["version"].as_u64()), (StatusCode::OK, Some(n)), "{delta}");
    server.stop().await;

    // Restored from the backup, admin makes other writes, past N.
    let server = Server::start(backup.path()).await;
    for _ in 0..6 {
        server.key(&biz).await;
    }
    let (_, health) = server.get("/healthz", None).await;
    assert!(health["version"].as_u64().unwrap() > n);
    let (status, body) = server.snapshot(&since_query(&synced)).await;
    assert_error(status, &body, 410, "snapshot_gone");
    // The same version in this history still works.
    let (_, own) = server.snapshot("?limit=100").await;
    let (status, _) = server.snapshot(&since_query(&own)).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changelog_trimmed_past_since_answers_gone() {
    let server = Server::fresh_with(|config| {
        config.changelog_retain = 2;
    })
    .await;
    let biz = server.business("Acme").await;
    for _ in 0..4 {
        server.key(&biz).await;
    }
    let (status, body) = server.snapshot("?since=1").await;
    assert_error(status, &body, 410, "snapshot_gone");
    let (status, body) = server.snapshot("?since=4").await;
    assert_eq!((status, body["keys"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let keys = format!("/v1/businesses/{biz}/keys");

    let (s, b) = server.raw(Method::POST, "/v1/businesses", Some(OPERATOR), b"{\"name\":".to_vec()).await;
    assert_error(s, &b, 400, "invalid_json");
    let (s, b) = server.raw(Method::POST, "/v1/businesses", Some(OPERATOR), Vec::new()).await;
    assert_error(s, &b, 400, "invalid_json");
    let (s, b) = server.post("/v1/businesses", Some(OPERATOR), json!({"name": "x", "extra": 1})).await;
    assert_error(s, &b, 400, "invalid_json");
    assert!(b["error"].as_str().unwrap().contains("unknown field `extra`"), "{b}");
    let (s, b) = server.post("/v1/businesses", Some(OPERATOR), json!({"name": "   "})).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) =
        server.post("/v1/users", Some(OPERATOR), json!({"email": "a@example.com", "password": 12345678901u64, "businesses": [biz]})).await;
    assert_error(s, &b, 400, "invalid_json");
    let (s, b) = server.post("/auth/signin", None, json!({"email": "a@example.com", "password": ["hunter2-secret"]})).await;
    assert_error(s, &b, 400, "invalid_json");
    assert!(!b.to_string().contains("hunter2-secret"), "{b}");
    let (s, b) =
        server.post("/v1/users", Some(OPERATOR), json!({"email": "a@example.com", "password": "short", "businesses": [biz]})).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) =
        server.post("/v1/users", Some(OPERATOR), json!({"email": "not-an-email", "password": "long enough", "businesses": [biz]})).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = server.raw(Method::POST, "/v1/businesses", Some(OPERATOR), vec![b' '; 70 * 1024]).await;
    assert_error(s, &b, 413, "payload_too_large");

    let (s, b) = server.key_as(OPERATOR, &biz, json!({"kind": "xk", "mode": "test"})).await;
    assert_error(s, &b, 400, "invalid_json");
    let (s, b) = server.key_as(OPERATOR, &biz, json!({"kind": "sk", "mode": "test", "expires_at": "2001-01-01T00:00:00Z"})).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = server.key_as(OPERATOR, &biz, json!({"kind": "sk", "mode": "test", "expires_at": "next tuesday"})).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = server.key_as(OPERATOR, &biz, json!({"kind": "sk", "mode": "test", "scopes": ["has space"]})).await;
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = server.key_as(OPERATOR, "biz_0000000000000000", json!({"kind": "sk", "mode": "test"})).await;
    assert_error(s, &b, 404, "business_not_found");
    let (s, b) = server.key_as(OPERATOR, "nonsense", json!({"kind": "sk", "mode": "test"})).await;
    assert_error(s, &b, 404, "business_not_found");
    let (s, b) = server.post(&keys, Some(OPERATOR), json!([])).await;
    assert_error(s, &b, 400, "invalid_json");

    for query in ["?since=abc", "?since=-1", "?since=1&wait=61", "?wait=5", "?bogus=1"] {
        let (s, b) = server.snapshot(query).await;
        assert_error(s, &b, 400, "invalid_query");
    }
    let (s, b) = server.get("/no/such/route", None).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = server.send(Method::DELETE, "/v1/businesses", Some(OPERATOR), None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = server.send(Method::PUT, "/healthz", None, None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = server.post("/v1/keys/key_0000000000000000/deactivate", Some(OPERATOR), json!({})).await;
    assert_error(s, &b, 404, "key_not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_bearers_are_unauthorized() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    for bearer in [None, Some("nope"), Some(PROXY)] {
        let (s, b) = server.post("/v1/businesses", bearer, json!({"name": "x"})).await;
        assert_error(s, &b, 401, "unauthorized");
        let (s, b) =
            server.post("/v1/users", bearer, json!({"email": "a@example.com", "password": "long enough", "businesses": [biz]})).await;
        assert_error(s, &b, 401, "unauthorized");
        let (s, b) = server.key_as(bearer.unwrap_or(""), &biz, json!({"kind": "sk", "mode": "test"})).await;
        assert_error(s, &b, 401, "unauthorized");
    }
    for bearer in [None, Some("nope"), Some(OPERATOR)] {
        let (s, b) = server.get("/v1/snapshot", bearer).await;
        assert_error(s, &b, 401, "unauthorized");
    }
    // Authentication is checked before the body is even read.
    let (s, b) = server.raw(Method::POST, "/v1/businesses", Some("nope"), b"{not json".to_vec()).await;
    assert_error(s, &b, 401, "unauthorized");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let biz = server.business("Acme").await;
    let first = server.key(&biz).await;
    let (_, login) = server.login(first["key"].as_str().unwrap(), Some("s1")).await;
    // The last write before the image: sled only writes its log buffers out on a flush
    // (or as a side effect of later writes), so this key is on disk only if the 2xx
    // waited for a flush.
    let key = server.key(&biz).await;
    let raw = key["key"].as_str().unwrap().to_owned();

    // A crash image: the directory as it is right after the 2xx, server still running.
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    {
        let store = Store::open(image.path(), &StoreOptions::default()).unwrap();
        let stored = store.key_by_hash(&KeyHash::of_raw(&raw)).unwrap().expect("acknowledged key in the crash image");
        assert_eq!(stored.id, key["id"].as_str().unwrap());
        assert_eq!(store.durable_version(), 3, "signing key + two keys");
        assert!(store.business(&biz).unwrap().is_some());
    }

    // Restart on the same directory: same key, same signing key, same session token.
    server.stop().await;
    let server = Server::start(dir.path()).await;
    let (status, again) = server.login(first["key"].as_str().unwrap(), Some("s1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["access_token"], login["access_token"]);
    let (_, full) = server.snapshot("").await;
    assert_eq!(full["version"].as_u64(), Some(3));
    assert!(full["keys"].as_array().unwrap().iter().any(|k| k["hash"] == json!(KeyHash::of_raw(&raw).to_hex())));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_flushes_and_keep_versions_contiguous() {
    let server = std::sync::Arc::new(Server::fresh().await);
    let biz = server.business("Acme").await;
    let (_, before) = server.snapshot("").await;
    let base = before["version"].as_u64().unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let (server, biz) = (server.clone(), biz.clone());
            tokio::spawn(async move { server.key(&biz).await["id"].as_str().unwrap().to_owned() })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    let (_, delta) = server.snapshot(&format!("?since={base}")).await;
    assert_eq!(delta["version"].as_u64(), Some(base + 24));
    let mut seen: Vec<String> = delta["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_owned()).collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_pending_long_polls() {
    let server = Server::fresh().await;
    let (_, full) = server.snapshot("").await;
    let version = full["version"].as_u64().unwrap();
    let poll = {
        let client = server.client.clone();
        let url = format!("{}/v1/snapshot?since={version}&wait=60", server.base);
        tokio::spawn(async move { client.get(url).bearer_auth(PROXY).send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let answer = tokio::time::timeout(Duration::from_secs(5), poll).await.unwrap().unwrap();
    assert_eq!((answer["version"].as_u64(), answer["since"].as_u64()), (Some(version), Some(version)));
}
