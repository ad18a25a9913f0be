//! The rate-limit part of `cargo xtask bench` (issue 16): what counting across the fleet
//! costs, and how far past a limit three Envoys go together.
//!
//! 1. Throughput: three Envoys as configuration 5 (one pinned worker, wrk on the other
//!    core, three valid credentials, direct response), measured side by side in rounds:
//!    today's filter (built from commit [`TODAY`], the last before fleet counting, cached in
//!    target/bench-old/), the current one counting across the fleet (`sync_interval_ms`
//!    200, exchanging with the bench's admin), and the current one counting alone
//!    (`sync_interval_ms` 0). The key's limit is out of reach: every answer must be 200.
//! 2. Over-admission: one admin, three Envoys (1 worker each), a secret key limited to L
//!    an hour, driven through all three at once by keep-alive client threads until the
//!    fleet has admitted L and then nothing for a while (bounded in time); a fresh key and
//!    three fresh Envoys per `sync_interval_ms`.
//!
//! Loopback only; every child is SIGKILLed when its part ends (and dies with xtask).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keepalive::Conn;
use super::replica_parts::{create_key, wait_accepted};
use super::wrk::{lua_script, median_load, percentile, wrk, Load};
use super::{cores, envoy_ready, seed, start_admin, start_envoy, start_envoy_workers, step, write, Cores, Envoy, Mode, T};
use crate::stack::Admin;
use crate::{http, Paths};

/// Today's filter: the last commit before issue 16.
pub(super) const TODAY: &str = "4015b7a";
/// A key's hourly limit that no throughput round reaches (every answer stays 200).
const HIGH: u32 = 100_000_000;
/// Envoys in the over-admission part.
pub(super) const ENVOYS: usize = 3;
/// Keep-alive client threads per Envoy in the over-admission part.
pub(super) const CLIENTS_PER_ENVOY: usize = 4;
/// The filter's tick (filter/src/vm.rs `TICK`): it exchanges counts from it (its tick
/// follows a shorter `sync_interval_ms`).
pub(super) const TICK_MS: u64 = 100;
/// How often admin's round trip is sampled during the over-admission load.
const RTT_EVERY: Duration = Duration::from_millis(20);

/// One filter build measured under wrk (the median round by req/s).
pub(super) struct Column {
    pub(super) label: &'static str,
    pub(super) config: String,
    pub(super) load: Load,
    /// Every round's req/s, in run order.
    pub(super) rounds: Vec<f64>,
    /// How the filter's exchanges with admin went (from Envoy's log); None: it makes none.
    pub(super) exchanges: Option<String>,
}

/// One over-admission run.
pub(super) struct Admission {
    pub(super) sync_ms: u64,
    pub(super) limit: u64,
    /// Answers 200, per Envoy.
    pub(super) accepted: Vec<u64>,
    pub(super) answers: u64,
    /// Answers neither 200 nor 429.
    pub(super) other: u64,
    pub(super) secs: f64,
    /// From the start of the load to the fleet's L-th admission (None: never reached).
    pub(super) runout_ms: Option<f64>,
    /// Answers a second over all Envoys until the L-th admission (the whole run if never).
    pub(super) rate: f64,
    /// The last 200 after the L-th admission.
    pub(super) last_ok_after_ms: f64,
    /// Admin's round trip during the load (`GET /healthz`): p50 and max.
    pub(super) rtt_p50_ms: f64,
    pub(super) rtt_max_ms: f64,
    pub(super) exchanges: String,
}

impl Admission {
    pub(super) fn total(&self) -> u64 {
        self.accepted.iter().sum()
    }

    pub(super) fn over(&self) -> i64 {
        self.total() as i64 - self.limit as i64
    }

    /// The README's bound on what is admitted past the limit: r_others × (2 × S + RTT),
    /// never more than (E − 1) × L; with S = 0 (every Envoy alone) just the latter.
    pub(super) fn bound(&self) -> f64 {
        self.bound_at(self.sync_ms)
    }

