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

pub mod auth;
pub mod config;
pub mod error;
pub mod handlers;
pub mod passwords;
pub mod random;
pub mod rfc3339;
pub mod routes;
pub mod state;
pub mod store;
pub mod tokens;

use std::future::Future;

pub use config::{Config, Secret};
pub use error::AdminError;
pub use state::{AppState, GeneratedTokens};

/// Serves the admin API on `listener` until `shutdown` resolves, then stops accepting,
/// answers pending long-polls, lets in-flight requests finish, and makes a last flush.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let flusher = state.store().start_flusher();
    let routes = routes::routes(state.clone());
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
    flusher.shutdown().await?;
    tracing::info!(version = state.store().durable_version(), "store flushed; stopped");
    Ok(())
}
