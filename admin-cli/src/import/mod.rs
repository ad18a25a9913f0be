//! `keygate-admin import FILE`: reads a CSV (header row) or JSON-lines file, turns each
//! line into a record (a line that cannot be read is rejected with its number), sends the
//! records in batches to `POST /v1/import/keys` and prints a summary.

mod batches;
mod parse;

use std::path::PathBuf;

use anyhow::bail;

use crate::client::ClientArgs;
use parse::FileFormat;

// No doc comment here: clap would take it for help text.
#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The file: CSV with a header row (.csv) or JSON lines (.jsonl, .ndjson).
    file: PathBuf,
    /// The file's format, when its extension does not say.
    #[arg(long, value_enum)]
    format: Option<FileFormat>,
    /// Records per request (at most 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    parallel: u64,
    /// How many rejected lines to list (with their reasons) in the summary.
    #[arg(long, default_value_t = 20)]
    show_rejected: usize,
}

/// The file format, the result and the exit status: the text after `import --help`.
pub const IMPORT_HELP: &str = "\
FILE FORMAT
  One key per record. Fields:
    business    the business id (biz_...); the business must exist
    kind        sk or pk
    mode        live or test
    name        optional display name
    expires_at  optional expiry, RFC 3339 (2030-01-01T00:00:00Z)
    key         the raw key (hashed on import; never stored, logged or shown)
    key_sha256  OR: the hex SHA-256 of the raw key's bytes (e.g. `printf %s \"$KEY\" | sha256sum`)
  Each record has key or key_sha256, not both. A raw key in keygate's own format must
  have a valid checksum and a prefix matching kind and mode; any other key (another
  gateway's, 8 to 256 printable ASCII characters without spaces) is accepted and found
  by its hash, with the kind and mode given here.

  CSV (.csv): a header row naming the columns, in any order; empty cells are absent.
    business,kind,mode,name,expires_at,key,key_sha256
    biz_4fT0aB12cD34eF56,sk,live,billing server,,sk_live_51Hx2vendorKEYexample,
    biz_4fT0aB12cD34eF56,pk,test,,2030-01-01T00:00:00Z,,9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

  JSON lines (.jsonl, .ndjson): one object per line, string fields.
    {\"business\":\"biz_4fT0aB12cD34eF56\",\"kind\":\"sk\",\"mode\":\"live\",\"key\":\"sk_live_51Hx2vendorKEYexample\"}

RESULT
  Every record is imported, skipped (that key is already stored for the same business,
  kind and mode: a re-run skips what an earlier run imported) or rejected with its line
  number and a reason (bad CSV/JSON, a missing or bad field, an unknown business). Each
  request's keys are on disk before the server answers; after an interrupted run,
  re-run the same file. A progress bar shows on a terminal (not with --json).

EXIT STATUS
  0  the file was processed and no line was rejected
  2  the file was processed and some lines were rejected (see the summary)
  1  failure: the file could not be read, the header is wrong, or the server refused
     or could not be reached (the batches answered before that are stored)";

/// Runs the import and prints its summary; exits with status 2 when a line was rejected.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let Some(operator_token) = args.client.operator_token.clone() else {
        bail!("import needs --operator-token (KEYGATE_OPERATOR_TOKEN)");
    };
    let summary = batches::import_file(&args, &operator_token).await?;
    if args.client.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        batches::print_summary(&summary);
    }
    if summary.rejected > 0 {
        std::process::exit(2);
    }
    Ok(())
}
