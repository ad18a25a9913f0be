//! Tokens from a business's own identity provider (trusted issuers): each algorithm,
//! algorithm confusion, claims, forbidden headers, businesses the issuer may vouch for,
//! unknown kids, the feed carrying issuers, and the token cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keygate_core::oidc::{keys_from_jwks, IssuerEntry, IssuerKey};
use keygate_core::signing::SigningKeyPair;
use keygate_core::snapshot::SnapshotWire;
use keygate_core::{decide_cached, DenyCode, RequestView, Snapshot, Synced, TokenCache};
use serde_json::{json, Value};
use support::world::{world, World, OTHER_BIZ};
use support::{all_three, allowed, denied, BIZ, NOW};

// Test keys made once with openssl (2048-bit RSA as PKCS#1 DER, P-256 as PKCS#8 DER).
const RSA_PKCS1: &str = "MIIEowIBAAKCAQEArSfJ160Mx0G8NKgPugorJW4slr1zi8/Kc48LZw7sYW2EHaG/ZuE146fueDxBiXQEOGuLoPjggXftlyrv5phlwlAz8WSibe4IMpOcD5zLas2/eXy6LJpbuO2DUfo+8spU451aez9QH30anfDHB/x3UVoTQ5Bw2qT1ZWfL/1UTSfVLS4NDRMW3mwmpUlu2Bv0u5Z7USCmmMP3Q9P/PwThkhJF1QkyEnGZawB8QYVT2Nahp4HXYzYREcI+sZz54P1wjJ66gNi/aRcklubvsxQZzaOovygWOEI2e3QAWv4vpysw0NEOEbEnRICKU/oYYd2asVZEBmcd+q/0Xzv8ivG1+CwIDAQABAoIBAAyWmm10Frw7sq+PUklfqOBZQKOa1VYiPqElEpqk8ploqVSwKCaWE+FfmY4jL06LYS0q4GVNAqFW8y5swDEe/jLgus3/V3GvfugSZCOcbgtvNs7huvU4KZfpqITisQXcoMxFackRAsWvRiqaURXrDE+dQU5Fp3a1zGNZZvLCoBrdvCdWzkPcX96/DBITz5ZxD45+XaOrvGCxw3k/S/YRc69wDWfOWIX1Obsl6GmS6I/G5/bkcX4prTDOd75rOfOWqmiysPOH8jYd3So3PMy9fXzwX/KKmA9r68WeP192Nzm6a9Ib/+pG4TEu6Z+E/Ux1SaUM+X3m9H2p6eL31/ww3BkCgYEA5bxXA0BgbfIEoRPyUBtI71s9yqZPvXZYZTlG5G/mHXfOOKQSnLMOUR/j3+kK7X34smvYvWI8Ztcx2byfDHMj/tPnY2Um2lh8++ZEQhTjAYrAPn3QIYMpwvFCBNpuMqVBADEkxTAj0/NiKJ3A15DtmxEofInjHQ/R+a+NsNLpctkCgYEAwPOEY8QZbzYl2DqMqdmCHhcancrvXzWFTsWYIdyRuEsT117BuC6rhmU6OAwBKvzdzfrB5FbhfVdnTb4ny+6S5KnnOec0X85YNfcD+9KXVGZ8bOIB+K5hue8gXugex6v/O2YFaWKhb9wRwVR1y6mlJeGy07sAHLGqdO5f54bf4YMCgYEAgiOn0uKz/XQ85RaMjI54SYcRQOvnffc9adIBc8RjwcutWW6wUG4qLRB4oM297/0NVd08AURV3RgIWES+gGn1ORTHHgod8VBxNK0je5+jXKtB7eSNc35+uLy8Xk1yYWQ1pysvnjiAAz/7GfELXdHul4onuizOKBdfJicph8JiljkCgYAO2zEYVWL38x1a1rc55KtmEbVU7OkdVYucEw6xnMADhpRSgtM7kSxXvreK1THJ04pob6Q6Jo5aDj6/96Isy4O343UQOkMIFWUpUomV/BL2xqVR5Nzt/s87d7PwWsLz8MRIGITWJmfzqugbEJu5QKickBIqxz0s+Gj9c9UiiHn4bQKBgGhx7lbjM7SgO7K1NZl1CdFzhxKf1QmjOEy/IISqEwosZ1Y4crgns0BJqCEfJ8zSd6tR83BxUI9ZvlkLXXx8XIybpC/rHsQuAkwudu6NpSGzH+MAfuI2LuCCpovipiPvVm+VMEBS+qF71Gs+6RHNNPa5qREbrMvSG8vS1YebVYYQ";
const RSA_N: &str = "rSfJ160Mx0G8NKgPugorJW4slr1zi8_Kc48LZw7sYW2EHaG_ZuE146fueDxBiXQEOGuLoPjggXftlyrv5phlwlAz8WSibe4IMpOcD5zLas2_eXy6LJpbuO2DUfo-8spU451aez9QH30anfDHB_x3UVoTQ5Bw2qT1ZWfL_1UTSfVLS4NDRMW3mwmpUlu2Bv0u5Z7USCmmMP3Q9P_PwThkhJF1QkyEnGZawB8QYVT2Nahp4HXYzYREcI-sZz54P1wjJ66gNi_aRcklubvsxQZzaOovygWOEI2e3QAWv4vpysw0NEOEbEnRICKU_oYYd2asVZEBmcd-q_0Xzv8ivG1-Cw";
const EC_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVtJjMniS7IjNenUaffMuSrlRRuD8xnRI68fbGfZE6o2hRANCAAQZLk0sRLFHmoOnDHZy2ZthTGHg6DRPDw3t8+MeZKuH0JTkPCym9Od2sEMUr+9hymO3JAqOUSHxIUCtApw6TJ19";
const EC_X: &str = "GS5NLESxR5qDpwx2ctmbYUxh4Og0Tw8N7fPjHmSrh9A";
const EC_Y: &str = "lOQ8LKb053awQxSv72HKY7ckCo5RIfEhQK0CnDpMnX0";

