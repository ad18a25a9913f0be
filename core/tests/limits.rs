//! Header stripping in every spelling, what a rate-limit charge does on shadow and normal
//! rules, and how public clients are bucketed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keygate_core::decide::{after_rate_limit, rate_limited};
use keygate_core::ratelimit::{Limit, LimitCheck, Scope};
use keygate_core::snapshot::SnapshotWire;
use keygate_core::{decide, ApiKey, Decision, DenyCode, FilterConfig, Policy, RequestView, Snapshot, Synced};
use support::{allowed, entry, live_sk, owned, NOW};

fn policy(extra: &str) -> Policy {
    let json = format!(
        r#"{{"admin_cluster": "a", "proxy_token": "t"{extra}, "routes": [
            {{"prefix": "/public/", "require": "none"}},
            {{"prefix": "/open/", "require": "none", "rate_limit_per_hour": 7}},
            {{"prefix": "/key/", "require": "key"}},
            {{"prefix": "/shadow/", "require": "key", "shadow": true, "rate_limit_per_hour": 1}}
        ]}}"#
    );
    FilterConfig::parse(json.as_bytes(), None).unwrap().policy
}

fn world() -> (Policy, Snapshot, ApiKey) {
    let sk = live_sk();
    let wire = SnapshotWire { version: 1, keys: vec![entry(&sk, "key_1", "biz_1")], ..SnapshotWire::default() };
    (policy(""), Snapshot::from_full(wire).unwrap(), sk)
}

fn run(policy: &Policy, snapshot: &Snapshot, method: &str, path: &str, headers: &[(&str, &str)], ip: Option<&str>) -> Decision {
    let headers = owned(headers);
    let request = RequestView { method, path, headers: &headers, client_ip: ip };
    decide(policy, &request, Some(Synced::local(snapshot, NOW - 1)), NOW)
}

#[test]
fn identity_and_key_headers_are_stripped_in_underscore_and_mixed_spellings() {
    let (policy, snapshot, sk) = world();
    let forged = [
        ("SECRET_KEY", sk.expose()),
        ("x_keygate_subject", "usr_admin"),
        ("X-KEYGATE_business", "biz_evil"),
        ("X_Keygate_Key_Id", "key_evil"),
        ("secret-key", "sk_live_other"),
        ("Secret_Key2", "kept"),
        ("x-keygatex", "kept"),
        ("x_keygate", "kept"),
    ];
    for path in ["/key/x", "/public/x", "/shadow/x"] {
        let a = allowed(run(&policy, &snapshot, "GET", path, &forged, Some("192.0.2.1")));
        for name in ["secret_key", "x_keygate_subject", "x-keygate_business", "x_keygate_key_id", "secret-key"] {
            assert!(a.remove_headers.contains(&name.to_string()), "{path}: {name} not removed: {:?}", a.remove_headers);
        }
        for name in ["secret_key2", "x-keygatex", "x_keygate"] {
            assert!(!a.remove_headers.contains(&name.to_string()), "{path}: {name} removed");
        }
    }
    // A shadow rule whose checks fail strips them too.
    let bad = [("secret_key", "junk"), ("x_keygate_subject", "usr_admin")];
    let a = allowed(run(&policy, &snapshot, "GET", "/shadow/x", &bad, None));
    assert!(a.shadow_denial.is_some());
    assert!(a.remove_headers.contains(&"x_keygate_subject".to_string()));
}

#[test]
fn over_the_limit_a_shadow_rule_lets_the_request_through_and_notes_the_denial() {
    let (policy, snapshot, sk) = world();
    let route = policy.route_for("GET", "/shadow/x");
    let a = allowed(run(&policy, &snapshot, "GET", "/shadow/x", &[("secret_key", sk.expose())], None));
    assert_eq!(a.rate_limits, vec![LimitCheck { bucket: "key:key_1@/shadow/".into(), scope: Scope::Key, limit: Limit::per_hour(1) }]);
    assert!(a.shadow_denial.is_none());
    match after_rate_limit(route, a.clone(), Err(rate_limited(60))) {
        Decision::Allow(over) => {
            assert_eq!(over.shadow_denial.map(|d| d.code), Some(DenyCode::RateLimited));
            assert_eq!(over.add_headers, a.add_headers, "identity headers still go to the upstream");
            assert_eq!(over.key_id.as_deref(), Some("key_1"));
        }
        Decision::Deny(d) => panic!("a shadow rule refused: {d:?}"),
    }
    assert_eq!(after_rate_limit(route, a.clone(), Ok(())), Decision::Allow(a));
}

