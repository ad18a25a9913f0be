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

/// A seal key for the compose parser's run (never for real use).
const SEAL_KEY: &str = "kgseal_kRZscdSx3YRNPikTpBVkgoTmUzN0_YzOlF6gWKuIjRA";

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
    let names = |profile: Option<&str>| -> BTreeSet<&str> {
        let in_profile = |svc: &Value| strings(&svc["profiles"]).first().map(String::as_str) == profile;
        services.iter().filter(|(_, svc)| in_profile(svc)).map(|(name, _)| name.as_str()).collect()
    };
    assert_eq!(names(None), BTreeSet::from(["keygate-admin", "echo", "envoy"]), "the default stack");
    assert_eq!(names(Some(POSTGRES)), BTreeSet::from(["postgres", "keygate-admin-1", "keygate-admin-2", "envoy-replicas"]));
    let d = dockerfile("deploy/Dockerfile");
    for (name, svc) in services {
        assert!(strings(&svc["profiles"]).len() <= 1, "{name}: one profile at most");
        if name == "postgres" {
            continue; // the official image, checked in compose_postgres_profile_agrees_with_the_repo
        }
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

const POSTGRES: &str = "postgres";

/// The `postgres` profile: the official image pinned to a major version, two admin replicas
/// over its database with the same settings, and an Envoy listing both.
#[test]
fn compose_postgres_profile_agrees_with_the_repo() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];

    // PostgreSQL: the official image, a major version pinned, data on a named volume, healthy
    // by pg_isready, not published to the host.
    let pg = &services["postgres"];
    let image = s(pg, "/image", "postgres");
    let major = image.strip_prefix("postgres:").unwrap_or_else(|| panic!("postgres: the official image, got {image}"));
    assert!(!major.is_empty() && major.chars().all(|c| c.is_ascii_digit()), "postgres: pin a major version (postgres:17), got {image}");
    assert!(
        pg.get("build").is_none() && pg.get("ports").is_none(),
        "postgres: the official image, reachable only inside the compose network"
    );
    let pg_env = env_map(pg);
    let volume = strings(&pg["volumes"]).into_iter().find(|v| v.ends_with(":/var/lib/postgresql/data")).expect("postgres: data volume");
    assert!(compose["volumes"].get(volume.split(':').next().unwrap()).is_some(), "postgres: data on a named volume");
    assert!(strings(&pg["healthcheck"]["test"]).iter().any(|a| a == "pg_isready"), "postgres: healthy by pg_isready");

    // The replicas: the admin image, every setting the same but the published port, their
    // store the compose database with the image's user, password and database name.
    let base = &services["keygate-admin"];
    let replicas = ["keygate-admin-1", "keygate-admin-2"];
    let serve_envs: BTreeSet<String> = serve_options().iter().filter_map(|o| o.env.clone()).collect();
    for name in replicas {
        let svc = &services[name];
        assert_eq!(svc["build"], base["build"], "{name}: built like keygate-admin");
        assert_eq!(svc["command"], base["command"], "{name}");
        assert_eq!(svc["healthcheck"], base["healthcheck"], "{name}: the same health check as keygate-admin");
        assert_eq!(svc["depends_on"]["postgres"]["condition"], "service_healthy", "{name}");
        let env = env_map(svc);
        for k in env.keys().filter(|k| k.starts_with("KEYGATE_")) {
            // KEYGATE_SEAL_KEY: read by admin over PostgreSQL (every replica needs the same one).
            assert!(serve_envs.contains(k) || k == "KEYGATE_SEAL_KEY", "{name}: {k} is not a `keygate-admin serve` env var");
        }
        assert!(env.contains_key("KEYGATE_SEAL_KEY"), "{name}: the seal key must be passed");
        assert!(!env.contains_key("KEYGATE_DATA") && svc.get("volumes").is_none(), "{name}: no sled data, the store is PostgreSQL");
        let store = &env["KEYGATE_STORE"];
        let want =
            format!("postgres://{}:{}@postgres:5432/{}", pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]);
        assert_eq!(store, &want, "{name}: KEYGATE_STORE is the compose database");
        for k in ["KEYGATE_ADDR", "KEYGATE_OPERATOR_TOKEN", "KEYGATE_PROXY_TOKEN"] {
            assert_eq!(env.get(k), env_map(base).get(k), "{name}: {k} as keygate-admin's");
        }
    }
    let [one, two] = replicas.map(|n| &services[n]);
    assert_eq!(env_map(one), env_map(two), "both replicas get the same settings");
    let host_ports: BTreeSet<String> =
        [base, one, two].iter().flat_map(|svc| strings(&svc["ports"])).map(|p| p.rsplit_once(':').unwrap().0.to_owned()).collect();
    assert_eq!(host_ports.len(), 3, "keygate-admin and the replicas publish distinct host ports: {host_ports:?}");

    // envoy-replicas: runs deploy/envoy-compose-replicas.yaml, whose admin cluster lists both
    // replicas; it waits for them and echo, and publishes other host ports than envoy.
    let envoy = &services["envoy-replicas"];
    let cmd = strings(&envoy["command"]);
    let config_path = cmd.windows(2).find(|w| w[0] == "-c").map(|w| w[1].clone()).expect("envoy-replicas -c");
    let mounted = strings(&envoy["volumes"]).into_iter().find(|v| v.split(':').nth(1) == Some(config_path.as_str())).expect("config at -c");
    assert_eq!(mounted.split(':').next(), Some("./deploy/envoy-compose-replicas.yaml"));
    assert_eq!(envoy["build"], services["envoy"]["build"]);
    assert_eq!(env_map(envoy), env_map(&services["envoy"]), "envoy-replicas gets envoy's environment");
    assert_eq!(envoy["healthcheck"], services["envoy"]["healthcheck"]);
    for dep in replicas.iter().chain(&["echo"]) {
        assert_eq!(envoy["depends_on"][dep]["condition"], "service_healthy", "envoy-replicas waits for {dep}");
    }
    let envoy_ports: BTreeSet<String> = strings(&envoy["ports"]).into_iter().chain(strings(&services["envoy"]["ports"])).collect();
    let host_of = |p: &String| p.rsplit_once(':').unwrap().0.to_owned();
    assert_eq!(envoy_ports.iter().map(host_of).collect::<BTreeSet<_>>().len(), 4, "envoy and envoy-replicas publish distinct host ports");
    let endpoints = admin_endpoints("deploy/envoy-compose-replicas.yaml");
    let admin_port = port_of(&env_map(one)["KEYGATE_ADDR"]);
    assert_eq!(endpoints, replicas.iter().map(|r| (r.to_string(), admin_port)).collect::<Vec<_>>());

    // The replicas' Envoy config is the compose one but for the admin endpoints.
    let without_endpoints = |rel: &str| {
        let mut doc = yaml(rel);
        for c in doc["static_resources"]["clusters"].as_array_mut().unwrap() {
            if c["name"] == "keygate_admin" {
                c["load_assignment"]["endpoints"] = Value::Null;
            }
        }
        doc
    };
    assert_eq!(
        without_endpoints("deploy/envoy-compose-replicas.yaml"),
        without_endpoints("deploy/envoy-compose.yaml"),
        "deploy/envoy-compose-replicas.yaml differs from deploy/envoy-compose.yaml beyond the admin endpoints"
    );
}

