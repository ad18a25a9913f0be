//! Tokens from a business's own identity provider, through the real Envoy: a test issuer
//! this suite runs itself on loopback (OIDC discovery + JWKS over HTTP, or over HTTPS with
//! a certificate from a test CA that admin trusts through `--issuer-ca-file`; keys made in
//! the test: RSA 2048 and P-256 by `openssl`, Ed25519 from random bytes), registered with
//! admin as a trusted issuer; its tokens pass next to the business's key, forged ones and
//! ones naming a business the issuer was not registered for are refused, and a key
//! rotation at the provider (over HTTPS) reaches the proxy within seconds (admin refreshes
//! every 1 s here, `--issuer-refresh-secs 1`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keygate_core::signing::SigningKeyPair;
use keygate_e2e::{random_bytes, Stack, StackOptions, Tenant, OPERATOR_TOKEN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::jwt_attacks::eventually;
use crate::path::{assert_denied, three};
use crate::{Case, Suite};
use test_ca::{openssl, TestCa};

#[path = "../../admin/tests/common/test_ca.rs"]
mod test_ca;

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "oidc", options, cases: CASES }]
}

const CASES: &[Case] = &[
    ("oidc_issuer_api_validates_and_is_scoped_to_the_business", api_validation),
    ("oidc_provider_tokens_pass_for_each_algorithm_and_forged_or_foreign_ones_are_refused", tokens_through_envoy),
    ("oidc_key_rotation_at_the_provider_reaches_the_proxy_within_seconds", key_rotation),
    ("oidc_removed_issuer_is_refused", removed_issuer),
];

fn options() -> StackOptions {
    let ca = test_ca().ca.display().to_string();
    StackOptions { admin_args: vec!["--issuer-refresh-secs".into(), "1".into(), "--issuer-ca-file".into(), ca], ..StackOptions::default() }
}

/// The suite's test CA (admin's `tests/common/test_ca.rs`), made once per run before admin
/// starts.
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keygate-e2e-oidc-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        test_ca::make(&dir)
    })
}

/// The test issuer's TLS setup: the test CA's certificate for 127.0.0.1.
fn tls_config() -> Arc<rustls::ServerConfig> {
    test_ca().server_config()
}

const AUD: &str = "orders-api";
const CLAIM: &str = "org_ids";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

// ----- keys, made here -----

struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn rsa_key(dir: &Path, kid: &str) -> Key {
    let pem = format!("{kid}.pem");
    let der = format!("{kid}.der");
    openssl(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &pem]);
    openssl(dir, &["rsa", "-in", &pem, "-traditional", "-outform", "DER", "-out", &der]);
    let modulus = String::from_utf8(openssl(dir, &["rsa", "-in", &pem, "-noout", "-modulus"])).unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    Key {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(&std::fs::read(dir.join(&der)).unwrap()),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": B64.encode(n), "e": "AQAB"}),
    }
}

fn ec_key(dir: &Path, kid: &str) -> Key {
    let pem = format!("{kid}.pem");
    openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &pem]);
    let pkcs8 = openssl(dir, &["pkcs8", "-topk8", "-nocrypt", "-in", &pem, "-outform", "DER"]);
    let spki = openssl(dir, &["pkey", "-in", &pem, "-pubout", "-outform", "DER"]);
    let point = &spki[spki.len() - 64..];
    Key {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(&pkcs8),
        jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": B64.encode(&point[..32]), "y": B64.encode(&point[32..])}),
    }
}

fn ed_key(kid: &str) -> Key {
    let seed: [u8; 32] = random_bytes(32).try_into().unwrap();
    let mut pkcs8 = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    pkcs8.extend_from_slice(&seed);
    let x = SigningKeyPair::from_seed(kid, seed).public_entry().x;
    Key {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(&pkcs8),
        jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": x}),
    }
}

impl Key {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

// ----- the test issuer: discovery and JWKS on loopback -----

struct Provider {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<u64>>,
}

impl Provider {
    /// Over plain HTTP.
    fn start(keys: &[&Key]) -> Provider {
        Provider::start_with(keys, None)
    }

    /// Over HTTPS, with the test CA's certificate.
    fn start_tls(keys: &[&Key]) -> Provider {
        Provider::start_with(keys, Some(tls_config()))
    }

