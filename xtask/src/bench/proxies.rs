//! The fan-out measurement of the replica bench: simulated proxies (one thread each, a
//! keep-alive connection to one of the two replicas, in turn) speak the feed protocol as
//! the filter's leader does once it has a snapshot — `GET /v1/snapshot?since=V&wait=20`
//! with the proxy token, then `&history=H` from the previous answer, again at once after
//! every answer — next to two real Envoys fed by replica B. A burst of deactivations goes
//! through replica A, one after the other; per change, the time until every simulated
//! proxy has received the key as inactive and both Envoys refuse it. Each replica's CPU
//! (`utime + stime` from /proc/PID/stat) and RSS (`VmRSS`) at rest, with every poll held,
//! and over the burst.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::keepalive::Conn;
use super::replica_parts::{create_key, until_refused, wait_accepted, Sizes};
use super::wrk::percentile;
use super::{read, step, vm_rss_kb, OPERATOR_TOKEN, PROXY_TOKEN, T};
use crate::json::Json;
use crate::proc::wait_for;
use crate::stack::Admin;
use crate::{http, sys};

/// What the filter asks for (README: "How keys reach every Envoy worker").
const WAIT_SECS: u64 = 20;

/// One replica's CPU share (100 % = one core) and RSS over a window.
#[derive(Clone, Copy)]
pub(super) struct Usage {
    pub(super) cpu_pct: f64,
    pub(super) rss_mb: f64,
}

pub(super) struct Fanout {
    pub(super) label: &'static str,
    /// The replicas' names, in the order of `idle_rss_mb`, `rest` and `burst`.
    pub(super) names: Vec<&'static str>,
    pub(super) proxies: usize,
    pub(super) envoys: usize,
    /// Per change, from the deactivation's request to the last of every proxy and Envoy
    /// having it; sorted, ms.
    pub(super) all_ms: Vec<f64>,
    pub(super) proxies_ms: Vec<f64>,
    pub(super) envoys_ms: Vec<f64>,
    /// Until replica A acknowledged each deactivation.
    pub(super) ack_ms: Vec<f64>,
    /// From the first deactivation sent to the last change everywhere.
    pub(super) burst_secs: f64,
    /// Each replica's RSS before any simulated proxy connected (MB).
    pub(super) idle_rss_mb: Vec<f64>,
    pub(super) rest: Vec<Usage>,
    pub(super) burst: Vec<Usage>,
    pub(super) rest_secs: f64,
    /// CPU shares (100 % = one core) of PostgreSQL and of xtask, at rest and over the burst.
    pub(super) others_rest: [f64; 2],
    pub(super) others_burst: [f64; 2],
    /// Feed answers the simulated proxies received, and connections they had to reopen.
    pub(super) answers: u64,
    pub(super) reconnects: u64,
}

/// What every simulated proxy shares.
struct Shared {
    stop: AtomicBool,
    /// (proxy, change) pairs not yet seen.
    pending: AtomicUsize,
    answers: AtomicU64,
    reconnects: AtomicU64,
    /// Clones of every proxy's socket, shut down to end the held polls at the end.
    closers: Mutex<Vec<TcpStream>>,
    /// Key id → its place in the burst.
    watch: HashMap<String, usize>,
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces), so
/// `[1]` is the parent's pid and `[11]`, `[12]` are utime and stime.
fn stat_fields(pid: &str) -> Result<Vec<String>, String> {
    let stat = read(std::path::Path::new(&format!("/proc/{pid}/stat")))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("unreadable /proc/PID/stat")?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

fn stat_cpu(f: &[String]) -> Result<f64, String> {
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("unreadable /proc/PID/stat");
    Ok((ticks(11)? + ticks(12)?) as f64 / sys::clock_ticks() as f64)
}

/// CPU seconds (user + system) `pid` has used so far.
fn cpu_secs(pid: u32) -> Result<f64, String> {
    stat_cpu(&stat_fields(&pid.to_string())?)
}

/// CPU seconds used so far by PostgreSQL (the postmaster of `pg_data` and its children,
/// the connections' backends among them; a backend that ended takes its time with it) and
/// by xtask itself (the simulated proxies and the probes).
fn others_cpu_secs(pg_data: Option<&std::path::Path>) -> Result<[f64; 2], String> {
    let xtask = stat_cpu(&stat_fields("self")?)?;
    let Some(pg_data) = pg_data else { return Ok([f64::NAN, xtask]) };
    let pidfile = read(&pg_data.join("postmaster.pid"))?;
    let postmaster = pidfile.lines().next().unwrap_or("").trim().to_owned();
    let mut pg = stat_cpu(&stat_fields(&postmaster)?)?;
    for entry in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes come and go while /proc is read: skip those gone.
        if let Ok(f) = stat_fields(&name) {
            if f.get(1) == Some(&postmaster) {
                pg += stat_cpu(&f).unwrap_or(0.0);
            }
        }
    }
    Ok([pg, xtask])
}

