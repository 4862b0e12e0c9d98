//! `consullock execute`: the real binary, real child processes, the dev server (issue 4).
//!
//! Every case waits on handshakes (a child's `ready` line, a file it wrote, what the server
//! holds) polled with deadlines, never on sleeps, and ends by checking that the server holds no
//! session and no key of ours. Timestamps children write come from `date +%s%N`
//! (CLOCK_REALTIME: one clock for every process on this machine).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::holder::hold;
use crate::support::process::{
    EXIT, HANDSHAKE, Running, Scratch, children_of, example, process_running,
};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{TestConsul, wait_until};

/// Issue 4: lock loss seen by Consul stops the child within this.
const LOSS_REACTION: Duration = Duration::from_secs(1);

/// The `print_signals` example next to this test binary (`target/debug/examples`).
fn print_signals() -> PathBuf {
    example("print_signals")
}

/// A finished run.
#[derive(Debug)]
struct Finished {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `consullock execute ARGS...` to its end.
fn execute(consul: &TestConsul, args: &[&str]) -> Finished {
    let mut running = Running::start(execute_command(consul, args), false);
    let code = running.wait(EXIT);
    Finished {
        code,
        stdout: running.stdout(),
        stderr: running.stderr(),
    }
}

fn execute_command(consul: &TestConsul, args: &[&str]) -> Command {
    let mut command = consul.command();
    command.arg("execute").args(args);
    command
}

/// Nanoseconds since the epoch, comparable with `date +%s%N` in children.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// The `<tag> <nanoseconds>` lines of a timeline file, as a map from tag to time.
fn timeline(text: &str) -> BTreeMap<String, u128> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let (tag, ns) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let ns = ns
            .parse()
            .unwrap_or_else(|_| panic!("bad time in {line:?}"));
        assert!(
            map.insert(tag.to_string(), ns).is_none(),
            "{tag} twice in {text:?}"
        );
    }
    map
}

/// How many lines of `text` say "lock lost".
fn lock_lost_lines(text: &str) -> usize {
    text.lines().filter(|l| l.contains("lock lost")).count()
}

/// A shell child for the safety cases: writes `<name> start <ns>` to the file `$1`, and
/// `<name> end <ns>` when SIGTERM stops it.
fn timed_child(name: &str) -> String {
    format!(
        "trap 'echo \"{name} end $(date +%s%N)\" >> \"$1\"; exit 0' TERM; \
         echo \"{name} start $(date +%s%N)\" >> \"$1\"; sleep 1000 & wait"
    )
}

