//! `cargo xtask import-bench [--keys N] [--no-envoy]`: how long
//! `keygate-admin import` takes for N keys (default 1 000 000) against a release
//! `keygate-admin serve`, and then how long a fresh Envoy with the keygate filter takes to
//! hold them all, checked with an imported raw key through Envoy. Half the lines are raw
//! keys in another vendor's format, half SHA-256 hashes. Not part of `cargo xtask test`.
//! Everything runs on 127.0.0.1 in `target/import-bench/`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use super::{admin_call, envoy_ready, keygate_json, start_admin, start_envoy, step, wait_for, OPERATOR_TOKEN, T};
use crate::json::Json;
use crate::{http, Paths};

pub fn cmd(p: &Paths, args: &[String]) -> ExitCode {
    let mut keys: usize = 1_000_000;
    let mut envoy = true;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--keys" => match rest.next().and_then(|n| n.replace('_', "").parse().ok()) {
                Some(n) if n >= 2 => keys = n,
                _ => return crate::fail("--keys takes a number ≥ 2"),
            },
            "--no-envoy" => envoy = false,
            other => return crate::fail(&format!("import-bench takes --keys N and --no-envoy, not {other}")),
        }
    }
    match run(p, keys, envoy) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(&format!("import-bench: {e}")),
    }
}

/// A small deterministic generator (xorshift64*), so the file needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn text(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| char::from(alphabet[(self.next() % alphabet.len() as u64) as usize])).collect()
    }
}

/// Writes the CSV; returns two of its raw keys (first and last).
fn write_file(path: &Path, business: &str, n: usize, seed: u64) -> Result<(String, String), String> {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const HEX: &[u8] = b"0123456789abcdef";
    let mut rng = Rng(seed | 1);
    let mut out = String::with_capacity(n * 100);
    out.push_str("business,kind,mode,name,key,key_sha256\n");
    let (mut first, mut last) = (String::new(), String::new());
    for i in 0..n {
        if i % 2 == 0 {
            let raw = format!("vnd_live_{}", rng.text(BASE62, 24));
            let _ = writeln!(out, "{business},sk,live,imported {i},{raw},");
            if first.is_empty() {
                first = raw.clone();
            }
            last = raw;
        } else {
            let _ = writeln!(out, "{business},pk,test,imported {i},,{}", rng.text(HEX, 64));
        }
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((first, last))
}

fn run(p: &Paths, n: usize, with_envoy: bool) -> Result<(), String> {
    if with_envoy {
        crate::setup_and_build(p)?;
    }
    step("cargo build --release -p keygate-admin-cli");
    crate::run(&mut crate::cargo(p, &["build", "--release", "-p", "keygate-admin-cli"]), "cargo build --release -p keygate-admin-cli")?;
    let bin = p.root.join("target/release/keygate-admin");
    let dir = p.root.join("target/import-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let admin = start_admin(&bin, &dir, None)?;
    let biz = admin_call(&admin, "POST", "/v1/businesses", Some(OPERATOR_TOKEN), Some(r#"{"name":"Imported"}"#), 201)?;
    let business = biz.str("id").ok_or("no business id")?.to_owned();
    let file = dir.join("keys.csv");
    step(&format!("writing {n} lines to {}", file.display()));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64);
    let (first, last) = write_file(&file, &business, n, seed)?;

    let shown = format!("KEYGATE_URL=http://{} KEYGATE_OPERATOR_TOKEN=… {} import {} --json", admin.addr, bin.display(), file.display());
    step(&shown);
    let t0 = Instant::now();
    let output = import_json(&bin, &file, &admin.addr)?;
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("import failed ({}): {stdout}{}", output.status, String::from_utf8_lossy(&output.stderr)));
    }
    let summary = Json::parse(stdout.trim())?;
    let imported = summary.num("imported").unwrap_or(0.0) as usize;
    if imported != n {
        return Err(format!("imported {imported} of {n}: {stdout}"));
    }
    let size = std::fs::metadata(dir.join("admin-data"))
        .map(|_| super::sh("du", &["-sh", &dir.join("admin-data").to_string_lossy()]))
        .unwrap_or_default();
    println!(
        "==> import of {n} keys: {secs:.1} s ({:.0} keys/s); store on disk: {}",
        n as f64 / secs,
        size.split_whitespace().next().unwrap_or("?")
    );

    // The same file again: everything skipped.
    let t1 = Instant::now();
    let again = import_json(&bin, &file, &admin.addr)?;
    let again = Json::parse(String::from_utf8_lossy(&again.stdout).trim())?;
    println!("==> re-run of the same file: {:.1} s, skipped {}", t1.elapsed().as_secs_f64(), again.num("skipped").unwrap_or(0.0));

    if !with_envoy {
        return Ok(());
    }
    let wasm = p.wasm.to_string_lossy().into_owned();
    let json = keygate_json(r#","routes":[{"prefix":"/","require":"key"}]"#);
    let admin_port: u16 = admin.addr.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("admin port")?;
    step("a fresh Envoy with the keygate filter: full sync of the imported keys");
    let t2 = Instant::now();
    let mut envoy = start_envoy(p, &dir, "import", "keygate.yaml", &[("KEYGATE_WASM", &wasm), ("KEYGATE_JSON", &json)], admin_port, None)?;
    envoy_ready(&mut envoy)?;
    let want = n as u64;
    wait_for(Duration::from_secs(600), Duration::from_millis(50), &format!("filter holding {want} keys"), || {
        Ok(envoy.snapshot_keys().filter(|&k| k >= want))
    })?;
    let sync = t2.elapsed().as_secs_f64();
    let through = |key: &str| http::request("GET", &envoy.addr(), "/orders", &[("secret_key", key)], None, T).map(|r| r.status);
    let (a, b, wrong) = (through(&first)?, through(&last)?, through(&format!("{last}x"))?);
    println!("==> Envoy (start + full sync) holds {want} keys after {sync:.1} s; imported raw keys through Envoy: {a}, {b}; a wrong one: {wrong}");
    if (a, b, wrong) != (200, 200, 401) {
        return Err(format!("unexpected statuses through Envoy: {a} {b} {wrong} (want 200 200 401)"));
    }
    Ok(())
}

/// `keygate-admin import FILE --json` against the admin at `addr`.
fn import_json(bin: &Path, file: &Path, addr: &str) -> Result<std::process::Output, String> {
    Command::new(bin)
        .arg("import")
        .arg(file)
        .arg("--json")
        .env("KEYGATE_URL", format!("http://{addr}"))
        .env("KEYGATE_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))
}
