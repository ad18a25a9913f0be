//! What a refusal is: its stable code, its status and the JSON body and headers it is sent with.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyCode {
    MissingCredentials,
    InvalidToken,
    InvalidApiKey,
    BusinessMismatch,
    InsufficientPermission,
    IpNotAllowed,
    RateLimited,
    QuotaExhausted,
    AuthUnavailable,
}

impl DenyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::MissingCredentials => "missing_credentials",
            DenyCode::InvalidToken => "invalid_token",
            DenyCode::InvalidApiKey => "invalid_api_key",
            DenyCode::BusinessMismatch => "business_mismatch",
            DenyCode::InsufficientPermission => "insufficient_permission",
            DenyCode::IpNotAllowed => "ip_not_allowed",
            DenyCode::RateLimited => "rate_limited",
            DenyCode::QuotaExhausted => "quota_exhausted",
            DenyCode::AuthUnavailable => "auth_unavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            DenyCode::MissingCredentials | DenyCode::InvalidToken | DenyCode::InvalidApiKey => 401,
            DenyCode::BusinessMismatch | DenyCode::InsufficientPermission | DenyCode::IpNotAllowed => 403,
            DenyCode::RateLimited | DenyCode::QuotaExhausted => 429,
            DenyCode::AuthUnavailable => 503,
        }
    }

    pub const ALL: [DenyCode; 9] = [
        DenyCode::MissingCredentials,
        DenyCode::InvalidToken,
        DenyCode::InvalidApiKey,
        DenyCode::BusinessMismatch,
        DenyCode::InsufficientPermission,
        DenyCode::IpNotAllowed,
        DenyCode::RateLimited,
        DenyCode::QuotaExhausted,
        DenyCode::AuthUnavailable,
    ];
}

/// A refusal: status, stable code, a message with no secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    pub message: &'static str,
    pub retry_after: Option<u64>,
}

impl Denial {
    pub(super) fn new(code: DenyCode, message: &'static str) -> Denial {
        Denial { code, message, retry_after: None }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// `{"success": false, "error": "<message>", "code": "<code>"}`
    pub fn body(&self) -> String {
        serde_json::json!({"success": false, "error": self.message, "code": self.code.as_str()}).to_string()
    }

    /// Response headers besides the JSON content type.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(secs) = self.retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        if self.status() == 401 {
            headers.push(("www-authenticate", "Bearer realm=\"keygate\"".to_owned()));
        }
        headers
    }
}

/// The denial for a request over its rate limit; `retry_after` in seconds.
pub fn rate_limited(retry_after: u64) -> Denial {
    Denial { code: DenyCode::RateLimited, message: "Rate limit exceeded", retry_after: Some(retry_after.max(1)) }
}

/// The 429 for a key with too few credits left for the request; `Retry-After` until the
/// next refill, when the key refills.
pub fn quota_exhausted(check: &crate::credits::CreditCheck) -> Denial {
    Denial { code: DenyCode::QuotaExhausted, message: "The API key has no credits left", retry_after: check.retry_after }
}
