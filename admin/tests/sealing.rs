//! The signing keys' private seeds sealed at rest, over the real store: sled in a temporary
//! directory, or a new PostgreSQL database when `KEYGATE_TEST_POSTGRES` is set. The stored
//! records are read and altered behind admin's back, straight from the engine (sled's trees
//! and files, or the `keygate_kv` table), while the server is stopped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use base64::Engine as _;
use common::*;
use keygate_admin::seal::SealKeys;
use keygate_admin::store::SigningKey;
use keygate_admin::{AppState, Config, StoreLocation};
use keygate_core::signing::SigningKeyPair;
use reqwest::{Method, StatusCode};

/// Two more seal keys besides [`SEAL_KEY`] (made with `keygate-admin seal-key generate`).
const SEAL_KEY_B: &str = "kgseal_YmRrDdRJ7Fi3VbTq333Gl5GmVBcC8KtBJ1kVa9_SjbQ";
const SEAL_KEY_C: &str = "kgseal_asJQdVmyfmYXKEKJ9LQPpIPhO_NkEabYzCszUssiKvo";

/// A new, empty store of the engine under test.
struct Place {
    location: StoreLocation,
    _dir: Option<tempfile::TempDir>,
}

impl Place {
    fn new() -> Place {
        if let Some(server) = postgres_under_test() {
            return Place { location: StoreLocation::Postgres(fresh_database(&server)), _dir: None };
        }
        let dir = tempfile::tempdir().unwrap();
        Place { location: StoreLocation::Sled(dir.path().to_owned()), _dir: Some(dir) }
    }

    fn is_postgres(&self) -> bool {
        matches!(self.location, StoreLocation::Postgres(_))
    }

    /// The test configuration here with seal keys `keys` (in order), or none.
    fn config(&self, keys: &[&str]) -> Config {
        let mut config = config_at(self.location.clone());
        config.seal_keys = (!keys.is_empty()).then(|| seal_keys(keys));
        config
    }

    async fn start(&self, keys: &[&str]) -> Server {
        Server::start_with(self.config(keys)).await
    }

    /// Why admin refused to start here with `keys` (the error and its causes).
    fn refusal(&self, keys: &[&str]) -> String {
        match AppState::open(self.config(keys)) {
            Ok(_) => panic!("admin started with seal keys {keys:?}"),
            Err(e) => e.chain(),
        }
    }

    /// Every stored entry, straight from the engine: (tree, key, value); a sled tree by its
    /// name, a PostgreSQL one by its number.
    fn raw(&self) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        match &self.location {
            StoreLocation::Sled(dir) => {
                let db = sled::open(dir).unwrap();
                let mut out = Vec::new();
                for name in db.tree_names() {
                    for item in db.open_tree(&name).unwrap().iter() {
                        let (k, v) = item.unwrap();
                        out.push((String::from_utf8_lossy(&name).into_owned(), k.to_vec(), v.to_vec()));
                    }
                }
                out
            }
            StoreLocation::Postgres(url) => on_postgres(url, |db| {
                let rows = db.query("SELECT tree, key, value FROM keygate_kv", &[]).unwrap();
                rows.iter().map(|r| (r.get::<_, i16>(0).to_string(), r.get(1), r.get(2))).collect()
            }),
        }
    }

    /// Writes one stored entry, straight into the engine.
    fn put_raw(&self, tree: &str, key: &[u8], value: &[u8]) {
        match &self.location {
            StoreLocation::Sled(dir) => {
                let db = sled::open(dir).unwrap();
                db.open_tree(tree).unwrap().insert(key, value).unwrap();
                db.flush().unwrap();
            }
            StoreLocation::Postgres(url) => {
                let (tree, key, value) = (tree.parse::<i16>().unwrap(), key.to_vec(), value.to_vec());
                let updated = on_postgres(url, move |db| {
                    db.execute("UPDATE keygate_kv SET value = $3 WHERE tree = $1 AND key = $2", &[&tree, &key, &value]).unwrap()
                });
                assert_eq!(updated, 1);
            }
        }
    }

    /// The stored signing-key records with the tree and key they are stored under.
    fn signing_records(&self) -> Vec<(String, Vec<u8>, SigningKey)> {
        let raw = self.raw().into_iter();
        let mut records: Vec<_> =
            raw.filter_map(|(tree, key, value)| serde_json::from_slice::<SigningKey>(&value).ok().map(|r| (tree, key, r))).collect();
        records.sort_by_key(|(_, _, r)| r.created_at);
        records
    }

    /// Whether `seed` can be read anywhere in the store: raw, hex or base64, in any entry (and
    /// over sled, in any of its files).
    fn shows(&self, seed: &[u8; 32]) -> bool {
        let forms: Vec<Vec<u8>> = vec![
            seed.to_vec(),
            seed.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed).into_bytes(),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed).into_bytes(),
        ];
        let has = |bytes: &[u8]| forms.iter().any(|f| bytes.windows(f.len()).any(|w| w == f.as_slice()));
        let in_entries = self.raw().iter().any(|(_, k, v)| has(k) || has(v));
        let in_files = match &self.location {
            StoreLocation::Sled(dir) => files_under(dir).iter().any(|f| has(&std::fs::read(f).unwrap())),
            StoreLocation::Postgres(_) => false,
        };
        in_entries || in_files
    }
}

