//! The promise, case by case (issue 10): the command never runs without the lock, and consullock
//! touches nothing but its locks. Each case is a way the world can break the promise, driven
//! with real processes against the dev server; each failed against consullock before the fix
//! that it names (`CONSULLOCK_TEST_BIN` points the client at another build to see it).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::process::{
    EXIT, HANDSHAKE, Running, Scratch, children_of, code, example, process_running, run,
};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{TestConsul, wait_until};

fn execute(consul: &TestConsul, args: &[&str]) -> Command {
    let mut command = consul.command();
    command.arg("execute").args(args);
    command
}

fn print_signals() -> String {
    example("print_signals").display().to_string()
}

/// The session holding `key`, as an operator would read it.
fn holder(consul: &TestConsul, key: &str) -> String {
    consul.holder(key).expect("the key is held")
}

// ---- 1. Nothing that can block stands between the clocks and the kill ----------------------

/// stderr is a FIFO whose reader never reads, pre-filled by the command; renewals fail. The
/// renew-failure warnings cannot be written, yet the command must be dead before the lock could
/// be anyone else's: the kill switch needs nothing but the clock.
#[test]
fn a_stderr_nobody_reads_never_delays_the_stop() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("stuck-stderr");
    let scratch = Scratch::new("stuck-stderr");
    let fifo = scratch.path("stderr");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Held open for reading, never read: writers block once the pipe's 64 KiB are full.
    let _reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let stderr = OpenOptions::new().write(true).open(&fifo).unwrap();
    let pid_file = scratch.path("pid");
    // TTL-only, TTL 10 s, lock-delay 3 s, grace 1 s: the lock counts as lost 11 s after the
    // last renewal (the watch's reads keep confirming it meanwhile), and nobody else can have
    // it before 13 s after it.
    let mut command = execute(
        &consul,
        &[
            "-vv",
            "--ttl-only",
            "--session-ttl",
            "10",
            "--lock-delay",
            "3",
            "--kill-grace",
            "1",
            &key,
            "--",
            "sh",
            "-c",
            r#"echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; head -c 65536 /dev/zero >&2 & exec sleep 300"#,
            "sh",
            pid_file.to_str().unwrap(),
        ],
    );
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut running = Running::spawn(command);
    wait_until(HANDSHAKE, "the command to start", || {
        running.assert_running("before the command started");
        pid_file.exists() && !scratch.read("pid").is_empty()
    });
    let command_pid: i32 = scratch.read("pid").trim().parse().unwrap();
    consul
        .faults(serde_json::json!({"no_leader_ms": 120_000, "path_prefix": "/v1/session/renew/"}));
    let faulted = Instant::now();
    // The last renewal was at most TTL/2 = 5 s before the fault: the lock counts as lost by
    // then + 11 s, SIGKILL follows the grace (1 s), and nobody else can have the lock before
    // 13 s after that renewal.
    wait_until(Duration::from_secs(25), "the command to be stopped", || {
        !process_running(command_pid)
    });
    let stopped_after = faulted.elapsed();
    assert!(
        stopped_after <= Duration::from_secs(12) + Duration::from_millis(500),
        "the command ran {stopped_after:?} after renewals began to fail"
    );
    consul.clear_faults();
    // stderr was never read: consullock still exits once it gave stderr its second.
    assert_eq!(running.wait(EXIT), 101);
}

// ---- 2. Containment: every process of the command dies with it ------------------------------

/// `kill -KILL` on consullock: PDEATHSIG only reaches `sh`; the keeper kills the group, so the
/// `sleep` the shell waits for dies too.
#[test]
fn sigkill_of_consullock_kills_the_whole_process_group() {
    let consul = TestConsul::start();
    let key = consul.unique_key("sigkill-group");
    let scratch = Scratch::new("sigkill-group");
    let pid_file = scratch.path("pid");
    let script = format!(
        "echo $$ > '{0}.tmp' && mv '{0}.tmp' '{0}'; sleep 300; echo never",
        pid_file.display()
    );
    let mut running = Running::start(execute(&consul, &[&key, &script]), false);
    let mut sleeper = None;
    wait_until(HANDSHAKE, "the shell's sleep", || {
        running.assert_running("before the command started");
        let Ok(shell) = scratch.read("pid").trim().parse::<i32>() else {
            return false;
        };
        sleeper = children_of(shell).first().map(|(pid, _)| *pid);
        sleeper.is_some()
    });
    let sleeper = sleeper.unwrap();
    running.signal(Signal::SIGKILL);
    let killed = Instant::now();
    wait_until(Duration::from_secs(5), "the grandchild to die", || {
        !process_running(sleeper)
    });
    crate::support::report(&format!(
        "sigkill_of_consullock: the grandchild died {:?} after consullock",
        killed.elapsed()
    ));
    assert!(!running.stdout().contains("never"));
}

