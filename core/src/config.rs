//! The filter's plugin configuration: parsed and validated once (in `on_configure`) into
//! an immutable [`FilterConfig`]. Unknown fields are errors, so a typo never silently
//! opens a route.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::key::Mode;
use crate::token::{TokenExpectations, REVOCATION_MARGIN_SECS};

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
    #[serde(default)]
    pub rate_limit_per_hour: Option<u32>,
}

fn default_requirement() -> Requirement {
    Requirement::All
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default = "default_sk_limit")]
    pub sk_per_hour: u32,
    #[serde(default = "default_pk_limit")]
    pub pk_per_hour: u32,
    #[serde(default = "default_public_limit")]
    pub public_per_ip_per_hour: u32,
    /// Public routes count an IPv6 client by this many leading bits of its address.
    #[serde(default = "default_ipv6_prefix_len")]
    pub ipv6_prefix_len: u8,
    /// Counter slots in each of the two tables (per key, per client address) in Envoy's
    /// shared data: the bound on the memory rate limiting uses.
    #[serde(default = "default_counter_slots")]
    pub counter_slots: u32,
}

fn default_sk_limit() -> u32 {
    1000
}
fn default_pk_limit() -> u32 {
    100
}
fn default_public_limit() -> u32 {
    200
}
fn default_ipv6_prefix_len() -> u8 {
    64
}
fn default_counter_slots() -> u32 {
    65_536
}

/// Most counter slots a table may have (about 2.5 GB of shared data at that size).
pub const MAX_COUNTER_SLOTS: u32 = 1 << 24;

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            sk_per_hour: default_sk_limit(),
            pk_per_hour: default_pk_limit(),
            public_per_ip_per_hour: default_public_limit(),
            ipv6_prefix_len: default_ipv6_prefix_len(),
            counter_slots: default_counter_slots(),
        }
    }
}

/// The plugin configuration as written in envoy.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin_cluster: String,
    #[serde(default = "default_authority")]
    admin_authority: String,
    #[serde(default)]
    proxy_token: Option<String>,
    #[serde(default = "default_issuer")]
    issuer: String,
    #[serde(default = "default_audience")]
    audience: String,
    #[serde(default = "default_poll_ms")]
    poll_interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    admin_timeout_ms: u64,
    #[serde(default = "default_long_poll")]
    long_poll_secs: u64,
    #[serde(default = "default_staleness")]
    max_staleness_secs: u64,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default = "default_token_cache")]
    token_cache_entries: usize,
    #[serde(default = "default_usage_flush")]
    usage_flush_secs: u64,
    #[serde(default = "default_page_keys")]
    snapshot_page_keys: usize,
    #[serde(default)]
    rate_limits: RateLimits,
    #[serde(default)]
    routes: Vec<Route>,
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
fn default_poll_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_long_poll() -> u64 {
    20
}
fn default_staleness() -> u64 {
    600
}
fn default_leeway() -> u64 {
    30
}
fn default_token_cache() -> usize {
    10_000
}
fn default_usage_flush() -> u64 {
    10
}
fn default_page_keys() -> usize {
    crate::feed::PAGE_KEYS
}

/// Everything `decide` needs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub token: TokenExpectations,
    pub max_staleness_secs: u64,
    pub rate_limits: RateLimits,
    pub routes: Vec<Route>,
    /// Applies when no route matches: all three credentials.
    pub default_route: Route,
    /// Verified access tokens kept per worker VM (0: verify every request).
    pub token_cache_entries: usize,
}

/// How the filter reaches admin.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub admin_cluster: String,
    pub admin_authority: String,
    pub proxy_token: String,
    pub poll_interval_ms: u64,
    pub admin_timeout_ms: u64,
    /// How long admin may hold a `?since=V&wait=S` poll open when nothing changed.
    pub long_poll_secs: u64,
    /// How often batched key usage is posted to admin.
    pub usage_flush_secs: u64,
    /// Keys per page of a full snapshot.
    pub snapshot_page_keys: usize,
    /// Prefix of every name this plugin uses in Envoy's shared data (see [`shared_data_prefix`]).
    pub shared_prefix: String,
}

