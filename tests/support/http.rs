//! A tiny raw HTTP/1.1 client over `std::net::TcpStream`.
//!
//! The conformance tests speak to Consul (or the dev server) through this and nothing else: no
//! HTTP library and no project code, so what they check is what went over the wire. Each request
//! uses its own connection with `Connection: close` and reads to EOF; chunked bodies (which a
//! real Consul may send) are decoded.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Read/write timeout of an ordinary request.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of a connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer: status, headers (names lowercased, in order) and the body bytes.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `X-Consul-Index` as a number; panics when absent.
    pub(crate) fn index(&self) -> u64 {
        let value = self
            .header("x-consul-index")
            .unwrap_or_else(|| panic!("no index: {self:?}"));
        value
            .parse()
            .unwrap_or_else(|_| panic!("bad index {value:?}"))
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?} (status {})",
                self.text(),
                self.status
            )
        })
    }

    /// The body as text (lossy UTF-8).
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request with [`DEFAULT_TIMEOUT`]; panics on I/O errors.
pub(crate) fn request(
    addr: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request_with_timeout(addr, method, path_and_query, headers, body, DEFAULT_TIMEOUT)
}

/// Sends one request with an explicit read timeout (for blocking queries); panics on I/O errors.
pub(crate) fn request_with_timeout(
    addr: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Response {
    try_request(addr, method, path_and_query, headers, body, timeout)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path_and_query} failed: {e}"))
}

/// Sends one request; errors are returned (for probes that expect failures).
pub(crate) fn try_request(
    addr: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{addr} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head =
        format!("{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let sends_length = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        || headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    if !sends_length && (!body.is_empty() || matches!(method, "PUT" | "POST")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // A server may answer (a 413 on Content-Length, say) and close before taking the whole
    // body: the answer is then waiting to be read even though the rest cannot be written.
    let closed_early = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        )
    };
    match stream.write_all(body) {
        Err(e) if !closed_early(&e) => return Err(e),
        _ => {}
    }
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Err(e) if !closed_early(&e) || raw.is_empty() => return Err(e),
        _ => {}
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("header not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            _ => rest.to_vec(),
        }
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[test]
fn dechunks() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
    let response = parse(raw).unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "abcde"));
}
