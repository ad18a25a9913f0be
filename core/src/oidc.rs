//! Access tokens from a business's own identity provider (a *trusted issuer*).
//!
//! Admin registers an issuer for one business (its `iss`, audiences, allowed algorithms
//! and the claim that lists businesses), fetches the provider's signing keys, pins them,
//! and sends them to every proxy in the feed as an [`IssuerEntry`]. A token whose `iss`
//! names a registered issuer is verified here with that issuer's pinned keys only, by
//! `kid`: the header's `alg` must be one of the issuer's algorithms and fit the key's type
//! (so an RSA public key can never be used as an HMAC secret), the header fields that would
//! fetch or trust key material from elsewhere (`jku`, `x5u`, `jwk`, `x5c`) or ask for
//! extensions (`crit`) are refused, and `iss`, `aud`, `exp` and `nbf` are checked against
//! the caller's clock. Pure: no I/O.
//!
//! An issuer vouches only for the businesses it was registered for: the businesses a
//! verified token carries are those of its claim that are also the issuer's own.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;

use crate::token::{AccessClaims, TokenError, MAX_TOKEN_LEN};
use crate::UnixTime;

/// The algorithms a trusted issuer may use (names as in a JWT header).
pub const ISSUER_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Keys kept per issuer; a JWKS with more is cut to the first this many usable ones.
pub const MAX_ISSUER_KEYS: usize = 16;

/// A trusted issuer as the feed carries it: who it is, what its tokens must say, which
/// businesses it vouches for, and its pinned public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerEntry {
    /// Admin's id for the registration (`iss_…`).
    pub id: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// A token's `aud` (a string, or any member of an array) must be one of these.
    pub audiences: Vec<String>,
    /// Subset of [`ISSUER_ALGORITHMS`].
    pub algorithms: Vec<String>,
    /// The claim that lists the businesses a token is for (a string or an array).
    pub businesses_claim: String,
    /// The businesses this issuer was registered for.
    pub businesses: Vec<String>,
    #[serde(default)]
    pub keys: Vec<IssuerKey>,
}

/// One public key of an issuer: the members of its JWK that verification needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerKey {
    pub kid: String,
    /// `RSA`, `EC` (P-256) or `OKP` (Ed25519).
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// The algorithm family a key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    Ed25519,
}

