//! Per-key address allowlists and the limits admin sets per key and per business: which
//! limits a request counts against, and what the filter must do when it decided without
//! the client address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keygate_core::cidr::Cidr;
use keygate_core::ratelimit::{Limit, LimitCheck, Scope};
use keygate_core::snapshot::{BusinessLimits, KeyEntry, SnapshotWire};
use keygate_core::{
    decide, decide_or_hold, wants_address, Decision, DenyCode, FilterConfig, Outcome, Policy, RequestView, Snapshot, Synced, TokenCache,
};
use support::{allowed, denied, entry, live_sk, owned, NOW};

fn policy() -> Policy {
    FilterConfig::parse(
        br#"{"admin_cluster": "a", "proxy_token": "t",
            "rate_limits": {"sk": ["1000/h"], "business": ["5000/d"]},
            "routes": [
                {"prefix": "/own/", "require": "key", "rate_limits": ["7/m"]},
                {"prefix": "/", "require": "key"}
            ]}"#,
        None,
    )
    .unwrap()
    .policy
}

fn limits(list: &[&str]) -> Vec<Limit> {
    list.iter().map(|l| Limit::parse(l).unwrap()).collect()
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
}

fn snapshot(key: KeyEntry, business: Option<BusinessLimits>) -> Snapshot {
    Snapshot::from_full(SnapshotWire {
        version: 1,
        keys: vec![key],
        business_limits: business.into_iter().collect(),
        ..SnapshotWire::default()
    })
    .unwrap()
}

fn run(policy: &Policy, snapshot: &Snapshot, path: &str, raw: &str, ip: Option<&str>) -> Decision {
    let headers = owned(&[("secret_key", raw)]);
    let request = RequestView { method: "GET", path, headers: &headers, client_ip: ip };
    decide(policy, &request, Some(Synced::local(snapshot, NOW - 1)), NOW)
}

fn counted(d: Decision) -> Vec<(String, Scope, String)> {
    allowed(d).rate_limits.into_iter().map(|LimitCheck { bucket, scope, limit }| (bucket, scope, limit.to_string())).collect()
}

fn c(bucket: &str, scope: Scope, limit: &str) -> (String, Scope, String) {
    (bucket.to_owned(), scope, limit.to_owned())
}

#[test]
fn an_allowlisted_key_passes_only_from_its_ranges() {
    let sk = live_sk();
    let key = KeyEntry { allowed_ips: cidrs(&["10.1.0.0/16", "2001:db8::/32"]), ..entry(&sk, "key_1", "biz_1") };
    let (p, s) = (policy(), snapshot(key, None));
    for ip in ["10.1.2.3", "10.1.2.3:443", "[2001:db8::9]:80", "::ffff:10.1.0.1"] {
        allowed(run(&p, &s, "/x", sk.expose(), Some(ip)));
    }
    for ip in [Some("10.2.0.1"), Some("[2001:db9::1]:1"), Some("junk"), None] {
        assert_eq!(denied(&run(&p, &s, "/x", sk.expose(), ip)), (403, DenyCode::IpNotAllowed), "{ip:?}");
    }
    // A key without a list is not restricted, and needs no address.
    let open = snapshot(entry(&sk, "key_1", "biz_1"), None);
    allowed(run(&p, &open, "/x", sk.expose(), None));
}

#[test]
fn the_address_is_asked_for_only_when_a_key_needs_it() {
    let sk = live_sk();
    let key = KeyEntry { allowed_ips: cidrs(&["127.0.0.0/8"]), ..entry(&sk, "key_1", "biz_1") };
    let (p, s) = (policy(), snapshot(key, None));
    let headers = owned(&[("secret_key", sk.expose())]);
    let route = p.route_for("GET", "/x");
    let decide_with = |ip| {
        let request = RequestView { method: "GET", path: "/x", headers: &headers, client_ip: ip };
        let outcome = decide_or_hold(&p, route, &request, Some(Synced::local(&s, NOW - 1)), NOW, &mut TokenCache::new(0), true);
        (wants_address(&request, &outcome), outcome)
    };
    let (wants, _) = decide_with(None);
    assert!(wants, "refused without an address: read it and decide again");
    let (wants, outcome) = decide_with(Some("127.0.0.1"));
    assert!(!wants && matches!(outcome, Outcome::Decided(Decision::Allow(_))));
    let (wants, outcome) = decide_with(Some("192.0.2.1"));
    assert!(!wants, "with the address, the refusal is final");
    assert!(matches!(outcome, Outcome::Decided(Decision::Deny(d)) if d.code == DenyCode::IpNotAllowed));
    // Other refusals never ask for the address.
    let bad = owned(&[("secret_key", "sk_live_nope")]);
    let request = RequestView { method: "GET", path: "/x", headers: &bad, client_ip: None };
    let outcome = decide_or_hold(&p, route, &request, Some(Synced::local(&s, NOW - 1)), NOW, &mut TokenCache::new(0), false);
    assert!(!wants_address(&request, &outcome));
}

