//! Semaphores and `consul lock`'s layout shared with Go's `api.Semaphore` and `api.Lock` (issue
//! 13): mixed crowds of the real `consullock` binary and the Go-recipe contender
//! (`support/go_recipe.rs`, standing in for `consul lock`, which cannot run here) on one
//! prefix.
//!
//! Critical sections are stamped on CLOCK_MONOTONIC by whoever does the work: consullock's
//! commands are `examples/heartbeat.rs` (its first and last stamps), Go contenders stamp right
//! after their acquisition returns and right before they release. A holder the test takes the
//! slot from (SIGKILL, a destroyed session) ends its section at the moment the test saw it dead
//! or sent the destroy: from then on the slot may be someone else's. The intervals give the
//! largest number of holders at one instant, which must never pass the limit and must reach it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::go_recipe::{
    Contender, GoClient, GoError, GoLock, GoLockOptions, GoSemaphore, GoSemaphoreOptions, Held,
    LOCK_FLAG_VALUE, SEMAPHORE_FLAG_VALUE, max_overlap, monotonic_ns,
};
use crate::support::holder::hold_until_stdin_closes;
use crate::support::process::{EXIT, HANDSHAKE, Running, Scratch, code, process_running, run};
use crate::support::stamps::{heartbeat, runs};
use crate::support::{TestConsul, wait_until};

/// How long a release or a loss may take to show.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long the test watches for something that must not happen (a waiter taking a slot that
/// is still held): long against the milliseconds a hand-over takes.
const QUIET: Duration = Duration::from_millis(300);
/// Session settings of consullock contenders whose slot the test takes away: the shortest TTL,
/// and a kill grace of one second so a stopped command is gone soon.
const SHORT: [&str; 4] = ["--session-ttl", "10", "--kill-grace", "1"];

/// `consullock execute ARGS... KEY -- heartbeat TAG MILLIS`, stamping run `run` into `log`.
fn stamped(
    consul: &TestConsul,
    args: &[&str],
    key: &str,
    log: &Path,
    run: u64,
    millis: u64,
) -> Command {
    let mut command = consul.command();
    command
        .arg("execute")
        .args(args)
        .args([key, "--"])
        .arg(heartbeat())
        .args([format!("run{run}"), millis.to_string()])
        .env("TORTURE_LOG", log)
        .env("RUN_ID", run.to_string());
    command
}

/// An empty stamp log in `scratch` (the heartbeat appends to it, it does not create it).
fn stamp_log(scratch: &Scratch) -> PathBuf {
    let log = scratch.path("stamps");
    std::fs::write(&log, "").unwrap();
    log
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `consullock ARGS...` to its end.
fn consullock(consul: &TestConsul, args: &[&str]) -> Output {
    let mut command = consul.command();
    command.args(args);
    run(command)
}

/// `consullock lock ARGS...` that must succeed: its JSON.
fn lock(consul: &TestConsul, args: &[&str]) -> Value {
    let mut all = vec!["lock"];
    all.extend_from_slice(args);
    let output = consullock(consul, &all);
    assert_eq!(code(&output), 0, "lock {args:?}: {}", stderr(&output));
    serde_json::from_str(stdout(&output).trim()).expect("lock prints JSON")
}

fn take(contender: &mut Contender, who: &str) -> Held {
    contender
        .wait(HANDSHAKE)
        .unwrap_or_else(|e| panic!("{who} should acquire: {e}"))
}

/// Everything a contender that gave up might have left: the keys under `prefix` (with their
/// indexes), the sessions named after it (consullock's and Go's), and the dev server's count
/// of writes.
#[derive(Debug, PartialEq)]
struct Snapshot {
    listing: Vec<Value>,
    sessions: BTreeSet<String>,
    writes: Option<u64>,
}

fn snapshot(consul: &TestConsul, prefix: &str) -> Snapshot {
    Snapshot {
        listing: consul.kv_listing(prefix),
        sessions: consul
            .sessions_of(prefix)
            .iter()
            .map(|s| s["ID"].as_str().expect("ID").to_string())
            .collect(),
        writes: consul.writes(),
    }
}

/// The one line of `stderr`, checked to be exactly one.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {stderr:?}");
    lines[0]
}

/// Whether `text` names the number `n` as a word of its own.
fn names_number(text: &str, n: u64) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|word| word == n.to_string())
}

/// Whether any interval of `a` overlaps one of `b`.
fn any_overlap(a: &[(u128, u128)], b: &[(u128, u128)]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.0 < y.1 && y.0 < x.1))
}

/// Removes a file when dropped, also while a panic unwinds.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

// ---- 1. A mixed crowd --------------------------------------------------------------------

/// consullock `execute -n 3` and Go contenders with limit 3 take turns on one prefix: never
/// more than 3 critical sections at once, 3 reached, everyone served, nothing left.
#[test]
fn mixed_crowd_never_exceeds_the_limit_and_fills_it() {
    const LIMIT: usize = 3;
    const LANES: u64 = 4;
    const ROUNDS: u64 = 3;
    const HOLD_MS: u64 = 250;
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("sem-crowd");
    let scratch = Scratch::new("sem-crowd");
    let log = stamp_log(&scratch);
    let go_sections: Mutex<Vec<(u128, u128)>> = Mutex::default();
    let go_sessions: Mutex<Vec<String>> = Mutex::default();

    std::thread::scope(|s| {
        for lane in 0..LANES {
            let (consul, prefix, log) = (&consul, &prefix, &log);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let id = lane * 100 + round;
                    let output = run(stamped(consul, &["-n", "3"], prefix, log, id, HOLD_MS));
                    assert_eq!(code(&output), 0, "run {id}: {}", stderr(&output));
                }
            });
        }
        for lane in 0..LANES {
            let (client, prefix) = (&client, &prefix);
            let (go_sections, go_sessions) = (&go_sections, &go_sessions);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let opts = GoSemaphoreOptions::consul_lock(
                        prefix,
                        LIMIT as i64,
                        &format!("go {lane} {round}"),
                    );
                    let held = take(&mut GoSemaphore::spawn(client, opts), "a Go contender");
                    let start = monotonic_ns();
                    std::thread::sleep(Duration::from_millis(HOLD_MS));
                    assert!(!held.is_lost(), "a Go holder lost its slot");
                    let end = monotonic_ns();
                    let released = held.release(DEADLINE).expect("Go release");
                    assert_eq!(released.unlock, Ok(()));
                    assert!(
                        matches!(released.cleanup, Ok(()) | Err(GoError::SemaphoreInUse)),
                        "{:?}",
                        released.cleanup
                    );
                    go_sections.lock().unwrap().push((start, end));
                    go_sessions.lock().unwrap().push(released.session);
                }
            });
        }
    });

    let runs = runs(&log);
    assert_eq!(runs.len() as u64, LANES * ROUNDS, "consullock runs stamped");
    assert!(
        runs.values().all(|r| r.ended),
        "a command did not run to its end"
    );
    let ours: Vec<(u128, u128)> = runs.values().map(|r| (r.first, r.last)).collect();
    let go = go_sections.into_inner().unwrap();
    assert_eq!(go.len() as u64, LANES * ROUNDS);
    let all: Vec<(u128, u128)> = ours.iter().chain(&go).copied().collect();
    let peak = max_overlap(&all);
    assert!(peak <= LIMIT, "{peak} holders at once, limit {LIMIT}");
    assert_eq!(peak, LIMIT, "the crowd never filled the semaphore");
    // Whether both kinds held slots at one instant depends on scheduling (a loaded machine can
    // let one kind's lanes take turns among themselves for a while): said, not asserted. That
    // they share the slots is shown by the peak over both kinds, and by the waiters of both
    // kinds in `slots_of_killed_holders_and_destroyed_sessions_come_back`.
    if !any_overlap(&ours, &go) {
        eprintln!("consullock and Go holders did not overlap in this run");
    }

    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
    assert_eq!(consul.consullock_sessions(&prefix), Vec::<Value>::new());
    for session in go_sessions.into_inner().unwrap() {
        assert!(
            !consul.session_exists(&session),
            "Go session {session} left"
        );
    }
}

