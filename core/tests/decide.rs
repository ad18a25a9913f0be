//! Every row of the README's decision table and every error code, natively.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_core::config::FilterConfig;
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{KeyEntry, RevokedSession, SnapshotWire};
use keygate_core::{decide, AccessClaims, ApiKey, Decision, DenyCode, KeyKind, Mode, Policy, RequestView, Snapshot, Synced};

const NOW: u64 = 1_800_000_000;
const BIZ: &str = "biz_acme";
const OTHER_BIZ: &str = "biz_other";

struct World {
    policy: Policy,
    snapshot: Snapshot,
    signer: SigningKeyPair,
    sk: ApiKey,
    pk: ApiKey,
    sk_test: ApiKey,
    scoped: ApiKey,
    inactive: ApiKey,
    expired: ApiKey,
    other_biz: ApiKey,
    unknown: ApiKey,
}

fn key(kind: KeyKind, mode: Mode, seed: u8) -> ApiKey {
    ApiKey::generate(kind, mode, (0..200u8).map(move |i| i.wrapping_mul(73).wrapping_add(seed))).unwrap()
}

fn entry(k: &ApiKey, id: &str, business: &str) -> KeyEntry {
    KeyEntry {
        hash: k.hash(),
        id: id.into(),
        business: business.into(),
        kind: k.kind(),
        mode: k.mode(),
        scopes: vec![],
        expires_at: None,
        active: true,
    }
}

fn world() -> World {
    let policy = FilterConfig::parse(
        br#"{"admin_cluster": "a", "proxy_token": "t", "max_staleness_secs": 60, "long_poll_secs": 10, "routes": [
            {"prefix": "/public/", "require": "none"},
            {"prefix": "/key/", "require": "key", "key_in_bearer": true},
            {"prefix": "/live/", "mode": "live"},
            {"prefix": "/reports/", "scopes": ["reports:read"]},
            {"prefix": "/shadow/", "shadow": true},
            {"prefix": "/limited/", "rate_limit_per_hour": 5}
        ]}"#,
        None,
    )
    .unwrap()
    .policy;
    let signer = SigningKeyPair::from_seed("k1", [7u8; 32]);
    let (sk, pk, sk_test, scoped) = (
        key(KeyKind::Sk, Mode::Live, 1),
        key(KeyKind::Pk, Mode::Live, 2),
        key(KeyKind::Sk, Mode::Test, 3),
        key(KeyKind::Sk, Mode::Live, 4),
    );
    let (inactive, expired, other_biz, unknown) = (
        key(KeyKind::Sk, Mode::Live, 5),
        key(KeyKind::Sk, Mode::Live, 6),
        key(KeyKind::Sk, Mode::Live, 8),
        key(KeyKind::Sk, Mode::Live, 9),
    );
    let wire = SnapshotWire {
        version: 3,
        keys: vec![
            entry(&sk, "key_sk", BIZ),
            entry(&pk, "key_pk", BIZ),
            entry(&sk_test, "key_test", BIZ),
            KeyEntry { scopes: vec!["reports:read".into(), "orders:write".into()], ..entry(&scoped, "key_scoped", BIZ) },
            KeyEntry { active: false, ..entry(&inactive, "key_off", BIZ) },
            KeyEntry { expires_at: Some(NOW - 1), ..entry(&expired, "key_old", BIZ) },
            entry(&other_biz, "key_other", OTHER_BIZ),
        ],
        signing_keys: vec![signer.public_entry()],
        revoked_sessions: vec![RevokedSession { sid: "ses_revoked".into(), until: NOW + 3600 }],
        ..SnapshotWire::default()
    };
    let snapshot = Snapshot::from_full(wire).unwrap();
    World { policy, snapshot, signer, sk, pk, sk_test, scoped, inactive, expired, other_biz, unknown }
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: "keygate".into(),
        aud: "keygate-api".into(),
        sub: "usr_1".into(),
        sid: "ses_1".into(),
        businesses: vec![BIZ.into()],
        mode: None,
        scope: String::new(),
        iat: NOW - 10,
        exp: NOW + 7200,
        nbf: None,
        jti: "j1".into(),
    }
}

impl World {
    fn token(&self) -> String {
        self.signer.sign(&claims()).unwrap()
    }

    fn run(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
        self.run_at(method, path, headers, NOW)
    }

    fn run_at(&self, method: &str, path: &str, headers: &[(&str, &str)], now: u64) -> Decision {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let request = RequestView { method, path, headers: &headers, client_ip: Some("203.0.113.9") };
        decide(&self.policy, &request, Some(Synced::local(&self.snapshot, NOW - 5)), now)
    }

