//! Snapshot decoding and deltas.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{KeyEntry, RevokedSession, SigningKeyEntry, SnapshotError, SnapshotWire};
use keygate_core::{ApiKey, KeyKind, Mode, Snapshot};

fn key(seed: u8) -> ApiKey {
    ApiKey::generate(KeyKind::Sk, Mode::Live, (0..200u8).map(move |i| i.wrapping_mul(31).wrapping_add(seed))).unwrap()
}

fn entry(k: &ApiKey, id: &str) -> KeyEntry {
    support::entry(k, id, "biz_1")
}

fn full(version: u64, keys: Vec<KeyEntry>) -> SnapshotWire {
    SnapshotWire { version, keys, signing_keys: vec![SigningKeyPair::from_seed("k1", [1; 32]).public_entry()], ..SnapshotWire::default() }
}

#[test]
fn deltas_upsert_remove_and_revoke() {
    let (a, b) = (key(1), key(2));
    let mut snap = Snapshot::from_full(full(5, vec![entry(&a, "key_a")])).unwrap();
    let delta = SnapshotWire {
        version: 7,
        since: Some(5),
        keys: vec![entry(&b, "key_b"), KeyEntry { active: false, ..entry(&a, "key_a") }],
        revoked_sessions: vec![RevokedSession { sid: "ses_x".into(), until: 100 }],
        ..SnapshotWire::default()
    };
    snap.apply(delta).unwrap();
    assert_eq!(snap.version(), 7);
    assert!(!snap.key(&a.hash()).unwrap().active);
    assert!(snap.key(&b.hash()).unwrap().active);
    assert!(snap.is_revoked("ses_x"));
    snap.apply(SnapshotWire { version: 8, since: Some(7), removed_keys: vec![b.hash()], ..SnapshotWire::default() }).unwrap();
    assert!(snap.key(&b.hash()).is_none());
    snap.forget_expired_revocations(100);
    assert!(!snap.is_revoked("ses_x"));
}

#[test]
fn a_delta_from_another_version_or_with_a_bad_key_changes_nothing() {
    let a = key(1);
    let mut snap = Snapshot::from_full(full(5, vec![entry(&a, "key_a")])).unwrap();
    let gap = SnapshotWire { version: 9, since: Some(6), removed_keys: vec![a.hash()], ..SnapshotWire::default() };
    assert_eq!(snap.apply(gap), Err(SnapshotError::VersionGap { since: 6, have: 5 }));
    let bad_sig = SnapshotWire {
        version: 6,
        since: Some(5),
        removed_keys: vec![a.hash()],
        signing_keys: vec![SigningKeyEntry { kid: "k2".into(), alg: "EdDSA".into(), x: "short".into() }],
        ..SnapshotWire::default()
    };
    assert!(matches!(snap.apply(bad_sig), Err(SnapshotError::BadSigningKey { .. })));
    let hs = SnapshotWire {
        version: 6,
        since: Some(5),
        signing_keys: vec![SigningKeyEntry { alg: "HS256".into(), ..SigningKeyPair::from_seed("k3", [2; 32]).public_entry() }],
        ..SnapshotWire::default()
    };
    assert!(snap.apply(hs).is_err());
    assert_eq!(snap.version(), 5);
    assert!(snap.key(&a.hash()).is_some());
    assert!(Snapshot::from_full(SnapshotWire { since: Some(1), ..SnapshotWire::default() }).is_err());
}

#[test]
fn decode_rejects_junk_without_panicking() {
    for junk in [&b""[..], b"{", b"[]", b"{\"version\": -1}", b"{\"version\": 1, \"keys\": [{\"hash\": \"zz\"}]}", &[0xff, 0xfe, 0x00]] {
        assert!(Snapshot::decode(junk).is_err());
    }
}
