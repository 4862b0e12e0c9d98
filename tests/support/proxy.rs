//! `Proxy`: a TCP proxy in front of a Consul, to simulate partitions, outages and bad networks.
//!
//! Modes ([`Proxy::set_mode`]) say what happens to new connections and to live ones:
//!
//! | mode | new connections | live connections |
//! |---|---|---|
//! | [`Mode::Pass`] | forwarded | forwarded |
//! | [`Mode::Latency`] | forwarded, each chunk delayed | each chunk delayed, both ways |
//! | [`Mode::Blackhole`] | accepted and read, never answered | stop forwarding, both ways |
//! | [`Mode::Refuse`] | refused (`ECONNREFUSED`): nothing listens | closed (FIN) |
//! | [`Mode::Reset`] | accepted, then reset (RST) | reset (RST) |
//!
//! and [`Proxy::cut_all`] resets every live connection once (a long blocking query included)
//! while new connections keep going through in the current mode, like a load balancer or NAT
//! box that drops its connection table.
//!
//! `Blackhole` behaves like a network that swallows packets: a client sees requests that hang
//! until its own timeouts fire. A connection that was blackholed stays dead when the mode goes
//! back to `Pass`: its HTTP framing is broken anyway. One thing a userspace proxy cannot fake:
//! the kernel still answers TCP keepalive probes on the client's side, so keepalive never
//! detects the blackhole here (it would on a real partition).
//!
//! `Refuse` models a server whose process is gone: its port is closed, so connecting fails at
//! once, and the connections it had are closed by its kernel. Closing the live ones matters:
//! a refusal that pooled keep-alive connections slip past would test nothing. To give the port
//! back when the mode returns to `Pass`, a second socket holds it with `SO_REUSEPORT` while
//! nothing listens, so no other test's socket can take it in the meantime.
//!
//! `Reset` and `cut_all` send a real RST: `SO_LINGER` with a zero timeout, then close. Std has
//! no stable `set_linger` and nix's `sockopt::Linger` needs its `socket` feature, whose
//! `memoffset` dependency is not in this offline build's registry, so that one `setsockopt`
//! (and the `SO_REUSEPORT` sockets) go through `libc` directly.
//!
//! Plain std threads (one accept loop, two pumps per connection) polling short read timeouts:
//! [`Proxy::set_mode`] returns once the accept loop applied the mode (so a test that switches to
//! `Refuse` sees refusals from then on); live connections follow within [`TICK`], and
//! [`Proxy::cut_all`] returns once every connection it cut is closed.

use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often blocked reads and accepts look at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(20);
/// How long connecting to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one forwarded write may block on a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Proxy::set_mode`] and [`Proxy::cut_all`] wait for the proxy's threads to act.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The listen(2) backlog.
const BACKLOG: libc::c_int = 128;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward both ways, each chunk read held back this long before it is written on.
    Latency(Duration),
    /// Accept and read, never answer, stop forwarding on live connections.
    Blackhole,
    /// Stop listening (connects are refused) and close live connections.
    Refuse,
    /// Accept and reset new connections, reset live ones.
    Reset,
}

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Connections accepted, in any mode.
    pub(crate) accepted: u64,
    /// Connections open now.
    pub(crate) live: u64,
    /// Live connections whose last forwarded bytes went to the server: a request awaits its
    /// answer (a blocking query, say).
    pub(crate) in_flight: u64,
    /// Connections the proxy reset: new ones in `Reset`, live ones by `Reset` or `cut_all`.
    pub(crate) reset: u64,
    /// Live connections the proxy closed because of `Refuse`.
    pub(crate) closed: u64,
}

