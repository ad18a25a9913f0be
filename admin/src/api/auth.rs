//! Sign-in, refresh and logout of members, and API-key login.

use std::net::IpAddr;
use std::sync::Arc;

use keygate_core::UnixTime;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{business_views, durable_write, normalize_email, ok_json, BusinessView, SessionRevoked};
use crate::digest;
use crate::error::AdminError;
use crate::random;
use crate::state::AppState;
use crate::store::{now, IssuedToken, RefreshOutcome, Session, SessionOwner, User};
use crate::tokens::Grant;

pub const MAX_SESSION_ID_CHARS: usize = 128;
const DEFAULT_CLIENT_SESSION: &str = "default";

fn valid_client_session(id: &str) -> bool {
    (1..=MAX_SESSION_ID_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    email: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignInResponse {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
    token_type: &'static str,
    businesses: Vec<BusinessView>,
}

/// The sign-in answer for `user`'s session: its access token, refresh token and businesses.
fn signin_response(state: &AppState, user: &User, issued: &IssuedToken, refresh: String, now: UnixTime) -> Result<Response, AdminError> {
    let access_token = state.tokens().sign(issued)?;
    let businesses = business_views(state, &user.businesses)?;
    ok_json(
        StatusCode::OK,
        &SignInResponse {
            access_token,
            refresh_token: refresh,
            expires_in: issued.claims.exp.saturating_sub(now),
            token_type: "Bearer",
            businesses,
        },
    )
}

#[utoipa::path(post, path = "/auth/signin", tag = "auth", summary = "Sign a member in with email and password", request_body = SignIn,
    responses(
        (status = 200, description = "Signed in", body = SignInResponse)
    )
)]
pub async fn signin(state: AppState, client: IpAddr, body: SignIn) -> Result<Response, AdminError> {
    let email = normalize_email(&body.email);
    // Throttled before any password work: a blocked guesser costs no argon2 run. The
    // attempt counts as a failure from here until its password proves right, so guesses
    // sent in parallel are throttled as if each had already failed.
    let throttle_email: String = email.chars().take(254).collect();
    let attempt =
        state.throttle().begin(client, &throttle_email).map_err(|retry_after_secs| AdminError::RateLimited { retry_after_secs })?;
    let user = if email.len() <= 254 { state.store().user_by_email(&email)? } else { None };
    let phc = user.as_ref().map(|u| u.password_phc.clone());
    // An unknown email is checked against a dummy hash: same time, same answer.
    let matches = match state.passwords().verify(body.password, phc).await {
        Ok(matches) => matches,
        Err(e) => {
            // Nothing was checked (e.g. the argon2 queue is full): not a failed guess.
            attempt.abandon();
            return Err(e);
        }
    };
    let user = match user {
        Some(user) if matches => user,
        // Dropping the attempt records the failure.
        _ => return Err(AdminError::InvalidCredentials),
    };
    attempt.succeeded();
    let now = now();
    let ttl = state.config().token_ttl_secs;
    let sid = random::id("ses_")?;
    let refresh = random::secret("rt_")?;
    let refresh_hash = digest::sha256(&refresh);
    let grant = Grant { sub: user.id.clone(), sid: sid.clone(), businesses: user.businesses.clone(), mode: None, scope: String::new() };
    let issued = state.tokens().claims(grant, now, now.saturating_add(ttl))?;
    let session = Session {
        id: sid,
        owner: SessionOwner::User { user_id: user.id.clone() },
        created_at: now,
        refresh_sha256: Some(digest::hex(&refresh_hash)),
        // Refreshable until the access token's expiry plus the grace (default 30 days).
        refresh_expires_at: Some(issued.claims.exp.saturating_add(state.config().refresh_ttl_secs)),
        last_exp: issued.claims.exp,
        current: Some(issued.clone()),
        revoked_at: None,
    };
    let (cap, leeway) = (state.config().max_sessions_per_user, state.config().token_leeway_secs);
    let evicted = durable_write(state.store(), move |s| s.create_signin_session(&session, &refresh_hash, cap, leeway)).await?;
    for old in &evicted {
        tracing::info!(user = %user.id, session = %old.sid, "oldest session revoked: the account is at its session cap");
    }
    tracing::info!(user = %user.id, session = %issued.claims.sid, "signed in");
    signin_response(&state, &user, &issued, refresh, now)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    refresh_token: String,
}