/// Runs `f` with a connection to the database at `url`, on a thread of its own (the blocking
/// client cannot run inside the tests' runtime).
fn on_postgres<T: Send + 'static>(url: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || f(&mut postgres::Client::connect(&url, postgres::NoTls).unwrap())).join().unwrap()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn id_of(key: &str) -> String {
    seal_keys(&[key]).sealer().id().to_string()
}

/// The record's seed, opened with `key`, after checking it is sealed with `key` and holds no
/// plaintext; and the seed is the record's signing key (its public half matches).
fn opened(record: &SigningKey, key: &str) -> [u8; 32] {
    assert!(record.seed_hex.is_empty(), "a sealed record keeps no plaintext seed");
    let sealed = record.sealed_seed.as_ref().expect("sealed");
    assert_eq!(sealed.seal_key.as_str(), id_of(key), "sealed with the first seal key");
    let seed = seal_keys(&[key]).open(&record.kid, sealed).unwrap();
    assert_eq!(SigningKeyPair::from_seed(record.kid.clone(), seed).public_entry(), record.public);
    seed
}

/// `token` still opens a member's endpoint: the key that signed it still verifies.
async fn assert_verifies(server: &Server, token: &str) {
    let (status, body) = server.get("/v1/me", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn member_token(server: &Server, email: &str) -> String {
    let biz = server.business("Acme").await;
    server.member(email, "correct horse", &[&biz]).await
}

/// The seed the store keeps is sealed, and nowhere in plaintext; a store from before sealing
/// (the seed in plaintext) has it sealed on the next start, and its tokens still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_seeds_are_sealed_and_a_plaintext_one_is_sealed_on_start() {
    let place = Place::new();
    let server = place.start(&[SEAL_KEY]).await;
    let token = member_token(&server, "ann@example.com").await;
    server.stop().await;

    let records = place.signing_records();
    assert_eq!(records.len(), 1);
    let (tree, key, record) = &records[0];
    let seed = opened(record, SEAL_KEY);
    assert!(!place.shows(&seed), "the seed is nowhere in plaintext");

    // What a store written before sealing holds: the same seed in hex.
    let plain = SigningKey { seed_hex: seed.iter().map(|b| format!("{b:02x}")).collect(), sealed_seed: None, ..record.clone() };
    place.put_raw(tree, key, &serde_json::to_vec(&plain).unwrap());
    assert!(place.shows(&seed), "the check sees a plaintext seed");

    let server = place.start(&[SEAL_KEY]).await;
    assert_verifies(&server, &token).await;
    server.stop().await;
    let records = place.signing_records();
    assert_eq!(opened(&records[0].2, SEAL_KEY), seed);
    assert!(place.raw().iter().all(|(_, _, v)| !String::from_utf8_lossy(v).contains(&plain.seed_hex)), "no entry holds it any more");
}

/// README's rotation: a new key added second, then made first (that start re-seals every
/// seed with it), then the old key removed; tokens signed before still verify, and a start
/// with only the old key is refused, naming the new key by its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_seal_key_reseals_every_seed_and_the_old_key_can_go() {
    let place = Place::new();
    let server = place.start(&[SEAL_KEY]).await;
    let before = member_token(&server, "ann@example.com").await;
    server.stop().await;

    // 1: the new key second: it opens, the old one still seals.
    let server = place.start(&[SEAL_KEY, SEAL_KEY_B]).await;
    assert_verifies(&server, &before).await;
    server.stop().await;
    opened(&place.signing_records()[0].2, SEAL_KEY);

    // 2: the new key first: the start re-seals; a signing key made now is sealed with it too.
    let server = place.start(&[SEAL_KEY_B, SEAL_KEY]).await;
    assert_verifies(&server, &before).await;
    let (status, body) = server.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, signin) = server.signin("ann@example.com", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{signin}");
    let after = signin["accessToken"].as_str().unwrap().to_owned();
    server.stop().await;
    let records = place.signing_records();
    assert_eq!(records.len(), 2);
    for (_, _, record) in &records {
        opened(record, SEAL_KEY_B);
    }

    // 3: the old key removed.
    let server = place.start(&[SEAL_KEY_B]).await;
    assert_verifies(&server, &before).await;
    assert_verifies(&server, &after).await;
    server.stop().await;

    let refusal = place.refusal(&[SEAL_KEY]);
    assert!(refusal.contains(&id_of(SEAL_KEY_B)) && refusal.contains("not configured"), "{refusal}");
    for key in [SEAL_KEY, SEAL_KEY_B] {
        assert!(!refusal.contains(&key["kgseal_".len()..]), "the refusal shows a key: {refusal}");
    }
    // Refused before anything was written: the right key still starts it.
    let server = place.start(&[SEAL_KEY_B]).await;
    assert_verifies(&server, &after).await;
    server.stop().await;
}

