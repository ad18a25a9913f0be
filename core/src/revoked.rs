//! Revoked sessions packed into hash buckets in Envoy's shared data, like the keys
//! ([`crate::keystore`]), so that a revocation costs each Envoy one bucket write and a
//! check reads one bucket, whatever the number of revocations in force.
//!
//! A session's bucket is picked by the first 12 bits of the SHA-256 of its id (4 096
//! buckets: ~300 records, 7 KiB, each at 1.2 M revocations). Record: the first 16 bytes of
//! that digest · the time (u64 LE) after which no token of the session is valid anyway.
//! Records past that time are dropped whenever their bucket is rewritten.

use sha2::{Digest, Sha256};

use crate::key::KeyHash;
use crate::UnixTime;

pub const REVOKED_BUCKETS: usize = 4_096;
const ID: usize = 16;
const RECORD: usize = ID + 8;

/// Where decide checks revocations: the snapshot's own map, or the filter's shared buckets.
pub trait RevocationLookup {
    fn is_revoked(&self, sid: &str) -> bool;
}

/// The SHA-256 of a session id: what admin sorts a full snapshot's revocations by.
pub fn digest(sid: &str) -> KeyHash {
    KeyHash(Sha256::digest(sid.as_bytes()).into())
}

pub fn bucket_of(digest: &KeyHash) -> u16 {
    u16::from_be_bytes([digest.0[0], digest.0[1]]) >> 4
}

pub fn record(digest: &KeyHash, until: UnixTime) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[..ID].copy_from_slice(&digest.0[..ID]);
    out[ID..].copy_from_slice(&until.to_le_bytes());
    out
}

fn until_of(record: &[u8]) -> UnixTime {
    let mut b = [0u8; 8];
    b.copy_from_slice(&record[ID..RECORD]);
    u64::from_le_bytes(b)
}

/// Whether `digest` is in the bucket. A malformed bucket reads as "revoked" (fail closed).
pub fn contains(bucket: &[u8], digest: &KeyHash) -> bool {
    !bucket.len().is_multiple_of(RECORD) || bucket.chunks_exact(RECORD).any(|r| r[..ID] == digest.0[..ID])
}

/// The bucket with `digest` revoked until `until`, and every record that ended by `now`
/// dropped. A malformed bucket is rebuilt from scratch rather than trusted.
pub fn insert(bucket: &[u8], digest: &KeyHash, until: UnixTime, now: UnixTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + RECORD);
    if bucket.len().is_multiple_of(RECORD) {
        for r in bucket.chunks_exact(RECORD).filter(|r| r[..ID] != digest.0[..ID] && until_of(r) > now) {
            out.extend_from_slice(r);
        }
    }
    if until > now {
        out.extend_from_slice(&record(digest, until));
    }
    out
}

pub fn count(bucket: &[u8]) -> usize {
    bucket.len() / RECORD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_round_trip_and_expire_on_rewrite() {
        let (a, b, c) = (digest("ses_a"), digest("ses_b"), digest("ses_c"));
        let mut bucket = insert(&[], &a, 100, 10);
        bucket = insert(&bucket, &b, 20, 10);
        assert!(contains(&bucket, &a) && contains(&bucket, &b) && !contains(&bucket, &c));
        assert_eq!(count(&bucket), 2);
        // Rewritten at 30: b has ended and goes; re-revoking a replaces it.
        bucket = insert(&bucket, &a, 200, 30);
        assert_eq!(count(&bucket), 1);
        assert!(contains(&bucket, &a) && !contains(&bucket, &b));
        assert!(insert(&[], &c, 5, 10).is_empty(), "an already ended revocation is not stored");
        // Malformed: every session there reads revoked; a rewrite starts over.
        assert!(contains(&bucket[..7], &c));
        assert_eq!(count(&insert(&bucket[..7], &c, 99, 10)), 1);
        assert!(usize::from(bucket_of(&KeyHash([0xff; 32]))) < REVOKED_BUCKETS);
    }
}
