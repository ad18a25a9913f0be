//! Read-your-writes at the proxy: a key (or signing key) admin has just acknowledged works
//! on its very first request through Envoy, because the filter holds a request whose
//! well-formed key or `kid` its snapshot does not hold yet until the snapshot moves
//! (`hold_unknown`). And what made-up keys can cost: at most `max_held` held per worker VM,
//! each answered within `timeout_ms`, and one that timed out refused at once after.

use keygate_core::{ApiKey, KeyKind, Mode};
use keygate_e2e::{plugin_json, random_bytes, Stack, StackOptions};
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::path::{assert_denied, three};
use crate::{Case, Suite};

/// Holding in the flood suite: long enough to tell a held answer from a quick one on a
/// loaded machine, few enough slots that 500 requests overflow them.
const FLOOD_TIMEOUT_MS: u64 = 3000;
const FLOOD_MAX_HELD: u64 = 16;
const FRESH_KEYS: usize = 20;

pub fn suites() -> Vec<Suite> {
    vec![
        Suite { name: "hold", options: || StackOptions { plugin_json: Some(plugin_json("", "")), ..StackOptions::default() }, cases: HOLD },
        Suite {
            name: "hold_off",
            options: || StackOptions {
                plugin_json: Some(plugin_json("\n  \"hold_unknown\": {\"timeout_ms\": 0},", "")),
                ..StackOptions::default()
            },
            cases: &[("without_holding_fresh_keys_are_counted_not_asserted", fresh_keys_without_holding)],
        },
        Suite {
            name: "hold_replicas",
            options: || StackOptions { plugin_json: Some(plugin_json("", "")), postgres_replica: true, ..StackOptions::default() },
            cases: &[("keys_created_through_another_admin_replica_pass_on_their_first_request", fresh_keys_through_a_replica)],
        },
        Suite {
            name: "hold_off_replicas",
            options: || StackOptions {
                plugin_json: Some(plugin_json("\n  \"hold_unknown\": {\"timeout_ms\": 0},", "")),
                postgres_replica: true,
                ..StackOptions::default()
            },
            cases: &[("without_holding_keys_through_another_replica_are_counted_not_asserted", fresh_keys_through_a_replica_unheld)],
        },
        Suite {
            name: "hold_late",
            options: || StackOptions {
                plugin_json: Some(plugin_json("\n  \"hold_unknown\": {\"timeout_ms\": 5000},", "")),
                ..StackOptions::default()
            },
            cases: &[("a_request_held_before_its_key_exists_passes_once_admin_stores_it", held_then_stored)],
        },
        // Two stacks: a suite's cases run at once on its stack, and the flood fills every
        // worker's held set, so the negative cache's request would be refused as full.
        Suite {
            name: "hold_flood",
            options: flood_options,
            cases: &[("a_flood_of_unknown_keys_holds_at_most_max_held_and_answers_all_in_time", unknown_key_flood)],
        },
        Suite {
            name: "hold_negative",
            options: flood_options,
            cases: &[("a_repeated_unknown_key_is_refused_at_once_from_the_negative_cache", negative_cache)],
        },
    ]
}

fn flood_options() -> StackOptions {
    let hold =
        format!("\n  \"hold_unknown\": {{\"timeout_ms\": {FLOOD_TIMEOUT_MS}, \"max_held\": {FLOOD_MAX_HELD}, \"negative_ttl_secs\": 60}},");
    StackOptions { plugin_json: Some(plugin_json(&hold, "")), ..StackOptions::default() }
}

const HOLD: &[Case] = &[
    ("twenty_fresh_keys_all_pass_on_their_first_request", fresh_keys_pass_first_time),
    ("a_token_of_a_just_rotated_signing_key_passes_on_its_first_request", token_after_rotation),
];

fn stat(stack: &Stack, name: &str) -> u64 {
    stats_value(&stack.envoy_stats(), name)
}