impl KeyType {
    fn algorithm(self) -> Algorithm {
        match self {
            KeyType::Rsa => Algorithm::RS256,
            KeyType::P256 => Algorithm::ES256,
            KeyType::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// An algorithm name of [`ISSUER_ALGORITHMS`].
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

impl IssuerKey {
    /// The public signing key in one JWK of a provider's JWKS, or `None` when it is not
    /// one keygate can use (an encryption key, another type or curve, a short RSA modulus,
    /// no `kid`, malformed members). Only public members are read, so a private member a
    /// provider got wrong is never kept.
    pub fn from_jwk(jwk: &Value) -> Option<IssuerKey> {
        let text = |name: &str| jwk.get(name).and_then(Value::as_str).map(str::to_owned);
        if text("use").is_some_and(|u| u != "sig") {
            return None;
        }
        let kid = text("kid").filter(|k| !k.is_empty() && k.len() <= 256)?;
        let alg = text("alg");
        let key = match text("kty")?.as_str() {
            "RSA" => IssuerKey { kid, kty: "RSA".into(), alg, crv: None, n: text("n"), e: text("e"), x: None, y: None },
            "EC" => IssuerKey { kid, kty: "EC".into(), alg, crv: text("crv"), n: None, e: None, x: text("x"), y: text("y") },
            "OKP" => IssuerKey { kid, kty: "OKP".into(), alg, crv: text("crv"), n: None, e: None, x: text("x"), y: None },
            _ => return None,
        };
        key.decoding().map(|_| key)
    }

    /// The key's type and its verifying key, or `None` if unusable.
    fn decoding(&self) -> Option<(KeyType, DecodingKey)> {
        let (kind, key) = match self.kty.as_str() {
            "RSA" => {
                let (n, e) = (self.n.as_deref()?, self.e.as_deref()?);
                let modulus = b64(n)?;
                let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
                let exponent = b64(e)?;
                if bits < MIN_RSA_BITS || exponent.is_empty() || exponent.len() > 8 {
                    return None;
                }
                (KeyType::Rsa, DecodingKey::from_rsa_raw_components(&modulus, &exponent))
            }
            "EC" if self.crv.as_deref() == Some("P-256") => {
                let (x, y) = (b64(self.x.as_deref()?)?, b64(self.y.as_deref()?)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                (KeyType::P256, DecodingKey::from_ec_components(self.x.as_deref()?, self.y.as_deref()?).ok()?)
            }
            "OKP" if self.crv.as_deref() == Some("Ed25519") => {
                if b64(self.x.as_deref()?)?.len() != 32 {
                    return None;
                }
                (KeyType::Ed25519, DecodingKey::from_ed_components(self.x.as_deref()?).ok()?)
            }
            _ => return None,
        };
        // A key that names its algorithm is used with that one only.
        match &self.alg {
            Some(alg) if parse_algorithm(alg) != Some(kind.algorithm()) => None,
            _ => Some((kind, key)),
        }
    }
}

/// The usable signing keys of a JWKS document (`{"keys": [...]}`), at most
/// [`MAX_ISSUER_KEYS`], sorted by `kid` (the first of a repeated `kid` kept).
pub fn keys_from_jwks(jwks: &Value) -> Vec<IssuerKey> {
    let mut keys: Vec<IssuerKey> = Vec::new();
    for jwk in jwks.get("keys").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        if keys.len() >= MAX_ISSUER_KEYS {
            break;
        }
        if let Some(key) = IssuerKey::from_jwk(jwk) {
            if !keys.iter().any(|k| k.kid == key.kid) {
                keys.push(key);
            }
        }
    }
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    keys
}

/// A trusted issuer as the decision reads it.
#[derive(Clone)]
pub struct TrustedIssuer {
    entry: IssuerEntry,
    algorithms: Vec<Algorithm>,
    keys: HashMap<String, (KeyType, DecodingKey)>,
}

impl std::fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuer").field("id", &self.entry.id).field("keys", &self.keys.len()).finish()
    }
}

impl TrustedIssuer {
    /// Indexes an entry; keys and algorithm names it cannot use are left out.
    pub fn new(entry: IssuerEntry) -> TrustedIssuer {
        let algorithms = entry.algorithms.iter().filter_map(|a| parse_algorithm(a)).collect();
        let keys = entry.keys.iter().filter_map(|k| Some((k.kid.clone(), k.decoding()?))).collect();
        TrustedIssuer { entry, algorithms, keys }
    }

    pub fn entry(&self) -> &IssuerEntry {
        &self.entry
    }

    pub fn has_key(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    fn vouches_for(&self, business: &str) -> bool {
        self.entry.businesses.iter().any(|b| b == business)
    }
}

/// The trusted issuers of a snapshot, by id and by `iss`.
#[derive(Clone, Debug, Default)]
pub struct Issuers {
    by_id: HashMap<String, TrustedIssuer>,
    /// `iss` → ids, sorted.
    by_iss: HashMap<String, Vec<String>>,
}

impl Issuers {
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn get(&self, id: &str) -> Option<&TrustedIssuer> {
        self.by_id.get(id)
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            if let Some(ids) = self.by_iss.get_mut(&old.entry.issuer) {
                ids.retain(|i| i != id);
                if ids.is_empty() {
                    self.by_iss.remove(&old.entry.issuer);
                }
            }
        }
    }

    pub fn insert(&mut self, issuer: TrustedIssuer) {
        let id = issuer.entry.id.clone();
        self.remove(&id);
        let ids = self.by_iss.entry(issuer.entry.issuer.clone()).or_default();
        ids.push(id.clone());
        ids.sort();
        self.by_id.insert(id, issuer);
    }

    /// The registration a token from `iss` presented for `business` is checked against:
    /// the one registered for that business, or else (so the token's own faults still
    /// answer 401 before the business answers 403) the first of that `iss`.
    pub fn chosen(&self, iss: &str, business: Option<&str>) -> Option<&TrustedIssuer> {
        let ids = self.by_iss.get(iss)?;
        let mut candidates = ids.iter().filter_map(|id| self.by_id.get(id));
        let first = candidates.clone().next();
        business.and_then(|b| candidates.find(|i| i.vouches_for(b))).or(first)
    }
}

/// An external token that passed the cheap checks: verify it with `kid` of issuer `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerStage {
    pub id: String,
    pub kid: String,
    alg: Algorithm,
}

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

