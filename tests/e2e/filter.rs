//! Every rule of the decision inside Envoy, live sync, last-known-good, limits.

use base64::Engine;
use keygate_e2e::{Stack, StackOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::path::{assert_denied, three};
use crate::{Case, Suite};

/// The reference rules plus one of each kind this suite exercises.
const RULES: &str = r#"{
  "admin_cluster": "keygate_admin",
  "rate_limits": {"public_per_ip_per_hour": 5},
  "routes": [
    {"prefix": "/public/", "require": "none"},
    {"prefix": "/key/", "require": "key", "key_in_bearer": true},
    {"prefix": "/live/", "mode": "live"},
    {"prefix": "/reports/", "scopes": ["reports:read"]},
    {"prefix": "/shadow/", "shadow": true},
    {"prefix": "/limited/", "require": "key", "rate_limit_per_hour": 3},
    {"prefix": "/shadow-limited/", "require": "key", "shadow": true, "rate_limit_per_hour": 1}
  ]
}"#;

/// Short staleness so "admin down past max_staleness" fits in a test.
const STALE_RULES: &str = r#"{
  "admin_cluster": "keygate_admin",
  "max_staleness_secs": 4,
  "long_poll_secs": 1,
  "poll_interval_ms": 200,
  "admin_timeout_ms": 500,
  "routes": [{"prefix": "/key/", "require": "key"}]
}"#;

pub fn suites() -> Vec<Suite> {
    vec![
        Suite { name: "filter", options: || StackOptions { plugin_json: Some(RULES.into()), ..StackOptions::default() }, cases: CASES },
        Suite {
            name: "filter_admin_down",
            options: || StackOptions { plugin_json: Some(STALE_RULES.into()), ..StackOptions::default() },
            cases: ADMIN_DOWN,
        },
        Suite {
            name: "filter_xff",
            options: || StackOptions {
                plugin_json: Some(keygate_e2e::plugin_json("\n  \"rate_limits\": {\"public_per_ip_per_hour\": 20},", "")),
                ..StackOptions::default()
            },
            cases: XFF,
        },
        Suite {
            name: "filter_paged",
            options: || StackOptions { plugin_json: Some(PAGED_RULES.into()), seed_keys: 25, seed_revoked: 5, ..StackOptions::default() },
            cases: PAGED,
        },
    ]
}

const CASES: &[Case] = &[
    ("publishable_key_is_read_only", publishable_read_only),
    ("missing_scope_is_403", missing_scope),
    ("test_key_on_live_rule_is_403", test_key_on_live_rule),
    ("shadow_rule_lets_a_bad_request_through_and_counts_it", shadow_rule),
    ("revoked_session_is_401_within_one_second", revoked_session_fast),
    ("pk_key_over_100_an_hour_is_429_with_retry_after", pk_rate_limit),
    ("per_rule_limit_and_public_per_ip_limit", rule_and_ip_limits),
    ("decisions_are_counted_in_envoy_stats", stats_counters),
    ("new_signing_key_is_accepted_right_after_rotation", signing_key_rotation),
    ("shadow_rule_over_its_rate_limit_passes_and_counts_shadow_denied", shadow_rate_limit),
    ("underscore_spellings_of_identity_headers_never_reach_the_upstream", underscore_identity_headers),
];

const XFF: &[Case] = &[("public_per_ip_limit_ignores_a_client_chosen_x_forwarded_for", forged_forwarded_for)];

/// Each request claims another client address in `X-Forwarded-For`; Envoy must count them
/// all as the one real peer (limit 20/h in this suite).
fn forged_forwarded_for(stack: &Stack) {
    for i in 0..20 {
        let xff = format!("203.0.113.{}", i + 1);
        let (status, body) = stack.through_envoy("GET", "/public/x", &[("x-forwarded-for", xff.as_bytes())]);
        assert_eq!(status, 200, "public request {i}: {body}");
    }
    let resp = stack.through_envoy_full("GET", "/public/x", &[("x-forwarded-for", b"198.51.100.7")]);
    assert_eq!(resp.status, 429, "the 21st request from one peer passed by naming another address in X-Forwarded-For: {}", resp.body);
    assert_eq!(resp.body["code"], "rate_limited");
    assert!(resp.headers.contains_key("retry-after"));
}

