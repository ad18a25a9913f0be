//! The replica part of `cargo xtask bench` (issue 15): keygate-admin over PostgreSQL with
//! one and two replicas, against sled, in one run on one disk (target/).
//!
//! 1. Durable key creates: 64 keep-alive clients `POST /v1/businesses/{id}/keys` for a
//!    fixed time against sled, PostgreSQL with one replica, and PostgreSQL with two
//!    replicas (clients split across both); rounds in turn, so drift on a noisy machine
//!    spreads over all three alike; every answer must be 201.
//! 2. Cross-replica revocation: two real Envoys whose admin cluster lists replica B only;
//!    a key is deactivated through replica A, and each Envoy is probed in a tight loop
//!    until it refuses the key.
//! 3. Fan-out (`proxies.rs`): simulated proxies long-polling both replicas, plus the two
//!    Envoys, and a burst of deactivations through A.
//!
//! Nothing is pinned here: the admins, PostgreSQL, Envoy and the clients share every core.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keepalive::Conn;
use super::proxies::{self, Fanout};
use super::replica_parts::{create_key, operator, until_refused, wait_accepted, Sizes};
use super::wrk::percentile;
use super::{envoy_ready, keygate_json, start_admin_with, start_envoy_workers, step, Envoy, OPERATOR_TOKEN, PROXY_TOKEN, T};
use crate::proc::free_port;
use crate::stack::{self, Admin};
use crate::{http, postgres, Paths};

/// Concurrent clients creating keys (the issue's figure).
const CLIENTS: usize = 64;
/// The Envoys' rule: `/key/` needs only the API key.
const KEY_ROUTE: &str = r#","routes":[{"prefix":"/key/","require":"key"}]"#;

/// One store configuration's key creates (the median round by rate).
pub(super) struct Creates {
    pub(super) label: &'static str,
    pub(super) rate: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) created: u64,
    /// Every round's rate, in run order.
    pub(super) rounds: Vec<f64>,
}

pub(super) struct ReplicaReport {
    pub(super) admin_build: &'static str,
    pub(super) sizes: Sizes,
    pub(super) creates: Vec<Creates>,
    /// Deactivation through A → both Envoys (fed by B) refuse the key, sorted.
    pub(super) cross_ms: Vec<f64>,
    /// Of which: until A acknowledged the deactivation, sorted.
    pub(super) cross_ack_ms: Vec<f64>,
    /// A's own request histogram for the deactivations: (answered within 0.5 s, all).
    pub(super) cross_admin_within: (u64, u64),
    /// Over two PostgreSQL replicas, and (full runs) over one sled admin as the baseline.
    pub(super) fanouts: Vec<Fanout>,
    pub(super) nofile: u64,
    /// `/proc/loadavg` (1, 5, 15 min) when the part started.
    pub(super) loadavg_start: String,
}

/// A business created through `admin`.
fn business(addr: &str) -> Result<String, String> {
    let r = operator(addr, "POST", "/v1/businesses", Some(r#"{"name":"Replica bench"}"#), 201)?;
    r.str("id").map(str::to_owned).ok_or_else(|| "no business id".into())
}

/// A replica over `url` on a free port.
fn start_replica(bin: &Path, url: &str, log: PathBuf) -> Result<Admin, String> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--addr", &addr, "--store", url]);
    cmd.env("KEYGATE_SEAL_KEY", crate::crash_replicas::SEAL_KEY);
    cmd.env("KEYGATE_OPERATOR_TOKEN", OPERATOR_TOKEN).env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN).env("RUST_LOG", "warn").env("NO_COLOR", "1");
    stack::start_admin(cmd, log, &addr)
}

/// An Envoy (2 workers) with the keygate filter whose admin cluster is `feed` only.
fn start_feed_envoy(p: &Paths, dir: &Path, name: &str, feed: &Admin) -> Result<Envoy, String> {
    let port = feed.addr.rsplit(':').next().and_then(|x| x.parse().ok()).ok_or("admin port")?;
    let json = keygate_json(KEY_ROUTE);
    let wasm = p.wasm.to_string_lossy().into_owned();
    start_envoy_workers(p, dir, name, &[("KEYGATE_WASM", &wasm), ("KEYGATE_JSON", &json)], port, 2)
}