fn stats_value(stats: &str, name: &str) -> u64 {
    stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn workers() -> u64 {
    std::env::var("KEYGATE_E2E_CONCURRENCY").ok().and_then(|c| c.parse().ok()).unwrap_or(2)
}

/// Creates `FRESH_KEYS` keys and uses each on its very first request right after admin's
/// 2xx, alternately on a key-only route and with all three credentials; the statuses and
/// the slowest first answer.
fn first_requests(stack: &Stack) -> (Vec<u16>, Duration) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let bearer = t.bearer();
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..FRESH_KEYS {
        let key = stack.create_key(&t.business_id, json!({"kind": "sk", "mode": "live"}));
        let sent = Instant::now();
        let resp = if i % 2 == 0 {
            stack.through_envoy("GET", "/key/first", &[("SECRET_KEY", key.as_bytes())])
        } else {
            stack.through_envoy("GET", "/orders", &three(&bearer, &key, &t.business_id))
        };
        slowest = slowest.max(sent.elapsed());
        if resp.0 != 200 {
            assert_denied(&resp, 401, "invalid_api_key");
        }
        statuses.push(resp.0);
    }
    (statuses, slowest)
}

fn fresh_keys_pass_first_time(stack: &Stack) {
    let released = stat(stack, "wasmcustom.keygate.hold.released");
    let (statuses, slowest) = first_requests(stack);
    let passed = statuses.iter().filter(|s| **s == 200).count();
    eprintln!(
        "with holding: {passed} of {FRESH_KEYS} fresh keys passed on their first request; slowest first answer {slowest:?}; \
         {} requests held and released",
        stat(stack, "wasmcustom.keygate.hold.released") - released
    );
    assert_eq!(passed, FRESH_KEYS, "statuses of the first requests: {statuses:?}");
}

/// Over PostgreSQL: Envoy is fed by one admin replica, the keys are created through the
/// other, and each is used on its very first request; the statuses with their times, or
/// `None` (with a note) without a PostgreSQL server.
fn first_requests_through_a_replica(stack: &Stack) -> Option<Vec<(u16, Duration)>> {
    let Some(replica) = stack.replica_url.clone() else {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; the admin-replica read-your-writes test is skipped");
        return None;
    };
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let create = |business: &str| -> String {
        let resp = stack
            .http
            .post(format!("{replica}/v1/businesses/{business}/keys"))
            .bearer_auth(keygate_e2e::OPERATOR_TOKEN)
            .json(&json!({"kind": "sk", "mode": "live"}))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "create a key through the replica");
        resp.json::<serde_json::Value>().unwrap()["key"].as_str().unwrap().to_owned()
    };
    let answers = (0..FRESH_KEYS)
        .map(|_| {
            let key = create(&t.business_id);
            let sent = Instant::now();
            let resp = stack.through_envoy("GET", "/key/replica", &[("SECRET_KEY", key.as_bytes())]);
            (resp.0, sent.elapsed())
        })
        .collect();
    Some(answers)
}

fn fresh_keys_through_a_replica(stack: &Stack) {
    let released = stat(stack, "wasmcustom.keygate.hold.released");
    let Some(answers) = first_requests_through_a_replica(stack) else { return };
    let passed = answers.iter().filter(|(s, _)| *s == 200).count();
    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap_or_default();
    eprintln!(
        "through another admin replica (PostgreSQL): {passed} of {FRESH_KEYS} fresh keys passed on their first request; \
         slowest first answer {slowest:?}; {} requests held and released",
        stat(stack, "wasmcustom.keygate.hold.released") - released
    );
    assert_eq!(passed, FRESH_KEYS, "{answers:?}");
}

fn fresh_keys_through_a_replica_unheld(stack: &Stack) {
    let Some(answers) = first_requests_through_a_replica(stack) else { return };
    let refused = answers.iter().filter(|(s, _)| *s != 200).count();
    eprintln!(
        "through another admin replica (PostgreSQL), without holding: {refused} of {FRESH_KEYS} fresh keys refused on their first request"
    );
    assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 401), "{answers:?}");
}

fn fresh_keys_without_holding(stack: &Stack) {
    let (statuses, slowest) = first_requests(stack);
    let refused = statuses.iter().filter(|s| **s != 200).count();
    eprintln!("without holding: {refused} of {FRESH_KEYS} fresh keys refused on their first request; slowest first answer {slowest:?}");
    assert_eq!(stat(stack, "wasmcustom.keygate.hold.held"), 0, "holding is off: nothing may be held");
}

