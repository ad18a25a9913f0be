//! The leader's feed state machine, applied to an in-memory stand-in for shared data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keygate_core::feed::{BucketOp, Leader, Meta, Seen, PAGE_KEYS};
use keygate_core::keystore::{self, bucket_of, KeyLookup};
use keygate_core::lease::{Lease, LeaseStep, LEASE_MS};
use keygate_core::revoked::{self, RevocationLookup};
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::{KeyEntry, KeyRecord, RevokedSession, SigningKeyEntry, SnapshotWire};
use keygate_core::sync::SyncOutcome;
use keygate_core::{ApiKey, KeyHash, KeyKind, Mode};
use std::collections::HashMap;

/// A lease that never ends, for tests about the feed alone.
const HELD: Lease = Lease { holder: 1, until_ms: u64::MAX, term: 1 };

#[derive(Default)]
struct Shared(HashMap<u16, Vec<u8>>, HashMap<u16, Vec<u8>>);

impl Shared {
    /// Applies ops as the filter does; returns the net change in key count.
    fn apply(&mut self, ops: Vec<BucketOp>) -> i64 {
        let mut delta = 0;
        for op in ops {
            match op {
                BucketOp::Put(id, bytes) => {
                    self.0.insert(id, bytes);
                }
                BucketOp::Clear { from, to } => self.0.retain(|id, _| !(from..to).contains(&u32::from(*id))),
                BucketOp::Upsert(entry) => {
                    let b = self.0.entry(bucket_of(&entry.hash)).or_default();
                    let existed = keystore::find(b, &entry.hash).is_some();
                    *b = keystore::replace(b, &entry.hash, Some(&keystore::encode(&entry).unwrap()));
                    delta += i64::from(!existed);
                }
                BucketOp::Remove(hash) => {
                    let b = self.0.entry(bucket_of(&hash)).or_default();
                    let existed = keystore::find(b, &hash).is_some();
                    *b = keystore::replace(b, &hash, None);
                    delta -= i64::from(existed);
                }
                BucketOp::PutRevoked(id, bytes) => {
                    self.1.insert(id, bytes);
                }
                BucketOp::ClearRevoked { from, to } => self.1.retain(|id, _| !(from..to).contains(&u32::from(*id))),
                BucketOp::Revoke { session, now } => {
                    let d = revoked::digest(&session.sid);
                    let b = self.1.entry(revoked::bucket_of(&d)).or_default();
                    *b = revoked::insert(b, &d, session.until, now);
                }
            }
        }
        delta
    }
}

impl RevocationLookup for Shared {
    fn is_revoked(&self, sid: &str) -> bool {
        let d = revoked::digest(sid);
        self.1.get(&revoked::bucket_of(&d)).is_some_and(|b| revoked::contains(b, &d))
    }
}

impl KeyLookup for Shared {
    fn key(&self, hash: &KeyHash) -> Option<KeyRecord> {
        keystore::find(self.0.get(&bucket_of(hash))?, hash)
    }
}

fn entry(i: u32) -> KeyEntry {
    let seed = |salt: &str| KeyHash::of_raw(&format!("{salt}{i}")).0;
    let key = ApiKey::generate(KeyKind::Sk, Mode::Live, seed("a").into_iter().chain(seed("b")).chain(seed("c"))).unwrap();
    support::entry(&key, &format!("key_{i}"), "biz_1")
}

fn signing() -> SigningKeyEntry {
    SigningKeyPair::from_seed("k1", [4; 32]).public_entry()
}

/// Serves `keys` as admin would: sorted by hash, in pages of `page`.
fn pages(version: u64, mut keys: Vec<KeyEntry>, page: usize) -> Vec<Vec<u8>> {
    keys.sort_by_key(|k| k.hash);
    let chunks: Vec<Vec<KeyEntry>> = if keys.is_empty() { vec![vec![]] } else { keys.chunks(page).map(<[KeyEntry]>::to_vec).collect() };
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let next_after = (i + 1 < n).then(|| chunk.last().unwrap().hash);
            let first = i == 0;
            let wire = SnapshotWire {
                version,
                keys: chunk,
                signing_keys: if first { vec![signing()] } else { vec![] },
                revoked_sessions: if first { vec![RevokedSession { sid: "ses_r".into(), until: u64::MAX }] } else { vec![] },
                next_after,
                ..SnapshotWire::default()
            };
            serde_json::to_vec(&wire).unwrap()
        })
        .collect()
}