const ISS: &str = "https://idp.example.test";
const AUD: &str = "orders-api";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn der(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

struct Idp {
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: SigningKeyPair,
    ed_enc: EncodingKey,
}

fn idp() -> Idp {
    let seed = [42u8; 32];
    let mut pkcs8 = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    pkcs8.extend_from_slice(&seed);
    Idp {
        rsa: EncodingKey::from_rsa_der(&der(RSA_PKCS1)),
        ec: EncodingKey::from_ec_der(&der(EC_PKCS8)),
        ed: SigningKeyPair::from_seed("ed-1", seed),
        ed_enc: EncodingKey::from_ed_der(&pkcs8),
    }
}

fn jwks(idp: &Idp) -> Value {
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": EC_X, "y": EC_Y},
        {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": idp.ed.public_entry().x},
        {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": RSA_N, "e": "AQAB"},
        {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"}
    ]})
}

fn entry(idp: &Idp, id: &str, businesses: &[&str]) -> IssuerEntry {
    IssuerEntry {
        id: id.into(),
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        businesses_claim: "org_ids".into(),
        businesses: businesses.iter().map(|b| b.to_string()).collect(),
        keys: keys_from_jwks(&jwks(idp)),
    }
}

fn with_issuers(w: &mut World, issuers: Vec<IssuerEntry>) {
    let delta = SnapshotWire { version: w.snapshot.version() + 1, since: Some(w.snapshot.version()), issuers, ..SnapshotWire::default() };
    w.snapshot.apply(delta).unwrap();
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "auth0|alice", "org_ids": [BIZ], "iat": NOW - 10, "exp": NOW + 600, "scope": "orders:read"})
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs(idp: &Idp, claims: &Value) -> String {
    sign(Algorithm::RS256, "rsa-1", &idp.rsa, claims)
}

/// Forges a token with any header, signed with HMAC-SHA256 over `secret`.
fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

fn setup() -> (World, Idp) {
    let mut w = world();
    let idp = idp();
    with_issuers(&mut w, vec![entry(&idp, "iss_a", &[BIZ])]);
    (w, idp)
}

fn code(w: &World, token: &str, business: &str) -> (u16, DenyCode) {
    let key = if business == BIZ { &w.sk } else { &w.other_biz };
    denied(&w.all_three(token, key, business))
}

