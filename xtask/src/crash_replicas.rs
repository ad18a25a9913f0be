//! `cargo xtask crash-test --store postgres`: the crash test over PostgreSQL, with two admin
//! replicas on one database behind two Envoys whose admin clusters list both.
//!
//! Each round, C clients write through both replicas (half each): create a key, log in with
//! it under a new session id, deactivate every fourth key. At a random moment one replica,
//! picked at random, is SIGKILLed; the other keeps serving its clients. Then:
//! - failover: a key created through the survivor must pass through both Envoys; the time
//!   from the kill is how long the filters took to move their feeds to the survivor (printed
//!   per round; bounded by the sentinel's 30 s);
//! - the killed replica is restarted on its port, and every write acknowledged so far, by
//!   either replica, is checked through it (keys listed and logging in, sessions giving back
//!   their acknowledged token, deactivated keys refused) and through both Envoys (keys pass,
//!   tokens pass with their key and business, deactivated keys get 401: a 200 there would be
//!   a wrong decision).
//!
//! The database is a throwaway cluster (`postgres::start`); stopped when the test ends.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::crash::{post, random_below, sync_sentinel, verify, verify_through_envoy, Acked, Envoy, Writers, OPERATOR, PROXY};
use crate::json::Json;
use crate::proc::free_port;
use crate::stack::{self, Admin};
use crate::{postgres, step, Paths};

/// A fixed seal key for the throwaway database (admin seals signing keys with it).
pub(crate) const SEAL_KEY: &str = "kgseal_Y3Jhc2gtdGVzdC1zZWFsLWtleS0wMDAwMDAwMDAwMDA";

/// Starts one replica on `addr` over the database at `url`.
fn start_replica(p: &Paths, url: &str, log: &std::path::Path, addr: &str) -> Result<Admin, String> {
    let mut cmd = Command::new(&p.admin);
    cmd.args(["serve", "--addr", addr]);
    cmd.env("KEYGATE_STORE", url).env("KEYGATE_SEAL_KEY", SEAL_KEY);
    cmd.env("KEYGATE_OPERATOR_TOKEN", OPERATOR).env("KEYGATE_PROXY_TOKEN", PROXY).env("RUST_LOG", "warn").env("NO_COLOR", "1");
    // Every acknowledged key is logged in again from this one address when checking.
    cmd.env("KEYGATE_LOGIN_RATE_PER_CLIENT", "1000000").env("KEYGATE_LOGIN_RATE_PER_KEY", "1000000");
    stack::start_admin_listening(cmd, log)
}

pub fn crash_test_replicas(p: &Paths, rounds: usize, clients: usize) -> Result<(), String> {
    crate::setup_and_build(p)?;
    let work: PathBuf = p.root.join("target").join("crash-test").join(format!("replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let cluster = postgres::start(p)?;
    step(&format!("crash test over PostgreSQL: {rounds} rounds x {clients} clients through 2 replicas, one SIGKILLed at random"));
    let addrs = [format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?)];
    let logs = [work.join("admin-a.log"), work.join("admin-b.log")];
    let mut replicas = Vec::new();
    for (addr, log) in addrs.iter().zip(&logs) {
        replicas.push(start_replica(p, &cluster.url, log, addr)?);
    }
    let created = post(&addrs[0], "/v1/businesses", Some(OPERATOR), r#"{"name": "Crash Test"}"#)?;
    let business = Json::parse(&created.body)
        .ok()
        .and_then(|j| j.str("id").map(str::to_owned))
        .ok_or_else(|| format!("create business: {} {}", created.status, created.body))?;
    let admins = [addrs[0].as_str(), addrs[1].as_str()];
    let envoys = [Envoy::start(p, &work.join("envoy-1"), &admins)?, Envoy::start(p, &work.join("envoy-2"), &admins)?];
    step(&format!("two Envoys, each with the admin cluster {} + {}", addrs[0], addrs[1]));
    let mut acked: Vec<Acked> = vec![synced(&addrs[1], &envoys, &business)?];
    let (mut total_acked, mut total_lost, mut slowest_failover) = (0usize, 0usize, Duration::ZERO);
    let started = Instant::now();
    for round in 1..=rounds {
        let writers = Writers::start(&addrs, &business, round, clients);
        std::thread::sleep(Duration::from_millis(100 + random_below(1500)));
        let victim = usize::from(random_below(2) == 1);
        let survivor = 1 - victim;
        replicas[victim].proc.kill(); // SIGKILL
        let killed = Instant::now();
        // The survivor's clients keep writing while the filter moves over.
        let failover =
            synced(&addrs[survivor], &envoys, &business).map_err(|e| format!("round {round}: after replica {victim} was killed: {e}"))?;
        let failover_ms = killed.elapsed();
        slowest_failover = slowest_failover.max(failover_ms);
        let (this_round, attempts) = writers.stop();
        acked.extend(this_round.iter().cloned());
        acked.push(failover);
        envoys.iter().try_for_each(Envoy::alive)?;
        replicas[victim] = start_replica(p, &cluster.url, &logs[victim], &addrs[victim])
            .map_err(|e| format!("round {round}: the killed replica did not start again: {e}"))?;
        let (checked, mut lost) = verify(&addrs[victim], &business, &acked)?;
        acked.push(synced(&addrs[victim], &envoys, &business).map_err(|e| format!("round {round}: {e}"))?);
        let mut through_envoy = 0;
        for envoy in &envoys {
            let (checked, envoy_lost) = verify_through_envoy(envoy, &business, &acked)?;
            through_envoy += checked;
            lost.extend(envoy_lost);
        }
        let sessions: usize = this_round.iter().map(|a| a.sessions.len()).sum();
        total_acked = checked;
        total_lost += lost.len();
        println!(
            "==> round {round}/{rounds}: replica {} killed; {} requests, {} keys + {sessions} sessions acknowledged this round; filter moved to the survivor in {} ms; {checked} writes re-checked through the restarted replica, {through_envoy} through the two Envoys, {} lost or wrong",
            ["a", "b"][victim],
            attempts,
            this_round.len(),
            failover_ms.as_millis(),
            lost.len()
        );
        for l in lost.iter().take(10) {
            eprintln!("xtask crash-test: LOST {l}");
        }
        if !lost.is_empty() {
            break;
        }
    }
    println!(
        "==> crash test over PostgreSQL: {rounds} rounds in {:.0} s, {total_acked} writes acknowledged, {total_lost} lost or wrong; slowest failover {} ms",
        started.elapsed().as_secs_f64(),
        slowest_failover.as_millis()
    );
    if total_lost > 0 {
        return Err(format!("{total_lost} acknowledged writes were lost or decided wrongly after kill -9 (logs in {})", work.display()));
    }
    if total_acked == 0 {
        return Err("no write was acknowledged before the kill; the test proved nothing".into());
    }
    envoys.iter().try_for_each(Envoy::alive)?;
    drop(envoys);
    drop(replicas);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A key created through `admin` once it passes through every Envoy (each filter then holds
/// every change made before it).
fn synced(admin: &str, envoys: &[Envoy], business: &str) -> Result<Acked, String> {
    let mut sentinel = None;
    for envoy in envoys {
        match &sentinel {
            None => sentinel = Some(sync_sentinel(admin, envoy, business)?),
            Some(key) => crate::crash::wait_until_passes(envoy, key)?,
        }
    }
    sentinel.ok_or_else(|| "no Envoy".to_owned())
}
