//! The access-token half of the check: the cheap checks, then the signature, the claims and
//! the session, with a cache of verified tokens and of failed ones.

use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;

use super::denial::{Denial, DenyCode};
use super::pending::{Awaited, Refusal};
use crate::config::Policy;
use crate::key::parse_prefix;
use crate::revoked::RevocationLookup;
use crate::snapshot::Snapshot;
use crate::token::{self, AccessClaims, TokenError};
use crate::UnixTime;

/// How long a token that failed verification is remembered as failed.
pub const FAILED_TOKEN_TTL_SECS: u64 = 60;

/// Access tokens whose signature and claims were verified, so the same token is not
/// verified again until it expires, and tokens that failed, so a forged token costs one
/// signature check per [`FAILED_TOKEN_TTL_SECS`], not one per request. Both are bounded by
/// `capacity` entries: when full, expired entries go, and if that frees nothing that part
/// starts over. A hit still checks expiry, that its signing key is still published and that
/// its session is not revoked, so revocation is immediate. Capacity 0 caches nothing.
#[derive(Debug, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<String, (String, AccessClaims)>,
    /// Failed tokens by a digest of the token (a flood of long forged tokens stays small):
    /// until when the failure is remembered, and why it failed.
    failed: HashMap<[u8; 16], (UnixTime, TokenError)>,
    /// Signature verifications done through this cache.
    signature_checks: u64,
}

fn token_digest(token: &str) -> [u8; 16] {
    let full: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut short = [0u8; 16];
    short.copy_from_slice(&full[..16]);
    short
}

impl TokenCache {
    /// `capacity` 0 disables caching (every request verifies its token).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache { capacity, entries: HashMap::new(), failed: HashMap::new(), signature_checks: 0 }
    }

    /// Verified tokens held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Failed tokens remembered.
    pub fn failed_len(&self) -> usize {
        self.failed.len()
    }

    /// How many token signatures were verified through this cache.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks
    }

    /// Keeps verified claims (the caller skips this when caching is off).
    fn insert(&mut self, token: &str, kid: String, claims: AccessClaims, now: UnixTime, leeway: u64) -> &AccessClaims {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, c)| now < c.exp.saturating_add(leeway));
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        &self.entries.entry(token.to_owned()).or_insert((kid, claims)).1
    }

    fn failure(&self, digest: &[u8; 16], now: UnixTime) -> Option<TokenError> {
        self.failed.get(digest).filter(|(until, _)| *until > now).map(|(_, err)| *err)
    }

    fn remember_failure(&mut self, digest: [u8; 16], err: TokenError, now: UnixTime) {
        if self.capacity == 0 {
            return;
        }
        if self.failed.len() >= self.capacity {
            self.failed.retain(|_, (until, _)| *until > now);
            if self.failed.len() >= self.capacity {
                self.failed.clear();
            }
        }
        self.failed.insert(digest, (now.saturating_add(FAILED_TOKEN_TTL_SECS), err));
    }
}

fn invalid_token(err: TokenError) -> Denial {
    let message = match err {
        TokenError::Expired => "Access token has expired",
        TokenError::Revoked => "Access token's session has been revoked",
        TokenError::UnknownKid => "Access token was signed by an unknown key",
        TokenError::NotYetValid => "Access token is not valid yet",
        TokenError::WrongIssuerOrAudience => "Access token was issued for another service",
        _ => "Invalid access token",
    };
    Denial::new(DenyCode::InvalidToken, message)
}

/// A token that passed the cheap checks, waiting for its signature check.
pub(super) enum TokenStage<'t> {
    /// Verified earlier and still in the cache, unexpired, its signing key still published.
    Cached(&'t str),
    /// To verify with the published key of `kid`.
    Verify(&'t str, String),
}

/// The checks that cost no cryptography: not an API key, header shape, `alg`, `typ` and a
/// published `kid` (or a still-valid cache entry). An unpublished `kid` is a refusal the
/// snapshot may still cure (a signing key rotated in a moment ago).
pub(super) fn precheck_token<'t>(
    policy: &Policy,
    snapshot: &Snapshot,
    token: &'t str,
    now: UnixTime,
    cache: &TokenCache,
) -> Result<TokenStage<'t>, Refusal> {
    if parse_prefix(token).is_some() {
        return Err(Denial::new(DenyCode::InvalidToken, "Authorization carries an API key where an access token is required").into());
    }
    if let Some((kid, claims)) = cache.entries.get(token) {
        if snapshot.signing_key(kid).is_some() {
            if now >= claims.exp.saturating_add(policy.token.leeway) {
                return Err(invalid_token(TokenError::Expired).into());
            }
            return Ok(TokenStage::Cached(token));
        }
    }
    let kid = token::checked_kid(token).map_err(invalid_token)?;
    if snapshot.signing_key(&kid).is_none() {
        return Err(Refusal::unknown(invalid_token(TokenError::UnknownKid), Awaited::SigningKey(kid)));
    }
    Ok(TokenStage::Verify(token, kid))
}

/// The signature (unless cached, or remembered as failed), the claims and the session.
pub(super) fn verify_token<'c>(
    policy: &Policy,
    snapshot: &Snapshot,
    revoked: &dyn RevocationLookup,
    stage: TokenStage<'_>,
    now: UnixTime,
    cache: &'c mut TokenCache,
) -> Result<Cow<'c, AccessClaims>, Denial> {
    let claims = match stage {
        TokenStage::Cached(token) => {
            Cow::Borrowed(cache.entries.get(token).map(|(_, c)| c).ok_or_else(|| invalid_token(TokenError::Malformed))?)
        }
        TokenStage::Verify(token, kid) => {
            let digest = token_digest(token);
            if let Some(err) = cache.failure(&digest, now) {
                return Err(invalid_token(err));
            }
            let key = snapshot.signing_key(&kid).ok_or_else(|| invalid_token(TokenError::UnknownKid))?;
            cache.signature_checks += 1;
            match token::verify(token, key, &policy.token, now) {
                // Not yet valid is the one failure that time can cure.
                Err(TokenError::NotYetValid) => return Err(invalid_token(TokenError::NotYetValid)),
                Err(err) => {
                    cache.remember_failure(digest, err, now);
                    return Err(invalid_token(err));
                }
                Ok(claims) if cache.capacity == 0 => Cow::Owned(claims),
                Ok(claims) => Cow::Borrowed(cache.insert(token, kid, claims, now, policy.token.leeway)),
            }
        }
    };
    if revoked.is_revoked(&claims.sid) {
        return Err(invalid_token(TokenError::Revoked));
    }
    Ok(claims)
}
