//! The access-token half of the check: the cheap checks, then the signature, the claims and
//! the session, with a cache of verified tokens and of failed ones.

use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;

use super::denial::{Denial, DenyCode};
use super::pending::{Awaited, Refusal};
use crate::config::Policy;
use crate::key::parse_prefix;
use crate::oidc::{self, IssuerStage};
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
    entries: HashMap<String, (Signer, AccessClaims)>,
    /// Failed tokens by a digest of the token (a flood of long forged tokens stays small):
    /// until when the failure is remembered, and why it failed.
    failed: HashMap<[u8; 16], (UnixTime, TokenError)>,
    /// Signature verifications done through this cache.
    signature_checks: u64,
}

/// Whose key verified a cached token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signer {
    /// One of admin's signing keys, by `kid`.
    Own(String),
    /// A key of the trusted issuer registration `id` ([`crate::oidc`]).
    Issuer { id: String, kid: String },
}

impl Signer {
    /// Whether the key is still published, and (for an issuer's token) the registration
    /// is still the one a token from `iss` presented for `business` is checked against.
    fn still_holds(&self, snapshot: &Snapshot, iss: &str, business: Option<&str>) -> bool {
        match self {
            Signer::Own(kid) => snapshot.signing_key(kid).is_some(),
            Signer::Issuer { id, kid } => snapshot.issuers().chosen(iss, business).is_some_and(|i| i.entry().id == *id && i.has_key(kid)),
        }
    }
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
    fn insert(&mut self, token: &str, signer: Signer, claims: AccessClaims, now: UnixTime, leeway: u64) -> &AccessClaims {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, c)| now < c.exp.saturating_add(leeway));
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        // Replaces an entry of the same token verified for another issuer registration.
        let slot = self.entries.entry(token.to_owned()).or_insert_with(|| (signer.clone(), claims.clone()));
        *slot = (signer, claims);
        &slot.1
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
    /// A token from a trusted issuer, to verify with that issuer's pinned key.
    VerifyIssuer(&'t str, IssuerStage),
}

/// The checks that cost no cryptography: not an API key, header shape, `alg`, `typ` and a
/// published `kid` (or a still-valid cache entry). An unpublished `kid` is a refusal the
/// snapshot may still cure (a signing key rotated in a moment ago). A token that is not
/// one of admin's (its header or `kid` is not) but whose `iss` names a trusted issuer is
/// checked against that issuer's registration for `business` instead ([`oidc::precheck`]);
/// its unknown `kid` is refused at once.
pub(super) fn precheck_token<'t>(
    policy: &Policy,
    snapshot: &Snapshot,
    token: &'t str,
    business: Option<&str>,
    now: UnixTime,
    cache: &TokenCache,
) -> Result<TokenStage<'t>, Refusal> {
    if parse_prefix(token).is_some() {
        return Err(Denial::new(DenyCode::InvalidToken, "Authorization carries an API key where an access token is required").into());
    }
    if let Some((signer, claims)) = cache.entries.get(token) {
        if signer.still_holds(snapshot, &claims.iss, business) {
            if now >= claims.exp.saturating_add(policy.token.leeway) {
                return Err(invalid_token(TokenError::Expired).into());
            }
            return Ok(TokenStage::Cached(token));
        }
    }
    let own = token::checked_kid(token);
    if let Ok(kid) = &own {
        if snapshot.signing_key(kid).is_some() {
            return Ok(TokenStage::Verify(token, kid.clone()));
        }
    }
    if let Some(external) = oidc::precheck(snapshot.issuers(), token, business) {
        return external.map(|stage| TokenStage::VerifyIssuer(token, stage)).map_err(|e| invalid_token(e).into());
    }
    let kid = own.map_err(invalid_token)?;
    Err(Refusal::unknown(invalid_token(TokenError::UnknownKid), Awaited::SigningKey(kid)))
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
            let (signer, claims) = cache.entries.get(token).ok_or_else(|| invalid_token(TokenError::Malformed))?;
            if matches!(signer, Signer::Issuer { .. }) {
                // An identity provider's token has no keygate session to revoke.
                return Ok(Cow::Borrowed(claims));
            }
            Cow::Borrowed(claims)
        }
        TokenStage::VerifyIssuer(token, stage) => {
            let digest = token_digest(token);
            if let Some(err) = cache.failure(&digest, now) {
                return Err(invalid_token(err));
            }
            cache.signature_checks += 1;
            return match oidc::verify(snapshot.issuers(), token, &stage, policy.token.leeway, now) {
                Err(TokenError::NotYetValid) => Err(invalid_token(TokenError::NotYetValid)),
                Err(err) => {
                    cache.remember_failure(digest, err, now);
                    Err(invalid_token(err))
                }
                Ok(claims) if cache.capacity == 0 => Ok(Cow::Owned(claims)),
                Ok(claims) => {
                    let signer = Signer::Issuer { id: stage.id.clone(), kid: stage.kid.clone() };
                    Ok(Cow::Borrowed(cache.insert(token, signer, claims, now, policy.token.leeway)))
                }
            };
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
                Ok(claims) => Cow::Borrowed(cache.insert(token, Signer::Own(kid), claims, now, policy.token.leeway)),
            }
        }
    };
    if revoked.is_revoked(&claims.sid) {
        return Err(invalid_token(TokenError::Revoked));
    }
    Ok(claims)
}
