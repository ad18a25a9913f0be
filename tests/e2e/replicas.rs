//! Two admin replicas over one PostgreSQL database, behind one Envoy whose `keygate_admin`
//! cluster lists both with active health checks (envoy.yaml): the replica feeding the filter
//! is killed, and PostgreSQL is stopped under both. Over PostgreSQL only: these suites run in
//! the `e2e-postgres` phase of `cargo xtask test` (ignored without `KEYGATE_TEST_POSTGRES`).

use keygate_e2e::postgres::CLUSTER_PASSWORD;
use keygate_e2e::{Stack, StackOptions, OPERATOR_TOKEN};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::Suite;

pub fn suites() -> Vec<Suite> {
    vec![
        Suite {
            name: "replicas_failover",
            options: failover_options,
            cases: &[("killed_replica_the_filter_follows_the_other_without_a_resync", killed_replica)],
        },
        Suite {
            name: "replicas_outage",
            options: outage_options,
            cases: &[("postgres_down_503_for_writes_and_reads_envoy_decides_from_its_snapshot", postgres_down)],
        },
    ]
}

fn failover_options() -> StackOptions {
    StackOptions { admin_replica: true, ..StackOptions::default() }
}

fn outage_options() -> StackOptions {
    // Its own PostgreSQL: stopping the shared one would fail every other suite running now.
    StackOptions { admin_replica: true, own_postgres: true, ..StackOptions::default() }
}

/// How long PostgreSQL stays down (the issue: "PostgreSQL stopped for 30 s").
const OUTAGE: Duration = Duration::from_secs(30);
/// Requests sent to one replica at the start of the outage, each failing.
const OUTAGE_BURST: usize = 100;
/// A generous bound on the filter following changes again after its replica died: the
/// failed long-poll is retried after `poll_interval_ms` (1 s), and Envoy's health check
/// (1 s interval, 2 failures) takes the dead replica out of the cluster.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// A request to `base` (one replica) as the operator.
fn call(stack: &Stack, base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = stack.http.request(method, format!("{base}{path}")).bearer_auth(OPERATOR_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    match req.send() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(e) => panic!("{base}{path}: {e}"),
    }
}

