//! Server configuration: what `keygate-admin serve` reads from flags and environment.

use std::fmt;
use std::path::PathBuf;

use crate::seal::SealKeys;

/// Largest request body accepted, bytes (the bulk import and usage reports have their own,
/// larger caps).
pub const BODY_LIMIT: u64 = 64 * 1024;

/// A secret string (operator or proxy token). Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A sled directory (created if missing), for one admin on one machine.
    Sled(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host:port/dbname`); any number of
    /// admin replicas may share one database. The URL may hold a password: it is never printed (see [`StoreLocation::describe`]).
    Postgres(String),
}

impl StoreLocation {
    /// Reads `sled:PATH` or a `postgres://` / `postgresql://` URL.
    pub fn parse(text: &str) -> Result<StoreLocation, String> {
        if let Some(path) = text.strip_prefix("sled:") {
            if path.is_empty() {
                return Err("`sled:` needs a directory, as in sled:./data".to_owned());
            }
            return Ok(StoreLocation::Sled(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(text.to_owned()));
        }
        Err("the store must be sled:PATH or a postgres:// URL".to_owned())
    }

    /// For logs and error messages: the sled directory, or the database's host, port and
    /// name only (never the user's password).
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sled(path) => format!("sled:{}", path.display()),
            StoreLocation::Postgres(url) => match url.parse::<postgres_url::Parts>() {
                Ok(parts) => parts.to_string(),
                Err(()) => "postgres (an unreadable URL)".to_owned(),
            },
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The parts of a PostgreSQL URL that are safe to print.
mod postgres_url {
    use std::fmt;
    use std::str::FromStr;

    pub struct Parts {
        hosts: Vec<String>,
        dbname: Option<String>,
    }

    impl FromStr for Parts {
        type Err = ();

        fn from_str(url: &str) -> Result<Parts, ()> {
            let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).ok_or(())?;
            let rest = rest.split(['?', '#']).next().unwrap_or("");
            let (authority, dbname) = match rest.split_once('/') {
                Some((authority, dbname)) => (authority, Some(dbname.to_owned()).filter(|d| !d.is_empty())),
                None => (rest, None),
            };
            // user:password@ comes before the last '@'.
            let hosts = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
            Ok(Parts { hosts: hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect(), dbname })
        }
    }

    impl fmt::Display for Parts {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let hosts = if self.hosts.is_empty() { "localhost".to_owned() } else { self.hosts.join(",") };
            write!(f, "postgres://{hosts}/{}", self.dbname.as_deref().unwrap_or(""))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives.
    pub store: StoreLocation,
    /// When set, replaces the stored operator token hash; when unset and none is stored,
    /// one is generated and handed back once by `AppState::open`.
    pub operator_token: Option<Secret>,
    pub proxy_token: Option<Secret>,
    /// `iss` of every token.
    pub issuer: String,
    /// `aud` of every token.
    pub audience: String,
    /// Access-token lifetime.
    pub token_ttl_secs: u64,
    /// How long a sign-in's refresh token stays usable.
    pub refresh_ttl_secs: u64,
    /// Clock skew tolerated when admin itself verifies a token, and how long past its
    /// tokens' expiry a revoked session stays in the feed. [`Config::new`] sets it to
    /// `REVOCATION_MARGIN_SECS`, the filter's highest `leeway_secs`, and `serve` has no flag
    /// for it: below that, a filter could accept a revoked token once its revocation left
    /// the feed. (Tests lower it to see expiries quickly.)
    pub token_leeway_secs: u64,
    /// sled's page cache, bytes (unused by PostgreSQL).
    pub cache_capacity_bytes: u64,
    /// Changelog entries kept for `?since=` deltas.
    pub changelog_retain: u64,
    /// Audit log entries kept at most.
    pub audit_max_entries: u64,
    /// Days an audit log entry is kept (0: no age limit).
    pub audit_max_age_days: u64,
    /// argon2 runs at once at most (each takes 19 MiB and a core for tens of ms).
    pub max_concurrent_password_hashes: usize,
    /// Password checks that may wait for an argon2 slot; one more is answered 503 at once,
    /// so a flood cannot make every sign-in wait behind it.
    pub max_queued_password_hashes: usize,
    /// Live sessions one API key may hold (one per `session_id`). A new one beyond this
    /// replaces the oldest session opened from the same client address, never another
    /// client's (refused instead).
    pub max_sessions_per_key: usize,
    /// Live sign-in sessions one account may hold; a new one beyond this revokes the oldest.
    pub max_sessions_per_user: usize,
    /// How often dead sessions, lapsed revocations, ended rotation graces and withdrawn
    /// signing keys are swept from the store.
    pub sweep_interval_secs: u64,
    /// How often the signing keys of trusted issuers (a business's own identity provider)
    /// are fetched again, seconds; a change reaches the proxies through the feed.
    pub issuer_refresh_secs: u64,
    /// A PEM file of CA certificates trusted for `https://` issuers besides the Mozilla
    /// roots compiled in (a private CA).
    pub issuer_ca_file: Option<std::path::PathBuf>,
    /// Fetch trusted issuers' documents from public addresses only: no loopback or private
    /// ones (link-local ones are never fetched).
    pub issuer_public_only: bool,
    /// Take the sign-in throttle's client address from the last `X-Forwarded-For` entry
    /// (only behind a proxy that sets it); otherwise the socket peer.
    pub trust_forwarded_for: bool,
    /// Sign-in throttling.
    pub throttle: ThrottleConfig,
    /// API-key login throttling.
    pub login_limit: LoginLimitConfig,
    /// The keys that seal the signing keys' private seeds in the store (the first seals,
    /// every one opens). Required over PostgreSQL; without them a sled store keeps seeds in
    /// plaintext. `Debug` shows their ids only.
    pub seal_keys: Option<SealKeys>,
    /// Measurement baseline only: one flush per write instead of group commit.
    #[doc(hidden)]
    pub flush_per_write: bool,
}

/// Sign-in throttling: after `pair_free` failures of one (email, client) pair, or
/// `client_free` failures of one client across all emails, further attempts from that
/// pair (client) get 429 for a window that doubles with each further failure, from
/// `base_secs` up to `max_secs`. Counts are forgotten after `forget_secs` without a
/// failure, and a success clears its pair.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub pair_free: u32,
    pub client_free: u32,
    pub base_secs: u64,
    pub max_secs: u64,
    pub forget_secs: u64,
    /// Entries kept at most (memory bound).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig { pair_free: 5, client_free: 50, base_secs: 1, max_secs: 300, forget_secs: 900, max_entries: 100_000 }
    }
}