/// A seed sealed with a key that is not configured refuses the start, naming that key's id;
/// so does a sealed seed copied onto another signing key's record (its kid is bound to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_seal_key_or_a_moved_sealed_seed_refuses_the_start() {
    let place = Place::new();
    let server = place.start(&[SEAL_KEY]).await;
    let (status, body) = server.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;

    let refusal = place.refusal(&[SEAL_KEY_B, SEAL_KEY_C]);
    assert!(refusal.contains(&id_of(SEAL_KEY)) && !refusal.contains(&SEAL_KEY["kgseal_".len()..]), "{refusal}");

    let records = place.signing_records();
    assert_eq!(records.len(), 2);
    let (tree, key, first) = &records[0];
    let moved = SigningKey { sealed_seed: records[1].2.sealed_seed.clone(), ..first.clone() };
    place.put_raw(tree, key, &serde_json::to_vec(&moved).unwrap());
    let refusal = place.refusal(&[SEAL_KEY]);
    assert!(refusal.contains("does not open") && refusal.contains(&first.kid), "{refusal}");
}

/// PostgreSQL: no start without a seal key, and the refusal says how to make one. Sled: the
/// seeds stay in plaintext without one, as before, are sealed once one is given, and then
/// a start without it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_needs_a_seal_key_and_sled_seals_once_given_one() {
    let place = Place::new();
    if place.is_postgres() {
        let refusal = place.refusal(&[]);
        assert!(refusal.contains("seal-key generate") && refusal.contains("KEYGATE_SEAL_KEY"), "{refusal}");
        return;
    }
    let server = place.start(&[]).await;
    let token = member_token(&server, "ann@example.com").await;
    server.stop().await;
    let record = place.signing_records().remove(0).2;
    assert!(record.sealed_seed.is_none() && record.seed_hex.len() == 64, "without a seal key, as before");

    let server = place.start(&[SEAL_KEY]).await;
    assert_verifies(&server, &token).await;
    server.stop().await;
    let seed = opened(&place.signing_records()[0].2, SEAL_KEY);
    assert_eq!(seed.iter().map(|b| format!("{b:02x}")).collect::<String>(), record.seed_hex);

    let refusal = place.refusal(&[]);
    assert!(refusal.contains(&id_of(SEAL_KEY)), "{refusal}");
}

