//! Two `u64`s as 16 little-endian bytes: the shape of every small value the filter keeps
//! in Envoy's shared data (rate-limit windows, the leader lease, `Seen`).

pub fn pack(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

/// `None` unless `bytes` is exactly 16 long.
pub fn unpack(bytes: &[u8]) -> Option<(u64, u64)> {
    let bytes: &[u8; 16] = bytes.try_into().ok()?;
    let (a, b) = bytes.split_at(8);
    Some((u64::from_le_bytes(a.try_into().ok()?), u64::from_le_bytes(b.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_rejects_other_lengths() {
        assert_eq!(super::unpack(&super::pack(7, u64::MAX)), Some((7, u64::MAX)));
        assert_eq!(super::unpack(&[0; 15]), None);
        assert_eq!(super::unpack(&[0; 17]), None);
    }
}
