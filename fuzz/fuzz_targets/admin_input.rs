//! keygate-admin's input parsing: the JSON request bodies (deserialised exactly as the
//! routes do), the snapshot feed's query string, RFC 3339 `expires_at`, email
//! normalisation and the log-safe path template.
#![no_main]

use keygate_admin::api::auth::{Login, SignIn};
use keygate_admin::api::businesses::CreateBusiness;
use keygate_admin::api::feed::parse_snapshot_query;
use keygate_admin::api::keys::CreateKey;
use keygate_admin::api::normalize_email;
use keygate_admin::api::users::CreateUser;
use keygate_admin::rfc3339;
use keygate_admin::route_table;
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
            if let Ok(q) = parse_snapshot_query(&text) {
                assert!(q.wait == 0 || q.since.is_some());
            }
            if let Some(t) = rfc3339::parse(&text) {
                assert_eq!(rfc3339::parse(&rfc3339::format(t)), Some(t), "RFC 3339 round trip");
            }
            let _ = normalize_email(&text);
            let template = route_table::path_template(&text);
            assert!(template.starts_with('/'));
            // Nothing but known words, id prefixes and masks reaches a log line: a segment is
            // a mask, a bare id prefix, or a route word kept verbatim from the path (route
            // words are lowercase with digits, dots and dashes: ".well-known", "signing-keys";
            // no key, token or id fits, as they all hold '_' or upper case).
            let segments: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
            for seg in template.split('/').filter(|s| !s.is_empty()) {
                let id = ["biz_{id}", "usr_{id}", "key_{id}", "ses_{id}", "iss_{id}"].contains(&seg);
                let word =
                    segments.contains(&seg) && seg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
                assert!(seg == "{…}" || id || word, "{seg:?} leaks into the log");
            }
        }
    }
});