    fn start_with(keys: &[&Key], tls: Option<Arc<rustls::ServerConfig>>) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer = format!("{scheme}://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(Mutex::new(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})));
        let fetches = Arc::new(Mutex::new(0));
        let (served, counted, iss) = (Arc::clone(&jwks), Arc::clone(&fetches), issuer.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let answer = |path: &str| match path {
                    "/.well-known/openid-configuration" => ("200 OK", json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")})),
                    "/jwks" => {
                        *counted.lock().unwrap() += 1;
                        ("200 OK", served.lock().unwrap().clone())
                    }
                    _ => ("404 Not Found", json!({})),
                };
                match &tls {
                    None => serve_one(stream, answer),
                    Some(config) => {
                        let Ok(connection) = rustls::ServerConnection::new(Arc::clone(config)) else { continue };
                        serve_one(rustls::StreamOwned::new(connection, stream), answer);
                    }
                }
            }
        });
        Provider { issuer, jwks, fetches }
    }

    fn publish(&self, keys: &[&Key]) {
        *self.jwks.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> u64 {
        *self.fetches.lock().unwrap()
    }

    fn claims(&self, businesses: &[&str]) -> Value {
        json!({"iss": self.issuer, "aud": AUD, "sub": "idp|alice", CLAIM: businesses, "iat": now() - 5, "exp": now() + 600})
    }
}

/// Answers one GET on `stream` (plain or TLS) with `answer(path)`, then closes it.
fn serve_one<S: Read + Write>(mut stream: S, answer: impl Fn(&str) -> (&'static str, Value)) {
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return; // e.g. a client that refused the certificate
    }
    // The rest of the head.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    drop(reader);
    let (status, body) = answer(line.split_whitespace().nth(1).unwrap_or(""));
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn register(stack: &Stack, bearer: &str, business: &str, body: Value) -> (u16, Value) {
    stack.admin(reqwest::Method::POST, &format!("/v1/businesses/{business}/issuers"), Some(bearer), Some(body))
}

fn discovery_body(provider: &Provider) -> Value {
    json!({"issuer": provider.issuer, "audiences": [AUD], "algorithms": ["RS256", "ES256", "EdDSA"], "businesses_claim": CLAIM})
}

fn ready_tenant(stack: &Stack) -> Tenant {
    let t = stack.tenant();
    stack.wait_for_key(&t.sk);
    t
}

fn send(stack: &Stack, t: &Tenant, token: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    stack.through_envoy("GET", "/orders", &three(&bearer, &t.sk, &t.business_id))
}

/// Polls (every 20 ms) until `token` gets `status`; how long it took.
fn until_status(stack: &Stack, t: &Tenant, token: &str, status: u16, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (got, body) = send(stack, t, token);
        if got == status {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: still {got} after 15 s: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- cases -----

fn api_validation(stack: &Stack) {
    let dir = tempdir(stack, "api");
    let key = rsa_key(&dir, "rsa-1");
    let provider = Provider::start(&[&key]);
    let a = stack.tenant();
    let b = stack.tenant();
    let bad = |body: Value, code: &str| {
        let (status, answer) = register(stack, OPERATOR_TOKEN, &a.business_id, body.clone());
        assert_eq!((status, answer["code"].as_str()), (400, Some(code)), "{body} → {answer}");
    };
    bad(json!({"issuer": provider.issuer, "audiences": [AUD], "algorithms": ["HS256"]}), "invalid_request");
    bad(json!({"issuer": provider.issuer, "audiences": []}), "invalid_request");
    bad(json!({"issuer": provider.issuer, "audiences": [AUD], "jwks_uri": "file:///etc/passwd"}), "invalid_request");
    bad(json!({"issuer": provider.issuer, "audiences": [AUD], "jwks_uri": "ftp://idp.example.test/jwks"}), "invalid_request");
    // An https provider whose certificate admin cannot check (a name the certificate does not
    // hold: it is for 127.0.0.1) fails like an unreachable one.
    let tls_provider = Provider::start_tls(&[&key]);
    let as_localhost = tls_provider.issuer.replace("127.0.0.1", "localhost");
    bad(json!({"issuer": as_localhost, "audiences": [AUD], "jwks_uri": format!("{as_localhost}/jwks")}), "jwks_unavailable");
    bad(json!({"issuer": "keygate", "audiences": [AUD], "jwks": {"keys": [key.jwk]}}), "invalid_request");
    bad(
        json!({"issuer": provider.issuer, "audiences": [AUD], "jwks": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}}),
        "jwks_unavailable",
    );
    bad(json!({"issuer": format!("{}/nothing-here", provider.issuer), "audiences": [AUD]}), "jwks_unavailable");
    // A member of another business may not register one for this business; a member of it may.
    let (status, answer) = register(stack, &b.access_token, &a.business_id, discovery_body(&provider));
    assert_eq!((status, answer["code"].as_str()), (403, Some("forbidden")), "{answer}");
    let (status, created) = register(stack, &a.access_token, &a.business_id, discovery_body(&provider));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source"], "discovery");
    assert_eq!(created["jwks_uri"], format!("{}/jwks", provider.issuer));
    assert_eq!(created["keys"][0]["kid"], "rsa-1");
    // No key material in the answer.
    assert!(!created.to_string().contains(key.jwk["n"].as_str().unwrap()), "{created}");
    let (status, again) = register(stack, OPERATOR_TOKEN, &a.business_id, discovery_body(&provider));
    assert_eq!((status, again["code"].as_str()), (409, Some("issuer_exists")), "{again}");
    let list =
        |bearer: &str, business: &str| stack.admin(reqwest::Method::GET, &format!("/v1/businesses/{business}/issuers"), Some(bearer), None);
    let (status, listed) = list(&a.access_token, &a.business_id);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["issuers"].as_array().unwrap().len(), 1);
    assert_eq!(list(&b.access_token, &a.business_id).0, 403);
    let (_, theirs) = list(&b.access_token, &b.business_id);
    assert_eq!(theirs["issuers"], json!([]));
    let id = created["id"].as_str().unwrap();
    let (status, _) = stack.admin(reqwest::Method::DELETE, &format!("/v1/issuers/{id}"), Some(&b.access_token), None);
    assert_eq!(status, 403);
    let (status, _) = stack.admin(reqwest::Method::DELETE, "/v1/issuers/iss_nope", Some(OPERATOR_TOKEN), None);
    assert_eq!(status, 404);
    let (status, removed) = stack.admin(reqwest::Method::DELETE, &format!("/v1/issuers/{id}"), Some(&a.access_token), None);
    assert_eq!((status, &removed["removed"]), (200, &json!(true)), "{removed}");
}

fn tokens_through_envoy(stack: &Stack) {
    let dir = tempdir(stack, "tokens");
    let (rsa, ec, ed) = (rsa_key(&dir, "rsa-1"), ec_key(&dir, "ec-1"), ed_key("ed-1"));
    let provider = Provider::start(&[&rsa, &ec, &ed]);
    let a = ready_tenant(stack);
    let b = ready_tenant(stack);
    let (status, created) = register(stack, &a.access_token, &a.business_id, discovery_body(&provider));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["keys"].as_array().unwrap().len(), 3, "{created}");
    let token = rsa.sign(&provider.claims(&[&a.business_id]));
    let took = until_status(stack, &a, &token, 200, "the RS256 token of a newly trusted issuer");
    eprintln!("oidc: a newly registered issuer's token passed {} ms after admin's 201", took.as_millis());
    for key in [&rsa, &ec, &ed] {
        let (status, echo) = send(stack, &a, &key.sign(&provider.claims(&[&a.business_id])));
        assert_eq!(status, 200, "{:?}: {echo}", key.alg);
        assert_eq!(echo["headers"]["x-keygate-subject"], "idp|alice", "{echo}");
        assert_eq!(echo["headers"]["x-keygate-issuer"], provider.issuer.as_str(), "{echo}");
        assert_eq!(echo["headers"]["x-keygate-business"], a.business_id.as_str(), "{echo}");
    }
    // Forged: another RSA key under the published kid; HS256 keyed with the public key; alg none.
    let forger = rsa_key(&dir, "rsa-forger");
    let forged = Key { kid: "rsa-1".into(), ..forger };
    assert_denied(&send(stack, &a, &forged.sign(&provider.claims(&[&a.business_id]))), 401, "invalid_token");
    let claims = provider.claims(&[&a.business_id]);
    let input = format!("{}.{}", B64.encode(json!({"alg": "HS256", "kid": "rsa-1"}).to_string()), B64.encode(claims.to_string()));
    for secret in [rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec(), rsa.jwk.to_string().into_bytes()] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", B64.encode(mac.finalize().into_bytes()));
        assert_denied(&send(stack, &a, &token), 401, "invalid_token");
    }
    assert_denied(
        &send(stack, &a, &format!("{}.{}.", B64.encode(r#"{"alg":"none","kid":"rsa-1"}"#), B64.encode(claims.to_string()))),
        401,
        "invalid_token",
    );
    // Wrong audience, expired, a crit header.
    let mut c = provider.claims(&[&a.business_id]);
    c["aud"] = json!("another-api");
    assert_denied(&send(stack, &a, &rsa.sign(&c)), 401, "invalid_token");
    let mut c = provider.claims(&[&a.business_id]);
    c["exp"] = json!(now() - 300);
    assert_denied(&send(stack, &a, &rsa.sign(&c)), 401, "invalid_token");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.crit = Some(vec!["exp".into()]);
    assert_denied(
        &send(stack, &a, &jsonwebtoken::encode(&header, &provider.claims(&[&a.business_id]), &rsa.encoding).unwrap()),
        401,
        "invalid_token",
    );
    // A token naming business B (which never trusted this issuer), sent with B's own key: refused.
    let foreign = rsa.sign(&provider.claims(&[&a.business_id, &b.business_id]));
    assert_denied(&send(stack, &b, &foreign), 403, "business_mismatch");
    // And A's token does not open B either, nor a token that does not name A open A.
    assert_denied(&send(stack, &b, &token), 403, "business_mismatch");
    assert_denied(&send(stack, &a, &rsa.sign(&provider.claims(&[&b.business_id]))), 403, "business_mismatch");
    // keygate's own tokens still work beside it.
    let (status, echo) = send(stack, &a, &a.access_token);
    assert_eq!(status, 200, "{echo}");
}

fn key_rotation(stack: &Stack) {
    let dir = tempdir(stack, "rotation");
    let (old, new) = (rsa_key(&dir, "rsa-old"), rsa_key(&dir, "rsa-new"));
    // A real provider serves its keys over https: so does this one.
    let provider = Provider::start_tls(&[&old]);
    let a = ready_tenant(stack);
    let (status, created) = register(stack, &a.access_token, &a.business_id, discovery_body(&provider));
    assert_eq!(status, 201, "{created}");
    assert!(created["jwks_uri"].as_str().is_some_and(|u| u.starts_with("https://127.0.0.1:")), "{created}");
    let old_token = old.sign(&provider.claims(&[&a.business_id]));
    until_status(stack, &a, &old_token, 200, "the old key's token");
    let new_token = new.sign(&provider.claims(&[&a.business_id]));
    assert_denied(&send(stack, &a, &new_token), 401, "invalid_token");
    // The provider rotates: the new key published (beside the old one), then the old withdrawn.
    let fetches = provider.fetches();
    provider.publish(&[&old, &new]);
    let added = until_status(stack, &a, &new_token, 200, "the new key's token after the provider published it");
    assert!(provider.fetches() > fetches);
    provider.publish(&[&new]);
    let withdrawn = until_status(stack, &a, &old_token, 401, "the old key's token after the provider withdrew it");
    eprintln!(
        "oidc: provider key rotation (over https) reached the proxy in {} ms (new key usable), {} ms (old key refused); admin refresh 1 s",
        added.as_millis(),
        withdrawn.as_millis()
    );
    assert!(added < Duration::from_secs(5) && withdrawn < Duration::from_secs(5), "{added:?} / {withdrawn:?}");
    let (_, listed) = stack.admin(reqwest::Method::GET, &format!("/v1/businesses/{}/issuers", a.business_id), Some(&a.access_token), None);
    assert_eq!(listed["issuers"][0]["keys"], json!([{"kid": "rsa-new", "kty": "RSA", "alg": "RS256"}]), "{listed}");
    // The provider goes away: the pinned keys stay, tokens keep passing, the list says why.
    provider.publish(&[]);
    eventually("the failed refresh shown in the list", || {
        let (_, listed) =
            stack.admin(reqwest::Method::GET, &format!("/v1/businesses/{}/issuers", a.business_id), Some(&a.access_token), None);
        listed["issuers"][0]["refresh_error"].as_str().is_some_and(|e| e.contains("no usable signing key"))
    });
    assert_eq!(send(stack, &a, &new_token).0, 200);
}

fn removed_issuer(stack: &Stack) {
    let a = ready_tenant(stack);
    let key = ed_key("ed-static");
    // A static JWKS: pinned as given, never fetched.
    let body = json!({"issuer": "https://login.example.test/tenant-1", "audiences": [AUD], "algorithms": ["EdDSA"], "businesses_claim": CLAIM, "jwks": {"keys": [key.jwk]}});
    let (status, created) = register(stack, OPERATOR_TOKEN, &a.business_id, body);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source"], "static");
    let claims = json!({"iss": "https://login.example.test/tenant-1", "aud": AUD, "sub": "s", CLAIM: a.business_id, "exp": now() + 600});
    let token = key.sign(&claims);
    until_status(stack, &a, &token, 200, "a static issuer's token");
    let id = created["id"].as_str().unwrap();
    let (status, _) = stack.admin(reqwest::Method::DELETE, &format!("/v1/issuers/{id}"), Some(OPERATOR_TOKEN), None);
    assert_eq!(status, 200);
    let took = until_status(stack, &a, &token, 401, "the removed issuer's token");
    eprintln!("oidc: a removed issuer's token was refused {} ms after admin's 200", took.as_millis());
}

fn tempdir(stack: &Stack, what: &str) -> std::path::PathBuf {
    let dir = stack.dir.join(format!("oidc-keys-{what}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
