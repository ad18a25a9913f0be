//! API keys: create, list, (de)activate, change, rotate, and their usage.

use keygate_core::{ApiKey, KeyKind, Mode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use std::future::Future;

use super::audit::actor;
use super::managed::{check_key_id, managed_key};
use super::policy::{clean_allowed_ips, clean_limits, limit_texts, present};
use super::{blocking, clean_name, clean_scopes, durable_write, is_id, ok_json, request_expiry};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::random;
use crate::rfc3339;
use crate::state::AppState;
use crate::store::{now, Audit, Key, StoreError};
use std::net::IpAddr;

/// `sk` (secret, server side) or `pk` (publishable, safe methods only).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = KeyKind)]
pub enum KeyKindSchema {
    Sk,
    Pk,
}

/// `live` or `test`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Mode)]
pub enum ModeSchema {
    Live,
    Test,
}

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
    /// Uses the key starts with, optionally refilled (absent: unlimited).
    #[serde(default)]
    credits: Option<super::credits::NewCredits>,
    /// Up to 100 address ranges (`"10.0.0.0/8"`, `"2001:db8::/32"`, or one address): the
    /// filters refuse the key from anywhere else (403 `ip_not_allowed`). Absent or empty: any.
    #[serde(default)]
    #[schema(max_items = 100)]
    allowed_ips: Option<Vec<String>>,
    /// The key's own limits (1 to 4 of `"<count>/<s|m|h|d>"`, one per window), replacing its
    /// business's, its rule's and its kind's defaults.
    #[serde(default)]
    #[schema(max_items = 4)]
    rate_limits: Option<Vec<String>>,
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
    /// Whether the key has credits (see `GET /v1/keys/{id}/credits` for its balance).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    has_credits: bool,
    /// The only client address ranges the key works from; empty: any.
    allowed_ips: Vec<String>,
    /// The key's own limits; `null`: its business's or the filters' defaults.
    rate_limits: Option<Vec<String>>,
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
            has_credits: key.credits.is_some(),
            allowed_ips: key.allowed_ips.iter().map(ToString::to_string).collect(),
            rate_limits: limit_texts(&key.rate_limits),
        }
    }
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Sk => "sk",
        KeyKind::Pk => "pk",
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Live => "live",
        Mode::Test => "test",
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
        (status = 201, description = "Created", body = KeyView)
    )
)]
pub async fn create_key(
    state: AppState,
    caller: Caller,
    client: IpAddr,
    business: String,
    body: CreateKey,
) -> Result<Response, AdminError> {
    check_business_access(&caller, &business)?;
    let name = body.name.as_deref().map(|n| clean_name(n, "name")).transpose()?;
    let scopes = clean_scopes(body.scopes)?;
    let now = now();
    let expires_at = body.expires_at.as_deref().map(|text| request_expiry(text, now)).transpose()?;
    let credits = body
        .credits
        .map(super::credits::NewCredits::checked)
        .transpose()?
        .flatten()
        .map(|(balance, refill)| crate::store::credits::fresh_entry(balance, refill, now, 0));
    let allowed_ips = clean_allowed_ips(body.allowed_ips.unwrap_or_default())?;
    let rate_limits = body.rate_limits.map(|l| clean_limits("rate_limits", l)).transpose()?;
    if state.store().business(&business)?.is_none() {
        return Err(AdminError::BusinessNotFound);
    }
    let store = state.store();
    let (api_key, key) = with_fresh_key(body.kind, body.mode, |api_key| {
        let id = random::id("key_")?;
        let key = Key {
            name: name.clone(),
            scopes: scopes.clone(),
            expires_at,
            credits,
            allowed_ips: allowed_ips.clone(),
            rate_limits: rate_limits.clone(),
            ..Key::new(id, business.clone(), body.kind, body.mode, api_key.hash(), api_key.display_prefix().to_owned(), now)
        };
        let record = key.clone();
        let audit = Audit::new(actor(&caller, client), "key.create", "key", &key.id)
            .business(&key.business)
            .detail("kind", kind_name(key.kind))
            .detail("mode", mode_name(key.mode));
        let store = store.audited(audit);
        Ok(async move { durable_write(&store, move |s| s.create_key(&record)).await.map(|()| key) })
    })
    .await?;
    tracing::info!(key = %key.id, business = %key.business, prefix = %key.prefix, "api key created");
    ok_json(StatusCode::CREATED, &KeyView::of(&key, Some(api_key.expose().to_owned())))
}