#[test]
fn without_overrides_the_rule_and_kind_defaults_count() {
    let sk = live_sk();
    let (p, s) = (policy(), snapshot(entry(&sk, "key_1", "biz_1"), None));
    assert_eq!(
        counted(run(&p, &s, "/x", sk.expose(), None)),
        vec![c("key:key_1", Scope::Key, "1000/h"), c("biz:biz_1", Scope::Business, "5000/d")]
    );
    assert_eq!(
        counted(run(&p, &s, "/own/x", sk.expose(), None)),
        vec![c("key:key_1@/own/", Scope::Key, "7/m"), c("biz:biz_1", Scope::Business, "5000/d")]
    );
}

#[test]
fn a_business_override_replaces_the_defaults_and_a_key_override_wins_over_it() {
    let sk = live_sk();
    let p = policy();
    let business = BusinessLimits { business: "biz_1".into(), per_key: Some(limits(&["50/m"])), shared: Some(limits(&["9/s", "900/h"])) };
    let s = snapshot(entry(&sk, "key_1", "biz_1"), Some(business.clone()));
    let expected =
        vec![c("key:key_1", Scope::Key, "50/m"), c("biz:biz_1", Scope::Business, "9/s"), c("biz:biz_1", Scope::Business, "900/h")];
    assert_eq!(counted(run(&p, &s, "/x", sk.expose(), None)), expected);
    // The business's per-key limits replace the rule's own too, in the key's one bucket.
    assert_eq!(counted(run(&p, &s, "/own/x", sk.expose(), None)), expected);

    let own = KeyEntry { rate_limits: Some(limits(&["3/s"])), ..entry(&sk, "key_1", "biz_1") };
    let s = snapshot(own.clone(), Some(business));
    assert_eq!(
        counted(run(&p, &s, "/own/x", sk.expose(), None)),
        vec![c("key:key_1", Scope::Key, "3/s"), c("biz:biz_1", Scope::Business, "9/s"), c("biz:biz_1", Scope::Business, "900/h")]
    );
    // Only `shared` set: the key keeps its defaults.
    let shared_only = BusinessLimits { business: "biz_1".into(), per_key: None, shared: Some(limits(&["1/d"])) };
    let s = snapshot(entry(&sk, "key_1", "biz_1"), Some(shared_only));
    assert_eq!(
        counted(run(&p, &s, "/x", sk.expose(), None)),
        vec![c("key:key_1", Scope::Key, "1000/h"), c("biz:biz_1", Scope::Business, "1/d")]
    );
    // Another business's override does nothing for this key.
    let other = BusinessLimits { business: "biz_2".into(), per_key: Some(limits(&["1/s"])), shared: None };
    let s = snapshot(own, Some(other));
    assert_eq!(
        counted(run(&p, &s, "/x", sk.expose(), None)),
        vec![c("key:key_1", Scope::Key, "3/s"), c("biz:biz_1", Scope::Business, "5000/d")]
    );
}

#[test]
fn business_overrides_follow_deltas() {
    let sk = live_sk();
    let p = policy();
    let mut s = snapshot(entry(&sk, "key_1", "biz_1"), None);
    let set = BusinessLimits { business: "biz_1".into(), per_key: Some(limits(&["2/s"])), shared: None };
    s.apply(SnapshotWire { version: 2, since: Some(1), business_limits: vec![set], ..SnapshotWire::default() }).unwrap();
    assert_eq!(counted(run(&p, &s, "/x", sk.expose(), None))[0], c("key:key_1", Scope::Key, "2/s"));
    let cleared = BusinessLimits { business: "biz_1".into(), ..BusinessLimits::default() };
    s.apply(SnapshotWire { version: 3, since: Some(2), business_limits: vec![cleared], ..SnapshotWire::default() }).unwrap();
    assert_eq!(counted(run(&p, &s, "/x", sk.expose(), None))[0], c("key:key_1", Scope::Key, "1000/h"));
}

#[test]
fn bad_overrides_on_the_wire_are_refused_whole() {
    for bad in [
        r#"{"version": 1, "keys": [], "business_limits": [{"business": "b", "per_key": ["0/s"]}]}"#,
        r#"{"version": 1, "keys": [], "business_limits": [{"business": "b", "shared": ["5/week"]}]}"#,
    ] {
        assert!(Snapshot::decode(bad.as_bytes()).is_err(), "{bad}");
    }
}
