//! The one place in the process that waits for children.
//!
//! A single reaper thread loops `waitpid(-1, WNOHANG)` on every SIGCHLD (through a self-pipe)
//! and on a periodic backstop tick, and hands each status to whoever registered that pid (the
//! supervised child, hooks). Statuses nobody registered are orphans adopted by us as PID 1 or
//! subreaper: reaping them is the whole point, the status is dropped.
//!
//! Why a thread and not a tokio task: the reaper must outlive any one runtime (unit tests run
//! many) and must run whatever the caller's runtime is doing.
//!
//! Why a mutex around spawn: `std::process::Command::spawn` itself calls `waitpid(pid)` on the
//! child when exec fails (and panics if that wait fails). The spawn therefore happens while
//! holding [`REGISTRY`], which the reaper also holds for each pass: it can neither steal that
//! status nor see a child exit before the child's pid is registered.
//!
//! Consequence for the rest of the process: once the reaper runs, nothing else may wait for
//! children (no `Command::status`/`output`/`wait`, no `tokio::process`): spawn through
//! [`spawn`] or [`run_hook`](super::run_hook).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

use super::ChildStatus;
use super::signals::Signal;

/// How often the reaper runs a pass without any SIGCHLD: a backstop (tini uses 1 s) in case a
/// wake-up is ever missed. Coalesced SIGCHLDs need no backstop, since each pass drains every
/// exited child.
pub(crate) const REAP_BACKSTOP_INTERVAL: Duration = Duration::from_secs(1);

struct Registry {
    started: bool,
    waiters: BTreeMap<i32, oneshot::Sender<ChildStatus>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    started: false,
    waiters: BTreeMap::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock cannot leave the map half-updated in a way that matters:
    // keep going rather than poison every later spawn.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Start the reaper thread if it is not running yet.
pub(crate) fn start() -> io::Result<()> {
    start_locked(&mut registry())
}

fn start_locked(registry: &mut Registry) -> io::Result<()> {
    if registry.started {
        return Ok(());
    }
    let (wake_read, wake_write) = UnixStream::pair()?;
    wake_read.set_read_timeout(Some(REAP_BACKSTOP_INTERVAL))?;
    signal_hook::low_level::pipe::register(libc::SIGCHLD, wake_write)?;
    thread::Builder::new()
        .name("consullock-reaper".into())
        .spawn(move || reap_loop(wake_read))?;
    registry.started = true;
    Ok(())
}

/// A registered child: its pid and where its exit status will arrive.
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) exit: oneshot::Receiver<ChildStatus>,
    /// The write end of the child's stdin when the command asked for a pipe.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) stdin: Option<std::process::ChildStdin>,
}

/// Spawn `command` and register its pid with the reaper, atomically with respect to reaping.
pub(crate) fn spawn(command: &mut Command) -> io::Result<Spawned> {
    let mut registry = registry();
    start_locked(&mut registry)?;
    // The lock is held across fork/exec: see the module docs.
    let mut child = command.spawn()?;
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    let stdin = child.stdin.take();
    // Dropping `child` neither waits nor kills: the reaper owns its status from here.
    drop(child);
    let (tx, exit) = oneshot::channel();
    registry.waiters.insert(pid, tx);
    Ok(Spawned { pid, exit, stdin })
}

/// Sends `signal` to `pid` if it is a child spawned through [`spawn`] that has not been reaped
/// yet, and is no longer in process group `reached` (which the caller has just signalled, so
/// that it gets the signal once). Reaping happens under the same lock, so the pid cannot belong
/// to another process by then. Returns whether it was sent.
pub(crate) fn signal_unreaped(pid: i32, signal: Signal, reached: i32) -> bool {
    let registry = registry();
    if !registry.waiters.contains_key(&pid) {
        return false;
    }
    let group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| super::processes::parse_stat(pid, &stat))
        .map(|p| p.pgrp);
    if group == Some(reached) {
        return false;
    }
    // SAFETY: plain syscall with integer arguments.
    unsafe { libc::kill(pid, signal.as_raw()) == 0 }
}

fn reap_loop(mut wake: UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        reap_all();
        match wake.read(&mut buf) {
            Ok(0) => {
                // The write end is gone (cannot happen while the handler is registered); fall
                // back to the backstop tick alone rather than spin.
                thread::sleep(REAP_BACKSTOP_INTERVAL);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("reaper wake-up pipe failed ({e}); reaping on the backstop tick");
                thread::sleep(REAP_BACKSTOP_INTERVAL);
            }
        }
    }
}

/// One pass: collect every child that has exited, dispatch, stop when none is left.
fn reap_all() {
    let mut registry = registry();
    loop {
        let mut raw_status = 0;
        // SAFETY: plain syscall; `raw_status` is a valid, writable c_int for the duration.
        let pid = unsafe { libc::waitpid(-1, &mut raw_status, libc::WNOHANG) };
        if pid == 0 {
            return; // children exist, none has exited
        }
        if pid < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => return, // ECHILD: no children at all
            }
        }
        let status = if libc::WIFEXITED(raw_status) {
            ChildStatus::Exited(libc::WEXITSTATUS(raw_status))
        } else if libc::WIFSIGNALED(raw_status) {
            ChildStatus::Signaled(Signal::from_raw(libc::WTERMSIG(raw_status)))
        } else {
            continue; // stopped/continued: not requested (no WUNTRACED), nothing to do
        };
        match registry.waiters.remove(&pid) {
            // A dropped receiver (a cancelled supervise or hook) just means nobody listens.
            Some(waiter) => drop(waiter.send(status)),
            None => tracing::debug!("reaped orphan {pid}: {status:?}"),
        }
    }
}
