//! The subcommands that call a running server's HTTP API, one call each: the shared
//! connection flags, the call itself (bearer, errors), and which output shape each shows.

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::output::{show, Shape};

// The flags of every subcommand that calls the server (import too). Plain comments, not
// doc comments, on these derive types: clap would take a doc comment for help text.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// Base URL of the running keygate-admin server.
    #[arg(long, env = "KEYGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Operator bearer token (for business, user, key and session management).
    #[arg(long, env = "KEYGATE_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// A member's access token (from `signin`) instead of the operator token: manages the
    /// keys of the member's own businesses.
    #[arg(long, env = "KEYGATE_ACCESS_TOKEN", hide_env_values = true, conflicts_with = "operator_token")]
    pub access_token: Option<String>,
    /// Print the server's JSON answer as is (for scripts) instead of a readable summary.
    #[arg(long)]
    pub json: bool,
}

// Flattened into the top-level subcommands, between `serve` and `import`.
#[derive(Subcommand)]
pub enum ClientCommand {
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
        /// Give the key this many credits (uses); without it the key is unlimited.
        #[arg(long)]
        credits: Option<u64>,
        /// With --credits: refill to AMOUNT every UTC day or month, as day:AMOUNT or month:AMOUNT.
        #[arg(long, requires = "credits", value_parser = parse_refill)]
        refill: Option<serde_json::Value>,
        /// An address range the key may be used from (10.0.0.0/8, 2001:db8::/32, or one
        /// address); repeat for several. Without any: from anywhere.
        #[arg(long = "allowed-ip")]
        allowed_ips: Vec<String>,
        /// The key's own limit, <count>/<s|m|h|d> (e.g. 10/s); repeat for several windows.
        /// Replaces its business's and the filters' defaults.
        #[arg(long = "rate-limit")]
        rate_limits: Vec<String>,
    },
    /// Change a key's settings (PATCH /v1/keys/{id}; operator or member): expiry, address
    /// allowlist, own limits. What is not given stays as it is.
    UpdateKey {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
        /// New expiry, RFC 3339.
        #[arg(long, conflicts_with = "no_expiry")]
        expires_at: Option<String>,
        /// Remove the expiry.
        #[arg(long)]
        no_expiry: bool,
        /// Replace the address allowlist with these ranges; repeat for several.
        #[arg(long = "allowed-ip", conflicts_with = "any_ip")]
        allowed_ips: Vec<String>,
        /// Remove the address allowlist (usable from anywhere).
        #[arg(long)]
        any_ip: bool,
        /// Replace the key's own limits with these (<count>/<s|m|h|d>); repeat for several.
        #[arg(long = "rate-limit", conflicts_with = "default_limits")]
        rate_limits: Vec<String>,
        /// Remove the key's own limits (back to its business's or the filters' defaults).
        #[arg(long)]
        default_limits: bool,
    },
    /// Show a business's own limits (GET /v1/businesses/{id}/limits; operator or member).
    BusinessLimits {
        #[command(flatten)]
        client: ClientArgs,
        /// The business id (biz_…).
        #[arg(long)]
        business: String,
    },
    /// Set a business's own limits (PATCH /v1/businesses/{id}/limits; operator or member):
    /// --per-key for each of its keys (replacing the filters' rule and kind defaults),
    /// --shared for all its keys together. What is not given stays as it is.
    SetBusinessLimits {
        #[command(flatten)]
        client: ClientArgs,
        /// The business id (biz_…).
        #[arg(long)]
        business: String,
        /// A per-key limit, <count>/<s|m|h|d>; repeat for several windows.
        #[arg(long = "per-key", conflicts_with = "clear_per_key")]
        per_key: Vec<String>,
        /// Remove the per-key limits.
        #[arg(long)]
        clear_per_key: bool,
        /// A limit all the business's keys share, <count>/<s|m|h|d>; repeat for several.
        #[arg(long = "shared", conflicts_with = "clear_shared")]
        shared: Vec<String>,
        /// Remove the shared limits.
        #[arg(long)]
        clear_shared: bool,
    },
    /// A key's credits: read them, set (or clear) the balance, or add to it
    /// (GET / PUT /v1/keys/{id}/credits, POST /v1/keys/{id}/credits/add).
    #[command(subcommand)]
    Credits(CreditsCommand),
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
    /// Trust a business's own identity provider (POST /v1/businesses/{id}/issuers; operator
    /// or member): its access tokens are then accepted next to the business's API keys.
    /// The server fetches the provider's signing keys (OIDC discovery unless --jwks-uri or
    /// --jwks-file) before it answers, pins them, and refreshes them periodically.
    AddIssuer {
        #[command(flatten)]
        client: ClientArgs,
        /// The business id (biz_…).
        #[arg(long)]
        business: String,
        /// The exact `iss` of the provider's tokens.
        #[arg(long)]
        issuer: String,
        /// An accepted `aud`; repeat for several.
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// RS256, ES256 or EdDSA; repeat for several (default RS256).
        #[arg(long = "algorithm", value_parser = ["RS256", "ES256", "EdDSA"])]
        algorithms: Vec<String>,
        /// The claim listing the businesses a token is for (default `businesses`).
        #[arg(long)]
        businesses_claim: Option<String>,
        /// The provider's JWKS URL, instead of OIDC discovery.
        #[arg(long, conflicts_with = "jwks_file")]
        jwks_uri: Option<String>,
        /// A JWKS document to pin as is (never fetched), instead of OIDC discovery.
        #[arg(long)]
        jwks_file: Option<std::path::PathBuf>,
    },
    /// List a business's trusted identity providers and their pinned keys
    /// (GET /v1/businesses/{id}/issuers).
    ListIssuers {
        #[command(flatten)]
        client: ClientArgs,
        /// The business id (biz_…).
        #[arg(long)]
        business: String,
    },
    /// Stop trusting an identity provider (DELETE /v1/issuers/{id}): its tokens are refused
    /// at every proxy once the feed reaches them.
    RemoveIssuer {
        #[command(flatten)]
        client: ClientArgs,
        /// The issuer id (iss_…).
        #[arg(long)]
        issuer: String,
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
    /// The audit log, newest first (GET /v1/audit; operator: every entry, member: their
    /// businesses'). Prints the cursor for the next page when there is one.
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        /// Entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Entries at or before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// key, business, user, session, signing_key or import.
        #[arg(long)]
        object_type: Option<String>,
        #[arg(long)]
        object_id: Option<String>,
        /// One business's entries (biz_…).
        #[arg(long)]
        business: Option<String>,
        /// One action, e.g. key.rotate.
        #[arg(long)]
        action: Option<String>,
        /// Entries per page, 1 to 500 (default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor printed after the previous page: older entries.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// `value` percent-encoded for a query string (all but unreserved characters).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Subcommand)]
pub enum CreditsCommand {
    /// Remaining credits as admin knows them (balance less what the proxies reported
    /// spending), the refill, and when spending was last reconciled.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
    },
    /// Set the balance (a new epoch: what was spent before no longer counts), or make the
    /// key unlimited again with --unlimited.
    Set {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
        /// Uses left.
        #[arg(long, required_unless_present = "unlimited", conflicts_with = "unlimited")]
        remaining: Option<u64>,
        /// Refill to AMOUNT every UTC day or month: day:AMOUNT or month:AMOUNT.
        #[arg(long, value_parser = parse_refill, conflicts_with = "unlimited")]
        refill: Option<serde_json::Value>,
        /// Clear the credits: the key is unlimited.
        #[arg(long)]
        unlimited: bool,
    },
    /// Add credits to the current balance (what was spent still counts).
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// The key id (key_…).
        #[arg(long)]
        key: String,
        #[arg(long)]
        amount: u64,
    },
}

