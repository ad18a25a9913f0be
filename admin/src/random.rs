//! Ids and secrets from the operating system's generator (getrandom).

use keygate_core::base62;
use sha2::{Digest, Sha256};

use crate::error::AdminError;

/// Length of the random part of ids (`biz_`, `usr_`, `key_`, `ses_`): 16 base62 ≈ 95 bits.
pub const ID_LEN: usize = 16;
/// Length of the random part of bearer secrets (`kgo_`, `kgp_`, `rt_`): 43 base62 ≈ 256 bits.
pub const SECRET_LEN: usize = 43;

pub fn fill(buf: &mut [u8]) -> Result<(), AdminError> {
    getrandom::fill(buf).map_err(AdminError::Random)
}

pub fn array<const N: usize>() -> Result<[u8; N], AdminError> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}

/// `len` unbiased base62 characters. Bytes ≥ 248 are skipped, so a draw of `2 * len + 16`
/// bytes is short with negligible probability; then it draws again.
pub fn base62_string(len: usize) -> Result<String, AdminError> {
    for _ in 0..8 {
        let mut buf = vec![0u8; 2 * len + 16];
        fill(&mut buf)?;
        if let Some(s) = base62::from_random_bytes(buf, len) {
            return Ok(s);
        }
    }
    Err(AdminError::Internal("random generator keeps returning biased bytes"))
}

/// `prefix` + 16 random base62 characters, e.g. `biz_4fT0…`.
pub fn id(prefix: &str) -> Result<String, AdminError> {
    Ok(format!("{prefix}{}", base62_string(ID_LEN)?))
}

/// `prefix` + 43 random base62 characters: an operator/proxy/refresh secret.
pub fn secret(prefix: &str) -> Result<String, AdminError> {
    Ok(format!("{prefix}{}", base62_string(SECRET_LEN)?))
}

/// Random bytes for `ApiKey::generate`.
pub fn key_material() -> Result<[u8; 96], AdminError> {
    array::<96>()
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Equality of two digests without an early exit.
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_have_their_shape() {
        let id = id("biz_").unwrap();
        assert_eq!(id.len(), 4 + ID_LEN);
        assert!(base62::is_base62(&id[4..]));
        let s = secret("kgo_").unwrap();
        assert_eq!(s.len(), 4 + SECRET_LEN);
        assert_ne!(s, secret("kgo_").unwrap());
    }

    #[test]
    fn hex_round_trips() {
        let bytes: [u8; 32] = array().unwrap();
        assert_eq!(unhex::<32>(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex::<2>("zz00"), None);
        assert!(digest_eq(&bytes, &bytes));
        assert!(!digest_eq(&bytes, &[0; 32]) || bytes == [0; 32]);
    }
}
