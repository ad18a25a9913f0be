//! Sealing the signing keys' private seeds at rest: XChaCha20-Poly1305 under a seal key that
//! admin takes from its environment or a file, never from the store, so a copy of the
//! database (a backup, a dump, an account that may read the table) cannot sign tokens.
//!
//! A seal key is written `kgseal_` + 43 base64url characters (32 random bytes). Its id, 16 hex
//! characters of a SHA-256 of the key, is stored beside every seed it sealed, so the right key
//! is picked to open it, and names the key in messages: the key itself is never printed.
//! Every seal draws a fresh random 24-byte nonce (random nonces of that size never repeat in
//! practice), and the associated data binds the sealed seed to its signing key's kid, so a
//! sealed seed copied onto another record does not open.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest;
use crate::error::AdminError;
use crate::store::{SigningKey, StoreError};

pub const SEAL_KEY_PREFIX: &str = "kgseal_";
/// base64url characters after the prefix: 32 bytes, unpadded.
const KEY_TEXT_LEN: usize = 43;
const NONCE_LEN: usize = 24;
/// What every seal's associated data starts with; the signing key's kid follows.
const AD_PREFIX: &[u8] = b"keygate signing seed v1\0";
/// Hashed before the key for its id, so the id is no other use's digest of the key.
const ID_DOMAIN: &[u8] = b"keygate seal key id\0";

/// What a seal key looks like, for error messages.
const KEY_SHAPE: &str = "a seal key is `kgseal_` and 43 base64url characters: make one with `keygate-admin seal-key generate`";

/// The public id of a seal key: 16 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealKeyId(String);

impl SealKeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SealKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One seal key. `Debug` and `Display` show its id only.
#[derive(Clone)]
pub struct SealKey {
    bytes: [u8; 32],
    id: SealKeyId,
}

impl SealKey {
    fn from_bytes(bytes: [u8; 32]) -> SealKey {
        let mut h = Sha256::new();
        h.update(ID_DOMAIN);
        h.update(bytes);
        let digest: [u8; 32] = h.finalize().into();
        SealKey { bytes, id: SealKeyId(digest::hex(&digest[..8])) }
    }

    /// A new random key.
    pub fn generate() -> Result<SealKey, AdminError> {
        Ok(SealKey::from_bytes(crate::random::array()?))
    }

    /// Reads `kgseal_` + 43 base64url characters (surrounding spaces allowed). The error says
    /// what is wrong without quoting the text, which may be a mistyped real key.
    pub fn parse(text: &str) -> Result<SealKey, &'static str> {
        let body = text.trim().strip_prefix(SEAL_KEY_PREFIX).ok_or("it does not start with `kgseal_`")?;
        if body.len() != KEY_TEXT_LEN {
            return Err("it is not 43 characters after `kgseal_`");
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| "it is not base64url after `kgseal_`")?;
        let bytes = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| "it is not 32 bytes after `kgseal_`")?;
        Ok(SealKey::from_bytes(bytes))
    }

    pub fn id(&self) -> &SealKeyId {
        &self.id
    }

    /// The key as written: for `keygate-admin seal-key generate` only.
    pub fn expose(&self) -> String {
        format!("{SEAL_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&Key::from(self.bytes))
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

impl fmt::Display for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seal key {}", self.id)
    }
}

/// A seed as the store keeps it once sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSeed {
    /// The id of the seal key that sealed it.
    pub seal_key: SealKeyId,
    /// base64url, 24 bytes.
    pub nonce: String,
    /// base64url: the 32-byte seed encrypted, then the 16-byte tag.
    pub ciphertext: String,
}

impl fmt::Debug for SealedSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSeed").field("seal_key", &self.seal_key).finish_non_exhaustive()
    }
}

/// The associated data of the seed of signing key `kid`.
fn associated_data(kid: &str) -> Vec<u8> {
    [AD_PREFIX, kid.as_bytes()].concat()
}