/// `day:100` or `month:5000` as the API's refill object.
fn parse_refill(text: &str) -> Result<serde_json::Value, String> {
    let (interval, amount) = text.split_once(':').ok_or("expected day:AMOUNT or month:AMOUNT")?;
    if !matches!(interval, "day" | "month") {
        return Err("the interval is day or month".to_owned());
    }
    let amount: u64 = amount.parse().map_err(|_| "AMOUNT must be a whole number".to_owned())?;
    Ok(serde_json::json!({ "interval": interval, "amount": amount }))
}

/// Which bearer a call sends.
enum As {
    Nobody,
    Admin,
    Token,
}

/// One request to `client.url`; an answer other than 2xx is an error (with `--json`, the
/// answer is printed first).
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
        return Err(refusal(status, &value));
    }
    Ok(value)
}

/// The error for a non-2xx answer: its status and the server's message and code.
pub fn refusal(status: reqwest::StatusCode, answer: &serde_json::Value) -> anyhow::Error {
    let message = answer.get("error").and_then(|e| e.as_str()).unwrap_or("no details");
    let code = answer.get("code").and_then(|e| e.as_str()).unwrap_or("?");
    anyhow::anyhow!("the server answered {status}: {message} ({code})")
}

/// A list flag's JSON: the list when given, `null` when cleared, nothing otherwise.
fn list_or_clear(list: Vec<String>, clear: bool) -> Option<serde_json::Value> {
    match (list.is_empty(), clear) {
        (false, _) => Some(serde_json::json!(list)),
        (true, true) => Some(serde_json::Value::Null),
        (true, false) => None,
    }
}