// ---- 2. Holders killed, sessions destroyed ----------------------------------------------

/// A consullock holder killed with SIGKILL keeps its slot while its session lives (its command
/// is dead); once the session is destroyed, as an operator or `unlock` would, the slot comes
/// back. A Go holder whose session is destroyed loses its slot, which comes back too. Waiting
/// contenders of both kinds take the freed slots one by one, and hold them until the test lets
/// them go, so each freed slot is seen taken by exactly one more waiter; never more than the
/// limit.
#[test]
fn slots_of_killed_holders_and_destroyed_sessions_come_back() {
    const LIMIT: usize = 3;
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("sem-kill");
    let scratch = Scratch::new("sem-kill");
    let log = stamp_log(&scratch);
    // Waiters that got a slot work until this file is gone.
    let hold = scratch.path("hold");
    std::fs::write(&hold, "").unwrap();
    let mut settings = vec!["-n", "3"];
    settings.extend(SHORT);
    let go_opts = |who: &str| GoSemaphoreOptions::consul_lock(&prefix, LIMIT as i64, who);
    let waiter = |run: u64| {
        let mut command = stamped(&consul, &settings, &prefix, &log, run, 50);
        command.env("TORTURE_HOLD", &hold);
        Running::start(command, false)
    };

    // Three holders fill the semaphore: two consullocks whose commands would work for a
    // minute, and a Go contender.
    let mut k1 = Running::start(stamped(&consul, &settings, &prefix, &log, 1, 60_000), false);
    let mut k2 = Running::start(stamped(&consul, &settings, &prefix, &log, 2, 60_000), false);
    let g = take(&mut GoSemaphore::spawn(&client, go_opts("g")), "g");
    let g_start = monotonic_ns();
    wait_until(HANDSHAKE, "both commands to run", || runs(&log).len() == 2);
    let pid_of = |run: u64| runs(&log)[&run].pid as i32;
    let (hb1, hb2) = (pid_of(1), pid_of(2));
    let s1 = consul
        .consullock_session_of(&prefix, k1.pid())
        .expect("k1's session");
    let s2 = consul
        .consullock_session_of(&prefix, k2.pid())
        .expect("k2's session");
    let sg = g.session().to_string();
    let full: BTreeSet<String> = [&s1, &s2, &sg].into_iter().cloned().collect();
    assert_eq!(consul.semaphore_holders(&prefix), Some(full));

    let mut sections: Vec<(u128, u128)> = Vec::new();
    let go_acquired = AtomicUsize::new(0);
    let go_sections: Mutex<Vec<(u128, u128)>> = Mutex::default();
    std::thread::scope(|s| {
        // Should this thread fail, the waiters are let go before the scope waits for them.
        let _let_go = RemoveOnDrop(&hold);
        // Waiters: two consullocks and two Go contenders.
        let mut w3 = waiter(3);
        let mut w4 = waiter(4);
        let mut go_waiters = Vec::new();
        let mut go_waiter_keys = Vec::new();
        for who in ["gw1", "gw2"] {
            let mut contender = GoSemaphore::spawn(&client, go_opts(who));
            wait_until(HANDSHAKE, "a Go waiter to block", || {
                contender.progress().index_waits >= 1
            });
            let session = contender.progress().session.expect("a Go waiter's session");
            go_waiter_keys.push(format!("{prefix}/{session}"));
            let (go_acquired, go_sections, hold) = (&go_acquired, &go_sections, &hold);
            go_waiters.push(s.spawn(move || {
                let held = take(&mut contender, who);
                let start = monotonic_ns();
                go_acquired.fetch_add(1, Ordering::SeqCst);
                wait_until(HANDSHAKE, "the test to let go", || !hold.exists());
                assert!(!held.is_lost(), "{who} lost its slot");
                let end = monotonic_ns();
                let released = held.release(DEADLINE).expect("release");
                assert_eq!(released.unlock, Ok(()));
                go_sections.lock().unwrap().push((start, end));
                released.session
            }));
        }
        // A consullock waiter keeps a session, renewed, and writes nothing else.
        wait_until(HANDSHAKE, "the consullock waiters' sessions", || {
            consul.consullock_sessions(&prefix).len() == 4
        });
        let mut keys: Vec<String> = [&s1, &s2, &sg]
            .iter()
            .map(|s| format!("{prefix}/{s}"))
            .chain(go_waiter_keys)
            .chain([format!("{prefix}/.lock")])
            .collect();
        keys.sort();
        assert_eq!(
            consul.keys_under(&prefix),
            keys,
            "a consullock waiter wrote a key"
        );
        let acquired = || runs(&log).len() - 2 + go_acquired.load(Ordering::SeqCst);
        let exactly = |n: usize, what: &str| {
            wait_until(HANDSHAKE, what, || acquired() >= n);
            std::thread::sleep(QUIET);
            assert_eq!(acquired(), n, "{what}: more waiters than freed slots");
        };
        exactly(0, "the waiters to wait");

        // k1 killed: its keeper kills the command, but its session still holds the slot.
        k1.signal(Signal::SIGKILL);
        assert_eq!(k1.wait(EXIT), 128 + 9);
        wait_until(HANDSHAKE, "k1's command to die", || !process_running(hb1));
        sections.push((runs(&log)[&1].first, monotonic_ns()));
        assert!(consul.session_exists(&s1), "k1's session went with it");
        exactly(0, "k1's live session to keep its slot");
        consul.destroy_session(&s1);
        exactly(1, "a waiter to take k1's slot");

        // g's session destroyed: its slot comes back.
        sections.push((g_start, monotonic_ns()));
        consul.destroy_session(&sg);
        assert!(g.wait_lost(DEADLINE), "g never saw its slot go");
        exactly(2, "a waiter to take g's slot");

        // k2 killed, then its session destroyed.
        k2.signal(Signal::SIGKILL);
        assert_eq!(k2.wait(EXIT), 128 + 9);
        wait_until(HANDSHAKE, "k2's command to die", || !process_running(hb2));
        sections.push((runs(&log)[&2].first, monotonic_ns()));
        consul.destroy_session(&s2);
        exactly(3, "a waiter to take k2's slot");

        // Let go: the last waiter gets its turn, and a newcomer after everyone.
        std::fs::remove_file(&hold).unwrap();
        assert_eq!(w3.wait(EXIT), 0, "w3: {}", w3.stderr());
        assert_eq!(w4.wait(EXIT), 0, "w4: {}", w4.stderr());
        for waiter in go_waiters {
            let session = waiter.join().expect("Go waiter");
            assert!(!consul.session_exists(&session));
        }
        let output = run(stamped(&consul, &settings, &prefix, &log, 5, 100));
        assert_eq!(code(&output), 0, "newcomer: {}", stderr(&output));
    });
    let released = g.release(DEADLINE).expect("g's release");
    assert!(released.lost_ns.is_some());

    let runs = runs(&log);
    assert_eq!(runs.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    for run in [3, 4, 5] {
        assert!(runs[&run].ended, "run {run} did not run to its end");
        sections.push((runs[&run].first, runs[&run].last));
    }
    sections.extend(go_sections.into_inner().unwrap());
    let peak = max_overlap(&sections);
    assert!(peak <= LIMIT, "{peak} holders at once, limit {LIMIT}");
    assert_eq!(peak, LIMIT);
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
    assert_eq!(consul.consullock_sessions(&prefix), Vec::<Value>::new());
}

// ---- 3. Limit mismatch -------------------------------------------------------------------

/// Runs `lock -n 3` and `execute -n 3` against a semaphore of 2: exit 10, one stderr line naming
/// both limits, and nothing written.
fn assert_limit_conflict(consul: &TestConsul, prefix: &str) {
    let before = snapshot(consul, prefix);
    let locked = consullock(consul, &["lock", "-n", "3", prefix]);
    let executed = consullock(consul, &["execute", "-n", "3", prefix, "--", "true"]);
    for (what, output) in [("lock", &locked), ("execute", &executed)] {
        assert_eq!(code(output), 10, "{what}: {}", stderr(output));
        let line = one_line(&stderr(output)).replace(prefix, "PREFIX");
        assert!(
            names_number(&line, 2) && names_number(&line, 3),
            "{what}: the line names both limits: {line}"
        );
    }
    assert_eq!(stdout(&executed), "");
    assert_eq!(
        snapshot(consul, prefix),
        before,
        "a refused contender wrote"
    );
}

#[test]
fn another_limit_is_refused_with_exit_10_and_nothing_written() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);

    // A Go semaphore of 2.
    let prefix = consul.unique_key("sem-limit-go");
    let go = take(
        &mut GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, "g")),
        "g",
    );
    assert_limit_conflict(&consul, &prefix);
    assert!(!go.is_lost());
    let released = go.release(DEADLINE).expect("release");
    assert_eq!((released.unlock, released.cleanup), (Ok(()), Ok(())));

    // consullock's semaphore of 2: consullock and Go with 3 are refused.
    let prefix = consul.unique_key("sem-limit-ours");
    let held = lock(&consul, &["-n", "2", &prefix]);
    assert_limit_conflict(&consul, &prefix);
    let before = consul.kv_listing(&prefix);
    let mut three = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 3, "g3"));
    let error = three.wait(HANDSHAKE).err().expect("Go with 3 is refused");
    assert_eq!(
        error.to_string(),
        "semaphore limit conflict (lock: 2, local: 3)"
    );
    assert_eq!(consul.kv_listing(&prefix), before);
    let output = consullock(&consul, &["unlock", &prefix]);
    assert_eq!(stdout(&output).trim(), format!("{prefix:?}"));
    assert!(!consul.session_exists(held["session"].as_str().unwrap()));
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
}

