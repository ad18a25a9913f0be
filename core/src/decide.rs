//! `decide(policy, request, snapshot, now) -> Decision`: the whole per-request check,
//! in the order of the README's decision table. Pure: no I/O, no clock, no panics on any input.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::{Policy, Requirement, Route};
use crate::key::{self, parse_prefix, KeyKind};
use crate::keystore::KeyLookup;
use crate::revoked::RevocationLookup;
use crate::snapshot::{KeyRecord, Snapshot};
use crate::token::{self, AccessClaims, TokenError};
use crate::{UnixTime, IDENTITY_HEADER_PREFIX};

/// Seconds a client is told to wait when the snapshot is missing or stale.
pub const UNAVAILABLE_RETRY_AFTER: u64 = 5;

/// How long a token that failed verification is remembered as failed.
pub const FAILED_TOKEN_TTL_SECS: u64 = 60;

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

/// The snapshot, where its keys are looked up, and when admin last confirmed it current.
#[derive(Clone, Copy)]
pub struct Synced<'a> {
    /// Signing keys and revoked sessions (and, natively, the keys too).
    pub snapshot: &'a Snapshot,
    /// Usually `snapshot` itself; in the filter, the buckets in Envoy's shared data.
    pub keys: &'a dyn KeyLookup,
    /// Likewise for revoked sessions.
    pub revoked: &'a dyn RevocationLookup,
    pub confirmed_at: UnixTime,
}

