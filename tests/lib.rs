//! The end-to-end harness: starts the real `keygate-admin` binary, the real
//! `keygate-echo` upstream and a real Envoy loading the real `keygate_filter.wasm`, on
//! loopback ports picked here, with the repository's own `envoy.yaml` (ports, the .wasm
//! path and, when a test asks, the plugin JSON rewritten; each rewrite must hit exactly
//! once, so a drifting envoy.yaml breaks the tests instead of silently testing something
//! else). Everything is killed when the [`Stack`] drops.
//!
//! Envoy runs with `--concurrency 2` (`KEYGATE_E2E_CONCURRENCY` overrides it), so the
//! shared-data paths between worker VMs are exercised.
//!
//! Paths come from the environment `cargo xtask test` sets (`KEYGATE_ENVOY_BIN`,
//! `KEYGATE_WASM`, `KEYGATE_ADMIN_BIN`, `KEYGATE_ECHO_BIN`, `KEYGATE_ENVOY_YAML`), with the
//! usual build locations as fallback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const OPERATOR_TOKEN: &str = "kgo_e2e_operator_token_for_tests_only";
pub const PROXY_TOKEN: &str = "kgp_e2e_proxy_token_for_tests_only";
pub const PASSWORD: &str = "correct horse battery staple";

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A built binary or file: the path in `var` (set by `cargo xtask test`), else `default`
/// under the repository root; panics when it does not exist.
pub fn artifact(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(default));
    assert!(
        path.exists(),
        "{} not found ({var}); run these tests with `cargo xtask test`, which builds and installs everything",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    pub fn new(name: &'static str, child: Child) -> ChildGuard {
        ChildGuard { name, child }
    }

    fn assert_running(&mut self, logs: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status}); logs in {}", self.name, logs.display());
        }
    }
}

/// Spawns a binary that prints `<name> listening on <addr>` once bound; returns its address.
/// Its stderr goes to `<name>.log` and its stdout to `<name>.stdout` in `log_dir`.
pub fn spawn_listening(name: &'static str, mut cmd: Command, log_dir: &Path) -> (ChildGuard, String) {
    // Appended, so a restarted process keeps its earlier log.
    let open = |file: String| std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join(file)).unwrap();
    let log = open(format!("{name}.log"));
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log_path = log_dir.join(format!("{name}.stdout"));
    std::thread::spawn(move || {
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(out, "{line}");
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let guard = ChildGuard { name, child };
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{name} did not report its address; logs in {}", log_dir.display()));
    (guard, addr)
}

/// A copy of the `ingress` listener (at `from_port`) on `port`, whose filter (same `vm_id`)
/// names the cluster `keygate_admin_b`; and that cluster, at `admin_port`.
fn add_second_listener(yaml: &str, from_port: u16, port: u16, admin_port: &str) -> String {
    let start = yaml.find("  - name: ingress\n").expect("envoy.yaml has an ingress listener");
    let end = yaml.find("\n  clusters:\n").expect("envoy.yaml has clusters after the listeners");
    let copy = replace_once(&yaml[start..end], "  - name: ingress\n", "  - name: ingress_b\n");
    let copy = replace_once(&copy, &format!("port_value: {from_port} "), &format!("port_value: {port} "));
    let copy = replace_once(&copy, "\"admin_cluster\": \"keygate_admin\"", "\"admin_cluster\": \"keygate_admin_b\"");
    let cluster = format!(
        "\n  - name: keygate_admin_b\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: keygate_admin_b\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }} }}\n"
    );
    format!("{}{}{}{}", &yaml[..end], copy, yaml[end..].trim_end_matches('\n'), cluster)
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "envoy.yaml should contain {from:?} exactly once");
    text.replacen(from, to, 1)
}

/// Replaces the plugin JSON (the block under `value: |`) with `json`.
fn replace_plugin_json(yaml: &str, json: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines.iter().position(|l| l.trim_end().ends_with("value: |")).expect("envoy.yaml has a `value: |` plugin configuration");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let block_indent = indent(lines[start + 1]);
    let end = (start + 1..lines.len()).find(|&i| !lines[i].trim().is_empty() && indent(lines[i]) < block_indent).unwrap_or(lines.len());
    let pad = " ".repeat(block_indent);
    let mut out: Vec<String> = lines[..=start].iter().map(|s| s.to_string()).collect();
    out.extend(json.lines().map(|l| format!("{pad}{l}")));
    out.extend(lines[end..].iter().map(|s| s.to_string()));
    out.join("\n")
}

