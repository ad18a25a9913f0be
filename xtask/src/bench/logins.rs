//! `cargo xtask login-flood [--logins N] [--admin BIN] [--wasm FILE]`: what one client holding
//! one publishable key can do to every proxy by logging in N times (default 10 000), each
//! time with a new `session_id`. Before and after the flood, on the same Envoy (keygate
//! filter, 2 workers) it measures: req/s of valid requests while admin's data changes (a key
//! created every 50 ms, so every worker reloads what the leader publishes), Envoy's RSS, the
//! first feed page's size, and a fresh Envoy's time to its first allowed request. It counts
//! the login answers by status and the revoked sessions the feed carries. `--admin` and
//! `--wasm` measure other builds (e.g. an older checkout's) with this tree's harness.
//! Not part of `cargo xtask test`; everything runs on 127.0.0.1 in `target/login-flood/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    admin_call, envoy_ready, keygate_json, login, lua_script, start_admin_with, start_envoy_workers, step, vm_rss_kb, wait_for, write, wrk,
    Admin, Envoy, OPERATOR_TOKEN, PROXY_TOKEN, T,
};
use crate::json::{quote, Json};
use crate::{http, Paths};

struct Options {
    logins: usize,
    admin: PathBuf,
    wasm: PathBuf,
}

pub fn cmd(p: &Paths, args: &[String]) -> ExitCode {
    let mut o = Options { logins: 10_000, admin: p.admin.clone(), wasm: p.wasm.clone() };
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match (a.as_str(), rest.next()) {
            ("--logins", Some(n)) => match n.replace('_', "").parse() {
                Ok(n) if n >= 1 => o.logins = n,
                _ => return crate::fail("--logins takes a number ≥ 1"),
            },
            ("--admin", Some(path)) => o.admin = PathBuf::from(path),
            ("--wasm", Some(path)) => o.wasm = PathBuf::from(path),
            (other, _) => return crate::fail(&format!("login-flood takes --logins N, --admin BIN and --wasm FILE, not {other}")),
        }
    }
    match run(p, &o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(&format!("login-flood: {e}")),
    }
}

struct Sample {
    rps: f64,
    non2xx: u64,
    changes: u64,
    rss_mb: f64,
    first_page_kb: f64,
    revoked: usize,
    fresh_sync_ms: f64,
}