/// The note after a readable answer that carries a raw key.
const SHOWN_ONCE: &str = "The raw key above is shown only this once; store it now.";

/// Runs one client subcommand: one call, its answer shown.
pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        ClientCommand::CreateBusiness { client, name } => {
            let v = call(&client, Method::POST, "/v1/businesses", As::Admin, Some(serde_json::json!({ "name": name }))).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::CreateUser { client, email, password, businesses } => {
            let body = serde_json::json!({ "email": email, "password": password, "businesses": businesses });
            let v = call(&client, Method::POST, "/v1/users", As::Admin, Some(body)).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::CreateKey { client, business, kind, mode, name, scopes, expires_at, credits, refill, allowed_ips, rate_limits } => {
            let mut body = serde_json::json!({ "kind": kind, "mode": mode, "scopes": scopes });
            if !allowed_ips.is_empty() {
                body["allowed_ips"] = serde_json::json!(allowed_ips);
            }
            if !rate_limits.is_empty() {
                body["rate_limits"] = serde_json::json!(rate_limits);
            }
            if let Some(name) = name {
                body["name"] = serde_json::Value::String(name);
            }
            if let Some(expires_at) = expires_at {
                body["expires_at"] = serde_json::Value::String(expires_at);
            }
            if let Some(remaining) = credits {
                body["credits"] = serde_json::json!({ "remaining": remaining, "refill": refill });
            }
            let v = call(&client, Method::POST, &format!("/v1/businesses/{business}/keys"), As::Admin, Some(body)).await?;
            show(client.json, &v, Shape::Fields, Some(SHOWN_ONCE));
        }
        ClientCommand::UpdateKey { client, key, expires_at, no_expiry, allowed_ips, any_ip, rate_limits, default_limits } => {
            let mut body = serde_json::Map::new();
            if let Some(at) = expires_at {
                body.insert("expires_at".into(), at.into());
            } else if no_expiry {
                body.insert("expires_at".into(), serde_json::Value::Null);
            }
            if any_ip || !allowed_ips.is_empty() {
                body.insert("allowed_ips".into(), serde_json::json!(allowed_ips));
            }
            if let Some(limits) = list_or_clear(rate_limits, default_limits) {
                body.insert("rate_limits".into(), limits);
            }
            if body.is_empty() {
                bail!("nothing to change: give --expires-at, --no-expiry, --allowed-ip, --any-ip, --rate-limit or --default-limits");
            }
            let v = call(&client, Method::PATCH, &format!("/v1/keys/{key}"), As::Admin, Some(body.into())).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::BusinessLimits { client, business } => {
            let v = call(&client, Method::GET, &format!("/v1/businesses/{business}/limits"), As::Admin, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::SetBusinessLimits { client, business, per_key, clear_per_key, shared, clear_shared } => {
            let mut body = serde_json::Map::new();
            if let Some(limits) = list_or_clear(per_key, clear_per_key) {
                body.insert("per_key".into(), limits);
            }
            if let Some(limits) = list_or_clear(shared, clear_shared) {
                body.insert("shared".into(), limits);
            }
            if body.is_empty() {
                bail!("nothing to change: give --per-key, --clear-per-key, --shared or --clear-shared");
            }
            let v = call(&client, Method::PATCH, &format!("/v1/businesses/{business}/limits"), As::Admin, Some(body.into())).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::ListKeys { client, business } => {
            let v = call(&client, Method::GET, &format!("/v1/businesses/{business}/keys"), As::Admin, None).await?;
            show(client.json, &v, Shape::Keys, None);
        }
        ClientCommand::RotateKey { client, key, grace_secs } => {
            let body = match grace_secs {
                Some(g) => serde_json::json!({ "grace_secs": g }),
                None => serde_json::json!({}),
            };
            let v = call(&client, Method::POST, &format!("/v1/keys/{key}/rotate"), As::Admin, Some(body)).await?;
            show(client.json, &v, Shape::Fields, Some(SHOWN_ONCE));
        }
        ClientCommand::DeactivateKey { client, key } => {
            let v = call(&client, Method::POST, &format!("/v1/keys/{key}/deactivate"), As::Admin, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::ActivateKey { client, key } => {
            let v = call(&client, Method::POST, &format!("/v1/keys/{key}/activate"), As::Admin, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::KeyUsage { client, key } => {
            let v = call(&client, Method::GET, &format!("/v1/keys/{key}/usage"), As::Admin, None).await?;
            show(client.json, &v, Shape::Usage, None);
        }
        ClientCommand::AddIssuer { client, business, issuer, audiences, algorithms, businesses_claim, jwks_uri, jwks_file } => {
            let mut body = serde_json::json!({ "issuer": issuer, "audiences": audiences });
            if !algorithms.is_empty() {
                body["algorithms"] = serde_json::json!(algorithms);
            }
            if let Some(claim) = businesses_claim {
                body["businesses_claim"] = serde_json::Value::String(claim);
            }
            if let Some(uri) = jwks_uri {
                body["jwks_uri"] = serde_json::Value::String(uri);
            }
            if let Some(path) = jwks_file {
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                body["jwks"] = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
            }
            let v = call(&client, Method::POST, &format!("/v1/businesses/{business}/issuers"), As::Admin, Some(body)).await?;
            show(client.json, &v, Shape::Issuer, None);
        }
        ClientCommand::ListIssuers { client, business } => {
            let v = call(&client, Method::GET, &format!("/v1/businesses/{business}/issuers"), As::Admin, None).await?;
            show(client.json, &v, Shape::Issuers, None);
        }
        ClientCommand::RemoveIssuer { client, issuer } => {
            let v = call(&client, Method::DELETE, &format!("/v1/issuers/{issuer}"), As::Admin, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::RevokeSession { client, session } => {
            let v = call(&client, Method::DELETE, &format!("/v1/sessions/{session}"), As::Admin, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::RotateSigningKey { client } => {
            let v = call(&client, Method::POST, "/v1/signing-keys/rotate", As::Admin, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::Signin { client, email, password } => {
            let body = serde_json::json!({ "email": email, "password": password });
            let v = call(&client, Method::POST, "/auth/signin", As::Nobody, Some(body)).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::Refresh { client, refresh_token } => {
            let body = serde_json::json!({ "refresh_token": refresh_token });
            let v = call(&client, Method::POST, "/auth/refresh", As::Nobody, Some(body)).await?;
            show(client.json, &v, Shape::Fields, Some("The previous refresh token is now spent; presenting it again revokes the session."));
        }
        ClientCommand::Login { client, api_key, session_id } => {
            let mut body = serde_json::json!({ "api_key": api_key });
            if let Some(sid) = session_id {
                body["session_id"] = serde_json::Value::String(sid);
            }
            let v = call(&client, Method::POST, "/auth/login", As::Nobody, Some(body)).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::Credits(CreditsCommand::Get { client, key }) => {
            let v = call(&client, Method::GET, &format!("/v1/keys/{key}/credits"), As::Admin, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::Credits(CreditsCommand::Set { client, key, remaining, refill, unlimited }) => {
            let body = if unlimited {
                serde_json::json!({ "remaining": null })
            } else {
                serde_json::json!({ "remaining": remaining, "refill": refill })
            };
            let v = call(&client, Method::PUT, &format!("/v1/keys/{key}/credits"), As::Admin, Some(body)).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::Credits(CreditsCommand::Add { client, key, amount }) => {
            let body = serde_json::json!({ "amount": amount });
            let v = call(&client, Method::POST, &format!("/v1/keys/{key}/credits/add"), As::Admin, Some(body)).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::Logout { client } => {
            let v = call(&client, Method::POST, "/auth/logout", As::Token, None).await?;
            show(client.json, &v, Shape::Fields, None);
        }
        ClientCommand::Audit { client, since, until, object_type, object_id, business, action, limit, cursor } => {
            let limit = limit.map(|l| l.to_string());
            let params = [
                ("since", since),
                ("until", until),
                ("object_type", object_type),
                ("object_id", object_id),
                ("business", business),
                ("action", action),
                ("limit", limit),
                ("cursor", cursor),
            ];
            let query: Vec<String> =
                params.iter().filter_map(|(name, value)| value.as_deref().map(|v| format!("{name}={}", query_value(v)))).collect();
            let path = if query.is_empty() { "/v1/audit".to_owned() } else { format!("/v1/audit?{}", query.join("&")) };
            let v = call(&client, Method::GET, &path, As::Admin, None).await?;
            let more = v["next_cursor"].as_str().map(|c| format!("More entries: --cursor {c}"));
            show(client.json, &v, Shape::Audit, more.as_deref());
        }
    }
    Ok(())
}
