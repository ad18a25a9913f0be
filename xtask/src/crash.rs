//! `cargo xtask crash-test [--rounds N] [--clients C]`: acknowledged writes survive
//! `kill -9` of keygate-admin.
//!
//! One admin binary (the real one, `target/debug/keygate-admin`) on a fresh data directory.
//! Each round, C concurrent clients create API keys and log in with them (each login with a
//! new `session_id`, which admin stores) as fast as they can, while the admin is SIGKILLed
//! at a random moment. It is then restarted on the same directory: it must open the store
//! and serve again, and every write that got a 2xx — in this round or any earlier one — must
//! be there: each acknowledged key is listed and logs in, each acknowledged session gives
//! back the very token it was acknowledged with. Prints rounds, writes acknowledged, writes
//! lost; fails if any write was lost or the store did not open.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http;
use crate::json::{quote, Json};
use crate::{fail, run, step, Paths};

pub(crate) const OPERATOR: &str = "kgo_crash_test_operator_token_000000";
pub(crate) const PROXY: &str = "kgp_crash_test_proxy_token_000000000";
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn cmd_crash_test(p: &Paths, args: &[String]) -> ExitCode {
    let mut rounds = 20;
    let mut clients = 64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().and_then(|v| v.parse::<usize>().ok()).filter(|v| *v > 0);
        match (a.as_str(), value) {
            ("--rounds", Some(v)) => rounds = v,
            ("--clients", Some(v)) => clients = v,
            _ => return fail("usage: cargo xtask crash-test [--rounds N] [--clients C]"),
        }
    }
    match crash_test(p, rounds, clients) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A key admin acknowledged (201), and the sessions acknowledged for it (200 on login).
#[derive(Clone)]
struct Acked {
    id: String,
    key: String,
    sessions: Vec<(String, String)>,
}

pub(crate) struct Admin {
    child: Child,
    pub(crate) addr: String,
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_admin(bin: &Path, data: &Path, log: &Path) -> Result<Admin, String> {
    let err = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("KEYGATE_OPERATOR_TOKEN", OPERATOR)
        .env("KEYGATE_PROXY_TOKEN", PROXY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let mut admin = Admin { child, addr: String::new() };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => admin.addr = addr,
        Err(_) => return Err(format!("keygate-admin did not open its store and listen within 60 s; log {}", log.display())),
    }
    let health = http::get(&admin.addr, "/healthz", TIMEOUT)?;
    if health.status != 200 {
        return Err(format!("/healthz answered {} after restart: {}", health.status, health.body));
    }
    Ok(admin)
}

fn post(addr: &str, path: &str, bearer: Option<&str>, body: &str) -> Result<http::Response, String> {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http::request("POST", addr, path, &headers, Some(body), TIMEOUT)
}

/// A random number below `n` from the OS (std has no generator).
fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b) % n.max(1)
}

