//! Supervisor tests with real processes. Children inherit our stdout, so they report through
//! files in a scratch directory; tests wait on those handshakes (polled with a deadline), never
//! on sleeps. Signals come from a [`Signals::manual`] intake, so parallel tests cannot disturb
//! each other; the one test of the real process-wide intake is serialized by a mutex.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal, pthread_sigmask};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::*;
use crate::clock::Deadline;

/// Long enough that a test waiting on a handshake never times out on a loaded machine.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval for handshake files.
const POLL: Duration = Duration::from_millis(5);
/// A grace the tests never expect to reach: hitting it shows up as SIGKILL in the outcome.
const LONG_GRACE: Duration = Duration::from_secs(30);

/// Serializes tests that touch process-wide signal state.
static PROCESS_SIGNALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "consullock-supervisor-{}-{name}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `OUT=<dir>/out` for the child, the file its handshake lands in.
    fn env(&self) -> Vec<(OsString, OsString)> {
        vec![("OUT".into(), self.file("out").into())]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(script: &str) -> ChildCommand {
    ChildCommand::Shell(script.to_owned())
}

fn exec(program: &str, args: &[&str]) -> ChildCommand {
    ChildCommand::Exec {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
    }
}

fn options(kill_grace: Duration, env: Vec<(OsString, OsString)>) -> SupervisorOptions {
    SupervisorOptions {
        kill_grace,
        env,
        contain: None,
    }
}

/// A deadline that never passes (a lock never lost).
static NEVER: std::sync::LazyLock<Deadline> = std::sync::LazyLock::new(Deadline::unset);

/// Supervise with no signals and a lock that is never lost.
async fn run_to_end(command: ChildCommand, options: &SupervisorOptions) -> Outcome {
    let (_sender, mut signals) = Signals::manual();
    outcome_of(command, options, &mut signals, &Deadline::unset()).await
}

/// [`supervise`]'s outcome (the OS refusing a fork or a thread fails the test).
async fn outcome_of(
    command: ChildCommand,
    options: &SupervisorOptions,
    signals: &mut Signals,
    deadline: &Deadline,
) -> Outcome {
    supervise(command, options, signals, deadline)
        .await
        .expect("supervise")
        .outcome
}

/// Whether any running process is in process group `pgid`.
fn group_running(pgid: i32) -> bool {
    processes::scan()
        .iter()
        .any(|p| p.pgrp == pgid && !matches!(p.state, b'Z' | b'X'))
}

/// Wait until `path` exists and satisfies `ready`, and return its content.
async fn wait_for(path: &Path, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && ready(&text)
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Wait for a handshake file that a shell child writes atomically (`... > $OUT.tmp; mv`),
/// holding whitespace-separated pids.
async fn wait_for_pids(path: &Path) -> Vec<i32> {
    let text = wait_for(path, |_| true).await;
    text.split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect()
}

/// Whether `pid` is a running process (absent and zombie both count as dead: a zombie re-parented
/// to a slow init may linger, and runs nothing).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// This process's zombie children, from /proc.
fn our_zombies() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            let pid = stat.split_whitespace().next()?.parse().ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let mut fields = rest.split_whitespace();
            let (state, ppid) = (fields.next()?, fields.next()?);
            (state == "Z" && ppid == me).then_some(pid)
        })
        .collect()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Path of an example binary built by cargo next to this test binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/consullock-HASH → target/debug/examples/NAME
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|debug| debug.join("examples").join(name))
        .expect("target dir layout");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds examples, `cargo test --lib` does not \
         (run `cargo build --examples` first)",
        path.display()
    );
    path
}