#[utoipa::path(post, path = "/auth/refresh", tag = "auth", summary = "Trade a refresh token for new tokens (the old refresh token is spent)", request_body = Refresh,
    responses(
        (status = 200, description = "New tokens", body = SignInResponse)
    )
)]
pub async fn refresh(state: AppState, body: Refresh) -> Result<Response, AdminError> {
    let text = body.refresh_token;
    if !text.starts_with("rt_") || text.len() > 128 {
        return Err(AdminError::InvalidRefreshToken);
    }
    let old = digest::sha256(&text);
    let sid = state.store().refresh_session_id(&old)?.ok_or(AdminError::InvalidRefreshToken)?;
    let session = state.store().session(&sid)?.ok_or(AdminError::InvalidRefreshToken)?;
    let SessionOwner::User { user_id } = &session.owner else {
        return Err(AdminError::InvalidRefreshToken);
    };
    let user = state.store().user(user_id)?.ok_or(AdminError::InvalidRefreshToken)?;
    let now = now();
    let ttl = state.config().token_ttl_secs;
    let grant = Grant { sub: user.id.clone(), sid: sid.clone(), businesses: user.businesses.clone(), mode: None, scope: String::new() };
    let issued = state.tokens().claims(grant, now, now.saturating_add(ttl))?;
    let refresh = random::secret("rt_")?;
    let new = digest::sha256(&refresh);
    let (refresh_ttl, leeway) = (state.config().refresh_ttl_secs, state.config().token_leeway_secs);
    let record = issued.clone();
    let outcome = durable_write(state.store(), move |s| s.refresh(&old, &new, &record, refresh_ttl, leeway)).await?;
    match outcome {
        RefreshOutcome::Refreshed(_) => {
            tracing::info!(user = %user.id, session = %sid, "refreshed");
            signin_response(&state, &user, &issued, refresh, now)
        }
        RefreshOutcome::Reused(revoked) => {
            tracing::warn!(user = %user.id, session = %sid, revoked = revoked.is_some(), "a spent refresh token was presented again; session revoked");
            Err(AdminError::InvalidRefreshToken)
        }
        RefreshOutcome::Invalid => Err(AdminError::InvalidRefreshToken),
    }
}

/// Revokes the session of the bearer token (a sign-in or an API-key login token).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", summary = "Revoke the session of the bearer token", security(("member" = []), ("operator" = [])),
    responses(
        (status = 200, description = "Revoked", body = SessionRevoked)
    )
)]
pub async fn logout(state: AppState, header: Option<String>) -> Result<Response, AdminError> {
    let token = crate::auth::bearer(header.as_deref()).ok_or(AdminError::Unauthorized)?;
    let claims = state.tokens().verify(token, now()).map_err(|_| AdminError::Unauthorized)?;
    if state.store().session(&claims.sid)?.is_none() {
        return Err(AdminError::Unauthorized);
    }
    let leeway = state.config().token_leeway_secs;
    let sid = claims.sid.clone();
    let revoked = durable_write(state.store(), move |s| s.revoke_session(&sid, leeway)).await?;
    tracing::info!(session = %revoked.sid, "logged out");
    ok_json(StatusCode::OK, &SessionRevoked { sid: revoked.sid, revoked: true, until: revoked.until })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The raw API key (`sk_live_…`, …).
    api_key: String,
    /// The caller's own session name; the same key and session get the same token back.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    session_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    access_token: String,
    expires_in: u64,
    token_type: &'static str,
    session_id: String,
}

