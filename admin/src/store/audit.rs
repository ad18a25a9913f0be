//! The audit log: who changed what through admin, when, and from which address.
//!
//! An entry is written in the same transaction as the change it records, so a change that
//! was acknowledged has its entry, and an aborted or unchanged write has none. A handler
//! names the change before calling the store: `store.audited(Audit::new(actor, "key.create",
//! "key", &id).business(&biz))` gives a handle whose writes each record that entry when they
//! change something (see [`Store::audited`]). An entry never holds a secret: no raw key,
//! password, token or hash; `details` are for plain settings (a grace period, a count).
//!
//! Entries are numbered 1, 2, … (`meta` `audit_head`); `audit` keys them by `u64::MAX - id`
//! so a forward scan reads the newest first, and `audit_by_business` indexes them per
//! business the same way. Kept: at most `audit_max_entries` (the oldest goes when a new one
//! comes) and none older than `audit_max_age_secs` (the sweep removes them).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Bound;

use keygate_core::UnixTime;
use serde::{Deserialize, Serialize};

use super::tx::{be, decode, from_be, Tx, TxResult};
use super::{Store, StoreError, Ticket};

pub(super) const META_AUDIT_HEAD: &[u8] = b"audit_head";
/// The lowest entry number that may still be stored.
pub(super) const META_AUDIT_FLOOR: &[u8] = b"audit_floor";

/// Entries one listing reads at most (a page may come back short, with a cursor to go on).
pub const AUDIT_SCAN_LIMIT: usize = 10_000;
/// Most entries in one page.
pub const AUDIT_MAX_PAGE: usize = 500;
/// How far back of `since` a listing still reads: replicas' clocks may differ a little, so
/// entry numbers and times need not agree exactly.
const CLOCK_SKEW_SECS: u64 = 60;

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// The operator token.
    Operator,
    /// A signed-in member (`id`: the user id).
    Member,
    /// The proxy token (an Envoy filter).
    Proxy,
    /// An API-key login session (`id`: the key id).
    Key,
    /// Nobody signed in yet (sign-in and login flows).
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    /// The user id of a member, the key id of a key session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The client address admin saw (the socket peer, or with `--trust-x-forwarded-for`
    /// the last `X-Forwarded-For` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Actor {
    pub fn new(kind: ActorKind, id: Option<String>, address: Option<IpAddr>) -> Actor {
        Actor { kind, id, address: address.map(|a| a.to_string()) }
    }

    pub fn operator(address: IpAddr) -> Actor {
        Actor::new(ActorKind::Operator, None, Some(address))
    }

    pub fn proxy(address: IpAddr) -> Actor {
        Actor::new(ActorKind::Proxy, None, Some(address))
    }

    pub fn member(user_id: &str, address: IpAddr) -> Actor {
        Actor::new(ActorKind::Member, Some(user_id.to_owned()), Some(address))
    }
}

/// What a change was made to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditObject {
    /// `key`, `business`, `user`, `session`, `signing_key`, `import`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// A change to record, named by the handler before it writes (see [`Store::audited`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub actor: Actor,
    /// `<object type>.<verb>`: `key.create`, `key.rotate`, `business.create`, …
    pub action: String,
    pub object: AuditObject,
    /// The businesses the object belongs to (members of these see the entry).
    pub businesses: Vec<String>,
    /// Plain settings of the change; never a secret.
    pub details: BTreeMap<String, serde_json::Value>,
}

impl Audit {
    pub fn new(actor: Actor, action: &str, object_type: &str, object_id: &str) -> Audit {
        Audit {
            actor,
            action: action.to_owned(),
            object: AuditObject { kind: object_type.to_owned(), id: object_id.to_owned() },
            businesses: Vec::new(),
            details: BTreeMap::new(),
        }
    }

    /// The object belongs to `business` (once per business).
    #[must_use]
    pub fn business(mut self, business: &str) -> Audit {
        if !self.businesses.iter().any(|b| b == business) {
            self.businesses.push(business.to_owned());
        }
        self
    }