fn shadow_rate_limit(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let before = stat(stack, "wasmcustom.keygate.shadow_denied");
    for i in 0..2 {
        let (status, echo) = stack.through_envoy("GET", "/shadow-limited/x", &[("SECRET_KEY", t.sk.as_bytes())]);
        assert_eq!(status, 200, "request {i} on a shadow rule with rate_limit_per_hour 1 was refused: {echo}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(stack, "wasmcustom.keygate.shadow_denied") <= before {
        assert!(Instant::now() < deadline, "the over-limit request on a shadow rule was not counted in shadow_denied");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CGI-style upstreams read `x_keygate_subject` as `X-KEYGATE-SUBJECT`: no spelling of an
/// identity header or of the key header may pass.
fn underscore_identity_headers(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let forged: &[(&str, &[u8])] = &[
        ("SECRET_KEY", t.sk.as_bytes()),
        ("x_keygate_subject", b"usr_admin"),
        ("X-KEYGATE_business", b"biz_forged"),
        ("x_keygate-scopes", b"admin"),
        ("secret-key", t.sk.as_bytes()),
    ];
    let (status, echo) = stack.through_envoy("GET", "/key/whoami", forged);
    assert_eq!(status, 200, "{echo}");
    let headers = echo["headers"].as_object().unwrap();
    let leaked: Vec<String> = headers
        .iter()
        .filter(|(name, _)| {
            let canonical = name.to_ascii_lowercase().replace('_', "-");
            canonical == "secret-key" || (canonical.starts_with("x-keygate-") && !name.starts_with("x-keygate-"))
        })
        .map(|(name, _)| name.clone())
        .collect();
    assert!(leaked.is_empty(), "the upstream saw client-sent spellings of the key or identity headers: {leaked:?}");
    assert_eq!(headers["x-keygate-business"], t.business_id.as_str());
    assert!(!headers.contains_key("x-keygate-subject") && !headers.contains_key("x-keygate-scopes"), "{echo}");
}

/// Tiny pages, so the first full sync of the seeded keys takes many pages.
const PAGED_RULES: &str = r#"{
  "admin_cluster": "keygate_admin",
  "snapshot_page_keys": 2,
  "routes": [{"prefix": "/key/", "require": "key"}]
}"#;

const PAGED: &[Case] =
    &[("a_paged_full_sync_serves_every_key_once", paged_full_sync), ("a_paged_full_sync_carries_every_revoked_session", paged_revocations)];

/// Sessions revoked before Envoy started reach it in the full sync's revocation pages
/// (2 a page here), and the tokens of other sessions still pass.
fn paged_revocations(stack: &Stack) {
    let (business, keys) = stack.seeded.clone().unwrap();
    assert_eq!(stack.seeded_revoked.len(), 5);
    for token in &stack.seeded_revoked {
        let bearer = format!("Bearer {token}");
        assert_denied(&stack.through_envoy("GET", "/orders", &three(&bearer, &keys[0], &business)), 401, "invalid_token");
    }
    let (status, login) = stack.admin(reqwest::Method::POST, "/auth/login", None, Some(json!({"api_key": keys[0], "session_id": "fresh"})));
    assert_eq!(status, 200, "{login}");
    let bearer = format!("Bearer {}", login["access_token"].as_str().unwrap());
    let (status, echo) = stack.through_envoy("GET", "/orders", &three(&bearer, &keys[0], &business));
    assert_eq!(status, 200, "{echo}");
}

fn paged_full_sync(stack: &Stack) {
    let (business, keys) = stack.seeded.clone().unwrap();
    for key in &keys {
        let (status, echo) = stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", key.as_bytes())]);
        assert_eq!(status, 200, "{echo}");
        assert_eq!(echo["headers"]["x-keygate-business"], business.as_str());
    }
    assert_eq!(stat(stack, "wasmcustom.keygate.snapshot.keys"), 25);
    // Deltas still apply on top of the paged snapshot.
    let more = stack.create_key(&business, json!({"kind": "sk", "mode": "live"}));
    stack.wait_for_key_on(&more, "/key/probe");
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(stack, "wasmcustom.keygate.snapshot.keys") != 26 {
        assert!(Instant::now() < deadline, "keys gauge did not follow the delta");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const ADMIN_DOWN: &[Case] = &[("admin_down_keeps_last_good_snapshot_then_fails_closed_then_recovers", admin_down)];

fn key_with(stack: &Stack, business: &str, body: Value) -> String {
    let key = stack.create_key(business, body);
    stack.wait_for_key_on(&key, "/key/probe");
    key
}

fn publishable_read_only(stack: &Stack) {
    let t = stack.tenant();
    let pk = key_with(stack, &t.business_id, json!({"kind": "pk", "mode": "live"}));
    let bearer = t.bearer();
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&bearer, &pk, &t.business_id)).0, 200);
    assert_eq!(stack.through_envoy("HEAD", "/orders", &three(&bearer, &pk, &t.business_id)).0, 200);
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_denied(&stack.through_envoy(method, "/orders", &three(&bearer, &pk, &t.business_id)), 403, "insufficient_permission");
    }
    // The secret key of the same business may write.
    stack.wait_for_key(&t.sk);
    assert_eq!(stack.through_envoy("POST", "/orders", &three(&bearer, &t.sk, &t.business_id)).0, 200);
}