// ---- 4. Foreign flags --------------------------------------------------------------------

#[test]
fn a_coordination_key_with_other_flags_is_refused_and_go_refuses_ours() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let refused = |prefix: &str| {
        let before = snapshot(&consul, prefix);
        for args in [
            vec!["lock", "-n", "3", prefix],
            vec!["lock", "-n", "3", "--non-blocking", prefix],
            vec!["execute", "-n", "3", prefix, "--", "true"],
        ] {
            let output = consullock(&consul, &args);
            assert_eq!(code(&output), 9, "{args:?}: {}", stderr(&output));
            one_line(&stderr(&output));
        }
        assert_eq!(
            snapshot(&consul, prefix),
            before,
            "a refused contender wrote"
        );
    };

    // Someone's data at PREFIX/.lock, flags 0.
    let prefix = consul.unique_key("sem-flags-0");
    let put = consul.put(&format!("/v1/kv/{prefix}/.lock"), b"{\"Limit\":3}");
    assert_eq!(put.text(), "true");
    refused(&prefix);

    // `consul lock PREFIX` (api.Lock's flags) holds the prefix.
    let prefix = consul.unique_key("sem-flags-lock");
    let go = take(
        &mut GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "l")),
        "the Go lock",
    );
    let entry = consul.key_entry(&format!("{prefix}/.lock")).unwrap();
    assert_eq!(entry["Flags"], LOCK_FLAG_VALUE);
    refused(&prefix);
    assert!(!go.is_lost());
    go.release(DEADLINE).expect("release");

    // consullock's semaphore: `consul lock PREFIX` is refused as Go refuses any other flags.
    let prefix = consul.unique_key("sem-flags-ours");
    let held = lock(&consul, &["-n", "3", &prefix]);
    let entry = consul.key_entry(&format!("{prefix}/.lock")).unwrap();
    assert_eq!(entry["Flags"], SEMAPHORE_FLAG_VALUE);
    let mut go = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "l"));
    let error = go.wait(HANDSHAKE).err().expect("the Go lock is refused");
    assert_eq!(error, GoError::LockConflict);
    assert_eq!(error.to_string(), "Existing key does not match lock use");
    assert_eq!(
        consul.semaphore_holders(&prefix),
        Some([held["session"].as_str().unwrap().to_string()].into())
    );
    consullock(&consul, &["unlock", &prefix]);
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
}

// ---- 5. consul lock's layout -------------------------------------------------------------

