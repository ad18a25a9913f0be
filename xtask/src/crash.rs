//! `cargo xtask crash-test [--rounds N] [--clients C]`: acknowledged writes survive
//! `kill -9` of keygate-admin, in admin and through Envoy.
//!
//! One admin binary (the real one, `target/debug/keygate-admin`) on a fresh data directory
//! and a fixed loopback port, and one Envoy running the repository's envoy.yaml with the
//! real keygate_filter.wasm (ports rewritten, rate limits lifted) in front of keygate-echo;
//! Envoy stays up across admin's deaths, as in production. Each round, C concurrent clients
//! create API keys and log in with them (each login with a new `session_id`, which admin
//! stores) as fast as they can, while the admin is SIGKILLed at a random moment. It is then
//! restarted on the same directory and port: it must open the store and serve again, and
//! every write that got a 2xx, in this round or any earlier one, must be there:
//! - in admin: each acknowledged key is listed and logs in, each acknowledged session gives
//!   back the very token it was acknowledged with;
//! - through Envoy, once the filter has synced (a key created after the restart passes, and
//!   the changelog is applied in order): each acknowledged key passes a key route (200) and
//!   each acknowledged login token passes, with its key and business, a route that needs
//!   all three (200).
//!
//! Prints rounds, writes acknowledged, writes lost; fails if any write was lost, the store
//! did not open or the filter did not sync.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::json::{quote, Json};
use crate::proc::{free_port, Proc};
use crate::stack::{self, Admin, EnvoyYaml};
use crate::{http, step, Paths};

pub(crate) const OPERATOR: &str = "kgo_crash_test_operator_token_000000";
pub(crate) const PROXY: &str = "kgp_crash_test_proxy_token_000000000";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A key admin acknowledged (201), the sessions acknowledged for it (200 on login), and
/// whether its deactivation was acknowledged.
#[derive(Clone)]
pub(crate) struct Acked {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) sessions: Vec<(String, String)>,
    pub(crate) deactivated: Deactivation,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deactivation {
    /// Never asked: the key must pass.
    No,
    /// Acknowledged (200): the key must be refused, by admin and by Envoy.
    Yes,
    /// Asked, but the answer never came (the admin died): either outcome is right.
    Unknown,
}

/// Every `DEACTIVATE_EVERY`th key a client creates is deactivated again.
const DEACTIVATE_EVERY: usize = 4;

/// One client's writes until `stop`: create a key, log in with it under a new session id,
/// deactivate every [`DEACTIVATE_EVERY`]th one; each acknowledged write is recorded.
fn client_writes(addr: &str, business: &str, label: &str, acked: &Mutex<Vec<Acked>>, stop: &AtomicBool, attempts: &AtomicU64) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        attempts.fetch_add(1, Ordering::SeqCst);
        let body = format!(r#"{{"kind": "sk", "mode": "live", "name": {}}}"#, quote(&format!("{label}n{n}")));
        let Ok(resp) = post(addr, &format!("/v1/businesses/{business}/keys"), Some(OPERATOR), &body) else { break };
        if resp.status != 201 {
            continue;
        }
        let Some(j) = Json::parse(&resp.body).ok() else { continue };
        let (Some(id), Some(key)) = (j.str("id"), j.str("key")) else { continue };
        let index = {
            let mut list = acked.lock().unwrap_or_else(|e| e.into_inner());
            list.push(Acked { id: id.to_owned(), key: key.to_owned(), sessions: Vec::new(), deactivated: Deactivation::No });
            list.len() - 1
        };
        let session = format!("crash-{label}-n{n}");
        let login = format!(r#"{{"api_key": {}, "session_id": {}}}"#, quote(key), quote(&session));
        n += 1;
        let Ok(resp) = post(addr, "/auth/login", None, &login) else { break };
        if resp.status == 200 {
            if let Some(token) = Json::parse(&resp.body).ok().and_then(|j| j.str("access_token").map(str::to_owned)) {
                acked.lock().unwrap_or_else(|e| e.into_inner())[index].sessions.push((session, token));
            }
        }
        if n % DEACTIVATE_EVERY == 0 {
            acked.lock().unwrap_or_else(|e| e.into_inner())[index].deactivated = Deactivation::Unknown;
            let Ok(resp) = post(addr, &format!("/v1/keys/{id}/deactivate"), Some(OPERATOR), "{}") else { break };
            if resp.status == 200 {
                acked.lock().unwrap_or_else(|e| e.into_inner())[index].deactivated = Deactivation::Yes;
            }
        }
    }
}

