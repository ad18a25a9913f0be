//! `cargo xtask api-fuzz [--examples N]`: schemathesis (PyPI, pinned, in .venv/) against
//! the real admin binary and its own `/openapi.json`.
//!
//! A fresh admin on a temporary store; two runs, every phase (examples, coverage, fuzzing,
//! stateful), positive and negative data: the operator token on every operation but the
//! filters' feed, the proxy token on the feed (`/v1/snapshot`, `/v1/usage`), and a member's
//! token on the key and session operations. Checks: every
//! schemathesis check but `positive_data_acceptance` (the API validates more than a schema
//! can say: a name of spaces, an expiry in the past, a malformed email), so: no 5xx, every
//! answer's status, content type, headers and body as documented, schema-violating requests
//! refused, 405s with `Allow`, secured operations refusing no or bad credentials. Then admin
//! must still answer `/healthz`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::crash::{start_admin, OPERATOR, PROXY};
use crate::json::{quote, Json};
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
    let version = Command::new(&bin).arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let wanted = SCHEMATHESIS.trim_start_matches("schemathesis==");
    if version.as_deref().is_some_and(|v| v.contains(wanted)) {
        step(&format!("{SCHEMATHESIS} in .venv: installed"));
        return Ok(());
    }
    let what = format!(".venv/bin/pip install --quiet {SCHEMATHESIS}");
    step(&what);
    run(Command::new(p.venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", SCHEMATHESIS]), &what)
}

pub fn api_fuzz(p: &Paths, examples: u32) -> Result<(), String> {
    crate::setup(p)?;
    ensure_schemathesis(p)?;
    let work = p.root.join("target/api-fuzz");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let admin = start_admin(&p.admin, &work.join("data"), &work.join("admin.log"), "127.0.0.1:0")?;
    let spec = format!("http://{}/openapi.json", admin.addr);
    let feed = "^/v1/(snapshot|usage)$";
    schemathesis(p, &work, &spec, OPERATOR, &["--exclude-path-regex", feed], examples, "operator")?;
    schemathesis(p, &work, &spec, PROXY, &["--include-path-regex", feed], examples, "proxy")?;
    // A member's token on what members may call: their own business's keys and sessions.
    let member = member_token(&admin.addr)?;
    let tags = ["--include-tag", "keys", "--include-tag", "auth"];
    schemathesis(p, &work, &spec, &member, &tags, examples, "member")?;
    let health = http::get(&admin.addr, "/healthz", Duration::from_secs(10))?;
    if health.status != 200 {
        return Err(format!("admin answered /healthz with {} after the run; log {}", health.status, work.join("admin.log").display()));
    }
    step("api-fuzz: no failures; admin healthy");
    Ok(())
}

/// A business, a member of it, and that member's access token.
fn member_token(addr: &str) -> Result<String, String> {
    let post = |path: &str, bearer: Option<&str>, body: String| -> Result<Json, String> {
        let response = crate::crash::post(addr, path, bearer, &body)?;
        if !(200..300).contains(&response.status) {
            return Err(format!("POST {path} answered {}: {}", response.status, response.body));
        }
        Json::parse(&response.body)
    };
    let business = post("/v1/businesses", Some(OPERATOR), r#"{"name":"api-fuzz"}"#.to_owned())?;
    let business = business.str("id").ok_or("no business id")?.to_owned();
    let (email, password) = ("member@api-fuzz.test", "api-fuzz member password");
    let user = format!(r#"{{"email":{},"password":{},"businesses":[{}]}}"#, quote(email), quote(password), quote(&business));
    post("/v1/users", Some(OPERATOR), user)?;
    let signin = post("/auth/signin", None, format!(r#"{{"email":{},"password":{}}}"#, quote(email), quote(password)))?;
    signin.str("accessToken").map(str::to_owned).ok_or_else(|| "no accessToken in the sign-in answer".to_owned())
}

fn schemathesis(p: &Paths, work: &Path, spec: &str, bearer: &str, filter: &[&str], examples: u32, name: &str) -> Result<(), String> {
    let what = format!("schemathesis run {spec} ({name} token, {examples} examples per operation)");
    step(&what);
    let mut c = Command::new(p.venv.join("bin/schemathesis"));
    c.current_dir(work)
        .args(["run", spec, "--no-color", "--generation-database", "none", "--request-timeout", "70"])
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
