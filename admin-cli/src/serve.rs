//! `keygate-admin serve`: the flags and their environment variables, turned into a
//! [`Config`], then the server until ctrl-c or SIGTERM.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;
use keygate_admin::{AppState, Config, Secret, StoreLocation};

use crate::seal_key::SealKeySource;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

// No doc comment here: clap would take it for help text.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed as
    /// `keygate-admin listening on <ip:port>`).
    #[arg(long, env = "KEYGATE_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Directory of the sled database (created if missing). One process at a time.
    /// The same as `--store sled:<DIR>`.
    #[arg(long, env = "KEYGATE_DATA", default_value = "./data")]
    data: PathBuf,
    /// Where the store lives, instead of --data: `sled:<DIR>`, or a PostgreSQL URL
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME` (the table is created if missing).
    /// PostgreSQL: any number of admin replicas may share one database; no TLS: reach the
    /// database over loopback, a local socket or a TLS-terminating sidecar.
    #[arg(long, env = "KEYGATE_STORE", hide_env_values = true, value_parser = StoreLocation::parse)]
    store: Option<StoreLocation>,
    /// Operator bearer token (business, user and key management). Unset: the stored one
    /// is kept, or on first start one is generated, printed once, and only its SHA-256 kept.
    #[arg(long, env = "KEYGATE_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// Proxy bearer token (the filter's snapshot feed). Same rules as --operator-token.
    #[arg(long, env = "KEYGATE_PROXY_TOKEN", hide_env_values = true)]
    proxy_token: Option<String>,
    #[command(flatten)]
    seal_keys: SealKeySource,
    /// `iss` claim of issued access tokens.
    #[arg(long, env = "KEYGATE_ISSUER", default_value = "keygate")]
    issuer: String,
    /// `aud` claim of issued access tokens.
    #[arg(long, env = "KEYGATE_AUDIENCE", default_value = "keygate-api")]
    audience: String,
    /// Lifetime of access tokens, seconds (a few seconds only for tests).
    #[arg(long, env = "KEYGATE_TOKEN_TTL_SECS", default_value_t = 7200, value_parser = clap::value_parser!(u64).range(1..=86_400 * 30))]
    token_ttl_secs: u64,
    /// sled page cache size, MiB.
    #[arg(long, env = "KEYGATE_CACHE_CAPACITY_MB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    cache_capacity_mb: u64,
    /// Live sessions per API key (one per `session_id` given to /auth/login). A new session
    /// beyond this revokes the oldest live session opened from the same client address;
    /// when all belong to other clients, the login is refused (429 `session_limit_reached`,
    /// Retry-After until the first of them expires).
    #[arg(long, env = "KEYGATE_MAX_SESSIONS_PER_KEY", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_sessions_per_key: u64,
    /// API-key logins that open or renew a session, per minute, from one client address (an
    /// IPv6 client counts by its /64); more get 429 `rate_limited` with Retry-After. A
    /// repeated login answered with the same token does not count.
    #[arg(long, env = "KEYGATE_LOGIN_RATE_PER_CLIENT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    login_rate_per_client: u32,
    /// The same, per API key across all clients.
    #[arg(long, env = "KEYGATE_LOGIN_RATE_PER_KEY", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    login_rate_per_key: u32,
    /// Password checks (sign-ins, new users) that may wait for one of the 4 argon2 slots;
    /// past this, a request is answered 503 `busy` with Retry-After instead of queueing.
    #[arg(long, env = "KEYGATE_PASSWORD_QUEUE", default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    password_queue: u64,
    /// Live sign-in sessions per account. A new sign-in beyond this revokes the oldest.
    #[arg(long, env = "KEYGATE_MAX_SESSIONS_PER_USER", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_sessions_per_user: u64,
    /// Seconds a refresh token stays usable after its access token expired (default 30 days).
    #[arg(long, env = "KEYGATE_REFRESH_GRACE_SECS", default_value_t = 30 * 24 * 3600)]
    refresh_grace_secs: u64,
    /// How often dead sessions, lapsed revocations, ended key-rotation graces and
    /// withdrawn signing keys (and audit entries past their retention) are swept from the store, seconds.
    #[arg(long, env = "KEYGATE_SWEEP_INTERVAL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    sweep_interval_secs: u64,
    /// Audit log entries kept at most; the oldest goes when a new one comes.
    #[arg(long, env = "KEYGATE_AUDIT_MAX_ENTRIES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    audit_max_entries: u64,
    /// Days an audit log entry is kept (0: no age limit); older ones are swept.
    #[arg(long, env = "KEYGATE_AUDIT_MAX_AGE_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(0..=36_500))]
    audit_max_age_days: u64,
    /// How often the signing keys of trusted issuers (tokens from a business's own identity
    /// provider) are fetched again, seconds; a change reaches every proxy through the feed
    /// within about this plus the feed's delay.
    #[arg(long, env = "KEYGATE_ISSUER_REFRESH_SECS", default_value_t = keygate_admin::oidc::DEFAULT_REFRESH_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    issuer_refresh_secs: u64,
    /// A PEM file of CA certificates to trust for `https://` issuers, besides the Mozilla
    /// roots built in: a private CA's, or a test issuer's.
    #[arg(long, env = "KEYGATE_ISSUER_CA_FILE", value_name = "PEM")]
    issuer_ca_file: Option<PathBuf>,
    /// Fetch trusted issuers' discovery documents and JWKS from public addresses only:
    /// refuse loopback and private ones (RFC 1918, unique local, 100.64.0.0/10). Link-local
    /// addresses (cloud metadata services) are refused with or without it.
    #[arg(long, env = "KEYGATE_ISSUER_PUBLIC_ONLY")]
    issuer_public_only: bool,
    /// Throttle sign-ins and API-key logins by the last X-Forwarded-For address instead of
    /// the socket peer. Only behind a reverse proxy that sets that header; otherwise clients
    /// could forge it.
    #[arg(long, env = "KEYGATE_TRUST_X_FORWARDED_FOR")]
    trust_x_forwarded_for: bool,
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
}

