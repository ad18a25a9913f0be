//! The wall clock, in whole seconds since the Unix epoch.

use keygate_core::UnixTime;

/// Now; a clock set before 1970 reads as 0.
pub fn now() -> UnixTime {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Now in milliseconds since the Unix epoch (the rate counts' sub-windows); a clock set
/// before 1970 reads as 0.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
