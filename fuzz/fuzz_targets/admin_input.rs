//! keygate-admin's input parsing: the JSON request bodies (deserialised exactly as the
//! routes do), the snapshot feed's query string, RFC 3339 `expires_at`, email
//! normalisation and the log-safe path template.
#![no_main]

use keygate_admin::handlers::{self, CreateBusiness, CreateKey, CreateUser, Login, SignIn};
use keygate_admin::{rfc3339, routes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    match selector % 5 {
        0 => {
            let _ = serde_json::from_slice::<CreateKey>(rest);
            let _ = serde_json::from_slice::<Login>(rest);
        }
        1 => {
            let _ = serde_json::from_slice::<SignIn>(rest);
            let _ = serde_json::from_slice::<CreateUser>(rest);
            let _ = serde_json::from_slice::<CreateBusiness>(rest);
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(q) = handlers::parse_snapshot_query(&text) {
                assert!(q.wait == 0 || q.since.is_some());
            }
            if let Some(t) = rfc3339::parse(&text) {
                assert_eq!(rfc3339::parse(&rfc3339::format(t)), Some(t), "RFC 3339 round trip");
            }
            let _ = handlers::normalize_email(&text);
            let template = routes::path_template(&text);
            assert!(template.starts_with('/'));
            // Nothing but known words, id prefixes and masks reaches a log line.
            for seg in template.split('/').filter(|s| !s.is_empty()) {
                assert!(seg == "{…}" || seg.ends_with("{id}") || seg.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c.is_ascii_digit()), "{seg:?} leaks into the log");
            }
        }
    }
});
