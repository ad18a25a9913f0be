//! The counters replicas share ([`SharedLimits`]), in an `UNLOGGED` table of their own:
//! they are rewritten on every attempt, need no fsync, and a database crash that empties
//! them only forgives what was counted. Time is the database's clock, so replicas whose
//! clocks disagree still count one window. These transactions do not take the write lock:
//! they touch nothing the changelog covers.

use super::{Connection, PgEngine, StoreError};
use crate::store::limits::{block_secs, refilled, wait_for_one, FailureRule, SharedLimits, Subject};

pub(super) const CREATE_LIMITS: &str = "CREATE UNLOGGED TABLE IF NOT EXISTS keygate_limits (
    subject bytea PRIMARY KEY,
    failures integer NOT NULL DEFAULT 0,
    touched double precision NOT NULL,
    blocked_until double precision NOT NULL DEFAULT 0,
    level double precision
)";

/// The database's clock, in Unix seconds.
const NOW: &str = "extract(epoch from clock_timestamp())::double precision";

/// Runs `work` between `BEGIN` and `COMMIT` (`ROLLBACK` when it fails).
fn transaction<T>(c: &mut Connection, work: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
    c.client()?.batch_execute("BEGIN")?;
    c.in_transaction = true;
    let outcome = work(c);
    let end = if outcome.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = c.client().and_then(|client| Ok(client.batch_execute(end)?));
    c.in_transaction = false;
    if ended.is_err() {
        // Whatever state the session is in, the next job gets a fresh one.
        c.client = None;
    }
    let value = outcome?;
    ended?;
    Ok(value)
}

fn as_rows(subjects: &[Subject]) -> Vec<Vec<u8>> {
    subjects.iter().map(|s| s.to_vec()).collect()
}

impl SharedLimits for PgEngine {
    fn blocked_secs(&self, subjects: &[Subject]) -> Result<u64, StoreError> {
        let subjects = as_rows(subjects);
        self.run(move |c| {
            let sql = format!("SELECT coalesce(max(blocked_until) - {NOW}, 0) FROM keygate_limits WHERE subject = ANY($1)");
            let rows = c.query(&sql, &[&subjects])?;
            let secs: f64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0.0);
            // Whole seconds, rounded up: Retry-After is in seconds.
            Ok(if secs > 0.0 { secs.ceil().min(u64::MAX as f64) as u64 } else { 0 })
        })
    }

    fn count_failure(&self, subject: Subject, rule: FailureRule) -> Result<(), StoreError> {
        let subject = subject.to_vec();
        self.run(move |c| {
            transaction(c, |c| {
                c.execute(
                    &format!("INSERT INTO keygate_limits (subject, touched) VALUES ($1, {NOW}) ON CONFLICT DO NOTHING"),
                    &[&subject],
                )?;
                let rows =
                    c.query(&format!("SELECT failures, touched, {NOW} FROM keygate_limits WHERE subject = $1 FOR UPDATE"), &[&subject])?;
                let Some(row) = rows.first() else { return Ok(()) };
                let (failures, touched, now): (i32, f64, f64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let idle = now - touched >= rule.forget_secs as f64;
                let failures = if failures <= 0 || idle { 1 } else { failures.saturating_add(1) };
                let until = block_secs(failures.unsigned_abs(), rule.free, rule.base_secs, rule.max_secs).map_or(0.0, |s| now + s as f64);
                c.execute(
                    "UPDATE keygate_limits SET failures = $2, touched = $3, blocked_until = greatest(blocked_until, $4) WHERE subject = $1",
                    &[&subject, &failures, &now, &until],
                )?;
                Ok(())
            })
        })
    }

    fn clear(&self, subject: Subject) -> Result<(), StoreError> {
        let subject = subject.to_vec();
        self.run(move |c| c.execute("DELETE FROM keygate_limits WHERE subject = $1", &[&subject]).map(|_| ()))
    }

    fn take(&self, buckets: &[(Subject, f64)]) -> Result<Result<(), f64>, StoreError> {
        let (subjects, capacities): (Vec<Vec<u8>>, Vec<f64>) = buckets.iter().map(|(s, cap)| (s.to_vec(), cap.max(1.0))).unzip();
        self.run(move |c| {
            transaction(c, |c| {
                c.execute(
                    &format!(
                        "INSERT INTO keygate_limits (subject, touched, level)
                         SELECT s, {NOW}, cap FROM unnest($1::bytea[], $2::float8[]) AS b(s, cap) ON CONFLICT DO NOTHING"
                    ),
                    &[&subjects, &capacities],
                )?;
                // In subject order, so two takes lock shared rows in the same order.
                let rows = c.query(
                    &format!(
                        "SELECT subject, level, touched, {NOW} FROM keygate_limits WHERE subject = ANY($1) ORDER BY subject FOR UPDATE"
                    ),
                    &[&subjects],
                )?;
                let mut levels = Vec::with_capacity(rows.len());
                let mut wait = 0.0f64;
                let mut now = 0.0;
                for row in &rows {
                    let subject: Vec<u8> = row.try_get(0)?;
                    let Some(capacity) = subjects.iter().position(|s| *s == subject).map(|i| capacities[i]) else { continue };
                    let (level, touched): (Option<f64>, f64) = (row.try_get(1)?, row.try_get(2)?);
                    now = row.try_get(3)?;
                    let level = refilled(level.unwrap_or(capacity), now - touched, capacity);
                    wait = wait.max(wait_for_one(level, capacity));
                    levels.push((subject, level));
                }
                if wait > 0.0 {
                    return Ok(Err(wait));
                }
                for (subject, level) in levels {
                    c.execute("UPDATE keygate_limits SET level = $2, touched = $3 WHERE subject = $1", &[&subject, &(level - 1.0), &now])?;
                }
                Ok(Ok(()))
            })
        })
    }

    fn prune(&self, idle_secs: u64) -> Result<u64, StoreError> {
        let idle = idle_secs as f64;
        self.run(move |c| c.execute(&format!("DELETE FROM keygate_limits WHERE touched < {NOW} - $1 AND blocked_until < {NOW}"), &[&idle]))
    }
}