impl<'a> Synced<'a> {
    /// A snapshot that holds its own keys.
    pub fn local(snapshot: &'a Snapshot, confirmed_at: UnixTime) -> Synced<'a> {
        Synced { snapshot, keys: snapshot, revoked: snapshot, confirmed_at }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyCode {
    MissingCredentials,
    InvalidToken,
    InvalidApiKey,
    BusinessMismatch,
    InsufficientPermission,
    RateLimited,
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
            DenyCode::RateLimited => "rate_limited",
            DenyCode::AuthUnavailable => "auth_unavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            DenyCode::MissingCredentials | DenyCode::InvalidToken | DenyCode::InvalidApiKey => 401,
            DenyCode::BusinessMismatch | DenyCode::InsufficientPermission => 403,
            DenyCode::RateLimited => 429,
            DenyCode::AuthUnavailable => 503,
        }
    }

    pub const ALL: [DenyCode; 7] = [
        DenyCode::MissingCredentials,
        DenyCode::InvalidToken,
        DenyCode::InvalidApiKey,
        DenyCode::BusinessMismatch,
        DenyCode::InsufficientPermission,
        DenyCode::RateLimited,
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
    fn new(code: DenyCode, message: &'static str) -> Denial {
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

/// Which counter a request is charged to, and its hourly allowance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitTarget {
    /// `key:<key id>` or `ip:<client address>`.
    pub bucket: String,
    pub per_hour: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowed {
    /// Lower-case names of request headers to remove before the upstream.
    pub remove_headers: Vec<String>,
    /// Identity headers to set for the upstream.
    pub add_headers: Vec<(&'static str, String)>,
    pub rate_limit: Option<RateLimitTarget>,
    /// The key that was used, for usage reporting.
    pub key_id: Option<String>,
    /// Set on a shadow route: what would have been refused.
    pub shadow_denial: Option<Denial>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial),
}

enum Header<'a> {
    Absent,
    Repeated,
    One(&'a str),
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Header<'a> {
    let mut found = Header::Absent;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case(name) {
            found = match found {
                Header::Absent => Header::One(v.as_str()),
                _ => Header::Repeated,
            };
        }
    }
    match found {
        Header::One(v) if v.trim().is_empty() => Header::Absent,
        other => other,
    }
}

/// The value after `Bearer ` (scheme case-insensitive), or `None` for another scheme.
fn bearer_value(authorization: &str) -> Option<&str> {
    let text = authorization.trim();
    let (scheme, value) = text.split_once(' ').unwrap_or((text, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| value.trim_start())
}

fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Headers removed on every allowed request: the key, and anything posing as identity.
/// CGI-style upstreams (WSGI, Rack, PHP) read `_` and `-` in a header name alike, so a
/// name counts as the key or an identity header whichever of the two it uses; each is
/// removed by the exact (lower-case) name the client sent, since to Envoy
/// `x_keygate_subject` and `x-keygate-subject` are different headers.
fn stripped_headers(headers: &[(String, String)]) -> Vec<String> {
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

/// Access tokens whose signature and claims were verified, so the same token is not
/// verified again until it expires, and tokens that failed, so a forged token costs one
/// signature check per [`FAILED_TOKEN_TTL_SECS`], not one per request. Both are bounded by
/// `capacity` entries: when full, expired entries go, and if that frees nothing that part
/// starts over. A hit still checks expiry, that its signing key is still published and that
/// its session is not revoked, so revocation is immediate. Capacity 0 caches nothing.
#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<String, (String, AccessClaims)>,
    /// Failed tokens by a digest of the token (a flood of long forged tokens stays small):
    /// until when the failure is remembered, and why it failed.
    failed: HashMap<[u8; 16], (UnixTime, TokenError)>,
    /// Signature verifications done through this cache.
    signature_checks: u64,
}

fn token_digest(token: &str) -> [u8; 16] {
    let full: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut short = [0u8; 16];
    short.copy_from_slice(&full[..16]);
    short
}

impl TokenCache {
    /// `capacity` 0 disables caching (every request verifies its token).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache { capacity, entries: HashMap::new(), failed: HashMap::new(), signature_checks: 0 }
    }

    /// Verified tokens held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Failed tokens remembered.
    pub fn failed_len(&self) -> usize {
        self.failed.len()
    }

    /// How many token signatures were verified through this cache.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    /// Keeps verified claims (the caller skips this when caching is off).
    fn insert(&mut self, token: &str, kid: String, claims: AccessClaims, now: UnixTime, leeway: u64) -> &AccessClaims {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, c)| now < c.exp.saturating_add(leeway));
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        &self.entries.entry(token.to_owned()).or_insert((kid, claims)).1
    }

    fn failure(&self, digest: &[u8; 16], now: UnixTime) -> Option<TokenError> {
        self.failed.get(digest).filter(|(until, _)| *until > now).map(|(_, err)| *err)
    }

    fn remember_failure(&mut self, digest: [u8; 16], err: TokenError, now: UnixTime) {
        if self.capacity == 0 {
            return;
        }
        if self.failed.len() >= self.capacity {
            self.failed.retain(|_, (until, _)| *until > now);
            if self.failed.len() >= self.capacity {
                self.failed.clear();
            }
        }
        self.failed.insert(digest, (now.saturating_add(FAILED_TOKEN_TTL_SECS), err));
    }
}

/// The per-request decision. The checks run in the order of the README's decision table. Verifies every token; the
/// filter uses [`decide_cached`].
pub fn decide(policy: &Policy, request: &RequestView<'_>, synced: Option<Synced<'_>>, now: UnixTime) -> Decision {
    decide_cached(policy, request, synced, now, &mut TokenCache::new(0))
}

/// [`decide`] with a cache of verified tokens.
pub fn decide_cached(
    policy: &Policy,
    request: &RequestView<'_>,
    synced: Option<Synced<'_>>,
    now: UnixTime,
    tokens: &mut TokenCache,
) -> Decision {
    decide_on_route(policy, policy.route_for(request.method, request.path), request, synced, now, tokens)
}

/// [`decide_cached`] for a route the caller already matched with [`Policy::route_for`]
/// (the filter needs the route first, to know whether to fetch the client address).
pub fn decide_on_route(
    policy: &Policy,
    route: &Route,
    request: &RequestView<'_>,
    synced: Option<Synced<'_>>,
    now: UnixTime,
    tokens: &mut TokenCache,
) -> Decision {
    let outcome = match route.require {
        Requirement::None => Ok(public(policy, route, request)),
        Requirement::Key | Requirement::All => match fresh(policy, synced, now) {
            Ok(synced) => check_credentials(policy, route, request, synced, now, tokens),
            Err(denial) => Err(denial),
        },
    };
    match outcome {
        Ok(allowed) => Decision::Allow(allowed),
        Err(denial) if route.shadow => Decision::Allow(Allowed {
            remove_headers: stripped_headers(request.headers),
            shadow_denial: Some(denial),
            ..Allowed::default()
        }),
        Err(denial) => Decision::Deny(denial),
    }
}

fn public(policy: &Policy, route: &Route, request: &RequestView<'_>) -> Allowed {
    let client = crate::ratelimit::client_id(request.client_ip, policy.rate_limits.ipv6_prefix_len);
    Allowed {
        remove_headers: stripped_headers(request.headers),
        rate_limit: Some(match route.rate_limit_per_hour {
            Some(per_hour) => RateLimitTarget { bucket: format!("ip:{client}@{}", route.prefix), per_hour },
            None => RateLimitTarget { bucket: format!("ip:{client}"), per_hour: policy.rate_limits.public_per_ip_per_hour },
        }),
        ..Allowed::default()
    }
}

fn fresh<'a>(policy: &Policy, synced: Option<Synced<'a>>, now: UnixTime) -> Result<Synced<'a>, Denial> {
    let unavailable = Denial {
        code: DenyCode::AuthUnavailable,
        message: "Authorization data is unavailable; retry later",
        retry_after: Some(UNAVAILABLE_RETRY_AFTER),
    };
    match synced {
        Some(s) if now.saturating_sub(s.confirmed_at) <= policy.max_staleness_secs => Ok(s),
        _ => Err(unavailable),
    }
}

