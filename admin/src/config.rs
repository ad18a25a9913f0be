//! Server configuration: what `keygate-admin serve` reads from flags and environment.

use std::fmt;
use std::path::PathBuf;

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

#[derive(Debug, Clone)]
pub struct Config {
    /// The sled directory.
    pub data_dir: PathBuf,
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
    /// Clock skew tolerated when admin itself verifies a token.
    pub token_leeway_secs: u64,
    /// sled's page cache, bytes.
    pub cache_capacity_bytes: u64,
    /// Changelog entries kept for `?since=` deltas.
    pub changelog_retain: u64,
    /// argon2 runs at once at most (each takes 19 MiB and a core for tens of ms).
    pub max_concurrent_password_hashes: usize,
}

impl Config {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            operator_token: None,
            proxy_token: None,
            issuer: "keygate".to_owned(),
            audience: "keygate-api".to_owned(),
            token_ttl_secs: 7200,
            refresh_ttl_secs: 30 * 24 * 3600,
            token_leeway_secs: 60,
            cache_capacity_bytes: 64 * 1024 * 1024,
            changelog_retain: 100_000,
            max_concurrent_password_hashes: 4,
        }
    }
}
