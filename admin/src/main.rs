//! The `keygate-admin` command: `serve` runs the server; every other subcommand calls a
//! running server's HTTP API (human-readable output, or `--json`).

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
    after_help = "Every command but `serve` talks to a running server over HTTP (--url, KEYGATE_URL), \
                  with the operator token or a member's access token where one is needed (sled lets only one \
                  process open a data directory, and the server holds it). Output is readable by people; \
                  --json prints the server's JSON answer for scripts. Errors exit with status 1."
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
    /// withdrawn signing keys are swept from the store, seconds.
    #[arg(long, env = "KEYGATE_SWEEP_INTERVAL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    sweep_interval_secs: u64,
    /// Throttle sign-ins and API-key logins by the last X-Forwarded-For address instead of
    /// the socket peer. Only behind a reverse proxy that sets that header; otherwise clients
    /// could forge it.
    #[arg(long, env = "KEYGATE_TRUST_X_FORWARDED_FOR")]
    trust_x_forwarded_for: bool,
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Base URL of the running keygate-admin server.
    #[arg(long, env = "KEYGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Operator bearer token (for business, user, key and session management).
    #[arg(long, env = "KEYGATE_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// A member's access token (from `signin`) instead of the operator token: manages the
    /// keys of the member's own businesses.
    #[arg(long, env = "KEYGATE_ACCESS_TOKEN", hide_env_values = true, conflicts_with = "operator_token")]
    access_token: Option<String>,
    /// Print the server's JSON answer as is (for scripts) instead of a readable summary.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the admin server.
    Serve(ServeArgs),
    /// Create a business (POST /v1/businesses; operator).
    CreateBusiness {
        #[command(flatten)]
        client: ClientArgs,
        /// Display name of the business.
        #[arg(long)]
        name: String,
    },
    /// Create an account (POST /v1/users; operator).
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
    /// Create an API key (POST /v1/businesses/{id}/keys; operator or member). The raw key
    /// is printed only this once: store it now.
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
    /// List a business's keys (GET /v1/businesses/{id}/keys): prefix, state, last use;
    /// never the raw key.
    ListKeys {
        #[command(flatten)]
        client: ClientArgs,
        /// The business id (biz_…).
        #[arg(long)]
        business: String,
    },
    /// Give a key a new raw key, same key id (POST /v1/keys/{id}/rotate). The old raw key
    /// stops working at once (and the key's login sessions are revoked), or after
    /// --grace-secs. The new raw key is printed only this once.
    RotateKey {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
        /// Seconds during which the old raw key still works (default: none).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
    /// Deactivate a key (kept, not deleted): every proxy refuses it within a second.
    DeactivateKey {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
    },
    /// Activate a deactivated key again.
    ActivateKey {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
    },
    /// A key's request counts per hour over the last week, as reported by the proxies.
    KeyUsage {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
    },
    /// Revoke a session (DELETE /v1/sessions/{sid}; the `sid` claim of its tokens):
    /// its tokens fail at every proxy.
    RevokeSession {
        #[command(flatten)]
        client: ClientArgs,
        /// The session id (ses_…).
        #[arg(long)]
        session: String,
    },
    /// Start signing tokens with a new Ed25519 key (POST /v1/signing-keys/rotate; operator).
    /// The previous public key stays published until every token it signed has expired.
    RotateSigningKey {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign in with email and password (POST /auth/signin): prints an access token, a
    /// refresh token and the account's businesses.
    Signin {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        email: String,
        /// Prefer the environment variable.
        #[arg(long, env = "KEYGATE_USER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Exchange a refresh token for a new access token and a new refresh token
    /// (POST /auth/refresh). The old refresh token is spent; presenting it again revokes
    /// the session.
    Refresh {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, env = "KEYGATE_REFRESH_TOKEN", hide_env_values = true)]
        refresh_token: String,
    },
    /// Log in with an API key (POST /auth/login): the same token while it is valid for the
    /// same key and session id; a new --session-id gives a new token.
    Login {
        #[command(flatten)]
        client: ClientArgs,
        /// Prefer the environment variable.
        #[arg(long, env = "KEYGATE_API_KEY", hide_env_values = true)]
        api_key: String,
        #[arg(long)]
        session_id: Option<String>,
    },
    /// Revoke the session of --access-token (POST /auth/logout).
    Logout {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import existing API keys from another gateway (POST /v1/import/keys; operator), so
    /// clients keep their keys. Safe to re-run: keys already imported are skipped.
    #[command(after_help = IMPORT_HELP)]
    Import {
        #[command(flatten)]
        client: ClientArgs,
        /// The file: CSV with a header row (.csv) or JSON lines (.jsonl, .ndjson).
        file: PathBuf,
        /// The file's format, when its extension does not say.
        #[arg(long, value_enum)]
        format: Option<keygate_admin::import::FileFormat>,
        /// Records per request (at most 1000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1000))]
        batch: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
        parallel: u64,
        /// How many rejected lines to list (with their reasons) in the summary.
        #[arg(long, default_value_t = 20)]
        show_rejected: usize,
    },
}

const IMPORT_HELP: &str = "\
FILE FORMAT
  One key per record. Fields:
    business    the business id (biz_...); the business must exist
    kind        sk or pk
    mode        live or test
    name        optional display name
    expires_at  optional expiry, RFC 3339 (2030-01-01T00:00:00Z)
    key         the raw key (hashed on import; never stored, logged or shown)
    key_sha256  OR: the hex SHA-256 of the raw key's bytes (e.g. `printf %s \"$KEY\" | sha256sum`)
  Each record has key or key_sha256, not both. A raw key in keygate's own format must
  have a valid checksum and a prefix matching kind and mode; any other key (another
  gateway's, 8 to 256 printable ASCII characters without spaces) is accepted and found
  by its hash, with the kind and mode given here.

  CSV (.csv): a header row naming the columns, in any order; empty cells are absent.
    business,kind,mode,name,expires_at,key,key_sha256
    biz_4fT0aB12cD34eF56,sk,live,billing server,,sk_live_51Hx2vendorKEYexample,
    biz_4fT0aB12cD34eF56,pk,test,,2030-01-01T00:00:00Z,,9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

  JSON lines (.jsonl, .ndjson): one object per line, string fields.
    {\"business\":\"biz_4fT0aB12cD34eF56\",\"kind\":\"sk\",\"mode\":\"live\",\"key\":\"sk_live_51Hx2vendorKEYexample\"}

RESULT
  Every record is imported, skipped (that key is already stored for the same business,
  kind and mode: a re-run skips what an earlier run imported) or rejected with its line
  number and a reason (bad CSV/JSON, a missing or bad field, an unknown business). Each
  request's keys are on disk before the server answers; after an interrupted run,
  re-run the same file. A progress bar shows on a terminal (not with --json).

EXIT STATUS
  0  the file was processed and no line was rejected
  2  the file was processed and some lines were rejected (see the summary)
  1  failure: the file could not be read, the header is wrong, or the server refused
     or could not be reached (the batches answered before that are stored)";

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
    config.max_sessions_per_key = usize::try_from(args.max_sessions_per_key).unwrap_or(usize::MAX);
    config.max_sessions_per_user = usize::try_from(args.max_sessions_per_user).unwrap_or(usize::MAX);
    config.login_limit.per_client_per_minute = args.login_rate_per_client;
    config.login_limit.per_key_per_minute = args.login_rate_per_key;
    config.max_queued_password_hashes = usize::try_from(args.password_queue).unwrap_or(usize::MAX);
    config.refresh_ttl_secs = args.refresh_grace_secs;
    config.sweep_interval_secs = args.sweep_interval_secs;
    config.trust_forwarded_for = args.trust_x_forwarded_for;
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

/// Which bearer a call sends.
enum As {
    Nobody,
    Admin,
    Token,
}

async fn call(
    client: &ClientArgs,
    method: reqwest::Method,
    path: &str,
    bearer: As,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{}", client.url.trim_end_matches('/'), path);
    let mut request = reqwest::Client::new().request(method, &url);
    match bearer {
        As::Nobody => {}
        As::Admin => match (&client.operator_token, &client.access_token) {
            (Some(token), _) | (None, Some(token)) => request = request.bearer_auth(token),
            (None, None) => bail!("this command needs --operator-token (KEYGATE_OPERATOR_TOKEN) or --access-token (KEYGATE_ACCESS_TOKEN)"),
        },
        As::Token => match &client.access_token {
            Some(token) => request = request.bearer_auth(token),
            None => bail!("this command needs --access-token (KEYGATE_ACCESS_TOKEN)"),
        },
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.context("cannot read the answer")?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        if client.json {
            println!("{value}");
        }
        let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("no details");
        let code = value.get("code").and_then(|e| e.as_str()).unwrap_or("?");
        bail!("the server answered {status}: {message} ({code})");
    }
    Ok(value)
}

fn scalar(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.iter().map(scalar).collect::<Vec<_>>().join(", ")
            }
        }
        other => other.to_string(),
    }
}

