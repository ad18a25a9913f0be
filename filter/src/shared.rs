//! The filter's view of Envoy's shared data (one store per `vm_id`, shared by every worker
//! VM): the key and revocation buckets, the leader's lease, and the published `Meta` / `Seen`. Every
//! function here is a thin host-call adapter; the logic is in `keygate_core::{keystore, feed}`.
//! Every name starts with the plugin's `shared_prefix` (`ns` below), so plugins that share a
//! `vm_id` but are fed by different admins never share an entry.

use keygate_core::feed::{BucketOp, Meta, Seen};
use keygate_core::keystore::{self, bucket_of, KeyLookup};
use keygate_core::lease::{Lease, LeaseStep};
use keygate_core::ratelimit::fleet::FleetView;
use keygate_core::revoked::{self, RevocationLookup};
use keygate_core::snapshot::{KeyRecord, Snapshot};
use keygate_core::KeyHash;

use std::cell::RefCell;

use crate::host;

const LEADER: &str = "leader";
const SEEN: &str = "seen";
const META: &str = "meta";

/// An exchange with admin whose standing every worker of an Envoy shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Rate-limit counts (`POST /v1/rate-counts`): also tells how many proxies admin counts.
    Counts,
    /// Credit spending (`POST /v1/credit-spend`).
    Credits,
}

impl Exchange {
    fn entry(self) -> &'static str {
        match self {
            Exchange::Counts => "fleet.counts",
            Exchange::Credits => "fleet.credits",
        }
    }
}

const VIEW_ATTEMPTS: usize = 16;

/// This Envoy's standing of an exchange with admin, as its workers last recorded it. A
/// worker that has exchanged nothing itself (no traffic of that kind yet) still knows
/// whether admin answers the Envoy and how many proxies it counts.
pub fn read_view(ns: &str, exchange: Exchange) -> FleetView {
    host::shared_get(&name(ns, exchange.entry())).0.map_or_else(FleetView::default, |bytes| FleetView::decode(&bytes))
}

/// Records a worker's exchange in the Envoy's view (compare-and-swap): the view before and
/// after `update`. Under lasting contention the update is this worker's alone.
pub fn record_view(ns: &str, exchange: Exchange, update: impl Fn(FleetView) -> FleetView) -> (FleetView, FleetView) {
    let key = name(ns, exchange.entry());
    for _ in 0..VIEW_ATTEMPTS {
        let (bytes, cas) = host::shared_get(&key);
        let before = bytes.map_or_else(FleetView::default, |b| FleetView::decode(&b));
        let after = update(before);
        if after == before || host::shared_set(&key, &after.encode(), cas) {
            return (before, after);
        }
    }
    let before = read_view(ns, exchange);
    (before, update(before))
}

fn name(ns: &str, what: &str) -> String {
    format!("{ns}{what}")
}

fn bucket_name(ns: &str, id: u16) -> String {
    format!("{ns}k.{id:04x}")
}

fn revoked_bucket_name(ns: &str, id: u16) -> String {
    format!("{ns}r.{id:03x}")
}

/// Revocation checks straight from the shared buckets (one host call per token check),
/// under the plugin's prefix. The last answer is kept: a request decided twice (again with
/// the client address, for a key with an allowlist) reads its bucket once.
pub struct SharedRevocations<'a> {
    ns: &'a str,
    last: RefCell<Option<(String, bool)>>,
}

impl<'a> SharedRevocations<'a> {
    pub fn new(ns: &'a str) -> SharedRevocations<'a> {
        SharedRevocations { ns, last: RefCell::new(None) }
    }
}

impl RevocationLookup for SharedRevocations<'_> {
    fn is_revoked(&self, sid: &str) -> bool {
        if let Some((last, revoked)) = &*self.last.borrow() {
            if last == sid {
                return *revoked;
            }
        }
        let digest = revoked::digest(sid);
        let revoked = host::shared_get(&revoked_bucket_name(self.ns, revoked::bucket_of(&digest)))
            .0
            .is_some_and(|bucket| revoked::contains(&bucket, &digest));
        *self.last.borrow_mut() = Some((sid.to_owned(), revoked));
        revoked
    }
}

/// Key lookups straight from the shared buckets (one host call per request), under the
/// plugin's prefix. The last answer is kept, as for [`SharedRevocations`]: the second
/// decision of a request skips the host call and the record's parse.
pub struct SharedKeys<'a> {
    ns: &'a str,
    last: RefCell<Option<(KeyHash, Option<KeyRecord>)>>,
}

impl<'a> SharedKeys<'a> {
    pub fn new(ns: &'a str) -> SharedKeys<'a> {
        SharedKeys { ns, last: RefCell::new(None) }
    }
}

impl KeyLookup for SharedKeys<'_> {
    fn key(&self, hash: &KeyHash) -> Option<KeyRecord> {
        if let Some((last, record)) = &*self.last.borrow() {
            if last == hash {
                return record.clone();
            }
        }
        let record = host::shared_get(&bucket_name(self.ns, bucket_of(hash))).0.and_then(|bucket| keystore::find(&bucket, hash));
        *self.last.borrow_mut() = Some((*hash, record.clone()));
        record
    }
}

