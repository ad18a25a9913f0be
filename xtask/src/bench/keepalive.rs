//! A keep-alive HTTP/1.1 connection for the replica benchmarks: many requests on one
//! socket, as the load clients and the simulated proxies use admin (xtask's `http` opens
//! one connection per request, which would measure connection set-up instead). Answers
//! must carry a Content-Length (admin's always do).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

pub(super) struct Conn {
    addr: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Largest answer read (a delta of a burst is a few KiB; a key list is not asked for).
const MAX_ANSWER: usize = 16 << 20;

impl Conn {
    /// Connects to `addr`; `timeout` bounds the connect and every later read or write.
    pub(super) fn open(addr: &str, timeout: Duration) -> Result<Conn, String> {
        let fail = |e: std::io::Error| format!("connect {addr}: {e}");
        let sock = addr.to_socket_addrs().map_err(fail)?.next().ok_or_else(|| format!("{addr}: no address"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout).map_err(fail)?;
        stream.set_read_timeout(Some(timeout)).map_err(fail)?;
        stream.set_write_timeout(Some(timeout)).map_err(fail)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn { addr: addr.to_owned(), stream, buf: Vec::with_capacity(4096) })
    }

    /// A handle that can shut the socket down from another thread (ending a held read).
    pub(super) fn closer(&self) -> Result<TcpStream, String> {
        self.stream.try_clone().map_err(|e| format!("{}: {e}", self.addr))
    }

    /// Sends one request and reads its answer: (status, body).
    pub(super) fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keygate-xtask-bench\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
        } else {
            req.push_str("\r\n");
        }
        self.stream.write_all(req.as_bytes()).map_err(|e| format!("{method} http://{}{path}: {e}", self.addr))?;
        self.answer().map_err(|e| format!("{method} http://{}{path}: {e}", self.addr))
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn answer(&mut self) -> Result<(u16, String), String> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 65536 {
                return Err("answer head over 64 KiB".into());
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status =
            status_line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let length = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or("answer without Content-Length")?;
        if length > MAX_ANSWER {
            return Err(format!("answer of {length} bytes"));
        }
        let end = head_end + 4 + length;
        while self.buf.len() < end {
            self.fill()?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end + 4..end]).into_owned();
        self.buf.drain(..end);
        Ok((status, body))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