/// Rotations, each followed at once by a token of the new signing key (an API-key login,
/// which is quick: no password hashing between the rotation and the request) used at once.
fn token_after_rotation(stack: &Stack) {
    const ROUNDS: usize = 5;
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let released = stat(stack, "wasmcustom.keygate.hold.released");
    let mut answers = Vec::new();
    for round in 0..ROUNDS {
        let (status, rotated) = stack.admin(reqwest::Method::POST, "/v1/signing-keys/rotate", Some(keygate_e2e::OPERATOR_TOKEN), None);
        assert_eq!(status, 200, "{rotated}");
        let (status, login) = stack.admin(
            reqwest::Method::POST,
            "/auth/login",
            None,
            Some(json!({"api_key": t.sk, "session_id": stack.unique(&format!("rotation-{round}-"))})),
        );
        assert_eq!(status, 200, "{login}");
        let token = login["access_token"].as_str().unwrap();
        let bearer = format!("Bearer {token}");
        let sent = Instant::now();
        let resp = stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id));
        answers.push((resp.0, sent.elapsed()));
        assert_eq!(resp.0, 200, "round {round}: {}", resp.1);
    }
    eprintln!(
        "tokens of a just-rotated signing key, first request each: {answers:?}; {} held requests released meanwhile",
        stat(stack, "wasmcustom.keygate.hold.released") - released
    );
}

