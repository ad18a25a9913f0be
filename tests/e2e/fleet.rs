//! Fleet-wide rate limits (issue 16, /work/design16.md): three Envoys in front of one admin
//! exchange their counts through admin (`POST /v1/rate-counts`) every `sync_interval_ms`, so
//! a limit holds for the fleet, not per Envoy, within the design's over-admission bound:
//!
//!   admitted in any span of one window  ≤  L + ceil(r_others × (2·S + RTT))
//!
//! where L is the limit, S `sync_interval_ms`, RTT the exchange's round trip with admin, and
//! r_others the rate at which the OTHER Envoys admit the counter's requests (design16.md,
//! "Over-admission bound"). The tests measure the rate they drive (round-robin over the
//! Envoys, so r_others = rate × (E − 1) / E) and allow RTT_ALLOWANCE_MS for the round trip.
//!
//! Every answer is 200 or 429 (anything else fails the test: a 401 would be a key not
//! propagated, a 5xx the filter failing over the count exchange), and carries the
//! `RateLimit` / `RateLimit-Policy` headers of the design (429s also `Retry-After`).

use keygate_e2e::{plugin_json, Reply, Stack, StackOptions};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{key_headers, paced, Case, Suite};

/// Envoys in each fleet suite (the stack's first and two extra).
const ENVOYS: usize = 3;
/// `sync_interval_ms` in these suites.
const SYNC_MS: u64 = 100;
/// The allowance for the admin round trip of one exchange (a request from Envoy's leader VM
/// to the debug build of admin and its answer, on loopback). Unloaded it is a few ms; 100 ms
/// is generous for a loaded 2-core machine running three Envoys (two workers each), admin,
/// echo and the test client, and still keeps the bounds below well under the per-Envoy
/// counting they must tell apart (E × L).
const RTT_ALLOWANCE_MS: u64 = 100;
/// The filter's root tick: a counter new to a worker VM is exchanged at the next one.
const TICK_MS: u64 = 100;

/// pk limit of the `fleet` suite (per hour).
const PK_LIMIT: u64 = 100;
/// Business-wide limit of the `fleet` suite (per hour); above PK_LIMIT + its bound, so the
/// pk case is decided by the key's limit alone.
const BUSINESS_LIMIT: u64 = 150;
/// Per-address limit of the `fleet` suite's public route (per hour).
const PUBLIC_LIMIT: u64 = 60;
/// The `fleet_window` suite's per-second limit on `/persec/`.
const PER_SEC_LIMIT: u64 = 20;
/// The `fleet_admin_down` suite's sk limit (per hour) and `fleet_timeout_ms`.
const DOWN_LIMIT: u64 = 60;
const FLEET_TIMEOUT_MS: u64 = 1000;

pub fn suites() -> Vec<Suite> {
    vec![
        // Three cases on one stack: each counts a bucket of its own (a pk key, a business,
        // the client address on the public route), so running at once they only share load.
        Suite {
            name: "fleet",
            options: || {
                let limits = format!(
                    "\n  \"rate_limits\": {{\"pk\": [\"{PK_LIMIT}/h\"], \"business\": [\"{BUSINESS_LIMIT}/h\"], \"public_per_ip\": [\"{PUBLIC_LIMIT}/h\"], \"sync_interval_ms\": {SYNC_MS}}},"
                );
                fleet_options(&limits, "")
            },
            cases: FLEET,
        },
        // Timing-sensitive: a stack of its own.
        Suite {
            name: "fleet_window",
            options: || {
                let limits = format!("\n  \"rate_limits\": {{\"sync_interval_ms\": {SYNC_MS}}},");
                let route = format!("\n    {{\"prefix\": \"/persec/\", \"require\": \"key\", \"rate_limits\": [\"{PER_SEC_LIMIT}/s\"]}},");
                fleet_options(&limits, &route)
            },
            cases: &[("a_per_second_limit_slides_across_window_edges_fleet_wide", window_edge)],
        },
        // Kills admin: a stack of its own.
        Suite {
            name: "fleet_admin_down",
            options: || {
                let limits = format!(
                    "\n  \"rate_limits\": {{\"sk\": [\"{DOWN_LIMIT}/h\"], \"sync_interval_ms\": {SYNC_MS}, \"fleet_timeout_ms\": {FLEET_TIMEOUT_MS}}},"
                );
                fleet_options(&limits, "")
            },
            cases: &[("admin_unreachable_each_envoy_admits_at_most_its_share_then_recovers", admin_down)],
        },
    ]
}

