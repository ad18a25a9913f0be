//! `cargo xtask up`: the demo stack (echo upstream, keygate-admin, Envoy with the filter),
//! a seeded demo business, user and keys, and clean shutdown on Ctrl-C. With
//! `--store postgres`: a throwaway PostgreSQL and two admin replicas over it (`replicas`).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::http;
use crate::proc::{self, Proc};
use crate::stack;

mod demo;
mod replicas;
use crate::postgres::Cluster;
use crate::{fail, step, sys, Paths};
use demo::{check_through_envoy, print_banner, seed, show, sign_in, SignIn};

const ECHO_ADDR: &str = "127.0.0.1:8081";
const ENVOY_ADDR: &str = "127.0.0.1:10000";
const ENVOY_ADMIN_ADDR: &str = "127.0.0.1:9901";
/// Where envoy.yaml's `keygate_admin` cluster points.
const ENVOY_YAML_ADMIN: &str = "127.0.0.1:8080";
const TICK: Duration = Duration::from_millis(200);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where `up`'s admin stores.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UpStore {
    /// One admin over sled in KEYGATE_DATA.
    Sled,
    /// A throwaway PostgreSQL and two admin replicas over it.
    Postgres,
}

impl UpStore {
    /// `up`'s arguments: none, or `--store sled|postgres`.
    pub fn parse(args: &[String]) -> Option<UpStore> {
        match args {
            [] => Some(UpStore::Sled),
            [flag, store] if flag == "--store" => match store.as_str() {
                "sled" => Some(UpStore::Sled),
                "postgres" | "postgresql" => Some(UpStore::Postgres),
                _ => None,
            },
            _ => None,
        }
    }
}

pub fn cmd_up(p: &Paths, store: UpStore) -> ExitCode {
    if let Err(e) = crate::setup_and_build(p) {
        return fail(&e);
    }
    let mut stack = Stack { procs: Vec::new(), root: p.root.clone() };
    let mut postgres = None;
    let result = start_and_serve(p, &mut stack, store, &mut postgres);
    let interrupted = sys::caught().is_some();
    if !stack.procs.is_empty() {
        step("stopping the demo stack");
    }
    stack.stop();
    drop(postgres); // after the admins: they would log the database gone while stopping

    match result {
        Ok(()) => {
            step("stopped");
            ExitCode::SUCCESS
        }
        Err(_) if interrupted => {
            step("interrupted; stopped");
            ExitCode::from(130)
        }
        Err(e) => fail(&e),
    }
}

