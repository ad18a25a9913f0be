//! The server's shared state: configuration, the store, the token service, the password
//! hasher and the hashes of the operator and proxy tokens.

use std::sync::Arc;

use tokio::sync::watch;

use keygate_core::snapshot::History;

use crate::api::coalesce::Coalesced;
use crate::config::{Config, Secret, StoreLocation};
use crate::digest;
use crate::error::AdminError;
use crate::login_cache::LoginCache;
use crate::metrics::Metrics;
use crate::passwords::Passwords;
use crate::random;
use crate::store::{Store, StoreOptions, TokenRole};
use crate::throttle::{LoginLimiter, Throttle};
use crate::tokens::TokenService;

/// Why admin refuses a PostgreSQL store without a seal key.
const NO_SEAL_KEY: &str = "a PostgreSQL store needs a seal key for the token signing keys: make one with \
                           `keygate-admin seal-key generate` and give it to every replica in KEYGATE_SEAL_KEY \
                           or in a file named by --seal-key-file (README, Sealing signing keys)";

/// Tokens generated on this start because none was configured or stored. The caller
/// shows each one once; only their SHA-256 is kept.
#[derive(Debug, Default)]
pub struct GeneratedTokens {
    pub operator: Option<Secret>,
    pub proxy: Option<Secret>,
}

struct Inner {
    config: Config,
    store: Store,
    tokens: TokenService,
    passwords: Passwords,
    operator_hash: [u8; 32],
    proxy_hash: [u8; 32],
    throttle: Throttle,
    login_limiter: LoginLimiter,
    login_cache: LoginCache,
    metrics: Metrics,
    shutdown: watch::Sender<bool>,
    feed_reads: FeedReads,
    issuer_status: crate::oidc::IssuerStatuses,
    issuer_client: crate::oidc::IssuerClient,
}

/// Feed reads shared by the long-polls one change wakes together (see [`Coalesced`]).
#[derive(Default)]
pub struct FeedReads {
    /// Deltas by (since, upto), serialized.
    pub deltas: Coalesced<(u64, u64), bytes::Bytes>,
    /// Histories found at a version.
    pub histories: Coalesced<(u64, History), ()>,
}

/// Cheap to clone; every request handler gets one.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("store", &self.inner.config.store).finish_non_exhaustive()
    }
}

fn check_token_text(role: &str, token: &Secret) -> Result<(), AdminError> {
    let text = token.expose();
    if text.is_empty() || text.len() > 512 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AdminError::Config(format!("the {role} token must be 1..=512 printable ASCII characters without spaces")));
    }
    if text.len() < 32 {
        tracing::warn!("the configured {role} token is shorter than 32 characters; prefer a long random one");
    }
    Ok(())
}

/// The configured token's hash (stored, replacing any older one), the stored hash, or a
/// freshly generated token whose hash is stored.
fn resolve_token(
    store: &Store,
    role: TokenRole,
    configured: Option<&Secret>,
    prefix: &str,
) -> Result<([u8; 32], Option<Secret>), AdminError> {
    let name = match role {
        TokenRole::Operator => "operator",
        TokenRole::Proxy => "proxy",
    };
    if let Some(token) = configured {
        check_token_text(name, token)?;
        let hash = digest::sha256(token.expose());
        let _ticket = store.set_token_hash(role, hash)?;
        return Ok((hash, None));
    }
    if let Some(hash) = store.token_hash(role)? {
        return Ok((hash, None));
    }
    let token = Secret::new(random::secret(prefix)?);
    let hash = digest::sha256(token.expose());
    let _ticket = store.set_token_hash(role, hash)?;
    Ok((hash, Some(token)))
}

