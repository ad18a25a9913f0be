//! Key records packed into hash buckets, so one Envoy can hold a million keys once, in its
//! shared data, instead of once per worker VM. A key's bucket is picked by the first two
//! bytes of its hash (65 536 buckets: ~15 keys, ~1 KiB each at a million keys); a request
//! reads one bucket and scans it. Pure byte work: the filter moves buckets in and out of
//! shared data; native tests use [`crate::Snapshot`]'s map through the same [`KeyLookup`].
//!
//! Record layout: hash (32) · flags (1: kind, mode, active, has-expiry, has-extras) · expiry
//! (8, only with the flag) · id (len u8 + bytes) · business (len u8 + bytes) · scope count
//! (u8) · scopes (len u8 + bytes each) · extras (only with the flag: len u16 LE + a JSON
//! object of the optional per-key policy, [`Extras`]). Most keys have no extras, so they
//! pay nothing for them; fields an older filter does not know are ignored.

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::key::{KeyHash, KeyKind, Mode};
use crate::ratelimit::Limit;
use crate::snapshot::{KeyEntry, KeyRecord, Snapshot};

pub const BUCKETS: usize = 65_536;

/// Where decide looks keys up: the snapshot's own map, or the filter's shared buckets.
pub trait KeyLookup {
    fn key(&self, hash: &KeyHash) -> Option<KeyRecord>;
}

/// The native snapshot's map answers the same way the shared buckets do.
impl KeyLookup for Snapshot {
    fn key(&self, hash: &KeyHash) -> Option<KeyRecord> {
        Snapshot::key(self, hash).cloned()
    }
}

pub fn bucket_of(hash: &KeyHash) -> u16 {
    u16::from_be_bytes([hash.0[0], hash.0[1]])
}

const PK: u8 = 1;
const TEST: u8 = 2;
const ACTIVE: u8 = 4;
const EXPIRES: u8 = 8;
const EXTRAS: u8 = 16;

/// A key's optional policy, packed as JSON after its scopes.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Extras {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_ips: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limits: Option<Vec<Limit>>,
    /// Uses left (see [`crate::credits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits: Option<crate::credits::CreditsEntry>,
}

fn push_str(out: &mut Vec<u8>, s: &str) -> bool {
    match u8::try_from(s.len()) {
        Ok(len) => {
            out.push(len);
            out.extend_from_slice(s.as_bytes());
            true
        }
        Err(_) => false,
    }
}

/// Packs a record; `None` when a field is too long to pack (ids and scopes ≤ 255 bytes,
/// ≤ 255 scopes), which admin never produces.
pub fn encode(entry: &KeyEntry) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(&entry.hash.0);
    let mut flags = 0;
    if entry.kind == KeyKind::Pk {
        flags |= PK;
    }
    if entry.mode == Mode::Test {
        flags |= TEST;
    }
    if entry.active {
        flags |= ACTIVE;
    }
    if entry.expires_at.is_some() {
        flags |= EXPIRES;
    }
    let extras = Extras { allowed_ips: entry.allowed_ips.clone(), rate_limits: entry.rate_limits.clone(), credits: entry.credits };
    let extras = if extras == Extras::default() { None } else { Some(serde_json::to_vec(&extras).ok()?) };
    if extras.is_some() {
        flags |= EXTRAS;
    }
    out.push(flags);
    if let Some(at) = entry.expires_at {
        out.extend_from_slice(&at.to_le_bytes());
    }
    let ok = push_str(&mut out, &entry.id) && push_str(&mut out, &entry.business);
    out.push(u8::try_from(entry.scopes.len()).ok()?);
    if !(ok && entry.scopes.iter().all(|s| push_str(&mut out, s))) {
        return None;
    }
    if let Some(extras) = extras {
        out.extend_from_slice(&u16::try_from(extras.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&extras);
    }
    Some(out)
}

