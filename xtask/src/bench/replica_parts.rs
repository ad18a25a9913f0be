//! What the replica bench's parts (replicas.rs, proxies.rs) share: how much each does, and
//! the calls they make to admin and through Envoy.

use std::time::{Duration, Instant};

use super::{OPERATOR_TOKEN, T};
use crate::http;
use crate::json::Json;

/// How much each measurement does (quick: a smoke that checks answers, a few seconds).
pub(super) struct Sizes {
    pub(super) quick: bool,
    pub(super) create_secs: u64,
    pub(super) create_rounds: usize,
    pub(super) revocations: usize,
    pub(super) proxies: usize,
    pub(super) burst: usize,
    pub(super) rest_secs: u64,
}

impl Sizes {
    pub(super) fn new(quick: bool) -> Sizes {
        if quick {
            Sizes { quick, create_secs: 1, create_rounds: 1, revocations: 3, proxies: 20, burst: 3, rest_secs: 1 }
        } else {
            Sizes { quick, create_secs: 5, create_rounds: 3, revocations: 100, proxies: 1000, burst: 100, rest_secs: 5 }
        }
    }
}

/// An operator call through a fresh connection, expecting `expect`.
pub(super) fn operator(addr: &str, method: &str, path: &str, body: Option<&str>, expect: u16) -> Result<Json, String> {
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let r = http::request(method, addr, path, &[("Authorization", &auth)], body, T)?;
    if r.status != expect {
        return Err(format!(
            "{method} {path} at {addr}: HTTP {} (expected {expect}): {}",
            r.status,
            r.body.chars().take(300).collect::<String>()
        ));
    }
    Json::parse(&r.body).map_err(|e| format!("{method} {path}: {e}"))
}

/// A new sk_live key of `business` through `addr`: (id, raw key).
pub(super) fn create_key(addr: &str, business: &str) -> Result<(String, String), String> {
    let j = operator(addr, "POST", &format!("/v1/businesses/{business}/keys"), Some(r#"{"kind":"sk","mode":"live"}"#), 201)?;
    match (j.str("id"), j.str("key")) {
        (Some(id), Some(key)) => Ok((id.to_owned(), key.to_owned())),
        _ => Err("create key: no id or key in the answer".into()),
    }
}

/// The status Envoy at `addr` answers for `key` on the key-only route.
pub(super) fn envoy_status(addr: &str, key: &str) -> Result<u16, String> {
    Ok(http::request("GET", addr, "/key/bench", &[("SECRET_KEY", key)], None, T)?.status)
}

/// Waits until every Envoy lets `key` through.
pub(super) fn wait_accepted(envoys: &[String], key: &str) -> Result<(), String> {
    for e in envoys {
        crate::proc::wait_for(Duration::from_secs(30), Duration::from_millis(5), "a new key accepted through Envoy", || {
            Ok(Some(envoy_status(e, key)?).filter(|&s| s == 200).map(|_| ()))
        })?;
    }
    Ok(())
}

/// Polls Envoy at `addr` with `key` until it answers 401 (any answer but 200 or 401 is an
/// error); the moment of the first 401.
pub(super) fn until_refused(addr: &str, key: &str, limit: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + limit;
    loop {
        match envoy_status(addr, key)? {
            401 => return Ok(Instant::now()),
            200 => {}
            s => return Err(format!("Envoy {addr} answered {s} for a key that is active or deactivated")),
        }
        if Instant::now() > deadline {
            return Err(format!("Envoy {addr} still lets a deactivated key through after {} s", limit.as_secs()));
        }
    }
}