#[test]
fn exit_codes_and_signal_deaths_propagate() {
    let consul = TestConsul::start();
    let key = consul.unique_key("exit-codes");
    for code in [0, 1, 42, 255] {
        let shell = execute(&consul, &[&key, &format!("exit {code}")]);
        assert_eq!(shell.code, code, "shell form: {shell:?}");
        let direct = execute(&consul, &[&key, "--", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(direct.code, code, "-- form: {direct:?}");
        consul.assert_nothing_left(&key);
    }
    // Death by signal N: 128 + N.
    let killed = execute(&consul, &[&key, "kill -KILL $$"]);
    assert_eq!(killed.code, 128 + 9, "{killed:?}");
    let usr1 = execute(&consul, &[&key, "--", "sh", "-c", "kill -USR1 $$"]);
    assert_eq!(usr1.code, 128 + 10, "{usr1:?}");
    consul.assert_nothing_left(&key);
}

#[test]
fn commands_that_cannot_run_give_126_and_127() {
    let consul = TestConsul::start();
    let key = consul.unique_key("bad-commands");
    let scratch = Scratch::new("bad-commands");
    let script = scratch.path("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let script = script.to_str().expect("utf-8 path");
    let missing = "consullock-test-no-such-command";

    for (args, code) in [
        (vec![key.as_str(), "--", script], 126),
        (vec![key.as_str(), script], 126),
        (vec![key.as_str(), "--", missing], 127),
        (vec![key.as_str(), missing], 127),
    ] {
        let run = execute(&consul, &args);
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert_eq!(run.stdout, "", "{args:?}");
        consul.assert_nothing_left(&key);
    }
}

#[test]
fn both_command_forms_keep_arguments() {
    let consul = TestConsul::start();
    let key = consul.unique_key("arguments");
    let forms: [&[&str]; 3] = [
        &[&key, "--", "printf", "%s\\n", "a b", "c"],
        &[&key, "printf", "%s\\n", "a b", "c"],
        &[&key, "printf '%s\\n' 'a b' c"],
    ];
    for args in forms {
        let run = execute(&consul, args);
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (0, "a b\nc\n"),
            "{args:?}: {run:?}"
        );
    }
    consul.assert_nothing_left(&key);
}

#[test]
fn child_environment_and_fencing_token() {
    let consul = TestConsul::start();
    let key = consul.unique_key("environment");
    let scratch = Scratch::new("environment");
    let env_file = scratch.path("env");
    // Writes its environment (atomically, by rename), says hello on stdout, then waits for
    // stdin to close so the test can look at the server while it runs.
    let script = "env | grep '^CONSUL' > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"; echo hello; \
                  read _ignored; exit 0";
    let mut running = Running::start(
        execute_command(
            &consul,
            &[
                &key,
                "--",
                "sh",
                "-c",
                script,
                "sh",
                env_file.to_str().unwrap(),
            ],
        ),
        true,
    );
    wait_until(HANDSHAKE, "the child's environment file", || {
        running.assert_running("before its child wrote its environment");
        env_file.exists()
    });
    let env: BTreeMap<String, String> = scratch
        .read("env")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let entry = consul
        .key_entry(&key)
        .expect("the key is held while the child runs");
    assert_eq!(env.get("CONSULLOCK_KEY"), Some(&key), "{env:?}");
    assert_eq!(
        env.get("CONSUL_LOCK_HELD").map(String::as_str),
        Some("true"),
        "{env:?}"
    );
    assert_eq!(
        env.get("CONSULLOCK_SESSION").map(String::as_str),
        entry["Session"].as_str(),
        "{env:?}"
    );
    assert_eq!(
        env.get("CONSULLOCK_LOCK_INDEX"),
        Some(&entry["LockIndex"].to_string()),
        "{env:?}"
    );
    assert_eq!(
        env.get("CONSULLOCK_FENCING_TOKEN"),
        Some(&entry["ModifyIndex"].to_string()),
        "{env:?}"
    );
    let first_token: u64 = env["CONSULLOCK_FENCING_TOKEN"].parse().expect("a number");

    let code = running.wait(EXIT);
    assert_eq!(code, 0, "stderr: {}", running.stderr());
    // stdout belongs to the child alone.
    assert_eq!(running.stdout(), "hello\n");
    consul.assert_nothing_left(&key);

    // The key was deleted on release; the next holder's token is still larger.
    let second = execute(
        &consul,
        &[&key, "--", "sh", "-c", "echo $CONSULLOCK_FENCING_TOKEN"],
    );
    assert_eq!(second.code, 0, "{second:?}");
    let second_token: u64 = second.stdout.trim().parse().expect("a number");
    assert!(
        second_token > first_token,
        "{second_token} after {first_token}"
    );
    consul.assert_nothing_left(&key);
}

#[test]
fn forwarded_signals_reach_the_child_once_each() {
    let consul = TestConsul::start();
    let key = consul.unique_key("signals");
    let print_signals = print_signals();
    let mut running = Running::start(
        execute_command(
            &consul,
            &[
                "--kill-grace",
                "1",
                &key,
                "--",
                print_signals.to_str().unwrap(),
            ],
        ),
        false,
    );
    running.ready_pid();
    // INT last: it also starts the stop (SIGKILL after the grace, as print_signals ignores it).
    let sent = [
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGWINCH, "WINCH"),
        (Signal::SIGINT, "INT"),
    ];
    for (signal, line) in sent {
        running.signal(signal);
        running.wait_line(line);
    }
    let code = running.wait(EXIT);
    assert_eq!(
        code,
        128 + 9,
        "killed after the grace; stderr: {}",
        running.stderr()
    );
    let stdout = running.stdout();
    for (_, line) in sent {
        assert_eq!(
            stdout.lines().filter(|l| *l == line).count(),
            1,
            "{line} in {stdout:?}"
        );
    }
    assert_eq!(stdout.lines().count(), sent.len() + 1, "{stdout:?}");
    consul.assert_nothing_left(&key);
}

#[test]
fn sigterm_is_forwarded_once_and_the_lock_freed_within_the_grace() {
    let consul = TestConsul::start();
    let key = consul.unique_key("sigterm");
    let print_signals = print_signals();
    let print_signals = print_signals.to_str().unwrap();
    let grace = Duration::from_secs(2);

    // A child that ignores TERM is killed after the grace, and the lock is then freed.
    let mut stubborn = Running::start(
        execute_command(&consul, &["--kill-grace", "2", &key, "--", print_signals]),
        false,
    );
    let child = stubborn.ready_pid();
    let sent_at = Instant::now();
    stubborn.signal(Signal::SIGTERM);
    stubborn.wait_line("TERM");
    wait_until(
        grace + Duration::from_secs(2),
        "the lock to be freed after the grace",
        || consul.key_entry(&key).is_none(),
    );
    assert!(
        sent_at.elapsed() >= grace,
        "the key went before the grace was over"
    );
    assert!(!process_running(child), "the child outlived the release");
    assert_eq!(
        stubborn.wait(EXIT),
        128 + 9,
        "stderr: {}",
        stubborn.stderr()
    );
    assert_eq!(
        stubborn.stdout().matches("TERM").count(),
        1,
        "{}",
        stubborn.stdout()
    );
    consul.assert_nothing_left(&key);

    // A child that dies of it: 143, at once.
    let mut obedient = Running::start(
        execute_command(
            &consul,
            &[
                "--kill-grace",
                "2",
                &key,
                "--",
                print_signals,
                "--exit-on-term",
            ],
        ),
        false,
    );
    obedient.ready_pid();
    let sent_at = Instant::now();
    obedient.signal(Signal::SIGTERM);
    assert_eq!(obedient.wait(grace), 143, "stderr: {}", obedient.stderr());
    assert!(sent_at.elapsed() < grace, "took {:?}", sent_at.elapsed());
    assert_eq!(
        obedient.stdout().matches("TERM").count(),
        1,
        "{}",
        obedient.stdout()
    );
    consul.assert_nothing_left(&key);
}

#[test]
fn destroying_the_session_stops_the_child_and_its_grandchild() {
    let consul = TestConsul::start();
    let key = consul.unique_key("session-destroyed");
    let scratch = Scratch::new("session-destroyed");
    let pid_file = scratch.path("pid");
    // The shell form: `sh -c` is the child, `sleep` its grandchild.
    let pid_path = pid_file.display();
    let script = format!(
        "sleep 1000 & echo $! > '{pid_path}.tmp' && mv '{pid_path}.tmp' '{pid_path}'; wait"
    );
    let mut running = Running::start(execute_command(&consul, &[&key, &script]), false);
    wait_until(HANDSHAKE, "the grandchild's pid file", || {
        running.assert_running("before its child started the grandchild");
        pid_file.exists()
    });
    let grandchild: i32 = scratch.read("pid").trim().parse().expect("a pid");
    assert!(process_running(grandchild));
    let entry = consul.key_entry(&key).expect("the key is held");
    let session = entry["Session"].as_str().expect("a session");

    let destroyed = consul.put(&format!("/v1/session/destroy/{session}"), b"");
    assert_eq!(destroyed.status, 200, "{}", destroyed.text());
    wait_until(LOSS_REACTION, "the grandchild to be stopped", || {
        !process_running(grandchild)
    });
    assert_eq!(running.wait(EXIT), 101, "stderr: {}", running.stderr());
    assert_eq!(
        lock_lost_lines(&running.stderr()),
        1,
        "{}",
        running.stderr()
    );
    assert_eq!(running.stdout(), "");
    consul.assert_nothing_left(&key);
}

#[test]
fn deleting_the_key_is_a_loss_with_the_chosen_exit_code() {
    let consul = TestConsul::start();
    let key = consul.unique_key("key-deleted");
    let print_signals = print_signals();
    let mut running = Running::start(
        execute_command(
            &consul,
            &[
                "--lock-lost-exit-code",
                "7",
                &key,
                "--",
                print_signals.to_str().unwrap(),
            ],
        ),
        false,
    );
    let child = running.ready_pid();
    let deleted = consul.delete(&format!("/v1/kv/{key}"));
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    // print_signals ignores TERM: the grace (5 s by default) then SIGKILL stops it.
    assert_eq!(running.wait(EXIT), 7, "stderr: {}", running.stderr());
    assert!(!process_running(child), "the child outlived consullock");
    assert!(
        running.stdout().lines().any(|l| l == "TERM"),
        "{}",
        running.stdout()
    );
    assert_eq!(
        lock_lost_lines(&running.stderr()),
        1,
        "{}",
        running.stderr()
    );
    consul.assert_nothing_left(&key);
}

/// The outage: A holds the lock through a proxy that starts swallowing all traffic. A must
/// stop its child on its own before the server lets B (which reaches the server directly) take
/// the lock, and B must get it in the end.
#[test]
fn outage_behind_a_swallowing_proxy_never_lets_two_holders_overlap() {
    let consul = TestConsul::start();
    let key = consul.unique_key("outage");
    let scratch = Scratch::new("outage");
    let log = scratch.path("timeline");
    let log = log.to_str().unwrap();
    let proxy = Proxy::start(&consul.addr());
    let settings = [
        "--ttl-only",
        "--session-ttl",
        "10",
        "--lock-delay",
        "3",
        "--kill-grace",
        "1",
    ];
    // TTL 10 s + lock-delay 3 s: nobody else can hold the lock until 13 s after A's last
    // confirmation, which came before the blackhole.
    let safety_deadline = Duration::from_secs(13);

    let mut a_command = execute_command(&consul, &settings);
    a_command.env("CONSUL_HTTP_ADDR", format!("http://{}", proxy.addr()));
    a_command.args([key.as_str(), "--", "sh", "-c", &timed_child("A"), "sh", log]);
    let mut a = Running::start(a_command, false);
    wait_until(HANDSHAKE, "A's child to start", || {
        a.assert_running("before its child started");
        scratch.read("timeline").contains("A start")
    });

    let mut b_command = execute_command(&consul, &settings);
    b_command.args([
        key.as_str(),
        "--",
        "sh",
        "-c",
        "echo \"B start $(date +%s%N)\" >> \"$1\"",
        "sh",
        log,
    ]);
    let mut b = Running::start(b_command, false);
    wait_until(HANDSHAKE, "B to wait with its own session", || {
        consul.sessions_of(&key).len() == 2
    });

    let blackholed_at = now_ns();
    proxy.set_mode(Mode::Blackhole);
    assert_eq!(
        a.wait(Duration::from_secs(60)),
        101,
        "A's stderr: {}",
        a.stderr()
    );
    assert_eq!(lock_lost_lines(&a.stderr()), 1, "{}", a.stderr());
    assert_eq!(
        b.wait(Duration::from_secs(60)),
        0,
        "B's stderr: {}",
        b.stderr()
    );

    let times = timeline(&scratch.read("timeline"));
    let (a_end, b_start) = (times["A end"], times["B start"]);
    assert!(
        a_end < b_start,
        "A stopped at {a_end}, B started at {b_start}"
    );
    let stopped_after = Duration::from_nanos((a_end - blackholed_at) as u64);
    assert!(
        stopped_after < safety_deadline,
        "A's child stopped {stopped_after:?} into the outage"
    );
    drop(proxy);
    consul.assert_nothing_left(&key);
}

#[test]
fn a_dead_server_stops_the_holder_before_the_safety_deadline() {
    // Killing it needs a private dev server, whatever the environment points at.
    let consul = TestConsul::start_dev_server(&[]);
    let key = consul.unique_key("server-dies");
    let scratch = Scratch::new("server-dies");
    let log = scratch.path("timeline");
    let mut command = execute_command(
        &consul,
        &[
            "--ttl-only",
            "--session-ttl",
            "10",
            "--lock-delay",
            "3",
            "--kill-grace",
            "1",
        ],
    );
    command.args([
        key.as_str(),
        "--",
        "sh",
        "-c",
        &timed_child("A"),
        "sh",
        log.to_str().unwrap(),
    ]);
    let mut holder = Running::start(command, false);
    wait_until(HANDSHAKE, "the child to start", || {
        holder.assert_running("before its child started");
        scratch.read("timeline").contains("A start")
    });

    let killed_at = now_ns();
    drop(consul);
    assert_eq!(
        holder.wait(Duration::from_secs(30)),
        101,
        "stderr: {}",
        holder.stderr()
    );
    assert_eq!(lock_lost_lines(&holder.stderr()), 1, "{}", holder.stderr());
    let stopped_after =
        Duration::from_nanos((timeline(&scratch.read("timeline"))["A end"] - killed_at) as u64);
    // TTL + lock-delay after the last confirmation, which came before the kill.
    assert!(
        stopped_after < Duration::from_secs(13),
        "stopped {stopped_after:?} after the kill"
    );
}

#[test]
fn sigkill_of_consullock_kills_the_child() {
    let consul = TestConsul::start();
    let key = consul.unique_key("sigkill");
    let print_signals = print_signals();
    let mut running = Running::start(
        execute_command(&consul, &[&key, "--", print_signals.to_str().unwrap()]),
        false,
    );
    let child = running.ready_pid();
    running.signal(Signal::SIGKILL);
    assert_eq!(running.wait(EXIT), 128 + 9);
    wait_until(
        Duration::from_secs(5),
        "the child to die with consullock",
        || !process_running(child),
    );
    // A killed consullock cannot clean up: the session lives on until its TTL. Clear it here.
    for session in consul.sessions_of(&key) {
        let id = session["ID"].as_str().expect("an ID");
        consul.put(&format!("/v1/session/destroy/{id}"), b"");
    }
    consul.assert_nothing_left(&key);
}

/// Processes in the PID namespace of `pid` (host pids), with their state letters.
fn namespace_processes(pid: i32) -> Vec<(i32, String)> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return vec![];
    };
    let entries = std::fs::read_dir("/proc").expect("procfs");
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|n| n == ns))
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let state = stat
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some((p, state))
        })
        .collect()
}