/// A cursor over untrusted bytes: every read is checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = usize::from(self.byte()?);
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// Skips one record after its hash; returns where it ended.
    fn skip_rest(&mut self, flags: u8) -> Option<()> {
        if flags & EXPIRES != 0 {
            self.take(8)?;
        }
        self.string()?;
        self.string()?;
        for _ in 0..self.byte()? {
            self.string()?;
        }
        if flags & EXTRAS != 0 {
            self.extras_bytes()?;
        }
        Some(())
    }

    fn extras_bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.take(2)?;
        self.take(usize::from(u16::from_le_bytes([len[0], len[1]])))
    }

    fn record_rest(&mut self, flags: u8) -> Option<KeyRecord> {
        let expires_at = if flags & EXPIRES != 0 {
            let mut b = [0u8; 8];
            b.copy_from_slice(self.take(8)?);
            Some(u64::from_le_bytes(b))
        } else {
            None
        };
        let id = self.string()?.to_owned();
        let business = self.string()?.to_owned();
        let count = self.byte()?;
        let scopes = (0..count).map(|_| self.string().map(str::to_owned)).collect::<Option<Vec<_>>>()?;
        // Unreadable extras make the record unreadable: the key is refused, never let
        // through without its allowlist or limits.
        let extras = match flags & EXTRAS {
            0 => Extras::default(),
            _ => serde_json::from_slice(self.extras_bytes()?).ok()?,
        };
        Some(KeyRecord {
            id,
            business,
            kind: if flags & PK != 0 { KeyKind::Pk } else { KeyKind::Sk },
            mode: if flags & TEST != 0 { Mode::Test } else { Mode::Live },
            scopes,
            expires_at,
            active: flags & ACTIVE != 0,
            allowed_ips: extras.allowed_ips,
            rate_limits: extras.rate_limits,
            credits: extras.credits,
        })
    }
}

/// Finds `hash` in a bucket. A malformed bucket reads as "not found" (fail closed).
pub fn find(bucket: &[u8], hash: &KeyHash) -> Option<KeyRecord> {
    let mut r = Reader { bytes: bucket, at: 0 };
    while r.at < bucket.len() {
        let this = r.take(32)?;
        let flags = r.byte()?;
        if this == hash.0 {
            return r.record_rest(flags);
        }
        r.skip_rest(flags)?;
    }
    None
}

/// The byte ranges of a bucket's records with their hashes; `None` if malformed.
fn records(bucket: &[u8]) -> Option<Vec<(&[u8], std::ops::Range<usize>)>> {
    let mut r = Reader { bytes: bucket, at: 0 };
    let mut out = Vec::new();
    while r.at < bucket.len() {
        let start = r.at;
        let hash = r.take(32)?;
        let flags = r.byte()?;
        r.skip_rest(flags)?;
        out.push((hash, start..r.at));
    }
    Some(out)
}

/// The bucket with `hash`'s record replaced by `record` (or removed when `None`).
/// A malformed bucket is rebuilt from scratch rather than trusted.
pub fn replace(bucket: &[u8], hash: &KeyHash, record: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + record.map_or(0, <[u8]>::len));
    for (h, range) in records(bucket).unwrap_or_default() {
        if h != hash.0 {
            out.extend_from_slice(&bucket[range]);
        }
    }
    if let Some(record) = record {
        out.extend_from_slice(record);
    }
    out
}

