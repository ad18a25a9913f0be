//! Credits through the real Envoys: a key with N credits driven round-robin through three
//! Envoys gets at least N and at most N + the README's bound through (then 429
//! `quota_exhausted`), `add` lets more through, a rule of cost 5 spends 5, a newly set
//! balance forgets what was spent, and spending reported to admin survives an admin
//! restart. An Envoy restarted in the middle of spending learns the others' spending from
//! admin instead of granting a fresh balance, and the key gets at most what that Envoy
//! spent in its last sync interval more (`credits_envoy_restart`); with admin unreachable
//! past `fleet_timeout_ms` each Envoy spends at most its share ceil(left / P) of what was
//! left, and the exchange resumes when admin comes back (`credits_admin_down`).
//!
//! The bound (README, "Credits"): over-spend ≤ ceil(r_others × (2·S + RTT)) + what each
//! Envoy new to the key may spend before its first exchange, ceil(r_self × (TICK + RTT))
//! and at least one request, counted in credits.

use keygate_e2e::{plugin_json, Reply, Stack, StackOptions, OPERATOR_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::{key_headers, paced, Case, Suite};

const ENVOYS: usize = 3;
const SYNC_MS: u64 = 100;
/// As in the fleet suites: generous for a loaded 2-core machine.
const RTT_ALLOWANCE_MS: u64 = 100;
const TICK_MS: u64 = 100;
/// Credits of the fleet case's key.
const CREDITS: u64 = 100;
/// Round-robin pace of the fleet case (requests/s, all Envoys).
const RATE: f64 = 60.0;
/// `fleet_timeout_ms` of the `credits_admin_down` suite.
const FLEET_TIMEOUT_MS: u64 = 1000;

pub fn suites() -> Vec<Suite> {
    vec![
        Suite {
            name: "credits",
            options: || {
                // Rate limits out of the way: the credits decide.
                let limits =
                    format!("\n  \"rate_limits\": {{\"sk\": [\"100000/h\"], \"pk\": [\"100000/h\"], \"sync_interval_ms\": {SYNC_MS}}},");
                let routes = "\n    {\"prefix\": \"/costly/\", \"require\": \"key\", \"cost\": 5},\n    {\"prefix\": \"/free/\", \"require\": \"key\", \"cost\": 0},";
                StackOptions { plugin_json: Some(plugin_json(&limits, routes)), extra_envoys: ENVOYS - 1, ..StackOptions::default() }
            },
            cases: CASES,
        },
        // Restarts admin: a stack of its own.
        Suite {
            name: "credits_admin_restart",
            options: || {
                let limits = format!("\n  \"rate_limits\": {{\"sync_interval_ms\": {SYNC_MS}}},");
                StackOptions { plugin_json: Some(plugin_json(&limits, "")), ..StackOptions::default() }
            },
            cases: &[("spending_reported_to_admin_survives_its_restart", admin_restart)],
        },
        // Restarts an Envoy: a stack of its own.
        Suite {
            name: "credits_envoy_restart",
            options: || fleet_options(""),
            cases: &[("a_restarted_envoy_learns_the_others_spending_and_respends_at_most_its_last_interval", envoy_restart)],
        },
        // Kills admin: a stack of its own.
        Suite {
            name: "credits_admin_down",
            options: || fleet_options(&format!(", \"fleet_timeout_ms\": {FLEET_TIMEOUT_MS}")),
            cases: &[("admin_unreachable_each_envoy_spends_at_most_its_share_then_the_exchange_recovers", admin_down)],
        },
    ]
}

/// Three Envoys, rate limits out of the way but counted (so the fleet exchange counts the
/// proxies, P), `extra` appended to `rate_limits`.
fn fleet_options(extra: &str) -> StackOptions {
    let limits =
        format!("\n  \"rate_limits\": {{\"sk\": [\"100000/h\"], \"pk\": [\"100000/h\"], \"sync_interval_ms\": {SYNC_MS}{extra}}},");
    StackOptions { plugin_json: Some(plugin_json(&limits, "")), extra_envoys: ENVOYS - 1, ..StackOptions::default() }
}

const CASES: &[Case] = &[
    ("a_key_with_n_credits_gets_n_through_three_envoys_then_quota_exhausted_and_add_lets_more_through", fleet_credits),
    ("a_rule_of_cost_5_spends_5_and_cost_0_spends_nothing", route_cost),
    ("a_newly_set_balance_forgets_earlier_spending_and_clearing_makes_the_key_unlimited", new_epoch),
];

struct Sent {
    envoy: usize,
    reply: Reply,
    sent: Instant,
}

/// `n` requests paced at `rate` a second, the i-th through Envoy `i % envoys`.
fn drive(stack: &Stack, n: usize, rate: f64, envoys: usize, path: &str, key: &str) -> Vec<Sent> {
    drive_via(stack, n, rate, &|i| i % envoys, path, key, false)
}

/// `n` requests paced at `rate` a second, the i-th through Envoy `via(i)`; with `fresh`,
/// each on a connection of its own (see [`key_headers`]).
fn drive_via(stack: &Stack, n: usize, rate: f64, via: &dyn Fn(usize) -> usize, path: &str, key: &str, fresh: bool) -> Vec<Sent> {
    let urls = stack.envoy_urls();
    paced(n, rate, |i, sent| {
        let envoy = via(i);
        let reply = stack.through_envoy_at(&urls[envoy], "GET", path, &key_headers(Some(key), fresh));
        assert!(
            reply.status == 200 || (reply.status == 429 && reply.body["code"] == "quota_exhausted"),
            "request {i} through Envoy {envoy} answered {} {}: not 200 or 429 quota_exhausted",
            reply.status,
            reply.body
        );
        Sent { envoy, reply, sent }
    })
}

fn accepted(sent: &[Sent]) -> u64 {
    sent.iter().filter(|s| s.reply.status == 200).count() as u64
}

fn peak_rate(sent: &[Sent]) -> f64 {
    let times: Vec<Instant> = sent.iter().map(|s| s.sent).collect();
    (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t - times[i] < Duration::from_secs(1)).count()).max().unwrap_or(0) as f64
}

