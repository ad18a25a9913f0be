//! The filter's view of Envoy's shared data (one store per `vm_id`, shared by every worker
//! VM): the key buckets, the leader's lease, and the published `Meta` / `Seen`. Every
//! function here is a thin host-call adapter; the logic is in `keygate_core::{keystore, feed}`.
//! Every name starts with the plugin's `shared_prefix` (`ns` below), so plugins that share a
//! `vm_id` but are fed by different admins never share an entry.

use keygate_core::feed::{BucketOp, Meta, Seen};
use keygate_core::keystore::{self, bucket_of, KeyLookup};
use keygate_core::snapshot::{KeyRecord, Snapshot};
use keygate_core::{pair, KeyHash};

use crate::host;

const LEADER: &str = "leader";
const SEEN: &str = "seen";
const META: &str = "meta";

/// How long a leader's lease lasts without renewal, and when it renews.
const LEASE_MS: u64 = 3_000;
const RENEW_BEFORE_MS: u64 = 2_000;

fn name(ns: &str, what: &str) -> String {
    format!("{ns}{what}")
}

fn bucket_name(ns: &str, id: u16) -> String {
    format!("{ns}k.{id:04x}")
}

/// Key lookups straight from the shared buckets (one host call per request), under the
/// plugin's prefix.
pub struct SharedKeys<'a>(pub &'a str);

impl KeyLookup for SharedKeys<'_> {
    fn key(&self, hash: &KeyHash) -> Option<KeyRecord> {
        let bucket = host::shared_get(&bucket_name(self.0, bucket_of(hash))).0?;
        keystore::find(&bucket, hash)
    }
}

/// Applies the leader's bucket writes; returns the net change in the number of keys.
pub fn apply(ns: &str, ops: Vec<BucketOp>) -> i64 {
    let mut delta = 0;
    for op in ops {
        match op {
            BucketOp::Put(id, bytes) => {
                host::shared_set(&bucket_name(ns, id), &bytes, None);
            }
            BucketOp::Clear { from, to } => {
                for id in (from..to).filter_map(|id| u16::try_from(id).ok()) {
                    let name = bucket_name(ns, id);
                    if host::shared_get(&name).0.is_some_and(|b| !b.is_empty()) {
                        host::shared_set(&name, &[], None);
                    }
                }
            }
            BucketOp::Upsert(entry) => {
                let Some(record) = keystore::encode(&entry) else { continue };
                let name = bucket_name(ns, bucket_of(&entry.hash));
                let bucket = host::shared_get(&name).0.unwrap_or_default();
                delta += i64::from(keystore::find(&bucket, &entry.hash).is_none());
                host::shared_set(&name, &keystore::replace(&bucket, &entry.hash, Some(&record)), None);
            }
            BucketOp::Remove(hash) => {
                let name = bucket_name(ns, bucket_of(&hash));
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

pub fn publish(ns: &str, meta: Option<&Meta>, seen: Option<Seen>) {
    if let Some(bytes) = meta.and_then(|m| serde_json::to_vec(m).ok()) {
        host::shared_set(&name(ns, META), &bytes, None);
    }
    if let Some(seen) = seen {
        host::shared_set(&name(ns, SEEN), &seen.encode(), None);
    }
}

pub fn read_seen(ns: &str) -> Option<Seen> {
    Seen::decode(&host::shared_get(&name(ns, SEEN)).0?)
}

pub fn read_meta(ns: &str) -> Option<Meta> {
    serde_json::from_slice(&host::shared_get(&name(ns, META)).0?).ok()
}

/// Holds or takes the leader lease; `true` while this VM is the leader. The lease is a
/// 16-byte (holder, expiry) value updated with compare-and-swap, so exactly one VM wins.
pub fn hold_lease(ns: &str, me: u64, now_ms: u64) -> bool {
    let leader = name(ns, LEADER);
    let (bytes, cas) = host::shared_get(&leader);
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
    host::shared_set(&leader, &lease, cas) && host::shared_get(&leader).0.as_deref().and_then(pair::unpack).is_some_and(|(holder, _)| holder == me)
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
    pub fn refresh(&mut self, ns: &str, seen: Seen) {
        if self.version == Some(seen.version) {
            return;
        }
        if let Some(snapshot) = read_meta(ns).filter(|m| m.version == seen.version).and_then(|m| m.snapshot().ok()) {
            self.version = Some(seen.version);
            self.snapshot = Some(snapshot);
        }
    }
}