/// The `iss` of a token's payload, unverified (only to pick the keys to verify it with).
pub fn peek_issuer(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Peek>(&bytes).ok()?.iss
}

/// The cheap checks of a token from a trusted issuer: `None` when its `iss` names no
/// trusted issuer (it is then not one of these tokens), else the header checks against the
/// chosen registration: no `crit`/`jku`/`x5u`/`jwk`/`x5c`, an `alg` of the issuer's that
/// fits the key, and a `kid` the issuer has published.
pub fn precheck(issuers: &Issuers, token: &str, business: Option<&str>) -> Option<Result<IssuerStage, TokenError>> {
    if issuers.is_empty() {
        return None;
    }
    let iss = peek_issuer(token)?;
    let issuer = issuers.chosen(&iss, business)?;
    Some(check_header(issuer, token))
}

fn check_header(issuer: &TrustedIssuer, token: &str) -> Result<IssuerStage, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() || header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some() {
        return Err(TokenError::ForbiddenHeader);
    }
    if !issuer.algorithms.contains(&header.alg) {
        return Err(TokenError::Algorithm);
    }
    let kid = header.kid.ok_or(TokenError::UnknownKid)?;
    let (kind, _) = issuer.keys.get(&kid).ok_or(TokenError::UnknownKid)?;
    if kind.algorithm() != header.alg {
        return Err(TokenError::Algorithm);
    }
    Ok(IssuerStage { id: issuer.entry.id.clone(), kid, alg: header.alg })
}

fn time(claims: &Map<String, Value>, name: &str) -> Result<Option<UnixTime>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(t), _) => Ok(Some(t)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as UnixTime)),
            _ => Err(TokenError::Malformed),
        },
        Some(_) => Err(TokenError::Malformed),
    }
}

fn text(claims: &Map<String, Value>, name: &str) -> String {
    claims.get(name).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Verifies the signature with the staged key and checks the claims at `now`. The claims
/// come back in keygate's shape: `aud` the audience that matched, `businesses` those of the
/// issuer's claim the issuer vouches for, `sid` empty (admin cannot revoke them), `scope`
/// the token's `scope` string if any.
pub fn verify(issuers: &Issuers, token: &str, stage: &IssuerStage, leeway: u64, now: UnixTime) -> Result<AccessClaims, TokenError> {
    let issuer = issuers.get(&stage.id).ok_or(TokenError::UnknownKid)?;
    let (_, key) = issuer.keys.get(&stage.kid).ok_or(TokenError::UnknownKid)?;
    let mut validation = Validation::new(stage.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
        _ => TokenError::Malformed,
    })?;
    let claims = data.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.entry.issuer.as_str()) {
        return Err(TokenError::WrongIssuerOrAudience);
    }
    let audience = match claims.get("aud") {
        Some(Value::String(aud)) => issuer.entry.audiences.iter().find(|a| *a == aud),
        Some(Value::Array(auds)) => issuer.entry.audiences.iter().find(|a| auds.iter().any(|v| v.as_str() == Some(a.as_str()))),
        _ => None,
    };
    let audience = audience.ok_or(TokenError::WrongIssuerOrAudience)?.clone();
    // A token without an expiry is never accepted.
    let exp = time(&claims, "exp")?.ok_or(TokenError::Malformed)?;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    let iat = time(&claims, "iat")?;
    let nbf = time(&claims, "nbf")?;
    if nbf.or(iat).is_some_and(|t| t > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    let named: Vec<&str> = match claims.get(&issuer.entry.businesses_claim) {
        Some(Value::String(b)) => vec![b.as_str()],
        Some(Value::Array(bs)) => bs.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let businesses = named.into_iter().filter(|b| issuer.vouches_for(b)).map(str::to_owned).collect();
    Ok(AccessClaims {
        iss: issuer.entry.issuer.clone(),
        aud: audience,
        sub: text(&claims, "sub"),
        sid: String::new(),
        businesses,
        mode: None,
        scope: text(&claims, "scope"),
        iat: iat.unwrap_or(0),
        exp,
        nbf,
        jti: text(&claims, "jti"),
    })
}
