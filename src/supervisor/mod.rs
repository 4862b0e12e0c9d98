/*!
The execute supervisor: spawn one command, forward signals, reap, stop it and everything it
started, report how it ended.

It knows nothing about Consul. [`supervise`] runs a [`ChildCommand`] until the command and every
process it started are gone, and stops them all once a [`Deadline`] passes: the caller moves that
deadline as it learns how long its lock is surely held, and sets it to "now" when the lock is
lost.

The shape follows watchexec's supervisor and tini, as a small state machine:

```text
pending ──spawn──▶ running ──stop signal, or the command exited──▶ stopping ──grace──▶ killed
   │                  │                  (TERM to everything)      (KILL to everything)
   │                  └─ deadline passed: the kill switch stops everything (TERM, grace, KILL)
   │
   └─ a stop signal or a passed deadline before the start, or the spawn failed: finished
      without a command
                                          finished = the command reaped and nothing of it runs
```

* **Everything of the command** is its process group (the command leads one, so `killpg`
  reaches its whole tree), the command itself by pid (in case it left the group), and, when
  consullock is PID 1 or a subreaper, every other descendant (daemons that `setsid`). See
  `processes.rs`. "Finished" means all of it is gone, not just the command: the caller releases
  the lock right after, and a worker outliving the release would run without the lock.
* **The stop on loss does not need this loop**: the kill switch (`kill_switch.rs`) is a thread
  that waits on the deadline alone and sends the signals itself. This loop only waits for the
  processes to be gone.
* **consullock dying or stopping does not orphan the command**: the keeper (`keeper.rs`), a
  tiny process forked before the command, SIGKILLs the command's group when consullock dies,
  SIGKILL included, and when the deadline plus the kill grace passes while consullock is
  stopped (it sees the deadline through a shared page). It does not carry consullock's name, so
  a kill by name spares it. The command itself also gets PR_SET_PDEATHSIG.
* Exactly one place in the process waits for children: the reaper (`reaper.rs`).
* [`Signals::install`] must run before anything is spawned (see [`Signals`]).
*/

mod child;
pub mod contain;
mod keeper;
mod kill_switch;
mod processes;
mod reaper;
mod signals;
#[cfg(test)]
mod tests;

use std::ffi::{OsStr, OsString};
use std::io;
use std::time::Duration;

use tokio::time::Instant;

pub use signals::{Signal, SignalSender, Signals};

use crate::clock::Deadline;
use keeper::Keeper;
use kill_switch::KillSwitch;
use processes::Tree;

/// Grace between the polite stop signal and SIGKILL when [`SupervisorOptions`] is defaulted.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// How often the supervisor looks for what is left of the command while stopping it.
pub const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long to wait for the processes to disappear after SIGKILL before giving up on them.
/// SIGKILL cannot be ignored, so this only matters for processes stuck in uninterruptible sleep.
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
    /// Time between the stop signal (SIGTERM) and SIGKILL.
    pub kill_grace: Duration,
    /// Variables added to (or replacing in) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Run the command in a PID namespace of its own, through this program serving as its
    /// init (see [`contain`]): nothing the command starts can outlive it. Needs
    /// `CAP_SYS_ADMIN`.
    pub contain: Option<std::path::PathBuf>,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            kill_grace: DEFAULT_KILL_GRACE,
            env: Vec::new(),
            contain: None,
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

/// Why a command could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnFailure {
    /// The program does not exist (shells exit 127 for this).
    NotFound,
    /// It exists but cannot be executed: permissions, format, ... (shells exit 126).
    CannotExecute,
}