/// The credentials as presented, after the presence checks.
struct Presented<'a> {
    token: Option<&'a str>,
    key: &'a str,
    key_in_bearer: bool,
    business: Option<&'a str>,
}

fn presented<'a>(route: &Route, headers: &'a [(String, String)]) -> Result<Presented<'a>, Denial> {
    let missing = |message| Denial::new(DenyCode::MissingCredentials, message);
    let authorization = match header(headers, AUTHORIZATION) {
        Header::Absent => None,
        Header::Repeated => return Err(Denial::new(DenyCode::InvalidToken, "Authorization header appears more than once")),
        Header::One(v) => Some(v),
    };
    let secret = match header(headers, SECRET_KEY) {
        Header::Absent => None,
        Header::Repeated => return Err(Denial::new(DenyCode::InvalidApiKey, "Invalid API key")),
        Header::One(v) => Some(v),
    };
    let business = match header(headers, BUSINESS_ID) {
        Header::Absent => None,
        Header::Repeated => return Err(missing("businessId header appears more than once")),
        Header::One(v) => Some(v.trim()),
    };
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

fn invalid_token(err: TokenError) -> Denial {
    let message = match err {
        TokenError::Expired => "Access token has expired",
        TokenError::Revoked => "Access token's session has been revoked",
        TokenError::UnknownKid => "Access token was signed by an unknown key",
        TokenError::NotYetValid => "Access token is not valid yet",
        TokenError::WrongIssuerOrAudience => "Access token was issued for another service",
        _ => "Invalid access token",
    };
    Denial::new(DenyCode::InvalidToken, message)
}

