//! `docker-compose.yml`: every path it names exists, its ports, addresses and env vars agree
//! with the Envoy config, the Dockerfile and `keygate-admin serve --help`, and the real
//! compose parser accepts it.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::dockerfile::dockerfile;
use crate::envoy::{envoy_view, host_env_keys, WASM_FILENAME};
use crate::reference::serve_options;
use crate::{root, s, yaml, PROXY_TOKEN};

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

pub fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no port in {addr}"))
}

/// The container ports a service publishes ("HOST_IP:HOST:CONTAINER" or "HOST:CONTAINER").
fn published(service: &Value) -> Vec<u64> {
    strings(&service["ports"]).iter().map(|p| port_of(p.split('/').next().unwrap())).collect()
}

/// The `test` command of a service's health check, as one shell line.
pub fn healthcheck(service: &Value, name: &str) -> String {
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
