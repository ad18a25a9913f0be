//! Sessions: sign-in and refresh (with reuse detection), API-key sessions with the
//! per-owner cap, and revocation.

use keygate_core::revoked;
use keygate_core::snapshot::RevokedSession;
use keygate_core::UnixTime;

use super::tx::{abort, be, from_be, Tx, TxResult};
use super::{Change, IssuedToken, OwnedSession, Session, SessionOwner, Store, StoreError, Ticket};

pub(super) fn key_session_index(key_id: &str, client_session: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + 1 + client_session.len());
    k.extend_from_slice(key_id.as_bytes());
    k.push(0);
    k.extend_from_slice(client_session.as_bytes());
    k
}

/// A `revoked_by_digest` value: until (8 bytes, big-endian), then the session id.
pub(super) fn digest_entry(sid: &str, until: UnixTime) -> Vec<u8> {
    let mut out = be(until).to_vec();
    out.extend_from_slice(sid.as_bytes());
    out
}

pub(super) fn owner_key(owner: &SessionOwner) -> Vec<u8> {
    match owner {
        SessionOwner::Key { key_id, .. } => format!("k:{key_id}").into_bytes(),
        SessionOwner::User { user_id } => format!("u:{user_id}").into_bytes(),
    }
}

/// Whether a session can still hand out or refresh a token at `now`.
pub(super) fn session_alive(session: &Session, now: UnixTime) -> bool {
    session.revoked_at.is_none()
        && match session.owner {
            SessionOwner::Key { .. } => session.last_exp > now,
            SessionOwner::User { .. } => session.refresh_expires_at.unwrap_or(session.last_exp).max(session.last_exp) > now,
        }
}

/// What a refresh attempt came to.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The session with its new token and refresh-token hash.
    Refreshed(Box<Session>),
    /// A spent refresh token was presented again: the session is now revoked.
    Reused(Option<RevokedSession>),
    /// Unknown, expired, or its session revoked.
    Invalid,
}

