//! What admin sets beyond a key's identity, for the filters to enforce: a key's address
//! allowlist and limits (on the key routes), and a business's limits (here).

use keygate_core::cidr::{Cidr, MAX_RANGES};
use keygate_core::ratelimit::{check_list, Limit};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{durable_write, is_id, ok_json};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::state::AppState;
use crate::store::Business;

/// An address allowlist as a request gives it: each entry a range (`10.0.0.0/8`,
/// `2001:db8::/32`) or one address; duplicates dropped.
pub fn clean_allowed_ips(raw: Vec<String>) -> Result<Vec<Cidr>, AdminError> {
    if raw.len() > MAX_RANGES {
        return Err(AdminError::InvalidRequest(format!("allowed_ips: at most {MAX_RANGES} ranges")));
    }
    let mut out: Vec<Cidr> = Vec::with_capacity(raw.len());
    for text in raw {
        let range = Cidr::parse(&text).map_err(|e| AdminError::InvalidRequest(format!("allowed_ips: {e}")))?;
        if !out.contains(&range) {
            out.push(range);
        }
    }
    Ok(out)
}

/// A list of limits as a request gives it (`"100/m"`): 1 to 4, one per window length.
pub fn clean_limits(field: &str, raw: Vec<String>) -> Result<Vec<Limit>, AdminError> {
    if raw.is_empty() {
        return Err(AdminError::InvalidRequest(format!("{field}: give at least one limit, or null for none")));
    }
    let limits = raw
        .iter()
        .map(|text| Limit::parse(text).map_err(|e| AdminError::InvalidRequest(format!("{field}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    check_list(field, &limits).map_err(AdminError::InvalidRequest)?;
    Ok(limits)
}

/// `Some(None)` for an explicit JSON `null`, `None` (by `default`) for an absent field.
pub fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub fn limit_texts(limits: &Option<Vec<Limit>>) -> Option<Vec<String>> {
    limits.as_ref().map(|l| l.iter().map(Limit::to_string).collect())
}

#[derive(Serialize, ToSchema)]
pub struct BusinessLimitsView {
    business: String,
    /// Limits for each of the business's keys (`"100/m"`), replacing the filters' rule and
    /// kind defaults; a key's own limits still win. `null`: the filters' defaults.
    per_key: Option<Vec<String>>,
    /// Limits shared by all the business's keys, replacing the filters'
    /// `rate_limits.business`. `null`: the filters' setting.
    shared: Option<Vec<String>>,
}

impl BusinessLimitsView {
    fn of(business: &Business) -> BusinessLimitsView {
        BusinessLimitsView {
            business: business.id.clone(),
            per_key: limit_texts(&business.per_key_limits),
            shared: limit_texts(&business.shared_limits),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBusinessLimits {
    /// 1 to 4 limits (`"<count>/<s|m|h|d>"`, one per window), or `null` to clear; absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    per_key: Option<Option<Vec<String>>>,
    /// As `per_key`, for the limit all the business's keys share.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    shared: Option<Option<Vec<String>>>,
}

fn managed_business(state: &AppState, caller: &Caller, id: &str) -> Result<Business, AdminError> {
    if !caller.may_manage(id) {
        return Err(AdminError::Forbidden);
    }
    if !is_id(id, "biz_") {
        return Err(AdminError::BusinessNotFound);
    }
    state.store().business(id)?.ok_or(AdminError::BusinessNotFound)
}

#[utoipa::path(get, path = "/v1/businesses/{id}/limits", tag = "businesses", summary = "A business's own rate limits (per key and shared)", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Business id")),
    responses((status = 200, description = "The limits", body = BusinessLimitsView))
)]
pub async fn business_limits(state: AppState, caller: Caller, id: String) -> Result<Response, AdminError> {
    let business = managed_business(&state, &caller, &id)?;
    ok_json(StatusCode::OK, &BusinessLimitsView::of(&business))
}

#[utoipa::path(patch, path = "/v1/businesses/{id}/limits", tag = "businesses", summary = "Set or clear a business's own rate limits; every proxy gets them through the feed", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Business id")), request_body = UpdateBusinessLimits,
    responses((status = 200, description = "The limits", body = BusinessLimitsView))
)]
pub async fn update_business_limits(
    state: AppState,
    caller: Caller,
    id: String,
    body: UpdateBusinessLimits,
) -> Result<Response, AdminError> {
    if body.per_key.is_none() && body.shared.is_none() {
        return Err(AdminError::InvalidRequest("nothing to change: give per_key and/or shared (a list of limits, or null)".to_owned()));
    }
    let clean = |field, value: Option<Vec<String>>| value.map(|v| clean_limits(field, v)).transpose();
    let per_key = body.per_key.map(|v| clean("per_key", v)).transpose()?;
    let shared = body.shared.map(|v| clean("shared", v)).transpose()?;
    managed_business(&state, &caller, &id)?;
    let business = durable_write(state.store(), move |s| s.set_business_limits(&id, per_key, shared)).await?;
    tracing::info!(business = %business.id, per_key = ?limit_texts(&business.per_key_limits), shared = ?limit_texts(&business.shared_limits), "business limits changed");
    ok_json(StatusCode::OK, &BusinessLimitsView::of(&business))
}
