//! Trusted issuers over real HTTP (sled, or PostgreSQL with `KEYGATE_TEST_POSTGRES`): the
//! API's validation and scoping, the feed carrying issuers (full and delta), and admin's
//! refresh of a provider's keys from a JWKS served here on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/test_ca.rs"]
mod test_ca;

use common::{assert_error, Server, OPERATOR};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An Ed25519 public key as a JWK (any 32 bytes decode as a public key for these tests).
fn jwk(kid: &str, byte: u8) -> Value {
    use base64::Engine;
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([byte; 32])})
}

fn static_body(issuer: &str, keys: Vec<Value>) -> Value {
    json!({"issuer": issuer, "audiences": ["api"], "algorithms": ["EdDSA"], "businesses_claim": "orgs", "jwks": {"keys": keys}})
}

/// A JWKS on loopback that the test can change: (its URL, the document served).
async fn jwks_server() -> (String, Arc<Mutex<Value>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let document = Arc::new(Mutex::new(json!({"keys": [jwk("k1", 1)]})));
    let served = Arc::clone(&document);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let body = served.lock().unwrap().to_string();
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        }
    });
    (url, document)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_are_validated_scoped_and_reach_the_feed() {
    let server = Server::fresh().await;
    let a = server.business("A").await;
    let b = server.business("B").await;
    let path = format!("/v1/businesses/{a}/issuers");
    let bad: Vec<(Value, &str)> = vec![
        (json!({"issuer": "https://idp.test", "audiences": []}), "invalid_request"),
        (
            json!({"issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["HS256"], "jwks": {"keys": [jwk("k", 1)]}}),
            "invalid_request",
        ),
        (json!({"issuer": "has space", "audiences": ["api"], "jwks": {"keys": [jwk("k", 1)]}}), "invalid_request"),
        (json!({"issuer": "keygate", "audiences": ["api"], "jwks": {"keys": [jwk("k", 1)]}}), "invalid_request"),
        (json!({"issuer": "https://idp.test", "audiences": ["api"], "jwks_uri": "ftp://x/y"}), "invalid_request"),
        (json!({"issuer": "https://idp.test", "audiences": ["api"], "jwks_uri": "http://x/y", "jwks": {"keys": []}}), "invalid_request"),
        // Discovery needs an issuer that is an http(s) URL.
        (json!({"issuer": "urn:idp", "audiences": ["api"]}), "invalid_request"),
        // An unknown host fails the fetch.
        (json!({"issuer": "https://idp.test", "audiences": ["api"]}), "jwks_unavailable"),
        (
            json!({"issuer": "https://idp.test", "audiences": ["api"], "jwks": {"keys": [{"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"}]}}),
            "jwks_unavailable",
        ),
        (json!({"issuer": "https://idp.test", "audiences": ["api"], "jwks_uri": "http://127.0.0.1:1/jwks"}), "jwks_unavailable"),
        (json!({"issuer": "https://idp.test", "audiences": ["api"], "unknown": 1}), "invalid_json"),
    ];
    for (body, code) in bad {
        let (status, answer) = server.post(&path, Some(OPERATOR), body.clone()).await;
        assert_error(status, &answer, 400, code);
    }
    let (status, answer) =
        server.post("/v1/businesses/biz_nope/issuers", Some(OPERATOR), static_body("https://idp.test", vec![jwk("k1", 1)])).await;
    assert_error(status, &answer, 404, "business_not_found");
    // A member of B may not register or list for A.
    let member_b = server.member("b@example.com", "a long password 1", &[&b]).await;
    let (status, answer) = server.post(&path, Some(&member_b), static_body("https://idp.test", vec![jwk("k1", 1)])).await;
    assert_error(status, &answer, 403, "forbidden");
    let member_a = server.member("a@example.com", "a long password 2", &[&a]).await;
    let (_, before) = server.snapshot("?limit=100").await;
    let version = before["version"].as_u64().unwrap();
    let (status, created) = server.post(&path, Some(&member_a), static_body("https://idp.test", vec![jwk("k1", 1), jwk("k2", 2)])).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["source"], "static");
    assert_eq!(created["keys"], json!([{"kid": "k1", "kty": "OKP"}, {"kid": "k2", "kty": "OKP"}]));
    let (status, again) = server.post(&path, Some(OPERATOR), static_body("https://idp.test", vec![jwk("k1", 1)])).await;
    assert_error(status, &again, 409, "issuer_exists");
    // B may register the same provider for itself: a registration of its own.
    let (status, _) =
        server.post(&format!("/v1/businesses/{b}/issuers"), Some(&member_b), static_body("https://idp.test", vec![jwk("k1", 1)])).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, listed) = server.get(&path, Some(&member_a)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["issuers"].as_array().unwrap().len(), 1, "{listed}");
    let (status, answer) = server.get(&path, Some(&member_b)).await;
    assert_error(status, &answer, 403, "forbidden");

    // The feed: in a full snapshot and in the delta, each issuer for its own business only.
    let (_, full) = server.snapshot("?limit=100").await;
    let issuers = full["issuers"].as_array().unwrap();
    assert_eq!(issuers.len(), 2, "{full}");
    let ours = issuers.iter().find(|i| i["id"] == created["id"]).unwrap();
    assert_eq!(ours["businesses"], json!([a]));
    assert_eq!(ours["keys"].as_array().unwrap().len(), 2);
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(delta["issuers"].as_array().unwrap().len(), 2, "{delta}");

    // Removal: 403 for another business's member, 404 unknown, then gone from the feed.
    let id = created["id"].as_str().unwrap();
    let (status, answer) = server.send(reqwest::Method::DELETE, &format!("/v1/issuers/{id}"), Some(&member_b), None).await;
    assert_error(status, &answer, 403, "forbidden");
    let (status, answer) = server.send(reqwest::Method::DELETE, "/v1/issuers/iss_x", Some(OPERATOR), None).await;
    assert_error(status, &answer, 404, "issuer_not_found");
    let (_, head) = server.snapshot("?limit=100").await;
    let (status, removed) = server.send(reqwest::Method::DELETE, &format!("/v1/issuers/{id}"), Some(&member_a), None).await;
    assert_eq!((status, removed), (StatusCode::OK, json!({"id": id, "removed": true})));
    let (_, delta) = server.snapshot(&format!("?since={}", head["version"])).await;
    assert_eq!(delta["removed_issuers"], json!([id]), "{delta}");
    let (_, full) = server.snapshot("?limit=100").await;
    assert_eq!(full["issuers"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_provider_keys_are_pinned_and_fed_and_a_failing_fetch_keeps_them() {
    let server = Server::fresh_with(|c| c.issuer_refresh_secs = 1).await;
    let a = server.business("A").await;
    let (url, document) = jwks_server().await;
    let body = json!({"issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks_uri": url});
    let (status, created) = server.post(&format!("/v1/businesses/{a}/issuers"), Some(OPERATOR), body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["keys"], json!([{"kid": "k1", "kty": "OKP"}]));
    let (_, head) = server.snapshot("?limit=100").await;
    let version = head["version"].as_u64().unwrap();
    // The provider rotates: within a few refreshes admin pins the new set and feeds it.
    *document.lock().unwrap() = json!({"keys": [jwk("k2", 2)]});
    let started = Instant::now();
    let delta = loop {
        let (_, delta) = server.snapshot(&format!("?since={version}&wait=2")).await;
        if delta["issuers"].as_array().is_some_and(|i| !i.is_empty()) {
            break delta;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the rotation did not reach the feed: {delta}");
    };
    assert_eq!(delta["issuers"][0]["keys"][0]["kid"], "k2", "{delta}");
    // Unchanged keys write nothing.
    let settled = delta["version"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, later) = server.snapshot(&format!("?since={settled}")).await;
    assert_eq!(later["version"].as_u64().unwrap(), settled, "{later}");
    // The provider serves no usable key: the pinned keys stay, the list says why.
    *document.lock().unwrap() = json!({"keys": []});
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, listed) = server.get(&format!("/v1/businesses/{a}/issuers"), Some(OPERATOR)).await;
    let issuer = &listed["issuers"][0];
    assert_eq!(issuer["keys"], json!([{"kid": "k2", "kty": "OKP"}]), "{listed}");
    assert!(issuer["refresh_error"].as_str().unwrap().contains("no usable signing key"), "{listed}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_and_removing_an_issuer_is_audited() {
    let server = Server::fresh().await;
    let biz = server.business("Audited").await;
    let (status, issuer) =
        server.post(&format!("/v1/businesses/{biz}/issuers"), Some(OPERATOR), static_body("https://idp.audit", vec![jwk("k1", 7)])).await;
    assert_eq!(status, StatusCode::CREATED, "{issuer}");
    let id = issuer["id"].as_str().unwrap().to_owned();
    let (status, body) = server.send(Method::DELETE, &format!("/v1/issuers/{id}"), Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, page) = server.get(&format!("/v1/audit?object_id={id}"), Some(OPERATOR)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["issuer.remove", "issuer.create"], "{page}");
    assert_eq!(entries[1]["details"], json!({"issuer": "https://idp.audit", "kids": ["k1"]}));
    assert_eq!(entries[0]["businesses"], json!([biz]));
}

// ----- https: a provider behind a private test CA (common/test_ca.rs) -----

/// An OIDC provider over TLS on 127.0.0.1: discovery at `/.well-known/openid-configuration`,
/// the JWKS at `/jwks` (changeable). (issuer URL, port, the JWKS served).
async fn https_provider(ca: &test_ca::TestCa) -> (String, u16, Arc<Mutex<Value>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer = format!("https://127.0.0.1:{port}");
    let document = Arc::new(Mutex::new(json!({"keys": [jwk("k1", 1)]})));
    let served = Arc::clone(&document);
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            // A client that refuses the certificate ends the handshake: nothing to serve.
            let Ok(mut tls) = acceptor.accept(stream).await else { continue };
            let mut buf = [0u8; 4096];
            let n = tls.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = if request.starts_with("GET /.well-known/openid-configuration ") {
                discovery.clone()
            } else {
                served.lock().unwrap().to_string()
            };
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = tls.write_all(head.as_bytes()).await;
            let _ = tls.write_all(body.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (issuer, port, document)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_provider_is_trusted_only_with_a_certificate_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let test_ca = test_ca::make(dir.path());
    let (issuer, port, document) = https_provider(&test_ca).await;
    let body = |issuer: &str| json!({"issuer": issuer, "audiences": ["api"], "algorithms": ["EdDSA"]});

    // Without the test CA, the Mozilla roots alone do not vouch for the provider.
    let untrusting = Server::fresh().await;
    let a = untrusting.business("A").await;
    let (status, answer) = untrusting.post(&format!("/v1/businesses/{a}/issuers"), Some(OPERATOR), body(&issuer)).await;
    assert_error(status, &answer, 400, "jwks_unavailable");
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(message.contains("TLS handshake failed") && message.contains("certificate"), "{answer}");
    untrusting.stop().await;

    let server = Server::fresh_with(|c| {
        c.issuer_ca_file = Some(test_ca.ca.clone());
        c.issuer_refresh_secs = 1;
    })
    .await;
    let a = server.business("A").await;
    let path = format!("/v1/businesses/{a}/issuers");
    // The certificate names 127.0.0.1 only: the same provider reached as localhost is refused.
    let (status, answer) = server
        .post(&path, Some(OPERATOR), json!({"issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks_uri": format!("https://localhost:{port}/jwks")}))
        .await;
    assert_error(status, &answer, 400, "jwks_unavailable");
    assert!(answer["error"].as_str().unwrap_or_default().contains("certificate"), "{answer}");
    // Discovery and the JWKS over https, pinned before the 201.
    let (status, created) = server.post(&path, Some(OPERATOR), body(&issuer)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["source"], "discovery");
    assert_eq!(created["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(created["keys"], json!([{"kid": "k1", "kty": "OKP"}]));
    // A rotation at the provider is fetched again over https and pinned.
    *document.lock().unwrap() = json!({"keys": [jwk("k2", 2)]});
    let started = Instant::now();
    loop {
        let (_, listed) = server.get(&path, Some(OPERATOR)).await;
        if listed["issuers"][0]["keys"] == json!([{"kid": "k2", "kty": "OKP"}]) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the rotation was not pinned: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_addresses_are_never_fetched_and_loopback_not_with_public_only() {
    let (url, _document) = jwks_server().await;
    let body = |uri: &str| json!({"issuer": "https://idp.test", "audiences": ["api"], "algorithms": ["EdDSA"], "jwks_uri": uri});
    let server = Server::fresh_with(|c| c.issuer_public_only = true).await;
    let a = server.business("A").await;
    let path = format!("/v1/businesses/{a}/issuers");
    let (status, answer) = server.post(&path, Some(OPERATOR), body(&url)).await;
    assert_error(status, &answer, 400, "jwks_unavailable");
    assert!(answer["error"].as_str().unwrap_or_default().contains("a loopback address"), "{answer}");
    server.stop().await;
    // By default loopback is fetched (a provider beside admin), a cloud's metadata service never.
    let server = Server::fresh().await;
    let a = server.business("A").await;
    let path = format!("/v1/businesses/{a}/issuers");
    let (status, created) = server.post(&path, Some(OPERATOR), body(&url)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    for uri in ["http://169.254.169.254/latest/meta-data/jwks", "http://[fe80::1]/jwks", "http://0.0.0.0/jwks"] {
        let (status, answer) = server.post(&path, Some(OPERATOR), json!({"issuer": uri, "audiences": ["api"], "jwks_uri": uri})).await;
        assert_error(status, &answer, 400, "jwks_unavailable");
        assert!(answer["error"].as_str().unwrap_or_default().contains("admin does not fetch from there"), "{answer}");
    }
    server.stop().await;
}
