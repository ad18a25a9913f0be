//! Request handlers: validate, call the store (writes on the blocking pool), wait for the
//! write to be durable, answer. Authentication has already happened in the routes.

use std::time::Duration;

use keygate_core::snapshot::History;
use keygate_core::{base62, ApiKey, KeyHash, KeyKind, Mode, UnixTime};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::auth::Caller;
use crate::error::{json_response, AdminError, ErrorBody};
use crate::openapi::{KeyKindSchema, ModeSchema};
use crate::passwords::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
use crate::random;
use crate::rfc3339;
use crate::state::AppState;
use std::net::IpAddr;

use crate::store::{now, Business, IssuedToken, Key, RefreshOutcome, Session, SessionOwner, Store, StoreError, User};
use crate::tokens::Grant;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_SCOPES: usize = 50;
pub const MAX_SCOPE_CHARS: usize = 64;
pub const MAX_SESSION_ID_CHARS: usize = 128;
pub const MAX_WAIT_SECS: u64 = 60;
const DEFAULT_CLIENT_SESSION: &str = "default";

/// Runs a store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AdminError> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
}

fn ok_json<T: Serialize>(status: StatusCode, body: &T) -> Result<Response, AdminError> {
    Ok(json_response(status, body))
}

// ----- validation -----

fn is_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|rest| rest.len() == random::ID_LEN && base62::is_base62(rest))
}

pub(crate) fn clean_name(raw: &str, field: &str) -> Result<String, AdminError> {
    let name = raw.trim();
    let chars = name.chars().count();
    // The limit counts what was sent (as the API document says), spaces included.
    if chars == 0 || raw.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AdminError::InvalidRequest(format!("{field} must be 1 to {MAX_NAME_CHARS} characters without control characters")));
    }
    Ok(name.to_owned())
}

/// Trimmed and lowercased; loosely validated: one `@`, something before it, a dot in
/// the domain, no spaces or control characters, at most 254 bytes.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_client_session(id: &str) -> bool {
    (1..=MAX_SESSION_ID_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn clean_scopes(raw: Option<Vec<String>>) -> Result<Vec<String>, AdminError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_SCOPES {
        return Err(AdminError::InvalidRequest(format!("at most {MAX_SCOPES} scopes")));
    }
    let mut scopes: Vec<String> = Vec::with_capacity(raw.len());
    for scope in raw {
        let ok = (1..=MAX_SCOPE_CHARS).contains(&scope.len())
            && scope.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'/' | b'*'));
        if !ok {
            return Err(AdminError::InvalidRequest(format!(
                "each scope must be 1 to {MAX_SCOPE_CHARS} characters of A-Z a-z 0-9 . _ : - / *"
            )));
        }
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

// ----- health and keys of the realm -----

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
    /// The latest durable changelog version.
    version: u64,
}

