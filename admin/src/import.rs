//! Bulk import of existing API keys (from another gateway): the operator endpoint
//! `POST /v1/import/keys` and the client side of `keygate-admin import FILE`.
//!
//! The endpoint takes a batch of at most [`BATCH_MAX`] records, checks each, and stores the
//! good ones in one store transaction made durable before it answers, with one result per
//! record: `imported`, `skipped` (the same key is already stored for the same business,
//! kind and mode: a re-run) or `rejected` with a reason. A raw key is hashed here and never
//! stored, logged or echoed; reasons name fields, never values.
//!
//! The command reads a CSV (header row) or JSON-lines file, turns each line into a record
//! (a line that cannot be read is rejected with its number), sends them in batches and
//! prints a summary.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context};
use keygate_core::key::{self, KeyFormatError, PresentedKey};
use keygate_core::{KeyHash, KeyKind, Mode, UnixTime};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::api::{clean_name, durable_write, parse_expiry, BadExpiry};
use crate::error::{json_response, AdminError};
use crate::random;
use crate::state::AppState;
use crate::store::{now, ImportOutcome, Key};

/// Records per request, at most.
pub const BATCH_MAX: usize = 1000;
/// Body cap of `POST /v1/import/keys` (a full batch of the longest records fits).
pub const BATCH_BODY_LIMIT: u64 = 1024 * 1024;
/// The stored `prefix` of a key imported by hash or in another gateway's format: there is
/// no keygate prefix to show, and showing part of a foreign key would leak some of it.
pub const IMPORTED_PREFIX: &str = "imported";
/// The fields a record may have.
pub const FIELDS: [&str; 7] = ["business", "kind", "mode", "name", "expires_at", "key", "key_sha256"];

/// One record as read from a file: every field text, absent when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The raw key: hashed on import, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hex of the SHA-256 of the raw key's bytes (what [`KeyHash::of_raw`] computes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