fn fleet_options(extra: &str, routes: &str) -> StackOptions {
    StackOptions { plugin_json: Some(plugin_json(extra, routes)), extra_envoys: ENVOYS - 1, ..StackOptions::default() }
}

const FLEET: &[Case] = &[
    ("a_pk_limit_holds_fleet_wide_over_three_envoys", pk_fleet),
    ("a_business_limit_holds_over_its_keys_and_three_envoys", business_fleet),
    ("a_per_address_public_limit_holds_fleet_wide", public_fleet),
    ("a_key_spent_through_one_envoy_is_refused_by_the_others", spent_elsewhere),
];

/// One answer of a driven run.
struct Sent {
    envoy: usize,
    status: u16,
    sent: Instant,
    answered: Instant,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends `n` requests paced at `rate` a second (never faster: a late request does not make
/// the next one early), the i-th through Envoy `route(i).0` to path `route(i).1` with key
/// `route(i).2` (none on public paths). Panics on an answer other than 200 or 429.
fn drive(stack: &Stack, n: usize, rate: f64, route: &dyn Fn(usize) -> (usize, String, Option<String>)) -> Vec<Sent> {
    drive_with(stack, n, rate, route, false)
}

/// As [`drive`]; with `fresh`, each request on a connection of its own (see
/// [`key_headers`]), so requests reach every worker of an Envoy.
fn drive_with(stack: &Stack, n: usize, rate: f64, route: &dyn Fn(usize) -> (usize, String, Option<String>), fresh: bool) -> Vec<Sent> {
    let urls = stack.envoy_urls();
    paced(n, rate, |i, sent| {
        let (envoy, path, key) = route(i);
        let Reply { status, headers, body } = stack.through_envoy_at(&urls[envoy], "GET", &path, &key_headers(key.as_deref(), fresh));
        let answered = Instant::now();
        assert!(
            status == 200 || status == 429,
            "request {i} through Envoy {envoy} ({path}) answered {status}, not 200 or 429: {body} (headers {headers:?})"
        );
        Sent { envoy, status, sent, answered, headers, body: body.to_string() }
    })
}

fn accepted(sent: &[Sent]) -> u64 {
    sent.iter().filter(|s| s.status == 200).count() as u64
}

/// The highest number of requests sent in any 1 s span (requests/s): the pacing caps it,
/// a stalled machine lowers it.
fn peak_rate(sent: &[Sent]) -> f64 {
    let times: Vec<Instant> = sent.iter().map(|s| s.sent).collect();
    let peak = (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t - times[i] < Duration::from_secs(1)).count()).max();
    peak.unwrap_or(0) as f64
}

/// The design's over-admission allowance for a counter driven round-robin over `ENVOYS`
/// Envoys at `rate` requests/s: ceil(r_others × (2·S + RTT)), r_others = rate × (E−1)/E
/// (design16.md, "Over-admission bound").
fn bound(rate: f64) -> u64 {
    let r_others = rate * (ENVOYS as f64 - 1.0) / ENVOYS as f64;
    (r_others * (2 * SYNC_MS + RTT_ALLOWANCE_MS) as f64 / 1000.0).ceil() as u64
}

/// The items of a structured-field list header: `"name";k=v;k=v, …` → name → params.
fn sf_items(value: &str) -> HashMap<String, HashMap<String, i64>> {
    value
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let mut parts = item.trim().split(';');
            let name = parts.next().unwrap().trim().trim_matches('"').to_owned();
            let params = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().parse::<i64>().unwrap_or_else(|_| panic!("parameter {k}={v} in {value:?}"))))
                .collect();
            (name, params)
        })
        .collect()
}