/// A command that moves itself into another process group is still stopped when the lock is
/// lost (it is signalled by pid as well), and nothing claims a stop that did not happen.
#[test]
fn a_command_that_leaves_its_group_is_still_stopped() {
    let consul = TestConsul::start();
    let key = consul.unique_key("left-group");
    let mut running = Running::start(
        execute(
            &consul,
            &[
                "--kill-grace",
                "2",
                &key,
                "--",
                &print_signals(),
                "--leave-group",
                "--exit-on-term",
            ],
        ),
        false,
    );
    let pid = running.ready_pid();
    assert!(
        !running.stdout().contains(&format!("group {pid}")),
        "it left its own group: {}",
        running.stdout()
    );
    consul.destroy_session(&holder(&consul, &key));
    running.wait_line("TERM");
    assert_eq!(running.wait(EXIT), 101, "stderr: {}", running.stderr());
    assert!(
        running.stderr().contains("the command was stopped"),
        "{}",
        running.stderr()
    );
    assert!(!process_running(pid));
    consul.assert_nothing_left(&key);
}

/// With `--subreaper`, a descendant that escapes with `setsid` after the command exits is
/// stopped (TERM, grace, KILL) before the lock is released.
#[test]
fn a_setsid_escapee_is_stopped_before_the_release_with_subreaper() {
    let consul = TestConsul::start();
    let key = consul.unique_key("setsid");
    let scratch = Scratch::new("setsid");
    let pid_file = scratch.path("escaped");
    let script = format!(
        r#"setsid sh -c 'echo $$ > "{0}.tmp"; mv "{0}.tmp" "{0}"; trap "" TERM; exec sleep 60' & while [ ! -e '{0}' ]; do sleep 0.01; done"#,
        pid_file.display()
    );
    let output = run(execute(
        &consul,
        &["--subreaper", "--kill-grace", "1", &key, &script],
    ));
    assert_eq!(code(&output), 0, "{output:?}");
    let escaped: i32 = scratch.read("escaped").trim().parse().unwrap();
    assert!(
        !process_running(escaped),
        "the setsid escapee {escaped} still runs after the lock was released"
    );
    consul.assert_nothing_left(&key);
}

// ---- 3. Settings that break the rule are refused or warned ----------------------------------