/// One round's clients, each running [`client_writes`] on a thread of its own.
pub(crate) struct Writers {
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// `clients` clients of round `round`; client `c` writes through `addrs[c % addrs.len()]`
    /// (`addrs` not empty).
    pub(crate) fn start(addrs: &[String], business: &str, round: usize, clients: usize) -> Writers {
        let writers = Writers {
            acked: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            attempts: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
        };
        let threads = (0..clients)
            .map(|client| {
                let (addr, business) = (addrs[client % addrs.len()].clone(), business.to_owned());
                let (acked, stop, attempts) = (Arc::clone(&writers.acked), Arc::clone(&writers.stop), Arc::clone(&writers.attempts));
                std::thread::spawn(move || client_writes(&addr, &business, &format!("r{round}-c{client}"), &acked, &stop, &attempts))
            })
            .collect();
        Writers { threads, ..writers }
    }

    /// Stops every client; returns what they had acknowledged and how many requests they began.
    pub(crate) fn stop(self) -> (Vec<Acked>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()));
        (acked, self.attempts.load(Ordering::SeqCst))
    }
}

/// Starts admin on `addr` (a fixed port, so Envoy's cluster finds it after each restart).
pub(crate) fn start_admin(bin: &Path, data: &Path, log: &Path, addr: &str) -> Result<Admin, String> {
    let mut cmd = Command::new(bin);
    stack::admin_serve(&mut cmd, addr, data, OPERATOR, PROXY);
    // Every acknowledged key is logged in again from this one address when checking.
    cmd.env("KEYGATE_LOGIN_RATE_PER_CLIENT", "1000000");
    stack::start_admin_listening(cmd, log)
}

pub(crate) fn post(addr: &str, path: &str, bearer: Option<&str>, body: &str) -> Result<http::Response, String> {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http::request("POST", addr, path, &headers, Some(body), TIMEOUT)
}

/// A random number below `n` from the OS (std has no generator).
pub(crate) fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b) % n.max(1)
}