    fn all_three(&self, token: &str, key: &ApiKey, business: &str) -> Decision {
        self.all_three_raw(token, key.expose(), business)
    }

    fn all_three_raw(&self, token: &str, raw: &str, business: &str) -> Decision {
        let bearer = format!("Bearer {token}");
        self.run("GET", "/orders", &[("authorization", &bearer), ("secret_key", raw), ("businessid", business)])
    }
}

fn denied(d: &Decision) -> (u16, DenyCode) {
    match d {
        Decision::Deny(denial) => (denial.status(), denial.code),
        Decision::Allow(a) => panic!("expected a denial, got {a:?}"),
    }
}

fn allowed(d: Decision) -> keygate_core::Allowed {
    match d {
        Decision::Allow(a) => a,
        Decision::Deny(denial) => panic!("expected allow, got {denial:?}"),
    }
}

#[test]
fn all_three_valid_is_allowed_with_identity_headers_and_stripping() {
    let w = world();
    let bearer = format!("Bearer {}", w.token());
    let a = allowed(w.run(
        "GET",
        "/orders",
        &[("Authorization", &bearer), ("SECRET_KEY", w.sk.expose()), ("businessId", BIZ), ("X-Keygate-Business", "biz_evil")],
    ));
    assert!(a.remove_headers.contains(&"secret_key".to_string()));
    assert!(a.remove_headers.contains(&"x-keygate-business".to_string()));
    assert!(!a.remove_headers.contains(&"authorization".to_string()));
    let added: std::collections::HashMap<_, _> = a.add_headers.into_iter().collect();
    assert_eq!(added["x-keygate-business"], BIZ);
    assert_eq!(added["x-keygate-key-id"], "key_sk");
    assert_eq!(added["x-keygate-subject"], "usr_1");
    assert_eq!(added["x-keygate-mode"], "live");
    assert_eq!(a.key_id.as_deref(), Some("key_sk"));
    assert_eq!(a.rate_limit.unwrap().per_hour, 1000);
}

#[test]
fn no_snapshot_or_a_stale_one_is_503_with_retry_after() {
    let w = world();
    let headers: Vec<(String, String)> = vec![];
    let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
    let d = decide(&w.policy, &request, None, NOW);
    assert_eq!(denied(&d), (503, DenyCode::AuthUnavailable));
    let stale = Synced::local(&w.snapshot, NOW - 61);
    let Decision::Deny(denial) = decide(&w.policy, &request, Some(stale), NOW) else { panic!() };
    assert_eq!(denial.code, DenyCode::AuthUnavailable);
    assert!(denial.headers().iter().any(|(k, v)| *k == "retry-after" && v == "5"));
    // Exactly at the limit is still fresh: the missing headers are what fail then.
    let edge = Synced::local(&w.snapshot, NOW - 60);
    assert_eq!(denied(&decide(&w.policy, &request, Some(edge), NOW)).1, DenyCode::MissingCredentials);
}

#[test]
fn each_missing_header_is_401_missing_credentials() {
    let w = world();
    let bearer = format!("Bearer {}", w.token());
    let full = [("authorization", bearer.as_str()), ("secret_key", w.sk.expose()), ("businessid", BIZ)];
    for skip in 0..3 {
        let headers: Vec<_> = full.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, h)| *h).collect();
        assert_eq!(denied(&w.run("GET", "/orders", &headers)), (401, DenyCode::MissingCredentials), "without {}", full[skip].0);
    }
    // Empty values count as missing.
    assert_eq!(
        denied(&w.run("GET", "/orders", &[("authorization", &bearer), ("secret_key", ""), ("businessid", BIZ)])).1,
        DenyCode::MissingCredentials
    );
    assert_eq!(
        denied(&w.run("GET", "/orders", &[("authorization", "Bearer "), ("secret_key", w.sk.expose()), ("businessid", BIZ)])).1,
        DenyCode::MissingCredentials
    );
}

#[test]
fn malformed_or_repeated_headers_are_401() {
    let w = world();
    let bearer = format!("Bearer {}", w.token());
    let basic = w.run("GET", "/orders", &[("authorization", "Basic dXNlcjpwYXNz"), ("secret_key", w.sk.expose()), ("businessid", BIZ)]);
    assert_eq!(denied(&basic), (401, DenyCode::InvalidToken));
    let twice = w.run(
        "GET",
        "/orders",
        &[("authorization", &bearer), ("authorization", &bearer), ("secret_key", w.sk.expose()), ("businessid", BIZ)],
    );
    assert_eq!(denied(&twice), (401, DenyCode::InvalidToken));
    let two_keys = w.run(
        "GET",
        "/orders",
        &[("authorization", &bearer), ("secret_key", w.sk.expose()), ("secret_key", w.sk.expose()), ("businessid", BIZ)],
    );
    assert_eq!(denied(&two_keys), (401, DenyCode::InvalidApiKey));
    let lower_scheme = w.run(
        "GET",
        "/orders",
        &[("authorization", &bearer.replace("Bearer", "bearer")), ("secret_key", w.sk.expose()), ("businessid", BIZ)],
    );
    assert!(matches!(lower_scheme, Decision::Allow(_)));
}

