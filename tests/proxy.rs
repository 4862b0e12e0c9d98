//! The test proxy's modes (`tests/support/proxy.rs`): first on the wire, with the raw client,
//! so that each mode is known to do what its name says; then through consullock, which must
//! ride out what is brief and stop its command when contact is lost for longer than the window.

use std::io;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::holder::{LONG_WINDOW, SHORT_WINDOW};
use crate::support::http::{self, Response};
use crate::support::process::{EXIT, Running};
use crate::support::proxy::{Mode, Proxy, Stats};
use crate::support::{TestConsul, wait_until};
/// Timeout of a raw request that should be answered.
const ANSWER: Duration = Duration::from_secs(10);
/// Longest wait for a handshake (a lock held, a log line, a reconnection).
const HANDSHAKE: Duration = Duration::from_secs(20);
/// A fault shorter than [`LONG_WINDOW`]'s window, and longer than a retry interval.
const BRIEF: Duration = Duration::from_secs(2);

fn get(proxy: &Proxy, path: &str, timeout: Duration) -> io::Result<Response> {
    http::try_request(&proxy.addr(), "GET", path, &[], b"", timeout)
}

/// A consullock command whose every request goes through `proxy`.
fn through(consul: &TestConsul, proxy: &Proxy) -> Command {
    let mut command = consul.command();
    command.env("CONSUL_HTTP_ADDR", format!("http://{}", proxy.addr()));
    command
}

/// A blocking query on `key` through the proxy, in a thread; returns once the proxy forwarded
/// it and no answer came back.
fn blocking_query(
    consul: &TestConsul,
    proxy: &Proxy,
    key: &str,
) -> std::thread::JoinHandle<io::Result<Response>> {
    assert_eq!(consul.put(&format!("/v1/kv/{key}"), b"x").status, 200);
    let index = consul.get(&format!("/v1/kv/{key}")).index();
    let (addr, path) = (proxy.addr(), format!("/v1/kv/{key}?index={index}&wait=60s"));
    let before = proxy.stats().in_flight;
    let query = std::thread::spawn(move || {
        http::try_request(&addr, "GET", &path, &[], b"", Duration::from_secs(90))
    });
    wait_until(HANDSHAKE, "the blocking query to be in flight", || {
        proxy.stats().in_flight > before
    });
    query
}

/// What a failed raw request says, for the assertion messages.
fn kind(result: &io::Result<Response>) -> Option<io::ErrorKind> {
    result.as_ref().err().map(io::Error::kind)
}

#[test]
fn new_connections_get_what_each_mode_says() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());
    assert_eq!(
        get(&proxy, "/v1/status/leader", ANSWER).unwrap().status,
        200
    );

    // At least one chunk each way, each held back.
    let latency = Duration::from_millis(300);
    proxy.set_mode(Mode::Latency(latency));
    let started = Instant::now();
    assert_eq!(
        get(&proxy, "/v1/status/leader", ANSWER).unwrap().status,
        200
    );
    assert!(started.elapsed() >= 2 * latency, "{:?}", started.elapsed());

    proxy.set_mode(Mode::Blackhole);
    let swallowed = get(&proxy, "/v1/status/leader", Duration::from_millis(500));
    assert!(
        matches!(
            kind(&swallowed),
            Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        ),
        "{swallowed:?}"
    );

    proxy.set_mode(Mode::Refuse);
    let refused = TcpStream::connect(proxy.addr());
    assert_eq!(
        refused.as_ref().err().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    // The same address serves again.
    proxy.set_mode(Mode::Pass);
    assert_eq!(
        get(&proxy, "/v1/status/leader", ANSWER).unwrap().status,
        200
    );

    proxy.set_mode(Mode::Reset);
    let before = proxy.stats();
    let reset = get(&proxy, "/v1/status/leader", ANSWER);
    assert!(
        matches!(
            kind(&reset),
            Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
        ),
        "{reset:?}"
    );
    assert_eq!(proxy.stats().reset, before.reset + 1);
    proxy.set_mode(Mode::Pass);
    assert_eq!(
        get(&proxy, "/v1/status/leader", ANSWER).unwrap().status,
        200
    );
}

