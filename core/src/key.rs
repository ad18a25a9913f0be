//! API keys: `sk_live_` / `sk_test_` / `pk_live_` / `pk_test_`, then 32 random base62
//! characters (≈190 bits), then a 6-character base62 checksum.
//!
//! The checksum lets the filter reject a typo or a random string before any lookup, and
//! the fixed prefix + shape lets secret scanners recognise a leaked key. Only the SHA-256
//! of the whole key is ever stored; [`ApiKey`] and [`KeyHash`] never print themselves.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::base62;

pub const RANDOM_LEN: usize = 32;
pub const CHECKSUM_LEN: usize = 6;
pub const PREFIX_LEN: usize = 8; // "sk_live_"
pub const KEY_LEN: usize = PREFIX_LEN + RANDOM_LEN + CHECKSUM_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Secret key: server side, full access.
    Sk,
    /// Publishable key: safe for clients, read-only (safe methods only).
    Pk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Live,
    Test,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Sk => "sk",
            KeyKind::Pk => "pk",
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key does not start with sk_live_, sk_test_, pk_live_ or pk_test_")]
    Prefix,
    #[error("the key has the wrong length or characters")]
    Shape,
    #[error("the key's checksum does not match")]
    Checksum,
}

/// A syntactically valid raw API key. Holding one means prefix, shape and checksum
/// were checked; it says nothing about whether the key exists.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    raw: String,
    kind: KeyKind,
    mode: Mode,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}_{}_…)", self.kind.as_str(), self.mode.as_str())
    }
}

fn prefix_of(kind: KeyKind, mode: Mode) -> &'static str {
    match (kind, mode) {
        (KeyKind::Sk, Mode::Live) => "sk_live_",
        (KeyKind::Sk, Mode::Test) => "sk_test_",
        (KeyKind::Pk, Mode::Live) => "pk_live_",
        (KeyKind::Pk, Mode::Test) => "pk_test_",
    }
}

/// Parses the `sk_live_`-style prefix; `None` when the text carries none. Used to tell a
/// key in the bearer position from a JWT.
pub fn parse_prefix(text: &str) -> Option<(KeyKind, Mode)> {
    let head = text.get(..PREFIX_LEN)?;
    match head {
        "sk_live_" => Some((KeyKind::Sk, Mode::Live)),
        "sk_test_" => Some((KeyKind::Sk, Mode::Test)),
        "pk_live_" => Some((KeyKind::Pk, Mode::Live)),
        "pk_test_" => Some((KeyKind::Pk, Mode::Test)),
        _ => None,
    }
}

fn checksum(prefix_and_random: &str) -> String {
    let digest = Sha256::digest(prefix_and_random.as_bytes());
    let value = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    base62::encode_fixed(u64::from(value), CHECKSUM_LEN)
}

impl ApiKey {
    /// Makes a new key from caller-supplied randomness (core does no I/O): pass bytes from
    /// the OS generator. Returns `None` if the bytes run out (≈ 34 bytes are used on average;
    /// 64 is always plenty in practice).
    pub fn generate(kind: KeyKind, mode: Mode, random: impl IntoIterator<Item = u8>) -> Option<ApiKey> {
        let body = base62::from_random_bytes(random, RANDOM_LEN)?;
        let mut raw = String::with_capacity(KEY_LEN);
        raw.push_str(prefix_of(kind, mode));
        raw.push_str(&body);
        let sum = checksum(&raw);
        raw.push_str(&sum);
        Some(ApiKey { raw, kind, mode })
    }

    /// Checks prefix, length, alphabet and checksum. No lookup, constant work.
    pub fn parse(text: &str) -> Result<ApiKey, KeyFormatError> {
        let (kind, mode) = parse_prefix(text).ok_or(KeyFormatError::Prefix)?;
        if text.len() != KEY_LEN || !base62::is_base62(&text[PREFIX_LEN..]) {
            return Err(KeyFormatError::Shape);
        }
        let (body, sum) = text.split_at(PREFIX_LEN + RANDOM_LEN);
        if checksum(body) != sum {
            return Err(KeyFormatError::Checksum);
        }
        Ok(ApiKey { raw: text.to_owned(), kind, mode })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The public, loggable part: `sk_live_` plus the first four random characters.
    pub fn display_prefix(&self) -> &str {
        &self.raw[..PREFIX_LEN + 4]
    }

    /// The secret itself, for the one response that shows it to its owner.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of_raw(&self.raw)
    }
}