pub(super) fn run(p: &Paths, admin_bin: &Path, admin_build: &'static str, quick: bool, dir: &Path) -> Result<ReplicaReport, String> {
    let sizes = Sizes::new(quick);
    let loadavg_start = super::loadavg();
    // Every simulated proxy holds a socket in xtask and one in a replica.
    let nofile = crate::sys::raise_nofile_limit()?;
    if nofile < (sizes.proxies as u64) * 2 + 256 {
        return Err(format!("open-file limit {nofile} is too low for {} simulated proxies (ulimit -n)", sizes.proxies));
    }
    let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()));
    let dir = dir.join("replicas");
    mkdir(&dir)?;
    let cluster = postgres::start(p)?;
    let (url1, url2) = (cluster.create_database("bench_one")?, cluster.create_database("bench_two")?);
    step(&format!("replicas: sled, PostgreSQL x1 and x2 ({admin_build} admin); logs in {}", dir.display()));
    mkdir(&dir.join("sled"))?;
    let sled = start_admin_with(admin_bin, &dir.join("sled"), None, &[])?;
    let one = start_replica(admin_bin, &url1, dir.join("admin-pg1.log"))?;
    let a = start_replica(admin_bin, &url2, dir.join("admin-pg2-a.log"))?;
    let b = start_replica(admin_bin, &url2, dir.join("admin-pg2-b.log"))?;

    let configs: [(&'static str, Vec<String>); 3] = [
        ("sled (one admin)", vec![sled.addr.clone()]),
        ("PostgreSQL, one replica", vec![one.addr.clone()]),
        ("PostgreSQL, two replicas", vec![a.addr.clone(), b.addr.clone()]),
    ];
    let businesses: Vec<String> = configs.iter().map(|(_, addrs)| business(&addrs[0])).collect::<Result<_, _>>()?;
    let mut runs: Vec<Vec<(f64, Vec<f64>)>> = vec![Vec::new(); configs.len()];
    for round in 0..sizes.create_rounds {
        step(&format!(
            "durable key creates, round {} of {}: {CLIENTS} clients, {} s per store",
            round + 1,
            sizes.create_rounds,
            sizes.create_secs
        ));
        for (i, (label, addrs)) in configs.iter().enumerate() {
            let (rate, lat) = creates(addrs, &businesses[i], Duration::from_secs(sizes.create_secs))?;
            println!("    {label:<26} {rate:>8.0} creates/s  p50 {:.1} ms  p99 {:.1} ms", percentile(&lat, 50.0), percentile(&lat, 99.0));
            runs[i].push((rate, lat));
        }
    }
    let creates: Vec<Creates> = configs
        .iter()
        .zip(runs)
        .map(|((label, _), mut rs)| {
            let rounds: Vec<f64> = rs.iter().map(|r| r.0).collect();
            rs.sort_by(|x, y| x.0.total_cmp(&y.0));
            let (rate, lat) = rs.swap_remove(rs.len() / 2);
            Creates { label, rate, p50_ms: percentile(&lat, 50.0), p99_ms: percentile(&lat, 99.0), created: lat.len() as u64, rounds }
        })
        .collect();
    drop(one);

    step("two Envoys (2 workers each) long-polling replica B only");
    let mut envoys = vec![start_feed_envoy(p, &dir, "feed-b-1", &b)?, start_feed_envoy(p, &dir, "feed-b-2", &b)?];
    for e in &mut envoys {
        envoy_ready(e)?;
    }
    let envoy_addrs: Vec<String> = envoys.iter().map(Envoy::addr).collect();
    let biz = &businesses[2];
    let before = deactivations_timed(&a.addr)?;
    let (cross_ms, cross_ack_ms) = cross_replica(&a.addr, biz, &envoy_addrs, sizes.revocations)?;
    let after = deactivations_timed(&a.addr)?;
    let cross_admin_within = (after.0 - before.0, after.1 - before.1);

    let pg_data = p.root.join("target/keygate-pg/data");
    let replicas = [(&a, "replica A (takes the writes)"), (&b, "replica B (feeds the Envoys)")];
    let mut fanouts = vec![proxies::fanout("two PostgreSQL replicas", &replicas, biz, &envoy_addrs, &sizes, Some(&pg_data))?];
    for e in &mut envoys {
        e.proc.alive()?;
    }
    drop(envoys);
    drop((a, b));
    if !quick {
        // The same fan-out on one sled admin: the side-by-side baseline on this machine.
        step("two Envoys (2 workers each) on the sled admin, for the baseline");
        let mut envoys = vec![start_feed_envoy(p, &dir, "feed-sled-1", &sled)?, start_feed_envoy(p, &dir, "feed-sled-2", &sled)?];
        for e in &mut envoys {
            envoy_ready(e)?;
        }
        let envoy_addrs: Vec<String> = envoys.iter().map(Envoy::addr).collect();
        fanouts.push(proxies::fanout("one sled admin (baseline)", &[(&sled, "sled admin")], &businesses[0], &envoy_addrs, &sizes, None)?);
        for e in &mut envoys {
            e.proc.alive()?;
        }
    }
    drop(sled);
    drop(cluster);
    Ok(ReplicaReport { admin_build, sizes, creates, cross_ms, cross_ack_ms, cross_admin_within, fanouts, nofile, loadavg_start })
}