fn start_and_serve(p: &Paths, stack: &mut Stack, store: UpStore, postgres: &mut Option<Cluster>) -> Result<(), String> {
    let replicated = store == UpStore::Postgres;
    let admin_listen = if replicated { ENVOY_YAML_ADMIN.to_owned() } else { env_or("KEYGATE_ADDR", ENVOY_YAML_ADMIN) };
    let admin = probe_addr(&admin_listen);
    let data = env_or("KEYGATE_DATA", "./data");
    if replicated && std::env::var_os("KEYGATE_ADDR").is_some() {
        println!("warning: KEYGATE_ADDR is ignored with --store postgres: the replicas listen on {}", replicas::REPLICAS.join(" and "));
    }
    if admin != ENVOY_YAML_ADMIN {
        println!(
            "warning: KEYGATE_ADDR={admin_listen}, but envoy.yaml's keygate_admin cluster points at \
             {ENVOY_YAML_ADMIN}: the filter will not reach this admin and will answer 503"
        );
    }
    let tokens = tokens(p)?;
    let logs = p.state.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;

    let second = replicated.then_some(replicas::REPLICAS[1]);
    let ports = [("echo", ECHO_ADDR), ("keygate-admin", admin.as_str()), ("Envoy", ENVOY_ADDR), ("Envoy admin", ENVOY_ADMIN_ADDR)];
    for (what, addr) in ports.into_iter().chain(second.map(|a| ("keygate-admin replica 2", a))) {
        if let Ok(sa) = addr.parse::<SocketAddr>() {
            if TcpStream::connect_timeout(&sa, Duration::from_millis(300)).is_ok() {
                return Err(format!(
                    "{addr} (for {what}) is already in use: is another `cargo xtask up` or an \
                     Envoy/keygate-admin running? Stop it first."
                ));
            }
        }
    }

    sys::catch_signals();
    // Over PostgreSQL: the database, the seal key both replicas share, and Envoy listing both.
    let (store_env, envoy_yaml) = if replicated {
        let cluster = postgres.insert(replicas::start_postgres(p)?);
        let seal = replicas::seal_key(p)?;
        (vec![("KEYGATE_STORE", cluster.url.clone()), ("KEYGATE_SEAL_KEY", seal)], replicas::envoy_config(p)?)
    } else {
        (vec![("KEYGATE_DATA", data)], p.envoy_yaml.clone())
    };
    stack.spawn("echo", &logs.join("echo.log"), stack::echo_command(p, ECHO_ADDR))?;

    let admins: Vec<(&'static str, String)> = match second {
        Some(addr) => vec![("admin", admin.clone()), ("admin-2", addr.to_owned())],
        None => vec![("admin", admin.clone())],
    };
    for (i, (name, addr)) in admins.iter().enumerate() {
        let mut admin_cmd = Command::new(&p.admin);
        admin_cmd
            .arg("serve")
            .env("NO_COLOR", "1") // its log is a file
            .env("KEYGATE_ADDR", if i == 0 { admin_listen.as_str() } else { addr.as_str() })
            .env("KEYGATE_OPERATOR_TOKEN", &tokens.operator)
            .env("KEYGATE_PROXY_TOKEN", &tokens.proxy)
            .envs(store_env.iter().map(|(k, v)| (k, v)));
        stack.spawn(name, &logs.join(format!("{name}.log")), admin_cmd)?;
    }

    let mut envoy = Command::new(&p.envoy);
    stack::envoy_args(&mut envoy, &envoy_yaml, None, &tokens.proxy);
    stack.spawn("envoy", &logs.join("envoy.log"), envoy)?;

    for (name, addr) in &admins {
        step(&format!("waiting for keygate-admin: GET http://{addr}/healthz"));
        stack.wait_until(&format!("{name} /healthz"), Duration::from_secs(60), &[name], || {
            http::get(addr, "/healthz", HTTP_TIMEOUT).is_ok_and(|r| r.status == 200)
        })?;
    }
    step(&format!("waiting for Envoy: GET http://{ENVOY_ADMIN_ADDR}/ready"));
    stack.wait_until("Envoy /ready", Duration::from_secs(60), &["envoy"], || {
        http::get(ENVOY_ADMIN_ADDR, "/ready", HTTP_TIMEOUT).is_ok_and(|r| r.status == 200)
    })?;
    step("waiting for the filter's first snapshot: GET /orders through Envoy until it is not 503");
    stack.wait_until("the filter's first snapshot", Duration::from_secs(60), &["envoy", "admin"], || {
        http::get(ENVOY_ADDR, "/orders", HTTP_TIMEOUT).is_ok_and(|r| r.status != 503)
    })?;

    let demo = seed(p, &admin, &tokens.operator)?;
    let (access, expires_in) = match sign_in(&admin, &demo.email, &demo.password)? {
        SignIn::Ok { access, expires_in, .. } => (access, expires_in),
        SignIn::Rejected(r) => return Err(format!("sign-in of {} failed: {}", demo.email, show(&r))),
    };
    check_through_envoy(stack, &demo, &access)?;
    print_banner(p, &admin, &tokens, &demo, &access, expires_in);
    if let Some(cluster) = postgres {
        let pids: Vec<String> =
            stack.procs.iter().filter(|c| c.name().starts_with("admin")).map(|c| format!("{} pid {}", c.name(), c.pid())).collect();
        println!(
            "admin replicas: http://{} and http://{} ({}), both over {} (target/keygate-up-pg/, \
             stopped on Ctrl-C, made afresh by the next `up`); Envoy lists both \
             (.keygate/envoy-replicas.yaml). Kill one (kill -9 PID): the filter follows the other. \
             Logs: .keygate/logs/admin.log, admin-2.log\n",
            replicas::REPLICAS[0],
            replicas::REPLICAS[1],
            pids.join(", "),
            cluster.url
        );
    }

    loop {
        if sys::caught().is_some() {
            println!();
            return Ok(());
        }
        if let Some(dead) = stack.dead() {
            // A replica may die (that is what replicas are for) while another one serves.
            let replica_left = stack.procs.iter().any(|c| c.name().starts_with("admin") && c.exit_status().is_none());
            if !(replicated && dead.starts_with("admin") && replica_left) {
                return Err(dead);
            }
            println!("warning: {dead}\nthe other admin replica serves on; Ctrl-C stops the rest");
        }
        std::thread::sleep(TICK);
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// The address to connect to for a listen address: `0.0.0.0:P` → `127.0.0.1:P`.
fn probe_addr(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(sa) if sa.ip().is_unspecified() => {
            let ip = match sa.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(ip, sa.port()).to_string()
        }
        _ => listen.to_string(),
    }
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

// ---------------------------------------------------------------- tokens

pub struct Tokens {
    operator: String,
    proxy: String,
}

/// Each token: the environment's, else the one kept in .keygate/demo.env, else a new one
/// (then written there, so every `up` reuses it).
fn tokens(p: &Paths) -> Result<Tokens, String> {
    let file = p.state.join("demo.env");
    let kept: Vec<(String, String)> = fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let kept_value = |key: &str| kept.iter().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.clone());

    let mut generated = false;
    let mut pick = |key: &str, prefix: &str| -> Result<(String, Option<String>), String> {
        if let Some(v) = std::env::var(key).ok().filter(|v| !v.is_empty()) {
            return Ok((v, kept_value(key)));
        }
        if let Some(v) = kept_value(key) {
            return Ok((v.clone(), Some(v)));
        }
        generated = true;
        let v = format!("{prefix}{}", random_hex(24)?);
        Ok((v.clone(), Some(v)))
    };
    let (operator, op_keep) = pick("KEYGATE_OPERATOR_TOKEN", "kgo_")?;
    let (proxy, px_keep) = pick("KEYGATE_PROXY_TOKEN", "kgp_")?;

    if generated {
        fs::create_dir_all(&p.state).map_err(|e| format!("create {}: {e}", p.state.display()))?;
        let mut text = String::from(
            "# keygate demo tokens, made by `cargo xtask up` and reused by every `up`.\n\
             # KEYGATE_OPERATOR_TOKEN / KEYGATE_PROXY_TOKEN in the environment override these.\n",
        );
        for (k, v) in [("KEYGATE_OPERATOR_TOKEN", op_keep), ("KEYGATE_PROXY_TOKEN", px_keep)] {
            if let Some(v) = v {
                text.push_str(&format!("{k}={v}\n"));
            }
        }
        write_private(&file, &text)?;
        step(&format!("generated demo tokens into {}", rel(p, &file)));
    } else {
        step("tokens: from the environment / .keygate/demo.env");
    }
    Ok(Tokens { operator, proxy })
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn rel(p: &Paths, path: &Path) -> String {
    path.strip_prefix(&p.root).unwrap_or(path).display().to_string()
}

// ---------------------------------------------------------------- children

struct Stack {
    procs: Vec<Proc>,
    root: PathBuf,
}

impl Stack {
    fn spawn(&mut self, name: &'static str, log: &Path, mut cmd: Command) -> Result<(), String> {
        cmd.current_dir(&self.root);
        let proc = Proc::spawn(name, cmd, log.to_path_buf())?;
        step(&format!("started {name} (pid {}), log {}", proc.pid(), log.strip_prefix(&self.root).unwrap_or(log).display()));
        self.procs.push(proc);
        Ok(())
    }

    /// The first child that has exited (since last asked), described with the tail of its log.
    fn dead(&mut self) -> Option<String> {
        for proc in &mut self.procs {
            if proc.exit_status().is_none() {
                if let Some(status) = proc.exited() {
                    return Some(format!("{} exited ({status}); {}", proc.name(), tail(proc.log(), 25)));
                }
            }
        }
        None
    }

    fn log_of(&self, name: &str) -> Option<&Path> {
        self.procs.iter().find(|p| p.name() == name).map(Proc::log)
    }

    /// Polls `ready` until it holds; fails on timeout (with the logs of `logs`), a dead
    /// child or a signal.
    fn wait_until(&mut self, what: &str, timeout: Duration, logs: &[&str], mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if sys::caught().is_some() {
                return Err("interrupted".into());
            }
            if let Some(dead) = self.dead() {
                return Err(format!("while waiting for {what}: {dead}"));
            }
            if ready() {
                step(&format!("{what}: ready in {:.1} s", start.elapsed().as_secs_f64()));
                return Ok(());
            }
            if start.elapsed() > timeout {
                let tails: Vec<String> = logs.iter().filter_map(|n| self.log_of(n)).map(|l| tail(l, 25)).collect();
                return Err(format!("timed out after {} s waiting for {what}; {}", timeout.as_secs(), tails.join("; ")));
            }
            std::thread::sleep(TICK);
        }
    }

    /// SIGTERM to every child's process group, SIGKILL to those still there after 3 s.
    fn stop(&mut self) {
        proc::stop_all(&mut self.procs, Duration::from_secs(3));
        self.procs.clear();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// "last lines of LOG:\n…" for error messages.
fn tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    if all.is_empty() {
        format!("{} is empty", log.display())
    } else {
        format!("last lines of {}:\n    {}", log.display(), all[from..].join("\n    "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;

    #[test]
    fn up_takes_no_arguments_or_a_store() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(UpStore::parse(&args(&[])) == Some(UpStore::Sled));
        assert!(UpStore::parse(&args(&["--store", "sled"])) == Some(UpStore::Sled));
        assert!(UpStore::parse(&args(&["--store", "postgres"])) == Some(UpStore::Postgres));
        assert!(UpStore::parse(&args(&["--store"])).is_none());
        assert!(UpStore::parse(&args(&["--store", "mysql"])).is_none());
        assert!(UpStore::parse(&args(&["postgres"])).is_none());
    }

    #[test]
    fn probe_addr_maps_unspecified_to_loopback() {
        assert_eq!(probe_addr("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(probe_addr("[::]:8080"), "[::1]:8080");
        assert_eq!(probe_addr("127.0.0.2:1"), "127.0.0.2:1");
        assert_eq!(probe_addr("localhost:8080"), "localhost:8080");
    }

    /// The mini client against the real keygate-echo, started and stopped the way `up` does.
    /// Needs the binary: `cargo xtask test` sets KEYGATE_ECHO_BIN; otherwise it is skipped.
    #[test]
    fn client_against_echo_and_clean_stop() -> Result<(), String> {
        let Some(bin) = std::env::var_os("KEYGATE_ECHO_BIN").map(PathBuf::from) else {
            eprintln!("skipped: KEYGATE_ECHO_BIN is not set (cargo xtask test sets it)");
            return Ok(());
        };
        let dir = std::env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = dir.join("echo.log");
        let mut stack = Stack { procs: Vec::new(), root: dir.clone() };
        let mut cmd = Command::new(bin);
        cmd.args(["--addr", "127.0.0.1:0"]);
        stack.spawn("echo", &log, cmd)?;
        let pid = stack.procs.first().map(Proc::pid).unwrap_or(0);

        let mut addr = String::new();
        stack.wait_until("echo's listening line", Duration::from_secs(20), &["echo"], || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            match text.lines().next().and_then(|l| l.strip_prefix("keygate-echo listening on ")) {
                Some(a) => {
                    addr = a.trim().to_string();
                    true
                }
                None => false,
            }
        })?;

        let r = http::request(
            "POST",
            &addr,
            "/v1/orders?limit=2&x=%20",
            &[("X-Multi", "a"), ("x-multi", "b"), ("SECRET_KEY", "sk_test")],
            Some("{\"ignored\": true}"),
            HTTP_TIMEOUT,
        )?;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = Json::parse(&r.body)?;
        assert_eq!(v.str("method"), Some("POST"));
        assert_eq!(v.str("path"), Some("/v1/orders?limit=2&x=%20"));
        let headers = v.get("headers").cloned().unwrap_or(Json::Null);
        assert_eq!(headers.str("x-multi"), Some("a, b"));
        assert_eq!(headers.str("secret_key"), Some("sk_test"));
        assert_eq!(headers.str("user-agent"), Some("keygate-xtask"));
        for method in ["GET", "DELETE", "PATCH", "OPTIONS"] {
            let r = http::request(method, &addr, "/", &[], None, HTTP_TIMEOUT)?;
            assert_eq!((r.status, Json::parse(&r.body)?.str("method").map(str::to_string)), (200, Some(method.into())));
        }

        let t = Instant::now();
        stack.stop();
        assert!(t.elapsed() < Duration::from_secs(2), "echo took {:?} to stop on SIGTERM", t.elapsed());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "echo (pid {pid}) still exists");
        assert!(http::get(&addr, "/", Duration::from_millis(500)).is_err(), "echo still answers");
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
