//! `cargo xtask ip-flood [--addresses N] [--wasm PATH] [--threads T]`: Envoy's memory after N
//! distinct client addresses hit `/public/…` (a measurement, not part of `test`).
//!
//! Starts its own echo, admin and Envoy (the repository's `envoy.yaml`, ports rewritten,
//! `--concurrency 2`), then makes one request from each of N loopback addresses: Linux
//! routes all of 127.0.0.0/8 to `lo`, so binding a client socket to 127.a.b.c before
//! connecting gives Envoy a distinct peer each time (keep-alive off). Prints Envoy's RSS and
//! `server.memory_allocated` before and after. Bounded: N requests, and at most
//! `--max-secs` (default 1800).

use std::ffi::c_int;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proc::{free_port, Proc};
use crate::stack::{self, EnvoyYaml};
use crate::{http, step, Paths};

const PROXY_TOKEN: &str = "kgp_ip_flood_proxy_token_for_measurement";
const OPERATOR_TOKEN: &str = "kgo_ip_flood_operator_token_for_measurement";
const T: Duration = Duration::from_secs(5);

struct Options {
    addresses: u32,
    wasm: Option<PathBuf>,
    threads: u32,
    max_secs: u64,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options { addresses: 1_000_000, wasm: None, threads: 8, max_secs: 1800 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--addresses" => o.addresses = value(a)?.parse().map_err(|e| format!("--addresses: {e}"))?,
            "--wasm" => o.wasm = Some(PathBuf::from(value(a)?)),
            "--threads" => o.threads = value(a)?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--max-secs" => o.max_secs = value(a)?.parse().map_err(|e| format!("--max-secs: {e}"))?,
            other => return Err(format!("ip-flood: unknown argument {other}")),
        }
    }
    // 127.1.0.0 up to 127.254.255.255 (127.0.x.x stays free for the harness's own calls).
    if o.addresses == 0 || o.addresses > 254 * 65536 || o.threads == 0 || o.threads > 64 {
        return Err("ip-flood: --addresses 1..=16646144, --threads 1..=64".into());
    }
    Ok(o)
}

