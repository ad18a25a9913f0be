//! The audit log over HTTP (sled, or PostgreSQL with KEYGATE_TEST_POSTGRES): every change
//! made through the API has an entry, the operator sees all, a member only their
//! businesses', filters and paging work, and no entry holds a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_error, Server, OPERATOR};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn audit(server: &Server, bearer: &str, query: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/audit{query}"), Some(bearer)).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

fn actions(page: &Value) -> Vec<String> {
    page["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_audited_and_members_see_their_businesses_only() {
    let server = Server::fresh().await;
    let mine = server.business("Mine").await;
    let theirs = server.business("Theirs").await;
    let password = "correct horse battery";
    let member = server.member("m@example.com", password, &[&mine]).await;

    // A member's changes to a key of their business.
    let (status, created) = server.key_as(&member, &mine, json!({"kind": "sk", "mode": "test", "name": "ci"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key_id = created["id"].as_str().unwrap().to_owned();
    let (status, rotated) = server.post(&format!("/v1/keys/{key_id}/rotate"), Some(&member), json!({"grace_secs": 60})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, _) = server.post(&format!("/v1/keys/{key_id}/deactivate"), Some(&member), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Unchanged: no entry.
    let (status, _) = server.post(&format!("/v1/keys/{key_id}/deactivate"), Some(&member), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // The operator's, on the other business.
    let other = server.key(&theirs).await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .send(Method::PATCH, &format!("/v1/keys/{other_id}"), Some(OPERATOR), Some(json!({"expires_at": "2099-01-01T00:00:00Z"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.post("/v1/signing-keys/rotate", Some(OPERATOR), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A refused change: no entry.
    let (status, _) = server.key_as(&member, &theirs, json!({"kind": "sk", "mode": "test"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let all = audit(&server, OPERATOR, "").await;
    assert_eq!(
        actions(&all),
        [
            "signing_key.rotate",
            "key.update",
            "key.create",
            "key.deactivate",
            "key.rotate",
            "key.create",
            "user.create",
            "business.create",
            "business.create"
        ],
        "{all}"
    );
    let entries = all["entries"].as_array().unwrap();
    let create = &entries[5];
    assert_eq!(create["actor"]["kind"], "member");
    assert!(create["actor"]["id"].as_str().unwrap().starts_with("usr_"), "{create}");
    assert_eq!(create["actor"]["address"], "127.0.0.1");
    assert_eq!(create["object"], json!({"type": "key", "id": key_id}));
    assert_eq!(create["businesses"], json!([mine]));
    assert!(create["at"].as_str().unwrap().ends_with('Z') && create["at_unix"].as_u64().unwrap() > 1_700_000_000, "{create}");
    assert_eq!(entries[4]["details"]["grace_secs"], 60);
    assert_eq!(entries[1]["actor"], json!({"kind": "operator", "address": "127.0.0.1"}));
    assert_eq!(entries[1]["details"]["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(entries[6]["businesses"], json!([mine]), "a member's creation belongs to their businesses");

    // No secret in any entry: raw keys, their hashes, the password, the tokens.
    let text = all.to_string();
    for raw in [created["key"].as_str().unwrap(), rotated["key"].as_str().unwrap(), other["key"].as_str().unwrap()] {
        let digest = Sha256::digest(raw.as_bytes());
        for secret in [raw.to_owned(), hex(&digest), hex(&digest).to_uppercase()] {
            assert!(!text.contains(&secret), "a secret in the audit log: {text}");
        }
    }
    for secret in [password, member.as_str(), OPERATOR] {
        assert!(!text.contains(secret), "a secret in the audit log");
    }

    // The member: their business's entries and their own actions, never the other business.
    let seen = audit(&server, &member, "").await;
    assert_eq!(actions(&seen), ["key.deactivate", "key.rotate", "key.create", "user.create", "business.create"], "{seen}");
    assert!(!seen.to_string().contains(&theirs) && !seen.to_string().contains(&other_id));
    let (status, body) = server.get(&format!("/v1/audit?business={theirs}"), Some(&member)).await;
    assert_error(status, &body, 403, "forbidden");
    let seen = audit(&server, &member, &format!("?business={mine}&object_type=key&object_id={key_id}")).await;
    assert_eq!(actions(&seen), ["key.deactivate", "key.rotate", "key.create"]);

    // Filters and paging.
    let page = audit(&server, OPERATOR, &format!("?business={theirs}")).await;
    assert_eq!(actions(&page), ["key.update", "key.create", "business.create"]);
    let page = audit(&server, OPERATOR, "?since=2099-01-01T00:00:00Z").await;
    assert!(page["entries"].as_array().unwrap().is_empty() && page["next_cursor"].is_null(), "{page}");
    let page = audit(&server, OPERATOR, "?until=2000-01-01T00:00:00Z").await;
    assert!(page["entries"].as_array().unwrap().is_empty(), "{page}");
    let page = audit(&server, OPERATOR, "?action=key.rotate").await;
    assert_eq!(actions(&page), ["key.rotate"]);
    let mut walked = Vec::new();
    let mut query = "?limit=4".to_owned();
    loop {
        let page = audit(&server, OPERATOR, &query).await;
        walked.extend(actions(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=4&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(walked, actions(&all), "paging walks the whole log once");

    // Bad queries and callers.
    for bad in ["?since=yesterday", "?limit=0", "?cursor=abc", "?color=red"] {
        let (status, body) = server.get(&format!("/v1/audit{bad}"), Some(OPERATOR)).await;
        assert_error(status, &body, 400, "invalid_query");
    }
    let (status, body) = server.get("/v1/audit", None).await;
    assert_error(status, &body, 401, "unauthorized");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_is_the_forwarded_one_only_when_trusted_and_entries_are_bounded() {
    let server = Server::fresh_with(|c| {
        c.trust_forwarded_for = true;
        c.audit_max_entries = 3;
    })
    .await;
    for name in ["b", "c", "d"] {
        server.business(name).await;
    }
    let request = server
        .client
        .post(format!("{}/v1/businesses", server.base))
        .bearer_auth(OPERATOR)
        .header("x-forwarded-for", "203.0.113.9, 198.51.100.4")
        .json(&json!({"name": "Forwarded"}));
    assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED);
    let all = audit(&server, OPERATOR, "").await;
    let entries = all["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "only the newest 3 are kept: {all}");
    assert_eq!(entries[0]["id"], 4);
    assert_eq!(entries[0]["actor"]["address"], "198.51.100.4", "the last X-Forwarded-For entry: {all}");
    server.stop().await;

    let server = Server::fresh().await;
    let request = server
        .client
        .post(format!("{}/v1/businesses", server.base))
        .bearer_auth(OPERATOR)
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({"name": "Not trusted"}));
    assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED);
    let all = audit(&server, OPERATOR, "").await;
    assert_eq!(all["entries"][0]["actor"]["address"], "127.0.0.1", "{all}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_settings_and_business_limits_are_audited() {
    let server = Server::fresh().await;
    let biz = server.business("Limits").await;
    let key = server.key(&biz).await;
    let key_id = key["id"].as_str().unwrap();
    let (status, body) = server
        .send(
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(OPERATOR),
            Some(json!({"allowed_ips": ["10.0.0.0/8"], "rate_limits": ["10/s"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        server.send(Method::PATCH, &format!("/v1/businesses/{biz}/limits"), Some(OPERATOR), Some(json!({"per_key": ["100/m"]}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = audit(&server, OPERATOR, &format!("?business={biz}")).await;
    assert_eq!(actions(&page), ["business.limits", "key.update", "key.create", "business.create"], "{page}");
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries[0]["details"], json!({"per_key": ["100/m"]}));
    assert_eq!(entries[1]["details"], json!({"allowed_ips": ["10.0.0.0/8"], "rate_limits": ["10/s"]}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_changes_are_audited() {
    let server = Server::fresh().await;
    let biz = server.business("Credits").await;
    let key = server.key(&biz).await;
    let key_id = key["id"].as_str().unwrap();
    let path = format!("/v1/keys/{key_id}/credits");
    let set = json!({"remaining": 100, "refill": {"interval": "month", "amount": 100}});
    let (status, body) = server.send(Method::PUT, &path, Some(OPERATOR), Some(set)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.post(&format!("{path}/add"), Some(OPERATOR), json!({"amount": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.send(Method::PUT, &path, Some(OPERATOR), Some(json!({"remaining": null}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Adding to an unlimited key is refused: nothing is recorded.
    let (status, _) = server.post(&format!("{path}/add"), Some(OPERATOR), json!({"amount": 5})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let page = audit(&server, OPERATOR, &format!("?object_id={key_id}")).await;
    assert_eq!(actions(&page), ["credits.clear", "credits.add", "credits.set", "key.create"], "{page}");
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries[1]["details"], json!({"amount": 5}));
    assert_eq!(entries[2]["details"], json!({"remaining": 100, "refill": "month:100"}));
    assert_eq!(entries[0]["actor"]["kind"], "operator");
    server.stop().await;
}
