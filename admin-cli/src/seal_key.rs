//! `keygate-admin seal-key`: makes a seal key, and shows the ids of the configured ones. The
//! seal keys `serve` uses are read here too (`SealKeySource`), the same way for both.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use keygate_admin::seal::{SealKey, SealKeys};

/// The environment variable with the seal keys themselves. Environment only: a flag's value
/// would show in the process list.
pub const SEAL_KEY_ENV: &str = "KEYGATE_SEAL_KEY";

// No doc comment here: clap would take it for help text.
#[derive(clap::Args)]
pub struct SealKeySource {
    /// File of seal keys, which seal the token signing keys' private seeds in the store: one
    /// `kgseal_…` key per line, `#` comments. The first seals; every listed key can open.
    /// Instead of a file, KEYGATE_SEAL_KEY (environment only) may hold the keys, separated by
    /// commas. Required with a PostgreSQL store; optional with sled (without one, seeds stay in
    /// plaintext). Make a key with `keygate-admin seal-key generate`.
    #[arg(long, env = "KEYGATE_SEAL_KEY_FILE")]
    seal_key_file: Option<PathBuf>,
}

impl SealKeySource {
    /// The configured keys: KEYGATE_SEAL_KEY or the file (never both), or `None`.
    pub fn read(&self) -> anyhow::Result<Option<SealKeys>> {
        let list = match std::env::var(SEAL_KEY_ENV) {
            Ok(list) => Some(list),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => bail!("{SEAL_KEY_ENV} is not UTF-8"),
        };
        let file = self.seal_key_file.as_deref().filter(|p| !p.as_os_str().is_empty());
        if let Some(path) = file {
            warn_if_others_may_read(path);
        }
        Ok(SealKeys::configured(list.as_deref(), file)?)
    }
}

/// A seal key file others may read is as good as a key left in the database.
fn warn_if_others_may_read(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "the seal key file may be read by others than its owner: chmod 600 it");
            }
        }
    }
}

#[derive(clap::Subcommand)]
pub enum SealKeyCommand {
    /// Print a new random seal key on stdout (nothing else).
    Generate,
    /// Print the id of each configured seal key (KEYGATE_SEAL_KEY or --seal-key-file, read as
    /// `serve` reads them), one per line, the one that seals first. The ids are what admin's
    /// messages name; a key itself is never printed.
    Id(SealKeySource),
}

pub fn run(command: SealKeyCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        SealKeyCommand::Generate => writeln!(out, "{}", SealKey::generate()?.expose())?,
        SealKeyCommand::Id(source) => {
            let Some(keys) = source.read()? else {
                bail!("no seal key is configured: set {SEAL_KEY_ENV} or --seal-key-file (KEYGATE_SEAL_KEY_FILE)");
            };
            for id in keys.ids() {
                writeln!(out, "{id}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
