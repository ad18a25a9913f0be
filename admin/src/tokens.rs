//! Token signing and verification. Admin signs access tokens with its current Ed25519
//! key (created on first start, seed kept in the store, sealed with the first seal key when
//! there is one, never logged or served) and publishes every public key in the JWKS and the
//! snapshot.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use jsonwebtoken::DecodingKey;
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::SigningKeyEntry;
use keygate_core::token::{self, TokenError, TokenExpectations};
use keygate_core::{AccessClaims, Mode, UnixTime};
use serde_json::json;

use crate::config::Config;
use crate::error::AdminError;
use crate::random;
use crate::seal::SealKeys;
use crate::store::{IssuedToken, SigningKey, Store};

pub const KID_PREFIX: &str = "sig_";
const KID_LEN: usize = 12;
const JTI_LEN: usize = 22;

/// Who a token speaks for and what it may do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `usr_…` for a sign-in, `key_…` for an API-key login.
    pub sub: String,
    pub sid: String,
    pub businesses: Vec<String>,
    pub mode: Option<Mode>,
    /// Space-separated scopes.
    pub scope: String,
}

/// The signing keys in use: swapped whole when a key is rotated in or withdrawn.
struct Keys {
    signer: SigningKeyPair,
    /// Every stored key's pair by kid, so claims picked just before a rotation (or a
    /// reload after one made through another replica) are still signed by the key they
    /// name, which stays published until its `remove_after`.
    pairs: HashMap<String, SigningKeyPair>,
    verifiers: HashMap<String, DecodingKey>,
    published: Vec<SigningKeyEntry>,
}

pub struct TokenService {
    issuer: String,
    audience: String,
    leeway: u64,
    /// Open the stored seeds and seal new ones (none: a sled store keeping them in plaintext).
    seal_keys: Option<SealKeys>,
    keys: RwLock<Arc<Keys>>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").field("kid", &self.signer_kid()).finish_non_exhaustive()
    }
}

fn new_signing_key(seal_keys: Option<&SealKeys>) -> Result<SigningKey, AdminError> {
    let seed: [u8; 32] = random::array()?;
    let kid = format!("{KID_PREFIX}{}", random::base62_string(KID_LEN)?);
    let pair = SigningKeyPair::from_seed(kid.clone(), seed);
    let mut key = SigningKey {
        kid,
        seed_hex: String::new(),
        sealed_seed: None,
        public: pair.public_entry(),
        created_at: crate::clock::now(),
        retired_at: None,
        remove_after: None,
    };
    key.set_seed(&seed, seal_keys)?;
    Ok(key)
}

fn keys_of(stored: &[SigningKey], seal_keys: Option<&SealKeys>) -> Result<Keys, AdminError> {
    let current =
        stored.iter().filter(|k| k.retired_at.is_none()).max_by_key(|k| k.created_at).ok_or(AdminError::Internal("no signing key"))?;
    let signer = SigningKeyPair::from_seed(current.kid.clone(), current.seed(seal_keys)?);
    let mut verifiers = HashMap::new();
    let mut pairs = HashMap::new();
    let mut published = Vec::new();
    for key in stored {
        pairs.insert(key.kid.clone(), SigningKeyPair::from_seed(key.kid.clone(), key.seed(seal_keys)?));
        let decoding = DecodingKey::from_ed_components(&key.public.x).map_err(AdminError::Signing)?;
        verifiers.insert(key.kid.clone(), decoding);
        published.push(key.public.clone());
    }
    Ok(Keys { signer, pairs, verifiers, published })
}

impl TokenService {
    /// Loads the signing keys, creating the first one if the store has none. The newest
    /// unretired key signs; every stored key's public half is published.
    pub fn load(store: &Store, config: &Config) -> Result<TokenService, AdminError> {
        let seal_keys = config.seal_keys.clone();
        let mut stored = store.signing_keys()?;
        if !stored.iter().any(|k| k.retired_at.is_none()) {
            let key = new_signing_key(seal_keys.as_ref())?;
            let _ticket = store.add_signing_key(&key)?; // made durable by the caller's flush
            tracing::info!(kid = %key.kid, "created the first token signing key");
            stored.push(key);
        }
        Ok(TokenService {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.token_leeway_secs,
            keys: RwLock::new(Arc::new(keys_of(&stored, seal_keys.as_ref())?)),
            seal_keys,
        })
    }

    fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the signing keys from the store (after a rotation or a withdrawal).
    pub fn reload(&self, store: &Store) -> Result<(), AdminError> {
        // Read under the lock: of two concurrent reloads, the later one to swap in also
        // read later, so an older view never replaces a newer one.
        let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(keys_of(&store.signing_keys_settled()?, self.seal_keys.as_ref())?);
        Ok(())
    }

    /// Creates a new signing key and makes it the signer; the previous one stays
    /// published until `remove_after`. Returns the new kid, the kid it replaced and the
    /// ticket to wait on.
    pub fn rotate(&self, store: &Store, remove_after: UnixTime) -> Result<(String, Option<String>, crate::store::Ticket), AdminError> {
        let key = new_signing_key(self.seal_keys.as_ref())?;
        let (previous, ticket) = store.rotate_signing_key(&key, remove_after)?;
        self.reload(store)?;
        Ok((key.kid, previous, ticket))
    }

    pub fn signer_kid(&self) -> String {
        self.keys().signer.kid().to_owned()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// New claims with a fresh `jti`, issued at `iat` and valid until `exp`.
    pub fn claims(&self, grant: Grant, iat: UnixTime, exp: UnixTime) -> Result<IssuedToken, AdminError> {
        Ok(IssuedToken {
            kid: self.signer_kid(),
            claims: AccessClaims {
                iss: self.issuer.clone(),
                aud: self.audience.clone(),
                sub: grant.sub,
                sid: grant.sid,
                businesses: grant.businesses,
                mode: grant.mode,
                scope: grant.scope,
                iat,
                exp,
                nbf: None,
                jti: random::base62_string(JTI_LEN)?,
            },
        })
    }

    /// Whether a stored token can be handed out again as is: signed by the current key,
    /// for our issuer and audience, and not expired.
    pub fn still_good(&self, issued: &IssuedToken, now: UnixTime) -> bool {
        issued.kid == self.keys().signer.kid()
            && issued.claims.iss == self.issuer
            && issued.claims.aud == self.audience
            && issued.claims.exp > now
    }

    /// Signs the claims with the key they name. Ed25519 is deterministic: the same claims
    /// give the same token.
    pub fn sign(&self, issued: &IssuedToken) -> Result<String, AdminError> {
        let keys = self.keys();
        let pair = keys.pairs.get(&issued.kid).ok_or(AdminError::Internal("asked to sign with a withdrawn signing key"))?;
        pair.sign(&issued.claims).map_err(AdminError::Signing)
    }

    /// Checks a bearer token the way a proxy would (header, kid, signature, iss/aud,
    /// time). Session revocation is the caller's check.
    pub fn verify(&self, token: &str, now: UnixTime) -> Result<AccessClaims, TokenError> {
        let kid = token::checked_kid(token)?;
        let keys = self.keys();
        let key = keys.verifiers.get(&kid).ok_or(TokenError::UnknownKid)?;
        let expect = TokenExpectations { issuer: self.issuer.clone(), audience: self.audience.clone(), leeway: self.leeway };
        token::verify(token, key, &expect, now)
    }

    pub fn published(&self) -> Vec<SigningKeyEntry> {
        self.keys().published.clone()
    }

    /// The JWKS document (RFC 7517 / RFC 8037 OKP keys).
    pub fn jwks(&self) -> serde_json::Value {
        let published = self.published();
        let keys: Vec<_> =
            published.iter().map(|k| json!({"kty": "OKP", "crv": "Ed25519", "alg": k.alg, "use": "sig", "kid": k.kid, "x": k.x})).collect();
        json!({ "keys": keys })
    }
}