/// consullock `execute --consul-lock`, `execute -n 1` and Go locks on one prefix exclude each
/// other and all get their turns.
#[test]
fn consul_lock_layout_excludes_go_locks() {
    const ROUNDS: u64 = 2;
    const HOLD_MS: u64 = 150;
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("consul-lock-crowd");
    let scratch = Scratch::new("consul-lock-crowd");
    let log = stamp_log(&scratch);
    let go_sections: Mutex<Vec<(u128, u128)>> = Mutex::default();

    std::thread::scope(|s| {
        for (lane, layout) in [(0u64, "--consul-lock"), (1, "--consul-lock"), (2, "-n1")] {
            let (consul, prefix, log) = (&consul, &prefix, &log);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let id = lane * 100 + round;
                    let output = run(stamped(consul, &[layout], prefix, log, id, HOLD_MS));
                    assert_eq!(code(&output), 0, "run {id}: {}", stderr(&output));
                }
            });
        }
        for lane in 0..2 {
            let (client, prefix, go_sections) = (&client, &prefix, &go_sections);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let mut opts =
                        GoLockOptions::consul_lock(prefix, &format!("go {lane} {round}"));
                    // A refused acquire on a free key means a lock-delay to Go: 5 s is long.
                    opts.lock_retry_time = Duration::from_millis(100);
                    let held = take(&mut GoLock::spawn(client, opts), "a Go lock");
                    let start = monotonic_ns();
                    std::thread::sleep(Duration::from_millis(HOLD_MS));
                    assert!(!held.is_lost(), "a Go holder lost its lock");
                    let end = monotonic_ns();
                    let released = held.release(DEADLINE).expect("release");
                    assert_eq!(released.unlock, Ok(()));
                    go_sections.lock().unwrap().push((start, end));
                }
            });
        }
    });

    let runs = runs(&log);
    assert_eq!(runs.len() as u64, 3 * ROUNDS);
    assert!(runs.values().all(|r| r.ended));
    let go = go_sections.into_inner().unwrap();
    assert_eq!(go.len() as u64, 2 * ROUNDS);
    let all: Vec<(u128, u128)> = runs.values().map(|r| (r.first, r.last)).chain(go).collect();
    assert_eq!(max_overlap(&all), 1, "two holders of one lock at once");
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
    assert_eq!(consul.consullock_sessions(&prefix), Vec::<Value>::new());
}

/// consullock's own layout takes KEY, `consul lock`'s takes KEY/.lock: on one KEY they
/// coexist, and a `consul lock` holder on another prefix (a sibling that shares KEY's text, or
/// one nested under it) blocks nothing on KEY.
#[test]
fn layouts_exclude_only_on_their_own_keys() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let key = consul.unique_key("layouts");
    let sibling = format!("{key}-other");
    let nested = format!("{key}/sub");
    let go_sibling = take(
        &mut GoLock::spawn(&client, GoLockOptions::consul_lock(&sibling, "s")),
        "the sibling",
    );
    let go_nested = take(
        &mut GoLock::spawn(&client, GoLockOptions::consul_lock(&nested, "n")),
        "the nested",
    );

    let own = lock(&consul, &["--non-blocking", &key]);
    assert_eq!(own["key"], key.as_str());
    let consul_lock = lock(&consul, &["--consul-lock", "--non-blocking", &key]);
    assert_eq!(consul_lock["key"], format!("{key}/.lock"));
    assert_eq!(
        consul.holder(&key).as_deref(),
        own["session"].as_str(),
        "the own layout's key"
    );
    assert_eq!(
        consul.holder(&format!("{key}/.lock")).as_deref(),
        consul_lock["session"].as_str()
    );
    // The Go lock on KEY waits for consullock's consul-lock holder (a one-shot try times out).
    let mut opts = GoLockOptions::consul_lock(&key, "k");
    opts.lock_try_once = true;
    opts.lock_wait_time = Duration::from_millis(300);
    assert_eq!(
        GoLock::spawn(&client, opts).wait(HANDSHAKE).err(),
        Some(GoError::Stopped)
    );
    // A second contender of either layout on KEY is refused: each layout excludes on its key.
    let output = consullock(&consul, &["lock", "-n", "1", "--non-blocking", &key]);
    assert_eq!(code(&output), 100, "{}", stderr(&output));
    let output = consullock(&consul, &["lock", "--non-blocking", &key]);
    assert_eq!(code(&output), 100, "{}", stderr(&output));
    let output = consullock(&consul, &["unlock", &key]);
    assert_eq!(stdout(&output).trim(), format!("{key:?}"));
    assert!(!consul.session_exists(own["session"].as_str().unwrap()));
    assert!(consul.session_exists(consul_lock["session"].as_str().unwrap()));
    let output = consullock(&consul, &["unlock", &key]);
    assert_eq!(stdout(&output).trim(), format!("{key:?}"));
    assert!(!consul.session_exists(consul_lock["session"].as_str().unwrap()));

    // A semaphore on KEY: the held nested lock under it neither blocks nor counts.
    let a = lock(&consul, &["-n", "2", "--non-blocking", &key]);
    let b = lock(&consul, &["-n", "2", "--non-blocking", &key]);
    let output = consullock(&consul, &["lock", "-n", "2", "--non-blocking", &key]);
    assert_eq!(code(&output), 100, "{}", stderr(&output));
    let holders: BTreeSet<String> = [&a, &b]
        .iter()
        .map(|j| j["session"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(consul.semaphore_holders(&key), Some(holders));
    consullock(&consul, &["unlock", &key]);
    assert_eq!(
        consul.keys_under(&format!("{key}/")),
        [format!("{nested}/.lock")]
    );

    assert!(!go_sibling.is_lost() && !go_nested.is_lost());
    go_sibling.release(DEADLINE).expect("release");
    go_nested.release(DEADLINE).expect("release");
    assert_eq!(consul.keys_under(&key), Vec::<String>::new());
    assert_eq!(consul.consullock_sessions(&key), Vec::<Value>::new());
}

// ---- 6. Nothing left behind --------------------------------------------------------------

/// The command of a slot learns its prefix, session, contender key and limit, and gets no
/// fencing token.
#[test]
fn a_slot_holders_environment() {
    let consul = TestConsul::start();
    let prefix = consul.unique_key("sem-env");
    let scratch = Scratch::new("sem-env");
    let env = scratch.path("env");
    let script = format!("env > '{}'", env.display());
    let output = consullock(
        &consul,
        &["execute", "-n", "2", &prefix, "--", "sh", "-c", &script],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let text = scratch.read("env");
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let session = var("CONSULLOCK_SESSION").expect("CONSULLOCK_SESSION");
    assert_eq!(var("CONSULLOCK_KEY"), Some(prefix.clone()));
    assert_eq!(var("CONSULLOCK_LIMIT").as_deref(), Some("2"));
    assert_eq!(
        var("CONSULLOCK_CONTENDER_KEY"),
        Some(format!("{prefix}/{session}"))
    );
    assert!(var("CONSULLOCK_LOCK_INDEX").is_some_and(|i| i.parse::<u64>().is_ok()));
    assert_eq!(var("CONSULLOCK_FENCING_TOKEN"), None);
    assert_eq!(var("CONSUL_LOCK_HELD").as_deref(), Some("true"));
    assert!(!consul.session_exists(&session));
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
}

/// A consullock slot holder that exits deletes its contender key, leaves `.lock`'s Holders and
/// destroys its session; `.lock` stays while Go holders remain, and goes with the last holder.
#[test]
fn slot_holders_leave_nothing_behind() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("sem-tidy");
    let settings = ["-n", "3"];
    let session_of = |holder: &Running| {
        consul
            .consullock_session_of(&prefix, holder.pid())
            .expect("the holder's session")
    };
    let holders = |sessions: &[&str]| -> Option<BTreeSet<String>> {
        Some(sessions.iter().map(|s| s.to_string()).collect())
    };
    let gone = |session: &str| {
        assert!(!consul.session_exists(session), "session {session} left");
        let key = format!("{prefix}/{session}");
        assert_eq!(consul.key_entry(&key), None, "{key} left");
    };

    let mut a = hold_until_stdin_closes(&consul, &prefix, &settings);
    let g = take(
        &mut GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 3, "g")),
        "g",
    );
    let mut b = hold_until_stdin_closes(&consul, &prefix, &settings);
    let (sa, sb) = (session_of(&a), session_of(&b));
    let sg = g.session().to_string();
    assert_eq!(consul.semaphore_holders(&prefix), holders(&[&sa, &sb, &sg]));

    assert_eq!(a.wait(EXIT), 0, "a: {}", a.stderr());
    gone(&sa);
    assert_eq!(consul.semaphore_holders(&prefix), holders(&[&sb, &sg]));
    assert_eq!(b.wait(EXIT), 0, "b: {}", b.stderr());
    gone(&sb);
    assert_eq!(
        consul.semaphore_holders(&prefix),
        holders(&[&sg]),
        "`.lock` must stay while a Go holder remains"
    );

    // The Go holder leaves first now: the last holder, consullock's, deletes `.lock`.
    let mut c = hold_until_stdin_closes(&consul, &prefix, &settings);
    let sc = session_of(&c);
    let released = g.release(DEADLINE).expect("g's release");
    assert_eq!(released.cleanup, Err(GoError::SemaphoreInUse));
    assert_eq!(consul.semaphore_holders(&prefix), holders(&[&sc]));
    assert_eq!(c.wait(EXIT), 0, "c: {}", c.stderr());
    gone(&sc);
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
    assert_eq!(consul.consullock_sessions(&prefix), Vec::<Value>::new());
}