/// The limit `policy` (q `quota`, w `window_secs`) on an answer: in `RateLimit-Policy`, and
/// in `RateLimit` with r remaining (0 on a 429) and t seconds; a 429 has `Retry-After`
/// within the window plus one sub-window.
fn assert_limit_headers(answer: &Sent, policy: &str, quota: u64, window_secs: u64) {
    let what = format!("the {} answer through Envoy {} (headers {:?}, body {})", answer.status, answer.envoy, answer.headers, answer.body);
    let policies = sf_items(answer.headers.get("ratelimit-policy").unwrap_or_else(|| panic!("no RateLimit-Policy on {what}")));
    let p = policies.get(policy).unwrap_or_else(|| panic!("no {policy:?} in RateLimit-Policy of {what}"));
    assert_eq!((p.get("q"), p.get("w")), (Some(&(quota as i64)), Some(&(window_secs as i64))), "{policy:?} q/w in {what}");
    let limits = sf_items(answer.headers.get("ratelimit").unwrap_or_else(|| panic!("no RateLimit on {what}")));
    let l = limits.get(policy).unwrap_or_else(|| panic!("no {policy:?} in RateLimit of {what}"));
    let (r, t) = (*l.get("r").expect("r"), *l.get("t").expect("t"));
    // A request is remembered between W and W + one sub-window (W/10).
    let longest = (window_secs * 11).div_ceil(10) as i64;
    assert!((0..quota as i64).contains(&r), "{policy:?} r={r} out of 0..{quota} in {what}");
    assert!((0..=longest).contains(&t), "{policy:?} t={t} out of 0..={longest} in {what}");
    if answer.status == 429 {
        assert_eq!(r, 0, "{policy:?} r on a 429 in {what}");
        let retry: i64 = answer.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After on {what}")).parse().unwrap();
        assert!((1..=longest).contains(&retry), "Retry-After {retry} out of 1..={longest} on {what}");
    }
}

/// Checks a round-robin run against limit `limit`: at least `limit` and at most
/// `limit + bound` accepted, and the limit's headers on every answer.
fn assert_fleet_limit(what: &str, sent: &[Sent], limit: u64, policy: &str) {
    let rate = peak_rate(sent);
    let (ok, bound) = (accepted(sent), bound(rate));
    let per_envoy: Vec<u64> = (0..ENVOYS).map(|e| sent.iter().filter(|s| s.envoy == e && s.status == 200).count() as u64).collect();
    eprintln!(
        "{what}: {ok} of {} accepted (limit {limit}, bound {bound} at a peak of {rate} requests/s; per Envoy {per_envoy:?})",
        sent.len()
    );
    assert!(
        ok >= limit && ok <= limit + bound,
        "{what}: {ok} accepted over {ENVOYS} Envoys (per Envoy {per_envoy:?}), expected {limit}..={} (limit {limit} + bound ceil(r_others × (2 × {SYNC_MS} + {RTT_ALLOWANCE_MS}) ms) = {bound} at a peak of {rate} requests/s)",
        limit + bound
    );
    assert!(sent.iter().any(|s| s.status == 429), "{what}: no request was refused");
    for answer in sent {
        assert_limit_headers(answer, policy, limit, 3600);
    }
}

/// Round-robin pacing for the hourly cases: 60 requests/s in all, so r_others = 40/s and the
/// bound is ceil(40 × 0.3) = 12, against E × L for per-Envoy counting.
const HOURLY_RATE: f64 = 60.0;

/// a. One pk key (100/h) driven round-robin through three Envoys.
fn pk_fleet(stack: &Stack) {
    let t = stack.tenant();
    let pk = stack.create_key(&t.business_id, json!({"kind": "pk", "mode": "live"}));
    // 3 × L attempts: per-Envoy counting would accept them all.
    let n = ENVOYS * PK_LIMIT as usize + 30;
    let sent = drive(stack, n, HOURLY_RATE, &|i| (i % ENVOYS, "/key/items".to_owned(), Some(pk.clone())));
    assert_fleet_limit("pk 100/h over three Envoys", &sent, PK_LIMIT, "key-1h");
}

