//! The keys that sign access tokens, and their rotation.

use keygate_core::UnixTime;

use super::tx::{abort, decode};
use super::{Change, SigningKey, Store, StoreError, Ticket};

impl Store {
    pub fn signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().signing_keys.iter() {
            let (_, bytes) = item?;
            out.push(decode("signing_keys", &bytes)?);
        }
        Ok(out)
    }

    /// [`Store::signing_keys`] read between two commits: a plain read can land in the middle
    /// of a rotation's commit and see the old key retired but not yet the new one.
    pub fn signing_keys_settled(&self) -> Result<Vec<SigningKey>, StoreError> {
        let _writer = self.inner.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.signing_keys()
    }

    /// Stores a new signing key and publishes its public half through the changelog.
    pub fn add_signing_key(&self, key: &SigningKey) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.signing_keys.contains(key.kid.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.signing_keys.put(key.kid.as_bytes(), key)?;
            tx.append(Change::SigningKeyAdded { key: key.public.clone() })?;
            Ok(())
        })?;
        Ok(ticket)
    }

    /// Makes `key` the signer: every unretired key is retired now and withdrawn after
    /// `remove_after` (when every token it signed has expired). Returns the kid of the
    /// signer it replaced (the newest key retired).
    pub fn rotate_signing_key(&self, key: &SigningKey, remove_after: UnixTime) -> Result<(Option<String>, Ticket), StoreError> {
        // Listed under the writer lock: a list taken before it could miss a key that a
        // concurrent rotation adds, which would then never be retired.
        self.write_after(Store::signing_keys, |tx, all| {
            if tx.signing_keys.contains(key.kid.as_bytes())? {
                return abort(StoreError::Collision);
            }
            let mut replaced: Option<(UnixTime, String)> = None;
            for old in all {
                if let Some(mut old) = tx.signing_keys.get::<SigningKey>(old.kid.as_bytes())? {
                    if old.retired_at.is_none() {
                        old.retired_at = Some(tx.now);
                        old.remove_after = Some(remove_after);
                        tx.signing_keys.put(old.kid.as_bytes(), &old)?;
                        if replaced.as_ref().is_none_or(|(at, _)| old.created_at >= *at) {
                            replaced = Some((old.created_at, old.kid.clone()));
                        }
                    }
                }
            }
            tx.signing_keys.put(key.kid.as_bytes(), key)?;
            tx.append(Change::SigningKeyAdded { key: key.public.clone() })?;
            Ok(replaced.map(|(_, kid)| kid))
        })
    }
}