/// Shortest and longest key value looked up by hash when it is not in keygate's format
/// (a key imported from another gateway; see [`PresentedKey`]).
pub const LEGACY_MIN_LEN: usize = 8;
pub const LEGACY_MAX_LEN: usize = 256;

/// A presented key value, classified before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresentedKey {
    /// keygate's format with a valid checksum: its kind and mode come from the prefix and
    /// must match the stored record.
    Checked(ApiKey),
    /// Not keygate-shaped (an imported key from another gateway): looked up by the SHA-256
    /// of the whole value; kind and mode come from the stored record alone.
    Legacy(KeyHash),
}

impl PresentedKey {
    pub fn hash(&self) -> KeyHash {
        match self {
            PresentedKey::Checked(key) => key.hash(),
            PresentedKey::Legacy(hash) => *hash,
        }
    }

    /// `(kind, mode)` the value itself claims: only a checked key claims any.
    pub fn claims(&self) -> Option<(KeyKind, Mode)> {
        match self {
            PresentedKey::Checked(key) => Some((key.kind(), key.mode())),
            PresentedKey::Legacy(_) => None,
        }
    }
}

/// Whether `text` has keygate's exact shape: a known prefix, then 38 base62 characters.
/// Such a value is always checksum-checked and never looked up as a legacy key.
pub fn is_keygate_shaped(text: &str) -> bool {
    parse_prefix(text).is_some() && text.len() == KEY_LEN && base62::is_base62(&text[PREFIX_LEN..])
}

/// Whether `text` may be a legacy (imported) key: [`LEGACY_MIN_LEN`]..=[`LEGACY_MAX_LEN`]
/// bytes of printable ASCII without spaces.
pub fn is_legacy_candidate(text: &str) -> bool {
    (LEGACY_MIN_LEN..=LEGACY_MAX_LEN).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Classifies a presented value. A keygate-shaped value with a wrong checksum is a typo
/// and fails ([`KeyFormatError::Checksum`]) without a lookup; any other bounded printable
/// value is a legacy key looked up by hash; the rest fails without a lookup.
pub fn classify(text: &str) -> Result<PresentedKey, KeyFormatError> {
    if is_keygate_shaped(text) {
        return ApiKey::parse(text).map(PresentedKey::Checked);
    }
    if is_legacy_candidate(text) {
        return Ok(PresentedKey::Legacy(KeyHash::of_raw(text)));
    }
    // Neither: this only reports why (prefix, length or characters).
    ApiKey::parse(text).map(PresentedKey::Checked)
}

/// SHA-256 of the whole raw key: the only form in which a key is stored or shipped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(…)")
    }
}