impl ImportRecord {
    fn set(&mut self, field: &str, value: String) -> bool {
        let slot = match field {
            "business" => &mut self.business,
            "kind" => &mut self.kind,
            "mode" => &mut self.mode,
            "name" => &mut self.name,
            "expires_at" => &mut self.expires_at,
            "key" => &mut self.key,
            "key_sha256" => &mut self.key_sha256,
            _ => return false,
        };
        *slot = Some(value).filter(|v| !v.is_empty());
        true
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBatch {
    /// At most 1000 records.
    #[schema(max_items = 1000)]
    #[serde(deserialize_with = "objects")]
    pub keys: Vec<ImportRecord>,
}

/// Records as JSON objects only: serde alone would also build one from an array of its
/// fields in order (found by schemathesis).
fn objects<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ImportRecord>, D::Error> {
    let raw: Vec<serde_json::Map<String, serde_json::Value>> = Deserialize::deserialize(d)?;
    raw.into_iter().map(|o| serde_json::from_value(serde_json::Value::Object(o)).map_err(serde::de::Error::custom)).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordResult {
    Imported { key_id: String },
    Skipped { key_id: String },
    Rejected { reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchResult {
    pub imported: usize,
    pub skipped: usize,
    pub rejected: usize,
    /// One per record, in the request's order.
    pub results: Vec<RecordResult>,
}

fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, String> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| format!("{field} is missing"))
}

/// The key a record describes, or why it cannot be imported. Never quotes a key.
pub fn check_record(record: &ImportRecord, now: UnixTime) -> Result<Key, String> {
    let business = required(&record.business, "business")?;
    if business.len() > 64 || !business.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("business must be a business id (biz_…)".to_owned());
    }
    let kind = match required(&record.kind, "kind")? {
        "sk" => KeyKind::Sk,
        "pk" => KeyKind::Pk,
        _ => return Err("kind must be sk or pk".to_owned()),
    };
    let mode = match required(&record.mode, "mode")? {
        "live" => Mode::Live,
        "test" => Mode::Test,
        _ => return Err("mode must be live or test".to_owned()),
    };
    let name =
        record.name.as_deref().filter(|n| !n.trim().is_empty()).map(|n| clean_name(n, "name")).transpose().map_err(|e| e.to_string())?;
    let expires_at = match record.expires_at.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => Some(parse_expiry(text, now).map_err(|bad| match bad {
            BadExpiry::NotRfc3339 => "expires_at must be an RFC 3339 date-time (e.g. 2030-01-01T00:00:00Z)".to_owned(),
            BadExpiry::NotInFuture => "expires_at is in the past".to_owned(),
        })?),
    };
    let (hash, prefix) = match (record.key.as_deref(), record.key_sha256.as_deref()) {
        (Some(_), Some(_)) => return Err("give key or key_sha256, not both".to_owned()),
        (None, None) => return Err("key or key_sha256 is missing".to_owned()),
        (None, Some(hex)) => (KeyHash::from_hex(hex.trim()).ok_or("key_sha256 must be 64 hex digits")?, IMPORTED_PREFIX.to_owned()),
        (Some(raw), None) => match key::classify(raw) {
            Ok(PresentedKey::Checked(api_key)) => {
                if (api_key.kind(), api_key.mode()) != (kind, mode) {
                    return Err(format!(
                        "the key's prefix is {}_{}_ but the record says kind {} and mode {}",
                        api_key.kind().as_str(),
                        api_key.mode().as_str(),
                        kind.as_str(),
                        mode.as_str()
                    ));
                }
                (api_key.hash(), api_key.display_prefix().to_owned())
            }
            Ok(PresentedKey::Legacy(hash)) => (hash, IMPORTED_PREFIX.to_owned()),
            Err(KeyFormatError::Checksum) => {
                return Err("the key has keygate's format but a wrong checksum, so no proxy would accept it".to_owned())
            }
            Err(_) => {
                return Err(format!(
                    "key must be {} to {} printable ASCII characters without spaces",
                    key::LEGACY_MIN_LEN,
                    key::LEGACY_MAX_LEN
                ))
            }
        },
    };
    Ok(Key {
        id: String::new(),
        business: business.to_owned(),
        kind,
        mode,
        hash,
        prefix,
        name,
        scopes: vec![],
        expires_at,
        created_at: now,
        active: true,
        last_used_at: None,
        rotated_at: None,
        grace: vec![],
    })
}

/// `POST /v1/import/keys` (operator).
#[utoipa::path(post, path = "/v1/import/keys", tag = "keys", summary = "Import existing keys (raw or SHA-256) from another gateway; idempotent",
    security(("operator" = [])), request_body(content = ImportBatch, description = "Up to 1000 records, at most 1 MiB"),
    responses(
        (status = 200, description = "One result per record, in order; stored on disk before this answer", body = BatchResult)
    )
)]
pub async fn import_keys(state: AppState, batch: ImportBatch) -> Result<Response, AdminError> {
    if batch.keys.len() > BATCH_MAX {
        return Err(AdminError::InvalidRequest(format!("at most {BATCH_MAX} keys per request")));
    }
    let now = now();
    let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(batch.keys.len());
    let mut keys = Vec::new();
    let mut slots = Vec::new();
    for record in &batch.keys {
        match check_record(record, now) {
            Ok(mut key) => {
                key.id = random::id("key_")?;
                slots.push(results.len());
                results.push(None);
                keys.push(key);
            }
            Err(reason) => results.push(Some(RecordResult::Rejected { reason })),
        }
    }
    if !keys.is_empty() {
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        let outcomes = durable_write(state.store(), move |s| s.import_keys(&keys)).await?;
        for ((slot, id), outcome) in slots.into_iter().zip(ids).zip(outcomes) {
            results[slot] = Some(match outcome {
                ImportOutcome::Imported => RecordResult::Imported { key_id: id },
                ImportOutcome::Skipped { key_id } => RecordResult::Skipped { key_id },
                ImportOutcome::Refused(reason) => RecordResult::Rejected { reason: reason.to_owned() },
            });
        }
    }
    let results: Vec<RecordResult> =
        results.into_iter().map(|r| r.unwrap_or(RecordResult::Rejected { reason: "not processed".to_owned() })).collect();
    let mut out = BatchResult { results, ..BatchResult::default() };
    for r in &out.results {
        match r {
            RecordResult::Imported { .. } => out.imported += 1,
            RecordResult::Skipped { .. } => out.skipped += 1,
            RecordResult::Rejected { .. } => out.rejected += 1,
        }
    }
    tracing::info!(imported = out.imported, skipped = out.skipped, rejected = out.rejected, "api keys imported");
    Ok(json_response(StatusCode::OK, &out))
}

// ----- reading files -----

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    Csv,
    Jsonl,
}

