//! Set-up for `tests/deploy/`: a compose parser to validate `docker-compose.yml` with.
//!
//! Docker's engine is not needed (nor here): `docker-compose config` (Debian's
//! `docker-compose` 1.29 package, Python) parses, validates against the compose schema and
//! interpolates the file without talking to an engine. Installed with apt-get when missing
//! (about 10 s on a fresh machine); the test gets its path in `KEYGATE_COMPOSE_BIN`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{run, step};

const PACKAGE: &str = "docker-compose";

/// `docker-compose` on PATH, as an absolute path, if it runs.
fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let bin = std::env::split_paths(&path).map(|dir| dir.join(PACKAGE)).find(|p| p.is_file())?;
    let works = Command::new(&bin).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    works.then_some(bin)
}

/// The path of a working `docker-compose`, installing Debian's package when missing.
pub fn docker_compose() -> Result<PathBuf, String> {
    if let Some(bin) = find() {
        step(&format!("{PACKAGE}: installed ({})", bin.display()));
        return Ok(bin);
    }
    let has_apt = Command::new("apt-get").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !has_apt {
        return Err(format!(
            "{PACKAGE} is missing and there is no apt-get to install it with; install \
             docker-compose 1.29 (it validates docker-compose.yml for tests/deploy/)"
        ));
    }
    step("apt-get update -qq");
    run(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
    step(&format!("apt-get install -y -qq --no-install-recommends {PACKAGE}"));
    run(
        Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends", PACKAGE]).env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install docker-compose",
    )?;
    find().ok_or_else(|| format!("{PACKAGE} does not run after apt-get install"))
}
