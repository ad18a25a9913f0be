//! Durable key creations per second over real HTTP, group commit against one flush per
//! write, in the same run on the same disk.
//!
//! ```text
//! cargo run --release -p keygate-admin --example durable_writes -- --clients 64 --seconds 5
//! ```
//!
//! Each round starts the real server in-process on a fresh sled directory under `--dir`
//! (default: the system temp directory; pass a directory on the disk you care about),
//! creates one business, then runs `--clients` concurrent HTTP clients that create API
//! keys (`POST /v1/businesses/{id}/keys`) for `--seconds`. Every 201 counted was flushed
//! to disk before it was sent. Round one uses the server's group commit; round two the
//! hidden baseline mode where every write makes its own blocking flush.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keygate_admin::{AppState, Config, Secret};
use serde_json::json;

const OPERATOR: &str = "kgo_durable-writes-benchmark-operator-token";
const PROXY: &str = "kgp_durable-writes-benchmark-proxy-token-000";

#[derive(Parser)]
#[command(about = "Durable key creations per second: group commit vs one flush per write.")]
struct Args {
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each round runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Parent directory of the two sled directories (same disk for both rounds).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Round {
    ok: u64,
    failed: u64,
    elapsed: Duration,
}

impl Round {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

async fn round(parent: &std::path::Path, flush_per_write: bool, clients: usize, seconds: u64) -> Round {
    let dir = tempfile::tempdir_in(parent).unwrap();
    let mut config = Config::new(dir.path());
    config.operator_token = Some(Secret::new(OPERATOR));
    config.proxy_token = Some(Secret::new(PROXY));
    config.flush_per_write = flush_per_write;
    let (state, _) = AppState::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keygate_admin::run(listener, state, async move {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let business: serde_json::Value = http
        .post(format!("{base}/v1/businesses"))
        .bearer_auth(OPERATOR)
        .json(&json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = Arc::new(format!("{base}/v1/businesses/{}/keys", business["id"].as_str().unwrap()));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, ok, failed) = (http.clone(), Arc::clone(&url), Arc::clone(&ok), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let sent = http.post(url.as_str()).bearer_auth(OPERATOR).json(&json!({"kind": "sk", "mode": "test"})).send().await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    Round { ok: ok.load(Ordering::Relaxed), failed: failed.load(Ordering::Relaxed), elapsed }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).unwrap();
    println!(
        "durable key creations over HTTP: {} clients, {} s per round, sled directories under {}",
        args.clients,
        args.seconds,
        parent.display()
    );
    let group = round(&parent, false, args.clients, args.seconds).await;
    println!(
        "group commit:         {:>8.0} creates/s  ({} created, {} failed, {:.1} s)",
        group.rate(),
        group.ok,
        group.failed,
        group.elapsed.as_secs_f64()
    );
    let single = round(&parent, true, args.clients, args.seconds).await;
    println!(
        "one flush per write:  {:>8.0} creates/s  ({} created, {} failed, {:.1} s)",
        single.rate(),
        single.ok,
        single.failed,
        single.elapsed.as_secs_f64()
    );
    println!("ratio:                {:>8.1}x", group.rate() / single.rate().max(f64::MIN_POSITIVE));
}