#[test]
fn jwks_keeps_only_usable_public_signing_keys() {
    let idp = idp();
    let keys = keys_from_jwks(&jwks(&idp));
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, ["ec-1", "ed-1", "rsa-1"]);
    // A short RSA modulus, a P-384 key, a key without kid and an alg that does not fit its type are left out.
    let short = b64(&[0xc5; 128]);
    let odd = json!({"keys": [
        {"kty": "RSA", "kid": "short", "n": short, "e": "AQAB"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": EC_X, "y": EC_Y},
        {"kty": "RSA", "n": RSA_N, "e": "AQAB"},
        {"kty": "RSA", "kid": "wrong-alg", "alg": "ES256", "n": RSA_N, "e": "AQAB"},
        {"kty": "RSA", "kid": "private", "n": RSA_N, "e": "AQAB", "d": "c2VjcmV0"}
    ]});
    let keys = keys_from_jwks(&odd);
    assert_eq!(keys.len(), 1);
    // Only public members are kept.
    assert_eq!(
        keys[0],
        IssuerKey {
            kid: "private".into(),
            kty: "RSA".into(),
            alg: None,
            crv: None,
            n: Some(RSA_N.into()),
            e: Some("AQAB".into()),
            x: None,
            y: None
        }
    );
    assert!(!serde_json::to_string(&keys).unwrap().contains("c2VjcmV0"));
}

#[test]
fn each_algorithm_verifies_with_the_issuers_pinned_keys() {
    let (w, idp) = setup();
    for token in
        [rs(&idp, &claims()), sign(Algorithm::ES256, "ec-1", &idp.ec, &claims()), sign(Algorithm::EdDSA, "ed-1", &idp.ed_enc, &claims())]
    {
        let a = allowed(w.all_three(&token, &w.sk, BIZ));
        let added: std::collections::HashMap<_, _> = a.add_headers.into_iter().collect();
        assert_eq!(added["x-keygate-subject"], "auth0|alice");
        assert_eq!(added["x-keygate-issuer"], ISS);
        assert_eq!(added["x-keygate-business"], BIZ);
    }
    // The businesses claim may be a single string, and aud an array.
    let mut c = claims();
    c["org_ids"] = json!(BIZ);
    c["aud"] = json!(["other", AUD]);
    allowed(w.all_three(&rs(&idp, &c), &w.sk, BIZ));
}

#[test]
fn an_algorithm_the_issuer_does_not_allow_or_that_does_not_fit_the_key_is_refused() {
    let (mut w, idp) = setup();
    // ES256 signature under the RSA key's kid.
    let wrong_kid = sign(Algorithm::ES256, "rsa-1", &idp.ec, &claims());
    assert_eq!(code(&w, &wrong_kid, BIZ), (401, DenyCode::InvalidToken));
    // RS384 with the right key: not one of the three.
    let rs384 = sign(Algorithm::RS384, "rsa-1", &idp.rsa, &claims());
    assert_eq!(code(&w, &rs384, BIZ), (401, DenyCode::InvalidToken));
    // An issuer pinned to ES256 refuses RS256.
    let mut only_es = entry(&idp, "iss_a", &[BIZ]);
    only_es.algorithms = vec!["ES256".into()];
    with_issuers(&mut w, vec![only_es]);
    assert_eq!(code(&w, &rs(&idp, &claims()), BIZ), (401, DenyCode::InvalidToken));
    allowed(w.all_three(&sign(Algorithm::ES256, "ec-1", &idp.ec, &claims()), &w.sk, BIZ));
}