/// How [`supervise`] ended.
#[derive(Debug)]
pub enum Outcome {
    /// The child exited by itself with this code (forwarded signals it handled included).
    Exited(i32),
    /// The child died of this signal.
    Signaled(Signal),
    /// The child could not be started. The shell form never gives this: `sh` itself exits
    /// 126/127, reported as [`Outcome::Exited`].
    SpawnFailed {
        /// Which kind of failure.
        failure: SpawnFailure,
        /// What the operating system said.
        error: io::Error,
    },
    /// A stop signal (TERM, INT, HUP, QUIT) arrived before the command could be started, so it
    /// was not.
    NotStarted {
        /// The signal.
        signal: Signal,
    },
    /// The deadline passed and the command was stopped. `child` is how the command ended
    /// (`None`: the deadline had passed before it was started, so it never ran).
    LockLost {
        /// How the command ended.
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

/// What [`supervise`] reports besides the outcome.
#[derive(Debug)]
pub struct Supervised {
    /// How it ended.
    pub outcome: Outcome,
    /// Processes of the command that were still running when supervision gave up on them
    /// ([`AFTER_KILL_TIMEOUT`] after SIGKILL): normally none.
    pub survivors: Vec<i32>,
}

/// Runs `command` until it and every process it started are gone, forwarding signals from
/// `signals`, and stops everything of it once `deadline` passes.
///
/// * Forwarded signals ([`Signal::FORWARDED`]) go to the command's group (and the command by
///   pid) once each. TERM and INT also start the stop: SIGKILL to everything of the command if
///   anything of it is still there after `kill_grace`.
/// * `deadline` passing: SIGTERM to everything of the command, SIGKILL after `kill_grace`, from
///   a thread of its own; returns [`Outcome::LockLost`] once everything is gone. A deadline that
///   passes while leftovers of an exited command are being stopped also gives `LockLost`.
/// * The command exiting by itself: what is left of it is stopped (TERM, grace, KILL) before
///   this returns.
/// * A stop signal already received, or a deadline already passed, when this is called: the
///   command is not started.
///
/// Errors are the operating system refusing something basic (a fork, a thread).
///
/// Call it on the thread that lives as long as the supervision (the caller's main thread with a
/// current-thread runtime): the command's PR_SET_PDEATHSIG fires when the thread that spawned it
/// exits. Dropping the returned future before it completes SIGKILLs everything of the command.
pub async fn supervise(
    command: ChildCommand,
    options: &SupervisorOptions,
    signals: &mut Signals,
    deadline: &Deadline,
) -> io::Result<Supervised> {
    let finished = |outcome| {
        Ok(Supervised {
            outcome,
            survivors: Vec::new(),
        })
    };
    // Pending: never start a command without the lock, nor one we were asked not to run.
    if deadline.has_passed() {
        return finished(Outcome::LockLost { child: None });
    }
    if let Some(signal) = signals.pending_stop_request() {
        return finished(Outcome::NotStarted { signal });
    }

    // As PID 1, the kernel kills everything in the namespace when we die: no keeper needed.
    let keeper = if is_pid1() {
        None
    } else {
        Some(Keeper::start(deadline, options.kill_grace)?)
    };
    let mut terminal = child::Terminal::probe();
    let command = match &options.contain {
        Some(init) => contain::relay_command(init, &command, options.kill_grace),
        None => command,
    };
    let mut cmd = child::build(&command, &options.env);
    child::prepare(
        &mut cmd,
        child::Group::Own,
        terminal.take_for_child(),
        keeper.as_ref().map_or(-1, Keeper::report_fd),
        options.contain.is_some(),
    );
    let spawned = match reaper::spawn(&mut cmd) {
        Ok(spawned) => spawned,
        Err(error) => {
            // The child may have run its pre_exec (and taken the terminal) before exec failed.
            terminal.take_back();
            if let Some(keeper) = keeper {
                keeper.stand_down();
            }
            let failure = if error.kind() == io::ErrorKind::NotFound {
                SpawnFailure::NotFound
            } else {
                SpawnFailure::CannotExecute
            };
            return finished(Outcome::SpawnFailed { failure, error });
        }
    };
    let tree = Tree {
        child: spawned.pid,
        supervisor: std::process::id() as i32,
        keeper: keeper.as_ref().map(Keeper::pid),
        descendants: (is_pid1() && processes::proc_is_ours()) || is_subreaper(),
    };
    // Dropped (a cancelled supervision) without standing down: the keeper kills the group.
    let keeper = StandDownOnFinish(keeper);
    let kill_switch = KillSwitch::arm(deadline.clone(), tree, options.kill_grace)?;
    let supervised = Running::new(tree, spawned.exit, options.kill_grace)
        .run(signals, &kill_switch)
        .await;
    kill_switch.disarm();
    if supervised.survivors.is_empty() {
        keeper.finish();
    }
    terminal.take_back();
    Ok(supervised)
}

/// The keeper, told to stand down only when supervision finished with nothing left; any other
/// way out (a panic, a dropped future) lets it kill the command's group.
struct StandDownOnFinish(Option<Keeper>);

impl StandDownOnFinish {
    fn finish(mut self) {
        if let Some(keeper) = self.0.take() {
            keeper.stand_down();
        }
    }
}

impl Drop for StandDownOnFinish {
    fn drop(&mut self) {
        // Dropping the keeper closes its pipe: it kills the group.
        drop(self.0.take());
    }
}

/// Where the running → stopping → killed part of [`supervise`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The command runs and nothing asked it to stop.
    Running,
    /// A stop signal came, or the command exited and what is left of it must go: TERM was sent,
    /// SIGKILL is due at `kill_at`.
    Stopping { kill_at: Instant },
    /// SIGKILL was sent at `at`; waiting for the processes to be gone.
    Killed { at: Instant },
}

/// The state of a running supervision.
struct Running {
    tree: Tree,
    exit: Option<tokio::sync::oneshot::Receiver<ChildStatus>>,
    kill_grace: Duration,
    phase: Phase,
    /// How the command ended, once it is reaped.
    status: Option<ChildStatus>,
    /// The kill switch fired: the lock is lost, and the switch stops everything.
    lost: bool,
}

impl Running {
    fn new(
        tree: Tree,
        exit: tokio::sync::oneshot::Receiver<ChildStatus>,
        kill_grace: Duration,
    ) -> Running {
        Running {
            tree,
            exit: Some(exit),
            kill_grace,
            phase: Phase::Running,
            status: None,
            lost: false,
        }
    }

