//! The request path: the three credentials checked inside Envoy, end to end.

use keygate_core::{ApiKey, KeyKind, Mode};
use keygate_e2e::{plugin_json, random_bytes, Stack, StackOptions, OPERATOR_TOKEN};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![
        Suite { name: "path", options: StackOptions::default, cases: CASES },
        Suite { name: "path_rules", options: rules_options, cases: RULE_CASES },
        Suite {
            name: "path_two_admins",
            options: two_admins_options,
            cases: &[("two_plugins_sharing_a_vm_id_keep_their_own_admins_keys", two_admins)],
        },
    ]
}

/// A GET-only rule for test keys on `/reports/`: a tenant's live key gets 403 there, and
/// 200 under the default rule, so the answer shows which rule a spelling matched.
fn rules_options() -> StackOptions {
    StackOptions {
        plugin_json: Some(plugin_json("", "\n    {\"prefix\": \"/reports/\", \"methods\": [\"GET\"], \"mode\": \"test\"},")),
        ..StackOptions::default()
    }
}

const RULE_CASES: &[Case] = &[("other_spellings_of_a_rule_path_get_the_rule", rule_spellings)];

fn two_admins_options() -> StackOptions {
    StackOptions { second_admin: true, ..StackOptions::default() }
}

const CASES: &[Case] = &[
    ("all_three_valid_reaches_upstream_with_identity_and_without_secret_key", all_three_valid),
    ("each_missing_header_is_401_missing_credentials", each_missing_header),
    ("unknown_key_is_401_invalid_api_key", unknown_key),
    ("broken_checksum_is_401_invalid_api_key", broken_checksum),
    ("tampered_token_is_401_invalid_token", tampered_token),
    ("other_business_is_403_business_mismatch", other_business),
    ("client_identity_headers_never_reach_upstream", forged_identity_headers),
    ("key_only_route_takes_secret_key_or_bearer_key", key_only_route),
    ("public_route_needs_no_credentials", public_route),
    ("path_parameter_dot_segments_never_borrow_a_relaxed_rule", path_parameter_dot_segments),
    ("api_key_login_token_passes_with_its_key", api_key_login),
    ("new_key_reaches_the_filter_through_the_feed", new_key_syncs),
    ("hostile_header_bytes_do_not_kill_the_vm", hostile_bytes),
];

pub fn three<'a>(bearer: &'a str, key: &'a str, business: &'a str) -> Vec<(&'static str, &'a [u8])> {
    vec![("authorization", bearer.as_bytes()), ("SECRET_KEY", key.as_bytes()), ("businessId", business.as_bytes())]
}

pub fn assert_denied(resp: &(u16, Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "body: {}", resp.1);
    assert_eq!(resp.1["code"], code, "body: {}", resp.1);
    assert_eq!(resp.1["success"], false);
    assert!(resp.1["error"].as_str().is_some_and(|e| !e.is_empty()));
}

fn all_three_valid(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let bearer = t.bearer();
    let (status, echo) = stack.through_envoy("POST", "/orders?limit=2", &three(&bearer, &t.sk, &t.business_id));
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/orders?limit=2");
    let headers = &echo["headers"];
    assert!(headers.get("secret_key").is_none(), "the upstream saw SECRET_KEY: {headers}");
    assert_eq!(headers["x-keygate-business"], t.business_id.as_str());
    assert!(headers["x-keygate-key-id"].as_str().unwrap().starts_with("key_"));
    assert!(headers["x-keygate-subject"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(headers["x-keygate-mode"], "live");
    assert_eq!(headers["businessid"], t.business_id.as_str());
}

fn each_missing_header(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let bearer = t.bearer();
    let all = three(&bearer, &t.sk, &t.business_id);
    for skip in 0..all.len() {
        let headers: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, h)| *h).collect();
        let resp = stack.through_envoy("GET", "/orders", &headers);
        assert_denied(&resp, 401, "missing_credentials");
    }
}

fn unknown_key(stack: &Stack) {
    let t = stack.tenant();
    let never_issued = ApiKey::generate(KeyKind::Sk, Mode::Live, random_bytes(128)).unwrap();
    let bearer = t.bearer();
    let resp = stack.through_envoy("GET", "/orders", &three(&bearer, never_issued.expose(), &t.business_id));
    assert_denied(&resp, 401, "invalid_api_key");
    assert_eq!(resp.1["error"], "Invalid API key");
}

