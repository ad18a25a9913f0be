//! Bulk import through the real `keygate-admin import` binary against a real server: a
//! 100 000-line file of raw and hashed keys with bad lines of every kind, the summary's
//! counts and reasons, an idempotent re-run, imported keys logging in, a JSON-lines file,
//! and a CSV header that fails the whole file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../admin/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{assert_error, Server, OPERATOR};
use keygate_core::{ApiKey, KeyHash, KeyKind, Mode};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LINES: usize = 100_000;

fn legacy_key(i: usize) -> String {
    // Another vendor's shape: its own prefix, 24 characters after it.
    let digest = KeyHash::of_raw(&format!("seed-{i}")).to_hex();
    format!("vnd_live_{}", &digest[..24])
}

fn keygate_key(i: usize) -> ApiKey {
    let bytes: Vec<u8> = (0..4).flat_map(|j| KeyHash::of_raw(&format!("kg-{i}-{j}")).0).collect();
    ApiKey::generate(KeyKind::Sk, Mode::Test, bytes).unwrap()
}

/// What the test expects of the file.
struct Plan {
    good: usize,
    /// Good lines for the other business.
    other: usize,
    /// line → a part of the reason
    bad: BTreeMap<u64, &'static str>,
    /// Raw keys that must log in afterwards, and the raw key behind one hashed line.
    raw_legacy: String,
    raw_keygate: String,
    raw_behind_hash: String,
    secrets: Vec<String>,
}

