//! `cargo xtask fuzz [--secs N] [--quick] [TARGET...]`: cargo-fuzz over keygate's
//! untrusted-input parsers (fuzz/, a workspace of its own) on the nightly toolchain.
//!
//! Installs what is missing (the nightly toolchain, else the stable one with
//! `RUSTC_BOOTSTRAP=1`; cargo-fuzz into target/tools), builds every target once, then runs
//! each for N seconds (default 60) from its checked-in seeds (fuzz/seeds/<target>, real
//! values) plus the corpus it grew before (fuzz/corpus/<target>, not checked in). Prints
//! executions per target; fails if any target finds a crash, a panic or a broken invariant
//! (the input lands in fuzz/artifacts/<target>/; turn it into a regression test in
//! core/tests/regressions.rs). `--quick` is the form `cargo xtask test` runs (phase
//! `fuzz-quick`): every target for [`QUICK_SECS`] seconds.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use crate::{fail, run, step, Paths};

pub const TARGETS: &[&str] = &["decide", "key_parse", "token", "snapshot", "config", "admin_input", "ratelimit"];
const HEAVY: &[&str] = &["admin_input"];

pub fn cmd_fuzz(p: &Paths, args: &[String]) -> ExitCode {
    let mut secs: Option<u64> = None;
    let mut quick = false;
    let mut picked: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => match it.next().and_then(|s| s.parse().ok()) {
                Some(n) => secs = Some(n),
                None => return fail("--secs needs a number of seconds"),
            },
            "--quick" => quick = true,
            t if TARGETS.contains(&t) => picked.push(t.to_owned()),
            other => return fail(&format!("fuzz: unknown argument {other:?}; targets: {}", TARGETS.join(", "))),
        }
    }
    let targets: Vec<&str> = if picked.is_empty() { TARGETS.to_vec() } else { picked.iter().map(String::as_str).collect() };
    let secs = secs.unwrap_or(if quick { QUICK_SECS } else { 60 });
    match fuzz(p, &targets, secs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// The quick form `cargo xtask test` runs (phase `fuzz-quick`): every target, this long.
pub const QUICK_SECS: u64 = 5;

/// `cargo xtask test`'s `fuzz-quick` phase: every target (admin_input too) for
/// [`QUICK_SECS`] from its seeds and grown corpus; Err on a crash or a failed set-up.
pub fn quick(p: &Paths) -> Result<(), String> {
    fuzz(p, TARGETS, QUICK_SECS)
}

/// Runs the fuzz targets; Err when set-up failed or a target found something.
pub fn fuzz(p: &Paths, targets: &[&str], secs: u64) -> Result<(), String> {
    let dir = p.root.join("fuzz");
    let toolchain = Toolchain::pick()?;
    let path = ensure_cargo_fuzz(p)?;
    let admin = targets.iter().any(|t| HEAVY.contains(t));
    let t = Instant::now();
    let mut build = toolchain.cargo_fuzz(&dir, "build");
    build.env("PATH", &path);
    if admin {
        build.args(["--features", "admin"]);
    }
    let what = format!("{} fuzz build{}", toolchain.cargo(), if admin { " --features admin" } else { "" });
    step(&what);
    run(build.stdin(Stdio::null()), &what)?;
    println!("==> fuzz build: {:.1} s", t.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in targets {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let mut c = toolchain.cargo_fuzz(&dir, "run");
        c.arg(target).env("PATH", &path);
        if admin {
            c.args(["--features", "admin"]);
        }
        c.arg(format!("corpus/{target}")).arg(format!("seeds/{target}")).args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
            "-timeout=10",
            "-rss_limit_mb=4096",
        ]);
        step(&format!("fuzz {target} for {secs} s"));
        let started = Instant::now();
        let out = c.stdin(Stdio::null()).output().map_err(|e| format!("cargo fuzz run {target}: {e}"))?;
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let log_path = dir.join("corpus").join(format!("{target}.log"));
        let _ = std::fs::write(&log_path, &log);
        let execs = stat(&log, "stat::number_of_executed_units").unwrap_or(0);
        let elapsed = started.elapsed().as_secs_f64();
        let ok = out.status.success();
        println!(
            "==> fuzz {target}: {} executions in {elapsed:.0} s ({:.0}/s){}",
            execs,
            execs as f64 / elapsed.max(1.0),
            if ok { "" } else { " FAILED" }
        );
        if !ok {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            eprintln!("xtask fuzz: {target} failed; full log {}, crashing input under fuzz/artifacts/{target}/", log_path.display());
            failed.push(*target);
        }
        rows.push(format!("{target} {execs}"));
    }
    println!("==> fuzz executions: {}", rows.join(", "));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz targets failed: {}", failed.join(", ")))
    }
}

fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines().rev().filter_map(|l| l.strip_prefix(name)).find_map(|rest| rest.trim_start_matches(':').trim().parse().ok())
}