    /// The same bound with `interval_ms` as the interval between exchanges.
    pub(super) fn bound_at(&self, interval_ms: u64) -> f64 {
        let cap = ((ENVOYS - 1) as u64 * self.limit) as f64;
        if interval_ms == 0 {
            return cap;
        }
        let others = self.rate * (ENVOYS - 1) as f64 / ENVOYS as f64;
        (others * (2.0 * interval_ms as f64 + self.rtt_p50_ms) / 1000.0).min(cap)
    }

    /// The interval the filter really exchanges at: its tick follows an interval under
    /// 100 ms; a longer one is rounded up to whole 100 ms ticks.
    pub(super) fn effective_interval_ms(&self) -> u64 {
        if self.sync_ms <= TICK_MS {
            self.sync_ms
        } else {
            self.sync_ms.div_ceil(TICK_MS) * TICK_MS
        }
    }
}

pub(super) struct LimitsReport {
    pub(super) quick: bool,
    pub(super) admin_build: &'static str,
    /// Why today's column is missing, if it is.
    pub(super) today_missing: Option<String>,
    pub(super) columns: Vec<Column>,
    pub(super) rounds: usize,
    pub(super) secs: u32,
    pub(super) pin: String,
    pub(super) admission: Vec<Admission>,
    pub(super) loadavg_start: String,
}

impl LimitsReport {
    fn rps(&self, label: &str) -> f64 {
        self.columns.iter().find(|c| c.label == label).map_or(f64::NAN, |c| c.load.rps)
    }

    /// Fleet counting's req/s over today's (NaN without today's column).
    pub(super) fn ratio(&self) -> f64 {
        self.rps(FLEET) / self.rps(TODAY_LABEL)
    }
}

pub(super) const TODAY_LABEL: &str = "today (4015b7a)";
pub(super) const FLEET: &str = "fleet counting (sync 200 ms)";
pub(super) const ALONE: &str = "counting alone (sync 0)";

/// How much the over-admission part does: (limit, sync intervals, most seconds per run).
fn admission_sizes(quick: bool) -> (u64, Vec<u64>, u64) {
    if quick {
        (2000, vec![200, 0], 6)
    } else {
        (20_000, vec![200, 50, 0], 15)
    }
}

pub(super) fn run(p: &Paths, admin_bin: &Path, admin_build: &'static str, mode: &Mode, dir: &Path) -> Result<LimitsReport, String> {
    let loadavg_start = super::loadavg();
    let dir = dir.join("limits");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let today = today_wasm(p)?;
    // The quick mode measures nothing, so it lets every process use every core.
    let cores = if mode.quick { Cores { envoy: None, load: None } } else { cores() };
    let pin = match (cores.envoy, cores.load) {
        (Some(e), Some(l)) => format!("Envoy pinned to core {e}, wrk and admin to core {l}"),
        _ => "nothing pinned".to_owned(),
    };
    step(&format!("rate limits ({admin_build} admin): logs in {}", dir.display()));
    let admin = start_admin(admin_bin, &dir, cores.load)?;
    let columns = throughput(p, mode, &dir, &cores, &admin, today.as_ref().ok().map(PathBuf::as_path))?;
    let (limit, syncs, max_secs) = admission_sizes(mode.quick);
    let mut admission = Vec::new();
    for sync_ms in syncs {
        admission.push(over_admission(p, &dir, &admin, sync_ms, limit, max_secs)?);
    }
    Ok(LimitsReport {
        quick: mode.quick,
        admin_build,
        today_missing: today.err(),
        columns,
        rounds: mode.rounds,
        secs: mode.secs,
        pin,
        admission,
        loadavg_start,
    })
}

// ----- today's filter -----

/// The wasm filter built from [`TODAY`] (see [`wasm_at`]).
fn today_wasm(p: &Paths) -> Result<Result<PathBuf, String>, String> {
    wasm_at(p, TODAY, "today's filter")
}