// ---- 7. Stop on loss ---------------------------------------------------------------------

/// A consullock slot holder, with a Go holder beside it; `take_away` takes the consullock slot
/// away (given the prefix and its session): its command is stopped and it exits 101, the Go
/// holder keeps its slot, and the stopped holder's session and key are gone.
fn slot_loss_stops_the_command(name: &str, take_away: impl FnOnce(&TestConsul, &str, &str)) {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key(name);
    let go = take(
        &mut GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, "g")),
        "g",
    );
    let mut settings = vec!["-n", "2"];
    settings.extend(SHORT);
    let mut holder = hold_until_stdin_closes(&consul, &prefix, &settings);
    let session = consul
        .consullock_session_of(&prefix, holder.pid())
        .expect("the holder's session");
    take_away(&consul, &prefix, &session);
    // The command is stopped (it exits on TERM) before the test closes its stdin, which would
    // end it too.
    holder.wait_line("TERM");
    let code = holder.wait(EXIT);
    assert_eq!(code, 101, "stderr {}", holder.stderr());
    assert!(holder.stderr().contains("lost"), "{}", holder.stderr());
    assert!(!consul.session_exists(&session));
    assert_eq!(consul.key_entry(&format!("{prefix}/{session}")), None);
    // Out of `.lock` too: a dead entry left there would pin the limit for good.
    let holders = consul
        .semaphore_holders(&prefix)
        .expect("the Go holder's .lock");
    assert!(
        !holders.contains(&session),
        "the lost slot stays: {holders:?}"
    );
    assert!(!go.is_lost(), "the Go holder lost its slot too");
    let released = go.release(DEADLINE).expect("release");
    assert_eq!((released.unlock, released.cleanup), (Ok(()), Ok(())));
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
}

#[test]
fn a_slot_removed_from_holders_stops_the_command() {
    slot_loss_stops_the_command("sem-loss-entry", |consul, prefix, session| {
        let coordination = format!("{prefix}/.lock");
        let entry = consul.key_entry(&coordination).expect(".lock");
        let text = crate::support::consul::value_text(&entry).expect(".lock's value");
        let mut value: Value = serde_json::from_str(&text).unwrap();
        let holders = value["Holders"].as_object_mut().unwrap();
        assert!(holders.remove(session).is_some(), "not a holder: {text}");
        assert_eq!(holders.len(), 1, "the Go holder stays");
        let path = format!(
            "/v1/kv/{coordination}?cas={}&flags={SEMAPHORE_FLAG_VALUE}",
            entry["ModifyIndex"]
        );
        assert_eq!(
            consul.put(&path, value.to_string().as_bytes()).text(),
            "true"
        );
    });
}

#[test]
fn a_deleted_contender_key_stops_the_command() {
    slot_loss_stops_the_command("sem-loss-key", |consul, prefix, session| {
        let response = consul.delete(&format!("/v1/kv/{prefix}/{session}"));
        assert_eq!(response.text(), "true");
    });
}

#[test]
fn a_destroyed_slot_session_stops_the_command() {
    slot_loss_stops_the_command("sem-loss-session", |consul, _, session| {
        consul.destroy_session(session);
    });
}

// ---- 8. unlock ---------------------------------------------------------------------------

/// `unlock PREFIX` frees consullock's own slots (their holders stop, 101) and leaves Go's;
/// with only Go's left it prints `null` and exits 9; `--force` frees them too.
#[test]
fn unlock_frees_own_slots_and_leaves_go_holders_unless_forced() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("sem-unlock");
    let mut settings = vec!["-n", "3"];
    settings.extend(SHORT);
    let go = take(
        &mut GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 3, "g")),
        "g",
    );
    let mut a = hold_until_stdin_closes(&consul, &prefix, &settings);
    let mut b = hold_until_stdin_closes(&consul, &prefix, &settings);

    let output = consullock(&consul, &["unlock", &prefix]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), format!("{prefix:?}"));
    for (who, holder) in [("a", &mut a), ("b", &mut b)] {
        holder.wait_line("TERM");
        let code = holder.wait(EXIT);
        assert_eq!(code, 101, "{who}: {}", holder.stderr());
    }
    assert_eq!(consul.consullock_sessions(&prefix), Vec::<Value>::new());
    assert!(!go.is_lost(), "unlock took the Go holder's slot");
    assert_eq!(
        consul.semaphore_holders(&prefix),
        Some([go.session().to_string()].into())
    );

    // Only a Go holder left: nothing of ours to release.
    let output = consullock(&consul, &["unlock", &prefix]);
    assert_eq!(code(&output), 9, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "null");
    one_line(&stderr(&output));
    assert!(consul.session_exists(go.session()));
    assert!(!go.is_lost());

    let output = consullock(&consul, &["unlock", "--force", &prefix]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), format!("{prefix:?}"));
    assert!(go.wait_lost(DEADLINE), "--force left the Go holder");
    assert!(!consul.session_exists(go.session()));
    go.release(DEADLINE).expect("release");
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
}

