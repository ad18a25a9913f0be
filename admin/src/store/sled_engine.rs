//! The embedded engine: one sled database, one sled tree per store tree, and every
//! transaction a sled transaction over all of them.

use std::cell::RefCell;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional, TransactionalTree, UnabortableTransactionError};

use super::engine::{Engine, EngineTx, Entries, Entry, TxBody, TxError};
use super::StoreError;

/// The file in a store's directory whose identity (inode and birth time) tells this
/// directory from a copy of it, or a backup restored over it (see [`Engine::location`]).
const LOCATION_MARKER: &str = "keygate-location";

pub(super) struct SledEngine {
    dir: PathBuf,
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// sled's log file, for an `fdatasync` after each flush (see [`SledEngine::flush`]).
    log_file: Option<std::fs::File>,
}

impl SledEngine {
    /// Opens (or creates) the database at `path` with one tree per name, in that order.
    pub(super) fn open(path: &Path, cache_capacity_bytes: u64, names: &[&str]) -> Result<SledEngine, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            // Durability is the store's: its group-commit flusher flushes before every 2xx.
            .flush_every_ms(None)
            .open()?;
        let trees = names.iter().map(|name| db.open_tree(name)).collect::<sled::Result<Vec<_>>>()?;
        let log_file = std::fs::File::open(path.join("db")).ok();
        Ok(SledEngine { dir: path.to_owned(), db, trees, log_file })
    }

    fn tree(&self, tree: usize) -> Result<&sled::Tree, StoreError> {
        self.trees.get(tree).ok_or_else(|| StoreError::Task(format!("no tree number {tree}")))
    }

    fn entries(iter: sled::Iter) -> Entries<'static> {
        Box::new(iter.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::Sled)))
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

fn tx_error(e: UnabortableTransactionError) -> TxError {
    match e {
        UnabortableTransactionError::Conflict => TxError::Conflict,
        UnabortableTransactionError::Storage(e) => TxError::Abort(StoreError::Sled(e)),
    }
}

/// The views sled hands a transaction, in the order the trees were opened.
struct SledTx<'a> {
    views: &'a [TransactionalTree],
}

impl SledTx<'_> {
    fn view(&self, tree: usize) -> Result<&TransactionalTree, TxError> {
        self.views.get(tree).ok_or_else(|| TxError::Abort(StoreError::Task(format!("no tree number {tree}"))))
    }
}

impl EngineTx for SledTx<'_> {
    fn get(&self, tree: usize, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        Ok(self.view(tree)?.get(key).map_err(tx_error)?.map(|v| v.to_vec()))
    }

    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        self.view(tree)?.insert(key, value).map_err(tx_error)?;
        Ok(())
    }

    fn remove(&self, tree: usize, key: &[u8]) -> Result<(), TxError> {
        self.view(tree)?.remove(key).map_err(tx_error)?;
        Ok(())
    }
}

impl Engine for SledEngine {
    fn get(&self, tree: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn range(&self, tree: usize, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Entries<'_> {
        match self.tree(tree) {
            Ok(t) => Self::entries(t.range::<Vec<u8>, _>((from, to))),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn scan_prefix(&self, tree: usize, prefix: &[u8]) -> Entries<'_> {
        match self.tree(tree) {
            Ok(t) => Self::entries(t.scan_prefix(prefix)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn is_empty(&self, tree: usize) -> Result<bool, StoreError> {
        Ok(self.tree(tree)?.is_empty())
    }

    fn transact(&self, body: &mut TxBody<'_>) -> Result<(), StoreError> {
        // sled wants a `Fn` it may call again on a conflict; the body is called one at a time.
        let body = RefCell::new(body);
        let result = self.trees[..].transaction(|views: &Vec<TransactionalTree>| {
            let mut body = body.borrow_mut();
            match (*body)(&SledTx { views }) {
                Ok(()) => Ok(()),
                Err(TxError::Conflict) => Err(ConflictableTransactionError::Conflict),
                Err(TxError::Abort(e)) => Err(ConflictableTransactionError::Abort(e)),
            }
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    fn put(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.insert(key, value)?;
        Ok(())
    }

    fn clear(&self, tree: usize) -> Result<(), StoreError> {
        Ok(self.tree(tree)?.clear()?)
    }

    fn put_many(&self, tree: usize, entries: Vec<Entry>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in entries {
            batch.insert(key, value);
        }
        Ok(self.tree(tree)?.apply_batch(batch)?)
    }

    fn remove_range(&self, tree: usize, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Result<(), StoreError> {
        // sled has no range delete: one batch of removals, a few thousand keys at a time.
        let tree = self.tree(tree)?;
        let mut keys = tree.range::<Vec<u8>, _>((from, to)).keys().peekable();
        while keys.peek().is_some() {
            let mut batch = sled::Batch::default();
            for key in keys.by_ref().take(4096) {
                batch.remove(key?);
            }
            tree.apply_batch(batch)?;
        }
        Ok(())
    }

    fn len(&self, tree: usize) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.tree(tree)?.len()).unwrap_or(u64::MAX))
    }

    /// The directory's real path and its marker file's inode and birth time: a copy of the
    /// directory, or a backup copied back over it, has a marker born later (or none, and
    /// gets one), so it reads as another place even at the same path. Where the file system
    /// keeps no birth time the inode stands alone (not the change time: a `chown -R` of the
    /// directory at every container start would make every start a move).
    fn location(&self) -> Result<String, StoreError> {
        let marker = self.dir.join(LOCATION_MARKER);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&marker) {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(b"keygate: this file tells this store from copies of it; copies start a new feed history\n").map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::metadata(&marker).map_err(io)?;
        let born = match meta.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            Some(born) => format!(" born {}", born.as_nanos()),
            None => String::new(),
        };
        let dir = std::fs::canonicalize(&self.dir).map_err(io)?;
        Ok(format!("sled:{} inode {}{born}", dir.display(), meta.ino()))
    }

    /// sled's `flush` writes its buffers out with `sync_file_range` on Linux, which
    /// survives a killed process but neither flushes the drive's write cache nor the
    /// file's size; an `fdatasync` of its log file afterwards does both.
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if let Some(file) = &self.log_file {
            file.sync_data().map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        }
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}
