//! Passwords: argon2id with OWASP's parameters (m = 19456 KiB, t = 2, p = 1), stored as
//! PHC strings. Hashing runs on the blocking pool, at most a few at once, with a bounded
//! queue in front: past it a request is answered 503 at once rather than waiting behind
//! a flood.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::AdminError;
use crate::random;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 1024;

fn argon2() -> Result<Argon2<'static>, AdminError> {
    let params = Params::new(19_456, 2, 1, None).map_err(|_| AdminError::Internal("argon2 parameters"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(password: &str) -> Result<String, AdminError> {
    let salt_bytes: [u8; 16] = random::array()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(AdminError::PasswordHash)?;
    let hash = argon2()?.hash_password(password.as_bytes(), &salt).map_err(AdminError::PasswordHash)?;
    Ok(hash.to_string())
}

fn verify_now(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        // The parameters come from the PHC string itself.
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => {
            tracing::error!("a stored password hash is not a valid PHC string");
            false
        }
    }
}

/// Seconds a caller refused for a full queue is told to wait.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting, and how many may be.
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
    /// A hash of a random password: verifying against it for an unknown email costs the
    /// same as for a known one, so timing does not tell which emails exist.
    dummy_phc: Arc<str>,
}

impl Passwords {
    /// At most `max_concurrent` hashes at once and `max_queued` more waiting.
    pub fn new(max_concurrent: usize, max_queued: usize) -> Result<Passwords, AdminError> {
        let dummy = random::secret("dummy_")?;
        let max_concurrent = max_concurrent.max(1);
        Ok(Passwords {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: max_concurrent.saturating_add(max_queued),
            dummy_phc: hash_now(&dummy)?.into(),
        })
    }

    /// A place in the queue, or `Busy` when it is full.
    fn admit(&self) -> Result<Admitted, AdminError> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(Arc::clone(&self.admitted));
        if before >= self.max_admitted {
            return Err(AdminError::Busy { retry_after_secs: BUSY_RETRY_AFTER_SECS });
        }
        Ok(admitted)
    }

    pub async fn hash(&self, password: String) -> Result<String, AdminError> {
        let _admitted = self.admit()?;
        let _permit = self.permits.acquire().await.map_err(|_| AdminError::Internal("password hashing is shut down"))?;
        tokio::task::spawn_blocking(move || hash_now(&password)).await?
    }

    /// Whether `password` matches `phc`; with no `phc` (unknown account) it checks against
    /// the dummy hash and answers false, taking the same time.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, AdminError> {
        let _admitted = self.admit()?;
        let _permit = self.permits.acquire().await.map_err(|_| AdminError::Internal("password hashing is shut down"))?;
        let dummy = Arc::clone(&self.dummy_phc);
        tokio::task::spawn_blocking(move || match phc {
            Some(phc) => verify_now(&password, &phc),
            None => {
                let _ = verify_now(&password, &dummy);
                false
            }
        })
        .await
        .map_err(AdminError::from)
    }
}

/// One hash running or waiting; leaves the count when dropped (also when the request is).
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let passwords = Passwords::new(2, 4).unwrap();
        let phc = passwords.hash("correct horse".to_owned()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(passwords.verify("correct horse".to_owned(), Some(phc.clone())).await.unwrap());
        assert!(!passwords.verify("wrong horse".to_owned(), Some(phc)).await.unwrap());
        assert!(!passwords.verify("correct horse".to_owned(), None).await.unwrap());
    }
}