/// A new live sk key in `business` through `base`: (id, raw key).
fn new_key(stack: &Stack, base: &str, business: &str) -> (String, String) {
    let (status, key) =
        call(stack, base, reqwest::Method::POST, &format!("/v1/businesses/{business}/keys"), Some(json!({"kind": "sk", "mode": "live"})));
    assert_eq!(status, 201, "create a key through {base}: {key}");
    (key["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap().to_owned())
}

fn deactivate(stack: &Stack, base: &str, id: &str) {
    let (status, body) = call(stack, base, reqwest::Method::POST, &format!("/v1/keys/{id}/deactivate"), Some(json!({})));
    assert_eq!(status / 100, 2, "deactivate {id} through {base}: {body}");
}

fn new_business(stack: &Stack, base: &str) -> String {
    let (status, business) = call(stack, base, reqwest::Method::POST, "/v1/businesses", Some(json!({"name": stack.unique("Replicated ")})));
    assert_eq!(status, 201, "create a business through {base}: {business}");
    business["id"].as_str().unwrap().to_owned()
}

/// The status Envoy answers for a key-only route with `key`.
fn key_status(stack: &Stack, key: &str) -> u16 {
    stack.through_envoy("GET", "/key/probe", &[("secret_key", key.as_bytes())]).0
}

/// Waits (up to `limit`) until Envoy answers `want` for `key`; how long that took.
fn until_status(stack: &Stack, key: &str, want: u16, limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    while key_status(stack, key) != want {
        assert!(start.elapsed() < limit, "{what}: Envoy did not answer {want} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// `keygate_admin_longpoll_waiters` of the replica at `base` (0 when it does not answer).
fn waiters(stack: &Stack, base: &str) -> u64 {
    let text = stack.http.get(format!("{base}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("keygate_admin_longpoll_waiters ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// How many full snapshots the filter has applied so far (its log says each one).
fn full_syncs(stack: &Stack) -> usize {
    stack.envoy_log().matches(" applied (full, ").count()
}

fn killed_replica(stack: &Stack) {
    let replicas = [("admin", stack.admin_url.clone()), ("admin_2", stack.replica_url.clone().unwrap())];
    let business = new_business(stack, &replicas[0].1);
    let (_, good) = new_key(stack, &replicas[0].1, &business);
    let (bad_id, bad) = new_key(stack, &replicas[1].1, &business);
    until_status(stack, &good, 200, Duration::from_secs(10), "a key made through replica 1");
    until_status(stack, &bad, 200, Duration::from_secs(10), "a key made through replica 2");
    deactivate(stack, &replicas[0].1, &bad_id);
    until_status(stack, &bad, 401, Duration::from_secs(10), "a deactivation through replica 1");

    // The replica holding the filter's long-poll (the filter's leader keeps one in flight).
    let start = Instant::now();
    let (victim, survivor) = loop {
        match replicas.iter().map(|(_, url)| waiters(stack, url)).collect::<Vec<_>>()[..] {
            [w, 0] if w > 0 => break (&replicas[0], &replicas[1]),
            [0, w] if w > 0 => break (&replicas[1], &replicas[0]),
            _ => assert!(start.elapsed() < Duration::from_secs(20), "no replica holds the filter's long-poll"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let full_before = full_syncs(stack);
    stack.kill(victim.0);
    let killed = Instant::now();

    // Decisions continue from the snapshot, and a change made through the survivor arrives.
    let (_, fresh) = new_key(stack, &survivor.1, &business);
    let (other_id, other) = new_key(stack, &survivor.1, &business);
    let mut checks = 0;
    while key_status(stack, &fresh) != 200 {
        assert!(killed.elapsed() < FAILOVER_BOUND, "a key made through the surviving replica did not pass within {FAILOVER_BOUND:?}");
        assert_eq!(key_status(stack, &good), 200, "a good key was refused during the failover");
        assert_eq!(key_status(stack, &bad), 401, "a deactivated key passed during the failover");
        checks += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let followed = killed.elapsed();
    println!(
        "replicas: the filter followed changes again {:.2} s after its replica was killed ({checks} checks meanwhile)",
        followed.as_secs_f64()
    );
    until_status(stack, &other, 200, Duration::from_secs(5), "the second key made through the survivor");
    deactivate(stack, &survivor.1, &other_id);
    until_status(stack, &other, 401, Duration::from_secs(10), "a deactivation through the survivor");
    assert_eq!(key_status(stack, &good), 200);
    assert_eq!(key_status(stack, &bad), 401);
    assert_eq!(full_syncs(stack), full_before, "the filter took a full snapshot after the failover; the feed's versions are global");

    // Envoy's health check took the dead replica out of the cluster; the survivor stays in.
    let flags = |url: &str| format!("keygate_admin::{}::health_flags::", url.trim_start_matches("http://"));
    let (dead, alive) = (format!("{}/failed_active_hc", flags(&victim.1)), format!("{}healthy", flags(&survivor.1)));
    let clusters = || stack.http.get(format!("{}/clusters", stack.envoy_admin_url)).send().and_then(|r| r.text()).unwrap_or_default();
    let start = Instant::now();
    while !(clusters().contains(&dead) && clusters().contains(&alive)) {
        assert!(start.elapsed() < Duration::from_secs(15), "Envoy did not mark the killed replica failed: {}", clusters());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A write (503 expected while the database is down) and a read that needs the database,
/// through `base`; both must be 503 `storage_unavailable` with a JSON error.
fn assert_unavailable(stack: &Stack, base: &str, business: &str) {
    for (method, path, body) in [
        (reqwest::Method::POST, format!("/v1/businesses/{business}/keys"), Some(json!({"kind": "sk", "mode": "live"}))),
        (reqwest::Method::GET, format!("/v1/businesses/{business}/keys"), None),
    ] {
        let mut req = stack.http.request(method.clone(), format!("{base}{path}")).bearer_auth(OPERATOR_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("{method} {base}{path} while PostgreSQL is down: {e}"));
        let (status, retry_after) = (resp.status().as_u16(), resp.headers().get("retry-after").cloned());
        let reply: Value = resp.json().unwrap_or_else(|e| panic!("{method} {path}: not a JSON error: {e}"));
        assert_eq!(status, 503, "{method} {path} through {base} while PostgreSQL is down: {reply}");
        assert_eq!(reply["code"], "storage_unavailable", "{method} {path}: {reply}");
        assert_eq!(reply["success"], false, "{reply}");
        assert!(retry_after.is_some(), "{method} {path}: a 503 without Retry-After");
    }
}

fn postgres_down(stack: &Stack) {
    let replicas = [stack.admin_url.clone(), stack.replica_url.clone().unwrap()];
    let postgres = stack.postgres.as_ref().unwrap();
    let business = new_business(stack, &replicas[0]);
    let (good_id, good) = new_key(stack, &replicas[0], &business);
    let (bad_id, bad) = new_key(stack, &replicas[1], &business);
    deactivate(stack, &replicas[1], &bad_id);
    until_status(stack, &good, 200, Duration::from_secs(10), "a key made before the outage");
    until_status(stack, &bad, 401, Duration::from_secs(10), "a key deactivated before the outage");

    postgres.stop();
    let stopped = Instant::now();
    // A burst of failing requests: the log says so at most once a second, not once each.
    for _ in 0..OUTAGE_BURST {
        let (status, reply) = call(stack, &replicas[0], reqwest::Method::GET, &format!("/v1/businesses/{business}/keys"), None);
        assert_eq!(status, 503, "{reply}");
    }
    let mut last_admin_check: Option<Instant> = None;
    while stopped.elapsed() < OUTAGE {
        assert_eq!(key_status(stack, &good), 200, "a good key was refused {:?} into the outage", stopped.elapsed());
        assert_eq!(key_status(stack, &bad), 401, "a deactivated key passed {:?} into the outage", stopped.elapsed());
        if last_admin_check.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            replicas.iter().for_each(|base| assert_unavailable(stack, base, &business));
            last_admin_check = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stack.assert_alive();

    postgres.resume();
    // Writes succeed again (each replica reconnects on its own), and the changes reach Envoy.
    let back = Instant::now();
    let mut made = Vec::new();
    for base in &replicas {
        loop {
            let (status, key) = call(
                stack,
                base,
                reqwest::Method::POST,
                &format!("/v1/businesses/{business}/keys"),
                Some(json!({"kind": "sk", "mode": "live"})),
            );
            if status == 201 {
                made.push(key["key"].as_str().unwrap().to_owned());
                break;
            }
            assert_eq!(status, 503, "{base} after PostgreSQL returned: {key}");
            assert!(back.elapsed() < Duration::from_secs(60), "{base} still refuses writes 60 s after PostgreSQL returned: {key}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    println!("replicas: both replicas accepted writes {:.2} s after PostgreSQL returned", back.elapsed().as_secs_f64());
    for key in &made {
        until_status(stack, key, 200, Duration::from_secs(20), "a key made after the outage");
    }
    deactivate(stack, &replicas[1], &good_id);
    until_status(stack, &good, 401, Duration::from_secs(20), "a deactivation after the outage");
    stack.assert_alive();

    // One line a second at most for the outage's failed requests, in each replica's log.
    let most = stopped.elapsed().as_secs() + 2;
    for name in ["admin.log", "admin_2.log"] {
        let text = std::fs::read_to_string(stack.dir.join(name)).unwrap_or_default();
        let lines = text.lines().filter(|l| l.contains("request failed") && l.contains("storage_unavailable")).count();
        assert!((1..=most as usize).contains(&lines), "{name}: {lines} lines for the outage's failures (1 to {most} expected)");
    }

    // The database password (in both replicas' store URL) is in no log, not even in the
    // connection errors of the outage.
    for entry in std::fs::read_dir(&stack.dir).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.ends_with(".stdout") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(!text.contains(CLUSTER_PASSWORD), "{name} shows the database password");
        }
    }
}