fn full_sync(leader: &mut Leader, shared: &mut Shared, version: u64, keys: Vec<KeyEntry>, page: usize) -> (Meta, Seen) {
    let bodies = pages(version, keys, page);
    let last = bodies.len() - 1;
    let mut published = None;
    for (i, body) in bodies.into_iter().enumerate() {
        assert!(leader.next_path(20).starts_with("/v1/snapshot?"), "{}", leader.next_path(20));
        assert!(!leader.next_path(20).contains("since="));
        let step = leader.on_response(Some(200), &body, 1000, Some(HELD), 0);
        shared.apply(step.ops);
        if i < last {
            assert!(step.seen.is_none() && step.meta.is_none(), "nothing is confirmed before the last page");
        } else {
            published = Some((step.meta.unwrap_or_else(|| panic!("{:?}", step.outcome)), step.seen.unwrap()));
        }
    }
    published.unwrap()
}

#[test]
fn paged_full_sync_writes_every_key_once_and_clears_stale_buckets() {
    let mut shared = Shared::default();
    let stale = entry(999_999);
    shared.apply(vec![BucketOp::Upsert(stale.clone())]);
    let keys: Vec<KeyEntry> = (0..5000).map(entry).collect();
    let mut leader = Leader::adopt(None, PAGE_KEYS, HELD);
    assert_eq!(leader.next_path(20), format!("/v1/snapshot?limit={PAGE_KEYS}"));
    let (meta, seen) = full_sync(&mut leader, &mut shared, 7, keys.clone(), 700);
    assert_eq!((meta.version, meta.keys, seen.version, seen.confirmed_at), (7, 5000, 7, 1000));
    assert_eq!(meta.signing_keys, vec![signing()]);
    for k in &keys {
        assert_eq!(shared.key(&k.hash).unwrap().id, k.id);
    }
    assert!(shared.key(&stale.hash).is_none(), "a key absent from the full snapshot survived it");
    let stored: usize = shared.0.values().map(|b| keystore::count(b)).sum();
    assert_eq!(stored, 5000);
    assert_eq!(leader.next_path(20), "/v1/snapshot?since=7&wait=20");
}

#[test]
fn deltas_become_key_ops_and_meta_updates() {
    let mut shared = Shared::default();
    let mut leader = Leader::adopt(None, PAGE_KEYS, HELD);
    full_sync(&mut leader, &mut shared, 3, (0..10).map(entry).collect(), PAGE_KEYS);
    let gone = entry(1);
    let new = entry(50);
    let delta = SnapshotWire {
        version: 5,
        since: Some(3),
        keys: vec![new.clone(), KeyEntry { active: false, ..entry(2) }],
        removed_keys: vec![gone.hash],
        revoked_sessions: vec![RevokedSession { sid: "ses_new".into(), until: 5000 }, RevokedSession { sid: "ses_old".into(), until: 10 }],
        ..SnapshotWire::default()
    };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&delta).unwrap(), 1001, Some(HELD), 0);
    let added = shared.apply(step.ops);
    leader.adjust_keys(added);
    assert_eq!(added, 0);
    let meta = step.meta.unwrap();
    assert_eq!(meta.version, 5);
    assert!(shared.is_revoked("ses_new"));
    assert!(!shared.is_revoked("ses_old"), "expired revocations are not written");
    assert!(shared.is_revoked("ses_r"), "the full snapshot's revocation stays");
    assert_eq!(step.seen, Some(Seen { version: 5, confirmed_at: 1001 }));
    assert!(shared.key(&gone.hash).is_none());
    assert!(shared.key(&new.hash).is_some());
    assert!(!shared.key(&entry(2).hash).unwrap().active);
    assert_eq!(leader.meta().unwrap().keys, 10);
    // A long-poll that timed out: confirmed, nothing to write or republish.
    let empty = SnapshotWire { version: 5, since: Some(5), ..SnapshotWire::default() };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&empty).unwrap(), 1030, Some(HELD), 0);
    assert!(step.ops.is_empty() && step.meta.is_none());
    assert_eq!(step.outcome, Some(SyncOutcome::Unchanged { version: 5 }));
    assert_eq!(step.seen, Some(Seen { version: 5, confirmed_at: 1030 }));
}

