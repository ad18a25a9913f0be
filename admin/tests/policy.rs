//! Address allowlists and limits set through the API: validation, who may set them, and
//! that they reach the feed (full snapshots and deltas) the filters read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_error, Server, OPERATOR};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn patch(server: &Server, path: &str, bearer: &str, body: Value) -> (StatusCode, Value) {
    server.send(Method::PATCH, path, Some(bearer), Some(body)).await
}

fn entry_of<'a>(snapshot: &'a Value, key_id: &str) -> &'a Value {
    snapshot["keys"].as_array().unwrap().iter().find(|k| k["id"] == json!(key_id)).expect("key in the snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_allowlists_and_limits_are_validated_stored_and_fed() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let member = server.member("ann@example.com", "correct horse", &[&biz]).await;

    let body = json!({"kind": "sk", "mode": "live", "allowed_ips": ["10.0.0.0/8", "2001:db8::/32", "10.0.0.0/8"], "rate_limits": ["5/s", "100/h"]});
    let (status, key) = server.key_as(&member, &biz, body).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["allowed_ips"], json!(["10.0.0.0/8", "2001:db8::/32"]), "duplicates dropped");
    assert_eq!(key["rate_limits"], json!(["5/s", "100/h"]));
    let id = key["id"].as_str().unwrap().to_owned();

    let (_, full) = server.snapshot("").await;
    let version = full["version"].as_u64().unwrap();
    assert_eq!(entry_of(&full, &id)["allowed_ips"], json!(["10.0.0.0/8", "2001:db8::/32"]));
    assert_eq!(entry_of(&full, &id)["rate_limits"], json!(["5/s", "100/h"]));

    for (body, hint) in [
        (json!({"allowed_ips": ["10.0.0.1/8"]}), "10.0.0.0/8"),
        (json!({"allowed_ips": ["not an address"]}), "allowed_ips"),
        (json!({"allowed_ips": ["::/129"]}), "allowed_ips"),
        (json!({"rate_limits": ["5/week"]}), "rate_limits"),
        (json!({"rate_limits": ["0/s"]}), "positive"),
        (json!({"rate_limits": ["5/s", "9/s"]}), "per s"),
        (json!({"rate_limits": []}), "null for none"),
        (json!({"rate_limits": ["1/s", "1/m", "1/h", "1/d", "2/d"]}), "at most 4"),
        (json!({}), "nothing to change"),
    ] {
        let (status, err) = patch(&server, &format!("/v1/keys/{id}"), &member, body.clone()).await;
        assert_error(status, &err, 400, "invalid_request");
        assert!(err["error"].as_str().unwrap().contains(hint), "{body} → {err}");
    }
    let too_many: Vec<String> = (0..101).map(|i| format!("10.0.{i}.0/24")).collect();
    let (status, err) = patch(&server, &format!("/v1/keys/{id}"), &member, json!({ "allowed_ips": too_many })).await;
    assert_error(status, &err, 400, "invalid_request");

    // Fields left out stay; null clears; the change reaches the filters as a delta.
    let (status, key) = patch(&server, &format!("/v1/keys/{id}"), &member, json!({"rate_limits": null})).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!((key["allowed_ips"].as_array().unwrap().len(), &key["rate_limits"]), (2, &Value::Null));
    let (status, key) = patch(&server, &format!("/v1/keys/{id}"), &member, json!({"allowed_ips": ["192.0.2.7"]})).await;
    assert_eq!((status, &key["allowed_ips"]), (StatusCode::OK, &json!(["192.0.2.7/32"])));
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    let entry = entry_of(&delta, &id);
    assert_eq!((&entry["allowed_ips"], entry.get("rate_limits")), (&json!(["192.0.2.7/32"]), None));
    let (_, key) = patch(&server, &format!("/v1/keys/{id}"), &member, json!({"allowed_ips": null})).await;
    assert_eq!(key["allowed_ips"], json!([]));

    // The list shows them; another business's member may not change them.
    let (_, list) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(&member)).await;
    assert_eq!(list["keys"][0]["allowed_ips"], json!([]));
    let other = server.business("Other").await;
    let stranger = server.member("bob@example.com", "correct horse", &[&other]).await;
    let (status, err) = patch(&server, &format!("/v1/keys/{id}"), &stranger, json!({"allowed_ips": ["10.0.0.0/8"]})).await;
    assert_error(status, &err, 403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_limits_are_set_cleared_and_fed() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let member = server.member("ann@example.com", "correct horse", &[&biz]).await;
    let path = format!("/v1/businesses/{biz}/limits");

    let (status, limits) = server.get(&path, Some(&member)).await;
    assert_eq!((status, limits), (StatusCode::OK, json!({"business": biz, "per_key": null, "shared": null})));
    let (_, before) = server.snapshot("").await;
    assert!(before.get("business_limits").is_none());
    let version = before["version"].as_u64().unwrap();

    let (status, limits) = patch(&server, &path, &member, json!({"per_key": ["50/m"], "shared": ["10/s", "5000/d"]})).await;
    assert_eq!((status, &limits["per_key"], &limits["shared"]), (StatusCode::OK, &json!(["50/m"]), &json!(["10/s", "5000/d"])));
    let (_, full) = server.snapshot("").await;
    assert_eq!(full["business_limits"], json!([{"business": biz, "per_key": ["50/m"], "shared": ["10/s", "5000/d"]}]));

    // Only `shared` cleared: `per_key` stays; the delta carries the whole new state.
    let (_, limits) = patch(&server, &path, OPERATOR, json!({"shared": null})).await;
    assert_eq!((&limits["per_key"], &limits["shared"]), (&json!(["50/m"]), &Value::Null));
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(delta["business_limits"], json!([{"business": biz, "per_key": ["50/m"]}]));
    let (_, limits) = patch(&server, &path, &member, json!({"per_key": null})).await;
    assert_eq!(limits["per_key"], Value::Null);
    let (_, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(delta["business_limits"], json!([{"business": biz}]), "a cleared override is a removal");
    let (_, full) = server.snapshot("").await;
    assert!(full.get("business_limits").is_none());

    let (status, err) = patch(&server, &path, &member, json!({"per_key": ["1/fortnight"]})).await;
    assert_error(status, &err, 400, "invalid_request");
    let (status, err) = patch(&server, &path, &member, json!({"colour": "red"})).await;
    assert_eq!(status.as_u16(), 400, "{err}");
    let other = server.business("Other").await;
    let (status, err) = server.get(&format!("/v1/businesses/{other}/limits"), Some(&member)).await;
    assert_error(status, &err, 403, "forbidden");
    let (status, err) = server.get("/v1/businesses/biz_0000000000000000/limits", Some(OPERATOR)).await;
    assert_error(status, &err, 404, "business_not_found");
}
