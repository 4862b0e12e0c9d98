//! The dev server's test-only HTTP faults (`--test-faults`, `/_devserver/faults`): each fault
//! does what its documentation says on the wire, and consullock rides out the brief ones.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{TestConsul, wait_until};

fn faulty() -> TestConsul {
    TestConsul::start_dev_server(&["--test-faults"])
}

fn run(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("run consullock")
}

#[test]
fn control_endpoint_is_404_without_the_option_and_hidden_from_help() {
    let plain = TestConsul::start_dev_server(&[]);
    for method in ["GET", "PUT", "DELETE"] {
        let response = plain.request(method, "/_devserver/faults", b"{}");
        assert_eq!(response.status, 404, "{method}: {}", response.text());
    }
    let output = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_consullock"));
        c.args(["dev-server", "--help"]);
        c
    });
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--acl-token"), "{help}");
    assert!(!help.contains("test-faults"), "{help}");
}

#[test]
fn control_endpoint_refuses_unknown_fields_and_reports() {
    let consul = faulty();
    let response = consul.put("/_devserver/faults", br#"{"no_leader": 5}"#);
    assert_eq!(response.status, 400, "{}", response.text());
    let report = consul.faults(json!({"delay_ms": 7, "index_backwards": 3}));
    assert_eq!(report["delay_ms"], 7);
    assert_eq!(report["index_backwards"], 3);
    assert_eq!(report["no_leader_ms"], 0);
    let report = consul.clear_faults();
    assert_eq!(report["delay_ms"], 0);
    assert_eq!(report["index_backwards"], 0);
}

/// Every Consul endpoint answers `status` with `text` while the fault lasts, `/_devserver/*`
/// never does, and everything is back to normal once the period is over.
fn period_fault(field: &str, status: u16, text: &str) {
    let consul = faulty();
    assert_eq!(consul.put("/v1/kv/a", b"x").status, 200);
    consul.faults(json!({ field: 60_000 }));
    for (method, path) in [
        ("GET", "/v1/kv/a"),
        ("PUT", "/v1/kv/a"),
        ("PUT", "/v1/session/create"),
        ("GET", "/v1/session/list"),
        ("GET", "/v1/status/leader"),
        ("GET", "/v1/agent/self"),
    ] {
        let response = consul.request(method, path, b"");
        assert_eq!(response.status, status, "{field}: {method} {path}");
        assert_eq!(response.text(), text, "{field}: {method} {path}");
    }
    assert_eq!(consul.get("/_devserver/stats").status, 200);
    let report = consul.faults(json!({ field: 300 }));
    assert!(report[field].as_u64().unwrap() <= 300, "{report}");
    wait_until(Duration::from_secs(5), "the fault period to end", || {
        consul.get("/v1/kv/a").status == 200
    });
    let injected = consul.clear_faults()["injected"].clone();
    let counted: u64 = injected
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(counted >= 6, "{injected}");
}

#[test]
fn no_leader_answers_500() {
    period_fault("no_leader_ms", 500, "No cluster leader");
}

#[test]
fn rate_limit_answers_429() {
    period_fault("rate_limit_ms", 429, "RPC rate limit exceeded");
}

#[test]
fn acl_outage_answers_403_even_with_the_right_token() {
    let consul = TestConsul::start_dev_server(&["--test-faults", "--acl-token", "right"]);
    assert_eq!(consul.get("/v1/kv/a").status, 404);
    consul.faults(json!({"acl_deny_ms": 60_000}));
    let response = consul.get("/v1/kv/a");
    assert_eq!(
        (response.status, response.text().as_str()),
        (403, "Permission denied")
    );
    // The control endpoint still works with the token.
    consul.clear_faults();
    assert_eq!(consul.get("/v1/kv/a").status, 404);
    period_fault("acl_deny_ms", 403, "Permission denied");
}

#[test]
fn delay_slows_every_answer_including_errors() {
    let consul = faulty();
    consul.faults(json!({"delay_ms": 400}));
    for path in ["/v1/kv/missing", "/v1/status/leader"] {
        let started = Instant::now();
        consul.get(path);
        assert!(started.elapsed() >= Duration::from_millis(400), "{path}");
    }
    consul.faults(json!({"delay_ms": 400, "no_leader_ms": 60_000}));
    let started = Instant::now();
    assert_eq!(consul.get("/v1/kv/a").status, 500);
    assert!(started.elapsed() >= Duration::from_millis(400));
    // The control endpoint is never delayed: it is how a test turns the delay off.
    let started = Instant::now();
    let report = consul.clear_faults();
    assert!(started.elapsed() < Duration::from_millis(400));
    assert!(
        report["injected"]["delayed"].as_u64().unwrap() >= 3,
        "{report}"
    );
}

#[test]
fn index_goes_backwards_for_the_next_n_successful_reads() {
    let consul = faulty();
    for i in 0..5 {
        assert_eq!(consul.put(&format!("/v1/kv/k{i}"), b"x").status, 200);
    }
    let real = consul.get("/v1/kv/k4").index();
    assert!(real > 2, "{real}");
    consul.faults(json!({"index_backwards": 2}));
    // A failed read does not use one up.
    assert_eq!(consul.get("/v1/kv/missing").status, 404);
    assert_eq!(consul.get("/v1/kv/k4").index(), 1);
    assert_eq!(consul.get("/v1/session/list").index(), 1);
    assert_eq!(consul.get("/v1/kv/k4").index(), real);
    let report = consul.clear_faults();
    assert_eq!(report["injected"]["index_backwards"], 2);
}

#[test]
fn operator_destroy_invalidates_a_session() {
    let consul = faulty();
    let session = consul.put("/v1/session/create", b"{}").json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        consul
            .put(&format!("/v1/kv/held?acquire={session}"), b"x")
            .text(),
        "true"
    );
    consul.destroy_session(&session);
    assert_eq!(consul.holder("held"), None);
    assert_eq!(
        consul
            .put(&format!("/v1/session/renew/{session}"), b"")
            .status,
        404
    );
}

