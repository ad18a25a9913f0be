//! A throwaway PostgreSQL for the tests and `up --store postgres`: Debian's `postgresql`
//! package (installed with apt-get when missing, by `setup` and `test` only), a cluster made
//! afresh under `target/keygate-pg/` (`target/keygate-up-pg/` for `up`) with trust
//! authentication, listening on a free loopback port only, and stopped when its guard is
//! dropped, whatever happened in between. PostgreSQL refuses to run as root, so as root
//! its commands run as the package's `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::proc::free_port;
use crate::{run, step, Paths};

/// Where Debian puts each major version's programs.
const LIB: &str = "/usr/lib/postgresql";

/// The `bin/` directory of the newest installed PostgreSQL, if any.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(LIB)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The PostgreSQL programs' directory, installing Debian's `postgresql` when missing.
pub fn ensure() -> Result<PathBuf, String> {
    if let Some(bin) = bin_dir() {
        step(&format!("postgresql: installed ({})", bin.display()));
        return Ok(bin);
    }
    step("apt-get update -qq");
    run(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
    step("apt-get install -y -qq --no-install-recommends postgresql");
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "postgresql"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install postgresql",
    )?;
    bin_dir().ok_or_else(|| format!("no {LIB}/*/bin/pg_ctl after apt-get install postgresql"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A running cluster; dropping it stops the server.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    port: u16,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`, trusted without a password.
    pub url: String,
}

impl Cluster {
    /// `program ARGS`, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        command(&self.bin, program, self.as_postgres)
    }

    /// Creates the empty database `name` (letters, digits, `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        let mut createdb = self.command("createdb");
        createdb.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name]);
        run(&mut createdb, &format!("createdb {name}"))?;
        Ok(format!("postgres://postgres@127.0.0.1:{}/{name}", self.port))
    }
}

fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    let program = bin.join(program);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Makes a new cluster under `target/keygate-pg/` and starts it on a free loopback port.
pub fn start(p: &Paths) -> Result<Cluster, String> {
    start_in(ensure()?, p, "target/keygate-pg")
}

/// Makes a new cluster with the programs in `bin` under `rel_dir` (relative to the repo
/// root) and starts it on a free loopback port.
pub fn start_in(bin: PathBuf, p: &Paths, rel_dir: &str) -> Result<Cluster, String> {
    let dir = p.root.join(rel_dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let as_postgres = is_root();
    if as_postgres {
        run(Command::new("chown").arg("postgres:").arg(&dir), &format!("chown postgres {rel_dir}"))?;
    }
    let data = dir.join("data");
    let mut initdb = command(&bin, "initdb", as_postgres);
    initdb.current_dir(&dir).arg("-D").arg(&data).args(["--auth=trust", "--username=postgres", "--encoding=UTF8"]).stdout(Stdio::null());
    step(&format!("initdb {rel_dir}/data"));
    run(&mut initdb, "initdb")?;
    let port = free_port()?;
    let cluster = Cluster { bin, data, as_postgres, port, url: format!("postgres://postgres@127.0.0.1:{port}/postgres") };
    // Loopback only; sockets in our own directory (the system's may not be writable);
    // fsync on, as in production, so the timings mean something.
    let options = format!("-c listen_addresses=127.0.0.1 -p {port} -c fsync=on -c max_connections=300 -k {}", dir.display());
    let mut pg_ctl = cluster.command("pg_ctl");
    pg_ctl.current_dir(&dir).arg("-D").arg(&cluster.data).arg("-l").arg(dir.join("server.log")).args(["-o", &options, "-w", "start"]);
    step(&format!("pg_ctl start (127.0.0.1:{port}; log {rel_dir}/server.log)"));
    run(&mut pg_ctl, "pg_ctl start")?;
    Ok(cluster)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        step("pg_ctl stop -m fast");
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]).stdout(Stdio::null());
        if let Err(e) = run(&mut pg_ctl, "pg_ctl stop") {
            eprintln!("xtask: {e}");
        }
    }
}
