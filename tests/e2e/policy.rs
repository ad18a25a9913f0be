//! What admin sets per key and per business, enforced inside Envoy: address allowlists
//! (403 `ip_not_allowed`, from the address Envoy trusts) and limits that replace the
//! plugin's defaults, each changed through the API and in force at the proxy within a sync.

use keygate_e2e::{Stack, StackOptions, OPERATOR_TOKEN};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::path::assert_denied;
use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "policy", options: StackOptions::default, cases: CASES }]
}

const CASES: &[Case] = &[
    ("a_key_outside_its_allowlist_is_403_and_the_list_can_change", allowlist),
    ("a_keys_own_limit_replaces_the_default_and_can_be_cleared", key_limits),
    ("a_business_per_key_limit_and_shared_limit_apply_to_its_keys", business_limits),
];

fn patch(stack: &Stack, path: &str, body: Value) -> Value {
    let (status, answer) = stack.admin(reqwest::Method::PATCH, path, Some(OPERATOR_TOKEN), Some(body));
    assert_eq!(status, 200, "PATCH {path}: {answer}");
    answer
}

/// Sends `GET /key/items` with `key` until the answer is `want` (the change has reached
/// the filter), at most 10 s; the time it took.
fn until_status(stack: &Stack, key: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", key.as_bytes())]);
        if status == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still {status} after 10 s (want {want}): {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stat(stack: &Stack, name: &str) -> u64 {
    stack.envoy_stats().lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn key_id(stack: &Stack, business: &str, raw: &str) -> String {
    let (_, list) = stack.admin(reqwest::Method::GET, &format!("/v1/businesses/{business}/keys"), Some(OPERATOR_TOKEN), None);
    let prefix = &raw[..12];
    let key = list["keys"].as_array().unwrap().iter().find(|k| k["prefix"] == json!(prefix)).expect("the key in its business's list");
    key["id"].as_str().unwrap().to_owned()
}

fn allowlist(stack: &Stack) {
    let t = stack.tenant();
    let before = stat(stack, "wasmcustom.keygate.denied.ip_not_allowed");
    let key = stack.create_key(&t.business_id, json!({"kind": "sk", "mode": "live", "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"]}));
    // Unknown at first (held, then 401), then refused for its address: the test talks to
    // Envoy from 127.0.0.1.
    until_status(stack, &key, 403);
    let refused = stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", key.as_bytes())]);
    assert_denied(&refused, 403, "ip_not_allowed");
    assert!(!refused.1.to_string().contains(&key), "the refusal never echoes the key");
    // A client-chosen X-Forwarded-For is not the address Envoy trusts.
    let forged = stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", key.as_bytes()), ("x-forwarded-for", b"10.1.2.3")]);
    assert_denied(&forged, 403, "ip_not_allowed");
    assert!(stat(stack, "wasmcustom.keygate.denied.ip_not_allowed") >= before + 2);

    let id = key_id(stack, &t.business_id, &key);
    let answer = patch(stack, &format!("/v1/keys/{id}"), json!({"allowed_ips": ["192.0.2.0/24", "127.0.0.0/8"]}));
    assert_eq!(answer["allowed_ips"], json!(["192.0.2.0/24", "127.0.0.0/8"]));
    let took = until_status(stack, &key, 200);
    eprintln!("allowlist widened: in force at the proxy after {took:?}");
    let (status, echo) = stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", key.as_bytes())]);
    assert_eq!((status, &echo["headers"]["x-keygate-key-id"]), (200, &json!(id)));

    // Narrowed to IPv6 only: the IPv4 loopback client is refused again; cleared: anywhere.
    patch(stack, &format!("/v1/keys/{id}"), json!({"allowed_ips": ["::1/128"]}));
    until_status(stack, &key, 403);
    patch(stack, &format!("/v1/keys/{id}"), json!({"allowed_ips": null}));
    until_status(stack, &key, 200);
}

fn key_limits(stack: &Stack) {
    let t = stack.tenant();
    let key = stack.create_key(&t.business_id, json!({"kind": "sk", "mode": "live", "rate_limits": ["3/m"]}));
    until_status(stack, &key, 200);
    for i in 1..3 {
        assert_eq!(stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", key.as_bytes())]).0, 200, "request {}", i + 1);
    }
    let over = stack.through_envoy_full("GET", "/key/items", &[("SECRET_KEY", key.as_bytes())]);
    assert_eq!((over.status, over.body["code"].as_str()), (429, Some("rate_limited")), "{}", over.body);
    assert_eq!(over.headers.get("ratelimit-policy").map(String::as_str), Some("\"key-1m\";q=3;w=60"));
    // Cleared: back to the plugin's sk default (1000/h), counted apart from the minute.
    let id = key_id(stack, &t.business_id, &key);
    patch(stack, &format!("/v1/keys/{id}"), json!({"rate_limits": null}));
    until_status(stack, &key, 200);
    let reply = stack.through_envoy_full("GET", "/key/items", &[("SECRET_KEY", key.as_bytes())]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers.get("ratelimit-policy").map(String::as_str), Some("\"key-1h\";q=1000;w=3600"));
}

fn business_limits(stack: &Stack) {
    let t = stack.tenant();
    let biz = &t.business_id;
    // Set before the keys exist: a key the filter holds comes after the override in the
    // changelog, so the filter has the override by then.
    let set = patch(stack, &format!("/v1/businesses/{biz}/limits"), json!({"per_key": ["2/m"], "shared": ["5/m"]}));
    assert_eq!((&set["per_key"], &set["shared"]), (&json!(["2/m"]), &json!(["5/m"])));
    let keys: Vec<String> = (0..3).map(|_| stack.create_key(biz, json!({"kind": "sk", "mode": "live"}))).collect();
    // Each key: 2 a minute (the first went through in until_status).
    until_status(stack, &keys[0], 200);
    assert_eq!(stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", keys[0].as_bytes())]).0, 200);
    let over = stack.through_envoy_full("GET", "/key/items", &[("SECRET_KEY", keys[0].as_bytes())]);
    assert_eq!(over.status, 429, "{}", over.body);
    let policy = over.headers.get("ratelimit-policy").cloned().unwrap_or_default();
    assert!(policy.contains("\"key-1m\";q=2;w=60") && policy.contains("\"business-1m\";q=5;w=60"), "{policy}");
    // The business: 5 a minute over all its keys (2 spent, and one refused, which spends nothing).
    until_status(stack, &keys[1], 200);
    assert_eq!(stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", keys[1].as_bytes())]).0, 200);
    until_status(stack, &keys[2], 200);
    let (status, body) = stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", keys[2].as_bytes())]);
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "the sixth of the business's minute: {body}");
    // Another business is not affected.
    let other = stack.tenant();
    stack.wait_for_key(&other.sk);
    for _ in 0..3 {
        assert_eq!(stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", other.sk.as_bytes())]).0, 200);
    }
}
