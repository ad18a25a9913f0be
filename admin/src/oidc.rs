//! Trusted issuers' signing keys: fetched over HTTP (OIDC discovery, then the JWKS), pinned
//! in the store, and fetched again every `issuer_refresh_secs`; when they change the store
//! writes a changelog entry, so every proxy has the new keys within seconds.
//!
//! The client is hyper's own HTTP/1 client (hyper is already here for warp): one GET per
//! URL, no redirects, `http://` only (no TLS stack in admin yet), at most
//! [`MAX_DOCUMENT_BYTES`] read within [`FETCH_TIMEOUT`]. A failed fetch keeps the pinned
//! keys and is logged (the URL and the reason; a provider's answer body is never logged).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use keygate_core::oidc::{keys_from_jwks, IssuerKey};
use keygate_core::UnixTime;
use serde_json::Value;

use crate::api::durable_write;
use crate::clock::now;
use crate::state::AppState;
use crate::store::{IssuerRecord, IssuerSource};

/// Default seconds between two fetches of an issuer's keys.
pub const DEFAULT_REFRESH_SECS: u64 = 15;
/// The most of a discovery document or JWKS read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Connect, send and read one document within this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest URL accepted.
pub const MAX_URL_CHARS: usize = 2048;

/// The last refresh of one issuer, as this replica saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerStatus {
    pub refreshed_at: Option<UnixTime>,
    /// Why the last fetch failed (`None` after a success).
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct IssuerStatuses(Mutex<HashMap<String, IssuerStatus>>);

impl IssuerStatuses {
    pub fn get(&self, id: &str) -> Option<IssuerStatus> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    pub fn set(&self, id: &str, status: IssuerStatus) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned(), status);
    }

    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

/// Checks a URL admin may fetch: `http://host[:port]/path`, no user info, bounded.
pub fn check_url(text: &str) -> Result<Uri, String> {
    if text.len() > MAX_URL_CHARS {
        return Err(format!("a URL must be at most {MAX_URL_CHARS} characters"));
    }
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{text}: https is not fetched by this build of keygate-admin yet; give the JWKS document itself (\"jwks\") or an http:// URL on a trusted network"
            ))
        }
        _ => return Err(format!("{text:?} is not an http:// URL")),
    }
    let Some(authority) = uri.authority() else { return Err(format!("{text:?} has no host")) };
    if authority.as_str().contains('@') {
        return Err(format!("{text:?} must not carry user info"));
    }
    Ok(uri)
}

/// GETs `url` and parses the answer as JSON: status 200, at most [`MAX_DOCUMENT_BYTES`],
/// within [`FETCH_TIMEOUT`].
pub async fn fetch_json(url: &str) -> Result<Value, String> {
    let uri = check_url(url)?;
    match tokio::time::timeout(FETCH_TIMEOUT, fetch(&uri)).await {
        Ok(result) => result.map_err(|e| format!("GET {url}: {e}")),
        Err(_) => Err(format!("GET {url}: no answer within {} s", FETCH_TIMEOUT.as_secs())),
    }
}

async fn fetch(uri: &Uri) -> Result<Value, String> {
    let authority = uri.authority().ok_or("no host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, "keygate-admin")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if status != hyper::StatusCode::OK {
        driver.abort();
        return Err(format!("answered {status}"));
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|_| format!("the answer is not readable or larger than {MAX_DOCUMENT_BYTES} bytes"))?
        .to_bytes();
    driver.abort();
    serde_json::from_slice(&body).map_err(|_| "the answer is not JSON".to_owned())
}

/// The discovery document's URL for an issuer.
pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

/// The JWKS URL an issuer's discovery document names (whose `issuer` must be the issuer's own).
pub async fn discover(issuer: &str) -> Result<String, String> {
    let url = discovery_url(issuer);
    let document = fetch_json(&url).await?;
    if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(format!("{url}: its \"issuer\" is not {issuer:?}"));
    }
    let jwks_uri = document.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| format!("{url}: no \"jwks_uri\""))?;
    check_url(jwks_uri)?;
    Ok(jwks_uri.to_owned())
}

