//! The credential lifecycle through the real admin binary, and through Envoy
//! where the filter is involved: login sessions, revocation, key rotation, activation,
//! expiry, refresh with reuse detection, business boundaries, bad input, usage.

use std::time::{Duration, Instant};

use keygate_core::{ApiKey, KeyKind, Mode};
use keygate_e2e::{plugin_json, random_bytes, Stack, StackOptions, OPERATOR_TOKEN, PASSWORD};
use reqwest::Method;
use serde_json::{json, Value};

use crate::path::{assert_denied, three};
use crate::{Case, Suite};

/// Access tokens of the short suite live this long (seconds).
const SHORT_TTL: u64 = 4;

pub fn suites() -> Vec<Suite> {
    vec![
        Suite { name: "lifecycle", options: StackOptions::default, cases: CASES },
        Suite { name: "lifecycle_short_ttl", options: short_ttl, cases: SHORT_CASES },
        Suite { name: "lifecycle_usage", options: usage_every_30s, cases: USAGE_CASES },
    ]
}

/// The filter reports usage every 30 s: the requests of a test land in one or two flushes.
fn usage_every_30s() -> StackOptions {
    StackOptions {
        plugin_json: Some(plugin_json(&format!("\n  \"usage_flush_secs\": {USAGE_FLUSH_SECS},"), "")),
        ..StackOptions::default()
    }
}

const USAGE_FLUSH_SECS: u64 = 30;

/// Admin issues 4-second tokens and the filter allows no clock leeway, so expiry is
/// observable within the suite's time budget.
fn short_ttl() -> StackOptions {
    StackOptions {
        admin_args: vec!["--token-ttl-secs".into(), SHORT_TTL.to_string()],
        plugin_json: Some(plugin_json("\n  \"leeway_secs\": 0,", "")),
        ..StackOptions::default()
    }
}

const CASES: &[Case] = &[
    ("same_session_reuses_the_token_and_a_new_session_gets_a_new_one", session_reuse),
    ("revoked_session_is_401_at_envoy_within_2s", revoked_session),
    ("logout_is_401_at_envoy_within_2s", logout),
    ("rotated_key_old_401_new_200_at_envoy", rotate),
    ("rotation_grace_keeps_the_old_key_working", rotate_with_grace),
    ("rotation_without_grace_stops_every_earlier_raw_key", rotate_after_grace),
    ("deactivate_401_then_activate_200_at_envoy", deactivate_activate),
    ("expired_key_is_401_at_envoy_and_at_login", expired_key),
    ("member_of_another_business_gets_403_on_key_management", other_member),
    ("bad_input_gets_4xx_json", bad_input),
    ("usage_reported_by_the_filter_shows_in_last_used_at_within_15s", usage),
];

const USAGE_CASES: &[Case] = &[("usage_of_4000_distinct_keys_reaches_admin", usage_many_keys)];

const SHORT_CASES: &[Case] = &[("refresh_after_expiry_works_and_a_reused_refresh_token_revokes", refresh)];

/// Polls `probe` until it returns true or `limit` passes; the last value.
fn eventually(limit: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn key_json(stack: &Stack, business: &str, body: Value) -> Value {
    let (status, key) = stack.operator_post(&format!("/v1/businesses/{business}/keys"), body);
    assert_eq!(status, 201, "create key: {key}");
    key
}

fn login(stack: &Stack, key: &str, session: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "api_key": key });
    if let Some(s) = session {
        body["session_id"] = json!(s);
    }
    stack.admin(Method::POST, "/auth/login", None, Some(body))
}