/// `unshare --pid --fork --mount-proc PROGRAM ARGS` with `base`'s environment.
fn unshare(base: &Command, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", program])
        .args(args);
    for (name, value) in base.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command
}

#[test]
fn as_pid1_it_reaps_orphans_forwards_term_and_propagates_the_exit_code() {
    let works = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        crate::support::skip(
            "PID-1 tests",
            "`unshare --pid --fork --mount-proc` is unavailable here (needs root)",
        );
        return;
    }
    let consul = TestConsul::start();
    let key = consul.unique_key("pid1");
    let consullock = crate::support::consullock_bin();
    let consullock = consullock.to_str().expect("a UTF-8 path");
    let base = consul.command();

    let exited = Running::start(
        unshare(&base, consullock, &["execute", &key, "exit 42"]),
        false,
    )
    .wait_owned();
    assert_eq!(exited.0, 42, "stderr: {}", exited.1);
    consul.assert_nothing_left(&key);

    let print_signals = print_signals();
    let args = [
        "execute",
        &key,
        "--",
        print_signals.to_str().unwrap(),
        "--orphan",
        "3",
        "--exit-on-term",
    ];
    let mut running = Running::start(unshare(&base, consullock, &args), false);
    running.ready_pid();
    assert!(
        running.stdout().contains("orphans 3"),
        "{}",
        running.stdout()
    );
    // unshare's forked child is consullock, PID 1 of the new namespace.
    let unshare_pid = running.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .expect("children of unshare");
    let pid1: i32 = children
        .split_whitespace()
        .next()
        .expect("one child")
        .parse()
        .expect("a pid");
    // The orphans were alive when print_signals said `orphans 3`; once they have exited, PID 1
    // must have reaped them: only consullock and print_signals are left, and no zombie.
    wait_until(
        Duration::from_secs(10),
        "the orphans to be reaped by PID 1",
        || {
            let processes = namespace_processes(pid1);
            processes.len() == 2 && processes.iter().all(|(_, state)| state != "Z")
        },
    );
    kill(Pid::from_raw(pid1), Signal::SIGTERM).expect("SIGTERM to PID 1");
    assert_eq!(running.wait(EXIT), 143, "stderr: {}", running.stderr());
    assert_eq!(
        running.stdout().matches("TERM").count(),
        1,
        "{}",
        running.stdout()
    );
    consul.assert_nothing_left(&key);
}

