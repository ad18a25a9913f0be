//! The rate-limit part's section of docs/benchmarks.md and its `limits` member of
//! docs/benchmarks.json; `--only limits` puts them into the files a full run wrote.

use std::fmt::Write as _;
use std::path::Path;

use super::limits::{Admission, LimitsReport, CLIENTS_PER_ENVOY, ENVOYS, FLEET, TICK_MS, TODAY, TODAY_LABEL};
use super::replicas_report::update_docs_part;
use super::{num, obj, sh, throughput_fields};
use crate::json::Json;
use crate::Paths;

pub(super) const HEADING: &str = "## Fleet-wide rate limits";
/// Issue 16's target: fleet counting keeps this share of today's throughput.
const TARGET: f64 = 0.95;

fn or_dash(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".to_owned()
    }
}

impl LimitsReport {
    pub(super) fn markdown(&self, root: &Path, command: &str) -> String {
        let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let commit = sh("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
        let loadavg = super::loadavg();
        let mut md = String::new();
        let _ = writeln!(md, "{HEADING}\n");
        let _ = writeln!(md, "Written by `{command}` (xtask/src/bench/limits.rs; `cargo xtask bench --only limits` runs this part alone and rewrites only this section); {date}, commit {commit}. One keygate-admin ({} build, sled) answers every Envoy's snapshot feed and its rate-count exchanges (`POST /v1/rate-counts`). Load average over 1, 5 and 15 min at the start: {}, at the end: {loadavg}: other work on the machine is noise, so read the ratios side by side.\n", self.admin_build, self.loadavg_start);
        if self.quick {
            let _ = writeln!(md, "A quick run (`--quick`): it checks that every build answers and that the fleet stops at a limit; its figures are not comparable with a full run's.\n");
        }

        let _ = writeln!(md, "### Throughput with fleet counting\n");
        let _ = writeln!(md, "Envoys as configuration 5 above ({}; three valid credentials, direct response), one per filter build, all up at once and measured in {} round{} of {} s each, in turn{}; each figure the median round. Today's filter is built from commit {TODAY} (the last before fleet counting; cached in `target/bench-old/`) and configured with `\"sk_per_hour\": 100000000`; the current one with `\"sk\": [\"100000000/h\"]`, once with the default `sync_interval_ms` (200: each worker VM exchanges its Envoy's counts with admin every 200 ms) and once with `sync_interval_ms: 0` (no exchanges: each Envoy counts alone). The limit is out of reach: every answer must be a 200, and each is still counted.\n", self.pin, self.rounds, if self.rounds == 1 { "" } else { "s" }, self.secs, if self.quick { "" } else { " (after a 1 s warm-up each)" });
        let _ = writeln!(md, "| filter | req/s | p50 ms | p99 ms | ÷ today | rounds (req/s) |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | --- |");
        let today = self.columns.iter().find(|c| c.label == TODAY_LABEL).map_or(f64::NAN, |c| c.load.rps);
        for c in &self.columns {
            let rounds: Vec<String> = c.rounds.iter().map(|r| format!("{r:.0}")).collect();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.3} | {:.3} | {} | {} |",
                c.label,
                c.load.rps,
                c.load.p50_ms,
                c.load.p99_ms,
                or_dash(c.load.rps / today, 2),
                rounds.join(", ")
            );
        }
        if let Some(why) = &self.today_missing {
            let _ = writeln!(md, "\nToday's column is missing: {why}.");
        }
        if let Some(ex) = self.columns.iter().find(|c| c.label == FLEET).and_then(|c| c.exchanges.as_deref()) {
            let _ = writeln!(md, "\nThe fleet column's count exchanges with admin over the whole run (the filter's `keygate.limits.exchanges` and `exchange_failures`): {ex}.");
        }
        let ratio = self.ratio();
        let verdict = if !ratio.is_finite() {
            "not measured".to_owned()
        } else if ratio >= TARGET {
            format!("{:.0} %, met", ratio * 100.0)
        } else {
            format!("{:.0} %, **missed**", ratio * 100.0)
        };
        let _ = writeln!(md, "\nTarget (issue 16): fleet counting keeps ≥ {:.0} % of today's req/s: {verdict}.\n", TARGET * 100.0);