fn missing_scope(stack: &Stack) {
    let t = stack.tenant();
    let writer = key_with(stack, &t.business_id, json!({"kind": "sk", "mode": "live", "scopes": ["orders:write"]}));
    let reader = key_with(stack, &t.business_id, json!({"kind": "sk", "mode": "live", "scopes": ["reports:read"]}));
    let bearer = t.bearer();
    assert_denied(&stack.through_envoy("GET", "/reports/daily", &three(&bearer, &writer, &t.business_id)), 403, "insufficient_permission");
    let (status, echo) = stack.through_envoy("GET", "/reports/daily", &three(&bearer, &reader, &t.business_id));
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-keygate-scopes"], "reports:read");
}

fn test_key_on_live_rule(stack: &Stack) {
    let t = stack.tenant();
    let test_key = key_with(stack, &t.business_id, json!({"kind": "sk", "mode": "test"}));
    let bearer = t.bearer();
    assert_denied(&stack.through_envoy("GET", "/live/charges", &three(&bearer, &test_key, &t.business_id)), 403, "insufficient_permission");
    let (status, echo) = stack.through_envoy("GET", "/orders", &three(&bearer, &test_key, &t.business_id));
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-keygate-mode"], "test");
    stack.wait_for_key(&t.sk);
    assert_eq!(stack.through_envoy("GET", "/live/charges", &three(&bearer, &t.sk, &t.business_id)).0, 200);
}