/// `unlock -r` on a pattern over semaphores and `consul lock` locks releases each once, by its
/// prefix, without listing the contender keys; Go's semaphore slots are left alone.
#[test]
fn unlock_regex_handles_semaphores_and_consul_lock_layouts() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let base = consul.unique_key("sem-unlock-r");
    let (sem, cl, gl, gsem, own) = (
        format!("{base}/sem"),
        format!("{base}/cl"),
        format!("{base}/gl"),
        format!("{base}/gsem"),
        format!("{base}/own"),
    );
    // A semaphore with two consullock slots and a Go slot.
    let s1 = lock(&consul, &["-n", "3", &sem]);
    let s2 = lock(&consul, &["-n", "3", &sem]);
    let go_slot = take(
        &mut GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&sem, 3, "g")),
        "g",
    );
    // consullock's and Go's `consul lock` layout; a Go-only semaphore; an own-layout lock.
    let c = lock(&consul, &["--consul-lock", &cl]);
    let go_lock = take(
        &mut GoLock::spawn(&client, GoLockOptions::consul_lock(&gl, "l")),
        "l",
    );
    let go_only = take(
        &mut GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&gsem, 2, "g2")),
        "g2",
    );
    let o = lock(&consul, &[&own]);

    let output = consullock(&consul, &["unlock", "-r", &format!("{base}/.*")]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let released: Value = serde_json::from_str(stdout(&output).trim()).expect("a JSON list");
    assert_eq!(
        released,
        serde_json::json!([cl, gl, own, sem]),
        "released, by prefix, each once"
    );
    // The Go-only semaphore is reported as left alone.
    let errors = stderr(&output);
    let line = one_line(&errors);
    assert!(line.contains(&gsem), "{line}");

    for json in [&s1, &s2, &c, &o] {
        let session = json["session"].as_str().unwrap();
        assert!(!consul.session_exists(session), "{session} left");
    }
    assert!(
        go_lock.wait_lost(DEADLINE),
        "the consul lock holder kept its lock"
    );
    assert!(!go_slot.is_lost(), "the Go slot was taken");
    assert!(!go_only.is_lost(), "the Go-only semaphore was taken");
    assert_eq!(
        consul.semaphore_holders(&sem),
        Some([go_slot.session().to_string()].into())
    );
    for held in [go_slot, go_lock, go_only] {
        held.release(DEADLINE).expect("release");
    }
    assert_eq!(consul.keys_under(&base), Vec::<String>::new());
}

/// A key locked in consullock's layout and in `consul lock`'s at once (KEY and KEY/.lock):
/// `unlock -r` on a pattern matching both releases both.
#[test]
fn unlock_regex_releases_both_layouts_of_one_key() {
    let consul = TestConsul::start();
    let base = consul.unique_key("unlock-r-both");
    let key = format!("{base}/job");
    let own = lock(&consul, &[&key]);
    let consul_lock = lock(&consul, &["--consul-lock", &key]);

    let output = consullock(&consul, &["unlock", "-r", &format!("{base}/.*")]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), serde_json::json!([key]).to_string());
    for json in [&own, &consul_lock] {
        let session = json["session"].as_str().unwrap();
        assert!(
            !consul.session_exists(session),
            "the lock on {} is still held",
            json["key"]
        );
    }
    assert_eq!(consul.keys_under(&base), Vec::<String>::new());
}

// ---- 9. A full semaphore -----------------------------------------------------------------

