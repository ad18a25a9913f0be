//! Liveness and metrics (the OpenAPI document is served by [`crate::openapi`]).

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::ok_json;
use crate::error::AdminError;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `not_following`: a replica that cannot hear the other replicas' commits
    /// (its connection that listens for them is lost), so its feed could be behind.
    status: &'static str,
    /// The latest durable changelog version.
    version: u64,
}

#[utoipa::path(get, path = "/healthz", tag = "health", summary = "Liveness and the durable changelog version",
    responses(
        (status = 200, description = "The server is up", body = Health),
        (status = 503, description = "A replica that cannot hear the other replicas' commits (`not_following`)", body = Health)
    )
)]
pub async fn healthz(state: AppState) -> Result<Response, AdminError> {
    let version = state.store().durable_version();
    // A load balancer's health check then sends proxies to a replica that hears everything.
    if !*state.store().following().borrow() {
        return ok_json(StatusCode::SERVICE_UNAVAILABLE, &Health { status: "not_following", version });
    }
    ok_json(StatusCode::OK, &Health { status: "ok", version })
}

/// The Prometheus exposition (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "health", summary = "Prometheus metrics (text exposition format 0.0.4)",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain")
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
