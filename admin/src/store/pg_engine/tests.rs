//! The PostgreSQL engine against a real server (`KEYGATE_TEST_POSTGRES`); skipped without one.

use super::*;
use crate::store::{Key, Store, StoreOptions};
use std::time::{Duration, Instant};

/// A new, empty database on the test server, or `None` (with a note) without one.
fn fresh_database() -> Option<String> {
    let Some(server) = std::env::var("KEYGATE_TEST_POSTGRES").ok().filter(|u| !u.is_empty()) else {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; PostgreSQL engine test skipped");
        return None;
    };
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let name = format!("kg_unit_{:016x}", u64::from_le_bytes(seed));
    let create = format!("CREATE DATABASE {name}");
    let admin_url = server.clone();
    std::thread::spawn(move || postgres::Client::connect(&admin_url, postgres::NoTls).unwrap().batch_execute(&create).unwrap())
        .join()
        .unwrap();
    let (base, _) = server.rsplit_once('/').expect("postgres://USER@HOST:PORT/DBNAME");
    Some(format!("{base}/{name}"))
}

fn keys(entries: Entries<'_>) -> Vec<Vec<u8>> {
    entries.map(|e| e.unwrap().0).collect()
}

#[test]
fn keys_come_back_in_byte_order_and_prefix_scans_stop_at_the_prefix() {
    let Some(url) = fresh_database() else { return };
    let engine = PgEngine::open(&url).unwrap();
    let stored: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x01, 0xff],
        vec![0x01, 0xff, 0x00],
        vec![0x02],
        vec![0x7f],
        vec![0x80],
        vec![0xff],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0x01],
    ];
    let mut shuffled = stored.clone();
    shuffled.reverse();
    for key in &shuffled {
        engine.put(1, key, b"v").unwrap();
    }
    engine.put(2, &[0x01], b"other tree").unwrap();
    assert_eq!(keys(engine.range(1, Bound::Unbounded, Bound::Unbounded)), stored);
    assert_eq!(keys(engine.scan_prefix(1, &[0x01, 0xff])), vec![vec![0x01, 0xff], vec![0x01, 0xff, 0x00]]);
    assert_eq!(keys(engine.scan_prefix(1, &[0xff, 0xff])), vec![vec![0xff, 0xff], vec![0xff, 0xff, 0x01]]);
    assert_eq!(keys(engine.scan_prefix(1, &[])), stored);
    assert_eq!(keys(engine.range(1, Bound::Excluded(vec![0x02]), Bound::Included(vec![0xff]))), vec![vec![0x7f], vec![0x80], vec![0xff]]);
    assert_eq!(keys(engine.scan_prefix(2, &[])), vec![vec![0x01]]);
    assert!(engine.is_empty(3).unwrap());
    assert!(!engine.is_empty(1).unwrap());
    engine.clear(1).unwrap();
    assert!(engine.is_empty(1).unwrap());
    assert!(!engine.is_empty(2).unwrap());
}

#[test]
fn ranges_longer_than_a_page_come_back_whole() {
    let Some(url) = fresh_database() else { return };
    let engine = PgEngine::open(&url).unwrap();
    let count = 2 * PAGE as u32 + 7;
    engine.put_many(0, (0..count).rev().map(|n| (n.to_be_bytes().to_vec(), vec![1])).collect()).unwrap();
    let read = keys(engine.range(0, Bound::Unbounded, Bound::Unbounded));
    assert_eq!(read, (0..count).map(|n| n.to_be_bytes().to_vec()).collect::<Vec<_>>());
    assert!(engine.size_on_disk().unwrap() > 0);
}