fn write_csv(path: &Path, biz: &str, other_biz: &str) -> Plan {
    let mut out = String::with_capacity(LINES * 110);
    out.push_str("business,kind,mode,name,expires_at,key,key_sha256\n");
    let mut plan = Plan {
        good: 0,
        other: 0,
        bad: BTreeMap::new(),
        raw_legacy: String::new(),
        raw_keygate: String::new(),
        raw_behind_hash: String::new(),
        secrets: vec![],
    };
    let typo = {
        let mut raw = keygate_key(999_999).expose().to_owned();
        let last = raw.pop().unwrap();
        raw.push(if last == 'a' { 'b' } else { 'a' });
        raw
    };
    let bad_lines: [(&str, &'static str); 12] = [
        ("biz_x,sk,live,\"unclosed,,legacy_key_aaaaaaaa,", "not valid CSV"),
        ("biz_x,sk,live,name,,", "expected 7 fields"),
        (",sk,live,,,legacy_key_bbbbbbbb,", "business is missing"),
        ("BIZ,rk,live,,,legacy_key_cccccccc,", "kind must be sk or pk"),
        ("BIZ,sk,prod,,,legacy_key_dddddddd,", "mode must be live or test"),
        ("BIZ,sk,live,,next tuesday,legacy_key_eeeeeeee,", "RFC 3339"),
        ("BIZ,sk,live,,2001-01-01T00:00:00Z,legacy_key_ffffffff,", "in the past"),
        ("BIZ,sk,live,,,,not-hex-at-all", "64 hex digits"),
        ("BIZ,sk,live,,,,", "key or key_sha256 is missing"),
        ("biz_doesnotexist0000,sk,live,,,legacy_key_gggggggg,", "business not found"),
        ("BIZ,sk,test,,,TYPO,", "wrong checksum"),
        ("BIZ,sk,live,,,short,", "printable ASCII"),
    ];
    // Line 1 is the header; data from line 2.
    for i in 0..LINES {
        let line = (i + 2) as u64;
        if i % 5000 == 4999 {
            let (text, reason) = bad_lines[(i / 5000) % bad_lines.len()];
            out.push_str(&text.replace("BIZ", biz).replace("TYPO", &typo));
            plan.bad.insert(line, reason);
        } else if i % 10 == 3 {
            // Hashed import of a legacy key, with an expiry, in the other business.
            let raw = legacy_key(i);
            out.push_str(&format!("{other_biz},pk,live,hashed {i},2031-06-01T12:00:00Z,,{}", KeyHash::of_raw(&raw).to_hex()));
            if plan.raw_behind_hash.is_empty() {
                plan.raw_behind_hash = raw.clone();
            }
            plan.secrets.push(raw);
            plan.good += 1;
            plan.other += 1;
        } else if i % 100 == 7 {
            // keygate's own format, raw (a re-import from another keygate, say).
            let key = keygate_key(i);
            out.push_str(&format!("{biz},sk,test,\"kg, {i}\",,{},", key.expose()));
            if plan.raw_keygate.is_empty() {
                plan.raw_keygate = key.expose().to_owned();
            }
            plan.secrets.push(key.expose().to_owned());
            plan.good += 1;
        } else {
            let raw = legacy_key(i);
            out.push_str(&format!("{biz},sk,live,legacy {i},,{raw},"));
            if plan.raw_legacy.is_empty() {
                plan.raw_legacy = raw.clone();
            }
            if i < 1000 {
                plan.secrets.push(raw);
            }
            plan.good += 1;
        }
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
    plan
}

/// Runs `keygate-admin import` (off the runtime's threads: the server is in this process).
async fn import(server: &Server, file: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate-admin"));
    command
        .arg("import")
        .arg(file)
        .args(["--json", "--show-rejected", "1000"])
        .args(extra)
        .env("KEYGATE_URL", &server.base)
        .env("KEYGATE_OPERATOR_TOKEN", OPERATOR);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), summary, format!("{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_line_file_imports_with_reasons_reruns_as_skipped_and_its_keys_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    let biz = server.business("Acme").await;
    let other = server.business("Other").await;
    let file = dir.path().join("keys.csv");
    let plan = write_csv(&file, &biz, &other);
    assert_eq!(plan.good + plan.bad.len(), LINES);

    let started = std::time::Instant::now();
    let (code, summary, output) = import(&server, &file, &[]).await;
    eprintln!("first import of {LINES} lines: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(code, 2, "some lines are rejected: exit 2\n{output}");
    assert_eq!(summary["records"], json!(LINES), "{summary}");
    assert_eq!(summary["imported"], json!(plan.good), "{summary}");
    assert_eq!(summary["skipped"], json!(0), "{summary}");
    assert_eq!(summary["rejected"], json!(plan.bad.len()), "{summary}");
    let rejected = summary["rejected_lines"].as_array().unwrap();
    assert_eq!(rejected.len(), plan.bad.len());
    for (r, (line, reason)) in rejected.iter().zip(&plan.bad) {
        assert_eq!(r["line"], json!(line), "{r}");
        let got = r["reason"].as_str().unwrap();
        assert!(got.contains(reason), "line {line}: {got:?} should say {reason:?}");
    }
    for secret in &plan.secrets {
        assert!(!output.contains(secret.as_str()), "the import's output shows a raw key");
    }

    // The same file again: nothing new, the same rejections.
    let (code, again, _) = import(&server, &file, &["--parallel", "1"]).await;
    assert_eq!(code, 2);
    assert_eq!(
        (again["imported"].clone(), again["skipped"].clone(), again["rejected"].clone()),
        (json!(0), json!(plan.good), json!(plan.bad.len())),
        "{again}"
    );

    // Imported keys log in: a legacy raw key, a keygate raw key, and the raw key behind a hash.
    for raw in [&plan.raw_legacy, &plan.raw_keygate, &plan.raw_behind_hash] {
        let (status, body) = server.login(raw, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    }
    // A near miss of a legacy key does not.
    let mut wrong = plan.raw_legacy.clone();
    wrong.push('x');
    let (status, body) = server.login(&wrong, None).await;
    assert_error(status, &body, 401, "invalid_api_key");

    // Listed with a neutral prefix (no part of a foreign key shown), keygate keys with theirs.
    let (status, listed) = server.get(&format!("/v1/businesses/{other}/keys"), Some(OPERATOR)).await;
    assert_eq!(status, StatusCode::OK);
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), plan.other);
    assert!(keys
        .iter()
        .all(|k| k["prefix"] == json!("imported") && k["kind"] == json!("pk") && k["expires_at"] == json!("2031-06-01T12:00:00Z")));
    let listed = server.get(&format!("/v1/businesses/{biz}/keys"), Some(OPERATOR)).await.1;
    assert!(listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["prefix"].as_str().is_some_and(|p| p.starts_with("sk_test_") && p.len() == 12)));

    // The filters' feed carries them (first page of a paged full snapshot).
    let (status, page) = server.snapshot("?limit=10").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["keys"].as_array().unwrap().len(), 10);
    server.stop().await;
}

#[tokio::test]
async fn json_lines_import_exits_0_and_a_bad_csv_header_fails_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    let biz = server.business("Acme").await;
    let file = dir.path().join("keys.ndjson");
    let raw = "rk_live_from_elsewhere_0001";
    let lines = [
        json!({"business": biz, "kind": "sk", "mode": "live", "name": "a", "key": raw}).to_string(),
        String::new(),
        json!({"business": biz, "kind": "pk", "mode": "test", "expires_at": null, "key_sha256": KeyHash::of_raw("other-gateway-key-2").to_hex()}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, summary, output) = import(&server, &file, &[]).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!((summary["imported"].clone(), summary["rejected"].clone()), (json!(2), json!(0)), "{summary}");
    assert_eq!(server.login(raw, None).await.0, StatusCode::OK);
    assert_eq!(server.login("other-gateway-key-2", None).await.0, StatusCode::OK);

    // A CSV without the needed columns fails as a whole: exit 1, nothing sent.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "business,kind,key\nbiz_x,sk,abcdefghij\n").unwrap();
    let (code, _, output) = import(&server, &bad, &[]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("no \"mode\" column"), "{output}");
    server.stop().await;
}