/// Usage of `pids` from `before` (CPU seconds at `since`) until now.
fn usage_since(pids: &[u32], before: &[f64], since: Instant) -> Result<Vec<Usage>, String> {
    let wall = since.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(&pid, &b)| Ok(Usage { cpu_pct: (cpu_secs(pid)? - b) / wall * 100.0, rss_mb: vm_rss_kb(pid)?.0 as f64 / 1024.0 }))
        .collect()
}

fn healthz_version(addr: &str) -> Result<u64, String> {
    let r = http::get(addr, "/healthz", T)?;
    Json::parse(&r.body)?.num("version").map(|v| v as u64).ok_or_else(|| format!("{addr}/healthz: no version: {}", r.body))
}

/// Long-polls held by both replicas (their `keygate_admin_longpoll_waiters`).
fn held_polls(replicas: &[&Admin]) -> Result<u64, String> {
    let mut sum = 0;
    for r in replicas {
        let m = http::get(&r.addr, "/metrics", T)?.body;
        sum += m
            .lines()
            .find_map(|l| l.strip_prefix("keygate_admin_longpoll_waiters "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(sum)
}

/// One simulated proxy: long-polls `addr` from version `since` until told to stop; when it
/// first receives each watched key as inactive.
fn proxy(addr: &str, mut since: u64, s: &Shared, changes: usize) -> Result<Vec<Option<Instant>>, String> {
    let auth = format!("Bearer {PROXY_TOKEN}");
    let hold = Duration::from_secs(WAIT_SECS + 30);
    let open = |s: &Shared| -> Result<Conn, String> {
        let conn = Conn::open(addr, hold)?;
        s.closers.lock().unwrap_or_else(PoisonError::into_inner).push(conn.closer()?);
        Ok(conn)
    };
    let mut conn = open(s)?;
    let mut history: Option<String> = None;
    let mut seen = vec![None; changes];
    let mut reopened = 0;
    while !s.stop.load(Ordering::SeqCst) {
        let path = match &history {
            Some(h) => format!("/v1/snapshot?since={since}&wait={WAIT_SECS}&history={h}"),
            None => format!("/v1/snapshot?since={since}&wait={WAIT_SECS}"),
        };
        let (status, body) = match conn.request("GET", &path, &[("Authorization", &auth)], None) {
            Ok(answer) => answer,
            Err(_) if s.stop.load(Ordering::SeqCst) => break,
            Err(e) if reopened < 3 => {
                // A connection the server closed between polls: the filter reconnects too.
                reopened += 1;
                s.reconnects.fetch_add(1, Ordering::SeqCst);
                eprintln!("xtask bench: a simulated proxy reconnects to {addr}: {e}");
                conn = open(s)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        if status != 200 {
            return Err(format!("feed at {addr} answered {status} to since={since}: {}", body.chars().take(200).collect::<String>()));
        }
        s.answers.fetch_add(1, Ordering::Relaxed);
        let delta = Json::parse(&body).map_err(|e| format!("feed at {addr}: {e}"))?;
        let version = delta.num("version").map(|v| v as u64).ok_or("a delta without version")?;
        if version < since || delta.num("since").map(|v| v as u64) != Some(since) {
            return Err(format!("feed at {addr}: a delta from {:?} to {version} answered since={since}", delta.num("since")));
        }
        for k in delta.arr("keys") {
            if k.get("active") != Some(&Json::Bool(false)) {
                continue;
            }
            if let Some(&i) = k.str("id").and_then(|id| s.watch.get(id)) {
                if seen[i].is_none() {
                    seen[i] = Some(now);
                    s.pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        since = version;
        history = delta.str("history").map(str::to_owned);
    }
    Ok(seen)
}

/// The fan-out over `replicas` (1 or 2: the simulated proxies go to each in turn, the
/// writes through the first), named `names`, with `envoys` (fed by the last); PostgreSQL's
/// CPU is measured when `pg_data` (its data directory) is given.
pub(super) fn fanout(
    label: &'static str,
    replicas: &[(&Admin, &'static str)],
    business: &str,
    envoys: &[String],
    sizes: &Sizes,
    pg_data: Option<&std::path::Path>,
) -> Result<Fanout, String> {
    let (names, replicas): (Vec<&'static str>, Vec<&Admin>) = replicas.iter().map(|(a, n)| (*n, *a)).unzip();
    let (a, n, changes) = (*replicas.first().ok_or("no replica")?, sizes.proxies, sizes.burst);
    step(&format!("fan-out, {label}: {n} simulated proxies + {} Envoys; {changes} keys for the burst", envoys.len()));
    let mut keys = Vec::with_capacity(changes);
    for _ in 0..changes {
        let (id, key) = create_key(&a.addr, business)?;
        wait_accepted(envoys, &key)?;
        keys.push((id, key));
    }
    // Every proxy starts from A's version, once B has it too (else B answers 410).
    let v0 = healthz_version(&a.addr)?;
    for r in &replicas[1..] {
        wait_for(Duration::from_secs(30), Duration::from_millis(20), "replica B at replica A's version", || {
            Ok((healthz_version(&r.addr)? >= v0).then_some(()))
        })?;
    }
    let pids: Vec<u32> = replicas.iter().map(|r| r.proc.pid()).collect();
    let idle_rss_mb = pids.iter().map(|&p| Ok(vm_rss_kb(p)?.0 as f64 / 1024.0)).collect::<Result<Vec<f64>, String>>()?;

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        pending: AtomicUsize::new(n * changes),
        answers: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        closers: Mutex::new(Vec::with_capacity(n)),
        watch: keys.iter().enumerate().map(|(i, (id, _))| (id.clone(), i)).collect(),
    });
    let mut threads: Vec<JoinHandle<Result<Vec<Option<Instant>>, String>>> = Vec::with_capacity(n);
    let mut started = Ok(());
    for i in 0..n {
        let (addr, s) = (replicas[i % replicas.len()].addr.clone(), Arc::clone(&shared));
        match std::thread::Builder::new().name(format!("proxy-{i}")).stack_size(256 * 1024).spawn(move || proxy(&addr, v0, &s, changes)) {
            Ok(t) => threads.push(t),
            Err(e) => {
                started = Err(format!("cannot start simulated proxy {i}: {e}"));
                break;
            }
        }
    }
    // Stops and joins every proxy thread started, whatever happens below.
    let result = started.and_then(|()| measure(&replicas, envoys, &keys, &shared, &pids, sizes, pg_data));
    shared.stop.store(true, Ordering::SeqCst);
    for c in shared.closers.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let _ = c.shutdown(Shutdown::Both);
    }
    let mut seen = Vec::with_capacity(n);
    let mut first_err = None;
    for t in threads {
        match t.join().map_err(|_| "a simulated proxy panicked".to_string()).and_then(|r| r) {
            Ok(s) => seen.push(s),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let Measured { t0s, ack_ms, envoy_at, burst_secs, rest, burst, rest_secs, others_rest, others_burst } = result?;
    if let Some(e) = first_err {
        return Err(format!("a simulated proxy failed: {e}"));
    }
    let (mut all_ms, mut proxies_ms, mut envoys_ms) = (Vec::new(), Vec::new(), Vec::new());
    for (i, t0) in t0s.iter().enumerate() {
        let last_proxy = seen.iter().map(|s| s[i]).try_fold(*t0, |m, t| t.map(|t| m.max(t))).ok_or("a proxy never received a change")?;
        let last_envoy = envoy_at.iter().map(|e| e[i]).fold(*t0, Instant::max);
        let ms = |t: Instant| t.saturating_duration_since(*t0).as_secs_f64() * 1000.0;
        proxies_ms.push(ms(last_proxy));
        envoys_ms.push(ms(last_envoy));
        all_ms.push(ms(last_proxy.max(last_envoy)));
    }
    for v in [&mut all_ms, &mut proxies_ms, &mut envoys_ms] {
        v.sort_by(f64::total_cmp);
    }
    let f = Fanout {
        label,
        names,
        proxies: n,
        envoys: envoys.len(),
        all_ms,
        proxies_ms,
        envoys_ms,
        ack_ms,
        burst_secs,
        idle_rss_mb,
        rest,
        burst,
        rest_secs,
        others_rest,
        others_burst,
        answers: shared.answers.load(Ordering::SeqCst),
        reconnects: shared.reconnects.load(Ordering::SeqCst),
    };
    println!(
        "    per change, until all {n} proxies and {} Envoys have it: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (proxies p99 {:.1} ms, Envoys p99 {:.1} ms); burst of {changes} in {:.2} s",
        f.envoys,
        percentile(&f.all_ms, 50.0),
        percentile(&f.all_ms, 99.0),
        f.all_ms.last().copied().unwrap_or(f64::NAN),
        percentile(&f.proxies_ms, 99.0),
        percentile(&f.envoys_ms, 99.0),
        f.burst_secs
    );
    for (i, name) in f.names.iter().enumerate() {
        println!(
            "    {name}: RSS {:.0} MB idle → {:.0} MB with the polls held; CPU {:.1} % at rest, {:.1} % during the burst (RSS {:.0} MB)",
            f.idle_rss_mb[i], f.rest[i].rss_mb, f.rest[i].cpu_pct, f.burst[i].cpu_pct, f.burst[i].rss_mb
        );
    }
    // The sled baseline has no PostgreSQL (NaN: nothing measured).
    let postgres = match f.others_rest[0].is_nan() {
        true => String::new(),
        false => format!("PostgreSQL CPU {:.1} % at rest, {:.1} % during the burst; ", f.others_rest[0], f.others_burst[0]),
    };
    println!("    {postgres}xtask (proxies, probes) {:.1} % / {:.1} %", f.others_rest[1], f.others_burst[1]);
    Ok(f)
}

/// What [`measure`] brings back.
struct Measured {
    /// When each deactivation was sent, and how long until A acknowledged it (sorted).
    t0s: Vec<Instant>,
    ack_ms: Vec<f64>,
    /// Per Envoy, per change: its first 401.
    envoy_at: Vec<Vec<Instant>>,
    burst_secs: f64,
    rest: Vec<Usage>,
    burst: Vec<Usage>,
    rest_secs: f64,
    others_rest: [f64; 2],
    others_burst: [f64; 2],
}

/// CPU shares (%) from `before` (seconds) over `wall` seconds.
fn shares(now: [f64; 2], before: [f64; 2], wall: f64) -> [f64; 2] {
    [(now[0] - before[0]) / wall * 100.0, (now[1] - before[1]) / wall * 100.0]
}

/// With the proxies started: wait until every poll is held, rest, then the burst.
fn measure(
    replicas: &[&Admin],
    envoys: &[String],
    keys: &[(String, String)],
    s: &Arc<Shared>,
    pids: &[u32],
    sizes: &Sizes,
    pg_data: Option<&std::path::Path>,
) -> Result<Measured, String> {
    // The Envoys' leaders hold one poll each on B.
    let want = (sizes.proxies + envoys.len()) as u64;
    wait_for(Duration::from_secs(120), Duration::from_millis(50), &format!("{want} long-polls held by the replicas"), || {
        Ok((held_polls(replicas)? >= want).then_some(()))
    })?;
    step(&format!("{want} long-polls held; {} s at rest", sizes.rest_secs));
    let before: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect::<Result<_, _>>()?;
    let others_before = others_cpu_secs(pg_data)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(sizes.rest_secs));
    let rest = usage_since(pids, &before, t)?;
    let rest_secs = t.elapsed().as_secs_f64();
    let others_rest = shares(others_cpu_secs(pg_data)?, others_before, rest_secs);
    if s.answers.load(Ordering::SeqCst) > 0 {
        return Err("a simulated proxy was answered before any change (its poll was not held)".into());
    }

    step(&format!("burst: {} deactivations through A, one after the other", keys.len()));
    let probes: Vec<_> = envoys
        .iter()
        .map(|e| {
            let (e, keys) = (e.clone(), keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>());
            std::thread::spawn(move || keys.iter().map(|k| until_refused(&e, k, Duration::from_secs(60))).collect::<Result<Vec<_>, _>>())
        })
        .collect();
    let before: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect::<Result<_, _>>()?;
    let others_before = others_cpu_secs(pg_data)?;
    let start = Instant::now();
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let mut conn = Conn::open(&replicas[0].addr, T)?;
    let (mut t0s, mut ack_ms) = (Vec::new(), Vec::new());
    for (id, _) in keys {
        let t0 = Instant::now();
        let (status, body) = conn.request("POST", &format!("/v1/keys/{id}/deactivate"), &[("Authorization", &auth)], None)?;
        if status != 200 {
            return Err(format!("deactivate through A: HTTP {status}: {body}"));
        }
        ack_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        t0s.push(t0);
    }
    let mut envoy_at = Vec::new();
    for probe in probes {
        envoy_at.push(probe.join().map_err(|_| "an Envoy probe panicked".to_string())??);
    }
    wait_for(Duration::from_secs(60), Duration::from_millis(1), "every simulated proxy receiving every change", || {
        Ok((s.pending.load(Ordering::SeqCst) == 0).then_some(()))
    })?;
    let burst_secs = start.elapsed().as_secs_f64();
    let burst = usage_since(pids, &before, start)?;
    let others_burst = shares(others_cpu_secs(pg_data)?, others_before, start.elapsed().as_secs_f64());
    ack_ms.sort_by(f64::total_cmp);
    Ok(Measured { t0s, ack_ms, envoy_at, burst_secs, rest, burst, rest_secs, others_rest, others_burst })
}