#[test]
fn gone_gaps_bad_pages_and_failures_keep_the_last_good_state() {
    let mut shared = Shared::default();
    let mut leader = Leader::adopt(None, PAGE_KEYS, HELD);
    full_sync(&mut leader, &mut shared, 3, (0..10).map(entry).collect(), PAGE_KEYS);
    // Unreachable: nothing written, health turns.
    let step = leader.on_response(None, b"", 1002, Some(HELD), 0);
    assert!(step.ops.is_empty() && step.seen.is_none());
    assert!(step.health.is_some());
    // A bad signing key in a delta: refused whole.
    let bad = SnapshotWire {
        version: 4,
        since: Some(3),
        keys: vec![entry(77)],
        signing_keys: vec![SigningKeyEntry { kid: "x".into(), alg: "EdDSA".into(), x: "bad".into() }],
        ..SnapshotWire::default()
    };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&bad).unwrap(), 1003, Some(HELD), 0);
    assert!(step.ops.is_empty());
    assert!(matches!(step.outcome, Some(SyncOutcome::Failed(_))));
    // 410: the next request is a full snapshot; the old data still serves meanwhile.
    let step = leader.on_response(Some(410), b"{}", 1004, Some(HELD), 0);
    assert_eq!(step.outcome, Some(SyncOutcome::Resync));
    assert!(leader.next_path(20).contains("limit="));
    assert!(shared.key(&entry(3).hash).is_some());
    // An unsorted page is refused.
    let mut keys: Vec<KeyEntry> = (0..4).map(entry).collect();
    keys.sort_by_key(|k| k.hash);
    keys.reverse();
    let unsorted = SnapshotWire { version: 9, keys, signing_keys: vec![signing()], ..SnapshotWire::default() };
    assert!(matches!(
        leader.on_response(Some(200), &serde_json::to_vec(&unsorted).unwrap(), 1005, Some(HELD), 0).outcome,
        Some(SyncOutcome::Failed(_))
    ));
    // An answer too large to read: a paged full snapshot next, the data kept meanwhile.
    let mut leader = Leader::adopt(Some(Meta { version: 3, ..Meta::default() }), PAGE_KEYS, HELD);
    assert_eq!(leader.on_oversized().outcome, Some(SyncOutcome::Resync));
    assert!(leader.next_path(20).contains("limit="));
    // A delta with a version gap forces a full snapshot.
    let mut leader = Leader::adopt(Some(Meta { version: 3, ..Meta::default() }), PAGE_KEYS, HELD);
    let gap = SnapshotWire { version: 9, since: Some(6), ..SnapshotWire::default() };
    assert!(matches!(
        leader.on_response(Some(200), &serde_json::to_vec(&gap).unwrap(), 1, Some(HELD), 0).outcome,
        Some(SyncOutcome::Failed(_))
    ));
    assert!(leader.next_path(20).contains("limit="));
}

#[test]
fn a_new_leader_continues_from_the_published_meta() {
    let leader = Leader::adopt(Some(Meta { version: 12, keys: 3, ..Meta::default() }), PAGE_KEYS, HELD);
    assert_eq!(leader.next_path(5), "/v1/snapshot?since=12&wait=5");
    // A meta from an older filter, revocations inline: still honoured, and replaced by a full sync.
    let legacy: Meta =
        serde_json::from_str(r#"{"version":12,"keys":3,"signing_keys":[],"revoked_sessions":[{"sid":"ses_old","until":99999999999}]}"#)
            .unwrap();
    assert!(legacy.snapshot().unwrap().is_revoked("ses_old"));
    let leader = Leader::adopt(Some(legacy), PAGE_KEYS, HELD);
    assert_eq!(leader.next_path(5), format!("/v1/snapshot?limit={PAGE_KEYS}"));
    assert_eq!(Seen::decode(&Seen { version: 12, confirmed_at: 99 }.encode()), Some(Seen { version: 12, confirmed_at: 99 }));
    assert_eq!(Seen::decode(b"short"), None);
}

#[test]
fn fixture_keys_are_distinct() {
    let mut hashes: Vec<KeyHash> = (0..5000).map(|i| entry(i).hash).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 5000);
}