/// A lock-delay shorter than the grace (+1 s) lets a forced unlock hand the lock over while the
/// command is still being stopped: warned, with or without `--ttl-only`.
#[test]
fn a_lock_delay_shorter_than_the_grace_is_warned_about() {
    let consul = TestConsul::start();
    let key = consul.unique_key("short-delay");
    for ttl_only in [true, false] {
        let mut args = vec!["--lock-delay", "0", "--kill-grace", "1"];
        if ttl_only {
            args.push("--ttl-only");
        }
        args.extend([key.as_str(), "true"]);
        let output = run(execute(&consul, &args));
        assert_eq!(code(&output), 0, "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("lock-delay") && stderr.contains("--kill-grace"),
            "ttl_only {ttl_only}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// Settings that guarantee a false "lock lost" on a healthy server are refused at once, and the
/// message names the options to change.
#[test]
fn settings_whose_renewals_cannot_keep_the_lock_are_refused() {
    let consul = TestConsul::start();
    let key = consul.unique_key("no-room");
    let started = Instant::now();
    let output = run(execute(
        &consul,
        &[
            "--session-ttl",
            "15",
            "--lock-delay",
            "0",
            "--ttl-only",
            "--kill-grace",
            "12",
            &key,
            "sleep 12",
        ],
    ));
    assert_eq!(code(&output), 3, "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for option in ["--session-ttl", "--lock-delay", "--kill-grace"] {
        assert!(stderr.contains(option), "{option}: {stderr}");
    }
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    consul.assert_nothing_left(&key);

    // The node-check bound only moves with the lock-delay, the grace or --ttl-only.
    let output = run(execute(
        &consul,
        &["--lock-delay", "5", "--kill-grace", "5", &key, "true"],
    ));
    assert_eq!(code(&output), 3, "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--ttl-only"), "{stderr}");
    assert!(!stderr.contains("--session-ttl"), "{stderr}");
}

/// The TTL Consul gets is the one the clocks assume: fractions are sent, not truncated.
#[test]
fn the_session_ttl_is_sent_exactly() {
    let consul = TestConsul::start();
    let key = consul.unique_key("ttl-exact");
    let output = run({
        let mut command = consul.command();
        command.args(["lock", "--session-ttl", "10.9", &key]);
        command
    });
    assert_eq!(code(&output), 0, "{output:?}");
    let sessions = consul.sessions_of(&key);
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["TTL"], "10900ms");
    run({
        let mut command = consul.command();
        command.args(["unlock", &key]);
        command
    });
}

/// Durations too large for the clocks, not numbers, or infinite: one line and exit 3 (7 for
/// the session TTL and lock-delay, as consullock 4.2), never a crash.
#[test]
fn durations_out_of_range_are_refused_without_a_crash() {
    let consul = TestConsul::start();
    let key = consul.unique_key("durations");
    let cases: [(&[&str], i32); 8] = [
        (&["lock", "--timeout", "1e20"], 3),
        (&["lock", "-i", "1e20"], 3),
        (&["lock", "--timeout", "NaN"], 3),
        (&["lock", "--session-ttl", "1e20"], 7),
        (&["lock", "--session-ttl", "inf"], 7),
        (&["lock", "--lock-delay", "NaN"], 7),
        (&["execute", "-i", "1e20"], 3),
        (&["execute", "--kill-grace", "inf"], 3),
    ];
    for (args, expected) in cases {
        let mut command = consul.command();
        command.args(args).arg(&key);
        if args[0] == "execute" {
            command.arg("true");
        }
        let output = run(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(code(&output), expected, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    consul.assert_nothing_left(&key);
}

// ---- 4. Never destroy data that is not a lock -----------------------------------------------

/// A key holding someone's data is refused with its own exit code, and left as it was: the
/// command does not run, the value is not overwritten, the key is not deleted.
#[test]
fn a_key_holding_data_is_never_locked_nor_deleted() {
    let consul = TestConsul::start();
    let key = consul.unique_key("config");
    assert_eq!(
        consul
            .put(&format!("/v1/kv/{key}"), b"precious=data")
            .status,
        200
    );
    let before = consul.key_entry(&key).unwrap();
    let scratch = Scratch::new("config");
    let ran = scratch.path("ran");
    let output = run(execute(
        &consul,
        &[&key, &format!("touch '{}'", ran.display())],
    ));
    assert_eq!(code(&output), 9, "{output:?}");
    assert!(!ran.exists(), "the command ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a consullock lock"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let output = run({
        let mut command = consul.command();
        command.args(["lock", &key]);
        command
    });
    assert_eq!(code(&output), 9, "{output:?}");
    assert_eq!(consul.key_entry(&key).unwrap(), before, "the key changed");
    assert!(consul.sessions_of(&key).is_empty());
    consul.delete(&format!("/v1/kv/{key}"));
}

/// `unlock` and `unlock -r` leave alone a key held by a session whose value is not a
/// consullock lock (another program's leader lock), and say so; `--force` releases it.
#[test]
fn unlock_leaves_other_programs_locks_alone_unless_forced() {
    let consul = TestConsul::start();
    let base = consul.unique_key("foreign");
    let leader = format!("{base}/leader");
    let ours = format!("{base}/job");
    let session = consul
        .put("/v1/session/create", b"{\"LockDelay\":\"0s\"}")
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let acquired = consul.put(&format!("/v1/kv/{leader}?acquire={session}"), b"node-7");
    assert_eq!(acquired.text(), "true");
    let unlock = |args: &[&str]| {
        let mut command = consul.command();
        command.arg("unlock").args(args);
        run(command)
    };
    let lock = run({
        let mut command = consul.command();
        command.args(["lock", &ours]);
        command
    });
    assert_eq!(code(&lock), 0, "{lock:?}");

    let output = unlock(&[&leader]);
    assert_eq!(code(&output), 9, "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "null");
    assert!(String::from_utf8_lossy(&output.stderr).contains(&leader));
    assert_eq!(consul.holder(&leader).as_deref(), Some(session.as_str()));

    let output = unlock(&["-r", &format!("{base}/.*")]);
    assert_eq!(code(&output), 0, "{output:?}");
    let released: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(released, serde_json::json!([ours]));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&leader));
    assert_eq!(consul.holder(&leader).as_deref(), Some(session.as_str()));

    let output = unlock(&["--force", &leader]);
    assert_eq!(code(&output), 0, "{output:?}");
    assert_eq!(consul.holder(&leader), None);
    consul.delete(&format!("/v1/kv/{base}?recurse"));
}

// ---- 5. Honest endings -----------------------------------------------------------------------

/// The command is done; Consul stops answering mid-release. A SIGTERM ends the release at once,
/// one line says the lock was NOT released and until when it stays held, nothing claims a
/// release, and the exit code is not 0.
#[test]
fn a_release_that_hangs_ends_on_sigterm_and_says_the_lock_was_not_released() {
    let consul = TestConsul::start_dev_server(&[]);
    let proxy = Proxy::start(&consul.addr());
    let key = consul.unique_key("hung-release");
    let scratch = Scratch::new("hung-release");
    let (started, go) = (scratch.path("started"), scratch.path("go"));
    let mut command = consul.command();
    command
        .env("CONSUL_HTTP_ADDR", format!("http://{}", proxy.addr()))
        .args(["-v", "execute", &key, "--", "sh", "-c"])
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
    proxy.set_mode(Mode::Blackhole);
    std::fs::write(&go, b"").unwrap();
    // The command ends now, and consullock starts a release nobody answers.
    std::thread::sleep(Duration::from_millis(500));
    running.assert_running("while releasing through a blackhole");
    running.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let exit = running.wait(EXIT);
    let took = signalled.elapsed();
    let stderr = running.stderr();
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?}: {stderr}"
    );
    assert_ne!(exit, 0, "{stderr}");
    assert!(stderr.contains("was NOT released"), "{stderr}");
    assert!(stderr.contains("at the latest"), "{stderr}");
    assert!(!stderr.contains("lock released"), "{stderr}");
    proxy.set_mode(Mode::Pass);
}

/// A session-create request already carried out by the server when a SIGTERM ended the wait
/// (its answer late on the network) is waited for and destroyed: no session is left, not even
/// one without a TTL that would otherwise live for ever.
#[test]
fn a_session_created_during_a_cancelled_create_is_destroyed() {
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("cancelled-create");
    consul.faults(serde_json::json!({"answer_delay_ms": 500, "path_prefix": "/v1/session/create"}));
    let mut command = consul.command();
    command.args(["lock", "--session-ttl", "0", &key]);
    let mut running = Running::start(command, false);
    wait_until(HANDSHAKE, "the session to exist", || {
        running.assert_running("before its session existed");
        !consul.sessions_of(&key).is_empty()
    });
    running.signal(Signal::SIGTERM);
    assert_eq!(running.wait(EXIT), 143, "stderr: {}", running.stderr());
    consul.clear_faults();
    consul.assert_nothing_left(&key);
}

/// `--non-blocking` refused by a lock-delay on a free key says so, not "held by another".
#[test]
fn a_refusal_by_lock_delay_says_lock_delay() {
    let consul = TestConsul::start();
    let key = consul.unique_key("delayed");
    let session = consul
        .put(
            "/v1/session/create",
            br#"{"LockDelay":"10s","Behavior":"delete"}"#,
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
    let output = run({
        let mut command = consul.command();
        command.args(["lock", "--non-blocking", &key]);
        command
    });
    assert_eq!(code(&output), 100, "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lock-delay"), "{stderr}");
    assert!(!stderr.contains("held by another"), "{stderr}");
}

/// Host pids of the processes whose command line is exactly `argv` (`/proc/PID/cmdline`).
fn processes_running(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .expect("procfs")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .filter(|pid| process_running(*pid))
        .collect()
}

/// `--contain` puts the command in a PID namespace of its own: a `setsid` escapee that ignores
/// TERM is stopped when the command exits, and dies with the namespace when consullock itself is
/// SIGKILLed.
#[test]
fn contained_commands_leave_nothing_behind_even_when_consullock_is_killed() {
    if !Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        crate::support::skip(
            "contained_commands_leave_nothing_behind",
            "PID namespaces are not available here (needs CAP_SYS_ADMIN)",
        );
        return;
    }
    let consul = TestConsul::start();
    let key = consul.unique_key("contain");
    let scratch = Scratch::new("contain");
    let marker = ["sleep", "300.123"];
    let ready = scratch.path("escaped");
    let escape = format!(
        r#"setsid sh -c 'trap "" TERM; touch "{0}"; exec sleep 300.123' & while [ ! -e "{0}" ]; do sleep 0.01; done"#,
        ready.display()
    );

    // The command exits; its escapee is stopped before the lock is released.
    let output = run(execute(
        &consul,
        &[
            "--contain",
            "--kill-grace",
            "1",
            &key,
            &format!("{escape}; exit 7"),
        ],
    ));
    assert_eq!(code(&output), 7, "{output:?}");
    assert!(
        processes_running(&marker).is_empty(),
        "the escapee survived"
    );
    consul.assert_nothing_left(&key);

    // consullock is SIGKILLed while the escapee runs: the namespace dies with it.
    let mut running = Running::start(
        execute(
            &consul,
            &["--contain", &key, &format!("{escape}; exec sleep 300")],
        ),
        false,
    );
    wait_until(HANDSHAKE, "the escapee to run", || {
        running.assert_running("before the escapee ran");
        !processes_running(&marker).is_empty()
    });
    running.signal(Signal::SIGKILL);
    wait_until(Duration::from_secs(5), "the escapee to die", || {
        processes_running(&marker).is_empty()
    });
}
