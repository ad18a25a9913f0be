//! What a limit is (`"1000/h"`: a count per sliding window) and which limits a request is
//! counted against.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The length of a sliding window. Each is cut into [`SUBS`](super::SUBS) sub-windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    Second,
    Minute,
    Hour,
    Day,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::Second, Window::Minute, Window::Hour, Window::Day];

    pub fn millis(self) -> u64 {
        match self {
            Window::Second => 1_000,
            Window::Minute => 60_000,
            Window::Hour => 3_600_000,
            Window::Day => 86_400_000,
        }
    }

    pub fn secs(self) -> u64 {
        self.millis() / 1000
    }

    pub fn from_millis(ms: u64) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.millis() == ms)
    }

    /// The unit as written in a limit: `s`, `m`, `h`, `d`.
    pub fn unit(self) -> &'static str {
        match self {
            Window::Second => "s",
            Window::Minute => "m",
            Window::Hour => "h",
            Window::Day => "d",
        }
    }

    /// The length of one sub-window in milliseconds.
    pub fn sub_millis(self) -> u64 {
        self.millis() / super::SUBS as u64
    }

    /// The index of the sub-window `now_ms` falls in: the same on every Envoy (their clocks
    /// agree to well within a sub-window), so counts line up across the fleet.
    pub fn sub_index(self, now_ms: u64) -> u64 {
        now_ms / self.sub_millis()
    }
}

/// At most this many requests in any span of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub count: u32,
    pub window: Window,
}

impl Limit {
    pub fn per_hour(count: u32) -> Limit {
        Limit { count, window: Window::Hour }
    }

    /// Reads `"<count>/<unit>"`, unit `s`, `m`, `h` or `d`; the count is positive.
    pub fn parse(text: &str) -> Result<Limit, String> {
        let bad = || format!("{text:?} is not a limit: write \"<count>/<s|m|h|d>\", e.g. \"1000/h\"");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let window = Window::ALL.into_iter().find(|w| w.unit() == unit.trim()).ok_or_else(bad)?;
        if count == 0 {
            return Err(format!("{text:?}: a limit's count must be positive"));
        }
        Ok(Limit { count, window })
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, self.window.unit())
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Most limits in one list (each is a counter and a shared-data read per request).
pub const MAX_LIMITS: usize = 4;

/// A list of limits: at most [`MAX_LIMITS`], one per window length (two on one window
/// would be one counter).
pub fn check_list(field: &str, limits: &[Limit]) -> Result<(), String> {
    if limits.len() > MAX_LIMITS {
        return Err(format!("{field}: at most {MAX_LIMITS} limits"));
    }
    for (i, limit) in limits.iter().enumerate() {
        if limits[..i].iter().any(|l| l.window == limit.window) {
            return Err(format!("{field}: two limits per {}; keep the stricter", limit.window.unit()));
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Limit, D::Error> {
        let text = String::deserialize(deserializer)?;
        Limit::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a counter counts, for the policy names of the RateLimit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Business,
    Address,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Business => "business",
            Scope::Address => "address",
        }
    }
}

/// One limit a request is counted against: the bucket (`key:…`, `biz:…`, `ip:…`, the same
/// name on every Envoy) and the limit on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    pub bucket: String,
    pub scope: Scope,
    pub limit: Limit,
}

impl LimitCheck {
    /// The counter's name: one counter per bucket and window length.
    pub fn counter(&self) -> String {
        counter_name(&self.bucket, self.limit.window)
    }

    /// The policy's name in the RateLimit headers, e.g. `key-1h`.
    pub fn policy_name(&self) -> String {
        format!("{}-1{}", self.scope.as_str(), self.limit.window.unit())
    }
}

pub fn counter_name(bucket: &str, window: Window) -> String {
    format!("{bucket}#{}", window.unit())
}

/// The compiled `rate_limits` of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPolicy {
    pub sk: Vec<Limit>,
    pub pk: Vec<Limit>,
    /// Shared by all keys of a business; empty: no business-wide limit.
    pub business: Vec<Limit>,
    pub public_per_ip: Vec<Limit>,
    pub ipv6_prefix_len: u8,
    pub counter_slots: u32,
    /// How often an Envoy exchanges counts with admin; 0: each Envoy counts alone.
    pub sync_interval_ms: u64,
    /// Without a successful exchange for this long, an Envoy admits at most its share.
    pub fleet_timeout_ms: u64,
    /// RateLimit-Policy / RateLimit headers on answers of limited routes.
    pub headers: bool,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            sk: vec![Limit::per_hour(1000)],
            pk: vec![Limit::per_hour(100)],
            business: Vec::new(),
            public_per_ip: vec![Limit::per_hour(200)],
            ipv6_prefix_len: 64,
            counter_slots: 65_536,
            sync_interval_ms: 200,
            fleet_timeout_ms: 3000,
            headers: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_from_count_and_unit() {
        assert_eq!(Limit::parse("1000/h"), Ok(Limit { count: 1000, window: Window::Hour }));
        assert_eq!(Limit::parse(" 20 / s "), Ok(Limit { count: 20, window: Window::Second }));
        assert_eq!(Limit::parse("5/m").map(|l| l.window.millis()), Ok(60_000));
        assert_eq!(Limit::parse("7/d").map(|l| l.to_string()), Ok("7/d".to_owned()));
        for bad in ["", "10", "10/", "/h", "0/h", "-1/h", "10/w", "10/hour", "1e3/h", "10/2h", "4294967296/s"] {
            assert!(Limit::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn windows_have_ten_sub_windows_on_one_global_grid() {
        assert_eq!(Window::Second.sub_millis(), 100);
        assert_eq!(Window::Hour.sub_millis(), 360_000);
        assert_eq!(Window::Minute.sub_index(59_999), 9);
        assert_eq!(Window::Minute.sub_index(60_000), 10);
        assert_eq!(Window::from_millis(86_400_000), Some(Window::Day));
        assert_eq!(Window::from_millis(1), None);
    }

    #[test]
    fn policy_names_say_scope_and_window() {
        let check = LimitCheck { bucket: "key:k".into(), scope: Scope::Business, limit: Limit::per_hour(3) };
        assert_eq!(check.policy_name(), "business-1h");
        assert_eq!(check.counter(), "key:k#h");
    }
}