/// Old leader A stalls past its lease while its long-poll (since=2) is in flight; B takes
/// over from the published meta (v2), applies 2→4 (K created then deactivated); then A's
/// buffered answer 2→3 (K created, active) lands. It must change nothing.
#[test]
fn a_deposed_leader_drops_its_buffered_answer() {
    let take = |current: Option<Lease>, me: u64, now_ms: u64| match Lease::next(current, me, now_ms, false) {
        LeaseStep::Write(lease) => lease,
        other => panic!("{other:?}"),
    };
    let renew = |current: Lease, me: u64, now_ms: u64| match Lease::next(Some(current), me, now_ms, true) {
        LeaseStep::Write(lease) => Some(lease),
        _ => Some(current),
    };
    let mut shared = Shared::default();
    let lease_a = take(None, 0xA, 0);
    let mut a = Leader::adopt(None, PAGE_KEYS, lease_a);
    let page = |leader: &mut Leader, lease, body: &[u8], now_ms| leader.on_response(Some(200), body, now_ms / 1000, lease, now_ms);
    for body in pages(2, (0..5).map(entry).collect(), PAGE_KEYS) {
        let step = page(&mut a, renew(lease_a, 0xA, 10), &body, 10);
        shared.apply(step.ops);
    }
    let meta = a.meta().cloned().unwrap();
    assert_eq!(a.next_path(20), "/v1/snapshot?since=2&wait=20");
    // A stalls; its lease runs out and B takes over from what A published.
    let stalled_until = 10 + LEASE_MS + 1;
    let lease_b = take(Some(lease_a), 0xB, stalled_until);
    assert_eq!(lease_b.term, lease_a.term + 1);
    let mut b = Leader::adopt(Some(meta), PAGE_KEYS, lease_b);
    let k = entry(42);
    let to4 = SnapshotWire { version: 4, since: Some(2), keys: vec![KeyEntry { active: false, ..k.clone() }], ..SnapshotWire::default() };
    let step = page(&mut b, renew(lease_b, 0xB, stalled_until), &serde_json::to_vec(&to4).unwrap(), stalled_until);
    assert!(step.write_until_ms > stalled_until);
    shared.apply(step.ops);
    assert!(!shared.key(&k.hash).unwrap().active);
    // A wakes up with its older answer: its renewal finds B's lease, so nothing is applied.
    let to3 = SnapshotWire { version: 3, since: Some(2), keys: vec![k.clone()], ..SnapshotWire::default() };
    let now_ms = stalled_until + 5;
    assert_eq!(Lease::next(Some(lease_b), 0xA, now_ms, true), LeaseStep::Follow);
    let step = page(&mut a, Some(lease_b), &serde_json::to_vec(&to3).unwrap(), now_ms);
    assert!(step.deposed);
    shared.apply(step.ops);
    assert!(!shared.key(&k.hash).unwrap().active, "a deposed leader brought a deactivated key back");
    assert!(step.meta.is_none() && step.seen.is_none(), "a deposed leader published");
    // Even should A retake the lease later, it does so under a new term: this leader stays out.
    let lease_a2 = take(Some(lease_b), 0xA, now_ms + LEASE_MS);
    assert!(page(&mut a, Some(lease_a2), &serde_json::to_vec(&to3).unwrap(), now_ms + LEASE_MS).deposed);
    // A lease about to end leaves no time to write: the answer is dropped too.
    let mut c = Leader::adopt(b.meta().cloned(), PAGE_KEYS, lease_b);
    assert!(page(&mut c, Some(lease_b), &serde_json::to_vec(&to3).unwrap(), lease_b.until_ms - 10).deposed);
}

