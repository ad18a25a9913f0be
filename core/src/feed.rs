//! The filter's sync with admin when keys live in Envoy's shared data (see
//! [`crate::keystore`]). One VM per Envoy holds a lease and is the *leader*: only it polls
//! admin and writes. It turns each feed answer into bucket operations (keys, and revoked
//! sessions in buckets of their own, [`crate::revoked`]) plus a small [`Meta`] (version,
//! signing keys) and a 16-byte [`Seen`] (version + when admin last confirmed it). Every VM
//! reads `Seen` per request and reloads `Meta` when its version moves, so all workers decide
//! from one copy of the keys and revocations, and a change costs each VM about its size.
//!
//! A full sync is paged and sorted by key hash (`?limit=N`, then `?after=<last hash>`),
//! then the revoked sessions likewise by digest (`?limit=N&revoked=1`, then `&after=`), so
//! neither Envoy nor the VM ever holds the whole set: each bucket is written whole as soon
//! as the sorted stream moves past it, and buckets the new snapshot does not mention are
//! cleared. Until a full sync completes, the previous data keeps deciding. Afterwards the
//! leader long-polls `?since=V&wait=S` and applies deltas record by record.

use serde::{Deserialize, Serialize};

use crate::key::KeyHash;
use crate::keystore::{self, bucket_of, BUCKETS};
use crate::lease::{Lease, WRITE_MARGIN_MS};
use crate::oidc::IssuerEntry;
use crate::revoked::{self, REVOKED_BUCKETS};
use crate::snapshot::{BusinessLimits, History, KeyEntry, RevokedSession, SigningKeyEntry, Snapshot, SnapshotError, SnapshotWire};
use crate::sync::{Health, SyncFailure, SyncOutcome, SNAPSHOT_PATH};
use crate::UnixTime;

/// Keys per page of a full snapshot by default: ~2 MiB of JSON. Measured at 1 M keys
/// (Envoy, 2 workers): 5 000 → +84 MB RSS, 4.0 s; 10 000 → +88 MB, 3.1 s; 20 000 → +106 MB.
pub const PAGE_KEYS: usize = 10_000;

/// What every VM needs besides the keys, as published by the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u64,
    /// Keys in the buckets (exact after a full sync, then kept by the deltas).
    pub keys: u64,
    pub signing_keys: Vec<SigningKeyEntry>,
    /// Only in a meta an older filter published (it kept every revocation here): still
    /// honoured by the workers, and a leader that adopts such a meta takes a full snapshot
    /// to move them into buckets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_sessions: Vec<RevokedSession>,
    /// Admin's history at `version`; sent back with `?since=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// Trusted issuers and their pinned keys (each VM verifies their tokens itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerEntry>,
    /// Businesses' own limits (few: one per business that has any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub business_limits: Vec<BusinessLimits>,
}

impl Meta {
    /// The per-VM snapshot this meta describes: the signing keys (keys and revoked
    /// sessions stay in shared data).
    pub fn snapshot(&self) -> Result<Snapshot, SnapshotError> {
        Snapshot::from_full(SnapshotWire {
            version: self.version,
            signing_keys: self.signing_keys.clone(),
            revoked_sessions: self.revoked_sessions.clone(),
            issuers: self.issuers.clone(),
            business_limits: self.business_limits.clone(),
            ..SnapshotWire::default()
        })
    }
}

/// The version all VMs should decide from, and when admin last confirmed it (16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub version: u64,
    pub confirmed_at: UnixTime,
}

impl Seen {
    pub fn encode(&self) -> [u8; 16] {
        crate::pair::pack(self.version, self.confirmed_at)
    }

    pub fn decode(bytes: &[u8]) -> Option<Seen> {
        crate::pair::unpack(bytes).map(|(version, confirmed_at)| Seen { version, confirmed_at })
    }
}

/// A write the leader makes to the shared buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketOp {
    /// Replace the whole bucket.
    Put(u16, Vec<u8>),
    /// Empty every bucket in `from..to` that holds anything.
    Clear { from: u32, to: u32 },
    /// Read-modify-write one key's record (delta).
    Upsert(KeyEntry),
    /// Read-modify-write: drop one key's record (delta).
    Remove(KeyHash),
    /// Replace a whole bucket of revoked sessions.
    PutRevoked(u16, Vec<u8>),
    /// Empty every revocation bucket in `from..to` that holds anything.
    ClearRevoked { from: u32, to: u32 },
    /// Read-modify-write one revocation bucket: add the session, drop what ended by `now`.
    Revoke { session: RevokedSession, now: UnixTime },
}

