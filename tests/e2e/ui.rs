//! The key dashboard in a real browser. Debian's Chromium, driven by
//! `playwright-core` from `tests/browser/` (installed by `cargo xtask setup`), runs
//! `tests/browser/dashboard.mjs` against this suite's stack: sign in, pick the business,
//! create a key (shown once), use it through Envoy, see `last used` and the usage chart
//! move, rotate, deactivate, test mode, revoke a session, API errors in words, the CSP and
//! escaping. Suite `ui_short_ttl` (3-second tokens, `tests/browser/refresh.mjs`): the page
//! refreshes an expired access token, and asks to sign in again when its session is revoked.
//! `tests/browser/policy.mjs`: a key's address allowlist and own limits, and the business's
//! limits, set in the page and enforced by Envoy. `tests/browser/credits.mjs`: a key's
//! credits set, read and added in the page, and spent through Envoy.
//! Screenshots go to `target/ui-screenshots/NN-step.png`; the scripts print each path.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use keygate_e2e::{plugin_json, Stack, StackOptions, OPERATOR_TOKEN, PASSWORD};
use reqwest::Method;
use serde_json::json;

use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "ui", options, cases: CASES }, Suite { name: "ui_short_ttl", options: short_ttl, cases: SHORT_CASES }]
}

/// Access tokens of the short suite live this long (seconds): the page must refresh them.
const SHORT_TTL: u64 = 3;

fn short_ttl() -> StackOptions {
    StackOptions { admin_args: vec!["--token-ttl-secs".into(), SHORT_TTL.to_string()], ..StackOptions::default() }
}

const SHORT_CASES: &[Case] = &[("page_refreshes_an_expired_token_and_asks_to_sign_in_when_that_fails", refresh)];

/// The reference rules, with usage posted to admin every second so the page sees it soon.
fn options() -> StackOptions {
    StackOptions { plugin_json: Some(plugin_json("\n  \"usage_flush_secs\": 1,", "")), ..StackOptions::default() }
}

const CASES: &[Case] = &[
    ("page_is_served_with_a_strict_csp", headers),
    ("dashboard_in_chromium", dashboard),
    ("identity_providers_in_chromium", identity_providers),
    ("key_allowlist_and_limits_in_chromium", policy),
    ("key_credits_in_chromium", credits),
    ("audit_log_in_chromium", audit_log),
];

fn repo() -> PathBuf {
    std::env::var_os("KEYGATE_REPO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

fn headers(stack: &Stack) {
    let reply = stack.http.get(format!("{}/ui/", stack.admin_url)).send().unwrap();
    assert_eq!(reply.status(), 200);
    let h = reply.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let missing = stack.http.get(format!("{}/ui/nope.js", stack.admin_url)).send().unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("content-security-policy"));
}

fn dashboard(stack: &Stack) {
    run_script(stack, "dashboard.mjs", 10);
}

/// `tests/browser/issuers.mjs`: the dashboard's trusted identity providers (its own
/// provider on loopback), refused in words, pinned keys listed, removed.
fn identity_providers(stack: &Stack) {
    run_script(stack, "issuers.mjs", 3);
}

fn policy(stack: &Stack) {
    run_script(stack, "policy.mjs", 5);
}

fn credits(stack: &Stack) {
    run_script(stack, "credits.mjs", 5);
}

/// `tests/browser/audit.mjs`: the audit log of the selected business.
fn audit_log(stack: &Stack) {
    run_script(stack, "audit.mjs", 2);
}

fn refresh(stack: &Stack) {
    run_script(stack, "refresh.mjs", 2);
}

/// Prepares a business and a member, runs `tests/browser/<script>` against the stack, fails
/// when it fails; expects at least `screenshots` new screenshots.
fn run_script(stack: &Stack, script: &str, screenshots: usize) {
    let root = repo();
    let browser = root.join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `cargo xtask setup` (it runs npm ci there)"
    );
    let chromium = std::env::var("KEYGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(PathBuf::from(&chromium).exists(), "{chromium} is missing: run `cargo xtask setup` (it installs Debian's chromium)");

    let (status, business) = stack.operator_post("/v1/businesses", json!({"name": stack.unique("Dashboard Co ")}));
    assert_eq!(status, 201, "{business}");
    let business_id = business["id"].as_str().unwrap().to_owned();
    // A second business the member does not belong to must not show up in the page.
    let (status, _) = stack.operator_post("/v1/businesses", json!({"name": stack.unique("Someone Else ")}));
    assert_eq!(status, 201);
    let email = format!("{}@example.com", stack.unique("dash"));
    let (status, user) = stack.operator_post("/v1/users", json!({"email": email, "password": PASSWORD, "businesses": [business_id]}));
    assert_eq!(status, 201, "{user}");
    // An operator-made key already there: the list shows keys it did not create itself.
    let (status, _) = stack.admin(
        Method::POST,
        &format!("/v1/businesses/{business_id}/keys"),
        Some(OPERATOR_TOKEN),
        Some(json!({"kind": "pk", "mode": "live", "name": "Storefront"})),
    );
    assert_eq!(status, 201);

    let shots = root.join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let started = Instant::now();
    let output = Command::new("node")
        .arg(browser.join(script))
        .current_dir(&browser)
        .env("KEYGATE_ADMIN_URL", &stack.admin_url)
        .env("KEYGATE_ENVOY_URL", &stack.envoy_url)
        .env("KEYGATE_UI_EMAIL", &email)
        .env("KEYGATE_UI_PASSWORD", PASSWORD)
        .env("KEYGATE_UI_BUSINESS", &business_id)
        .env("KEYGATE_UI_SCREENSHOTS", &shots)
        .env("KEYGATE_CHROMIUM", &chromium)
        .env("KEYGATE_UI_TOKEN_TTL_SECS", SHORT_TTL.to_string())
        .output()
        .expect("node runs (it comes with the machine; xtask setup checks it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // libtest-mimic captures nothing: these lines (screenshot paths) show in the test output.
    println!("{stdout}");
    eprintln!("{stderr}");
    println!("ui: {script} took {:.1} s in the browser", started.elapsed().as_secs_f64());
    assert!(output.status.success(), "the browser test failed ({}):\n{stdout}\n{stderr}", output.status);
    let taken = stdout.lines().filter_map(|l| l.strip_prefix("screenshot: ")).filter(|p| std::path::Path::new(p).is_file()).count();
    assert!(taken >= screenshots, "expected {screenshots} screenshots (printed and written), found {taken}");
    stack.assert_alive();
}