#[test]
fn an_aborted_transaction_leaves_nothing_and_a_committed_one_everything() {
    let Some(url) = fresh_database() else { return };
    let engine = PgEngine::open(&url).unwrap();
    engine.put(0, b"kept", b"1").unwrap();
    let aborted = engine.transact(&mut |tx| {
        tx.insert(0, b"new", b"2")?;
        tx.remove(0, b"kept")?;
        assert_eq!(tx.get(0, b"new")?, Some(b"2".to_vec()));
        Err(TxError::Abort(StoreError::UnknownKey))
    });
    assert!(matches!(aborted, Err(StoreError::UnknownKey)));
    assert_eq!(engine.get(0, b"kept").unwrap(), Some(b"1".to_vec()));
    assert_eq!(engine.get(0, b"new").unwrap(), None);
    engine
        .transact(&mut |tx| {
            tx.insert(0, b"new", b"2")?;
            tx.remove(0, b"kept")?;
            Ok(())
        })
        .unwrap();
    assert_eq!(engine.get(0, b"kept").unwrap(), None);
    assert_eq!(engine.get(0, b"new").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn replicas_share_a_database_and_start_up_one_at_a_time() {
    let Some(url) = fresh_database() else { return };
    let first = PgEngine::open(&url).unwrap();
    first.put(4, b"k", b"v").unwrap();
    let (opened, second) = sync_channel(1);
    let url2 = url.clone();
    let opener = std::thread::spawn(move || opened.send(PgEngine::open(&url2).map(|_| ()).is_ok()).unwrap());
    // The second waits while the first is starting up...
    assert!(second.recv_timeout(std::time::Duration::from_millis(500)).is_err(), "opened during another's start-up");
    first.end_startup();
    // ...and opens once it is done, with both running on the same data.
    assert!(second.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
    opener.join().unwrap();
    let again = PgEngine::open(&url).unwrap();
    assert_eq!(again.get(4, b"k").unwrap(), Some(b"v".to_vec()));
    again.transact(&mut |tx| tx.insert(4, b"k2", b"w")).unwrap();
    assert_eq!(first.get(4, b"k2").unwrap(), Some(b"w".to_vec()));
}

#[test]
fn works_from_inside_a_tokio_runtime() {
    let Some(url) = fresh_database() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    runtime.block_on(async move {
        let engine = PgEngine::open(&url).unwrap();
        engine.transact(&mut |tx| tx.insert(0, b"k", b"v")).unwrap();
        assert_eq!(engine.get(0, b"k").unwrap(), Some(b"v".to_vec()));
        drop(engine);
    });
}

/// Two replicas (two stores on one database), the first started up.
fn two_replicas(url: &str) -> (Store, Store) {
    let a = Store::open_postgres(url, &StoreOptions::default()).unwrap();
    a.startup_done();
    let b = Store::open_postgres(url, &StoreOptions::default()).unwrap();
    b.startup_done();
    (a, b)
}

fn key_numbered(n: u32) -> Key {
    let mut hash = [0u8; 32];
    hash[..4].copy_from_slice(&n.to_be_bytes());
    hash[4] = 1;
    let mut key = crate::store::testing::key(&format!("key_{n}"), "biz_a", 0);
    key.hash = keygate_core::KeyHash(hash);
    key
}

/// A commit through one replica is announced to the other: its feed sees the new head
/// within milliseconds (its long-polls wake on this), and a signing-key change asks it to
/// reload its signing keys.
#[test]
fn a_commit_through_one_replica_reaches_the_other() {
    let Some(url) = fresh_database() else { return };
    let (a, b) = two_replicas(&url);
    crate::store::testing::add_business(&a, "biz_a");
    let mut durable = b.durable();
    let mut signing = b.signing_changes();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    // Once listening, a replica's listener reports `Missed` (it may have missed commits
    // while connecting), which also asks for a signing-key reload: wait for that first.
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), signing.wait_for(|n| *n > 0)).await })
        .expect("the other replica's listener started")
        .unwrap();
    let seen_signing = *signing.borrow();
    let started = Instant::now();
    let ticket = a.create_key(&key_numbered(1)).unwrap();
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), durable.wait_for(|d| d.version >= ticket.version)).await })
        .expect("the other replica heard of the commit")
        .unwrap();
    let heard_in = started.elapsed();
    assert!(b.full_snapshot(0).unwrap().keys.iter().any(|k| k.hash == key_numbered(1).hash));
    assert_eq!(*signing.borrow(), seen_signing, "a key is not a signing key");
    eprintln!("heard in {heard_in:?}");
    // A new store has no signing key: the token service adds the first.
    let _tokens = crate::tokens::TokenService::load(&a, &crate::config::Config::new("unused")).unwrap();
    let mut signing = signing;
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), signing.wait_for(|n| *n != seen_signing)).await })
        .expect("the other replica was asked to reload its signing keys")
        .unwrap();
}

