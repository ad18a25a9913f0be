//! `decide_or_hold`: which refusals the snapshot may still cure (a well-formed unknown key,
//! an unpublished `kid`), only next to otherwise valid credentials; everything else is
//! decided exactly as `decide_on_route` decides it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keygate_core::signing::SigningKeyPair;
use keygate_core::{decide_on_route, decide_or_hold, Awaited, Decision, DenyCode, Outcome, RequestView, Synced, TokenCache};
use support::world::{claims, world, World};
use support::{owned, BIZ, NOW};

/// Both decisions of one request on the world's fresh snapshot: held, and not held.
fn both(w: &World, path: &str, headers: &[(&str, &str)], confirmed_at: u64) -> (Outcome, Decision) {
    let headers = owned(headers);
    let request = RequestView { method: "GET", path, headers: &headers, client_ip: Some("203.0.113.9") };
    let route = w.policy.route_for("GET", path);
    let synced = Some(Synced::local(&w.snapshot, confirmed_at));
    let held = decide_or_hold(&w.policy, route, &request, synced, NOW, &mut TokenCache::new(16), true);
    let plain = decide_on_route(&w.policy, route, &request, synced, NOW, &mut TokenCache::new(16));
    (held, plain)
}

/// Asserts the request is pending for `awaited`, and that without holding it is refused
/// with the very denial the pending one carries.
fn assert_pending(w: &World, path: &str, headers: &[(&str, &str)], awaited: &Awaited, code: DenyCode) {
    let (held, plain) = both(w, path, headers, NOW - 5);
    let Outcome::Pending(pending) = held else { panic!("{path}: expected pending, got {held:?}") };
    assert_eq!(&pending.awaited, awaited);
    assert_eq!(pending.denial.code, code);
    assert_eq!(plain, Decision::Deny(pending.denial), "{path}: held and not held refuse alike");
}

/// Asserts holding changes nothing for this request.
fn assert_decided_alike(w: &World, path: &str, headers: &[(&str, &str)], confirmed_at: u64) -> Decision {
    let (held, plain) = both(w, path, headers, confirmed_at);
    assert_eq!(held, Outcome::Decided(plain.clone()), "{path} {headers:?}");
    plain
}

fn code(d: &Decision) -> DenyCode {
    match d {
        Decision::Deny(denial) => denial.code,
        Decision::Allow(a) => panic!("expected a refusal, got {a:?}"),
    }
}

#[test]
fn a_well_formed_unknown_key_is_pending_for_its_hash() {
    let w = world();
    assert_pending(&w, "/key/x", &[("secret_key", w.unknown.expose())], &Awaited::Key(w.unknown.hash()), DenyCode::InvalidApiKey);
    // In the bearer of a key_in_bearer route too.
    let bearer = format!("Bearer {}", w.unknown.expose());
    assert_pending(&w, "/key/x", &[("authorization", &bearer)], &Awaited::Key(w.unknown.hash()), DenyCode::InvalidApiKey);
    // Next to a valid token on an all-three route.
    let token = format!("Bearer {}", w.token());
    let headers = [("authorization", token.as_str()), ("secret_key", w.unknown.expose()), ("businessid", BIZ)];
    assert_pending(&w, "/orders", &headers, &Awaited::Key(w.unknown.hash()), DenyCode::InvalidApiKey);
}

#[test]
fn a_token_of_an_unpublished_kid_is_pending_for_the_kid_next_to_a_valid_key() {
    let w = world();
    let rotated = SigningKeyPair::from_seed("k2", [9u8; 32]).sign(&claims()).unwrap();
    let bearer = format!("Bearer {rotated}");
    let headers = [("authorization", bearer.as_str()), ("secret_key", w.sk.expose()), ("businessid", BIZ)];
    assert_pending(&w, "/orders", &headers, &Awaited::SigningKey("k2".into()), DenyCode::InvalidToken);
}

#[test]
fn made_up_credentials_next_to_invalid_ones_are_refused_at_once_as_before() {
    let w = world();
    let rotated = format!("Bearer {}", SigningKeyPair::from_seed("k2", [9u8; 32]).sign(&claims()).unwrap());
    let forged = format!("Bearer {}", SigningKeyPair::from_seed("k1", [1u8; 32]).sign(&claims()).unwrap());
    let good = format!("Bearer {}", w.token());
    let cases: [(&str, &str, DenyCode); 5] = [
        // An unknown kid next to an unknown, a deactivated or a mistyped key.
        (&rotated, w.unknown.expose(), DenyCode::InvalidToken),
        (&rotated, w.inactive.expose(), DenyCode::InvalidToken),
        (&rotated, "sk_live_notakey", DenyCode::InvalidToken),
        // An unknown key next to a token with a bad signature: the key's refusal, at once.
        (&forged, w.unknown.expose(), DenyCode::InvalidApiKey),
        // A known but deactivated key, with a good token.
        (&good, w.inactive.expose(), DenyCode::InvalidApiKey),
    ];
    for (bearer, key, want) in cases {
        let d = assert_decided_alike(&w, "/orders", &[("authorization", bearer), ("secret_key", key), ("businessid", BIZ)], NOW - 5);
        assert_eq!(code(&d), want, "{key}");
    }
}

#[test]
fn only_keygate_shaped_keys_with_a_valid_checksum_are_held() {
    let w = world();
    let raw = w.unknown.expose();
    let mut typo = raw.to_owned().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'0' { b'1' } else { b'0' };
    let typo = String::from_utf8(typo).unwrap();
    for key in [typo.as_str(), "an-imported-key-from-elsewhere-0001", w.inactive.expose(), w.expired.expose()] {
        assert_eq!(code(&assert_decided_alike(&w, "/key/x", &[("secret_key", key)], NOW - 5)), DenyCode::InvalidApiKey, "{key}");
    }
}

#[test]
fn stale_snapshots_shadow_and_public_routes_and_valid_requests_are_unchanged() {
    let w = world();
    // A stale snapshot answers 503 whatever the key.
    let stale = assert_decided_alike(&w, "/key/x", &[("secret_key", w.unknown.expose())], NOW - 61);
    assert_eq!(code(&stale), DenyCode::AuthUnavailable);
    // A shadow route never refuses, so it never holds either.
    let shadow = assert_decided_alike(&w, "/shadow/x", &[("secret_key", w.unknown.expose()), ("businessid", BIZ)], NOW - 5);
    assert!(matches!(shadow, Decision::Allow(ref a) if a.shadow_denial.is_some()), "{shadow:?}");
    assert!(matches!(assert_decided_alike(&w, "/public/x", &[], NOW - 5), Decision::Allow(_)));
    assert!(matches!(assert_decided_alike(&w, "/key/x", &[("secret_key", w.sk.expose())], NOW - 5), Decision::Allow(_)));
    let good = format!("Bearer {}", w.token());
    let all = [("authorization", good.as_str()), ("secret_key", w.sk.expose()), ("businessid", BIZ)];
    assert!(matches!(assert_decided_alike(&w, "/orders", &all, NOW - 5), Decision::Allow(_)));
    // A known key of another business is a mismatch, not pending.
    let other = [("authorization", good.as_str()), ("secret_key", w.other_biz.expose()), ("businessid", BIZ)];
    assert_eq!(code(&assert_decided_alike(&w, "/orders", &other, NOW - 5)), DenyCode::BusinessMismatch);
    assert_eq!(code(&assert_decided_alike(&w, "/key/x", &[], NOW - 5)), DenyCode::MissingCredentials);
}