/// API-key logins that open or renew a session (`POST /auth/login` past the "same token
/// again" answer): at most `per_client_per_minute` from one client address (an IPv6
/// client by its /64) and `per_key_per_minute` for one key, each a bucket that refills
/// evenly over the minute and holds a minute's worth.
#[derive(Debug, Clone)]
pub struct LoginLimitConfig {
    pub per_client_per_minute: u32,
    pub per_key_per_minute: u32,
    /// Buckets kept at most (memory bound).
    pub max_entries: usize,
}

impl Default for LoginLimitConfig {
    fn default() -> Self {
        LoginLimitConfig { per_client_per_minute: 30, per_key_per_minute: 120, max_entries: 100_000 }
    }
}

impl Config {
    /// Defaults for everything but the store, sled in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config::at(StoreLocation::Sled(data_dir.into()))
    }

    /// Defaults for everything but the store.
    pub fn at(store: StoreLocation) -> Config {
        Config {
            store,
            operator_token: None,
            proxy_token: None,
            issuer: "keygate".to_owned(),
            audience: "keygate-api".to_owned(),
            token_ttl_secs: 7200,
            refresh_ttl_secs: 30 * 24 * 3600,
            token_leeway_secs: keygate_core::token::REVOCATION_MARGIN_SECS,
            cache_capacity_bytes: 64 * 1024 * 1024,
            changelog_retain: 100_000,
            audit_max_entries: 100_000,
            audit_max_age_days: 90,
            max_concurrent_password_hashes: 4,
            max_queued_password_hashes: 32,
            max_sessions_per_key: 100,
            max_sessions_per_user: 50,
            sweep_interval_secs: 60,
            issuer_refresh_secs: crate::oidc::DEFAULT_REFRESH_SECS,
            issuer_ca_file: None,
            issuer_public_only: false,
            trust_forwarded_for: false,
            throttle: ThrottleConfig::default(),
            login_limit: LoginLimitConfig::default(),
            seal_keys: None,
            flush_per_write: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse_and_never_print_a_password() {
        assert_eq!(StoreLocation::parse("sled:./data"), Ok(StoreLocation::Sled(PathBuf::from("./data"))));
        assert!(StoreLocation::parse("sled:").is_err());
        assert!(StoreLocation::parse("./data").is_err());
        let pg = StoreLocation::parse("postgres://admin:s3cret@db.internal:5433/keygate?sslmode=disable").unwrap();
        assert_eq!(pg.describe(), "postgres://db.internal:5433/keygate");
        assert!(!format!("{pg:?}").contains("s3cret"));
        let bare = StoreLocation::parse("postgresql://db").unwrap();
        assert_eq!(bare.describe(), "postgres://db/");
    }

    #[test]
    fn revocations_outlast_every_leeway_a_filter_accepts() {
        assert!(Config::new("data").token_leeway_secs >= keygate_core::token::REVOCATION_MARGIN_SECS);
    }
}