impl FileFormat {
    /// `.csv` → CSV, `.jsonl` / `.ndjson` → JSON lines.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(FileFormat::Csv),
            "jsonl" | "ndjson" => Some(FileFormat::Jsonl),
            _ => None,
        }
    }
}

/// One CSV line (RFC 4180 without line breaks inside quotes): fields, or why not.
pub fn split_csv_line(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    loop {
        // At the start of a field.
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed (line breaks inside quotes are not supported)"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut field));
                    return Ok(fields);
                }
                Some(',') => fields.push(std::mem::take(&mut field)),
                Some(_) => return Err("text after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(std::mem::take(&mut field));
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(std::mem::take(&mut field));
                        break;
                    }
                    Some('"') => return Err("a quote inside an unquoted field"),
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

/// The column names of a CSV header, checked: known, unique, and enough to import.
pub fn csv_header(line: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = split_csv_line(line)
        .map_err(|e| anyhow::anyhow!("the header row is not valid CSV: {e}"))?
        .into_iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for (i, name) in names.iter().enumerate() {
        if !FIELDS.contains(&name.as_str()) {
            bail!("unknown column {name:?} in the header row (columns: {})", FIELDS.join(", "));
        }
        if names[..i].contains(name) {
            bail!("column {name:?} appears twice in the header row");
        }
    }
    for needed in ["business", "kind", "mode"] {
        if !names.iter().any(|n| n == needed) {
            bail!("the header row has no {needed:?} column");
        }
    }
    if !names.iter().any(|n| n == "key" || n == "key_sha256") {
        bail!("the header row needs a \"key\" or a \"key_sha256\" column");
    }
    Ok(names)
}

/// One data line of a CSV file under `header`.
pub fn csv_record(header: &[String], line: &str) -> Result<ImportRecord, String> {
    let fields = split_csv_line(line).map_err(|e| format!("not valid CSV: {e}"))?;
    if fields.len() != header.len() {
        return Err(format!("expected {} fields, found {}", header.len(), fields.len()));
    }
    let mut record = ImportRecord::default();
    for (name, value) in header.iter().zip(fields) {
        record.set(name, value);
    }
    Ok(record)
}

/// One line of a JSON-lines file: an object of string (or null) fields.
pub fn json_record(line: &str) -> Result<ImportRecord, String> {
    // Parsed as a value first: serde's type errors could quote a value (a key); syntax
    // errors never do, and only the column is kept.
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON (column {})", e.column()))?;
    let serde_json::Value::Object(fields) = value else {
        return Err("not a JSON object".to_owned());
    };
    let mut record = ImportRecord::default();
    for (name, value) in fields {
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            _ => return Err(format!("field {name:?} must be a string")),
        };
        if !record.set(&name, text) {
            let shown: String = name.chars().take(40).collect();
            return Err(format!("unknown field {shown:?} (fields: {})", FIELDS.join(", ")));
        }
    }
    Ok(record)
}

// ----- the command -----

