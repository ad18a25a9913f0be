//! The filter's plugin configuration: parsed and validated once (in `on_configure`) into
//! an immutable [`FilterConfig`]. The fields as written, with their defaults, are in
//! `fields`; which route a request gets, in `routing`.

mod fields;
mod routing;

pub use fields::{
    HoldUnknown, RateLimits, Requirement, Route, MAX_COUNTER_SLOTS, MAX_FLEET_TIMEOUT_MS, MAX_HELD, MAX_HOLD_TIMEOUT_MS, MAX_LIMITS,
    MAX_NEGATIVE_ENTRIES, MAX_NEGATIVE_TTL_SECS, MAX_SYNC_INTERVAL_MS, MIN_SYNC_INTERVAL_MS,
};

use sha2::{Digest, Sha256};

use crate::ratelimit::{Limit, LimitPolicy};
use crate::token::{TokenExpectations, REVOCATION_MARGIN_SECS};
use fields::RawConfig;

/// Everything `decide` needs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub token: TokenExpectations,
    pub max_staleness_secs: u64,
    pub rate_limits: LimitPolicy,
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
    /// Holding requests for keys and signing keys not yet in the snapshot.
    pub hold: HoldUnknown,
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
        let rate_limits = compile_rate_limits(&raw.rate_limits).map_err(ConfigError::Invalid)?;
        if raw.leeway_secs > REVOCATION_MARGIN_SECS {
            // Past exp + this margin a revoked session has left admin's feed: a longer leeway
            // would accept its tokens again.
            return invalid(format!("leeway_secs must be at most {REVOCATION_MARGIN_SECS} (how long past a token's expiry admin keeps its revoked session in the feed)"));
        }
        let hold = &raw.hold_unknown;
        if hold.timeout_ms > MAX_HOLD_TIMEOUT_MS || hold.max_held > MAX_HELD {
            return invalid(format!("hold_unknown: timeout_ms must be at most {MAX_HOLD_TIMEOUT_MS} and max_held at most {MAX_HELD}"));
        }
        if hold.negative_ttl_secs > MAX_NEGATIVE_TTL_SECS || hold.negative_entries > MAX_NEGATIVE_ENTRIES {
            return invalid(format!(
                "hold_unknown: negative_ttl_secs must be at most {MAX_NEGATIVE_TTL_SECS} and negative_entries at most {MAX_NEGATIVE_ENTRIES}"
            ));
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
            if route.cost > crate::credits::MAX_COST {
                return invalid(format!("routes[{i}].cost must be 0 to {}", crate::credits::MAX_COST));
            }
            if route.rate_limit_per_hour == Some(0) {
                return invalid(format!("routes[{i}].rate_limit_per_hour must be positive"));
            }
            if let Some(limits) = &route.rate_limits {
                check_limits(&format!("routes[{i}].rate_limits"), limits).map_err(ConfigError::Invalid)?;
            }
        }
        let mut routes = raw.routes;
        for (i, route) in routes.iter_mut().enumerate() {
            route.rate_limits = merge_shorthand(
                &format!("routes[{i}]"),
                "rate_limits",
                route.rate_limits.take(),
                "rate_limit_per_hour",
                route.rate_limit_per_hour,
            )
            .map_err(ConfigError::Invalid)?;
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
            rate_limits: None,
            cost: 1,
        };
        Ok(FilterConfig {
            policy: Policy {
                token: TokenExpectations { issuer: raw.issuer, audience: raw.audience, leeway: raw.leeway_secs },
                max_staleness_secs: raw.max_staleness_secs,
                rate_limits,
                routes,
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
            hold: raw.hold_unknown,
        })
    }
}

fn check_limits(field: &str, limits: &[Limit]) -> Result<(), String> {
    crate::ratelimit::check_list(field, limits)
}

/// A list field and its `N per hour` shorthand: at most one of them.
fn merge_shorthand(
    place: &str,
    list_name: &str,
    list: Option<Vec<Limit>>,
    shorthand_name: &str,
    per_hour: Option<u32>,
) -> Result<Option<Vec<Limit>>, String> {
    match (list, per_hour) {
        (Some(_), Some(_)) => Err(format!("{place}: give {list_name} or {shorthand_name}, not both")),
        (Some(list), None) => Ok(Some(list)),
        (None, Some(0)) => Err(format!("{place}.{shorthand_name} must be positive")),
        (None, Some(n)) => Ok(Some(vec![Limit::per_hour(n)])),
        (None, None) => Ok(None),
    }
}