#[tokio::test]
async fn exit_codes_propagate() {
    let opts = SupervisorOptions::default();
    for code in [0, 1, 42, 255] {
        let outcome = run_to_end(sh(&format!("exit {code}")), &opts).await;
        assert!(
            matches!(outcome, Outcome::Exited(c) if c == code),
            "{code}: {outcome:?}"
        );
        let outcome = run_to_end(exec("sh", &["-c", &format!("exit {code}")]), &opts).await;
        assert!(
            matches!(outcome, Outcome::Exited(c) if c == code),
            "{code}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    let opts = SupervisorOptions::default();
    let outcome = run_to_end(sh("kill -KILL $$"), &opts).await;
    assert!(
        matches!(outcome, Outcome::Signaled(Signal::KILL)),
        "{outcome:?}"
    );
    let outcome = run_to_end(exec("sh", &["-c", "kill -USR1 $$"]), &opts).await;
    assert!(
        matches!(outcome, Outcome::Signaled(Signal::USR1)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn missing_program_is_127() {
    let opts = SupervisorOptions::default();
    for program in ["consullock-no-such-program", "/nonexistent/consullock-prog"] {
        let outcome = run_to_end(exec(program, &[]), &opts).await;
        assert!(
            matches!(
                outcome,
                Outcome::SpawnFailed {
                    failure: SpawnFailure::NotFound,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
    let outcome = run_to_end(sh("consullock-no-such-program"), &opts).await;
    assert!(matches!(outcome, Outcome::Exited(127)), "{outcome:?}");
}

#[tokio::test]
async fn non_executable_file_is_126() {
    let scratch = Scratch::new("noexec");
    let script = scratch.file("script.sh");
    // Mode 0644: no execute bit, which stops even root.
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
    let path = script.to_str().expect("utf-8 path");
    let opts = SupervisorOptions::default();
    let outcome = run_to_end(exec(path, &[]), &opts).await;
    assert!(
        matches!(
            outcome,
            Outcome::SpawnFailed {
                failure: SpawnFailure::CannotExecute,
                ..
            }
        ),
        "{outcome:?}"
    );
    let outcome = run_to_end(sh(path), &opts).await;
    assert!(matches!(outcome, Outcome::Exited(126)), "{outcome:?}");
}

#[tokio::test]
async fn exec_form_keeps_argument_boundaries() {
    let scratch = Scratch::new("argv");
    let opts = options(LONG_GRACE, scratch.env());
    let outcome = run_to_end(
        exec(
            "sh",
            &["-c", r#"printf '%s\n' "$@" > "$OUT""#, "sh", "a b", "c", ""],
        ),
        &opts,
    )
    .await;
    assert!(matches!(outcome, Outcome::Exited(0)), "{outcome:?}");
    let out = std::fs::read_to_string(scratch.file("out")).expect("output");
    assert_eq!(out, "a b\nc\n\n");

    let outcome = run_to_end(sh(r#"printf '%s\n' 'a b' c > "$OUT""#), &opts).await;
    assert!(matches!(outcome, Outcome::Exited(0)), "{outcome:?}");
    let out = std::fs::read_to_string(scratch.file("out")).expect("output");
    assert_eq!(out, "a b\nc\n");
}

#[tokio::test]
async fn option_env_reaches_child_with_inherited_env() {
    let scratch = Scratch::new("env");
    let mut env = scratch.env();
    env.push(("CONSULLOCK_TEST_VAR".into(), "hello world".into()));
    let opts = options(LONG_GRACE, env);
    // PATH is inherited (sh finds printf through it) and the added variable is there.
    let outcome = run_to_end(
        sh(r#"printf '%s|%s' "$CONSULLOCK_TEST_VAR" "${PATH:+set}" > "$OUT""#),
        &opts,
    )
    .await;
    assert!(matches!(outcome, Outcome::Exited(0)), "{outcome:?}");
    let out = std::fs::read_to_string(scratch.file("out")).expect("output");
    assert_eq!(out, "hello world|set");
}

#[tokio::test]
async fn lock_lost_before_start_runs_nothing() {
    let scratch = Scratch::new("prelost");
    let (_sender, mut signals) = Signals::manual();
    let opts = options(LONG_GRACE, scratch.env());
    let lost = Deadline::unset();
    lost.expire();
    let outcome = outcome_of(sh(r#"touch "$OUT""#), &opts, &mut signals, &lost).await;
    assert!(
        matches!(outcome, Outcome::LockLost { child: None }),
        "{outcome:?}"
    );
    assert!(!scratch.file("out").exists());
}

#[tokio::test]
async fn lock_lost_stops_child_and_grandchild() {
    let scratch = Scratch::new("lost");
    let opts = options(LONG_GRACE, scratch.env());
    let (_sender, mut signals) = Signals::manual();
    let lost = Deadline::unset();
    let started = Instant::now();
    let supervised = outcome_of(
        sh(r#"sleep 1000 & echo $$ $! > "$OUT.tmp"; mv "$OUT.tmp" "$OUT"; sleep 1000; wait"#),
        &opts,
        &mut signals,
        &lost,
    );
    let driver = async {
        let pids = wait_for_pids(&scratch.file("out")).await;
        lost.expire();
        pids
    };
    let (outcome, pids) = tokio::join!(supervised, driver);
    // SIGTERM (not the SIGKILL after the grace) ended the shell: stopped within the grace.
    assert!(
        matches!(
            outcome,
            Outcome::LockLost {
                child: Some(ChildStatus::Signaled(Signal::TERM))
            }
        ),
        "{outcome:?}"
    );
    assert!(started.elapsed() < LONG_GRACE);
    let [shell, grandchild] = pids[..] else {
        panic!("pids {pids:?}")
    };
    assert!(!group_running(shell), "group still alive");
    assert!(
        !process_alive(grandchild),
        "grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn lock_lost_escalates_to_sigkill_when_term_is_ignored() {
    let scratch = Scratch::new("ignoreterm");
    let grace = Duration::from_millis(300);
    let opts = options(grace, scratch.env());
    let (_sender, mut signals) = Signals::manual();
    let lost = Deadline::unset();
    // `trap '' TERM` sets SIG_IGN, which, unlike a trap handler, is inherited by `sleep`: the
    // whole group ignores TERM, so only the SIGKILL after the grace can end it.
    let supervised = outcome_of(
        sh(r#"trap '' TERM; sleep 1000 & echo $$ $! > "$OUT.tmp"; mv "$OUT.tmp" "$OUT"; wait"#),
        &opts,
        &mut signals,
        &lost,
    );
    let driver = async {
        let pids = wait_for_pids(&scratch.file("out")).await;
        lost.expire();
        (pids, Instant::now())
    };
    let (outcome, (pids, lost_at)) = tokio::join!(supervised, driver);
    assert!(
        matches!(
            outcome,
            Outcome::LockLost {
                child: Some(ChildStatus::Signaled(Signal::KILL))
            }
        ),
        "{outcome:?}"
    );
    assert!(
        lost_at.elapsed() >= grace,
        "SIGKILL came before the grace ended"
    );
    assert!(
        pids.iter().all(|&pid| !process_alive(pid)),
        "survivors among {pids:?}"
    );
}

#[tokio::test]
async fn leftovers_of_an_exited_child_are_stopped() {
    let scratch = Scratch::new("leftovers");
    let opts = options(Duration::from_millis(200), scratch.env());
    // One leftover dies of TERM, the other ignores it and needs the SIGKILL after the grace.
    let outcome = run_to_end(
        sh(
            r#"sleep 1000 & a=$!; (trap '' TERM; exec sleep 1000) & echo $$ $a $! > "$OUT.tmp"
              mv "$OUT.tmp" "$OUT"; exit 7"#,
        ),
        &opts,
    )
    .await;
    assert!(matches!(outcome, Outcome::Exited(7)), "{outcome:?}");
    let pids = wait_for_pids(&scratch.file("out")).await;
    assert_eq!(pids.len(), 3);
    assert!(!group_running(pids[0]), "group still alive");
    assert!(
        pids.iter().all(|&pid| !process_alive(pid)),
        "survivors among {pids:?}"
    );
}

#[tokio::test]
async fn stop_request_escalates_and_other_signals_do_not() {
    let scratch = Scratch::new("escalate");
    let grace = Duration::from_millis(200);
    let opts = options(grace, scratch.env());
    let (sender, mut signals) = Signals::manual();
    // The shell ignores TERM for itself and its child; HUP would kill it, so it traps HUP too.
    let supervised = outcome_of(
        sh(
            r#"trap '' TERM; trap 'echo hup >> "$OUT.log"' HUP; echo $$ > "$OUT.tmp"
              mv "$OUT.tmp" "$OUT"; while :; do sleep 1 & wait $!; done"#,
        ),
        &opts,
        &mut signals,
        &NEVER,
    );
    let driver = async {
        wait_for_pids(&scratch.file("out")).await;
        assert!(sender.send(Signal::HUP));
        wait_for(&scratch.file("out.log"), |t| t == "hup\n").await;
        assert!(sender.send(Signal::TERM));
        Instant::now()
    };
    let (outcome, term_at) = tokio::join!(supervised, driver);
    assert!(
        matches!(outcome, Outcome::Signaled(Signal::KILL)),
        "{outcome:?}"
    );
    assert!(term_at.elapsed() >= grace);
}

#[tokio::test]
async fn forwarded_signals_reach_the_child_once_each() {
    let bin = example("print_signals");
    let scratch = Scratch::new("forward");
    let opts = options(LONG_GRACE, scratch.env());
    let (sender, mut signals) = Signals::manual();
    let out = scratch.file("out");
    let supervised = outcome_of(
        sh(&format!(
            r#"exec '{}' --exit-on-term > "$OUT""#,
            bin.display()
        )),
        &opts,
        &mut signals,
        &NEVER,
    );
    let order = [
        (Signal::HUP, "HUP"),
        (Signal::QUIT, "QUIT"),
        (Signal::USR1, "USR1"),
        (Signal::USR2, "USR2"),
        (Signal::WINCH, "WINCH"),
        (Signal::INT, "INT"),
        (Signal::TERM, "TERM"),
    ];
    let driver = async {
        wait_for(&out, |t| t.starts_with("ready ") && t.ends_with('\n')).await;
        for (i, (signal, name)) in order.iter().enumerate() {
            assert!(sender.send(*signal));
            // Wait for this signal's line before sending the next one, so that a duplicate
            // delivery would show up as an extra line rather than be coalesced.
            wait_for(&out, |t| t.lines().nth(i + 1) == Some(name)).await;
        }
    };
    let (outcome, ()) = tokio::join!(supervised, driver);
    assert!(matches!(outcome, Outcome::Exited(143)), "{outcome:?}");
    let text = std::fs::read_to_string(&out).expect("output");
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines, order.map(|(_, name)| name));
}

#[tokio::test]
async fn children_are_reaped_and_hooks_share_the_reaper() {
    let opts = SupervisorOptions::default();
    for _ in 0..5 {
        let outcome = run_to_end(sh("sleep 0 & exit 3"), &opts).await;
        assert!(matches!(outcome, Outcome::Exited(3)), "{outcome:?}");
    }
    let status = run_hook(OsStr::new("sh"), &[OsStr::new("-c"), OsStr::new("exit 4")]).await;
    assert_eq!(status.expect("hook ran"), ChildStatus::Exited(4));
    let missing = run_hook(OsStr::new("consullock-no-such-hook"), &[]).await;
    assert_eq!(
        missing.expect_err("no such hook").kind(),
        io::ErrorKind::NotFound
    );
    // Parallel tests may have children exiting right now: wait for a moment with none.
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let zombies = our_zombies();
        if zombies.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "zombies left: {zombies:?}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn dropping_supervise_kills_the_group() {
    let scratch = Scratch::new("drop");
    let opts = options(LONG_GRACE, scratch.env());
    let (_sender, mut signals) = Signals::manual();
    let supervised = outcome_of(
        sh(r#"sleep 1000 & echo $$ $! > "$OUT.tmp"; mv "$OUT.tmp" "$OUT"; wait"#),
        &opts,
        &mut signals,
        &NEVER,
    );
    let out = scratch.file("out");
    let pids = tokio::select! {
        outcome = supervised => panic!("finished early: {outcome:?}"),
        pids = wait_for_pids(&out) => pids,
    };
    // The child was SIGKILLed on drop; the reaper collects it (and init the grandchild).
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while pids.iter().any(|&pid| process_alive(pid)) {
        assert!(Instant::now() < deadline, "survivors among {pids:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// The real, process-wide intake: signals raised on this process arrive through `recv`, and a
/// child starts with an empty signal mask and SIGTTIN/SIGTTOU back to default even though we
/// ignore them and block a signal in the spawning thread.
#[tokio::test]
async fn installed_intake_receives_signals_and_children_start_clean() {
    let _serial = PROCESS_SIGNALS.lock().await;
    let mut signals = Signals::install().expect("install");
    for signal in [Signal::USR2, Signal::WINCH] {
        nix::sys::signal::raise(signal.to_nix().expect("known")).expect("raise");
        let received = tokio::time::timeout(HANDSHAKE_TIMEOUT, signals.recv()).await;
        assert_eq!(received.expect("signal arrives"), signal);
    }

    let scratch = Scratch::new("sigconf");
    let opts = options(LONG_GRACE, scratch.env());
    let mut usr1 = SigSet::empty();
    usr1.add(NixSignal::SIGUSR1);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr1), None).expect("block");
    let outcome = outcome_of(
        exec(
            "sh",
            &[
                "-c",
                r#"grep -E '^Sig(Blk|Ign):' /proc/self/status > "$OUT""#,
            ],
        ),
        &opts,
        &mut signals,
        &NEVER,
    )
    .await;
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&usr1), None).expect("unblock");
    assert!(matches!(outcome, Outcome::Exited(0)), "{outcome:?}");
    let text = std::fs::read_to_string(scratch.file("out")).expect("output");
    for line in text.lines() {
        let (name, hex) = line.split_once(':').expect("field");
        let mask = u64::from_str_radix(hex.trim(), 16).expect("hex mask");
        match name {
            "SigBlk" => assert_eq!(mask, 0, "child starts with signals blocked"),
            "SigIgn" => {
                for sig in [libc::SIGTTIN, libc::SIGTTOU] {
                    assert_eq!(mask & (1 << (sig - 1)), 0, "signal {sig} still ignored");
                }
            }
            _ => unreachable!(),
        }
    }
}

/// PID 1 in a fresh PID namespace (root only): orphans are reaped, SIGTERM to PID 1 is
/// forwarded, the exit code comes back.
#[tokio::test]
async fn as_pid1_reaps_orphans_and_forwards_term() {
    if !running_as_root() || !Path::new("/usr/bin/unshare").exists() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP supervisor PID-1 test: needs root and unshare"
        );
        return;
    }
    let demo = example("supervise_demo");
    let print_signals = example("print_signals");
    let scratch = Scratch::new("pid1");
    let out = scratch.file("out");
    let err = scratch.file("err");
    let mut cmd = std::process::Command::new("/usr/bin/unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(&demo)
        .args(["--report-zombies", "--"])
        .arg(&print_signals)
        .args(["--exit-on-term", "--orphan", "3"])
        .stdout(std::fs::File::create(&out).expect("out file"))
        .stderr(std::fs::File::create(&err).expect("err file"));
    // Through the reaper, like every child of this process: it owns waitpid.
    let spawned = reaper::spawn(&mut cmd).expect("spawn unshare");
    wait_for(&out, |t| t.contains("ready ")).await;
    let children = std::fs::read_to_string(format!(
        "/proc/{pid}/task/{pid}/children",
        pid = spawned.pid
    ))
    .expect("children of unshare");
    let pid1: i32 = children
        .split_whitespace()
        .next()
        .expect("pid 1")
        .parse()
        .expect("pid");
    nix::sys::signal::kill(Pid::from_raw(pid1), NixSignal::SIGTERM).expect("TERM pid 1");
    let status = tokio::time::timeout(HANDSHAKE_TIMEOUT, spawned.exit).await;
    let status = status.expect("unshare exits").expect("status");
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status, ChildStatus::Exited(143), "stderr: {stderr}");
    let stdout = std::fs::read_to_string(&out).expect("stdout");
    assert!(stdout.lines().any(|l| l == "orphans 3"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|&l| l == "TERM").count(),
        1,
        "{stdout}"
    );
    assert!(stderr.contains("pid1 true"), "{stderr}");
    assert!(stderr.lines().any(|l| l == "zombies 0"), "{stderr}");
}

/// SIGKILL of the supervising process: PR_SET_PDEATHSIG takes the child with it.
#[tokio::test]
async fn child_dies_with_a_sigkilled_supervisor() {
    let demo = example("supervise_demo");
    let print_signals = example("print_signals");
    let scratch = Scratch::new("pdeathsig");
    let out = scratch.file("out");
    let mut cmd = std::process::Command::new(&demo);
    cmd.arg("--")
        .arg(&print_signals)
        .stdout(std::fs::File::create(&out).expect("out file"));
    let spawned = reaper::spawn(&mut cmd).expect("spawn demo");
    let text = wait_for(&out, |t| t.contains("ready ") && t.ends_with('\n')).await;
    let child: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("ready "))
        .and_then(|p| p.parse().ok())
        .expect("child pid");
    nix::sys::signal::kill(Pid::from_raw(spawned.pid), NixSignal::SIGKILL).expect("kill demo");
    let status = tokio::time::timeout(HANDSHAKE_TIMEOUT, spawned.exit).await;
    assert_eq!(
        status.expect("demo exits").expect("status"),
        ChildStatus::Signaled(Signal::KILL)
    );
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while process_alive(child) {
        assert!(
            Instant::now() < deadline,
            "child {child} outlived its supervisor"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// On a terminal (a pty from `script`): the child's group becomes the foreground group, so the
/// child reads the terminal and Ctrl-C reaches it once (from the tty, not again from us), and
/// the terminal comes back to our group afterwards.
#[tokio::test]
async fn terminal_goes_to_the_child_and_back() {
    if !Path::new("/usr/bin/script").exists() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP supervisor terminal test: needs script(1) for a pty"
        );
        return;
    }
    let demo = example("supervise_demo");
    let print_signals = example("print_signals");
    let scratch = Scratch::new("tty");
    let out = scratch.file("out");
    // The pty's shell runs the demo in its own (foreground) group; afterwards it reports
    // whether its group has the terminal again (fields 5 and 8 of /proc/self/stat).
    let inner = format!(
        "'{}' -- '{}' --stdin; echo status=$?; read a b c d e f g h rest < /proc/self/stat; \
         [ \"$e\" = \"$h\" ] && echo terminal-back",
        demo.display(),
        print_signals.display()
    );
    let mut cmd = std::process::Command::new("/usr/bin/script");
    cmd.args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&out).expect("out file"));
    let mut spawned = reaper::spawn(&mut cmd).expect("spawn script");
    let mut tty = spawned.stdin.take().expect("stdin pipe");
    wait_for(&out, |t| t.contains("ready ")).await;
    std::io::Write::write_all(&mut tty, b"\x03").expect("write ^C");
    wait_for(&out, |t| t.contains("INT")).await;
    std::io::Write::write_all(&mut tty, b"exit\n").expect("write exit");
    // Once script(1) has exited, its whole transcript is in the file.
    let status = tokio::time::timeout(HANDSHAKE_TIMEOUT, spawned.exit).await;
    let text = std::fs::read_to_string(&out).expect("transcript");
    assert_eq!(
        status.expect("script exits").expect("status"),
        ChildStatus::Exited(0),
        "{text}"
    );
    assert_eq!(text.matches("INT").count(), 1, "{text}");
    assert!(text.contains("status=0"), "{text}");
    assert!(text.contains("terminal-back"), "{text}");
}

/// A stop signal that arrived after the lock was taken but before the command could start: the
/// command is not started at all.
#[tokio::test]
async fn a_stop_request_before_the_start_runs_nothing() {
    let scratch = Scratch::new("stopfirst");
    let opts = options(LONG_GRACE, scratch.env());
    for signal in [Signal::TERM, Signal::INT, Signal::HUP, Signal::QUIT] {
        let (sender, mut signals) = Signals::manual();
        assert!(sender.send(Signal::USR1));
        assert!(sender.send(signal));
        let outcome = outcome_of(sh(r#"touch "$OUT""#), &opts, &mut signals, &NEVER).await;
        assert!(
            matches!(outcome, Outcome::NotStarted { signal: s } if s == signal),
            "{outcome:?}"
        );
        assert!(!scratch.file("out").exists(), "{signal}: the command ran");
    }
    // Other signals before the start are dropped: there is no command yet to give them to.
    let (sender, mut signals) = Signals::manual();
    assert!(sender.send(Signal::USR1));
    let outcome = outcome_of(sh(r#"touch "$OUT""#), &opts, &mut signals, &NEVER).await;
    assert!(matches!(outcome, Outcome::Exited(0)), "{outcome:?}");
    assert!(scratch.file("out").exists());
}
