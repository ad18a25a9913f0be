//! Set-up for the dashboard's browser test (`tests/e2e/ui.rs`): Debian's Chromium (and its
//! chromedriver) from apt, and `playwright-core` from npm into `tests/browser/node_modules`
//! (gitignored) with `npm ci`, re-run when `package-lock.json` changes. Playwright never
//! downloads a browser of its own here: the test launches `/usr/bin/chromium`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{run, step, Paths};

pub const CHROMIUM: &str = "/usr/bin/chromium";
const PACKAGES: &[&str] = &["chromium", "chromium-driver"];
/// A copy of the lock file `npm ci` last installed from.
const STAMP: &str = "node_modules/.keygate-installed-lock.json";

fn runs(bin: &str, arg: &str) -> bool {
    Command::new(bin).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    if !runs("apt-get", "--version") {
        return Err(format!(
            "{} missing and there is no apt-get to install them with; install them \
             (the dashboard's browser test needs them)",
            packages.join(", ")
        ));
    }
    step("apt-get update -qq");
    run(Command::new("apt-get").args(["update", "-qq", "-o", "DPkg::Lock::Timeout=300"]), "apt-get update")?;
    let what = format!("apt-get install -y -qq --no-install-recommends {}", packages.join(" "));
    step(&what);
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &what,
    )
}

/// Debian's Chromium and chromedriver, installed when missing.
fn ensure_chromium() -> Result<(), String> {
    let present = Path::new(CHROMIUM).is_file() && Path::new("/usr/bin/chromedriver").is_file();
    if present && runs(CHROMIUM, "--version") {
        step(&format!("chromium: installed ({CHROMIUM})"));
        return Ok(());
    }
    apt_install(PACKAGES)?;
    if runs(CHROMIUM, "--version") {
        Ok(())
    } else {
        Err(format!("{CHROMIUM} does not run after apt-get install"))
    }
}

/// `npm ci` in tests/browser when node_modules is missing or older than the lock file.
fn ensure_node_modules(p: &Paths) -> Result<(), String> {
    if !runs("node", "--version") || !runs("npm", "--version") {
        apt_install(&["nodejs", "npm"])?;
    }
    let dir = p.root.join("tests/browser");
    let lock = std::fs::read(dir.join("package-lock.json")).map_err(|e| format!("tests/browser/package-lock.json: {e}"))?;
    let fresh =
        dir.join("node_modules/playwright-core/package.json").is_file() && std::fs::read(dir.join(STAMP)).is_ok_and(|stamp| stamp == lock);
    if fresh {
        step("tests/browser/node_modules: installed");
        return Ok(());
    }
    step("npm ci (tests/browser: playwright-core)");
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            // playwright-core downloads nothing on install; make sure no browser download is tried.
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"),
        "npm ci in tests/browser",
    )?;
    std::fs::write(dir.join(STAMP), &lock).map_err(|e| format!("writing {STAMP}: {e}"))
}

pub fn ensure(p: &Paths) -> Result<(), String> {
    ensure_chromium()?;
    ensure_openssl()?;
    ensure_node_modules(p)
}

/// The `openssl` command, installed when missing: the e2e suite `oidc` makes its test
/// identity provider's RSA and P-256 keys with it, and (like admin's `issuers` tests) a
/// test CA for the provider's https.
fn ensure_openssl() -> Result<(), String> {
    if runs("openssl", "version") {
        step("openssl: installed");
        return Ok(());
    }
    apt_install(&["openssl"])?;
    if runs("openssl", "version") {
        Ok(())
    } else {
        Err("openssl does not run after apt-get install".into())
    }
}