/// One accepted connection, as the pumps and [`Proxy::cut_all`] see it.
#[derive(Default)]
struct Conn {
    /// Blackholed: everything read is swallowed from now on.
    dead: AtomicBool,
    /// To be reset (RST to the client) by whichever pump sees it first.
    reset: AtomicBool,
    /// Pumps still running; the sockets are closed when this reaches 0.
    pumps: AtomicUsize,
    /// Counted in `Stats::reset` / `Stats::closed` already.
    counted: AtomicBool,
    /// The last bytes forwarded went to the server.
    awaiting: AtomicBool,
}

struct Shared {
    /// The mode and how many times it was set.
    mode: Mutex<(Mode, u64)>,
    /// The last `mode.1` the accept loop applied.
    applied: AtomicU64,
    stop: AtomicBool,
    conns: Mutex<Vec<Arc<Conn>>>,
    accepted: AtomicU64,
    reset: AtomicU64,
    closed: AtomicU64,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap().0
    }
}

/// A running proxy; stops (and closes every connection) when dropped.
pub(crate) struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (`host:port`), in [`Mode::Pass`].
    pub(crate) fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(upstream)
            .unwrap_or_else(|e| panic!("proxy upstream {upstream}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("proxy upstream {upstream} resolves to nothing"));
        let listener = listen(0).expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        // Holds the port while `Refuse` closes the listener; see the module docs.
        let placeholder = reuseport_socket(addr.port()).expect("reserve the proxy's port");
        let shared = Arc::new(Shared {
            mode: Mutex::new((Mode::Pass, 0)),
            applied: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::default(),
            accepted: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let accept = thread::Builder::new()
            .name("test-proxy-accept".into())
            .spawn(move || {
                accept_loop(listener, addr.port(), upstream, &thread_shared);
                drop(placeholder);
            })
            .expect("spawn the proxy thread");
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`, for `CONSUL_HTTP_ADDR`.
    pub(crate) fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Switches the mode. Returns once new connections get the new mode; live connections
    /// follow within a few milliseconds.
    pub(crate) fn set_mode(&self, mode: Mode) {
        let generation = {
            let mut current = self.shared.mode.lock().unwrap();
            current.1 += 1;
            current.0 = mode;
            current.1
        };
        let started = Instant::now();
        while self.shared.applied.load(Ordering::SeqCst) < generation {
            assert!(
                started.elapsed() < APPLY_TIMEOUT,
                "the proxy did not apply {mode:?} within {APPLY_TIMEOUT:?}"
            );
            thread::sleep(TICK / 4);
        }
    }

    /// Resets every live connection (blocking queries included) and returns how many it cut,
    /// once they are all closed. New connections are not affected: they get the current mode.
    pub(crate) fn cut_all(&self) -> usize {
        let cut: Vec<Arc<Conn>> = self
            .shared
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.pumps.load(Ordering::SeqCst) > 0)
            .cloned()
            .collect();
        for conn in &cut {
            conn.reset.store(true, Ordering::SeqCst);
        }
        let started = Instant::now();
        while cut.iter().any(|c| c.pumps.load(Ordering::SeqCst) > 0) {
            assert!(
                started.elapsed() < APPLY_TIMEOUT,
                "cut connections still open after {APPLY_TIMEOUT:?}"
            );
            thread::sleep(TICK / 4);
        }
        cut.len()
    }

    /// Counters of what the proxy did so far.
    pub(crate) fn stats(&self) -> Stats {
        let conns = self.shared.conns.lock().unwrap();
        let live = conns.iter().filter(|c| c.pumps.load(Ordering::SeqCst) > 0);
        Stats {
            accepted: self.shared.accepted.load(Ordering::SeqCst),
            live: live.clone().count() as u64,
            in_flight: live.filter(|c| c.awaiting.load(Ordering::SeqCst)).count() as u64,
            reset: self.shared.reset.load(Ordering::SeqCst),
            closed: self.shared.closed.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: TcpListener, port: u16, upstream: SocketAddr, shared: &Arc<Shared>) {
    let mut listener = Some(listener);
    let mut pumps = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let (mode, generation) = *shared.mode.lock().unwrap();
        match (mode, &listener) {
            // Closing the listener refuses what waits in its backlog too.
            (Mode::Refuse, Some(_)) => listener = None,
            (Mode::Refuse, None) => {}
            (_, None) => match listen(port) {
                Ok(reopened) => listener = Some(reopened),
                Err(_) => {
                    // Not applied yet: set_mode keeps waiting, and panics if this lasts.
                    thread::sleep(TICK);
                    continue;
                }
            },
            (_, Some(_)) => {}
        }
        shared.applied.store(generation, Ordering::SeqCst);
        let Some(open) = &listener else {
            thread::sleep(TICK);
            continue;
        };
        match open.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                if mode == Mode::Reset {
                    reset(&client);
                    shared.reset.fetch_add(1, Ordering::SeqCst);
                } else if let Ok(handles) = connect(client, upstream, mode, shared) {
                    pumps.extend(handles);
                }
            }
            Err(_) => thread::sleep(TICK),
        }
        pumps.retain(|p: &thread::JoinHandle<()>| !p.is_finished());
        shared
            .conns
            .lock()
            .unwrap()
            .retain(|c| c.pumps.load(Ordering::SeqCst) > 0);
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Starts the pumps of one accepted connection.
fn connect(
    client: TcpStream,
    upstream: SocketAddr,
    mode: Mode,
    shared: &Arc<Shared>,
) -> io::Result<Vec<thread::JoinHandle<()>>> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(TICK))?;
    client.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let conn = Arc::new(Conn::default());
    conn.dead.store(mode == Mode::Blackhole, Ordering::SeqCst);
    let server = if mode == Mode::Blackhole {
        None
    } else {
        match TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) {
            Ok(server) => {
                server.set_read_timeout(Some(TICK))?;
                server.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Some(server)
            }
            // The upstream is gone: close, as a dead server's host would refuse.
            Err(_) => return Ok(vec![]),
        }
    };
    let pairs = match server {
        Some(server) => vec![
            (client.try_clone()?, Some(server.try_clone()?), true),
            (server, Some(client), false),
        ],
        None => vec![(client, None, true)],
    };
    conn.pumps.store(pairs.len(), Ordering::SeqCst);
    shared.conns.lock().unwrap().push(conn.clone());
    let mut handles = Vec::new();
    for (from, to, from_client) in pairs {
        let (thread_shared, thread_conn) = (shared.clone(), conn.clone());
        let spawned = thread::Builder::new()
            .name("test-proxy-pump".into())
            .spawn(move || {
                pump(from, to, from_client, &thread_shared, &thread_conn);
                thread_conn.pumps.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                conn.pumps.fetch_sub(1, Ordering::SeqCst);
                conn.reset.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    Ok(handles)
}

/// Why a pump stopped forwarding.
enum End {
    /// EOF or an error on a side, or the proxy stops: close both sides.
    Close,
    /// `Refuse`: close both sides, counted.
    Refused,
    /// `Reset` or `cut_all`: RST to the client.
    Reset,
}

/// Copies `from` to `to` until EOF, an error, the stop, or a mode that ends live connections;
/// discards once the connection is blackholed; holds each chunk back in `Latency`.
/// `from_client` says which side `from` is: a blackholed connection is closed towards the
/// client only when the client itself closes (or the proxy stops), never because the server
/// went away, since a swallowing network sends no FIN either.
fn pump(
    mut from: TcpStream,
    mut to: Option<TcpStream>,
    from_client: bool,
    shared: &Shared,
    conn: &Conn,
) {
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = interrupted(shared, conn) {
            break end;
        }
        match from.read(&mut buf) {
            Ok(0) => break End::Close,
            Ok(n) => {
                if conn.dead.load(Ordering::SeqCst) {
                    continue; // swallowed
                }
                if let Mode::Latency(delay) = shared.mode()
                    && let Some(end) = hold_back(delay, shared, conn)
                {
                    break end;
                }
                if conn.dead.load(Ordering::SeqCst) {
                    continue; // blackholed while held back
                }
                if let Some(to) = &mut to {
                    if to.write_all(&buf[..n]).is_err() {
                        break End::Close;
                    }
                    conn.awaiting.store(from_client, Ordering::SeqCst);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break End::Close,
        }
    };
    // Whichever pump ends first decides for the connection: a reset wins over the other
    // pump's plain close, which would otherwise send the client a FIN first.
    let reset_now = matches!(end, End::Reset) || conn.reset.load(Ordering::SeqCst);
    if reset_now {
        conn.reset.store(true, Ordering::SeqCst);
    }
    let counter = if reset_now {
        Some(&shared.reset)
    } else if matches!(end, End::Refused) {
        Some(&shared.closed)
    } else {
        None
    };
    if let Some(counter) = counter
        && !conn.counted.swap(true, Ordering::SeqCst)
    {
        counter.fetch_add(1, Ordering::SeqCst);
    }
    let (client, server) = if from_client {
        (&from, to.as_ref())
    } else {
        (to.as_ref().unwrap_or(&from), Some(&from))
    };
    if reset_now {
        // The RST goes out when the last descriptor of the client socket is closed: this
        // pump's and the other pump's, which sees `conn.reset` within a tick.
        reset(client);
        if let Some(server) = server {
            let _ = server.shutdown(Shutdown::Both);
        }
        return;
    }
    let stopping = shared.stop.load(Ordering::SeqCst);
    if conn.dead.load(Ordering::SeqCst) && !from_client && !stopping {
        // The server side ended: say nothing to the client.
        let _ = from.shutdown(Shutdown::Both);
        return;
    }
    let _ = from.shutdown(Shutdown::Both);
    if let Some(to) = &to {
        let _ = to.shutdown(Shutdown::Both);
    }
}

/// What the mode, the stop flag and `cut_all` say to a pump right now: keep going (`None`) or
/// end. Marks the connection dead when the mode is `Blackhole`.
fn interrupted(shared: &Shared, conn: &Conn) -> Option<End> {
    if shared.stop.load(Ordering::SeqCst) {
        return Some(End::Close);
    }
    if conn.reset.load(Ordering::SeqCst) {
        return Some(End::Reset);
    }
    match shared.mode() {
        Mode::Blackhole => conn.dead.store(true, Ordering::SeqCst),
        Mode::Refuse => return Some(End::Refused),
        Mode::Reset => return Some(End::Reset),
        Mode::Pass | Mode::Latency(_) => {}
    }
    None
}

/// Sleeps `delay` in ticks, watching for anything that ends the connection meanwhile.
fn hold_back(delay: Duration, shared: &Shared, conn: &Conn) -> Option<End> {
    let until = Instant::now() + delay;
    loop {
        if let Some(end) = interrupted(shared, conn) {
            return Some(end);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        thread::sleep(left.min(TICK));
    }
}

/// Makes the close of `stream`'s socket send an RST instead of a FIN: `SO_LINGER` on with a
/// zero timeout. The RST goes out when the last descriptor of the socket is closed.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(stream, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` and the length passed is its size; the kernel only
    // reads it. `fd` is an open socket borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A TCP socket bound to `127.0.0.1:port` (0: any free port) with `SO_REUSEADDR` and
/// `SO_REUSEPORT`, not listening: the proxy's listeners and the placeholder that keeps their
/// port while none listens share the port through `SO_REUSEPORT`.
fn reuseport_socket(port: u16) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid `sockaddr_in` that outlives the call, and the length passed is
    // its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A non-blocking listener on `127.0.0.1:port` (0: any free port) that shares its port.
fn listen(port: u16) -> io::Result<TcpListener> {
    let fd = reuseport_socket(port)?;
    // SAFETY: listen(2) on the socket `fd` owns.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}