fn broken_checksum(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let mut broken = t.sk.clone();
    let last = broken.pop().unwrap();
    broken.push(if last == '0' { '1' } else { '0' });
    let bearer = t.bearer();
    let resp = stack.through_envoy("GET", "/orders", &three(&bearer, &broken, &t.business_id));
    assert_denied(&resp, 401, "invalid_api_key");
    assert_eq!(resp.1["error"], "Invalid API key");
}

fn tampered_token(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    // Flip one character of the payload: the signature no longer matches.
    let mut parts: Vec<String> = t.access_token.split('.').map(str::to_owned).collect();
    let payload = &mut parts[1];
    let mid = payload.len() / 2;
    let flipped = if &payload[mid..=mid] == "A" { "B" } else { "A" };
    payload.replace_range(mid..=mid, flipped);
    let bearer = format!("Bearer {}", parts.join("."));
    let resp = stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id));
    assert_denied(&resp, 401, "invalid_token");
    // The untampered token still works, so the 401 was the tampering.
    let good = t.bearer();
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&good, &t.sk, &t.business_id)).0, 200);
}

fn other_business(stack: &Stack) {
    let (a, b) = (stack.tenant(), stack.tenant());
    stack.wait_for_key(&a.sk);
    stack.wait_for_key(&b.sk);
    let bearer = a.bearer();
    assert_denied(&stack.through_envoy("GET", "/orders", &three(&bearer, &a.sk, &b.business_id)), 403, "business_mismatch");
    // A's token with B's key and B's business: the token is not B's.
    assert_denied(&stack.through_envoy("GET", "/orders", &three(&bearer, &b.sk, &b.business_id)), 403, "business_mismatch");
}

fn forged_identity_headers(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let bearer = t.bearer();
    let mut headers = three(&bearer, &t.sk, &t.business_id);
    headers.push(("x-keygate-business", b"biz_forged"));
    headers.push(("X-Keygate-Admin", b"true"));
    let (status, echo) = stack.through_envoy("GET", "/orders", &headers);
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-keygate-business"], t.business_id.as_str());
    assert!(echo["headers"].get("x-keygate-admin").is_none(), "{echo}");
    let (status, echo) = stack.through_envoy("GET", "/public/articles", &[("x-keygate-business", b"biz_forged")]);
    assert_eq!(status, 200, "{echo}");
    assert!(echo["headers"].get("x-keygate-business").is_none(), "{echo}");
}

fn key_only_route(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let (status, echo) = stack.through_envoy("POST", "/key/charges", &[("SECRET_KEY", t.sk.as_bytes())]);
    assert_eq!(status, 200, "{echo}");
    assert!(echo["headers"].get("secret_key").is_none());
    assert!(echo["headers"].get("x-keygate-subject").is_none());
    let bearer = format!("Bearer {}", t.sk);
    let (status, echo) = stack.through_envoy("POST", "/key/charges", &[("authorization", bearer.as_bytes())]);
    assert_eq!(status, 200, "{echo}");
    assert!(echo["headers"].get("authorization").is_none(), "the raw key reached the upstream in Authorization");
    assert_eq!(echo["headers"]["x-keygate-business"], t.business_id.as_str());
    assert_denied(&stack.through_envoy("GET", "/key/charges", &[]), 401, "missing_credentials");
}

fn public_route(stack: &Stack) {
    let (status, echo) = stack.through_envoy("GET", "/public/articles/1", &[]);
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["path"], "/public/articles/1");
    // Normalised by Envoy before the filter: the escape lands on a protected path.
    assert_denied(&stack.through_envoy("GET", "/public/../orders", &[]), 401, "missing_credentials");
}

fn path_parameter_dot_segments(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    // Tomcat and Spring read a segment up to its `;`: these are /orders to them, and Envoy's
    // normalisation leaves them alone.
    for path in ["/public/..;/orders", "/public/..;x=1/orders", "/public/.;/..;/orders"] {
        assert_denied(&stack.through_envoy("GET", path, &[]), 401, "missing_credentials");
    }
    assert_denied(&stack.through_envoy("GET", "/key/..;/orders", &[("SECRET_KEY", t.sk.as_bytes())]), 401, "missing_credentials");
    // Matrix parameters inside a public path keep the public rule.
    assert_eq!(stack.through_envoy("GET", "/public/articles;v=1", &[]).0, 200);
}