/// From admin's `/metrics`: deactivations it answered within 0.5 s, and all of them (its
/// own clock, from request to answer: tells its time from the client's and the network's).
fn deactivations_timed(addr: &str) -> Result<(u64, u64), String> {
    let metrics = http::get(addr, "/metrics", T)?.body;
    let count = |prefix: &str| metrics.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    let route = "route=\"/v1/keys/{id}/deactivate\"";
    Ok((
        count(&format!("keygate_admin_request_duration_seconds_bucket{{{route},le=\"0.5\"}} ")),
        count(&format!("keygate_admin_request_duration_seconds_count{{{route}}} ")),
    ))
}

/// `CLIENTS` threads, each on its own keep-alive connection to one of `addrs` (in turn),
/// creating keys for `secs`: (creates/s, every latency in ms, sorted).
fn creates(addrs: &[String], business: &str, secs: Duration) -> Result<(f64, Vec<f64>), String> {
    let path = format!("/v1/businesses/{business}/keys");
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, path, stop) = (addrs[c % addrs.len()].clone(), path.clone(), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<Vec<f64>, String> {
                let auth = format!("Bearer {OPERATOR_TOKEN}");
                let mut conn = Conn::open(&addr, T)?;
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let (status, body) =
                        conn.request("POST", &path, &[("Authorization", &auth)], Some(r#"{"kind":"sk","mode":"live"}"#))?;
                    if status != 201 || !body.contains("\"key\"") {
                        return Err(format!("create key at {addr}: HTTP {status}: {}", body.chars().take(200).collect::<String>()));
                    }
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut first_err = None;
    for t in threads {
        match t.join().map_err(|_| "a create thread panicked".to_string()).and_then(|r| r) {
            Ok(l) => all.extend(l),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    // Requests still in flight at the stop finish after it: count them over the real span.
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    if all.is_empty() {
        return Err(format!("no key was created through {}", addrs.join(" + ")));
    }
    all.sort_by(f64::total_cmp);
    Ok((all.len() as f64 / elapsed, all))
}

/// `n` times: a new key through A, accepted by every Envoy, then deactivated through A;
/// the time until every Envoy refuses it (each probed by its own thread), and until A's
/// acknowledgement. Both sorted, in ms.
fn cross_replica(a: &str, business: &str, envoys: &[String], n: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    step(&format!("cross-replica revocation: deactivate through A, {} Envoys fed by B refuse it; {n} keys", envoys.len()));
    let (mut both, mut ack) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let (id, key) = create_key(a, business)?;
        wait_accepted(envoys, &key)?;
        let probes: Vec<_> = envoys
            .iter()
            .map(|e| {
                let (e, key) = (e.clone(), key.clone());
                std::thread::spawn(move || until_refused(&e, &key, Duration::from_secs(30)))
            })
            .collect();
        let t0 = Instant::now();
        operator(a, "POST", &format!("/v1/keys/{id}/deactivate"), None, 200)?;
        ack.push(t0.elapsed().as_secs_f64() * 1000.0);
        let mut last = t0;
        for probe in probes {
            last = last.max(probe.join().map_err(|_| "a probe thread panicked".to_string())??);
        }
        both.push(last.duration_since(t0).as_secs_f64() * 1000.0);
    }
    both.sort_by(f64::total_cmp);
    ack.sort_by(f64::total_cmp);
    println!(
        "    deactivated through A → refused by both Envoys: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (A acknowledged: p50 {:.1} ms, p99 {:.1} ms)",
        percentile(&both, 50.0),
        percentile(&both, 99.0),
        both.last().copied().unwrap_or(f64::NAN),
        percentile(&ack, 50.0),
        percentile(&ack, 99.0)
    );
    Ok((both, ack))
}
