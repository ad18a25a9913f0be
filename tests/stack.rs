//! Starting the stack (echo, admin, Envoy; optionally a second admin, or a second replica of
//! admin over the same PostgreSQL database), restarting admin or an Envoy, and cleaning up
//! when the stack drops. Admin stores in sled, or, when `KEYGATE_TEST_POSTGRES` is set, in a new database
//! of that server (one per stack); a stack may also run a PostgreSQL cluster of its own.

use reqwest::blocking::Client;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{seed, seed_revoked};
use crate::envoy_config::{add_admin_endpoint, add_second_listener, replace_once, replace_plugin_json};
use crate::postgres::{create_database, server_under_test, Cluster};
use crate::process::{admin_command, free_port, spawn_listening, AdminArgs, ChildGuard, Store};
use crate::{artifact, PROXY_TOKEN};

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
    /// Also start a second replica of admin (`admin_2`) over the same PostgreSQL database,
    /// listed in the same `keygate_admin` cluster (see [`Stack::replica_url`]). Needs
    /// PostgreSQL: `KEYGATE_TEST_POSTGRES` or [`StackOptions::own_postgres`].
    pub admin_replica: bool,
    /// Store in a PostgreSQL cluster of the stack's own (see [`Stack::postgres`]), for tests
    /// that stop the database.
    pub own_postgres: bool,
    /// When `KEYGATE_TEST_POSTGRES` names a PostgreSQL server: a second admin replica on
    /// the same database, at [`Stack::replica_url`], but not in Envoy's cluster (Envoy is
    /// fed by the first only). Without a server: sled and no replica.
    pub postgres_replica: bool,
    /// Also start this many more Envoys (children `envoy_1`, `envoy_2`, …) from the same
    /// rewritten envoy.yaml, each on listener and admin ports of its own, all fed by the same
    /// admin and in front of the same echo: a fleet of proxies (see [`Stack::envoy_urls`]).
    /// Not with [`StackOptions::second_admin`].
    pub extra_envoys: usize,
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
    /// With [`StackOptions::admin_replica`]: the second replica's URL (child `admin_2`).
    pub replica_url: Option<String>,
    /// With [`StackOptions::own_postgres`]: the stack's PostgreSQL.
    pub postgres: Option<Cluster>,
    /// With [`StackOptions::extra_envoys`]: the other Envoys' (listener URL, admin URL).
    extra_envoys: Vec<(String, String)>,
    /// Envoy, admin, echo: killed (in that order) when the stack drops.
    children: std::sync::Mutex<Vec<ChildGuard>>,
    admin_bin: PathBuf,
    envoy_bin: PathBuf,
    log_level: Option<&'static str>,
    admin_addr: String,
    admin_args: AdminArgs,
    store: Store,
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

        let postgres = options.own_postgres.then(|| Cluster::start(&dir.join("pg")));
        let server = postgres.as_ref().map(|c| c.url.clone()).or_else(server_under_test);
        let new_store = |sled_dir: &str| match &server {
            Some(url) => Store::Postgres(create_database(url)),
            None => Store::Sled(dir.join(sled_dir)),
        };
        let store = new_store("data");
        let admin_args = AdminArgs { extra: options.admin_args.clone(), log_level: options.log_level.unwrap_or("info") };
        let (admin, admin_addr) = spawn_listening("admin", admin_command(&admin_bin, &store, "127.0.0.1:0", &admin_args), &dir);

        let second_admin = options
            .second_admin
            .then(|| spawn_listening("admin_b", admin_command(&admin_bin, &new_store("data_b"), "127.0.0.1:0", &admin_args), &dir));
        let unlisted_replica = options.postgres_replica && matches!(store, Store::Postgres(_));
        let replica = (options.admin_replica || unlisted_replica).then(|| {
            assert!(matches!(store, Store::Postgres(_)), "admin replicas need PostgreSQL: KEYGATE_TEST_POSTGRES or own_postgres");
            spawn_listening("admin_2", admin_command(&admin_bin, &store, "127.0.0.1:0", &admin_args), &dir)
        });

        let http = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let seeded = (options.seed_keys > 0).then(|| seed(&http, &format!("http://{admin_addr}"), options.seed_keys));
        let seeded_revoked = match &seeded {
            Some((_, keys)) => seed_revoked(&http, &format!("http://{admin_addr}"), &keys[0], options.seed_revoked),
            None => Vec::new(),
        };

        // Envoys bind their ports only when they start: pick every one distinct (two asks
        // of the kernel for a free port may get the same one).
        let mut picked = Vec::new();
        let mut pick_port = || loop {
            let port = free_port();
            if !picked.contains(&port) {
                picked.push(port);
                break port;
            }
        };
        let (listen_port, envoy_admin_port) = (pick_port(), pick_port());
        let port_of = |addr: &str| addr.rsplit(':').next().unwrap().to_owned();
        let mut yaml = std::fs::read_to_string(&yaml_path).unwrap();
        yaml = replace_once(&yaml, "port_value: 9901", &format!("port_value: {envoy_admin_port}"));
        yaml = replace_once(&yaml, "port_value: 10000", &format!("port_value: {listen_port}"));
        yaml = replace_once(&yaml, "port_value: 8080", &format!("port_value: {}", port_of(&admin_addr)));
        yaml = replace_once(&yaml, "port_value: 8081", &format!("port_value: {}", port_of(&echo_addr)));
        yaml = replace_once(&yaml, "filename: target/wasm32-wasip1/release/keygate_filter.wasm", &format!("filename: {}", wasm.display()));
        if let Some((_, addr)) = replica.as_ref().filter(|_| options.admin_replica) {
            yaml = add_admin_endpoint(&yaml, &port_of(&admin_addr), &port_of(addr));
        }
        if let Some(json) = &options.plugin_json {
            yaml = replace_plugin_json(&yaml, json);
        }
        let mut second = None;
        if let Some((_, addr)) = &second_admin {
            let port = pick_port();
            yaml = add_second_listener(&yaml, listen_port, port, &port_of(addr));
            second = Some(Second { admin_url: format!("http://{addr}"), envoy_url: format!("http://127.0.0.1:{port}") });
        }
        assert!(!(options.second_admin && options.extra_envoys > 0), "extra_envoys and second_admin do not go together");
        // The other Envoys of a fleet: the same file on ports of their own.
        let mut extra_envoys = Vec::new();
        let mut extra_children = Vec::new();
        for i in 1..=options.extra_envoys {
            let (listen, admin) = (pick_port(), pick_port());
            let copy = replace_once(&yaml, &format!("port_value: {listen_port} "), &format!("port_value: {listen} "));
            let copy = replace_once(&copy, &format!("port_value: {envoy_admin_port} "), &format!("port_value: {admin} "));
            let name: &'static str = Box::leak(format!("envoy_{i}").into_boxed_str());
            extra_children.push(ChildGuard::new(name, spawn_envoy(&envoy_bin, &dir, name, &copy, options.log_level)));
            extra_envoys.push((format!("http://127.0.0.1:{listen}"), format!("http://127.0.0.1:{admin}")));
        }
        let envoy_child = spawn_envoy(&envoy_bin, &dir, "envoy", &yaml, options.log_level);
        let stack = Stack {
            admin_url: format!("http://{admin_addr}"),
            envoy_url: format!("http://127.0.0.1:{listen_port}"),
            envoy_admin_url: format!("http://127.0.0.1:{envoy_admin_port}"),
            dir,
            http,
            seeded,
            second,
            seeded_revoked,
            replica_url: replica.as_ref().map(|(_, addr)| format!("http://{addr}")),
            postgres,
            extra_envoys,
            children: std::sync::Mutex::new(
                std::iter::once(ChildGuard::new("envoy", envoy_child))
                    .chain(extra_children)
                    .chain([admin, echo])
                    .chain(second_admin.map(|(guard, _)| guard))
                    .chain(replica.map(|(guard, _)| guard))
                    .collect(),
            ),
            admin_bin,
            envoy_bin,
            log_level: options.log_level,
            admin_addr: admin_addr.clone(),
            admin_args,
            store,
            counter: AtomicU64::new(0),
            keep_logs: std::sync::atomic::AtomicBool::new(false),
        };
        stack.wait_ready();
        stack
    }

    /// Every Envoy ready, its filter holding a snapshot.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (url, admin_url) in self.envoy_urls().into_iter().zip(self.envoy_admin_urls()) {
            loop {
                let ready = self.http.get(format!("{admin_url}/ready")).send().is_ok_and(|r| r.status() == 200)
                    && self.http.get(format!("{url}/orders")).send().is_ok_and(|r| r.status() != 503);
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the stack did not become ready in 60 s (Envoy {url} ready and the filter holding a snapshot); logs in {}",
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Every Envoy's listener URL: [`Stack::envoy_url`] first, then those of
    /// [`StackOptions::extra_envoys`].
    pub fn envoy_urls(&self) -> Vec<String> {
        std::iter::once(self.envoy_url.clone()).chain(self.extra_envoys.iter().map(|(url, _)| url.clone())).collect()
    }

    /// Every Envoy's admin URL, in the order of [`Stack::envoy_urls`].
    pub fn envoy_admin_urls(&self) -> Vec<String> {
        std::iter::once(self.envoy_admin_url.clone()).chain(self.extra_envoys.iter().map(|(_, url)| url.clone())).collect()
    }

    /// Panics (with the log directory) if a process of the stack has died.
    pub fn assert_alive(&self) {
        self.children.lock().unwrap().iter_mut().for_each(|c| c.assert_running(&self.dir));
    }

    /// SIGKILLs keygate-admin (no flush, no goodbye).
    pub fn kill_admin(&self) {
        self.kill("admin");
    }

    /// SIGKILLs the stack's child `name` (`admin`, `admin_2`, `envoy`, …).
    pub fn kill(&self, name: &str) {
        self.children.lock().unwrap().retain(|c| c.name != name);
    }

    /// Starts keygate-admin again on the same address and data directory.
    pub fn restart_admin(&self) {
        self.kill_admin();
        let (guard, addr) =
            spawn_listening("admin", admin_command(&self.admin_bin, &self.store, &self.admin_addr, &self.admin_args), &self.dir);
        assert_eq!(addr, self.admin_addr);
        self.children.lock().unwrap().push(guard);
    }

    /// SIGKILLs Envoy `name` (`envoy`, `envoy_1`, …) if it runs, and starts it again from
    /// the same config, on the same ports: a new Envoy to the fleet (empty shared data, a new
    /// proxy id). Returns once every Envoy holds a snapshot. The earlier log is kept as
    /// `<name>.log.1`.
    pub fn restart_envoy(&self, name: &str) {
        assert!(name.starts_with("envoy") && self.dir.join(format!("{name}.yaml")).exists(), "no Envoy {name} in this stack");
        self.kill(name);
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let _ = std::fs::rename(self.dir.join(format!("{name}.log")), self.dir.join(format!("{name}.log.1")));
        let yaml = std::fs::read_to_string(self.dir.join(format!("{name}.yaml"))).unwrap();
        let child = spawn_envoy(&self.envoy_bin, &self.dir, name, &yaml, self.log_level);
        // Envoys first: killed before admin when the stack drops.
        self.children.lock().unwrap().insert(0, ChildGuard::new(name, child));
        self.wait_ready();
    }

    /// A name no other test in this run has used.
    pub fn unique(&self, what: &str) -> String {
        format!("{what}{}-{}", std::process::id(), self.counter.fetch_add(1, Ordering::SeqCst))
    }

    pub fn envoy_stats(&self) -> String {
        self.http.get(format!("{}/stats", self.envoy_admin_url)).send().unwrap().text().unwrap()
    }

    pub fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

/// Starts Envoy on `yaml` (written to `<name>.yaml`), logging to `<name>.log`.
fn spawn_envoy(bin: &std::path::Path, dir: &std::path::Path, name: &str, yaml: &str, log_level: Option<&str>) -> std::process::Child {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(bin)
        .args([
            "-c",
            config.to_str().unwrap(),
            "--disable-hot-restart",
            "--concurrency",
            &std::env::var("KEYGATE_E2E_CONCURRENCY").unwrap_or_else(|_| "2".into()),
            "--log-level",
            log_level.unwrap_or("info"),
        ])
        .env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.children.lock().unwrap().clear();
        drop(self.postgres.take());
        // Keep the logs of a failed run (and on request); remove the rest.
        let keep = self.keep_logs.load(Ordering::SeqCst) || std::thread::panicking() || std::env::var_os("KEYGATE_E2E_KEEP").is_some();
        if keep {
            eprintln!("keygate e2e: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