/// The leader's term ran out before all of a step was written (see `Step::write_until_ms`).
#[derive(Debug)]
pub struct OutOfTerm;

/// Applies the leader's bucket writes, each only before `until_ms`; returns the net change
/// in the number of keys.
pub fn apply(ns: &str, ops: Vec<BucketOp>, until_ms: u64) -> Result<i64, OutOfTerm> {
    let in_term = || if host::now_millis() < until_ms { Ok(()) } else { Err(OutOfTerm) };
    let mut delta = 0;
    for op in ops {
        match op {
            BucketOp::Put(id, bytes) => {
                in_term()?;
                host::shared_set(&bucket_name(ns, id), &bytes, None);
            }
            BucketOp::PutRevoked(id, bytes) => {
                in_term()?;
                host::shared_set(&revoked_bucket_name(ns, id), &bytes, None);
            }
            BucketOp::Revoke { session, now } => {
                let digest = revoked::digest(&session.sid);
                let name = revoked_bucket_name(ns, revoked::bucket_of(&digest));
                let bucket = host::shared_get(&name).0.unwrap_or_default();
                in_term()?;
                host::shared_set(&name, &revoked::insert(&bucket, &digest, session.until, now), None);
            }
            BucketOp::Clear { from, to } => clear(|id| bucket_name(ns, id), from, to, &in_term)?,
            BucketOp::ClearRevoked { from, to } => clear(|id| revoked_bucket_name(ns, id), from, to, &in_term)?,
            BucketOp::Upsert(entry) => {
                let Some(record) = keystore::encode(&entry) else { continue };
                let name = bucket_name(ns, bucket_of(&entry.hash));
                let bucket = host::shared_get(&name).0.unwrap_or_default();
                delta += i64::from(keystore::find(&bucket, &entry.hash).is_none());
                in_term()?;
                host::shared_set(&name, &keystore::replace(&bucket, &entry.hash, Some(&record)), None);
            }
            BucketOp::Remove(hash) => {
                let name = bucket_name(ns, bucket_of(&hash));
                let bucket = host::shared_get(&name).0.unwrap_or_default();
                if keystore::find(&bucket, &hash).is_some() {
                    delta -= 1;
                    in_term()?;
                    host::shared_set(&name, &keystore::replace(&bucket, &hash, None), None);
                }
            }
        }
    }
    Ok(delta)
}

/// Empties every bucket in `from..to` that holds anything.
fn clear(name_of: impl Fn(u16) -> String, from: u32, to: u32, in_term: &dyn Fn() -> Result<(), OutOfTerm>) -> Result<(), OutOfTerm> {
    for id in (from..to).filter_map(|id| u16::try_from(id).ok()) {
        let name = name_of(id);
        if host::shared_get(&name).0.is_some_and(|b| !b.is_empty()) {
            in_term()?;
            host::shared_set(&name, &[], None);
        }
    }
    Ok(())
}

pub fn publish(ns: &str, meta: Option<&Meta>, seen: Option<Seen>, until_ms: u64) -> Result<(), OutOfTerm> {
    let in_term = || if host::now_millis() < until_ms { Ok(()) } else { Err(OutOfTerm) };
    if let Some(bytes) = meta.and_then(|m| serde_json::to_vec(m).ok()) {
        in_term()?;
        host::shared_set(&name(ns, META), &bytes, None);
    }
    if let Some(seen) = seen {
        in_term()?;
        host::shared_set(&name(ns, SEEN), &seen.encode(), None);
    }
    Ok(())
}

pub fn read_seen(ns: &str) -> Option<Seen> {
    Seen::decode(&host::shared_get(&name(ns, SEEN)).0?)
}

pub fn read_meta(ns: &str) -> Option<Meta> {
    serde_json::from_slice(&host::shared_get(&name(ns, META)).0?).ok()
}

fn read_lease(ns: &str) -> (Option<Lease>, Option<u32>) {
    let (bytes, cas) = host::shared_get(&name(ns, LEADER));
    (bytes.as_deref().and_then(Lease::decode), cas)
}

/// Holds, renews (`renew`: even when not yet due) or takes the leader lease; the lease
/// this VM holds afterwards, `None` while another VM leads. The lease is updated with
/// compare-and-swap, so exactly one VM wins a takeover, and each takeover starts a new term.
pub fn hold_lease(ns: &str, me: u64, now_ms: u64, renew: bool) -> Option<Lease> {
    let (current, cas) = read_lease(ns);
    match Lease::next(current, me, now_ms, renew) {
        LeaseStep::Hold(lease) => Some(lease),
        LeaseStep::Follow => None,
        LeaseStep::Write(lease) => {
            // Two VMs can both find no lease at start-up (a missing entry has no CAS
            // token): read back, so at most one keeps it past this call.
            let written = host::shared_set(&name(ns, LEADER), &lease.encode(), cas);
            (written && read_lease(ns).0 == Some(lease)).then_some(lease)
        }
    }
}

/// The lease as shared data holds it now (renewed first when it is this VM's).
pub fn current_lease(ns: &str, me: u64, now_ms: u64) -> Option<Lease> {
    hold_lease(ns, me, now_ms, true).or_else(|| read_lease(ns).0)
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