/// A proxy holds version 6 of one history; admin (restored from a backup) answers with a
/// delta from its own version 6. The proxy must take a full snapshot instead.
#[test]
fn a_delta_from_another_history_forces_a_full_snapshot() {
    use keygate_core::snapshot::History;
    let ours = History(KeyHash([1; 32]));
    let theirs = History(KeyHash([2; 32]));
    let mut shared = Shared::default();
    let mut leader = Leader::adopt(None, PAGE_KEYS, HELD);
    let mut first =
        SnapshotWire { version: 6, signing_keys: vec![signing()], keys: vec![entry(1)], history: Some(ours), ..SnapshotWire::default() };
    first.keys.sort_by_key(|k| k.hash);
    let step = leader.on_response(Some(200), &serde_json::to_vec(&first).unwrap(), 1000, Some(HELD), 0);
    shared.apply(step.ops);
    assert_eq!(step.meta.unwrap().history, Some(ours));
    assert_eq!(leader.next_path(20), format!("/v1/snapshot?since=6&wait=20&history={}", ours.to_hex()));
    let other = SnapshotWire {
        version: 9,
        since: Some(6),
        keys: vec![entry(2)],
        history: Some(History(KeyHash([3; 32]))),
        since_history: Some(theirs),
        ..SnapshotWire::default()
    };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&other).unwrap(), 1001, Some(HELD), 0);
    assert!(step.ops.is_empty() && step.meta.is_none() && step.seen.is_none());
    assert_eq!(step.outcome, Some(SyncOutcome::Resync));
    assert!(shared.key(&entry(2).hash).is_none());
    assert!(leader.next_path(20).starts_with("/v1/snapshot?limit="), "{}", leader.next_path(20));
    // The same delta of our own history applies, and moves our history on.
    let mut leader = Leader::adopt(None, PAGE_KEYS, HELD);
    leader.on_response(Some(200), &serde_json::to_vec(&first).unwrap(), 1000, Some(HELD), 0);
    let next = History(KeyHash([4; 32]));
    let own = SnapshotWire { since_history: Some(ours), history: Some(next), ..other };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&own).unwrap(), 1002, Some(HELD), 0);
    assert_eq!(step.meta.unwrap().history, Some(next));
}

/// With R revocations in force, one more change must cost every worker about the size of
/// that change, not O(R): the meta each worker re-reads stays small.
#[test]
fn a_change_costs_the_proxy_the_size_of_the_change_whatever_the_revocations() {
    let mut shared = Shared::default();
    let mut leader = Leader::adopt(None, PAGE_KEYS, HELD);
    full_sync(&mut leader, &mut shared, 1, (0..10).map(entry).collect(), PAGE_KEYS);
    let revoked: Vec<RevokedSession> = (0..100_000).map(|i| RevokedSession { sid: format!("ses_{i:016}"), until: u64::MAX }).collect();
    let many = SnapshotWire { version: 2, since: Some(1), revoked_sessions: revoked, ..SnapshotWire::default() };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&many).unwrap(), 1001, Some(HELD), 0);
    shared.apply(step.ops);
    let one = SnapshotWire { version: 3, since: Some(2), keys: vec![entry(77)], ..SnapshotWire::default() };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&one).unwrap(), 1002, Some(HELD), 0);
    assert_eq!(step.ops.len(), 1, "one change, one bucket operation");
    shared.apply(step.ops);
    let published = serde_json::to_vec(&step.meta.unwrap()).unwrap().len();
    eprintln!("meta published after one key change with 100000 revocations in force: {published} bytes");
    assert!(published < 2048, "one key change made every worker re-read a {published}-byte meta");
    assert!(shared.is_revoked("ses_0000000000000000") && shared.is_revoked("ses_0000000000099999") && !shared.is_revoked("ses_x"));
    // One more revocation: one bucket operation.
    let revoke = SnapshotWire {
        version: 4,
        since: Some(3),
        revoked_sessions: vec![RevokedSession { sid: "ses_x".into(), until: u64::MAX }],
        ..SnapshotWire::default()
    };
    let step = leader.on_response(Some(200), &serde_json::to_vec(&revoke).unwrap(), 1003, Some(HELD), 0);
    assert_eq!(step.ops.len(), 1);
    assert!(serde_json::to_vec(&step.meta).unwrap().len() < 2048);
    shared.apply(step.ops);
    assert!(shared.is_revoked("ses_x"));
}

