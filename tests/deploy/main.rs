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
//!
//! One file per topic: `envoy` (the two Envoy configs), `dockerfile`, `compose` (the compose
//! file, read and parsed), `compose_run` (the compose Envoy config run), `istio`, `reference`
//! (README's configuration reference).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod compose;
mod compose_run;
mod dockerfile;
mod envoy;
mod istio;
mod reference;

use serde::Deserialize;
use serde_json::Value;

use keygate_e2e::repo_root as root;

const PROXY_TOKEN: &str = "kgp_deploy_test_proxy_token_0123456789";

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