/// The (address, port) of every endpoint of a config's `keygate_admin` cluster.
pub fn admin_endpoints(rel: &str) -> Vec<(String, u64)> {
    let doc = yaml(rel);
    let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
    let admin = clusters.iter().find(|c| c["name"] == "keygate_admin").unwrap_or_else(|| panic!("{rel}: no keygate_admin cluster"));
    let groups = admin["load_assignment"]["endpoints"].as_array().unwrap();
    groups
        .iter()
        .flat_map(|g| g["lb_endpoints"].as_array().unwrap())
        .map(|e| {
            let sa = &e["endpoint"]["address"]["socket_address"];
            (s(sa, "/address", rel).to_owned(), sa["port_value"].as_u64().unwrap())
        })
        .collect()
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
    // The `postgres` profile too, with the seal key passed through to both replicas.
    let mut c = Command::new(&bin);
    c.current_dir(root())
        .args(["-f", "docker-compose.yml", "--profile", POSTGRES, "config"])
        .env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN)
        .env("KEYGATE_SEAL_KEY", SEAL_KEY)
        .env_remove("KEYGATE_PG_PASSWORD");
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.to_lowercase().contains("warning"), "docker-compose --profile postgres config: {stderr}");
    let normalised: Value = serde_json::to_value(serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(&out.stdout).unwrap()).unwrap();
    for svc in ["keygate-admin-1", "keygate-admin-2"] {
        let env = &normalised["services"][svc]["environment"];
        assert_eq!(env["KEYGATE_SEAL_KEY"], SEAL_KEY, "{svc} gets the seal key");
        assert_eq!(env["KEYGATE_PROXY_TOKEN"], PROXY_TOKEN, "{svc} gets the proxy token");
        assert!(env["KEYGATE_STORE"]
            .as_str()
            .is_some_and(|u| u.starts_with("postgres://keygate:") && u.ends_with("@postgres:5432/keygate")));
    }
    assert!(normalised["volumes"].get("keygate-pg").is_some());

    let refused = run(None);
    assert!(!refused.status.success(), "docker-compose config should refuse to run without KEYGATE_PROXY_TOKEN");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("KEYGATE_PROXY_TOKEN"));
}
