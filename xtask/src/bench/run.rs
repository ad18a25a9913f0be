//! The measurement: key counts (memory, full sync), the eight Envoy configurations under
//! wrk, revocation latency and admin's own routes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::report::{render, KeysResult, Report};
use super::wrk::{lua_script, median_load, percentile, wrk, Load};
use super::*;
use crate::json::{quote, Json};
use crate::{http, Paths};

struct Config {
    n: u8,
    label: &'static str,
    expect: u16,
    envoy: Envoy,
    script: PathBuf,
    runs: Vec<Load>,
}

/// What every phase of a run shares.
struct Run<'a> {
    p: &'a Paths,
    mode: &'a Mode,
    dir: PathBuf,
    cores: Cores,
    wasm: String,
}

pub(super) fn run(p: &Paths, mode: &Mode) -> Result<(), String> {
    let _ = STARTED.set(Instant::now());
    ensure_wrk()?;
    let bins = build(p, mode)?;
    // The quick mode measures nothing, so it lets every process use every core.
    let cores = if mode.quick { Cores { envoy: None, load: None } } else { cores() };
    let dir = p.root.join("target/bench-run").join(if mode.quick { "quick" } else { "full" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    step(&format!("bench ({}): logs and configs in {}", if mode.quick { "quick" } else { "full" }, dir.display()));
    let r = Run { p, mode, dir, cores, wasm: p.wasm.to_string_lossy().into_owned() };
    let noop = bins.noop_wasm.to_string_lossy().into_owned();

    // keygate-admin (sharing the load generator's core while Envoy is measured).
    let mut admin = start_admin(&bins.admin, &r.dir, r.cores.load)?;
    let s = seed(&admin)?;
    step(&format!("seeded business {} and one sk_live key; minting {} tokens for configuration 8", s.business, mode.tokens));
    let many = mint_tokens(&admin.addr, &s.key, "bench-tok-", mode.tokens)?;

    let (keys, big_envoy, _feed) = r.key_counts(&admin)?;
    let mut configs = r.start_configs(&admin, &s, &noop, &many, big_envoy)?;
    check_configs(&mut configs, &s, &many)?;
    let summary = r.load_rounds(&mut configs)?;
    let envoy5 = configs.iter().find(|c| c.n == 5).map(|c| c.envoy.addr()).ok_or("no configuration 5")?;
    let (revocation_ms, ack_ms) = r.revocations(&admin, &s, &envoy5)?;
    drop(configs);
    let (login_load, healthz_load) = r.admin_routes(&mut admin, &s, bins.admin_build)?;
    drop(admin);

    let durable = if mode.quick { None } else { durable_writes(p, &r.dir)? };
    let replicas = replicas::run(p, &bins.admin, bins.admin_build, mode.quick, &r.dir)?;
    let limits = limits::run(p, &bins.admin, bins.admin_build, mode, &r.dir)?;
    let features = features::run(p, &bins.admin, bins.admin_build, mode, &r.dir)?;
    let report = Report {
        configs: summary,
        keys,
        revocation_ms,
        ack_ms,
        login: login_load,
        healthz: healthz_load,
        durable,
        admin_build: bins.admin_build,
        replicas,
        limits,
        features,
    };
    let (md, json) = render(p, mode, &report, &r.cores);
    if mode.quick {
        write(&r.dir.join("benchmarks.md"), &md)?;
        write(&r.dir.join("benchmarks.json"), &json)?;
        step(&format!(
            "quick bench: every configuration answered as expected (figures, not asserted: {})",
            r.dir.join("benchmarks.md").display()
        ));
    } else {
        let docs = p.root.join("docs");
        std::fs::create_dir_all(&docs).map_err(|e| e.to_string())?;
        write(&docs.join("benchmarks.md"), &md)?;
        write(&docs.join("benchmarks.json"), &json)?;
        step("wrote docs/benchmarks.md and docs/benchmarks.json");
        print!("{}", md.split("## Reading").next().unwrap_or(""));
    }
    Ok(())
}

/// `cargo xtask bench --only replicas`: the replica part alone; a full run rewrites its
/// section of docs/benchmarks.md and its member of docs/benchmarks.json, a quick one writes
/// the section under target/bench-run/quick-replicas/.
pub(super) fn run_replicas(p: &Paths, mode: &Mode) -> Result<(), String> {
    let _ = STARTED.set(Instant::now());
    let bins = build(p, mode)?;
    let dir = p.root.join("target/bench-run").join(if mode.quick { "quick-replicas" } else { "replicas" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let report = replicas::run(p, &bins.admin, bins.admin_build, mode.quick, &dir)?;
    if mode.quick {
        let path = dir.join("benchmarks-replicas.md");
        write(&path, &report.markdown(&p.root, "cargo xtask bench --quick --only replicas"))?;
        step(&format!("quick replica bench: every answer as expected (figures, not asserted: {})", path.display()));
    } else {
        replicas_report::update_docs(p, &report)?;
        step("wrote the replica section of docs/benchmarks.md and the replicas member of docs/benchmarks.json");
    }
    Ok(())
}

/// `cargo xtask bench --only limits`: the rate-limit part alone; a full run rewrites its
/// section of docs/benchmarks.md and its member of docs/benchmarks.json, a quick one writes
/// the section under target/bench-run/quick-limits/.
pub(super) fn run_limits(p: &Paths, mode: &Mode) -> Result<(), String> {
    let _ = STARTED.set(Instant::now());
    ensure_wrk()?;
    let bins = build(p, mode)?;
    let dir = p.root.join("target/bench-run").join(if mode.quick { "quick-limits" } else { "limits" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let report = limits::run(p, &bins.admin, bins.admin_build, mode, &dir)?;
    if mode.quick {
        let path = dir.join("benchmarks-limits.md");
        write(&path, &report.markdown(&p.root, "cargo xtask bench --quick --only limits"))?;
        step(&format!("quick rate-limit bench: every answer as expected (figures, not asserted: {})", path.display()));
    } else {
        limits_report::update_docs(p, &report)?;
        step("wrote the rate-limit section of docs/benchmarks.md and the limits member of docs/benchmarks.json");
    }
    Ok(())
}

/// `cargo xtask bench --only features`: the per-key checks part alone, like `--only limits`.
pub(super) fn run_features(p: &Paths, mode: &Mode) -> Result<(), String> {
    let _ = STARTED.set(Instant::now());
    ensure_wrk()?;
    let bins = build(p, mode)?;
    let dir = p.root.join("target/bench-run").join(if mode.quick { "quick-features" } else { "features" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let report = features::run(p, &bins.admin, bins.admin_build, mode, &dir)?;
    if mode.quick {
        let path = dir.join("benchmarks-features.md");
        write(&path, &report.markdown(&p.root, "cargo xtask bench --quick --only features"))?;
        step(&format!("quick per-key checks bench: every answer as expected (figures, not asserted: {})", path.display()));
    } else {
        features_report::update_docs(p, &report)?;
        step("wrote the per-key checks section of docs/benchmarks.md and the features member of docs/benchmarks.json");
    }
    Ok(())
}

impl Run<'_> {
    /// Large key counts first: memory and full-sync time, each on a fresh Envoy fed by the
    /// synthetic feed; the largest stays up for configuration 7 (with its feed).
    fn key_counts(&self, admin: &Admin) -> Result<(Vec<KeysResult>, Envoy, feed::Feed), String> {
        let Run { p, mode, dir, cores, wasm } = self;
        let real = http::request("GET", &admin.addr, "/v1/snapshot", &[("Authorization", &format!("Bearer {PROXY_TOKEN}"))], None, T)?;
        if real.status != 200 {
            return Err(format!("admin's /v1/snapshot: HTTP {}", real.status));
        }
        let real = Json::parse(&real.body)?;
        let mut keys = Vec::new();
        let settle = if mode.quick { Duration::from_millis(300) } else { Duration::from_secs(1) };
        let mut big: Option<(Envoy, feed::Feed)> = None;
        for &n in &mode.key_counts {
            step(&format!("snapshot with {n} synthetic keys + admin's real state: memory and full-sync time"));
            let data = synthetic_snapshot(&real, n)?;
            let snapshot_mb = data.keys.iter().map(|(_, j)| j.len() + 1).sum::<usize>() as f64 / 1048576.0;
            let total_keys = data.keys.len() as u64;
            let feed = feed::Feed::start(data)?;
            let json = keygate_json("");
            let mut envoy = start_envoy(
                p,
                dir,
                &format!("keys-{n}"),
                "keygate.yaml",
                &[("KEYGATE_WASM", wasm), ("KEYGATE_JSON", &json)],
                feed.port,
                cores.envoy,
            )?;
            envoy_ready(&mut envoy)?;
            std::thread::sleep(settle);
            let (before, _) = vm_rss_kb(envoy.proc.pid())?;
            let t0 = Instant::now();
            feed.open();
            let want = total_keys;
            wait_for(Duration::from_secs(180), Duration::from_millis(20), &format!("filter holding {want} keys"), || {
                Ok(envoy.snapshot_keys().filter(|&k| k >= want))
            })?;
            let sync_secs = t0.elapsed().as_secs_f64();
            std::thread::sleep(settle * 2);
            let (after, hwm) = vm_rss_kb(envoy.proc.pid())?;
            let r = KeysResult {
                keys: n,
                rss_before_mb: before as f64 / 1024.0,
                rss_after_mb: after as f64 / 1024.0,
                hwm_after_mb: hwm as f64 / 1024.0,
                sync_secs,
                snapshot_mb,
                full_served: feed.full_served(),
            };
            println!(
                "    {n} keys: snapshot {snapshot_mb:.0} MB, full sync {sync_secs:.2} s, Envoy RSS {:.0} → {:.0} MB (peak {:.0} MB)",
                r.rss_before_mb, r.rss_after_mb, r.hwm_after_mb
            );
            keys.push(r);
            big = Some((envoy, feed));
        }
        let (envoy, feed) = big.ok_or("no key count measured")?;
        Ok((keys, envoy, feed))
    }

    /// The eight configurations, all up at once, each Envoy on the same pinned core.
    fn start_configs(&self, admin: &Admin, s: &Seed, noop: &str, many: &[String], big_envoy: Envoy) -> Result<Vec<Config>, String> {
        let Run { p, mode, dir, cores, wasm } = self;
        step("starting the eight Envoy configurations");
        let kg = keygate_json("");
        let kg8 = keygate_json(&format!(",\"token_cache_entries\":{}", mode.token_cache));
        let cache_line = "                  jwt_cache_config: { jwt_cache_size: 1000 }";
        let native = |cache: &str| -> Vec<(&str, String)> {
            vec![("JWKS", s.jwks.clone()), ("API_KEY", s.key.clone()), ("BUSINESS", s.business.clone()), ("JWT_CACHE", cache.to_owned())]
        };
        let start = |name: &str, file: &str, vars: Vec<(&str, String)>| -> Result<Envoy, String> {
            let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let port = admin.addr.rsplit(':').next().and_then(|x| x.parse().ok()).ok_or("admin port")?;
            start_envoy(p, dir, name, file, &refs, port, cores.envoy)
        };
        let bearer = format!("Bearer {}", s.token);
        let all3 = credentials(&bearer, &s.key, &s.business);
        let bad = credentials(&bearer, &s.bad_key, &s.business);
        let specs: Vec<(u8, &'static str, u16, Envoy, String)> = vec![
            (1, "Envoy, no filter", 200, start("1-none", "none.yaml", vec![])?, lua_script("GET", None, &all3, None)),
            (
                2,
                "no-op wasm filter (floor)",
                200,
                start("2-noop", "noop.yaml", vec![("NOOP_WASM", noop.to_owned())])?,
                lua_script("GET", None, &all3, None),
            ),
            (3, "native chain, defaults", 200, start("3-native", "native.yaml", native(""))?, lua_script("GET", None, &all3, None)),
            (
                4,
                "native chain + jwt_cache_config",
                200,
                start("4-native-cache", "native.yaml", native(cache_line))?,
                lua_script("GET", None, &all3, None),
            ),
            (
                5,
                "keygate, all valid (same token)",
                200,
                start("5-keygate", "keygate.yaml", vec![("KEYGATE_WASM", wasm.clone()), ("KEYGATE_JSON", kg.clone())])?,
                lua_script("GET", None, &all3, None),
            ),
            (
                6,
                "keygate, all denied (bad key)",
                401,
                start("6-keygate-deny", "keygate.yaml", vec![("KEYGATE_WASM", wasm.clone()), ("KEYGATE_JSON", kg.clone())])?,
                lua_script("GET", None, &bad, None),
            ),
            (7, "keygate, large snapshot", 200, big_envoy, lua_script("GET", None, &all3, None)),
            (
                8,
                "keygate, a new token each request",
                200,
                start("8-keygate-tokens", "keygate.yaml", vec![("KEYGATE_WASM", wasm.clone()), ("KEYGATE_JSON", kg8)])?,
                lua_script("GET", None, &all3[1..], Some(many)),
            ),
        ];
        let mut configs = Vec::new();
        for (n, label, expect, mut envoy, script) in specs {
            envoy_ready(&mut envoy)?;
            let path = dir.join(format!("wrk-{n}.lua"));
            write(&path, &script)?;
            configs.push(Config { n, label, expect, envoy, script: path, runs: Vec::new() });
        }
        Ok(configs)
    }

    /// Load: a short warm-up each, then rounds over all configurations in turn, so drift on
    /// a noisy machine spreads over all of them alike; the median of each.
    fn load_rounds(&self, configs: &mut [Config]) -> Result<Vec<(u8, &'static str, u16, Load)>, String> {
        let Run { mode, cores, .. } = self;
        if !mode.quick {
            step("warm-up: 1 s per configuration");
            for c in configs.iter() {
                wrk(&c.script, &format!("http://{}/orders", c.envoy.addr()), 1, cores.load)?;
            }
        }
        for round in 0..mode.rounds {
            step(&format!("round {} of {}: {} s per configuration, wrk -t1 -c{CONNECTIONS}", round + 1, mode.rounds, mode.secs));
            for c in configs.iter_mut() {
                c.envoy.proc.alive()?;
                let l = wrk(&c.script, &format!("http://{}/orders", c.envoy.addr()), mode.secs, cores.load)?;
                println!(
                    "    {} {:<36} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  non-2xx {}",
                    c.n, c.label, l.rps, l.p50_ms, l.p99_ms, l.p999_ms, l.non2xx
                );
                // The quick mode's only assertion: every answer was the expected one.
                let wrong = if c.expect == 200 { l.non2xx } else { l.requests - l.non2xx };
                if l.requests == 0 || wrong > 0 || l.socket_errors > 0 {
                    return Err(format!(
                        "configuration {} ({}): {wrong} of {} answers were not {} ({} socket errors)",
                        c.n, c.label, l.requests, c.expect, l.socket_errors
                    ));
                }
                c.runs.push(l);
            }
        }
        Ok(configs.iter().map(|c| (c.n, c.label, c.expect, median_load(&c.runs))).collect())
    }

    /// Revocation: DELETE /v1/sessions/{sid} → the first 401 through Envoy (configuration 5
    /// at `envoy5`, fed by the real admin's long-poll); the latencies and admin's share.
    fn revocations(&self, admin: &Admin, s: &Seed, envoy5: &str) -> Result<(Vec<f64>, Vec<f64>), String> {
        let Run { mode, .. } = self;
        step(&format!("revocation latency over {} sessions", mode.revocations));
        let mut revocation_ms = Vec::new();
        let mut ack_ms = Vec::new();
        for i in 0..mode.revocations {
            let token = login(&admin.addr, &s.key, &format!("bench-rev-{i}"))?;
            let sid = sid_of(&token)?;
            let b = format!("Bearer {token}");
            let h = credentials(&b, &s.key, &s.business);
            wait_for(Duration::from_secs(5), Duration::from_millis(5), "a fresh session's token accepted", || {
                Ok(http::request("GET", envoy5, "/orders", &h, None, T)?.status.eq(&200).then_some(()))
            })?;
            let t0 = Instant::now();
            admin_call(admin, "DELETE", &format!("/v1/sessions/{sid}"), Some(OPERATOR_TOKEN), None, 200)?;
            ack_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            wait_for(Duration::from_secs(10), Duration::from_micros(500), "a revoked session's token refused", || {
                Ok(http::request("GET", envoy5, "/orders", &h, None, T)?.status.eq(&401).then_some(()))
            })?;
            revocation_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        revocation_ms.sort_by(f64::total_cmp);
        ack_ms.sort_by(f64::total_cmp);
        println!("    DELETE acknowledged after: p50 {:.1} ms, p99 {:.1} ms", percentile(&ack_ms, 50.0), percentile(&ack_ms, 99.0));
        println!(
            "    revocation → 401: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&revocation_ms, 50.0),
            percentile(&revocation_ms, 99.0),
            revocation_ms.last().copied().unwrap_or(f64::NAN)
        );
        Ok((revocation_ms, ack_ms))
    }

    /// Admin: cached /auth/login against /healthz on the same build, admin alone on its core.
    fn admin_routes(&self, admin: &mut Admin, s: &Seed, admin_build: &str) -> Result<(Load, Load), String> {
        let Run { mode, dir, cores, .. } = self;
        step(&format!("keygate-admin ({} build): cached /auth/login vs GET /healthz", admin_build));
        if let Some(core) = cores.envoy {
            crate::run(
                Command::new("taskset").args(["-a", "-p", "-c", &core.to_string(), &admin.proc.pid().to_string()]).stdout(Stdio::null()),
                "taskset admin",
            )?;
        }
        let login_body = format!("{{\"api_key\":{},\"session_id\":\"bench\"}}", quote(&s.key));
        let login_lua = dir.join("wrk-login.lua");
        write(&login_lua, &lua_script("POST", Some(&login_body), &[], None))?;
        let health_lua = dir.join("wrk-healthz.lua");
        write(&health_lua, &lua_script("GET", None, &[], None))?;
        let admin_secs = if mode.quick { 1 } else { 5 };
        let mut admin_runs = [Vec::new(), Vec::new()];
        for _ in 0..mode.rounds {
            for (i, (script, path)) in [(&login_lua, "/auth/login"), (&health_lua, "/healthz")].into_iter().enumerate() {
                admin.proc.alive()?;
                let l = wrk(script, &format!("http://{}{path}", admin.addr), admin_secs, cores.load)?;
                if l.requests == 0 || l.non2xx > 0 || l.socket_errors > 0 {
                    return Err(format!("admin {path}: {} of {} answers were not 2xx", l.non2xx, l.requests));
                }
                println!("    {path:<12} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms", l.rps, l.p50_ms, l.p99_ms);
                admin_runs[i].push(l);
            }
        }
        Ok((median_load(&admin_runs[0]), median_load(&admin_runs[1])))
    }
}

/// Correctness first: each configuration answers as expected (keygate: once it holds a
/// snapshot, so 503 is waited out).
fn check_configs(configs: &mut [Config], s: &Seed, many: &[String]) -> Result<(), String> {
    let bearer = format!("Bearer {}", s.token);
    let all3 = credentials(&bearer, &s.key, &s.business);
    let bad = credentials(&bearer, &s.bad_key, &s.business);
    for c in configs.iter_mut() {
        let addr = c.envoy.addr();
        let headers: &[(&str, &str)] = if c.n == 6 { &bad } else { &all3 };
        let status = wait_for(Duration::from_secs(30), Duration::from_millis(50), &format!("configuration {} answering", c.n), || {
            c.envoy.proc.alive()?;
            Ok(http::request("GET", &addr, "/orders", headers, None, T).ok().map(|r| (r.status, r.body)).filter(|(st, _)| *st != 503))
        })?;
        if status.0 != c.expect {
            return Err(format!("configuration {} ({}) answered {} where {} was expected: {}", c.n, c.label, status.0, c.expect, status.1));
        }
        if c.n == 6 && !status.1.contains("invalid_api_key") {
            return Err(format!("configuration 6 denied with the wrong code: {}", status.1));
        }
        if c.n == 8 {
            for t in many.iter().take(5) {
                let b = format!("Bearer {t}");
                let r = http::request("GET", &addr, "/orders", &credentials(&b, &s.key, &s.business), None, T)?;
                if r.status != 200 {
                    return Err(format!("configuration 8: a minted token was refused ({}): {}", r.status, r.body));
                }
            }
        }
        // The native chain and keygate must also refuse a request without credentials.
        if (3..=8).contains(&c.n) {
            let r = http::get(&addr, "/orders", T)?;
            if r.status != 401 {
                return Err(format!("configuration {} let a request without credentials through ({})", c.n, r.status));
            }
        }
        println!("    configuration {} ({}): answers {} as expected", c.n, c.label, status.0);
    }
    Ok(())
}

/// Admin's real full snapshot with `n` synthetic keys added to its real ones, sorted by
/// hash as admin pages them: valid shapes (64-hex hashes from a fixed-seed generator,
/// `key_` ids, 1000 businesses).
fn synthetic_snapshot(real: &Json, n: usize) -> Result<feed::Data, String> {
    let version = real.num("version").ok_or("admin's snapshot has no version")? as u64;
    let mut keys: Vec<(String, String)> = Vec::with_capacity(n + 16);
    for k in real.arr("keys") {
        let hash = k.str("hash").ok_or("a real key without hash")?.to_owned();
        keys.push((hash, k.compact()));
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in 0..n {
        let hash = format!("{:016x}{:016x}{:016x}{:016x}", next(), next(), next(), next());
        let json = format!("{{\"hash\":\"{hash}\",\"id\":\"key_synth{i:010}\",\"business\":\"biz_synthetic{:04}\",\"kind\":\"sk\",\"mode\":\"live\",\"active\":true}}", i % 1000);
        keys.push((hash, json));
    }
    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    keys.dedup_by(|a, b| a.0 == b.0);
    let member = |name: &str| format!("{}:{}", quote(name), real.get(name).unwrap_or(&Json::Arr(Vec::new())).compact());
    let members = format!("{},{}", member("signing_keys"), member("revoked_sessions"));
    Ok(feed::Data { version, members, keys })
}

/// The durable-writes measurement another change adds (`--example durable_writes`); None
/// when it does not exist yet.
fn durable_writes(p: &Paths, dir: &Path) -> Result<Option<String>, String> {
    if !p.root.join("admin/examples/durable_writes.rs").exists() {
        println!("    admin/examples/durable_writes.rs does not exist yet: durable writes left as TODO");
        return Ok(None);
    }
    let dir = dir.to_string_lossy().into_owned();
    let args = [
        "run",
        "--quiet",
        "--release",
        "-p",
        "keygate-admin",
        "--example",
        "durable_writes",
        "--",
        "--clients",
        "64",
        "--seconds",
        "5",
        "--dir",
        &dir,
    ];
    step(&format!("cargo {}", args.join(" ")));
    let out = crate::cargo(p, &args).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(format!("durable_writes example failed: {text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    println!("{text}");
    Ok(Some(text))
}