#[test]
fn token_failures_are_401_invalid_token() {
    let w = world();
    let good = w.token();
    let mut tampered = good.clone().into_bytes();
    let mid = good.find('.').unwrap() + 5;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign = SigningKeyPair::from_seed("k1", [9u8; 32]).sign(&claims()).unwrap();
    let unknown_kid = SigningKeyPair::from_seed("k2", [7u8; 32]).sign(&claims()).unwrap();
    let expired = w.signer.sign(&AccessClaims { iat: NOW - 8000, exp: NOW - 31, ..claims() }).unwrap();
    let future = w.signer.sign(&AccessClaims { nbf: Some(NOW + 3600), ..claims() }).unwrap();
    let wrong_iss = w.signer.sign(&AccessClaims { iss: "evil".into(), ..claims() }).unwrap();
    let wrong_aud = w.signer.sign(&AccessClaims { aud: "other".into(), ..claims() }).unwrap();
    let revoked = w.signer.sign(&AccessClaims { sid: "ses_revoked".into(), ..claims() }).unwrap();
    let huge = "a".repeat(20_000);
    let cases = [
        ("tampered", tampered),
        ("foreign key, known kid", foreign),
        ("unknown kid", unknown_kid),
        ("expired", expired),
        ("nbf in future", future),
        ("wrong iss", wrong_iss),
        ("wrong aud", wrong_aud),
        ("revoked session", revoked),
        ("junk", "not.a.jwt".into()),
        ("one segment", "abc".into()),
        ("huge", huge),
        ("api key in bearer on an all-three route", w.sk.expose().to_owned()),
        ("unicode", "ééé.ééé.ééé".into()),
    ];
    for (name, token) in cases {
        assert_eq!(denied(&w.all_three(&token, &w.sk, BIZ)), (401, DenyCode::InvalidToken), "{name}");
    }
    // Within the leeway an expired token still passes (clock skew).
    let just_expired = w.signer.sign(&AccessClaims { exp: NOW - 5, ..claims() }).unwrap();
    assert!(matches!(w.all_three(&just_expired, &w.sk, BIZ), Decision::Allow(_)));
}

#[test]
fn forged_headers_alg_none_hs256_crit_jku_are_refused() {
    use base64::Engine;
    let w = world();
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let body = b64(&serde_json::to_value(claims()).unwrap());
    let good = w.token();
    let sig = good.rsplit('.').next().unwrap();
    let headers = [
        serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": "k1"}),
        serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1", "crit": ["exp"]}),
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1", "jku": "http://evil/jwks"}),
        serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}),
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt"}),
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "../../etc/passwd"}),
    ];
    for h in headers {
        let forged = format!("{}.{}.{}", b64(&h), body, sig);
        assert_eq!(denied(&w.all_three(&forged, &w.sk, BIZ)), (401, DenyCode::InvalidToken), "{h}");
        assert_eq!(denied(&w.all_three(&format!("{}.{}.", b64(&h), body), &w.sk, BIZ)).1, DenyCode::InvalidToken);
    }
}

