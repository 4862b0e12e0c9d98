//! What consullock asks of Consul (issue 12): an uncontended `execute` makes 4 writes and no
//! consistent read of its own, a contender that finds the lock held writes nothing, waiters take
//! the lock in the order they came, one woken per release, and a Consul without transactions
//! still works. Requests are read from the dev server's own log (`-v`), so they are counted as
//! the server saw them.

use std::time::Duration;

use crate::support::process::{EXIT, HANDSHAKE, Running, Scratch, code, run};
use crate::support::{TestConsul, wait_until};

/// A request as the dev server logged it: method, path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Logged {
    method: String,
    target: String,
}

impl Logged {
    /// A Raft write on a real cluster: session create and destroy, every KV write, and a
    /// transaction (ours always write).
    fn is_write(&self) -> bool {
        match self.method.as_str() {
            "DELETE" => true,
            "PUT" => !self.target.starts_with("/v1/session/renew/"),
            _ => false,
        }
    }

    /// A consistent read that is not a blocking watch (those are not on the critical path).
    fn is_consistent_read(&self) -> bool {
        self.method == "GET"
            && self.target.contains("consistent")
            && !self.target.contains("index=")
    }
}

/// The requests the dev server logged so far (it runs at `-v`).
fn logged(consul: &TestConsul) -> Vec<Logged> {
    consul
        .server_log()
        .iter()
        .filter_map(|line| {
            let method = ["GET", "PUT", "DELETE"]
                .into_iter()
                .find(|m| line.contains(&format!(" {m} /")))?;
            let rest = &line[line.find(&format!(" {method} /"))? + method.len() + 2..];
            let target = rest.split_whitespace().next()?.to_string();
            (!target.starts_with("/_devserver/") && !target.contains(MARK)).then(|| Logged {
                method: method.to_string(),
                target,
            })
        })
        .collect()
}

/// The requests logged after the first `before` ones, once the log has settled.
fn logged_since(consul: &TestConsul, before: usize) -> Vec<Logged> {
    settled(consul);
    logged(consul).split_off(before)
}

/// The query parameter of [`settled`]'s marks, which [`logged`] leaves out.
const MARK: &str = "settled-mark=";

/// How many requests the log holds once it shows every request the server answered so far: a
/// mark is sent and waited for in the log, which is written in the order answers complete (the
/// tests call this with nothing else in flight). Counting the server's requests instead could
/// wait for ever: a request whose client gave up under load is counted but never answered.
fn settled(consul: &TestConsul) -> usize {
    let mark = format!("{MARK}{}", uuid::Uuid::new_v4());
    consul.get(&format!("/v1/status/leader?{mark}"));
    wait_until(HANDSHAKE, "the server's log to show the mark", || {
        consul.server_log().iter().any(|line| line.contains(&mark))
    });
    logged(consul).len()
}

fn lock_command(consul: &TestConsul, args: &[&str]) -> std::process::Command {
    let mut command = consul.command();
    command.arg("lock").args(args);
    command
}

#[test]
fn an_uncontended_execute_makes_four_writes_and_no_consistent_read() {
    let consul = TestConsul::start_dev_server(&["-v"]);
    let key = consul.unique_key("uncontended");
    let before = settled(&consul);
    let output = run({
        let mut command = consul.command();
        command.args(["execute", &key, "--", "true"]);
        command
    });
    assert_eq!(code(&output), 0, "{output:?}");
    let requests = logged_since(&consul, before);
    let writes: Vec<&Logged> = requests.iter().filter(|r| r.is_write()).collect();
    let consistent: Vec<&Logged> = requests.iter().filter(|r| r.is_consistent_read()).collect();
    crate::support::report(&format!(
        "uncontended execute: {} requests, {} writes, {} consistent reads: {requests:?}",
        requests.len(),
        writes.len(),
        consistent.len()
    ));
    assert_eq!(writes.len(), 4, "{requests:?}");
    assert!(consistent.is_empty(), "{requests:?}");
    let txns = requests.iter().filter(|r| r.target == "/v1/txn").count();
    assert_eq!(
        txns, 2,
        "acquire and release are transactions: {requests:?}"
    );
    consul.assert_nothing_left(&key);
}

#[test]
fn a_non_blocking_attempt_on_a_held_key_writes_nothing() {
    let consul = TestConsul::start_dev_server(&["-v"]);
    let key = consul.unique_key("held-non-blocking");
    assert_eq!(code(&run(lock_command(&consul, &[&key]))), 0);
    let sessions = consul.sessions().len();
    let before = settled(&consul);
    let output = run({
        let mut command = consul.command();
        command.args(["execute", "--non-blocking", &key, "--", "true"]);
        command
    });
    assert_eq!(code(&output), 100, "{output:?}");
    let requests = logged_since(&consul, before);
    assert_eq!(
        requests,
        [Logged {
            method: "GET".into(),
            target: format!("/v1/kv/{key}"),
        }],
        "one read and nothing else"
    );
    assert_eq!(consul.sessions().len(), sessions, "no session was created");
    run({
        let mut command = consul.command();
        command.args(["unlock", &key]);
        command
    });
}