/// The configured seal keys, in order: the first seals, every one opens.
#[derive(Clone)]
pub struct SealKeys {
    sealer: SealKey,
    others: Vec<SealKey>,
}

impl fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl SealKeys {
    /// `keys` in order; refuses none, or one key listed twice.
    pub fn new(keys: Vec<SealKey>) -> Result<SealKeys, AdminError> {
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.id == key.id) {
                return Err(AdminError::Config(format!("seal key {} is listed twice", key.id)));
            }
        }
        let mut keys = keys.into_iter();
        let sealer = keys.next().ok_or_else(|| AdminError::Config(format!("no seal key is listed ({KEY_SHAPE})")))?;
        Ok(SealKeys { sealer, others: keys.collect() })
    }

    /// `KEYGATE_SEAL_KEY`'s form: keys separated by commas.
    pub fn parse_list(text: &str, source: &str) -> Result<SealKeys, AdminError> {
        let keys = text.split(',').enumerate().filter(|(_, t)| !t.trim().is_empty());
        let keys = keys.map(|(i, t)| SealKey::parse(t).map_err(|why| bad_key(&format!("entry {} of {source}", i + 1), why)));
        SealKeys::new(keys.collect::<Result<_, _>>()?)
    }

    /// A seal key file's form: one key per line; `#` starts a comment, blank lines are skipped.
    pub fn parse_lines(text: &str, source: &str) -> Result<SealKeys, AdminError> {
        let lines = text.lines().enumerate().map(|(i, l)| (i, l.split('#').next().unwrap_or(""))).filter(|(_, l)| !l.trim().is_empty());
        let keys = lines.map(|(i, l)| SealKey::parse(l).map_err(|why| bad_key(&format!("line {} of {source}", i + 1), why)));
        SealKeys::new(keys.collect::<Result<_, _>>()?)
    }

    /// The keys `keygate-admin serve` is given: `KEYGATE_SEAL_KEY`'s value (`list`; empty
    /// counts as unset), or the file at `file`, never both. `None` when neither is set.
    pub fn configured(list: Option<&str>, file: Option<&Path>) -> Result<Option<SealKeys>, AdminError> {
        match (list.filter(|l| !l.trim().is_empty()), file) {
            (Some(_), Some(_)) => {
                Err(AdminError::Config("both KEYGATE_SEAL_KEY and a seal key file are set: give the seal keys one way".to_owned()))
            }
            (Some(list), None) => SealKeys::parse_list(list, "KEYGATE_SEAL_KEY").map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| AdminError::Config(format!("cannot read the seal key file {}: {e}", path.display())))?;
                SealKeys::parse_lines(&text, &format!("the seal key file {}", path.display())).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// The key that seals.
    pub fn sealer(&self) -> &SealKey {
        &self.sealer
    }

    /// Every key, the sealer first.
    pub fn keys(&self) -> impl Iterator<Item = &SealKey> {
        std::iter::once(&self.sealer).chain(&self.others)
    }

    pub fn ids(&self) -> impl Iterator<Item = &SealKeyId> {
        self.keys().map(SealKey::id)
    }

    /// `seed` sealed for signing key `kid` with the first key, under a fresh nonce.
    pub fn seal(&self, kid: &str, seed: &[u8; 32]) -> Result<SealedSeed, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Task(format!("no random nonce: {e}")))?;
        let sealer = self.sealer();
        let aad = associated_data(kid);
        let ciphertext = sealer
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: seed, aad: &aad })
            .map_err(|_| StoreError::Task("sealing a signing seed failed".to_owned()))?;
        Ok(SealedSeed { seal_key: sealer.id.clone(), nonce: URL_SAFE_NO_PAD.encode(nonce), ciphertext: URL_SAFE_NO_PAD.encode(ciphertext) })
    }

    /// The seed of signing key `kid`, opened with the key that sealed it.
    pub fn open(&self, kid: &str, sealed: &SealedSeed) -> Result<[u8; 32], StoreError> {
        let key = self.keys().find(|k| k.id == sealed.seal_key).ok_or_else(|| missing(kid, sealed))?;
        let corrupt = |what: &str| StoreError::Corrupt {
            tree: "signing_keys",
            detail: format!("the sealed seed of signing key {kid} (seal key {}) {what}", sealed.seal_key),
        };
        let nonce = URL_SAFE_NO_PAD.decode(&sealed.nonce).ok().and_then(|n| <[u8; NONCE_LEN]>::try_from(n).ok());
        let ciphertext = URL_SAFE_NO_PAD.decode(&sealed.ciphertext).ok();
        let (Some(nonce), Some(ciphertext)) = (nonce, ciphertext) else {
            return Err(corrupt("is not a nonce and a ciphertext in base64url"));
        };
        let aad = associated_data(kid);
        let seed = key
            .cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: &ciphertext, aad: &aad })
            .map_err(|_| corrupt("does not open: altered, or moved from another record"))?;
        <[u8; 32]>::try_from(seed.as_slice()).map_err(|_| corrupt("is not 32 bytes once opened"))
    }
}

