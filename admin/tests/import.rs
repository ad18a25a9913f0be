//! `POST /v1/import/keys` over real HTTP: an imported key is not imported again for
//! another kind, and the endpoint's limits (operator only, 1000 records, 1 MiB body).
//! The `keygate-admin import` command is tested with its binary, in admin-cli.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_error, Server, OPERATOR};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn the_endpoint_refuses_a_kind_change_and_guards_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    let biz = server.business("Acme").await;
    let raw = "rk_live_from_elsewhere_0001";
    let (status, body) = server
        .post(
            "/v1/import/keys",
            Some(OPERATOR),
            json!({"keys": [{"business": biz, "kind": "sk", "mode": "live", "name": "a", "key": raw}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["imported"], json!(1), "{body}");

    // The same key for another kind is refused, not silently changed.
    let (status, body) = server
        .post("/v1/import/keys", Some(OPERATOR), json!({"keys": [{"business": biz, "kind": "pk", "mode": "live", "key": raw}]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"][0]["status"], json!("rejected"), "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().contains("another business, kind or mode"));
    assert!(!body.to_string().contains(raw));

    // Operator only; at most 1000 records; 1 MiB body.
    let (status, body) = server.post("/v1/import/keys", None, json!({"keys": []})).await;
    assert_error(status, &body, 401, "unauthorized");
    let many: Vec<Value> =
        (0..1001).map(|i| json!({"business": biz, "kind": "sk", "mode": "live", "key": format!("many-keys-{i:05}")})).collect();
    let (status, body) = server.post("/v1/import/keys", Some(OPERATOR), json!({ "keys": many })).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = server.raw(Method::POST, "/v1/import/keys", Some(OPERATOR), vec![b' '; 1024 * 1024 + 1]).await;
    assert_error(status, &body, 413, "payload_too_large");
    // A body over the global 64 KiB cap but under the import's is accepted.
    let big: Vec<Value> = (0..1000)
        .map(|i| json!({"business": biz, "kind": "sk", "mode": "live", "name": "n".repeat(100), "key": format!("big-batch-key-{i:05}")}))
        .collect();
    let (status, body) = server.post("/v1/import/keys", Some(OPERATOR), json!({ "keys": big })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["imported"], json!(1000));
    server.stop().await;
}