fn stat(stack: &Stack, name: &str) -> u64 {
    let stats = stack.envoy_stats();
    stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn shadow_rule(stack: &Stack) {
    let before = stat(stack, "wasmcustom.keygate.shadow_denied");
    let (status, echo) =
        stack.through_envoy("POST", "/shadow/orders", &[("SECRET_KEY", b"sk_live_not_a_key"), ("x-keygate-business", b"biz_forged")]);
    assert_eq!(status, 200, "a shadow rule must let the request through: {echo}");
    assert!(echo["headers"].get("secret_key").is_none());
    assert!(echo["headers"].get("x-keygate-business").is_none(), "{echo}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(stack, "wasmcustom.keygate.shadow_denied") <= before {
        assert!(Instant::now() < deadline, "shadow_denied was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `sid` claim of an access token (the payload is not secret to its holder).
fn session_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sid"].as_str().unwrap().to_owned()
}

/// Both kinds of session: a member's sign-in, and an API-key login.
fn revoked_session_fast(stack: &Stack) {
    revoked_session_once(stack, false);
    revoked_session_once(stack, true);
}

fn revoked_session_once(stack: &Stack, api_key_login: bool) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let (bearer, sid) = if api_key_login {
        let (status, login) = stack.admin(reqwest::Method::POST, "/auth/login", None, Some(json!({"api_key": t.sk, "session_id": "rev"})));
        assert_eq!(status, 200, "{login}");
        let token = login["access_token"].as_str().unwrap().to_owned();
        (format!("Bearer {token}"), session_of(&token))
    } else {
        (t.bearer(), session_of(&t.access_token))
    };
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id)).0, 200);
    let (status, body) = stack.admin(reqwest::Method::DELETE, &format!("/v1/sessions/{sid}"), Some(keygate_e2e::OPERATOR_TOKEN), None);
    assert!((200..300).contains(&status), "revoke: {status} {body}");
    let acked = Instant::now();
    loop {
        let resp = stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id));
        if resp.0 == 401 {
            assert_denied(&resp, 401, "invalid_token");
            break;
        }
        assert_eq!(resp.0, 200);
        assert!(acked.elapsed() < Duration::from_secs(1), "the revoked session still passed 1 s after admin's 2xx");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("revocation reached the filter in {:?}", acked.elapsed());
}

fn pk_rate_limit(stack: &Stack) {
    let t = stack.tenant();
    let pk = key_with(stack, &t.business_id, json!({"kind": "pk", "mode": "live"}));
    // wait_for_key_on spent one request of the hour; spend the rest.
    let mut passed = 1;
    while passed < 100 {
        let (status, body) = stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", pk.as_bytes())]);
        assert_eq!(status, 200, "request {} of 100: {body}", passed + 1);
        passed += 1;
    }
    let resp = stack.through_envoy_full("GET", "/key/items", &[("SECRET_KEY", pk.as_bytes())]);
    assert_eq!(resp.status, 429, "{}", resp.body);
    assert_eq!(resp.body["code"], "rate_limited");
    let retry_after: u64 = resp.headers.get("retry-after").expect("Retry-After").parse().unwrap();
    // At most the window and one sub-window (an hour and 6 minutes).
    assert!((1..=3960).contains(&retry_after), "Retry-After {retry_after}");
    assert!(resp.headers.get("ratelimit").is_some_and(|v| v.starts_with("\"key-1h\";r=0;t=")), "{:?}", resp.headers.get("ratelimit"));
    assert_eq!(resp.headers.get("ratelimit-policy").map(String::as_str), Some("\"key-1h\";q=100;w=3600"));
    // Another key of the same business is not affected.
    stack.wait_for_key(&t.sk);
    assert_eq!(stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", t.sk.as_bytes())]).0, 200);
}

fn rule_and_ip_limits(stack: &Stack) {
    let t = stack.tenant();
    let key = key_with(stack, &t.business_id, json!({"kind": "sk", "mode": "live"}));
    for i in 0..3 {
        assert_eq!(stack.through_envoy("GET", "/limited/x", &[("SECRET_KEY", key.as_bytes())]).0, 200, "request {i}");
    }
    assert_denied(&stack.through_envoy("GET", "/limited/x", &[("SECRET_KEY", key.as_bytes())]), 429, "rate_limited");
    // Public paths: 5 per hour per client IP in this suite (only this test uses /public/).
    for i in 0..5 {
        assert_eq!(stack.through_envoy("GET", "/public/articles", &[]).0, 200, "public request {i}");
    }
    assert_denied(&stack.through_envoy("GET", "/public/articles", &[]), 429, "rate_limited");
}

fn stats_counters(stack: &Stack) {
    let allowed = stat(stack, "wasmcustom.keygate.allowed");
    let bad_key = stat(stack, "wasmcustom.keygate.denied.invalid_api_key");
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let bearer = t.bearer();
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id)).0, 200);
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&bearer, "sk_live_bogus", &t.business_id)).0, 401);
    assert!(stat(stack, "wasmcustom.keygate.allowed") > allowed);
    assert!(stat(stack, "wasmcustom.keygate.denied.invalid_api_key") > bad_key);
    assert!(stat(stack, "wasmcustom.keygate.snapshot.version") > 0);
    let stats = stack.envoy_stats();
    assert!(!stats.contains(&t.sk) && !stats.contains(&t.access_token), "a secret leaked into Envoy stats");
}

