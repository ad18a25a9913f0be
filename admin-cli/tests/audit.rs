//! `keygate-admin audit` of the real binary against a real server: the readable table,
//! `--json`, filters as flags, and the cursor to the next page.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_cli;
#[path = "../../admin/tests/common/mod.rs"]
mod common;

use client_cli::cli;
use common::{Server, OPERATOR};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lists_entries_readably_and_as_json_with_filters() {
    let server = Server::fresh().await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let key_id = key["id"].as_str().unwrap();
    let (ok, _, err) = cli(&server, &["rotate-key", "--key", key_id]).await;
    assert!(ok, "{err}");

    let (ok, out, err) = cli(&server, &["audit"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("AT") && lines[0].contains("ACTION") && lines[0].contains("OBJECT"), "{out}");
    assert!(
        lines[1].contains("key.rotate") && lines[1].contains(key_id) && lines[1].contains("operator") && lines[1].contains("127.0.0.1"),
        "{out}"
    );
    assert_eq!(lines.len(), 4, "rotate, create, business: {out}");
    assert!(!out.contains(key["key"].as_str().unwrap()), "no raw key");

    let (ok, out, err) =
        cli(&server, &["audit", "--json", "--object-type", "key", "--object-id", key_id, "--since", "2020-01-01T00:00:00+00:00"]).await;
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let actions: Vec<&str> = page["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["key.rotate", "key.create"]);

    let (ok, out, err) = cli(&server, &["audit", "--limit", "1", "--business", &biz]).await;
    assert!(ok, "{err}");
    assert!(out.contains("key.rotate") && err.contains("--cursor 3"), "{out} / {err}");
    let (ok, out, _) = cli(&server, &["audit", "--limit", "1", "--cursor", "3"]).await;
    assert!(ok && out.contains("key.create"), "{out}");

    let (ok, _, err) = cli(&server, &["audit", "--since", "yesterday"]).await;
    assert!(!ok && err.contains("invalid_query"), "{err}");
    server.stop().await;
}

/// `keygate-admin serve` over a sled directory on a free loopback port.
fn serve(data: &std::path::Path) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate-admin"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--data", data.to_str().unwrap()])
        .env("KEYGATE_OPERATOR_TOKEN", OPERATOR)
        .env("KEYGATE_PROXY_TOKEN", common::PROXY)
        .env_remove("KEYGATE_STORE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}"))
}

async fn up(base: &str) {
    for _ in 0..200 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{base} did not come up");
}

/// An acknowledged change's entry is on disk with it: after `kill -9` and a restart, the
/// entry of every acknowledged change is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = serve(dir.path());
    up(&base).await;
    let client = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| client.post(format!("{base}{path}")).bearer_auth(OPERATOR).json(&body).send();
    let biz: Value = post("/v1/businesses".into(), serde_json::json!({"name": "Crash"})).await.unwrap().json().await.unwrap();
    let biz = biz["id"].as_str().unwrap().to_owned();
    let mut keys = Vec::new();
    for _ in 0..5 {
        let r = post(format!("/v1/businesses/{biz}/keys"), serde_json::json!({"kind": "sk", "mode": "live"})).await.unwrap();
        assert_eq!(r.status(), 201);
        keys.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    child.kill().unwrap(); // SIGKILL: no graceful flush
    child.wait().unwrap();

    let (mut child, base) = serve(dir.path());
    up(&base).await;
    let page: Value =
        client.get(format!("{base}/v1/audit?object_type=key")).bearer_auth(OPERATOR).send().await.unwrap().json().await.unwrap();
    let mut logged: Vec<String> =
        page["entries"].as_array().unwrap().iter().map(|e| e["object"]["id"].as_str().unwrap().to_owned()).collect();
    logged.reverse();
    assert_eq!(logged, keys, "{page}");
    child.kill().unwrap();
    child.wait().unwrap();
}