/// Stores a key record with a fresh raw key from `write`, drawing another raw key if a
/// fresh id or hash collides (astronomically unlikely) rather than failing.
async fn with_fresh_key<T, Fut>(
    kind: KeyKind,
    mode: Mode,
    mut write: impl FnMut(&ApiKey) -> Result<Fut, AdminError>,
) -> Result<(ApiKey, T), AdminError>
where
    Fut: Future<Output = Result<T, AdminError>>,
{
    for _ in 0..3 {
        let api_key =
            ApiKey::generate(kind, mode, random::key_material()?).ok_or(AdminError::Internal("key generation ran out of randomness"))?;
        match write(&api_key)?.await {
            Ok(value) => return Ok((api_key, value)),
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
        (status = 200, description = "The keys", body = KeyList)
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
    responses((status = 200, description = "The key", body = KeyView))
)]
pub async fn deactivate_key(state: AppState, caller: Caller, client: IpAddr, key_id: String) -> Result<Response, AdminError> {
    set_key_active(state, caller, client, key_id, false).await
}

#[utoipa::path(post, path = "/v1/keys/{id}/activate", tag = "keys", summary = "Activate a deactivated key", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The key", body = KeyView))
)]
pub async fn activate_key(state: AppState, caller: Caller, client: IpAddr, key_id: String) -> Result<Response, AdminError> {
    set_key_active(state, caller, client, key_id, true).await
}

async fn set_key_active(state: AppState, caller: Caller, client: IpAddr, key_id: String, active: bool) -> Result<Response, AdminError> {
    let key = managed_key(&state, &caller, &key_id)?;
    let action = if active { "key.activate" } else { "key.deactivate" };
    let audit = Audit::new(actor(&caller, client), action, "key", &key_id).business(&key.business);
    let key = durable_write(&state.store().audited(audit), move |s| s.set_key_active(&key_id, active)).await?;
    tracing::info!(key = %key.id, active, "api key activation changed");
    ok_json(StatusCode::OK, &KeyView::of(&key, None))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// An RFC 3339 time in the future, or `null` for no expiry.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
    /// The address ranges the key works from (replacing the list), or `[]`/`null` for any.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>, max_items = 100)]
    allowed_ips: Option<Option<Vec<String>>>,
    /// The key's own limits (replacing them), or `null` for its business's or the filters' defaults.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>, max_items = 4)]
    rate_limits: Option<Option<Vec<String>>>,
}