/// The wasm filter built from `commit` into target/bench-old/ (once: later runs reuse it).
/// Ok(Err(why)) when the commit is not in the repository (a shallow clone).
pub(super) fn wasm_at(p: &Paths, commit: &'static str, what: &str) -> Result<Result<PathBuf, String>, String> {
    let base = p.root.join("target/bench-old").join(commit);
    let wasm = base.join("target/wasm32-wasip1/release/keygate_filter.wasm");
    if wasm.exists() {
        step(&format!("{what} ({commit}): built already, {}", wasm.display()));
        return Ok(Ok(wasm));
    }
    let root = p.root.to_string_lossy().into_owned();
    let has =
        Command::new("git").args(["-C", &root, "cat-file", "-e", &format!("{commit}^{{commit}}")]).status().is_ok_and(|s| s.success());
    if !has {
        let why = format!("commit {commit} is not in this clone (shallow?): the column of {what} skipped");
        step(&why);
        return Ok(Err(why));
    }
    // The sources afresh each time (a build cut short may have left them half); the
    // target directory stays, so a rebuild is incremental.
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let tar = base.join("src.tar");
    let tar_s = tar.to_string_lossy().into_owned();
    step(&format!("git archive {commit} into {}", src.display()));
    crate::run(Command::new("git").args(["-C", &root, "archive", "--format=tar", "-o", &tar_s, commit]), "git archive")?;
    crate::run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src), "tar -xf")?;
    let _ = std::fs::remove_file(&tar);
    let args = ["build", "--release", "--quiet", "--target", "wasm32-wasip1", "-p", "keygate-filter"];
    step(&format!("cargo {} (in {}, CARGO_TARGET_DIR {})", args.join(" "), src.display(), base.join("target").display()));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&src).args(args).env("CARGO_TARGET_DIR", base.join("target")).env_remove("CARGO_BUILD_TARGET_DIR");
    crate::run(&mut cmd, &format!("build {what} ({commit})"))?;
    if !wasm.exists() {
        return Err(format!("building {commit} left no {}", wasm.display()));
    }
    Ok(Ok(wasm))
}

// ----- throughput -----

