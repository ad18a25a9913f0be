//! The compose Envoy config, run: the real Envoy, admin and echo binaries on loopback.

use keygate_e2e::{artifact, free_port, spawn_listening, ChildGuard};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::compose::{healthcheck, port_of};
use crate::envoy::envoy_view;
use crate::{read, yaml, PROXY_TOKEN};

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "deploy/envoy-compose.yaml should contain {from:?} exactly once");
    text.replacen(from, to, 1)
}

/// Runs a compose health check command (bash) with its port moved to `port`.
fn health(cmd: &str, from_port: u64, port: u16) -> bool {
    let cmd = replace_once(cmd, &format!("127.0.0.1/{from_port}"), &format!("127.0.0.1/{port}"));
    Command::new("bash").args(["-c", &cmd]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A GET through Envoy: the status and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
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
    let (_admin, admin_at) = spawn_listening("admin", admin, &dir);
    let admin_at = port_of(&admin_at) as u16;
    let mut echo = Command::new(&echo_bin);
    echo.args(["--addr", "127.0.0.1:0"]);
    let (_echo, echo_at) = spawn_listening("echo", echo, &dir);
    let echo_at = port_of(&echo_at) as u16;

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
    let _envoy = ChildGuard::new("envoy", envoy);

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

    // Envoy's active health check of the admin cluster (GET /healthz) passes against the real admin.
    let healthy = format!("keygate_admin::127.0.0.1:{admin_at}::health_flags::healthy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(envoy_admin_at, "/clusters").1.contains(&healthy) {
        assert!(Instant::now() < deadline, "Envoy never found admin healthy: {}", http_get(envoy_admin_at, "/clusters").1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `postgres` profile's Envoy config: Envoy accepts it, the filter takes its configuration
/// (host names resolve only inside compose, so validation only).
#[test]
fn compose_replicas_envoy_config_validates() {
    let envoy_bin = artifact("KEYGATE_ENVOY_BIN", ".venv/bin/envoy");
    let wasm = artifact("KEYGATE_WASM", "target/wasm32-wasip1/release/keygate_filter.wasm");
    let dir = std::env::temp_dir().join(format!("keygate-deploy-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = read("deploy/envoy-compose-replicas.yaml");
    let text = replace_once(&text, "filename: /etc/envoy/keygate_filter.wasm", &format!("filename: {}", wasm.display()));
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, text).unwrap();
    let validate =
        Command::new(&envoy_bin).args(["--mode", "validate", "-c"]).arg(&config).env("KEYGATE_PROXY_TOKEN", PROXY_TOKEN).output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&validate.stdout), String::from_utf8_lossy(&validate.stderr));
    assert!(validate.status.success() && out.contains(" OK"), "envoy --mode validate refused deploy/envoy-compose-replicas.yaml:\n{out}");
    assert!(out.contains("configured: "), "the filter did not take its configuration:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