impl KeyHash {
    pub fn of_raw(raw: &str) -> KeyHash {
        KeyHash(Sha256::digest(raw.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }

    pub fn from_hex(text: &str) -> Option<KeyHash> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(KeyHash(out))
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("a key hash is 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: KeyKind, mode: Mode, seed: u8) -> ApiKey {
        let bytes = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(seed));
        ApiKey::generate(kind, mode, bytes).unwrap()
    }

    #[test]
    fn generated_keys_parse_back_with_kind_and_mode() {
        for (kind, mode) in [(KeyKind::Sk, Mode::Live), (KeyKind::Sk, Mode::Test), (KeyKind::Pk, Mode::Live), (KeyKind::Pk, Mode::Test)] {
            let key = sample(kind, mode, 7);
            assert_eq!(key.expose().len(), KEY_LEN);
            assert!(key.expose().starts_with(&format!("{}_{}_", kind.as_str(), mode.as_str())));
            let parsed = ApiKey::parse(key.expose()).unwrap();
            assert_eq!((parsed.kind(), parsed.mode()), (kind, mode));
            assert_eq!(parsed.hash(), key.hash());
        }
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let key = sample(KeyKind::Sk, Mode::Live, 1);
        let raw = key.expose();
        let mut caught = 0;
        for pos in PREFIX_LEN..raw.len() {
            let mut bytes = raw.as_bytes().to_vec();
            bytes[pos] = if bytes[pos] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert!(ApiKey::parse(&typo).is_err(), "typo at {pos} accepted");
            caught += 1;
        }
        assert_eq!(caught, RANDOM_LEN + CHECKSUM_LEN);
    }

    #[test]
    fn malformed_keys_are_rejected_with_the_reason() {
        let key = sample(KeyKind::Pk, Mode::Test, 3);
        let raw = key.expose();
        assert_eq!(ApiKey::parse("rk_live_abc"), Err(KeyFormatError::Prefix));
        assert_eq!(ApiKey::parse(""), Err(KeyFormatError::Prefix));
        assert_eq!(ApiKey::parse("sk_live_short"), Err(KeyFormatError::Shape));
        assert_eq!(ApiKey::parse(&format!("{raw} ")), Err(KeyFormatError::Shape));
        assert!(ApiKey::parse(&raw.replacen('a', "а", 1)).is_err()); // Cyrillic look-alike
        let mut swapped = raw.to_owned().into_bytes();
        swapped.swap(10, 11);
        if swapped != raw.as_bytes() {
            assert!(ApiKey::parse(std::str::from_utf8(&swapped).unwrap()).is_err());
        }
        // Non-ASCII at a char boundary that would panic a naive slice.
        assert!(ApiKey::parse("sk_live_ééééééééééééééééééééééé").is_err());
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let key = sample(KeyKind::Sk, Mode::Live, 9);
        let printed = format!("{key:?} {:?}", key.hash());
        assert!(!printed.contains(&key.expose()[PREFIX_LEN..]));
        assert!(!printed.contains(&key.hash().to_hex()));
    }

    #[test]
    fn hash_hex_round_trips_and_rejects_junk() {
        let hash = sample(KeyKind::Sk, Mode::Live, 5).hash();
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn generation_reports_exhausted_randomness() {
        assert!(ApiKey::generate(KeyKind::Sk, Mode::Live, [255u8; 64]).is_none());
    }

    #[test]
    fn classification_checks_keygate_keys_and_hashes_legacy_ones() {
        let key = sample(KeyKind::Sk, Mode::Live, 11);
        let raw = key.expose();
        // A good keygate key: checked, claims its prefix's kind and mode.
        assert_eq!(classify(raw), Ok(PresentedKey::Checked(key.clone())));
        assert_eq!(classify(raw).map(|p| p.claims()), Ok(Some((KeyKind::Sk, Mode::Live))));
        // keygate's exact shape with a wrong checksum: a typo, refused without a lookup.
        let last = raw.len() - 1;
        let mut typo = raw.to_owned().into_bytes();
        typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(classify(&typo), Err(KeyFormatError::Checksum));
        // Another vendor's key with the same prefix but another length: legacy, by hash.
        let vendor = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        assert_eq!(classify(vendor), Ok(PresentedKey::Legacy(KeyHash::of_raw(vendor))));
        assert_eq!(classify(vendor).map(|p| p.claims()), Ok(None));
        // Any other bounded printable value: legacy too.
        for value in ["AKIA1234abcd", "x-api-key:0123456789", &"z".repeat(LEGACY_MAX_LEN), "12345678"] {
            assert_eq!(classify(value).map(|p| p.hash()), Ok(KeyHash::of_raw(value)), "{value}");
        }
        // keygate-shaped after its prefix but with a non-base62 character: not keygate-shaped,
        // so a legacy lookup (it cannot match a keygate key: those hash their own text).
        let odd = format!("{}-{}", &raw[..PREFIX_LEN], &raw[PREFIX_LEN + 1..]);
        assert!(matches!(classify(&odd), Ok(PresentedKey::Legacy(_))));
    }

    #[test]
    fn classification_refuses_what_cannot_be_a_key() {
        assert!(classify("").is_err());
        assert!(classify("short").is_err());
        assert!(classify("sk_live").is_err());
        assert!(classify(&"z".repeat(LEGACY_MAX_LEN + 1)).is_err());
        assert!(classify("has a space in it").is_err());
        assert!(classify("tab\there12345").is_err());
        assert!(classify("ctrl\u{1}char12345").is_err());
        assert!(classify("nön-ascii-value").is_err());
        assert!(classify("sk_live_ééééééééééééééééééééééé").is_err());
    }
}