#[test]
fn key_failures_are_401_invalid_api_key_with_the_seed_message() {
    let w = world();
    let token = w.token();
    let mut broken = w.sk.expose().to_owned();
    let last = broken.pop().unwrap();
    broken.push(if last == 'a' { 'b' } else { 'a' });
    let with_space = format!("{} ", w.sk.expose());
    let lookalike = w.sk.expose().replacen('a', "\u{0430}", 1);
    for (name, raw) in [
        ("unknown", w.unknown.expose()),
        ("bad checksum", broken.as_str()),
        ("inactive", w.inactive.expose()),
        ("expired", w.expired.expose()),
        ("random", "sk_live_hello"),
        ("no prefix", "hello"),
        ("trailing space", with_space.as_str()),
        ("cyrillic look-alike", lookalike.as_str()),
    ] {
        let Decision::Deny(denial) = w.all_three_raw(&token, raw, BIZ) else { panic!("{name} allowed") };
        assert_eq!((denial.status(), denial.code, denial.message), (401, DenyCode::InvalidApiKey, "Invalid API key"), "{name}");
        assert_eq!(denial.body(), r#"{"code":"invalid_api_key","error":"Invalid API key","success":false}"#);
    }
}

#[test]
fn business_mismatch_is_403() {
    let w = world();
    let token = w.token();
    assert_eq!(denied(&w.all_three(&token, &w.sk, OTHER_BIZ)), (403, DenyCode::BusinessMismatch));
    // The key belongs to another business than the header names.
    assert_eq!(denied(&w.all_three(&token, &w.other_biz, BIZ)), (403, DenyCode::BusinessMismatch));
    // The key and header agree, but the token's businesses do not include it.
    assert_eq!(denied(&w.all_three(&token, &w.other_biz, OTHER_BIZ)), (403, DenyCode::BusinessMismatch));
}

#[test]
fn permission_failures_are_403_insufficient_permission() {
    let w = world();
    let token = w.token();
    let bearer = format!("Bearer {token}");
    let with = |method: &str, path: &str, key: &ApiKey| {
        w.run(method, path, &[("authorization", &bearer), ("secret_key", key.expose()), ("businessid", BIZ)])
    };
    assert_eq!(denied(&with("POST", "/orders", &w.pk)), (403, DenyCode::InsufficientPermission));
    assert!(matches!(with("GET", "/orders", &w.pk), Decision::Allow(_)));
    assert!(matches!(with("HEAD", "/orders", &w.pk), Decision::Allow(_)));
    assert_eq!(denied(&with("GET", "/live/x", &w.sk_test)), (403, DenyCode::InsufficientPermission));
    assert!(matches!(with("GET", "/live/x", &w.sk), Decision::Allow(_)));
    // Scopes: an unrestricted key passes, a scoped key needs the route's scope.
    assert!(matches!(with("GET", "/reports/1", &w.scoped), Decision::Allow(_)));
    let narrow_token = w.signer.sign(&AccessClaims { scope: "orders:write".into(), ..claims() }).unwrap();
    let narrow = format!("Bearer {narrow_token}");
    let d = w.run("GET", "/reports/1", &[("authorization", &narrow), ("secret_key", w.scoped.expose()), ("businessid", BIZ)]);
    assert_eq!(denied(&d), (403, DenyCode::InsufficientPermission));
    // A token minted for test mode cannot be used with a live key.
    let test_token = w.signer.sign(&AccessClaims { mode: Some(Mode::Test), ..claims() }).unwrap();
    assert_eq!(denied(&w.all_three(&test_token, &w.sk, BIZ)), (403, DenyCode::InsufficientPermission));
}

#[test]
fn key_only_route_takes_the_key_in_secret_key_or_bearer_and_strips_both() {
    let w = world();
    let a = allowed(w.run("POST", "/key/orders", &[("secret_key", w.sk.expose())]));
    assert_eq!(a.key_id.as_deref(), Some("key_sk"));
    let bearer = format!("Bearer {}", w.sk.expose());
    let a = allowed(w.run("POST", "/key/orders", &[("authorization", &bearer)]));
    assert!(a.remove_headers.contains(&"authorization".to_string()));
    assert!(!a.add_headers.iter().any(|(k, _)| *k == "x-keygate-subject"));
    assert_eq!(denied(&w.run("GET", "/key/orders", &[])), (401, DenyCode::MissingCredentials));
    // Two different keys at once are refused.
    let d = w.run("GET", "/key/orders", &[("authorization", &bearer), ("secret_key", w.pk.expose())]);
    assert_eq!(denied(&d), (401, DenyCode::InvalidApiKey));
    // businessId is optional here, but must agree when sent.
    assert_eq!(
        denied(&w.run("GET", "/key/x", &[("secret_key", w.sk.expose()), ("businessid", OTHER_BIZ)])),
        (403, DenyCode::BusinessMismatch)
    );
    // A JWT in the bearer position is not a key.
    let jwt = format!("Bearer {}", w.token());
    assert_eq!(denied(&w.run("GET", "/key/x", &[("authorization", &jwt)])), (401, DenyCode::MissingCredentials));
}

#[test]
fn public_route_needs_nothing_not_even_a_snapshot_and_is_limited_per_ip() {
    let w = world();
    let headers = vec![("x-keygate-key-id".to_string(), "forged".to_string())];
    let request = RequestView { method: "GET", path: "/public/articles", headers: &headers, client_ip: Some("198.51.100.1") };
    let Decision::Allow(a) = decide(&w.policy, &request, None, NOW) else { panic!() };
    assert_eq!(a.rate_limit.unwrap(), keygate_core::RateLimitTarget { bucket: "ip:198.51.100.1".into(), per_hour: 200 });
    assert!(a.remove_headers.contains(&"x-keygate-key-id".to_string()));
    assert!(a.add_headers.is_empty());
    // A dot-segment escape from /public/ needs all three.
    assert_eq!(denied(&w.run("GET", "/public/../orders", &[])).1, DenyCode::MissingCredentials);
}

#[test]
fn rate_limits_follow_kind_and_route_overrides() {
    let w = world();
    let a = allowed(w.run("GET", "/key/x", &[("secret_key", w.pk.expose())]));
    assert_eq!(a.rate_limit.unwrap(), keygate_core::RateLimitTarget { bucket: "key:key_pk".into(), per_hour: 100 });
    let token = w.token();
    let bearer = format!("Bearer {token}");
    let a = allowed(w.run("GET", "/limited/x", &[("authorization", &bearer), ("secret_key", w.sk.expose()), ("businessid", BIZ)]));
    assert_eq!(a.rate_limit.unwrap(), keygate_core::RateLimitTarget { bucket: "key:key_sk@/limited/".into(), per_hour: 5 });
    let denial = keygate_core::decide::rate_limited(30);
    assert_eq!((denial.status(), denial.code.as_str()), (429, "rate_limited"));
    assert!(denial.headers().contains(&("retry-after", "30".to_string())));
}

#[test]
fn shadow_route_lets_a_bad_request_through_and_says_what_it_would_have_done() {
    let w = world();
    let a = allowed(w.run("POST", "/shadow/x", &[("secret_key", "junk"), ("x-keygate-business", "forged")]));
    assert_eq!(a.shadow_denial.map(|d| d.code), Some(DenyCode::MissingCredentials));
    assert!(a.remove_headers.contains(&"x-keygate-business".to_string()));
    assert!(a.add_headers.is_empty());
}

#[test]
fn every_code_has_its_status_and_a_json_body_without_secrets() {
    let expected = [
        (401, "missing_credentials"),
        (401, "invalid_token"),
        (401, "invalid_api_key"),
        (403, "business_mismatch"),
        (403, "insufficient_permission"),
        (429, "rate_limited"),
        (503, "auth_unavailable"),
    ];
    for (code, (status, name)) in DenyCode::ALL.iter().zip(expected) {
        assert_eq!((code.status(), code.as_str()), (status, name));
    }
    let w = world();
    let token = w.token();
    let Decision::Deny(denial) = w.all_three(&token, &w.unknown, BIZ) else { panic!() };
    let body = denial.body();
    assert!(!body.contains(w.unknown.expose()) && !body.contains(&token));
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["success"], false);
}

