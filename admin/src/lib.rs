//! keygate-admin: signs people and API keys in, issues tokens, manages keys, and feeds
//! snapshots to the Envoy filter. A warp server over an embedded sled store.
//!
//! [`run`] serves on a listener the caller bound (tests bind port 0) until `shutdown`
//! resolves, in the style of mini-redis's `server::run`:
//!
//! ```no_run
//! # async fn demo() -> Result<(), keygate_admin::AdminError> {
//! let (state, _generated) = keygate_admin::AppState::open(keygate_admin::Config::new("./data"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! keygate_admin::run(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod digest;
pub mod error;
pub mod http;
pub mod login_cache;
pub mod metrics;
pub mod oidc;
pub mod openapi;
pub mod passwords;
pub mod random;
pub mod rfc3339;
pub mod route_table;
pub mod seal;
pub mod state;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod ui;

use std::future::Future;

pub use config::{Config, LoginLimitConfig, Secret, StoreLocation, ThrottleConfig};
pub use error::AdminError;
pub use state::{AppState, GeneratedTokens};

/// Serves the admin API on `listener` until `shutdown` resolves, then stops accepting,
/// answers pending long-polls, lets in-flight requests finish, and makes a last flush.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    // The caller's handles; when only these are left, the store is released with them.
    let callers = state.handles();
    let flusher = state.store().start_flusher();
    let housekeeping = tokio::spawn(housekeeping(state.clone()));
    let issuer_refresh = tokio::spawn(oidc::refresh_loop(state.clone()));
    let routes = http::router::routes(state.clone());
    let stopping = state.clone();
    warp::serve(routes)
        .incoming(listener)
        .graceful(async move {
            shutdown.await;
            tracing::info!("shutting down");
            stopping.begin_shutdown();
        })
        .run()
        .await;
    // It stops at the shutdown signal (after a sweep in progress), releasing its handle
    // on the store before the caller may reopen the directory.
    if let Err(e) = housekeeping.await {
        tracing::error!(error = %e, "housekeeping task failed");
    }
    if let Err(e) = issuer_refresh.await {
        tracing::error!(error = %e, "issuer key refresh task failed");
    }
    flusher.shutdown().await?;
    // warp's graceful shutdown resolves when each connection's future has finished, which can
    // be just before that connection's task drops its copy of the routes (and so of the state):
    // wait for those drops, so a caller that reopens the directory right away finds it free.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while state.handles() > callers && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    tracing::info!(version = state.store().durable_version(), "store flushed; stopped");
    Ok(())
}

/// Sweeps the store every `sweep_interval_secs` (see [`store::Store::sweep`]) and
/// reloads the signing keys when one was withdrawn, here or through another replica.
async fn housekeeping(state: AppState) {
    let every = std::time::Duration::from_secs(state.config().sweep_interval_secs.max(1));
    let mut sweeps = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = state.shutting_down();
    let mut signing = state.store().signing_changes();
    loop {
        tokio::select! {
            _ = sweeps.tick() => {
                if let Err(e) = sweep_once(&state).await {
                    tracing::error!(error = %e.chain(), "housekeeping sweep failed");
                }
            }
            Ok(()) = signing.changed() => {
                if let Err(e) = state.tokens().reload(state.store()) {
                    tracing::error!(error = %e.chain(), "cannot reload the signing keys another replica changed");
                }
            }
            _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => return,
        }
    }
}

/// One sweep; public for tests and tools.
pub async fn sweep_once(state: &AppState) -> Result<store::SweepReport, AdminError> {
    let leeway = state.config().token_leeway_secs;
    let store = state.store().clone();
    // Shared sign-in and login counters idle for longer than any of them matters.
    let idle = (state.config().throttle.forget_secs).max(state.config().throttle.max_secs).max(3600);
    let (report, ticket) = tokio::task::spawn_blocking(move || {
        if let Some(shared) = store.shared_limits() {
            if let Err(e) = shared.prune(idle) {
                tracing::warn!(error = %e, "cannot prune the shared sign-in and login counters");
            }
        }
        store.sweep(clock::now(), leeway)
    })
    .await??;
    if let Some(ticket) = ticket {
        state.store().wait_durable(ticket).await?;
    }
    if report.signing_keys > 0 {
        state.tokens().reload(state.store())?;
    }
    if report != store::SweepReport::default() {
        tracing::info!(?report, "housekeeping removed what can no longer matter");
    }
    Ok(report)
}
