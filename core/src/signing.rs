//! Ed25519 signing keys: admin signs access tokens with them; the tests use them to
//! forge tokens. The filter only verifies (see [`crate::token`]).

use base64::Engine;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::snapshot::{SigningKeyEntry, SIGNING_ALG};
use crate::token::{AccessClaims, ACCESS_TOKEN_TYP};

/// PKCS#8 v1 DER prefix for an Ed25519 private key (RFC 8410): followed by the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// An Ed25519 key pair with its `kid`. The seed is the secret; it never prints.
pub struct SigningKeyPair {
    kid: String,
    encoding: EncodingKey,
    public: [u8; 32],
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeyPair({})", self.kid)
    }
}

impl SigningKeyPair {
    pub fn from_seed(kid: impl Into<String>, seed: [u8; 32]) -> SigningKeyPair {
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(&seed);
        SigningKeyPair { kid: kid.into(), encoding: EncodingKey::from_ed_der(&der), public }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, as the snapshot and the JWKS carry it.
    pub fn public_entry(&self) -> SigningKeyEntry {
        SigningKeyEntry {
            kid: self.kid.clone(),
            alg: SIGNING_ALG.to_owned(),
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.public),
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }
}
