//! The token signing keys: their JWKS and their rotation.

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::ok_json;
use crate::error::{json_response, AdminError};
use crate::rfc3339;
use crate::state::AppState;
use crate::store::{now, Actor, Audit};
use std::net::IpAddr;

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "tokens", summary = "The published Ed25519 token signing keys (JWKS)",
    responses(
        (status = 200, description = "A JSON Web Key Set", body = Object)
    )
)]
pub async fn jwks(state: AppState) -> Result<Response, AdminError> {
    let mut response = json_response(StatusCode::OK, &state.tokens().jwks());
    response.headers_mut().insert(warp::http::header::CACHE_CONTROL, warp::http::HeaderValue::from_static("public, max-age=300"));
    Ok(response)
}

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
        (status = 200, description = "Rotated", body = SigningKeyRotated)
    )
)]
pub async fn rotate_signing_key(state: AppState, client: IpAddr) -> Result<Response, AdminError> {
    let signer = state.tokens().signer_kid();
    let remove_after = now().saturating_add(state.config().token_ttl_secs).saturating_add(state.config().token_leeway_secs);
    let st = state.clone();
    let store = state.store().audited(Audit::new(Actor::operator(client), "signing_key.rotate", "signing_key", &signer));
    let (kid, replaced, ticket) = tokio::task::spawn_blocking(move || st.tokens().rotate(&store, remove_after)).await??;
    // With concurrent rotations the key replaced is not necessarily the one that signed
    // when this request came in.
    let previous = replaced.unwrap_or(signer);
    state.store().wait_durable(ticket).await?;
    tracing::info!(kid = %kid, previous = %previous, "token signing key rotated");
    ok_json(StatusCode::OK, &SigningKeyRotated { kid, previous_kid: previous, previous_published_until: rfc3339::format(remove_after) })
}