fn login_token(stack: &Stack, key: &str, session: Option<&str>) -> String {
    let (status, body) = login(stack, key, session);
    assert_eq!(status, 200, "login: {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn sid_of(jwt: &str) -> String {
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap();
    serde_json::from_slice::<Value>(&payload).unwrap()["sid"].as_str().unwrap().to_owned()
}

fn status_at_envoy(stack: &Stack, token: &str, key: &str, business: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    stack.through_envoy("GET", "/orders", &three(&bearer, key, business))
}

fn session_reuse(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let a1 = login_token(stack, &t.sk, Some("worker-a"));
    let a2 = login_token(stack, &t.sk, Some("worker-a"));
    assert_eq!(a1, a2, "same key and session while valid: the same token");
    let b = login_token(stack, &t.sk, Some("worker-b"));
    assert_ne!(a1, b, "a new session_id forces a new token");
    assert_ne!(sid_of(&a1), sid_of(&b));
    for token in [&a1, &b] {
        let resp = status_at_envoy(stack, token, &t.sk, &t.business_id);
        assert_eq!(resp.0, 200, "{}", resp.1);
    }
}

fn revoked_session(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let token = login_token(stack, &t.sk, Some("to-revoke"));
    let other = login_token(stack, &t.sk, Some("bystander"));
    assert_eq!(status_at_envoy(stack, &token, &t.sk, &t.business_id).0, 200);
    let sid = sid_of(&token);
    let (status, body) = stack.admin(Method::DELETE, &format!("/v1/sessions/{sid}"), Some(OPERATOR_TOKEN), None);
    assert_eq!(status, 200, "{body}");
    let start = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || status_at_envoy(stack, &token, &t.sk, &t.business_id).0 == 401),
        "the revoked session still passes Envoy after 2 s"
    );
    eprintln!("revocation reached Envoy in {} ms", start.elapsed().as_millis());
    assert_denied(&status_at_envoy(stack, &token, &t.sk, &t.business_id), 401, "invalid_token");
    assert_eq!(status_at_envoy(stack, &other, &t.sk, &t.business_id).0, 200, "only that session is revoked");
    // A new login for that session id opens a new session with a new token.
    let again = login_token(stack, &t.sk, Some("to-revoke"));
    assert_ne!(again, token);
}

fn logout(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    assert_eq!(status_at_envoy(stack, &t.access_token, &t.sk, &t.business_id).0, 200);
    let (status, body) = stack.admin(Method::POST, "/auth/logout", Some(&t.access_token), None);
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(2), || status_at_envoy(stack, &t.access_token, &t.sk, &t.business_id).0 == 401),
        "a logged-out token still passes Envoy after 2 s"
    );
}

fn rotate(stack: &Stack) {
    let t = stack.tenant();
    let key = key_json(stack, &t.business_id, json!({"kind": "sk", "mode": "live"}));
    let (id, old) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    stack.wait_for_key(old);
    let (status, rotated) = stack.admin(Method::POST, &format!("/v1/keys/{id}/rotate"), Some(&t.access_token), None);
    assert_eq!(status, 200, "a member rotates a key of their business: {rotated}");
    assert_eq!(rotated["id"], id, "rotation keeps the key's id");
    let new = rotated["key"].as_str().unwrap();
    stack.wait_for_key(new);
    assert!(
        eventually(Duration::from_secs(2), || stack.through_envoy("GET", "/key/probe", &[("secret_key", old.as_bytes())]).0 == 401),
        "the old raw key still passes Envoy"
    );
    assert_denied(&status_at_envoy(stack, &t.access_token, old, &t.business_id), 401, "invalid_api_key");
    let (status, echo) = status_at_envoy(stack, &t.access_token, new, &t.business_id);
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-keygate-key-id"], id);
    assert_denied(&login(stack, old, None), 401, "invalid_api_key");
}

/// Rotates key `id` as the operator with `grace_secs` of grace; the new raw key, once the
/// filter holds it.
fn rotate_with_grace_secs(stack: &Stack, id: &str, grace_secs: u64) -> String {
    let (status, rotated) = stack.operator_post(&format!("/v1/keys/{id}/rotate"), json!({"grace_secs": grace_secs}));
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    stack.wait_for_key(&new);
    new
}

fn rotate_with_grace(stack: &Stack) {
    let t = stack.tenant();
    let key = key_json(stack, &t.business_id, json!({"kind": "sk", "mode": "live"}));
    let (id, old) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    stack.wait_for_key(old);
    let new = rotate_with_grace_secs(stack, id, 5);
    assert_eq!(status_at_envoy(stack, &t.access_token, old, &t.business_id).0, 200, "the old key works during the grace");
    assert!(
        eventually(Duration::from_secs(8), || status_at_envoy(stack, &t.access_token, old, &t.business_id).0 == 401),
        "the old key still passes after its grace"
    );
    assert_eq!(status_at_envoy(stack, &t.access_token, &new, &t.business_id).0, 200);
}

