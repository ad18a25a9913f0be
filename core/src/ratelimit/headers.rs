//! The RateLimit headers (IETF draft-ietf-httpapi-ratelimit-headers, structured fields):
//! `RateLimit-Policy` names each limit a request was counted against with its quota and
//! window; `RateLimit` says what remains of each and in how many seconds some frees.
//! Chosen over the older `X-RateLimit-*` because a request here counts against several
//! limits at once (per second and per hour, per key and per business), which the IETF
//! fields list and `X-RateLimit-Limit` / `-Remaining` / `-Reset` cannot.

use super::Standing;

pub const POLICY: &str = "ratelimit-policy";
pub const STATE: &str = "ratelimit";

/// The two headers for `standings`; none when there are none.
pub fn headers(standings: &[Standing]) -> Vec<(&'static str, String)> {
    if standings.is_empty() {
        return Vec::new();
    }
    let policy = standings.iter().map(|s| format!("\"{}\";q={};w={}", s.name, s.limit.count, s.limit.window.secs()));
    let state = standings.iter().map(|s| format!("\"{}\";r={};t={}", s.name, s.remaining, s.reset_secs));
    vec![(POLICY, policy.collect::<Vec<_>>().join(", ")), (STATE, state.collect::<Vec<_>>().join(", "))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{Limit, Window};

    #[test]
    fn every_limit_is_listed_in_both_fields() {
        let standings = [
            Standing { name: "key-1s".into(), limit: Limit { count: 20, window: Window::Second }, remaining: 19, reset_secs: 2 },
            Standing { name: "business-1h".into(), limit: Limit::per_hour(5000), remaining: 0, reset_secs: 1234 },
        ];
        assert_eq!(
            headers(&standings),
            vec![
                (POLICY, "\"key-1s\";q=20;w=1, \"business-1h\";q=5000;w=3600".to_owned()),
                (STATE, "\"key-1s\";r=19;t=2, \"business-1h\";r=0;t=1234".to_owned()),
            ]
        );
        assert!(headers(&[]).is_empty());
    }
}
