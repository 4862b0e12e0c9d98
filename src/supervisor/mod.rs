/*!
The execute supervisor: spawn one child, forward signals, reap, stop escalation, exit status.

It knows nothing about Consul: [`supervise`] runs a [`ChildCommand`] for as long as a
`lock_lost` future has not fired, and says how it ended ([`Outcome`]).

The shape follows watchexec's supervisor and tini, as a small state machine:

```text
pending ──spawn──▶ running ──TERM/INT received, lock lost, or child exited──▶ stopping ──▶ finished
   │                                                                (TERM group, grace, KILL group)
   └─ spawn failed (126/127), or lock already lost: finished without a child
```

* The child leads its own process group, so signals and stops reach its whole tree (shell
  children included) through `killpg`. When stdin is the terminal and we are in its foreground
  group, the child's group becomes the foreground group (so it can read the terminal, and
  Ctrl-C reaches it once, from the tty, not twice).
* "Finished" means the child's whole *group* is gone, not just the child: the caller releases
  the lock right after, and a worker that outlives the release would run without the lock.
* Exactly one place in the process waits for children: the reaper (see `reaper.rs`).
* [`Signals::install`] must run before anything is spawned (see [`Signals`]).
*/

mod child;
mod reaper;
mod signals;
#[cfg(test)]
mod tests;

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::time::Instant;

pub use signals::{Signal, SignalSender, Signals};

/// Grace between the polite stop signal and SIGKILL when [`SupervisorOptions`] is defaulted.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// How often the supervisor checks whether the child's process group is gone while stopping it.
pub const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long to wait for the group to disappear after SIGKILL before giving up on it. SIGKILL
/// cannot be ignored, so this only matters for processes stuck in uninterruptible sleep or
/// zombies whose new parent (not us: we are neither PID 1 nor a subreaper) is slow to reap.
pub const AFTER_KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildCommand {
    /// One string run by `/bin/sh -c STRING` (the consullock 4.x `execute KEY "command"` form).
    Shell(String),
    /// A program run directly, no shell: its arguments reach it untouched.
    Exec {
        /// Program name (searched in `PATH` when it contains no `/`) or path.
        program: OsString,
        /// Arguments after the program name.
        args: Vec<OsString>,
    },
}

/// How to run the child.
#[derive(Clone, Debug)]
pub struct SupervisorOptions {
    /// Time between the stop signal (SIGTERM) to the child's group and SIGKILL to the group.
    pub kill_grace: Duration,
    /// Variables added to (or replacing in) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            kill_grace: DEFAULT_KILL_GRACE,
            env: Vec::new(),
        }
    }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(Signal),
}

impl ChildStatus {
    /// The shell convention: the exit code, or 128 + N for death by signal N.
    pub fn code(self) -> i32 {
        match self {
            ChildStatus::Exited(code) => code,
            ChildStatus::Signaled(signal) => 128 + signal.as_raw(),
        }
    }
}

/// How [`supervise`] ended.
#[derive(Debug)]
pub enum Outcome {
    /// The child exited by itself with this code (forwarded signals it handled included).
    Exited(i32),
    /// The child died of this signal; the caller exits 128 + N.
    Signaled(Signal),
    /// The child could not be started: `code` is 127 when the program was not found, 126
    /// otherwise (not executable, permission denied, ...). The shell form never gives this:
    /// `sh` itself exits 126/127, reported as [`Outcome::Exited`].
    SpawnFailed {
        /// 126 or 127, the POSIX shell convention.
        code: i32,
        /// What the operating system said.
        error: io::Error,
    },
    /// The `lock_lost` future fired and the child's whole group was stopped. `child` is how the
    /// child ended (`None`: the lock was lost before it was started, so it never ran).
    LockLost {
        /// How the child ended.
        child: Option<ChildStatus>,
    },
}

impl From<ChildStatus> for Outcome {
    fn from(status: ChildStatus) -> Outcome {
        match status {
            ChildStatus::Exited(code) => Outcome::Exited(code),
            ChildStatus::Signaled(signal) => Outcome::Signaled(signal),
        }
    }
}

/// Run `command` until it and its whole process group are gone, forwarding signals from
/// `signals`, and stop it as soon as `lock_lost` resolves.
///
/// * Forwarded signals ([`Signal::FORWARDED`]) go to the child's group once each. TERM and INT
///   also start the stop: SIGKILL to the group if it is still there after `kill_grace`.
/// * `lock_lost` resolving: SIGTERM to the group at once, SIGKILL after `kill_grace`; returns
///   [`Outcome::LockLost`] once the group is gone. A lock lost while leftovers of an exited
///   child are being stopped also gives `LockLost`.
/// * The child exiting by itself: what is left of its group is stopped (TERM, grace, KILL)
///   before this returns.
///
/// Call it on the thread that lives as long as the supervision (the caller's main thread with
/// a current-thread runtime): the child's PR_SET_PDEATHSIG fires when the thread that spawned it
/// exits. Dropping the returned future before it completes SIGKILLs the child's group.
pub async fn supervise(
    command: ChildCommand,
    options: &SupervisorOptions,
    signals: &mut Signals,
    lock_lost: impl Future<Output = ()>,
) -> Outcome {
    let mut lock_lost = pin!(lock_lost);

    // Pending: never start a child without the lock.
    tokio::select! {
        biased;
        () = &mut lock_lost => return Outcome::LockLost { child: None },
        () = std::future::ready(()) => {}
    }

    let mut terminal = child::Terminal::probe();
    let mut cmd = child::build(&command, &options.env);
    child::prepare(&mut cmd, child::Group::Own, terminal.take_for_child());
    let spawned = match reaper::spawn(&mut cmd) {
        Ok(spawned) => spawned,
        Err(error) => {
            // The child may have run its pre_exec (and taken the terminal) before exec failed.
            terminal.take_back();
            let code = if error.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Outcome::SpawnFailed { code, error };
        }
    };
    let pgid = spawned.pid;
    let mut guard = KillGroupOnDrop(Some(pgid));
    let outcome = run(pgid, spawned.exit, options.kill_grace, signals, lock_lost).await;
    guard.0 = None;
    terminal.take_back();
    outcome
}