/// Writers on two replicas at once, and a reader that reads the changelog through either
/// replica in turn: versions become visible in order, with no gap ever filled later (a
/// lower version never appears after a higher one), and every write has its version.
#[test]
fn changelog_versions_become_visible_in_order_across_replicas() {
    let Some(url) = fresh_database() else { return };
    let (a, b) = two_replicas(&url);
    crate::store::testing::add_business(&a, "biz_a");
    const WRITERS_PER_REPLICA: u32 = 3;
    const WRITES: u32 = 60;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (seen, acknowledged) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut last = 0;
            let mut reads = 0u32;
            let mut finishing = false;
            loop {
                let replica = if reads.is_multiple_of(2) { &a } else { &b };
                reads += 1;
                let fresh: Vec<u64> = replica
                    .trees()
                    .changelog
                    .range(crate::store::tx::be(last + 1)..)
                    .map(|e| crate::store::tx::from_be(&e.unwrap().0).unwrap())
                    .collect();
                for (i, version) in fresh.iter().enumerate() {
                    assert_eq!(*version, last + 1 + i as u64, "version {version} visible before a lower one (read {reads})");
                }
                last += fresh.len() as u64;
                if finishing {
                    return last;
                }
                finishing = done.load(std::sync::atomic::Ordering::SeqCst);
            }
        });
        let writers: Vec<_> = (0..2 * WRITERS_PER_REPLICA)
            .map(|w| {
                let replica = if w.is_multiple_of(2) { &a } else { &b };
                scope.spawn(move || {
                    (0..WRITES).map(|i| replica.create_key(&key_numbered(w * 10_000 + i)).unwrap().version).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut versions: Vec<u64> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        versions.sort_unstable();
        (reader.join().unwrap(), versions)
    });
    let total = u64::from(2 * WRITERS_PER_REPLICA * WRITES);
    assert_eq!(acknowledged, (1..=total).collect::<Vec<_>>(), "each write has its own version, none skipped");
    assert_eq!(seen, total);
}

/// Ends every other connection to the database at `url`, as a server restart does;
/// returns how many there were.
fn drop_connections(url: &str) -> usize {
    let server = std::env::var("KEYGATE_TEST_POSTGRES").unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&server, postgres::NoTls).unwrap();
        let sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()";
        client.query(sql, &[&database]).unwrap().len()
    })
    .join()
    .unwrap()
}

/// After the server drops every connection (as when it restarts), each pooled connection
/// is dead: the next calls open new ones instead of each failing once.
#[test]
fn calls_after_the_server_dropped_every_connection_succeed() {
    let Some(url) = fresh_database() else { return };
    let engine = PgEngine::open(&url).unwrap();
    engine.put(1, b"k", b"v").unwrap();
    std::thread::scope(|s| {
        for _ in 0..POOL_SIZE * 2 {
            s.spawn(|| engine.get(1, b"k").unwrap());
        }
    });
    assert!(drop_connections(&url) > 0, "no connection to drop");
    for read in 0..POOL_SIZE * 2 {
        assert_eq!(engine.get(1, b"k").unwrap(), Some(b"v".to_vec()), "read {read}");
    }
    assert!(drop_connections(&url) > 0, "no connection to drop");
    for write in 0..POOL_SIZE * 2 {
        engine.transact(&mut |tx| tx.insert(1, format!("w{write}").as_bytes(), b"x")).unwrap();
    }
    assert_eq!(engine.get(1, b"w0").unwrap(), Some(b"x".to_vec()));
}

