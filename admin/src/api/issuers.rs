//! Trusted issuers: a business's own identity provider whose access tokens the filter
//! accepts next to the business's API key. Registered for one business (by an operator or
//! a member of it), listed, removed. Admin fetches the provider's signing keys before it
//! answers, pins them, and keeps them fresh (see [`crate::oidc`]).

use keygate_core::oidc::ISSUER_ALGORITHMS;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use std::net::IpAddr;

use super::audit::actor;
use super::{durable_write, is_id, ok_json};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::oidc::{self, IssuerStatus};
use crate::random;
use crate::rfc3339;
use crate::state::AppState;
use crate::store::Audit;
use crate::store::{now, IssuerRecord, IssuerSource};

pub const MAX_ISSUER_CHARS: usize = 2048;
pub const MAX_AUDIENCES: usize = 10;
pub const MAX_AUDIENCE_CHARS: usize = 256;
pub const MAX_CLAIM_CHARS: usize = 128;
/// The claim that lists businesses when none is given.
pub const DEFAULT_BUSINESSES_CLAIM: &str = "businesses";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIssuer {
    /// The exact `iss` of the provider's tokens. Without `jwks_uri` or `jwks`, the keys are
    /// found through OIDC discovery (`<issuer>/.well-known/openid-configuration`).
    #[schema(min_length = 1, max_length = 2048)]
    issuer: String,
    /// Where the provider publishes its JWKS (`https://`, or `http://` on a trusted network).
    #[serde(default)]
    jwks_uri: Option<String>,
    /// A JWKS document (`{"keys": [...]}`) to pin as is, never fetched.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    jwks: Option<Value>,
    /// A token's `aud` must be (or, for an array, contain) one of these.
    #[schema(min_items = 1, max_items = 10)]
    audiences: Vec<String>,
    /// Subset of RS256, ES256, EdDSA (default RS256).
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    /// The claim that lists the businesses a token is for, a string or an array (default `businesses`).
    #[serde(default)]
    businesses_claim: Option<String>,
}

/// One pinned key, as listed (public material is not repeated here).
#[derive(Serialize, ToSchema)]
pub struct IssuerKeyView {
    kid: String,
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IssuerView {
    id: String,
    business: String,
    issuer: String,
    /// `discovery`, `jwks_uri` or `static`.
    source: String,
    jwks_uri: Option<String>,
    audiences: Vec<String>,
    algorithms: Vec<String>,
    businesses_claim: String,
    /// The keys pinned now: what every proxy verifies with.
    keys: Vec<IssuerKeyView>,
    created_at: String,
    keys_changed_at: String,
    /// When this admin last fetched the keys successfully (absent for a static JWKS).
    refreshed_at: Option<String>,
    /// Why this admin's last fetch failed (the pinned keys are kept meanwhile).
    refresh_error: Option<String>,
}

impl IssuerView {
    fn of(record: &IssuerRecord, status: Option<IssuerStatus>) -> IssuerView {
        let status = status.unwrap_or_default();
        IssuerView {
            id: record.id.clone(),
            business: record.business.clone(),
            issuer: record.issuer.clone(),
            source: source_name(record.source).to_owned(),
            jwks_uri: record.jwks_uri.clone(),
            audiences: record.audiences.clone(),
            algorithms: record.algorithms.clone(),
            businesses_claim: record.businesses_claim.clone(),
            keys: record.keys.iter().map(|k| IssuerKeyView { kid: k.kid.clone(), kty: k.kty.clone(), alg: k.alg.clone() }).collect(),
            created_at: rfc3339::format(record.created_at),
            keys_changed_at: rfc3339::format(record.keys_changed_at),
            refreshed_at: status.refreshed_at.map(rfc3339::format),
            refresh_error: status.error,
        }
    }
}

fn source_name(source: IssuerSource) -> &'static str {
    match source {
        IssuerSource::Discovery => "discovery",
        IssuerSource::JwksUri => "jwks_uri",
        IssuerSource::Static => "static",
    }
}

#[derive(Serialize, ToSchema)]
pub struct IssuerList {
    business: String,
    issuers: Vec<IssuerView>,
}

#[derive(Serialize, ToSchema)]
pub struct IssuerRemoved {
    id: String,
    removed: bool,
}

fn invalid(message: impl Into<String>) -> AdminError {
    AdminError::InvalidRequest(message.into())
}

/// Printable ASCII without spaces, 1..=`max` characters.
fn token_text(text: &str, field: &str, max: usize) -> Result<(), AdminError> {
    if text.is_empty() || text.len() > max || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!("{field} must be 1 to {max} printable ASCII characters without spaces")));
    }
    Ok(())
}

fn check_access(caller: &Caller, business: &str) -> Result<(), AdminError> {
    if !caller.may_manage(business) {
        return Err(AdminError::Forbidden);
    }
    if !is_id(business, "biz_") {
        return Err(AdminError::BusinessNotFound);
    }
    Ok(())
}

/// The body checked: (issuer, source, jwks_uri, audiences, algorithms, claim).
type Checked = (String, IssuerSource, Option<String>, Vec<String>, Vec<String>, String);

