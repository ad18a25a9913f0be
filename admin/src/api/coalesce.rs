//! One store read shared by the long-polls a change wakes together.
//!
//! Every proxy that is up to date holds a poll with the same `since`; one change wakes them
//! all at once and each would read the same delta. Over PostgreSQL that is several queries
//! per poll through a handful of pooled connections, so the time for a change to reach
//! every proxy grew with the number of proxies (1000 simulated proxies: p99 3–7 s). Here
//! the first poll for a key reads it and the others wait for its answer, so the store's
//! cost per change does not depend on how many proxies wait.
//!
//! An answer is kept for [`FRESH_FOR`] only: what a key names (a changelog range, the
//! history at a version) does not change once committed, but a store restored from a
//! backup can reach the same versions with other contents, and a restore takes far longer
//! than that.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::error::AdminError;

/// How long an answer is shared.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// Answers kept at most; past it stale ones go, then all (proxies choose `since`).
const MAX_ENTRIES: usize = 256;

struct Entry<V> {
    made: Instant,
    cell: Arc<OnceCell<V>>,
}

/// Shares the answer for a key among the callers that ask for it within [`FRESH_FOR`].
pub struct Coalesced<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
}

impl<K, V> Default for Coalesced<K, V> {
    fn default() -> Self {
        Coalesced { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Coalesced<K, V> {
    /// The answer for `key`: loaded by the first caller, awaited by the callers that come
    /// while it loads, reused for [`FRESH_FOR`]. A failed load is not kept: the next
    /// caller (one already waiting, or a later one) loads again.
    pub async fn get<F, Fut>(&self, key: K, load: F) -> Result<V, AdminError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, AdminError>>,
    {
        let cell = self.cell(key);
        cell.get_or_try_init(load).await.cloned()
    }

    fn cell(&self, key: K) -> Arc<OnceCell<V>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(&key) {
            if now.duration_since(entry.made) < FRESH_FOR {
                return entry.cell.clone();
            }
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, entry| now.duration_since(entry.made) < FRESH_FOR);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let cell = Arc::new(OnceCell::new());
        entries.insert(key, Entry { made: now, cell: cell.clone() });
        cell
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn counted(loads: &AtomicUsize, value: u64) -> Result<u64, AdminError> {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(value)
    }

    #[tokio::test]
    async fn callers_waiting_together_share_one_load() {
        let shared = Arc::new(Coalesced::<u64, u64>::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (shared, loads) = (shared.clone(), loads.clone());
            tasks.push(tokio::spawn(async move { shared.get(7, || counted(&loads, 70)).await.unwrap() }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 70);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Another key is its own load.
        assert_eq!(shared.get(8, || counted(&loads, 80)).await.unwrap(), 80);
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_kept() {
        let shared = Coalesced::<u64, u64>::default();
        let failed = shared.get(1, || async { Err(AdminError::SnapshotGone) }).await;
        assert!(matches!(failed, Err(AdminError::SnapshotGone)));
        assert_eq!(shared.get(1, || async { Ok(5) }).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn an_answer_is_loaded_again_once_stale() {
        let shared = Coalesced::<u64, u64>::default();
        assert_eq!(shared.get(1, || async { Ok(1) }).await.unwrap(), 1);
        assert_eq!(shared.get(1, || async { Ok(2) }).await.unwrap(), 1);
        tokio::time::sleep(FRESH_FOR + Duration::from_millis(50)).await;
        assert_eq!(shared.get(1, || async { Ok(3) }).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn the_number_of_answers_kept_is_bounded() {
        let shared = Coalesced::<u64, u64>::default();
        for key in 0..(MAX_ENTRIES as u64 * 3) {
            shared.get(key, || async move { Ok(key) }).await.unwrap();
        }
        assert!(shared.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
