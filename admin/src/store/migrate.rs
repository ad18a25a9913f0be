//! Copying a whole store to another place (`keygate-admin migrate`): sled to PostgreSQL,
//! back, or between two of either. It copies the engines' bytes, tree by tree over every
//! tree in `TREE_NAMES`, so a tree added later is copied with no change here. Both stores
//! are held for the whole copy: sled's directory lock keeps any other process out; on
//! PostgreSQL the start-up lock keeps replicas from starting, and a store that replicas are
//! connected to is refused. The copy is then read back and checked against the source:
//! each tree's count, and a SHA-256 over every (tree, key, value) in key order.
//!
//! The copy's recorded location is one no engine reads ([`COPIED`]), so its first open
//! starts a new feed history: proxies that followed the source resync in full.

use std::ops::Bound;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::engine::{Engine, Entry};
use super::history::{COPIED, META_LOCATION};
use super::pg_engine::PgEngine;
use super::sled_engine::SledEngine;
use super::tx::{TreeNumber, TREE_NAMES};
use super::StoreError;
use crate::config::StoreLocation;

/// Entries written per `put_many`, and the bytes that end a batch sooner.
const BATCH: usize = 1000;
const BATCH_BYTES: usize = 4 << 20;
/// sled's page cache while copying.
const SLED_CACHE: u64 = 64 << 20;
/// The `application_name` of the copy's own connections, so they are not taken for replicas.
const MIGRATE_NAME: &str = "keygate-admin-migrate";
/// How long replicas that were just stopped have to disconnect.
const REPLICAS_LEAVING: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// Empty a target that holds anything before copying (else it is refused).
    pub replace: bool,
    /// Copy nothing: only compare the target with the source.
    pub verify_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Copying,
    Verifying,
}

/// Where a copy is: `done` of `total` entries of `tree`.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub stage: Stage,
    pub tree: &'a str,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeCount {
    pub tree: &'static str,
    pub entries: u64,
}

/// What a copy did and found. Never holds a stored value.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// The stores, as [`StoreLocation::describe`] prints them (no password).
    pub from: String,
    pub to: String,
    /// Whether anything was copied (not with `verify_only`).
    pub copied: bool,
    /// Whether the target was emptied first.
    pub replaced: bool,
    /// The source's entries, tree by tree.
    pub trees: Vec<TreeCount>,
    pub entries: u64,
    /// SHA-256 (hex) over every entry of the source, and of the target as read back.
    pub checksum: String,
    pub target_checksum: String,
    /// The target holds exactly what the source does.
    pub verified: bool,
    /// Each difference found, by tree (counts and whether the contents agree).
    pub mismatches: Vec<String>,
}

/// Counts and digests entries, per tree and over all of them.
struct Tally {
    all: Sha256,
    trees: Vec<(u64, Sha256)>,
}

impl Tally {
    fn new() -> Tally {
        Tally { all: Sha256::new(), trees: TREE_NAMES.iter().map(|_| (0, Sha256::new())).collect() }
    }

