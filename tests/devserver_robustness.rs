//! The dev server against slow, broken and hostile peers, and under load (issue 15, "The dev
//! server"), on loopback only. Each test starts its own dev server: the binary when the test
//! needs a process (its stderr, its file-descriptor limit, its memory), or an in-process
//! [`DevServer`] when it needs options the command line does not offer (short timeouts).
//!
//! Nothing here waits with a sleep for something to happen: conditions are polled with
//! deadlines. Two tests hold a situation for a fixed span on purpose (a file-descriptor
//! exhaustion, a write burst) and measure what the server did during it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use consullock::devserver::{DevServer, Options};
use serde_json::{Value, json};

use crate::support::http::{request, try_request};
use crate::support::{TestConsul, report, wait_until};

/// Deadline for something that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);

/// A dev server inside this test process, with its own runtime on its own thread.
struct InProcess {
    addr: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    fn start(options: Options) -> InProcess {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = DevServer::start(options).await.expect("start");
                ready_tx.send(server.address()).expect("ready");
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                std::thread::spawn(move || {
                    let _ = stop_rx.recv();
                    let _ = done_tx.send(());
                });
                let _ = done_rx.await;
                drop(server);
            });
        });
        let addr = ready_rx
            .recv_timeout(PROMPT)
            .expect("in-process dev server");
        InProcess {
            addr: addr.to_string(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A dev server process started through `sh -c` (for `ulimit`), whose stderr lines are kept.
struct Spawned {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    fn start(shell_prefix: &str, args: &str) -> Spawned {
        let bin = env!("CARGO_BIN_EXE_consullock");
        let script = format!("{shell_prefix} exec '{bin}' dev-server --listen 127.0.0.1:0 {args}");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dev server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://")
                    && let Some(tx) = tx.take()
                {
                    let rest = &line[at + "listening on http://".len()..];
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                kept.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(PROMPT).expect("start-up line");
        Spawned { child, addr, log }
    }

    fn lines_with(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_ok(addr: &str, path: &str) -> bool {
    try_request(addr, "GET", path, &[], b"", PROMPT).is_ok_and(|r| r.status == 200)
}

/// A connection from a chosen loopback address (127.0.0.0/8 all reaches this machine), so that
/// one test can play several clients.
fn connect_from(source: IpAddr, addr: &str) -> TcpStream {
    let target: SocketAddr = addr.parse().expect("address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind");
        socket.connect(target).await.expect("connect")
    });
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// Reads a whole answer from a raw stream until the peer closes it or `timeout` passes.
fn read_all(stream: &mut TcpStream, timeout: Duration) -> String {
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

fn dev_stats(addr: &str) -> Value {
    request(addr, "GET", "/_devserver/stats", &[], b"").json()
}

/// EMFILE on accept: the server backs off instead of spinning, says so once per back-off
/// instead of once per failure, and serves again as soon as descriptors are free.
#[test]
fn accept_errors_back_off_and_are_logged_once() {
    let server = Spawned::start("ulimit -n 48;", "");
    let mut held = Vec::new();
    let deadline = Instant::now() + PROMPT;
    // Each accepted connection costs the server a descriptor; keep opening until it fails.
    while server.lines_with("accept failed") == 0 {
        assert!(
            Instant::now() < deadline,
            "the server never ran out of descriptors"
        );
        if let Ok(stream) = TcpStream::connect(&server.addr) {
            held.push(stream);
        }
        if held.len() > 200 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Hold the exhaustion for a second: a server retrying at once logs thousands of lines.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let logged = server.lines_with("accept failed");
    assert!(logged <= 2, "{logged} accept-failure lines in one second");
    drop(held);
    wait_until(PROMPT, "the server to serve again", || {
        get_ok(&server.addr, "/v1/status/leader")
    });
    wait_until(PROMPT, "the recovery line", || {
        server.lines_with("accepting connections again") >= 1
    });
}

/// Past 200 concurrent connections from one address, a connection gets go-connlimit's raw 429
/// and is closed, as Consul's `http_max_conns_per_client` does; other addresses are not
/// affected, and a freed slot is usable again.
#[test]
fn connections_per_client_are_capped_with_a_429() {
    let c = TestConsul::start_dev_server(&[]);
    let addr = c.addr();
    let mut idle: Vec<TcpStream> = (0..199)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // The 200th: a request on it proves the 199 before it were accepted.
    // (Kept open: keep-alive, read up to the end of the JSON body.)
    let mut last = TcpStream::connect(&addr).expect("connect");
    last.write_all(b"GET /_devserver/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    last.set_read_timeout(Some(PROMPT)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer.ends_with(b"}") {
        let n = last.read(&mut buffer).expect("stats answer");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("\"connections\":200"), "{answer}");
    let mut refused = TcpStream::connect(&addr).expect("connect");
    let answer = read_all(&mut refused, PROMPT);
    assert!(
        answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{answer:?}"
    );
    assert!(
        answer.ends_with(
            "\r\n\r\nYour IP is issuing too many concurrent connections, please rate limit your \
             calls\n"
        ),
        "{answer:?}"
    );
    // Another client address is not affected.
    let mut other = connect_from("127.0.0.2".parse().unwrap(), &addr);
    other
        .write_all(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_all(&mut other, PROMPT).starts_with("HTTP/1.1 200"));
    idle.pop();
    wait_until(PROMPT, "a freed slot to be usable", || {
        get_ok(&addr, "/v1/status/leader")
    });
}

/// An idle keep-alive connection, and one whose request head never finishes, are closed after
/// the idle timeout; a blocking query longer than it is not cut.
#[test]
fn idle_and_slow_connections_are_closed() {
    let server = InProcess::start(Options {
        idle_timeout: Duration::from_millis(300),
        ..Options::default()
    });
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.write_all(b"GET /v1/status/leader HTTP/1.1\r\nHo")
        .unwrap();
    let started = Instant::now();
    // read_all returns when the server closes; the deadline is far above the timeout.
    read_all(&mut idle, PROMPT);
    read_all(&mut slow, PROMPT);
    assert!(started.elapsed() < Duration::from_secs(5), "not closed");
    let index = request(&server.addr, "GET", "/v1/kv/k", &[], b"").index();
    let r = request(
        &server.addr,
        "GET",
        &format!("/v1/kv/k?index={index}&wait=1s"),
        &[],
        b"",
    );
    assert_eq!(r.status, 404);
}

/// A body that does not arrive within the body read timeout is answered 408.
#[test]
fn bodies_are_read_with_a_timeout() {
    let server = InProcess::start(Options {
        body_read_timeout: Duration::from_millis(300),
        ..Options::default()
    });
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .write_all(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let answer = read_all(&mut stream, PROMPT);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(
        request(&server.addr, "GET", "/v1/kv/k", &[], b"").status,
        404
    );
}

/// A declared body over the limit is refused before any of it is read, with Consul's 413 text;
/// a body without a declared length is cut at the limit.
#[test]
fn large_bodies_are_refused_before_reading() {
    let c = TestConsul::start_dev_server(&[]);
    let addr = c.addr();
    let head_only = |head: &str| {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        // Nothing of the body is sent: an answer can only come from the declared length.
        read_all(&mut stream, PROMPT)
    };
    let answer =
        head_only("PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(
        answer.contains(
            "Request body(104857600 bytes) too large, max size: 524288 bytes. See https://"
        ),
        "{answer:?}"
    );
    let answer =
        head_only("PUT /v1/session/create HTTP/1.1\r\nHost: x\r\nContent-Length: 15728640\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    let answer = head_only("PUT /v1/txn HTTP/1.1\r\nHost: x\r\nContent-Length: 600000\r\n\r\n");
    assert!(answer.contains("txn_max_req_len"), "{answer:?}");
    // Chunked: cut at the limit, whatever the client meant to send.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..9 {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = stream.write_all(&chunk);
        let _ = stream.write_all(b"\r\n");
    }
    let answer = read_all(&mut stream, PROMPT);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert_eq!(c.get("/v1/kv/big").status, 404);
    assert_eq!(c.dev_stats().unwrap()["sessions"], 0);
}

/// A blocking query is woken by a write to what it watches, and by nothing else.
#[test]
fn blocking_queries_wake_only_for_what_they_watch() {
    let c = TestConsul::start_dev_server(&[]);
    let addr = c.addr();
    assert!(c.put("/v1/kv/watched/a", b"1").json().as_bool().unwrap());
    let index = c.get("/v1/kv/watched/?recurse").index();
    let (tx, rx) = mpsc::channel();
    for path in [
        format!("/v1/kv/watched/?recurse&index={index}&wait=30s"),
        format!("/v1/kv/watched/a?index={index}&wait=30s"),
        format!("/v1/kv/watched/missing?index={index}&wait=30s"),
    ] {
        let addr = addr.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let r = crate::support::http::request_with_timeout(
                &addr,
                "GET",
                &path,
                &[],
                b"",
                Duration::from_secs(60),
            );
            let _ = tx.send((path, r.status, Instant::now()));
        });
    }
    wait_until(PROMPT, "three waiting queries", || {
        dev_stats(&addr)["blocking_queries"] == 3
    });
    for i in 0..50 {
        assert!(c.put(&format!("/v1/kv/unrelated/{i}"), b"x").status == 200);
    }
    let stats = dev_stats(&addr);
    assert_eq!(stats["wakeups"], 0, "{stats}");
    assert_eq!(stats["blocking_queries"], 3, "{stats}");
    assert!(c.put("/v1/kv/watched/a", b"2").status == 200);
    let mut woken: Vec<String> = (0..2)
        .map(|_| rx.recv_timeout(PROMPT).expect("a watcher to return").0)
        .collect();
    woken.sort();
    assert!(woken[0].starts_with("/v1/kv/watched/?recurse"), "{woken:?}");
    assert!(woken[1].starts_with("/v1/kv/watched/a?"), "{woken:?}");
    // The watcher of the missing key is still waiting.
    assert!(rx.try_recv().is_err());
    assert_eq!(dev_stats(&addr)["blocking_queries"], 1);
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bounded loopback load: 10,000 keys, 300 blocking queries (150 recursive on the 10,000-key
/// prefix, 150 on single keys not yet written) and 400 more idle connections, from several client addresses;
/// then a burst of unrelated writes. The server's memory and its write latency must stay within
/// generous ceilings (the ceilings catch regressions by an order of magnitude, not by percents:
/// before the blocking-query rework, 100 recursive watchers alone cost 200 MB and each write
/// 50-75 ms).
#[test]
fn load_many_watchers_and_connections() {
    let c = TestConsul::start_dev_server(&[]);
    let addr = c.addr();
    let pid = c.pid().expect("pid");
    let value = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [b'v'; 100]);
    for batch in 0..79 {
        let ops: Vec<Value> = (batch * 128..((batch + 1) * 128).min(10_000))
            .map(|i| json!({"KV": {"Verb": "set", "Key": format!("load/k{i:05}"), "Value": value}}))
            .collect();
        let r = c.put("/v1/txn", Value::Array(ops).to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(c.dev_stats().unwrap()["keys"], 10_000);
    // The prefix's index is the highest of its keys': every query below waits on it.
    let index = c.get("/v1/kv/load/?keys").index();
    let before = rss_kib(pid);
    let mut streams = Vec::new();
    for i in 0..300u32 {
        let source: IpAddr = format!("127.0.0.{}", 2 + i % 3).parse().unwrap();
        let mut stream = connect_from(source, &addr);
        let path = if i % 2 == 0 {
            format!("/v1/kv/load/?recurse&index={index}&wait=60s")
        } else {
            format!("/v1/kv/single/k{i:05}?index={index}&wait=60s")
        };
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .unwrap();
        streams.push(stream);
    }
    for i in 0..400u32 {
        let source: IpAddr = format!("127.0.0.{}", 5 + i % 4).parse().unwrap();
        streams.push(connect_from(source, &addr));
    }
    wait_until(Duration::from_secs(30), "300 waiting queries", || {
        c.dev_stats().unwrap()["blocking_queries"] == 300
    });
    wait_until(Duration::from_secs(30), "700 open connections", || {
        c.dev_stats().unwrap()["connections"].as_u64().unwrap_or(0) >= 700
    });
    let mut latencies: Vec<Duration> = (0..200)
        .map(|i| {
            let started = Instant::now();
            let r = c.put(&format!("/v1/kv/elsewhere/{i}"), b"x");
            assert_eq!(r.status, 200);
            started.elapsed()
        })
        .collect();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    let after = rss_kib(pid);
    let growth_mib = after.saturating_sub(before) / 1024;
    report(&format!(
        "dev server load: 10000 keys, 300 blocking queries, 700 connections: RSS {} MiB -> {} \
         MiB, unrelated write p50 {p50:?} max {max:?}",
        before / 1024,
        after / 1024
    ));
    assert!(growth_mib < 64, "RSS grew {growth_mib} MiB");
    assert!(p50 < Duration::from_millis(50), "write p50 {p50:?}");
    assert!(max < Duration::from_secs(1), "write max {max:?}");
    // A watched single key still wakes its query at once.
    assert_eq!(c.put("/v1/kv/single/k00001", b"new").status, 200);
    let answer = read_all(&mut streams[1], PROMPT);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(c.dev_stats().unwrap()["wakeups"], 1);
}

/// `-v` with a stderr nobody reads must not freeze the server: it keeps answering after
/// thousands of logged requests and stops on SIGTERM.
#[test]
fn verbose_with_unread_stderr_keeps_serving() {
    let bin = env!("CARGO_BIN_EXE_consullock");
    let mut child = Command::new(bin)
        .args(["-v", "dev-server", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read only the start-up line, then never again: the pipe (64 KiB) fills within ~1000
    // request lines.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("start-up line");
    let at = line.find("http://").expect("address") + "http://".len();
    let addr = line[at..].split_whitespace().next().unwrap().to_string();
    for i in 0..5_000 {
        let r = try_request(
            &addr,
            "GET",
            &format!("/v1/kv/k{i}"),
            &[],
            b"",
            Duration::from_secs(5),
        );
        assert!(
            r.as_ref().is_ok_and(|r| r.status == 404),
            "request {i}: {r:?}"
        );
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + PROMPT;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stderr);
}
