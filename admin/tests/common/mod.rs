//! A real server on 127.0.0.1:0, driven over HTTP. [`Server::fresh`] stores in a temporary
//! sled directory, or, when `KEYGATE_TEST_POSTGRES` holds a PostgreSQL URL, in a new
//! database of that server of its own; [`Server::start`] is always sled (for the tests about
//! directories: reopening, copying).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};

use keygate_admin::seal::{SealKey, SealKeys};
use keygate_admin::{AdminError, AppState, Config, Secret, StoreLocation};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OPERATOR: &str = "kgo_test-operator-token-0123456789abcdefghij";
pub const PROXY: &str = "kgp_test-proxy-token-0123456789abcdefghijklm";
/// The seal key of every test server over PostgreSQL, which refuses to start without one.
pub const SEAL_KEY: &str = "kgseal_6fmEIj05eoFfaZ9GDTJMFvk6MqSzONPBpc0b-izDuio";

pub struct Server {
    pub base: String,
    pub client: Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AdminError>>>,
    /// The data directory of a server made by [`Server::fresh`], removed after the server.
    temp_dir: Option<tempfile::TempDir>,
}

/// The test configuration over sled in `dir`.
pub fn config(dir: &Path) -> Config {
    config_at(StoreLocation::Sled(dir.to_owned()))
}

/// The test configuration over `store` (with [`SEAL_KEY`] over PostgreSQL; sled runs without
/// one, as it may).
pub fn config_at(store: StoreLocation) -> Config {
    let postgres = matches!(store, StoreLocation::Postgres(_));
    let mut config = Config::at(store);
    if postgres {
        config.seal_keys = Some(seal_keys(&[SEAL_KEY]));
    }
    config.operator_token = Some(Secret::new(OPERATOR));
    config.proxy_token = Some(Secret::new(PROXY));
    config.cache_capacity_bytes = 8 * 1024 * 1024;
    config
}

impl Server {
    /// A server on a new store (see the module's note), with the test configuration.
    pub async fn fresh() -> Server {
        Server::fresh_with(|_| {}).await
    }

    /// [`Server::fresh`] with the test configuration changed by `edit`.
    pub async fn fresh_with(edit: impl FnOnce(&mut Config)) -> Server {
        if let Some(url) = postgres_under_test() {
            let mut config = config_at(StoreLocation::Postgres(fresh_database(&url)));
            edit(&mut config);
            return Server::start_with(config).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        edit(&mut config);
        Server { temp_dir: Some(dir), ..Server::start_with(config).await }
    }

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
        Server { base, client: Client::new(), state, stop: Some(stop), task: Some(task), temp_dir: None }
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
        json_reply(request).await
    }

    pub async fn raw(&self, method: Method, path: &str, bearer: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{}", self.base, path)).body(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        json_reply(request).await
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

    pub async fn signin(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.post("/auth/signin", None, json!({"email": email, "password": password})).await
    }

    /// Creates a user of `businesses` who signs in; the sign-in answer.
    pub async fn signed_in(&self, email: &str, password: &str, businesses: &[&str]) -> Value {
        self.user(email, password, businesses).await;
        let (status, signin) = self.signin(email, password).await;
        assert_eq!(status, StatusCode::OK, "{signin}");
        signin
    }

    /// [`Server::signed_in`]: the access token.
    pub async fn member(&self, email: &str, password: &str, businesses: &[&str]) -> String {
        self.signed_in(email, password, businesses).await["accessToken"].as_str().unwrap().to_owned()
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

/// Sends `request`; the status and the JSON body (panics on any other body).
async fn json_reply(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}

/// Seal keys from their text, in order.
pub fn seal_keys(keys: &[&str]) -> SealKeys {
    SealKeys::new(keys.iter().map(|k| SealKey::parse(k).unwrap()).collect()).unwrap()
}

/// The session id (`sid`) an access token carries.
pub fn sid_of(jwt: &str) -> String {
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap();
    serde_json::from_slice::<Value>(&payload).unwrap()["sid"].as_str().unwrap().to_owned()
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

/// The PostgreSQL server the tests use instead of sled, if any.
pub fn postgres_under_test() -> Option<String> {
    std::env::var("KEYGATE_TEST_POSTGRES").ok().filter(|url| !url.is_empty())
}

/// Creates an empty database on the server at `server_url` and returns its URL. The blocking
/// client runs on a thread of its own: it cannot run inside the tests' tokio runtime.
pub fn fresh_database(server_url: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("kg_{}_{n}_{nanos}", std::process::id());
    let url = server_url.to_owned();
    let create = format!("CREATE DATABASE {name}");
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect to KEYGATE_TEST_POSTGRES");
        client.batch_execute(&create).expect("create a test database");
    })
    .join()
    .unwrap();
    let (server, _) = server_url.rsplit_once('/').expect("KEYGATE_TEST_POSTGRES is postgres://USER@HOST:PORT/DBNAME");
    format!("{server}/{name}")
}