/// The usable keys of a JWKS document, or why there are none.
pub fn usable_keys(jwks: &Value, from: &str) -> Result<Vec<IssuerKey>, String> {
    let keys = keys_from_jwks(jwks);
    if keys.is_empty() {
        return Err(format!("{from}: no usable signing key (RS256 ≥ 2048 bits, ES256 P-256 or EdDSA Ed25519, each with a kid)"));
    }
    Ok(keys)
}

/// Fetches an issuer's keys as its record says where from: (keys, the JWKS URL used).
pub async fn fetch_keys(source: IssuerSource, issuer: &str, jwks_uri: Option<&str>) -> Result<(Vec<IssuerKey>, Option<String>), String> {
    let uri = match (source, jwks_uri) {
        (IssuerSource::Static, _) => return Err("a static JWKS is not fetched".to_owned()),
        (IssuerSource::Discovery, _) => discover(issuer).await?,
        (IssuerSource::JwksUri, Some(uri)) => uri.to_owned(),
        (IssuerSource::JwksUri, None) => return Err("no jwks_uri".to_owned()),
    };
    let jwks = fetch_json(&uri).await?;
    Ok((usable_keys(&jwks, &uri)?, Some(uri)))
}

/// Fetches one issuer's keys and pins them if they changed. A failure keeps the pinned keys.
pub async fn refresh_issuer(state: &AppState, record: &IssuerRecord) {
    if record.source == IssuerSource::Static {
        return;
    }
    match fetch_keys(record.source, &record.issuer, record.jwks_uri.as_deref()).await {
        Ok((keys, uri)) => {
            let id = record.id.clone();
            let written = durable_write(state.store(), move |s| s.pin_issuer_keys(&id, &keys, uri.as_deref())).await;
            match written {
                Ok(Some(changed)) => {
                    let kids: Vec<&str> = changed.keys.iter().map(|k| k.kid.as_str()).collect();
                    tracing::info!(issuer = %record.id, business = %record.business, kids = ?kids, "trusted issuer's signing keys changed; pinned");
                    state.issuer_status().set(&record.id, IssuerStatus { refreshed_at: Some(now()), error: None });
                }
                Ok(None) => state.issuer_status().set(&record.id, IssuerStatus { refreshed_at: Some(now()), error: None }),
                Err(e) => tracing::error!(issuer = %record.id, error = %e.chain(), "cannot pin a trusted issuer's keys"),
            }
        }
        Err(error) => {
            let previous = state.issuer_status().get(&record.id);
            if previous.as_ref().and_then(|p| p.error.as_ref()) != Some(&error) {
                tracing::warn!(issuer = %record.id, business = %record.business, %error, "cannot refresh a trusted issuer's signing keys; keeping the pinned ones");
            }
            let refreshed_at = previous.and_then(|p| p.refreshed_at);
            state.issuer_status().set(&record.id, IssuerStatus { refreshed_at, error: Some(error) });
        }
    }
}

/// Every `issuer_refresh_secs`, fetches every fetched issuer's keys (one after another;
/// each bounded by [`FETCH_TIMEOUT`] per document). Stops at shutdown.
pub async fn refresh_loop(state: AppState) {
    let every = Duration::from_secs(state.config().issuer_refresh_secs.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = state.shutting_down();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let store = state.store().clone();
                let issuers = match tokio::task::spawn_blocking(move || store.issuers()).await {
                    Ok(Ok(issuers)) => issuers,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot list the trusted issuers");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot list the trusted issuers");
                        continue;
                    }
                };
                for record in issuers.iter().filter(|r| r.source != IssuerSource::Static) {
                    tokio::select! {
                        _ = refresh_issuer(&state, record) => {}
                        _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => return,
                    }
                }
            }
            _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => return,
        }
    }
}
