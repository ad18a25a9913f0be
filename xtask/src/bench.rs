//! `cargo xtask bench [--quick]`: keygate against Envoy's native auth filters, side by side
//! in one run. See `bench/` for the Envoy configurations and `docs/benchmarks.md` for what a
//! full run wrote last. `run` measures, `report` writes the two files, `wrk` drives the load
//! generator, `replicas` and `limits` (issues 15 and 16) are parts of their own (each also
//! run alone with `--only`); this file holds what they and the other measurements share.
//!
//! Everything runs on 127.0.0.1. Envoy (`--concurrency 1`) is pinned to the last core and
//! the load generator (Debian's `wrk`) to core 0 with `taskset`; the route answers with
//! `direct_response`, so only the filters in front of it differ. Every child process is
//! SIGKILLed when the bench ends (also on failure) and dies with xtask; every loop is
//! bounded in count and time.

mod features;
mod features_report;
mod feed;
pub mod import;
pub mod ipflood;
mod keepalive;
mod limits;
mod limits_report;
pub mod logins;
mod proxies;
mod replica_parts;
mod replicas;
mod replicas_report;
mod report;
mod run;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use self::wrk::{lua_script, wrk};
use crate::json::{quote, Json};
use crate::proc::{free_port, wait_for, Proc};
use crate::stack::{self, Admin};
use crate::{http, Paths};

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A JSON object from its fields, in order.
pub(super) fn obj(fields: Vec<(&str, Json)>) -> Json {
    Json::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// One measured column of a side-by-side throughput table, as JSON fields: its label under
/// `label_field`, the plugin config, the median load and every round's req/s.
fn throughput_fields(label_field: &'static str, label: &str, config: &str, load: &wrk::Load, rounds: &[f64]) -> Vec<(&'static str, Json)> {
    vec![
        (label_field, Json::Str(label.to_owned())),
        ("plugin_config", Json::Str(config.to_owned())),
        ("rps", num(load.rps)),
        ("p50_ms", num(load.p50_ms)),
        ("p99_ms", num(load.p99_ms)),
        ("rounds_rps", Json::Arr(rounds.iter().map(|r| num(*r)).collect())),
    ]
}

/// Three decimals, as the markdown shows them; NaN (nothing measured) is null.
pub(super) fn num(x: f64) -> Json {
    if x.is_finite() {
        Json::Num((x * 1000.0).round() / 1000.0)
    } else {
        Json::Null
    }
}

/// Three-header credentials (token, key, business) as the routes behind Envoy take them.
pub(super) fn credentials<'a>(bearer: &'a str, key: &'a str, business: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![("Authorization", bearer), ("SECRET_KEY", key), ("businessId", business)]
}

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

/// What `--only` picks: one part alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Replicas,
    Limits,
    Features,
}

pub fn cmd_bench(p: &Paths, args: &[String]) -> ExitCode {
    let (mut quick, mut only) = (false, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next().map(String::as_str)) {
            ("--quick", _) => quick = true,
            ("--only", Some(part @ ("replicas" | "limits" | "features"))) => {
                only = Some(match part {
                    "replicas" => Only::Replicas,
                    "limits" => Only::Limits,
                    _ => Only::Features,
                });
                it.next();
            }
            _ => return crate::fail(&format!("bench takes only --quick and --only replicas|limits|features, not {}", args.join(" "))),
        }
    }
    let start = Instant::now();
    let mode = Mode::new(quick);
    let done = match only {
        Some(Only::Replicas) => run::run_replicas(p, &mode),
        Some(Only::Limits) => run::run_limits(p, &mode),
        Some(Only::Features) => run::run_features(p, &mode),
        None => run::run(p, &mode),
    };
    match done {
        Ok(()) => {
            println!("==> bench: done in {:.0} s", start.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(&format!("bench: {e}")),
    }
}

/// The quick mode, for `cargo xtask test`'s last phase.
pub fn smoke(p: &Paths) -> Result<(), String> {
    run::run(p, &Mode::new(true))
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
        step("cargo build --release -p keygate-admin-cli");
        crate::run(&mut crate::cargo(p, &["build", "--release", "-p", "keygate-admin-cli"]), "cargo build --release -p keygate-admin-cli")?;
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

/// The load averages over 1, 5 and 15 minutes (`/proc/loadavg`).
fn loadavg() -> String {
    read(Path::new("/proc/loadavg")).map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// The trimmed stdout of `cmd args…` (empty when it cannot run).
fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}