    /// A plain setting of the change (never a secret).
    #[must_use]
    pub fn detail(mut self, name: &str, value: impl Into<serde_json::Value>) -> Audit {
        self.details.insert(name.to_owned(), value.into());
        self
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: u64,
    pub at: UnixTime,
    pub actor: Actor,
    pub action: String,
    pub object: AuditObject,
    #[serde(default)]
    pub businesses: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// Who is reading the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditViewer {
    /// Every entry.
    All,
    /// Entries of these businesses, and those the member made.
    Member { user_id: String, businesses: Vec<String> },
}

impl AuditViewer {
    fn sees(&self, record: &AuditRecord) -> bool {
        match self {
            AuditViewer::All => true,
            AuditViewer::Member { user_id, businesses } => {
                record.businesses.iter().any(|b| businesses.contains(b))
                    || (record.actor.kind == ActorKind::Member && record.actor.id.as_deref() == Some(user_id.as_str()))
            }
        }
    }
}

/// What to list: newest first, entries numbered below `before` (the cursor).
#[derive(Debug, Clone)]
pub struct AuditQuery {
    pub viewer: AuditViewer,
    pub since: Option<UnixTime>,
    pub until: Option<UnixTime>,
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    pub business: Option<String>,
    pub action: Option<String>,
    pub before: Option<u64>,
    pub limit: usize,
}

impl AuditQuery {
    pub fn new(viewer: AuditViewer) -> AuditQuery {
        AuditQuery {
            viewer,
            since: None,
            until: None,
            object_type: None,
            object_id: None,
            business: None,
            action: None,
            before: None,
            limit: 100,
        }
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        self.since.is_none_or(|s| r.at >= s)
            && self.until.is_none_or(|u| r.at <= u)
            && self.object_type.as_ref().is_none_or(|t| &r.object.kind == t)
            && self.object_id.as_ref().is_none_or(|i| &r.object.id == i)
            && self.business.as_ref().is_none_or(|b| r.businesses.contains(b))
            && self.action.as_ref().is_none_or(|a| &r.action == a)
            && self.viewer.sees(r)
    }
}

/// A page of entries, newest first; `next` is the cursor for older ones, if any may remain.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    pub next: Option<u64>,
}

/// An entry's key in `audit`: newest first.
fn entry_key(id: u64) -> [u8; 8] {
    be(u64::MAX - id)
}

fn index_prefix(business: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(business.len() + 9);
    k.extend_from_slice(business.as_bytes());
    k.push(0);
    k
}

fn index_key(business: &str, id: u64) -> Vec<u8> {
    let mut k = index_prefix(business);
    k.extend_from_slice(&entry_key(id));
    k
}

/// The entry number an `audit` key or an `audit_by_business` key ends with.
fn id_of(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    from_be(tail).map(|inverted| u64::MAX - inverted)
}

impl Tx<'_> {
    /// Records `audit` as the next entry, in this transaction; past `max_entries` the
    /// oldest goes.
    pub(super) fn audit(&self, audit: &Audit) -> TxResult<u64> {
        let head = self.meta.get_raw(META_AUDIT_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0);
        let id = head.saturating_add(1);
        let record = AuditRecord {
            id,
            at: self.now,
            actor: audit.actor.clone(),
            action: audit.action.clone(),
            object: audit.object.clone(),
            businesses: audit.businesses.clone(),
            details: audit.details.clone(),
        };
        self.audit.put(&entry_key(id), &record)?;
        for business in &record.businesses {
            self.audit_by_business.put_raw(&index_key(business, id), &[])?;
        }
        self.meta.put_raw(META_AUDIT_HEAD, &be(id))?;
        if id > self.audit_max_entries {
            self.remove_audit(id - self.audit_max_entries)?;
        }
        Ok(id)
    }

    /// Removes entry `id` (if stored) with its index entries.
    fn remove_audit(&self, id: u64) -> TxResult<()> {
        if let Some(old) = self.audit.get::<AuditRecord>(&entry_key(id))? {
            for business in &old.businesses {
                self.audit_by_business.remove(&index_key(business, id))?;
            }
            self.audit.remove(&entry_key(id))?;
        }
        let floor = self.meta.get_raw(META_AUDIT_FLOOR)?.and_then(|b| from_be(&b)).unwrap_or(1);
        if id >= floor {
            self.meta.put_raw(META_AUDIT_FLOOR, &be(id + 1))?;
        }
        Ok(())
    }
}

impl Store {
    /// A handle on this store whose writes record `audit`: each write made through it that
    /// changes something also stores the entry, in the same transaction (a write that
    /// changes nothing, or fails, records nothing).
    #[must_use]
    pub fn audited(&self, audit: Audit) -> Store {
        Store { inner: self.inner.clone(), audit: Some(std::sync::Arc::new(audit)) }
    }