/// A brief leaderless period and 429s while `lock` waits are retried, not reported.
#[test]
fn lock_rides_out_a_leader_election_and_rate_limiting() {
    let consul = faulty();
    for field in ["no_leader_ms", "rate_limit_ms"] {
        let key = consul.unique_key(field);
        consul.faults(json!({ field: 2_500 }));
        let output = run({
            let mut c = consul.command();
            c.args(["lock", "--session-ttl", "10", &key]);
            c
        });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{field}: {stderr}");
        assert!(consul.holder(&key).is_some(), "{field}");
        consul.clear_faults();
    }
}

/// A held lock survives brief faults shorter than the contact window, and an index that goes
/// backwards: the command runs to its end and its exit code is returned.
#[test]
fn execute_keeps_the_lock_through_brief_faults() {
    let consul = faulty();
    let key = consul.unique_key("brief");
    let child = consul
        .command()
        .args([
            "execute",
            "--ttl-only",
            "--session-ttl",
            "10",
            "--lock-delay",
            "8",
            "--kill-grace",
            "1",
            &key,
            "--",
            "sh",
            "-c",
            "sleep 6; exit 7",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the lock to be held", || {
        consul.holder(&key).is_some()
    });
    consul.faults(json!({"no_leader_ms": 1_500, "index_backwards": 3}));
    std::thread::sleep(Duration::from_millis(2_000));
    consul.faults(json!({"rate_limit_ms": 1_500, "delay_ms": 200}));
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "{stderr}");
    consul.clear_faults();
    assert!(consul.sessions().is_empty());
}

/// An ACL outage while holding is a loss of contact like any other: the command is stopped
/// before another holder could be granted the lock, with exit 101.
#[test]
fn execute_stops_the_command_when_consul_denies_for_longer_than_the_window() {
    let consul = faulty();
    let key = consul.unique_key("denied");
    let started = Instant::now();
    let child = consul
        .command()
        .args([
            "execute",
            "--session-ttl",
            "10",
            "--lock-delay",
            "5",
            "--kill-grace",
            "1",
            &key,
            "--",
            "sleep",
            "60",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the lock to be held", || {
        consul.holder(&key).is_some()
    });
    consul.faults(json!({"acl_deny_ms": 60_000}));
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("lock lost"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!stderr.contains("panicked"), "{stderr}");
}