/// `field: value` lines, in the server's order.
fn print_fields(value: &serde_json::Value) {
    match value.as_object() {
        Some(fields) => {
            let width = fields.keys().map(String::len).max().unwrap_or(0);
            for (name, v) in fields {
                println!("{name:<width$}  {}", scalar(v));
            }
        }
        None => println!("{}", scalar(value)),
    }
}

fn print_keys(value: &serde_json::Value) {
    let keys = value.get("keys").and_then(|k| k.as_array()).cloned().unwrap_or_default();
    if keys.is_empty() {
        println!("no keys");
        return;
    }
    println!("{:<20}  {:<12}  {:<4}  {:<4}  {:<8}  {:<20}  {:<20}  NAME", "ID", "PREFIX", "KIND", "MODE", "STATE", "LAST USED", "EXPIRES");
    for k in keys {
        let state = if k["active"] == serde_json::Value::Bool(true) { "active" } else { "inactive" };
        println!(
            "{:<20}  {:<12}  {:<4}  {:<4}  {:<8}  {:<20}  {:<20}  {}",
            scalar(&k["id"]),
            scalar(&k["prefix"]),
            scalar(&k["kind"]),
            scalar(&k["mode"]),
            state,
            scalar(&k["last_used_at"]),
            scalar(&k["expires_at"]),
            scalar(&k["name"])
        );
    }
}

