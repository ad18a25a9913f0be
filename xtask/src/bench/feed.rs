//! A synthetic snapshot feed for the large-key-count measurements: serves one prepared
//! full snapshot (admin's real one plus N synthetic keys) as admin does — whole for
//! `GET /v1/snapshot`, or in pages sorted by key hash for `?limit=N[&after=<hash>]` (each
//! page but the last carries `next_after`) — holds `?since=V&wait=S` long-polls for S
//! seconds (at most 30) and then answers an empty delta, and accepts `POST /v1/usage`. Until [`Feed::open`] every request gets a
//! 503, so the filter's memory can be measured before its first snapshot. Loopback only;
//! every thread stops within ~0.2 s of the feed being dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Feed {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// The snapshot to serve: its version, the JSON members every page carries besides the
/// keys (`"signing_keys":[…],"revoked_sessions":[…]`), and the keys as (hash hex, JSON)
/// sorted by hash.
pub struct Data {
    pub version: u64,
    pub members: String,
    pub keys: Vec<(String, String)>,
}

impl Data {
    /// The keys above `after`, at most `limit`, as one snapshot page.
    fn page(&self, after: Option<&str>, limit: usize) -> Vec<u8> {
        let start = after.map_or(0, |a| self.keys.partition_point(|(h, _)| h.as_str() <= a));
        let end = start.saturating_add(limit).min(self.keys.len());
        let mut out = String::with_capacity((end - start) * 180 + self.members.len() + 200);
        out.push_str(&format!("{{\"version\":{},\"keys\":[", self.version));
        for (i, (_, json)) in self.keys[start..end].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(json);
        }
        out.push_str("],");
        out.push_str(&self.members);
        if end < self.keys.len() && end > start {
            out.push_str(&format!(",\"next_after\":\"{}\"", self.keys[end - 1].0));
        }
        out.push('}');
        out.into_bytes()
    }
}

struct Shared {
    data: Data,
    version: u64,
    open: AtomicBool,
    stop: AtomicBool,
    /// Snapshot pages (or whole snapshots) served.
    full_served: AtomicU64,
}

impl Feed {
    pub fn start(data: Data) -> Result<Feed, String> {
        let version = data.version;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("feed: bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| format!("feed: {e}"))?.port();
        listener.set_nonblocking(true).map_err(|e| format!("feed: {e}"))?;
        let shared =
            Arc::new(Shared { data, version, open: AtomicBool::new(false), stop: AtomicBool::new(false), full_served: AtomicU64::new(0) });
        let s = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || serve(stream, &s));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(Feed { port, shared, accept: Some(accept) })
    }

    /// From now on the feed answers (the measured sync starts here).
    pub fn open(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }

    pub fn full_served(&self) -> u64 {
        self.shared.full_served.load(Ordering::SeqCst)
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// One keep-alive connection from Envoy: request after request until it closes or the
/// feed stops.
fn serve(mut stream: TcpStream, s: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    while !s.stop.load(Ordering::SeqCst) {
        // One request head (bounded), then its body, if any.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i);
            }
            if buf.len() > 65536 || s.stop.load(Ordering::SeqCst) {
                break None;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        };
        let Some(head_end) = head_end else { return };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let body_len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(64 << 20);
        let deadline = Instant::now() + Duration::from_secs(10);
        while buf.len() < head_end + 4 + body_len && Instant::now() < deadline && !s.stop.load(Ordering::SeqCst) {
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
        buf.drain(..(head_end + 4 + body_len).min(buf.len()));
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        if !respond(&mut stream, s, head.starts_with("POST "), &target) {
            return;
        }
    }
}

fn query<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1;
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn query_u64(target: &str, name: &str) -> Option<u64> {
    query(target, name).and_then(|v| v.parse().ok())
}

/// Writes one answer; false when the connection should close.
fn respond(stream: &mut TcpStream, s: &Shared, post: bool, target: &str) -> bool {
    let write = |stream: &mut TcpStream, status: &str, body: &[u8]| -> bool {
        let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).is_ok()
    };
    if !s.open.load(Ordering::SeqCst) {
        return write(stream, "503 Service Unavailable", br#"{"success":false,"error":"feed not open yet","code":"unavailable"}"#);
    }
    let path = target.split('?').next().unwrap_or("");
    if post && path == "/v1/usage" {
        return write(stream, "200 OK", b"{}");
    }
    if path != "/v1/snapshot" {
        return write(stream, "404 Not Found", br#"{"success":false,"error":"not found","code":"not_found"}"#);
    }
    match query_u64(target, "since") {
        None => {
            s.full_served.fetch_add(1, Ordering::SeqCst);
            let limit = query_u64(target, "limit").map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
            write(stream, "200 OK", &s.data.page(query(target, "after"), limit))
        }
        Some(since) if since != s.version => write(stream, "410 Gone", br#"{"success":false,"error":"resync","code":"gone"}"#),
        Some(since) => {
            // Nothing ever changes here: hold the poll, then confirm with an empty delta.
            let wait = Duration::from_secs(query_u64(target, "wait").unwrap_or(0).min(30));
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if s.stop.load(Ordering::SeqCst) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let body = format!(r#"{{"version":{},"since":{since},"keys":[],"signing_keys":[],"revoked_sessions":[]}}"#, s.version);
            write(stream, "200 OK", body.as_bytes())
        }
    }
}
