//! Ids and secrets from the operating system's generator (getrandom).

use keygate_core::base62;

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
}