/// `keygate.<12 hex>.`: the prefix of every shared-data name, from the admin the plugin is
/// fed by. Envoy keeps one shared-data store per `vm_id`, so two plugin configurations with
/// the same `vm_id` but different admins would otherwise share key buckets, the leader
/// lease, the meta and the rate-limit counters, and one admin's keys would work on the
/// other's listeners.
pub fn shared_data_prefix(admin_cluster: &str, admin_authority: &str) -> String {
    let mut hasher = Sha256::new();
    // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    for part in [admin_cluster, admin_authority] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("keygate.{hex}.")
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConfig")
            .field("admin_cluster", &self.admin_cluster)
            .field("admin_authority", &self.admin_authority)
            .field("proxy_token", &"<redacted>")
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("admin_timeout_ms", &self.admin_timeout_ms)
            .field("long_poll_secs", &self.long_poll_secs)
            .field("usage_flush_secs", &self.usage_flush_secs)
            .field("snapshot_page_keys", &self.snapshot_page_keys)
            .field("shared_prefix", &self.shared_prefix)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    pub policy: Policy,
    pub sync: SyncConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is not valid: {0}")]
    Json(String),
    #[error("plugin configuration: {0}")]
    Invalid(String),
}

const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

impl FilterConfig {
    /// Parses and validates the plugin JSON. `env_proxy_token` is the VM environment's
    /// `KEYGATE_PROXY_TOKEN`, used when the JSON carries no `proxy_token`.
    pub fn parse(json: &[u8], env_proxy_token: Option<&str>) -> Result<FilterConfig, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let proxy_token = match (raw.proxy_token, env_proxy_token) {
            (Some(t), _) if !t.is_empty() => t,
            (_, Some(t)) if !t.is_empty() => t.to_owned(),
            _ => return invalid("no proxy token: set proxy_token or the VM environment's KEYGATE_PROXY_TOKEN".into()),
        };
        if raw.admin_cluster.is_empty() {
            return invalid("admin_cluster must name the Envoy cluster of keygate-admin".into());
        }
        if raw.poll_interval_ms == 0 || raw.admin_timeout_ms == 0 {
            return invalid("poll_interval_ms and admin_timeout_ms must be positive".into());
        }
        if raw.max_staleness_secs == 0 {
            return invalid("max_staleness_secs must be positive".into());
        }
        if raw.snapshot_page_keys == 0 || raw.snapshot_page_keys > 100_000 {
            return invalid("snapshot_page_keys must be between 1 and 100000".into());
        }
        if raw.usage_flush_secs == 0 || raw.usage_flush_secs > 3600 {
            return invalid("usage_flush_secs must be between 1 and 3600".into());
        }
        if raw.long_poll_secs > 60 || raw.long_poll_secs >= raw.max_staleness_secs {
            return invalid("long_poll_secs must be at most 60 and below max_staleness_secs".into());
        }
        if !(1..=128).contains(&raw.rate_limits.ipv6_prefix_len) {
            return invalid("rate_limits.ipv6_prefix_len must be between 1 and 128".into());
        }
        if raw.rate_limits.counter_slots == 0 || raw.rate_limits.counter_slots > MAX_COUNTER_SLOTS {
            return invalid(format!("rate_limits.counter_slots must be between 1 and {MAX_COUNTER_SLOTS}"));
        }
        if raw.leeway_secs > REVOCATION_MARGIN_SECS {
            // Past exp + this margin a revoked session has left admin's feed: a longer leeway
            // would accept its tokens again.
            return invalid(format!("leeway_secs must be at most {REVOCATION_MARGIN_SECS} (how long past a token's expiry admin keeps its revoked session in the feed)"));
        }
        if raw.issuer.is_empty() || raw.audience.is_empty() {
            return invalid("issuer and audience must not be empty".into());
        }
        for (i, route) in raw.routes.iter().enumerate() {
            if !route.prefix.starts_with('/') {
                return invalid(format!("routes[{i}].prefix must start with '/'"));
            }
            if let Some(m) = route.methods.iter().find(|m| !KNOWN_METHODS.contains(&m.as_str())) {
                return invalid(format!("routes[{i}].methods: {m:?} is not an upper-case HTTP method"));
            }
            if route.key_in_bearer && route.require != Requirement::Key {
                return invalid(format!("routes[{i}]: key_in_bearer needs require = \"key\""));
            }
            if route.require == Requirement::None && (!route.scopes.is_empty() || route.mode.is_some()) {
                return invalid(format!("routes[{i}]: a public route cannot require scopes or a mode"));
            }
            if route.rate_limit_per_hour == Some(0) {
                return invalid(format!("routes[{i}].rate_limit_per_hour must be positive"));
            }
        }
        let default_route = Route {
            prefix: "/".into(),
            methods: Vec::new(),
            require: Requirement::All,
            key_in_bearer: false,
            scopes: Vec::new(),
            mode: None,
            shadow: false,
            rate_limit_per_hour: None,
        };
        Ok(FilterConfig {
            policy: Policy {
                token: TokenExpectations { issuer: raw.issuer, audience: raw.audience, leeway: raw.leeway_secs },
                max_staleness_secs: raw.max_staleness_secs,
                rate_limits: raw.rate_limits,
                routes: raw.routes,
                default_route,
                token_cache_entries: raw.token_cache_entries,
            },
            sync: SyncConfig {
                shared_prefix: shared_data_prefix(&raw.admin_cluster, &raw.admin_authority),
                admin_cluster: raw.admin_cluster,
                admin_authority: raw.admin_authority,
                proxy_token,
                poll_interval_ms: raw.poll_interval_ms,
                admin_timeout_ms: raw.admin_timeout_ms,
                long_poll_secs: raw.long_poll_secs,
                usage_flush_secs: raw.usage_flush_secs,
                snapshot_page_keys: raw.snapshot_page_keys,
            },
        })
    }
}

