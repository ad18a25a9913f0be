//! Snapshot wire decoding and application: `Snapshot::decode`, `from_full`, `apply` (full
//! and delta) the filter's sync leader `feed::Leader::on_response` and the shared-data bucket
//! format (`keystore`), on arbitrary bodies. A
//! rejected message must leave the snapshot exactly as it was.
#![no_main]

use keygate_core::feed::{BucketOp, Leader, Seen};
use keygate_core::key::KeyHash;
use keygate_core::keystore;
use keygate_core::lease::Lease;
use keygate_core::revoked;
use keygate_core::sync::SyncOutcome;
use keygate_core::Snapshot;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const HELD: Lease = Lease { holder: 1, until_ms: u64::MAX, term: 1 };

/// A real full snapshot served by keygate-admin (see seeds/).
const BASE: &[u8] = include_bytes!("../seeds/snapshot_full.json");
const NOW: u64 = 1_800_000_000;

fn fingerprint(s: &Snapshot) -> String {
    format!("{s:?}")
}

fuzz_target!(|data: &[u8]| {
    let (selector, body) = data.split_first().unwrap_or((&0, &[]));
    let base = Snapshot::from_full(Snapshot::decode(BASE).expect("seed decodes")).expect("seed applies");

    if let Ok(wire) = Snapshot::decode(body) {
        // Round trip: what decodes re-encodes to something that decodes the same.
        let again = serde_json::to_vec(&wire).expect("encodes");
        assert_eq!(Snapshot::decode(&again).ok(), Some(wire.clone()), "wire round trip differs");
        let _ = Snapshot::from_full(wire.clone());
        let mut current = base.clone();
        let before = fingerprint(&current);
        match current.apply(wire.clone()) {
            Ok(()) => assert_eq!(current.version(), wire.version),
            Err(_) => assert_eq!(fingerprint(&current), before, "a rejected message changed the snapshot"),
        }
    }

    // The sync state machine (the filter's leader VM): a real full snapshot, then the fuzz
    // body under some status; its bucket writes are applied to a model of shared data.
    let mut leader = Leader::adopt(None, usize::from(*selector % 4) + 1, HELD);
    let mut shared: HashMap<(bool, u16), Vec<u8>> = HashMap::new();
    let first = leader.on_response(Some(200), BASE, NOW, Some(HELD), 0);
    assert!(matches!(first.outcome, Some(SyncOutcome::Applied { full: true, .. })), "{:?}", first.outcome);
    apply_ops(&mut shared, first.ops);
    let status = match selector % 6 {
        0 | 1 | 2 => Some(200),
        3 => Some(410),
        4 => None,
        _ => Some(u16::from(*selector) + 300),
    };
    let version = leader.meta().map(|m| m.version);
    let _ = leader.next_path(20);
    let step = leader.on_response(status, body, NOW + 1, Some(HELD), 0);
    match &step.outcome {
        Some(SyncOutcome::Failed(_)) | Some(SyncOutcome::Resync) => {
            assert_eq!(leader.meta().map(|m| m.version), version, "a failed poll changed the version");
            assert!(step.ops.is_empty() && step.seen.is_none() && step.meta.is_none(), "a failed poll wrote to shared data");
        }
        Some(SyncOutcome::Applied { version: v, .. }) | Some(SyncOutcome::Unchanged { version: v }) => {
            assert_eq!(step.seen.map(|s| s.version), Some(*v));
            assert_eq!(step.seen.map(|s| s.confirmed_at), Some(NOW + 1));
        }
        None => assert!(step.seen.is_none(), "a partial page confirmed the snapshot"),
    }
    apply_ops(&mut shared, step.ops);
    if let Some(meta) = &step.meta {
        assert!(meta.snapshot().is_ok(), "published meta does not build a snapshot");
    }
    let _ = leader.next_path(20);
    let again = leader.on_response(Some(200), body, NOW + 2, Some(HELD), 0);
    apply_ops(&mut shared, again.ops);
    for ((revocations, _), bytes) in &shared {
        if *revocations {
            let _ = revoked::count(bytes);
        } else {
            let _ = keystore::count(bytes);
        }
    }
    // Bucket bytes and the 16-byte Seen as read back from shared data.
    if body.len() >= 32 {
        let hash = KeyHash(body[..32].try_into().expect("32 bytes"));
        let _ = keystore::find(body, &hash);
        let _ = keystore::replace(body, &hash, None);
    }
    let _ = keystore::count(body);
    if body.len() >= 32 {
        let digest = KeyHash(body[..32].try_into().expect("32 bytes"));
        let _ = revoked::contains(body, &digest);
        let _ = revoked::insert(body, &digest, NOW + 5, NOW);
    }
    if let Some(seen) = Seen::decode(body) {
        assert_eq!(Seen::decode(&seen.encode()), Some(seen));
    }
});

/// Shared data: key buckets at `(false, id)`, revocation buckets at `(true, id)`.
fn apply_ops(shared: &mut HashMap<(bool, u16), Vec<u8>>, ops: Vec<BucketOp>) {
    for op in ops {
        match op {
            BucketOp::Put(id, bytes) => {
                shared.insert((false, id), bytes);
            }
            BucketOp::Clear { from, to } => shared.retain(|(r, id), _| *r || !(from..to).contains(&u32::from(*id))),
            BucketOp::Upsert(entry) => {
                let id = keystore::bucket_of(&entry.hash);
                let record = keystore::encode(&entry);
                let next = keystore::replace(shared.get(&(false, id)).map_or(&[][..], Vec::as_slice), &entry.hash, record.as_deref());
                if record.is_some() {
                    let found = keystore::find(&next, &entry.hash).expect("an upserted key is found");
                    assert_eq!((found.id.as_str(), found.active), (entry.id.as_str(), entry.active));
                }
                shared.insert((false, id), next);
            }
            BucketOp::Remove(hash) => {
                let id = keystore::bucket_of(&hash);
                let next = keystore::replace(shared.get(&(false, id)).map_or(&[][..], Vec::as_slice), &hash, None);
                assert!(keystore::find(&next, &hash).is_none(), "a removed key is still found");
                shared.insert((false, id), next);
            }
            BucketOp::PutRevoked(id, bytes) => {
                assert!(usize::from(id) < revoked::REVOKED_BUCKETS);
                shared.insert((true, id), bytes);
            }
            BucketOp::ClearRevoked { from, to } => shared.retain(|(r, id), _| !*r || !(from..to).contains(&u32::from(*id))),
            BucketOp::Revoke { session, now } => {
                let digest = revoked::digest(&session.sid);
                let id = revoked::bucket_of(&digest);
                let next = revoked::insert(shared.get(&(true, id)).map_or(&[][..], Vec::as_slice), &digest, session.until, now);
                assert!(revoked::contains(&next, &digest) || session.until <= now, "a revoked session is not found");
                shared.insert((true, id), next);
            }
        }
    }
}