#[test]
fn over_the_limit_a_normal_rule_refuses_with_retry_after() {
    let (policy, snapshot, sk) = world();
    let route = policy.route_for("GET", "/key/x");
    let a = allowed(run(&policy, &snapshot, "GET", "/key/x", &[("secret_key", sk.expose())], None));
    match after_rate_limit(route, a.clone(), Err(rate_limited(42))) {
        Decision::Deny(d) => {
            assert_eq!((d.status(), d.code), (429, DenyCode::RateLimited));
            assert!(d.headers().contains(&("retry-after", "42".to_string())));
        }
        Decision::Allow(a) => panic!("over the limit but allowed: {a:?}"),
    }
    assert_eq!(after_rate_limit(route, a.clone(), Ok(())), Decision::Allow(a));
}

#[test]
fn public_clients_are_bucketed_per_ipv4_address_and_per_ipv6_prefix() {
    let (base, snapshot, _) = world();
    let bucket =
        |policy: &Policy, path: &str, ip: Option<&str>| allowed(run(policy, &snapshot, "GET", path, &[], ip)).rate_limits[0].bucket.clone();
    assert_eq!(bucket(&base, "/public/x", Some("198.51.100.4")), "ip:198.51.100.4");
    assert_eq!(bucket(&base, "/public/x", Some("::ffff:198.51.100.4")), "ip:198.51.100.4");
    assert_eq!(bucket(&base, "/public/x", Some("2001:db8:a:b:1:2:3:4")), "ip:2001:db8:a:b::/64");
    assert_eq!(bucket(&base, "/public/x", Some("2001:DB8:A:B::99")), "ip:2001:db8:a:b::/64");
    assert_eq!(bucket(&base, "/open/x", Some("2001:db8:a:b::99")), "ip:2001:db8:a:b::/64@/open/");
    assert_eq!(bucket(&base, "/public/x", Some("garbage")), "ip:unknown");
    assert_eq!(bucket(&base, "/public/x", None), "ip:unknown");
    let wide = policy(r#", "rate_limits": {"ipv6_prefix_len": 48}"#);
    assert_eq!(bucket(&wide, "/public/x", Some("2001:db8:a:b::99")), "ip:2001:db8:a::/48");
    assert_eq!(bucket(&wide, "/public/x", Some("198.51.100.4")), "ip:198.51.100.4");
}

#[test]
fn a_key_counts_against_every_limit_of_its_kind_and_its_business() {
    let (_, snapshot, sk) = world();
    let policy = policy(r#", "rate_limits": {"sk": ["20/s", "1000/h"], "business": ["5000/d"]}"#);
    let a = allowed(run(&policy, &snapshot, "GET", "/key/x", &[("secret_key", sk.expose())], None));
    let limit = |s: &str| Limit::parse(s).unwrap();
    assert_eq!(
        a.rate_limits,
        vec![
            LimitCheck { bucket: "key:key_1".into(), scope: Scope::Key, limit: limit("20/s") },
            LimitCheck { bucket: "key:key_1".into(), scope: Scope::Key, limit: limit("1000/h") },
            LimitCheck { bucket: "biz:biz_1".into(), scope: Scope::Business, limit: limit("5000/d") },
        ]
    );
    // Each limit is its own counter, and the names the headers show differ.
    let counters: std::collections::HashSet<_> = a.rate_limits.iter().map(LimitCheck::counter).collect();
    assert_eq!(counters.len(), 3);
    assert_eq!(a.rate_limits.iter().map(LimitCheck::policy_name).collect::<Vec<_>>(), ["key-1s", "key-1h", "business-1d"]);
    // A rule with its own limits still counts the business; public routes never do.
    let own = allowed(run(&policy, &snapshot, "GET", "/shadow/x", &[("secret_key", sk.expose())], None));
    assert_eq!(own.rate_limits.iter().map(|c| c.bucket.as_str()).collect::<Vec<_>>(), ["key:key_1@/shadow/", "biz:biz_1"]);
    let public = allowed(run(&policy, &snapshot, "GET", "/public/x", &[], Some("192.0.2.5")));
    assert_eq!(public.rate_limits.iter().map(|c| c.scope).collect::<Vec<_>>(), [Scope::Address]);
}
