//! Access tokens in `decide`: the cache of verified tokens and of failed ones (what it
//! saves, what still applies to a cached token, its bounds), and the filter's leeway
//! against admin's revocation margin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keygate_core::config::FilterConfig;
use keygate_core::decide::FAILED_TOKEN_TTL_SECS;
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{RevokedSession, SnapshotWire};
use keygate_core::{decide, AccessClaims, Decision, DenyCode, RequestView, Synced, TokenCache};
use support::world::{claims, world, World};
use support::{all_three, denied, BIZ, NOW};

#[test]
fn token_cache_skips_reverification_but_revocation_expiry_and_key_removal_still_apply() {
    let mut w = world();
    let mut cache = TokenCache::new(2);
    let token = w.token();
    let run = |w: &World, cache: &mut TokenCache, now: u64| w.cached_at(cache, &token, w.sk.expose(), now);
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
    assert!(matches!(w2.cached_at(&mut cache2, &token2, w2.sk.expose(), NOW), Decision::Allow(_)));
    w2.snapshot
        .apply(SnapshotWire { version: 4, since: Some(3), removed_signing_keys: vec!["k1".into()], ..SnapshotWire::default() })
        .unwrap();
    assert_eq!(denied(&w2.cached_at(&mut cache2, &token2, w2.sk.expose(), NOW)).1, DenyCode::InvalidToken);
}

#[test]
fn token_cache_stays_bounded() {
    let w = world();
    let mut cache = TokenCache::new(3);
    for i in 0..10 {
        let token = w.signer.sign(&AccessClaims { jti: format!("j{i}"), ..claims() }).unwrap();
        assert!(matches!(w.cached_at(&mut cache, &token, w.sk.expose(), NOW), Decision::Allow(_)));
        assert!(cache.len() <= 3);
    }
}

#[test]
fn a_bad_key_is_refused_before_any_signature_work() {
    let w = world();
    let mut cache = TokenCache::new(16);
    // A forged token under the real kid, with a key that fails its checksum, an unknown key
    // or a deactivated one: each answer comes without verifying a signature.
    let forged = SigningKeyPair::from_seed("k1", [9u8; 32]).sign(&claims()).unwrap();
    let mut broken = w.sk.expose().to_owned();
    let last = broken.pop().unwrap();
    broken.push(if last == 'a' { 'b' } else { 'a' });
    for raw in [broken.as_str(), w.unknown.expose(), w.inactive.expose(), "sk_live_hello"] {
        assert_eq!(denied(&w.cached_at(&mut cache, &forged, raw, NOW)), (401, DenyCode::InvalidApiKey), "{raw}");
    }
    assert_eq!(cache.signature_checks(), 0);
    // Structural token failures still answer invalid_token first, also without crypto.
    assert_eq!(denied(&w.cached_at(&mut cache, "not.a.jwt", &broken, NOW)), (401, DenyCode::InvalidToken));
    let unknown_kid = SigningKeyPair::from_seed("k2", [7u8; 32]).sign(&claims()).unwrap();
    assert_eq!(denied(&w.cached_at(&mut cache, &unknown_kid, w.sk.expose(), NOW)), (401, DenyCode::InvalidToken));
    assert_eq!(cache.signature_checks(), 0);
    // With a good key the forged token is checked, and refused.
    assert_eq!(denied(&w.cached_at(&mut cache, &forged, w.sk.expose(), NOW)), (401, DenyCode::InvalidToken));
    assert_eq!(cache.signature_checks(), 1);
}

#[test]
fn a_failed_token_costs_one_signature_check_not_one_per_request() {
    let w = world();
    let mut cache = TokenCache::new(16);
    let forged = SigningKeyPair::from_seed("k1", [9u8; 32]).sign(&claims()).unwrap();
    let wrong_aud = w.signer.sign(&AccessClaims { aud: "other".into(), ..claims() }).unwrap();
    for _ in 0..20 {
        assert_eq!(denied(&w.cached_at(&mut cache, &forged, w.sk.expose(), NOW)), (401, DenyCode::InvalidToken));
        assert_eq!(denied(&w.cached_at(&mut cache, &wrong_aud, w.sk.expose(), NOW)), (401, DenyCode::InvalidToken));
    }
    assert_eq!(cache.signature_checks(), 2);
    // A valid token is unaffected, and verified once.
    let good = w.token();
    for _ in 0..3 {
        assert!(matches!(w.cached_at(&mut cache, &good, w.sk.expose(), NOW), Decision::Allow(_)));
    }
    assert_eq!(cache.signature_checks(), 3);
}

#[test]
fn failed_tokens_are_forgotten_after_a_while_and_a_flood_stays_bounded() {
    let w = world();
    let mut cache = TokenCache::new(8);
    let forger = SigningKeyPair::from_seed("k1", [9u8; 32]);
    let forged = forger.sign(&claims()).unwrap();
    let at = |cache: &mut TokenCache, token: &str, now: u64| w.cached_at(cache, token, w.sk.expose(), now);
    at(&mut cache, &forged, NOW);
    at(&mut cache, &forged, NOW + 1);
    assert_eq!(cache.signature_checks(), 1);
    // After the negative entry's lifetime the token is checked again (still refused).
    at(&mut cache, &forged, NOW + FAILED_TOKEN_TTL_SECS);
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
    let mut cache = TokenCache::new(0);
    let good = w.token();
    let forged = SigningKeyPair::from_seed("k1", [9u8; 32]).sign(&claims()).unwrap();
    for _ in 0..3 {
        assert!(matches!(w.cached_at(&mut cache, &good, w.sk.expose(), NOW), Decision::Allow(_)));
        assert_eq!(denied(&w.cached_at(&mut cache, &forged, w.sk.expose(), NOW)).1, DenyCode::InvalidToken);
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
    let headers = all_three(&token, w.sk.expose(), BIZ);
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