fn rule_spellings(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let bearer = t.bearer();
    let headers = three(&bearer, &t.sk, &t.business_id);
    // The rule as written: a live key is refused; outside the rule the same request passes.
    assert_denied(&stack.through_envoy("GET", "/reports/1", &headers), 403, "insufficient_permission");
    assert_eq!(stack.through_envoy("GET", "/orders", &headers).0, 200);
    for (method, path) in
        [("GET", "/Reports/1"), ("GET", "/REPORTS/1"), ("GET", "/reports"), ("GET", "/reports;x=1/1"), ("HEAD", "/reports/1")]
    {
        let status = stack.through_envoy(method, path, &headers).0;
        assert_eq!(status, 403, "{method} {path} missed the /reports/ rule");
    }
    // The rule is GET-only: a POST falls to the default rule.
    assert_eq!(stack.through_envoy("POST", "/reports/1", &headers).0, 200);
}

/// Two listeners in one Envoy, their filters on one `vm_id` (one shared-data store), each fed
/// by its own admin: each takes only its own admin's keys.
fn two_admins(stack: &Stack) {
    let second = stack.second.as_ref().unwrap();
    let a = stack.tenant();
    let post_b = |path: &str, body: Value| -> Value {
        let resp = stack.http.post(format!("{}{path}", second.admin_url)).bearer_auth(OPERATOR_TOKEN).json(&body).send().unwrap();
        assert_eq!(resp.status().as_u16(), 201, "admin B {path}");
        resp.json().unwrap()
    };
    let business_b = post_b("/v1/businesses", json!({"name": "Other admin's business"}))["id"].as_str().unwrap().to_owned();
    let key_b =
        post_b(&format!("/v1/businesses/{business_b}/keys"), json!({"kind": "sk", "mode": "live"}))["key"].as_str().unwrap().to_owned();
    let status_on =
        |envoy: &str, key: &str| stack.http.get(format!("{envoy}/key/probe")).header("SECRET_KEY", key).send().unwrap().status().as_u16();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (a_on_a, b_on_b) = (status_on(&stack.envoy_url, &a.sk), status_on(&second.envoy_url, &key_b));
        if (a_on_a, b_on_b) == (200, 200) {
            break;
        }
        let a_on_b = status_on(&second.envoy_url, &a.sk);
        assert!(Instant::now() < deadline, "each listener should take its own admin's key within 15 s: A's key on A {a_on_a}, B's key on B {b_on_b} (A's key on B {a_on_b})");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status_on(&second.envoy_url, &a.sk), 401, "admin A's key worked on admin B's listener");
    assert_eq!(status_on(&stack.envoy_url, &key_b), 401, "admin B's key worked on admin A's listener");
}

fn api_key_login(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let (status, login) = stack.admin(reqwest::Method::POST, "/auth/login", None, Some(json!({"api_key": t.sk})));
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["expires_in"], 7200);
    assert_eq!(login["token_type"], "Bearer");
    let bearer = format!("Bearer {}", login["access_token"].as_str().unwrap());
    let (status, echo) = stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id));
    assert_eq!(status, 200, "{echo}");
    assert!(echo["headers"]["x-keygate-subject"].as_str().unwrap().starts_with("key_"));
}

fn new_key_syncs(stack: &Stack) {
    let t = stack.tenant();
    let start = std::time::Instant::now();
    stack.wait_for_key(&t.sk);
    let pk = stack.create_key(&t.business_id, json!({"kind": "pk", "mode": "live"}));
    stack.wait_for_key(&pk);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

fn hostile_bytes(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let bearer = t.bearer();
    let junk: &[&[u8]] = &[b"\xff\xfe\x80", b"sk_live_\xc3\x28", b"Bearer \xff", &[b'a'; 8000]];
    for value in junk {
        let resp = stack.through_envoy("GET", "/orders", &[("authorization", value), ("SECRET_KEY", value), ("businessId", value)]);
        assert!(resp.0 == 401 || resp.0 == 400 || resp.0 == 431, "status {} for junk", resp.0);
    }
    // The VM survived: a valid request still passes, and no wasm VM failed.
    assert_eq!(stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id)).0, 200);
    let log = stack.envoy_log();
    assert!(!log.contains("panicked"), "the filter panicked; see {}", stack.dir.display());
}
