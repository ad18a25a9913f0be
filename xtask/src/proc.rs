//! The child processes every command starts (admin, Envoy, echo, …): each leads its own
//! process group and dies with xtask, and is SIGKILLed (group) and reaped when dropped, so
//! no command leaves anything running, also on failure.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::sys;

pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once the child is known to have exited (and is reaped): its group may be reused.
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr in a new file `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdout(out).stderr(err);
        Proc::start(name, cmd, log)
    }

    /// Starts `cmd` with stdout piped ([`Proc::take_stdout`]) and stderr appended to `log`
    /// (kept across restarts).
    pub fn spawn_piped(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        let err = OpenOptions::new().create(true).append(true).open(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdout(Stdio::piped()).stderr(err);
        Proc::start(name, cmd, log)
    }

    fn start(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        sys::own_group_die_with_parent(&mut cmd);
        let child = cmd.stdin(Stdio::null()).spawn().map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc { name: name.to_owned(), child, log, exited: None })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status already seen, without polling.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// The exit status, once the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.exited = Some(status),
                Ok(None) => {}
                Err(_) => self.exited = self.child.wait().ok(),
            }
        }
        self.exited
    }

    /// Ok while the child runs; an error naming its log once it has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.exited() {
            None => Ok(()),
            Some(_) => Err(format!("{} exited; log {}", self.name, self.log.display())),
        }
    }

    /// Sends `sig` to the child's process group, unless it has exited.
    pub fn signal(&mut self, sig: std::ffi::c_int) {
        if self.exited().is_none() {
            sys::kill_group(self.child.id(), sig);
        }
    }

    /// SIGKILL (group) now, and reap.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            sys::kill_group(self.child.id(), sys::SIGKILL);
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGTERM to every child's group (last started first), SIGKILL to those still there
/// after `grace`.
pub fn stop_all(procs: &mut [Proc], grace: Duration) {
    for proc in procs.iter_mut().rev() {
        proc.signal(sys::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while procs.iter_mut().any(|p| p.exited().is_none()) && Instant::now() <= deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for proc in procs.iter_mut() {
        if proc.exited().is_none() {
            println!("==> {} did not stop within {} s: SIGKILL", proc.name, grace.as_secs());
            proc.kill();
        }
    }
}

/// A free loopback port (free now: another process may take it before it is used).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

/// Polls `f` every `every` until it returns Some, at most `limit`.
pub fn wait_for<X>(limit: Duration, every: Duration, what: &str, mut f: impl FnMut() -> Result<Option<X>, String>) -> Result<X, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(x) = f()? {
            return Ok(x);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {} s", limit.as_secs()));
        }
        std::thread::sleep(every);
    }
}
