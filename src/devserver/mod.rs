//! In-memory Consul-compatible dev server, for development and tests only.
//!
//! `consullock dev-server` speaks the slice of Consul's HTTP API a lock client needs (sessions,
//! KV with acquire/release/cas, blocking queries, ACL tokens, status) with Consul's semantics as
//! written down in `consul-api-notes.md`. It keeps nothing on disk and is a single node with a
//! single datacenter, so it is no replacement for Consul: it exists so that tests and local
//! experiments need no Consul binary.
//!
//! It deliberately shares no code with the project's Consul client: two independent readings of
//! Consul's behaviour catch each other's mistakes, while one shared reading would hide them.
//!
//! Layout: `state` is the store (pure, clock passed in), `duration` reproduces Go durations,
//! `http` routes and validates requests, `kv` and `session` are the endpoints. This module binds
//! the listener, runs the TTL timer task and stops on SIGINT/SIGTERM. `faults` holds the
//! test-only HTTP faults (hidden `--test-faults` option, control endpoint `/_devserver/faults`).

mod duration;
pub mod faults;
mod http;
mod kv;
mod session;
mod state;
mod txn;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use state::Store;

/// The Consul release whose HTTP API the dev server follows, reported as `Config.Version` by
/// `/v1/agent/self` so that clients gating features on the version parse a real one. 1.21.0 is
/// the last release before the KV key-name validation of 1.21.5/1.22.0, which the dev server
/// does not implement.
pub const CONSUL_VERSION: &str = "1.21.0";

/// Node name used when the host name cannot be read.
const FALLBACK_NODE_NAME: &str = "consullock-dev";

/// How to run the dev server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on; port 0 picks an ephemeral port.
    pub listen: SocketAddr,
    /// When set, every request must carry this ACL token.
    pub acl_token: Option<String>,
    /// Log every request to stderr (`-v`).
    pub verbose: u8,
    /// Serve the test-only fault control endpoint `/_devserver/faults` (see [`faults`]); when
    /// false it answers 404 and no fault can be injected.
    pub test_faults: bool,
    /// The agent's node name (Consul's `-node`); the host name when unset, as for a Consul dev
    /// agent.
    pub node: Option<String>,
}

impl Default for Options {
    /// An ephemeral port on the loopback interface, no ACL token, quiet.
    fn default() -> Options {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            acl_token: None,
            verbose: 0,
            test_faults: false,
            node: None,
        }
    }
}

/// State shared by every connection: the store, the change signal blocking queries wait on,
/// and the settings.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Carries the global index after every write that changed something. Blocking queries
    /// wait on it and then re-check their own result's index.
    changes: watch::Sender<u64>,
    /// Wakes the TTL timer task when a write may have added an earlier deadline.
    timers: Notify,
    pub(crate) acl_token: Option<String>,
    pub(crate) verbose: bool,
    pub(crate) node: String,
    /// The node's ID, a random UUID like a dev agent's.
    pub(crate) node_id: String,
    /// HTTP requests served, excluding `/_devserver/*`.
    pub(crate) requests: AtomicU64,
    /// Test-only faults, when enabled.
    pub(crate) faults: Option<faults::Faults>,
}

impl Shared {
    fn new(options: &Options) -> Self {
        let node = options.node.clone().unwrap_or_else(node_name);
        let store = Store::new(&node);
        let (changes, _) = watch::channel(store.index());
        Shared {
            store: Mutex::new(store),
            changes,
            timers: Notify::new(),
            acl_token: options.acl_token.clone(),
            verbose: options.verbose > 0,
            node,
            node_id: uuid::Uuid::new_v4().to_string(),
            requests: AtomicU64::new(0),
            faults: options.test_faults.then(faults::Faults::default),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store half-written in a way that
        // matters to a dev server, so carry on with whatever is there.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a read against the store.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.lock())
    }

    /// Runs a write against the store at the current instant, then wakes blocking queries and
    /// the TTL task if the global index moved.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Store, Instant) -> R) -> R {
        let (result, before, after) = {
            let mut store = self.lock();
            let before = store.index();
            let result = f(&mut store, Instant::now());
            // Blocking queries re-check on any change for now; drain the record of what changed.
            store.take_changes();
            (result, before, store.index())
        };
        if after != before {
            self.changes.send_replace(after);
            self.timers.notify_one();
        }
        result
    }

    /// A receiver that sees every change made after this call.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The node name the agent reports: the host name, like a Consul dev agent.
fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| FALLBACK_NODE_NAME.to_string())
}

/// Invalidates sessions when their 2×TTL runs out. Sleeps until the earliest deadline; any
/// write that may add an earlier one wakes it to look again. Renewals only move deadlines
/// later, so they need not wake it: an early wake-up finds nothing due and sleeps again.
async fn expire_sessions(shared: Arc<Shared>) {
    loop {
        let next = shared.read(Store::next_expiry);
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    () = shared.timers.notified() => {}
                }
            }
            None => shared.timers.notified().await,
        }
        shared.write(|store, now| store.expire_sessions(now));
    }
}

/// Runs the dev server until SIGINT or SIGTERM.
///
/// Binds `options.listen` (port 0 picks a free port), then prints one line on stderr with the
/// bound address as `http://HOST:PORT`; tests read the address from that line.
pub async fn run(options: Options) -> std::io::Result<()> {
    let listener = TcpListener::bind(options.listen).await?;
    let bound = listener.local_addr()?;
    let shared = Arc::new(Shared::new(&options));
    // Register signal handlers before announcing readiness, so a test that signals right after
    // reading the line is handled.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    eprintln!(
        "consullock dev-server listening on http://{bound} (consullock's dev server speaking \
         Consul {CONSUL_VERSION}'s HTTP API; in-memory, for development and tests only; keeps \
         nothing on disk; no replacement for Consul)"
    );
    tokio::select! {
        _ = interrupt.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
        () = serve(listener, shared) => Ok(()),
    }
}

/// A dev server running inside this process, for tests and documentation examples. It stops
/// when dropped.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let server = consullock::devserver::DevServer::start(Default::default()).await?;
/// println!("a Consul-compatible API on {}", server.address());
/// # Ok::<(), std::io::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct DevServer {
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DevServer {
    /// Binds `options.listen` and serves in a background task of the current tokio runtime.
    pub async fn start(options: Options) -> std::io::Result<DevServer> {
        let listener = TcpListener::bind(options.listen).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&options));
        let task = tokio::spawn(serve(listener, shared));
        Ok(DevServer { address, task })
    }

    /// The bound address (`127.0.0.1:PORT`), usable as `CONSUL_HTTP_ADDR`.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections for ever, serving each in its own task, with the session expiry task
/// alongside.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let expiry = tokio::spawn(expire_sessions(shared.clone()));
    // Stop the expiry task with the server (the accept loop only ends when its task is
    // aborted, which drops this guard).
    let _expiry = AbortOnDrop(expiry);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            // Accept errors (e.g. too many open files) concern one connection only.
            Err(e) => {
                eprintln!("consullock dev-server: accept failed: {e}");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| http::handle(shared.clone(), request));
            // A client that hangs up mid-request is its own business.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