impl Tx<'_> {
    /// Records that `sid` is revoked until `until`.
    pub(super) fn put_revocation(&self, sid: &str, until: UnixTime) -> TxResult<()> {
        self.revoked_by_digest.put_raw(&revoked::digest(sid).0, &digest_entry(sid, until))?;
        self.revocations.put_raw(sid.as_bytes(), &be(until))
    }

    pub(super) fn remove_revocation(&self, sid: &[u8]) -> TxResult<()> {
        self.revoked_by_digest.remove(&revoked::digest(&String::from_utf8_lossy(sid)).0)?;
        self.revocations.remove(sid)
    }

    /// Revokes `session` (idempotent): a revocation entry until its last token's expiry
    /// plus `leeway`, the (key, client session) index dropped, and a changelog entry.
    pub(super) fn revoke(&self, mut session: Session, leeway: u64) -> TxResult<RevokedSession> {
        let sid = session.id.clone();
        if session.revoked_at.is_some() {
            let until = self.revocations.get_raw(sid.as_bytes())?.and_then(|b| from_be(&b)).unwrap_or(self.now);
            return Ok(RevokedSession { sid, until });
        }
        let until = session.last_exp.max(self.now).saturating_add(leeway);
        session.revoked_at = Some(self.now);
        self.sessions.put(sid.as_bytes(), &session)?;
        self.put_revocation(&sid, until)?;
        if let SessionOwner::Key { key_id, client_session } = &session.owner {
            // The next login for this pair opens a new session.
            let index = key_session_index(key_id, client_session);
            if self.key_sessions.get_raw(&index)?.as_deref() == Some(sid.as_bytes()) {
                self.key_sessions.remove(&index)?;
            }
        }
        let revoked = RevokedSession { sid, until };
        self.append(Change::SessionRevoked { session: revoked.clone() })?;
        Ok(revoked)
    }

    /// The live sessions in an owner's list, oldest first (dead ones pruned).
    pub(super) fn live_owned(&self, owner: &[u8]) -> TxResult<Vec<(OwnedSession, Session)>> {
        let list: Vec<OwnedSession> = self.owner_sessions.get(owner)?.unwrap_or_default();
        let mut live = Vec::with_capacity(list.len());
        for entry in list {
            if let Some(session) = self.sessions.get::<Session>(entry.sid.as_bytes())? {
                if session_alive(&session, self.now) {
                    live.push((entry, session));
                }
            }
        }
        live.sort_by_key(|(o, _)| o.created_at);
        Ok(live)
    }

    /// Adds a new session to its owner's list; at `cap` live sessions the oldest are
    /// revoked (changelog) to make room. With a `client` (API-key logins) only that
    /// client's own sessions (or ones stored without a client) may go: one client
    /// cannot end another's session by logging in. If none may, the write is refused with
    /// the time until the first of the others expires.
    pub(super) fn register(&self, session: &Session, client: Option<&str>, cap: usize, leeway: u64) -> TxResult<Vec<RevokedSession>> {
        let owner = owner_key(&session.owner);
        let mut live = self.live_owned(&owner)?;
        let mut evicted = Vec::new();
        while live.len() >= cap.max(1) {
            let displaceable = match client {
                None => Some(0),
                Some(client) => live.iter().position(|(o, _)| o.client.as_deref().is_none_or(|c| c == client)),
            };
            let Some(at) = displaceable else {
                let first_expiry = live.iter().map(|(_, s)| s.last_exp).min().unwrap_or(self.now);
                return abort(StoreError::SessionLimit { retry_after_secs: first_expiry.saturating_sub(self.now).max(1) });
            };
            let (_, oldest) = live.remove(at);
            evicted.push(self.revoke(oldest, leeway)?);
        }
        let mut list: Vec<OwnedSession> = live.into_iter().map(|(o, _)| o).collect();
        list.push(OwnedSession { sid: session.id.clone(), created_at: session.created_at, client: client.map(str::to_owned) });
        self.owner_sessions.put(&owner, &list)?;
        Ok(evicted)
    }

    /// Deletes a dead session and its indexes.
    pub(super) fn delete_session(&self, session: &Session) -> TxResult<()> {
        let sid = session.id.as_bytes();
        self.sessions.remove(sid)?;
        if let SessionOwner::Key { key_id, client_session } = &session.owner {
            let index = key_session_index(key_id, client_session);
            if self.key_sessions.get_raw(&index)?.as_deref() == Some(sid) {
                self.key_sessions.remove(&index)?;
            }
        }
        if let Some(hash) = session.refresh_sha256.as_deref().and_then(crate::digest::unhex::<32>) {
            if self.refresh_tokens.get_raw(&hash)?.as_deref() == Some(sid) {
                self.refresh_tokens.remove(&hash)?;
            }
        }
        let owner = owner_key(&session.owner);
        if let Some(mut list) = self.owner_sessions.get::<Vec<OwnedSession>>(&owner)? {
            list.retain(|o| o.sid != session.id);
            if list.is_empty() {
                self.owner_sessions.remove(&owner)?;
            } else {
                self.owner_sessions.put(&owner, &list)?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Stores a sign-in session and the index from its refresh-token hash. At `cap` live
    /// sessions of the user, the oldest are revoked (returned).
    pub fn create_signin_session(
        &self,
        session: &Session,
        refresh_sha256: &[u8; 32],
        cap: usize,
        leeway: u64,
    ) -> Result<(Vec<RevokedSession>, Ticket), StoreError> {
        self.write(|tx| {
            if tx.sessions.contains(session.id.as_bytes())? || tx.refresh_tokens.contains(refresh_sha256)? {
                return abort(StoreError::Collision);
            }
            let evicted = tx.register(session, None, cap, leeway)?;
            tx.sessions.put(session.id.as_bytes(), session)?;
            tx.refresh_tokens.put_raw(refresh_sha256, session.id.as_bytes())?;
            Ok(evicted)
        })
    }

    /// The session a refresh token (current or spent) belongs to.
    pub fn refresh_session_id(&self, refresh_sha256: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let t = self.trees();
        let found = match t.refresh_tokens.get(refresh_sha256)? {
            Some(sid) => Some(sid),
            None => t.spent_refresh.get(refresh_sha256)?,
        };
        Ok(found.map(|sid| String::from_utf8_lossy(&sid).into_owned()))
    }

    /// Rotates a sign-in session's refresh token: `old` is spent, `new` takes its place,
    /// `issued` becomes the current access token, and the refresh window runs until
    /// `issued.exp + refresh_ttl`. A spent `old` revokes the session (theft detection).
    pub fn refresh(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        issued: &IssuedToken,
        refresh_ttl: u64,
        leeway: u64,
    ) -> Result<(RefreshOutcome, Ticket), StoreError> {
        self.write(|tx| {
            if let Some(sid) = tx.spent_refresh.get_raw(old)? {
                let revoked = match tx.sessions.get::<Session>(&sid)? {
                    Some(session) => Some(tx.revoke(session, leeway)?),
                    None => None,
                };
                return Ok(RefreshOutcome::Reused(revoked));
            }
            let Some(sid) = tx.refresh_tokens.get_raw(old)? else { return Ok(RefreshOutcome::Invalid) };
            let Some(mut session) = tx.sessions.get::<Session>(&sid)? else { return Ok(RefreshOutcome::Invalid) };
            let current = session.refresh_sha256.as_deref().and_then(crate::digest::unhex::<32>);
            let window_open = session.refresh_expires_at.is_some_and(|at| at > tx.now);
            if session.revoked_at.is_some() || current.as_ref() != Some(old) || !window_open || issued.claims.sid != session.id {
                return Ok(RefreshOutcome::Invalid);
            }
            if tx.refresh_tokens.contains(new)? {
                return abort(StoreError::Collision);
            }
            tx.refresh_tokens.remove(old)?;
            tx.spent_refresh.put_raw(old, &sid)?;
            tx.refresh_tokens.put_raw(new, &sid)?;
            session.refresh_sha256 = Some(crate::digest::hex(new));
            session.last_exp = session.last_exp.max(issued.claims.exp);
            session.refresh_expires_at = Some(issued.claims.exp.saturating_add(refresh_ttl));
            session.current = Some(issued.clone());
            tx.sessions.put(&sid, &session)?;
            Ok(RefreshOutcome::Refreshed(Box::new(session)))
        })
    }

    /// The live session of (key, client session) if its current token may be handed out
    /// again: a read, no write, so the common "same key, same session" login needs no
    /// transaction. What it read may have been written by a concurrent request and not be
    /// on disk yet: the ticket covers it (wait for it before handing the token out; it is
    /// usually durable already).
    pub fn reusable_key_session(
        &self,
        key_id: &str,
        client_session: &str,
        reusable: impl Fn(&IssuedToken) -> bool,
    ) -> Result<Option<(Session, Ticket)>, StoreError> {
        let t = self.trees();
        let Some(sid) = t.key_sessions.get(key_session_index(key_id, client_session))? else { return Ok(None) };
        let session: Option<Session> = t.sessions.read(&sid)?;
        let Some(session) = session.filter(|s| s.revoked_at.is_none() && s.current.as_ref().is_some_and(&reusable)) else {
            return Ok(None);
        };
        Ok(Some((session, self.read_ticket())))
    }

    /// The session behind an API-key login for (`key_id`, `client_session`), with the
    /// token it hands out. A live session whose current token `reusable` accepts is
    /// returned untouched (the caller re-signs the same claims: the same token); otherwise
    /// `fresh` becomes its current token. Without a live session, `candidate` (whose
    /// `current` is `fresh`) is stored and indexed. Claims' `sid` always names the session.
    /// A new session counts against the key's `cap` live sessions; at the cap the oldest
    /// of `client`'s own (the caller's address as [`crate::throttle::client_net`] gives
    /// it) is revoked, and with none of its own the write is refused
    /// ([`StoreError::SessionLimit`]).
    #[allow(clippy::too_many_arguments)]
    pub fn key_session_token(
        &self,
        key_id: &str,
        client_session: &str,
        client: &str,
        candidate: &Session,
        reusable: impl Fn(&IssuedToken) -> bool,
        cap: usize,
        leeway: u64,
    ) -> Result<(Session, Ticket), StoreError> {
        let index = key_session_index(key_id, client_session);
        self.write(|tx| {
            let existing = match tx.key_sessions.get_raw(&index)? {
                Some(sid) => tx.sessions.get::<Session>(&sid)?,
                None => None,
            };
            if let Some(mut session) = existing.filter(|s| s.revoked_at.is_none()) {
                if session.current.as_ref().is_some_and(&reusable) {
                    return Ok(session);
                }
                let mut issued = candidate.current.clone();
                if let Some(issued) = issued.as_mut() {
                    issued.claims.sid = session.id.clone();
                    session.last_exp = session.last_exp.max(issued.claims.exp);
                }
                session.current = issued;
                // An expired session coming back to life counts against the cap again
                // (a newer registration may have pruned it from the key's list).
                let listed: Vec<OwnedSession> = tx.owner_sessions.get(&owner_key(&session.owner))?.unwrap_or_default();
                if !listed.iter().any(|o| o.sid == session.id) {
                    let _evicted = tx.register(&session, Some(client), cap, leeway)?;
                }
                tx.sessions.put(session.id.as_bytes(), &session)?;
                return Ok(session);
            }
            if tx.sessions.contains(candidate.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            let _evicted = tx.register(candidate, Some(client), cap, leeway)?;
            tx.sessions.put(candidate.id.as_bytes(), candidate)?;
            tx.key_sessions.put_raw(&index, candidate.id.as_bytes())?;
            Ok(candidate.clone())
        })
    }

    pub fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.trees().sessions.read(id.as_bytes())
    }

    /// A user's live sign-in sessions (unrevoked, still refreshable), oldest first.
    pub fn live_user_sessions(&self, user_id: &str, now: UnixTime) -> Result<Vec<Session>, StoreError> {
        let t = self.trees();
        let owner = owner_key(&SessionOwner::User { user_id: user_id.to_owned() });
        let list: Vec<OwnedSession> = t.owner_sessions.read(&owner)?.unwrap_or_default();
        let mut live = Vec::with_capacity(list.len());
        for entry in list {
            if let Some(session) = self.session(&entry.sid)? {
                if session_alive(&session, now) {
                    live.push(session);
                }
            }
        }
        live.sort_by_key(|s| s.created_at);
        Ok(live)
    }

    /// When the session is revoked and still matters (`until` in the future), that time.
    pub fn revoked_until(&self, sid: &str) -> Result<Option<UnixTime>, StoreError> {
        Ok(self.trees().revocations.get(sid.as_bytes())?.and_then(|b| from_be(&b)))
    }

    /// Revokes a session: its tokens fail everywhere until `until` (its last token's
    /// expiry plus `leeway`), after which none can be valid anyway. Idempotent.
    pub fn revoke_session(&self, sid: &str, leeway: u64) -> Result<(RevokedSession, Ticket), StoreError> {
        self.write(|tx| {
            let Some(session) = tx.sessions.get::<Session>(sid.as_bytes())? else {
                return abort(StoreError::UnknownSession);
            };
            tx.revoke(session, leeway)
        })
    }
}
