//! A policy with a route of each kind and a snapshot with a key for each refusal, for the
//! decision-table and token tests.

use keygate_core::config::FilterConfig;
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{KeyEntry, RevokedSession, SnapshotWire};
use keygate_core::{
    decide, decide_cached, AccessClaims, ApiKey, Decision, KeyKind, Mode, Policy, RequestView, Snapshot, Synced, TokenCache,
};

use super::{all_three, entry, owned, BIZ, NOW};

pub const OTHER_BIZ: &str = "biz_other";

pub struct World {
    pub policy: Policy,
    pub snapshot: Snapshot,
    pub signer: SigningKeyPair,
    pub sk: ApiKey,
    pub pk: ApiKey,
    pub sk_test: ApiKey,
    pub scoped: ApiKey,
    pub inactive: ApiKey,
    pub expired: ApiKey,
    pub other_biz: ApiKey,
    pub unknown: ApiKey,
}

pub fn key(kind: KeyKind, mode: Mode, seed: u8) -> ApiKey {
    ApiKey::generate(kind, mode, (0..200u8).map(move |i| i.wrapping_mul(73).wrapping_add(seed))).unwrap()
}

pub fn world() -> World {
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

pub fn claims() -> AccessClaims {
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
    pub fn token(&self) -> String {
        self.signer.sign(&claims()).unwrap()
    }

    pub fn run(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
        self.run_at(method, path, headers, NOW)
    }

    pub fn run_at(&self, method: &str, path: &str, headers: &[(&str, &str)], now: u64) -> Decision {
        let headers = owned(headers);
        let request = RequestView { method, path, headers: &headers, client_ip: Some("203.0.113.9") };
        decide(&self.policy, &request, Some(Synced::local(&self.snapshot, NOW - 5)), now)
    }

    pub fn all_three(&self, token: &str, key: &ApiKey, business: &str) -> Decision {
        self.all_three_raw(token, key.expose(), business)
    }

    pub fn all_three_raw(&self, token: &str, raw: &str, business: &str) -> Decision {
        let bearer = format!("Bearer {token}");
        self.run("GET", "/orders", &[("authorization", &bearer), ("secret_key", raw), ("businessid", business)])
    }

    /// The three credentials at `now` through `cache`, on a snapshot confirmed at `now`.
    pub fn cached_at(&self, cache: &mut TokenCache, token: &str, raw_key: &str, now: u64) -> Decision {
        let headers = all_three(token, raw_key, BIZ);
        let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
        decide_cached(&self.policy, &request, Some(Synced::local(&self.snapshot, now)), now, cache)
    }
}