#[test]
fn decide_never_panics_on_hostile_input() {
    let w = world();
    let junk = [
        "",
        " ",
        "Bearer",
        "Bearer  ",
        "Bearer \u{0}",
        "\u{ffff}",
        "Bearer a.b.c.d",
        "Bearer ..",
        "Bearer sk_live_",
        "sk_live_\u{e9}\u{e9}",
        &"x".repeat(100_000),
    ];
    for a in junk {
        for b in junk {
            for path in ["", "?", "/%", "/public/%2", "\u{e9}"] {
                let _ = w.run("GET", path, &[("authorization", a), ("secret_key", b), ("businessid", a), (b, a)]);
                let _ = w.run(b, path, &[("authorization", a)]);
            }
        }
    }
}

#[test]
fn token_cache_skips_reverification_but_revocation_expiry_and_key_removal_still_apply() {
    use keygate_core::{decide_cached, TokenCache};
    let mut w = world();
    let mut cache = TokenCache::new(2);
    let token = w.token();
    let bearer = format!("Bearer {token}");
    let headers: Vec<(String, String)> =
        vec![("authorization".into(), bearer), ("secret_key".into(), w.sk.expose().into()), ("businessid".into(), BIZ.into())];
    let run = |w: &World, cache: &mut TokenCache, now: u64| {
        let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
        decide_cached(&w.policy, &request, Some(Synced::local(&w.snapshot, now)), now, cache)
    };
    assert!(matches!(run(&w, &mut cache, NOW), Decision::Allow(_)));
    assert_eq!(cache.len(), 1);
    assert!(matches!(run(&w, &mut cache, NOW + 1), Decision::Allow(_)));
    assert_eq!(cache.len(), 1);
    // Expired while cached.
    assert_eq!(denied(&run(&w, &mut cache, NOW + 7200 + 30)).1, DenyCode::InvalidToken);
    // Revoked while cached: takes effect on the next request.
    assert!(matches!(run(&w, &mut cache, NOW), Decision::Allow(_)));
    w.snapshot
        .apply(SnapshotWire {
            version: 4,
            since: Some(3),
            revoked_sessions: vec![RevokedSession { sid: "ses_1".into(), until: NOW + 9000 }],
            ..SnapshotWire::default()
        })
        .unwrap();
    assert_eq!(denied(&run(&w, &mut cache, NOW)).1, DenyCode::InvalidToken);
    // Its signing key withdrawn while cached.
    let mut w2 = world();
    let mut cache2 = TokenCache::new(8);
    let token2 = w2.token();
    let headers2: Vec<(String, String)> = vec![
        ("authorization".into(), format!("Bearer {token2}")),
        ("secret_key".into(), w2.sk.expose().into()),
        ("businessid".into(), BIZ.into()),
    ];
    let request2 = RequestView { method: "GET", path: "/orders", headers: &headers2, client_ip: None };
    assert!(matches!(decide_cached(&w2.policy, &request2, Some(Synced::local(&w2.snapshot, NOW)), NOW, &mut cache2), Decision::Allow(_)));
    w2.snapshot
        .apply(SnapshotWire { version: 4, since: Some(3), removed_signing_keys: vec!["k1".into()], ..SnapshotWire::default() })
        .unwrap();
    assert_eq!(
        denied(&decide_cached(&w2.policy, &request2, Some(Synced::local(&w2.snapshot, NOW)), NOW, &mut cache2)).1,
        DenyCode::InvalidToken
    );
}