/// Two `lock -n 2` fill the semaphore; a third, non-blocking, prints `null`, exits 100 and
/// writes nothing; one that waits and times out leaves nothing either.
#[test]
fn a_contender_that_finds_the_semaphore_full_writes_nothing() {
    let consul = TestConsul::start();
    let prefix = consul.unique_key("sem-full");
    let a = lock(&consul, &["-n", "2", &prefix]);
    let b = lock(&consul, &["-n", "2", &prefix]);
    for json in [&a, &b] {
        let session = json["session"].as_str().unwrap();
        assert_eq!(json["key"], prefix.as_str());
        assert_eq!(json["limit"], 2);
        assert_eq!(json["contenderKey"], format!("{prefix}/{session}"));
        assert_eq!(json.get("fencingToken"), None);
        let contender = consul.key_entry(&format!("{prefix}/{session}")).unwrap();
        assert_eq!(contender["Session"], session);
        assert_eq!(contender["Flags"], SEMAPHORE_FLAG_VALUE);
    }

    let before = snapshot(&consul, &prefix);
    let output = consullock(&consul, &["lock", "-n", "2", "--non-blocking", &prefix]);
    assert_eq!(code(&output), 100, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "null");
    one_line(&stderr(&output));
    assert_eq!(
        snapshot(&consul, &prefix),
        before,
        "the third contender wrote"
    );

    let output = consullock(&consul, &["lock", "-n", "2", "--timeout", "0.5", &prefix]);
    assert_eq!(code(&output), 5, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "null");
    let after = snapshot(&consul, &prefix);
    assert_eq!(
        (after.listing, after.sessions),
        (before.listing, before.sessions),
        "a contender that timed out left something"
    );

    let output = consullock(&consul, &["unlock", &prefix]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
    assert_eq!(consul.consullock_sessions(&prefix), Vec::<Value>::new());
}

/// Other programs elect leaders with Go's `api.Lock` too (Vault keeps `vault/core/lock` with
/// its flags and a value). Such a key is not `consul lock`'s lock (`PREFIX/.lock`, empty):
/// `unlock` and `unlock -r` leave its session alone unless forced, `status` calls it foreign,
/// and `--consul-lock` refuses a `.lock` that holds a value instead of overwriting it.
#[test]
fn another_programs_api_lock_keys_are_left_alone() {
    let consul = TestConsul::start();
    let base = consul.unique_key("api-lock-user");
    let leader = format!("{base}/core/lock");
    let other = format!("{base}/core/leader/node");
    let session = consul
        .put("/v1/session/create", b"{\"Name\":\"another program\"}")
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let acquire = |key: &str, flags: u64, value: &[u8]| {
        let path = format!("/v1/kv/{key}?acquire={session}&flags={flags}");
        assert_eq!(consul.put(&path, value).text(), "true");
    };
    acquire(&leader, LOCK_FLAG_VALUE, b"node-1:8200");
    acquire(&other, 0, b"other");

    let output = consullock(&consul, &["unlock", &leader]);
    assert_eq!(code(&output), 9, "{output:?}");
    assert_eq!(stdout(&output).trim(), "null");
    let output = consullock(&consul, &["unlock", "-r", &format!("{base}/.*")]);
    assert_eq!(code(&output), 0, "{output:?}");
    assert_eq!(stdout(&output).trim(), "[]");
    assert!(stderr(&output).contains(&leader), "{output:?}");
    assert!(
        consul.session_exists(&session),
        "the other program's session was destroyed"
    );
    assert_eq!(consul.holder(&other).as_deref(), Some(session.as_str()));

    let output = consullock(&consul, &["status", "--json", &leader]);
    assert_eq!(code(&output), 0, "{output:?}");
    let status: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(status["layout"], "foreign", "{status}");

    // A `.lock` with `api.Lock`'s flags and a value, held by nobody: someone's data.
    let prefix = format!("{base}/data");
    let dot_lock = format!("{prefix}/.lock");
    let path = format!("/v1/kv/{dot_lock}?flags={LOCK_FLAG_VALUE}");
    assert_eq!(consul.put(&path, b"precious").text(), "true");
    let before = consul.key_entry(&dot_lock);
    let output = consullock(
        &consul,
        &["execute", "--consul-lock", &prefix, "--", "true"],
    );
    assert_eq!(code(&output), 9, "{output:?}");
    assert_eq!(consul.key_entry(&dot_lock), before);

    let output = consullock(&consul, &["unlock", "--force", &leader]);
    assert_eq!(code(&output), 0, "{output:?}");
    assert!(!consul.session_exists(&session));
    consul.delete(&format!("/v1/kv/{base}?recurse"));
}

/// A prefix often holds data of its own: `unlock PREFIX` still finds `consul lock`'s lock and
/// the semaphore at `PREFIX/.lock`, releases them, and leaves the data alone.
#[test]
fn unlock_finds_the_dot_lock_of_a_prefix_that_holds_data() {
    let consul = TestConsul::start();
    for layout in [&["--consul-lock"][..], &["-n", "2"][..]] {
        let prefix = consul.unique_key("prefix-with-data");
        assert_eq!(
            consul.put(&format!("/v1/kv/{prefix}"), b"port=80").text(),
            "true"
        );
        let data = consul.key_entry(&prefix);
        let mut args = layout.to_vec();
        args.push(&prefix);
        lock(&consul, &args);

        let output = consullock(&consul, &["unlock", &prefix]);
        assert_eq!(code(&output), 0, "{layout:?}: {output:?}");
        assert_eq!(
            stdout(&output).trim(),
            format!("\"{prefix}\""),
            "{layout:?}"
        );
        assert_eq!(consul.consullock_sessions(&prefix), Vec::<Value>::new());
        assert_eq!(
            consul.key_entry(&prefix),
            data,
            "{layout:?}: the data changed"
        );
        let output = consullock(&consul, &["status", "--json", &prefix]);
        assert_eq!(stdout(&output).trim(), "null", "{layout:?}: {output:?}");
        consul.delete(&format!("/v1/kv/{prefix}?recurse"));
    }
}

/// A `.lock` whose holders are all dead fixes the semaphore's limit (another limit is a
/// conflict, as for Go): `unlock PREFIX` clears it, and another limit can then be used.
#[test]
fn unlock_clears_a_semaphore_whose_holders_are_all_dead() {
    let consul = TestConsul::start();
    let prefix = consul.unique_key("sem-all-dead");
    let dead = consul.put("/v1/session/create", b"{}").json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    consul.destroy_session(&dead);
    let value = serde_json::json!({"Limit": 2, "Holders": {dead.as_str(): true}});
    let path = format!("/v1/kv/{prefix}/.lock?flags={SEMAPHORE_FLAG_VALUE}");
    assert_eq!(
        consul.put(&path, value.to_string().as_bytes()).text(),
        "true"
    );
    let output = consullock(&consul, &["execute", "-n", "3", &prefix, "--", "true"]);
    assert_eq!(code(&output), 10, "{output:?}");

    let output = consullock(&consul, &["unlock", &prefix]);
    assert_eq!(code(&output), 0, "{output:?}");
    assert_eq!(consul.key_entry(&format!("{prefix}/.lock")), None);
    let output = consullock(&consul, &["execute", "-n", "3", &prefix, "--", "true"]);
    assert_eq!(code(&output), 0, "{output:?}");
    assert_eq!(consul.keys_under(&prefix), Vec::<String>::new());
}

/// `execute -n 2` with the given lock-delay (a 10 s TTL, a 1 s kill grace) running a stamped
/// heartbeat (with `heartbeat_flags`), started in the background, its stderr discarded.
fn spawn_slot_holder(
    consul: &TestConsul,
    lock_delay: &str,
    prefix: &str,
    log: &Path,
    run: u64,
    millis: u64,
    heartbeat_flags: &[&str],
) -> std::process::Child {
    let settings = [
        "-n",
        "2",
        "--session-ttl",
        "10",
        "--lock-delay",
        lock_delay,
        "--kill-grace",
        "1",
    ];
    let mut command = stamped(consul, &settings, prefix, log, run, millis);
    command.args(heartbeat_flags);
    command.stderr(std::process::Stdio::null());
    command.spawn().expect("spawn consullock")
}

/// A slot holder that cannot hear of its loss (its consullock stopped, as in a partition) while
/// its session is destroyed: consullock's waiter finds it dead in `.lock`, but Consul holds the
/// dead session's lock-delay on its contender key, so the waiter leaves the slot taken until
/// then, and the holder's keeper has stopped its command before (the slot's contact window keeps
/// the lock-delay after an invalidation). Without that, the waiter took the slot at once and
/// three commands ran under a limit of two.
#[test]
fn a_dead_holders_slot_stays_taken_for_its_lock_delay() {
    let consul = TestConsul::start();
    let prefix = consul.unique_key("sem-lock-delay");
    let scratch = Scratch::new("sem-lock-delay");
    let log = stamp_log(&scratch);
    let spawn =
        |run: u64, millis: u64| spawn_slot_holder(&consul, "5", &prefix, &log, run, millis, &[]);
    let mut partitioned = spawn(1, 60_000);
    let mut other = spawn(2, 60_000);
    wait_until(DEADLINE, "both slots taken", || runs(&log).len() == 2);
    let mut waiter = spawn(3, 100);
    std::thread::sleep(QUIET);
    assert_eq!(runs(&log).len(), 2, "the waiter got a third slot");

    let pid = nix::unistd::Pid::from_raw(partitioned.id() as i32);
    let session = consul
        .consullock_session_of(&prefix, pid.as_raw())
        .expect("the first holder's session");
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    consul.destroy_session(&session);
    let status = waiter.wait().expect("the waiter ends");
    assert_eq!(status.code(), Some(0));

    let runs = runs(&log);
    let (dead, third) = (&runs[&1], &runs[&3]);
    assert!(
        dead.last < third.first,
        "the waiter started {} ms before the dead holder's command stopped",
        (dead.last - third.first) / 1_000_000
    );
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = partitioned.wait();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other.id() as i32),
        Signal::SIGTERM,
    );
    let _ = other.wait();
    wait_until(DEADLINE, "nothing left", || {
        consul.keys_under(&prefix).is_empty()
    });
}

