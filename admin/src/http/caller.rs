//! Who is asking: the filters that read the bearer token (operator, proxy or a member or
//! API-key session) and the client address used for throttling.

use std::net::{IpAddr, SocketAddr};

use warp::filters::BoxedFilter;
use warp::Filter;

use crate::auth::{self, Caller};
use crate::state::AppState;

pub fn with_state(state: AppState) -> BoxedFilter<(AppState,)> {
    warp::any().map(move || state.clone()).boxed()
}

pub fn authorization() -> BoxedFilter<(Option<String>,)> {
    warp::header::optional::<String>("authorization").boxed()
}

/// Passes only a caller whose bearer token `check` accepts.
fn holding(state: AppState, check: fn(&AppState, Option<&str>) -> Result<(), crate::error::AdminError>) -> BoxedFilter<(AppState,)> {
    with_state(state)
        .and(authorization())
        .and_then(move |state: AppState, header: Option<String>| async move {
            check(&state, header.as_deref()).map(|()| state).map_err(warp::reject::custom)
        })
        .boxed()
}

/// The operator token only.
pub fn operator(state: AppState) -> BoxedFilter<(AppState,)> {
    holding(state, auth::require_operator)
}

/// The proxy token only.
pub fn proxy(state: AppState) -> BoxedFilter<(AppState,)> {
    holding(state, auth::require_proxy)
}

/// Any caller the API knows (operator, member, API-key session), and which one.
pub fn caller(state: AppState) -> BoxedFilter<(AppState, Caller)> {
    with_state(state)
        .and(authorization())
        .and_then(|state: AppState, header: Option<String>| async move {
            auth::caller(&state, header.as_deref()).map(|caller| (state, caller)).map_err(warp::reject::custom)
        })
        .untuple_one()
        .boxed()
}

/// The client address for throttling (sign-ins and API-key logins): the socket peer, or
/// with `trust_forwarded_for` the last `X-Forwarded-For` entry (the one the nearest proxy
/// appended).
pub fn client_ip(state: AppState) -> BoxedFilter<(IpAddr,)> {
    warp::addr::remote()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .map(move |peer: Option<SocketAddr>, forwarded: Option<String>| {
            let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
            if !state.config().trust_forwarded_for {
                return peer;
            }
            forwarded.as_deref().and_then(|f| f.rsplit(',').next()).and_then(|last| last.trim().parse::<IpAddr>().ok()).unwrap_or(peer)
        })
        .boxed()
}
