//! `decide(policy, request, snapshot, now) -> Decision`: the whole per-request check,
//! in the order of the README's decision table. Pure: no I/O, no clock, no panics on any input.
//! The request's headers are read in `request`, refusals built in `denial`, access
//! tokens checked (and cached) in `tokens`, and refusals the snapshot may still cure
//! (an unknown key or `kid`, with holding on) described in `pending`.

mod denial;
mod pending;
mod request;
mod tokens;

pub use denial::{quota_exhausted, rate_limited, Denial, DenyCode};
pub use pending::{Awaited, Outcome, Pending};
pub use request::{RequestView, AUTHORIZATION, BUSINESS_ID, SECRET_KEY};
pub use tokens::{TokenCache, FAILED_TOKEN_TTL_SECS};

use crate::config::{Policy, Requirement, Route};
use crate::credits::CreditCheck;
use crate::key::{self, KeyKind};
use crate::keystore::KeyLookup;
use crate::ratelimit::{Limit, LimitCheck, Scope};
use crate::revoked::RevocationLookup;
use crate::snapshot::{BusinessLimits, KeyRecord, Snapshot};
use crate::UnixTime;
use pending::Refusal;
use request::{is_safe_method, presented, stripped_headers};
use tokens::{precheck_token, verify_token};

/// Seconds a client is told to wait when the snapshot is missing or stale.
pub const UNAVAILABLE_RETRY_AFTER: u64 = 5;

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

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowed {
    /// Lower-case names of request headers to remove before the upstream.
    pub remove_headers: Vec<String>,
    /// Identity headers to set for the upstream.
    pub add_headers: Vec<(&'static str, String)>,
    /// The limits the request is counted against (all must have room).
    pub rate_limits: Vec<LimitCheck>,
    /// The key that was used, for usage reporting.
    pub key_id: Option<String>,
    /// The credits the request spends, when its key has credits (charged after the rate limits).
    pub credits: Option<CreditCheck>,
    /// Set on a shadow route: what would have been refused.
    pub shadow_denial: Option<Denial>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial),
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
    match decide_or_hold(policy, route, request, synced, now, tokens, false) {
        Outcome::Decided(decision) => decision,
        Outcome::Pending(pending) => Decision::Deny(pending.denial),
    }
}

/// [`decide_on_route`], except that with `hold` a request refused only because the
/// snapshot lacks what it names is [`Outcome::Pending`]: a well-formed keygate key the
/// snapshot does not hold (next to a valid access token where the route asks for one), or
/// a token whose `kid` is not published (next to a valid key). Everything else, a shadow
/// route and a stale snapshot included, is decided as by [`decide_on_route`].
pub fn decide_or_hold(
    policy: &Policy,
    route: &Route,
    request: &RequestView<'_>,
    synced: Option<Synced<'_>>,
    now: UnixTime,
    tokens: &mut TokenCache,
    hold: bool,
) -> Outcome {
    let outcome = match route.require {
        Requirement::None => Ok(public(policy, route, request)),
        Requirement::Key | Requirement::All => match fresh(policy, synced, now) {
            Ok(synced) => check_credentials(policy, route, request, synced, now, tokens, hold),
            Err(denial) => Err(denial.into()),
        },
    };
    let decision = match outcome {
        Ok(allowed) => Decision::Allow(allowed),
        Err(refusal) if route.shadow => Decision::Allow(Allowed {
            remove_headers: stripped_headers(request.headers),
            shadow_denial: Some(refusal.denial),
            ..Allowed::default()
        }),
        Err(Refusal { denial, awaited: Some(awaited) }) if hold => return Outcome::Pending(Pending { awaited, denial }),
        Err(refusal) => Decision::Deny(refusal.denial),
    };
    Outcome::Decided(decision)
}