/// Signs in through `server` until its token is signed by `kid` (a rotation through another
/// replica reaches it by a notification); that token.
async fn token_signed_by(server: &Server, email: &str, kid: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, signin) = server.signin(email, "correct horse").await;
        assert_eq!(status, StatusCode::OK, "{signin}");
        let token = signin["accessToken"].as_str().unwrap().to_owned();
        if keygate_core::token::checked_kid(&token).ok().as_deref() == Some(kid) {
            return token;
        }
        assert!(std::time::Instant::now() < deadline, "{kid} never signed here");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Rotates the signing key through `server`; the new kid.
async fn rotate_signing_key(server: &Server) -> String {
    let (status, body) = server.send(Method::POST, "/v1/signing-keys/rotate", Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["kid"].as_str().unwrap().to_owned()
}

/// README's rotation over two replicas on one PostgreSQL database, restarted one at a time:
/// one always serves, and in step 2 each opens what the other seals (the new key on one, the
/// old on the other) while signing keys are rotated through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seal_key_rotates_across_live_replicas() {
    let place = Place::new();
    if !place.is_postgres() {
        eprintln!("note: KEYGATE_TEST_POSTGRES is unset; replica test skipped");
        return;
    }
    let (old, new) = (SEAL_KEY, SEAL_KEY_B);
    let r1 = place.start(&[old]).await;
    let mut r2 = place.start(&[old]).await;
    let before = member_token(&r1, "ann@example.com").await;

    // 1: the new key second, one replica at a time.
    r1.stop().await;
    assert_verifies(&r2, &before).await;
    let r1 = place.start(&[old, new]).await;
    r2.stop().await;
    assert_verifies(&r1, &before).await;
    r2 = place.start(&[old, new]).await;

    // 2: the new key first. r1 re-seals on its start and seals its next signing key with the
    // new key, which r2 (not yet restarted) opens; r2 seals with the old one, which r1 opens.
    r1.stop().await;
    let r1 = place.start(&[new, old]).await;
    let kid = rotate_signing_key(&r1).await;
    let _ = token_signed_by(&r2, "ann@example.com", &kid).await;
    let kid = rotate_signing_key(&r2).await;
    let _ = token_signed_by(&r1, "ann@example.com", &kid).await;
    r2.stop().await;
    assert_verifies(&r1, &before).await;
    let r2 = place.start(&[new, old]).await;
    for (_, _, record) in place.signing_records() {
        opened(&record, new);
    }

    // 3: the old key removed.
    r1.stop().await;
    let r1 = place.start(&[new]).await;
    r2.stop().await;
    let r2 = place.start(&[new]).await;
    for replica in [&r1, &r2] {
        assert_verifies(replica, &before).await;
        assert_verifies(replica, &token_signed_by(replica, "ann@example.com", &kid).await).await;
    }
    r1.stop().await;
    r2.stop().await;
}

#[test]
fn the_test_keys_are_three_different_keys() {
    let keys = SealKeys::new([SEAL_KEY, SEAL_KEY_B, SEAL_KEY_C].iter().map(|k| keygate_admin::seal::SealKey::parse(k).unwrap()).collect());
    assert!(keys.is_ok());
}