/// A PID 1 started without a /proc of its own (`unshare --pid --fork`, no `--mount-proc`) sees
/// the host's /proc, where every host process descends from "PID 1": it must not take them for
/// leftovers of its command (waiting the grace and 2 s more after every command, and signalling
/// host pid numbers inside its own namespace).
#[test]
fn a_pid1_reading_the_hosts_proc_does_not_take_host_processes_for_its_own() {
    let works = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        crate::support::skip(
            "a_pid1_reading_the_hosts_proc_does_not_take_host_processes_for_its_own",
            "`unshare --pid --fork` is unavailable here (needs root)",
        );
        return;
    }
    let consul = TestConsul::start();
    let key = consul.unique_key("pid1-host-proc");
    let consullock = crate::support::consullock_bin();
    let mut command = Command::new("unshare");
    command.args(["--pid", "--fork"]).arg(&consullock).args([
        "execute",
        "--kill-grace",
        "2",
        &key,
        "exit 7",
    ]);
    for (name, value) in consul.command().get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let started = std::time::Instant::now();
    let (code, stderr) = Running::start(command, false).wait_owned();
    let took = started.elapsed();
    assert_eq!(code, 7, "stderr: {stderr}");
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?}: {stderr}"
    );
    consul.assert_nothing_left(&key);
}

