//! End-to-end tests through the real stack: admin binary, Envoy + keygate_filter.wasm,
//! echo upstream. One stack is shared by all tests (each makes its own business), so the
//! suite pays Envoy's start-up once. Run with `cargo xtask test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod path;

use keygate_e2e::{Stack, StackOptions};
use libtest_mimic::{Arguments, Trial};
use std::sync::Arc;

type Case = fn(&Stack);

fn main() {
    let args = Arguments::from_args();
    let cases: Vec<(&str, Case)> = path::CASES.to_vec();
    let stack = Arc::new(Stack::start(StackOptions::default()));
    let trials = cases
        .into_iter()
        .map(|(name, case)| {
            let stack = Arc::clone(&stack);
            Trial::test(name, move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&stack))).map_err(|e| {
                    let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                    format!("{msg}\n(stack logs: {})", stack.dir.display()).into()
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed() {
        stack.keep_logs.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    drop(stack);
    conclusion.exit();
}