fn check_body(state: &AppState, body: &CreateIssuer) -> Result<Checked, AdminError> {
    token_text(&body.issuer, "issuer", MAX_ISSUER_CHARS)?;
    if body.issuer == state.config().issuer {
        return Err(invalid("issuer is keygate's own token issuer"));
    }
    if body.audiences.is_empty() || body.audiences.len() > MAX_AUDIENCES {
        return Err(invalid(format!("audiences must hold 1 to {MAX_AUDIENCES} values")));
    }
    for audience in &body.audiences {
        token_text(audience, "each audience", MAX_AUDIENCE_CHARS)?;
    }
    let mut algorithms = body.algorithms.clone().unwrap_or_else(|| vec!["RS256".to_owned()]);
    algorithms.sort();
    algorithms.dedup();
    if algorithms.is_empty() || algorithms.iter().any(|a| !ISSUER_ALGORITHMS.contains(&a.as_str())) {
        return Err(invalid("algorithms must be a non-empty subset of RS256, ES256, EdDSA"));
    }
    let claim = body.businesses_claim.clone().unwrap_or_else(|| DEFAULT_BUSINESSES_CLAIM.to_owned());
    token_text(&claim, "businesses_claim", MAX_CLAIM_CHARS)?;
    let (source, jwks_uri) = match (&body.jwks_uri, &body.jwks) {
        (Some(_), Some(_)) => return Err(invalid("give jwks_uri or jwks, not both")),
        (Some(uri), None) => {
            oidc::check_url(uri).map_err(invalid)?;
            (IssuerSource::JwksUri, Some(uri.clone()))
        }
        (None, Some(_)) => (IssuerSource::Static, None),
        (None, None) => {
            oidc::check_url(&oidc::discovery_url(&body.issuer)).map_err(|e| invalid(format!("OIDC discovery: {e}")))?;
            (IssuerSource::Discovery, None)
        }
    };
    Ok((body.issuer.clone(), source, jwks_uri, body.audiences.clone(), algorithms, claim))
}

#[utoipa::path(post, path = "/v1/businesses/{id}/issuers", tag = "issuers", summary = "Trust a business's own identity provider: its keys are fetched and pinned before this answers", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Business id")), request_body = CreateIssuer,
    responses(
        (status = 201, description = "Registered", body = IssuerView)
    )
)]
pub async fn create_issuer(
    state: AppState,
    caller: Caller,
    client: IpAddr,
    business: String,
    body: CreateIssuer,
) -> Result<Response, AdminError> {
    check_access(&caller, &business)?;
    let (issuer, source, jwks_uri, audiences, algorithms, businesses_claim) = check_body(&state, &body)?;
    if state.store().business(&business)?.is_none() {
        return Err(AdminError::BusinessNotFound);
    }
    let (keys, jwks_uri) = match &body.jwks {
        Some(jwks) => (oidc::usable_keys(jwks, "jwks").map_err(AdminError::JwksUnavailable)?, None),
        None => state.issuer_client().fetch_keys(source, &issuer, jwks_uri.as_deref()).await.map_err(AdminError::JwksUnavailable)?,
    };
    let now = now();
    let record = IssuerRecord {
        id: random::id("iss_")?,
        business,
        issuer,
        source,
        jwks_uri,
        audiences,
        algorithms,
        businesses_claim,
        keys,
        created_at: now,
        keys_changed_at: now,
    };
    let stored = record.clone();
    let audit = Audit::new(actor(&caller, client), "issuer.create", "issuer", &record.id)
        .business(&record.business)
        .detail("issuer", record.issuer.clone())
        .detail("kids", record.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>());
    durable_write(&state.store().audited(audit), move |s| s.create_issuer(&stored)).await?;
    let status = (source != IssuerSource::Static).then_some(IssuerStatus { refreshed_at: Some(now), error: None });
    if let Some(status) = &status {
        state.issuer_status().set(&record.id, status.clone());
    }
    tracing::info!(issuer = %record.id, business = %record.business, keys = record.keys.len(), "trusted issuer registered");
    ok_json(StatusCode::CREATED, &IssuerView::of(&record, status))
}

#[utoipa::path(get, path = "/v1/businesses/{id}/issuers", tag = "issuers", summary = "List a business's trusted identity providers and their pinned keys", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Business id")),
    responses(
        (status = 200, description = "The issuers", body = IssuerList)
    )
)]
pub async fn list_issuers(state: AppState, caller: Caller, business: String) -> Result<Response, AdminError> {
    check_access(&caller, &business)?;
    if state.store().business(&business)?.is_none() {
        return Err(AdminError::BusinessNotFound);
    }
    let mut records = state.store().issuers()?;
    records.retain(|r| r.business == business);
    records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let issuers = records.iter().map(|r| IssuerView::of(r, state.issuer_status().get(&r.id))).collect();
    ok_json(StatusCode::OK, &IssuerList { business, issuers })
}

#[utoipa::path(delete, path = "/v1/issuers/{id}", tag = "issuers", summary = "Stop trusting an identity provider: its tokens are refused once the feed reaches the proxies", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Issuer id")),
    responses(
        (status = 200, description = "Removed", body = IssuerRemoved)
    )
)]
pub async fn remove_issuer(state: AppState, caller: Caller, client: IpAddr, id: String) -> Result<Response, AdminError> {
    if !is_id(&id, "iss_") {
        return Err(AdminError::IssuerNotFound);
    }
    let record = state.store().issuer(&id)?.ok_or(AdminError::IssuerNotFound)?;
    if !caller.may_manage(&record.business) {
        return Err(AdminError::Forbidden);
    }
    let target = id.clone();
    let audit = Audit::new(actor(&caller, client), "issuer.remove", "issuer", &id)
        .business(&record.business)
        .detail("issuer", record.issuer.clone());
    let (removed, ()) = durable_write(&state.store().audited(audit), move |s| s.remove_issuer(&target).map(|(r, t)| ((r, ()), t))).await?;
    state.issuer_status().forget(&id);
    tracing::info!(issuer = %removed.id, business = %removed.business, "trusted issuer removed");
    ok_json(StatusCode::OK, &IssuerRemoved { id, removed: true })
}