#[test]
fn non_blocking_and_timeout_do_not_run_the_command() {
    let consul = TestConsul::start();
    let key = consul.unique_key("non-blocking");
    let mut holder = hold(&consul, &key, &[]);
    let never = ["--", "sh", "-c", "echo ran"];

    let refused = execute(
        &consul,
        &[&["--non-blocking", key.as_str()][..], &never].concat(),
    );
    assert_eq!(
        (refused.code, refused.stdout.as_str()),
        (100, ""),
        "{refused:?}"
    );
    let skipped = execute(
        &consul,
        &[
            &["--non-blocking", "--conflict-exit-code", "0", key.as_str()][..],
            &never,
        ]
        .concat(),
    );
    assert_eq!(
        (skipped.code, skipped.stdout.as_str()),
        (0, ""),
        "{skipped:?}"
    );
    let timed_out = execute(
        &consul,
        &[&["--timeout", "1", key.as_str()][..], &never].concat(),
    );
    assert_eq!(
        (timed_out.code, timed_out.stdout.as_str()),
        (5, ""),
        "{timed_out:?}"
    );
    // Only the holder's session is left.
    assert_eq!(
        consul.sessions_of(&key).len(),
        1,
        "{:?}",
        consul.sessions_of(&key)
    );

    holder.signal(Signal::SIGTERM);
    assert_eq!(holder.wait(EXIT), 143, "stderr: {}", holder.stderr());
    consul.assert_nothing_left(&key);
}

