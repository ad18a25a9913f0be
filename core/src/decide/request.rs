//! Reading a request's credentials: the headers that carry them (any case, each at most
//! once), and the headers to strip before the upstream sees the request.

use super::denial::{Denial, DenyCode};
use crate::config::{Requirement, Route};
use crate::key::parse_prefix;
use crate::IDENTITY_HEADER_PREFIX;

pub const AUTHORIZATION: &str = "authorization";
pub const SECRET_KEY: &str = "secret_key";
pub const BUSINESS_ID: &str = "businessid";

/// What the filter saw of one request. Header names may have any case.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// `:path`, query string included.
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    /// The client's address as Envoy gives it (`ip`, `ip:port`, `[v6]:port`).
    pub client_ip: Option<&'a str>,
}

/// The value of the header `name` when it is present once and not blank; `repeated` when
/// it is present more than once.
fn single_header<'a>(headers: &'a [(String, String)], name: &str, repeated: Denial) -> Result<Option<&'a str>, Denial> {
    let mut values = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(repeated),
        (Some(v), None) if !v.trim().is_empty() => Ok(Some(v)),
        _ => Ok(None),
    }
}

/// The value after `Bearer ` (scheme case-insensitive), or `None` for another scheme.
fn bearer_value(authorization: &str) -> Option<&str> {
    let text = authorization.trim();
    let (scheme, value) = text.split_once(' ').unwrap_or((text, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| value.trim_start())
}

pub(super) fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Headers removed on every allowed request: the key, and anything posing as identity.
/// CGI-style upstreams (WSGI, Rack, PHP) read `_` and `-` in a header name alike, so a
/// name counts as the key or an identity header whichever of the two it uses; each is
/// removed by the exact (lower-case) name the client sent, since to Envoy
/// `x_keygate_subject` and `x-keygate-subject` are different headers.
pub(super) fn stripped_headers(headers: &[(String, String)]) -> Vec<String> {
    let mut remove = vec![SECRET_KEY.to_owned()];
    for (name, _) in headers {
        let lower = name.to_ascii_lowercase();
        let canonical = lower.replace('_', "-");
        let posing = canonical == "secret-key" || canonical.starts_with(IDENTITY_HEADER_PREFIX);
        if posing && !remove.contains(&lower) {
            remove.push(lower);
        }
    }
    remove
}

/// The credentials as presented, after the presence checks.
pub(super) struct Presented<'a> {
    pub token: Option<&'a str>,
    pub key: &'a str,
    pub key_in_bearer: bool,
    pub business: Option<&'a str>,
}

pub(super) fn presented<'a>(route: &Route, headers: &'a [(String, String)]) -> Result<Presented<'a>, Denial> {
    let missing = |message| Denial::new(DenyCode::MissingCredentials, message);
    let authorization =
        single_header(headers, AUTHORIZATION, Denial::new(DenyCode::InvalidToken, "Authorization header appears more than once"))?;
    let secret = single_header(headers, SECRET_KEY, Denial::new(DenyCode::InvalidApiKey, "Invalid API key"))?;
    let business = single_header(headers, BUSINESS_ID, missing("businessId header appears more than once"))?.map(str::trim);
    let bearer = match authorization {
        None => None,
        Some(value) => match bearer_value(value) {
            Some(v) if !v.is_empty() => Some(v),
            Some(_) => return Err(missing("Authorization header has an empty bearer value")),
            None => return Err(Denial::new(DenyCode::InvalidToken, "Authorization must use the Bearer scheme")),
        },
    };
    match route.require {
        Requirement::All => {
            let token = bearer.ok_or_else(|| missing("Missing Authorization header"))?;
            let key = secret.ok_or_else(|| missing("Missing SECRET_KEY header"))?;
            let business = business.ok_or_else(|| missing("Missing businessId header"))?;
            Ok(Presented { token: Some(token), key, key_in_bearer: false, business: Some(business) })
        }
        Requirement::Key | Requirement::None => {
            let bearer_key = bearer.filter(|b| route.key_in_bearer && parse_prefix(b).is_some());
            match (secret, bearer_key) {
                (Some(s), Some(b)) if s != b => Err(Denial::new(DenyCode::InvalidApiKey, "Invalid API key")),
                (Some(key), _) => Ok(Presented { token: None, key, key_in_bearer: bearer_key.is_some(), business }),
                (None, Some(key)) => Ok(Presented { token: None, key, key_in_bearer: true, business }),
                (None, None) => Err(missing("Missing API key: send it in the SECRET_KEY header")),
            }
        }
    }
}
