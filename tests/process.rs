//! Child processes of the stack (killed on drop), the addresses they report, and ports.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::postgres::SEAL_KEY;
use crate::{OPERATOR_TOKEN, PROXY_TOKEN};

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    pub(crate) name: &'static str,
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    pub fn new(name: &'static str, child: Child) -> ChildGuard {
        ChildGuard { name, child }
    }

    pub(crate) fn assert_running(&mut self, logs: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status}); logs in {}", self.name, logs.display());
        }
    }
}

/// Spawns a binary that prints `<name> listening on <addr>` once bound; returns its address.
/// Its stderr goes to `<name>.log` and its stdout to `<name>.stdout` in `log_dir`.
pub fn spawn_listening(name: &'static str, mut cmd: Command, log_dir: &Path) -> (ChildGuard, String) {
    // Appended, so a restarted process keeps its earlier log.
    let open = |file: String| std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join(file)).unwrap();
    let log = open(format!("{name}.log"));
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log_path = log_dir.join(format!("{name}.stdout"));
    std::thread::spawn(move || {
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(out, "{line}");
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let guard = ChildGuard { name, child };
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{name} did not report its address; logs in {}", log_dir.display()));
    (guard, addr)
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Clone)]
pub(crate) struct AdminArgs {
    pub(crate) extra: Vec<String>,
    pub(crate) log_level: &'static str,
}

/// Where an admin of the stack stores: a sled directory, or a PostgreSQL database URL
/// (any number of replicas may share one).
#[derive(Clone)]
pub(crate) enum Store {
    Sled(PathBuf),
    Postgres(String),
}

pub(crate) fn admin_command(bin: &Path, store: &Store, addr: &str, args: &AdminArgs) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--addr", addr]);
    match store {
        Store::Sled(data) => {
            cmd.args(["--data", data.to_str().unwrap()]);
        }
        Store::Postgres(url) => {
            cmd.args(["--store", url]).env("KEYGATE_SEAL_KEY", SEAL_KEY);
        }
    }
    cmd.args(&args.extra)
        .env("KEYGATE_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN)
        .env("RUST_LOG", args.log_level)
        .env("NO_COLOR", "1");
    cmd
}
