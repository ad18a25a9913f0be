//! `keygate-admin serve` as a process: generated tokens printed once, the listening line,
//! a clean stop on SIGTERM, and the stored tokens kept across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::StatusCode;
use serde_json::json;

/// The binary itself: generated tokens printed once, the listening line, SIGTERM.
#[test]
fn binary_prints_tokens_once_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate-admin"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .env_remove("KEYGATE_OPERATOR_TOKEN")
            .env_remove("KEYGATE_PROXY_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "exited early: {lines:?}");
            let done = line.starts_with("keygate-admin listening on ");
            lines.push(line.trim_end().to_owned());
            if done {
                break;
            }
        }
        (child, lines)
    };
    let stop = |mut child: std::process::Child| {
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
    };

    let (child, lines) = start();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let operator = lines[0].rsplit(' ').next().unwrap().to_owned();
    assert!(lines[0].contains("operator") && operator.starts_with("kgo_") && operator.len() >= 36, "{lines:?}");
    assert!(lines[1].contains("proxy") && lines[1].rsplit(' ').next().unwrap().starts_with("kgp_"), "{lines:?}");
    let addr: std::net::SocketAddr = lines[2].trim_start_matches("keygate-admin listening on ").parse().unwrap();
    assert_ne!(addr.port(), 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    // Creates a business on the server at `addr` with the generated operator token.
    let create_business = |addr: &str, name: &str| {
        rt.block_on(async {
            reqwest::Client::new()
                .post(format!("http://{addr}/v1/businesses"))
                .bearer_auth(&operator)
                .json(&json!({ "name": name }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    assert_eq!(create_business(&addr.to_string(), "Acme"), StatusCode::CREATED);
    stop(child);

    // Second start: nothing generated, the first operator token still works.
    let (child, lines) = start();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let addr = lines[0].trim_start_matches("keygate-admin listening on ").to_owned();
    assert_eq!(create_business(&addr, "Again"), StatusCode::CREATED);
    stop(child);
}
