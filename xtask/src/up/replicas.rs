//! `cargo xtask up --store postgres`: a throwaway PostgreSQL under `target/keygate-up-pg/`,
//! two admin replicas over it (:8080 and :8082), and an Envoy config listing both in its
//! `keygate_admin` cluster (`.keygate/envoy-replicas.yaml`, made from envoy.yaml).

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

use super::{rel, write_private, ENVOY_YAML_ADMIN};
use crate::postgres::{self, Cluster};
use crate::stack::replace_once;
use crate::{step, Paths};

/// The replicas' listen addresses: the first is where envoy.yaml's cluster points.
pub(super) const REPLICAS: [&str; 2] = [ENVOY_YAML_ADMIN, "127.0.0.1:8082"];

/// A new cluster under target/keygate-up-pg/. `up` installs nothing: without Debian's
/// postgresql it says what to run.
pub(super) fn start_postgres(p: &Paths) -> Result<Cluster, String> {
    let bin = postgres::bin_dir().ok_or(
        "PostgreSQL is not installed: run `cargo xtask setup` (installs Debian's postgresql) \
         or `apt-get install postgresql`, then `cargo xtask up --store postgres` again",
    )?;
    postgres::start_in(bin, p, "target/keygate-up-pg")
}

/// envoy.yaml with the second replica listed in `keygate_admin`, written to
/// .keygate/envoy-replicas.yaml; its path.
pub(super) fn envoy_config(p: &Paths) -> Result<PathBuf, String> {
    let yaml = fs::read_to_string(&p.envoy_yaml).map_err(|e| format!("{}: {e}", p.envoy_yaml.display()))?;
    let endpoint = |addr: &str| {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
        format!("        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}\n")
    };
    let both = format!("{}{}", endpoint(REPLICAS[0]), endpoint(REPLICAS[1]));
    let yaml = replace_once(&yaml, &endpoint(REPLICAS[0]), &both)?;
    let header = "# Made by `cargo xtask up --store postgres` from envoy.yaml: the keygate_admin cluster\n\
                  # lists both admin replicas. Edit envoy.yaml instead; this file is rewritten.\n";
    let path = p.state.join("envoy-replicas.yaml");
    fs::create_dir_all(&p.state).map_err(|e| format!("create {}: {e}", p.state.display()))?;
    fs::write(&path, format!("{header}{yaml}")).map_err(|e| format!("write {}: {e}", path.display()))?;
    step(&format!("Envoy config with both replicas: {}", rel(p, &path)));
    Ok(path)
}

/// The seal key every replica must share: KEYGATE_SEAL_KEY from the environment, else the
/// one kept in .keygate/seal.env, else a new random one (written there, mode 0600).
pub(super) fn seal_key(p: &Paths) -> Result<String, String> {
    const VAR: &str = "KEYGATE_SEAL_KEY";
    if let Some(key) = std::env::var(VAR).ok().filter(|v| !v.is_empty()) {
        return Ok(key);
    }
    let file = p.state.join("seal.env");
    let kept = fs::read_to_string(&file).unwrap_or_default();
    if let Some(key) = kept.lines().filter_map(|l| l.split_once('=')).find(|(k, _)| k.trim() == VAR).map(|(_, v)| v.trim()) {
        if !key.is_empty() {
            return Ok(key.to_owned());
        }
    }
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(|e| format!("/dev/urandom: {e}"))?;
    let key = format!("kgseal_{}", crate::json::base64url(&bytes));
    fs::create_dir_all(&p.state).map_err(|e| format!("create {}: {e}", p.state.display()))?;
    write_private(&file, &format!("# The admin replicas' seal key, made by `cargo xtask up --store postgres`.\n{VAR}={key}\n"))?;
    step(&format!("generated a seal key into {}", rel(p, &file)));
    Ok(key)
}