fn print_usage(value: &serde_json::Value) {
    println!("key           {}", scalar(&value["key_id"]));
    println!("last used     {}", scalar(&value["last_used_at"]));
    println!("total (week)  {}", scalar(&value["total"]));
    for hour in value["hours"].as_array().cloned().unwrap_or_default() {
        println!("  {}  {}", scalar(&hour["hour"]), scalar(&hour["count"]));
    }
}

enum Shape {
    Fields,
    Keys,
    Usage,
}

fn show(client: &ClientArgs, value: &serde_json::Value, shape: Shape, note: Option<&str>) {
    if client.json {
        println!("{value}");
        return;
    }
    match shape {
        Shape::Fields => print_fields(value),
        Shape::Keys => print_keys(value),
        Shape::Usage => print_usage(value),
    }
    if let Some(note) = note {
        eprintln!("{note}");
    }
}

const SHOWN_ONCE: &str = "The raw key above is shown only this once; store it now.";

async fn run_command(command: Command) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        Command::Serve(args) => return serve(args).await,
        Command::CreateBusiness { client, name } => {
            let v = call(&client, Method::POST, "/v1/businesses", As::Admin, Some(serde_json::json!({ "name": name }))).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::CreateUser { client, email, password, businesses } => {
            let body = serde_json::json!({ "email": email, "password": password, "businesses": businesses });
            let v = call(&client, Method::POST, "/v1/users", As::Admin, Some(body)).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::CreateKey { client, business, kind, mode, name, scopes, expires_at } => {
            let mut body = serde_json::json!({ "kind": kind, "mode": mode, "scopes": scopes });
            if let Some(name) = name {
                body["name"] = serde_json::Value::String(name);
            }
            if let Some(expires_at) = expires_at {
                body["expires_at"] = serde_json::Value::String(expires_at);
            }
            let v = call(&client, Method::POST, &format!("/v1/businesses/{business}/keys"), As::Admin, Some(body)).await?;
            show(&client, &v, Shape::Fields, Some(SHOWN_ONCE));
        }
        Command::ListKeys { client, business } => {
            let v = call(&client, Method::GET, &format!("/v1/businesses/{business}/keys"), As::Admin, None).await?;
            show(&client, &v, Shape::Keys, None);
        }
        Command::RotateKey { client, key, grace_secs } => {
            let body = match grace_secs {
                Some(g) => serde_json::json!({ "grace_secs": g }),
                None => serde_json::json!({}),
            };
            let v = call(&client, Method::POST, &format!("/v1/keys/{key}/rotate"), As::Admin, Some(body)).await?;
            show(&client, &v, Shape::Fields, Some(SHOWN_ONCE));
        }
        Command::DeactivateKey { client, key } => {
            let v = call(&client, Method::POST, &format!("/v1/keys/{key}/deactivate"), As::Admin, None).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::ActivateKey { client, key } => {
            let v = call(&client, Method::POST, &format!("/v1/keys/{key}/activate"), As::Admin, None).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::KeyUsage { client, key } => {
            let v = call(&client, Method::GET, &format!("/v1/keys/{key}/usage"), As::Admin, None).await?;
            show(&client, &v, Shape::Usage, None);
        }
        Command::RevokeSession { client, session } => {
            let v = call(&client, Method::DELETE, &format!("/v1/sessions/{session}"), As::Admin, None).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::RotateSigningKey { client } => {
            let v = call(&client, Method::POST, "/v1/signing-keys/rotate", As::Admin, None).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::Signin { client, email, password } => {
            let body = serde_json::json!({ "email": email, "password": password });
            let v = call(&client, Method::POST, "/auth/signin", As::Nobody, Some(body)).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::Refresh { client, refresh_token } => {
            let body = serde_json::json!({ "refresh_token": refresh_token });
            let v = call(&client, Method::POST, "/auth/refresh", As::Nobody, Some(body)).await?;
            show(&client, &v, Shape::Fields, Some("The previous refresh token is now spent; presenting it again revokes the session."));
        }
        Command::Login { client, api_key, session_id } => {
            let mut body = serde_json::json!({ "api_key": api_key });
            if let Some(sid) = session_id {
                body["session_id"] = serde_json::Value::String(sid);
            }
            let v = call(&client, Method::POST, "/auth/login", As::Nobody, Some(body)).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::Logout { client } => {
            let v = call(&client, Method::POST, "/auth/logout", As::Token, None).await?;
            show(&client, &v, Shape::Fields, None);
        }
        Command::Import { client, file, format, batch, parallel, show_rejected } => {
            let Some(operator_token) = client.operator_token.clone() else {
                bail!("import needs --operator-token (KEYGATE_OPERATOR_TOKEN)");
            };
            let cmd = keygate_admin::import::ImportCommand {
                url: client.url.clone(),
                operator_token,
                file,
                format,
                batch: usize::try_from(batch).unwrap_or(1000),
                parallel: usize::try_from(parallel).unwrap_or(2),
                show_rejected,
                json: client.json,
            };
            let summary = keygate_admin::import::run(&cmd).await?;
            if client.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                keygate_admin::import::print_summary(&summary);
            }
            if summary.rejected > 0 {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    run_command(cli.command).await
}