#[test]
fn hs256_with_the_rsa_public_key_as_secret_is_refused() {
    let (w, _idp) = setup();
    // The classic confusion: the public key (as the JWKS publishes it, and as PKCS#1 DER) as an HMAC secret.
    for secret in [RSA_N.as_bytes().to_vec(), der(RSA_PKCS1), jwks(&idp()).to_string().into_bytes()] {
        let token = hs256(&json!({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}), &claims(), &secret);
        assert_eq!(code(&w, &token, BIZ), (401, DenyCode::InvalidToken));
    }
    // alg none.
    let none = format!("{}.{}.", b64(br#"{"alg":"none","kid":"rsa-1"}"#), b64(claims().to_string().as_bytes()));
    assert_eq!(code(&w, &none, BIZ), (401, DenyCode::InvalidToken));
}

#[test]
fn wrong_issuer_audience_expired_not_yet_valid_and_no_exp_are_refused() {
    let (w, idp) = setup();
    let cases: Vec<(&str, Value)> = vec![
        ("aud", json!("someone-else")),
        ("aud", json!(["a", "b"])),
        ("exp", json!(NOW - 120)),
        ("nbf", json!(NOW + 600)),
        ("iat", json!(NOW + 600)),
        ("exp", Value::Null),
        ("exp", json!("soon")),
    ];
    for (claim, value) in cases {
        let mut c = claims();
        c[claim] = value.clone();
        let d = w.all_three(&rs(&idp, &c), &w.sk, BIZ);
        assert!(matches!(&d, keygate_core::Decision::Deny(x) if x.code == DenyCode::InvalidToken), "{claim} = {value}: {d:?}");
    }
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(code(&w, &rs(&idp, &c), BIZ), (401, DenyCode::InvalidToken));
    // An unknown iss is not a trusted issuer's token at all.
    let mut c = claims();
    c["iss"] = json!("https://evil.example.test");
    assert_eq!(code(&w, &rs(&idp, &c), BIZ), (401, DenyCode::InvalidToken));
    // A tampered payload fails the signature.
    let token = rs(&idp, &claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c["org_ids"] = json!([BIZ, OTHER_BIZ]);
    parts[1] = b64(c.to_string().as_bytes());
    assert_eq!(code(&w, &parts.join("."), BIZ), (401, DenyCode::InvalidToken));
}

#[test]
fn crit_jku_x5u_jwk_x5c_headers_are_refused() {
    let (w, idp) = setup();
    let cases: [fn(&mut Header); 4] = [
        |h| h.crit = Some(vec!["exp".into()]),
        |h| h.jku = Some("https://evil.example.test/jwks".into()),
        |h| h.x5u = Some("https://evil.example.test/cert".into()),
        |h| h.x5c = Some(vec!["MII".into()]),
    ];
    for set in cases {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        set(&mut header);
        let token = jsonwebtoken::encode(&header, &claims(), &idp.rsa).unwrap();
        assert_eq!(code(&w, &token, BIZ), (401, DenyCode::InvalidToken));
    }
    // An embedded jwk (the attacker's own key) is refused even though it would verify.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.jwk = Some(serde_json::from_value(json!({"kty": "RSA", "n": RSA_N, "e": "AQAB"})).unwrap());
    let token = jsonwebtoken::encode(&header, &claims(), &idp.rsa).unwrap();
    assert_eq!(code(&w, &token, BIZ), (401, DenyCode::InvalidToken));
}

#[test]
fn unknown_kid_is_refused_and_a_rotated_key_verifies_once_the_feed_brings_it() {
    let (mut w, idp) = setup();
    let token = sign(Algorithm::EdDSA, "ed-2", &idp.ed_enc, &claims());
    assert_eq!(code(&w, &token, BIZ), (401, DenyCode::InvalidToken));
    let mut rotated = entry(&idp, "iss_a", &[BIZ]);
    rotated.keys.push(IssuerKey { kid: "ed-2".into(), ..rotated.keys.iter().find(|k| k.kid == "ed-1").unwrap().clone() });
    rotated.keys.retain(|k| k.kid != "rsa-1");
    with_issuers(&mut w, vec![rotated]);
    allowed(w.all_three(&token, &w.sk, BIZ));
    // The key withdrawn from the JWKS no longer verifies.
    assert_eq!(code(&w, &rs(&idp, &claims()), BIZ), (401, DenyCode::InvalidToken));
}

#[test]
fn an_issuer_vouches_only_for_the_businesses_it_was_registered_for() {
    let (mut w, idp) = setup();
    // The token names OTHER_BIZ (with a key of OTHER_BIZ), but the issuer is registered for BIZ only.
    let mut c = claims();
    c["org_ids"] = json!([BIZ, OTHER_BIZ]);
    let token = rs(&idp, &c);
    assert_eq!(code(&w, &token, OTHER_BIZ), (403, DenyCode::BusinessMismatch));
    allowed(w.all_three(&token, &w.sk, BIZ));
    // A token that does not name the business asked for.
    let mut c = claims();
    c["org_ids"] = json!(["biz_third"]);
    assert_eq!(code(&w, &rs(&idp, &c), BIZ), (403, DenyCode::BusinessMismatch));
    // No businesses claim at all.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("org_ids");
    assert_eq!(code(&w, &rs(&idp, &c), BIZ), (403, DenyCode::BusinessMismatch));
    // Registered separately for OTHER_BIZ (its own registration): now it passes for both.
    with_issuers(&mut w, vec![entry(&idp, "iss_b", &[OTHER_BIZ])]);
    allowed(w.all_three(&token, &w.other_biz, OTHER_BIZ));
    allowed(w.all_three(&token, &w.sk, BIZ));
    // Removed from the feed: refused again.
    let v = w.snapshot.version();
    w.snapshot
        .apply(SnapshotWire { version: v + 1, since: Some(v), removed_issuers: vec!["iss_b".into()], ..SnapshotWire::default() })
        .unwrap();
    assert_eq!(code(&w, &token, OTHER_BIZ), (403, DenyCode::BusinessMismatch));
    let v = w.snapshot.version();
    w.snapshot
        .apply(SnapshotWire { version: v + 1, since: Some(v), removed_issuers: vec!["iss_a".into()], ..SnapshotWire::default() })
        .unwrap();
    assert_eq!(code(&w, &token, BIZ), (401, DenyCode::InvalidToken));
}

#[test]
fn the_cache_rechecks_the_issuers_key_and_registration() {
    let (mut w, idp) = setup();
    let token = rs(&idp, &claims());
    let mut cache = TokenCache::new(100);
    let run = |w: &World, cache: &mut TokenCache, business: &str| {
        let key = if business == BIZ { w.sk.expose() } else { w.other_biz.expose() };
        let headers = all_three(&token, key, business);
        let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
        decide_cached(&w.policy, &request, Some(Synced::local(&w.snapshot, NOW)), NOW, cache)
    };
    allowed(run(&w, &mut cache, BIZ));
    allowed(run(&w, &mut cache, BIZ));
    assert_eq!(cache.signature_checks(), 1);
    // The key leaves the issuer's JWKS: the cached token is refused.
    let mut rotated = entry(&idp, "iss_a", &[BIZ]);
    rotated.keys.retain(|k| k.kid != "rsa-1");
    with_issuers(&mut w, vec![rotated]);
    assert_eq!(denied(&run(&w, &mut cache, BIZ)), (401, DenyCode::InvalidToken));
    // Forged tokens are remembered as failed.
    with_issuers(&mut w, vec![entry(&idp, "iss_a", &[BIZ])]);
    let mut c = claims();
    c["aud"] = json!("x");
    let bad = rs(&idp, &c);
    let before = cache.signature_checks();
    for _ in 0..3 {
        let headers = all_three(&bad, w.sk.expose(), BIZ);
        let request = RequestView { method: "GET", path: "/orders", headers: &headers, client_ip: None };
        let d = decide_cached(&w.policy, &request, Some(Synced::local(&w.snapshot, NOW)), NOW, &mut cache);
        assert_eq!(denied(&d), (401, DenyCode::InvalidToken));
    }
    assert_eq!(cache.signature_checks(), before + 1);
}

#[test]
fn keygates_own_tokens_are_unaffected_and_an_issuer_cannot_pass_as_keygate() {
    let (w, idp) = setup();
    allowed(w.all_three(&w.token(), &w.sk, BIZ));
    // A provider token claiming keygate's own iss is not verified with the provider's keys.
    let mut c = claims();
    c["iss"] = json!("keygate");
    assert_eq!(code(&w, &rs(&idp, &c), BIZ), (401, DenyCode::InvalidToken));
}

#[test]
fn issuers_survive_the_wire_and_a_full_snapshot_replaces_them() {
    let idp = idp();
    let full = SnapshotWire { version: 1, issuers: vec![entry(&idp, "iss_a", &[BIZ])], ..SnapshotWire::default() };
    let bytes = serde_json::to_vec(&full).unwrap();
    let decoded = Snapshot::decode(&bytes).unwrap();
    assert_eq!(decoded, full);
    let mut snapshot = Snapshot::from_full(decoded).unwrap();
    assert_eq!(snapshot.issuers().len(), 1);
    snapshot.apply(SnapshotWire { version: 2, ..SnapshotWire::default() }).unwrap();
    assert!(snapshot.issuers().is_empty());
    // A garbage key in an entry is skipped, not fatal.
    let mut bad = entry(&idp, "iss_x", &[BIZ]);
    bad.keys.push(IssuerKey {
        kid: "junk".into(),
        kty: "RSA".into(),
        alg: None,
        crv: None,
        n: Some("!!".into()),
        e: None,
        x: None,
        y: None,
    });
    snapshot.apply(SnapshotWire { version: 3, issuers: vec![bad], ..SnapshotWire::default() }).unwrap();
    assert!(!snapshot.issuers().get("iss_x").unwrap().has_key("junk"));
    assert!(snapshot.issuers().get("iss_x").unwrap().has_key("rsa-1"));
}
