//! The per-key checks part of `cargo xtask bench` (issue 17): what a key's address
//! allowlist and the limits admin sets per key and per business cost per request.
//!
//! Envoys as configuration 5 (one pinned worker, wrk on the other core, three valid
//! credentials on `/orders`, direct response), measured side by side in rounds: the filter
//! before issue 17 (built from commit [`BEFORE`], cached in target/bench-old/; full runs
//! only) and the current one with a plain key, and the current one with a key that has an
//! allowlist of [`RANGES`] ranges (the client's last) and its own limits, in a business with
//! its own per-key and shared limits, the current one with a key that has credits (a
//! balance no run spends), and the current one with an RS256 token from a trusted issuer
//! (a business's own identity provider; key made and token signed with the `openssl`
//! command) in place of keygate's own token. Every limit is out of reach: every answer
//! must be 200.
//!
//! Loopback only; every child is SIGKILLed when its part ends (and dies with xtask).

use std::path::Path;
use std::time::Duration;

use super::limits::wasm_at;
use super::wrk::{lua_script, median_load, wrk, Load};
use super::{admin_call, cores, envoy_ready, login, seed, start_admin, start_envoy, step, write, Cores, Envoy, Mode, OPERATOR_TOKEN, T};
use crate::json::base64url;
use crate::{http, Paths};

/// The last commit before issue 17's per-key checks.
pub(super) const BEFORE: &str = "0369395";
/// Address ranges on the allowlisted key; the bench's client (127.0.0.1) is in the last.
pub(super) const RANGES: usize = 10;
/// A limit no round reaches.
const HIGH: &str = "100000000/h";

pub(super) struct Column {
    pub(super) label: String,
    pub(super) config: String,
    pub(super) load: Load,
    pub(super) rounds: Vec<f64>,
}

pub(super) struct FeaturesReport {
    pub(super) quick: bool,
    pub(super) admin_build: &'static str,
    pub(super) before_missing: Option<String>,
    pub(super) columns: Vec<Column>,
    pub(super) rounds: usize,
    pub(super) secs: u32,
    pub(super) pin: String,
    pub(super) loadavg_start: String,
}

pub(super) const BEFORE_LABEL: &str = "before (0369395), plain key";
pub(super) const PLAIN: &str = "now, plain key";
pub(super) const CHECKED: &str = "now, allowlist + own and business limits";
pub(super) const CREDITED: &str = "now, key with credits";
pub(super) const PROVIDER: &str = "now, a provider's RS256 token";
/// The trusted issuer of the provider column, and its token's audience.
const PROVIDER_ISSUER: &str = "https://idp.bench.test/";
const PROVIDER_AUDIENCE: &str = "bench-api";

impl FeaturesReport {
    pub(super) fn rps(&self, label: &str) -> f64 {
        self.columns.iter().find(|c| c.label == label).map_or(f64::NAN, |c| c.load.rps)
    }
}

