//! Base62 (`0-9A-Za-z`), the alphabet of API keys: copy-paste safe, no separators.

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Encodes `value` as exactly `width` base62 digits, most significant first.
/// `width` must be large enough; higher digits are dropped otherwise (callers pick widths
/// that fit: 6 digits hold any u32 since 62^6 > 2^32).
pub fn encode_fixed(mut value: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out.into_iter().map(char::from).collect()
}

pub fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Maps random bytes to base62 characters without modulo bias: bytes ≥ 248 (= 4 × 62)
/// are skipped. Returns `None` if `random` runs out before `len` characters are made.
pub fn from_random_bytes(random: impl IntoIterator<Item = u8>, len: usize) -> Option<String> {
    let out: String = random.into_iter().filter(|b| *b < 248).map(|b| char::from(ALPHABET[usize::from(b % 62)])).take(len).collect();
    (out.len() == len).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_encoding() {
        assert_eq!(encode_fixed(0, 6), "000000");
        assert_eq!(encode_fixed(61, 2), "0z");
        assert_eq!(encode_fixed(62, 2), "10");
        assert_eq!(encode_fixed(u64::from(u32::MAX), 6).len(), 6);
    }

    #[test]
    fn random_mapping_skips_biased_bytes_and_reports_shortage() {
        assert_eq!(from_random_bytes([0u8, 255, 61, 62], 3).as_deref(), Some("0z0"));
        assert_eq!(from_random_bytes([1u8, 250], 2), None);
    }
}