#[utoipa::path(post, path = "/auth/login", tag = "auth", summary = "Log an API key in: an access token for the key and a client session", request_body = Login,
    responses(
        (status = 200, description = "An access token (the same one again for the same key and session while it is valid)", body = LoginResponse)
    )
)]
pub async fn login(state: AppState, client: IpAddr, body: Login) -> Result<Response, AdminError> {
    let client_session = match body.session_id {
        Some(id) if valid_client_session(&id) => id,
        Some(_) => {
            return Err(AdminError::InvalidRequest(format!(
                "session_id must be 1 to {MAX_SESSION_ID_CHARS} characters of A-Z a-z 0-9 . _ : -"
            )))
        }
        None => DEFAULT_CLIENT_SESSION.to_owned(),
    };
    let now = now();
    // The filter's rules: keygate's format is checksum-checked first; an imported key in
    // another format is found by its hash (see `keygate_core::key::classify`).
    let api_key = keygate_core::key::classify(&body.api_key).map_err(|_| AdminError::InvalidApiKey)?;
    let hash = api_key.hash();
    // Read before anything else the answer rests on (see `login_cache`): while it reads
    // the same, the key and the session read below are still what the store holds.
    let generation = state.store().change_generation()?;
    let cache = state.login_cache();
    if let Some(hit) = generation.as_ref().and_then(|g| cache.hit(&hash, &client_session, g, now, state.tokens())) {
        return login_response(&hit.token, hit.exp.saturating_sub(now), client_session);
    }
    let key = state.store().key_by_hash(&hash)?.filter(|k| k.accepts(&hash, now)).ok_or(AdminError::InvalidApiKey)?;
    let key = Arc::new(key);
    // The token for `issued`, signed at most once, kept for the next login of this pair.
    let signed = |issued: IssuedToken| -> Result<Arc<str>, AdminError> {
        let token = match cache.signed(&hash, &client_session, &issued) {
            Some(token) => token,
            None => Arc::from(state.tokens().sign(&issued)?),
        };
        if let Some(generation) = generation {
            cache.insert(hash, client_session.clone(), generation, Arc::clone(&key), (issued, Arc::clone(&token)), now);
        }
        Ok(token)
    };

    let tokens = state.tokens();
    let mut exp = now.saturating_add(state.config().token_ttl_secs);
    if let Some(key_expiry) = key.expires_at {
        // A token never outlives its key.
        exp = exp.min(key_expiry);
    }
    let businesses = vec![key.business.clone()];
    let scope = key.scopes.join(" ");
    let (kid, iss, aud) = (tokens.signer_kid(), tokens.issuer().to_owned(), tokens.audience().to_owned());
    let mode = key.mode;
    let reusable = {
        let (kid, iss, aud, businesses, scope) = (kid.clone(), iss.clone(), aud.clone(), businesses.clone(), scope.clone());
        move |t: &IssuedToken| {
            t.kid == kid
                && t.claims.iss == iss
                && t.claims.aud == aud
                && t.claims.exp > now
                && t.claims.businesses == businesses
                && t.claims.mode == Some(mode)
                && t.claims.scope == scope
        }
    };
    // Fast path: the same key and session while its token is valid → the same token, from a
    // read alone. The session read may be a concurrent login's write still in memory: the
    // token goes out only once that is on disk (a kill -9 would otherwise leave a token
    // whose session no longer exists, so it could not be logged out or revoked).
    if let Some((session, ticket)) = state.store().reusable_key_session(&key.id, &client_session, &reusable)? {
        if let Some(issued) = session.current.filter(|issued| tokens.still_good(issued, now)) {
            state.store().wait_durable(ticket).await?;
            let expires_in = issued.claims.exp.saturating_sub(now);
            let token = signed(issued)?;
            return login_response(&token, expires_in, client_session);
        }
    }
    // Past the fast path a login writes (a new session, or a new token for one), so it
    // is rate-limited per key and per client; the fast path creates nothing and is not.
    state.login_limiter().take(&key.id, client).map_err(|retry_after_secs| AdminError::RateLimited { retry_after_secs })?;
    let candidate_sid = random::id("ses_")?;
    let grant = Grant {
        sub: key.id.clone(),
        sid: candidate_sid.clone(),
        businesses: businesses.clone(),
        mode: Some(key.mode),
        scope: scope.clone(),
    };
    let fresh = tokens.claims(grant, now, exp)?;
    let candidate = Session {
        id: candidate_sid,
        owner: SessionOwner::Key { key_id: key.id.clone(), client_session: client_session.clone() },
        created_at: now,
        refresh_sha256: None,
        refresh_expires_at: None,
        last_exp: exp,
        current: Some(fresh),
        revoked_at: None,
    };
    let (cap, leeway) = (state.config().max_sessions_per_key, state.config().token_leeway_secs);
    let key_id = key.id.clone();
    let pair_session = client_session.clone();
    let client_net = crate::throttle::client_net(client).to_string();
    let session =
        durable_write(state.store(), move |s| s.key_session_token(&key_id, &pair_session, &client_net, &candidate, reusable, cap, leeway))
            .await?;
    let issued = session.current.ok_or(AdminError::Internal("a key session without a token"))?;
    // Not `still_good`: a rotation between the claims and here is no fault; `sign` uses the
    // key the claims name, published until every token it signed has expired.
    if issued.claims.exp <= now {
        return Err(AdminError::Internal("a key session holds a token that cannot be reused"));
    }
    tracing::debug!(key = %key.id, session = %session.id, "api key login");
    let expires_in = issued.claims.exp.saturating_sub(now);
    let token = signed(issued)?;
    login_response(&token, expires_in, client_session)
}

