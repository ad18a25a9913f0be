//! `cargo xtask api-fuzz [--examples N]`: schemathesis (PyPI, pinned, in .venv/) against
//! the real admin binary and its own `/openapi.json`.
//!
//! A fresh admin on a temporary store; two runs, every phase (examples, coverage, fuzzing,
//! stateful), positive and negative data: the operator token on every operation but the
//! filters' feed, the proxy token on the feed (`/v1/snapshot`, `/v1/usage`). Checks: every
//! schemathesis check but `positive_data_acceptance` (the API validates more than a schema
//! can say: a name of spaces, an expiry in the past, a malformed email), so: no 5xx, every
//! answer's status, content type, headers and body as documented, schema-violating requests
//! refused, 405s with `Allow`, secured operations refusing no or bad credentials. Then admin
//! must still answer `/healthz`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::crash::{start_admin, OPERATOR, PROXY};
use crate::{fail, http, run, step, Paths};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const CHECKS_EXCLUDED: &str = "positive_data_acceptance";

pub fn cmd_api_fuzz(p: &Paths, args: &[String]) -> ExitCode {
    let examples = match args {
        [] => 25,
        [flag, n] if flag == "--examples" => match n.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => return fail("--examples takes a positive number"),
        },
        _ => return fail("usage: cargo xtask api-fuzz [--examples N]"),
    };
    match api_fuzz(p, examples) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// schemathesis in the project venv (which `setup` creates for Envoy).
fn ensure_schemathesis(p: &Paths) -> Result<(), String> {
    let bin = p.venv.join("bin/schemathesis");
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let wanted = SCHEMATHESIS.trim_start_matches("schemathesis==");
    if version.as_deref().is_some_and(|v| v.contains(wanted)) {
        step(&format!("{SCHEMATHESIS} in .venv: installed"));
        return Ok(());
    }
    let what = format!(".venv/bin/pip install --quiet {SCHEMATHESIS}");
    step(&what);
    run(
        Command::new(p.venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ]),
        &what,
    )
}

pub fn api_fuzz(p: &Paths, examples: u32) -> Result<(), String> {
    crate::setup(p)?;
    ensure_schemathesis(p)?;
    let work = p.root.join("target/api-fuzz");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let admin = start_admin(&p.admin, &work.join("data"), &work.join("admin.log"))?;
    let spec = format!("http://{}/openapi.json", admin.addr);
    let feed = "^/v1/(snapshot|usage)$";
    schemathesis(
        p,
        &work,
        &spec,
        OPERATOR,
        &["--exclude-path-regex", feed],
        examples,
        "operator",
    )?;
    schemathesis(
        p,
        &work,
        &spec,
        PROXY,
        &["--include-path-regex", feed],
        examples,
        "proxy",
    )?;
    let health = http::get(&admin.addr, "/healthz", Duration::from_secs(10))?;
    if health.status != 200 {
        return Err(format!(
            "admin answered /healthz with {} after the run; log {}",
            health.status,
            work.join("admin.log").display()
        ));
    }
    step("api-fuzz: no failures; admin healthy");
    Ok(())
}

fn schemathesis(
    p: &Paths,
    work: &Path,
    spec: &str,
    bearer: &str,
    filter: &[&str],
    examples: u32,
    name: &str,
) -> Result<(), String> {
    let what = format!("schemathesis run {spec} ({name} token, {examples} examples per operation)");
    step(&what);
    let mut c = Command::new(p.venv.join("bin/schemathesis"));
    c.current_dir(work)
        .args([
            "run",
            spec,
            "--no-color",
            "--generation-database",
            "none",
            "--request-timeout",
            "70",
        ])
        .args(["--checks", "all", "--exclude-checks", CHECKS_EXCLUDED])
        .args(["--max-examples", &examples.to_string()])
        .args(["--header", &format!("Authorization: Bearer {bearer}")])
        .args(["--report", "junit", "--report-dir"])
        .arg(work.join(format!("report-{name}")))
        .args(filter)
        // No telemetry (the machine is offline anyway).
        .env("SCHEMATHESIS_TELEMETRY", "false");
    run(&mut c, &what)
}
