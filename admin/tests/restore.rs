//! A PostgreSQL store backed up with `pg_dump -Fc` and restored with `pg_restore`, into a
//! new database and over its own: the restored store serves what was dumped, in a new feed
//! history, so a proxy that followed the original (its `since` and `history`) is told to
//! start over instead of trusting a delta. Needs `KEYGATE_TEST_POSTGRES` and PostgreSQL's
//! client programs; without them it passes with a note.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use keygate_admin::StoreLocation;
use reqwest::StatusCode;
use serde_json::Value;

/// `program` from the newest PostgreSQL under /usr/lib/postgresql (Debian), else from PATH.
fn pg_program(program: &str) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin").join(program))))
        .filter(|(_, path): &(u32, PathBuf)| path.is_file())
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, path)| path)
        .or_else(|| Command::new(program).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| PathBuf::from(program)))
}

/// Runs a PostgreSQL client program to the end; panics with its output if it fails.
async fn run(program: &Path, args: Vec<String>) {
    let mut cmd = Command::new(program);
    cmd.args(&args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{} {args:?}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
}

/// The version and history a proxy holds after a full snapshot.
async fn synced(server: &Server) -> (u64, String, Value) {
    let (status, full) = server.snapshot("").await;
    assert_eq!(status, StatusCode::OK, "{full}");
    (full["version"].as_u64().unwrap(), full["history"].as_str().unwrap().to_owned(), full)
}

/// What a proxy at (`version`, `history`) gets from `server` when the store is another
/// history: 410 on `since` with its history, and a delta vouching for another one without.
async fn tells_the_proxy_to_start_over(server: &Server, version: u64, history: &str) {
    let (status, body) = server.snapshot(&format!("?since={version}&history={history}")).await;
    assert_error(status, &body, 410, "snapshot_gone");
    let (status, delta) = server.snapshot(&format!("?since={version}")).await;
    assert_eq!(status, StatusCode::OK, "{delta}");
    assert_ne!(delta["since_history"].as_str(), Some(history), "{delta}");
    let (now, new_history, _) = synced(server).await;
    assert_eq!(now, version, "the restore lost or invented versions");
    assert_ne!(new_history, history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_restored_into_a_new_database_or_over_its_own_starts_a_new_history() {
    let Some(server_url) = postgres_under_test() else {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; restore test skipped");
        return;
    };
    let (Some(pg_dump), Some(pg_restore)) = (pg_program("pg_dump"), pg_program("pg_restore")) else {
        eprintln!("note: no pg_dump/pg_restore; restore test skipped");
        return;
    };
    let original = fresh_database(&server_url);
    let server = Server::start_with(config_at(StoreLocation::Postgres(original.clone()))).await;
    let biz = server.business("Acme").await;
    let key = server.key(&biz).await;
    let raw = key["key"].as_str().unwrap().to_owned();
    let (version, history, full) = synced(&server).await;
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("keygate.dump").display().to_string();
    run(&pg_dump, vec!["-Fc".into(), "-f".into(), dump.clone(), format!("--dbname={original}")]).await;

    // Into a new database.
    let restored = fresh_database(&server_url);
    run(&pg_restore, vec!["--no-owner".into(), format!("--dbname={restored}"), dump.clone()]).await;
    let server = Server::start_with(config_at(StoreLocation::Postgres(restored.clone()))).await;
    tells_the_proxy_to_start_over(&server, version, &history).await;
    let (_, _, again) = synced(&server).await;
    assert_eq!(again["keys"], full["keys"], "the restored store holds what was dumped");
    let (status, login) = server.login(&raw, None).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    server.stop().await;

    // The original, untouched, keeps its history: a proxy following it goes on with deltas.
    let server = Server::start_with(config_at(StoreLocation::Postgres(original.clone()))).await;
    let (status, delta) = server.snapshot(&format!("?since={version}&history={history}")).await;
    assert_eq!(status, StatusCode::OK, "{delta}");
    server.stop().await;

    // Over its own database (the table made anew): a new history too.
    run(&pg_restore, vec!["--clean".into(), "--if-exists".into(), "--no-owner".into(), format!("--dbname={original}"), dump]).await;
    let server = Server::start_with(config_at(StoreLocation::Postgres(original))).await;
    tells_the_proxy_to_start_over(&server, version, &history).await;
    server.stop().await;
}