/// A token that passed the cheap checks, waiting for its signature check.
enum TokenStage<'t> {
    /// Verified earlier and still in the cache, unexpired, its signing key still published.
    Cached(&'t str),
    /// To verify with the published key of `kid`.
    Verify(&'t str, String),
}

/// The checks that cost no cryptography: not an API key, header shape, `alg`, `typ` and a
/// published `kid` (or a still-valid cache entry).
fn precheck_token<'t>(
    policy: &Policy,
    snapshot: &Snapshot,
    token: &'t str,
    now: UnixTime,
    cache: &TokenCache,
) -> Result<TokenStage<'t>, Denial> {
    if parse_prefix(token).is_some() {
        return Err(Denial::new(DenyCode::InvalidToken, "Authorization carries an API key where an access token is required"));
    }
    if let Some((kid, claims)) = cache.entries.get(token) {
        if snapshot.signing_key(kid).is_some() {
            if now >= claims.exp.saturating_add(policy.token.leeway) {
                return Err(invalid_token(TokenError::Expired));
            }
            return Ok(TokenStage::Cached(token));
        }
    }
    let kid = token::checked_kid(token).map_err(invalid_token)?;
    if snapshot.signing_key(&kid).is_none() {
        return Err(invalid_token(TokenError::UnknownKid));
    }
    Ok(TokenStage::Verify(token, kid))
}

/// The signature (unless cached, or remembered as failed), the claims and the session.
fn verify_token<'c>(
    policy: &Policy,
    snapshot: &Snapshot,
    revoked: &dyn RevocationLookup,
    stage: TokenStage<'_>,
    now: UnixTime,
    cache: &'c mut TokenCache,
) -> Result<Cow<'c, AccessClaims>, Denial> {
    let claims = match stage {
        TokenStage::Cached(token) => {
            Cow::Borrowed(cache.entries.get(token).map(|(_, c)| c).ok_or_else(|| invalid_token(TokenError::Malformed))?)
        }
        TokenStage::Verify(token, kid) => {
            let digest = token_digest(token);
            if let Some(err) = cache.failure(&digest, now) {
                return Err(invalid_token(err));
            }
            let key = snapshot.signing_key(&kid).ok_or_else(|| invalid_token(TokenError::UnknownKid))?;
            cache.signature_checks += 1;
            match token::verify(token, key, &policy.token, now) {
                // Not yet valid is the one failure that time can cure.
                Err(TokenError::NotYetValid) => return Err(invalid_token(TokenError::NotYetValid)),
                Err(err) => {
                    cache.remember_failure(digest, err, now);
                    return Err(invalid_token(err));
                }
                Ok(claims) if cache.capacity == 0 => Cow::Owned(claims),
                Ok(claims) => Cow::Borrowed(cache.insert(token, kid, claims, now, policy.token.leeway)),
            }
        }
    };
    if revoked.is_revoked(&claims.sid) {
        return Err(invalid_token(TokenError::Revoked));
    }
    Ok(claims)
}

fn check_key(keys: &dyn KeyLookup, raw: &str, now: UnixTime) -> Result<KeyRecord, Denial> {
    let invalid = || Denial::new(DenyCode::InvalidApiKey, "Invalid API key");
    // keygate's format is checksum-checked before any lookup; a value in no keygate shape
    // (a key imported from another gateway) is looked up by its hash, and then its kind
    // and mode are the stored record's.
    let key = key::classify(raw).map_err(|_| invalid())?;
    let record = keys.key(&key.hash()).ok_or_else(invalid)?;
    let expired = record.expires_at.is_some_and(|at| at <= now);
    let claims_differ = key.claims().is_some_and(|(kind, mode)| record.kind != kind || record.mode != mode);
    if !record.active || expired || claims_differ {
        return Err(invalid());
    }
    Ok(record)
}

