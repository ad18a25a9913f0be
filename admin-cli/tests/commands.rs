//! The client subcommands of the real `keygate-admin` binary against a real server: each
//! operation once, readable and `--json` output, and an error's exit status and message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_cli;
#[path = "../../admin/tests/common/mod.rs"]
mod common;

use client_cli::cli;
use common::{sid_of, Server};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_covers_every_operation_with_readable_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (ok, out, _) = cli(&server, &["--help"]).await;
    assert!(ok);
    for sub in [
        "serve",
        "create-business",
        "create-user",
        "create-key",
        "list-keys",
        "rotate-key",
        "deactivate-key",
        "activate-key",
        "key-usage",
        "revoke-session",
        "rotate-signing-key",
        "signin",
        "refresh",
        "login",
        "logout",
    ] {
        assert!(out.contains(sub), "--help lacks {sub}: {out}");
    }

    let (ok, out, err) = cli(&server, &["create-business", "--name", "Acme", "--json"]).await;
    assert!(ok, "{err}");
    let biz: Value = serde_json::from_str(&out).unwrap();
    let biz = biz["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = cli(&server, &["create-key", "--business", &biz, "--kind", "sk", "--mode", "live", "--name", "ci"]).await;
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("key ") && l.contains("sk_live_")), "readable output shows the raw key: {out}");
    assert!(err.contains("only this once"), "{err}");
    let id = out.lines().find(|l| l.starts_with("id ")).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    let (ok, out, _) = cli(&server, &["list-keys", "--business", &biz]).await;
    assert!(ok && out.contains(&id) && out.contains("active") && !out.contains("sk_live_0"), "{out}");
    let (ok, out, err) = cli(&server, &["rotate-key", "--key", &id, "--grace-secs", "60", "--json"]).await;
    assert!(ok, "{err}");
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["id"], json!(id));
    let (ok, out, _) = cli(&server, &["login", "--api-key", rotated["key"].as_str().unwrap(), "--json"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = cli(&server, &["deactivate-key", "--key", &id]).await;
    assert!(ok && out.contains("false"), "{out}");
    let (ok, _, _) = cli(&server, &["activate-key", "--key", &id]).await;
    assert!(ok);
    let (ok, out, _) = cli(&server, &["key-usage", "--key", &id]).await;
    assert!(ok && out.contains("total"), "{out}");
    let (ok, out, _) = cli(&server, &["rotate-signing-key", "--json"]).await;
    assert!(ok && out.contains("previous_kid") && !out.contains("seed"), "{out}");
    let (ok, _, err) =
        cli(&server, &["create-user", "--email", "ann@example.com", "--password", "correct horse", "--business", &biz]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&server, &["signin", "--email", "ann@example.com", "--password", "correct horse", "--json"]).await;
    assert!(ok, "{err}");
    let signin: Value = serde_json::from_str(&out).unwrap();
    let (ok, out, err) = cli(&server, &["refresh", "--refresh-token", signin["refreshToken"].as_str().unwrap(), "--json"]).await;
    assert!(ok, "{err}");
    let refreshed: Value = serde_json::from_str(&out).unwrap();
    let token = refreshed["accessToken"].as_str().unwrap();
    let (ok, _, err) = cli(&server, &["revoke-session", "--session", &sid_of(token)]).await;
    assert!(ok, "{err}");
    // Errors: exit status 1 and the server's message.
    let (ok, _, err) = cli(&server, &["rotate-key", "--key", "key_0000000000000000"]).await;
    assert!(!ok && err.contains("404") && err.contains("key_not_found"), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_and_limits_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (ok, out, _) = cli(&server, &["--help"]).await;
    assert!(ok && out.contains("update-key") && out.contains("business-limits") && out.contains("set-business-limits"), "{out}");
    let (_, out, _) = cli(&server, &["create-business", "--name", "Acme", "--json"]).await;
    let biz = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_owned();

    let args =
        ["create-key", "--business", &biz, "--allowed-ip", "10.0.0.0/8", "--allowed-ip", "2001:db8::/32", "--rate-limit", "5/s", "--json"];
    let (ok, out, err) = cli(&server, &args).await;
    assert!(ok, "{err}");
    let key: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&key["allowed_ips"], &key["rate_limits"]), (&json!(["10.0.0.0/8", "2001:db8::/32"]), &json!(["5/s"])));
    let id = key["id"].as_str().unwrap();

    let (ok, out, err) = cli(&server, &["update-key", "--key", id, "--any-ip", "--rate-limit", "7/m", "--rate-limit", "100/h"]).await;
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("rate_limits") && l.contains("7/m, 100/h")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("allowed_ips") && l.ends_with('-')), "{out}");
    let (ok, out, _) = cli(&server, &["update-key", "--key", id, "--default-limits", "--json"]).await;
    assert!(ok && serde_json::from_str::<Value>(&out).unwrap()["rate_limits"].is_null(), "{out}");
    let (ok, _, err) = cli(&server, &["update-key", "--key", id]).await;
    assert!(!ok && err.contains("nothing to change"), "{err}");
    let (ok, _, err) = cli(&server, &["update-key", "--key", id, "--allowed-ip", "10.0.0.1/8"]).await;
    assert!(!ok && err.contains("400") && err.contains("10.0.0.0/8"), "{err}");

    let (ok, out, err) = cli(&server, &["set-business-limits", "--business", &biz, "--per-key", "50/m", "--shared", "9/s", "--json"]).await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"business": biz, "per_key": ["50/m"], "shared": ["9/s"]}));
    let (ok, _, err) = cli(&server, &["set-business-limits", "--business", &biz, "--clear-shared"]).await;
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&server, &["business-limits", "--business", &biz]).await;
    assert!(ok && out.lines().any(|l| l.starts_with("per_key") && l.contains("50/m")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("shared") && l.ends_with('-')), "{out}");
}