/// Revoked sessions in a full snapshot come in pages of their own after the keys, sorted by
/// digest; revocation buckets the new snapshot does not mention are cleared.
#[test]
fn a_full_snapshot_pages_revocations_after_the_keys() {
    let mut shared = Shared::default();
    shared.apply(vec![BucketOp::Revoke { session: RevokedSession { sid: "ses_stale".into(), until: u64::MAX }, now: 0 }]);
    let mut leader = Leader::adopt(None, 3, HELD);
    let mut keys: Vec<KeyEntry> = (0..5).map(entry).collect();
    keys.sort_by_key(|k| k.hash);
    let mut revoked: Vec<RevokedSession> =
        (0..7).map(|i| RevokedSession { sid: format!("ses_{i}"), until: if i == 6 { 10 } else { u64::MAX } }).collect();
    revoked.sort_by_key(|r| revoked::digest(&r.sid));
    let page = |wire: SnapshotWire| serde_json::to_vec(&wire).unwrap();
    let p1 = SnapshotWire {
        version: 4,
        keys: keys[..3].to_vec(),
        signing_keys: vec![signing()],
        next_after: Some(keys[2].hash),
        ..SnapshotWire::default()
    };
    let p2 = SnapshotWire { version: 4, keys: keys[3..].to_vec(), revocation_pages: true, ..SnapshotWire::default() };
    let r1 = SnapshotWire {
        version: 4,
        revoked_sessions: revoked[..4].to_vec(),
        next_after: Some(revoked::digest(&revoked[3].sid)),
        ..SnapshotWire::default()
    };
    let r2 = SnapshotWire { version: 5, revoked_sessions: revoked[4..].to_vec(), ..SnapshotWire::default() };
    assert_eq!(leader.next_path(20), "/v1/snapshot?limit=3");
    for (body, then) in [(page(p1), None), (page(p2), None), (page(r1), Some("/v1/snapshot?limit=3&revoked=1&after=")), (page(r2), None)] {
        let step = leader.on_response(Some(200), &body, 1000, Some(HELD), 0);
        assert!(!matches!(step.outcome, Some(SyncOutcome::Failed(_))), "{:?}", step.outcome);
        shared.apply(step.ops);
        if let Some(then) = then {
            assert!(leader.next_path(20).starts_with(then), "{}", leader.next_path(20));
        }
    }
    assert_eq!(leader.meta().map(|m| (m.version, m.keys)), Some((4, 5)));
    assert_eq!(leader.next_path(20), "/v1/snapshot?since=4&wait=20");
    for r in revoked.iter().filter(|r| r.sid != "ses_6") {
        assert!(shared.is_revoked(&r.sid), "{}", r.sid);
    }
    assert!(!shared.is_revoked("ses_6"), "an ended revocation is not written");
    assert!(!shared.is_revoked("ses_stale"), "a revocation absent from the full snapshot survived it");
    // An unsorted revocation page is refused.
    let mut leader = Leader::adopt(None, 3, HELD);
    leader.on_response(
        Some(200),
        &page(SnapshotWire { version: 1, signing_keys: vec![signing()], revocation_pages: true, ..SnapshotWire::default() }),
        1000,
        Some(HELD),
        0,
    );
    let mut backwards = revoked.clone();
    backwards.reverse();
    let step = leader.on_response(
        Some(200),
        &page(SnapshotWire { version: 1, revoked_sessions: backwards, ..SnapshotWire::default() }),
        1000,
        Some(HELD),
        0,
    );
    assert!(matches!(step.outcome, Some(SyncOutcome::Failed(_))));
}