/// Request headers: the credentials a column sends.
type Headers = Vec<(&'static str, String)>;

/// One Envoy of the part: its label, plugin config, credentials and the Envoy itself.
struct Lane {
    label: &'static str,
    json: String,
    headers: Headers,
    envoy: Envoy,
}

pub(super) fn run(p: &Paths, admin_bin: &Path, admin_build: &'static str, mode: &Mode, dir: &Path) -> Result<FeaturesReport, String> {
    let loadavg_start = super::loadavg();
    let dir = dir.join("features");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The quick mode measures nothing: it skips building the old filter.
    let before = if mode.quick {
        Err("a quick run does not build the old filter".to_owned())
    } else {
        wasm_at(p, BEFORE, "the filter before issue 17")?
    };
    let cores = if mode.quick { Cores { envoy: None, load: None } } else { cores() };
    let pin = match (cores.envoy, cores.load) {
        (Some(e), Some(l)) => format!("Envoy pinned to core {e}, wrk and admin to core {l}"),
        _ => "nothing pinned".to_owned(),
    };
    step(&format!("per-key checks ({admin_build} admin): logs in {}", dir.display()));
    let admin = start_admin(admin_bin, &dir, cores.load)?;
    let s = seed(&admin)?;
    let checked = checked_key(&admin)?;
    let credited = credited_key(&admin, &s.business)?;
    let provider = provider_token(&admin, &s.business, &s.key, &dir)?;
    let port = admin.addr.rsplit(':').next().and_then(|x| x.parse::<u16>().ok()).ok_or("admin port")?;
    let json = format!(r#"{{"admin_cluster":"keygate_admin","poll_interval_ms":100,"rate_limits":{{"sk":["{HIGH}"]}}}}"#);
    let plain = vec![("authorization", format!("Bearer {}", s.token)), ("SECRET_KEY", s.key.clone()), ("businessId", s.business.clone())];
    let mut specs: Vec<(&'static str, String, Headers)> = Vec::new();
    if let Ok(w) = &before {
        specs.push((BEFORE_LABEL, w.to_string_lossy().into_owned(), plain.clone()));
    }
    let wasm = p.wasm.to_string_lossy().into_owned();
    specs.push((PLAIN, wasm.clone(), plain));
    specs.push((CHECKED, wasm.clone(), checked));
    specs.push((CREDITED, wasm.clone(), credited));
    specs.push((PROVIDER, wasm, provider));
    let mut lanes = Vec::new();
    for (i, (label, wasm, headers)) in specs.into_iter().enumerate() {
        let envoy = start_envoy(
            p,
            &dir,
            &format!("ft-{i}"),
            "keygate.yaml",
            &[("KEYGATE_WASM", &wasm), ("KEYGATE_JSON", &json)],
            port,
            cores.envoy,
        )?;
        lanes.push(Lane { label, json: json.clone(), headers, envoy });
    }
    let mut scripts = Vec::new();
    for (i, lane) in lanes.iter_mut().enumerate() {
        envoy_ready(&mut lane.envoy)?;
        let headers: Vec<(&str, &str)> = lane.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let addr = lane.envoy.addr();
        let label = lane.label;
        let envoy = &mut lane.envoy;
        let (status, body) =
            crate::proc::wait_for(Duration::from_secs(30), Duration::from_millis(50), &format!("{label} answering"), || {
                envoy.proc.alive()?;
                Ok(http::request("GET", &addr, "/orders", &headers, None, T)
                    .ok()
                    .map(|r| (r.status, r.body))
                    .filter(|(st, _)| *st != 503 && *st != 401))
            })?;
        if status != 200 {
            return Err(format!("{label}: answered {status} where 200 was expected: {body}"));
        }
        let script = dir.join(format!("wrk-features-{i}.lua"));
        write(&script, &lua_script("GET", None, &headers, None))?;
        scripts.push(script);
    }
    if !mode.quick {
        step("warm-up: 1 s per filter build");
        for (lane, script) in lanes.iter().zip(&scripts) {
            wrk(script, &format!("http://{}/orders", lane.envoy.addr()), 1, cores.load)?;
        }
    }
    let mut runs: Vec<Vec<Load>> = vec![Vec::new(); lanes.len()];
    for round in 0..mode.rounds {
        step(&format!("round {} of {}: {} s per column", round + 1, mode.rounds, mode.secs));
        for (i, (lane, script)) in lanes.iter_mut().zip(&scripts).enumerate() {
            lane.envoy.proc.alive()?;
            let l = wrk(script, &format!("http://{}/orders", lane.envoy.addr()), mode.secs, cores.load)?;
            println!("    {:<44} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  non-2xx {}", lane.label, l.rps, l.p50_ms, l.p99_ms, l.non2xx);
            if l.requests == 0 || l.non2xx > 0 || l.socket_errors > 0 {
                return Err(format!(
                    "{}: {} of {} answers were not 200 ({} socket errors)",
                    lane.label, l.non2xx, l.requests, l.socket_errors
                ));
            }
            runs[i].push(l);
        }
    }
    let columns = lanes
        .iter()
        .zip(runs)
        .map(|(lane, rs)| Column {
            label: lane.label.to_owned(),
            config: lane.json.clone(),
            load: median_load(&rs),
            rounds: rs.iter().map(|l| l.rps).collect(),
        })
        .collect();
    Ok(FeaturesReport {
        quick: mode.quick,
        admin_build,
        before_missing: before.err(),
        columns,
        rounds: mode.rounds,
        secs: mode.secs,
        pin,
        loadavg_start,
    })
}

/// A business with its own per-key and shared limits, and a key of it with an allowlist
/// (the client's range last) and its own limits: the three credentials for it.
fn checked_key(admin: &super::Admin) -> Result<Headers, String> {
    let biz = admin_call(admin, "POST", "/v1/businesses", Some(OPERATOR_TOKEN), Some(r#"{"name":"Bench checks"}"#), 201)?;
    let business = biz.str("id").ok_or("no business id")?.to_owned();
    let limits = format!(r#"{{"per_key":["{HIGH}"],"shared":["{HIGH}"]}}"#);
    admin_call(admin, "PATCH", &format!("/v1/businesses/{business}/limits"), Some(OPERATOR_TOKEN), Some(&limits), 200)?;
    let mut ranges: Vec<String> = (0..RANGES - 1).map(|i| format!("\"198.51.{i}.0/24\"")).collect();
    ranges.push("\"127.0.0.0/8\"".to_owned());
    let body =
        format!(r#"{{"kind":"sk","mode":"live","name":"bench checks","allowed_ips":[{}],"rate_limits":["{HIGH}"]}}"#, ranges.join(","));
    let key = admin_call(admin, "POST", &format!("/v1/businesses/{business}/keys"), Some(OPERATOR_TOKEN), Some(&body), 201)?;
    let key = key.str("key").ok_or("no raw key")?.to_owned();
    let token = login(&admin.addr, &key, "bench-checks")?;
    Ok(vec![("authorization", format!("Bearer {token}")), ("SECRET_KEY", key), ("businessId", business)])
}

/// A key of the seeded business with a balance no run spends: each request spends one
/// credit (a shared-data read and compare-and-swap) besides its rate limits.
fn credited_key(admin: &super::Admin, business: &str) -> Result<Headers, String> {
    let body = r#"{"kind":"sk","mode":"live","name":"bench credits","credits":{"remaining":1000000000000}}"#;
    let key = admin_call(admin, "POST", &format!("/v1/businesses/{business}/keys"), Some(OPERATOR_TOKEN), Some(body), 201)?;
    let key = key.str("key").ok_or("no raw key")?.to_owned();
    let token = login(&admin.addr, &key, "bench-credits")?;
    Ok(vec![("authorization", format!("Bearer {token}")), ("SECRET_KEY", key), ("businessId", business.to_owned())])
}

/// The seeded business trusts an identity provider (a static JWKS: an RSA 2048 key made
/// with `openssl`); its RS256 token (signed with `openssl dgst`, valid for a day) goes with
/// the business's key.
fn provider_token(admin: &super::Admin, business: &str, key: &str, dir: &Path) -> Result<Headers, String> {
    let openssl = |args: &[&str]| -> Result<Vec<u8>, String> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl (cargo xtask setup installs it): {e}"))?;
        if !out.status.success() {
            return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(out.stdout)
    };
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "idp.pem"])?;
    let modulus = String::from_utf8_lossy(&openssl(&["rsa", "-in", "idp.pem", "-noout", "-modulus"])?).into_owned();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or("openssl printed an unreadable modulus")?;
    let kid = "bench-rsa";
    let jwk = format!(r#"{{"kty":"RSA","kid":"{kid}","alg":"RS256","use":"sig","n":"{}","e":"AQAB"}}"#, base64url(&n));
    let body = format!(
        r#"{{"issuer":"{PROVIDER_ISSUER}","audiences":["{PROVIDER_AUDIENCE}"],"algorithms":["RS256"],"businesses_claim":"orgs","jwks":{{"keys":[{jwk}]}}}}"#
    );
    admin_call(admin, "POST", &format!("/v1/businesses/{business}/issuers"), Some(OPERATOR_TOKEN), Some(&body), 201)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#);
    let claims = format!(
        r#"{{"iss":"{PROVIDER_ISSUER}","aud":"{PROVIDER_AUDIENCE}","sub":"bench","orgs":["{business}"],"iat":{},"exp":{}}}"#,
        now - 5,
        now + 86_400
    );
    let input = format!("{}.{}", base64url(header.as_bytes()), base64url(claims.as_bytes()));
    write(&dir.join("idp-input"), &input)?;
    let signature = openssl(&["dgst", "-sha256", "-sign", "idp.pem", "-binary", "idp-input"])?;
    let token = format!("{input}.{}", base64url(&signature));
    Ok(vec![("authorization", format!("Bearer {token}")), ("SECRET_KEY", key.to_owned()), ("businessId", business.to_owned())])
}