/// Waiters that queue one after another take the lock in that order, each woken by the one
/// before it rather than all at once by every release.
#[test]
fn waiters_take_the_lock_in_the_order_they_came() {
    let consul = TestConsul::start_dev_server(&[]);
    let key = consul.unique_key("fifo");
    let scratch = Scratch::new("fifo");
    let order = scratch.path("order");
    let gate = scratch.path("gate");
    let holder = Running::start(
        {
            let mut command = consul.command();
            command
                .args(["execute", &key, "--", "sh", "-c"])
                .arg(format!(
                    "while [ ! -e '{}' ]; do sleep 0.02; done",
                    gate.display()
                ));
            command
        },
        false,
    );
    wait_until(HANDSHAKE, "the holder", || consul.holder(&key).is_some());
    let mut waiters = Vec::new();
    for i in 0..5 {
        let waiter = Running::start(
            {
                let mut command = consul.command();
                command
                    .args(["execute", &key, "--", "sh", "-c"])
                    .arg(format!("echo {i} >> '{}'", order.display()));
                command
            },
            false,
        );
        // Each joins the line before the next starts.
        wait_until(HANDSHAKE, "the waiter to queue", || {
            let listed = consul.get(&format!("/v1/kv/{key}/.queue/?keys"));
            listed.status == 200 && listed.json().as_array().map_or(0, Vec::len) == i + 1
        });
        waiters.push(waiter);
    }
    let before = consul.dev_stats().unwrap()["requests"].as_u64().unwrap();
    std::fs::write(&gate, b"").unwrap();
    let mut holder = holder;
    assert_eq!(holder.wait(EXIT), 0);
    for mut waiter in waiters {
        assert_eq!(waiter.wait(EXIT), 0, "stderr: {}", waiter.stderr());
    }
    let during = consul.dev_stats().unwrap()["requests"].as_u64().unwrap() - before;
    let got: Vec<String> = scratch.read("order").lines().map(str::to_owned).collect();
    assert_eq!(
        got,
        ["0", "1", "2", "3", "4"],
        "the order the waiters got the lock"
    );
    crate::support::report(&format!(
        "fifo: 5 hand-overs in arrival order, {during} requests from release to the last exit"
    ));
    // Each hand-over: the holder's release (txn, destroy), the next one's attempt (txn), its
    // watch read, the one after it waking (a read of the line, a read of the lock, a blocking
    // read). A herd would add a read and a failed attempt per waiter left, per release.
    assert!(during <= 5 * 9, "{during} requests for 5 hand-overs");
    consul.assert_nothing_left(&key);
}

/// `unlock -r` and `find` see the lock, not the line of waiters under it: the waiter's entry is
/// neither released nor reported, and the waiter then gets the lock.
#[test]
fn unlock_regex_skips_the_waiter_line() {
    let consul = TestConsul::start_dev_server(&[]);
    let base = consul.unique_key("line");
    let key = format!("{base}/job");
    assert_eq!(code(&run(lock_command(&consul, &[&key]))), 0);
    let mut waiter = Running::start(
        {
            let mut command = consul.command();
            command.args(["execute", &key, "--", "true"]);
            command
        },
        false,
    );
    wait_until(HANDSHAKE, "the waiter to queue", || {
        consul.get(&format!("/v1/kv/{key}/.queue/?keys")).status == 200
    });
    let output = run({
        let mut command = consul.command();
        command.args(["unlock", "-r", &format!("{base}/.*")]);
        command
    });
    assert_eq!(code(&output), 0, "{output:?}");
    let released: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(released, serde_json::json!([key]));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(waiter.wait(EXIT), 0, "stderr: {}", waiter.stderr());
    consul.assert_nothing_left(&key);
}

/// A Consul without transactions (404 on /v1/txn): the client falls back to `?acquire` and
/// `?release` once, and everything works.
#[test]
fn without_transactions_locks_fall_back_to_acquire_and_release() {
    let consul = TestConsul::start_dev_server(&["-v", "--test-faults"]);
    consul.faults(serde_json::json!({"no_txn": true}));
    let key = consul.unique_key("no-txn");
    let before = settled(&consul);
    let output = run({
        let mut command = consul.command();
        command.args(["execute", &key, "--", "true"]);
        command
    });
    assert_eq!(code(&output), 0, "{output:?}");
    let requests = logged_since(&consul, before);
    let txns = requests.iter().filter(|r| r.target == "/v1/txn").count();
    assert_eq!(txns, 1, "one try, then no more: {requests:?}");
    assert!(
        requests.iter().any(|r| r.target.contains("acquire=")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.target.contains("release=")),
        "{requests:?}"
    );
    consul.assert_nothing_left(&key);
    // `lock` and `unlock` too.
    assert_eq!(code(&run(lock_command(&consul, &[&key]))), 0);
    assert!(consul.holder(&key).is_some());
    let unlocked = run({
        let mut command = consul.command();
        command.args(["unlock", &key]);
        command
    });
    assert_eq!(code(&unlocked), 0);
    wait_until(Duration::from_secs(5), "the key to go", || {
        consul.key_entry(&key).is_none()
    });
}
