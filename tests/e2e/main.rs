//! End-to-end tests through the real stack: admin binary, Envoy + keygate_filter.wasm,
//! echo upstream. Tests are grouped in suites; each suite gets one stack (started on first
//! use, so a filtered run starts only what it needs), shared by its tests, which make their
//! own businesses. A suite whose tests kill admin or need other rules has its own stack.
//! Run with `cargo xtask test`. With `KEYGATE_TEST_POSTGRES` (its e2e-postgres phase) every
//! stack's admin stores in a new database on that server, and the suites that run admin
//! replicas (`replicas_*`) run; without it they are ignored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod credits;
mod filter;
mod flapping;
mod fleet;
mod hold;
mod import;
mod jwt_attacks;
mod key_attacks;
mod lifecycle;
mod log_secrets;
mod oidc;
mod path;
mod policy;
mod replicas;
mod restore;
mod ui;

use keygate_e2e::{Stack, StackOptions};
use libtest_mimic::{Arguments, Trial};
use std::sync::{Arc, OnceLock};

pub type Case = (&'static str, fn(&Stack));

/// `send(i, sent_at)` for i in 0..n, paced at `rate` calls a second: a slow call delays
/// the next one, never bunches the ones after it.
pub fn paced<T>(n: usize, rate: f64, mut send: impl FnMut(usize, std::time::Instant) -> T) -> Vec<T> {
    let gap = std::time::Duration::from_secs_f64(1.0 / rate);
    let mut next = std::time::Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let sent = std::time::Instant::now();
        next = sent + gap;
        out.push(send(i, sent));
    }
    out
}

/// A request's `SECRET_KEY` header (if any); with `fresh`, also `connection: close`, so the
/// request goes on a connection of its own and new connections land on any of an Envoy's
/// workers, not only the one a kept-alive connection is on.
pub fn key_headers(key: Option<&str>, fresh: bool) -> Vec<(&'static str, &[u8])> {
    let close = fresh.then_some(("connection", b"close".as_slice()));
    key.map(|k| ("SECRET_KEY", k.as_bytes())).into_iter().chain(close).collect()
}

pub struct Suite {
    pub name: &'static str,
    pub options: fn() -> StackOptions,
    pub cases: &'static [Case],
}

fn main() {
    let args = Arguments::from_args();
    let suites: Vec<Suite> = [
        path::suites(),
        lifecycle::suites(),
        filter::suites(),
        jwt_attacks::suites(),
        key_attacks::suites(),
        log_secrets::suites(),
        flapping::suites(),
        hold::suites(),
        ui::suites(),
        import::suites(),
        replicas::suites(),
        restore::suites(),
        fleet::suites(),
        oidc::suites(),
        credits::suites(),
        policy::suites(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut stacks: Vec<(&str, Arc<OnceLock<Stack>>)> = Vec::new();
    let mut trials = Vec::new();
    for suite in suites {
        // Suites of one name (declared in several files) share one stack, started with the
        // options of the first.
        let stack = match stacks.iter().find(|(name, _)| *name == suite.name) {
            Some((_, stack)) => Arc::clone(stack),
            None => {
                let stack: Arc<OnceLock<Stack>> = Arc::new(OnceLock::new());
                stacks.push((suite.name, Arc::clone(&stack)));
                stack
            }
        };
        // Admin replicas need PostgreSQL: those suites run in the e2e-postgres phase only.
        let wanted = (suite.options)();
        let ignored = (wanted.admin_replica || wanted.own_postgres) && keygate_e2e::postgres::server_under_test().is_none();
        for &(name, case) in suite.cases {
            let (stack, options) = (Arc::clone(&stack), suite.options);
            trials.push(
                Trial::test(format!("{}::{name}", suite.name), move || {
                    let stack = stack.get_or_init(|| Stack::start(options()));
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(stack))).map_err(|e| {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        format!("{msg}\n(stack logs: {})", stack.dir.display()).into()
                    })
                })
                .with_ignored_flag(ignored),
            );
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    for stack in stacks.iter().filter_map(|(_, s)| s.get()) {
        if conclusion.has_failed() {
            stack.keep_logs.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    drop(stacks);
    conclusion.exit();
}