fn compile_rate_limits(raw: &RateLimits) -> Result<LimitPolicy, String> {
    if !(1..=128).contains(&raw.ipv6_prefix_len) {
        return Err("rate_limits.ipv6_prefix_len must be between 1 and 128".into());
    }
    if raw.counter_slots == 0 || raw.counter_slots > MAX_COUNTER_SLOTS {
        return Err(format!("rate_limits.counter_slots must be between 1 and {MAX_COUNTER_SLOTS}"));
    }
    if raw.sync_interval_ms != 0 && !(MIN_SYNC_INTERVAL_MS..=MAX_SYNC_INTERVAL_MS).contains(&raw.sync_interval_ms) {
        return Err(format!(
            "rate_limits.sync_interval_ms must be between {MIN_SYNC_INTERVAL_MS} and {MAX_SYNC_INTERVAL_MS} (0: no fleet counting)"
        ));
    }
    if raw.fleet_timeout_ms > MAX_FLEET_TIMEOUT_MS {
        return Err(format!("rate_limits.fleet_timeout_ms must be at most {MAX_FLEET_TIMEOUT_MS}"));
    }
    let defaults = LimitPolicy::default();
    let list = |name: &str, list: &Option<Vec<Limit>>, short: &str, per_hour: Option<u32>, default: Vec<Limit>| {
        if let Some(limits) = list {
            check_limits(&format!("rate_limits.{name}"), limits)?;
        }
        Ok::<_, String>(merge_shorthand("rate_limits", name, list.clone(), short, per_hour)?.unwrap_or(default))
    };
    check_limits("rate_limits.business", &raw.business)?;
    Ok(LimitPolicy {
        sk: list("sk", &raw.sk, "sk_per_hour", raw.sk_per_hour, defaults.sk)?,
        pk: list("pk", &raw.pk, "pk_per_hour", raw.pk_per_hour, defaults.pk)?,
        public_per_ip: list(
            "public_per_ip",
            &raw.public_per_ip,
            "public_per_ip_per_hour",
            raw.public_per_ip_per_hour,
            defaults.public_per_ip,
        )?,
        business: raw.business.clone(),
        ipv6_prefix_len: raw.ipv6_prefix_len,
        counter_slots: raw.counter_slots,
        sync_interval_ms: raw.sync_interval_ms,
        fleet_timeout_ms: raw.fleet_timeout_ms,
        headers: raw.headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(json: &str) -> Result<FilterConfig, ConfigError> {
        FilterConfig::parse(json.as_bytes(), None)
    }

    /// Public, key-only (also as the bearer value) and scoped live-only routes.
    pub(super) const DEMO: &str = r#"{
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
        let hour = |n| vec![Limit::per_hour(n)];
        assert_eq!(
            cfg.policy.rate_limits,
            LimitPolicy {
                sk: hour(1000),
                pk: hour(100),
                business: Vec::new(),
                public_per_ip: hour(200),
                ipv6_prefix_len: 64,
                counter_slots: 65_536,
                sync_interval_ms: 200,
                fleet_timeout_ms: 3000,
                headers: true
            }
        );
        assert_eq!(cfg.policy.token.issuer, "keygate");
        assert_eq!(cfg.sync.proxy_token, "t");
        assert!(!format!("{:?}", cfg.sync).contains("\"t\""));
        assert_eq!(cfg.hold, HoldUnknown { timeout_ms: 300, max_held: 64, negative_ttl_secs: 10, negative_entries: 4096 });
    }

    #[test]
    fn limit_lists_replace_the_hourly_shorthands() {
        let cfg = parse(
            r#"{"admin_cluster": "a", "proxy_token": "t",
                "rate_limits": {"sk": ["20/s", "1000/h"], "pk_per_hour": 7, "business": ["5000/d"], "sync_interval_ms": 0, "headers": false},
                "routes": [{"prefix": "/a/", "rate_limit_per_hour": 3}, {"prefix": "/b/", "rate_limits": ["2/m"]}, {"prefix": "/c/"}]}"#,
        )
        .unwrap();
        let limits = &cfg.policy.rate_limits;
        assert_eq!(limits.sk, vec![Limit::parse("20/s").unwrap(), Limit::per_hour(1000)]);
        assert_eq!(limits.pk, vec![Limit::per_hour(7)]);
        assert_eq!(limits.public_per_ip, vec![Limit::per_hour(200)]);
        assert_eq!(limits.business, vec![Limit::parse("5000/d").unwrap()]);
        assert_eq!((limits.sync_interval_ms, limits.headers), (0, false));
        let routes = &cfg.policy.routes;
        assert_eq!(routes[0].rate_limits, Some(vec![Limit::per_hour(3)]));
        assert_eq!(routes[1].rate_limits, Some(vec![Limit::parse("2/m").unwrap()]));
        assert_eq!(routes[2].rate_limits, None);
    }

    #[test]
    fn holding_is_on_by_default_and_turns_off_with_a_zero_timeout() {
        let off = parse(r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"timeout_ms": 0}}"#).unwrap();
        assert_eq!(off.hold, HoldUnknown { timeout_ms: 0, ..HoldUnknown::default() });
        let some = parse(r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"max_held": 8, "negative_entries": 0}}"#).unwrap();
        assert_eq!((some.hold.timeout_ms, some.hold.max_held, some.hold.negative_entries), (300, 8, 0));
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
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"sk": ["10/x"]}}"#, "not a limit"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"sk": ["0/h"]}}"#, "positive"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"sk": ["10/h", "20/h"]}}"#, "two limits per h"),
            (
                r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"business": ["1/s", "2/m", "3/h", "4/d", "5/s"]}}"#,
                "at most 4",
            ),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"pk": ["10/h"], "pk_per_hour": 10}}"#, "not both"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"sk_per_hour": 0}}"#, "positive"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"sync_interval_ms": 60001}}"#, "sync_interval_ms"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"sync_interval_ms": 9}}"#, "sync_interval_ms"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "rate_limits": {"fleet_timeout_ms": 3600001}}"#, "fleet_timeout_ms"),
            (
                r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/", "rate_limits": ["1/s"], "rate_limit_per_hour": 3}]}"#,
                "not both",
            ),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "routes": [{"prefix": "/", "rate_limits": ["1/s", "2/s"]}]}"#, "two limits"),
            (r#"{"admin_cluster": "", "proxy_token": "t"}"#, "admin_cluster"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"timeout_ms": 10001}}"#, "timeout_ms"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"max_held": 10001}}"#, "max_held"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"negative_entries": 1000001}}"#, "negative_entries"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"negative_ttl_secs": 3601}}"#, "negative_ttl_secs"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"timeout": 1}}"#, "unknown field"),
            (r#"{"admin_cluster": "a", "proxy_token": "t", "hold_unknown": {"max_held": -1}}"#, "invalid value"),
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