/// What the shell does with one feed answer.
#[derive(Debug, Default)]
pub struct Step {
    pub ops: Vec<BucketOp>,
    /// Publish these after applying `ops` (in that order).
    pub meta: Option<Meta>,
    pub seen: Option<Seen>,
    pub outcome: Option<SyncOutcome>,
    pub health: Option<Health>,
    /// Write nothing from this step at or after this time (ms): the writer's term may end.
    pub write_until_ms: u64,
    /// This VM no longer holds the lease term it led under: nothing was applied, and the
    /// shell drops this leader (answers still in flight included).
    pub deposed: bool,
}

/// One sorted stream of a full sync (keys by hash, or revoked sessions by digest): where it
/// is, the bucket being built, and the first bucket id not yet written.
#[derive(Debug, Default)]
struct Stream {
    after: Option<KeyHash>,
    pending: Option<(u16, Vec<u8>)>,
    next_bucket: u32,
}

impl Stream {
    /// The sorted stream has moved on to bucket `next`: write the bucket being built, and
    /// clear every bucket between it and `next` (the new snapshot has nothing there).
    fn close_before(&mut self, next: u32, revoked: bool, ops: &mut Vec<BucketOp>) {
        if let Some((id, bytes)) = self.pending.take() {
            ops.push(if revoked { BucketOp::PutRevoked(id, bytes) } else { BucketOp::Put(id, bytes) });
            self.next_bucket = u32::from(id) + 1;
        }
        if self.next_bucket < next {
            let (from, to) = (self.next_bucket, next);
            ops.push(if revoked { BucketOp::ClearRevoked { from, to } } else { BucketOp::Clear { from, to } });
        }
    }

    /// Checks that `items` continue the sorted stream.
    fn check_sorted(&self, items: impl Iterator<Item = KeyHash>) -> Result<Option<KeyHash>, SyncFailure> {
        let mut last = self.after;
        for item in items {
            if last.is_some_and(|l| item <= l) {
                return Err(SyncFailure::Rejected(SnapshotError::Decode("snapshot page is not sorted".into())));
            }
            last = Some(item);
        }
        Ok(last)
    }

    fn push(&mut self, bucket: u16, record: &[u8], revoked: bool, ops: &mut Vec<BucketOp>) {
        match &mut self.pending {
            Some((id, bytes)) if *id == bucket => bytes.extend_from_slice(record),
            _ => {
                self.close_before(u32::from(bucket), revoked, ops);
                self.pending = Some((bucket, record.to_vec()));
            }
        }
    }
}

/// A full sync in progress: the meta of its first page, then the key stream and, once that
/// has ended, the revocation stream (`revoking`).
#[derive(Debug)]
struct FullBuild {
    meta: Meta,
    keys: Stream,
    revoking: Option<Stream>,
    /// Revocations an admin without revocation pages sent whole in the first page.
    inline_revoked: Vec<RevokedSession>,
}

#[derive(Debug, Default)]
pub struct Leader {
    /// The lease term this leader writes under.
    lease: Lease,
    deposed: bool,
    /// The state the shared data holds (`None`: nothing yet, a full sync is needed).
    meta: Option<Meta>,
    full: Option<FullBuild>,
    need_full: bool,
    page_keys: usize,
    failing: bool,
    pub failures: u64,
}

impl Leader {
    /// Takes over from what the shared data says (a previous leader's work), under the
    /// lease it just took; full snapshots come in pages of `page_keys`.
    pub fn adopt(meta: Option<Meta>, page_keys: usize, lease: Lease) -> Leader {
        let need_full = meta.as_ref().is_none_or(|m| !m.revoked_sessions.is_empty());
        Leader { lease, need_full, meta, page_keys: page_keys.max(1), ..Leader::default() }
    }

    pub fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    /// The `:path` of the next feed request.
    pub fn next_path(&self, wait_secs: u64) -> String {
        match (&self.full, &self.meta) {
            (Some(FullBuild { revoking: Some(Stream { after: Some(after), .. }), .. }), _) => {
                format!("{SNAPSHOT_PATH}?limit={}&revoked=1&after={}", self.page_keys, after.to_hex())
            }
            (Some(FullBuild { revoking: Some(_), .. }), _) => format!("{SNAPSHOT_PATH}?limit={}&revoked=1", self.page_keys),
            (Some(FullBuild { keys: Stream { after: Some(after), .. }, .. }), _) => {
                format!("{SNAPSHOT_PATH}?after={}&limit={}", after.to_hex(), self.page_keys)
            }
            (Some(_), _) | (None, None) => format!("{SNAPSHOT_PATH}?limit={}", self.page_keys),
            (None, Some(_)) if self.need_full => format!("{SNAPSHOT_PATH}?limit={}", self.page_keys),
            (None, Some(meta)) => match &meta.history {
                Some(history) => format!("{SNAPSHOT_PATH}?since={}&wait={wait_secs}&history={}", meta.version, history.to_hex()),
                None => format!("{SNAPSHOT_PATH}?since={}&wait={wait_secs}", meta.version),
            },
        }
    }

