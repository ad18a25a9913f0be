//! Requests to admin and through Envoy, and the fixtures made with them.

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

use crate::{Stack, OPERATOR_TOKEN, PASSWORD};

impl Stack {
    pub fn admin(&self, method: reqwest::Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.admin_url));
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let reply = read(req);
        (reply.status, reply.body)
    }

    pub fn operator_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, path, Some(OPERATOR_TOKEN), Some(body))
    }

    /// A request through Envoy with the given headers; header values are raw bytes so
    /// tests can send what a hostile client would.
    pub fn through_envoy(&self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> (u16, Value) {
        let resp = self.through_envoy_full(method, path, headers);
        (resp.status, resp.body)
    }

    /// [`Stack::through_envoy`] with the response headers.
    pub fn through_envoy_full(&self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.through_envoy_at(&self.envoy_url, method, path, headers)
    }

    /// [`Stack::through_envoy_full`] through the Envoy listening at `envoy_url` (one of
    /// [`Stack::envoy_urls`]).
    pub fn through_envoy_at(&self, envoy_url: &str, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        let mut req = self.http.request(method.parse().unwrap(), format!("{envoy_url}{path}"));
        for (name, value) in headers {
            req = req.header(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
        }
        read(req)
    }

    /// Creates a business, a member who signs in, and one live sk key.
    pub fn tenant(&self) -> Tenant {
        let (status, business) = self.operator_post("/v1/businesses", json!({"name": self.unique("Acme ")}));
        assert_eq!(status, 201, "create business: {business}");
        let business_id = business["id"].as_str().unwrap().to_owned();
        let email = format!("{}@example.com", self.unique("user"));
        let (status, user) = self.operator_post("/v1/users", json!({"email": email, "password": PASSWORD, "businesses": [business_id]}));
        assert_eq!(status, 201, "create user: {user}");
        let (status, signin) = self.admin(reqwest::Method::POST, "/auth/signin", None, Some(json!({"email": email, "password": PASSWORD})));
        assert_eq!(status, 200, "sign in: {signin}");
        let access_token = signin["accessToken"].as_str().unwrap().to_owned();
        let sk = self.create_key(&business_id, json!({"kind": "sk", "mode": "live"}));
        Tenant { business_id, email, access_token, sk }
    }

    pub fn create_key(&self, business_id: &str, body: Value) -> String {
        let (status, key) = self.operator_post(&format!("/v1/businesses/{business_id}/keys"), body);
        assert_eq!(status, 201, "create key: {key}");
        key["key"].as_str().unwrap().to_owned()
    }

    /// Waits until the filter has a snapshot holding `key` (the feed is a long-poll, so
    /// this is normally well under a second).
    pub fn wait_for_key(&self, key: &str) {
        self.wait_for_key_on(key, "/key/probe");
    }

    /// [`Stack::wait_for_key`] on a key-only path of the stack's rules.
    pub fn wait_for_key_on(&self, key: &str, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.through_envoy("GET", path, &[("secret_key", key.as_bytes())]).0 != 200 {
            assert!(Instant::now() < deadline, "the new key did not reach the filter within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Creates a business and `n` live sk keys through admin's HTTP API.
pub(crate) fn seed(http: &Client, admin_url: &str, n: usize) -> (String, Vec<String>) {
    let post = |path: &str, body: Value| -> Value {
        let resp = http.post(format!("{admin_url}{path}")).bearer_auth(OPERATOR_TOKEN).json(&body).send().unwrap();
        assert_eq!(resp.status().as_u16(), 201, "seeding {path}");
        resp.json().unwrap()
    };
    let business = post("/v1/businesses", json!({"name": "Seeded"}))["id"].as_str().unwrap().to_owned();
    let keys = (0..n)
        .map(|_| {
            post(&format!("/v1/businesses/{business}/keys"), json!({"kind": "sk", "mode": "live"}))["key"].as_str().unwrap().to_owned()
        })
        .collect();
    (business, keys)
}

/// `n` logins with `key`, each session revoked at once; their access tokens.
pub(crate) fn seed_revoked(http: &Client, admin_url: &str, key: &str, n: usize) -> Vec<String> {
    use base64::Engine as _;
    (0..n)
        .map(|i| {
            let resp = http
                .post(format!("{admin_url}/auth/login"))
                .json(&json!({"api_key": key, "session_id": format!("seeded-{i}")}))
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200, "seeding a login");
            let token = resp.json::<Value>().unwrap()["access_token"].as_str().unwrap().to_owned();
            let payload = token.split('.').nth(1).unwrap();
            let claims: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
            let sid = claims["sid"].as_str().unwrap();
            let resp = http.delete(format!("{admin_url}/v1/sessions/{sid}")).bearer_auth(OPERATOR_TOKEN).send().unwrap();
            assert!(resp.status().is_success(), "seeding a revocation");
            token
        })
        .collect()
}

/// Sends `req`; the body is JSON when it parses as such, else the text.
fn read(req: RequestBuilder) -> Reply {
    let resp: Response = req.send().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let mut text = String::new();
    let _ = resp.take(16 << 20).read_to_string(&mut text);
    Reply { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

pub struct Reply {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub body: Value,
}

pub struct Tenant {
    pub business_id: String,
    pub email: String,
    pub access_token: String,
    pub sk: String,
}

impl Tenant {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.access_token)
    }
}