#[test]
fn token_cache_stays_bounded() {
    use keygate_core::{decide_cached, TokenCache};
    let w = world();
    let mut cache = TokenCache::new(3);
    for i in 0..10 {
        let token = w.signer.sign(&AccessClaims { jti: format!("j{i}"), ..claims() }).unwrap();
        let headers: Vec<(String, String)> = vec![
            ("authorization".into(), format!("Bearer {token}")),
            ("secret_key".into(), w.sk.expose().into()),
            ("businessid".into(), BIZ.into()),
        ];
        let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
        assert!(matches!(decide_cached(&w.policy, &request, Some(Synced::local(&w.snapshot, NOW)), NOW, &mut cache), Decision::Allow(_)));
        assert!(cache.len() <= 3);
    }
}

#[test]
fn imported_keys_without_keygate_checksum_are_looked_up_by_hash_with_the_stored_kind_and_mode() {
    use keygate_core::KeyHash;
    let mut w = world();
    // Another vendor's keys: one with a keygate-like prefix but another length, one with none.
    let vendor_sk = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    let vendor_pk = "pk_test_TYooMQauvdEDq54NiTphI7jx";
    let plain = "legacy-0123456789abcdef";
    let legacy = |raw: &str, id: &str, kind, mode| KeyEntry {
        hash: KeyHash::of_raw(raw),
        id: id.into(),
        business: BIZ.into(),
        kind,
        mode,
        scopes: vec![],
        expires_at: None,
        active: true,
    };
    let wire = SnapshotWire {
        version: 4,
        since: Some(3),
        // The stored record, not the prefix, says what a legacy key is: `vendor_pk` was
        // imported as a secret live key, `plain` as a publishable test key.
        keys: vec![
            legacy(vendor_sk, "key_vsk", KeyKind::Sk, Mode::Live),
            legacy(vendor_pk, "key_vpk", KeyKind::Sk, Mode::Live),
            legacy(plain, "key_plain", KeyKind::Pk, Mode::Test),
        ],
        ..SnapshotWire::default()
    };
    w.snapshot.apply(wire).unwrap();
    let token = w.token();
    for (raw, id) in [(vendor_sk, "key_vsk"), (vendor_pk, "key_vpk")] {
        let a = allowed(w.all_three_raw(&token, raw, BIZ));
        assert_eq!(a.key_id.as_deref(), Some(id));
        assert!(a.add_headers.contains(&("x-keygate-mode", "live".to_owned())));
        // A POST is fine: both are stored as secret keys.
        let bearer = format!("Bearer {token}");
        assert!(matches!(
            w.run("POST", "/orders", &[("authorization", &bearer), ("secret_key", raw), ("businessid", BIZ)]),
            Decision::Allow(_)
        ));
    }
    // The publishable test key: safe methods only, refused on a live route.
    let with = |method: &str, path: &str, raw: &str| w.run(method, path, &[("secret_key", raw)]);
    assert_eq!(allowed(with("GET", "/key/x", plain)).key_id.as_deref(), Some("key_plain"));
    assert_eq!(denied(&with("POST", "/key/x", plain)), (403, DenyCode::InsufficientPermission));
    let bearer = format!("Bearer {token}");
    let live = w.run("GET", "/live/x", &[("authorization", &bearer), ("secret_key", plain), ("businessid", BIZ)]);
    assert_eq!(denied(&live), (403, DenyCode::InsufficientPermission));
    // A wrong legacy value, a near miss and an over-long or spaced one: invalid_api_key.
    for raw in ["sk_live_4eC39HqLyjWDarjtT1zdp7dd", "legacy-0123456789abcdeF", "short", &"x".repeat(257), "legacy 0123456789abcdef"] {
        assert_eq!(denied(&with("GET", "/key/x", raw)), (401, DenyCode::InvalidApiKey), "{raw}");
    }
    // keygate's own format keeps its checksum rule: a registered keygate key with one
    // character changed is refused even if that exact text were registered as a legacy key.
    let mut typo = w.sk.expose().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    w.snapshot
        .apply(SnapshotWire {
            version: 5,
            since: Some(4),
            keys: vec![legacy(&typo, "key_typo", KeyKind::Sk, Mode::Live)],
            ..SnapshotWire::default()
        })
        .unwrap();
    assert_eq!(denied(&w.run("GET", "/key/x", &[("secret_key", &typo)])), (401, DenyCode::InvalidApiKey));
    // Deactivated or expired legacy keys are refused like any other.
    let off = KeyEntry { active: false, ..legacy(plain, "key_plain", KeyKind::Pk, Mode::Test) };
    w.snapshot.apply(SnapshotWire { version: 6, since: Some(5), keys: vec![off], ..SnapshotWire::default() }).unwrap();
    assert_eq!(denied(&w.run("GET", "/key/x", &[("secret_key", plain)])), (401, DenyCode::InvalidApiKey));
}