#[utoipa::path(get, path = "/healthz", tag = "health", summary = "Liveness and the durable changelog version",
    responses(
        (status = 200, description = "The server is up", body = Health),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn healthz(state: AppState) -> Result<Response, AdminError> {
    ok_json(StatusCode::OK, &Health { status: "ok", version: state.store().durable_version() })
}

/// The Prometheus exposition (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "health", summary = "Prometheus metrics (text exposition format 0.0.4)",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn metrics(state: AppState) -> Result<Response, AdminError> {
    let store = state.store().clone();
    let store_size_bytes = tokio::task::spawn_blocking(move || store.size_on_disk()).await??;
    let gauges = crate::metrics::Gauges { changelog_version: state.store().durable_version(), store_size_bytes };
    let mut response = Response::new(state.metrics().render(gauges).into());
    let headers = response.headers_mut();
    headers.insert(warp::http::header::CONTENT_TYPE, warp::http::HeaderValue::from_static("text/plain; version=0.0.4"));
    headers.insert(warp::http::header::CACHE_CONTROL, warp::http::HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "tokens", summary = "The published Ed25519 token signing keys (JWKS)",
    responses(
        (status = 200, description = "A JSON Web Key Set", body = Object),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn jwks(state: AppState) -> Result<Response, AdminError> {
    let mut response = json_response(StatusCode::OK, &state.tokens().jwks());
    response.headers_mut().insert(warp::http::header::CACHE_CONTROL, warp::http::HeaderValue::from_static("public, max-age=300"));
    Ok(response)
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", summary = "This document: the admin API in OpenAPI 3.1",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn openapi() -> Result<Response, AdminError> {
    let mut response = raw_json(crate::openapi::document_json().to_vec());
    response.headers_mut().insert(warp::http::header::CACHE_CONTROL, warp::http::HeaderValue::from_static("public, max-age=300"));
    Ok(response)
}

// ----- businesses and users -----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBusiness {
    /// 1 to 200 characters, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
}

#[derive(Serialize, ToSchema)]
pub struct BusinessView {
    id: String,
    name: String,
}

#[utoipa::path(post, path = "/v1/businesses", tag = "businesses", summary = "Create a business (a tenant)", security(("operator" = [])), request_body = CreateBusiness,
    responses(
        (status = 201, description = "Created", body = BusinessView),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn create_business(state: AppState, body: CreateBusiness) -> Result<Response, AdminError> {
    let name = clean_name(&body.name, "name")?;
    let business = Business { id: random::id("biz_")?, name, created_at: now() };
    let record = business.clone();
    let ticket = blocking(state.store(), move |s| s.create_business(&record)).await?;
    state.store().wait_durable(ticket).await?;
    tracing::info!(business = %business.id, "business created");
    ok_json(StatusCode::CREATED, &BusinessView { id: business.id, name: business.name })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Stored trimmed and lowercased.
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    /// 8 to 1024 characters (stored as an argon2id hash).
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// Ids of existing businesses the member may manage.
    #[schema(min_items = 1)]
    businesses: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    id: String,
    email: String,
    businesses: Vec<String>,
}

#[utoipa::path(post, path = "/v1/users", tag = "businesses", summary = "Create a member (email + password) of one or more businesses", security(("operator" = [])), request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn create_user(state: AppState, body: CreateUser) -> Result<Response, AdminError> {
    let email = normalize_email(&body.email);
    if !valid_email(&email) {
        return Err(AdminError::InvalidRequest("email is not a valid address".to_owned()));
    }
    let chars = body.password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(AdminError::InvalidRequest(format!("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")));
    }
    if body.businesses.is_empty() {
        return Err(AdminError::InvalidRequest("businesses must name at least one business".to_owned()));
    }
    let mut businesses: Vec<String> = Vec::new();
    for id in body.businesses {
        if !is_id(&id, "biz_") || state.store().business(&id)?.is_none() {
            return Err(AdminError::BusinessNotFound);
        }
        if !businesses.contains(&id) {
            businesses.push(id);
        }
    }
    // Checked again inside the write; this only spares the argon2 work.
    if state.store().email_taken(&email)? {
        return Err(AdminError::EmailTaken);
    }
    let password_phc = state.passwords().hash(body.password).await?;
    let user = User { id: random::id("usr_")?, email, password_phc, businesses, created_at: now() };
    let (id, email, businesses) = (user.id.clone(), user.email.clone(), user.businesses.clone());
    let ticket = blocking(state.store(), move |s| s.create_user(&user)).await?;
    state.store().wait_durable(ticket).await?;
    tracing::info!(user = %id, "user created");
    ok_json(StatusCode::CREATED, &UserView { id, email, businesses })
}

// ----- sign-in and API-key login -----

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
    let mut businesses = Vec::with_capacity(user.businesses.len());
    for id in &user.businesses {
        if let Some(b) = state.store().business(id)? {
            businesses.push(BusinessView { id: b.id, name: b.name });
        }
    }
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
        (status = 200, description = "Signed in", body = SignInResponse),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
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
    let refresh_hash = random::sha256(&refresh);
    let grant = Grant { sub: user.id.clone(), sid: sid.clone(), businesses: user.businesses.clone(), mode: None, scope: String::new() };
    let issued = state.tokens().claims(grant, now, now.saturating_add(ttl))?;
    let session = Session {
        id: sid,
        owner: SessionOwner::User { user_id: user.id.clone() },
        created_at: now,
        refresh_sha256: Some(random::hex(&refresh_hash)),
        // Refreshable until the access token's expiry plus the grace (seed 002: 30 days).
        refresh_expires_at: Some(issued.claims.exp.saturating_add(state.config().refresh_ttl_secs)),
        last_exp: issued.claims.exp,
        current: Some(issued.clone()),
        revoked_at: None,
    };
    let (cap, leeway) = (state.config().max_sessions_per_user, state.config().token_leeway_secs);
    let (evicted, ticket) = blocking(state.store(), move |s| s.create_signin_session(&session, &refresh_hash, cap, leeway)).await?;
    state.store().wait_durable(ticket).await?;
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
        (status = 200, description = "New tokens", body = SignInResponse),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn refresh(state: AppState, body: Refresh) -> Result<Response, AdminError> {
    let text = body.refresh_token;
    if !text.starts_with("rt_") || text.len() > 128 {
        return Err(AdminError::InvalidRefreshToken);
    }
    let old = random::sha256(&text);
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
    let new = random::sha256(&refresh);
    let (refresh_ttl, leeway) = (state.config().refresh_ttl_secs, state.config().token_leeway_secs);
    let record = issued.clone();
    let (outcome, ticket) = blocking(state.store(), move |s| s.refresh(&old, &new, &record, refresh_ttl, leeway)).await?;
    state.store().wait_durable(ticket).await?;
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

#[derive(Serialize, ToSchema)]
pub struct SessionRevoked {
    sid: String,
    revoked: bool,
    /// Unix seconds until which the revocation is published to the filters.
    until: u64,
}

/// Revokes the session of the bearer token (a sign-in or an API-key login token).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", summary = "Revoke the session of the bearer token", security(("member" = []), ("operator" = [])),
    responses(
        (status = 200, description = "Revoked", body = SessionRevoked),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
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
    let (revoked, ticket) = blocking(state.store(), move |s| s.revoke_session(&sid, leeway)).await?;
    state.store().wait_durable(ticket).await?;
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
        (status = 200, description = "An access token (the same one again for the same key and session while it is valid)", body = LoginResponse),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
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
    let key = state.store().key_by_hash(&hash)?.filter(|k| k.accepts(&hash, now)).ok_or(AdminError::InvalidApiKey)?;

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
            return login_response(tokens.sign(&issued)?, issued.claims.exp.saturating_sub(now), client_session);
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
    let (session, ticket) =
        blocking(state.store(), move |s| s.key_session_token(&key_id, &pair_session, &client_net, &candidate, reusable, cap, leeway))
            .await?;
    state.store().wait_durable(ticket).await?;
    let issued = session.current.ok_or(AdminError::Internal("a key session without a token"))?;
    if !tokens.still_good(&issued, now) {
        return Err(AdminError::Internal("a key session holds a token that cannot be reused"));
    }
    tracing::debug!(key = %key.id, session = %session.id, "api key login");
    login_response(tokens.sign(&issued)?, issued.claims.exp.saturating_sub(now), client_session)
}

fn login_response(access_token: String, expires_in: u64, session_id: String) -> Result<Response, AdminError> {
    ok_json(StatusCode::OK, &LoginResponse { access_token, expires_in, token_type: "Bearer", session_id })
}

// ----- API keys -----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(value_type = KeyKindSchema)]
    kind: KeyKind,
    #[schema(value_type = ModeSchema)]
    mode: Mode,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Up to 50 scopes of 1 to 64 characters of A-Z a-z 0-9 . _ : - / *
    #[serde(default)]
    #[schema(max_items = 50)]
    scopes: Option<Vec<String>>,
    /// RFC 3339, in the future.
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    id: String,
    business: String,
    /// The raw key: only in the answer that created or rotated it, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    prefix: String,
    #[schema(value_type = KeyKindSchema)]
    kind: KeyKind,
    #[schema(value_type = ModeSchema)]
    mode: Mode,
    name: Option<String>,
    scopes: Vec<String>,
    expires_at: Option<String>,
    created_at: String,
    active: bool,
    last_used_at: Option<String>,
    rotated_at: Option<String>,
    /// While an earlier raw key of this key still works (rotation grace): until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_key_valid_until: Option<String>,
}

impl KeyView {
    fn of(key: &Key, raw: Option<String>) -> KeyView {
        KeyView {
            id: key.id.clone(),
            business: key.business.clone(),
            key: raw,
            prefix: key.prefix.clone(),
            kind: key.kind,
            mode: key.mode,
            name: key.name.clone(),
            scopes: key.scopes.clone(),
            expires_at: key.expires_at.map(rfc3339::format),
            created_at: rfc3339::format(key.created_at),
            active: key.active,
            last_used_at: key.last_used_at.map(rfc3339::format),
            rotated_at: key.rotated_at.map(rfc3339::format),
            previous_key_valid_until: key.grace.iter().map(|g| g.until).filter(|u| *u > now()).max().map(rfc3339::format),
        }
    }
}

fn check_business_access(caller: &Caller, business: &str) -> Result<(), AdminError> {
    if !caller.may_manage(business) {
        return Err(AdminError::Forbidden);
    }
    if !is_id(business, "biz_") {
        return Err(AdminError::BusinessNotFound);
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/businesses/{id}/keys", tag = "keys", summary = "Create an API key; the raw key is in this answer only", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Business id")), request_body = CreateKey,
    responses(
        (status = 201, description = "Created", body = KeyView),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn create_key(state: AppState, caller: Caller, business: String, body: CreateKey) -> Result<Response, AdminError> {
    check_business_access(&caller, &business)?;
    let name = body.name.as_deref().map(|n| clean_name(n, "name")).transpose()?;
    let scopes = clean_scopes(body.scopes)?;
    let now = now();
    let expires_at: Option<UnixTime> = match body.expires_at.as_deref() {
        None => None,
        Some(text) => {
            let at =
                rfc3339::parse(text).ok_or_else(|| AdminError::InvalidRequest("expires_at must be an RFC 3339 date-time".to_owned()))?;
            if at <= now {
                return Err(AdminError::InvalidRequest("expires_at must be in the future".to_owned()));
            }
            Some(at)
        }
    };
    if state.store().business(&business)?.is_none() {
        return Err(AdminError::BusinessNotFound);
    }
    // A collision of a fresh id or hash is astronomically unlikely; retry rather than fail.
    for _ in 0..3 {
        let api_key = ApiKey::generate(body.kind, body.mode, random::key_material()?)
            .ok_or(AdminError::Internal("key generation ran out of randomness"))?;
        let key = Key {
            id: random::id("key_")?,
            business: business.clone(),
            kind: body.kind,
            mode: body.mode,
            hash: api_key.hash(),
            prefix: api_key.display_prefix().to_owned(),
            name: name.clone(),
            scopes: scopes.clone(),
            expires_at,
            created_at: now,
            active: true,
            last_used_at: None,
            rotated_at: None,
            grace: vec![],
        };
        let record = key.clone();
        match blocking(state.store(), move |s| s.create_key(&record)).await {
            Ok(ticket) => {
                state.store().wait_durable(ticket).await?;
                tracing::info!(key = %key.id, business = %key.business, prefix = %key.prefix, "api key created");
                return ok_json(StatusCode::CREATED, &KeyView::of(&key, Some(api_key.expose().to_owned())));
            }
            Err(AdminError::Store(StoreError::Collision)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(AdminError::Internal("could not generate a unique key"))
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    business: String,
    keys: Vec<KeyView>,
}

#[utoipa::path(get, path = "/v1/businesses/{id}/keys", tag = "keys", summary = "List a business's keys (never the raw keys)", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Business id")),
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn list_keys(state: AppState, caller: Caller, business: String) -> Result<Response, AdminError> {
    check_business_access(&caller, &business)?;
    if state.store().business(&business)?.is_none() {
        return Err(AdminError::BusinessNotFound);
    }
    let id = business.clone();
    let keys = blocking(state.store(), move |s| s.keys_of_business(&id)).await?;
    let views: Vec<KeyView> = keys.iter().map(|k| KeyView::of(k, None)).collect();
    ok_json(StatusCode::OK, &KeyList { business, keys: views })
}

#[utoipa::path(post, path = "/v1/keys/{id}/deactivate", tag = "keys", summary = "Deactivate a key (its tokens stop at once)", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The key", body = KeyView), (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody))
)]
pub async fn deactivate_key(state: AppState, caller: Caller, key_id: String) -> Result<Response, AdminError> {
    set_key_active(state, caller, key_id, false).await
}

#[utoipa::path(post, path = "/v1/keys/{id}/activate", tag = "keys", summary = "Activate a deactivated key", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The key", body = KeyView), (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody))
)]
pub async fn activate_key(state: AppState, caller: Caller, key_id: String) -> Result<Response, AdminError> {
    set_key_active(state, caller, key_id, true).await
}

async fn set_key_active(state: AppState, caller: Caller, key_id: String, active: bool) -> Result<Response, AdminError> {
    if !is_id(&key_id, "key_") {
        return Err(AdminError::KeyNotFound);
    }
    let key = state.store().key(&key_id)?.ok_or(AdminError::KeyNotFound)?;
    if !caller.may_manage(&key.business) {
        return Err(AdminError::Forbidden);
    }
    let (key, ticket) = blocking(state.store(), move |s| s.set_key_active(&key_id, active)).await?;
    state.store().wait_durable(ticket).await?;
    tracing::info!(key = %key.id, active, "api key activation changed");
    ok_json(StatusCode::OK, &KeyView::of(&key, None))
}

/// `Some(None)` for an explicit JSON `null`, `None` (by `default`) for an absent field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// An RFC 3339 time in the future, or `null` for no expiry.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
}

