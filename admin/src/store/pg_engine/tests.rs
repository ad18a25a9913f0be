//! The PostgreSQL engine against a real server (`KEYGATE_TEST_POSTGRES`); skipped without one.

use super::*;

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
    std::thread::spawn(move || postgres::Client::connect(&admin_url, NoTls).unwrap().batch_execute(&create).unwrap()).join().unwrap();
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
fn a_second_admin_is_refused_and_a_reopened_database_has_its_data() {
    let Some(url) = fresh_database() else { return };
    let first = PgEngine::open(&url).unwrap();
    first.put(4, b"k", b"v").unwrap();
    first.flush().unwrap();
    assert!(matches!(PgEngine::open(&url), Err(StoreError::InUse)));
    drop(first);
    let again = PgEngine::open(&url).unwrap();
    assert_eq!(again.get(4, b"k").unwrap(), Some(b"v".to_vec()));
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
