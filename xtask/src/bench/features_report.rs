//! The per-key checks part's section of docs/benchmarks.md and its `features` member of
//! docs/benchmarks.json; `--only features` puts them into the files a full run wrote.

use std::fmt::Write as _;
use std::path::Path;

use super::features::{FeaturesReport, BEFORE, BEFORE_LABEL, CHECKED, CREDITED, PLAIN, PROVIDER, RANGES};
use super::replicas_report::update_docs_part;
use super::{num, obj, sh, throughput_fields};
use crate::json::Json;
use crate::Paths;

pub(super) const HEADING: &str = "## Per-key checks: allowlists and limits set through admin";

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".to_owned()
    }
}

impl FeaturesReport {
    pub(super) fn markdown(&self, root: &Path, command: &str) -> String {
        let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let commit = sh("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
        let mut md = String::new();
        let _ = writeln!(md, "{HEADING}\n");
        let _ = writeln!(md, "Written by `{command}` (xtask/src/bench/features.rs; `cargo xtask bench --only features` runs this part alone and rewrites only this section); {date}, commit {commit}. One keygate-admin ({} build, sled) feeds every Envoy. Load average at the start: {}, at the end: {}: read the ratios side by side.\n", self.admin_build, self.loadavg_start, super::loadavg());
        if self.quick {
            let _ = writeln!(
                md,
                "A quick run (`--quick`): it checks that every column answers 200; its figures are not comparable with a full run's.\n"
            );
        }
        let _ = writeln!(md, "Envoys as configuration 5 above ({}; three valid credentials on `/orders`, direct response), one per column, measured in {} round{} of {} s each, in turn; each figure the median round. Every column's plugin config raises the sk limit out of reach (`\"sk\": [\"100000000/h\"]`). The filter before is built from commit {BEFORE} (the last before issue 17; cached in `target/bench-old/`). The checked key has an allowlist of {RANGES} ranges, the client's (127.0.0.0/8) last, so each request reads the client address and compares it with every range, and its own limit; its business has its own per-key and shared limits (out of reach too), so each request is also counted against the business's shared limit, one counter more than the plain key's. The provider column sends, in place of keygate's own EdDSA token, an RS256 token of an identity provider the business trusts (`POST /v1/businesses/{{id}}/issuers` with a static JWKS); like keygate's own, a verified token is cached per worker VM, so the rounds measure the cached path: the RS256 signature check itself is paid once per token and VM.\n", self.pin, self.rounds, if self.rounds == 1 { "" } else { "s" }, self.secs);
        let _ = writeln!(md, "| column | req/s | p50 ms | p99 ms | ÷ before | ÷ plain key now | rounds (req/s) |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
        let (before, plain) = (self.rps(BEFORE_LABEL), self.rps(PLAIN));
        for c in &self.columns {
            let rounds: Vec<String> = c.rounds.iter().map(|r| format!("{r:.0}")).collect();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.3} | {:.3} | {} | {} | {} |",
                c.label,
                c.load.rps,
                c.load.p50_ms,
                c.load.p99_ms,
                ratio(c.load.rps / before),
                ratio(c.load.rps / plain),
                rounds.join(", ")
            );
        }
        if let Some(why) = &self.before_missing {
            let _ = writeln!(md, "\nThe column before is missing: {why}.");
        }
        let extra = |label| {
            let x = 1e6 / self.rps(label) - 1e6 / plain;
            if x.is_finite() {
                format!("{x:+.1}")
            } else {
                "-".to_owned()
            }
        };
        let _ = writeln!(md, "\nPer request, against the plain key (1/req/s of one pinned worker): the checked key {} µs, the key with credits {} µs, the provider's token {} µs. The key with credits spends one credit a request: one shared-data read and compare-and-swap more, and its spending is posted to admin every `sync_interval_ms`.", extra(CHECKED), extra(CREDITED), extra(PROVIDER));
        md
    }

    pub(super) fn json(&self) -> Json {
        let columns = self.columns.iter().map(|c| obj(throughput_fields("column", &c.label, &c.config, &c.load, &c.rounds))).collect();
        obj(vec![
            ("admin_build", Json::Str(self.admin_build.to_owned())),
            ("quick", Json::Bool(self.quick)),
            ("before_commit", Json::Str(BEFORE.to_owned())),
            ("before_missing", self.before_missing.as_ref().map_or(Json::Null, |w| Json::Str(w.clone()))),
            ("pinning", Json::Str(self.pin.clone())),
            ("rounds", Json::Num(self.rounds as f64)),
            ("secs_per_run", Json::Num(f64::from(self.secs))),
            ("allowlist_ranges", Json::Num(RANGES as f64)),
            ("throughput", Json::Arr(columns)),
            ("plain_vs_before", num(self.rps(PLAIN) / self.rps(BEFORE_LABEL))),
            ("checked_vs_plain", num(self.rps(CHECKED) / self.rps(PLAIN))),
            ("credits_vs_plain", num(self.rps(CREDITED) / self.rps(PLAIN))),
            ("provider_token_vs_plain", num(self.rps(PROVIDER) / self.rps(PLAIN))),
        ])
    }
}

pub(super) fn update_docs(p: &Paths, r: &FeaturesReport) -> Result<(), String> {
    update_docs_part(p, HEADING, &r.markdown(&p.root, "cargo xtask bench --only features"), "features", r.json())
}