/// Changes a key's settings; today its expiry (set, moved or cleared), which reaches the
/// filters through the changelog like an activation change.
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", summary = "Change a key's settings: set, move or clear its expiry", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")), request_body = UpdateKey,
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn update_key(state: AppState, caller: Caller, key_id: String, body: UpdateKey) -> Result<Response, AdminError> {
    if !is_id(&key_id, "key_") {
        return Err(AdminError::KeyNotFound);
    }
    let Some(expires_at) = body.expires_at else {
        return Err(AdminError::InvalidRequest("nothing to change: give expires_at (an RFC 3339 date-time, or null for none)".to_owned()));
    };
    let expires_at = match expires_at.as_deref() {
        None => None,
        Some(text) => {
            let at =
                rfc3339::parse(text).ok_or_else(|| AdminError::InvalidRequest("expires_at must be an RFC 3339 date-time".to_owned()))?;
            if at <= now() {
                return Err(AdminError::InvalidRequest("expires_at must be in the future".to_owned()));
            }
            Some(at)
        }
    };
    let key = state.store().key(&key_id)?.ok_or(AdminError::KeyNotFound)?;
    if !caller.may_manage(&key.business) {
        return Err(AdminError::Forbidden);
    }
    let (key, ticket) = blocking(state.store(), move |s| s.set_key_expiry(&key_id, expires_at)).await?;
    state.store().wait_durable(ticket).await?;
    tracing::info!(key = %key.id, expires_at = ?key.expires_at, "api key expiry changed");
    ok_json(StatusCode::OK, &KeyView::of(&key, None))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Seconds the old raw key keeps working (0 to 30 days; default 0).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    grace_secs: Option<u64>,
}

