//! A flapping admin under load: admin is killed and restarted while keys change, and an
//! oracle of every raw key's state checks every answer the filter gives.

use keygate_core::{ApiKey, KeyKind, Mode};
use keygate_e2e::{plugin_json, random_bytes, Stack, StackOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::jwt_attacks::{eventually, ready_tenant};
use crate::key_attacks::{wasm_errors, wasm_vms_created};
use crate::Suite;

pub fn suites() -> Vec<Suite> {
    vec![Suite {
        name: "attacks_flapping",
        options: flapping_options,
        cases: &[("flapping_admin_under_load_makes_no_wrong_decision", flapping_admin)],
    }]
}

fn flapping_options() -> StackOptions {
    // No rate limit in the way: every answer is about the key's state.
    StackOptions { plugin_json: Some(plugin_json("\n  \"rate_limits\": {\"sk_per_hour\": 1000000000},", "")), ..StackOptions::default() }
}

/// How long after admin acknowledges a change the filter may still answer by the old state.
/// README: a change normally reaches every proxy within a second. Here admin may be killed
/// right after the acknowledgement, before the long-poll answer leaves; the filter retries
/// `poll_interval_ms` (1 s) after a failed feed call, and a restart takes well under a second.
const PROPAGATION: Duration = Duration::from_secs(3);

/// A raw key the test presents, and what the oracle knows of it. A change counts once
/// admin acknowledged it (2xx); from `PROPAGATION` after that the filter must agree.
#[derive(Clone, Debug)]
struct Cred {
    id: String,
    raw: String,
    /// The acknowledgement that made it valid (creation or rotation); None: never issued.
    valid_from: Option<Instant>,
    /// From when a refusal is acceptable: the first operation that may end it was sent (a
    /// deactivation or a rotation without grace), or its rotation grace may be over.
    doubt_from: Option<Instant>,
    /// From when it is surely dead: the acknowledged deactivation or rotation without grace,
    /// or the latest possible end of its grace.
    dead_from: Option<Instant>,
}

impl Cred {
    fn new(id: &str, raw: &str, valid_from: Option<Instant>) -> Cred {
        Cred { id: id.to_owned(), raw: raw.to_owned(), valid_from, doubt_from: None, dead_from: None }
    }

    fn doubt(&mut self, from: Instant) {
        self.doubt_from = Some(self.doubt_from.map_or(from, |d| d.min(from)));
    }

    fn kill(&mut self, from: Instant) {
        self.doubt(from);
        self.dead_from = Some(self.dead_from.map_or(from, |d| d.min(from)));
    }

    /// Why a 200 (`allowed`) or a 401 `invalid_api_key` for a request sent at `sent` and
    /// answered at `done` is wrong, if it is; and by how long after the acknowledgement the
    /// filter still answered by the old state (a lag within `PROPAGATION`).
    fn judge(&self, allowed: bool, sent: Instant, done: Instant) -> (Option<String>, Option<Duration>) {
        if allowed {
            match (self.valid_from, self.dead_from) {
                (None, _) => (Some("a key admin never issued was allowed".into()), None),
                (_, Some(dead)) if sent > dead + PROPAGATION => {
                    (Some(format!("allowed {:?} after its end was acknowledged", sent - dead)), None)
                }
                (_, Some(dead)) => (None, sent.checked_duration_since(dead)),
                _ => (None, None),
            }
        } else {
            match self.valid_from {
                Some(valid) if self.doubt_from.is_none_or(|d| done < d) => {
                    if sent > valid + PROPAGATION {
                        (Some(format!("refused {:?} after its creation or rotation was acknowledged", sent - valid)), None)
                    } else {
                        (None, sent.checked_duration_since(valid))
                    }
                }
                _ => (None, None),
            }
        }
    }
}

#[derive(Default)]
struct Oracle {
    creds: Vec<Cred>,
    /// Key ids with an operation in flight or whose state is not known (an operation that
    /// was not acknowledged): no new operation picks them; `unsettled` get deactivated until
    /// admin acknowledges it.
    busy: std::collections::HashSet<String>,
    unsettled: Vec<String>,
    wrong: Vec<String>,
    requests: u64,
    allowed: u64,
    refused: u64,
    designed_503: u64,
    max_lag: Duration,
    ops: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

impl Oracle {
    fn count(&mut self, op: &'static str, acked: bool) {
        let e = self.ops.entry(op).or_default();
        e.0 += 1;
        e.1 += u64::from(acked);
    }

    fn of_id(&mut self, id: &str) -> impl Iterator<Item = &mut Cred> {
        let id = id.to_owned();
        self.creds.iter_mut().filter(move |c| c.id == id)
    }
}

fn flap_secs() -> u64 {
    std::env::var("KEYGATE_FLAP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Load through Envoy while admin is killed (SIGKILL) and restarted every 5 s, and keys are
/// created, rotated (with and without grace) and deactivated; an oracle of every raw key's
/// state checks every answer (see [`Cred::judge`]). 15 s by default (CI),
/// `KEYGATE_FLAP_SECS=60` for the full run.
fn flapping_admin(stack: &Stack) {
    let t = ready_tenant(stack);
    let vms_before = wasm_vms_created(stack);
    let secs = flap_secs();
    let period = Duration::from_secs(5);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let (sk_id, sk_raw) = {
        let (status, keys) =
            stack.admin(reqwest::Method::GET, &format!("/v1/businesses/{}/keys", t.business_id), Some(keygate_e2e::OPERATOR_TOKEN), None);
        assert_eq!(status, 200, "{keys}");
        let id =
            keys.as_array().or_else(|| keys["keys"].as_array()).and_then(|a| a.first()).and_then(|k| k["id"].as_str()).unwrap().to_owned();
        (id, t.sk.clone())
    };
    let mut oracle = Oracle::default();
    oracle.creds.push(Cred::new(&sk_id, &sk_raw, Some(started - PROPAGATION)));
    for _ in 0..8 {
        let raw = ApiKey::generate(KeyKind::Sk, Mode::Live, random_bytes(128)).unwrap().expose().to_owned();
        oracle.creds.push(Cred::new("", &raw, None));
    }
    let oracle = std::sync::Mutex::new(oracle);
    // POST to admin as the operator: Some(body) on 2xx, None when it failed or admin was down.
    let admin_call = |path: &str, body: Value| -> Option<Value> {
        let resp = stack
            .http
            .post(format!("{}{path}", stack.admin_url))
            .bearer_auth(keygate_e2e::OPERATOR_TOKEN)
            .json(&body)
            .timeout(Duration::from_secs(3))
            .send()
            .ok()?;
        resp.status().is_success().then(|| resp.json().ok()).flatten()
    };
    let deactivate = |id: &str| {
        let sent = Instant::now();
        oracle.lock().unwrap().of_id(id).for_each(|c| c.doubt(sent));
        let acked = admin_call(&format!("/v1/keys/{id}/deactivate"), json!({})).is_some();
        let at = Instant::now();
        let mut o = oracle.lock().unwrap();
        o.count("deactivate", acked);
        if acked {
            o.of_id(id).for_each(|c| c.kill(at));
            o.unsettled.retain(|u| u != id);
        } else if !o.unsettled.iter().any(|u| u == id) {
            o.unsettled.push(id.to_owned());
        }
        acked
    };
    let restarts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        // Load: 4 clients through Envoy, each request checked against the oracle.
        for client in 0..4u64 {
            let oracle = &oracle;
            scope.spawn(move || {
                let mut n = client + 1;
                while Instant::now() < deadline {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let cred = {
                        let o = oracle.lock().unwrap();
                        o.creds[(n >> 33) as usize % o.creds.len()].clone()
                    };
                    let sent = Instant::now();
                    let (status, body) = stack.through_envoy("GET", "/key/flap", &[("SECRET_KEY", cred.raw.as_bytes())]);
                    let done = Instant::now();
                    let mut o = oracle.lock().unwrap();
                    o.requests += 1;
                    // Judge by the oracle as it is now (it may have learnt of an acknowledgement
                    // while the request was in flight; `doubt_from` covers that).
                    let now = o.creds.iter().find(|c| c.raw == cred.raw).cloned().unwrap();
                    let code = body["code"].as_str().unwrap_or("").to_owned();
                    let verdict = match (status, code.as_str()) {
                        (503, "auth_unavailable") => {
                            o.designed_503 += 1;
                            (None, None)
                        }
                        (200, _) => {
                            o.allowed += 1;
                            now.judge(true, sent, done)
                        }
                        (401, "invalid_api_key") => {
                            o.refused += 1;
                            now.judge(false, sent, done)
                        }
                        _ => (Some(format!("unexpected answer {status} {body}")), None),
                    };
                    if let Some(why) = verdict.0 {
                        o.wrong.push(format!("key {} ({status}): {why}; oracle {:?}", now.id, Cred { raw: String::new(), ..now.clone() }));
                    }
                    if let Some(lag) = verdict.1 {
                        o.max_lag = o.max_lag.max(lag);
                    }
                }
            });
        }
        // Writes: every 300 ms create a key; every third round also deactivate or rotate a key
        // (see below); end keys whose last operation was not acknowledged.
        scope.spawn(|| {
            let mut round = 0u64;
            while Instant::now() < deadline {
                round += 1;
                let created = admin_call(&format!("/v1/businesses/{}/keys", t.business_id), json!({"kind": "sk", "mode": "live"}));
                let at = Instant::now();
                {
                    let mut o = oracle.lock().unwrap();
                    o.count("create", created.is_some());
                    if let Some(k) = &created {
                        o.creds.push(Cred::new(k["id"].as_str().unwrap(), k["key"].as_str().unwrap(), Some(at)));
                    }
                }
                let unsettled = oracle.lock().unwrap().unsettled.clone();
                for id in unsettled {
                    deactivate(&id);
                }
                if round.is_multiple_of(3) {
                    // In turn: deactivate (a key in a rotation grace if there is one: both its
                    // raw values must stop), rotate without grace, with 2 s, with 30 s of grace.
                    let op = (round / 3) % 4;
                    let victim = {
                        let mut o = oracle.lock().unwrap();
                        let busy = o.busy.clone();
                        let live =
                            |c: &&Cred| c.valid_from.is_some() && c.doubt_from.is_none() && !c.id.is_empty() && !busy.contains(&c.id);
                        let in_grace = |id: &String| {
                            o.creds.iter().any(|c| &c.id == id && c.doubt_from.is_some() && c.dead_from.is_some_and(|d| d > Instant::now()))
                        };
                        let single = |id: &String| o.creds.iter().filter(|c| &c.id == id && c.dead_from.is_none()).count() == 1;
                        let pick = if op == 0 {
                            let graced = o.creds.iter().filter(live).map(|c| c.id.clone()).find(in_grace);
                            graced.map(|id| (id, true)).or_else(|| o.creds.iter().filter(live).map(|c| (c.id.clone(), false)).next())
                        } else {
                            // Rotate a key with exactly one live raw value.
                            o.creds.iter().filter(live).map(|c| c.id.clone()).find(single).map(|id| (id, false))
                        };
                        if let Some((id, _)) = &pick {
                            o.busy.insert(id.clone());
                        }
                        pick
                    };
                    if let Some((id, graced)) = victim {
                        match op {
                            0 => {
                                let acked = deactivate(&id);
                                if graced {
                                    oracle.lock().unwrap().count("deactivate in a rotation grace", acked);
                                }
                            }
                            kind => {
                                let grace = [0, 0, 2, 30][kind as usize];
                                let sent = Instant::now();
                                // Without grace the old value may die as soon as admin has it;
                                // with grace not before the grace ends (whole seconds, so 1 s early).
                                let doubt = if grace == 0 { sent } else { sent + Duration::from_secs(grace - 1) };
                                oracle.lock().unwrap().of_id(&id).for_each(|c| c.doubt(doubt));
                                let before = now_unix();
                                let rotated = admin_call(&format!("/v1/keys/{id}/rotate"), json!({"grace_secs": grace}));
                                let at = Instant::now();
                                let mut o = oracle.lock().unwrap();
                                o.count(
                                    ["", "rotate", "rotate with 2 s grace", "rotate with 30 s grace"][kind as usize],
                                    rotated.is_some(),
                                );
                                match rotated {
                                    Some(k) => {
                                        if grace > 0 {
                                            // previous_key_valid_until is at most (now at the ack) + grace.
                                            let until =
                                                k["previous_key_valid_until"].as_str().map(|s| keygate_admin::rfc3339::parse(s).unwrap());
                                            let until = until.unwrap_or(before + grace);
                                            let end = at + Duration::from_secs(until.saturating_sub(before) + 1);
                                            o.of_id(&id).for_each(|c| c.kill(end));
                                        } else {
                                            o.of_id(&id).for_each(|c| c.kill(at));
                                        }
                                        o.creds.push(Cred::new(&id, k["key"].as_str().unwrap(), Some(at)));
                                    }
                                    None => {
                                        // Unknown outcome (admin may have rotated and died): end the key.
                                        if !o.unsettled.contains(&id) {
                                            o.unsettled.push(id.clone());
                                        }
                                    }
                                }
                            }
                        }
                        let mut o = oracle.lock().unwrap();
                        if !o.unsettled.contains(&id) {
                            o.busy.remove(&id);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        // The flapping: SIGKILL admin every period, leave it down a moment, start it again.
        scope.spawn(|| {
            while Instant::now() + period < deadline {
                std::thread::sleep(period);
                stack.kill_admin();
                std::thread::sleep(Duration::from_millis(300));
                stack.restart_admin();
                restarts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    });

    // Settle: unacknowledged outcomes are ended (deactivated) for sure, then every raw key
    // must end in its state: dead ones refused, live ones allowed.
    let unsettled = oracle.lock().unwrap().unsettled.clone();
    for id in unsettled {
        assert!(deactivate(&id), "deactivate {id} after the run");
    }
    let creds = oracle.lock().unwrap().creds.clone();
    let now = Instant::now();
    for c in &creds {
        let want = match (c.valid_from, c.doubt_from, c.dead_from) {
            (None, ..) => 401,
            (_, _, Some(dead)) if dead <= now => 401,
            (_, None, None) => 200,
            // Still in a 30 s rotation grace that outlasts this check.
            (_, Some(doubt), _) if doubt > now + Duration::from_secs(15) => 200,
            _ => continue, // its grace ends while we look
        };
        let (id, raw) = (&c.id, &c.raw);
        eventually(&format!("key {id} settling to {want}"), || {
            stack.through_envoy("GET", "/key/flap", &[("SECRET_KEY", raw.as_bytes())]).0 == want
        });
    }
    stack.assert_alive();
    let o = oracle.lock().unwrap();
    let new_vms = wasm_vms_created(stack) - vms_before;
    let vm_failures = wasm_errors(stack);
    let ops: Vec<String> = o.ops.iter().map(|(op, (sent, acked))| format!("{op} {acked}/{sent}")).collect();
    eprintln!(
        "attacks_flapping: {secs} s, {} admin restarts, {} requests ({} allowed, {} refused, {} designed 503), writes acknowledged/sent: {}, {} raw keys, {} wrong decisions, longest old-state answer after an acknowledgement {:?} (allowed {PROPAGATION:?}), {new_vms} wasm VMs created during the run, wasm errors {vm_failures:?}",
        restarts.load(std::sync::atomic::Ordering::SeqCst),
        o.requests,
        o.allowed,
        o.refused,
        o.designed_503,
        ops.join(", "),
        o.creds.len(),
        o.wrong.len(),
        o.max_lag,
    );
    assert!(o.wrong.is_empty(), "{} wrong decisions, e.g. {:?}", o.wrong.len(), &o.wrong[..o.wrong.len().min(5)]);
    assert!(vm_failures.is_empty(), "wasm VM failures: {vm_failures:?}");
    assert_eq!(new_vms, 0, "wasm VMs were replaced during the run (a VM crashed)");
    assert!(restarts.load(std::sync::atomic::Ordering::SeqCst) >= 1 && o.requests > 100, "the run did not flap under load");
    for op in ["create", "deactivate", "rotate", "rotate with 2 s grace", "rotate with 30 s grace"] {
        assert!(o.ops.get(op).is_some_and(|(_, acked)| *acked > 0), "no acknowledged {op} during the run: {ops:?}");
    }
}
