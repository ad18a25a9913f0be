//! `keygate-echo`: the demo upstream behind the reference `envoy.yaml`.
//!
//! It answers every request (any method, any path) with `200` and a JSON body
//!
//! ```json
//! {"method": "GET", "path": "/orders?limit=2", "headers": {"host": "…", "x-keygate-business": "biz_…"}}
//! ```
//!
//! so a user can see exactly what the keygate filter forwarded upstream.
//!
//! - `path` is the request target's path with its query string, if any (`?…`).
//! - `headers` maps each header name, lower-case, to its value as a string. A header sent
//!   more than once appears once, its values joined with `", "` in the order received (the
//!   usual HTTP list-folding). Bytes that are not UTF-8 are replaced with U+FFFD.
//! - The request body is read to the end and ignored.
//!
//! Usage: `keygate-echo [--addr IP:PORT]` (default `127.0.0.1:8081`, or `KEYGATE_ECHO_ADDR`).
//! Port 0 picks a free port. Once bound it prints one line to stdout,
//! `keygate-echo listening on IP:PORT`, and it exits cleanly on SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use warp::http::{HeaderMap, Method};
use warp::{Buf, Filter, Stream};

const DEFAULT_ADDR: &str = "127.0.0.1:8081";
const USAGE: &str = "\
keygate-echo: demo upstream; answers every request with 200 and
{\"method\", \"path\", \"headers\"} as JSON (repeated headers joined with \", \").

usage: keygate-echo [--addr IP:PORT]

  --addr IP:PORT   listen address (default 127.0.0.1:8081; port 0 picks a free port)
  -h, --help       this text

env: KEYGATE_ECHO_ADDR   listen address when --addr is not given
";

fn parse_args() -> Result<SocketAddr, String> {
    let mut addr = std::env::var("KEYGATE_ECHO_ADDR").ok().filter(|a| !a.is_empty());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--addr" => addr = Some(args.next().ok_or("--addr needs a value")?),
            other => match other.strip_prefix("--addr=") {
                Some(v) => addr = Some(v.to_string()),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    let addr = addr.unwrap_or_else(|| DEFAULT_ADDR.to_string());
    addr.parse().map_err(|e| format!("bad address {addr:?}: {e}"))
}

/// The echo document for one request.
fn echo(method: &Method, path: &str, query: &str, headers: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let joined =
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect::<Vec<_>>().join(", ");
        map.insert(name.as_str().to_string(), joined.into());
    }
    let path = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
    serde_json::json!({ "method": method.as_str(), "path": path, "headers": map })
}

/// Reads a request body to its end (so the client is never cut off mid-send), keeping none of it.
async fn drain<S, B>(body: S)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    while let Some(Ok(_chunk)) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {}
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() {
    let addr = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keygate-echo: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keygate-echo: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());

    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let route = warp::method().and(warp::path::full()).and(query).and(warp::header::headers_cloned()).and(warp::body::stream()).then(
        |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, body| async move {
            drain(body).await;
            warp::reply::json(&echo(&method, path.as_str(), &query, &headers))
        },
    );

    // Graceful: stop accepting at the signal, let requests in flight finish, but never
    // hang on a client that keeps its connection open: exit after at most 2 s regardless.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = warp::serve(route)
        .incoming(listener)
        .graceful(async {
            let _ = rx.await;
        })
        .run();
    let server = tokio::spawn(server);

    println!("keygate-echo listening on {bound}");
    let _ = std::io::stdout().flush();

    shutdown_signal().await;
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    #[test]
    fn joins_repeated_headers_and_keeps_query() {
        let mut h = HeaderMap::new();
        h.append("X-Multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert("host", HeaderValue::from_static("example"));
        let v = echo(&Method::POST, "/orders", "a=1&b=2", &h);
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/orders?a=1&b=2");
        assert_eq!(v["headers"]["x-multi"], "a, b");
        assert_eq!(v["headers"]["host"], "example");
        assert_eq!(echo(&Method::GET, "/", "", &h)["path"], "/");
    }
}
