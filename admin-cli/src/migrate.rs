//! `keygate-admin migrate`: copies a whole store to another place (sled and PostgreSQL, in
//! either direction) and checks the copy against its source; the work is the library's
//! (`keygate_admin::store::migrate`). Progress on stderr when it is a terminal; the summary
//! on stdout, readable or `--json`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keygate_admin::store::migrate::{migrate, MigrateOptions, MigrateReport, Progress, Stage};
use keygate_admin::StoreLocation;

// No doc comment here: clap would take it for help text.
#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The store to copy: `sled:DIR` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME`.
    /// Stop every keygate-admin using it first.
    #[arg(long, value_parser = StoreLocation::parse)]
    from: StoreLocation,
    /// Where to copy it: `sled:DIR` (created if missing) or a PostgreSQL URL (the database
    /// must exist; the table is created). Refused unless it is empty, or --replace.
    #[arg(long, value_parser = StoreLocation::parse)]
    to: StoreLocation,
    /// Empty the target first when it holds anything.
    #[arg(long, conflicts_with = "verify_only")]
    replace: bool,
    /// Copy nothing: only compare the target with the source (counts and checksum).
    #[arg(long)]
    verify_only: bool,
    /// Print the summary as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

/// What `migrate --help` adds after the flags.
pub const MIGRATE_HELP: &str = "\
WHAT IT DOES
  Opens both stores for itself alone (sled's directory lock; on PostgreSQL it refuses a
  database keygate-admin replicas are connected to, and holds the start-up lock so none
  can start), copies every tree in batches, then reads the target back: each tree's count
  and a SHA-256 over every (tree, key, value) in key order must equal the source's.
  Everything is copied: businesses, users, keys with their hashes, sessions, revocations,
  signing keys, usage, tokens, the changelog. Stored values are never printed.
  The copy starts a new feed history when a keygate-admin first opens it, so proxies that
  followed the source take a full snapshot instead of a delta.

EXIT STATUS
  0  copied (or, with --verify-only, compared) and verified
  1  refused (the same store, no source, a non-empty target, replicas running) or
     failed (I/O, the database, a verification mismatch): the message says which
  2  bad usage

EXAMPLES
  keygate-admin migrate --from sled:./data --to postgres://keygate@db:5432/keygate
  keygate-admin migrate --from postgres://keygate@db/keygate --to sled:./data-copy --json
  keygate-admin migrate --from sled:./data --to sled:./backup --verify-only";

/// The progress bar on stderr, drawn only on a terminal: one line per tree.
struct Bar {
    shown: bool,
    last: Option<Instant>,
    /// The tree whose line was ended last: not drawn again.
    ended: Option<(Stage, String)>,
}

impl Bar {
    fn draw(&mut self, p: &Progress<'_>) {
        let finished = p.done >= p.total;
        let ended = self.ended.as_ref().is_some_and(|(stage, tree)| *stage == p.stage && tree == p.tree);
        if !self.shown || ended || (!finished && self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100))) {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30u64;
        let filled = (p.done.min(p.total) * width).checked_div(p.total).unwrap_or(width).min(width);
        let stage = match p.stage {
            Stage::Copying => "copying",
            Stage::Verifying => "verifying",
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{stage:<9} {:<18} [{}{}] {}/{} ",
            p.tree,
            "#".repeat(filled as usize),
            "-".repeat((width - filled) as usize),
            p.done,
            p.total
        );
        if finished {
            let _ = writeln!(err);
            self.last = None;
            self.ended = Some((p.stage, p.tree.to_owned()));
        }
        let _ = err.flush();
    }
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let options = MigrateOptions { replace: args.replace, verify_only: args.verify_only };
    let (from, to) = (args.from.clone(), args.to.clone());
    // The engines block (PostgreSQL's client on threads of its own): off the async workers.
    let report = tokio::task::spawn_blocking(move || {
        let mut bar = Bar { shown: std::io::stderr().is_terminal(), last: None, ended: None };
        migrate(&from, &to, options, &mut |p| bar.draw(&p))
    })
    .await
    .context("the copy stopped")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if !report.verified {
        bail!("the target does not match the source: {}", report.mismatches.join("; "));
    }
    Ok(())
}

fn print_report(report: &MigrateReport) {
    let verb = if report.copied { "copied" } else { "compared" };
    println!("{verb} {} -> {}{}", report.from, report.to, if report.replaced { " (emptied first)" } else { "" });
    for tree in &report.trees {
        println!("  {:<18} {:>10}", tree.tree, tree.entries);
    }
    println!("  {:<18} {:>10}", "total", report.entries);
    println!("checksum (SHA-256 over every entry): source {}", report.checksum);
    println!("{:>36}target {}", "", report.target_checksum);
    if report.verified {
        println!("verified: every tree's count and the checksum match");
    } else {
        for mismatch in &report.mismatches {
            println!("MISMATCH {mismatch}");
        }
    }
}