fn bad_key(place: &str, why: &str) -> AdminError {
    AdminError::Config(format!("{place} is not a seal key: {why} ({KEY_SHAPE})"))
}

fn missing(kid: &str, sealed: &SealedSeed) -> StoreError {
    StoreError::SealKeyMissing { kid: kid.to_owned(), seal_key: sealed.seal_key.to_string() }
}

impl SigningKey {
    /// Keeps `seed` in this record: sealed with the first of `keys`, or in hex without keys
    /// (a sled store run without a seal key).
    pub fn set_seed(&mut self, seed: &[u8; 32], keys: Option<&SealKeys>) -> Result<(), StoreError> {
        match keys {
            Some(keys) => {
                self.sealed_seed = Some(keys.seal(&self.kid, seed)?);
                self.seed_hex = String::new();
            }
            None => {
                self.sealed_seed = None;
                self.seed_hex = digest::hex(seed);
            }
        }
        Ok(())
    }

    /// This record's seed, opened with `keys` when it is sealed.
    pub fn seed(&self, keys: Option<&SealKeys>) -> Result<[u8; 32], StoreError> {
        match (&self.sealed_seed, keys) {
            (Some(sealed), Some(keys)) => keys.open(&self.kid, sealed),
            (Some(sealed), None) => Err(missing(&self.kid, sealed)),
            (None, _) => digest::unhex::<32>(&self.seed_hex).ok_or_else(|| StoreError::Corrupt {
                tree: "signing_keys",
                detail: format!("the seed of signing key {} is not hex", self.kid),
            }),
        }
    }