impl AppState {
    /// Opens (or creates) the store at `config.store`, seals its signing seeds with the first
    /// seal key, settles the operator and proxy tokens and the signing key, and flushes all
    /// of that to disk.
    pub fn open(config: Config) -> Result<(AppState, GeneratedTokens), AdminError> {
        let options = StoreOptions {
            cache_capacity_bytes: config.cache_capacity_bytes,
            changelog_retain: config.changelog_retain,
            audit_max_entries: config.audit_max_entries,
            audit_max_age_secs: config.audit_max_age_days.saturating_mul(86_400),
            flush_per_write: config.flush_per_write,
        };
        let store = match &config.store {
            StoreLocation::Sled(dir) => {
                std::fs::create_dir_all(dir)?;
                Store::open(dir, &options)?
            }
            StoreLocation::Postgres(_) if config.seal_keys.is_none() => return Err(AdminError::Config(NO_SEAL_KEY.to_owned())),
            StoreLocation::Postgres(url) => Store::open_postgres(url, &options)?,
        };
        let seal_keys = config.seal_keys.as_ref();
        let resealed = store.seal_signing_keys(seal_keys)?;
        if let Some(keys) = seal_keys.filter(|_| resealed > 0) {
            tracing::info!(resealed, seal_key = %keys.sealer().id(), "sealed the stored signing seeds with the first seal key");
        }
        let (operator_hash, operator) = resolve_token(&store, TokenRole::Operator, config.operator_token.as_ref(), "kgo_")?;
        let (proxy_hash, proxy) = resolve_token(&store, TokenRole::Proxy, config.proxy_token.as_ref(), "kgp_")?;
        if digest::digest_eq(&operator_hash, &proxy_hash) {
            return Err(AdminError::Config("the operator and proxy tokens must differ".to_owned()));
        }
        let issuer_client = crate::oidc::IssuerClient::new(config.issuer_ca_file.as_deref(), config.issuer_public_only)?;
        if issuer_client.extra_roots() > 0 {
            tracing::info!(certificates = issuer_client.extra_roots(), "trusting --issuer-ca-file's CA certificates for https issuers");
        }
        let tokens = TokenService::load(&store, &config)?;
        let passwords = Passwords::new(config.max_concurrent_password_hashes, config.max_queued_password_hashes)?;
        store.flush_blocking()?;
        // Everything set up once per database is in place: other replicas may start.
        store.startup_done();
        let (shutdown, _) = watch::channel(false);
        let throttle = Throttle::new(config.throttle.clone()).sharing(store.clone());
        let login_limiter = LoginLimiter::new(config.login_limit.clone()).sharing(store.clone());
        let inner = Inner {
            config,
            store,
            tokens,
            passwords,
            operator_hash,
            proxy_hash,
            throttle,
            login_limiter,
            login_cache: LoginCache::default(),
            metrics: Metrics::default(),
            shutdown,
            feed_reads: FeedReads::default(),
            issuer_status: crate::oidc::IssuerStatuses::default(),
            issuer_client,
        };
        Ok((AppState { inner: Arc::new(inner) }, GeneratedTokens { operator, proxy }))
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// How many handles on this state exist (clones held by the server's filters among them).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    pub fn tokens(&self) -> &TokenService {
        &self.inner.tokens
    }

    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    pub fn login_limiter(&self) -> &LoginLimiter {
        &self.inner.login_limiter
    }

    /// The tokens repeated API-key logins get again (see [`LoginCache`]).
    pub fn login_cache(&self) -> &LoginCache {
        &self.inner.login_cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The last key refresh of each trusted issuer, as this replica saw it.
    pub fn issuer_status(&self) -> &crate::oidc::IssuerStatuses {
        &self.inner.issuer_status
    }

    /// Fetches trusted issuers' discovery documents and JWKS.
    pub fn issuer_client(&self) -> &crate::oidc::IssuerClient {
        &self.inner.issuer_client
    }

    pub fn feed_reads(&self) -> &FeedReads {
        &self.inner.feed_reads
    }

    pub fn passwords(&self) -> &Passwords {
        &self.inner.passwords
    }

    pub fn is_operator_token(&self, token: &str) -> bool {
        digest::digest_eq(&digest::sha256(token), &self.inner.operator_hash)
    }

    pub fn is_proxy_token(&self, token: &str) -> bool {
        digest::digest_eq(&digest::sha256(token), &self.inner.proxy_hash)
    }

    /// Tells long-polls to answer now: the server is shutting down.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub fn shutting_down(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }
}
