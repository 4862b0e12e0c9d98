//! The dev server's one entry point, [`serve`]: accept connections until told to stop, and
//! serve each in its own task (mini-redis's `server.rs` shape).
//!
//! What it does against slow, broken and hostile peers, and why:
//! - **Accept errors** (most often `EMFILE`, too many open files) concern the listener, not one
//!   connection, and retrying at once spins a core. As Go's `http.Server` does, it backs off
//!   from 5 ms, doubling to 1 s, and says so once per back-off, not once per failure.
//! - **Connections per client IP** are capped as Consul caps them
//!   (`limits.http_max_conns_per_client`, 200); past it a connection gets the raw 429 that
//!   Consul's connection limiter (hashicorp/go-connlimit, `HTTPConnStateFuncWithDefault429Handler`)
//!   writes, with a 10 ms write deadline, and is closed without its request being read.
//! - **Idle connections** are closed after [`Options::idle_timeout`]: hyper's header read timeout
//!   runs from the moment the server waits for a request head, so it bounds both a keep-alive
//!   connection with nothing to say and a client that sends its head byte by byte. A request in
//!   progress (a blocking query) is never cut by it.
//! - Bodies: see `http` (refused on `Content-Length` before reading, read with a timeout).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{Options, Shared, http, timers};

/// First pause after an accept error.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while they keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the 429 may take to write before the connection is dropped anyway (Consul's).
const REFUSAL_WRITE_DEADLINE: Duration = Duration::from_millis(10);
/// The body of go-connlimit's 429.
const TOO_MANY_CONNECTIONS: &str =
    "Your IP is issuing too many concurrent connections, please rate limit your calls\n";

/// Serves the dev server's API on `listener` until `shutdown` completes. Open connections are
/// dropped when it returns (or when its task is aborted).
pub async fn serve(listener: TcpListener, options: Options, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(Shared::new(&options));
    let mut tasks = JoinSet::new();
    tasks.spawn(timers(shared.clone()));
    tokio::pin!(shutdown);
    let mut backoff: Option<Duration> = None;
    let mut failures: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = tasks.join_next(), if tasks.len() > 1 => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if failures > 0 {
                    tracing::warn!("accepting connections again after {failures} failed accepts");
                }
                backoff = None;
                failures = 0;
                tasks.spawn(connection(shared.clone(), stream, peer));
            }
            Err(e) => {
                failures += 1;
                let delay = backoff.map_or(ACCEPT_BACKOFF_MIN, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
                if backoff.is_none() {
                    tracing::warn!(
                        "accept failed: {e}; retrying with a pause from {ACCEPT_BACKOFF_MIN:?} \
                         doubling to {ACCEPT_BACKOFF_MAX:?} until it succeeds"
                    );
                }
                backoff = Some(delay);
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A client's hold on one of its connection slots; released when dropped.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Slot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Slot> {
        let mut open = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= shared.options.max_conns_per_client {
            return None;
        }
        *count += 1;
        Some(Slot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves one connection, or refuses it when its client already has too many.
async fn connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let Some(_slot) = Slot::take(&shared, peer.ip()) else {
        let refusal = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: \
             {}\r\nConnection: close\r\n\r\n{TOO_MANY_CONNECTIONS}",
            TOO_MANY_CONNECTIONS.len()
        );
        let _ = tokio::time::timeout(REFUSAL_WRITE_DEADLINE, stream.write_all(refusal.as_bytes()))
            .await;
        return;
    };
    let service_shared = shared.clone();
    let service = service_fn(move |request| http::handle(service_shared.clone(), request));
    // A client that hangs up mid-request, or is timed out, is its own business.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.options.idle_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
