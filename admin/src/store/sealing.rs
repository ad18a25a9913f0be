//! Bringing the stored signing seeds under the configured seal keys, once per start.

use super::{SigningKey, Store, StoreError};
use crate::seal::SealKeys;

impl Store {
    /// In one transaction, seals with the first of `keys` every stored signing seed that is in
    /// plaintext or sealed with another key, after checking that every seed opens. Refuses
    /// (writing nothing) a seed sealed with a key not among `keys` (with no `keys`, any sealed
    /// seed). Returns how many were sealed anew; the caller flushes.
    pub fn seal_signing_keys(&self, keys: Option<&SealKeys>) -> Result<usize, StoreError> {
        // Listed under the write lock: a key another replica adds meanwhile is not missed.
        let (resealed, _ticket) = self.write_after(Store::signing_keys, |tx, all: &Vec<SigningKey>| {
            let mut resealed = 0;
            for key in all {
                if let Some(sealed) = key.resealed(keys)? {
                    tx.signing_keys.put(key.kid.as_bytes(), &sealed)?;
                    resealed += 1;
                }
            }
            Ok(resealed)
        })?;
        Ok(resealed)
    }
}
