//! One connection to the database and the statements every engine call is made of.

use std::collections::HashMap;
use std::sync::Arc;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};

use super::super::StoreError;

/// One connection, opened again on its next job if it was lost, with its prepared
/// statements.
pub(super) struct Connection {
    pub(super) config: Arc<postgres::Config>,
    pub(super) client: Option<Client>,
    pub(super) statements: HashMap<String, Statement>,
    /// Inside a transaction: a lost connection is an error, never silently replaced (the
    /// statements after it would run outside the transaction).
    pub(super) in_transaction: bool,
}

impl Connection {
    pub(super) fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        match &mut self.client {
            Some(client) => Ok(client),
            _ if self.in_transaction => Err(StoreError::Unavailable("the PostgreSQL connection was lost during a transaction".into())),
            slot => {
                self.statements.clear();
                Ok(slot.insert(self.config.connect(NoTls).map_err(StoreError::from)?))
            }
        }
    }

    /// Runs `work`, and once more on a new connection if a connection that had served
    /// before turned out to be dead: after the server restarted, every pooled connection
    /// is, and each would otherwise fail one request. Never inside a transaction (what it
    /// did so far is gone); each `work` here is a whole statement or transaction of its own.
    pub(super) fn retrying<T>(&mut self, work: impl Fn(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let had_connection = self.client.is_some();
        match work(self) {
            Err(StoreError::Unavailable(_)) if had_connection && !self.in_transaction => {
                self.client = None;
                self.statements.clear();
                work(self)
            }
            other => other,
        }
    }

    /// `sql`, prepared once per connection.
    pub(super) fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        // Connect first: a new connection forgets the old one's statements.
        self.client()?;
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client()?.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(super) fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<postgres::Row>, StoreError> {
        let statement = self.statement(sql)?;
        Ok(self.client()?.query(&statement, params)?)
    }

    pub(super) fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        Ok(self.client()?.execute(&statement, params)?)
    }

    pub(super) fn get(&mut self, tree: i16, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query("SELECT value FROM keygate_kv WHERE tree = $1 AND key = $2", &[&tree, &key])?;
        Ok(rows.first().map(|row| row.try_get(0)).transpose()?)
    }

    pub(super) fn insert(&mut self, tree: i16, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO keygate_kv (tree, key, value) VALUES ($1, $2, $3) ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value",
            &[&tree, &key, &value],
        )?;
        Ok(())
    }

    pub(super) fn remove(&mut self, tree: i16, key: &[u8]) -> Result<(), StoreError> {
        self.execute("DELETE FROM keygate_kv WHERE tree = $1 AND key = $2", &[&tree, &key])?;
        Ok(())
    }

    /// The values of `keys` in `tree`, in the order asked: one round trip for them all.
    pub(super) fn get_many(&mut self, tree: i16, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let rows = self.query("SELECT key, value FROM keygate_kv WHERE tree = $1 AND key = ANY($2)", &[&tree, &keys])?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(row.try_get::<_, Vec<u8>>(0)?, row.try_get::<_, Vec<u8>>(1)?);
        }
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }

    /// Writes every entry in one statement. The caller gives each key at most once (one
    /// statement may not write a row twice).
    pub(super) fn insert_many(&mut self, tree: i16, keys: &[Vec<u8>], values: &[Vec<u8>]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO keygate_kv (tree, key, value) SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS e(k, v)
             ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value",
            &[&tree, &keys, &values],
        )?;
        Ok(())
    }
}
