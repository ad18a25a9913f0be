//! No secret (API key, password, operator or proxy token, access token) in any admin or
//! Envoy log line, with every component logging at debug.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use keygate_core::{ApiKey, KeyKind, Mode};
use keygate_e2e::{random_bytes, Stack, StackOptions, PASSWORD};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

use crate::jwt_attacks::{parts, ready_tenant};
use crate::path::three;
use crate::Suite;

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "attacks_logs", options: debug_options, cases: &[("debug_logs_hold_no_key_password_or_token", no_secrets_in_logs)] }]
}

fn debug_options() -> StackOptions {
    StackOptions { log_level: Some("debug"), ..StackOptions::default() }
}

/// Envoy's own debug dumps of every request header (the downstream request in the HTTP
/// connection manager, the upstream request in the router): Envoy prints header values
/// there by design and offers no redaction, so secrets sent by clients appear in them. They
/// are counted and reported, not failed on; a production Envoy must keep the `http` and
/// `router` components above debug (README). Everything else, the keygate filter's own
/// lines included, must be clean.
const ENVOY_HEADER_DUMPS: &[&str] = &["request headers complete", "router decoding headers"];

/// Every place a secret appears in the log files under `dir` (not the data directory):
/// (file, line number, which secret), and how many lines were skipped as Envoy's own
/// header dumps.
fn secret_hits(dir: &Path, secrets: &[(String, String)]) -> (Vec<(String, usize, String)>, usize) {
    let mut hits = Vec::new();
    let mut skipped = 0;
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".log") || name.ends_with(".stdout")) {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        // Envoy entries span lines: an entry starts with "[<date>"; the rest continue it.
        let mut in_dump = false;
        for (n, line) in text.lines().enumerate() {
            if name == "envoy.log" {
                if line.starts_with("[20") {
                    in_dump = ENVOY_HEADER_DUMPS.iter().any(|m| line.contains(m));
                }
                if in_dump {
                    skipped += 1;
                    continue;
                }
            }
            for (label, secret) in secrets {
                if line.contains(secret.as_str()) {
                    hits.push((name.clone(), n + 1, label.clone()));
                }
            }
        }
    }
    (hits, skipped)
}

/// The needles for one secret: the whole value, and for keys the part after the loggable
/// prefix, for JWTs the payload and the signature on their own.
fn needles(label: &str, secret: &str) -> Vec<(String, String)> {
    let mut out = vec![(label.to_owned(), secret.to_owned())];
    if keygate_core::key::parse_prefix(secret).is_some() && secret.len() > 12 {
        out.push((format!("{label} (after its prefix)"), secret[12..].to_owned()));
    }
    let segs: Vec<&str> = secret.split('.').collect();
    if segs.len() == 3 {
        out.push((format!("{label} (payload)"), segs[1].to_owned()));
        out.push((format!("{label} (signature)"), segs[2].to_owned()));
    }
    out
}