/// A range delete removes exactly its range, in one statement; counts follow; the
/// location is the same from any connection to the database and names no secret.
#[test]
fn ranges_go_in_one_delete_and_the_location_is_the_databases() {
    let Some(url) = fresh_database() else { return };
    let engine = PgEngine::open(&url).unwrap();
    let stored: Vec<Entry> = (0u8..10).map(|n| (vec![n], vec![n])).collect();
    engine.put_many(2, stored).unwrap();
    engine.put(3, b"other", b"tree").unwrap();
    engine.remove_range(2, Bound::Included(vec![2]), Bound::Excluded(vec![5])).unwrap();
    assert_eq!(keys(engine.range(2, Bound::Unbounded, Bound::Unbounded)), [0u8, 1, 5, 6, 7, 8, 9].map(|n| vec![n]));
    engine.remove_range(2, Bound::Unbounded, Bound::Excluded(vec![6])).unwrap();
    assert_eq!((engine.len(2).unwrap(), engine.len(3).unwrap()), (4, 1));
    let here = engine.location().unwrap();
    assert!(here.starts_with("postgres ") && here.contains(" database ") && here.contains(" table "), "{here}");
    assert!(!here.contains(&url), "{here}");
    drop(engine);
    let again = PgEngine::open_as(&url, Some("another-name")).unwrap();
    assert_eq!(again.location().unwrap(), here);
    assert!(again.other_processes().unwrap().is_empty(), "no replica is connected");
}

/// The aggregation rules the in-memory counts follow (`store::rate_counts`), over the table.
#[test]
fn rate_counts_aggregate_as_in_memory() {
    let Some(url) = fresh_database() else { return };
    let engine = PgEngine::open(&url).unwrap();
    engine.end_startup();
    crate::store::rate_counts::tests::check_aggregation(&engine);
}

#[test]
fn rate_counts_expire_as_in_memory() {
    let Some(url) = fresh_database() else { return };
    let engine = PgEngine::open(&url).unwrap();
    engine.end_startup();
    crate::store::rate_counts::tests::check_expiry(&engine);
}

/// Two replicas on one database: what a proxy reports through one, a proxy reporting
/// through the other counts; expired rows are deleted by a purge.
#[test]
fn rate_counts_reported_through_one_replica_count_on_the_other() {
    use crate::store::rate_counts::tests::{counter, report, tail, NOW_MS};
    use crate::store::rate_counts::{RateCounts, Window, PURGE_EVERY_MS};
    let Some(url) = fresh_database() else { return };
    let one = PgEngine::open(&url).unwrap();
    one.end_startup();
    let other = PgEngine::open(&url).unwrap();
    other.end_startup();
    let w = Window::Second;
    let head = w.sub_at(NOW_MS);
    one.exchange(&report("proxy-a", vec![counter("key:k", w, head, tail(&[4, 2]))]), NOW_MS).unwrap();
    let b = other.exchange(&report("proxy-b", vec![counter("key:k", w, head, tail(&[1]))]), NOW_MS).unwrap();
    assert_eq!((b.proxies, b.others), (2, vec![tail(&[4, 2])]));
    let a = one.exchange(&report("proxy-a", vec![counter("key:k", w, head, [0; 11])]), NOW_MS).unwrap();
    assert_eq!(a.others, vec![tail(&[1])]);

    let rows = |engine: &PgEngine| -> i64 { engine.run(|c| c.query("SELECT count(*) FROM keygate_rate_counts", &[])).unwrap()[0].get(0) };
    assert_eq!(rows(&one), 3);
    // A report long after purges (on a pooled connection, without waiting for it).
    let later = NOW_MS + PURGE_EVERY_MS + 2 * w.ms();
    one.exchange(&report("proxy-c", vec![]), later).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows(&one) > 0 {
        assert!(Instant::now() < deadline, "the expired rate counts were not deleted");
        std::thread::sleep(Duration::from_millis(20));
    }
}