pub fn crash_test(p: &Paths, rounds: usize, clients: usize) -> Result<(), String> {
    let what = "cargo build -p keygate-admin";
    step(what);
    run(crate::cargo(p, &["build", "-p", "keygate-admin"]).stdin(Stdio::null()), what)?;
    // One directory per run: two runs at once (CI and a developer) never share a store.
    let work: PathBuf = p.root.join("target").join("crash-test").join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let (data, log) = (work.join("data"), work.join("admin.log"));
    step(&format!("crash test: {rounds} rounds x {clients} clients, SIGKILL at a random moment; data {}", data.display()));

    let mut admin = start_admin(&p.admin, &data, &log)?;
    let created = post(&admin.addr, "/v1/businesses", Some(OPERATOR), r#"{"name": "Crash Test"}"#)?;
    let business = Json::parse(&created.body).ok().and_then(|j| j.str("id").map(str::to_owned)).ok_or_else(|| format!("create business: {} {}", created.status, created.body))?;

    // The check can fail: a write admin never acknowledged is reported lost.
    let fake = Acked { id: "key_NeverIssued00000".into(), key: "sk_live_NeverIssuedNeverIssuedNeverIssue000000".into(), sessions: vec![("never".into(), "never".into())] };
    if verify(&admin.addr, &business, &[fake])?.1.len() != 3 {
        return Err("the crash test's check does not notice a missing key and session".into());
    }
    let mut acked: Vec<Acked> = Vec::new();
    let (mut total_acked, mut total_lost) = (0usize, 0usize);
    let started = Instant::now();
    for round in 1..=rounds {
        let round_acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for client in 0..clients {
            let (addr, business, round_acked, stop, attempts) = (admin.addr.clone(), business.clone(), Arc::clone(&round_acked), Arc::clone(&stop), Arc::clone(&attempts));
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let body = format!(r#"{{"kind": "sk", "mode": "live", "name": {}}}"#, quote(&format!("r{round}c{client}n{n}")));
                    let Ok(resp) = post(&addr, &format!("/v1/businesses/{business}/keys"), Some(OPERATOR), &body) else { break };
                    if resp.status != 201 {
                        continue;
                    }
                    let Some(j) = Json::parse(&resp.body).ok() else { continue };
                    let (Some(id), Some(key)) = (j.str("id"), j.str("key")) else { continue };
                    let index = {
                        let mut list = round_acked.lock().unwrap_or_else(|e| e.into_inner());
                        list.push(Acked { id: id.to_owned(), key: key.to_owned(), sessions: Vec::new() });
                        list.len() - 1
                    };
                    let session = format!("crash-r{round}-c{client}-n{n}");
                    let login = format!(r#"{{"api_key": {}, "session_id": {}}}"#, quote(key), quote(&session));
                    n += 1;
                    let Ok(resp) = post(&addr, "/auth/login", None, &login) else { break };
                    if resp.status == 200 {
                        if let Some(token) = Json::parse(&resp.body).ok().and_then(|j| j.str("access_token").map(str::to_owned)) {
                            let mut list = round_acked.lock().unwrap_or_else(|e| e.into_inner());
                            list[index].sessions.push((session, token));
                        }
                    }
                }
            }));
        }
        // Kill at a random moment: 100 ms to 1.6 s into the round.
        std::thread::sleep(Duration::from_millis(100 + random_below(1500)));
        let _ = admin.child.kill(); // SIGKILL
        let _ = admin.child.wait();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            let _ = t.join();
        }
        drop(admin);
        let this_round = std::mem::take(&mut *round_acked.lock().unwrap_or_else(|e| e.into_inner()));
        acked.extend(this_round.iter().cloned());

        admin = start_admin(&p.admin, &data, &log).map_err(|e| format!("round {round}: the store did not reopen after SIGKILL: {e}"))?;
        let (checked, lost) = verify(&admin.addr, &business, &acked)?;
        let sessions: usize = this_round.iter().map(|a| a.sessions.len()).sum();
        total_acked = checked;
        total_lost += lost.len();
        println!(
            "==> round {round}/{rounds}: {} requests, {} keys + {sessions} sessions acknowledged this round; {checked} acknowledged writes so far re-checked, {} lost",
            attempts.load(Ordering::SeqCst),
            this_round.len(),
            lost.len()
        );
        for l in lost.iter().take(10) {
            eprintln!("xtask crash-test: LOST {l}");
        }
        if !lost.is_empty() {
            break;
        }
    }
    println!("==> crash test: {rounds} rounds in {:.0} s, {total_acked} writes acknowledged (keys + sessions), {total_lost} lost", started.elapsed().as_secs_f64());
    if total_lost > 0 {
        return Err(format!("{total_lost} acknowledged writes were lost after kill -9 (admin log {})", log.display()));
    }
    if total_acked == 0 {
        return Err("no write was acknowledged before the kill; the test proved nothing".into());
    }
    drop(admin);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Checks every acknowledged write against the restarted admin; returns how many writes
/// were checked and a description of each lost one.
fn verify(addr: &str, business: &str, acked: &[Acked]) -> Result<(usize, Vec<String>), String> {
    let listed = http::request("GET", addr, &format!("/v1/businesses/{business}/keys"), &[("Authorization", &format!("Bearer {OPERATOR}"))], None, TIMEOUT)?;
    if listed.status != 200 {
        return Err(format!("list keys after restart: {} {}", listed.status, listed.body));
    }
    let mut lost = Vec::new();
    let mut checked = 0;
    for a in acked {
        checked += 1;
        if !listed.body.contains(&quote(&a.id)) {
            lost.push(format!("key {} is not listed", a.id));
        }
        let login = format!(r#"{{"api_key": {}}}"#, quote(&a.key));
        match post(addr, "/auth/login", None, &login) {
            Ok(r) if r.status == 200 => {}
            Ok(r) => lost.push(format!("key {}: login answered {}", a.id, r.status)),
            Err(e) => return Err(e),
        }
        for (session, token) in &a.sessions {
            checked += 1;
            let again = format!(r#"{{"api_key": {}, "session_id": {}}}"#, quote(&a.key), quote(session));
            let r = post(addr, "/auth/login", None, &again)?;
            let same = r.status == 200 && Json::parse(&r.body).ok().and_then(|j| j.str("access_token").map(str::to_owned)).as_deref() == Some(token.as_str());
            if !same {
                lost.push(format!("session {session} of key {}: a new token instead of the acknowledged one ({})", a.id, r.status));
            }
        }
    }
    Ok((checked, lost))
}
