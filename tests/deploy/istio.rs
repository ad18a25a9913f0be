//! `deploy/istio/*.yaml`: the fields Istio needs, and a WasmPlugin whose `pluginConfig` the
//! filter accepts, naming the cluster the ServiceEntry makes.

use keygate_core::FilterConfig;
use serde_json::Value;
use std::collections::BTreeMap;

use crate::compose::port_of;
use crate::dockerfile::dockerfile;
use crate::envoy::{envoy_view, host_env_keys};
use crate::reference::serve_options;
use crate::{at, root, s, yaml_docs};

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
    // Replicas: connection failures eject one, 5xx answers none (as envoy.yaml's outlier_detection).
    let od = at(&dr, "/spec/trafficPolicy/outlierDetection", "DestinationRule");
    assert_eq!(od["splitExternalLocalOriginErrors"], true, "{od}");
    assert_eq!(od["consecutive5xxErrors"], 0, "{od}");
    assert!(od["consecutiveLocalOriginFailures"].as_u64().is_some_and(|n| n > 0), "{od}");
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