fn login_response(access_token: &str, expires_in: u64, session_id: String) -> Result<Response, AdminError> {
    ok_json(StatusCode::OK, &LoginResponse { access_token: access_token.to_owned(), expires_in, token_type: "Bearer", session_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use keygate_core::{ApiKey, KeyKind, Mode};

    use crate::store::{Business, Key};

    #[test]
    fn client_session_ids() {
        assert!(valid_client_session("tab-1:a_b.c"));
        assert!(valid_client_session(&"a".repeat(128)));
        assert!(!valid_client_session(&"a".repeat(129)));
        assert!(!valid_client_session(""));
        assert!(!valid_client_session("a b"));
        assert!(!valid_client_session("é"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    async fn the_repeat_login_fast_path_answers_only_from_durable_state() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = AppState::open(crate::Config::new(dir.path())).unwrap();
        let flusher = state.store().start_flusher();
        let business = Business::new(random::id("biz_").unwrap(), "Acme".to_owned(), now());
        let ticket = state.store().create_business(&business).unwrap();
        state.store().wait_durable(ticket).await.unwrap();
        let api_key = ApiKey::generate(KeyKind::Sk, Mode::Test, random::key_material().unwrap()).unwrap();
        let key = Key::new(
            random::id("key_").unwrap(),
            business.id.clone(),
            KeyKind::Sk,
            Mode::Test,
            api_key.hash(),
            api_key.display_prefix().to_owned(),
            now(),
        );
        let ticket = state.store().create_key(&key).unwrap();
        state.store().wait_durable(ticket).await.unwrap();
        let raw = api_key.expose().to_owned();
        let body = move || -> Login { serde_json::from_value(serde_json::json!({"api_key": raw, "session_id": "tab-1"})).unwrap() };

        // The first login's session is committed, but its flush is held back.
        let hold = state.store().hold_flushes().await;
        let held_at = state.store().durable().borrow().seq;
        let client = IpAddr::from([127, 0, 0, 1]);
        let first = tokio::spawn(login(state.clone(), client, body()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state.store().reusable_key_session(&key.id, "tab-1", |_| true).unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "the first login never committed its session");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A repeat login finds that session on the fast path.
        let st = state.clone();
        let repeat = tokio::spawn(async move {
            let answer = login(st.clone(), client, body()).await.map(|r| r.status());
            (answer, st.store().durable().borrow().seq)
        });
        // Gives a premature answer time to happen; passing never depends on it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(hold);
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        let (answer, durable_at_answer) = repeat.await.unwrap();
        assert_eq!(answer.unwrap(), StatusCode::OK);
        assert!(durable_at_answer > held_at, "the repeat login answered with a session that was not yet on disk");
        flusher.shutdown().await.unwrap();
    }
}
