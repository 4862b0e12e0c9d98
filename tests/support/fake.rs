//! A fake "Consul" that answers every connection with the same bytes, whatever was asked: for
//! servers that answer garbage, non-JSON, a huge body, the wrong content type, or close in the
//! middle of an answer. Plain `std::net`, one thread per server, stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the fake waits for a request's head before answering anyway.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A listening fake server.
pub(crate) struct FakeServer {
    addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Chooses the answer from the request line (`PUT /v1/session/create HTTP/1.1`).
type Route = dyn Fn(&str) -> Vec<u8> + Send + Sync;

impl FakeServer {
    /// Answers each connection with `answer` and closes it.
    pub(crate) fn start(answer: Vec<u8>) -> FakeServer {
        FakeServer::routed(move |_| answer.clone())
    }

    /// Answers each connection with what `route` says for its request line, and closes it.
    pub(crate) fn routed(route: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let thread_stop = stop.clone();
        let thread_requests = requests.clone();
        let route: Arc<Route> = Arc::new(route);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let route = route.clone();
                let requests = thread_requests.clone();
                std::thread::spawn(move || serve(stream, &*route, &requests));
            }
        });
        FakeServer {
            addr,
            stop,
            requests,
        }
    }

    /// The request lines received so far, in order.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// An HTTP/1.1 answer with a status line, headers and body (Content-Length added).
    pub(crate) fn http(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\n");
        for header in headers {
            out.push_str(header);
            out.push_str("\r\n");
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// `host:port`.
    pub(crate) fn addr(&self) -> String {
        self.addr.clone()
    }
}

fn serve(mut stream: TcpStream, route: &Route, requests: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    // Read the request head (the body, if any, is not needed to answer nonsense).
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&seen);
    let line = head.lines().next().unwrap_or("").to_string();
    if !line.is_empty() {
        requests.lock().unwrap().push(line.clone());
    }
    let _ = stream.write_all(&route(&line));
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}
