//! PostgreSQL for a stack: a new database on the server in `KEYGATE_TEST_POSTGRES` (the
//! `e2e-postgres` phase of `cargo xtask test` sets it), or a cluster of the stack's own, for
//! tests that stop the database under running admins. Debian's programs
//! (`/usr/lib/postgresql/N/bin`); as root, the server runs as the `postgres` user, since
//! PostgreSQL refuses root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::free_port;

/// A fixed seal key for the tests' admins over PostgreSQL (never for real use).
pub const SEAL_KEY: &str = "kgseal_kRZscdSx3YRNPikTpBVkgoTmUzN0_YzOlF6gWKuIjRA";

/// The PostgreSQL server the e2e stacks store in instead of sled, if any.
pub fn server_under_test() -> Option<String> {
    std::env::var("KEYGATE_TEST_POSTGRES").ok().filter(|url| !url.is_empty())
}

/// The `bin/` directory of the newest installed PostgreSQL, if any.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn bin() -> PathBuf {
    bin_dir().expect("no /usr/lib/postgresql/*/bin/pg_ctl: install Debian's postgresql (`cargo xtask setup` does)")
}

/// Creates an empty database on the server at `server_url` (`postgres://USER@HOST:PORT/DB`,
/// trusted without a password) and returns its URL.
pub fn create_database(server_url: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let name = format!("kg_e2e_{}_{n}_{nanos}", std::process::id());
    let out = Command::new(bin().join("psql"))
        .args([server_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(out.status.success(), "CREATE DATABASE on {server_url} failed: {}", String::from_utf8_lossy(&out.stderr));
    let (server, _) = server_url.rsplit_once('/').expect("KEYGATE_TEST_POSTGRES is postgres://USER@HOST:PORT/DBNAME");
    format!("{server}/{name}")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The password in the URL of a [`Cluster`]: trust authentication never asks for it, but
/// admin gets it in its store URL, so a test can check no log shows it.
pub const CLUSTER_PASSWORD: &str = "kg-e2e-database-password-never-logged";

/// A cluster of the stack's own under `dir`, on a free loopback port; stopped on drop.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    options: String,
    /// `postgres://postgres:CLUSTER_PASSWORD@127.0.0.1:PORT/postgres` (trust authentication).
    pub url: String,
}

impl Cluster {
    /// initdb into `dir/data` and start the server.
    pub fn start(dir: &Path) -> Cluster {
        std::fs::create_dir_all(dir).unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let chown = Command::new("chown").arg("postgres:").arg(dir).status().unwrap();
            assert!(chown.success(), "chown postgres {}", dir.display());
        }
        let port = free_port();
        let cluster = Cluster {
            bin: bin(),
            dir: dir.to_path_buf(),
            as_postgres,
            // Loopback only; sockets in our own directory (the system's may not be writable).
            options: format!("-c listen_addresses=127.0.0.1 -p {port} -c max_connections=100 -k {}", dir.display()),
            url: format!("postgres://postgres:{CLUSTER_PASSWORD}@127.0.0.1:{port}/postgres"),
        };
        let status = cluster
            .command("initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb {}", dir.display());
        cluster.resume();
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let mut c = self.command("pg_ctl");
        c.arg("-D").arg(self.dir.join("data")).args(args).stdout(Stdio::null());
        c.status().is_ok_and(|s| s.success())
    }

    /// `pg_ctl stop -m fast`: every connection is closed, the server gone.
    pub fn stop(&self) {
        assert!(self.pg_ctl(&["-m", "fast", "-w", "stop"]), "pg_ctl stop failed; log {}", self.dir.join("server.log").display());
    }

    /// Starts the server again, on the same port, with the same data.
    pub fn resume(&self) {
        let log = self.dir.join("server.log");
        let log = log.to_str().unwrap();
        assert!(self.pg_ctl(&["-l", log, "-o", &self.options, "-w", "start"]), "pg_ctl start failed; log {log}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}
