//! Processes the tests run: a running `consullock` (or any command) with its output collected as
//! it comes, scratch directories, and what `/proc` says about other processes.
//!
//! Tests wait on handshakes (a line, a file) polled with deadlines, never on sleeps.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::wait_until;

/// Acquiring and starting a child; generous because cases run in parallel on small machines.
pub(crate) const HANDSHAKE: Duration = Duration::from_secs(30);
/// How long a run that should end by itself may take.
pub(crate) const EXIT: Duration = Duration::from_secs(30);
/// Stdout/stderr readers finish once every writer is gone; how long that may lag the exit.
pub(crate) const PIPE_CLOSE: Duration = Duration::from_secs(5);

/// Runs `command` to its end with stdin from /dev/null, collecting its output.
pub(crate) fn run(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

/// The exit code of a finished run (128+N for death by signal N).
pub(crate) fn code(output: &Output) -> i32 {
    exit_code(output.status)
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().expect("exited or signaled"))
}

/// A temporary directory for one case, removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("consullock-test-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The file's text, or "" while it does not exist.
    pub(crate) fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `consullock` (or wrapper) with its stdout and stderr collected as they come.
pub(crate) struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    code: Option<i32>,
    /// How much of stderr [`Running::wait_stderr`] has looked at already.
    stderr_seen: usize,
}

fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, handle)
}

impl Running {
    /// Spawns `command` with stdout and stderr piped; stdin is piped when `stdin` is true and
    /// /dev/null otherwise (never a terminal the test runner may have).
    pub(crate) fn start(mut command: Command, stdin: bool) -> Running {
        command
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Running::spawn(command)
    }

    /// Spawns `command` as it is set up, collecting stdout and stderr when they are piped.
    pub(crate) fn spawn(mut command: Command) -> Running {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let mut readers = Vec::new();
        let stdout = match child.stdout.take() {
            Some(pipe) => {
                let (text, reader) = collect(pipe);
                readers.push(reader);
                text
            }
            None => Arc::default(),
        };
        let stderr = match child.stderr.take() {
            Some(pipe) => {
                let (text, reader) = collect(pipe);
                readers.push(reader);
                text
            }
            None => Arc::default(),
        };
        Running {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
            code: None,
            stderr_seen: 0,
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    pub(crate) fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).unwrap_or_else(|e| panic!("{signal}: {e}"));
    }

    /// Waits for the child's `ready <pid>` line (print_signals) and returns that pid.
    pub(crate) fn ready_pid(&mut self) -> i32 {
        let mut pid = None;
        wait_until(HANDSHAKE, "the child's ready line", || {
            self.assert_running("before its child was ready");
            pid = self.stdout().lines().find_map(|line| {
                line.strip_prefix("ready ")
                    .and_then(|p| p.trim().parse().ok())
            });
            pid.is_some()
        });
        pid.expect("checked")
    }

    /// Waits for the first whole line on stdout, polling every millisecond, and returns when
    /// it was seen (for hand-over times).
    pub(crate) fn first_stdout_line_at(&mut self) -> std::time::Instant {
        let deadline = std::time::Instant::now() + HANDSHAKE;
        loop {
            if self.stdout().contains('\n') {
                return std::time::Instant::now();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line on stdout within {HANDSHAKE:?}; stderr {:?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until stdout holds `line` as a whole line.
    pub(crate) fn wait_line(&self, line: &str) {
        wait_until(HANDSHAKE, &format!("the line {line:?} on stdout"), || {
            self.stdout().lines().any(|l| l == line)
        });
    }

    /// Waits until stderr holds a whole line containing `text` (the log at `-v`, say) after
    /// the line the previous call found: called twice with the same text, it waits for a
    /// second such line.
    pub(crate) fn wait_stderr(&mut self, text: &str) {
        wait_until(HANDSHAKE, &format!("{text:?} on stderr"), || {
            let stderr = self.stderr();
            let mut offset = self.stderr_seen;
            for line in stderr[self.stderr_seen..].split_inclusive('\n') {
                offset += line.len();
                if line.ends_with('\n') && line.contains(text) {
                    self.stderr_seen = offset;
                    return true;
                }
            }
            self.assert_running(&format!("before saying {text:?}"));
            false
        });
    }

    pub(crate) fn assert_running(&mut self, when: &str) {
        if let Some(code) = self.try_code() {
            panic!(
                "consullock exited {code} {when}; stdout {:?}, stderr {:?}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    pub(crate) fn try_code(&mut self) -> Option<i32> {
        if self.code.is_none()
            && let Some(status) = self.child.try_wait().expect("try_wait")
        {
            self.code = Some(exit_code(status));
        }
        self.code
    }

    /// Waits up to `deadline` for the exit, then for its pipes to close; returns the exit code
    /// (128+N when it died of signal N).
    pub(crate) fn wait(&mut self, deadline: Duration) -> i32 {
        drop(self.stdin.take());
        let mut code = None;
        wait_until(deadline, "consullock to exit", || {
            code = self.try_code();
            code.is_some()
        });
        wait_until(PIPE_CLOSE, "stdout and stderr to close", || {
            self.readers.iter().all(JoinHandle::is_finished)
        });
        code.expect("checked")
    }

    /// Waits for the exit and returns the code and the whole stderr.
    pub(crate) fn wait_owned(mut self) -> (i32, String) {
        let code = self.wait(EXIT);
        (code, self.stderr())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.try_code().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `pid` exists and is not a zombie (an exited process whose parent has not reaped it
/// yet runs nothing; in containers, init may take a while to reap re-parented zombies).
pub(crate) fn process_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// The children of `pid` (from /proc), with their state letters.
pub(crate) fn children_of(pid: i32) -> Vec<(i32, String)> {
    let entries = std::fs::read_dir("/proc").expect("procfs");
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let mut fields = stat.rsplit_once(") ")?.1.split_whitespace();
            let state = fields.next()?.to_string();
            let ppid: i32 = fields.next()?.parse().ok()?;
            (ppid == pid).then_some((p, state))
        })
        .collect()
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on this machine (see
/// `examples/monotonic.rs`, which children use to stamp the same clock).
pub(crate) fn monotonic_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime");
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

/// Path of an example binary built by cargo next to this test binary (`cargo test` builds
/// them; `target/debug/examples/NAME`).
pub(crate) fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .map(|dir| dir.join("examples").join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the {name} example is not built (looked in the examples/ directory above {}): \
                 `cargo test` builds examples; otherwise run `cargo build --examples`",
                exe.display()
            )
        })
}