    fn add(&mut self, tree: usize, key: &[u8], value: &[u8]) {
        let (Some(name), Some((count, digest))) = (TREE_NAMES.get(tree), self.trees.get_mut(tree)) else { return };
        for hasher in [&mut self.all, digest] {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value);
        }
        *count += 1;
    }

    fn finish(self) -> (String, Vec<(u64, [u8; 32])>) {
        (hex(&self.all.finalize().into()), self.trees.into_iter().map(|(n, h)| (n, h.finalize().into())).collect())
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn step(what: String) -> impl FnOnce(StoreError) -> StoreError {
    move |e| StoreError::Step { what, source: Box::new(e) }
}

/// The store's own record of where it lives: not part of what it holds.
fn is_location(tree: usize, key: &[u8]) -> bool {
    tree == TreeNumber::meta as usize && key == META_LOCATION
}

/// Opens the store at `location` for the copy alone; `role` names it in messages.
fn open(location: &StoreLocation, role: &str, must_exist: bool) -> Result<Box<dyn Engine>, StoreError> {
    let what = location.describe();
    let engine: Box<dyn Engine> = match location {
        StoreLocation::Sled(dir) => {
            if must_exist && !dir.join("db").is_file() {
                return Err(StoreError::Refused(format!("the {role} {what} holds no sled store")));
            }
            let engine = SledEngine::open(dir, SLED_CACHE, TREE_NAMES)
                .map_err(step(format!("cannot open the {role} {what} (if a keygate-admin is running on it, stop it first)")))?;
            Box::new(engine)
        }
        StoreLocation::Postgres(url) => {
            let engine = PgEngine::open_as(url, Some(MIGRATE_NAME)).map_err(step(format!("cannot open the {role} {what}")))?;
            // Replicas just stopped may take a moment to leave (a listener notices its stop
            // within a second): look again for a few seconds before refusing.
            let deadline = std::time::Instant::now() + REPLICAS_LEAVING;
            let others = loop {
                let others = engine.other_processes().map_err(step(format!("cannot list the sessions on the {role} {what}")))?;
                if others.is_empty() || std::time::Instant::now() >= deadline {
                    break others;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            };
            if !others.is_empty() {
                return Err(StoreError::Refused(format!(
                    "keygate-admin replicas seem to be running on the {role} {what} ({}): stop every replica first",
                    others.join(", ")
                )));
            }
            Box::new(engine)
        }
    };
    if must_exist && engine.is_empty(TreeNumber::meta as usize)? {
        return Err(StoreError::Refused(format!("the {role} {what} holds no keygate store")));
    }
    Ok(engine)
}

/// Whether two locations name one store (as far as can be told before opening them).
fn same_store(a: &StoreLocation, b: &StoreLocation) -> bool {
    match (a, b) {
        (StoreLocation::Sled(a), StoreLocation::Sled(b)) => {
            let real = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
            real(a) == real(b)
        }
        (StoreLocation::Postgres(_), StoreLocation::Postgres(_)) => a.describe() == b.describe(),
        _ => false,
    }
}

/// Copies the store at `from` to `to` (or, with `verify_only`, only compares them), calling
/// `progress` as it goes. A verification that finds differences is a report with
/// `verified: false`, not an error; errors are for what stopped the work.
pub fn migrate(
    from: &StoreLocation,
    to: &StoreLocation,
    options: MigrateOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<MigrateReport, StoreError> {
    if same_store(from, to) {
        return Err(StoreError::Refused("the source and the target are the same store".to_owned()));
    }
    let source = open(from, "source", true)?;
    let target = open(to, "target", options.verify_only)?;
    let (from, to) = (from.describe(), to.describe());
    let mut replaced = false;
    let source_tally = if options.verify_only {
        tally(&*source, Stage::Verifying, progress).map_err(step(format!("cannot read the source {from}")))?
    } else {
        let mut filled = Vec::new();
        for (tree, &name) in TREE_NAMES.iter().enumerate() {
            if !target.is_empty(tree).map_err(step(format!("cannot read the target {to}")))? {
                filled.push(name);
            }
        }
        if !filled.is_empty() {
            if !options.replace {
                return Err(StoreError::Refused(format!(
                    "the target {to} is not empty (it holds {}); --replace empties it first",
                    filled.join(", ")
                )));
            }
            for tree in 0..TREE_NAMES.len() {
                target.clear(tree).map_err(step(format!("cannot empty the target {to}")))?;
            }
            replaced = true;
        }
        // First, so that even a copy cut short starts a new history if it is ever opened.
        target.put(TreeNumber::meta as usize, META_LOCATION, COPIED).map_err(step(format!("cannot write to the target {to}")))?;
        let copied = copy(&*source, &*target, progress, &from, &to)?;
        target.flush().map_err(step(format!("cannot flush the target {to}")))?;
        copied
    };
    let target_tally = tally(&*target, Stage::Verifying, progress).map_err(step(format!("cannot read the target {to} back")))?;
    let ((checksum, source_trees), (target_checksum, target_trees)) = (source_tally.finish(), target_tally.finish());
    let mut mismatches = Vec::new();
    for (n, name) in TREE_NAMES.iter().enumerate() {
        let ((want, want_digest), (got, got_digest)) = (source_trees[n], target_trees[n]);
        if want != got {
            mismatches.push(format!("{name}: {want} entries in the source, {got} in the target"));
        } else if want_digest != got_digest {
            mismatches.push(format!("{name}: {want} entries in each, with different contents"));
        }
    }
    let trees: Vec<TreeCount> = TREE_NAMES.iter().zip(&source_trees).map(|(&tree, &(entries, _))| TreeCount { tree, entries }).collect();
    Ok(MigrateReport {
        from,
        to,
        copied: !options.verify_only,
        replaced,
        entries: trees.iter().map(|t| t.entries).sum(),
        trees,
        verified: mismatches.is_empty() && checksum == target_checksum,
        checksum,
        target_checksum,
        mismatches,
    })
}

/// Copies every tree in batches; the source's tally.
fn copy(
    source: &dyn Engine,
    target: &dyn Engine,
    progress: &mut dyn FnMut(Progress<'_>),
    from: &str,
    to: &str,
) -> Result<Tally, StoreError> {
    let mut tally = Tally::new();
    for (tree, &name) in TREE_NAMES.iter().enumerate() {
        let total = source.len(tree).map_err(step(format!("cannot count tree {name} of the source {from}")))?;
        let mut done = 0;
        progress(Progress { stage: Stage::Copying, tree: name, done, total });
        let (mut batch, mut bytes): (Vec<Entry>, usize) = (Vec::with_capacity(BATCH), 0);
        let mut entries = source.range(tree, Bound::Unbounded, Bound::Unbounded).peekable();
        while let Some(item) = entries.next() {
            let (key, value) = item.map_err(step(format!("cannot read tree {name} of the source {from}")))?;
            if !is_location(tree, &key) {
                tally.add(tree, &key, &value);
                bytes += key.len() + value.len();
                batch.push((key, value));
            }
            if batch.len() >= BATCH || bytes >= BATCH_BYTES || (entries.peek().is_none() && !batch.is_empty()) {
                done += batch.len() as u64;
                bytes = 0;
                target.put_many(tree, std::mem::take(&mut batch)).map_err(step(format!("cannot write tree {name} to the target {to}")))?;
                progress(Progress { stage: Stage::Copying, tree: name, done, total: total.max(done) });
            }
        }
        progress(Progress { stage: Stage::Copying, tree: name, done, total: done });
    }
    Ok(tally)
}

/// Reads every entry of `engine` into a tally.
fn tally(engine: &dyn Engine, stage: Stage, progress: &mut dyn FnMut(Progress<'_>)) -> Result<Tally, StoreError> {
    let mut tally = Tally::new();
    for (tree, &name) in TREE_NAMES.iter().enumerate() {
        let total = engine.len(tree)?;
        let mut done = 0;
        progress(Progress { stage, tree: name, done, total });
        for item in engine.range(tree, Bound::Unbounded, Bound::Unbounded) {
            let (key, value) = item?;
            if !is_location(tree, &key) {
                tally.add(tree, &key, &value);
                done += 1;
            }
            if done % BATCH as u64 == 0 {
                progress(Progress { stage, tree: name, done, total: total.max(done) });
            }
        }
        progress(Progress { stage, tree: name, done, total: done });
    }
    Ok(tally)
}