        let _ = writeln!(md, "### Over-admission across {ENVOYS} Envoys\n");
        let _ = writeln!(md, "{ENVOYS} Envoys (1 worker each, the current filter, a rule `/key/` that needs only the key) fed by the one admin, and a new secret key limited to L an hour (`\"sk\": [\"L/h\"]`) per row, on three new Envoys. {CLIENTS_PER_ENVOY} client threads per Envoy (xtask, keep-alive connections) send the key's requests through all {ENVOYS} at once, each as soon as its last was answered, until the fleet has admitted L and then nothing for a while (at least 1 s and three exchanges), at most a few seconds. Nothing is pinned: the Envoys, admin and the clients share the machine's cores. Admin's round trip (RTT, `GET /healthz`) is sampled every 20 ms during the load.\n");
        let _ = writeln!(md, "r: the answers a second over all {ENVOYS} Envoys until the fleet's L-th admission; while the limit has room each Envoy admits what it gets, so the other Envoys admit r_others = r × {}/{ENVOYS}. The README's bound on what passes the limit: r_others × (2 × `sync_interval_ms` + RTT), never more than {} × L; with `sync_interval_ms` 0 each Envoy counts alone and admits L, so {} × L in all.\n", ENVOYS - 1, ENVOYS - 1, ENVOYS);
        let _ = writeln!(md, "| `sync_interval_ms` | L | admitted | past L | per Envoy | r (req/s) | L reached after | last 200 after that | RTT p50 / max ms | bound on past L | within |");
        let _ = writeln!(md, "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |");
        for a in &self.admission {
            let per: Vec<String> = a.accepted.iter().map(u64::to_string).collect();
            let within = if (a.over() as f64) <= a.bound() { "yes" } else { "**no**" };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:+} | {} | {:.0} | {} | {} | {} / {} | {:.0} | {within} |",
                a.sync_ms,
                a.limit,
                a.total(),
                a.over(),
                per.join(" + "),
                a.rate,
                a.runout_ms.map_or("never".to_owned(), |m| format!("{m:.0} ms")),
                if a.last_ok_after_ms.is_finite() { format!("{:.0} ms", a.last_ok_after_ms) } else { "-".to_owned() },
                or_dash(a.rtt_p50_ms, 1),
                or_dash(a.rtt_max_ms, 1),
                a.bound()
            );
        }
        let _ = writeln!(md);
        for a in self.admission.iter().filter(|a| a.sync_ms > 0) {
            let _ = write!(md, "- `sync_interval_ms` {}: {} answers in {:.1} s; count exchanges with admin over the {ENVOYS} Envoys (the filter's `keygate.limits.exchanges` and `exchange_failures`): {}.", a.sync_ms, a.answers, a.secs, a.exchanges);
            let eff = a.effective_interval_ms();
            if eff != a.sync_ms {
                let b = a.bound_at(eff);
                let _ = write!(
                    md,
                    " The filter really exchanges every {eff} ms (below): with that interval the bound is {b:.0}, {}.",
                    if (a.over() as f64) <= b { "within it" } else { "**past it**" }
                );
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md, "\nThe filter exchanges from its tick: {TICK_MS} ms, or `sync_interval_ms` itself when that is shorter; a longer interval that is not a multiple of {TICK_MS} ms waits for the next tick, so the README's bound holds with the interval rounded up to whole ticks.");
        md
    }

    pub(super) fn json(&self) -> Json {
        let columns = self
            .columns
            .iter()
            .map(|c| {
                let mut fields = throughput_fields("filter", c.label, &c.config, &c.load, &c.rounds);
                fields.push(("exchanges", c.exchanges.as_ref().map_or(Json::Null, |e| Json::Str(e.clone()))));
                obj(fields)
            })
            .collect();
        obj(vec![
            ("admin_build", Json::Str(self.admin_build.to_owned())),
            ("quick", Json::Bool(self.quick)),
            ("today_commit", Json::Str(TODAY.to_owned())),
            ("today_missing", self.today_missing.as_ref().map_or(Json::Null, |w| Json::Str(w.clone()))),
            ("pinning", Json::Str(self.pin.clone())),
            ("rounds", Json::Num(self.rounds as f64)),
            ("secs_per_run", Json::Num(f64::from(self.secs))),
            ("throughput", Json::Arr(columns)),
            ("fleet_vs_today", num(self.ratio())),
            ("target", num(TARGET)),
            ("envoys", Json::Num(ENVOYS as f64)),
            ("clients_per_envoy", Json::Num(CLIENTS_PER_ENVOY as f64)),
            ("over_admission", Json::Arr(self.admission.iter().map(admission_json).collect())),
        ])
    }
}

fn admission_json(a: &Admission) -> Json {
    obj(vec![
        ("sync_interval_ms", Json::Num(a.sync_ms as f64)),
        ("limit", Json::Num(a.limit as f64)),
        ("admitted", Json::Num(a.total() as f64)),
        ("past_limit", Json::Num(a.over() as f64)),
        ("admitted_per_envoy", Json::Arr(a.accepted.iter().map(|x| Json::Num(*x as f64)).collect())),
        ("answers", Json::Num(a.answers as f64)),
        ("secs", num(a.secs)),
        ("rate_rps", num(a.rate)),
        ("limit_reached_after_ms", a.runout_ms.map_or(Json::Null, num)),
        ("last_200_after_ms", num(a.last_ok_after_ms)),
        ("rtt_p50_ms", num(a.rtt_p50_ms)),
        ("rtt_max_ms", num(a.rtt_max_ms)),
        ("bound", num(a.bound())),
        ("effective_interval_ms", Json::Num(a.effective_interval_ms() as f64)),
        ("bound_at_effective_interval", num(a.bound_at(a.effective_interval_ms()))),
        ("within_bound", Json::Bool(a.over() as f64 <= a.bound())),
        ("exchanges", Json::Str(a.exchanges.clone())),
    ])
}

/// Puts the section into docs/benchmarks.md and the member into docs/benchmarks.json.
pub(super) fn update_docs(p: &Paths, r: &LimitsReport) -> Result<(), String> {
    update_docs_part(p, HEADING, &r.markdown(&p.root, "cargo xtask bench --only limits"), "limits", r.json())
}
