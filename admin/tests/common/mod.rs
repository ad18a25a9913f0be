//! A real server on 127.0.0.1:0 over a temporary sled directory, driven over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};

use keygate_admin::{AdminError, AppState, Config, Secret};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OPERATOR: &str = "kgo_test-operator-token-0123456789abcdefghij";
pub const PROXY: &str = "kgp_test-proxy-token-0123456789abcdefghijklm";

pub struct Server {
    pub base: String,
    pub client: Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AdminError>>>,
}

pub fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.operator_token = Some(Secret::new(OPERATOR));
    config.proxy_token = Some(Secret::new(PROXY));
    config.cache_capacity_bytes = 8 * 1024 * 1024;
    config
}

impl Server {
    pub async fn start(dir: &Path) -> Server {
        Server::start_with(config(dir)).await
    }

    pub async fn start_with(config: Config) -> Server {
        let (state, _generated) = AppState::open(config).expect("open state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keygate_admin::run(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Server { base, client: Client::new(), state, stop: Some(stop), task: Some(task) }
    }

    /// Graceful stop; returns once the store's last flush is done and every handle on it
    /// is gone, so the directory can be reopened in this process.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn send(&self, method: Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, value)
    }

    pub async fn raw(&self, method: Method, path: &str, bearer: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{}", self.base, path)).body(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, value)
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, bearer, Some(body)).await
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
        self.send(Method::GET, path, bearer, None).await
    }

    pub async fn business(&self, name: &str) -> String {
        let (status, body) = self.post("/v1/businesses", Some(OPERATOR), json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn user(&self, email: &str, password: &str, businesses: &[&str]) -> Value {
        let (status, body) =
            self.post("/v1/users", Some(OPERATOR), json!({ "email": email, "password": password, "businesses": businesses })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Creates a key as `bearer`; returns the whole answer.
    pub async fn key_as(&self, bearer: &str, business: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/v1/businesses/{business}/keys"), Some(bearer), body).await
    }

    pub async fn key(&self, business: &str) -> Value {
        let (status, body) = self.key_as(OPERATOR, business, json!({ "kind": "sk", "mode": "test" })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn login(&self, api_key: &str, session_id: Option<&str>) -> (StatusCode, Value) {
        let mut body = json!({ "api_key": api_key });
        if let Some(sid) = session_id {
            body["session_id"] = json!(sid);
        }
        self.post("/auth/login", None, body).await
    }

    pub async fn snapshot(&self, query: &str) -> (StatusCode, Value) {
        self.get(&format!("/v1/snapshot{query}"), Some(PROXY)).await
    }
}

/// Copies a directory tree: a crash image of a sled directory taken while it is in use.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The error shape every failure shares.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["code"], json!(code), "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

/// The `sid` claim of an access token (read without checking the signature).
pub fn sid_of(jwt: &str) -> String {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    let claims: Value = serde_json::from_slice(&bytes).unwrap();
    claims["sid"].as_str().unwrap().to_owned()
}
