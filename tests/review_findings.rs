//! Findings of the adversarial review of the issue-10 safety change. Each test is a way the
//! world breaks the promise ("the command never runs without the lock, and consullock touches
//! nothing but its locks") or leaves a lock or session behind; each fails against the build it
//! was written against (`CONSULLOCK_TEST_BIN` points the client at another build).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::fake::FakeServer;
use crate::support::process::{
    EXIT, HANDSHAKE, Running, Scratch, children_of, code, process_running, run,
};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{TestConsul, wait_until};

const SESSION: &str = "4d3c2b1a-0000-4000-8000-000000000001";

fn json_answer(body: &str, index: u64) -> Vec<u8> {
    FakeServer::http(
        "200 OK",
        &[
            "Content-Type: application/json",
            &format!("X-Consul-Index: {index}"),
        ],
        body.as_bytes(),
    )
}

fn held_entry(key: &str) -> String {
    use base64::Engine;
    let value =
        base64::engine::general_purpose::STANDARD.encode(crate::support::lock_value(key, SESSION));
    format!(
        r#"[{{"LockIndex":1,"Key":"{key}","Flags":0,"Value":"{value}","Session":"{SESSION}","CreateIndex":7,"ModifyIndex":7}}]"#
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A renew that answers 200 with the session but without its `TTL` field (a Consul-compatible
/// server or proxy that leaves it out, or a value that does not parse) must not make the contact
/// window unbounded. Today `Shared::renewed` takes the missing TTL as "no TTL": with
/// `--ttl-only`, nothing bounds the window any more, the kill switch never fires, and when
/// Consul then goes silent the command runs on for ever while the session expires on the server.
#[test]
fn a_renew_answer_without_ttl_does_not_disable_the_contact_window() {
    let key = "review/renew-without-ttl";
    let renewed = Arc::new(AtomicBool::new(false));
    let flag = renewed.clone();
    let server = FakeServer::routed(move |line| {
        let silent = flag.load(Ordering::SeqCst);
        if line.starts_with("PUT /v1/session/create") {
            json_answer(&format!(r#"{{"ID":"{SESSION}"}}"#), 5)
        } else if line.starts_with("PUT /v1/session/renew/") {
            if silent {
                std::thread::sleep(Duration::from_secs(60));
                return Vec::new();
            }
            flag.store(true, Ordering::SeqCst);
            // The session, its lock-delay, but no TTL.
            json_answer(
                &format!(r#"[{{"ID":"{SESSION}","LockDelay":5000000000,"Behavior":"delete"}}]"#),
                8,
            )
        } else if line.starts_with("PUT /v1/txn") {
            // No transactions here: the client falls back to the single-key endpoints.
            FakeServer::http("404 Not Found", &[], b"")
        } else if silent {
            // Consul goes silent right after that renewal.
            std::thread::sleep(Duration::from_secs(60));
            Vec::new()
        } else if line.starts_with(&format!("GET /v1/kv/{key} ")) {
            FakeServer::http("404 Not Found", &["X-Consul-Index: 5"], b"")
        } else if line.starts_with("GET /v1/kv/") {
            json_answer(&held_entry(key), 7)
        } else {
            json_answer("true", 7)
        }
    });
    let consul = TestConsul::external(&server.addr(), None);
    let mut command = consul.command();
    // TTL-only, TTL 10 s, lock-delay 5 s, grace 1 s: the lock counts as lost 13 s after the
    // last renewal (about 5 s after the start); the command must be dead by 18 s + grace.
    command.args([
        "-v",
        "execute",
        "--ttl-only",
        "--session-ttl",
        "10",
        "--lock-delay",
        "5",
        "--kill-grace",
        "1",
        key,
        "--",
        "sleep",
        "60",
    ]);
    let started = Instant::now();
    let mut running = Running::start(command, false);
    let mut exit = None;
    wait_until(
        Duration::from_secs(45),
        "consullock to stop its command",
        || {
            exit = running.try_code();
            exit.is_some() || started.elapsed() > Duration::from_secs(30)
        },
    );
    let took = started.elapsed();
    assert!(
        exit.is_some() && took < Duration::from_secs(25),
        "the command still ran {took:?} after the start although no renewal succeeded after \
         the first (exit {exit:?}); stderr: {}",
        running.stderr()
    );
    assert_eq!(exit, Some(101), "{}", running.stderr());
}

/// `--ttl-only` with a lock-delay well above the kill grace gets no warning, and the README's
/// timeline says only the renew clock applies "because no node check can invalidate the
/// session". But an operator's `consullock unlock` (or a node deregistration) destroys the
/// session at any moment too: while consullock is cut off from Consul, the next holder gets
/// the lock one lock-delay after the unlock, and consullock only stops its command TTL +
/// lock-delay - grace - 1 s after its last renewal.
#[test]
fn ttl_only_an_unlock_during_a_partition_does_not_let_two_run() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());
    let key = consul.unique_key("ttl-only-unlock");
    let scratch = Scratch::new("ttl-only-unlock");
    let pid_file = scratch.path("pid");
    let verdict = scratch.path("verdict");
    let mut a = consul.command();
    a.env("CONSUL_HTTP_ADDR", format!("http://{}", proxy.addr()))
        .args([
            "execute",
            "--ttl-only",
            "--session-ttl",
            "10",
            "--lock-delay",
            "6",
            "--kill-grace",
            "1",
            &key,
            "--",
            "sh",
            "-c",
            r#"echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 60"#,
            "sh",
            pid_file.to_str().unwrap(),
        ]);
    let mut a = Running::start(a, false);
    wait_until(HANDSHAKE, "A's command to start", || {
        a.assert_running("before A's command started");
        !scratch.read("pid").is_empty()
    });
    let a_pid: i32 = scratch.read("pid").trim().parse().unwrap();
    proxy.set_mode(Mode::Blackhole);
    let unlocked = run({
        let mut command = consul.command();
        command.args(["unlock", &key]);
        command
    });
    assert_eq!(code(&unlocked), 0, "{unlocked:?}");
    // B gets the lock one lock-delay (6 s) after the unlock; its command looks for A's.
    let b = run({
        let mut command = consul.command();
        command.args([
            "execute",
            "--timeout",
            "30",
            &key,
            "--",
            "sh",
            "-c",
            // Running, or a zombie (killed, not yet reaped by the stopped consullock)?
            r#"s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null); if [ -n "$s" ] && [ "$s" != Z ]; then echo "OVERLAP $s" > "$2"; else echo CLEAN > "$2"; fi"#,
            "sh",
            &a_pid.to_string(),
            verdict.to_str().unwrap(),
        ]);
        command
    });
    assert_eq!(code(&b), 0, "{b:?}");
    proxy.set_mode(Mode::Pass);
    let _ = a.wait(EXIT);
    assert_eq!(
        scratch.read("verdict").trim(),
        "CLEAN",
        "B's command ran while A's still ran; A's stderr: {}",
        a.stderr()
    );
}

/// Acquire reads the key, then `PUT ?acquire` without any check that the key is still as read:
/// data written into the key in between is overwritten by the lock, then deleted by the
/// release. A Consul that is slow to answer (here: the read's answer is late, the read itself
/// done at once) widens the window; a transaction (check-index or check-not-exists + lock) would
/// close it.
#[test]
fn data_written_between_the_read_and_the_acquire_is_not_destroyed() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("toctou");
    consul.faults(
        serde_json::json!({"answer_delay_ms": 1500, "path_prefix": format!("/v1/kv/{key}")}),
    );
    let mut command = consul.command();
    command.args(["execute", &key, "--", "true"]);
    let mut running = Running::start(command, false);
    wait_until(HANDSHAKE, "consullock's read of the key", || {
        running.assert_running("before its read");
        consul.get("/_devserver/faults").json()["injected"]["delayed"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    // Another program writes its data now (carried out at once; its own answer is late too).
    let put = consul.request_timeout(
        "PUT",
        &format!("/v1/kv/{key}"),
        b"precious=data",
        Duration::from_secs(10),
    );
    assert_eq!(put.text(), "true");
    let _ = running.wait(EXIT);
    consul.clear_faults();
    let value = consul.get(&format!("/v1/kv/{key}?raw"));
    assert_eq!(
        (value.status, value.text()),
        (200, "precious=data".to_string()),
        "the other program's data was destroyed; consullock's stderr: {}",
        running.stderr()
    );
}

/// `pkill -9 consullock`, `pkill -9 -f consullock` and `killall -9 consullock` must not take
/// the keeper with consullock: it was a fork of consullock with its name and command line, and
/// killed together they left the command's grandchildren running without the lock (6 times out
/// of 6 by hand). Here the kill by name is done as those tools do it, on this test's processes
/// only: every process whose name or command line matches consullock's own is sent SIGKILL.
/// (Killing both by pid is not something a keeper can survive; `--contain` covers that.)
#[test]
fn a_kill_by_name_takes_consullock_but_not_its_keeper() {
    let consul = TestConsul::start();
    let key = consul.unique_key("kill-by-name");
    let mut command = consul.command();
    command.args(["execute", &key, "sleep 300; echo never"]);
    let mut running = Running::start(command, false);
    let consullock = running.pid();
    let mut found = None;
    wait_until(HANDSHAKE, "the command and the keeper", || {
        running.assert_running("before its command started");
        let children = children_of(consullock);
        let shell = children.iter().map(|(pid, _)| *pid).find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"/bin/sh"))
        });
        let keeper = children
            .iter()
            .map(|(pid, _)| *pid)
            .find(|pid| Some(*pid) != shell);
        if let (Some(shell), Some(keeper)) = (shell, keeper)
            && let Some((sleeper, _)) = children_of(shell).first()
        {
            found = Some((keeper, *sleeper));
        }
        found.is_some()
    });
    let (keeper, sleeper) = found.unwrap();
    let name = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let command_line = |pid: i32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ")
    };
    // What pkill and killall match on: the name, and with -f the whole command line (here the
    // test's unique key stands for "consullock", which other tests' processes also carry).
    let matches =
        |pid: i32| name(pid).trim() == name(consullock).trim() || command_line(pid).contains(&key);
    assert!(matches(consullock));
    assert!(
        !matches(keeper),
        "the keeper is named {:?} with command line {:?}",
        name(keeper),
        command_line(keeper)
    );
    assert!(
        command_line(keeper).contains(&format!("for pid {consullock}")),
        "{:?}",
        command_line(keeper)
    );
    for pid in [keeper, consullock] {
        if matches(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // (Not `running.wait`: a surviving grandchild holds consullock's stdout and stderr.)
    wait_until(EXIT, "consullock to die", || running.try_code().is_some());
    let deadline = Instant::now() + Duration::from_secs(3);
    while process_running(sleeper) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = process_running(sleeper);
    if survived {
        let _ = kill(Pid::from_raw(sleeper), Signal::SIGKILL);
    }
    assert!(
        !survived,
        "the command's `sleep 300` outlived a kill of consullock by name"
    );
}

/// The acquire request is carried out by Consul but its answer is lost (request timeout). The
/// next attempt reads the key, finds it held by a session, and waits for it to change: the
/// session is our own, renewed while we wait, so the wait never ends (and `lock`, whose session
/// is not renewed, waits for its own 24 h TTL).
#[test]
fn a_lost_acquire_answer_does_not_make_us_wait_for_our_own_lock() {
    let key = "review/lost-acquire-answer";
    let acquired = Arc::new(AtomicBool::new(false));
    let flag = acquired.clone();
    let server = FakeServer::routed(move |line| {
        let taken = flag.load(Ordering::SeqCst);
        if line.starts_with("PUT /v1/session/create") {
            json_answer(&format!(r#"{{"ID":"{SESSION}"}}"#), 5)
        } else if line.starts_with("PUT /v1/session/renew/") {
            json_answer(
                &format!(
                    r#"[{{"ID":"{SESSION}","TTL":"15s","LockDelay":15000000000,"Behavior":"delete"}}]"#
                ),
                8,
            )
        } else if line.starts_with("PUT /v1/txn")
            || line.starts_with(&format!("PUT /v1/kv/{key}?acquire="))
        {
            // Carried out (as a transaction or as `?acquire`); the answer never comes in time.
            flag.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(12));
            json_answer("true", 7)
        } else if line.starts_with("GET /v1/kv/") {
            if !taken {
                return FakeServer::http("404 Not Found", &["X-Consul-Index: 5"], b"");
            }
            if line.contains("index=") {
                std::thread::sleep(Duration::from_millis(500));
            }
            json_answer(&held_entry(key), 7)
        } else {
            json_answer("true", 7)
        }
    });
    let scratch = Scratch::new("lost-acquire");
    let ran = scratch.path("ran");
    let consul = TestConsul::external(&server.addr(), None);
    let output = run({
        let mut command = consul.command();
        command.args([
            "execute",
            "--timeout",
            "25",
            key,
            "--",
            "touch",
            ran.to_str().unwrap(),
        ]);
        command
    });
    assert!(
        ran.exists(),
        "the lock (held by our own session) was waited for until the timeout: exit {}, {}",
        code(&output),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// systemd stops a service with SIGTERM to every process of it, then (SendSIGHUP=yes) SIGHUP:
/// consullock and its command get both at once. The command ends at once; consullock must
/// still release its lock. Today a stop request still queued when supervision ends (the HUP,
/// or the TERM itself) is taken for "a second stop signal during the release": the release is
/// skipped and the lock stays held (here, with `--session-ttl 0`, for ever).
#[test]
fn stop_signals_received_with_the_commands_end_do_not_skip_the_release() {
    let consul = TestConsul::start();
    let scratch = Scratch::new("term-hup");
    let mut left = Vec::new();
    for round in 0..5 {
        let key = consul.unique_key(&format!("term-hup-{round}"));
        let pid_file = scratch.path(&format!("pid{round}"));
        let mut command = consul.command();
        command.args([
            "execute",
            "--session-ttl",
            "0",
            &key,
            "--",
            "sh",
            "-c",
            r#"echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 300"#,
            "sh",
            pid_file.to_str().unwrap(),
        ]);
        let mut running = Running::start(command, false);
        wait_until(HANDSHAKE, "the command to start", || {
            running.assert_running("before the command started");
            !scratch.read(&format!("pid{round}")).is_empty()
        });
        let child: i32 = scratch.read(&format!("pid{round}")).trim().parse().unwrap();
        for signal in [Signal::SIGTERM, Signal::SIGHUP] {
            for pid in [running.pid(), child] {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
        let exit = running.wait(EXIT);
        if consul.holder(&key).is_some() {
            left.push(format!("{key} (exit {exit}): {}", running.stderr().trim()));
            let _ = run({
                let mut command = consul.command();
                command.args(["unlock", &key]);
                command
            });
        }
    }
    assert!(left.is_empty(), "locks left held: {left:#?}");
}

/// A session-create request whose answer comes after the 1 s that an abandoned attempt waits
/// is never destroyed: with `--session-ttl 0` the session lives for ever, with `lock`'s
/// default TTL for a day or two.
#[test]
fn a_slow_session_create_abandoned_by_a_timeout_leaves_no_session() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("slow-create");
    consul
        .faults(serde_json::json!({"answer_delay_ms": 3000, "path_prefix": "/v1/session/create"}));
    let output = run({
        let mut command = consul.command();
        command.args([
            "execute",
            "--session-ttl",
            "0",
            "--timeout",
            "0.5",
            &key,
            "true",
        ]);
        command
    });
    assert_eq!(code(&output), 5, "{output:?}");
    consul.clear_faults();
    std::thread::sleep(Duration::from_secs(4));
    let left = consul.sessions_of(&key);
    assert!(left.is_empty(), "sessions left behind: {left:?}");
}

/// `--contain`'s init is PID 1 of a new PID namespace but reads the host's /proc (no mount
/// namespace, no procfs of its own): it takes every host process for a leftover of the command
/// and waits for the kill grace plus 2 s after every command, sending TERM and KILL to host
/// pid numbers interpreted in its own namespace. `execute --contain KEY true` takes 7 s with
/// the default grace.
#[test]
fn contain_does_not_wait_for_the_hosts_processes() {
    if !is_root() {
        crate::support::skip(
            "contain_does_not_wait_for_the_hosts_processes",
            "needs CAP_SYS_ADMIN",
        );
        return;
    }
    let consul = TestConsul::start();
    let key = consul.unique_key("contain-fast");
    let started = Instant::now();
    let output = run({
        let mut command = consul.command();
        command.args(["execute", "--contain", "--kill-grace", "2", &key, "true"]);
        command
    });
    let took = started.elapsed();
    assert_eq!(code(&output), 0, "{output:?}");
    assert!(
        took < Duration::from_millis(1500),
        "`execute --contain KEY true` took {took:?}"
    );
}

/// With `--subreaper` the lock must be released only once every descendant is gone. A
/// descendant that leaves the group and keeps moving to a new pid (fork, parent exits, a few
/// ms per generation) is missed by the /proc scan (a directory listing that is stale by the
/// time each entry is read), so the lock is released, without a word, while it runs on (by
/// hand: for ten minutes, until stopped). As a subreaper every orphan becomes our child:
/// looping on our own children (`/proc/self/task/*/children`), or freezing before killing,
/// would see it. (The hopper is a few lines of Python; skipped without python3.)
#[test]
fn subreaper_a_descendant_that_keeps_changing_pid_is_stopped_before_the_release() {
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status();
    if !python.is_ok_and(|s| s.success()) {
        crate::support::skip(
            "subreaper_a_descendant_that_keeps_changing_pid_is_stopped_before_the_release",
            "no python3",
        );
        return;
    }
    let consul = TestConsul::start();
    let key = consul.unique_key("pid-hopper");
    let scratch = Scratch::new("pid-hopper");
    let stamp = scratch.path("stamp");
    let stop = scratch.path("stop");
    let hopper = scratch.path("hopper.py");
    std::fs::write(
        &hopper,
        "import os, sys, time\n\
         stamp, stop = sys.argv[1], sys.argv[2]\n\
         os.setsid()\n\
         open(stamp + '.group', 'w').write(str(os.getpgrp()))\n\
         while not os.path.exists(stop):\n    \
         if os.fork() != 0:\n        os._exit(0)\n    \
         with open(stamp, 'a') as f: f.write('x')\n    \
         time.sleep(0.003)\n",
    )
    .unwrap();
    let script = format!(
        "python3 '{}' '{}' '{}' >/dev/null 2>&1 & sleep 0.5",
        hopper.display(),
        stamp.display(),
        stop.display()
    );
    // Whatever happens below, the hopper must not outlive the test: it keeps its process group
    // (the one it made with setsid), which one kill reaches however fast it forks.
    struct KillGroup(std::path::PathBuf);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            if let Some(group) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|g| g.trim().parse::<i32>().ok())
                .filter(|g| *g > 1)
            {
                // Only if that group is still the hopper's (a group id can be reused).
                let hopper_left = std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| {
                        let pid = e.file_name();
                        let stat =
                            std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                        let in_group = stat
                            .rsplit_once(") ")
                            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                            .is_some_and(|pgrp| pgrp == group.to_string());
                        in_group
                            && std::fs::read(format!("/proc/{}/cmdline", pid.to_string_lossy()))
                                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("hopper.py"))
                    });
                if hopper_left {
                    let _ = kill(Pid::from_raw(-group), Signal::SIGKILL);
                }
            }
        }
    }
    let _hopper_group = KillGroup(scratch.path("stamp.group"));
    let output = run({
        let mut command = consul.command();
        command.args(["execute", "--subreaper", "--kill-grace", "1", &key, &script]);
        command
    });
    let before = std::fs::metadata(&stamp).map(|m| m.len()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let after = std::fs::metadata(&stamp).map(|m| m.len()).unwrap_or(0);
    std::fs::write(&stop, b"").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        before,
        after,
        "a descendant still ran after consullock released the lock and exited {}: {}",
        code(&output),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Settings that `contact_window` accepts must keep a lock on a healthy Consul. With
/// `--session-ttl 10 --lock-delay 0 --kill-grace 3` the lock counts as lost 6 s after a
/// renewal, renewals go out every 5 s, and the check only asks that TTL/2 + a 1 s retry fit:
/// a renewal that takes 1.5 s (well under its own 3.3 s timeout) already ends in a false
/// "lock lost" (exit 101) after 6 s. The check (or the renew schedule) ignores the renew
/// request's own duration and timeout.
#[test]
fn accepted_settings_survive_a_slow_but_healthy_renewal() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("slow-renew");
    consul.faults(serde_json::json!({"delay_ms": 1500, "path_prefix": "/v1/session/renew/"}));
    let output = run({
        let mut command = consul.command();
        command.args([
            "execute",
            "--session-ttl",
            "10",
            "--lock-delay",
            "0",
            "--kill-grace",
            "3",
            &key,
            "--",
            "sleep",
            "9",
        ]);
        command
    });
    consul.clear_faults();
    assert_eq!(
        code(&output),
        0,
        "a renewal 1.5 s slow lost the lock: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// When the contact window has already run out by the time the lock is acquired (renewals
/// failed while waiting), the command is not started (right), but consullock says "the
/// command was stopped", which did not happen: it never ran (`Outcome::LockLost { child: None
/// }` is reported like a stop in `cli/execute.rs`).
#[test]
fn a_command_that_never_started_is_not_reported_as_stopped() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("never-started");
    let scratch = Scratch::new("never-started");
    let ran = scratch.path("ran");
    let held = run({
        let mut command = consul.command();
        command.args(["lock", &key]);
        command
    });
    assert_eq!(code(&held), 0, "{held:?}");
    let mut command = consul.command();
    command.args([
        "execute",
        "--session-ttl",
        "10",
        "--lock-delay",
        "5",
        "--kill-grace",
        "1",
        &key,
        "--",
        "touch",
        ran.to_str().unwrap(),
    ]);
    let mut running = Running::start(command, false);
    wait_until(HANDSHAKE, "the waiter's session", || {
        running.assert_running("before its session existed");
        consul.sessions_of(&key).len() == 2
    });
    consul.faults(serde_json::json!({"no_leader_ms": 60_000, "path_prefix": "/v1/session/renew/"}));
    // The renew bound is 13 s after the creation; free the lock after it.
    std::thread::sleep(Duration::from_secs(15));
    let unlocked = run({
        let mut command = consul.command();
        command.args(["unlock", &key]);
        command
    });
    assert_eq!(code(&unlocked), 0, "{unlocked:?}");
    let exit = running.wait(EXIT);
    consul.clear_faults();
    let stderr = running.stderr();
    assert!(!ran.exists(), "the command ran: {stderr}");
    assert_eq!(exit, 101, "{stderr}");
    assert!(
        !stderr.contains("the command was stopped"),
        "claims a stop of a command that never ran: {stderr}"
    );
}

/// `unlock` decides from the key's value alone that a held key is a consullock lock, then
/// destroys the session that holds it, and with it every other key that session holds. A
/// consullock lock's value always names its holder: a value that names another session than
/// the key's holder is not one of our locks, and its session (here another program's, which
/// also holds that program's leader key) must be left alone.
#[test]
fn unlock_leaves_alone_a_session_that_is_not_the_one_its_lock_value_names() {
    let consul = TestConsul::start();
    let base = consul.unique_key("foreign-session");
    let session = consul
        .put(
            "/v1/session/create",
            br#"{"Name":"other-program","TTL":"60s"}"#,
        )
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let leader = format!("{base}/leader");
    let lookalike = format!("{base}/lookalike");
    let put = |key: &str, value: &str| {
        consul
            .put(&format!("/v1/kv/{key}?acquire={session}"), value.as_bytes())
            .text()
    };
    assert_eq!(put(&leader, "leader=me"), "true");
    let value = crate::support::lock_value(&lookalike, "6ad662de-6e0c-8e0f-d92c-5fface60c49b");
    assert_eq!(put(&lookalike, &value), "true");
    let output = run({
        let mut command = consul.command();
        command.args(["unlock", "-r", &format!("{base}/.*")]);
        command
    });
    assert_eq!(
        consul.holder(&leader).as_deref(),
        Some(session.as_str()),
        "{output:?}"
    );
    consul.destroy_session(&session);
    consul.delete(&format!("/v1/kv/{base}?recurse"));
}

/// "its session ends by itself by T at the latest" counts from the last renewal whose *answer*
/// arrived; a renewal that Consul carried out but whose answer was late (a timeout here)
/// pushed the session's end further. At T + 1 s the lock is still held.
#[test]
fn the_not_released_line_does_not_understate_when_the_lock_ends() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let proxy = Proxy::start(&consul.addr());
    let key = consul.unique_key("expiry-line");
    let scratch = Scratch::new("expiry-line");
    let (started, go) = (scratch.path("started"), scratch.path("go"));
    let mut command = consul.command();
    command
        .env("CONSUL_HTTP_ADDR", format!("http://{}", proxy.addr()))
        .args([
            "execute",
            "--ttl-only",
            "--session-ttl",
            "10",
            "--lock-delay",
            "5",
            "--kill-grace",
            "0",
            &key,
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "touch '{}'; while [ ! -e '{}' ]; do sleep 0.02; done",
            started.display(),
            go.display()
        ));
    let mut running = Running::start(command, false);
    wait_until(HANDSHAKE, "the command to start", || {
        running.assert_running("before the command started");
        started.exists()
    });
    // The renewal at TTL/2 is carried out at once, its answer comes after the renew timeout.
    consul
        .faults(serde_json::json!({"answer_delay_ms": 6000, "path_prefix": "/v1/session/renew/"}));
    wait_until(Duration::from_secs(15), "a renewal", || {
        consul.get("/_devserver/faults").json()["injected"]["delayed"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    proxy.set_mode(Mode::Blackhole);
    std::fs::write(&go, b"").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    running.signal(Signal::SIGTERM);
    let _ = running.wait(EXIT);
    let stderr = running.stderr();
    let claimed = stderr
        .split("by itself by ")
        .nth(1)
        .and_then(|rest| rest.split(" UTC").next())
        .unwrap_or_else(|| panic!("no expiry in {stderr:?}"))
        .to_string();
    let claimed = humantime::parse_rfc3339_weak(&claimed).unwrap();
    consul.clear_faults();
    proxy.set_mode(Mode::Pass);
    while std::time::SystemTime::now() < claimed + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        consul.holder(&key),
        None,
        "still held after the time the line gave ({stderr})"
    );
}

/// consullock stopped (SIGSTOP, a debugger, a frozen cgroup) longer than its session lives:
/// its kill switch is a thread of the stopped process, so nothing stops the command, which is
/// in a group of its own and keeps running; the session expires, and the next holder runs
/// beside it until consullock is continued. README mentions that a stopped consullock "stops
/// its command as soon as it runs again", but the promise is broken meanwhile. The keeper is
/// a separate process that is not stopped: given the deadline (e.g. in a shared page that the
/// engine updates), it could enforce it.
#[test]
fn a_stopped_consullock_does_not_leave_its_command_running_without_the_lock() {
    let consul = TestConsul::start();
    let key = consul.unique_key("sigstop");
    let scratch = Scratch::new("sigstop");
    let pid_file = scratch.path("pid");
    let verdict = scratch.path("verdict");
    let mut a = consul.command();
    a.args([
        "execute",
        "--session-ttl",
        "10",
        "--lock-delay",
        "6",
        "--kill-grace",
        "1",
        &key,
        "--",
        "sh",
        "-c",
        r#"echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 60"#,
        "sh",
        pid_file.to_str().unwrap(),
    ]);
    let mut a = Running::start(a, false);
    wait_until(HANDSHAKE, "A's command to start", || {
        a.assert_running("before A's command started");
        !scratch.read("pid").is_empty()
    });
    let a_pid: i32 = scratch.read("pid").trim().parse().unwrap();
    a.signal(Signal::SIGSTOP);
    let b = run({
        let mut command = consul.command();
        command.args([
            "execute",
            "--timeout",
            "45",
            &key,
            "--",
            "sh",
            "-c",
            // Running, or a zombie (killed, not yet reaped by the stopped consullock)?
            r#"s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null); if [ -n "$s" ] && [ "$s" != Z ]; then echo "OVERLAP $s" > "$2"; else echo CLEAN > "$2"; fi"#,
            "sh",
            &a_pid.to_string(),
            verdict.to_str().unwrap(),
        ]);
        command
    });
    a.signal(Signal::SIGCONT);
    let _ = a.wait(EXIT);
    assert_eq!(code(&b), 0, "{b:?}");
    assert_eq!(
        scratch.read("verdict").trim(),
        "CLEAN",
        "B's command ran while A's command ran on under a stopped consullock"
    );
}