/// The reference rules (`/public/` open, `/key/` by key, everything else all three
/// credentials) as plugin JSON, with `extra` fields (each `\n  "name": value,`) and
/// `routes` (each `\n    {...},`) ahead of the two reference routes.
pub fn plugin_json(extra: &str, routes: &str) -> String {
    format!(
        r#"{{
  "admin_cluster": "keygate_admin",
  "max_staleness_secs": 600,{extra}
  "routes": [{routes}
    {{"prefix": "/public/", "require": "none"}},
    {{"prefix": "/key/", "require": "key", "key_in_bearer": true}}
  ]
}}"#
    )
}

#[derive(Default, Clone)]
pub struct StackOptions {
    /// Replaces the reference plugin JSON (`admin_cluster` etc. must be included).
    pub plugin_json: Option<String>,
    /// Extra `keygate-admin serve` arguments (e.g. `--token-ttl-secs 3`).
    pub admin_args: Vec<String>,
    /// Envoy's `--log-level` (default `info`); admin gets the matching `RUST_LOG`.
    pub log_level: Option<&'static str>,
    /// Live sk keys to create in one business before Envoy starts, so the filter's first
    /// sync is a full snapshot holding them (see [`Stack::seeded`]).
    pub seed_keys: usize,
    /// Also start a second admin and a second listener whose filter has the same `vm_id`
    /// but is fed by that admin (see [`Stack::second`]).
    pub second_admin: bool,
    /// With `seed_keys`: API-key logins (of the first seeded key) revoked before Envoy
    /// starts, so the first full sync carries them (see [`Stack::seeded_revoked`]).
    pub seed_revoked: usize,
}

/// The second admin and listener of a stack started with [`StackOptions::second_admin`].
pub struct Second {
    pub admin_url: String,
    pub envoy_url: String,
}

pub struct Stack {
    pub admin_url: String,
    pub envoy_url: String,
    pub envoy_admin_url: String,
    pub dir: PathBuf,
    pub http: Client,
    /// With [`StackOptions::seed_keys`]: the business and the raw keys made before Envoy started.
    pub seeded: Option<(String, Vec<String>)>,
    /// With [`StackOptions::second_admin`].
    pub second: Option<Second>,
    /// With [`StackOptions::seed_revoked`]: access tokens whose sessions were revoked before Envoy started.
    pub seeded_revoked: Vec<String>,
    /// Envoy, admin, echo: killed (in that order) when the stack drops.
    children: std::sync::Mutex<Vec<ChildGuard>>,
    admin_bin: PathBuf,
    admin_addr: String,
    admin_args: AdminArgs,
    counter: AtomicU64,
    /// Keep the log directory after the stack drops (set when a test failed).
    pub keep_logs: std::sync::atomic::AtomicBool,
}

