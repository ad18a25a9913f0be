//! The end-to-end harness: starts the real `keygate-admin` binary, the real
//! `keygate-echo` upstream and a real Envoy loading the real `keygate_filter.wasm`, on
//! loopback ports picked here, with the repository's own `envoy.yaml` (ports, the .wasm
//! path and, when a test asks, the plugin JSON rewritten; each rewrite must hit exactly
//! once, so a drifting envoy.yaml breaks the tests instead of silently testing something
//! else). Everything is killed when the [`Stack`] drops.
//!
//! Envoy runs with `--concurrency 2` (`KEYGATE_E2E_CONCURRENCY` overrides it), so the
//! shared-data paths between worker VMs are exercised.
//!
//! Paths come from the environment `cargo xtask test` sets (`KEYGATE_ENVOY_BIN`,
//! `KEYGATE_WASM`, `KEYGATE_ADMIN_BIN`, `KEYGATE_ECHO_BIN`, `KEYGATE_ENVOY_YAML`), with the
//! usual build locations as fallback.
//!
//! `process`: child processes and ports; `envoy_config`: rewriting envoy.yaml; `stack`:
//! starting and stopping the stack; `client`: requests to admin and through Envoy;
//! `postgres`: databases and clusters for admin over PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod envoy_config;
pub mod postgres;
mod process;
mod stack;

pub use client::{Reply, Tenant};
pub use envoy_config::plugin_json;
pub use process::{free_port, spawn_listening, ChildGuard};
pub use stack::{Second, Stack, StackOptions};

use std::io::Read;
use std::path::{Path, PathBuf};

pub const OPERATOR_TOKEN: &str = "kgo_e2e_operator_token_for_tests_only";
pub const PROXY_TOKEN: &str = "kgp_e2e_proxy_token_for_tests_only";
pub const PASSWORD: &str = "correct horse battery staple";

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A built binary or file: the path in `var` (set by `cargo xtask test`), else `default`
/// under the repository root; panics when it does not exist.
pub fn artifact(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(default));
    assert!(
        path.exists(),
        "{} not found ({var}); run these tests with `cargo xtask test`, which builds and installs everything",
        path.display()
    );
    path
}

/// Random bytes from the OS, for keys the admin never issued.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut buf).unwrap();
    buf
}