/// b. Four keys of one business (the business 150/h, each key 1000/h), round-robin over the
/// keys and the Envoys (4 and 3 coprime: every key through every Envoy).
fn business_fleet(stack: &Stack) {
    let t = stack.tenant();
    let mut keys = vec![t.sk.clone()];
    keys.extend((0..3).map(|_| stack.create_key(&t.business_id, json!({"kind": "sk", "mode": "live"}))));
    let n = 2 * BUSINESS_LIMIT as usize + 30;
    let sent = drive(stack, n, HOURLY_RATE, &|i| (i % ENVOYS, "/key/items".to_owned(), Some(keys[i % keys.len()].clone())));
    assert_fleet_limit("business 150/h over four keys and three Envoys", &sent, BUSINESS_LIMIT, "business-1h");
}

/// c. The public route, every request from 127.0.0.1 (only this case uses `/public/` on
/// this stack).
fn public_fleet(stack: &Stack) {
    let n = ENVOYS * PUBLIC_LIMIT as usize + 30;
    let sent = drive(stack, n, HOURLY_RATE, &|i| (i % ENVOYS, "/public/articles".to_owned(), None));
    assert_fleet_limit("public 60/h per address over three Envoys", &sent, PUBLIC_LIMIT, "address-1h");
}

/// A pk key spent (100/h) through the first Envoy alone, then, 2 s later, asked for through
/// the two others, which have not counted it yet. An Envoy new to a counter knows none of
/// the others' counts until its first exchange, which its first request starts at the next
/// tick (README, "The bound"): it may admit what reaches it in one tick plus a round trip,
/// at least one request, ceil(r_self × (TICK + RTT)); the rest must be refused.
fn spent_elsewhere(stack: &Stack) {
    let t = stack.tenant();
    let pk = stack.create_key(&t.business_id, json!({"kind": "pk", "mode": "live"}));
    let first = drive(stack, PK_LIMIT as usize + 10, HOURLY_RATE, &|_| (0, "/key/items".to_owned(), Some(pk.clone())));
    assert_eq!(accepted(&first), PK_LIMIT, "through one Envoy alone the limit is exact");
    std::thread::sleep(Duration::from_secs(2));
    let rate = 20.0;
    let others = drive(stack, 20, rate, &|i| (1 + i % (ENVOYS - 1), "/key/items".to_owned(), Some(pk.clone())));
    let per_envoy: Vec<u64> = (0..ENVOYS).map(|e| others.iter().filter(|s| s.envoy == e && s.status == 200).count() as u64).collect();
    eprintln!("spent through Envoy 0: the others then admitted {per_envoy:?} of {}", others.len());
    let r_self = rate / (ENVOYS - 1) as f64;
    let allowance = ((r_self * (TICK_MS + RTT_ALLOWANCE_MS) as f64 / 1000.0).ceil() as u64).max(1);
    for (envoy, admitted) in per_envoy.iter().enumerate().skip(1) {
        assert!(
            *admitted <= allowance,
            "a key spent through Envoy 0 2 s earlier was admitted {admitted} times through Envoy {envoy} (all: {per_envoy:?}), more than the {allowance} an Envoy new to a counter may admit before its first exchange"
        );
    }
    assert!(
        others.iter().rev().take(6).all(|s| s.status == 429),
        "after their first exchange the other Envoys still admitted the spent key: {:?}",
        others.iter().map(|s| s.status).collect::<Vec<_>>()
    );
    for answer in &others {
        assert_limit_headers(answer, "key-1h", PK_LIMIT, 3600);
    }
}