/// K0 → rotate with a day of grace (K1) → rotate with no grace (K2): "no grace" stops every
/// earlier raw value of the key, K0 included, not only the one it replaced.
fn rotate_after_grace(stack: &Stack) {
    let t = stack.tenant();
    let key = key_json(stack, &t.business_id, json!({"kind": "sk", "mode": "live"}));
    let (id, k0) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    stack.wait_for_key(k0);
    let k1 = rotate_with_grace_secs(stack, id, 86_400);
    assert_eq!(status_at_envoy(stack, &t.access_token, k0, &t.business_id).0, 200, "K0 works during its grace");
    let k2 = rotate_with_grace_secs(stack, id, 0);
    for (name, old) in [("K1", k1.as_str()), ("K0", k0)] {
        assert!(
            eventually(Duration::from_secs(2), || status_at_envoy(stack, &t.access_token, old, &t.business_id).0 == 401),
            "{name} still passes Envoy 2 s after a rotation with no grace"
        );
        assert_denied(&status_at_envoy(stack, &t.access_token, old, &t.business_id), 401, "invalid_api_key");
        assert_denied(&login(stack, old, None), 401, "invalid_api_key");
    }
    assert_eq!(status_at_envoy(stack, &t.access_token, &k2, &t.business_id).0, 200);
}

fn deactivate_activate(stack: &Stack) {
    let t = stack.tenant();
    let key = key_json(stack, &t.business_id, json!({"kind": "sk", "mode": "live"}));
    let (id, raw) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    stack.wait_for_key(raw);
    let (status, body) = stack.operator_post(&format!("/v1/keys/{id}/deactivate"), json!({}));
    assert_eq!((status, &body["active"]), (200, &json!(false)), "{body}");
    assert!(eventually(Duration::from_secs(2), || status_at_envoy(stack, &t.access_token, raw, &t.business_id).0 == 401));
    assert_denied(&status_at_envoy(stack, &t.access_token, raw, &t.business_id), 401, "invalid_api_key");
    let (status, body) = stack.operator_post(&format!("/v1/keys/{id}/activate"), json!({}));
    assert_eq!((status, &body["active"]), (200, &json!(true)), "{body}");
    assert!(eventually(Duration::from_secs(2), || status_at_envoy(stack, &t.access_token, raw, &t.business_id).0 == 200));
}

fn expired_key(stack: &Stack) {
    let t = stack.tenant();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expires = now + 5;
    let at = keygate_admin::rfc3339::format(expires);
    let key = key_json(stack, &t.business_id, json!({"kind": "sk", "mode": "live", "expires_at": at}));
    let raw = key["key"].as_str().unwrap();
    stack.wait_for_key(raw);
    assert_eq!(status_at_envoy(stack, &t.access_token, raw, &t.business_id).0, 200, "before its expiry");
    assert!(
        eventually(Duration::from_secs(8), || status_at_envoy(stack, &t.access_token, raw, &t.business_id).0 == 401),
        "an expired key still passes Envoy"
    );
    assert_denied(&status_at_envoy(stack, &t.access_token, raw, &t.business_id), 401, "invalid_api_key");
    assert_denied(&login(stack, raw, None), 401, "invalid_api_key");
}

fn other_member(stack: &Stack) {
    let (a, b) = (stack.tenant(), stack.tenant());
    let key = key_json(stack, &b.business_id, json!({"kind": "sk", "mode": "test"}));
    let id = key["id"].as_str().unwrap();
    let biz = &b.business_id;
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, format!("/v1/businesses/{biz}/keys"), Some(json!({"kind": "sk", "mode": "test"}))),
        (Method::GET, format!("/v1/businesses/{biz}/keys"), None),
        (Method::POST, format!("/v1/keys/{id}/rotate"), None),
        (Method::POST, format!("/v1/keys/{id}/deactivate"), None),
        (Method::POST, format!("/v1/keys/{id}/activate"), None),
        (Method::GET, format!("/v1/keys/{id}/usage"), None),
    ];
    for (method, path, body) in attempts {
        let resp = stack.admin(method.clone(), &path, Some(&a.access_token), body);
        assert_denied(&resp, 403, "forbidden");
    }
    // The owner can; the key was not touched by the refused calls.
    let (status, listed) = stack.admin(Method::GET, &format!("/v1/businesses/{biz}/keys"), Some(&b.access_token), None);
    assert_eq!(status, 200, "{listed}");
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{listed}");
    assert!(keys.iter().all(|k| k["active"] == true && k.get("key").is_none()));
    assert!(login(stack, key["key"].as_str().unwrap(), None).0 == 200, "the refused rotate did not rotate");
}