/// A request with a key admin does not have yet is held; admin then stores that very key
/// (an import of a keygate-format key made here) and the held request passes: the
/// mechanism itself, without racing the feed. Prints how long after admin's 2xx it passed.
fn held_then_stored(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let key = ApiKey::generate(KeyKind::Sk, Mode::Live, random_bytes(128)).unwrap().expose().to_owned();
    let (status, sent, stored, answered) = std::thread::scope(|scope| {
        let sent = Instant::now();
        let request = scope.spawn(|| {
            let resp = stack.through_envoy("GET", "/key/late", &[("SECRET_KEY", key.as_bytes())]);
            (resp, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(500));
        let body = json!({"keys": [{"business": t.business_id, "kind": "sk", "mode": "live", "key": key}]});
        let (status, result) = stack.admin(reqwest::Method::POST, "/v1/import/keys", Some(keygate_e2e::OPERATOR_TOKEN), Some(body));
        let stored = Instant::now();
        assert_eq!((status, result["imported"].clone()), (200, json!(1)), "{result}");
        let (resp, answered) = request.join().unwrap();
        (resp, sent, stored, answered)
    });
    eprintln!(
        "a request sent {:?} before its key was stored answered {} {:?} after admin's 2xx",
        stored - sent,
        status.0,
        answered.saturating_duration_since(stored)
    );
    assert_eq!(status.0, 200, "{}", status.1);
    assert!(answered > stored, "answered before the key was stored");
    assert!(stat(stack, "wasmcustom.keygate.hold.released") >= 1);
}

/// What a sampler of Envoy's stats saw while the flood ran: the most requests held at once
/// (the `hold.waiting` gauge, summed over the worker VMs).
fn sample_waiting(stack: &Stack, done: &std::sync::atomic::AtomicBool) -> (u64, usize) {
    let (mut most, mut samples) = (0, 0);
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        if let Ok(resp) = stack.http.get(format!("{}/stats?filter=hold.waiting", stack.envoy_admin_url)).send() {
            most = most.max(stats_value(&resp.text().unwrap_or_default(), "wasmcustom.keygate.hold.waiting"));
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (most, samples)
}

fn unknown_key_flood(stack: &Stack) {
    const FLOOD: usize = 500;
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let counters = ["held", "refused_full", "negative_hits", "timed_out"].map(|c| format!("wasmcustom.keygate.hold.{c}"));
    let before: Vec<u64> = counters.iter().map(|c| stat(stack, c)).collect();
    let keys: Vec<String> =
        (0..FLOOD).map(|_| ApiKey::generate(KeyKind::Sk, Mode::Live, random_bytes(128)).unwrap().expose().to_owned()).collect();
    // Its own connections: one per request, all open at once.
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(0).build().unwrap();
    let url = format!("{}/key/flood", stack.envoy_url);
    let start = Arc::new(Barrier::new(FLOOD + 1));
    let done = std::sync::atomic::AtomicBool::new(false);
    let (answers, (most_waiting, samples)) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_waiting(stack, &done));
        let senders: Vec<_> = keys
            .iter()
            .map(|key| {
                let (client, url, start) = (client.clone(), url.clone(), Arc::clone(&start));
                scope.spawn(move || {
                    start.wait();
                    let sent = Instant::now();
                    let resp = client.get(&url).header("SECRET_KEY", key.as_str()).send().unwrap();
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp.json().unwrap_or_default();
                    (status, body["code"].as_str().unwrap_or("").to_owned(), sent.elapsed())
                })
            })
            .collect();
        start.wait();
        let answers: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (answers, sampler.join().unwrap())
    });
    let after: Vec<u64> = counters.iter().map(|c| stat(stack, c)).collect();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let slowest = answers.iter().map(|a| a.2).max().unwrap();
    let slow = answers.iter().filter(|a| a.2 >= Duration::from_millis(FLOOD_TIMEOUT_MS * 9 / 10)).count();
    eprintln!(
        "flood of {FLOOD} unknown keys: held {} (at most {most_waiting} at once in {samples} samples, cap {} = {} workers x max_held {FLOOD_MAX_HELD}), \
         refused at once because full {}, timed out {}; {slow} answers took >= 0.9 x timeout_ms; slowest answer {slowest:?} (timeout_ms {FLOOD_TIMEOUT_MS})",
        delta[0],
        workers() * FLOOD_MAX_HELD,
        workers(),
        delta[1],
        delta[3],
    );
    for (status, code, _) in &answers {
        assert_eq!((*status, code.as_str()), (401, "invalid_api_key"));
    }
    assert!(most_waiting <= workers() * FLOOD_MAX_HELD, "{most_waiting} held at once, over the cap");
    assert!(samples > 0, "the stats sampler never got an answer");
    // Every made-up key was either held (and then refused at its timeout) or refused at once.
    assert!(delta[0] + delta[1] + delta[2] >= FLOOD as u64, "counters {delta:?}");
    assert!(delta[0] <= delta[3] + 2, "held requests are answered by their timeout: {delta:?}");
    assert!(slow as u64 <= delta[0], "only held requests may take the timeout: {slow} slow, {} held", delta[0]);
    // A held request waits timeout_ms and a tick; the rest is a loaded machine's slack.
    assert!(slowest < Duration::from_millis(FLOOD_TIMEOUT_MS) + Duration::from_secs(10), "slowest answer {slowest:?}");
    // Nothing stays held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(stack, "wasmcustom.keygate.hold.waiting") != 0 {
        assert!(Instant::now() < deadline, "requests still held 10 s after the flood");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn negative_cache(stack: &Stack) {
    let never = ApiKey::generate(KeyKind::Sk, Mode::Live, random_bytes(128)).unwrap();
    // One connection, so every request reaches the same worker VM (and its negative cache).
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(1).build().unwrap();
    let hits = stat(stack, "wasmcustom.keygate.hold.negative_hits");
    let mut took = Vec::new();
    for _ in 0..3 {
        let sent = Instant::now();
        let resp = client.get(format!("{}/key/again", stack.envoy_url)).header("SECRET_KEY", never.expose()).send().unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        took.push(sent.elapsed());
    }
    let hits = stat(stack, "wasmcustom.keygate.hold.negative_hits") - hits;
    eprintln!("the same unknown key three times on one connection: answered in {took:?}; {hits} negative-cache hits");
    assert!(took[0] >= Duration::from_millis(FLOOD_TIMEOUT_MS * 9 / 10), "the first request was not held: {took:?}");
    assert!(hits >= 2, "the repeats were not refused from the negative cache ({hits} hits)");
    assert!(took[2] < took[0], "a negative-cache hit must answer before a held request: {took:?}");
}
