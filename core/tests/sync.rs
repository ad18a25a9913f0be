//! Snapshot decoding, deltas and the filter's sync state machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{KeyEntry, RevokedSession, SigningKeyEntry, SnapshotError, SnapshotWire};
use keygate_core::sync::{Health, Replica, SyncFailure, SyncOutcome};
use keygate_core::{ApiKey, KeyKind, Mode, Snapshot};

fn key(seed: u8) -> ApiKey {
    ApiKey::generate(KeyKind::Sk, Mode::Live, (0..200u8).map(move |i| i.wrapping_mul(31).wrapping_add(seed))).unwrap()
}

fn entry(k: &ApiKey, id: &str) -> KeyEntry {
    KeyEntry { hash: k.hash(), id: id.into(), business: "biz_1".into(), kind: k.kind(), mode: k.mode(), scopes: vec![], expires_at: None, active: true }
}

fn full(version: u64, keys: Vec<KeyEntry>) -> SnapshotWire {
    SnapshotWire { version, keys, signing_keys: vec![SigningKeyPair::from_seed("k1", [1; 32]).public_entry()], ..SnapshotWire::default() }
}

fn bytes(wire: &SnapshotWire) -> Vec<u8> {
    serde_json::to_vec(wire).unwrap()
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
    let hs = SnapshotWire { version: 6, since: Some(5), signing_keys: vec![SigningKeyEntry { alg: "HS256".into(), ..SigningKeyPair::from_seed("k3", [2; 32]).public_entry() }], ..SnapshotWire::default() };
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

#[test]
fn replica_polls_full_then_long_polls_deltas() {
    let (a, b) = (key(1), key(2));
    let mut r = Replica::new();
    assert_eq!(r.next_path(20), "/v1/snapshot");
    assert!(r.synced().is_none());
    let (outcome, health) = r.on_response(Some(200), &bytes(&full(3, vec![entry(&a, "key_a")])), 1000);
    assert_eq!(outcome, SyncOutcome::Applied { version: 3, full: true, keys: 1 });
    assert_eq!(health, None);
    assert_eq!(r.next_path(20), "/v1/snapshot?since=3&wait=20");
    let delta = SnapshotWire { version: 4, since: Some(3), keys: vec![entry(&b, "key_b")], ..SnapshotWire::default() };
    assert_eq!(r.on_response(Some(200), &bytes(&delta), 1001).0, SyncOutcome::Applied { version: 4, full: false, keys: 2 });
    let empty = SnapshotWire { version: 4, since: Some(4), ..SnapshotWire::default() };
    assert_eq!(r.on_response(Some(200), &bytes(&empty), 1021).0, SyncOutcome::Unchanged { version: 4 });
    assert_eq!(r.synced().unwrap().confirmed_at, 1021);
}

#[test]
fn replica_keeps_the_last_good_snapshot_through_failures_and_logs_transitions_once() {
    let a = key(1);
    let mut r = Replica::new();
    r.on_response(Some(200), &bytes(&full(3, vec![entry(&a, "key_a")])), 1000);
    assert_eq!(r.on_response(None, b"", 1005), (SyncOutcome::Failed(SyncFailure::Unreachable), Some(Health::Failing)));
    assert_eq!(r.on_response(Some(503), b"", 1006), (SyncOutcome::Failed(SyncFailure::Status(503)), None));
    assert!(matches!(r.on_response(Some(200), b"garbage", 1007), (SyncOutcome::Failed(SyncFailure::Rejected(_)), None)));
    assert_eq!(r.failures, 3);
    let synced = r.synced().unwrap();
    assert_eq!((synced.snapshot.version(), synced.confirmed_at), (3, 1000));
    assert!(synced.snapshot.key(&a.hash()).is_some());
    let empty = SnapshotWire { version: 3, since: Some(3), ..SnapshotWire::default() };
    assert_eq!(r.on_response(Some(200), &bytes(&empty), 1010).1, Some(Health::Healthy));
}

#[test]
fn replica_resyncs_after_410_or_a_version_gap() {
    let mut r = Replica::new();
    r.on_response(Some(200), &bytes(&full(3, vec![])), 1000);
    assert_eq!(r.on_response(Some(410), b"{}", 1001).0, SyncOutcome::Resync);
    assert_eq!(r.next_path(20), "/v1/snapshot");
    r.on_response(Some(200), &bytes(&full(9, vec![])), 1002);
    let gap = SnapshotWire { version: 12, since: Some(10), ..SnapshotWire::default() };
    assert!(matches!(r.on_response(Some(200), &bytes(&gap), 1003).0, SyncOutcome::Failed(_)));
    assert_eq!(r.next_path(20), "/v1/snapshot");
    // A delta before any full snapshot is refused.
    let mut fresh = Replica::new();
    assert!(matches!(fresh.on_response(Some(200), &bytes(&gap), 1).0, SyncOutcome::Failed(_)));
    assert!(fresh.synced().is_none());
}
