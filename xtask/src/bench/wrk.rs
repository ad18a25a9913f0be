//! wrk runs: the Lua script that sets a request's headers and prints one parseable line,
//! and the figures read from it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;

use super::{pinned, CONNECTIONS};

#[derive(Clone, Copy, Default)]
pub(super) struct Load {
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) requests: u64,
    pub(super) non2xx: u64,
    pub(super) socket_errors: u64,
}

/// A wrk Lua script: fixed headers (plus, with `tokens`, a different bearer token per
/// request, cycled in order), and a `done` hook printing one parseable line.
pub(super) fn lua_script(method: &str, body: Option<&str>, headers: &[(&str, &str)], tokens: Option<&[String]>) -> String {
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

pub(super) fn wrk(script: &Path, url: &str, secs: u32, core: Option<usize>) -> Result<Load, String> {
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

/// The median of each figure over `runs`, with their total request count.
pub(super) fn median_load(runs: &[Load]) -> Load {
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
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