/// The README's bound for a key driven round-robin over `envoys` Envoys at `rate`
/// requests/s of cost 1: the others' spending not yet heard, plus each Envoy's first tick.
fn bound(rate: f64, envoys: usize) -> u64 {
    let r_others = rate * (envoys as f64 - 1.0) / envoys as f64;
    let unheard = (r_others * (2 * SYNC_MS + RTT_ALLOWANCE_MS) as f64 / 1000.0).ceil() as u64;
    unheard + envoys as u64 * first_tick(rate / envoys as f64)
}

/// What an Envoy new to a key may spend before its first exchange, at `r_self` requests/s
/// through it: one tick plus a round trip, at least one request.
fn first_tick(r_self: f64) -> u64 {
    ((r_self * (TICK_MS + RTT_ALLOWANCE_MS) as f64 / 1000.0).ceil() as u64).max(1)
}

fn per_envoy(sent: &[Sent]) -> Vec<u64> {
    (0..ENVOYS).map(|e| sent.iter().filter(|s| s.envoy == e && s.reply.status == 200).count() as u64).collect()
}

/// A new live sk key with `credits` (JSON) in the tenant's business; its raw key and id.
fn key_with(stack: &Stack, business: &str, credits: Value) -> (String, String) {
    let (status, key) =
        stack.operator_post(&format!("/v1/businesses/{business}/keys"), json!({"kind": "sk", "mode": "live", "credits": credits}));
    assert_eq!(status, 201, "create key: {key}");
    (key["key"].as_str().unwrap().to_owned(), key["id"].as_str().unwrap().to_owned())
}

fn credits_of(stack: &Stack, key_id: &str) -> Value {
    let (status, body) = stack.admin(Method::GET, &format!("/v1/keys/{key_id}/credits"), Some(OPERATOR_TOKEN), None);
    assert_eq!(status, 200, "GET credits: {body}");
    body
}