fn no_secrets_in_logs(stack: &Stack) {
    // The search finds a planted secret, so a 0 below means something.
    let planted = std::env::temp_dir().join(format!("keygate-planted-{}", std::process::id()));
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(planted.join("admin.log"), "2026 DEBUG request authorization=Bearer eyJhbGciOi.eyJzdWIiOiJ4In0.c2lnbmF0dXJl ok\n")
        .unwrap();
    let planted_token = "eyJhbGciOi.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    std::fs::write(
        planted.join("envoy.log"),
        format!("[2026-01-01 00:00:00.000][1][debug][http] [conn_manager_impl.cc:1] request headers complete (end_stream=true):\n'authorization', 'Bearer {planted_token}'\n[2026-01-01 00:00:00.001][1][info][wasm] [context.cc:1] wasm log keygate keygate: token {planted_token}\n"),
    )
    .unwrap();
    let (found, skipped) = secret_hits(&planted, &needles("planted token", planted_token));
    let _ = std::fs::remove_dir_all(&planted);
    assert_eq!((found.len(), skipped), (6, 2), "the log search misses a planted secret: {found:?}");

    let mut secrets: Vec<(String, String)> = vec![
        ("operator token".into(), keygate_e2e::OPERATOR_TOKEN.into()),
        ("proxy token".into(), keygate_e2e::PROXY_TOKEN.into()),
        ("password".into(), PASSWORD.into()),
    ];
    let t = ready_tenant(stack);
    secrets.push(("sign-in access token".into(), t.access_token.clone()));
    secrets.push(("sk key".into(), t.sk.clone()));

    // A second sign-in, keeping the refresh token, then a refresh.
    let (status, signin) = stack.admin(reqwest::Method::POST, "/auth/signin", None, Some(json!({"email": t.email, "password": PASSWORD})));
    assert_eq!(status, 200, "{signin}");
    let access = signin["accessToken"].as_str().unwrap().to_owned();
    let refresh = signin["refreshToken"].as_str().unwrap().to_owned();
    secrets.push(("access token".into(), access.clone()));
    secrets.push(("refresh token".into(), refresh.clone()));
    let (status, refreshed) = stack.admin(reqwest::Method::POST, "/auth/refresh", None, Some(json!({"refresh_token": refresh})));
    if status == 200 {
        for field in ["accessToken", "refreshToken", "access_token", "refresh_token"] {
            if let Some(v) = refreshed[field].as_str() {
                secrets.push((format!("refreshed {field}"), v.to_owned()));
            }
        }
    } else {
        assert!(status != 404 && status < 500, "refresh: {status} {refreshed}");
    }
    // Wrong passwords (logged as failures, never echoed).
    let wrong = "Wr0ng-passw0rd-for-log-test";
    secrets.push(("wrong password".into(), wrong.into()));
    let (status, _) = stack.admin(reqwest::Method::POST, "/auth/signin", None, Some(json!({"email": t.email, "password": wrong})));
    assert_eq!(status, 401);
    let (status, _) =
        stack.admin(reqwest::Method::POST, "/auth/signin", None, Some(json!({"email": "nobody@example.com", "password": wrong})));
    assert!(status == 401 || status == 429);

    // More keys, an API-key login, requests with valid and invalid credentials.
    let pk = stack.create_key(&t.business_id, json!({"kind": "pk", "mode": "test", "name": "log test"}));
    secrets.push(("pk key".into(), pk.clone()));
    let (status, login) = stack.admin(reqwest::Method::POST, "/auth/login", None, Some(json!({"api_key": t.sk, "session_id": "log-test"})));
    assert_eq!(status, 200, "{login}");
    let login_token = login["access_token"].as_str().unwrap().to_owned();
    secrets.push(("api-key login token".into(), login_token.clone()));
    let never = ApiKey::generate(KeyKind::Sk, Mode::Live, random_bytes(128)).unwrap().expose().to_owned();
    secrets.push(("unknown key".into(), never.clone()));
    let mut typo = t.sk.clone();
    typo.pop();
    typo.push('x');
    secrets.push(("typo key".into(), typo.clone()));
    let (_, _, sig) = parts(&access);
    let forged = format!("{}.{}.{sig}", B64.encode(br#"{"alg":"EdDSA","typ":"at+jwt","kid":"nope"}"#), B64.encode(br#"{"sub":"x"}"#));
    secrets.push(("forged token".into(), forged.clone()));
    stack.wait_for_key(&pk);
    for bearer in [&access, &login_token, &forged, &t.access_token] {
        let b = format!("Bearer {bearer}");
        for key in [&t.sk, &never, &typo] {
            let _ = stack.through_envoy("GET", "/orders", &three(&b, key, &t.business_id));
        }
    }
    let _ = stack.through_envoy("GET", "/key/x", &[("authorization", format!("Bearer {}", t.sk).as_bytes())]);
    let _ = stack.through_envoy("POST", "/key/x", &[("SECRET_KEY", pk.as_bytes())]);
    let _ = stack.through_envoy("GET", "/public/x", &[("SECRET_KEY", t.sk.as_bytes())]);
    // Revoke and log out, which also log.
    let sid = parts(&access).1["sid"].as_str().unwrap().to_owned();
    let _ = stack.admin(reqwest::Method::DELETE, &format!("/v1/sessions/{sid}"), Some(keygate_e2e::OPERATOR_TOKEN), None);
    let _ = stack.admin(reqwest::Method::POST, "/auth/logout", Some(&login_token), None);
    std::thread::sleep(Duration::from_millis(1500)); // let Envoy and admin flush their logs

    let all: Vec<(String, String)> = secrets.iter().flat_map(|(l, s)| needles(l, s)).filter(|(_, s)| s.len() >= 16).collect();
    let (hits, envoy_dumps) = secret_hits(&stack.dir, &all);
    eprintln!("attacks_logs: {} needles, {envoy_dumps} lines of Envoy's own header dumps skipped", all.len());
    let filter_lines = stack.envoy_log().lines().filter(|l| l.contains("wasm log keygate")).count();
    assert!(filter_lines > 0, "the keygate filter logged nothing, so its lines were not searched");
    let lines: usize = ["admin.log", "admin.stdout", "envoy.log", "echo.log"]
        .iter()
        .map(|f| std::fs::read_to_string(stack.dir.join(f)).map(|t| t.lines().count()).unwrap_or(0))
        .sum();
    assert!(lines > 100, "expected a debug-level log to search, found {lines} lines in {}", stack.dir.display());
    assert!(
        hits.is_empty(),
        "{} secret(s) in logs under {} (searched {lines} lines for {} needles): {:?}",
        hits.len(),
        stack.dir.display(),
        all.len(),
        &hits[..hits.len().min(20)]
    );
}
