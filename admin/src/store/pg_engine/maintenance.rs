//! What moving, copying and restoring a store needs of the database: where the store
//! lives, how many entries a tree holds, and who else has it open.

use super::{tree_number, PgEngine};
use crate::store::StoreError;

/// The `application_name` replicas connect with, unless their URL names another.
pub(super) const REPLICA_NAME: &str = "keygate-admin";

impl PgEngine {
    /// The cluster's system identifier and timeline, the database's oid and the table's:
    /// a dump restored into another database, or over this one (`pg_restore --clean`
    /// makes the table anew), a point-in-time recovery or a promoted standby (a new
    /// timeline) each read as another place. The cluster's control data may be closed to
    /// the user: then only the oids count.
    pub(super) fn location_now(&self) -> Result<String, StoreError> {
        self.run(|c| {
            let mut parts = vec!["postgres".to_owned()];
            for (function, column) in [("pg_control_system", "system_identifier"), ("pg_control_checkpoint", "timeline_id")] {
                let readable = c.query("SELECT has_function_privilege($1, 'EXECUTE')", &[&format!("{function}()")])?;
                let readable: bool = readable.first().map(|row| row.try_get(0)).transpose()?.unwrap_or(false);
                let value = if readable {
                    let rows = c.query(&format!("SELECT {column}::text FROM {function}()"), &[])?;
                    rows.first().map(|row| row.try_get::<_, String>(0)).transpose()?.unwrap_or_default()
                } else {
                    "unreadable".to_owned()
                };
                parts.push(format!("{column} {value}"));
            }
            let rows = c.query(
                "SELECT (SELECT oid::text FROM pg_database WHERE datname = current_database()), 'keygate_kv'::regclass::oid::text",
                &[],
            )?;
            let row = rows.first().ok_or_else(|| StoreError::Task("no answer for the database's oid".to_owned()))?;
            let (database, table): (Option<String>, String) = (row.try_get(0)?, row.try_get(1)?);
            parts.push(format!("database {} table {table}", database.unwrap_or_default()));
            Ok(parts.join(" "))
        })
    }

    pub(super) fn count(&self, tree: usize) -> Result<u64, StoreError> {
        let tree = tree_number(tree)?;
        let rows = self.run(move |c| c.query("SELECT count(*) FROM keygate_kv WHERE tree = $1", &[&tree]))?;
        let count: i64 = rows.first().map(|row| row.try_get(0)).transpose()?.unwrap_or(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The other sessions on this database named as a replica opened with the same URL
    /// would be (meaningful when this engine was opened under another name).
    pub(super) fn replica_sessions(&self) -> Result<Vec<String>, StoreError> {
        let name = self.replica_name.clone();
        let rows = self.run(move |c| {
            c.query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'
                 AND application_name = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
        })?;
        let count: i64 = rows.first().map(|row| row.try_get(0)).transpose()?.unwrap_or(0);
        Ok(if count > 0 { vec![format!("{count} connection(s) named {:?}", self.replica_name)] } else { Vec::new() })
    }
}
