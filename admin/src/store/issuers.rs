//! Trusted issuers (a business's own identity provider): registered, listed, removed, and
//! their pinned signing keys replaced when the provider's change. Every change reaches the
//! filters through the changelog as the issuer's whole [`IssuerEntry`](keygate_core::oidc::IssuerEntry).

use keygate_core::oidc::{IssuerEntry, IssuerKey};

use super::tx::{abort, decode};
use super::{Change, IssuerRecord, Store, StoreError, Ticket};

impl Store {
    /// Every registered issuer, by id.
    pub fn issuers(&self) -> Result<Vec<IssuerRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.trees().issuers.iter() {
            let (_, bytes) = item?;
            out.push(decode("issuers", &bytes)?);
        }
        Ok(out)
    }

    pub fn issuer(&self, id: &str) -> Result<Option<IssuerRecord>, StoreError> {
        self.trees().issuers.read(id.as_bytes())
    }

    /// What the feed carries of every issuer.
    pub(super) fn issuer_entries(&self) -> Result<Vec<IssuerEntry>, StoreError> {
        Ok(self.issuers()?.iter().map(IssuerRecord::entry).collect())
    }

    /// Registers an issuer for its business: refused if the business is unknown or the same
    /// `iss` is already registered for it.
    pub fn create_issuer(&self, record: &IssuerRecord) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write_after(Store::issuers, |tx, all| {
            if !tx.businesses.contains(record.business.as_bytes())? {
                return abort(StoreError::UnknownBusiness);
            }
            if all.iter().any(|i| i.business == record.business && i.issuer == record.issuer) {
                return abort(StoreError::IssuerExists);
            }
            if tx.issuers.contains(record.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.issuers.put(record.id.as_bytes(), record)?;
            tx.append(Change::IssuerUpsert { issuer: record.entry() })?;
            Ok(())
        })?;
        Ok(ticket)
    }

    /// Removes an issuer: its tokens are refused once the feed has reached the proxies.
    pub fn remove_issuer(&self, id: &str) -> Result<(IssuerRecord, Ticket), StoreError> {
        self.write(|tx| {
            let Some(record) = tx.issuers.get::<IssuerRecord>(id.as_bytes())? else {
                return abort(StoreError::UnknownIssuer);
            };
            tx.issuers.remove(id.as_bytes())?;
            tx.append(Change::IssuerRemoved { id: id.to_owned() })?;
            Ok(record)
        })
    }

    /// Pins `keys` (and the JWKS URL they came from) for issuer `id` if they differ from
    /// what is pinned: `Some` with the new record when they did (a changelog entry was
    /// written), `None` when nothing changed or the issuer is gone.
    pub fn pin_issuer_keys(
        &self,
        id: &str,
        keys: &[IssuerKey],
        jwks_uri: Option<&str>,
    ) -> Result<(Option<IssuerRecord>, Ticket), StoreError> {
        self.write(|tx| {
            let Some(mut record) = tx.issuers.get::<IssuerRecord>(id.as_bytes())? else { return Ok(None) };
            if record.keys == keys && (jwks_uri.is_none() || record.jwks_uri.as_deref() == jwks_uri) {
                return Ok(None);
            }
            record.keys = keys.to_vec();
            if let Some(uri) = jwks_uri {
                record.jwks_uri = Some(uri.to_owned());
            }
            record.keys_changed_at = tx.now;
            tx.issuers.put(id.as_bytes(), &record)?;
            tx.append(Change::IssuerUpsert { issuer: record.entry() })?;
            Ok(Some(record))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::testing::with_business;
    use crate::store::IssuerSource;

    fn record(id: &str, business: &str, kid: &str) -> IssuerRecord {
        IssuerRecord {
            id: id.into(),
            business: business.into(),
            issuer: "https://idp.example.test".into(),
            source: IssuerSource::Static,
            jwks_uri: None,
            audiences: vec!["api".into()],
            algorithms: vec!["EdDSA".into()],
            businesses_claim: "org".into(),
            keys: vec![key(kid)],
            created_at: 1,
            keys_changed_at: 1,
        }
    }

    fn key(kid: &str) -> IssuerKey {
        IssuerKey {
            kid: kid.into(),
            kty: "OKP".into(),
            alg: None,
            crv: Some("Ed25519".into()),
            n: None,
            e: None,
            x: Some("x".into()),
            y: None,
        }
    }

    #[test]
    fn issuers_reach_the_feed_and_only_key_changes_are_written() {
        let (_dir, store) = with_business(100);
        let head = store.head();
        let _ = store.create_issuer(&record("iss_1", "biz_a", "k1")).unwrap();
        assert!(matches!(store.create_issuer(&record("iss_2", "biz_a", "k1")), Err(StoreError::IssuerExists)));
        assert!(matches!(store.create_issuer(&record("iss_3", "biz_nope", "k1")), Err(StoreError::UnknownBusiness)));
        let full = store.full_snapshot(0).unwrap();
        assert_eq!(full.issuers, vec![record("iss_1", "biz_a", "k1").entry()]);
        // The same keys again: nothing written.
        let (same, _) = store.pin_issuer_keys("iss_1", &[key("k1")], None).unwrap();
        assert!(same.is_none());
        assert_eq!(store.head(), head + 1);
        let (changed, _) = store.pin_issuer_keys("iss_1", &[key("k2")], None).unwrap();
        assert_eq!(changed.unwrap().keys, vec![key("k2")]);
        let delta = store.delta(head, store.head(), 0).unwrap();
        assert_eq!(delta.issuers.len(), 1);
        assert_eq!(delta.issuers[0].keys, vec![key("k2")]);
        let (removed, _) = store.remove_issuer("iss_1").unwrap();
        assert_eq!(removed.id, "iss_1");
        assert!(matches!(store.remove_issuer("iss_1"), Err(StoreError::UnknownIssuer)));
        let delta = store.delta(head, store.head(), 0).unwrap();
        assert!(delta.issuers.is_empty());
        assert_eq!(delta.removed_issuers, vec!["iss_1".to_string()]);
        assert!(store.full_snapshot(0).unwrap().issuers.is_empty());
        // A page of a paged snapshot carries them on the first page only.
        let _ = store.create_issuer(&record("iss_4", "biz_a", "k1")).unwrap();
        let (first, _) = store.snapshot_page(0, None, 10, false).unwrap();
        assert_eq!(first.issuers.len(), 1);
    }
}