fn cached_run(w: &World, cache: &mut keygate_core::TokenCache, token: &str, raw_key: &str) -> Decision {
    let headers: Vec<(String, String)> =
        vec![("authorization".into(), format!("Bearer {token}")), ("secret_key".into(), raw_key.into()), ("businessid".into(), BIZ.into())];
    let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
    keygate_core::decide_cached(&w.policy, &request, Some(Synced::local(&w.snapshot, NOW)), NOW, cache)
}

#[test]
fn a_bad_key_is_refused_before_any_signature_work() {
    let w = world();
    let mut cache = keygate_core::TokenCache::new(16);
    // A forged token under the real kid, with a key that fails its checksum, an unknown key
    // or a deactivated one: each answer comes without verifying a signature.
    let forged = SigningKeyPair::from_seed("k1", [9u8; 32]).sign(&claims()).unwrap();
    let mut broken = w.sk.expose().to_owned();
    let last = broken.pop().unwrap();
    broken.push(if last == 'a' { 'b' } else { 'a' });
    for raw in [broken.as_str(), w.unknown.expose(), w.inactive.expose(), "sk_live_hello"] {
        assert_eq!(denied(&cached_run(&w, &mut cache, &forged, raw)), (401, DenyCode::InvalidApiKey), "{raw}");
    }
    assert_eq!(cache.signature_checks(), 0);
    // Structural token failures still answer invalid_token first, also without crypto.
    assert_eq!(denied(&cached_run(&w, &mut cache, "not.a.jwt", &broken)), (401, DenyCode::InvalidToken));
    let unknown_kid = SigningKeyPair::from_seed("k2", [7u8; 32]).sign(&claims()).unwrap();
    assert_eq!(denied(&cached_run(&w, &mut cache, &unknown_kid, w.sk.expose())), (401, DenyCode::InvalidToken));
    assert_eq!(cache.signature_checks(), 0);
    // With a good key the forged token is checked, and refused.
    assert_eq!(denied(&cached_run(&w, &mut cache, &forged, w.sk.expose())), (401, DenyCode::InvalidToken));
    assert_eq!(cache.signature_checks(), 1);
}

#[test]
fn a_failed_token_costs_one_signature_check_not_one_per_request() {
    let w = world();
    let mut cache = keygate_core::TokenCache::new(16);
    let forged = SigningKeyPair::from_seed("k1", [9u8; 32]).sign(&claims()).unwrap();
    let wrong_aud = w.signer.sign(&AccessClaims { aud: "other".into(), ..claims() }).unwrap();
    for _ in 0..20 {
        assert_eq!(denied(&cached_run(&w, &mut cache, &forged, w.sk.expose())), (401, DenyCode::InvalidToken));
        assert_eq!(denied(&cached_run(&w, &mut cache, &wrong_aud, w.sk.expose())), (401, DenyCode::InvalidToken));
    }
    assert_eq!(cache.signature_checks(), 2);
    // A valid token is unaffected, and verified once.
    let good = w.token();
    for _ in 0..3 {
        assert!(matches!(cached_run(&w, &mut cache, &good, w.sk.expose()), Decision::Allow(_)));
    }
    assert_eq!(cache.signature_checks(), 3);
}