    /// The shell reports how many keys the delta ops added (+) or removed (−).
    pub fn adjust_keys(&mut self, by: i64) {
        if let Some(meta) = &mut self.meta {
            meta.keys = meta.keys.saturating_add_signed(by);
        }
    }

    /// An answer too large to read: take a paged full snapshot instead of retrying it.
    pub fn on_oversized(&mut self) -> Step {
        self.need_full = true;
        self.full = None;
        Step { outcome: Some(SyncOutcome::Resync), ..Step::default() }
    }

    /// Turns one feed answer (`status: None` when there was none) into a [`Step`].
    /// `lease` is the lease as shared data holds it at `now_ms`, read (and renewed) right
    /// before this call: unless it is still this leader's term, with time left to write,
    /// the answer is dropped and the leader is deposed for good.
    pub fn on_response(&mut self, status: Option<u16>, body: &[u8], now: UnixTime, lease: Option<Lease>, now_ms: u64) -> Step {
        let held = lease.filter(|l| !self.deposed && l.is(&self.lease, now_ms.saturating_add(WRITE_MARGIN_MS)));
        let Some(held) = held else {
            self.deposed = true;
            self.full = None;
            return Step { deposed: true, ..Step::default() };
        };
        let mut step = Step { write_until_ms: held.until_ms - WRITE_MARGIN_MS, ..Step::default() };
        let result = match status {
            None => Err(SyncFailure::Unreachable),
            Some(410) => {
                self.need_full = true;
                self.full = None;
                step.outcome = Some(SyncOutcome::Resync);
                Ok(())
            }
            Some(200) => Snapshot::decode(body).map_err(SyncFailure::Rejected).and_then(|wire| self.apply(wire, now, &mut step)),
            Some(other) => Err(SyncFailure::Status(other)),
        };
        let failed = result.is_err();
        if let Err(failure) = result {
            self.failures += 1;
            if matches!(failure, SyncFailure::Rejected(SnapshotError::VersionGap { .. }) | SyncFailure::Rejected(SnapshotError::NotFull)) {
                self.need_full = true;
                self.full = None;
            }
            step = Step { outcome: Some(SyncOutcome::Failed(failure)), write_until_ms: step.write_until_ms, ..Step::default() };
        }
        if failed != self.failing {
            step.health = Some(if failed { Health::Failing } else { Health::Healthy });
        }
        self.failing = failed;
        step
    }

    fn apply(&mut self, wire: SnapshotWire, now: UnixTime, step: &mut Step) -> Result<(), SyncFailure> {
        match wire.since {
            Some(since) => self.apply_delta(since, wire, now, step),
            None => self.apply_page(wire, now, step),
        }
    }

    fn apply_delta(&mut self, since: u64, wire: SnapshotWire, now: UnixTime, step: &mut Step) -> Result<(), SyncFailure> {
        let meta = match &self.meta {
            Some(meta) if !self.need_full && self.full.is_none() => meta,
            _ => return Err(SyncFailure::Rejected(SnapshotError::NotFull)),
        };
        if since != meta.version {
            return Err(SyncFailure::Rejected(SnapshotError::VersionGap { since, have: meta.version }));
        }
        if meta.history.is_some() && wire.since_history.is_some() && meta.history != wire.since_history {
            // Admin's version `since` is not ours (admin was restored from a backup and
            // moved on): its changes do not apply to what we hold.
            self.need_full = true;
            step.outcome = Some(SyncOutcome::Resync);
            return Ok(());
        }
        let Some(meta) = &mut self.meta else { return Err(SyncFailure::Rejected(SnapshotError::NotFull)) };
        // Validate the signing keys before anything is written.
        let mut next = meta.clone();
        next.signing_keys.retain(|k| !wire.removed_signing_keys.contains(&k.kid) && !wire.signing_keys.iter().any(|n| n.kid == k.kid));
        next.signing_keys.extend(wire.signing_keys.iter().cloned());
        next.issuers.retain(|i| !wire.removed_issuers.contains(&i.id) && !wire.issuers.iter().any(|n| n.id == i.id));
        next.issuers.extend(wire.issuers.iter().cloned());
        next.business_limits.retain(|b| !wire.business_limits.iter().any(|n| n.business == b.business));
        next.business_limits.extend(wire.business_limits.iter().filter(|b| !b.is_empty()).cloned());
        next.version = wire.version;
        next.history = wire.history;
        next.snapshot().map_err(SyncFailure::Rejected)?;
        let changed = wire.version != since;
        step.ops.extend(wire.removed_keys.into_iter().map(BucketOp::Remove));
        step.ops.extend(wire.keys.into_iter().map(BucketOp::Upsert));
        step.ops.extend(wire.revoked_sessions.into_iter().filter(|r| r.until > now).map(|session| BucketOp::Revoke { session, now }));
        *meta = next;
        step.outcome = Some(if changed {
            SyncOutcome::Applied { version: wire.version, full: false, keys: usize::try_from(meta.keys).unwrap_or(usize::MAX) }
        } else {
            SyncOutcome::Unchanged { version: wire.version }
        });
        if changed {
            step.meta = Some(meta.clone());
        }
        step.seen = Some(Seen { version: meta.version, confirmed_at: now });
        Ok(())
    }