fn raw_post(stack: &Stack, path: &str, bearer: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = stack
        .http
        .post(format!("{}{path}", stack.admin_url))
        .bearer_auth(bearer)
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

fn bad_input(stack: &Stack) {
    let t = stack.tenant();
    let keys = format!("/v1/businesses/{}/keys", t.business_id);
    let cases: Vec<(&str, (u16, Value), u16, &str)> = vec![
        (
            "malformed JSON",
            raw_post(stack, &keys, OPERATOR_TOKEN, "application/json", br#"{"kind": "sk", "mode": "#.to_vec()),
            400,
            "invalid_json",
        ),
        ("wrong type", stack.operator_post(&keys, json!({"kind": "sk", "mode": "live", "scopes": "read"})), 400, "invalid_json"),
        ("unknown field", stack.operator_post(&keys, json!({"kind": "sk", "mode": "live", "admin": true})), 400, "invalid_json"),
        ("oversized body", raw_post(stack, &keys, OPERATOR_TOKEN, "application/json", vec![b' '; 100 * 1024]), 413, "payload_too_large"),
        ("unknown key id", stack.operator_post("/v1/keys/key_0000000000000000/rotate", json!({})), 404, "key_not_found"),
        (
            "unknown business",
            stack.operator_post("/v1/businesses/biz_0000000000000000/keys", json!({"kind": "sk", "mode": "live"})),
            404,
            "business_not_found",
        ),
        (
            "bad refresh token type",
            stack.admin(Method::POST, "/auth/refresh", None, Some(json!({"refresh_token": ["x"]}))),
            400,
            "invalid_json",
        ),
        (
            "bad usage report",
            raw_post(stack, "/v1/usage", keygate_e2e::PROXY_TOKEN, "application/json", br#"{"usage": [{"key_id": 1}]}"#.to_vec()),
            400,
            "invalid_json",
        ),
        ("bad expiry", stack.operator_post(&keys, json!({"kind": "sk", "mode": "live", "expires_at": "tomorrow"})), 400, "invalid_request"),
    ];
    for (what, resp, status, code) in cases {
        assert_eq!(resp.0, status, "{what}: {}", resp.1);
        assert_denied(&resp, status, code);
    }
    stack.assert_alive();
}

fn usage(stack: &Stack) {
    let t = stack.tenant();
    let key = key_json(stack, &t.business_id, json!({"kind": "sk", "mode": "live"}));
    let (id, raw) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    assert!(key["last_used_at"].is_null());
    stack.wait_for_key(raw);
    for _ in 0..3 {
        assert_eq!(status_at_envoy(stack, &t.access_token, raw, &t.business_id).0, 200);
    }
    let sent = Instant::now();
    let listed_use = || {
        let (_, listed) = stack.admin(Method::GET, &format!("/v1/businesses/{}/keys", t.business_id), Some(&t.access_token), None);
        listed["keys"].as_array().unwrap().iter().find(|k| k["id"] == id).map(|k| k["last_used_at"].clone()).unwrap_or(Value::Null)
    };
    assert!(eventually(Duration::from_secs(15), || !listed_use().is_null()), "last_used_at still empty 15 s after requests through Envoy");
    eprintln!("usage reached admin in {} ms", sent.elapsed().as_millis());
    let (status, usage) = stack.admin(Method::GET, &format!("/v1/keys/{id}/usage"), Some(OPERATOR_TOKEN), None);
    assert_eq!(status, 200, "{usage}");
    // wait_for_key's probe may have counted too; at least our three requests.
    assert!(
        eventually(Duration::from_secs(12), || {
            let (_, u) = stack.admin(Method::GET, &format!("/v1/keys/{id}/usage"), Some(OPERATOR_TOKEN), None);
            u["total"].as_u64().unwrap_or(0) >= 3
        }),
        "{usage}"
    );
}

/// More distinct keys in one flush than one usage body used to hold (~936): every key's
/// use still reaches admin. 4 000 keys are imported (1 000 per request) and each used once
/// through Envoy within about 12 s, so at least one VM's flush holds over 1 000 of them
/// (even split evenly over both workers and two flushes); every `last_used_at` must be set
/// within a flush interval and a half after the last request.
fn usage_many_keys(stack: &Stack) {
    const KEYS: usize = 4000;
    let t = stack.tenant();
    let raws: Vec<String> =
        (0..KEYS).map(|_| ApiKey::generate(KeyKind::Sk, Mode::Live, random_bytes(128)).unwrap().expose().to_owned()).collect();
    for chunk in raws.chunks(1000) {
        let records: Vec<Value> =
            chunk.iter().map(|raw| json!({"business": t.business_id, "kind": "sk", "mode": "live", "key": raw})).collect();
        let (status, result) = stack.operator_post("/v1/import/keys", json!({ "keys": records }));
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["imported"], json!(chunk.len()), "{result}");
    }
    stack.wait_for_key(raws.last().unwrap());
    let sent = Instant::now();
    for raw in &raws {
        let (status, body) = stack.through_envoy("GET", "/key/probe", &[("secret_key", raw.as_bytes())]);
        assert_eq!(status, 200, "{body}");
    }
    eprintln!("{KEYS} requests through Envoy in {} ms", sent.elapsed().as_millis());
    // The tenant's own key is never used: it is the one key without a last_used_at.
    let used = || {
        let (status, listed) = stack.admin(Method::GET, &format!("/v1/businesses/{}/keys", t.business_id), Some(OPERATOR_TOKEN), None);
        assert_eq!(status, 200, "{listed}");
        listed["keys"].as_array().unwrap().iter().filter(|k| !k["last_used_at"].is_null()).count()
    };
    let deadline = Instant::now() + Duration::from_secs(USAGE_FLUSH_SECS * 3 / 2);
    let mut seen = used();
    while seen < KEYS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        seen = used();
    }
    assert_eq!(
        seen,
        KEYS,
        "{} s after one request per key through Envoy, only {seen} of {KEYS} keys have a last_used_at",
        USAGE_FLUSH_SECS * 3 / 2
    );
    eprintln!("usage of {KEYS} keys reached admin in {} ms", sent.elapsed().as_millis());
}

fn refresh(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let (status, signin) = stack.admin(Method::POST, "/auth/signin", None, Some(json!({"email": t.email, "password": PASSWORD})));
    assert_eq!(status, 200, "{signin}");
    let (first, r1) = (signin["accessToken"].as_str().unwrap().to_owned(), signin["refreshToken"].as_str().unwrap().to_owned());
    assert_eq!(status_at_envoy(stack, &first, &t.sk, &t.business_id).0, 200);
    // Expired (3 s tokens, no leeway in this suite's filter).
    assert!(
        eventually(Duration::from_secs(SHORT_TTL + 3), || status_at_envoy(stack, &first, &t.sk, &t.business_id).0 == 401),
        "the token did not expire at Envoy"
    );
    assert_denied(&status_at_envoy(stack, &first, &t.sk, &t.business_id), 401, "invalid_token");
    // Refresh after expiry: a new access token and a rotated refresh token.
    let (status, refreshed) = stack.admin(Method::POST, "/auth/refresh", None, Some(json!({"refresh_token": r1})));
    assert_eq!(status, 200, "{refreshed}");
    let second = refreshed["accessToken"].as_str().unwrap().to_owned();
    assert_ne!(refreshed["refreshToken"].as_str().unwrap(), r1);
    assert_eq!(refreshed["tokenType"], "Bearer");
    assert_eq!(refreshed["businesses"][0]["id"], t.business_id.as_str());
    assert_eq!(status_at_envoy(stack, &second, &t.sk, &t.business_id).0, 200, "the refreshed token passes Envoy");
    // The spent refresh token again: refused, and the session (with the new token) revoked.
    let resp = stack.admin(Method::POST, "/auth/refresh", None, Some(json!({"refresh_token": r1})));
    assert_denied(&resp, 401, "invalid_token");
    assert!(
        eventually(Duration::from_secs(2), || status_at_envoy(stack, &second, &t.sk, &t.business_id).0 == 401),
        "after refresh-token reuse the session's token still passes Envoy"
    );
    let r2 = refreshed["refreshToken"].as_str().unwrap();
    assert_denied(&stack.admin(Method::POST, "/auth/refresh", None, Some(json!({"refresh_token": r2}))), 401, "invalid_token");
}