/// Longest rotation grace: 30 days.
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 24 * 3600;

/// A new raw key for the same key record (same id, business, kind, mode, scopes,
/// expiry). The old raw key stops at once, or after `grace_secs`.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", summary = "A new raw key for the same key record", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")), request_body(content = Option<RotateKey>, description = "Optional; an empty body means no grace"),
    responses(
        (status = 200, description = "The key with its new raw key", body = KeyView),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn rotate_key(state: AppState, caller: Caller, key_id: String, body: RotateKey) -> Result<Response, AdminError> {
    if !is_id(&key_id, "key_") {
        return Err(AdminError::KeyNotFound);
    }
    let grace = body.grace_secs.unwrap_or(0);
    if grace > MAX_ROTATION_GRACE_SECS {
        return Err(AdminError::InvalidRequest(format!("grace_secs must be 0 to {MAX_ROTATION_GRACE_SECS}")));
    }
    let key = state.store().key(&key_id)?.ok_or(AdminError::KeyNotFound)?;
    if !caller.may_manage(&key.business) {
        return Err(AdminError::Forbidden);
    }
    let leeway = state.config().token_leeway_secs;
    for _ in 0..3 {
        let api_key = ApiKey::generate(key.kind, key.mode, random::key_material()?)
            .ok_or(AdminError::Internal("key generation ran out of randomness"))?;
        let (id, hash, prefix) = (key_id.clone(), api_key.hash(), api_key.display_prefix().to_owned());
        match blocking(state.store(), move |s| s.rotate_key(&id, hash, &prefix, grace, leeway)).await {
            Ok((rotated, revoked, ticket)) => {
                state.store().wait_durable(ticket).await?;
                tracing::info!(key = %rotated.id, prefix = %rotated.prefix, grace_secs = grace, sessions_revoked = revoked.len(), "api key rotated");
                return ok_json(StatusCode::OK, &KeyView::of(&rotated, Some(api_key.expose().to_owned())));
            }
            Err(AdminError::Store(StoreError::Collision)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(AdminError::Internal("could not generate a unique key"))
}

#[derive(Serialize, ToSchema)]
pub struct HourCount {
    #[schema(format = DateTime)]
    hour: String,
    count: u64,
}

#[derive(Serialize, ToSchema)]
pub struct KeyUsageView {
    key_id: String,
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    total: u64,
    /// Requests per hour, oldest first, at most a week.
    hours: Vec<HourCount>,
}

#[utoipa::path(get, path = "/v1/keys/{id}/usage", tag = "keys", summary = "A key's hourly request counts, as the filters reported them", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Usage", body = KeyUsageView),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn key_usage(state: AppState, caller: Caller, key_id: String) -> Result<Response, AdminError> {
    if !is_id(&key_id, "key_") {
        return Err(AdminError::KeyNotFound);
    }
    let key = state.store().key(&key_id)?.ok_or(AdminError::KeyNotFound)?;
    if !caller.may_manage(&key.business) {
        return Err(AdminError::Forbidden);
    }
    let id = key_id.clone();
    let record = blocking(state.store(), move |s| s.key_usage(&id)).await?;
    let hours: Vec<HourCount> =
        record.hours.iter().map(|(hour, count)| HourCount { hour: rfc3339::format(*hour), count: *count }).collect();
    let total: u64 = record.hours.iter().map(|(_, c)| *c).sum();
    ok_json(StatusCode::OK, &KeyUsageView { key_id, last_used_at: key.last_used_at.map(rfc3339::format), total, hours })
}

// ----- usage from filters -----

/// Items applied per store transaction.
const USAGE_CHUNK: usize = 256;

#[derive(Serialize, ToSchema)]
pub struct UsageAccepted {
    accepted: usize,
    /// Items for keys that no longer exist.
    ignored: usize,
}

#[utoipa::path(post, path = "/v1/usage", tag = "feed", summary = "Filters report per-key request counts", security(("proxy" = [])), request_body(content = crate::openapi::UsageReportSchema, description = "At most 10 000 keys and 1 MiB per report"),
    responses(
        (status = 200, description = "Recorded", body = UsageAccepted),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn usage(state: AppState, report: keygate_core::usage::UsageReport) -> Result<Response, AdminError> {
    if report.usage.len() > keygate_core::usage::MAX_BATCH_KEYS {
        return Err(AdminError::InvalidRequest(format!("at most {} keys per report", keygate_core::usage::MAX_BATCH_KEYS)));
    }
    if report.usage.iter().any(|u| i64::try_from(u.count).is_err() || i64::try_from(u.last_used_at).is_err()) {
        return Err(AdminError::InvalidRequest("count and last_used_at must be at most 9223372036854775807".to_owned()));
    }
    let (mut accepted, mut ignored) = (0usize, 0usize);
    let mut last = None;
    for chunk in report.usage.chunks(USAGE_CHUNK) {
        let items = chunk.to_vec();
        let ((a, i), ticket) = blocking(state.store(), move |s| s.record_usage(&items)).await?;
        accepted += a;
        ignored += i;
        last = Some(ticket);
    }
    if let Some(ticket) = last {
        state.store().wait_durable(ticket).await?;
    }
    tracing::debug!(accepted, ignored, "usage recorded");
    ok_json(StatusCode::OK, &UsageAccepted { accepted, ignored })
}

// ----- signing keys -----

#[derive(Serialize, ToSchema)]
pub struct SigningKeyRotated {
    kid: String,
    previous_kid: String,
    #[schema(format = DateTime)]
    previous_published_until: String,
}

/// A new Ed25519 signing key takes over; the previous one stays published (JWKS and
/// snapshot) until every token it signed has expired, then is withdrawn by housekeeping.
#[utoipa::path(post, path = "/v1/signing-keys/rotate", tag = "tokens", summary = "Rotate the token signing key", security(("operator" = [])),
    responses(
        (status = 200, description = "Rotated", body = SigningKeyRotated),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn rotate_signing_key(state: AppState) -> Result<Response, AdminError> {
    let signer = state.tokens().signer_kid();
    let remove_after = now().saturating_add(state.config().token_ttl_secs).saturating_add(state.config().token_leeway_secs);
    let st = state.clone();
    let (kid, replaced, ticket) = tokio::task::spawn_blocking(move || st.tokens().rotate(st.store(), remove_after)).await??;
    // With concurrent rotations the key replaced is not necessarily the one that signed
    // when this request came in.
    let previous = replaced.unwrap_or(signer);
    state.store().wait_durable(ticket).await?;
    tracing::info!(kid = %kid, previous = %previous, "token signing key rotated");
    ok_json(StatusCode::OK, &SigningKeyRotated { kid, previous_kid: previous, previous_published_until: rfc3339::format(remove_after) })
}

// ----- sessions -----

#[derive(Serialize, ToSchema)]
pub struct MeUser {
    id: String,
    email: String,
}

#[derive(Serialize, ToSchema)]
pub struct MeView {
    user: MeUser,
    /// The session of the token this request came with.
    session_id: String,
    businesses: Vec<BusinessView>,
}

/// The signed-in member: who they are, which businesses they may manage (with names),
/// and the session their token belongs to. Members only (the operator has no account).
#[utoipa::path(get, path = "/v1/me", tag = "auth", summary = "The signed-in member, their businesses and current session", security(("member" = [])),
    responses(
        (status = 200, description = "The member", body = MeView),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn me(state: AppState, caller: Caller) -> Result<Response, AdminError> {
    let Caller::Member { user_id, session_id, businesses } = caller else {
        return Err(AdminError::InvalidRequest("the operator token has no account; sign in as a member".to_owned()));
    };
    let user = state.store().user(&user_id)?.ok_or(AdminError::Unauthorized)?;
    let mut views = Vec::with_capacity(businesses.len());
    for id in &businesses {
        if let Some(b) = state.store().business(id)? {
            views.push(BusinessView { id: b.id, name: b.name });
        }
    }
    ok_json(StatusCode::OK, &MeView { user: MeUser { id: user.id, email: user.email }, session_id, businesses: views })
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    id: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// When the current access token expires.
    #[schema(format = DateTime)]
    access_expires_at: String,
    /// Until when the session can be refreshed.
    #[schema(format = DateTime)]
    refresh_expires_at: Option<String>,
    /// The session of the token this request came with.
    current: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<SessionView>,
}

/// The caller's live sign-in sessions, oldest first. Members only.
#[utoipa::path(get, path = "/v1/sessions", tag = "auth", summary = "The signed-in member's live sessions", security(("member" = [])),
    responses(
        (status = 200, description = "The sessions", body = SessionList),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn list_sessions(state: AppState, caller: Caller) -> Result<Response, AdminError> {
    let Caller::Member { user_id, session_id, .. } = caller else {
        return Err(AdminError::InvalidRequest("the operator token has no sessions; sign in as a member".to_owned()));
    };
    let now = now();
    let sessions = blocking(state.store(), move |s| s.live_user_sessions(&user_id, now)).await?;
    let views: Vec<SessionView> = sessions
        .iter()
        .map(|s| SessionView {
            id: s.id.clone(),
            created_at: rfc3339::format(s.created_at),
            access_expires_at: rfc3339::format(s.last_exp),
            refresh_expires_at: s.refresh_expires_at.map(rfc3339::format),
            current: s.id == session_id,
        })
        .collect();
    ok_json(StatusCode::OK, &SessionList { sessions: views })
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "auth", summary = "Revoke a session (a member may revoke their own)", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Revoked", body = SessionRevoked),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn revoke_session(state: AppState, caller: Caller, sid: String) -> Result<Response, AdminError> {
    if !is_id(&sid, "ses_") {
        return Err(AdminError::SessionNotFound);
    }
    let session = state.store().session(&sid)?.ok_or(AdminError::SessionNotFound)?;
    let allowed = match (&caller, &session.owner) {
        (Caller::Operator, _) => true,
        (Caller::Member { user_id, .. }, SessionOwner::User { user_id: owner }) => user_id == owner,
        (Caller::Member { .. }, SessionOwner::Key { .. }) => false,
    };
    if !allowed {
        return Err(AdminError::Forbidden);
    }
    let leeway = state.config().token_leeway_secs;
    let (revoked, ticket) = blocking(state.store(), move |s| s.revoke_session(&sid, leeway)).await?;
    state.store().wait_durable(ticket).await?;
    tracing::info!(session = %revoked.sid, "session revoked");
    ok_json(StatusCode::OK, &SessionRevoked { sid: revoked.sid, revoked: true, until: revoked.until })
}

// ----- the snapshot feed -----

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotQuery {
    pub since: Option<u64>,
    pub wait: u64,
    /// Paged full snapshot: at most this many keys per page, sorted by hash.
    pub limit: Option<usize>,
    /// The `next_after` of the previous page.
    pub after: Option<KeyHash>,
    /// With since: the client's history at `since` (the `history` it was last sent).
    pub history: Option<History>,
    /// With limit: page the revoked sessions (sorted by digest) instead of the keys.
    pub revoked: bool,
}

/// Largest page a client may ask for.
pub const MAX_PAGE_KEYS: u64 = 100_000;

/// Parses `since=V&wait=S` (both optional, nothing else allowed).
pub fn parse_snapshot_query(raw: &str) -> Result<SnapshotQuery, AdminError> {
    let mut query = SnapshotQuery::default();
    let mut wait = None;
    let number = |name: &str, value: &str| -> Result<u64, AdminError> {
        if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AdminError::InvalidQuery(format!("{name} must be a non-negative integer")));
        }
        // JSON and the API document (int64) stop at i64::MAX; no version gets near it.
        value
            .parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| AdminError::InvalidQuery(format!("{name} is out of range")))
    };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "since" if query.since.is_none() => query.since = Some(number("since", value)?),
            "wait" if wait.is_none() => wait = Some(number("wait", value)?),
            "limit" if query.limit.is_none() => {
                let limit = number("limit", value)?;
                if limit == 0 || limit > MAX_PAGE_KEYS {
                    return Err(AdminError::InvalidQuery(format!("limit must be 1 to {MAX_PAGE_KEYS}")));
                }
                query.limit = usize::try_from(limit).ok();
            }
            "after" if query.after.is_none() => {
                query.after = Some(
                    KeyHash::from_hex(value)
                        .ok_or_else(|| AdminError::InvalidQuery("after must be a key hash (64 hex digits)".to_owned()))?,
                );
            }
            "history" if query.history.is_none() => {
                query.history =
                    Some(History::from_hex(value).ok_or_else(|| AdminError::InvalidQuery("history must be 64 hex digits".to_owned()))?);
            }
            "revoked" if !query.revoked => {
                if value != "1" {
                    return Err(AdminError::InvalidQuery("revoked must be 1".to_owned()));
                }
                query.revoked = true;
            }
            "since" | "wait" | "limit" | "after" | "history" | "revoked" => {
                return Err(AdminError::InvalidQuery(format!("{name} given twice")))
            }
            _ => return Err(AdminError::InvalidQuery("only since, wait, limit, after, history and revoked are understood".to_owned())),
        }
    }
    if query.history.is_some() && query.since.is_none() {
        return Err(AdminError::InvalidQuery("history needs since".to_owned()));
    }
    if query.revoked && query.limit.is_none() {
        return Err(AdminError::InvalidQuery("revoked needs limit".to_owned()));
    }
    if query.since.is_some() && (query.limit.is_some() || query.after.is_some()) {
        return Err(AdminError::InvalidQuery("limit and after page a full snapshot; they do not go with since".to_owned()));
    }
    if query.after.is_some() && query.limit.is_none() {
        return Err(AdminError::InvalidQuery("after needs limit".to_owned()));
    }
    if let Some(wait) = wait {
        if wait > MAX_WAIT_SECS {
            return Err(AdminError::InvalidQuery(format!("wait must be 0 to {MAX_WAIT_SECS} seconds")));
        }
        if query.since.is_none() && wait > 0 {
            return Err(AdminError::InvalidQuery("wait needs since".to_owned()));
        }
        query.wait = wait;
    }
    Ok(query)
}

fn raw_json(bytes: Vec<u8>) -> Response {
    let mut response = Response::new(bytes.into());
    response.headers_mut().insert(warp::http::header::CONTENT_TYPE, warp::http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(warp::http::header::CACHE_CONTROL, warp::http::HeaderValue::from_static("no-store"));
    response
}

/// Full snapshot, delta since V, or a long-poll for the next durable change after V.
/// Only durable versions are ever served.
#[utoipa::path(get, path = "/v1/snapshot", tag = "feed", summary = "The filters' feed: a full snapshot, one page of it, a delta, or a long-poll for the next change", security(("proxy" = [])), params(
        ("since" = Option<u64>, Query, description = "Delta since this version"),
        ("wait" = Option<u64>, Query, description = "With since: hold up to this many seconds (0 to 60) for a change"),
        ("limit" = Option<u64>, Query, description = "Page a full snapshot: at most this many keys (1 to 100000)"),
        ("after" = Option<String>, Query, description = "With limit: the next_after of the previous page (64 hex digits)"),
        ("revoked" = Option<u64>, Query, description = "With limit: 1 pages the revoked sessions (sorted by the SHA-256 of the session id) instead of the keys; the last key page says `revocation_pages: true` when there are any"),
        ("history" = Option<String>, Query, description = "With since: the history the client was sent with version since (64 hex digits); another history → 410"),
    ),
    responses(
        (status = 200, description = "A snapshot or delta (see DESIGN.md for the wire format)", body = Object),
        (status = "default", description = "An error: `code` says which (see the README's error table)", body = ErrorBody)
    )
)]
pub async fn snapshot(state: AppState, query: SnapshotQuery) -> Result<Response, AdminError> {
    let now = now();
    let store = state.store();
    if let (None, Some(limit)) = (query.since, query.limit) {
        let (after, revoked) = (query.after, query.revoked);
        let (durable_needed, bytes) = blocking(store, move |s| {
            let (wire, head) = s.snapshot_page(now, after, limit, revoked)?;
            Ok((head, serde_json::to_vec(&wire).map_err(StoreError::Encode)?))
        })
        .await?;
        // Everything the page shows must be on disk before anyone sees it.
        store.wait_version(durable_needed).await?;
        return Ok(raw_json(bytes));
    }
    let Some(since) = query.since else {
        let (version, bytes) = blocking(store, move |s| {
            let wire = s.full_snapshot(now)?;
            Ok((wire.version, serde_json::to_vec(&wire).map_err(StoreError::Encode)?))
        })
        .await?;
        // The head read under the writer lock may still be in flight to disk.
        store.wait_version(version).await?;
        return Ok(raw_json(bytes));
    };
    let mut durable = store.durable();
    let current = durable.borrow().version;
    if since > current {
        return Err(AdminError::SnapshotGone);
    }
    if let Some(history) = query.history {
        // Another history's version `since` (this store was restored from a backup and
        // has moved on): the client must start over with a full snapshot.
        blocking(store, move |s| s.check_history(since, &history)).await?;
    }
    if since == current && query.wait > 0 {
        // Counted while held; dropped too if the client goes away mid-wait.
        let _held = state.metrics().hold_longpoll();
        let mut stopping = state.shutting_down();
        tokio::select! {
            _ = durable.wait_for(|d| d.version > since) => {}
            _ = tokio::time::sleep(Duration::from_secs(query.wait)) => {}
            _ = stopping.wait_for(|stop| *stop) => {}
        }
    }
    let upto = store.durable_version();
    let bytes = blocking(store, move |s| {
        let wire = s.delta(since, upto, now)?;
        serde_json::to_vec(&wire).map_err(StoreError::Encode)
    })
    .await?;
    Ok(raw_json(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_loosely_checked() {
        assert_eq!(normalize_email("  Ann@Example.COM "), "ann@example.com");
        assert!(valid_email("ann@example.com"));
        for bad in ["", "ann", "@example.com", "ann@example", "ann@@example.com", "a nn@example.com", "ann@example.com."] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn client_session_ids() {
        assert!(valid_client_session("tab-1:a_b.c"));
        assert!(valid_client_session(&"a".repeat(128)));
        assert!(!valid_client_session(&"a".repeat(129)));
        assert!(!valid_client_session(""));
        assert!(!valid_client_session("a b"));
        assert!(!valid_client_session("é"));
    }

    #[test]
    fn snapshot_queries() {
        assert_eq!(parse_snapshot_query("").ok(), Some(SnapshotQuery::default()));
        assert_eq!(
            parse_snapshot_query("since=5&wait=30").ok(),
            Some(SnapshotQuery { since: Some(5), wait: 30, ..SnapshotQuery::default() })
        );
        assert_eq!(parse_snapshot_query("limit=10").ok(), Some(SnapshotQuery { limit: Some(10), ..SnapshotQuery::default() }));
        let history = "ab".repeat(32);
        assert_eq!(
            parse_snapshot_query(&format!("since=3&history={history}")).ok().and_then(|q| q.history).map(|h| h.to_hex()),
            Some(history.clone())
        );
        assert!(parse_snapshot_query(&format!("history={history}")).is_err());
        assert!(parse_snapshot_query("since=3&history=zz").is_err());
        assert_eq!(parse_snapshot_query("limit=5&revoked=1").ok().map(|q| q.revoked), Some(true));
        for bad in ["revoked=1", "limit=5&revoked=2", "limit=5&revoked=1&revoked=1"] {
            assert!(parse_snapshot_query(bad).is_err(), "{bad}");
        }
        let after = "ab".repeat(32);
        assert_eq!(
            parse_snapshot_query(&format!("after={after}&limit=2")).ok().and_then(|q| q.after).map(|h| h.to_hex()),
            Some(after.clone())
        );
        for bad in ["limit=0", "limit=100001", "after=zz&limit=1", &format!("after={after}"), "since=1&limit=5", "limit=1&limit=2"] {
            assert!(parse_snapshot_query(bad).is_err(), "{bad}");
        }
        for bad in [
            "since=-1",
            "since=x",
            "wait=61&since=1",
            "wait=5",
            "since=1&since=2",
            "foo=1",
            "since=99999999999999999999999",
            "since=9223372036854775808",
        ] {
            assert!(parse_snapshot_query(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    async fn the_repeat_login_fast_path_answers_only_from_durable_state() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = AppState::open(crate::Config::new(dir.path())).unwrap();
        let flusher = state.store().start_flusher();
        let business = Business { id: random::id("biz_").unwrap(), name: "Acme".to_owned(), created_at: now() };
        let ticket = state.store().create_business(&business).unwrap();
        state.store().wait_durable(ticket).await.unwrap();
        let api_key = ApiKey::generate(KeyKind::Sk, Mode::Test, random::key_material().unwrap()).unwrap();
        let key = Key {
            id: random::id("key_").unwrap(),
            business: business.id.clone(),
            kind: KeyKind::Sk,
            mode: Mode::Test,
            hash: api_key.hash(),
            prefix: api_key.display_prefix().to_owned(),
            name: None,
            scopes: vec![],
            expires_at: None,
            created_at: now(),
            active: true,
            last_used_at: None,
            rotated_at: None,
            grace: vec![],
        };
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
