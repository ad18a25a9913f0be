//! The filter's view of Envoy's shared data (one store per `vm_id`, shared by every worker
//! VM): the key buckets, the leader's lease, and the published `Meta` / `Seen`. Every
//! function here is a thin host-call adapter; the logic is in `keygate_core::{keystore, feed}`.

use keygate_core::feed::{BucketOp, Meta, Seen};
use keygate_core::keystore::{self, bucket_of, KeyLookup};
use keygate_core::snapshot::{KeyRecord, Snapshot};
use keygate_core::{pair, KeyHash};

use crate::host;

const LEADER: &str = "keygate.leader";
const SEEN: &str = "keygate.seen";
const META: &str = "keygate.meta";

/// How long a leader's lease lasts without renewal, and when it renews.
const LEASE_MS: u64 = 3_000;
const RENEW_BEFORE_MS: u64 = 2_000;

fn bucket_name(id: u16) -> String {
    format!("keygate.k.{id:04x}")
}

/// Key lookups straight from the shared buckets (one host call per request).
pub struct SharedKeys;

impl KeyLookup for SharedKeys {
    fn key(&self, hash: &KeyHash) -> Option<KeyRecord> {
        let bucket = host::shared_get(&bucket_name(bucket_of(hash))).0?;
        keystore::find(&bucket, hash)
    }
}

/// Applies the leader's bucket writes; returns the net change in the number of keys.
pub fn apply(ops: Vec<BucketOp>) -> i64 {
    let mut delta = 0;
    for op in ops {
        match op {
            BucketOp::Put(id, bytes) => {
                host::shared_set(&bucket_name(id), &bytes, None);
            }
            BucketOp::Clear { from, to } => {
                for id in (from..to).filter_map(|id| u16::try_from(id).ok()) {
                    let name = bucket_name(id);
                    if host::shared_get(&name).0.is_some_and(|b| !b.is_empty()) {
                        host::shared_set(&name, &[], None);
                    }
                }
            }
            BucketOp::Upsert(entry) => {
                let Some(record) = keystore::encode(&entry) else { continue };
                let name = bucket_name(bucket_of(&entry.hash));
                let bucket = host::shared_get(&name).0.unwrap_or_default();
                delta += i64::from(keystore::find(&bucket, &entry.hash).is_none());
                host::shared_set(&name, &keystore::replace(&bucket, &entry.hash, Some(&record)), None);
            }
            BucketOp::Remove(hash) => {
                let name = bucket_name(bucket_of(&hash));
                let bucket = host::shared_get(&name).0.unwrap_or_default();
                if keystore::find(&bucket, &hash).is_some() {
                    delta -= 1;
                    host::shared_set(&name, &keystore::replace(&bucket, &hash, None), None);
                }
            }
        }
    }
    delta
}

pub fn publish(meta: Option<&Meta>, seen: Option<Seen>) {
    if let Some(bytes) = meta.and_then(|m| serde_json::to_vec(m).ok()) {
        host::shared_set(META, &bytes, None);
    }
    if let Some(seen) = seen {
        host::shared_set(SEEN, &seen.encode(), None);
    }
}

pub fn read_seen() -> Option<Seen> {
    Seen::decode(&host::shared_get(SEEN).0?)
}

pub fn read_meta() -> Option<Meta> {
    serde_json::from_slice(&host::shared_get(META).0?).ok()
}

/// Holds or takes the leader lease; `true` while this VM is the leader. The lease is a
/// 16-byte (holder, expiry) value updated with compare-and-swap, so exactly one VM wins.
pub fn hold_lease(me: u64, now_ms: u64) -> bool {
    let (bytes, cas) = host::shared_get(LEADER);
    let (holder, until) = bytes.as_deref().and_then(pair::unpack).unwrap_or((0, 0));
    let mine = holder == me && until > now_ms;
    if mine && until - now_ms > RENEW_BEFORE_MS {
        return true;
    }
    if !mine && until > now_ms {
        return false;
    }
    let lease = pair::pack(me, now_ms.saturating_add(LEASE_MS));
    // Two VMs can both find no lease at start-up (a missing entry has no CAS token):
    // read back, so at most one keeps it past this tick.
    host::shared_set(LEADER, &lease, cas) && host::shared_get(LEADER).0.as_deref().and_then(pair::unpack).is_some_and(|(holder, _)| holder == me)
}

/// This VM's copy of what the leader published: signing keys and revocations for the
/// version in `Seen` (the keys stay in shared data).
#[derive(Debug, Default)]
pub struct View {
    pub version: Option<u64>,
    pub snapshot: Option<Snapshot>,
}

impl View {
    /// Reloads the meta when `seen` names another version; a bad meta keeps the old view.
    pub fn refresh(&mut self, seen: Seen) {
        if self.version == Some(seen.version) {
            return;
        }
        if let Some(snapshot) = read_meta().filter(|m| m.version == seen.version).and_then(|m| m.snapshot().ok()) {
            self.version = Some(seen.version);
            self.snapshot = Some(snapshot);
        }
    }
}