/// The running → stopping → finished part of [`supervise`].
async fn run(
    pgid: i32,
    exit: tokio::sync::oneshot::Receiver<ChildStatus>,
    kill_grace: Duration,
    signals: &mut Signals,
    mut lock_lost: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Outcome {
    let mut exit = Some(exit);
    // Set once the main child is reaped.
    let mut status: Option<ChildStatus> = None;
    let mut lost = false;
    // Stopping: when SIGKILL is due (armed by the first stop request, kept thereafter).
    let mut kill_at: Option<Instant> = None;
    // Set once SIGKILL was sent.
    let mut killed_at: Option<Instant> = None;
    let mut poll = tokio::time::interval(GROUP_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if let Some(status) = status {
            // Finished once nothing of the group is left, not when the main child is: a
            // worker outliving us would run after the caller released the lock.
            let gone = !child::group_alive(pgid);
            let given_up = killed_at.is_some_and(|at| at.elapsed() >= AFTER_KILL_TIMEOUT);
            if given_up && !gone {
                tracing::warn!(
                    "process group {pgid} still exists {AFTER_KILL_TIMEOUT:?} after SIGKILL"
                );
            }
            if gone || given_up {
                return if lost {
                    Outcome::LockLost {
                        child: Some(status),
                    }
                } else {
                    status.into()
                };
            }
        }
        let kill_due = async {
            match kill_at {
                Some(at) if killed_at.is_none() => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            reaped = async { exit.as_mut().expect("guarded by the select condition").await },
                if exit.is_some() =>
            {
                exit = None;
                // The registry keeps every sender until it sends, so an error means the
                // registry itself is gone: report the child as lost to SIGKILL, the safe side.
                let reaped = reaped.unwrap_or(ChildStatus::Signaled(Signal::KILL));
                status = Some(reaped);
                if kill_at.is_none() {
                    // The child exited by itself: stop what is left of its group.
                    if send_to_group(pgid, Signal::TERM) {
                        kill_at = Some(Instant::now() + kill_grace);
                    }
                }
            }
            signal = signals.recv() => {
                send_to_group(pgid, signal);
                if signal.is_stop_request() && kill_at.is_none() {
                    kill_at = Some(Instant::now() + kill_grace);
                }
            }
            () = &mut lock_lost, if !lost => {
                lost = true;
                tracing::debug!("lock lost: stopping process group {pgid}");
                send_to_group(pgid, Signal::TERM);
                let at = Instant::now() + kill_grace;
                kill_at = Some(kill_at.map_or(at, |earlier| earlier.min(at)));
            }
            () = kill_due => {
                send_to_group(pgid, Signal::KILL);
                killed_at = Some(Instant::now());
            }
            _ = poll.tick(), if status.is_some() => {}
        }
    }
}

/// Send `signal` to process group `pgid`; false when the group no longer exists.
fn send_to_group(pgid: i32, signal: Signal) -> bool {
    let Some(sig) = signal.to_nix() else {
        tracing::warn!("not forwarding unknown {signal}");
        return true;
    };
    match nix::sys::signal::killpg(Pid::from_raw(pgid), sig) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!("sending {signal} to process group {pgid}: {e}");
            true
        }
    }
}

/// SIGKILLs the child's group if [`supervise`] is dropped before it finished, so a cancelled
/// supervision never leaves a child running without its lock.
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            send_to_group(pgid, Signal::KILL);
        }
    }
}

/// Run a hook program (e.g. `--on-before-lock`) to completion and return how it ended.
///
/// It inherits stdin/stdout/stderr and the environment, stays in consullock's process group,
/// gets PR_SET_PDEATHSIG like the main child, and is reaped by the same process-wide reaper:
/// never wait for children any other way once the supervisor is in use.
pub async fn run_hook(program: &OsStr, args: &[&OsStr]) -> io::Result<ChildStatus> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    child::prepare(&mut cmd, child::Group::Ours, false);
    let spawned = reaper::spawn(&mut cmd)?;
    spawned
        .exit
        .await
        .map_err(|_| io::Error::other("the child reaper stopped"))
}

/// Make this process a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`): orphaned descendants
/// are re-parented to us instead of to init, and reaped by the supervisor's reaper. For
/// `--subreaper` when not PID 1 (as tini `-s`).
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    reaper::start()
}

/// Whether this process is PID 1 of its PID namespace (a container entrypoint): it must then
/// handle signals explicitly (the kernel gives PID 1 no default actions) and reap every zombie.
pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}
