//! The plugin configuration as written in envoy.yaml: the serde shapes, their defaults and
//! bounds. Unknown fields are errors, so a typo never silently opens a route.

use serde::Deserialize;

use crate::key::Mode;
use crate::ratelimit::Limit;

/// Which credentials a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// `Authorization: Bearer <access token>`, `SECRET_KEY` and `businessId` (the default).
    All,
    /// An API key only, in `SECRET_KEY` (or as the bearer value with `key_in_bearer`).
    Key,
    /// Nothing: a public path, limited per client IP.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix, e.g. `/public/`. The first route whose prefix and method match wins.
    pub prefix: String,
    /// Upper-case methods the route applies to; empty means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default = "default_requirement")]
    pub require: Requirement,
    /// Accept the API key as `Authorization: Bearer sk_…` (as some APIs take it).
    #[serde(default)]
    pub key_in_bearer: bool,
    /// Scopes the key (and the token, if it carries any) must all have.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Only keys of this mode may use the route.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Decide and count, but let a denied request through (for rolling out rules).
    #[serde(default)]
    pub shadow: bool,
    /// Requests per hour per key (or per client IP on public routes); overrides the defaults.
    /// Shorthand for `rate_limits: ["N/h"]` (parsing moves it there).
    #[serde(default)]
    pub rate_limit_per_hour: Option<u32>,
    /// The rule's own limits per key (per client IP on public routes), counted apart from
    /// the key's defaults; `None`: the defaults.
    #[serde(default)]
    pub rate_limits: Option<Vec<Limit>>,
    /// Credits a request on this rule spends of a key that has credits (0: none).
    #[serde(default = "default_cost")]
    pub cost: u64,
}

fn default_cost() -> u64 {
    1
}

fn default_requirement() -> Requirement {
    Requirement::All
}

/// The `rate_limits` object as written. A field left out takes its value from
/// [`RateLimits::default`]; parsing compiles it into a [`crate::ratelimit::LimitPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Shorthand for `sk: ["N/h"]`.
    pub sk_per_hour: Option<u32>,
    /// Shorthand for `pk: ["N/h"]`.
    pub pk_per_hour: Option<u32>,
    /// Shorthand for `public_per_ip: ["N/h"]`.
    pub public_per_ip_per_hour: Option<u32>,
    /// Per secret key (default `["1000/h"]`).
    pub sk: Option<Vec<Limit>>,
    /// Per publishable key (default `["100/h"]`).
    pub pk: Option<Vec<Limit>>,
    /// Per client address on public routes (default `["200/h"]`).
    pub public_per_ip: Option<Vec<Limit>>,
    /// Per business, shared by all its keys (default: none).
    pub business: Vec<Limit>,
    /// Public routes count an IPv6 client by this many leading bits of its address.
    pub ipv6_prefix_len: u8,
    /// Counter slots in each of the two tables (per key and business, per client address)
    /// in Envoy's shared data: the bound on the memory rate limiting uses.
    pub counter_slots: u32,
    /// How often this Envoy exchanges counts with admin (0: it counts alone).
    pub sync_interval_ms: u64,
    /// Without a successful exchange for this long, admit at most this Envoy's share.
    pub fleet_timeout_ms: u64,
    /// RateLimit-Policy and RateLimit headers on the answers of limited requests.
    pub headers: bool,
}

/// Most counter slots a table may have (about 2.5 GB of shared data at that size).
pub const MAX_COUNTER_SLOTS: u32 = 1 << 24;
pub use crate::ratelimit::MAX_LIMITS;
pub const MAX_SYNC_INTERVAL_MS: u64 = 60_000;
/// The filter's tick follows a shorter interval; below this it would spin.
pub const MIN_SYNC_INTERVAL_MS: u64 = 10;
pub const MAX_FLEET_TIMEOUT_MS: u64 = 3_600_000;

impl Default for RateLimits {
    fn default() -> Self {
        let compiled = crate::ratelimit::LimitPolicy::default();
        RateLimits {
            sk_per_hour: None,
            pk_per_hour: None,
            public_per_ip_per_hour: None,
            sk: None,
            pk: None,
            public_per_ip: None,
            business: Vec::new(),
            ipv6_prefix_len: compiled.ipv6_prefix_len,
            counter_slots: compiled.counter_slots,
            sync_interval_ms: compiled.sync_interval_ms,
            fleet_timeout_ms: compiled.fleet_timeout_ms,
            headers: compiled.headers,
        }
    }
}

/// Holding requests whose key or `kid` the snapshot does not hold yet (read-your-writes:
/// a key admin just issued works on its first request). A field left out takes its value
/// from [`HoldUnknown::default`]; `timeout_ms` or `max_held` 0 turns holding off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldUnknown {
    /// How long a request waits for the snapshot before it is refused as it would have been.
    pub timeout_ms: u64,
    /// Requests held at once per worker VM; beyond, refused at once.
    pub max_held: usize,
    /// How long a key or `kid` that timed out is refused at once, without holding.
    pub negative_ttl_secs: u64,
    /// Keys and `kid`s remembered as timed out per worker VM (0: none).
    pub negative_entries: usize,
}

impl Default for HoldUnknown {
    fn default() -> Self {
        HoldUnknown { timeout_ms: 300, max_held: 64, negative_ttl_secs: 10, negative_entries: 4096 }
    }
}

/// Upper bounds of the `hold_unknown` fields: a held request holds a connection and a
/// stream, and every entry is memory in each worker VM.
pub const MAX_HOLD_TIMEOUT_MS: u64 = 10_000;
pub const MAX_HELD: usize = 10_000;
pub const MAX_NEGATIVE_TTL_SECS: u64 = 3600;
pub const MAX_NEGATIVE_ENTRIES: usize = 1_000_000;

/// The plugin configuration as written in envoy.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) admin_cluster: String,
    #[serde(default = "default_authority")]
    pub(super) admin_authority: String,
    #[serde(default)]
    pub(super) proxy_token: Option<String>,
    #[serde(default = "default_issuer")]
    pub(super) issuer: String,
    #[serde(default = "default_audience")]
    pub(super) audience: String,
    #[serde(default = "number::<1000>")]
    pub(super) poll_interval_ms: u64,
    #[serde(default = "number::<5000>")]
    pub(super) admin_timeout_ms: u64,
    #[serde(default = "number::<20>")]
    pub(super) long_poll_secs: u64,
    #[serde(default = "number::<600>")]
    pub(super) max_staleness_secs: u64,
    #[serde(default = "number::<30>")]
    pub(super) leeway_secs: u64,
    #[serde(default = "count::<10_000>")]
    pub(super) token_cache_entries: usize,
    #[serde(default = "number::<10>")]
    pub(super) usage_flush_secs: u64,
    #[serde(default = "count::<{ crate::feed::PAGE_KEYS }>")]
    pub(super) snapshot_page_keys: usize,
    #[serde(default)]
    pub(super) rate_limits: RateLimits,
    #[serde(default)]
    pub(super) hold_unknown: HoldUnknown,
    #[serde(default)]
    pub(super) routes: Vec<Route>,
}

/// A constant default for a `u64` field (serde takes a function).
fn number<const N: u64>() -> u64 {
    N
}

/// A constant default for a `usize` field.
fn count<const N: usize>() -> usize {
    N
}

fn default_authority() -> String {
    "keygate-admin".to_owned()
}
fn default_issuer() -> String {
    "keygate".to_owned()
}
fn default_audience() -> String {
    "keygate-api".to_owned()
}