#[test]
fn failed_tokens_are_forgotten_after_a_while_and_a_flood_stays_bounded() {
    let w = world();
    let mut cache = keygate_core::TokenCache::new(8);
    let forger = SigningKeyPair::from_seed("k1", [9u8; 32]);
    let forged = forger.sign(&claims()).unwrap();
    let at = |cache: &mut keygate_core::TokenCache, token: &str, now: u64| {
        let headers: Vec<(String, String)> = vec![
            ("authorization".into(), format!("Bearer {token}")),
            ("secret_key".into(), w.sk.expose().into()),
            ("businessid".into(), BIZ.into()),
        ];
        let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
        keygate_core::decide_cached(&w.policy, &request, Some(Synced::local(&w.snapshot, now)), now, cache)
    };
    at(&mut cache, &forged, NOW);
    at(&mut cache, &forged, NOW + 1);
    assert_eq!(cache.signature_checks(), 1);
    // After the negative entry's lifetime the token is checked again (still refused).
    at(&mut cache, &forged, NOW + keygate_core::decide::FAILED_TOKEN_TTL_SECS);
    assert_eq!(cache.signature_checks(), 2);
    // A flood of distinct forged tokens: one check each, memory within the capacity.
    for i in 0..100 {
        let token = forger.sign(&AccessClaims { jti: format!("f{i}"), ..claims() }).unwrap();
        assert_eq!(denied(&at(&mut cache, &token, NOW)).1, DenyCode::InvalidToken);
        assert!(cache.failed_len() <= 8, "{} failed tokens kept", cache.failed_len());
    }
    assert_eq!(cache.signature_checks(), 102);
}

#[test]
fn token_cache_of_zero_entries_caches_nothing() {
    let w = world();
    let mut cache = keygate_core::TokenCache::new(0);
    let good = w.token();
    let forged = SigningKeyPair::from_seed("k1", [9u8; 32]).sign(&claims()).unwrap();
    for _ in 0..3 {
        assert!(matches!(cached_run(&w, &mut cache, &good, w.sk.expose()), Decision::Allow(_)));
        assert_eq!(denied(&cached_run(&w, &mut cache, &forged, w.sk.expose())).1, DenyCode::InvalidToken);
        assert_eq!((cache.len(), cache.failed_len()), (0, 0));
    }
    assert_eq!(cache.signature_checks(), 6);
}

#[test]
fn filter_leeway_cannot_outlast_admins_revocation_margin() {
    use keygate_core::token::REVOCATION_MARGIN_SECS;
    let w = world();
    let exp = NOW + 100;
    let token = w.signer.sign(&AccessClaims { sid: "ses_gone".into(), exp, ..claims() }).unwrap();
    let bearer = format!("Bearer {token}");
    let headers: Vec<(String, String)> =
        vec![("authorization".into(), bearer), ("secret_key".into(), w.sk.expose().into()), ("businessid".into(), BIZ.into())];
    for leeway in [0, 30, REVOCATION_MARGIN_SECS, REVOCATION_MARGIN_SECS + 1, 120] {
        let json = format!(r#"{{"admin_cluster": "a", "proxy_token": "t", "leeway_secs": {leeway}}}"#);
        let policy = match FilterConfig::parse(json.as_bytes(), None) {
            Ok(cfg) => cfg.policy,
            Err(e) => {
                assert!(leeway > REVOCATION_MARGIN_SECS, "leeway {leeway} refused: {e}");
                assert!(e.to_string().contains("leeway_secs"), "{e}");
                continue;
            }
        };
        // Admin revokes the session until exp + its margin; past that the entry leaves the feed.
        let mut snapshot = w.snapshot.clone();
        snapshot
            .apply(SnapshotWire {
                version: 4,
                since: Some(3),
                revoked_sessions: vec![RevokedSession { sid: "ses_gone".into(), until: exp + REVOCATION_MARGIN_SECS }],
                ..SnapshotWire::default()
            })
            .unwrap();
        for now in [exp - 1, exp + REVOCATION_MARGIN_SECS - 1, exp + REVOCATION_MARGIN_SECS, exp + 90, exp + 119] {
            snapshot.forget_expired_revocations(now);
            let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
            let d = decide(&policy, &request, Some(Synced::local(&snapshot, now)), now);
            assert!(
                matches!(&d, Decision::Deny(x) if x.code == DenyCode::InvalidToken),
                "leeway {leeway}, {}s after exp: {d:?}",
                now as i64 - exp as i64
            );
        }
    }
}