fn plugin_json(rate_limits: &str, extra: &str) -> String {
    format!(r#"{{"admin_cluster":"keygate_admin","poll_interval_ms":100,"rate_limits":{{{rate_limits}}}{extra}}}"#)
}

fn admin_port(admin: &Admin) -> Result<u16, String> {
    admin.addr.rsplit(':').next().and_then(|x| x.parse().ok()).ok_or_else(|| "admin port".to_owned())
}

/// How the count exchanges went on `envoys`: answered and failed (the filter's
/// `keygate.limits.exchanges` / `exchange_failures` counters, summed), and the first
/// failure's reason from a log (the filter logs a run's first failure and its recovery).
fn exchanges(envoys: &[&Envoy]) -> String {
    let (mut answered, mut failed) = (0u64, 0u64);
    for e in envoys {
        let Ok(r) = http::get(&e.admin_addr(), "/stats?filter=keygate.limits.exchange", T) else { continue };
        for (name, v) in r.body.lines().filter_map(|l| l.split_once(": ")) {
            let v: u64 = v.trim().parse().unwrap_or(0);
            if name.ends_with("keygate.limits.exchanges") {
                answered += v;
            } else if name.ends_with("keygate.limits.exchange_failures") {
                failed += v;
            }
        }
    }
    let why = envoys.iter().find_map(|e| {
        let text = std::fs::read_to_string(e.proc.log()).unwrap_or_default();
        text.lines()
            .find_map(|l| l.split_once("rate-limit counts cannot reach admin (").map(|(_, r)| r.split(')').next().unwrap_or("").to_owned()))
    });
    match why {
        None => format!("{answered} answered, {failed} failed"),
        Some(why) => format!("{answered} answered, {failed} failed (first failure: {why})"),
    }
}

fn throughput(p: &Paths, mode: &Mode, dir: &Path, cores: &Cores, admin: &Admin, today: Option<&Path>) -> Result<Vec<Column>, String> {
    let s = seed(admin)?;
    let wasm = p.wasm.to_string_lossy().into_owned();
    let high = format!(r#""sk":["{HIGH}/h"]"#);
    let mut specs: Vec<(&'static str, String, String)> = Vec::new();
    if let Some(w) = today {
        // Today's filter knows only the hourly fields.
        specs.push((TODAY_LABEL, w.to_string_lossy().into_owned(), plugin_json(&format!(r#""sk_per_hour":{HIGH}"#), "")));
    }
    specs.push((FLEET, wasm.clone(), plugin_json(&high, "")));
    specs.push((ALONE, wasm, plugin_json(&format!(r#"{high},"sync_interval_ms":0"#), "")));
    step(&format!("rate limits, throughput: {} filter builds side by side", specs.len()));
    let port = admin_port(admin)?;
    let mut envoys: Vec<(&'static str, String, Envoy)> = Vec::new();
    for (i, (label, wasm, json)) in specs.into_iter().enumerate() {
        let envoy = start_envoy(
            p,
            dir,
            &format!("tp-{i}"),
            "keygate.yaml",
            &[("KEYGATE_WASM", &wasm), ("KEYGATE_JSON", &json)],
            port,
            cores.envoy,
        )?;
        envoys.push((label, json, envoy));
    }
    let bearer = format!("Bearer {}", s.token);
    let all3 = super::credentials(&bearer, &s.key, &s.business);
    let script = dir.join("wrk-limits.lua");
    write(&script, &lua_script("GET", None, &all3, None))?;
    for (label, _, envoy) in &mut envoys {
        envoy_ready(envoy)?;
        let addr = envoy.addr();
        let (status, body) =
            crate::proc::wait_for(Duration::from_secs(30), Duration::from_millis(50), &format!("{label} answering"), || {
                envoy.proc.alive()?;
                Ok(http::request("GET", &addr, "/orders", &all3, None, T).ok().map(|r| (r.status, r.body)).filter(|(st, _)| *st != 503))
            })?;
        if status != 200 {
            return Err(format!("{label}: answered {status} where 200 was expected: {body}"));
        }
    }
    if !mode.quick {
        step("warm-up: 1 s per filter build");
        for (_, _, e) in &envoys {
            wrk(&script, &format!("http://{}/orders", e.addr()), 1, cores.load)?;
        }
    }
    let mut runs: Vec<Vec<Load>> = vec![Vec::new(); envoys.len()];
    for round in 0..mode.rounds {
        step(&format!("round {} of {}: {} s per filter build", round + 1, mode.rounds, mode.secs));
        for (i, (label, _, e)) in envoys.iter_mut().enumerate() {
            e.proc.alive()?;
            let l = wrk(&script, &format!("http://{}/orders", e.addr()), mode.secs, cores.load)?;
            println!("    {label:<30} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  non-2xx {}", l.rps, l.p50_ms, l.p99_ms, l.non2xx);
            if l.requests == 0 || l.non2xx > 0 || l.socket_errors > 0 {
                return Err(format!("{label}: {} of {} answers were not 200 ({} socket errors)", l.non2xx, l.requests, l.socket_errors));
            }
            runs[i].push(l);
        }
    }
    let columns = envoys
        .iter()
        .zip(runs)
        .map(|((label, json, e), rs)| Column {
            label,
            config: json.clone(),
            load: median_load(&rs),
            rounds: rs.iter().map(|l| l.rps).collect(),
            exchanges: (*label == FLEET).then(|| exchanges(&[e])),
        })
        .collect::<Vec<_>>();
    if let Some(c) = columns.iter().find(|c| c.label == FLEET) {
        println!("    exchanges of the fleet column: {}", c.exchanges.as_deref().unwrap_or("-"));
    }
    Ok(columns)
}

// ----- over-admission -----

/// What one client thread saw: (µs since the start, status) per answer, and its Envoy.
type Answers = (usize, Vec<(u64, u16)>);

fn over_admission(p: &Paths, dir: &Path, admin: &Admin, sync_ms: u64, limit: u64, max_secs: u64) -> Result<Admission, String> {
    step(&format!(
        "over-admission: {ENVOYS} Envoys (1 worker each), \"sk\": [\"{limit}/h\"], sync_interval_ms {sync_ms}, {CLIENTS_PER_ENVOY} clients per Envoy"
    ));
    let port = admin_port(admin)?;
    let wasm = p.wasm.to_string_lossy().into_owned();
    let json =
        plugin_json(&format!(r#""sk":["{limit}/h"],"sync_interval_ms":{sync_ms}"#), r#","routes":[{"prefix":"/key/","require":"key"}]"#);
    let mut envoys = Vec::new();
    for i in 0..ENVOYS {
        envoys.push(start_envoy_workers(
            p,
            dir,
            &format!("adm-s{sync_ms}-{i}"),
            &[("KEYGATE_WASM", &wasm), ("KEYGATE_JSON", &json)],
            port,
            1,
        )?);
    }
    for e in &mut envoys {
        envoy_ready(e)?;
    }
    let addrs: Vec<String> = envoys.iter().map(Envoy::addr).collect();
    // The measured key first, then a probe key: once every Envoy lets the probe through,
    // its snapshot holds the measured key too, which has not been counted yet.
    let business = super::replica_parts::operator(&admin.addr, "POST", "/v1/businesses", Some(r#"{"name":"Limits bench"}"#), 201)?;
    let business = business.str("id").ok_or("no business id")?.to_owned();
    let (_, key) = create_key(&admin.addr, &business)?;
    let (_, probe) = create_key(&admin.addr, &business)?;
    wait_accepted(&addrs, &probe)?;
    // A few exchanges (the probe's counter) before the load.
    std::thread::sleep(Duration::from_millis(300 + 3 * sync_ms));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let last_ok_us = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let max_run = Duration::from_secs(max_secs);
    let clients: Vec<_> = (0..ENVOYS * CLIENTS_PER_ENVOY)
        .map(|c| {
            let envoy = c % ENVOYS;
            let (addr, key, stop, ok, last_ok_us) =
                (addrs[envoy].clone(), key.clone(), Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&last_ok_us));
            std::thread::spawn(move || -> Result<Answers, String> {
                let mut conn = Conn::open(&addr, T)?;
                let mut seen = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < max_run {
                    let (status, _) = conn.request("GET", "/key/limits", &[("SECRET_KEY", &key)], None)?;
                    let us = t0.elapsed().as_micros() as u64;
                    if status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                        last_ok_us.fetch_max(us, Ordering::Relaxed);
                    }
                    seen.push((us, status));
                }
                Ok((envoy, seen))
            })
        })
        .collect();
    let rtt = {
        let (addr, stop) = (admin.addr.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut ms = Vec::new();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < max_run {
                let t = Instant::now();
                if http::get(&addr, "/healthz", T).is_ok_and(|r| r.status == 200) {
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                std::thread::sleep(RTT_EVERY);
            }
            ms
        })
    };
    // Until the fleet has admitted the limit and then nothing for a while (a few
    // exchanges), or the time is up.
    let quiet_us = 1_000_000u64.max(3 * (2 * sync_ms + 100) * 1000);
    while t0.elapsed() < max_run {
        std::thread::sleep(Duration::from_millis(5));
        let now_us = t0.elapsed().as_micros() as u64;
        if ok.load(Ordering::Relaxed) >= limit && now_us.saturating_sub(last_ok_us.load(Ordering::Relaxed)) >= quiet_us {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    let mut first_err = None;
    for c in clients {
        match c.join().map_err(|_| "a client thread panicked".to_string()).and_then(|r| r) {
            Ok(a) => answers.push(a),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut rtt = rtt.join().map_err(|_| "the round-trip thread panicked".to_string())?;
    rtt.sort_by(f64::total_cmp);
    for e in &mut envoys {
        e.proc.alive()?;
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let exchanges = exchanges(&envoys.iter().collect::<Vec<_>>());
    drop(envoys);
    let a = tally(sync_ms, limit, &answers, secs, &rtt, exchanges);
    println!(
        "    admitted {} (limit {limit}: {:+}; per Envoy {:?}) of {} answers in {:.1} s; r {:.0}/s; limit ran out after {}; last 200 {:.0} ms later; admin RTT p50 {:.1} ms, max {:.1} ms; bound {:.0}; exchanges {}",
        a.total(),
        a.over(),
        a.accepted,
        a.answers,
        a.secs,
        a.rate,
        a.runout_ms.map_or("never".to_owned(), |m| format!("{m:.0} ms")),
        a.last_ok_after_ms,
        a.rtt_p50_ms,
        a.rtt_max_ms,
        a.bound(),
        a.exchanges
    );
    if a.other > 0 {
        return Err(format!("over-admission, sync {sync_ms}: {} answers were neither 200 nor 429", a.other));
    }
    if a.total() < limit {
        return Err(format!("over-admission, sync {sync_ms}: only {} admitted in {:.1} s, under the limit {limit}", a.total(), a.secs));
    }
    Ok(a)
}

/// The figures of one over-admission run from every client's answers.
fn tally(sync_ms: u64, limit: u64, answers: &[Answers], secs: f64, rtt: &[f64], exchanges: String) -> Admission {
    let mut accepted = vec![0u64; ENVOYS];
    let mut all: Vec<(u64, u16)> = Vec::new();
    for (envoy, seen) in answers {
        accepted[*envoy] += seen.iter().filter(|(_, s)| *s == 200).count() as u64;
        all.extend_from_slice(seen);
    }
    all.sort_unstable();
    let other = all.iter().filter(|(_, s)| *s != 200 && *s != 429).count() as u64;
    let oks: Vec<u64> = all.iter().filter(|(_, s)| *s == 200).map(|(t, _)| *t).collect();
    let runout_us = usize::try_from(limit).ok().and_then(|l| l.checked_sub(1)).and_then(|i| oks.get(i)).copied();
    let rate = match runout_us {
        Some(t) if t > 0 => all.iter().take_while(|(u, _)| *u <= t).count() as f64 / (t as f64 / 1e6),
        _ => all.len() as f64 / secs.max(1e-3),
    };
    let last_ok_after_ms = match (runout_us, oks.last()) {
        (Some(r), Some(&l)) => l.saturating_sub(r) as f64 / 1000.0,
        _ => f64::NAN,
    };
    Admission {
        sync_ms,
        limit,
        accepted,
        answers: all.len() as u64,
        other,
        secs,
        runout_ms: runout_us.map(|t| t as f64 / 1000.0),
        rate,
        last_ok_after_ms,
        rtt_p50_ms: percentile(rtt, 50.0),
        rtt_max_ms: rtt.last().copied().unwrap_or(f64::NAN),
        exchanges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_admissions_and_the_bound() {
        // Envoy 0 admits at 1, 2 and 5 ms, Envoy 1 at 3 ms; the limit (3) runs out at 3 ms.
        let answers: Vec<Answers> =
            vec![(0, vec![(1000, 200), (2000, 200), (4000, 429), (5000, 200)]), (1, vec![(3000, 200), (6000, 429)])];
        let a = tally(200, 3, &answers, 0.01, &[1.0, 2.0, 9.0], "x".into());
        assert_eq!((a.accepted.clone(), a.total(), a.over(), a.answers, a.other), (vec![3, 1, 0], 4, 1, 6, 0));
        assert_eq!(a.runout_ms, Some(3.0));
        assert!((a.rate - 1000.0).abs() < 1e-6, "3 answers in 3 ms: {}", a.rate);
        assert!((a.last_ok_after_ms - 2.0).abs() < 1e-9);
        assert_eq!((a.rtt_p50_ms, a.rtt_max_ms), (2.0, 9.0));
        // r_others = 2/3 × 1000/s over 402 ms = 268, more than (E − 1) × L = 6.
        assert_eq!(a.bound(), 6.0);
        let a = Admission { limit: 100_000, ..a };
        assert!((a.bound() - 1000.0 * 2.0 / 3.0 * 0.402).abs() < 1e-6);
        let a = Admission { sync_ms: 50, ..a };
        assert_eq!(a.effective_interval_ms(), 50);
        let a = Admission { sync_ms: 250, ..a };
        assert_eq!(a.effective_interval_ms(), 300);
        let a = Admission { sync_ms: 0, ..a };
        assert_eq!(a.bound(), 200_000.0);
    }
}
