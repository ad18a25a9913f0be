//! `/openapi.json` against the running server, both ways: every route the server
//! answers is described, and every described route answers. A route "answers" a method
//! when the reply is anything but the router's own `not_found` / `method_not_allowed`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{Server, OPERATOR};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Does the server route `method path` to a handler?
async fn answers(server: &Server, method: &str, path: &str) -> bool {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let response = server.client.request(method.clone(), format!("{}{path}", server.base)).bearer_auth(OPERATOR).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let code = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["code"].as_str().map(str::to_owned));
    let unrouted = (status == StatusCode::NOT_FOUND && code.as_deref() == Some("not_found")) || status == StatusCode::METHOD_NOT_ALLOWED;
    assert!(!status.is_server_error(), "{method} {path} → {status}: {text}");
    !unrouted
}

/// A concrete path for a template: every `{param}` becomes a placeholder segment.
fn concrete(template: &str) -> String {
    template.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/")
}

fn normalised(template: &str) -> String {
    template.split('/').map(|s| if s.starts_with('{') { "{id}" } else { s }).collect::<Vec<_>>().join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_route_is_described_and_every_described_route_answers() {
    let server = Server::fresh().await;

    let response = server.client.get(format!("{}/openapi.json", server.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);

    let mut described = BTreeSet::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            assert!(METHODS.contains(&method.as_str()), "{method} {template}");
            // The JSON API answers errors with the one error body; the dashboard's files do not.
            let page = operation["tags"] == serde_json::json!(["dashboard"]);
            assert!(page || operation["responses"]["default"].is_object(), "{method} {template} has no default (error) response");
            assert!(operation["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {template} has no summary");
            described.insert((method, normalised(template)));
        }
    }

    // Candidates: every template the metrics know (the server's own route list) and
    // every described one, under every method.
    let mut templates: BTreeSet<String> = keygate_admin::metrics::ROUTES.iter().map(|t| t.to_string()).collect();
    templates.extend(described.iter().map(|(_, t)| t.clone()));
    let mut answered = BTreeSet::new();
    for template in &templates {
        for method in METHODS {
            if answers(&server, method, &concrete(template)).await {
                answered.insert((method.to_owned(), template.clone()));
            }
        }
    }
    let undescribed: Vec<_> = answered.difference(&described).collect();
    let dead: Vec<_> = described.difference(&answered).collect();
    assert!(undescribed.is_empty(), "answered but not in /openapi.json: {undescribed:?}");
    assert!(dead.is_empty(), "in /openapi.json but not answered: {dead:?}");
    assert!(answered.len() >= 20, "{answered:?}");

    // A 405 says what is allowed (RFC 9110), from the same document.
    let response = server.client.put(format!("{}/v1/businesses/x/keys", server.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, POST");

    // The probe itself can tell: unknown paths and methods are not "answered".
    assert!(!answers(&server, "GET", "/v1/nothing").await);
    assert!(!answers(&server, "PUT", "/healthz").await);
    assert!(!answers(&server, "GET", "/v1/keys/x/fly").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_describe_real_answers() {
    // A few real answers, checked against the fields the document promises.
    let server = Server::fresh().await;
    let doc: Value = server.client.get(format!("{}/openapi.json", server.base)).send().await.unwrap().json().await.unwrap();
    let schema = |name: &str| doc["components"]["schemas"][name].clone();

    let required = |name: &str| -> BTreeSet<String> {
        schema(name)["required"].as_array().unwrap_or(&vec![]).iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    };
    let properties = |name: &str| -> BTreeSet<String> { schema(name)["properties"].as_object().unwrap().keys().cloned().collect() };

    let business = server.business("Acme").await;
    let (status, key) = server.key_as(OPERATOR, &business, serde_json::json!({"kind": "sk", "mode": "test"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let fields: BTreeSet<String> = key.as_object().unwrap().keys().cloned().collect();
    assert!(required("KeyView").is_subset(&fields), "{fields:?} vs {:?}", required("KeyView"));
    assert!(fields.is_subset(&properties("KeyView")), "{fields:?} vs {:?}", properties("KeyView"));
    assert_eq!(schema("KeyKind")["enum"], serde_json::json!(["sk", "pk"]));

    let (status, error) = server.get("/v1/businesses/biz_x/keys", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let fields: BTreeSet<String> = error.as_object().unwrap().keys().cloned().collect();
    assert_eq!(fields, properties("ErrorBody"));
    assert_eq!(required("ErrorBody"), properties("ErrorBody"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_json_objects() {
    // Found by schemathesis: serde builds a struct from an array of its fields, so
    // `["Acme"]` created a business and `[]` rotated a key.
    let server = Server::fresh().await;
    let (status, body) = server.raw(Method::POST, "/v1/businesses", Some(OPERATOR), br#"["Acme"]"#.to_vec()).await;
    common::assert_error(status, &body, 400, "invalid_json");
    let business = server.business("Acme").await;
    let (_, key) = server.key_as(OPERATOR, &business, serde_json::json!({"kind": "sk", "mode": "test"})).await;
    let rotate = format!("/v1/keys/{}/rotate", key["id"].as_str().unwrap());
    let (status, body) = server.raw(Method::POST, &rotate, Some(OPERATOR), b"[]".to_vec()).await;
    common::assert_error(status, &body, 400, "invalid_json");
    let (status, body) = server.raw(Method::POST, "/v1/import/keys", Some(OPERATOR), br#"{"keys": [[]]}"#.to_vec()).await;
    common::assert_error(status, &body, 400, "invalid_json");
    // An absent body, an empty one and `null` all mean "no options".
    for empty in [&b""[..], b"  ", b"null"] {
        let (status, body) = server.raw(Method::POST, &rotate, Some(OPERATOR), empty.to_vec()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server.stop().await;
}