/// A path segment as servers that take `;` parameters off segments (Tomcat, Spring, Jetty)
/// read it: `..;x=1` is `..` to them.
fn segment_name(segment: &str) -> &str {
    segment.split(';').next().unwrap_or(segment)
}

/// True when a path has no dot segments or encoded separators. Relaxed rules (key-only,
/// public, shadow) only match clean paths, so `/public/../admin` or `/public/..;/admin` can
/// never borrow `/public/`'s rule.
fn is_clean_path(path: &str) -> bool {
    let lower_has_encoded = |needle: &str| path.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
    !path.split('/').map(segment_name).any(|seg| seg == "." || seg == "..")
        && !lower_has_encoded("%2e")
        && !lower_has_encoded("%2f")
        && !lower_has_encoded("%5c")
        && !path.contains('\\')
}

/// The path as the most forgiving upstream would serve it: ASCII lower case, `\` and
/// encoded `/` `\` as separators, `;` parameters cut from each segment, `%2e` as `.`, dot
/// segments resolved, empty segments merged. Stricter rules match this spelling too.
fn loose_path(path: &str) -> String {
    let lower = path.to_ascii_lowercase().replace("%2f", "/").replace("%5c", "/").replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in lower.split('/') {
        let name = segment_name(raw).replace("%2e", ".");
        trailing_slash = true;
        match name.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                segments.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(lower.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

impl Route {
    /// A rule that asks for less than the default one (or, in shadow mode, refuses nothing).
    /// It applies only to its exact spelling; any other spelling gets a stricter rule.
    fn is_lenient(&self) -> bool {
        self.require != Requirement::All || self.shadow
    }

    /// Exact match: the path starts with the prefix as written and the method is listed.
    fn matches_exactly(&self, method: &str, path: &str) -> bool {
        path.starts_with(&self.prefix) && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }

    /// Any spelling that may reach the same resource: the prefix compared in ASCII lower
    /// case against [`loose_path`], `/x/` also covering `/x`, the method in any case, and
    /// HEAD wherever GET is listed (servers answer HEAD with their GET handler).
    fn matches_loosely(&self, method: &str, loose: &str) -> bool {
        // `loose` is lower case already; the prefix is compared without allocating.
        let starts = |p: &str| loose.len() >= p.len() && loose.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
        let bare = self.prefix.strip_suffix('/').filter(|p| !p.is_empty());
        let path_matches = starts(&self.prefix) || bare.is_some_and(|b| loose.len() == b.len() && starts(b));
        let method_matches = self.methods.is_empty()
            || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method) || (m == "GET" && method.eq_ignore_ascii_case("HEAD")));
        path_matches && method_matches
    }
}

impl Policy {
    /// The route for a request: the first configured route that matches, else the default
    /// (all three credentials). The query string is ignored. A lenient rule matches only its
    /// exact spelling on a clean path; a stricter rule matches any spelling of its path, so
    /// no spelling gets weaker checks than the rule meant for that path.
    pub fn route_for(&self, method: &str, path: &str) -> &Route {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let clean = is_clean_path(path);
        let mut loose: Option<String> = None;
        self.routes
            .iter()
            .find(|r| {
                if r.is_lenient() {
                    clean && r.matches_exactly(method, path)
                } else {
                    r.matches_exactly(method, path) || r.matches_loosely(method, loose.get_or_insert_with(|| loose_path(path)))
                }
            })
            .unwrap_or(&self.default_route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FilterConfig, ConfigError> {
        FilterConfig::parse(json.as_bytes(), None)
    }

    const DEMO: &str = r#"{
        "admin_cluster": "keygate_admin", "proxy_token": "t",
        "routes": [
            {"prefix": "/public/", "require": "none"},
            {"prefix": "/key/", "require": "key", "key_in_bearer": true},
            {"prefix": "/reports/", "methods": ["GET"], "scopes": ["reports:read"], "mode": "live"}
        ]
    }"#;

    #[test]
    fn demo_config_parses_with_defaults() {
        let cfg = parse(DEMO).unwrap();
        assert_eq!(cfg.policy.max_staleness_secs, 600);
        assert_eq!(
            cfg.policy.rate_limits,
            RateLimits { sk_per_hour: 1000, pk_per_hour: 100, public_per_ip_per_hour: 200, ipv6_prefix_len: 64, counter_slots: 65_536 }
        );
        assert_eq!(cfg.policy.token.issuer, "keygate");
        assert_eq!(cfg.sync.proxy_token, "t");
        assert!(!format!("{:?}", cfg.sync).contains("\"t\""));
    }

    #[test]
    fn routes_match_by_prefix_and_method_first_match_wins() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        assert_eq!(p.route_for("GET", "/public/articles?q=1").require, Requirement::None);
        assert_eq!(p.route_for("POST", "/key/x").require, Requirement::Key);
        assert_eq!(p.route_for("GET", "/reports/1").scopes, vec!["reports:read".to_string()]);
        assert!(p.route_for("POST", "/reports/1").scopes.is_empty()); // method does not match
        assert_eq!(p.route_for("GET", "/orders").require, Requirement::All);
        assert_eq!(p.route_for("GET", "/publicity").require, Requirement::All);
    }

    #[test]
    fn dot_segments_and_encoded_separators_never_match_a_relaxed_route() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        for path in ["/public/../orders", "/public/./x/..", "/public/%2e%2e/orders", "/public/%2F..", "/key/..\\orders", "/public/%2E%2E/x"]
        {
            assert_eq!(p.route_for("GET", path).require, Requirement::All, "{path}");
        }
        assert_eq!(p.route_for("GET", "/public/a.b/c..d").require, Requirement::None);
    }

    #[test]
    fn a_segment_is_its_part_before_a_semicolon_for_the_dot_segment_check() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        for path in [
            "/public/..;/orders",
            "/public/..;x=1/orders",
            "/public/.;/x",
            "/key/..;jsessionid=1/orders",
            "/public/%2e%2e;/orders",
            "/public/x/..;",
        ] {
            assert_eq!(p.route_for("GET", path).require, Requirement::All, "{path}");
        }
        // Matrix parameters inside a relaxed path keep its rule.
        assert_eq!(p.route_for("GET", "/public/a;v=1").require, Requirement::None);
        // To such servers this is /reports/1: it gets /reports/'s rule, not the default.
        assert_eq!(p.route_for("GET", "/public/..;/reports/1").scopes, vec!["reports:read".to_string()]);
    }

    #[test]
    fn other_spellings_of_a_stricter_rule_path_get_that_rule() {
        let cfg = parse(DEMO).unwrap();
        let p = &cfg.policy;
        let reports = vec!["reports:read".to_string()];
        for (method, path) in [
            ("GET", "/Reports/1"),
            ("GET", "/REPORTS/x"),
            ("GET", "/reports"),
            ("GET", "/Reports"),
            ("GET", "/reports?x=1"),
            ("GET", "/reports;a=b/1"),
            ("GET", "/reports;a=b"),
            ("HEAD", "/reports/1"),
            ("get", "/reports/1"),
            ("GET", "/x/..;/reports/1"),
            ("GET", "/x/%2E%2E/Reports/1"),
            ("GET", "/x/..\\reports\\1"),
        ] {
            assert_eq!(p.route_for(method, path).scopes, reports, "{method} {path}");
        }
        // Not the rule's path, or not its method: the default rule.
        for (method, path) in [("GET", "/reportsx"), ("GET", "/report"), ("POST", "/Reports/1"), ("POST", "/reports")] {
            assert!(p.route_for(method, path).scopes.is_empty(), "{method} {path}");
        }
        // A relaxed rule keeps its exact spelling: any other spelling gets the default rule,
        // which asks for more, never less.
        for path in ["/Public/x", "/PUBLIC/x", "/public", "/public;x/y", "/Key/x", "/key"] {
            assert_eq!(p.route_for("GET", path).require, Requirement::All, "{path}");
        }
        assert_eq!(p.route_for("HEAD", "/public/x").require, Requirement::None);
        // A shadow rule never refuses, so it is lenient too.
        let shadow = parse(r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/beta/", "shadow": true}]}"#).unwrap();
        assert!(shadow.policy.route_for("GET", "/beta/x").shadow);
        assert!(!shadow.policy.route_for("GET", "/Beta/x").shadow);
        assert!(!shadow.policy.route_for("GET", "/beta").shadow);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let cases = [
            (r#"{"admin_cluster": "a"}"#, "proxy token"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "nope"}]}"#, "start with '/'"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/", "methods": ["get"]}]}"#, "upper-case"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/", "require": "some"}]}"#, "unknown variant"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rutes": []}"#, "unknown field"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/", "key_in_bearer": true}]}"#, "key_in_bearer"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "max_staleness_secs": 0}"#, "max_staleness"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"ipv6_prefix_len": 0}}"#, "ipv6_prefix_len"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"ipv6_prefix_len": 129}}"#, "ipv6_prefix_len"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"counter_slots": 0}}"#, "counter_slots"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"counter_slots": 16777217}}"#, "counter_slots"),
            (r#"{"admin_cluster": "", "proxy_token": "t"}"#, "admin_cluster"),
            ("not json", "not valid"),
        ];
        for (json, needle) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn shared_data_names_are_namespaced_by_the_admin_that_feeds_the_plugin() {
        let prefix = |extra: &str| parse(&format!(r#"{{"proxy_token": "t", {extra}}}"#)).unwrap().sync.shared_prefix;
        let a = prefix(r#""admin_cluster": "admin_a""#);
        assert!(a.starts_with("keygate.") && a.ends_with('.') && a.len() == "keygate.".len() + 13, "{a}");
        // The same admin (whatever else differs) shares; another cluster or authority does not.
        assert_eq!(a, prefix(r#""admin_cluster": "admin_a", "leeway_secs": 5, "routes": [{"prefix": "/x/"}]"#));
        assert_eq!(a, prefix(r#""admin_cluster": "admin_a", "admin_authority": "keygate-admin""#));
        assert_ne!(a, prefix(r#""admin_cluster": "admin_b""#));
        assert_ne!(a, prefix(r#""admin_cluster": "admin_a", "admin_authority": "other""#));
        assert_ne!(shared_data_prefix("ab", "c"), shared_data_prefix("a", "bc"));
    }

    #[test]
    fn proxy_token_falls_back_to_the_environment() {
        let cfg = FilterConfig::parse(br#"{"admin_cluster": "a"}"#, Some("from-env")).unwrap();
        assert_eq!(cfg.sync.proxy_token, "from-env");
        let cfg = FilterConfig::parse(br#"{"admin_cluster": "a", "proxy_token": "cfg"}"#, Some("env")).unwrap();
        assert_eq!(cfg.sync.proxy_token, "cfg");
    }
}