    /// Starts the stop with `signal` to everything of the command (TERM, or the stop signal
    /// received, which is forwarded once, not doubled with a TERM): SIGKILL is due after the
    /// grace. Later stop signals are forwarded; the SIGKILL stays when it was due.
    fn stop(&mut self, signal: Signal) {
        self.tree.signal_all(signal);
        if self.phase == Phase::Running {
            self.phase = Phase::Stopping {
                kill_at: Instant::now() + self.kill_grace,
            };
        }
    }

    /// What the supervision ended with, if it has ended: the command reaped and nothing of it
    /// running (or given up on after SIGKILL).
    fn finished(&self) -> Option<Supervised> {
        let status = self.status?;
        let left: Vec<i32> = self.tree.others_running().iter().map(|p| p.pid).collect();
        let given_up =
            matches!(self.phase, Phase::Killed { at } if at.elapsed() >= AFTER_KILL_TIMEOUT);
        if !left.is_empty() && !given_up {
            return None;
        }
        if !left.is_empty() {
            tracing::warn!(
                "processes {left:?} of the command still exist {AFTER_KILL_TIMEOUT:?} after SIGKILL"
            );
        }
        let outcome = if self.lost {
            Outcome::LockLost {
                child: Some(status),
            }
        } else {
            status.into()
        };
        Some(Supervised {
            outcome,
            survivors: left,
        })
    }

    async fn run(mut self, signals: &mut Signals, kill_switch: &KillSwitch) -> Supervised {
        let mut poll = tokio::time::interval(GROUP_POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The switch's thread may have fired (and its TERM ended the command) before this
            // loop saw its notification: the command then died of the loss, not by itself.
            if kill_switch.has_fired() {
                self.lost = true;
            }
            if let Some(supervised) = self.finished() {
                return supervised;
            }
            let kill_due = async {
                match self.phase {
                    Phase::Stopping { kill_at } => tokio::time::sleep_until(kill_at).await,
                    _ => std::future::pending().await,
                }
            };
            let waiting_for_leftovers = self.status.is_some() || self.lost;
            tokio::select! {
                reaped = async { self.exit.as_mut().expect("guarded by the select condition").await },
                    if self.exit.is_some() =>
                {
                    self.exit = None;
                    // The registry keeps every sender until it sends, so an error means the
                    // registry itself is gone: report the child as lost to SIGKILL, the safe side.
                    self.status = Some(reaped.unwrap_or(ChildStatus::Signaled(Signal::KILL)));
                    // The command exited by itself: stop what is left of it.
                    if !self.lost && !kill_switch.has_fired() && self.phase == Phase::Running {
                        self.stop(Signal::TERM);
                    }
                }
                signal = signals.recv() => {
                    if signal.is_stop_request() {
                        self.stop(signal);
                    } else {
                        self.tree.signal_command(signal);
                    }
                }
                () = kill_switch.fired(), if !self.lost || self.phase == Phase::Running => {
                    // The switch sends TERM and, after the grace, KILL. This loop only keeps
                    // the same clock, to give up on what SIGKILL cannot end.
                    tracing::debug!("lock lost: the kill switch stops process group {}", self.tree.child);
                    self.lost = true;
                    if self.phase == Phase::Running {
                        self.phase = Phase::Stopping {
                            kill_at: Instant::now() + self.kill_grace,
                        };
                    }
                }
                () = kill_due => {
                    self.tree.signal_all(Signal::KILL);
                    self.phase = Phase::Killed { at: Instant::now() };
                }
                _ = poll.tick(), if waiting_for_leftovers => {}
            }
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
    child::prepare(&mut cmd, child::Group::Ours, false, -1, false);
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

/// Whether this process is a child subreaper (`--subreaper`, or set by whoever started us).
pub fn is_subreaper() -> bool {
    nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}
