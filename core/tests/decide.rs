//! Every row of the README's decision table and every error code, natively.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keygate_core::ratelimit::{Limit, LimitCheck, Scope};
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{KeyEntry, SnapshotWire};
use keygate_core::{decide, AccessClaims, ApiKey, Decision, DenyCode, KeyKind, Mode, RequestView, Snapshot, Synced};
use support::world::{claims, world, OTHER_BIZ};
use support::{allowed, denied, BIZ, NOW};

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
    assert_eq!(a.rate_limits, vec![check("key:key_sk", Scope::Key, "1000/h")]);
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
    assert_eq!(a.rate_limits, vec![check("ip:198.51.100.1", Scope::Address, "200/h")]);
    assert!(a.remove_headers.contains(&"x-keygate-key-id".to_string()));
    assert!(a.add_headers.is_empty());
    // A dot-segment escape from /public/ needs all three.
    assert_eq!(denied(&w.run("GET", "/public/../orders", &[])).1, DenyCode::MissingCredentials);
}

#[test]
fn rate_limits_follow_kind_and_route_overrides() {
    let w = world();
    let a = allowed(w.run("GET", "/key/x", &[("secret_key", w.pk.expose())]));
    assert_eq!(a.rate_limits, vec![check("key:key_pk", Scope::Key, "100/h")]);
    let token = w.token();
    let bearer = format!("Bearer {token}");
    let a = allowed(w.run("GET", "/limited/x", &[("authorization", &bearer), ("secret_key", w.sk.expose()), ("businessid", BIZ)]));
    assert_eq!(a.rate_limits, vec![check("key:key_sk@/limited/", Scope::Key, "5/h")]);
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
        (403, "ip_not_allowed"),
        (429, "rate_limited"),
        (429, "quota_exhausted"),
        (503, "auth_unavailable"),
    ];
    assert_eq!(DenyCode::ALL.len(), expected.len());
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
        credits: None,
        allowed_ips: vec![],
        rate_limits: None,
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

fn check(bucket: &str, scope: Scope, limit: &str) -> LimitCheck {
    LimitCheck { bucket: bucket.into(), scope, limit: Limit::parse(limit).unwrap() }
}

#[test]
fn a_key_with_credits_spends_the_rule_cost_and_keys_without_spend_nothing() {
    use keygate_core::credits::{CreditCount, CreditsEntry};
    let policy = keygate_core::config::FilterConfig::parse(
        br#"{"admin_cluster": "a", "proxy_token": "t", "routes": [
            {"prefix": "/key/", "require": "key"},
            {"prefix": "/costly/", "require": "key", "cost": 5},
            {"prefix": "/free/", "require": "key", "cost": 0}
        ]}"#,
        None,
    )
    .unwrap()
    .policy;
    let (with, without) = (support::world::key(KeyKind::Sk, Mode::Live, 11), support::world::key(KeyKind::Sk, Mode::Live, 12));
    let credits = CreditsEntry { balance: 7, epoch: 3, period: 0, refill: None };
    let wire = SnapshotWire {
        version: 1,
        keys: vec![KeyEntry { credits: Some(credits), ..support::entry(&with, "key_cr", BIZ) }, support::entry(&without, "key_free", BIZ)],
        ..SnapshotWire::default()
    };
    let snapshot = Snapshot::from_full(wire).unwrap();
    let run = |path: &str, key: &ApiKey| {
        let headers = support::owned(&[("secret_key", key.expose())]);
        let request = RequestView { method: "GET", path, headers: &headers, client_ip: None };
        support::allowed(decide(&policy, &request, Some(Synced::local(&snapshot, NOW)), NOW))
    };
    let one = run("/key/x", &with).credits.unwrap();
    assert_eq!((one.key_id.as_str(), one.epoch, one.allowance, one.cost), ("key_cr", 3, 7, 1));
    let five = run("/costly/x", &with).credits.unwrap();
    assert_eq!(five.cost, 5);
    assert!(run("/free/x", &with).credits.is_none(), "a rule of cost 0 spends nothing");
    assert!(run("/key/x", &without).credits.is_none(), "a key without credits is unlimited");
    // 7 credits: one request of 5, then one of 1, then the next of 5 is refused.
    let count = CreditCount::default().spend(&five, None).unwrap().spend(&one, None).unwrap();
    assert!(count.spend(&five, None).is_err());
    let refused = keygate_core::decide::quota_exhausted(&five);
    assert_eq!((refused.status(), refused.code, refused.retry_after), (429, DenyCode::QuotaExhausted, None));
    assert!(refused.body().contains("quota_exhausted"));
    assert!(keygate_core::config::FilterConfig::parse(
        br#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/x/", "cost": 2000000}]}"#,
        None
    )
    .is_err());
}