    /// This record as it should be kept under `keys`: sealed with their first key when it is
    /// in plaintext or sealed with another. `None` when it is right as it is (it opens, and
    /// is sealed with the first key, or there are no keys and it is in plaintext).
    pub fn resealed(&self, keys: Option<&SealKeys>) -> Result<Option<SigningKey>, StoreError> {
        let seed = self.seed(keys)?;
        let Some(keys) = keys else { return Ok(None) };
        if self.sealed_seed.as_ref().is_some_and(|s| s.seal_key == keys.sealer().id) {
            return Ok(None);
        }
        let mut resealed = self.clone();
        resealed.set_seed(&seed, Some(keys))?;
        Ok(Some(resealed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use keygate_core::signing::SigningKeyPair;

    fn keys(list: &[&SealKey]) -> SealKeys {
        SealKeys::new(list.iter().map(|k| (*k).clone()).collect()).unwrap()
    }

    fn record(kid: &str, seed: [u8; 32]) -> SigningKey {
        SigningKey {
            kid: kid.to_owned(),
            seed_hex: digest::hex(&seed),
            sealed_seed: None,
            public: SigningKeyPair::from_seed(kid, seed).public_entry(),
            created_at: 1,
            retired_at: None,
            remove_after: None,
        }
    }

    #[test]
    fn a_sealed_seed_opens_with_its_key_and_every_seal_takes_a_new_nonce() {
        let a = SealKey::generate().unwrap();
        let b = SealKey::generate().unwrap();
        let seed = [7u8; 32];
        let sealed = keys(&[&a, &b]).seal("sig_1", &seed).unwrap();
        assert_eq!(sealed.seal_key, *a.id(), "the first key seals");
        assert_eq!(keys(&[&a]).open("sig_1", &sealed).unwrap(), seed);
        assert_eq!(keys(&[&b, &a]).open("sig_1", &sealed).unwrap(), seed, "any listed key opens");
        let again = keys(&[&a]).seal("sig_1", &seed).unwrap();
        assert_ne!(again.nonce, sealed.nonce);
        assert_ne!(again.ciphertext, sealed.ciphertext);
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains(&digest::hex(&seed)) && !stored.contains(&URL_SAFE_NO_PAD.encode(seed)), "{stored}");
    }

    #[test]
    fn a_seed_does_not_open_with_another_key() {
        let a = SealKey::generate().unwrap();
        let b = SealKey::generate().unwrap();
        let sealed = keys(&[&a]).seal("sig_1", &[7; 32]).unwrap();
        match keys(&[&b]).open("sig_1", &sealed) {
            Err(StoreError::SealKeyMissing { kid, seal_key }) => assert_eq!((kid.as_str(), seal_key.as_str()), ("sig_1", a.id().as_str())),
            other => panic!("{other:?}"),
        }
        // Claiming another key's id: the cipher refuses it all the same.
        let forged = SealedSeed { seal_key: b.id().clone(), ..sealed };
        assert!(matches!(keys(&[&b]).open("sig_1", &forged), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn an_altered_ciphertext_nonce_or_kid_does_not_open() {
        let a = SealKey::generate().unwrap();
        let sealed = keys(&[&a]).seal("sig_1", &[7; 32]).unwrap();
        let flip = |text: &str| {
            let mut bytes = URL_SAFE_NO_PAD.decode(text).unwrap();
            bytes[3] ^= 1;
            URL_SAFE_NO_PAD.encode(bytes)
        };
        let altered = [
            SealedSeed { ciphertext: flip(&sealed.ciphertext), ..sealed.clone() },
            SealedSeed { nonce: flip(&sealed.nonce), ..sealed.clone() },
            SealedSeed { ciphertext: sealed.ciphertext[..sealed.ciphertext.len() - 2].to_owned(), ..sealed.clone() },
            SealedSeed { nonce: "not base64!".to_owned(), ..sealed.clone() },
        ];
        for seed in &altered {
            assert!(matches!(keys(&[&a]).open("sig_1", seed), Err(StoreError::Corrupt { .. })), "{seed:?}");
        }
        // The associated data binds the seed to its kid: moved to another record, it does not open.
        assert!(matches!(keys(&[&a]).open("sig_2", &sealed), Err(StoreError::Corrupt { .. })));
        assert!(keys(&[&a]).open("sig_1", &sealed).is_ok());
    }

    #[test]
    fn keys_parse_only_in_their_one_shape_and_never_show_themselves() {
        let key = SealKey::generate().unwrap();
        let text = key.expose();
        assert_eq!(text.len(), SEAL_KEY_PREFIX.len() + KEY_TEXT_LEN);
        let parsed = SealKey::parse(&format!("  {text}\t")).unwrap();
        assert_eq!(parsed.id(), key.id());
        assert_eq!(key.id().as_str().len(), 16);
        assert!(key.id().as_str().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(SealKey::generate().unwrap().id(), key.id());
        let body = &text[SEAL_KEY_PREFIX.len()..];
        for shown in [format!("{key:?}"), key.to_string(), format!("{:?}", keys(&[&key]))] {
            assert!(!shown.contains(body) && shown.contains(key.id().as_str()), "{shown}");
        }
        let bad = [
            body.to_owned(),                                      // no prefix
            format!("kgsealx{body}"),                             // another prefix
            format!("KGSEAL_{body}"),                             // prefixes are lowercase
            format!("{SEAL_KEY_PREFIX}{}", &body[1..]),           // 42 characters
            format!("{text}A"),                                   // 44
            format!("{SEAL_KEY_PREFIX}{}+", &body[1..]),          // not base64url
            format!("{SEAL_KEY_PREFIX}{}", "A".repeat(42) + "B"), // stray bits past the 32 bytes
            String::new(),
        ];
        for bad in &bad {
            assert!(SealKey::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn lists_and_files_of_keys_parse_in_order_and_errors_quote_no_key() {
        let [a, b] = [SealKey::generate().unwrap(), SealKey::generate().unwrap()];
        let file = format!("# the new key seals\n{}\n\n  {}  # the old one still opens\n", a.expose(), b.expose());
        let from_file = SealKeys::parse_lines(&file, "f").unwrap();
        assert_eq!(from_file.ids().collect::<Vec<_>>(), [a.id(), b.id()]);
        let from_list = SealKeys::parse_list(&format!("{}, {}", b.expose(), a.expose()), "l").unwrap();
        assert_eq!(from_list.sealer().id(), b.id());
        assert_eq!(from_list.ids().count(), 2);

        let typo = format!("{}x", a.expose());
        let errors = [
            SealKeys::parse_lines(&format!("{}\n{typo}\n", b.expose()), "the file").unwrap_err(),
            SealKeys::parse_list(&typo, "KEYGATE_SEAL_KEY").unwrap_err(),
            SealKeys::parse_lines("# nothing but a comment\n", "the file").unwrap_err(),
            SealKeys::parse_list(&format!("{},{}", a.expose(), a.expose()), "KEYGATE_SEAL_KEY").unwrap_err(),
        ];
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(messages[0].contains("line 2 of the file"), "{messages:?}");
        assert!(messages[1].contains("entry 1 of KEYGATE_SEAL_KEY"), "{messages:?}");
        assert!(messages[2].contains("no seal key"), "{messages:?}");
        assert!(messages[3].contains(a.id().as_str()), "{messages:?}");
        for message in &messages {
            assert!(!message.contains(&a.expose()[SEAL_KEY_PREFIX.len()..]), "{message}");
        }
        assert!(SealKeys::configured(Some(" "), None).unwrap().is_none(), "an empty variable is unset");
        assert!(SealKeys::configured(Some(&a.expose()), Some(Path::new("/nonexistent"))).is_err(), "never both");
    }

    #[test]
    fn records_are_resealed_with_the_first_key_and_never_left_unopenable() {
        let [a, b] = [SealKey::generate().unwrap(), SealKey::generate().unwrap()];
        let seed = [9u8; 32];
        let plain = record("sig_1", seed);
        assert!(plain.resealed(None).unwrap().is_none(), "no keys: plaintext stays");
        let sealed_a = plain.resealed(Some(&keys(&[&a]))).unwrap().unwrap();
        assert!(sealed_a.seed_hex.is_empty());
        assert_eq!(sealed_a.sealed_seed.as_ref().unwrap().seal_key, *a.id());
        assert!(sealed_a.resealed(Some(&keys(&[&a, &b]))).unwrap().is_none(), "already sealed with the first key");
        let sealed_b = sealed_a.resealed(Some(&keys(&[&b, &a]))).unwrap().unwrap();
        assert_eq!(sealed_b.sealed_seed.as_ref().unwrap().seal_key, *b.id());
        assert_eq!(sealed_b.seed(Some(&keys(&[&b]))).unwrap(), seed);
        assert!(matches!(sealed_b.resealed(Some(&keys(&[&a]))), Err(StoreError::SealKeyMissing { .. })));
        assert!(matches!(sealed_b.resealed(None), Err(StoreError::SealKeyMissing { .. })));
        let stored = serde_json::to_string(&sealed_b).unwrap();
        assert!(!stored.contains("seed_hex") && !stored.contains(&digest::hex(&seed)), "{stored}");
    }
}