#[test]
fn a_kill_grace_that_breaks_the_safety_rule_is_refused() {
    let consul = TestConsul::start();
    let key = consul.unique_key("refused");
    let refused: [&[&str]; 3] = [
        // Not below the TTL (no lock-delay).
        &[
            "--session-ttl",
            "10",
            "--lock-delay",
            "0",
            "--kill-grace",
            "10",
        ],
        &[
            "--ttl-only",
            "--session-ttl",
            "10",
            "--lock-delay",
            "0",
            "--kill-grace",
            "12",
        ],
        // Not below a non-zero lock-delay (node checks can end the session at any time).
        &["--lock-delay", "5", "--kill-grace", "5"],
    ];
    for options in refused {
        let requests_before = consul.dev_stats().map(|s| s["requests"].clone());
        let run = execute(
            &consul,
            &[options, &[key.as_str(), "--", "sh", "-c", "echo ran"]].concat(),
        );
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (3, ""),
            "{options:?}: {run:?}"
        );
        assert!(run.stderr.contains("kill grace"), "{options:?}: {run:?}");
        // Nothing was asked of the server at all.
        assert_eq!(
            consul.dev_stats().map(|s| s["requests"].clone()),
            requests_before,
            "{options:?}"
        );
        consul.assert_nothing_left(&key);
    }
}