pub fn count(bucket: &[u8]) -> usize {
    records(bucket).map_or(0, |r| r.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiKey;

    fn entry(seed: u8, scopes: Vec<String>, expires_at: Option<u64>) -> KeyEntry {
        let key = ApiKey::generate(KeyKind::Pk, Mode::Test, (0..200u8).map(|i| i.wrapping_mul(17).wrapping_add(seed))).unwrap();
        KeyEntry {
            hash: key.hash(),
            id: format!("key_{seed}"),
            business: "biz_x".into(),
            kind: KeyKind::Pk,
            mode: Mode::Test,
            scopes,
            expires_at,
            active: seed.is_multiple_of(2),
            allowed_ips: vec![],
            rate_limits: None,
            credits: None,
        }
    }

    #[test]
    fn records_round_trip_through_a_bucket() {
        let a = entry(1, vec![], None);
        let b = entry(2, vec!["reports:read".into(), "x".into()], Some(1_900_000_000));
        let mut bucket = replace(&[], &a.hash, Some(&encode(&a).unwrap()));
        bucket = replace(&bucket, &b.hash, Some(&encode(&b).unwrap()));
        assert_eq!(count(&bucket), 2);
        let got = find(&bucket, &b.hash).unwrap();
        assert_eq!(
            (got.id.as_str(), got.scopes.len(), got.expires_at, got.active, got.kind, got.mode),
            ("key_2", 2, Some(1_900_000_000), true, KeyKind::Pk, Mode::Test)
        );
        assert!(!find(&bucket, &a.hash).unwrap().active);
        // Upsert replaces, removal removes.
        let a2 = KeyEntry { active: true, ..a.clone() };
        bucket = replace(&bucket, &a.hash, Some(&encode(&a2).unwrap()));
        assert_eq!(count(&bucket), 2);
        assert!(find(&bucket, &a.hash).unwrap().active);
        bucket = replace(&bucket, &b.hash, None);
        assert_eq!(count(&bucket), 1);
        assert!(find(&bucket, &b.hash).is_none());
    }

    #[test]
    fn malformed_buckets_never_panic_and_find_nothing() {
        let a = entry(1, vec!["s".into()], Some(5));
        let good = encode(&a).unwrap();
        for cut in 0..good.len() {
            assert!(find(&good[..cut], &a.hash).is_none());
            let _ = replace(&good[..cut], &a.hash, None);
        }
        let mut junk = good.clone();
        junk[41] = 200; // hash 32 + flags 1 + expiry 8: the id length, now past the end
        assert!(find(&junk, &a.hash).is_none());
        assert!(replace(&junk, &a.hash, None).is_empty());
    }

    #[test]
    fn extras_round_trip_and_fail_closed() {
        let plain = entry(4, vec!["s".into()], None);
        let mut rich = entry(6, vec!["s".into()], Some(7));
        rich.allowed_ips = vec![Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("2001:db8::/32").unwrap()];
        rich.rate_limits = Some(vec![Limit::parse("5/s").unwrap(), Limit::parse("100/h").unwrap()]);
        let mut bucket = replace(&[], &plain.hash, Some(&encode(&plain).unwrap()));
        bucket = replace(&bucket, &rich.hash, Some(&encode(&rich).unwrap()));
        bucket = replace(&bucket, &entry(8, vec![], None).hash, Some(&encode(&entry(8, vec![], None)).unwrap()));
        assert_eq!(count(&bucket), 3, "a record with extras is skipped whole");
        let got = find(&bucket, &rich.hash).unwrap();
        assert_eq!((got.allowed_ips, got.rate_limits), (rich.allowed_ips.clone(), rich.rate_limits.clone()));
        let got = find(&bucket, &plain.hash).unwrap();
        assert!(got.allowed_ips.is_empty() && got.rate_limits.is_none());
        assert_eq!(encode(&plain).unwrap()[32] & EXTRAS, 0, "no extras, no flag");
        // Extras that do not parse: the record reads as absent, never as unrestricted.
        let mut bad = encode(&rich).unwrap();
        let at = bad.len() - 3;
        bad[at] = b'!';
        assert!(find(&bad, &rich.hash).is_none());
        let good = encode(&rich).unwrap();
        for cut in 0..good.len() {
            assert!(find(&good[..cut], &rich.hash).is_none());
        }
    }

    #[test]
    fn credits_travel_in_the_extras_and_bad_extras_read_as_unknown() {
        use crate::credits::{CreditsEntry, Interval, Refill};
        let credits = CreditsEntry { balance: 9, epoch: 4, period: 20_000, refill: Some(Refill { interval: Interval::Day, amount: 50 }) };
        let a = KeyEntry { credits: Some(credits), ..entry(1, vec!["s".into()], Some(5)) };
        let b = entry(2, vec![], None);
        let mut bucket = replace(&[], &a.hash, Some(&encode(&a).unwrap()));
        bucket = replace(&bucket, &b.hash, Some(&encode(&b).unwrap()));
        assert_eq!(count(&bucket), 2, "a record with an extension is skipped whole");
        assert_eq!(find(&bucket, &a.hash).unwrap().credits, Some(credits));
        assert_eq!(find(&bucket, &b.hash).unwrap().credits, None);
        let good = encode(&a).unwrap();
        for cut in 0..good.len() {
            assert!(find(&good[..cut], &a.hash).is_none());
        }
        let mut junk = good.clone();
        let last = junk.len() - 1;
        junk[last] = b'!';
        assert!(find(&junk, &a.hash).is_none(), "a malformed extension fails closed");
    }

    #[test]
    fn oversized_fields_are_refused() {
        let mut e = entry(3, vec![], None);
        e.id = "x".repeat(300);
        assert!(encode(&e).is_none());
    }
}
