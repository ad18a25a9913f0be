//! Runs the real `keygate-admin` binary's client subcommands against a test server (shared
//! by the CLI tests that drive it as an operator).

use super::common::{Server, OPERATOR};

/// Runs the CLI against `server` as the operator; returns (success, stdout, stderr).
pub async fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keygate-admin"));
    cmd.args(args).env("KEYGATE_URL", &server.base).env("KEYGATE_OPERATOR_TOKEN", OPERATOR).env_remove("KEYGATE_ACCESS_TOKEN");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