/// What `keygate-admin import` needs besides the file.
pub struct ImportCommand {
    pub url: String,
    pub operator_token: String,
    pub file: std::path::PathBuf,
    pub format: Option<FileFormat>,
    pub batch: usize,
    pub parallel: usize,
    pub show_rejected: usize,
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedLine {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub file: String,
    pub records: u64,
    pub imported: u64,
    pub skipped: u64,
    pub rejected: u64,
    pub seconds: f64,
    /// The first `--show-rejected` rejected lines.
    pub rejected_lines: Vec<RejectedLine>,
}

impl Summary {
    fn reject(&mut self, line: u64, reason: String, keep: usize) {
        self.rejected += 1;
        if self.rejected_lines.len() < keep {
            self.rejected_lines.push(RejectedLine { line, reason });
        }
    }
}

type InFlight = tokio::task::JoinHandle<anyhow::Result<(Vec<u64>, BatchResult)>>;

async fn send_batch(
    client: reqwest::Client,
    url: String,
    token: String,
    lines: Vec<u64>,
    records: Vec<ImportRecord>,
) -> anyhow::Result<(Vec<u64>, BatchResult)> {
    let body = serde_json::json!({ "keys": records });
    let response = client.post(&url).bearer_auth(token).json(&body).send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.context("cannot read the answer")?;
    if !status.is_success() {
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("no details");
        let code = value.get("code").and_then(|e| e.as_str()).unwrap_or("?");
        bail!("the server answered {status}: {message} ({code})");
    }
    let result: BatchResult = serde_json::from_str(&text).context("the server's answer is not an import result")?;
    if result.results.len() != lines.len() {
        bail!("the server answered {} results for {} records", result.results.len(), lines.len());
    }
    Ok((lines, result))
}

fn absorb(summary: &mut Summary, lines: Vec<u64>, result: BatchResult, keep: usize) {
    for (line, r) in lines.into_iter().zip(result.results) {
        summary.records += 1;
        match r {
            RecordResult::Imported { .. } => summary.imported += 1,
            RecordResult::Skipped { .. } => summary.skipped += 1,
            RecordResult::Rejected { reason } => summary.reject(line, reason, keep),
        }
    }
}

struct Progress {
    shown: bool,
    total_bytes: u64,
}

impl Progress {
    fn draw(&self, read: u64, s: &Summary) {
        if !self.shown {
            return;
        }
        let width = 30usize;
        let done = if self.total_bytes == 0 { 1.0 } else { (read as f64 / self.total_bytes as f64).min(1.0) };
        let filled = (done * width as f64) as usize;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>3}%  {} lines  imported {}  skipped {}  rejected {} ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            (done * 100.0) as u32,
            s.records,
            s.imported,
            s.skipped,
            s.rejected
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// Runs the import; the summary is complete unless the server failed (then `Err`, and the
/// batches answered so far are stored: a re-run skips them).
pub async fn run(cmd: &ImportCommand) -> anyhow::Result<Summary> {
    let format = match cmd.format.or_else(|| FileFormat::from_path(&cmd.file)) {
        Some(f) => f,
        None => bail!("cannot tell the file's format from its name: use a .csv, .jsonl or .ndjson file, or --format csv|jsonl"),
    };
    let file = std::fs::File::open(&cmd.file).with_context(|| format!("cannot open {}", cmd.file.display()))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let progress = Progress { shown: !cmd.json && std::io::stderr().is_terminal(), total_bytes };
    let started = std::time::Instant::now();
    let url = format!("{}/v1/import/keys", cmd.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let batch_size = cmd.batch.clamp(1, BATCH_MAX);
    let keep = cmd.show_rejected;
    let mut summary = Summary { file: cmd.file.display().to_string(), ..Summary::default() };
    let mut header: Option<Vec<String>> = None;
    let (mut lines, mut records) = (Vec::with_capacity(batch_size), Vec::with_capacity(batch_size));
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let (mut number, mut read) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).with_context(|| format!("cannot read {}", cmd.file.display()))?;
        let at_end = n == 0;
        if !at_end {
            number += 1;
            read += n as u64;
            let mut text = buf.as_slice();
            if number == 1 {
                text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
            }
            let text = text.strip_suffix(b"\n").unwrap_or(text);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let parsed = match std::str::from_utf8(text) {
                Err(_) => Some(Err("not valid UTF-8".to_owned())),
                Ok(line) if line.trim().is_empty() => None,
                Ok(line) => match (format, &header) {
                    (FileFormat::Csv, None) => {
                        header = Some(csv_header(line).with_context(|| format!("{} line {number}", cmd.file.display()))?);
                        None
                    }
                    (FileFormat::Csv, Some(h)) => Some(csv_record(h, line)),
                    (FileFormat::Jsonl, _) => Some(json_record(line)),
                },
            };
            match parsed {
                None => {}
                Some(Ok(record)) => {
                    lines.push(number);
                    records.push(record);
                }
                Some(Err(reason)) => {
                    summary.records += 1;
                    summary.reject(number, reason, keep);
                }
            }
        }
        if records.len() >= batch_size || (at_end && !records.is_empty()) {
            while in_flight.len() >= cmd.parallel.max(1) {
                if let Some(done) = in_flight.pop_front() {
                    let (l, r) = done.await.context("an import task failed")??;
                    absorb(&mut summary, l, r, keep);
                    progress.draw(read, &summary);
                }
            }
            let (l, r) = (
                std::mem::replace(&mut lines, Vec::with_capacity(batch_size)),
                std::mem::replace(&mut records, Vec::with_capacity(batch_size)),
            );
            in_flight.push_back(tokio::spawn(send_batch(client.clone(), url.clone(), cmd.operator_token.clone(), l, r)));
        }
        if at_end {
            break;
        }
    }
    while let Some(done) = in_flight.pop_front() {
        let (l, r) = done.await.context("an import task failed")??;
        absorb(&mut summary, l, r, keep);
        progress.draw(read, &summary);
    }
    if format == FileFormat::Csv && header.is_none() {
        bail!("{} has no header row", cmd.file.display());
    }
    progress.draw(read, &summary);
    progress.finish();
    summary.rejected_lines.sort_by_key(|r| r.line);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The readable summary.
pub fn print_summary(s: &Summary) {
    let rate = if s.seconds > 0.0 { s.records as f64 / s.seconds } else { 0.0 };
    println!("file      {}", s.file);
    println!("records   {}", s.records);
    println!("imported  {}", s.imported);
    println!("skipped   {} (already present)", s.skipped);
    println!("rejected  {}", s.rejected);
    println!("time      {:.1} s ({:.0} records/s)", s.seconds, rate);
    if !s.rejected_lines.is_empty() {
        println!();
        let more = s.rejected.saturating_sub(s.rejected_lines.len() as u64);
        println!("rejected lines{}:", if more > 0 { format!(" (first {}; {more} more)", s.rejected_lines.len()) } else { String::new() });
        for r in &s.rejected_lines {
            println!("  line {}: {}", r.line, r.reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_split_with_quotes() {
        assert_eq!(split_csv_line("a,b,,c").unwrap(), vec!["a", "b", "", "c"]);
        assert_eq!(split_csv_line(r#""a,b","say ""hi""",c"#).unwrap(), vec!["a,b", "say \"hi\"", "c"]);
        assert_eq!(split_csv_line(r#"a,"""#).unwrap(), vec!["a", ""]);
        assert!(split_csv_line(r#"a,"open"#).is_err());
        assert!(split_csv_line(r#"a,"x"y"#).is_err());
        assert!(split_csv_line(r#"a,b"c"#).is_err());
    }

    #[test]
    fn records_are_checked_without_quoting_keys() {
        let now = 1_800_000_000;
        let good = ImportRecord {
            business: Some("biz_1".into()),
            kind: Some("sk".into()),
            mode: Some("live".into()),
            key: Some("vendor_secret_0123456789".into()),
            ..ImportRecord::default()
        };
        let key = check_record(&good, now).unwrap();
        assert_eq!(key.hash, KeyHash::of_raw("vendor_secret_0123456789"));
        assert_eq!(key.prefix, IMPORTED_PREFIX);
        let hashed = ImportRecord { key: None, key_sha256: Some(KeyHash::of_raw("x").to_hex().to_uppercase()), ..good.clone() };
        assert_eq!(check_record(&hashed, now).unwrap().hash, KeyHash::of_raw("x"));
        let cases = [
            (ImportRecord { kind: Some("rk".into()), ..good.clone() }, "kind must be sk or pk"),
            (ImportRecord { mode: None, ..good.clone() }, "mode is missing"),
            (ImportRecord { expires_at: Some("tomorrow".into()), ..good.clone() }, "expires_at must be an RFC 3339"),
            (ImportRecord { expires_at: Some("2020-01-01T00:00:00Z".into()), ..good.clone() }, "expires_at is in the past"),
            (ImportRecord { key_sha256: Some("abc".into()), ..good.clone() }, "not both"),
            (ImportRecord { key: None, ..good.clone() }, "key or key_sha256 is missing"),
            (ImportRecord { key: None, key_sha256: Some("zz".repeat(32)), ..good.clone() }, "64 hex digits"),
            (ImportRecord { key: Some("has space 12345".into()), ..good.clone() }, "printable ASCII"),
        ];
        for (record, want) in cases {
            let reason = check_record(&record, now).unwrap_err();
            assert!(reason.contains(want), "{reason}");
            assert!(!reason.contains("0123456789"), "{reason}");
        }
    }

    #[test]
    fn json_lines_refuse_types_and_unknown_fields_without_echoing() {
        assert!(json_record(r#"{"business":"biz_1","kind":"sk","mode":"live","key":"abcdefgh1"}"#).is_ok());
        let reason = json_record(r#"{"key": 12345678901}"#).unwrap_err();
        assert!(reason.contains("must be a string") && !reason.contains("12345678901"), "{reason}");
        assert!(json_record(r#"{"keyy": "x"}"#).unwrap_err().contains("unknown field"));
        let reason = json_record(r#"{"key": "sk_live_secret"#).unwrap_err();
        assert!(reason.starts_with("not valid JSON") && !reason.contains("secret"), "{reason}");
        assert_eq!(json_record("[1]").unwrap_err(), "not a JSON object");
    }
}
