//! Held requests, from the root's tick: each is decided again when the snapshot version
//! moves (a new key or signing key arrived, on whichever VM leads the sync), and refused
//! as it would have been once its time is up. Every worker VM holds and releases its own
//! requests; the shared `seen` entry tells each one that the snapshot moved.

use keygate_core::{Decision, FilterConfig, Outcome};

use crate::host;
use crate::http::{evaluate, settle};
use crate::shared;
use crate::vm::VmState;

/// Releases what is due at `now_ms`; `root_id` is the root context, made effective again
/// afterwards (its own host calls, the feed's included, must not act on a request).
pub fn release(config: &FilterConfig, vm: &VmState, root_id: u32, now_ms: u64) {
    if vm.holding.borrow().is_empty() {
        vm.calm_ticks();
        return;
    }
    let version = shared::read_seen(&config.sync.shared_prefix).map(|s| s.version);
    let due = vm.holding.borrow_mut().take_due(now_ms, version);
    if due.is_empty() {
        return;
    }
    for held in due {
        if !host::set_effective_context(held.context) {
            continue; // The stream has ended.
        }
        let evaluated = evaluate(config, vm, true);
        let decision = match evaluated.outcome {
            Outcome::Decided(decision) => {
                vm.metrics.released();
                decision
            }
            Outcome::Pending(_) if !held.timed_out(now_ms) => {
                vm.holding.borrow_mut().keep(held, evaluated.version);
                continue;
            }
            Outcome::Pending(pending) => {
                vm.holding.borrow_mut().timed_out(&pending.awaited, now_ms);
                vm.metrics.timed_out();
                Decision::Deny(pending.denial)
            }
        };
        if settle(vm, held.context, decision, evaluated.now, evaluated.rate_headers) {
            host::resume_request();
        }
    }
    host::set_effective_context(root_id);
    let waiting = vm.holding.borrow().len();
    vm.metrics.waiting(waiting);
    vm.calm_ticks();
}