#[test]
fn live_connections_are_cut_closed_or_reset() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());

    // cut_all: the blocking query gets an RST at once; new connections still pass.
    let query = blocking_query(&consul, &proxy, "cut");
    let cut_at = Instant::now();
    assert!(proxy.cut_all() >= 1);
    let cut = query.join().unwrap();
    assert_eq!(kind(&cut), Some(io::ErrorKind::ConnectionReset), "{cut:?}");
    assert!(cut_at.elapsed() < Duration::from_secs(5));
    assert_eq!(proxy.stats().live, 0, "{:?}", proxy.stats());
    assert_eq!(
        get(&proxy, "/v1/status/leader", ANSWER).unwrap().status,
        200
    );

    // Refuse: the blocking query's connection is closed (EOF before any answer).
    let query = blocking_query(&consul, &proxy, "refuse");
    let before = proxy.stats();
    proxy.set_mode(Mode::Refuse);
    let closed = query.join().unwrap();
    assert_eq!(
        kind(&closed),
        Some(io::ErrorKind::InvalidData),
        "{closed:?}"
    );
    assert_eq!(proxy.stats().closed, before.closed + 1);
    proxy.set_mode(Mode::Pass);

    // Reset: the blocking query gets an RST.
    let query = blocking_query(&consul, &proxy, "reset");
    proxy.set_mode(Mode::Reset);
    let reset = query.join().unwrap();
    assert_eq!(
        kind(&reset),
        Some(io::ErrorKind::ConnectionReset),
        "{reset:?}"
    );
    proxy.set_mode(Mode::Pass);

    // Latency: a live connection's answer is held back too.
    let query = blocking_query(&consul, &proxy, "slow");
    let latency = Duration::from_millis(400);
    proxy.set_mode(Mode::Latency(latency));
    let changed_at = Instant::now();
    assert_eq!(consul.put("/v1/kv/slow", b"y").status, 200);
    assert_eq!(query.join().unwrap().unwrap().status, 200);
    assert!(
        changed_at.elapsed() >= latency,
        "{:?}",
        changed_at.elapsed()
    );
}

/// A `lock` waiting through the proxy has its blocking query cut: it reconnects, keeps
/// waiting, and takes the lock when the holder lets go.
#[test]
fn a_waiting_lock_survives_cut_connections() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());
    let key = consul.unique_key("cut-waiter");
    let holder = consul.put("/v1/session/create", b"{}").json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let value = crate::support::lock_value(&key, &holder);
    let acquired = consul.put(&format!("/v1/kv/{key}?acquire={holder}"), value.as_bytes());
    assert_eq!(acquired.text(), "true");

    let mut waiter = Running::start(
        {
            let mut c = through(&consul, &proxy);
            c.args(["-vv", "lock", "--session-ttl", "10", &key]);
            c
        },
        false,
    );
    waiter.wait_stderr("waiting for a change");
    wait_until(HANDSHAKE, "the waiter's blocking query", || {
        proxy.stats().in_flight >= 1
    });
    for _ in 0..2 {
        let accepted = proxy.stats().accepted;
        assert!(proxy.cut_all() >= 1);
        waiter.wait_stderr("consul error while waiting for the lock, retrying");
        wait_until(HANDSHAKE, "the waiter to reconnect and block again", || {
            let stats = proxy.stats();
            stats.accepted > accepted && stats.in_flight >= 1
        });
    }
    assert_eq!(consul.holder(&key).as_deref(), Some(holder.as_str()));

    let released = consul.put(&format!("/v1/kv/{key}?release={holder}"), value.as_bytes());
    assert_eq!(released.text(), "true");
    let code = waiter.wait(EXIT);
    let stderr = waiter.stderr();
    assert_eq!(code, 0, "{stderr}");
    let printed: serde_json::Value =
        serde_json::from_str(waiter.stdout().trim()).expect("lock JSON");
    let session = printed["session"].as_str().expect("session").to_string();
    assert_eq!(consul.holder(&key), Some(session));
}

/// Through a slow network, `execute` still acquires, runs, passes the exit code on and
/// releases everything.
#[test]
fn execute_through_a_slow_proxy_runs_and_releases() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());
    let key = consul.unique_key("slow");
    let latency = Duration::from_millis(250);
    proxy.set_mode(Mode::Latency(latency));
    let started = Instant::now();
    let run = Running::start(
        {
            let mut c = through(&consul, &proxy);
            c.args(["execute"])
                .args(SHORT_WINDOW)
                .args([key.as_str(), "--", "sh", "-c", "exit 3"]);
            c
        },
        false,
    );
    let (code, stderr) = run.wait_owned();
    assert_eq!(code, 3, "{stderr}");
    // Session create, acquire, release and destroy are one after the other, each at least one
    // chunk each way: the latency was there.
    assert!(started.elapsed() >= 8 * latency, "{:?}", started.elapsed());
    assert!(proxy.stats().accepted >= 1);
    assert!(consul.sessions().is_empty(), "{:?}", consul.sessions());
    assert_eq!(consul.holder(&key), None);
}