/// Waits until admin's view of the key's spending reaches `spent` (the filters report every
/// `sync_interval_ms`).
fn wait_spent(stack: &Stack, key_id: &str, spent: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = credits_of(stack, key_id);
        if view["spent"].as_u64() >= Some(spent) {
            return view;
        }
        assert!(Instant::now() < deadline, "admin never heard {spent} spent: {view}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `key` gets a 200 on `path` through Envoy 0, or panics; spends what passes.
fn one(stack: &Stack, path: &str, key: &str) -> Reply {
    stack.through_envoy_at(&stack.envoy_urls()[0], "GET", path, &[("SECRET_KEY", key.as_bytes())])
}

fn fleet_credits(stack: &Stack) {
    let t = stack.tenant();
    let (key, id) = key_with(stack, &t.business_id, json!({"remaining": CREDITS}));
    // 3 × N attempts: per-Envoy counting would let 3 × N through.
    let n = ENVOYS * CREDITS as usize + 30;
    let sent = drive(stack, n, RATE, ENVOYS, "/key/items", &key);
    let (ok, rate) = (accepted(&sent), peak_rate(&sent));
    let bound = bound(rate, ENVOYS);
    let per_envoy = per_envoy(&sent);
    eprintln!("credits {CREDITS} over {ENVOYS} Envoys: {ok} of {n} passed (bound {bound} at a peak of {rate} requests/s; per Envoy {per_envoy:?})");
    assert!(
        ok >= CREDITS && ok <= CREDITS + bound,
        "{ok} passed with {CREDITS} credits (per Envoy {per_envoy:?}), expected {CREDITS}..={}",
        CREDITS + bound
    );
    assert!(sent.iter().rev().take(20).all(|s| s.reply.status == 429), "the last requests still passed");
    let refused = sent.iter().find(|s| s.reply.status == 429).unwrap();
    assert_eq!(refused.reply.body["success"], false);
    assert!(!refused.reply.headers.contains_key("retry-after"), "no refill, no Retry-After: {:?}", refused.reply.headers);
    // Admin hears all of it.
    let view = wait_spent(stack, &id, ok);
    assert_eq!((view["remaining"].as_u64(), view["balance"].as_u64()), (Some(0), Some(CREDITS)), "{view}");
    assert!(view["reconciled_at"].is_string(), "{view}");

    // Add 20: the balance is now CREDITS + 20, of which `ok` are spent.
    let (status, added) =
        stack.admin(Method::POST, &format!("/v1/keys/{id}/credits/add"), Some(OPERATOR_TOKEN), Some(json!({"amount": 20})));
    assert_eq!(status, 200, "add: {added}");
    assert_eq!(added["balance"].as_u64(), Some(CREDITS + 20));
    let expect = (CREDITS + 20).saturating_sub(ok);
    std::thread::sleep(Duration::from_millis(500));
    let more = drive(stack, 60, 30.0, ENVOYS, "/key/items", &key);
    let more_ok = accepted(&more);
    eprintln!("after adding 20 (with {ok} already spent of {CREDITS}): {more_ok} more passed, expected {expect}..={}", expect + bound);
    assert!(more_ok >= expect && more_ok <= expect + bound, "after add: {more_ok} passed, expected {expect}..={}", expect + bound);
    assert!(more.iter().rev().take(10).all(|s| s.reply.status == 429));
}

fn route_cost(stack: &Stack) {
    let t = stack.tenant();
    let (key, id) = key_with(stack, &t.business_id, json!({"remaining": 12}));
    let statuses: Vec<(u16, String)> = ["/costly/a", "/costly/b", "/costly/c", "/free/x", "/key/a", "/key/b", "/key/c", "/free/y"]
        .iter()
        .map(|path| {
            let reply = one(stack, path, &key);
            (reply.status, reply.body["code"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    let codes: Vec<u16> = statuses.iter().map(|(s, _)| *s).collect();
    // 12 → 7 → 2; the third costly request (5) does not fit; free spends nothing; then 2 → 1 → 0; then none.
    assert_eq!(codes, vec![200, 200, 429, 200, 200, 200, 429, 200], "{statuses:?}");
    assert_eq!(statuses[2].1, "quota_exhausted");
    let view = wait_spent(stack, &id, 12);
    assert_eq!((view["spent"].as_u64(), view["remaining"].as_u64()), (Some(12), Some(0)), "{view}");
}

fn new_epoch(stack: &Stack) {
    let t = stack.tenant();
    let (key, id) = key_with(stack, &t.business_id, json!({"remaining": 3}));
    let first: Vec<u16> = (0..5).map(|_| one(stack, "/key/a", &key).status).collect();
    assert_eq!(first, vec![200, 200, 200, 429, 429]);
    let _ = wait_spent(stack, &id, 3);
    // A new balance with a daily refill: a new epoch, the 3 spent no longer count.
    let body = json!({"remaining": 2, "refill": {"interval": "day", "amount": 50}});
    let (status, set) = stack.admin(Method::PUT, &format!("/v1/keys/{id}/credits"), Some(OPERATOR_TOKEN), Some(body));
    assert_eq!(status, 200, "set: {set}");
    assert_eq!((set["remaining"].as_u64(), set["spent"].as_u64()), (Some(2), Some(0)), "{set}");
    std::thread::sleep(Duration::from_millis(500));
    let second: Vec<Reply> = (0..4).map(|_| one(stack, "/key/a", &key)).collect();
    assert_eq!(second.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 200, 429, 429]);
    // With a refill the 429 says when it comes.
    let retry: u64 = second[2].headers.get("retry-after").expect("Retry-After until the refill").parse().unwrap();
    assert!((1..=86_400).contains(&retry), "Retry-After {retry}");
    // Cleared: unlimited again.
    let (status, cleared) =
        stack.admin(Method::PUT, &format!("/v1/keys/{id}/credits"), Some(OPERATOR_TOKEN), Some(json!({"remaining": null})));
    assert_eq!(status, 200, "clear: {cleared}");
    assert_eq!(cleared["limited"], false);
    std::thread::sleep(Duration::from_millis(500));
    assert!((0..5).all(|_| one(stack, "/key/a", &key).status == 200));
    // Bad input is a 400 with a code; add to an unlimited key too.
    let (status, bad) = stack.admin(Method::PUT, &format!("/v1/keys/{id}/credits"), Some(OPERATOR_TOKEN), Some(json!({"remaining": -1})));
    assert_eq!((status, bad["success"].clone()), (400, json!(false)), "{bad}");
    let (status, bad) = stack.admin(Method::POST, &format!("/v1/keys/{id}/credits/add"), Some(OPERATOR_TOKEN), Some(json!({"amount": 5})));
    assert_eq!(status, 400, "{bad}");
    // A member of the business may read them; another business's member may not.
    let (status, _) = stack.admin(Method::GET, &format!("/v1/keys/{id}/credits"), Some(&t.access_token), None);
    assert_eq!(status, 200);
    let other = stack.tenant();
    let (status, _) = stack.admin(Method::GET, &format!("/v1/keys/{id}/credits"), Some(&other.access_token), None);
    assert_eq!(status, 403);
}

fn admin_restart(stack: &Stack) {
    let t = stack.tenant();
    let (key, id) = key_with(stack, &t.business_id, json!({"remaining": 10}));
    let spent: Vec<u16> = (0..4).map(|_| one(stack, "/key/a", &key).status).collect();
    assert_eq!(spent, vec![200; 4]);
    let _ = wait_spent(stack, &id, 4);
    stack.restart_admin();
    let view = credits_of(stack, &id);
    assert_eq!((view["spent"].as_u64(), view["remaining"].as_u64()), (Some(4), Some(6)), "after the restart: {view}");
    // The Envoy goes on spending and reporting against the same balance.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut passed = 0;
    while Instant::now() < deadline {
        match one(stack, "/key/a", &key).status {
            200 => passed += 1,
            429 => break,
            503 => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("answered {other}"),
        }
    }
    assert_eq!(passed, 6, "after admin's restart 6 more should pass");
    let view = wait_spent(stack, &id, 10);
    assert_eq!(view["remaining"].as_u64(), Some(0), "{view}");
}

/// An Envoy restart (README, "What can be lost, and restarts"). A key with CREDITS credits
/// is spent round-robin through the three Envoys, 80 requests (all pass), the last through
/// Envoy 1, which is then killed and started again from the same config on the same ports:
/// a new proxy with empty shared data. Admin then holds all of the spending but what Envoy 1
/// spent since its last answered report, at most one `sync_interval_ms` (plus a round trip)
/// of its traffic. Driven alone, the restarted Envoy learns the others' spending (its
/// earlier self's included) at its first exchange and lets through what is left as admin
/// knows it (the lost part spent again), not a fresh CREDITS; then every Envoy refuses. In
/// all at least CREDITS, at most CREDITS + the lost part + one first tick.
fn envoy_restart(stack: &Stack) {
    const BEFORE: usize = 80;
    const RESTARTED: usize = 1;
    const ALONE: usize = 50;
    const ALONE_RATE: f64 = 20.0;
    let t = stack.tenant();
    let (key, id) = key_with(stack, &t.business_id, json!({"remaining": CREDITS}));
    let before = drive(stack, BEFORE, RATE, ENVOYS, "/key/items", &key);
    assert_eq!(before.last().unwrap().envoy, RESTARTED);
    assert_eq!(accepted(&before), BEFORE as u64, "under the balance every request passes");
    let killed_at = Instant::now();
    stack.kill("envoy_1");
    // What Envoy 1 let through in its last interval and round trip: all it may not have reported.
    let window = Duration::from_millis(SYNC_MS + RTT_ALLOWANCE_MS);
    let last_interval =
        before.iter().filter(|s| s.envoy == RESTARTED && s.reply.status == 200 && killed_at.duration_since(s.sent) <= window).count()
            as u64;
    // The two others report theirs within an interval; then admin's view is settled.
    std::thread::sleep(Duration::from_millis(5 * SYNC_MS));
    let heard = credits_of(stack, &id)["spent"].as_u64().unwrap();
    assert!(heard <= BEFORE as u64, "admin heard {heard} spent of the {BEFORE} let through");
    let lost = BEFORE as u64 - heard;
    stack.restart_envoy("envoy_1");
    let down_for = killed_at.elapsed();

    let alone = drive_via(stack, ALONE, ALONE_RATE, &|_| RESTARTED, "/key/items", &key, false);
    let alone_ok = accepted(&alone);
    let left = CREDITS - BEFORE as u64;
    let first = first_tick(ALONE_RATE);
    // Spent by then: the others have long heard the restarted Envoy.
    let after = drive(stack, 30, RATE, ENVOYS, "/key/items", &key);
    let total = BEFORE as u64 + alone_ok + accepted(&after);
    let bound = bound(peak_rate(&before).max(peak_rate(&after)), ENVOYS);
    eprintln!(
        "Envoy restart: {BEFORE} of {CREDITS} credits spent round-robin ({:?} per Envoy); admin heard {heard} when Envoy {RESTARTED} was killed ({lost} lost, {last_interval} let through in its last {} ms); restarted and ready in {:.1} s; alone it then let {alone_ok} of {ALONE} through (left {left}, as admin knew it {}, first tick {first}); then {:?} per Envoy round-robin; {total} in all",
        per_envoy(&before),
        window.as_millis(),
        down_for.as_secs_f64(),
        CREDITS - heard,
        per_envoy(&after)
    );
    assert!(
        lost <= last_interval,
        "an Envoy restart lost {lost} credits of spending, more than the {last_interval} it let through in its last sync interval and round trip"
    );
    assert!(alone_ok >= left, "the restarted Envoy let only {alone_ok} through, fewer than the {left} left: spent short");
    assert!(
        alone_ok <= CREDITS - heard + first,
        "the restarted Envoy let {alone_ok} through, more than the {} admin knew were left (+ {first} for its first tick): it did not learn the others' spending (a fresh balance would let {ALONE} through)",
        CREDITS - heard
    );
    assert!(alone.iter().rev().take(10).all(|s| s.reply.status == 429), "the restarted Envoy still lets the spent key through");
    assert_eq!(accepted(&after), 0, "the spent key passed after the restarted Envoy spent the rest ({:?} per Envoy)", per_envoy(&after));
    assert!(
        total >= CREDITS && total <= CREDITS + last_interval + first + bound,
        "{total} passed in all with {CREDITS} credits and an Envoy restart, expected {CREDITS}..={} (lost at most {last_interval}, first tick {first}, bound {bound})",
        CREDITS + last_interval + first + bound
    );
    // Admin counts the restarted Envoy as a new proxy, beside its earlier self.
    let view = wait_spent(stack, &id, heard + alone_ok);
    eprintln!("Envoy restart: admin's view afterwards {view}");
    assert_eq!(view["remaining"].as_u64(), Some(0), "{view}");
}

/// Admin unreachable (README, "When admin cannot be reached"). A key with 61 credits, 10
/// spent through each Envoy and exchanged (each knows all 30: left 31); admin is killed, and
/// past `fleet_timeout_ms` each Envoy spends at most its share ceil(31 / 3) = 11 (P = 3, the
/// proxies admin counted for the rate limits), so the fleet at most 33 of the 31 left, where
/// counting on the stale view alone would let 31 through each. Then admin comes back: the
/// exchange resumes (each Envoy logs it), admin's view shows every credit spent, and once
/// every Envoy has heard the others' spending of the outage the key is refused everywhere.
fn admin_down(stack: &Stack) {
    const DOWN_CREDITS: u64 = 61;
    const DOWN_RATE: f64 = 30.0;
    let t = stack.tenant();
    let (key, id) = key_with(stack, &t.business_id, json!({"remaining": DOWN_CREDITS}));
    let before = drive(stack, 10 * ENVOYS, DOWN_RATE, ENVOYS, "/key/items", &key);
    let spent = accepted(&before);
    assert_eq!(spent, 10 * ENVOYS as u64, "under the balance every request passes");
    let _ = wait_spent(stack, &id, spent);
    // Ten more exchanges: every Envoy has heard the others' 20.
    std::thread::sleep(Duration::from_millis(10 * SYNC_MS));
    let left = DOWN_CREDITS - spent;
    let share = left.div_ceil(ENVOYS as u64);
    stack.kill_admin();
    // No traffic until every Envoy is cut off (no successful exchange for fleet_timeout_ms).
    std::thread::sleep(Duration::from_millis(FLEET_TIMEOUT_MS + 1000));
    // New connections: they reach every worker of an Envoy, also ones that had no traffic
    // (and so no exchange of their own) before admin went away; those learn the Envoy's
    // view of the fleet from its shared data.
    let during = drive_via(stack, 30 * ENVOYS, DOWN_RATE, &|i| i % ENVOYS, "/key/items", &key, true);
    let during_per_envoy = per_envoy(&during);
    let total = spent + accepted(&during);
    let bound = bound(peak_rate(&before).max(peak_rate(&during)), ENVOYS);
    eprintln!(
        "admin down: {spent} of {DOWN_CREDITS} credits spent before; with admin down {during_per_envoy:?} per Envoy (share ceil({left}/{ENVOYS}) = {share}); {total} in all (at most {DOWN_CREDITS} + P {ENVOYS} + bound {bound})"
    );
    for (e, n) in during_per_envoy.iter().enumerate() {
        assert!(
            *n <= share,
            "Envoy {e} spent {n} with admin down, more than its share ceil({left}/{ENVOYS}) = {share} (all {during_per_envoy:?})"
        );
    }
    assert!(total >= DOWN_CREDITS, "with admin down the fleet spent short: {total} of {DOWN_CREDITS} (per Envoy {during_per_envoy:?})");
    assert!(
        total <= DOWN_CREDITS + ENVOYS as u64 + bound,
        "with admin down the fleet spent {total}, more than {DOWN_CREDITS} + P {ENVOYS} + bound {bound}"
    );

    // Admin back: every Envoy's spending reaches it.
    stack.restart_admin();
    let view = wait_spent(stack, &id, total);
    eprintln!("admin back: its view {view}");
    assert_eq!((view["spent"].as_u64(), view["remaining"].as_u64()), (Some(total), Some(0)), "{view}");
    let deadline = Instant::now() + Duration::from_secs(10);
    for name in ["envoy", "envoy_1", "envoy_2"] {
        loop {
            let log = std::fs::read_to_string(stack.dir.join(format!("{name}.log"))).unwrap_or_default();
            let (lost, back) = (log.contains("credit spending cannot reach admin"), log.contains("credit spending reaches admin again"));
            if lost && back {
                break;
            }
            assert!(Instant::now() < deadline, "{name}.log: cannot reach admin logged {lost}, reaches admin again logged {back}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Every Envoy hears the others' spending of the outage at its next exchanges.
    std::thread::sleep(Duration::from_millis(10 * SYNC_MS));
    let after = drive(stack, 10 * ENVOYS, DOWN_RATE, ENVOYS, "/key/items", &key);
    assert_eq!(accepted(&after), 0, "the spent key passed after admin came back ({:?} per Envoy)", per_envoy(&after));
}