pub fn cmd(p: &Paths, args: &[String]) -> ExitCode {
    match parse(args).and_then(|o| run(p, &o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(&e),
    }
}

fn wait_until(what: &str, procs: &mut [&mut Proc], mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        for p in procs.iter_mut() {
            p.alive()?;
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// (VmRSS kB, `server.memory_allocated`, `server.memory_heap_size`).
fn memory(envoy_pid: u32, envoy_admin: &str) -> Result<(u64, u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{envoy_pid}/status")).map_err(|e| e.to_string())?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    let stats = http::get(envoy_admin, "/stats?filter=server.memory", T)?.body;
    let stat =
        |name: &str| stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok())).unwrap_or(0);
    Ok((rss, stat("server.memory_allocated"), stat("server.memory_heap_size")))
}

fn run(p: &Paths, o: &Options) -> Result<(), String> {
    crate::setup_and_build(p)?;
    let wasm = o.wasm.clone().unwrap_or_else(|| p.wasm.clone());
    let wasm = wasm.canonicalize().map_err(|e| format!("{}: {e}", wasm.display()))?;
    let dir = p.root.join("target/ip-flood");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

    let (mut echo, echo_port) = stack::start_echo(p, &dir)?;
    let admin_port = free_port()?;
    let mut admin_cmd = Command::new(&p.admin);
    stack::admin_serve(&mut admin_cmd, &format!("127.0.0.1:{admin_port}"), &dir.join("data"), OPERATOR_TOKEN, PROXY_TOKEN);
    let mut admin = Proc::spawn("keygate-admin", admin_cmd, dir.join("admin.log"))?;
    let yaml = EnvoyYaml { admin_port, echo_port, wasm: &wasm, extra: &[] };
    let stack::Envoy { proc: mut envoy, addr: envoy_addr, admin_addr: envoy_admin } = stack::start_envoy(p, &dir, &yaml, PROXY_TOKEN)?;
    let listen_port: u16 = envoy_addr.rsplit(':').next().and_then(|x| x.parse().ok()).ok_or("Envoy's port")?;
    wait_until("the stack ready (a snapshot in the filter)", &mut [&mut echo, &mut admin, &mut envoy], || {
        http::get(&envoy_admin, "/ready", T).is_ok_and(|r| r.status == 200)
            && http::get(&envoy_addr, "/orders", T).is_ok_and(|r| r.status == 401)
    })?;
    step(&format!("ip-flood: {} addresses, wasm {}, logs in {}", o.addresses, wasm.display(), dir.display()));
    let pid = envoy.pid();
    let before = memory(pid, &envoy_admin)?;

    let next = Arc::new(AtomicU64::new(0));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // 200, 429, other, error
    let deadline = Instant::now() + Duration::from_secs(o.max_secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..o.threads)
        .map(|_| {
            let (next, counts, total) = (Arc::clone(&next), Arc::clone(&counts), u64::from(o.addresses));
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    return;
                }
                // 127.1.0.0, 127.1.0.1, …: every request from a new address.
                let ip = [127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
                let slot = match one_request(ip, listen_port) {
                    Ok(200) => 0,
                    Ok(429) => 1,
                    Ok(_) => 2,
                    Err(_) => 3,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    let mut last = Instant::now();
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        envoy.alive()?;
        if last.elapsed() > Duration::from_secs(10) {
            last = Instant::now();
            let done = next.load(Ordering::Relaxed).min(u64::from(o.addresses));
            println!("    {done} requests, {:.0}/s", done as f64 / started.elapsed().as_secs_f64());
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let c: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let after = memory(pid, &envoy_admin)?;
    let mb = |kb: u64| kb as f64 / 1024.0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "ip-flood: {} requests from distinct addresses in {secs:.0} s: {} × 200, {} × 429, {} other, {} errors",
        c.iter().sum::<u64>(),
        c[0],
        c[1],
        c[2],
        c[3]
    );
    println!("ip-flood: Envoy RSS {:.1} MB -> {:.1} MB (+{:.1} MB)", mb(before.0), mb(after.0), mb(after.0.saturating_sub(before.0)));
    println!(
        "ip-flood: server.memory_allocated {:.1} MiB -> {:.1} MiB (+{:.1} MiB); server.memory_heap_size {:.1} MiB -> {:.1} MiB",
        mib(before.1),
        mib(after.1),
        mib(after.1.saturating_sub(before.1)),
        mib(before.2),
        mib(after.2)
    );
    if c[0] + c[1] == 0 {
        return Err("no request got an answer from the filter".into());
    }
    Ok(())
}

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: [u8; 2],
    addr: [u8; 4],
    zero: [u8; 8],
}

#[repr(C)]
struct Linger {
    onoff: c_int,
    secs: c_int,
}

extern "C" {
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const SockaddrIn, len: u32) -> c_int;
    fn connect(fd: c_int, addr: *const SockaddrIn, len: u32) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const std::ffi::c_void, len: u32) -> c_int;
    fn close(fd: c_int) -> c_int;
}

const AF_INET: c_int = 2;
const SOCK_STREAM_CLOEXEC: c_int = 1 | 0o2_000_000;
const SOL_IP: c_int = 0;
const IP_BIND_ADDRESS_NO_PORT: c_int = 24;
const SOL_SOCKET: c_int = 1;
const SO_LINGER: c_int = 13;

/// A TCP connection from `source` (port chosen by the kernel) to 127.0.0.1:`port`.
fn connect_from(source: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    let sockaddr = |addr: [u8; 4], port: u16| SockaddrIn { family: AF_INET as u16, port: port.to_be_bytes(), addr, zero: [0; 8] };
    let len = std::mem::size_of::<SockaddrIn>() as u32;
    // SAFETY: plain socket syscalls on a descriptor this function owns; on success the
    // descriptor moves into the TcpStream, which closes it.
    unsafe {
        let fd = socket(AF_INET, SOCK_STREAM_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: c_int = 1;
        setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, (&one as *const c_int).cast(), 4);
        // Reset on close: no TIME_WAIT pile-up across a million connections.
        let linger = Linger { onoff: 1, secs: 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, (&linger as *const Linger).cast(), std::mem::size_of::<Linger>() as u32);
        let local = sockaddr(source, 0);
        let remote = sockaddr([127, 0, 0, 1], port);
        if bind(fd, &local, len) != 0 || connect(fd, &remote, len) != 0 {
            let err = std::io::Error::last_os_error();
            close(fd);
            return Err(err);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// One `GET /public/flood` without keep-alive; the response status.
fn one_request(source: [u8; 4], port: u16) -> Result<u16, String> {
    let mut s = connect_from(source, port).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /public/flood HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    std::str::from_utf8(line).ok().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).ok_or_else(|| "no status line".into())
}
