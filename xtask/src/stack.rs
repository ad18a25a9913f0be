//! Starting keygate's stack for a command: keygate-admin, the keygate-echo upstream, and
//! Envoy, either from the repository's envoy.yaml with its ports rewritten or from a config
//! the caller wrote (the bench's templates).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::proc::{free_port, wait_for, Proc};
use crate::{http, Paths};

const T: Duration = Duration::from_secs(10);

/// Adds `serve --addr ADDR --data DIR` and the two tokens to a keygate-admin command,
/// with warn-level, uncoloured logs (they go to a file).
pub fn admin_serve(cmd: &mut Command, addr: &str, data: &Path, operator: &str, proxy: &str) {
    cmd.args(["serve", "--addr", addr, "--data"]).arg(data);
    cmd.env("KEYGATE_OPERATOR_TOKEN", operator).env("KEYGATE_PROXY_TOKEN", proxy).env("RUST_LOG", "warn").env("NO_COLOR", "1");
}

/// A running keygate-admin and the address it answers on.
pub struct Admin {
    pub proc: Proc,
    pub addr: String,
}

/// Starts admin (`cmd` from [`admin_serve`] on `addr`) and waits until `/healthz` answers.
pub fn start_admin(cmd: Command, log: PathBuf, addr: &str) -> Result<Admin, String> {
    let mut proc = Proc::spawn("keygate-admin", cmd, log)?;
    wait_for(Duration::from_secs(30), Duration::from_millis(50), "keygate-admin /healthz", || {
        proc.alive()?;
        Ok(http::get(addr, "/healthz", T).ok().filter(|r| r.status == 200))
    })?;
    Ok(Admin { proc, addr: addr.to_owned() })
}

/// Starts admin (`cmd` from [`admin_serve`], any address, port 0 too) and takes its address
/// from its `listening on` line, printed once its store is open; stderr is appended to
/// `log`, so one log holds every restart.
pub fn start_admin_listening(cmd: Command, log: &Path) -> Result<Admin, String> {
    let mut proc = Proc::spawn_piped("keygate-admin", cmd, log.to_path_buf())?;
    let stdout = proc.take_stdout().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| format!("keygate-admin did not open its store and listen within 60 s; log {}", log.display()))?;
    let health = http::get(&addr, "/healthz", T)?;
    if health.status != 200 {
        return Err(format!("/healthz answered {} after restart: {}", health.status, health.body));
    }
    Ok(Admin { proc, addr })
}

/// keygate-echo listening on `addr`.
pub fn echo_command(p: &Paths, addr: &str) -> Command {
    let mut cmd = Command::new(&p.echo);
    cmd.args(["--addr", addr]);
    cmd
}

/// keygate-echo on a free port, logging to `dir/echo.log`.
pub fn start_echo(p: &Paths, dir: &Path) -> Result<(Proc, u16), String> {
    let port = free_port()?;
    let echo = Proc::spawn("keygate-echo", echo_command(p, &format!("127.0.0.1:{port}")), dir.join("echo.log"))?;
    Ok((echo, port))
}

/// Adds Envoy's arguments for `config` (with `concurrency` workers, else Envoy's default)
/// and the proxy token the filter sends to admin.
pub fn envoy_args(cmd: &mut Command, config: &Path, concurrency: Option<usize>, proxy: &str) {
    cmd.arg("-c").arg(config);
    if let Some(n) = concurrency {
        cmd.args(["--concurrency", &n.to_string()]);
    }
    cmd.args(["--disable-hot-restart", "--log-level", "warn"]).env("KEYGATE_PROXY_TOKEN", proxy);
}

/// `text` with `from` replaced, which must occur exactly once (a drifting envoy.yaml fails
/// the command instead of silently running something else).
pub fn replace_once(text: &str, from: &str, to: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!("envoy.yaml should contain {from:?} exactly once, found {n}")),
    }
}

/// An Envoy running the repository's envoy.yaml, rewritten.
pub struct Envoy {
    pub proc: Proc,
    /// Its listener and its admin interface.
    pub addr: String,
    pub admin_addr: String,
}

/// What [`start_envoy`] rewrites in envoy.yaml besides Envoy's own two ports.
pub struct EnvoyYaml<'a> {
    pub admin_port: u16,
    pub echo_port: u16,
    pub wasm: &'a Path,
    /// Further (from, to) rewrites, each also matching exactly once.
    pub extra: &'a [(&'a str, &'a str)],
}

/// Writes `dir/envoy.yaml` (envoy.yaml on free ports, in front of the given admin and echo,
/// loading `wasm`) and starts Envoy with 2 workers, logging to `dir/envoy.log`; waits until
/// its admin interface says ready.
pub fn start_envoy(p: &Paths, dir: &Path, y: &EnvoyYaml, proxy: &str) -> Result<Envoy, String> {
    let (port, envoy_admin_port) = (free_port()?, free_port()?);
    let mut yaml = std::fs::read_to_string(&p.envoy_yaml).map_err(|e| format!("{}: {e}", p.envoy_yaml.display()))?;
    yaml = replace_once(&yaml, "port_value: 9901", &format!("port_value: {envoy_admin_port}"))?;
    yaml = replace_once(&yaml, "port_value: 10000", &format!("port_value: {port}"))?;
    yaml = replace_once(&yaml, "port_value: 8080", &format!("port_value: {}", y.admin_port))?;
    yaml = replace_once(&yaml, "port_value: 8081", &format!("port_value: {}", y.echo_port))?;
    yaml = replace_once(&yaml, "filename: target/wasm32-wasip1/release/keygate_filter.wasm", &format!("filename: {}", y.wasm.display()))?;
    for (from, to) in y.extra {
        yaml = replace_once(&yaml, from, to)?;
    }
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, yaml).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut cmd = Command::new(&p.envoy);
    envoy_args(&mut cmd, &config, Some(2), proxy);
    let mut envoy = Envoy {
        proc: Proc::spawn("envoy", cmd, dir.join("envoy.log"))?,
        addr: format!("127.0.0.1:{port}"),
        admin_addr: format!("127.0.0.1:{envoy_admin_port}"),
    };
    let ready = envoy.admin_addr.clone();
    wait_for(Duration::from_secs(60), Duration::from_millis(50), "Envoy ready", || {
        envoy.proc.alive()?;
        Ok(http::get(&ready, "/ready", T).ok().filter(|r| r.status == 200))
    })?;
    Ok(envoy)
}
