//! The client against slow, broken and hostile peers (issue 15): a server that answers blocking
//! reads at once, one slow on every answer, one that sends a session id that is not one, one
//! that never answers, a long lock-delay with `-i 0`, and a prefix holding far more data than
//! locks.

use std::time::{Duration, Instant};

use crate::support::fake::FakeServer;
use crate::support::process::{EXIT, HANDSHAKE, Running, Scratch, code, run};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{TestConsul, wait_until};

fn requests(consul: &TestConsul) -> u64 {
    consul.dev_stats().unwrap()["requests"].as_u64().unwrap()
}

/// Requests the server gets per second over `span`, with everything else quiet.
fn rate(consul: &TestConsul, span: Duration) -> f64 {
    let before = requests(consul);
    std::thread::sleep(span);
    // The stats request itself is not counted.
    (requests(consul) - before) as f64 / span.as_secs_f64()
}

/// A server that answers blocking reads at once with nothing changed: the waiter and the
/// holder pause, longer each time, instead of asking again at once; and the lock's clocks
/// still decide (the holder keeps a healthy lock).
#[test]
fn blocking_reads_answered_at_once_do_not_become_a_hot_loop() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("hot-loop");
    let scratch = Scratch::new("hot-loop");
    let (started, go) = (scratch.path("started"), scratch.path("go"));
    let mut holder = Running::start(
        {
            let mut command = consul.command();
            command
                .args(["execute", &key, "--", "sh", "-c"])
                .arg(format!(
                    "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
                    started.display(),
                    go.display()
                ));
            command
        },
        false,
    );
    wait_until(HANDSHAKE, "the holder's command", || {
        holder.assert_running("before its command started");
        started.exists()
    });
    consul.faults(serde_json::json!({"answer_at_once_ms": 60_000}));
    let mut waiter = Running::start(
        {
            let mut command = consul.command();
            command.args(["-vv", "lock", &key]);
            command
        },
        false,
    );
    waiter.wait_stderr("waiting for a change");
    // Let the pauses grow, then measure: both together stay in single digits per second.
    std::thread::sleep(Duration::from_secs(3));
    let per_second = rate(&consul, Duration::from_secs(4));
    let faults = consul.clear_faults();
    crate::support::report(&format!(
        "hot_loop: {per_second:.1} requests/s from a holder and a waiter while blocking reads \
         returned at once ({} answered at once)",
        faults["injected"]["answered_at_once"]
    ));
    assert!(
        per_second < 10.0,
        "{per_second:.1} requests per second (faults {faults})"
    );
    std::fs::write(&go, b"").unwrap();
    assert_eq!(holder.wait(EXIT), 0, "stderr: {}", holder.stderr());
    assert_eq!(waiter.wait(EXIT), 0, "stderr: {}", waiter.stderr());
    run({
        let mut command = consul.command();
        command.args(["unlock", &key]);
        command
    });
}

/// Every answer 2 s late, from the start (the default window is 9 s): confirmations overlap
/// instead of queueing, so the lock is kept for as long as the command runs.
#[test]
fn a_slow_but_healthy_consul_keeps_the_lock() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("slow-healthy");
    consul.faults(serde_json::json!({"delay_ms": 2000}));
    let mut running = Running::start(
        {
            let mut command = consul.command();
            command.args(["execute", &key, "--", "sleep", "12"]);
            command
        },
        false,
    );
    let code = running.wait(Duration::from_secs(60));
    consul.clear_faults();
    assert_eq!(code, 0, "stderr: {}", running.stderr());
    assert!(
        !running.stderr().contains("lock lost"),
        "{}",
        running.stderr()
    );
}