fn run(p: &Paths, o: &Options) -> Result<(), String> {
    super::ensure_wrk()?;
    crate::setup_and_build(p)?;
    for bin in [&o.admin, &o.wasm] {
        if !bin.exists() {
            return Err(format!("{} does not exist", bin.display()));
        }
    }
    let dir = p.root.join("target/login-flood");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    step(&format!("login-flood: admin {}, filter {}; logs in {}", o.admin.display(), o.wasm.display(), dir.display()));

    // Admin with its default session cap (the flood is about what that cap does).
    let admin = start_admin_with(&o.admin, &dir, None, &[])?;
    let biz = admin_call(&admin, "POST", "/v1/businesses", Some(OPERATOR_TOKEN), Some(r#"{"name":"Flood"}"#), 201)?;
    let business = biz.str("id").ok_or("no business id")?.to_owned();
    let new_key = |kind: &str, name: &str| -> Result<String, String> {
        let body = format!(r#"{{"kind":"{kind}","mode":"live","name":"{name}"}}"#);
        let k = admin_call(&admin, "POST", &format!("/v1/businesses/{business}/keys"), Some(OPERATOR_TOKEN), Some(&body), 201)?;
        k.str("key").map(str::to_owned).ok_or_else(|| "no raw key".to_string())
    };
    let sk = new_key("sk", "measured")?;
    let pk = new_key("pk", "published")?;
    let token = login(&admin.addr, &sk, "measured")?;

    let wasm = o.wasm.to_string_lossy().into_owned();
    let json = keygate_json("");
    let feed_port: u16 = admin.addr.rsplit(':').next().and_then(|x| x.parse().ok()).ok_or("admin port")?;
    let mut envoy = start_envoy_workers(p, &dir, "measured", &[("KEYGATE_WASM", &wasm), ("KEYGATE_JSON", &json)], feed_port, 2)?;
    envoy_ready(&mut envoy)?;
    let bearer = format!("Bearer {token}");
    let all3: Vec<(&str, &str)> = vec![("Authorization", &bearer), ("SECRET_KEY", &sk), ("businessId", &business)];
    answering(&envoy, &all3)?;
    let script = dir.join("wrk-all3.lua");
    write(&script, &lua_script("GET", None, &all3, None))?;

    let measure = |label: &str, envoy: &mut Envoy| -> Result<Sample, String> {
        step(&format!("{label}: req/s for 10 s with a key created every 50 ms; RSS; a fresh Envoy's sync"));
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let churn = {
            let (stop, made, addr, business) = (Arc::clone(&stop), Arc::clone(&made), admin.addr.clone(), business.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {OPERATOR_TOKEN}");
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let body = r#"{"kind":"sk","mode":"live","name":"churn"}"#;
                    let path = format!("/v1/businesses/{business}/keys");
                    if http::request("POST", &addr, &path, &[("Authorization", &auth)], Some(body), T).is_ok_and(|r| r.status == 201) {
                        made.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let load = wrk(&script, &format!("http://{}/orders", envoy.addr()), 10, None);
        stop.store(true, Ordering::SeqCst);
        let _ = churn.join();
        let load = load?;
        envoy.proc.alive()?;
        let (rss_kb, _) = vm_rss_kb(envoy.proc.pid())?;
        let page =
            http::request("GET", &admin.addr, "/v1/snapshot?limit=10000", &[("Authorization", &format!("Bearer {PROXY_TOKEN}"))], None, T)?;
        if page.status != 200 {
            return Err(format!("first feed page: HTTP {}", page.status));
        }
        let revoked = revoked_sessions(&admin, &page.body)?;
        let fresh_sync_ms = fresh_sync(p, &dir, label, &wasm, &json, feed_port, &all3)?;
        Ok(Sample {
            rps: load.rps,
            non2xx: load.non2xx,
            changes: made.load(Ordering::SeqCst),
            rss_mb: rss_kb as f64 / 1024.0,
            first_page_kb: page.body.len() as f64 / 1024.0,
            revoked,
            fresh_sync_ms,
        })
    };

    let before = measure("before the flood", &mut envoy)?;
    step(&format!("the flood: {} logins with one pk key, a new session_id each, from one client", o.logins));
    let t0 = Instant::now();
    let mut statuses: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    let deadline = t0 + Duration::from_secs(600);
    for i in 0..o.logins {
        if Instant::now() > deadline {
            return Err(format!("the flood did not finish within 600 s ({i} logins sent)"));
        }
        let body = format!("{{\"api_key\":{},\"session_id\":\"flood-{i}\"}}", quote(&pk));
        let r = http::request("POST", &admin.addr, "/auth/login", &[], Some(&body), T)?;
        *statuses.entry(r.status).or_default() += 1;
    }
    let flood_secs = t0.elapsed().as_secs_f64();
    let counts: Vec<String> = statuses.iter().map(|(s, n)| format!("{n} × {s}")).collect();
    println!("    {} logins in {flood_secs:.1} s: {}", o.logins, counts.join(", "));
    // Let the last changes reach the proxy before measuring again.
    std::thread::sleep(Duration::from_secs(2));
    let after = measure("after the flood", &mut envoy)?;

    println!("\n| | before the flood | after {} logins | after ÷ before |", o.logins);
    println!("| --- | --: | --: | --: |");
    let row = |what: &str, b: f64, a: f64, digits: usize| println!("| {what} | {b:.digits$} | {a:.digits$} | {:.2} |", a / b);
    row("req/s (valid, 3 credentials; keys changing)", before.rps, after.rps, 0);
    row("Envoy RSS, MB", before.rss_mb, after.rss_mb, 1);
    row("first feed page, KiB", before.first_page_kb, after.first_page_kb, 1);
    row("fresh Envoy: start → first 200, ms", before.fresh_sync_ms, after.fresh_sync_ms, 0);
    println!("| revoked sessions in the feed | {} | {} | |", before.revoked, after.revoked);
    println!(
        "| changes during the req/s run (non-2xx answers) | {} ({}) | {} ({}) | |",
        before.changes, before.non2xx, after.changes, after.non2xx
    );
    println!("| login answers | | {} | |", counts.join(", "));
    if before.non2xx > 0 || after.non2xx > 0 {
        return Err("some measured requests were refused".into());
    }
    Ok(())
}

/// Waits until Envoy allows a request with `headers` (it holds a snapshot).
fn answering(envoy: &Envoy, headers: &[(&str, &str)]) -> Result<(), String> {
    let addr = envoy.addr();
    wait_for(Duration::from_secs(60), Duration::from_millis(5), "Envoy allowing a valid request", || {
        Ok(http::request("GET", &addr, "/orders", headers, None, T).ok().filter(|r| r.status == 200).map(|_| ()))
    })
}

/// A new Envoy (2 workers): from the moment its admin says ready to its first 200.
fn fresh_sync(p: &Paths, dir: &Path, label: &str, wasm: &str, json: &str, feed_port: u16, headers: &[(&str, &str)]) -> Result<f64, String> {
    let name = format!("fresh-{}", label.replace(' ', "-"));
    let mut fresh = start_envoy_workers(p, dir, &name, &[("KEYGATE_WASM", wasm), ("KEYGATE_JSON", json)], feed_port, 2)?;
    envoy_ready(&mut fresh)?;
    let t0 = Instant::now();
    answering(&fresh, headers)?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Revoked sessions in force, as the feed reports them: the `revoked_sessions` of the first
/// page, plus the pages the feed offers for revocations when it pages them apart.
fn revoked_sessions(_admin: &Admin, first_page: &str) -> Result<usize, String> {
    let page = Json::parse(first_page)?;
    Ok(page.arr("revoked_sessions").len())
}
