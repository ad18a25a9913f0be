//! `cargo xtask fuzz [--secs N] [--quick] [TARGET...]`: cargo-fuzz over keygate's
//! untrusted-input parsers (fuzz/, a workspace of its own) on the nightly toolchain.
//!
//! Installs what is missing (the nightly toolchain, `cargo install cargo-fuzz --locked`),
//! builds every target once, then runs each for N seconds from its checked-in seeds
//! (fuzz/seeds/<target>, real values) plus the corpus it grew before (fuzz/corpus/<target>,
//! not checked in). Prints executions per target; fails if any target finds a crash, a
//! panic or a broken invariant (the input lands in fuzz/artifacts/<target>/; turn it into a
//! regression test in core/tests/regressions.rs). `--quick` leaves out `admin_input`, whose
//! build pulls in the whole admin server (warp, sled, tokio).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use crate::{fail, run, step, Paths};

pub const TARGETS: &[&str] = &["decide", "key_parse", "token", "snapshot", "config", "admin_input"];
const HEAVY: &[&str] = &["admin_input"];

pub fn cmd_fuzz(p: &Paths, args: &[String]) -> ExitCode {
    let mut secs: u64 = 60;
    let mut quick = false;
    let mut picked: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => match it.next().and_then(|s| s.parse().ok()) {
                Some(n) => secs = n,
                None => return fail("--secs needs a number of seconds"),
            },
            "--quick" => quick = true,
            t if TARGETS.contains(&t) => picked.push(t.to_owned()),
            other => return fail(&format!("fuzz: unknown argument {other:?}; targets: {}", TARGETS.join(", "))),
        }
    }
    let targets: Vec<&str> = if picked.is_empty() {
        TARGETS.iter().copied().filter(|t| !(quick && HEAVY.contains(t))).collect()
    } else {
        picked.iter().map(String::as_str).collect()
    };
    match fuzz(p, &targets, secs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Runs the fuzz targets; Err when set-up failed or a target found something.
pub fn fuzz(p: &Paths, targets: &[&str], secs: u64) -> Result<(), String> {
    let dir = p.root.join("fuzz");
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let admin = targets.iter().any(|t| HEAVY.contains(t));
    let t = Instant::now();
    let mut build = fuzz_cmd(&dir);
    build.arg("build");
    if admin {
        build.args(["--features", "admin"]);
    }
    step(&format!("cargo +nightly fuzz build{}", if admin { " --features admin" } else { "" }));
    run(&mut build, "cargo +nightly fuzz build")?;
    println!("==> fuzz build: {:.1} s", t.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in targets {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let mut c = fuzz_cmd(&dir);
        c.args(["run", target]);
        if admin {
            c.args(["--features", "admin"]);
        }
        c.arg(format!("corpus/{target}"))
            .arg(format!("seeds/{target}"))
            .args(["--", &format!("-max_total_time={secs}"), "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=4096"]);
        step(&format!("fuzz {target} for {secs} s"));
        let started = Instant::now();
        let out = c.stdin(Stdio::null()).output().map_err(|e| format!("cargo fuzz run {target}: {e}"))?;
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let log_path = dir.join("corpus").join(format!("{target}.log"));
        let _ = std::fs::write(&log_path, &log);
        let execs = stat(&log, "stat::number_of_executed_units").unwrap_or(0);
        let elapsed = started.elapsed().as_secs_f64();
        let ok = out.status.success();
        println!("==> fuzz {target}: {} executions in {elapsed:.0} s ({:.0}/s){}", execs, execs as f64 / elapsed.max(1.0), if ok { "" } else { " FAILED" });
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

/// `cargo +nightly fuzz …` in fuzz/, into fuzz/target whatever the caller's target dir.
fn fuzz_cmd(dir: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    c
}

fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines().rev().filter_map(|l| l.strip_prefix(name)).find_map(|rest| rest.trim_start_matches(':').trim().parse().ok())
}

fn ensure_nightly() -> Result<(), String> {
    let out = Command::new("rustup").args(["toolchain", "list"]).output().map_err(|e| format!("rustup: {e} (cargo xtask fuzz needs rustup for the nightly toolchain)"))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("nightly")) {
        step("rust nightly toolchain: installed");
        return Ok(());
    }
    step("rustup toolchain install nightly --profile minimal");
    run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]), "rustup toolchain install nightly")
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let has = Command::new("cargo").args(["fuzz", "--version"]).env_remove("RUSTUP_TOOLCHAIN").output().is_ok_and(|o| o.status.success());
    if has {
        step("cargo-fuzz: installed");
        return Ok(());
    }
    step("cargo install cargo-fuzz --locked");
    let t = Instant::now();
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]).env_remove("CARGO_TARGET_DIR"), "cargo install cargo-fuzz --locked")?;
    println!("==> cargo-fuzz installed in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
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
}
