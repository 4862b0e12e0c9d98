//! `--contain`: the command in a PID namespace of its own, so that nothing it starts can outlive
//! it, whatever it does (`setsid`, double forks, daemons).
//!
//! The kernel kills every process of a PID namespace when the namespace's init (its PID 1)
//! dies. So the supervisor does not start the command itself but an init for it, a program
//! that speaks the protocol below (the `consullock` binary does, through a hidden subcommand):
//!
//! ```text
//! consullock ─▶ relay (the direct child, old namespace) ─▶ init (PID 1, new namespace) ─▶ command
//! ```
//!
//! * The supervisor spawns the relay with `unshare(CLONE_NEWPID)` between fork and exec: the
//!   relay itself stays in our namespace (so it is our child as always, signalled and reaped as
//!   any command), and its first child is PID 1 of a new namespace.
//! * The relay, single-threaded right after exec, forks the init at once, then only waits for it
//!   and exits with its status. It ignores the stop signals the supervisor sends its group: they
//!   reach the init too, which handles them.
//! * The init (PID 1) runs the command under [`super::supervise`] as any PID 1 would: it
//!   forwards signals to the command's group, reaps everything, and when the command exits it
//!   stops every process left in the namespace (TERM, grace, KILL) before exiting with the
//!   command's code (128+N for a death by signal N: a PID 1 cannot die of a signal it sends
//!   itself). It dies with the relay (PR_SET_PDEATHSIG), and with it everything in the namespace.
//! * The relay also starts a mount namespace, where the init mounts a /proc of the new PID
//!   namespace over the host's, as `unshare --pid --fork --mount-proc` does: the init finds the
//!   command's processes there (the host's /proc would show it every host process, under host
//!   pids), and the command's `ps` and `kill` see the namespace's own pids. The root is made a
//!   slave mount first: the host's mounts still reach the command, the command's mounts (the
//!   /proc included) stay inside.
//!
//! Creating a PID namespace needs `CAP_SYS_ADMIN` ([`can_contain`]).

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use super::{ChildCommand, Outcome, Signals, SupervisorOptions};
use crate::clock::Deadline;

/// The first argument that makes a program serve as the relay and init (see
/// [`init_request`] and [`relay`]).
pub const INIT_ARGUMENT: &str = "__consullock-contain-init";

/// The relay's command line: `PROGRAM __consullock-contain-init GRACE_MS -- ARGV...`.
pub(crate) fn relay_command(
    init_program: &Path,
    command: &ChildCommand,
    kill_grace: Duration,
) -> ChildCommand {
    let mut args: Vec<OsString> = vec![
        INIT_ARGUMENT.into(),
        kill_grace.as_millis().to_string().into(),
        "--".into(),
    ];
    match command {
        ChildCommand::Shell(script) => {
            args.extend(["/bin/sh".into(), "-c".into(), script.into()]);
        }
        ChildCommand::Exec {
            program,
            args: rest,
        } => {
            args.push(program.clone());
            args.extend(rest.iter().cloned());
        }
    }
    ChildCommand::Exec {
        program: init_program.as_os_str().to_owned(),
        args,
    }
}

/// Whether this process may create PID namespaces (it has `CAP_SYS_ADMIN`).
pub fn can_contain() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// The init's grace and command when `args` (the whole command line, program name first) asks
/// this program to serve as relay and init; `None` for any other command line, `Some(Err)` for
/// a malformed one.
///
/// A program that offers containment checks this first thing in `main`, before it starts any
/// thread, and then calls [`relay`]: the relay forks right away, and a fork is only safe in a
/// single-threaded process.
pub fn init_request(args: &[OsString]) -> Option<Result<(Duration, ChildCommand), String>> {
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new(INIT_ARGUMENT)) {
        return None;
    }
    let grace = args
        .get(2)
        .and_then(|g| g.to_str()?.parse::<u64>().ok())
        .map(Duration::from_millis);
    let command = args.get(4..).filter(|rest| !rest.is_empty());
    Some(match (grace, command) {
        (Some(grace), Some(command)) => Ok((
            grace,
            ChildCommand::Exec {
                program: command[0].clone(),
                args: command[1..].to_vec(),
            },
        )),
        _ => Err(format!("{INIT_ARGUMENT}: bad arguments")),
    })
}

/// The relay: forks the init, which runs `init` and exits with the code it returns, then waits
/// for it and returns its exit code; if the init died of a signal, the relay dies of the same
/// signal. Call it only while the process is single-threaded (see [`init_request`]).
pub fn relay(init: impl FnOnce() -> i32) -> std::io::Result<i32> {
    // SAFETY: the caller guarantees a single-threaded process, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // Die with the relay: the kernel then kills the whole namespace.
        // SAFETY: prctl is a plain syscall.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
        }
        std::process::exit(init());
    }
    // Stop signals reach our whole group; the init handles them (it got its default dispositions
    // at the fork). Ignoring them here keeps the relay until the init is done.
    for signal in super::Signal::FORWARDED {
        // SAFETY: SIG_IGN is not a handler function; the previous disposition is not needed.
        unsafe { libc::signal(signal.as_raw(), libc::SIG_IGN) };
    }
    loop {
        let mut status = 0;
        // SAFETY: plain syscall; `status` is a valid, writable c_int for the duration.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                let signal = libc::WTERMSIG(status);
                // SAFETY: plain syscalls: back to the default action, then the same death.
                unsafe {
                    libc::signal(signal, libc::SIG_DFL);
                    libc::kill(libc::getpid(), signal);
                }
                return Err(std::io::Error::other(format!(
                    "the namespace's init died of signal {signal}"
                )));
            }
            continue;
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

/// The init's work, as PID 1 of the new namespace: runs `command` under [`super::supervise`]
/// (signals forwarded, everything reaped, everything left stopped when it exits).
pub fn run_init(command: ChildCommand, kill_grace: Duration) -> std::io::Result<Outcome> {
    if let Err(e) = mount_own_proc() {
        // Without it, the init reaches the command's group only (see `supervise`); the
        // kernel still kills everything in the namespace when the init exits.
        tracing::warn!("--contain: cannot mount the namespace's own /proc: {e}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = SupervisorOptions {
        kill_grace,
        env: Vec::new(),
        contain: None,
    };
    runtime.block_on(async {
        let mut signals = Signals::install()?;
        let supervised =
            super::supervise(command, &options, &mut signals, &Deadline::unset()).await?;
        Ok(supervised.outcome)
    })
}

/// Mounts a /proc of this PID namespace on /proc, in this mount namespace only.
fn mount_own_proc() -> std::io::Result<()> {
    let mount = |source: &std::ffi::CStr,
                 target: &std::ffi::CStr,
                 kind: Option<&std::ffi::CStr>,
                 flags: libc::c_ulong| {
        // SAFETY: every pointer is a valid NUL-terminated string or null; the data argument is
        // null.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                kind.map_or(std::ptr::null(), std::ffi::CStr::as_ptr),
                flags,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    mount(c"none", c"/", None, libc::MS_REC | libc::MS_SLAVE)?;
    mount(
        c"proc",
        c"/proc",
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
}
