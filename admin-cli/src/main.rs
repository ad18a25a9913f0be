//! The `keygate-admin` command: `serve` runs the server; every other subcommand calls a
//! running server's HTTP API (human-readable output, or `--json`).

mod client;
mod import;
mod migrate;
mod output;
mod seal_key;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keygate-admin",
    version,
    about = "keygate's admin server: accounts, API keys, tokens and the filter's snapshot feed.",
    after_help = "Every command but `serve` and `migrate` talks to a running server over HTTP (--url, KEYGATE_URL), \
                  with the operator token or a member's access token where one is needed (sled lets only one \
                  process open a data directory, and the server holds it). Output is readable by people; \
                  --json prints the server's JSON answer for scripts. Errors exit with status 1."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands, listed in `--help` in this order.
#[derive(Subcommand)]
enum Command {
    /// Run the admin server.
    Serve(serve::ServeArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Import existing API keys from another gateway (POST /v1/import/keys; operator), so
    /// clients keep their keys. Safe to re-run: keys already imported are skipped.
    #[command(after_help = import::IMPORT_HELP)]
    Import(import::ImportArgs),
    /// Seal keys, which seal the token signing keys' private seeds in the store: make one, or
    /// show the ids of those configured (README, Sealing signing keys).
    #[command(subcommand)]
    SealKey(seal_key::SealKeyCommand),
    /// Copy a whole store to another place (sled <-> PostgreSQL, or sled to sled, database
    /// to database) and verify the copy; every keygate-admin on either must be stopped.
    #[command(after_help = migrate::MIGRATE_HELP)]
    Migrate(migrate::MigrateArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Client(command) => client::run(command).await,
        Command::Import(args) => import::run(args).await,
        Command::SealKey(command) => seal_key::run(command),
        Command::Migrate(args) => migrate::run(args).await,
    }
}