/// Changes a key's settings: its expiry (set, moved or cleared), its address allowlist
/// and its own limits, which reach the filters through the changelog like an activation
/// change. Fields left out stay as they are.
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", summary = "Change a key's settings: expiry, address allowlist, own rate limits", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Key id")), request_body = UpdateKey,
    responses(
        (status = 200, description = "The key", body = KeyView)
    )
)]
pub async fn update_key(state: AppState, caller: Caller, client: IpAddr, key_id: String, body: UpdateKey) -> Result<Response, AdminError> {
    // Checked before the body, as it always was: a malformed id answers 404 first.
    check_key_id(&key_id)?;
    if body.expires_at.is_none() && body.allowed_ips.is_none() && body.rate_limits.is_none() {
        return Err(AdminError::InvalidRequest(
            "nothing to change: give expires_at (an RFC 3339 date-time, or null for none), allowed_ips or rate_limits".to_owned(),
        ));
    }
    let expires_at = body.expires_at.map(|e| e.as_deref().map(|text| request_expiry(text, now())).transpose()).transpose()?;
    let allowed_ips = body.allowed_ips.map(|ips| clean_allowed_ips(ips.unwrap_or_default())).transpose()?;
    let rate_limits = body.rate_limits.map(|l| l.map(|l| clean_limits("rate_limits", l)).transpose()).transpose()?;
    let key = managed_key(&state, &caller, &key_id)?;
    let mut audit = Audit::new(actor(&caller, client), "key.update", "key", &key_id).business(&key.business);
    if let Some(expires_at) = expires_at {
        audit = audit.detail("expires_at", expires_at.map(rfc3339::format));
    }
    if let Some(ips) = &allowed_ips {
        audit = audit.detail("allowed_ips", ips.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
    if let Some(limits) = &rate_limits {
        audit = audit.detail("rate_limits", limit_texts(limits));
    }
    let key =
        durable_write(&state.store().audited(audit), move |s| s.update_key_settings(&key_id, expires_at, allowed_ips, rate_limits)).await?;
    tracing::info!(key = %key.id, expires_at = ?key.expires_at, allowed_ranges = key.allowed_ips.len(), rate_limits = ?limit_texts(&key.rate_limits), "api key settings changed");
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
        (status = 200, description = "The key with its new raw key", body = KeyView)
    )
)]
pub async fn rotate_key(state: AppState, caller: Caller, client: IpAddr, key_id: String, body: RotateKey) -> Result<Response, AdminError> {
    // Checked before the body, as it always was: a malformed id answers 404 first.
    check_key_id(&key_id)?;
    let grace = body.grace_secs.unwrap_or(0);
    if grace > MAX_ROTATION_GRACE_SECS {
        return Err(AdminError::InvalidRequest(format!("grace_secs must be 0 to {MAX_ROTATION_GRACE_SECS}")));
    }
    let key = managed_key(&state, &caller, &key_id)?;
    let leeway = state.config().token_leeway_secs;
    let audit = Audit::new(actor(&caller, client), "key.rotate", "key", &key_id).business(&key.business).detail("grace_secs", grace);
    let store = &state.store().audited(audit);
    let (api_key, (rotated, revoked)) = with_fresh_key(key.kind, key.mode, |api_key| {
        let (id, hash, prefix) = (key_id.clone(), api_key.hash(), api_key.display_prefix().to_owned());
        Ok(durable_write(store, move |s| s.rotate_key(&id, hash, &prefix, grace, leeway)))
    })
    .await?;
    tracing::info!(key = %rotated.id, prefix = %rotated.prefix, grace_secs = grace, sessions_revoked = revoked.len(), "api key rotated");
    ok_json(StatusCode::OK, &KeyView::of(&rotated, Some(api_key.expose().to_owned())))
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
        (status = 200, description = "Usage", body = KeyUsageView)
    )
)]
pub async fn key_usage(state: AppState, caller: Caller, key_id: String) -> Result<Response, AdminError> {
    let key = managed_key(&state, &caller, &key_id)?;
    let id = key_id.clone();
    let record = blocking(state.store(), move |s| s.key_usage(&id)).await?;
    let hours: Vec<HourCount> =
        record.hours.iter().map(|(hour, count)| HourCount { hour: rfc3339::format(*hour), count: *count }).collect();
    let total: u64 = record.hours.iter().map(|(_, c)| *c).sum();
    ok_json(StatusCode::OK, &KeyUsageView { key_id, last_used_at: key.last_used_at.map(rfc3339::format), total, hours })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_mode_schemas_match_core() {
        use keygate_core::{KeyKind, Mode};
        assert_eq!(serde_json::to_value(KeyKind::Sk).unwrap(), serde_json::to_value(KeyKindSchema::Sk).unwrap());
        assert_eq!(serde_json::to_value(KeyKind::Pk).unwrap(), serde_json::to_value(KeyKindSchema::Pk).unwrap());
        assert_eq!(serde_json::to_value(Mode::Live).unwrap(), serde_json::to_value(ModeSchema::Live).unwrap());
        assert_eq!(serde_json::to_value(Mode::Test).unwrap(), serde_json::to_value(ModeSchema::Test).unwrap());
    }
}