impl ServeArgs {
    /// The server's configuration from the flags.
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = Config::at(self.store.unwrap_or(StoreLocation::Sled(self.data)));
        // An empty value (`KEYGATE_OPERATOR_TOKEN=` in a compose file) means unset.
        config.operator_token = self.operator_token.filter(|t| !t.is_empty()).map(Secret::new);
        config.proxy_token = self.proxy_token.filter(|t| !t.is_empty()).map(Secret::new);
        config.issuer = self.issuer;
        config.audience = self.audience;
        config.token_ttl_secs = self.token_ttl_secs;
        config.cache_capacity_bytes = self.cache_capacity_mb.saturating_mul(1024 * 1024);
        config.max_sessions_per_key = usize::try_from(self.max_sessions_per_key).unwrap_or(usize::MAX);
        config.max_sessions_per_user = usize::try_from(self.max_sessions_per_user).unwrap_or(usize::MAX);
        config.login_limit.per_client_per_minute = self.login_rate_per_client;
        config.login_limit.per_key_per_minute = self.login_rate_per_key;
        config.max_queued_password_hashes = usize::try_from(self.password_queue).unwrap_or(usize::MAX);
        config.refresh_ttl_secs = self.refresh_grace_secs;
        config.sweep_interval_secs = self.sweep_interval_secs;
        config.audit_max_entries = self.audit_max_entries;
        config.audit_max_age_days = self.audit_max_age_days;
        config.issuer_refresh_secs = self.issuer_refresh_secs;
        config.issuer_ca_file = self.issuer_ca_file;
        config.issuer_public_only = self.issuer_public_only;
        config.trust_forwarded_for = self.trust_x_forwarded_for;
        config.seal_keys = self.seal_keys.read().context("cannot read the seal keys")?;
        Ok(config)
    }
}

/// Logs on stderr, level from RUST_LOG (default info).
fn init_tracing(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // warp's request-span wrapper (which carries the request id) logs two lines of its own
    // per request, and a warning per 4xx; the `keygate_admin::http` line already says it all.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("warp::filters::trace")) {
        if let Ok(directive) = "warp::filters::trace=off".parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves at ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Opens the store, binds, prints the generated tokens and the listening line on stdout
/// (what scripts and tests wait for), and serves until ctrl-c or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    // Never the URL itself: it may hold a password.
    let data = match &args.store {
        None => args.data.display().to_string(),
        Some(StoreLocation::Sled(dir)) => dir.display().to_string(),
        Some(location) => location.describe(),
    };
    let listen = args.addr.clone();
    let config = args.into_config()?;
    // Opening runs blocking I/O (sled's files, or PostgreSQL on its own threads); fine
    // before serving starts.
    let (state, generated) = AppState::open(config).with_context(|| format!("cannot open the store in {data}"))?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    if let Some(token) = &generated.operator {
        writeln!(out, "keygate-admin generated operator token (shown once, only its hash is stored): {}", token.expose())?;
    }
    if let Some(token) = &generated.proxy {
        writeln!(out, "keygate-admin generated proxy token (shown once, only its hash is stored): {}", token.expose())?;
    }
    writeln!(out, "keygate-admin listening on {addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, data = %data, "serving");
    keygate_admin::run(listener, state, shutdown_signal()).await.context("server failed")?;
    Ok(())
}
