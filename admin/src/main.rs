//! The `keygate-admin` command: `serve` runs the server; `create-business`,
//! `create-user` and `create-key` call a running server's HTTP API.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use keygate_admin::{AppState, Config, Secret};

#[derive(Parser)]
#[command(
    name = "keygate-admin",
    version,
    about = "keygate's admin server: accounts, API keys, tokens and the filter's snapshot feed.",
    after_help = "The create-* commands talk to a running server over HTTP with the operator token \
                  (sled lets only one process open a data directory, and the server holds it)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed as
    /// `keygate-admin listening on <ip:port>`).
    #[arg(long, env = "KEYGATE_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Directory of the sled database (created if missing). One process at a time.
    #[arg(long, env = "KEYGATE_DATA", default_value = "./data")]
    data: PathBuf,
    /// Operator bearer token (business, user and key management). Unset: the stored one
    /// is kept, or on first start one is generated, printed once, and only its SHA-256 kept.
    #[arg(long, env = "KEYGATE_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// Proxy bearer token (the filter's snapshot feed). Same rules as --operator-token.
    #[arg(long, env = "KEYGATE_PROXY_TOKEN", hide_env_values = true)]
    proxy_token: Option<String>,
    /// `iss` claim of issued access tokens.
    #[arg(long, env = "KEYGATE_ISSUER", default_value = "keygate")]
    issuer: String,
    /// `aud` claim of issued access tokens.
    #[arg(long, env = "KEYGATE_AUDIENCE", default_value = "keygate-api")]
    audience: String,
    /// Lifetime of access tokens, seconds.
    #[arg(long, env = "KEYGATE_TOKEN_TTL_SECS", default_value_t = 7200, value_parser = clap::value_parser!(u64).range(60..=86_400 * 30))]
    token_ttl_secs: u64,
    /// sled page cache size, MiB.
    #[arg(long, env = "KEYGATE_CACHE_CAPACITY_MB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    cache_capacity_mb: u64,
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Base URL of the running keygate-admin server.
    #[arg(long, env = "KEYGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Operator bearer token.
    #[arg(long, env = "KEYGATE_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the admin server.
    Serve(ServeArgs),
    /// Create a business through a running server's HTTP API (POST /v1/businesses); prints the JSON answer.
    CreateBusiness {
        #[command(flatten)]
        client: ClientArgs,
        /// Display name of the business.
        #[arg(long)]
        name: String,
    },
    /// Create a user through a running server's HTTP API (POST /v1/users); prints the JSON answer.
    CreateUser {
        #[command(flatten)]
        client: ClientArgs,
        /// The account's email (trimmed and lowercased by the server).
        #[arg(long)]
        email: String,
        /// The password (at least 8 characters). Prefer the environment variable.
        #[arg(long, env = "KEYGATE_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// A business id the user belongs to; repeat for several.
        #[arg(long = "business", required = true)]
        businesses: Vec<String>,
    },
    /// Create an API key through a running server's HTTP API (POST /v1/businesses/{id}/keys);
    /// prints the JSON answer, whose `key` is shown only this once.
    CreateKey {
        #[command(flatten)]
        client: ClientArgs,
        /// The business id (biz_…).
        #[arg(long)]
        business: String,
        /// sk (secret, full access) or pk (publishable, read-only).
        #[arg(long, default_value = "sk", value_parser = ["sk", "pk"])]
        kind: String,
        /// live or test.
        #[arg(long, default_value = "test", value_parser = ["live", "test"])]
        mode: String,
        /// A display name for the key.
        #[arg(long)]
        name: Option<String>,
        /// A scope; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Expiry, RFC 3339 (e.g. 2030-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let mut config = Config::new(&args.data);
    // An empty value (`KEYGATE_OPERATOR_TOKEN=` in a compose file) means unset.
    config.operator_token = args.operator_token.filter(|t| !t.is_empty()).map(Secret::new);
    config.proxy_token = args.proxy_token.filter(|t| !t.is_empty()).map(Secret::new);
    config.issuer = args.issuer;
    config.audience = args.audience;
    config.token_ttl_secs = args.token_ttl_secs;
    config.cache_capacity_bytes = args.cache_capacity_mb.saturating_mul(1024 * 1024);
    let data = args.data.display().to_string();
    // sled's open runs blocking file I/O; fine before serving starts.
    let (state, generated) = AppState::open(config).with_context(|| format!("cannot open the store in {data}"))?;
    let listener = tokio::net::TcpListener::bind(&args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
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

async fn call(client: &ClientArgs, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let url = format!("{}{}", client.url.trim_end_matches('/'), path);
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&client.operator_token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.context("cannot read the answer")?;
    println!("{text}");
    if !status.is_success() {
        bail!("the server answered {status}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::CreateBusiness { client, name } => call(&client, "/v1/businesses", serde_json::json!({ "name": name })).await,
        Command::CreateUser { client, email, password, businesses } => {
            call(&client, "/v1/users", serde_json::json!({ "email": email, "password": password, "businesses": businesses })).await
        }
        Command::CreateKey { client, business, kind, mode, name, scopes, expires_at } => {
            let mut body = serde_json::json!({ "kind": kind, "mode": mode, "scopes": scopes });
            if let Some(name) = name {
                body["name"] = serde_json::Value::String(name);
            }
            if let Some(expires_at) = expires_at {
                body["expires_at"] = serde_json::Value::String(expires_at);
            }
            call(&client, &format!("/v1/businesses/{business}/keys"), body).await
        }
    }
}
