//! `deploy/envoy-compose.yaml` against `envoy.yaml`: the same filter chain and plugin JSON.

use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::{at, read, s, yaml};

pub struct EnvoyView {
    pub hcm: Value,
    pub keygate: Value,
    pub plugin_json: Value,
    pub listener_port: u64,
    pub admin_port: u64,
    /// cluster name -> (type, address, port)
    pub clusters: BTreeMap<String, (String, String, u64)>,
}

pub fn envoy_view(rel: &str) -> EnvoyView {
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

pub const WASM_FILENAME: &str = "/typed_config/config/vm_config/code/local/filename";

pub fn host_env_keys(keygate: &Value) -> Vec<String> {
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

/// The admin cluster of every Envoy config is health-checked on admin's `/healthz` and ejects a
/// replica that refuses connections, never one answering 5xx (while PostgreSQL is down every
/// replica answers 503): the filter's feed calls go to a replica that is up.
#[test]
fn admin_cluster_is_health_checked_in_every_config() {
    let admin_cluster = |rel: &str| {
        let doc = yaml(rel);
        let clusters = at(&doc, "/static_resources/clusters", rel).as_array().unwrap().clone();
        clusters.into_iter().find(|c| c["name"] == "keygate_admin").unwrap_or_else(|| panic!("{rel}: no keygate_admin cluster"))
    };
    let reference = admin_cluster("envoy.yaml");
    let hc = at(&reference, "/health_checks/0", "envoy.yaml keygate_admin");
    assert_eq!(s(hc, "/http_health_check/path", "health check"), "/healthz");
    let secs = |v: &Value| v.as_str().and_then(|t| t.strip_suffix('s')).and_then(|n| n.parse::<f64>().ok()).unwrap();
    assert!(secs(&hc["interval"]) <= 2.0 && secs(&hc["timeout"]) <= secs(&hc["interval"]), "a short interval: {hc}");
    assert!(hc["unhealthy_threshold"].as_u64().unwrap() <= 3 && hc["healthy_threshold"] == 1, "{hc}");
    let od = at(&reference, "/outlier_detection", "envoy.yaml keygate_admin");
    assert_eq!(od["split_external_local_origin_errors"], true, "only connection failures count: {od}");
    assert_eq!(od["enforcing_consecutive_5xx"], 0, "a 503 storage_unavailable must not eject a replica: {od}");
    assert!(od["max_ejection_percent"].as_u64().unwrap() >= 50, "with two replicas, one may be ejected: {od}");
    assert!(read("README.md").contains("| `GET /healthz` | anyone |"), "the health check's path is admin's unauthenticated /healthz");
    for rel in ["deploy/envoy-compose.yaml", "deploy/envoy-compose-replicas.yaml"] {
        let cluster = admin_cluster(rel);
        assert_eq!(cluster["health_checks"], reference["health_checks"], "{rel}: keygate_admin health checks differ from envoy.yaml's");
        assert_eq!(cluster["outlier_detection"], reference["outlier_detection"], "{rel}: outlier detection differs from envoy.yaml's");
    }
}

/// README's "Running more than one admin" shows the admin cluster to copy: its health checks
/// and outlier detection are envoy.yaml's, and it lists more than one replica.
#[test]
fn readme_replica_cluster_is_envoy_yamls() {
    let readme = read("README.md");
    let section = readme.split("\n## Running more than one admin\n").nth(1).expect("README has a \"Running more than one admin\" section");
    let block = section.split("```yaml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("the section shows the admin cluster");
    let shown: Value =
        serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(block).expect("README's cluster is YAML")).unwrap();
    let shown = &shown[0];
    let doc = yaml("envoy.yaml");
    let clusters = at(&doc, "/static_resources/clusters", "envoy.yaml").as_array().unwrap();
    let reference = clusters.iter().find(|c| c["name"] == "keygate_admin").unwrap();
    assert_eq!(shown["name"], "keygate_admin");
    assert_eq!(shown["health_checks"], reference["health_checks"], "README's health checks differ from envoy.yaml's");
    assert_eq!(shown["outlier_detection"], reference["outlier_detection"], "README's outlier detection differs from envoy.yaml's");
    assert_eq!(shown["connect_timeout"], reference["connect_timeout"]);
    let endpoints = at(shown, "/load_assignment/endpoints/0/lb_endpoints", "README's cluster").as_array().unwrap();
    assert!(endpoints.len() >= 2, "README's cluster lists the replicas");
}
