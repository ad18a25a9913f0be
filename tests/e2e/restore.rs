//! A backup and its restore, as the README tells them, through the real binaries: with
//! admin stopped, `keygate-admin migrate` takes a verified copy of its sled store; admin goes
//! on (a new key Envoy admits); then the copy is put back over the data directory. Admin
//! starts a new feed history on it, and Envoy follows the restored store: the key the
//! backup never held is refused again, the one it held still passes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keygate_e2e::{artifact, Stack, StackOptions, PROXY_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    // Its own stack: it stops and restarts admin.
    vec![Suite { name: "restore", options: StackOptions::default, cases: CASES }]
}

const CASES: &[Case] = &[("a_restored_backup_starts_a_new_history_that_envoy_follows", restored_backup)];

/// `keygate-admin migrate --from FROM --to TO [extra] --json`, which must verify.
fn migrate(from: &Path, to: &Path, extra: &[&str]) -> Value {
    let out = Command::new(artifact("KEYGATE_ADMIN_BIN", "target/debug/keygate-admin"))
        .args(["migrate", "--from", &format!("sled:{}", from.display()), "--to", &format!("sled:{}", to.display()), "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "migrate failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["verified"], json!(true), "{report}");
    report
}

fn history(stack: &Stack) -> String {
    let (status, full) = stack.admin(Method::GET, "/v1/snapshot", Some(PROXY_TOKEN), None);
    assert_eq!(status, 200, "{full}");
    full["history"].as_str().unwrap().to_owned()
}

fn status_of(stack: &Stack, key: &str) -> u16 {
    stack.through_envoy("GET", "/key/probe", &[("secret_key", key.as_bytes())]).0
}

fn restored_backup(stack: &Stack) {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    let before = history(stack);
    let (data, backup) = (stack.dir.join("data"), stack.dir.join("backup"));

    // The backup: admin stopped (killed: every acknowledged write is on disk), a verified copy.
    stack.kill_admin();
    migrate(&data, &backup, &[]);
    stack.restart_admin();
    assert_eq!(history(stack), before, "admin on its own directory keeps its history");
    let later = stack.create_key(&t.business_id, json!({"kind": "sk", "mode": "live"}));
    stack.wait_for_key(&later);

    // The restore: admin stopped, the backup copied back over its store.
    stack.kill_admin();
    let restored = migrate(&backup, &data, &["--replace"]);
    assert_eq!(restored["replaced"], json!(true));
    stack.restart_admin();
    assert_ne!(history(stack), before, "the restored store has a history of its own");
    let log = std::fs::read_to_string(stack.dir.join("admin.log")).unwrap_or_default();
    assert!(log.contains("a new feed history begins"), "admin says so in its log");

    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(stack, &later) == 200 {
        assert!(Instant::now() < deadline, "Envoy still admits a key the restored store never held, 30 s on");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status_of(stack, &later), 401);
    assert_eq!(status_of(stack, &t.sk), 200, "the key the backup held still passes");
}
