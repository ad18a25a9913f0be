//! The replica part's section of docs/benchmarks.md and its `replicas` member of
//! docs/benchmarks.json; `--only replicas` puts them into the files a full run wrote,
//! leaving the rest as it was.

use std::fmt::Write as _;
use std::path::Path;

use super::proxies::{Fanout, Usage};
use super::replicas::ReplicaReport;
use super::wrk::percentile;
use super::{num, obj, read, sh, write};
use crate::json::Json;
use crate::Paths;

pub(super) const HEADING: &str = "## Admin replicas over PostgreSQL";
/// The target for a change reaching every proxy.
const TARGET_MS: f64 = 250.0;

fn p(v: &[f64], q: f64) -> f64 {
    percentile(v, q)
}

fn max(v: &[f64]) -> f64 {
    v.last().copied().unwrap_or(f64::NAN)
}

impl ReplicaReport {
    pub(super) fn markdown(&self, root: &Path, command: &str) -> String {
        let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let commit = sh("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
        let loadavg = super::loadavg();
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let s = &self.sizes;
        let mut md = String::new();
        let _ = writeln!(md, "{HEADING}\n");
        let _ = writeln!(md, "Written by `{command}` (xtask/src/bench/replicas.rs, proxies.rs; `cargo xtask bench --only replicas` runs this part alone and rewrites only this section); {date}, commit {commit}. keygate-admin {} build; a fresh PostgreSQL cluster (Debian's, `target/keygate-pg/`, `fsync=on`, `synchronous_commit=on`) and sled both on the disk of `target/`. Nothing is pinned: the admins, PostgreSQL, the Envoys and the clients share the machine's {nproc} cores with each other and with whatever else runs there (load average over 1, 5 and 15 min at the start: {}, at the end: {loadavg}), so read the ratios side by side, not the absolute figures.\n", self.admin_build, self.loadavg_start);
        let _ = writeln!(md, "### Durable key creates, 64 clients\n");
        let _ = writeln!(md, "64 clients on keep-alive connections `POST /v1/businesses/{{id}}/keys` back to back; every answer must be a 201, sent only once the write is durable (sled: a group-commit flush; PostgreSQL: the `COMMIT`). With two replicas the clients are split across both (one database). {} round{} of {} s per store, in turn; the median round (and every round's rate).\n", s.create_rounds, if s.create_rounds == 1 { "" } else { "s" }, s.create_secs);
        let _ = writeln!(md, "| store | creates/s | ÷ sled | p50 ms | p99 ms | rounds (creates/s) |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | --- |");
        let sled = self.creates.first().map_or(f64::NAN, |c| c.rate);
        for c in &self.creates {
            let rounds: Vec<String> = c.rounds.iter().map(|r| format!("{r:.0}")).collect();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {} |",
                c.label,
                c.rate,
                c.rate / sled,
                c.p50_ms,
                c.p99_ms,
                rounds.join(", ")
            );
        }
        let _ = writeln!(md, "\n### A revocation through replica A reaching Envoys fed by replica B\n");
        let _ = writeln!(md, "Two Envoys (2 workers each, the keygate filter, `long_poll_secs` 20) whose admin cluster lists replica B only. {} times: a new key through A, waited for until both Envoys let it through, then `POST /v1/keys/{{id}}/deactivate` through A while one thread per Envoy sends it in a tight loop (a new loopback connection per request); the time from sending the deactivation to the later of the two Envoys' first 401. A's commit wakes B's long-polls through PostgreSQL's `NOTIFY`.\n", self.cross_ms.len());
        let _ = writeln!(md, "| | p50 ms | p99 ms | max ms |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
        let _ = writeln!(
            md,
            "| deactivated through A → refused by both Envoys | {:.1} | {:.1} | {:.1} |",
            p(&self.cross_ms, 50.0),
            p(&self.cross_ms, 99.0),
            max(&self.cross_ms)
        );
        let _ = writeln!(
            md,
            "| of which: A acknowledged the deactivation | {:.1} | {:.1} | {:.1} |",
            p(&self.cross_ack_ms, 50.0),
            p(&self.cross_ack_ms, 99.0),
            max(&self.cross_ack_ms)
        );
        let (within, all) = self.cross_admin_within;
        let _ = writeln!(md, "\nA's own request histogram (`keygate_admin_request_duration_seconds`, route `/v1/keys/{{id}}/deactivate`) answered {within} of these {all} deactivations within 0.5 s.");
        let Some(f) = self.fanouts.first() else { return md };
        let _ = writeln!(md, "\n### Fan-out: {} simulated proxies on two replicas, plus two Envoys\n", f.proxies);
        let _ = writeln!(md, "{} simulated proxies (one thread each in xtask, one keep-alive connection each, half on A and half on B) speak the feed protocol as the filter's leader does once it holds a snapshot: `GET /v1/snapshot?since=V&wait=20&history=H` with the proxy token, again at once after each answer. With them the two Envoys above (fed by B). Once the replicas held every poll ({} = {} + {}, from `keygate_admin_longpoll_waiters`), {} s at rest, then a burst of {} deactivations sent through A one after the other (each waits for its 2xx). Per change: from sending it to the last simulated proxy receiving the key as inactive and the last Envoy refusing it (each Envoy probed in a tight loop, key after key).", f.proxies, f.proxies + f.envoys, f.proxies, f.envoys, s.rest_secs, f.all_ms.len());
        if self.fanouts.len() > 1 {
            let _ = writeln!(md, "The baseline right after it, on the same machine: the same fan-out with every simulated proxy and two new Envoys on the sled admin of the creates above, the burst written through it.");
        }
        let _ = writeln!(md, "\n| setup | per change, until | p50 ms | p99 ms | max ms |");
        let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: |");
        for f in &self.fanouts {
            for (name, v) in [
                (format!("every one of the {} proxies and both Envoys", f.proxies), &f.all_ms),
                (format!("every one of the {} simulated proxies", f.proxies), &f.proxies_ms),
                ("both Envoys".to_owned(), &f.envoys_ms),
                ("the write acknowledged it".to_owned(), &f.ack_ms),
            ] {
                let _ = writeln!(md, "| {} | {name} | {:.1} | {:.1} | {:.1} |", f.label, p(v, 50.0), p(v, 99.0), max(v));
            }
        }
        let _ = writeln!(md);
        for f in &self.fanouts {
            let _ = writeln!(md, "- {}: the burst of {} took {:.2} s from the first deactivation sent until the last change was everywhere; the simulated proxies received {} answers and reopened {} connections.", f.label, f.all_ms.len(), f.burst_secs, f.answers, f.reconnects);
        }
        let p99 = p(&f.all_ms, 99.0);
        let _ = writeln!(md, "\nTarget (issue 15), two PostgreSQL replicas: a revocation reaches all of them within p99 ≤ {TARGET_MS:.0} ms: {p99:.1} ms, **{}**.\n", if p99 <= TARGET_MS { "met" } else { "missed" });
        let _ = writeln!(md, "CPU (`utime + stime` from `/proc/PID/stat` over the window; 100 % is one core) and RSS (`VmRSS`), {:.0} s at rest with every poll held, and over the burst:\n", f.rest_secs);
        let _ = writeln!(md, "| setup | process | RSS before the proxies | at rest: CPU | at rest: RSS | burst: CPU | burst: RSS |");
        let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
        let pct = |x: f64| if x.is_finite() { format!("{x:.1} %") } else { "-".to_owned() };
        for f in &self.fanouts {
            for (i, name) in f.names.iter().enumerate() {
                if let (Some(idle), Some(rest), Some(burst)) = (f.idle_rss_mb.get(i), f.rest.get(i), f.burst.get(i)) {
                    let _ = writeln!(
                        md,
                        "| {} | {name} | {idle:.0} MB | {} | {:.0} MB | {} | {:.0} MB |",
                        f.label,
                        pct(rest.cpu_pct),
                        rest.rss_mb,
                        pct(burst.cpu_pct),
                        burst.rss_mb
                    );
                }
            }
            if f.others_rest[0].is_finite() {
                let _ = writeln!(
                    md,
                    "| {} | PostgreSQL (postmaster and backends) | | {} | | {} | |",
                    f.label,
                    pct(f.others_rest[0]),
                    pct(f.others_burst[0])
                );
            }
            let _ = writeln!(
                md,
                "| {} | xtask (the simulated proxies and the Envoy probes) | | {} | | {} | |",
                f.label,
                pct(f.others_rest[1]),
                pct(f.others_burst[1])
            );
        }
        let _ = writeln!(md, "\nxtask raises its open-file limit to the hard limit ({} here; the admins inherit it): each simulated proxy holds a socket in xtask and one in a replica. keygate-admin has no cap on held long-polls; each costs it one waiting task. The polls a change wakes together share one read of their delta per replica (admin/src/api/coalesce.rs), so the database's work per change does not grow with the number of proxies.", self.nofile);
        // What a full run's figures mean, written from one (a quick run's are not comparable).
        if !s.quick {
            if let Ok(text) = read(&root.join("bench/reading-replicas.md")) {
                let _ = writeln!(md, "\n{}", text.trim_end());
            }
        }
        md
    }

    pub(super) fn json(&self) -> Json {
        let creates = self
            .creates
            .iter()
            .map(|c| {
                obj(vec![
                    ("store", Json::Str(c.label.to_owned())),
                    ("creates_per_s", num(c.rate)),
                    ("p50_ms", num(c.p50_ms)),
                    ("p99_ms", num(c.p99_ms)),
                    ("created_in_median_round", int(c.created as usize)),
                    ("rounds_per_s", Json::Arr(c.rounds.iter().map(|r| num(*r)).collect())),
                ])
            })
            .collect();
        obj(vec![
            ("admin_build", Json::Str(self.admin_build.to_owned())),
            ("clients", int(64)),
            ("create_rounds", int(self.sizes.create_rounds)),
            ("create_secs", Json::Num(self.sizes.create_secs as f64)),
            ("creates", Json::Arr(creates)),
            ("cross_replica_revocation_ms", dist(&self.cross_ms)),
            ("cross_replica_ack_ms", dist(&self.cross_ack_ms)),
            (
                "cross_replica_admin_within_500ms",
                obj(vec![("within", Json::Num(self.cross_admin_within.0 as f64)), ("all", Json::Num(self.cross_admin_within.1 as f64))]),
            ),
            ("fanouts", Json::Arr(self.fanouts.iter().map(fanout_json).collect())),
            ("nofile_limit", Json::Num(self.nofile as f64)),
        ])
    }
}

fn int(x: usize) -> Json {
    Json::Num(x as f64)
}

fn dist(v: &[f64]) -> Json {
    obj(vec![("count", int(v.len())), ("p50", num(p(v, 50.0))), ("p99", num(p(v, 99.0))), ("max", num(max(v)))])
}

fn fanout_json(f: &Fanout) -> Json {
    let usage = |u: &[Usage]| {
        Json::Arr(
            u.iter()
                .zip(&f.names)
                .map(|(u, n)| obj(vec![("process", Json::Str((*n).to_owned())), ("cpu_pct", num(u.cpu_pct)), ("rss_mb", num(u.rss_mb))]))
                .collect(),
        )
    };
    obj(vec![
        ("setup", Json::Str(f.label.to_owned())),
        ("simulated_proxies", int(f.proxies)),
        ("envoys", int(f.envoys)),
        ("burst", int(f.all_ms.len())),
        ("burst_s", num(f.burst_secs)),
        ("all_ms", dist(&f.all_ms)),
        ("proxies_ms", dist(&f.proxies_ms)),
        ("envoys_ms", dist(&f.envoys_ms)),
        ("ack_ms", dist(&f.ack_ms)),
        ("target_p99_ms", num(TARGET_MS)),
        ("target_met", Json::Bool(p(&f.all_ms, 99.0) <= TARGET_MS)),
        ("idle_rss_mb", Json::Arr(f.idle_rss_mb.iter().map(|x| num(*x)).collect())),
        ("rest_s", num(f.rest_secs)),
        ("rest", usage(&f.rest)),
        ("burst_usage", usage(&f.burst)),
        ("postgres_cpu_pct", obj(vec![("rest", num(f.others_rest[0])), ("burst", num(f.others_burst[0]))])),
        ("xtask_cpu_pct", obj(vec![("rest", num(f.others_rest[1])), ("burst", num(f.others_burst[1]))])),
        ("answers", Json::Num(f.answers as f64)),
        ("reconnects", Json::Num(f.reconnects as f64)),
    ])
}

/// `md` with its section under `heading` replaced by `section` (or put before
/// "## Reading", or at the end).
pub(super) fn splice(md: &str, heading: &str, section: &str) -> String {
    let section = section.trim_end();
    if let Some(start) = md.find(&format!("\n{heading}\n")) {
        let after = start + 1 + heading.len();
        let end = md[after..].find("\n## ").map_or(md.len(), |i| after + i);
        return format!("{}\n{section}\n{}", &md[..start], &md[end..]);
    }
    match md.find("\n## Reading\n") {
        Some(i) => format!("{}\n{section}\n{}", &md[..i], &md[i..]),
        None => format!("{}\n\n{section}\n", md.trim_end()),
    }
}

/// Puts the section into docs/benchmarks.md and the member into docs/benchmarks.json.
pub(super) fn update_docs(p: &Paths, r: &ReplicaReport) -> Result<(), String> {
    update_docs_part(p, HEADING, &r.markdown(&p.root, "cargo xtask bench --only replicas"), "replicas", r.json())
}

/// Puts one part's `section` (under `heading`) into docs/benchmarks.md and its member
/// `name` into docs/benchmarks.json, leaving the rest as a full run wrote it.
pub(super) fn update_docs_part(p: &Paths, heading: &str, section: &str, name: &str, member: Json) -> Result<(), String> {
    let docs = p.root.join("docs");
    let md_path = docs.join("benchmarks.md");
    let md = read(&md_path).unwrap_or_default();
    write(&md_path, &splice(&md, heading, section))?;
    let json_path = docs.join("benchmarks.json");
    let json = read(&json_path).unwrap_or_else(|_| "{\n}\n".to_owned());
    let prefix = format!("  \"{name}\": ");
    let member = Json::Obj(vec![(name.to_owned(), member)]).pretty();
    let member = member.lines().find(|l| l.starts_with(&prefix)).ok_or_else(|| format!("the {name} member did not print on one line"))?;
    write(&json_path, &splice_member(&json, name, member)?)
}

/// `json` (a top-level object printed one member a line, as the bench writes it) with its
/// member `name`'s line replaced by `member`, or added last; the other lines unchanged.
fn splice_member(json: &str, name: &str, member: &str) -> Result<String, String> {
    let prefix = format!("  \"{name}\": ");
    let mut lines: Vec<String> = json.trim_end().lines().filter(|l| !l.starts_with(&prefix)).map(str::to_owned).collect();
    if lines.last().map(String::as_str) != Some("}") || lines.first().map(String::as_str) != Some("{") {
        return Err("docs/benchmarks.json is not the bench's one-member-a-line object".into());
    }
    let close = lines.len() - 1;
    if close > 1 {
        let last = &mut lines[close - 1];
        if !last.ends_with(',') {
            last.push(',');
        }
    }
    lines.insert(close, member.trim_end_matches(',').to_owned());
    Ok(lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_the_section() {
        let doc = "# B\n\n## One\n\nx\n\n## Reading\n\nr\n";
        let once = splice(doc, HEADING, &format!("{HEADING}\n\nfirst\n"));
        assert_eq!(once, format!("# B\n\n## One\n\nx\n\n{HEADING}\n\nfirst\n\n## Reading\n\nr\n"));
        let twice = splice(&once, HEADING, &format!("{HEADING}\n\nsecond\n"));
        assert_eq!(twice, format!("# B\n\n## One\n\nx\n\n{HEADING}\n\nsecond\n\n## Reading\n\nr\n"));
        assert_eq!(splice("# B\n", HEADING, &format!("{HEADING}\n\ns")), format!("# B\n\n{HEADING}\n\ns\n"));
    }

    #[test]
    fn splices_the_json_member() {
        let member = "  \"replicas\": {\"a\": 1}";
        let once = splice_member("{\n  \"x\": 1.210\n}\n", "replicas", member);
        assert_eq!(once.as_deref(), Ok("{\n  \"x\": 1.210,\n  \"replicas\": {\"a\": 1}\n}\n"));
        let twice = splice_member(&once.unwrap_or_default(), "replicas", "  \"replicas\": {\"a\": 2}");
        assert_eq!(twice.as_deref(), Ok("{\n  \"x\": 1.210,\n  \"replicas\": {\"a\": 2}\n}\n"));
        assert_eq!(splice_member("{\n}\n", "replicas", member).as_deref(), Ok("{\n  \"replicas\": {\"a\": 1}\n}\n"));
        assert!(splice_member("[]", "replicas", member).is_err());
    }
}
