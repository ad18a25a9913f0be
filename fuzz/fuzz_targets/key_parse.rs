//! `ApiKey::parse` (and the bearer-position prefix check) on arbitrary text. A key that
//! parses has the exact shape, and changing any one of its characters breaks it.
#![no_main]

use keygate_core::key::{parse_prefix, KEY_LEN, PREFIX_LEN};
use keygate_core::{ApiKey, KeyHash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let prefix = parse_prefix(&text);
    match ApiKey::parse(&text) {
        Ok(key) => {
            assert_eq!(key.expose(), text, "parse changed the key");
            assert_eq!(key.expose().len(), KEY_LEN);
            assert_eq!(prefix, Some((key.kind(), key.mode())));
            assert_eq!(key.hash(), KeyHash::of_raw(&text));
            assert_eq!(KeyHash::from_hex(&key.hash().to_hex()), Some(key.hash()));
            assert!(!format!("{key:?}").contains(&text[PREFIX_LEN..]), "Debug prints the secret");
            assert_eq!(key.display_prefix().len(), PREFIX_LEN + 4);
            // A typo anywhere after the prefix is caught (by shape or checksum).
            let at = PREFIX_LEN + usize::from(data.first().copied().unwrap_or(0)) % (KEY_LEN - PREFIX_LEN);
            let mut bytes = text.as_bytes().to_vec();
            bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).expect("ascii");
            assert!(ApiKey::parse(&typo).is_err(), "a one-character typo still parses");
        }
        Err(_) => {
            if let Some(raw) = text.get(..) {
                // The hex form of any hash round-trips; junk hex never parses as a hash.
                let _ = KeyHash::from_hex(raw);
            }
        }
    }
});