/// d. A per-second limit (20/s on the rule `/persec/`), driven ~3 s through the three
/// Envoys at 44 requests/s from half a second into a wall-clock second: every 1 s span may
/// hold at most L + bound accepted requests (bound = ceil(29.3 × 0.3) = 9, so 29). Fixed
/// 1 s windows would let 2 × L = 40 through around each second's edge (L in its last half,
/// L more in the next one's first half); the sliding window of the design counts the
/// previous second's requests for 1 s to 1.1 s after they were admitted.
fn window_edge(stack: &Stack) {
    const RATE: f64 = 44.0;
    let t = stack.tenant();
    let key = stack.create_key(&t.business_id, json!({"kind": "sk", "mode": "live"}));
    // Let the key reach every Envoy's snapshot (on another path: `/key/` does not count
    // the rule's bucket), so no held first request skews the timing.
    let urls = stack.envoy_urls();
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(10);
        while stack.through_envoy_at(url, "GET", "/key/probe", &[("SECRET_KEY", key.as_bytes())]).status != 200 {
            assert!(Instant::now() < deadline, "the key did not reach Envoy {url} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Start 0.5 s into a wall-clock second (sub-window indices are t_ms / g on every Envoy).
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 % 1000;
    std::thread::sleep(Duration::from_millis((1500 - ms) % 1000));
    let n = (RATE * 3.0) as usize;
    let sent = drive(stack, n, RATE, &|i| (i % ENVOYS, "/persec/x".to_owned(), Some(key.clone())));

    let rate = peak_rate(&sent);
    let bound = bound(rate);
    assert!(bound < PER_SEC_LIMIT, "the test cannot tell a sliding window from fixed ones: bound {bound} at {rate} requests/s");
    let ok: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    // The most accepted requests certainly admitted within one 1 s span: those sent at or
    // after a start and answered within 1 s of it (admission lies between the two).
    let (most, from) = ok
        .iter()
        .map(|start| {
            (ok.iter().filter(|s| s.sent >= start.sent && s.answered <= start.sent + Duration::from_secs(1)).count() as u64, start.sent)
        })
        .max_by_key(|(count, _)| *count)
        .unwrap_or((0, Instant::now()));
    let at = from.saturating_duration_since(sent[0].sent).as_millis();
    eprintln!(
        "per-second limit: {} of {} accepted over {:?}; at most {most} in a 1 s span (from {at} ms), allowed {} (bound {bound} at a peak of {rate} requests/s)",
        ok.len(),
        sent.len(),
        sent.last().unwrap().answered - sent[0].sent,
        PER_SEC_LIMIT + bound
    );
    assert!(
        most <= PER_SEC_LIMIT + bound,
        "{most} requests accepted within one 1 s span (starting {at} ms into the run), more than limit {PER_SEC_LIMIT} + bound {bound} (fixed windows let up to {} through across an edge)",
        2 * PER_SEC_LIMIT
    );
    // It still admits: over ~3 s a sliding window frees the quota at least twice.
    assert!(ok.len() as u64 >= 2 * PER_SEC_LIMIT, "only {} accepted in ~3 s under a {PER_SEC_LIMIT}/s limit", ok.len());
    let policy = ok[0].headers.get("ratelimit-policy").unwrap_or_else(|| panic!("no RateLimit-Policy: {:?}", ok[0].headers));
    assert!(
        sf_items(policy).values().any(|p| p.get("q") == Some(&(PER_SEC_LIMIT as i64)) && p.get("w") == Some(&1)),
        "no policy q={PER_SEC_LIMIT};w=1 in RateLimit-Policy {policy:?}"
    );
    for refused in sent.iter().filter(|s| s.status == 429) {
        let retry: u64 =
            refused.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {:?}", refused.headers)).parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry} under a per-second limit");
        assert!(refused.headers.contains_key("ratelimit"), "no RateLimit on a 429: {:?}", refused.headers);
    }
}

/// e. Admin unreachable. With 10 requests admitted through each Envoy (one worker each)
/// and exchanged, admin is killed; past `fleet_timeout_ms` each Envoy keeps the others' counts it last heard and
/// admits on its own count at most its share ceil(L / P) = 20 (P = 3 proxies): the fleet
/// total stays within L + bound + P (per-Envoy counting on top of the stale others' counts
/// alone would admit 30 more through each, 120 in all). Then admin comes back: the snapshot
/// feed and the count exchange resume, no answer is a 5xx (the snapshot of before decides
/// meanwhile: max_staleness_secs is 600), and with the limit spent every Envoy refuses.
fn admin_down(stack: &Stack) {
    const RATE: f64 = 30.0;
    let limit = DOWN_LIMIT;
    let share = limit.div_ceil(ENVOYS as u64);
    let t = stack.tenant();
    let key = t.sk.clone();
    let route = |i: usize| (i % ENVOYS, "/key/items".to_owned(), Some(key.clone()));

    let before = drive(stack, 10 * ENVOYS, RATE, &route);
    assert_eq!(accepted(&before), 10 * ENVOYS as u64, "under the limit, every request passes");
    // Ten exchanges: every Envoy has reported its 10 and heard the others' 20.
    std::thread::sleep(Duration::from_millis(10 * SYNC_MS));
    stack.kill_admin();
    // No traffic until every Envoy has noticed (no successful exchange for fleet_timeout_ms):
    // requests in between would be decided on the others' counts of before alone.
    std::thread::sleep(Duration::from_millis(FLEET_TIMEOUT_MS + 1000));
    // New connections: they reach every worker, also one that exchanged nothing before
    // admin went away; it knows P and the cut-off from its Envoy's shared view.
    let during = drive_with(stack, 30 * ENVOYS, RATE, &route, true);
    let during_per_envoy: Vec<u64> =
        (0..ENVOYS).map(|e| during.iter().filter(|s| s.envoy == e && s.status == 200).count() as u64).collect();
    let bound = bound(peak_rate(&before).max(peak_rate(&during)));
    let total = accepted(&before) + accepted(&during);
    eprintln!(
        "admin down: {} accepted before, {during_per_envoy:?} per Envoy while admin was down; total {total} (limit {limit}, share {share}, bound {bound})",
        accepted(&before)
    );
    for (e, n) in during_per_envoy.iter().enumerate() {
        assert!(
            *n <= share,
            "Envoy {e} admitted {n} more on its own count while admin was down, more than its share ceil({limit}/{ENVOYS}) = {share}"
        );
        assert!(*n >= 1, "Envoy {e} admitted nothing while admin was down, though its own count (10) was under its share {share}");
    }
    assert!(
        total <= limit + bound + ENVOYS as u64,
        "the fleet admitted {total} with admin down, more than L + bound + P = {limit} + {bound} + {ENVOYS}"
    );
    for answer in &during {
        assert_limit_headers(answer, "key-1h", limit, 3600);
    }

    // Admin back: a key made now reaches every Envoy (the feed resumed), then a second of
    // exchanges, then the spent key is refused everywhere (or, if the fleet admitted less
    // than L while admin was down, admitted up to L + bound at most).
    stack.restart_admin();
    let fresh = stack.create_key(&t.business_id, json!({"kind": "pk", "mode": "live"}));
    let urls = stack.envoy_urls();
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = stack.through_envoy_at(url, "GET", "/key/probe", &[("SECRET_KEY", fresh.as_bytes())]);
            if reply.status == 200 {
                break;
            }
            assert!(reply.status < 500, "Envoy {url} answered {} after admin's restart: {}", reply.status, reply.body);
            assert!(Instant::now() < deadline, "a key made after admin's restart did not pass through Envoy {url} within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_millis(10 * SYNC_MS));
    let after = drive(stack, 10 * ENVOYS, RATE, &route);
    let all = total + accepted(&after);
    eprintln!("admin back: {} of {} accepted; {all} in all", accepted(&after), after.len());
    assert!(all <= limit + bound + ENVOYS as u64, "{all} admitted in all after admin came back, more than {limit} + {bound} + {ENVOYS}");
    if total >= limit {
        assert_eq!(accepted(&after), 0, "the limit was spent ({total} of {limit}) yet Envoys admitted more after admin came back");
    }
    for answer in &after {
        assert_limit_headers(answer, "key-1h", limit, 3600);
    }
}