/// `unlock PREFIX` destroys the sessions of consullock's slot holders, but leaves them listed
/// in `.lock`: a waiting consullock contender leaves their slots taken for the lock-delay
/// Consul holds on their contender keys, so it starts only once their commands (which take a
/// while to stop) are gone. Taking them out of `.lock` let it in at once.
#[test]
fn unlock_of_a_semaphore_keeps_the_released_slots_for_their_lock_delay() {
    let consul = TestConsul::start();
    let prefix = consul.unique_key("sem-unlock-delay");
    let scratch = Scratch::new("sem-unlock-delay");
    let log = stamp_log(&scratch);
    let linger = ["--linger", "800"];
    let spawn = |run: u64, millis: u64| {
        spawn_slot_holder(&consul, "3", &prefix, &log, run, millis, &linger)
    };
    let mut holders = [spawn(1, 60_000), spawn(2, 60_000)];
    wait_until(DEADLINE, "both slots taken", || runs(&log).len() == 2);
    let mut waiter = spawn(3, 100);
    std::thread::sleep(QUIET);

    let output = consullock(&consul, &["unlock", &prefix]);
    assert_eq!(code(&output), 0, "{output:?}");
    for holder in &mut holders {
        assert_eq!(holder.wait().unwrap().code(), Some(101));
    }
    assert_eq!(waiter.wait().unwrap().code(), Some(0));
    let runs = runs(&log);
    let stopped = runs[&1].last.max(runs[&2].last);
    assert!(
        stopped < runs[&3].first,
        "the waiter started {} ms before the released holders stopped",
        (stopped - runs[&3].first) / 1_000_000
    );
    wait_until(DEADLINE, "nothing left", || {
        consul.keys_under(&prefix).is_empty()
    });
}

/// A full semaphore whose only way in is a dead holder's slot under a lock-delay: a
/// non-blocking contender is refused (exit 100) and writes nothing, with or without
/// transactions on the server (without, the lock-delay is asked with `?acquire`).
#[test]
fn a_slot_under_a_lock_delay_refuses_a_non_blocking_contender() {
    for no_txn in [false, true] {
        let consul = TestConsul::start_dev_server(&["--test-faults"]);
        consul.faults(serde_json::json!({ "no_txn": no_txn }));
        let prefix = consul.unique_key("sem-delayed-slot");
        let session = |lock_delay: &str| {
            let body = format!("{{\"LockDelay\":\"{lock_delay}\"}}");
            consul.put("/v1/session/create", body.as_bytes()).json()["ID"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (dead, live) = (session("15s"), session("15s"));
        for holder in [&dead, &live] {
            let path =
                format!("/v1/kv/{prefix}/{holder}?acquire={holder}&flags={SEMAPHORE_FLAG_VALUE}");
            assert_eq!(consul.put(&path, b"").text(), "true");
        }
        let value =
            serde_json::json!({"Limit": 2, "Holders": {dead.as_str(): true, live.as_str(): true}});
        let path = format!("/v1/kv/{prefix}/.lock?flags={SEMAPHORE_FLAG_VALUE}");
        assert_eq!(
            consul.put(&path, value.to_string().as_bytes()).text(),
            "true"
        );
        consul.destroy_session(&dead);

        let before = snapshot(&consul, &prefix);
        let output = consullock(&consul, &["lock", "-n", "2", "--non-blocking", &prefix]);
        assert_eq!(code(&output), 100, "no_txn {no_txn}: {output:?}");
        assert_eq!(stdout(&output).trim(), "null");
        let after = snapshot(&consul, &prefix);
        assert_eq!(
            (&after.listing, &after.sessions),
            (&before.listing, &before.sessions)
        );
    }
}

/// Someone's data under the semaphore's flags (no `Limit` in it) is no semaphore: `lock -n`
/// refuses it (exit 9) and `unlock` leaves it. Someone's leader key on KEY whose session also
/// holds KEY/.lock: `unlock KEY` leaves both alone. Many dead holders are asked about in
/// transactions Consul accepts (at most 64 operations each).
#[test]
fn semaphore_edges_that_are_not_ours_or_are_large() {
    let consul = TestConsul::start();
    let base = consul.unique_key("sem-edges");

    let data = format!("{base}/cfg");
    let path = format!("/v1/kv/{data}/.lock?flags={SEMAPHORE_FLAG_VALUE}");
    assert_eq!(consul.put(&path, br#"{"owner":"team-x"}"#).text(), "true");
    let before = consul.key_entry(&format!("{data}/.lock"));
    let output = consullock(&consul, &["lock", "-n", "2", "--non-blocking", &data]);
    assert_eq!(code(&output), 9, "{output:?}");
    let output = consullock(&consul, &["unlock", &data]);
    assert_ne!(code(&output), 0, "{output:?}");
    assert_eq!(consul.key_entry(&format!("{data}/.lock")), before);

    let leader = format!("{base}/leader");
    let session = consul.put("/v1/session/create", b"{}").json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let acquire = |key: &str, flags: u64| {
        let path = format!("/v1/kv/{key}?acquire={session}&flags={flags}");
        assert_eq!(consul.put(&path, b"").text(), "true");
    };
    assert_eq!(
        consul
            .put(&format!("/v1/kv/{leader}?acquire={session}"), b"node-7")
            .text(),
        "true"
    );
    acquire(&format!("{leader}/.lock"), LOCK_FLAG_VALUE);
    let output = consullock(&consul, &["unlock", &leader]);
    assert_eq!(code(&output), 9, "{output:?}");
    assert!(
        consul.session_exists(&session),
        "the other program's session was destroyed"
    );

    let crowd = format!("{base}/crowd");
    let dead: serde_json::Map<String, Value> = (0..129)
        .map(|_| (uuid::Uuid::new_v4().to_string(), Value::Bool(true)))
        .collect();
    let value = serde_json::json!({"Limit": 130, "Holders": dead});
    let path = format!("/v1/kv/{crowd}/.lock?flags={SEMAPHORE_FLAG_VALUE}");
    assert_eq!(
        consul.put(&path, value.to_string().as_bytes()).text(),
        "true"
    );
    let output = consullock(&consul, &["lock", "-n", "130", "--non-blocking", &crowd]);
    assert_eq!(code(&output), 0, "{output:?}");
    let output = consullock(&consul, &["unlock", &crowd]);
    assert_eq!(code(&output), 0, "{output:?}");
    consul.delete(&format!("/v1/kv/{base}?recurse"));
}
