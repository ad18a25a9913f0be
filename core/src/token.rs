//! Access tokens: EdDSA-signed JWTs issued by keygate-admin and verified by the filter.
//!
//! The algorithm is pinned (never read from the token), the header must carry our `typ`
//! and a `kid` we know, and the header fields that would make a verifier fetch or trust
//! key material from elsewhere (`jku`, `x5u`, `jwk`, `x5c`) or understand extensions
//! (`crit`, which jsonwebtoken does not enforce) are refused. Time is checked here against
//! the caller's clock, so verification is a pure function.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::key::Mode;
use crate::UnixTime;

/// `typ` of an access token (RFC 9068). Refresh tokens are opaque strings that only
/// admin understands, so neither can pass as the other.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// How long past a token's expiry admin keeps its revoked session in the feed. A verifier
/// must not accept a token later than this after its `exp` (its leeway is at most this),
/// or a revoked token would pass again once its revocation has left the feed.
pub const REVOCATION_MARGIN_SECS: u64 = 60;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// A user id (`usr_…`) for sign-in tokens, a key id (`key_…`) for API-key logins.
    pub sub: String,
    /// The session the token belongs to; revoking it kills the token everywhere.
    pub sid: String,
    pub businesses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Space-separated scopes (RFC 8693 style); empty means no restriction of its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    pub iat: UnixTime,
    pub exp: UnixTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<UnixTime>,
    /// Unique per token, so two logins in the same second still differ.
    pub jti: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is too long")]
    TooLong,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not EdDSA")]
    Algorithm,
    #[error("the token is not an access token")]
    Type,
    #[error("the token carries header fields keygate refuses")]
    ForbiddenHeader,
    #[error("the token's signing key is unknown")]
    UnknownKid,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for another issuer or audience")]
    WrongIssuerOrAudience,
    #[error("the token's session has been revoked")]
    Revoked,
}

/// What a valid token must say about who issued it and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExpectations {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: u64,
}

/// Reads the header and returns the `kid` if the header is one keygate accepts.
/// Cheap (no signature work), so a forged header is refused before any crypto.
pub fn checked_kid(token: &str) -> Result<String, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
        return Err(TokenError::Type);
    }
    if header.crit.is_some() || header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some() {
        return Err(TokenError::ForbiddenHeader);
    }
    header.kid.ok_or(TokenError::UnknownKid)
}

/// Verifies the signature with `key` (the public key for the token's `kid`) and checks
/// the claims against `expect` at time `now`. Session revocation is the caller's check.
pub fn verify(token: &str, key: &DecodingKey, expect: &TokenExpectations, now: UnixTime) -> Result<AccessClaims, TokenError> {
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Time and audience are checked below against the caller's clock, not the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
        _ => TokenError::Malformed,
    })?;
    let claims = data.claims;
    if claims.iss != expect.issuer || claims.aud != expect.audience {
        return Err(TokenError::WrongIssuerOrAudience);
    }
    if now >= claims.exp.saturating_add(expect.leeway) {
        return Err(TokenError::Expired);
    }
    let not_before = claims.nbf.unwrap_or(claims.iat);
    if not_before > now.saturating_add(expect.leeway) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

impl AccessClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }
}