#[test]
fn twenty_contenders_run_one_at_a_time() {
    const CONTENDERS: usize = 20;
    let consul = TestConsul::start();
    let key = consul.unique_key("contenders");
    let scratch = Scratch::new("contenders");
    let log = scratch.path("timeline");
    let log = log.to_str().unwrap();
    // One `echo` per line: a short O_APPEND write is atomic.
    let script = "echo \"$2 start $(date +%s%N)\" >> \"$1\"; sleep 0.01; echo \"$2 end $(date +%s%N)\" >> \"$1\"";
    let mut running: Vec<Running> = (0..CONTENDERS)
        .map(|i| {
            let id = i.to_string();
            Running::start(
                execute_command(&consul, &[&key, "--", "sh", "-c", script, "sh", log, &id]),
                false,
            )
        })
        .collect();
    for (i, contender) in running.iter_mut().enumerate() {
        assert_eq!(
            contender.wait(Duration::from_secs(90)),
            0,
            "{i}: {}",
            contender.stderr()
        );
    }
    let times = timeline(&scratch.read("timeline"));
    let mut intervals: Vec<(u128, u128)> = (0..CONTENDERS)
        .map(|i| (times[&format!("{i} start")], times[&format!("{i} end")]))
        .collect();
    assert_eq!(times.len(), 2 * CONTENDERS, "{times:?}");
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    consul.assert_nothing_left(&key);
}

#[test]
fn a_stop_signal_while_waiting_ends_the_wait_and_leaves_nothing() {
    let consul = TestConsul::start();
    let key = consul.unique_key("interrupted-wait");
    let mut holder = hold(&consul, &key, &[]);
    for (signal, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let mut waiter = Running::start(
            execute_command(&consul, &[&key, "--", "sh", "-c", "echo ran"]),
            false,
        );
        wait_until(HANDSHAKE, "the waiter's session", || {
            waiter.assert_running("while it should wait");
            consul.sessions_of(&key).len() == 2
        });
        // USR1 has no child to go to yet: it must not end the wait.
        waiter.signal(Signal::SIGUSR1);
        waiter.signal(signal);
        assert_eq!(waiter.wait(EXIT), code, "{signal}: {}", waiter.stderr());
        assert_eq!(waiter.stdout(), "", "{signal}");
        assert_eq!(
            consul.sessions_of(&key).len(),
            1,
            "{signal}: the waiter's session is left"
        );
    }
    holder.signal(Signal::SIGTERM);
    assert_eq!(holder.wait(EXIT), 143, "stderr: {}", holder.stderr());
    consul.assert_nothing_left(&key);
}

#[test]
fn as_subreaper_it_reaps_orphaned_grandchildren() {
    let consul = TestConsul::start();
    let key = consul.unique_key("subreaper");
    let print_signals = print_signals();
    let mut running = Running::start(
        execute_command(
            &consul,
            &[
                "-vv",
                "--subreaper",
                &key,
                "--",
                print_signals.to_str().unwrap(),
                "--orphan",
                "3",
                "--exit-on-term",
            ],
        ),
        false,
    );
    let child = running.ready_pid();
    // The orphans were re-parented to consullock when their shell exited; once they have
    // exited too, consullock must have reaped them: its only children left are print_signals
    // and its keeper (`lock-keeper`, see src/supervisor/keeper.rs).
    wait_until(Duration::from_secs(10), "the orphans to be reaped", || {
        let children: Vec<(i32, String)> = children_of(running.pid())
            .into_iter()
            .filter(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() != "lock-keeper")
            })
            .collect();
        children.len() == 1 && children[0].0 == child && children[0].1 != "Z"
    });
    // And they were ours to reap (`sh -c '(sleep 0.2; exit 3) &'` three times), not init's.
    let reaped = |stderr: &str| {
        stderr
            .lines()
            .filter(|l| l.contains("reaped orphan") && l.contains("Exited(3)"))
            .count()
    };
    wait_until(
        Duration::from_secs(10),
        "three orphans reaped by consullock",
        || reaped(&running.stderr()) == 3,
    );
    running.signal(Signal::SIGTERM);
    assert_eq!(running.wait(EXIT), 143, "stderr: {}", running.stderr());
    consul.assert_nothing_left(&key);
}
