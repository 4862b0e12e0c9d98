//! `Proxy`: a TCP proxy in front of a Consul, to simulate a partition or an outage.
//!
//! In [`Mode::Pass`] it forwards bytes both ways. In [`Mode::Blackhole`] it behaves like a
//! network that swallows packets: it still accepts connections and reads what clients send, but
//! never answers, and live connections stop forwarding too (in both directions), so a client
//! sees requests that simply hang until its own timeouts fire. A connection that was
//! blackholed stays dead when the mode goes back to `Pass`: its HTTP framing is broken anyway.
//!
//! Plain std threads (one accept loop, two pumps per connection) polling short read timeouts,
//! so the mode switch and the stop on drop take effect within [`TICK`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// How often blocked reads and accepts look at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(20);
/// How long connecting to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward both ways.
    Pass,
    /// Accept and read, never answer, stop forwarding on live connections.
    Blackhole,
}

struct Shared {
    blackhole: AtomicBool,
    stop: AtomicBool,
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            blackhole: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let accept = thread::Builder::new()
            .name("test-proxy-accept".into())
            .spawn(move || accept_loop(listener, upstream, thread_shared))
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

    /// Switches the mode; takes effect on live connections within a few milliseconds.
    pub(crate) fn set_mode(&self, mode: Mode) {
        self.shared
            .blackhole
            .store(mode == Mode::Blackhole, Ordering::SeqCst);
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

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut pumps = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if let Ok(handles) = connect(client, upstream, &shared) {
                    pumps.extend(handles);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(_) => thread::sleep(TICK),
        }
        pumps.retain(|p: &thread::JoinHandle<()>| !p.is_finished());
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Starts the two pumps of one accepted connection.
fn connect(
    client: TcpStream,
    upstream: SocketAddr,
    shared: &Arc<Shared>,
) -> io::Result<Vec<thread::JoinHandle<()>>> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(TICK))?;
    let dead = Arc::new(AtomicBool::new(shared.blackhole.load(Ordering::SeqCst)));
    let server = if dead.load(Ordering::SeqCst) {
        None
    } else {
        match TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) {
            Ok(server) => {
                server.set_read_timeout(Some(TICK))?;
                Some(server)
            }
            // The upstream is gone: close, as a dead server's host would refuse.
            Err(_) => return Ok(vec![]),
        }
    };
    let mut handles = Vec::new();
    let pump = |from: TcpStream, to: Option<TcpStream>, from_client: bool| {
        let shared = shared.clone();
        let dead = dead.clone();
        thread::Builder::new()
            .name("test-proxy-pump".into())
            .spawn(move || pump(from, to, from_client, &shared, &dead))
    };
    match server {
        Some(server) => {
            handles.push(pump(client.try_clone()?, Some(server.try_clone()?), true)?);
            handles.push(pump(server, Some(client), false)?);
        }
        None => handles.push(pump(client, None, true)?),
    }
    Ok(handles)
}

/// Copies `from` to `to` until EOF, an error, or the stop; discards once the connection is
/// blackholed. `from_client` says which side `from` is: a blackholed connection is closed
/// towards the client only when the client itself closes (or the proxy stops), never because
/// the server went away, since a swallowing network sends no FIN either.
fn pump(
    mut from: TcpStream,
    mut to: Option<TcpStream>,
    from_client: bool,
    shared: &Shared,
    dead: &AtomicBool,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if shared.blackhole.load(Ordering::SeqCst) {
                    dead.store(true, Ordering::SeqCst);
                }
                if dead.load(Ordering::SeqCst) {
                    continue; // swallowed
                }
                if let Some(to) = &mut to
                    && to.write_all(&buf[..n]).is_err()
                {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.blackhole.load(Ordering::SeqCst) {
                    dead.store(true, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let stopping = shared.stop.load(Ordering::SeqCst);
    if dead.load(Ordering::SeqCst) && !from_client && !stopping {
        // The server side ended: say nothing to the client.
        let _ = from.shutdown(Shutdown::Both);
        return;
    }
    let _ = from.shutdown(Shutdown::Both);
    if let Some(to) = &to {
        let _ = to.shutdown(Shutdown::Both);
    }
}