fn admin_down(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key_on(&t.sk, "/key/probe");
    // A session revoked before admin dies must stay revoked after.
    let (status, login) = stack.admin(reqwest::Method::POST, "/auth/login", None, Some(json!({"api_key": t.sk, "session_id": "doomed"})));
    assert_eq!(status, 200, "{login}");
    let doomed = format!("Bearer {}", login["access_token"].as_str().unwrap());
    let sid = session_of(login["access_token"].as_str().unwrap());
    assert_eq!(stack.admin(reqwest::Method::DELETE, &format!("/v1/sessions/{sid}"), Some(keygate_e2e::OPERATOR_TOKEN), None).0 / 100, 2);
    let deadline = Instant::now() + Duration::from_secs(2);
    while stack.through_envoy("GET", "/orders", &three(&doomed, &t.sk, &t.business_id)).0 != 401 {
        assert!(Instant::now() < deadline, "revocation did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }

    stack.kill_admin();
    let killed = Instant::now();
    // Within max_staleness (4 s): the last good snapshot decides.
    let bearer = t.bearer();
    assert_eq!(stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", t.sk.as_bytes())]).0, 200);
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id)).0, 200);
    assert_denied(&stack.through_envoy("GET", "/orders", &three(&doomed, &t.sk, &t.business_id)), 401, "invalid_token");
    assert!(killed.elapsed() < Duration::from_secs(3), "the checks above took too long to prove anything");

    // Past max_staleness: fail closed with 503 + Retry-After.
    let deadline = Instant::now() + Duration::from_secs(15);
    let resp = loop {
        let resp = stack.through_envoy_full("GET", "/key/items", &[("SECRET_KEY", t.sk.as_bytes())]);
        if resp.status != 200 {
            break resp;
        }
        assert!(Instant::now() < deadline, "still allowing 15 s after admin died (max_staleness is 4 s)");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert_eq!(resp.body["code"], "auth_unavailable");
    assert!(resp.headers.contains_key("retry-after"));
    assert!(killed.elapsed() >= Duration::from_secs(3), "failed closed before max_staleness");
    assert!(stat(stack, "wasmcustom.keygate.sync.failures") > 0);

    // Admin back: the next successful poll restores service.
    stack.restart_admin();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.through_envoy("GET", "/key/items", &[("SECRET_KEY", t.sk.as_bytes())]).0 != 200 {
        assert!(Instant::now() < deadline, "did not recover within 10 s of admin's restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_denied(&stack.through_envoy("GET", "/orders", &three(&doomed, &t.sk, &t.business_id)), 401, "invalid_token");
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn signing_key_rotation(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let (status, rotated) = stack.admin(reqwest::Method::POST, "/v1/signing-keys/rotate", Some(keygate_e2e::OPERATOR_TOKEN), None);
    assert_eq!(status, 200, "{rotated}");
    let acked = Instant::now();
    let (status, signin) =
        stack.admin(reqwest::Method::POST, "/auth/signin", None, Some(json!({"email": t.email, "password": keygate_e2e::PASSWORD})));
    assert_eq!(status, 200, "{signin}");
    let fresh = signin["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(kid_of(&fresh), rotated["kid"].as_str().unwrap(), "sign-in after rotation should use the new key");
    assert_ne!(kid_of(&fresh), kid_of(&t.access_token));
    let bearer = format!("Bearer {fresh}");
    loop {
        let resp = stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id));
        if resp.0 == 200 {
            break;
        }
        assert_denied(&resp, 401, "invalid_token");
        assert!(acked.elapsed() < Duration::from_secs(1), "a token of the new signing key was refused 1 s after the rotation");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("new signing key accepted {:?} after the rotation", acked.elapsed());
    // Tokens of the previous key stay valid until they expire.
    let old = t.bearer();
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&old, &t.sk, &t.business_id)).0, 200);
}