    fn apply_page(&mut self, wire: SnapshotWire, now: UnixTime, step: &mut Step) -> Result<(), SyncFailure> {
        let mut build = match self.full.take() {
            Some(build) => build,
            None => {
                let meta = Meta {
                    version: wire.version,
                    keys: 0,
                    signing_keys: wire.signing_keys.clone(),
                    revoked_sessions: Vec::new(),
                    history: wire.history,
                    issuers: wire.issuers.clone(),
                    business_limits: wire.business_limits.iter().filter(|b| !b.is_empty()).cloned().collect(),
                };
                meta.snapshot().map_err(SyncFailure::Rejected)?;
                FullBuild { meta, keys: Stream::default(), revoking: None, inline_revoked: wire.revoked_sessions.clone() }
            }
        };
        let mut ops = Vec::new();
        if let Some(stream) = &mut build.revoking {
            let digests: Vec<KeyHash> = wire.revoked_sessions.iter().map(|r| revoked::digest(&r.sid)).collect();
            stream.after = stream.check_sorted(digests.iter().copied())?;
            for (session, digest) in wire.revoked_sessions.iter().zip(&digests) {
                if session.until > now {
                    stream.push(revoked::bucket_of(digest), &revoked::record(digest, session.until), true, &mut ops);
                }
            }
            if wire.next_after.is_some() {
                step.ops = ops;
                self.full = Some(build);
                return Ok(());
            }
            stream.close_before(REVOKED_BUCKETS as u32, true, &mut ops);
            return self.finish(build, ops, now, step);
        }
        // Pages must continue the sorted stream: each hash above the previous one.
        build.keys.after = build.keys.check_sorted(wire.keys.iter().map(|k| k.hash))?;
        for entry in &wire.keys {
            let Some(record) = keystore::encode(entry) else { continue };
            build.keys.push(bucket_of(&entry.hash), &record, false, &mut ops);
            build.meta.keys += 1;
        }
        if wire.next_after.is_some() {
            // More pages follow; nothing is confirmed yet.
            step.ops = ops;
            self.full = Some(build);
            return Ok(());
        }
        build.keys.close_before(BUCKETS as u32, false, &mut ops);
        if wire.revocation_pages {
            build.revoking = Some(Stream::default());
            step.ops = ops;
            self.full = Some(build);
            return Ok(());
        }
        // An admin without revocation pages sent them all in the first page.
        ops.push(BucketOp::ClearRevoked { from: 0, to: REVOKED_BUCKETS as u32 });
        let inline = std::mem::take(&mut build.inline_revoked);
        ops.extend(inline.into_iter().filter(|r| r.until > now).map(|session| BucketOp::Revoke { session, now }));
        self.finish(build, ops, now, step)
    }

    fn finish(&mut self, build: FullBuild, ops: Vec<BucketOp>, now: UnixTime, step: &mut Step) -> Result<(), SyncFailure> {
        let meta = build.meta;
        step.ops = ops;
        step.outcome =
            Some(SyncOutcome::Applied { version: meta.version, full: true, keys: usize::try_from(meta.keys).unwrap_or(usize::MAX) });
        step.seen = Some(Seen { version: meta.version, confirmed_at: now });
        step.meta = Some(meta.clone());
        self.meta = Some(meta);
        self.need_full = false;
        Ok(())
    }
}
