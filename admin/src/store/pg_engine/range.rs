//! Ranges of keys: read a page at a time (one query each, starting after the last key
//! seen), or removed with one statement.

use std::collections::VecDeque;
use std::ops::Bound;

use postgres::types::ToSql;

use super::{Connection, PgEngine, PAGE};
use crate::store::engine::Entry;
use crate::store::StoreError;

/// ` AND key >= $n AND key < $m` for the bounds, each key added to `params` (which already
/// holds the parameters numbered before it).
fn key_bounds<'a>(from: &'a Bound<Vec<u8>>, to: &'a Bound<Vec<u8>>, params: &mut Vec<&'a (dyn ToSql + Sync)>) -> String {
    let mut sql = String::new();
    for (bound, included, excluded) in [(from, ">=", ">"), (to, "<=", "<")] {
        let (op, key) = match bound {
            Bound::Included(key) => (included, key),
            Bound::Excluded(key) => (excluded, key),
            Bound::Unbounded => continue,
        };
        params.push(key);
        sql.push_str(&format!(" AND key {op} ${}", params.len()));
    }
    sql
}

impl Connection {
    /// Up to [`PAGE`] entries of `tree` between the bounds, in key order.
    pub(super) fn page(&mut self, tree: i16, from: &Bound<Vec<u8>>, to: &Bound<Vec<u8>>) -> Result<Vec<Entry>, StoreError> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tree];
        let mut sql = format!("SELECT key, value FROM keygate_kv WHERE tree = $1{}", key_bounds(from, to, &mut params));
        params.push(&PAGE);
        sql.push_str(&format!(" ORDER BY key LIMIT ${}", params.len()));
        let rows = self.query(&sql, &params)?;
        Ok(rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect::<Result<_, postgres::Error>>()?)
    }

    /// Removes every entry of `tree` between the bounds in one statement.
    pub(super) fn remove_range(&mut self, tree: i16, from: &Bound<Vec<u8>>, to: &Bound<Vec<u8>>) -> Result<u64, StoreError> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tree];
        let sql = format!("DELETE FROM keygate_kv WHERE tree = $1{}", key_bounds(from, to, &mut params));
        self.execute(&sql, &params)
    }
}

/// The smallest key after every key starting with `prefix`, if there is one.
pub(super) fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// Walks a range a page at a time, each page one query starting after the last key seen.
pub(super) struct RangePages<'a> {
    pub(super) engine: &'a PgEngine,
    pub(super) tree: i16,
    pub(super) from: Bound<Vec<u8>>,
    pub(super) to: Bound<Vec<u8>>,
    pub(super) page: VecDeque<Entry>,
    pub(super) done: bool,
}

impl Iterator for RangePages<'_> {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.done {
            let (tree, from, to) = (self.tree, self.from.clone(), self.to.clone());
            match self.engine.run(move |c| c.page(tree, &from, &to)) {
                Ok(page) => {
                    self.done = page.len() < PAGE as usize;
                    if let Some((last, _)) = page.last() {
                        self.from = Bound::Excluded(last.clone());
                    }
                    self.page = page.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.page.pop_front().map(Ok)
    }
}