impl Stack {
    pub fn start(options: StackOptions) -> Stack {
        let envoy_bin = artifact("KEYGATE_ENVOY_BIN", ".venv/bin/envoy");
        let wasm = artifact("KEYGATE_WASM", "target/wasm32-wasip1/release/keygate_filter.wasm");
        let admin_bin = artifact("KEYGATE_ADMIN_BIN", "target/debug/keygate-admin");
        let echo_bin = artifact("KEYGATE_ECHO_BIN", "target/debug/keygate-echo");
        let yaml_path = artifact("KEYGATE_ENVOY_YAML", "envoy.yaml");

        static STACKS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("keygate-e2e-{}-{}", std::process::id(), STACKS.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        let mut echo_cmd = Command::new(&echo_bin);
        echo_cmd.args(["--addr", "127.0.0.1:0"]);
        let (echo, echo_addr) = spawn_listening("echo", echo_cmd, &dir);

        let data = dir.join("data");
        let admin_args = AdminArgs { extra: options.admin_args.clone(), log_level: options.log_level.unwrap_or("info") };
        let (admin, admin_addr) = spawn_listening("admin", admin_command(&admin_bin, &data, "127.0.0.1:0", &admin_args), &dir);

        let second_admin = options
            .second_admin
            .then(|| spawn_listening("admin_b", admin_command(&admin_bin, &dir.join("data_b"), "127.0.0.1:0", &admin_args), &dir));

        let http = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let seeded = (options.seed_keys > 0).then(|| seed(&http, &format!("http://{admin_addr}"), options.seed_keys));
        let seeded_revoked = match &seeded {
            Some((_, keys)) => seed_revoked(&http, &format!("http://{admin_addr}"), &keys[0], options.seed_revoked),
            None => Vec::new(),
        };

        let (listen_port, envoy_admin_port) = (free_port(), free_port());
        let port_of = |addr: &str| addr.rsplit(':').next().unwrap().to_owned();
        let mut yaml = std::fs::read_to_string(&yaml_path).unwrap();
        yaml = replace_once(&yaml, "port_value: 9901", &format!("port_value: {envoy_admin_port}"));
        yaml = replace_once(&yaml, "port_value: 10000", &format!("port_value: {listen_port}"));
        yaml = replace_once(&yaml, "port_value: 8080", &format!("port_value: {}", port_of(&admin_addr)));
        yaml = replace_once(&yaml, "port_value: 8081", &format!("port_value: {}", port_of(&echo_addr)));
        yaml = replace_once(&yaml, "filename: target/wasm32-wasip1/release/keygate_filter.wasm", &format!("filename: {}", wasm.display()));
        if let Some(json) = &options.plugin_json {
            yaml = replace_plugin_json(&yaml, json);
        }
        let mut second = None;
        if let Some((_, addr)) = &second_admin {
            let port = free_port();
            yaml = add_second_listener(&yaml, listen_port, port, &port_of(addr));
            second = Some(Second { admin_url: format!("http://{addr}"), envoy_url: format!("http://127.0.0.1:{port}") });
        }
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml).unwrap();

        let envoy_log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        let envoy_child = Command::new(&envoy_bin)
            .args([
                "-c",
                config.to_str().unwrap(),
                "--disable-hot-restart",
                "--concurrency",
                &std::env::var("KEYGATE_E2E_CONCURRENCY").unwrap_or_else(|_| "2".into()),
                "--log-level",
                options.log_level.unwrap_or("info"),
            ])
            .env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN)
            .stdout(envoy_log.try_clone().unwrap())
            .stderr(envoy_log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stack = Stack {
            admin_url: format!("http://{admin_addr}"),
            envoy_url: format!("http://127.0.0.1:{listen_port}"),
            envoy_admin_url: format!("http://127.0.0.1:{envoy_admin_port}"),
            dir,
            http,
            seeded,
            second,
            seeded_revoked,
            children: std::sync::Mutex::new(
                [ChildGuard { name: "envoy", child: envoy_child }, admin, echo]
                    .into_iter()
                    .chain(second_admin.map(|(guard, _)| guard))
                    .collect(),
            ),
            admin_bin,
            admin_addr: admin_addr.clone(),
            admin_args,
            counter: AtomicU64::new(0),
            keep_logs: std::sync::atomic::AtomicBool::new(false),
        };
        stack.wait_ready();
        stack
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.http.get(format!("{}/ready", self.envoy_admin_url)).send().is_ok_and(|r| r.status() == 200)
                && self.http.get(format!("{}/orders", self.envoy_url)).send().is_ok_and(|r| r.status() != 503);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the stack did not become ready in 60 s (Envoy ready and the filter holding a snapshot); logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Panics (with the log directory) if a process of the stack has died.
    pub fn assert_alive(&self) {
        self.children.lock().unwrap().iter_mut().for_each(|c| c.assert_running(&self.dir));
    }

    /// SIGKILLs keygate-admin (no flush, no goodbye).
    pub fn kill_admin(&self) {
        self.children.lock().unwrap().retain(|c| c.name != "admin");
    }

    /// Starts keygate-admin again on the same address and data directory.
    pub fn restart_admin(&self) {
        self.kill_admin();
        let (guard, addr) =
            spawn_listening("admin", admin_command(&self.admin_bin, &self.dir.join("data"), &self.admin_addr, &self.admin_args), &self.dir);
        assert_eq!(addr, self.admin_addr);
        self.children.lock().unwrap().push(guard);
    }

    /// A name no other test in this run has used.
    pub fn unique(&self, what: &str) -> String {
        format!("{what}{}-{}", std::process::id(), self.counter.fetch_add(1, Ordering::SeqCst))
    }

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
        let mut req = self.http.request(method.parse().unwrap(), format!("{}{path}", self.envoy_url));
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

    pub fn envoy_stats(&self) -> String {
        self.http.get(format!("{}/stats", self.envoy_admin_url)).send().unwrap().text().unwrap()
    }

    pub fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

#[derive(Clone)]
struct AdminArgs {
    extra: Vec<String>,
    log_level: &'static str,
}

/// Creates a business and `n` live sk keys through admin's HTTP API.
fn seed(http: &Client, admin_url: &str, n: usize) -> (String, Vec<String>) {
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
fn seed_revoked(http: &Client, admin_url: &str, key: &str, n: usize) -> Vec<String> {
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

fn admin_command(bin: &Path, data: &Path, addr: &str, args: &AdminArgs) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--addr", addr, "--data", data.to_str().unwrap()])
        .args(&args.extra)
        .env("KEYGATE_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN)
        .env("RUST_LOG", args.log_level)
        .env("NO_COLOR", "1");
    cmd
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.children.lock().unwrap().clear();
        // Keep the logs of a failed run (and on request); remove the rest.
        let keep = self.keep_logs.load(Ordering::SeqCst) || std::thread::panicking() || std::env::var_os("KEYGATE_E2E_KEEP").is_some();
        if keep {
            eprintln!("keygate e2e: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
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

/// Random bytes from the OS, for keys the admin never issued.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut buf).unwrap();
    buf
}