pub fn crash_test(p: &Paths, rounds: usize, clients: usize) -> Result<(), String> {
    crate::setup_and_build(p)?; // Envoy, the .wasm, admin and echo; each step is skipped when done
                                // One directory per run: two runs at once (CI and a developer) never share a store.
    let work: PathBuf = p.root.join("target").join("crash-test").join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let (data, log) = (work.join("data"), work.join("admin.log"));
    step(&format!("crash test: {rounds} rounds x {clients} clients, SIGKILL at a random moment; data {}", data.display()));

    let admin_addr = format!("127.0.0.1:{}", free_port()?);
    let mut admin = start_admin(&p.admin, &data, &log, &admin_addr)?;
    let created = post(&admin.addr, "/v1/businesses", Some(OPERATOR), r#"{"name": "Crash Test"}"#)?;
    let business = Json::parse(&created.body)
        .ok()
        .and_then(|j| j.str("id").map(str::to_owned))
        .ok_or_else(|| format!("create business: {} {}", created.status, created.body))?;
    let envoy = Envoy::start(p, &work, &[admin_addr.as_str()])?;
    step(&format!("Envoy on {} with the keygate filter; admin on {admin_addr}", envoy.addr));

    let mut acked: Vec<Acked> = Vec::new();
    // The checks can fail: a write admin never acknowledged is reported lost, by admin and by Envoy.
    let fake = Acked {
        id: "key_NeverIssued00000".into(),
        key: "sk_live_NeverIssuedNeverIssuedNeverIssue000000".into(),
        sessions: vec![("never".into(), "never".into())],
        deactivated: Deactivation::No,
    };
    if verify(&admin.addr, &business, std::slice::from_ref(&fake))?.1.len() != 3 {
        return Err("the crash test's check does not notice a missing key and session".into());
    }
    acked.push(sync_sentinel(&admin.addr, &envoy, &business)?);
    let bogus_token = Acked { sessions: vec![("never".into(), "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into())], ..acked[0].clone() };
    // Lost: the unknown key, its session's token, the bad token; passes: the sentinel key.
    if verify_through_envoy(&envoy, &business, &[fake, bogus_token])?.1.len() != 3 {
        return Err("the crash test's check through Envoy does not notice a missing key and a bad token".into());
    }
    // A key said to be deactivated that still passes is a wrong decision, and is noticed.
    let not_deactivated = Acked { deactivated: Deactivation::Yes, sessions: Vec::new(), ..acked[0].clone() };
    if verify(&admin.addr, &business, std::slice::from_ref(&not_deactivated))?.1.len() != 1
        || verify_through_envoy(&envoy, &business, std::slice::from_ref(&not_deactivated))?.1.len() != 1
    {
        return Err("the crash test's checks do not notice an active key that should be deactivated".into());
    }
    let (mut total_acked, mut total_lost) = (0usize, 0usize);
    let started = Instant::now();
    for round in 1..=rounds {
        let writers = Writers::start(std::slice::from_ref(&admin.addr), &business, round, clients);
        // Kill at a random moment: 100 ms to 1.6 s into the round.
        std::thread::sleep(Duration::from_millis(100 + random_below(1500)));
        admin.proc.kill(); // SIGKILL
        let (this_round, attempts) = writers.stop();
        drop(admin);
        acked.extend(this_round.iter().cloned());
        envoy.alive()?;

        admin = start_admin(&p.admin, &data, &log, &admin_addr)
            .map_err(|e| format!("round {round}: the store did not reopen after SIGKILL: {e}"))?;
        let (checked, mut lost) = verify(&admin.addr, &business, &acked)?;
        // Through Envoy: once a key made now passes, the filter has applied every earlier change.
        let synced = Instant::now();
        acked.push(sync_sentinel(&admin.addr, &envoy, &business).map_err(|e| format!("round {round}: {e}"))?);
        let sync_ms = synced.elapsed().as_millis();
        let (through_envoy, envoy_lost) = verify_through_envoy(&envoy, &business, &acked)?;
        lost.extend(envoy_lost);
        let sessions: usize = this_round.iter().map(|a| a.sessions.len()).sum();
        total_acked = checked;
        total_lost += lost.len();
        println!(
            "==> round {round}/{rounds}: {} requests, {} keys + {sessions} sessions acknowledged this round; {checked} acknowledged writes so far re-checked in admin, {through_envoy} through Envoy (filter synced in {sync_ms} ms), {} lost",
            attempts,
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
    println!("==> crash test: {rounds} rounds in {:.0} s, {total_acked} writes acknowledged (keys + sessions), {total_lost} lost (checked in admin and through Envoy)", started.elapsed().as_secs_f64());
    if total_lost > 0 {
        return Err(format!("{total_lost} acknowledged writes were lost after kill -9 (logs in {})", work.display()));
    }
    if total_acked == 0 {
        return Err("no write was acknowledged before the kill; the test proved nothing".into());
    }
    envoy.alive()?;
    drop(envoy);
    drop(admin);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// keygate-echo and an Envoy running envoy.yaml with the real filter, in front of admin.
pub(crate) struct Envoy {
    envoy: Mutex<Proc>,
    _echo: Proc,
    addr: String,
}

impl Envoy {
    /// Envoy whose admin cluster lists every address in `admins` (replicas of one store).
    pub(crate) fn start(p: &Paths, work: &Path, admins: &[&str]) -> Result<Envoy, String> {
        std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
        let (echo, echo_port) = stack::start_echo(p, work)?;
        let port = |addr: &str| addr.rsplit(':').next().and_then(|x| x.parse::<u16>().ok()).ok_or(format!("no port in {addr}"));
        let admin_port = port(admins.first().ok_or("no admin")?)?;
        // Every acknowledged key is checked after every round: lift the per-key hourly limit.
        let mut extra = vec![(
            "\"max_staleness_secs\": 600,".to_owned(),
            "\"max_staleness_secs\": 600, \"rate_limits\": {\"sk_per_hour\": 1000000000},".to_owned(),
        )];
        let endpoint = |port: u16| format!("- endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}");
        let mut endpoints = endpoint(admin_port);
        for other in &admins[1..] {
            endpoints.push_str(&format!("\n        {}", endpoint(port(other)?)));
        }
        extra.push((endpoint(admin_port), endpoints));
        let extra: Vec<(&str, &str)> = extra.iter().map(|(from, to)| (from.as_str(), to.as_str())).collect();
        let yaml = EnvoyYaml { admin_port, echo_port, wasm: &p.wasm, extra: &extra };
        let envoy = stack::start_envoy(p, work, &yaml, PROXY)?;
        Ok(Envoy { envoy: Mutex::new(envoy.proc), _echo: echo, addr: envoy.addr })
    }

    pub(crate) fn alive(&self) -> Result<(), String> {
        self.envoy.lock().unwrap_or_else(|e| e.into_inner()).alive()
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<http::Response, String> {
        http::request("GET", &self.addr, path, headers, None, TIMEOUT)
    }
}

/// Creates a key and waits (30 s at most) until it passes through Envoy: the filter then
/// holds every change admin made before it. Returns it as an acknowledged write.
pub(crate) fn sync_sentinel(admin: &str, envoy: &Envoy, business: &str) -> Result<Acked, String> {
    let resp = post(
        admin,
        &format!("/v1/businesses/{business}/keys"),
        Some(OPERATOR),
        r#"{"kind": "sk", "mode": "live", "name": "sync sentinel"}"#,
    )?;
    let j = Json::parse(&resp.body)
        .ok()
        .filter(|_| resp.status == 201)
        .ok_or_else(|| format!("create the sync sentinel key: {} {}", resp.status, resp.body))?;
    let (Some(id), Some(key)) = (j.str("id"), j.str("key")) else { return Err(format!("create key answered {}", resp.body)) };
    let sentinel = Acked { id: id.to_owned(), key: key.to_owned(), sessions: Vec::new(), deactivated: Deactivation::No };
    wait_until_passes(envoy, &sentinel)?;
    Ok(sentinel)
}

/// Waits (30 s at most) until `key` passes a key route through `envoy`.
pub(crate) fn wait_until_passes(envoy: &Envoy, key: &Acked) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        envoy.alive()?;
        let r = envoy.get("/key/crash-sync", &[("SECRET_KEY", &key.key)])?;
        if r.status == 200 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the filter did not sync a new key within 30 s after admin restarted (last answer {} {})",
                r.status, r.body
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks every acknowledged write through Envoy (8 clients): each key on a key route, each
/// login token with its key and business on a route that needs all three. Returns how many
/// requests were made and a description of each write that did not pass.
pub(crate) fn verify_through_envoy(envoy: &Envoy, business: &str, acked: &[Acked]) -> Result<(usize, Vec<String>), String> {
    let next = AtomicU64::new(0);
    let checked = AtomicU64::new(0);
    let lost: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                while let Some(a) = usize::try_from(next.fetch_add(1, Ordering::SeqCst)).ok().and_then(|i| acked.get(i)) {
                    // A deactivated key is refused (401) with or without its tokens.
                    let want = match a.deactivated {
                        Deactivation::No => 200,
                        Deactivation::Yes => 401,
                        Deactivation::Unknown => continue,
                    };
                    let mut requests: Vec<(String, Vec<(&str, String)>)> =
                        vec![(format!("key {}", a.id), vec![("SECRET_KEY", a.key.clone())])];
                    for (session, token) in &a.sessions {
                        requests.push((
                            format!("login token of session {session} (key {})", a.id),
                            vec![
                                ("Authorization", format!("Bearer {token}")),
                                ("SECRET_KEY", a.key.clone()),
                                ("businessId", business.to_owned()),
                            ],
                        ));
                    }
                    for (i, (what, headers)) in requests.iter().enumerate() {
                        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        let path = if i == 0 { "/key/crash-check" } else { "/crash-check" };
                        checked.fetch_add(1, Ordering::SeqCst);
                        match envoy.get(path, &headers) {
                            Ok(r) if r.status == want => {}
                            Ok(r) => lost.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                                "{what}: Envoy answered {} (want {want}) {}",
                                r.status,
                                r.body.chars().take(200).collect::<String>()
                            )),
                            Err(e) => {
                                *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(format!("through Envoy: {e}"));
    }
    envoy.alive()?;
    let checked = usize::try_from(checked.load(Ordering::SeqCst)).unwrap_or(usize::MAX);
    Ok((checked, lost.into_inner().unwrap_or_else(|e| e.into_inner())))
}

/// Checks every acknowledged write against the restarted admin; returns how many writes
/// were checked and a description of each lost one.
pub(crate) fn verify(addr: &str, business: &str, acked: &[Acked]) -> Result<(usize, Vec<String>), String> {
    let listed = http::request(
        "GET",
        addr,
        &format!("/v1/businesses/{business}/keys"),
        &[("Authorization", &format!("Bearer {OPERATOR}"))],
        None,
        TIMEOUT,
    )?;
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
        let want = match a.deactivated {
            Deactivation::No => 200,
            Deactivation::Yes => 401,
            Deactivation::Unknown => continue,
        };
        let login = format!(r#"{{"api_key": {}}}"#, quote(&a.key));
        match post(addr, "/auth/login", None, &login) {
            Ok(r) if r.status == want => {}
            Ok(r) => lost.push(format!("key {}: login answered {} (want {want})", a.id, r.status)),
            Err(e) => return Err(e),
        }
        if a.deactivated == Deactivation::Yes {
            continue;
        }
        for (session, token) in &a.sessions {
            checked += 1;
            let again = format!(r#"{{"api_key": {}, "session_id": {}}}"#, quote(&a.key), quote(session));
            let r = post(addr, "/auth/login", None, &again)?;
            let same = r.status == 200
                && Json::parse(&r.body).ok().and_then(|j| j.str("access_token").map(str::to_owned)).as_deref() == Some(token.as_str());
            if !same {
                lost.push(format!("session {session} of key {}: a new token instead of the acknowledged one ({})", a.id, r.status));
            }
        }
    }
    Ok((checked, lost))
}
