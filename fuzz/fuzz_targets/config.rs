//! The filter's plugin configuration: `FilterConfig::parse` on arbitrary JSON (seeds are
//! envoy.yaml's plugin JSON and variants), then route matching on the parsed policy.
#![no_main]

use keygate_core::{FilterConfig, Requirement};
use libfuzzer_sys::fuzz_target;

const ENV_TOKEN: &str = "kgp_env_token_5ecret";

fuzz_target!(|data: &[u8]| {
    let (selector, json) = data.split_first().unwrap_or((&0, &[]));
    let env = (selector & 1 == 1).then_some(ENV_TOKEN);
    let Ok(cfg) = FilterConfig::parse(json, env) else { return };
    assert!(!cfg.sync.proxy_token.is_empty());
    if cfg.sync.proxy_token == ENV_TOKEN {
        assert!(!format!("{cfg:?}").contains(ENV_TOKEN), "Debug prints the proxy token");
    }
    assert!(cfg.policy.max_staleness_secs > 0);
    for route in &cfg.policy.routes {
        assert!(route.prefix.starts_with('/'));
        assert!(!route.key_in_bearer || route.require == Requirement::Key);
    }
    let text = String::from_utf8_lossy(json);
    for method in ["GET", "POST", "get"] {
        for path in ["/", "/public/x", "/public/../orders", &text] {
            let route = cfg.policy.route_for(method, path);
            if path.contains("/../") {
                assert_eq!(route.require, Requirement::All, "a dot-segment path got a relaxed route");
            }
        }
    }
});
