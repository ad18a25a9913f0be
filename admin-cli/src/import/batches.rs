//! The import itself: the file read line by line, records sent in batches with a few
//! requests in flight, the answers gathered into a [`Summary`], a progress bar on a
//! terminal.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use keygate_admin::api::import::{BatchResult, ImportRecord, RecordResult, BATCH_MAX};
use serde::Serialize;

use super::parse::{csv_header, csv_record, json_record, FileFormat};
use super::ImportArgs;
use crate::client::refusal;

/// A rejected line of the file and why.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedLine {
    pub line: u64,
    pub reason: String,
}

/// The import's outcome: printed as JSON with `--json`, else by [`print_summary`].
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

/// A batch sent and not yet answered: the file's line numbers of its records, then the answer.
type InFlight = tokio::task::JoinHandle<anyhow::Result<(Vec<u64>, BatchResult)>>;

/// Sends one batch; the answer must hold one result per record.
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
        return Err(refusal(status, &serde_json::from_str(&text).unwrap_or_default()));
    }
    let result: BatchResult = serde_json::from_str(&text).context("the server's answer is not an import result")?;
    if result.results.len() != lines.len() {
        bail!("the server answered {} results for {} records", result.results.len(), lines.len());
    }
    Ok((lines, result))
}

/// Counts a batch's results into the summary, each against its line of the file.
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

/// The progress bar on stderr: drawn only on a terminal, and not with `--json`.
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
pub async fn import_file(args: &ImportArgs, operator_token: &str) -> anyhow::Result<Summary> {
    let format = match args.format.or_else(|| FileFormat::from_path(&args.file)) {
        Some(f) => f,
        None => bail!("cannot tell the file's format from its name: use a .csv, .jsonl or .ndjson file, or --format csv|jsonl"),
    };
    let file = std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let progress = Progress { shown: !args.client.json && std::io::stderr().is_terminal(), total_bytes };
    let started = std::time::Instant::now();
    let url = format!("{}/v1/import/keys", args.client.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let batch_size = usize::try_from(args.batch).unwrap_or(BATCH_MAX).clamp(1, BATCH_MAX);
    let parallel = usize::try_from(args.parallel).unwrap_or(2).max(1);
    let keep = args.show_rejected;
    let mut summary = Summary { file: args.file.display().to_string(), ..Summary::default() };
    let mut header: Option<Vec<String>> = None;
    let (mut lines, mut records) = (Vec::with_capacity(batch_size), Vec::with_capacity(batch_size));
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let (mut number, mut read) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).with_context(|| format!("cannot read {}", args.file.display()))?;
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
                        header = Some(csv_header(line).with_context(|| format!("{} line {number}", args.file.display()))?);
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
            while in_flight.len() >= parallel {
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
            in_flight.push_back(tokio::spawn(send_batch(client.clone(), url.clone(), operator_token.to_owned(), l, r)));
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
        bail!("{} has no header row", args.file.display());
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