    /// A page of the audit log, newest first (see [`AuditQuery`]). Reads at most
    /// [`AUDIT_SCAN_LIMIT`] entries: a page may be short and still have a `next`.
    pub fn audit_entries(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let t = self.trees();
        let limit = query.limit.clamp(1, AUDIT_MAX_PAGE);
        // The newest entry to read: just below the cursor.
        let start = match query.before {
            Some(0 | 1) => return Ok(AuditPage::default()),
            Some(before) => before - 1,
            None => u64::MAX - 1,
        };
        let mut page = AuditPage::default();
        let mut scanned = 0;
        // Why the scan stopped: `Some(true)` a full page (or the scan limit: older entries
        // may match), `Some(false)` past `since`, `None` the oldest entry reached.
        let mut stop = None;
        let mut visit = |record: AuditRecord, page: &mut AuditPage| -> Option<bool> {
            scanned += 1;
            if query.since.is_some_and(|since| record.at.saturating_add(CLOCK_SKEW_SECS) < since) {
                return Some(false);
            }
            let id = record.id;
            if query.matches(&record) {
                page.entries.push(record);
            }
            if page.entries.len() >= limit || scanned >= AUDIT_SCAN_LIMIT {
                page.next = Some(id);
                return Some(true);
            }
            None
        };
        match &query.business {
            Some(business) => {
                let mut from = index_prefix(business);
                from.extend_from_slice(&entry_key(start));
                let mut to = index_prefix(business);
                if let Some(sep) = to.last_mut() {
                    *sep = 1;
                }
                for item in t.audit_by_business.range((Bound::Included(from), Bound::Excluded(to))) {
                    let (key, _) = item?;
                    let Some(id) = id_of(&key) else { continue };
                    let Some(record) = t.audit.read::<AuditRecord>(entry_key(id))? else { continue };
                    stop = visit(record, &mut page);
                    if stop.is_some() {
                        break;
                    }
                }
            }
            None => {
                for item in t.audit.range((Bound::Included(entry_key(start).to_vec()), Bound::Unbounded)) {
                    let (_, bytes) = item?;
                    stop = visit(decode("audit", &bytes)?, &mut page);
                    if stop.is_some() {
                        break;
                    }
                }
            }
        }
        if stop != Some(true) {
            page.next = None;
        }
        Ok(page)
    }

    /// The number of the newest audit entry (0 before the first).
    pub fn audit_head(&self) -> Result<u64, StoreError> {
        Ok(self.trees().meta.get(META_AUDIT_HEAD)?.and_then(|b| from_be(&b)).unwrap_or(0))
    }

