//! Housekeeping: removing what can no longer matter.

use keygate_core::UnixTime;

use super::sessions::session_alive;
use super::tx::{decode, from_be};
use super::{Change, GraceHash, Key, Session, Store, StoreError, Ticket};

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub sessions: usize,
    pub revocations: usize,
    pub grace_hashes: usize,
    pub signing_keys: usize,
    pub spent_refresh: usize,
    /// Audit log entries past their retention.
    pub audit: usize,
}

impl Store {
    /// Removes what can no longer matter at `now`: dead sessions (revoked ones once
    /// their revocation lapsed; others once no token or refresh is possible) with their
    /// indexes, lapsed revocations, spent refresh tokens of deleted sessions, rotated-away
    /// key hashes past their grace (changelog `KeyRemoved`), and retired signing keys past
    /// `remove_after` (changelog `SigningKeyRemoved`), and audit entries past their retention.
    /// Bounded work per call.
    pub fn sweep(&self, now: UnixTime, leeway: u64) -> Result<(SweepReport, Option<Ticket>), StoreError> {
        const BATCH: usize = 512;
        let t = self.trees();
        let mut report = SweepReport::default();
        let mut last = None;

        let mut lapsed = Vec::new();
        for item in t.revocations.iter() {
            let (sid, until) = item?;
            if from_be(&until).unwrap_or(0) <= now {
                lapsed.push(sid);
            }
            if lapsed.len() >= BATCH {
                break;
            }
        }
        let mut dead = Vec::new();
        for item in t.sessions.iter() {
            let (_, bytes) = item?;
            let session: Session = decode("sessions", &bytes)?;
            let gone = match session.revoked_at {
                Some(_) => {
                    let until = t.revocations.get(session.id.as_bytes())?.and_then(|b| from_be(&b)).unwrap_or(0);
                    until <= now
                }
                None => !session_alive(&session, now) && session.last_exp.saturating_add(leeway) <= now,
            };
            if gone {
                dead.push(session);
            }
            if dead.len() >= BATCH {
                break;
            }
        }
        if !lapsed.is_empty() || !dead.is_empty() {
            let (n, ticket) = self.write(|tx| {
                let mut n = (0, 0);
                for sid in &lapsed {
                    if tx.revocations.get_raw(sid)?.and_then(|b| from_be(&b)).is_some_and(|u| u <= now) {
                        tx.remove_revocation(sid)?;
                        n.0 += 1;
                    }
                }
                for session in &dead {
                    if tx.sessions.contains(session.id.as_bytes())? {
                        tx.delete_session(session)?;
                        if tx.revocations.contains(session.id.as_bytes())? {
                            tx.remove_revocation(session.id.as_bytes())?;
                            n.0 += 1;
                        }
                        n.1 += 1;
                    }
                }
                Ok(n)
            })?;
            report.revocations = n.0;
            report.sessions = n.1;
            last = Some(ticket);
        }

        let mut orphans = Vec::new();
        for item in t.spent_refresh.iter() {
            let (hash, sid) = item?;
            if !t.sessions.contains_key(&sid)? {
                orphans.push(hash);
            }
            if orphans.len() >= BATCH {
                break;
            }
        }
        if !orphans.is_empty() {
            let (n, ticket) = self.write(|tx| {
                for hash in &orphans {
                    tx.spent_refresh.remove(hash)?;
                }
                Ok(orphans.len())
            })?;
            report.spent_refresh = n;
            last = Some(ticket);
        }

        let mut graced = Vec::new();
        for item in t.keys.iter() {
            let (id, bytes) = item?;
            let key: Key = decode("keys", &bytes)?;
            if key.grace.iter().any(|g| g.until <= now) {
                graced.push(id);
            }
            if graced.len() >= BATCH {
                break;
            }
        }
        if !graced.is_empty() {
            let (n, ticket) = self.write(|tx| {
                let mut n = 0;
                for id in &graced {
                    let Some(mut key) = tx.keys.get::<Key>(id)? else { continue };
                    let (over, keep): (Vec<GraceHash>, Vec<GraceHash>) = key.grace.into_iter().partition(|g| g.until <= now);
                    key.grace = keep;
                    for g in over {
                        if tx.key_hashes.get_raw(&g.hash.0)?.as_deref() == Some(&id[..]) {
                            tx.key_hashes.remove(&g.hash.0)?;
                        }
                        tx.append(Change::KeyRemoved { hash: g.hash })?;
                        n += 1;
                    }
                    tx.keys.put(id, &key)?;
                }
                Ok(n)
            })?;
            report.grace_hashes = n;
            last = Some(ticket);
        }

        let withdrawn: Vec<String> =
            self.signing_keys()?.into_iter().filter(|k| k.remove_after.is_some_and(|at| at <= now)).map(|k| k.kid).collect();
        if !withdrawn.is_empty() {
            let (n, ticket) = self.write(|tx| {
                let mut n = 0;
                for kid in &withdrawn {
                    if tx.signing_keys.contains(kid.as_bytes())? {
                        tx.signing_keys.remove(kid.as_bytes())?;
                        tx.append(Change::SigningKeyRemoved { kid: kid.clone() })?;
                        n += 1;
                    }
                }
                Ok(n)
            })?;
            report.signing_keys = n;
            last = Some(ticket);
        }

        let (n, ticket) = self.sweep_audit(now, BATCH)?;
        report.audit = n;
        last = ticket.or(last);
        Ok((report, last))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::clock::now;
    use crate::store::testing::{key, with_business};

    use keygate_core::KeyHash;

    #[test]
    fn rotation_grace_ends_with_a_sweep_that_removes_the_old_hash() {
        let (_dir, store) = with_business(100);
        let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let (rotated, revoked, t) = store.rotate_key("key_1", KeyHash([2; 32]), "sk_test_efgh", 1, 0).unwrap();
        assert!(revoked.is_empty());
        assert_eq!(rotated.grace.len(), 1);
        let now = now();
        assert!(rotated.accepts(&KeyHash([1; 32]), now) && rotated.accepts(&KeyHash([2; 32]), now));
        assert_eq!(store.full_snapshot(now).unwrap().keys.len(), 2, "both raw keys in the feed during the grace");
        let (report, _) = store.sweep(now + 2, 0).unwrap();
        assert_eq!(report.grace_hashes, 1);
        assert!(store.key_by_hash(&KeyHash([1; 32])).unwrap().is_none());
        let delta = store.delta(t.version, t.version + 1, now + 2).unwrap();
        assert_eq!(delta.removed_keys, vec![KeyHash([1; 32])]);
        assert_eq!(store.full_snapshot(now + 2).unwrap().keys.len(), 1);
    }
}
