//! `keygate-admin migrate`, the real binary, between real stores: a sled store holding every
//! kind of record goes to PostgreSQL and back (or, without `KEYGATE_TEST_POSTGRES`, to
//! another sled directory, with a note), each copy verified with the same checksum; the
//! copy serves the same answers (a key logs in to the same token, a member's token and
//! password work, the revoked session stays revoked) in a new feed history. A non-empty
//! target is refused unless `--replace`; a tampered copy fails `--verify-only`; a store in
//! use is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../admin/tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::{assert_error, config_at, fresh_database, postgres_under_test, sid_of, Server, OPERATOR, PROXY};
use keygate_admin::StoreLocation;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Runs `keygate-admin migrate ARGS`; (exit code, stdout, stderr).
async fn migrate(args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keygate-admin"));
    cmd.arg("migrate").args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `migrate ARGS --json` that must succeed: its summary.
async fn migrate_ok(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, out, err) = migrate(&args).await;
    assert_eq!(code, 0, "migrate {args:?} failed: {err}\n{out}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("not JSON: {out}"));
    assert_eq!(report["verified"], json!(true), "{report}");
    assert_eq!(report["checksum"], report["target_checksum"], "{report}");
    report
}

fn sled(dir: &Path) -> String {
    format!("sled:{}", dir.display())
}

/// The entries of `tree` in a summary.
fn count(report: &Value, tree: &str) -> u64 {
    report["trees"].as_array().unwrap().iter().find(|t| t["tree"] == json!(tree)).unwrap()["entries"].as_u64().unwrap()
}

/// What the source held, to ask the copy.
struct Seen {
    biz: String,
    api_key: String,
    key_hash: String,
    login_token: String,
    member_token: String,
    revoked_token: String,
    jwks: Value,
    version: u64,
    history: String,
    keys_in_snapshot: usize,
}

/// A store holding every kind of record: a business, a user signed in twice (one session
/// revoked), a key with a login session and usage, two signing keys.
async fn fill(server: &Server) -> Seen {
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let api_key = key["key"].as_str().unwrap().to_owned();
    let member_token = server.member("ada@example.com", "correct horse battery", &[&biz]).await;
    let (status, second) = server.signin("ada@example.com", "correct horse battery").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let revoked_token = second["accessToken"].as_str().unwrap().to_owned();
    let (status, body) = server.send(Method::DELETE, &format!("/v1/sessions/{}", sid_of(&revoked_token)), Some(OPERATOR), None).await;
    assert!(status.is_success(), "{status} {body}");
    let (status, body) = server
        .post("/v1/usage", Some(PROXY), json!({"usage": [{"key_id": key["id"], "count": 7, "last_used_at": 1_700_000_000u64}]}))
        .await;
    assert_eq!((status, body["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{body}");
    let (status, body) = server.post("/v1/signing-keys/rotate", Some(OPERATOR), json!({})).await;
    assert!(status.is_success(), "{status} {body}");
    // After the rotation: a login answers the same token while the signer is the same.
    let (status, login) = server.login(&api_key, Some("client-1")).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (_, jwks) = server.get("/.well-known/jwks.json", None).await;
    let (status, full) = server.snapshot("").await;
    assert_eq!(status, StatusCode::OK, "{full}");
    let key_hash = full["keys"][0]["hash"].as_str().unwrap().to_owned();
    Seen {
        biz,
        api_key,
        key_hash,
        login_token: login["access_token"].as_str().unwrap().to_owned(),
        member_token,
        revoked_token,
        jwks,
        version: full["version"].as_u64().unwrap(),
        history: full["history"].as_str().unwrap().to_owned(),
        keys_in_snapshot: full["keys"].as_array().unwrap().len(),
    }
}

/// The copy answers as the source did, in a new feed history.
async fn serves_the_same(server: &Server, seen: &Seen) {
    let (status, again) = server.login(&seen.api_key, Some("client-1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["access_token"].as_str(), Some(seen.login_token.as_str()), "the session came along");
    let (_, jwks) = server.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks, seen.jwks, "the signing keys came along");
    let (status, me) = server.get("/v1/me", Some(&seen.member_token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["businesses"][0]["id"], json!(seen.biz));
    let (status, body) = server.get("/v1/me", Some(&seen.revoked_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the revocation came along: {body}");
    let (status, signin) = server.signin("ada@example.com", "correct horse battery").await;
    assert_eq!(status, StatusCode::OK, "the password hash came along: {signin}");
    let (status, keys) = server.get(&format!("/v1/businesses/{}/keys", seen.biz), Some(OPERATOR)).await;
    assert_eq!(status, StatusCode::OK);
    let key_id = keys["keys"][0]["id"].as_str().unwrap().to_owned();
    let (_, usage) = server.get(&format!("/v1/keys/{key_id}/usage"), Some(OPERATOR)).await;
    assert!(usage["total"].as_u64().unwrap() >= 7, "the usage came along: {usage}");

    // A proxy that followed the source: its `since` with the old history gets 410, so it
    // takes the full snapshot, which is of a new history at the same version.
    let (status, body) = server.snapshot(&format!("?since={}&history={}", seen.version, seen.history)).await;
    assert_error(status, &body, 410, "snapshot_gone");
    let (status, full) = server.snapshot("").await;
    assert_eq!(status, StatusCode::OK);
    assert!(full["version"].as_u64().unwrap() >= seen.version, "{full}");
    assert_ne!(full["history"].as_str(), Some(seen.history.as_str()), "the copy has a history of its own");
    assert_eq!(full["keys"].as_array().unwrap().len(), seen.keys_in_snapshot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_goes_to_postgres_and_back_with_everything_and_answers_the_same() {
    let (code, help, _) = migrate(&["--help"]).await;
    assert!(code == 0 && help.contains("--replace") && help.contains("EXIT STATUS"), "{help}");

    let source = tempfile::tempdir().unwrap();
    let server = Server::start(source.path()).await;
    let seen = fill(&server).await;
    server.stop().await;

    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().join("store");
    let there = match postgres_under_test() {
        Some(url) => Some(fresh_database(&url)),
        None => {
            eprintln!("note: KEYGATE_TEST_POSTGRES is unset; sled to sled only, the PostgreSQL legs skipped");
            None
        }
    };
    let (first, second) = match &there {
        Some(db) => {
            let first = migrate_ok(&["--from", &sled(source.path()), "--to", db]).await;
            let second = migrate_ok(&["--from", db, "--to", &sled(&back_dir)]).await;
            (first, second)
        }
        None => {
            let middle = back.path().join("middle");
            let first = migrate_ok(&["--from", &sled(source.path()), "--to", &sled(&middle)]).await;
            (first.clone(), migrate_ok(&["--from", &sled(&middle), "--to", &sled(&back_dir)]).await)
        }
    };
    for tree in ["businesses", "users", "keys", "sessions", "revocations", "signing_keys", "usage", "changelog", "meta"] {
        assert!(count(&first, tree) > 0, "no {tree} copied: {first}");
    }
    assert_eq!(count(&first, "signing_keys"), 2, "{first}");
    assert_eq!(count(&first, "sessions"), 3, "a login and two sign-ins: {first}");
    assert_eq!(first["checksum"], second["checksum"], "the round trip changed something");
    assert_eq!(first["trees"], second["trees"]);
    let readable = format!("{first}{second}");
    assert!(!readable.contains(&seen.key_hash), "a stored hash in the summary");

    // The source itself goes on in its own history.
    let server = Server::start(source.path()).await;
    let (status, _) = server.snapshot(&format!("?since={}&history={}", seen.version, seen.history)).await;
    assert_eq!(status, StatusCode::OK, "the source kept its history");
    server.stop().await;

    if let Some(db) = &there {
        let server = Server::start_with(config_at(StoreLocation::Postgres(db.clone()))).await;
        serves_the_same(&server, &seen).await;
        server.stop().await;
    }
    let server = Server::start(&back_dir).await;
    serves_the_same(&server, &seen).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_empty_target_is_refused_unless_replace() {
    let source = tempfile::tempdir().unwrap();
    let server = Server::start(source.path()).await;
    let biz = server.business("Source").await;
    server.stop().await;

    let mut targets = vec![];
    let sled_target = tempfile::tempdir().unwrap();
    targets.push((sled(sled_target.path()), config_at(StoreLocation::Sled(sled_target.path().to_owned()))));
    match postgres_under_test() {
        Some(url) => {
            let db = fresh_database(&url);
            targets.push((db.clone(), config_at(StoreLocation::Postgres(db))));
        }
        None => eprintln!("note: KEYGATE_TEST_POSTGRES is unset; the PostgreSQL target skipped"),
    }
    for (target, config) in targets {
        // A store in use there already.
        let server = Server::start_with(config.clone()).await;
        let other = server.business("Target").await;
        server.stop().await;
        let (code, out, err) = migrate(&["--from", &sled(source.path()), "--to", &target]).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains("not empty") && err.contains("--replace"), "{err}");
        let report = migrate_ok(&["--from", &sled(source.path()), "--to", &target, "--replace"]).await;
        assert_eq!(report["replaced"], json!(true));
        let server = Server::start_with(config).await;
        let (status, _) = server.get(&format!("/v1/businesses/{biz}/keys"), Some(OPERATOR)).await;
        assert_eq!(status, StatusCode::OK, "the source's business is there");
        let (status, _) = server.get(&format!("/v1/businesses/{other}/keys"), Some(OPERATOR)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the target's own is gone");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_copy_fails_verification() {
    let source = tempfile::tempdir().unwrap();
    let server = Server::start(source.path()).await;
    let biz = server.business("Acme").await;
    server.key(&biz).await;
    server.stop().await;

    // sled: a record added to the copy behind its back.
    let copy = tempfile::tempdir().unwrap();
    migrate_ok(&["--from", &sled(source.path()), "--to", &sled(copy.path())]).await;
    migrate_ok(&["--from", &sled(source.path()), "--to", &sled(copy.path()), "--verify-only"]).await;
    {
        let store = keygate_admin::store::Store::open(copy.path(), &keygate_admin::store::StoreOptions::default()).unwrap();
        let business = keygate_admin::store::Business::new("biz_extra".into(), "Extra".into(), 1);
        let _ = store.create_business(&business).unwrap();
        store.flush_blocking().unwrap();
    }
    let (code, out, err) = migrate(&["--from", &sled(source.path()), "--to", &sled(copy.path()), "--verify-only"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("MISMATCH businesses: 1 entries in the source, 2 in the target"), "{out}");
    assert!(err.contains("does not match"), "{err}");

    // PostgreSQL: one value changed in place (same counts, other contents).
    let Some(url) = postgres_under_test() else {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; the PostgreSQL tampering skipped");
        return;
    };
    let db = fresh_database(&url);
    migrate_ok(&["--from", &sled(source.path()), "--to", &db]).await;
    let tamper = db.clone();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&tamper, postgres::NoTls).unwrap();
        let changed = client.execute("UPDATE keygate_kv SET value = value || '\\x20'::bytea WHERE tree = 3", &[]).unwrap();
        assert_eq!(changed, 1, "one key record");
    })
    .join()
    .unwrap();
    let (code, out, err) = migrate(&["--from", &sled(source.path()), "--to", &db, "--verify-only", "--json"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verified"], json!(false));
    assert_eq!(report["mismatches"], json!(["keys: 1 entries in each, with different contents"]), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, _, err) = migrate(&["--from", &sled(dir.path()), "--to", &sled(elsewhere.path())]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot open the source") && err.contains("stop it first"), "{err}");
    server.stop().await;
    let (code, _, err) = migrate(&["--from", &sled(dir.path()), "--to", &sled(dir.path())]).await;
    assert!(code == 1 && err.contains("the same store"), "{err}");
    let (code, _, err) = migrate(&["--from", "mysql://x", "--to", &sled(dir.path())]).await;
    assert_eq!(code, 2, "bad usage: {err}");
    let (code, _, err) = migrate(&["--from", &sled(&elsewhere.path().join("nothing")), "--to", &sled(dir.path())]).await;
    assert!(code == 1 && err.contains("holds no sled store"), "{err}");

    let Some(url) = postgres_under_test() else {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; the running-replica check skipped");
        return;
    };
    let db = fresh_database(&url);
    let replica = Server::start_with(config_at(StoreLocation::Postgres(db.clone()))).await;
    let (code, _, err) = migrate(&["--from", &db, "--to", &sled(&elsewhere.path().join("copy"))]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("replicas seem to be running"), "{err}");
    assert!(!err.contains("postgres@"), "the URL is described, never printed whole: {err}");
    replica.stop().await;
    migrate_ok(&["--from", &db, "--to", &sled(&elsewhere.path().join("copy"))]).await;
}