    /// Removes audit entries past the retention (older than `max_age_secs` at `now`, or
    /// beyond the newest `audit_max_entries`), oldest first, at most `batch`.
    pub(super) fn sweep_audit(&self, now: UnixTime, batch: usize) -> Result<(usize, Option<Ticket>), StoreError> {
        let t = self.trees();
        let head = self.audit_head()?;
        let floor = t.meta.get(META_AUDIT_FLOOR)?.and_then(|b| from_be(&b)).unwrap_or(1);
        let keep_from = head.saturating_sub(self.inner.audit_max_entries).saturating_add(1);
        // 0: no age limit.
        let oldest_kept = match self.inner.audit_max_age_secs {
            0 => 0,
            age => now.saturating_sub(age),
        };
        let mut doomed = Vec::new();
        let mut id = floor;
        while id <= head && doomed.len() < batch {
            match t.audit.read::<AuditRecord>(entry_key(id))? {
                Some(record) if id >= keep_from && record.at >= oldest_kept => break,
                _ => doomed.push(id),
            }
            id += 1;
        }
        if doomed.is_empty() {
            return Ok((0, None));
        }
        let (n, ticket) = self.write(|tx| {
            for id in &doomed {
                tx.remove_audit(*id)?;
            }
            Ok(doomed.len())
        })?;
        Ok((n, Some(ticket)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::testing::{add_business, key, open};
    use crate::store::StoreOptions;
    use keygate_core::KeyHash;

    fn ip() -> IpAddr {
        IpAddr::from([192, 0, 2, 7])
    }

    fn all(store: &Store) -> Vec<AuditRecord> {
        store.audit_entries(&AuditQuery { limit: AUDIT_MAX_PAGE, ..AuditQuery::new(AuditViewer::All) }).unwrap().entries
    }

    #[test]
    fn an_entry_is_written_with_the_change_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        add_business(&store, "biz_a");
        assert!(all(&store).is_empty(), "a write through an unaudited handle records nothing");
        let audited = store.audited(Audit::new(Actor::member("usr_1", ip()), "key.create", "key", "key_1").business("biz_a"));
        let _ = audited.create_key(&key("key_1", "biz_a", 1)).unwrap();
        // A refused write records nothing.
        assert!(audited.create_key(&key("key_1", "biz_a", 2)).is_err());
        let deactivate = store.audited(Audit::new(Actor::operator(ip()), "key.deactivate", "key", "key_1").business("biz_a"));
        let _ = deactivate.set_key_active("key_1", false).unwrap();
        // Unchanged: nothing written, nothing recorded.
        let _ = deactivate.set_key_active("key_1", false).unwrap();
        let entries = all(&store);
        assert_eq!(entries.iter().map(|e| (e.id, e.action.as_str())).collect::<Vec<_>>(), vec![(2, "key.deactivate"), (1, "key.create")]);
        assert_eq!(entries[1].actor, Actor { kind: ActorKind::Member, id: Some("usr_1".into()), address: Some("192.0.2.7".into()) });
        assert_eq!(entries[1].businesses, vec!["biz_a".to_owned()]);
    }

    #[test]
    fn filters_cursor_viewer_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { cache_capacity_bytes: 1 << 20, audit_max_entries: 5, ..StoreOptions::default() };
        let store = Store::open(dir.path(), &options).unwrap();
        for b in ["biz_a", "biz_b"] {
            add_business(&store, b);
        }
        for i in 0..8u8 {
            let (biz, id) = (if i % 2 == 0 { "biz_a" } else { "biz_b" }, format!("key_{i}"));
            let actor = if i == 1 { Actor::member("usr_me", ip()) } else { Actor::operator(ip()) };
            let audit = Audit::new(actor, "key.create", "key", &id).business(biz).detail("i", i);
            let _ = store.audited(audit).create_key(&key(&id, biz, i + 1)).unwrap();
        }
        // Only the newest 5 are kept (4..=8), index included.
        let ids: Vec<u64> = all(&store).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![8, 7, 6, 5, 4]);
        let q = |f: &dyn Fn(&mut AuditQuery)| {
            let mut q = AuditQuery::new(AuditViewer::All);
            f(&mut q);
            store.audit_entries(&q).unwrap()
        };
        let page = q(&|q| q.business = Some("biz_a".into()));
        assert_eq!(page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![7, 5]);
        assert_eq!(page.next, None);
        let page = q(&|q| q.limit = 2);
        assert_eq!((page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), page.next), (vec![8, 7], Some(7)));
        let page = q(&|q| {
            q.limit = 2;
            q.before = Some(7);
        });
        assert_eq!((page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), page.next), (vec![6, 5], Some(5)));
        let page = q(&|q| {
            q.business = Some("biz_b".into());
            q.before = Some(6);
        });
        assert_eq!(page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4]);
        let page = q(&|q| {
            q.object_type = Some("key".into());
            q.object_id = Some("key_6".into());
        });
        assert_eq!(page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![7]);
        let page = q(&|q| q.until = Some(0));
        assert!(page.entries.is_empty());
        let page = q(&|q| q.since = Some(crate::clock::now() + 3600));
        assert!(page.entries.is_empty() && page.next.is_none());
        // A member sees their businesses' entries (and their own actions).
        let member = |businesses: &[&str]| {
            let viewer = AuditViewer::Member { user_id: "usr_me".into(), businesses: businesses.iter().map(|b| (*b).to_owned()).collect() };
            store.audit_entries(&AuditQuery::new(viewer)).unwrap().entries.iter().map(|e| e.id).collect::<Vec<_>>()
        };
        assert_eq!(member(&["biz_b"]), vec![8, 6, 4]);
        assert_eq!(member(&[]), Vec::<u64>::new());
        // Age: everything is older than 0 s at a later `now`.
        let (n, _) = store.sweep_audit(crate::clock::now() + 91 * 86_400, 3).unwrap();
        assert_eq!(n, 3);
        assert_eq!(all(&store).iter().map(|e| e.id).collect::<Vec<_>>(), vec![8, 7]);
        assert!(
            store.audit_entries(&AuditQuery { business: Some("biz_a".into()), ..AuditQuery::new(AuditViewer::All) }).unwrap().entries.len()
                == 1
        );
        let _ = KeyHash([0; 32]);
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 100);
            add_business(&store, "biz_a");
            let audited = store.audited(Audit::new(Actor::operator(ip()), "key.create", "key", "key_1").business("biz_a"));
            let _ = audited.create_key(&key("key_1", "biz_a", 1)).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = open(dir.path(), 100);
        assert_eq!(all(&store).len(), 1);
        // Numbering goes on after a reopen.
        let audited = store.audited(Audit::new(Actor::operator(ip()), "key.create", "key", "key_2").business("biz_a"));
        let _ = audited.create_key(&key("key_2", "biz_a", 2)).unwrap();
        assert_eq!(store.audit_head().unwrap(), 2);
    }
}
