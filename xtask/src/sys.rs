//! The few POSIX calls std lacks (Linux): catch SIGINT/SIGTERM/SIGHUP into a flag, signal a
//! process group, have children die with xtask even if xtask itself is SIGKILLed, raise the
//! open-file limit, and the clock-tick rate /proc's CPU times are counted in.

use std::ffi::{c_int, c_ulong};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

pub const SIGHUP: c_int = 1;
pub const SIGINT: c_int = 2;
pub const SIGKILL: c_int = 9;
pub const SIGTERM: c_int = 15;
const PR_SET_PDEATHSIG: c_int = 1;
const RLIMIT_NOFILE: c_int = 7;
const SC_CLK_TCK: c_int = 2;

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn prctl(option: c_int, ...) -> c_int;
    fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
    fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
    fn sysconf(name: c_int) -> std::ffi::c_long;
}

static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: c_int) {
    // Only an atomic store: async-signal-safe.
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag that `caught()` reads.
pub fn catch_signals() {
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            signal(sig, on_signal);
        }
    }
}

/// The last signal caught since `catch_signals`, if any.
pub fn caught() -> Option<c_int> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Sends `sig` to the process group `pgid` (our children each lead their own group).
pub fn kill_group(pgid: u32, sig: c_int) {
    if let Ok(pid) = c_int::try_from(pgid) {
        if pid > 0 {
            // SAFETY: plain syscall; a group that is already gone just gives ESRCH.
            unsafe {
                kill(-pid, sig);
            }
        }
    }
}

/// Makes `cmd`'s process lead its own process group (so a terminal's Ctrl-C reaches only
/// xtask, which then stops children in order) and receive SIGTERM if xtask dies.
pub fn own_group_die_with_parent(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGTERM as c_ulong);
            Ok(())
        });
    }
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it);
/// returns the soft limit now in force.
pub fn raise_nofile_limit() -> Result<u64, String> {
    let mut lim = RLimit { cur: 0, max: 0 };
    // SAFETY: plain syscalls on a local struct of the kernel's layout (two 64-bit words).
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(format!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error()));
        }
        if lim.cur < lim.max {
            let raised = RLimit { cur: lim.max, max: lim.max };
            if setrlimit(RLIMIT_NOFILE, &raised) != 0 {
                return Err(format!("setrlimit(RLIMIT_NOFILE, {}): {}", lim.max, std::io::Error::last_os_error()));
            }
            lim.cur = lim.max;
        }
    }
    Ok(lim.cur)
}

/// Clock ticks per second (`utime`/`stime` in /proc/PID/stat count these).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}
