//! One error type for the whole server, and the one place ([`recover`]) that turns it,
//! and warp's own rejections, into a status and the JSON error body
//! `{"success": false, "error": "<message>", "code": "<code>"}`.
//!
//! Messages never carry a secret: variants hold ids, field names and limits only, and
//! server-side failures answer a generic message while the cause chain goes to the log.

use std::convert::Infallible;
use std::error::Error as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Rejection;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this caller may not do that")]
    Forbidden,
    #[error("Invalid email or password")]
    InvalidCredentials,
    #[error("Invalid API key")]
    InvalidApiKey,
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    #[error("too many attempts; retry later")]
    RateLimited { retry_after_secs: u64 },
    #[error("the API key is at its session limit and its sessions belong to other clients; retry later")]
    SessionLimitReached { retry_after_secs: u64 },
    #[error("too many password checks are waiting; retry later")]
    Busy { retry_after_secs: u64 },
    #[error("this email is already registered")]
    EmailTaken,
    #[error("business not found")]
    BusinessNotFound,
    #[error("key not found")]
    KeyNotFound,
    #[error("session not found")]
    SessionNotFound,
    #[error("issuer not found")]
    IssuerNotFound,
    #[error("this issuer is already registered for this business")]
    IssuerExists,
    /// The issuer's signing keys could not be fetched or held no usable key (the message
    /// says which URL and why; it holds no secret).
    #[error("{0}")]
    JwksUnavailable(String),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the snapshot version asked for is not available; take a full snapshot")]
    SnapshotGone,
    #[error("the write could not be made durable; it may or may not have been applied")]
    NotDurable(#[source] StoreError),
    #[error("storage failure")]
    Store(#[source] StoreError),
    #[error("the store cannot be reached right now; try again")]
    StoreUnavailable(#[source] StoreError),
    #[error("the operating system's random generator failed")]
    Random(#[source] getrandom::Error),
    #[error("token signing failed")]
    Signing(#[source] jsonwebtoken::errors::Error),
    #[error("password hashing failed")]
    PasswordHash(#[source] argon2::password_hash::Error),
    #[error("a background task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("JSON encoding failed")]
    Encode(#[source] serde_json::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => AdminError::EmailTaken,
            StoreError::UnknownBusiness => AdminError::BusinessNotFound,
            StoreError::UnknownKey => AdminError::KeyNotFound,
            StoreError::UnknownSession => AdminError::SessionNotFound,
            StoreError::UnknownIssuer => AdminError::IssuerNotFound,
            StoreError::IssuerExists => AdminError::IssuerExists,
            StoreError::Gone => AdminError::SnapshotGone,
            StoreError::SessionLimit { retry_after_secs } => AdminError::SessionLimitReached { retry_after_secs },
            e @ StoreError::NotDurable => AdminError::NotDurable(e),
            e @ StoreError::Unavailable(_) => AdminError::StoreUnavailable(e),
            // Its message names a kid and a seal key id, never a secret.
            e @ StoreError::SealKeyMissing { .. } => AdminError::Config(e.to_string()),
            e => AdminError::Store(e),
        }
    }
}

impl From<tokio::task::JoinError> for AdminError {
    fn from(e: tokio::task::JoinError) -> Self {
        AdminError::Task(e)
    }
}

impl warp::reject::Reject for AdminError {}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        use AdminError::*;
        match self {
            InvalidRequest(_) | InvalidJson(_) | InvalidQuery(_) | JwksUnavailable(_) => StatusCode::BAD_REQUEST,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Unauthorized | InvalidCredentials | InvalidApiKey | InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            RateLimited { .. } | SessionLimitReached { .. } => StatusCode::TOO_MANY_REQUESTS,
            Forbidden => StatusCode::FORBIDDEN,
            EmailTaken | IssuerExists => StatusCode::CONFLICT,
            BusinessNotFound | KeyNotFound | SessionNotFound | IssuerNotFound | RouteNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            SnapshotGone => StatusCode::GONE,
            NotDurable(_) | StoreUnavailable(_) | Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Store(_) | Random(_) | Signing(_) | PasswordHash(_) | Task(_) | Encode(_) | Config(_) | Io(_) | Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        use AdminError::*;
        match self {
            InvalidRequest(_) => "invalid_request",
            InvalidJson(_) => "invalid_json",
            InvalidQuery(_) => "invalid_query",
            PayloadTooLarge { .. } => "payload_too_large",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            InvalidCredentials => "invalid_credentials",
            InvalidApiKey => "invalid_api_key",
            InvalidRefreshToken => "invalid_token",
            RateLimited { .. } => "rate_limited",
            SessionLimitReached { .. } => "session_limit_reached",
            Busy { .. } => "busy",
            EmailTaken => "email_taken",
            BusinessNotFound => "business_not_found",
            KeyNotFound => "key_not_found",
            SessionNotFound => "session_not_found",
            IssuerNotFound => "issuer_not_found",
            IssuerExists => "issuer_exists",
            JwksUnavailable(_) => "jwks_unavailable",
            RouteNotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            SnapshotGone => "snapshot_gone",
            NotDurable(_) | StoreUnavailable(_) => "storage_unavailable",
            Store(_) => "storage_error",
            Random(_) | Signing(_) | PasswordHash(_) | Task(_) | Encode(_) | Config(_) | Io(_) | Internal(_) => "internal_error",
        }
    }

    /// What the client reads. Server-side failures get a generic text.
    fn public_message(&self) -> String {
        if self.status().is_server_error()
            && !matches!(self, AdminError::NotDurable(_) | AdminError::StoreUnavailable(_) | AdminError::Busy { .. })
        {
            "internal error".to_owned()
        } else {
            self.to_string()
        }
    }

    /// The error and its sources, for the log.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// The JSON error response; server-side failures are logged here with their causes.
    pub fn to_response(&self) -> Response {
        let status = self.status();
        // A full password queue is load shedding, not a failure: one log line per refusal
        // would turn a flood into a log flood.
        if matches!(self, AdminError::StoreUnavailable(_)) {
            log_outage(self);
        } else if status.is_server_error() && !matches!(self, AdminError::Busy { .. }) {
            tracing::error!(code = self.code(), error = %self.chain(), "request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        }
        let mut response = json_response(status, &ErrorBody { success: false, error: self.public_message(), code: self.code() });
        if matches!(self, AdminError::PayloadTooLarge { .. }) {
            // The body was left unread, so the server drops this connection; saying so
            // keeps clients from reusing it for their next request.
            response.headers_mut().insert(warp::http::header::CONNECTION, warp::http::HeaderValue::from_static("close"));
        }
        let retry_after_secs = match self {
            AdminError::RateLimited { retry_after_secs }
            | AdminError::SessionLimitReached { retry_after_secs }
            | AdminError::Busy { retry_after_secs } => Some(*retry_after_secs),
            AdminError::StoreUnavailable(_) => Some(1),
            _ => None,
        };
        if let Some(value) = retry_after_secs.and_then(|secs| warp::http::HeaderValue::from_str(&secs.max(1).to_string()).ok()) {
            response.headers_mut().insert(warp::http::header::RETRY_AFTER, value);
        }
        response
    }
}

/// While the database is unreachable every request that needs it fails the same way: one
/// line a second says so, with how many such failures went unlogged since the last line,
/// instead of one line per request.
fn log_outage(error: &AdminError) {
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_SECOND.load(Ordering::Relaxed);
    if second > last && LAST_SECOND.compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let unlogged = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::error!(code = error.code(), error = %error.chain(), unlogged, "request failed (more alike are logged at most once a second)");
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every error answer's body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Always false.
    success: bool,
    /// What went wrong, in words (never a secret).
    error: String,
    /// Stable machine-readable code, e.g. `invalid_request`, `unauthorized`, `key_not_found`.
    code: &'static str,
}

/// A JSON response. Serialising our own plain structs cannot fail in practice; if it
/// ever did, the client gets a fixed 500 body rather than a panic.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(e) => {
            tracing::error!(error = %e, "response encoding failed");
            (StatusCode::INTERNAL_SERVER_ERROR, br#"{"success":false,"error":"internal error","code":"internal_error"}"#.to_vec())
        }
    };
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    response.headers_mut().insert(warp::http::header::CONTENT_TYPE, warp::http::HeaderValue::from_static("application/json"));
    response
}

/// The one rejection handler: every error the server answers goes through here.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject;
    let error = if let Some(e) = rejection.find::<AdminError>() {
        return Ok(e.to_response());
    } else if rejection.is_not_found() {
        AdminError::RouteNotFound
    } else if rejection.find::<reject::MethodNotAllowed>().is_some() {
        AdminError::MethodNotAllowed
    } else if rejection.find::<reject::PayloadTooLarge>().is_some() {
        AdminError::PayloadTooLarge { limit: crate::config::BODY_LIMIT }
    } else if rejection.find::<reject::InvalidQuery>().is_some() {
        AdminError::InvalidQuery("the query string could not be parsed".to_owned())
    } else if let Some(h) = rejection.find::<reject::InvalidHeader>() {
        AdminError::InvalidRequest(format!("invalid {} header", h.name()))
    } else if let Some(h) = rejection.find::<reject::MissingHeader>() {
        AdminError::InvalidRequest(format!("missing {} header", h.name()))
    } else if rejection.find::<reject::UnsupportedMediaType>().is_some() {
        AdminError::InvalidRequest("unsupported content type".to_owned())
    } else if rejection.find::<reject::LengthRequired>().is_some() {
        AdminError::InvalidRequest("a content-length header is required".to_owned())
    } else {
        tracing::error!(rejection = ?rejection, "unhandled rejection");
        AdminError::Internal("unhandled rejection")
    };
    Ok(error.to_response())
}
