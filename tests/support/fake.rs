//! A fake "Consul" that answers every connection with the same bytes, whatever was asked: for
//! servers that answer garbage, non-JSON, a huge body, the wrong content type, or close in the
//! middle of an answer. Plain `std::net`, one thread per server, stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long the fake waits for a request's head before answering anyway.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A listening fake server.
pub(crate) struct FakeServer {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    /// Answers each connection with `answer` and closes it.
    pub(crate) fn start(answer: Vec<u8>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let answer = answer.clone();
                std::thread::spawn(move || serve(stream, &answer));
            }
        });
        FakeServer { addr, stop }
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

fn serve(mut stream: TcpStream, answer: &[u8]) {
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
    let _ = stream.write_all(answer);
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