/// A session id that is not a UUID would turn every renew and the final destroy into requests
/// on other paths (`../../kv/pwned`), and an empty one into `acquire=`: one line, exit 8, and no
/// request after the create.
#[test]
fn a_session_id_that_is_not_a_uuid_is_refused_before_any_other_request() {
    for id in ["../../kv/pwned", ""] {
        let answer_id = id.to_string();
        let server = FakeServer::routed(move |line| {
            if line.starts_with("PUT /v1/session/create") {
                let body = serde_json::json!({ "ID": answer_id }).to_string();
                FakeServer::http(
                    "200 OK",
                    &["Content-Type: application/json"],
                    body.as_bytes(),
                )
            } else if line.starts_with("GET /v1/kv/") {
                FakeServer::http("404 Not Found", &["X-Consul-Index: 5"], b"")
            } else {
                FakeServer::http("200 OK", &["Content-Type: application/json"], b"true")
            }
        });
        let consul = TestConsul::external(&server.addr(), None);
        let output = run({
            let mut command = consul.command();
            command.args(["lock", "k"]);
            command
        });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(code(&output), 8, "{id:?}: {stderr}");
        assert!(stderr.contains("not a UUID"), "{id:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let seen = server.requests();
        let after_create: Vec<&String> = seen
            .iter()
            .skip_while(|l| !l.starts_with("PUT /v1/session/create"))
            .skip(1)
            .collect();
        assert!(
            after_create.is_empty(),
            "{id:?}: requests after the create: {seen:?}"
        );
        assert!(
            !seen
                .iter()
                .any(|l| l.contains("/kv/pwned") || l.contains("acquire=")),
            "{seen:?}"
        );
    }
}

/// `--timeout` bounds the whole attempt, the session's creation included, even against a
/// server that never answers: exit 5 at the timeout (plus the short grace given to a create
/// already sent), not after the requests' own deadlines.
#[test]
fn the_timeout_bounds_everything_against_a_server_that_never_answers() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());
    proxy.set_mode(Mode::Blackhole);
    let key = consul.unique_key("never-answers");
    let started = Instant::now();
    let output = run({
        let mut command = consul.command();
        command
            .env("CONSUL_HTTP_ADDR", format!("http://{}", proxy.addr()))
            .args(["lock", "--timeout", "3", &key]);
        command
    });
    let took = started.elapsed();
    assert_eq!(code(&output), 5, "{output:?}");
    assert!(took < Duration::from_millis(4500), "took {took:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "null");
}

/// `-i 0` during a lock-delay: the retry pause has a floor, so the lock-delay costs a few dozen
/// requests, not a thousand.
#[test]
fn a_zero_retry_interval_has_a_floor() {
    let consul = TestConsul::start_dev_server(&[]);
    let key = consul.unique_key("interval-floor");
    let session = consul
        .put(
            "/v1/session/create",
            br#"{"LockDelay":"3s","Behavior":"delete"}"#,
        )
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let value = crate::support::lock_value(&key, &session);
    assert_eq!(
        consul
            .put(&format!("/v1/kv/{key}?acquire={session}"), value.as_bytes())
            .text(),
        "true"
    );
    consul.destroy_session(&session);
    let before = requests(&consul);
    let output = run({
        let mut command = consul.command();
        command.args(["lock", "-i", "0", "--timeout", "10", &key]);
        command
    });
    let sent = requests(&consul) - before - 1;
    assert_eq!(code(&output), 0, "{output:?}");
    crate::support::report(&format!(
        "interval_floor: {sent} requests through a 3 s lock-delay with -i 0"
    ));
    assert!(sent < 80, "{sent} requests during a 3 s lock-delay");
    run({
        let mut command = consul.command();
        command.args(["unlock", &key]);
        command
    });
}

/// A prefix holding ~80 MB of other data besides a lock: `unlock -r` lists keys, reads only the
/// matching ones one by one, and releases the lock.
#[test]
fn unlock_regex_releases_locks_under_a_prefix_full_of_data() {
    let consul = TestConsul::start_dev_server(&[]);
    let base = consul.unique_key("big-prefix");
    let blob = vec![b'x'; 500 * 1024];
    for i in 0..160 {
        assert_eq!(
            consul.put(&format!("/v1/kv/{base}/data/{i}"), &blob).status,
            200
        );
    }
    let key = format!("{base}/lock");
    let locked = run({
        let mut command = consul.command();
        command.args(["lock", &key]);
        command
    });
    assert_eq!(code(&locked), 0, "{locked:?}");
    let output = run({
        let mut command = consul.command();
        command.args(["unlock", "-r", &format!("{base}/.*")]);
        command
    });
    assert_eq!(code(&output), 0, "{output:?}");
    let released: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(released, serde_json::json!([key]));
    assert_eq!(consul.holder(&key), None);
}

/// A server whose reads work but whose lock transactions keep failing (500, no leader): the
/// error budget still runs out, and `lock` ends with exit 8 instead of retrying until its
/// timeout (or for ever). Each successful read used to restart the budget.
#[test]
fn failing_lock_attempts_end_when_the_error_budget_is_spent() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    consul.faults(serde_json::json!({"no_leader_ms": 120_000, "path_prefix": "/v1/txn"}));
    let key = consul.unique_key("txn-fails");
    let started = Instant::now();
    let output = run({
        let mut command = consul.command();
        command.args(["lock", "--timeout", "80", &key]);
        command
    });
    let took = started.elapsed();
    assert_eq!(code(&output), 8, "after {took:?}: {output:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    consul.clear_faults();
    consul.assert_nothing_left(&key);
}
