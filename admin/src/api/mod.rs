//! Request handlers, one module per resource: validate, call the store (writes on the
//! blocking pool), wait for the write to be durable, answer. Authentication has already
//! happened in the routes.

pub mod audit;
pub mod auth;
pub mod businesses;
pub mod coalesce;
pub mod credits;
pub mod feed;
pub mod health;
pub mod import;
pub mod issuers;
pub mod keys;
mod managed;
pub mod policy;
pub mod rate_counts;
pub mod sessions;
pub mod tokens;
pub mod users;

use keygate_core::{base62, UnixTime};
use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::error::{json_response, AdminError};
use crate::random;
use crate::rfc3339;
use crate::state::AppState;
use crate::store::{Store, StoreError, Ticket};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_SCOPES: usize = 50;
pub const MAX_SCOPE_CHARS: usize = 64;
pub const MAX_WAIT_SECS: u64 = 60;

/// Runs a store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AdminError> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
}

/// What a store write returns: its answer and the ticket to wait on before telling anyone.
pub(crate) trait Written {
    type Value;
    fn split(self) -> (Self::Value, Ticket);
}

impl Written for Ticket {
    type Value = ();
    fn split(self) -> ((), Ticket) {
        ((), self)
    }
}

impl<A> Written for (A, Ticket) {
    type Value = A;
    fn split(self) -> (A, Ticket) {
        self
    }
}

impl<A, B> Written for (A, B, Ticket) {
    type Value = (A, B);
    fn split(self) -> ((A, B), Ticket) {
        let (a, b, ticket) = self;
        ((a, b), ticket)
    }
}

/// Runs a store write on the blocking pool and waits until it is durable: nothing is
/// answered about a write that a crash could still undo.
pub(crate) async fn durable_write<W: Written + Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<W, StoreError> + Send + 'static,
) -> Result<W::Value, AdminError> {
    let (value, ticket) = blocking(store, f).await?.split();
    store.wait_durable(ticket).await?;
    Ok(value)
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

/// An email as stored and looked up: trimmed and lowercased.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Loosely validated: one `@`, something before it, a dot in the domain, no spaces or
/// control characters, at most 254 bytes.
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

fn raw_json(bytes: impl Into<bytes::Bytes>) -> Response {
    let mut response = Response::new(bytes.into().into());
    response.headers_mut().insert(warp::http::header::CONTENT_TYPE, warp::http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(warp::http::header::CACHE_CONTROL, warp::http::HeaderValue::from_static("no-store"));
    response
}

#[derive(Serialize, ToSchema)]
pub struct BusinessView {
    id: String,
    name: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionRevoked {
    sid: String,
    revoked: bool,
    /// Unix seconds until which the revocation is published to the filters.
    until: u64,
}

/// Why an `expires_at` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadExpiry {
    NotRfc3339,
    NotInFuture,
}

/// An `expires_at` as the API and the import take it: an RFC 3339 time after `now`.
pub(crate) fn parse_expiry(text: &str, now: UnixTime) -> Result<UnixTime, BadExpiry> {
    let at = rfc3339::parse(text).ok_or(BadExpiry::NotRfc3339)?;
    if at <= now {
        return Err(BadExpiry::NotInFuture);
    }
    Ok(at)
}

/// `parse_expiry` for a request body, with the API's messages.
fn request_expiry(text: &str, now: UnixTime) -> Result<UnixTime, AdminError> {
    parse_expiry(text, now).map_err(|bad| {
        AdminError::InvalidRequest(
            match bad {
                BadExpiry::NotRfc3339 => "expires_at must be an RFC 3339 date-time",
                BadExpiry::NotInFuture => "expires_at must be in the future",
            }
            .to_owned(),
        )
    })
}

/// The named businesses that exist, with their names, in the order given.
fn business_views(state: &AppState, ids: &[String]) -> Result<Vec<BusinessView>, AdminError> {
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(b) = state.store().business(id)? {
            views.push(BusinessView { id: b.id, name: b.name });
        }
    }
    Ok(views)
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
}