/// Waits until `execute` holds `key` and watches it through the proxy.
fn wait_held(consul: &TestConsul, proxy: &Proxy, key: &str) {
    wait_until(HANDSHAKE, "the lock to be held and watched", || {
        consul.holder(key).is_some() && proxy.stats().in_flight >= 1
    });
}

/// A proxy that resets or refuses for longer than the contact window: consullock cannot
/// confirm the lock, so it stops the command with exit 101 before another holder could have it.
#[test]
fn execute_stops_the_command_when_the_proxy_resets_or_refuses_past_the_window() {
    for mode in [Mode::Reset, Mode::Refuse] {
        let consul = TestConsul::start_dev_server(&[]);
        let proxy = Proxy::start(&consul.addr());
        let key = consul.unique_key("lost");
        let run = Running::start(
            {
                let mut c = through(&consul, &proxy);
                c.args(["execute"])
                    .args(SHORT_WINDOW)
                    .args([key.as_str(), "--", "sleep", "60"]);
                c
            },
            false,
        );
        wait_held(&consul, &proxy, &key);
        let before = proxy.stats();
        let faulted = Instant::now();
        proxy.set_mode(mode);
        let (code, stderr) = run.wait_owned();
        assert_eq!(code, 101, "{mode:?}: {stderr}");
        assert!(stderr.contains("lock lost"), "{mode:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{mode:?}: {stderr}");
        // Window 3 s, grace 1 s: well before the 15 s after which another could hold the lock.
        assert!(
            faulted.elapsed() < Duration::from_secs(10),
            "{mode:?}: {:?}",
            faulted.elapsed()
        );
        let after = proxy.stats();
        let hit = match mode {
            Mode::Reset => after.reset > before.reset,
            _ => after.closed > before.closed,
        };
        assert!(hit, "{mode:?} touched no live connection: {after:?}");
    }
}

/// Resets and refusals shorter than the contact window are retried through: the command runs
/// to its end, its exit code is returned, and nothing is left on the server.
#[test]
fn execute_rides_out_brief_resets_and_refusals() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());
    let key = consul.unique_key("brief");
    let done = std::env::temp_dir().join(format!(
        "consullock-proxy-brief-{}-{}",
        std::process::id(),
        key.rsplit('/').next().unwrap()
    ));
    let _ = std::fs::remove_file(&done);
    let run = Running::start(
        {
            let mut c = through(&consul, &proxy);
            c.args(["-vv", "execute"]).args(LONG_WINDOW).args([
                key.as_str(),
                "--",
                "sh",
                "-c",
                r#"while [ ! -e "$1" ]; do sleep 0.05; done; exit 7"#,
                "sh",
                done.to_str().unwrap(),
            ]);
            c
        },
        false,
    );
    wait_held(&consul, &proxy, &key);
    let mut hits = Stats::default();
    for mode in [Mode::Reset, Mode::Refuse] {
        let before = proxy.stats();
        proxy.set_mode(mode);
        std::thread::sleep(BRIEF);
        proxy.set_mode(Mode::Pass);
        let after = proxy.stats();
        hits.reset += after.reset - before.reset;
        hits.closed += after.closed - before.closed;
        wait_until(HANDSHAKE, "consullock to reconnect and watch again", || {
            let now = proxy.stats();
            now.accepted > after.accepted && now.in_flight >= 1
        });
    }
    assert!(hits.reset >= 1 && hits.closed >= 1, "{hits:?}");
    std::fs::write(&done, b"").unwrap();
    let (code, stderr) = run.wait_owned();
    let _ = std::fs::remove_file(&done);
    assert_eq!(code, 7, "{stderr}");
    assert!(!stderr.contains("lock lost"), "{stderr}");
    assert!(consul.sessions().is_empty(), "{:?}", consul.sessions());
    assert_eq!(consul.holder(&key), None);
}
