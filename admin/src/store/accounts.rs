//! Businesses, users, and the hashes of the operator and proxy tokens.

use super::tx::abort;
use keygate_core::ratelimit::Limit;

use super::{Business, Change, Store, StoreError, Ticket, User};

/// Which shared secret a stored hash belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    Operator,
    Proxy,
}

impl TokenRole {
    pub(super) fn meta_key(self) -> &'static [u8] {
        match self {
            TokenRole::Operator => b"operator_token_sha256",
            TokenRole::Proxy => b"proxy_token_sha256",
        }
    }
}

impl Store {
    pub fn token_hash(&self, role: TokenRole) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.trees().meta.get(role.meta_key())?.and_then(|b| <[u8; 32]>::try_from(b.as_ref()).ok()))
    }

    pub fn set_token_hash(&self, role: TokenRole, hash: [u8; 32]) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.meta.get_raw(role.meta_key())?.as_deref() != Some(&hash[..]) {
                tx.meta.put_raw(role.meta_key(), &hash)?;
            }
            Ok(())
        })?;
        Ok(ticket)
    }

    pub fn create_business(&self, business: &Business) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.businesses.contains(business.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.businesses.put(business.id.as_bytes(), business)
        })?;
        Ok(ticket)
    }

    /// Sets or clears (`Some(None)`) a business's per-key and shared limits, leaving a
    /// `None` one as it is; a changelog entry tells the filters. Unchanged, writes nothing.
    pub fn set_business_limits(
        &self,
        id: &str,
        per_key: Option<Option<Vec<Limit>>>,
        shared: Option<Option<Vec<Limit>>>,
    ) -> Result<(Business, Ticket), StoreError> {
        self.write(|tx| {
            let Some(mut business) = tx.businesses.get::<Business>(id.as_bytes())? else {
                return abort(StoreError::UnknownBusiness);
            };
            let before = business.limits();
            if let Some(per_key) = &per_key {
                business.per_key_limits = per_key.clone();
            }
            if let Some(shared) = &shared {
                business.shared_limits = shared.clone();
            }
            if business.limits() != before {
                tx.businesses.put(id.as_bytes(), &business)?;
                tx.append(Change::BusinessLimits { limits: business.limits() })?;
            }
            Ok(business)
        })
    }

    pub fn business(&self, id: &str) -> Result<Option<Business>, StoreError> {
        self.trees().businesses.read(id.as_bytes())
    }

    pub fn create_user(&self, user: &User) -> Result<Ticket, StoreError> {
        let (_, ticket) = self.write(|tx| {
            if tx.users_by_email.contains(user.email.as_bytes())? {
                return abort(StoreError::EmailTaken);
            }
            for business in &user.businesses {
                if !tx.businesses.contains(business.as_bytes())? {
                    return abort(StoreError::UnknownBusiness);
                }
            }
            if tx.users.contains(user.id.as_bytes())? {
                return abort(StoreError::Collision);
            }
            tx.users.put(user.id.as_bytes(), user)?;
            tx.users_by_email.put_raw(user.email.as_bytes(), user.id.as_bytes())
        })?;
        Ok(ticket)
    }

    pub fn email_taken(&self, email: &str) -> Result<bool, StoreError> {
        self.trees().users_by_email.contains_key(email.as_bytes())
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.trees().users.read(id.as_bytes())
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match self.trees().users_by_email.get(email.as_bytes())? {
            None => Ok(None),
            Some(id) => self.trees().users.read(&id),
        }
    }
}