fn public(policy: &Policy, route: &Route, request: &RequestView<'_>) -> Allowed {
    let client = crate::ratelimit::client_id(request.client_ip, policy.rate_limits.ipv6_prefix_len);
    let (bucket, limits) = match &route.rate_limits {
        Some(own) => (format!("ip:{client}@{}", route.prefix), own),
        None => (format!("ip:{client}"), &policy.rate_limits.public_per_ip),
    };
    Allowed {
        remove_headers: stripped_headers(request.headers),
        rate_limits: checks(&bucket, Scope::Address, limits),
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

fn check_key(keys: &dyn KeyLookup, raw: &str, now: UnixTime) -> Result<KeyRecord, Refusal> {
    let invalid = || Denial::new(DenyCode::InvalidApiKey, "Invalid API key");
    // keygate's format is checksum-checked before any lookup; a value in no keygate shape
    // (a key imported from another gateway) is looked up by its hash, and then its kind
    // and mode are the stored record's.
    let key = key::classify(raw).map_err(|_| invalid())?;
    let hash = key.hash();
    let Some(record) = keys.key(&hash) else {
        // Only keygate's own format may be a key issued a moment ago: an imported key
        // comes in bulk, and any printable string would be a candidate.
        return Err(match key {
            key::PresentedKey::Checked(_) => Refusal::unknown(invalid(), Awaited::Key(hash)),
            key::PresentedKey::Legacy(_) => invalid().into(),
        });
    };
    let expired = record.expires_at.is_some_and(|at| at <= now);
    let claims_differ = key.claims().is_some_and(|(kind, mode)| record.kind != kind || record.mode != mode);
    if !record.active || expired || claims_differ {
        return Err(invalid().into());
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
    hold: bool,
) -> Result<Allowed, Refusal> {
    let creds = presented(route, request.headers)?;
    // Everything cheap first (the token's shape and kid, then the key's checksum, record
    // and state), so a forged token costs a signature check only next to a valid key.
    // A request is held for what the snapshot lacks only when the rest of its credentials
    // hold: made-up keys and kids are cheap, valid credentials are not.
    let stage = match creds.token {
        Some(token) => match precheck_token(policy, synced.snapshot, token, creds.business, now, tokens) {
            Ok(stage) => Some(stage),
            Err(refusal) if hold && refusal.awaited.is_some() && check_key(synced.keys, creds.key, now).is_ok() => return Err(refusal),
            Err(refusal) => return Err(refusal.now()),
        },
        None => None,
    };
    let key = match check_key(synced.keys, creds.key, now) {
        Ok(key) => key,
        Err(refusal) if hold && refusal.awaited.is_some() => {
            let token_holds = stage.is_none_or(|stage| verify_token(policy, synced.snapshot, synced.revoked, stage, now, tokens).is_ok());
            return Err(if token_holds { refusal } else { refusal.now() });
        }
        Err(refusal) => return Err(refusal.now()),
    };
    let claims = match stage {
        Some(stage) => Some(verify_token(policy, synced.snapshot, synced.revoked, stage, now, tokens)?),
        None => None,
    };

    // Business: the key's, and (with a token) among the token's.
    if let Some(business) = creds.business {
        if business != key.business {
            return Err(Denial::new(DenyCode::BusinessMismatch, "businessId does not match the API key's business").into());
        }
        if claims.as_ref().is_some_and(|c| !c.businesses.iter().any(|b| b == business)) {
            return Err(Denial::new(DenyCode::BusinessMismatch, "businessId is not among the access token's businesses").into());
        }
    }

    // Permission: kind, mode, scopes.
    let forbidden = |message| Refusal::from(Denial::new(DenyCode::InsufficientPermission, message));
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
    // The filter reads the client address only when a key asks for it: without one, it
    // decides again with the address (see `wants_address`).
    if !key.allowed_ips.is_empty() && !crate::cidr::allows(&key.allowed_ips, request.client_ip) {
        return Err(Denial::new(DenyCode::IpNotAllowed, "The API key may not be used from this address").into());
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
        if c.iss != policy.token.issuer {
            // A token from the business's own identity provider: whose subject it is.
            add_headers.push(("x-keygate-issuer", c.iss.clone()));
        }
    }
    if !key.scopes.is_empty() {
        add_headers.push(("x-keygate-scopes", key.scopes.join(" ")));
    }
    let overrides = synced.snapshot.business_limits(&key.business);
    let rate_limits = key_limits(policy, route, &key, overrides);
    let credits = key.credits.filter(|_| route.cost > 0).map(|c| c.check(&key.id, route.cost, now));
    Ok(Allowed { remove_headers, add_headers, rate_limits, key_id: Some(key.id.clone()), shadow_denial: None, credits })
}

/// The limits a key's request counts against. Per key, the first that is set: the key's
/// own (admin), its business's `per_key` (admin), the rule's, the kind's default; a key's
/// or business's own limits count in the key's one bucket wherever it goes. Per business:
/// the business's `shared` (admin), else the plugin's `rate_limits.business`.
fn key_limits(policy: &Policy, route: &Route, key: &KeyRecord, business: Option<&BusinessLimits>) -> Vec<LimitCheck> {
    let admin_set = key.rate_limits.as_ref().or(business.and_then(|b| b.per_key.as_ref()));
    let (bucket, limits) = match (admin_set, &route.rate_limits) {
        (Some(set), _) => (format!("key:{}", key.id), set),
        // A rule with its own limits counts in its own bucket, apart from the key's defaults.
        (None, Some(own)) => (format!("key:{}@{}", key.id, route.prefix), own),
        (None, None) => (
            format!("key:{}", key.id),
            match key.kind {
                KeyKind::Sk => &policy.rate_limits.sk,
                KeyKind::Pk => &policy.rate_limits.pk,
            },
        ),
    };
    let mut out = checks(&bucket, Scope::Key, limits);
    let shared = business.and_then(|b| b.shared.as_ref()).unwrap_or(&policy.rate_limits.business);
    out.extend(checks(&format!("biz:{}", key.business), Scope::Business, shared));
    out
}

/// Whether `outcome` is a refusal for the client address of a request decided without
/// one: the filter reads the address only then, and decides again.
pub fn wants_address(request: &RequestView<'_>, outcome: &Outcome) -> bool {
    request.client_ip.is_none() && matches!(outcome, Outcome::Decided(Decision::Deny(d)) if d.code == DenyCode::IpNotAllowed)
}

fn checks(bucket: &str, scope: Scope, limits: &[Limit]) -> Vec<LimitCheck> {
    limits.iter().map(|&limit| LimitCheck { bucket: bucket.to_owned(), scope, limit }).collect()
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
