//! The few POSIX calls std lacks (Linux): catch SIGINT/SIGTERM/SIGHUP into a flag, signal a
//! process group, and have children die with xtask even if xtask itself is SIGKILLed.

use std::ffi::{c_int, c_ulong};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

pub const SIGHUP: c_int = 1;
pub const SIGINT: c_int = 2;
pub const SIGKILL: c_int = 9;
pub const SIGTERM: c_int = 15;
const PR_SET_PDEATHSIG: c_int = 1;

extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn prctl(option: c_int, ...) -> c_int;
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