fn check_credentials(
    policy: &Policy,
    route: &Route,
    request: &RequestView<'_>,
    synced: Synced<'_>,
    now: UnixTime,
    tokens: &mut TokenCache,
) -> Result<Allowed, Denial> {
    let creds = presented(route, request.headers)?;
    // Everything cheap first (the token's shape and kid, then the key's checksum, record
    // and state), so a forged token costs a signature check only next to a valid key.
    let stage = match creds.token {
        Some(token) => Some(precheck_token(policy, synced.snapshot, token, now, tokens)?),
        None => None,
    };
    let key = check_key(synced.keys, creds.key, now)?;
    let claims = match stage {
        Some(stage) => Some(verify_token(policy, synced.snapshot, synced.revoked, stage, now, tokens)?),
        None => None,
    };

    // Business: the key's, and (with a token) among the token's.
    if let Some(business) = creds.business {
        if business != key.business {
            return Err(Denial::new(DenyCode::BusinessMismatch, "businessId does not match the API key's business"));
        }
        if claims.as_ref().is_some_and(|c| !c.businesses.iter().any(|b| b == business)) {
            return Err(Denial::new(DenyCode::BusinessMismatch, "businessId is not among the access token's businesses"));
        }
    }

    // Permission: kind, mode, scopes.
    let forbidden = |message| Denial::new(DenyCode::InsufficientPermission, message);
    if key.kind == KeyKind::Pk && !is_safe_method(request.method) {
        return Err(forbidden("Publishable keys may only use GET, HEAD and OPTIONS"));
    }
    if route.mode.is_some_and(|m| m != key.mode) || claims.as_ref().and_then(|c| c.mode).is_some_and(|m| m != key.mode) {
        return Err(forbidden("Test and live credentials cannot be mixed on this route"));
    }
    let key_has = |scope: &String| key.scopes.is_empty() || key.scopes.contains(scope);
    let token_has = |scope: &String| claims.as_ref().is_none_or(|c| c.scope.is_empty() || c.scopes().any(|s| s == scope));
    if !route.scopes.iter().all(|s| key_has(s) && token_has(s)) {
        return Err(forbidden("The credentials lack a scope this route requires"));
    }

    let mut remove_headers = stripped_headers(request.headers);
    if creds.key_in_bearer {
        // The upstream must never see a raw key, in whichever header it came.
        remove_headers.push(AUTHORIZATION.to_owned());
    }
    let mut add_headers = vec![
        ("x-keygate-business", key.business.clone()),
        ("x-keygate-key-id", key.id.clone()),
        ("x-keygate-mode", key.mode.as_str().to_owned()),
    ];
    if let Some(c) = &claims {
        add_headers.push(("x-keygate-subject", c.sub.clone()));
    }
    if !key.scopes.is_empty() {
        add_headers.push(("x-keygate-scopes", key.scopes.join(" ")));
    }
    let default_limit = match key.kind {
        KeyKind::Sk => policy.rate_limits.sk_per_hour,
        KeyKind::Pk => policy.rate_limits.pk_per_hour,
    };
    Ok(Allowed {
        remove_headers,
        add_headers,
        rate_limit: Some(match route.rate_limit_per_hour {
            // A rule with its own limit counts in its own bucket, apart from the key's default one.
            Some(per_hour) => RateLimitTarget { bucket: format!("key:{}@{}", key.id, route.prefix), per_hour },
            None => RateLimitTarget { bucket: format!("key:{}", key.id), per_hour: default_limit },
        }),
        key_id: Some(key.id.clone()),
        shadow_denial: None,
    })
}

/// What charging an allowed request to its rate limit makes of it: over the limit, a
/// refusal; but a shadow rule never refuses, so there the request goes through with the
/// refusal noted (and counted as `shadow_denied`).
pub fn after_rate_limit(route: &Route, allowed: Allowed, charged: Result<(), Denial>) -> Decision {
    match charged {
        Ok(()) => Decision::Allow(allowed),
        Err(denial) if route.shadow => Decision::Allow(Allowed { shadow_denial: allowed.shadow_denial.or(Some(denial)), ..allowed }),
        Err(denial) => Decision::Deny(denial),
    }
}

/// The denial for a request over its rate limit; `retry_after` in seconds.
pub fn rate_limited(retry_after: u64) -> Denial {
    Denial { code: DenyCode::RateLimited, message: "Rate limit exceeded", retry_after: Some(retry_after.max(1)) }
}