/// The toolchain cargo-fuzz builds with. It needs unstable rustc flags (`-Z sanitizer`,
/// sanitizer coverage): nightly when rustup has it or can install it, else the stable
/// toolchain with `RUSTC_BOOTSTRAP=1`, which unlocks the same flags (its rust-std ships
/// the ASAN runtime). `KEYGATE_FUZZ_TOOLCHAIN=stable` forces the fallback (to check it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Toolchain {
    Nightly,
    StableBootstrap,
}

impl Toolchain {
    fn pick() -> Result<Toolchain, String> {
        if std::env::var("KEYGATE_FUZZ_TOOLCHAIN").is_ok_and(|v| v == "stable") {
            step("fuzz toolchain: stable with RUSTC_BOOTSTRAP=1 (KEYGATE_FUZZ_TOOLCHAIN=stable)");
            return Ok(Toolchain::StableBootstrap);
        }
        let listed = Command::new("rustup").args(["toolchain", "list"]).output();
        let Ok(out) = listed else {
            step("fuzz toolchain: no rustup, so the default toolchain with RUSTC_BOOTSTRAP=1");
            return Ok(Toolchain::StableBootstrap);
        };
        if has_nightly(&String::from_utf8_lossy(&out.stdout)) {
            step("rust nightly toolchain: installed");
            return Ok(Toolchain::Nightly);
        }
        step("rustup toolchain install nightly --profile minimal");
        match run(
            Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]).stdin(Stdio::null()),
            "rustup toolchain install nightly",
        ) {
            Ok(()) => Ok(Toolchain::Nightly),
            Err(e) => {
                step(&format!("{e}; falling back to the stable toolchain with RUSTC_BOOTSTRAP=1"));
                Ok(Toolchain::StableBootstrap)
            }
        }
    }

    /// How the command line reads, for messages.
    fn cargo(self) -> &'static str {
        match self {
            Toolchain::Nightly => "cargo +nightly",
            Toolchain::StableBootstrap => "RUSTC_BOOTSTRAP=1 cargo",
        }
    }

    /// `cargo fuzz SUBCOMMAND` in fuzz/ on this toolchain, building into fuzz/target
    /// (gitignored by fuzz/.gitignore) whatever the caller's target dir; the fallback builds
    /// into fuzz/target/stable, so switching toolchains never rebuilds the other's output.
    fn cargo_fuzz(self, dir: &Path, subcommand: &str) -> Command {
        let mut c = match self {
            Toolchain::Nightly => {
                let mut c = Command::new("rustup");
                c.args(["run", "nightly", "cargo", "fuzz", subcommand]);
                c
            }
            Toolchain::StableBootstrap => {
                let mut c = Command::new("cargo");
                c.args(["fuzz", subcommand, "--target-dir", "target/stable"]).env("RUSTC_BOOTSTRAP", "1");
                c
            }
        };
        c.current_dir(dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR");
        c
    }
}

fn has_nightly(toolchains: &str) -> bool {
    toolchains.lines().any(|l| l.starts_with("nightly"))
}

/// cargo-fuzz on the PATH, or installed into the project (target/tools, gitignored) with
/// `cargo install cargo-fuzz --locked --root target/tools` when missing. Returns the PATH
/// the fuzz commands run with (target/tools/bin first).
fn ensure_cargo_fuzz(p: &Paths) -> Result<OsString, String> {
    let tools = p.root.join("target/tools");
    let mut dirs = vec![tools.join("bin")];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let path = std::env::join_paths(dirs).map_err(|e| format!("PATH: {e}"))?;
    let has = || {
        Command::new("cargo")
            .args(["fuzz", "--version"])
            .env("PATH", &path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has() {
        step("cargo-fuzz: installed");
        return Ok(path);
    }
    let what = "cargo install cargo-fuzz --locked --root target/tools";
    step(what);
    let t = Instant::now();
    run(crate::cargo(p, &["install", "cargo-fuzz", "--locked", "--root"]).arg(&tools).stdin(Stdio::null()), what)?;
    println!("==> cargo-fuzz installed in {:.0} s", t.elapsed().as_secs_f64());
    if has() {
        Ok(path)
    } else {
        Err(format!("`cargo fuzz` does not run after {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#2 INITED\nstat::number_of_executed_units: 565870\nstat::average_exec_per_sec:     113174\n";
        assert_eq!(stat(log, "stat::number_of_executed_units"), Some(565870));
        assert_eq!(stat("nothing", "stat::number_of_executed_units"), None);
    }

    #[test]
    fn finds_nightly_in_rustup_toolchain_list() {
        assert!(has_nightly("stable-x86_64-unknown-linux-gnu (default)\nnightly-x86_64-unknown-linux-gnu\n"));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n1.95.0-x86_64-unknown-linux-gnu\n"));
    }
}
