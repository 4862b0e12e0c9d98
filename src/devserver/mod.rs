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
//! Layout, in the spirit of mini-redis: `server` is the one entry point ([`serve`]: accept loop,
//! per-client connection cap, idle and read timeouts), `router` says which endpoint answers which
//! path, `http` holds the plumbing every endpoint shares (query options, ACL gate, blocking
//! queries, headers, the request log), `kv`, `session` and `txn` are the endpoints, `watch`
//! wakes blocking queries when what they watch changes, `state` is the store (pure, clock passed
//! in), `duration` reproduces Go durations and `stats` counts requests by kind for
//! `/_devserver/stats`. This module holds the settings and the state every connection shares,
//! the TTL and tombstone timer task, and the two ways to run a server ([`serve`] until its
//! shutdown future completes, [`DevServer`] in-process). `faults` holds the test-only HTTP faults
//! (hidden `--test-faults` option, control endpoint `/_devserver/faults`).

mod duration;
pub mod faults;
mod http;
mod kv;
mod router;
mod server;
mod session;
mod state;
mod stats;
mod txn;
mod watch;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use server::serve;
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
    /// A connection with no request in progress is closed after this long; so is one whose
    /// request head takes longer to arrive (slow clients). Default [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// A request whose body takes longer than this to arrive is answered 408 and its connection
    /// closed. Default [`BODY_READ_TIMEOUT`].
    pub body_read_timeout: Duration,
    /// Concurrent connections allowed from one client IP address; past it a connection gets
    /// Consul's 429 and is closed (Consul's `limits.http_max_conns_per_client`). Default
    /// [`MAX_CONNS_PER_CLIENT`].
    pub max_conns_per_client: usize,
    /// How long a deleted key's tombstone is kept before it is reaped (Consul's
    /// `tombstone_ttl`). Default [`TOMBSTONE_TTL`].
    pub tombstone_ttl: Duration,
}

/// Default of [`Options::idle_timeout`]: hyper's default header read timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Options::body_read_timeout`].
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Options::max_conns_per_client`]: Consul's `http_max_conns_per_client`.
pub const MAX_CONNS_PER_CLIENT: usize = 200;
/// Default of [`Options::tombstone_ttl`]: Consul's `tombstone_ttl` (15 minutes).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(15 * 60);

impl Default for Options {
    /// An ephemeral port on the loopback interface, no ACL token, quiet.
    fn default() -> Options {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            acl_token: None,
            verbose: 0,
            test_faults: false,
            node: None,
            idle_timeout: IDLE_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_conns_per_client: MAX_CONNS_PER_CLIENT,
            tombstone_ttl: TOMBSTONE_TTL,
        }
    }
}

/// State shared by every connection: the store, the blocking queries waiting on it, and the
/// settings.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Blocking queries waiting for a change to what they watch.
    pub(crate) watchers: watch::Watchers,
    /// Wakes the TTL timer task when a write may have added an earlier deadline.
    timers: Notify,
    pub(crate) acl_token: Option<String>,
    pub(crate) verbose: bool,
    pub(crate) node: String,
    /// The node's ID, a random UUID like a dev agent's.
    pub(crate) node_id: String,
    /// Requests served, excluding `/_devserver/*`, in all and by kind (see [`stats`]).
    pub(crate) stats: stats::Counters,
    /// Test-only faults, when enabled.
    pub(crate) faults: Option<faults::Faults>,
    pub(crate) options: Options,
    /// Open connections per client IP address.
    pub(crate) connections: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl Shared {
    fn new(options: &Options) -> Self {
        let node = options.node.clone().unwrap_or_else(node_name);
        let store = Store::new(&node, options.tombstone_ttl);
        Shared {
            store: Mutex::new(store),
            watchers: watch::Watchers::default(),
            timers: Notify::new(),
            acl_token: options.acl_token.clone(),
            verbose: options.verbose > 0,
            node,
            node_id: uuid::Uuid::new_v4().to_string(),
            stats: stats::Counters::default(),
            faults: options.test_faults.then(faults::Faults::default),
            options: options.clone(),
            connections: Mutex::default(),
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

    /// Runs a write against the store at the current instant, then wakes the blocking queries
    /// that watch what changed, and the timer task if the global index moved.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Store, Instant) -> R) -> R {
        let (result, changes, before, after) = {
            let mut store = self.lock();
            let before = store.index();
            let now = Instant::now();
            let result = f(&mut store, now);
            store.plan_reaping(now);
            (result, store.take_changes(), before, store.index())
        };
        self.watchers.wake(&changes);
        if after != before {
            self.timers.notify_one();
        }
        result
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

/// Invalidates sessions when their 2×TTL runs out and reaps tombstones past their TTL. Sleeps
/// until the earliest deadline; any write that may add an earlier one wakes it to look again.
/// Renewals only move deadlines later, so they need not wake it: an early wake-up finds nothing
/// due and sleeps again.
async fn timers(shared: Arc<Shared>) {
    loop {
        let next = shared.read(Store::next_deadline);
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    () = shared.timers.notified() => {}
                }
            }
            None => shared.timers.notified().await,
        }
        shared.write(|store, now| {
            store.expire_sessions(now);
            store.reap_tombstones(now);
        });
    }
}

/// The start-up line a program serving the dev server on `bound` prints (the command line
/// prints it on stderr; tests read the address from it).
pub fn startup_line(bound: std::net::SocketAddr) -> String {
    format!(
        "consullock dev-server listening on http://{bound} (consullock's dev server speaking \
         Consul {CONSUL_VERSION}'s HTTP API; in-memory, for development and tests only; keeps \
         nothing on disk; no replacement for Consul)"
    )
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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl DevServer {
    /// Binds `options.listen` and serves in a background task of the current tokio runtime.
    pub async fn start(options: Options) -> std::io::Result<DevServer> {
        let listener = TcpListener::bind(options.listen).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, options, async move {
            let _ = stopped.await;
        }));
        Ok(DevServer {
            address,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address (`127.0.0.1:PORT`), usable as `CONSUL_HTTP_ADDR`.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
