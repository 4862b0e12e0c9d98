//! Building the child's `Command`: process group, the `pre_exec` set-up, and the terminal.

use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::prctl;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal as NixSignal, pthread_sigmask,
    sigaction, sigprocmask,
};
use nix::unistd::{getpgrp, getpid, getppid, isatty, tcgetpgrp, tcsetpgrp};

use super::ChildCommand;
use super::signals::ignored_by_us;

/// How the child is to be set up between fork and exec.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// A new process group led by the child (the supervised command).
    Own,
    /// Stay in consullock's group (hooks: short, and Ctrl-C should reach them with us).
    Ours,
}

/// Build the `Command` for `command` with `env` added to the inherited environment.
pub(crate) fn build(command: &ChildCommand, env: &[(OsString, OsString)]) -> Command {
    let mut cmd = match command {
        ChildCommand::Shell(script) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(script);
            cmd
        }
        ChildCommand::Exec { program, args } => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    };
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Add the process group and the `pre_exec` set-up to `cmd`.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. So
/// the spawn must happen on a thread that lives as long as the supervisor: the caller's main
/// thread driving a current-thread runtime is such a thread (a `spawn_blocking` thread or a
/// multi-thread runtime worker is not).
///
/// `keeper_fd` (or -1 for none) is the keeper's pipe: the child writes its pid into it before
/// exec (see `keeper.rs`). With `new_pid_namespace`, the child's own children start in a new
/// PID namespace (see `contain.rs`).
pub(crate) fn prepare(
    cmd: &mut Command,
    group: Group,
    take_terminal: bool,
    keeper_fd: i32,
    new_pid_namespace: bool,
) {
    if group == Group::Own {
        // std calls setpgid(0, 0) in the child before running the pre_exec closure below.
        cmd.process_group(0);
    }
    let parent = getpid();
    let reset_to_default = ignored_by_us();
    let take_terminal = take_terminal && group == Group::Own;
    let setup = move || -> io::Result<()> {
        // Everything here runs in the forked child of a multi-threaded process: only
        // async-signal-safe calls (thin syscall wrappers), no allocation, no locks.
        prctl::set_pdeathsig(NixSignal::SIGKILL)?;
        // The race PDEATHSIG leaves open: the parent may have died between fork and prctl, in
        // which case we were already re-parented and no signal will ever come.
        if getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // Before the command runs anything: from here on, consullock dying takes the whole
        // group with it.
        super::keeper::report_pid(keeper_fd)?;
        if new_pid_namespace {
            // SAFETY: plain syscall with a flag argument.
            // A mount namespace too, where the init mounts the new namespace's own /proc.
            if unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if take_terminal {
            // As tini's isolate_child: done in the child so it owns the terminal before it can
            // read it. We are a background group now; tcsetpgrp from a background group raises
            // SIGTTOU unless it is blocked. The mask is cleared below.
            let mut ttou = SigSet::empty();
            ttou.add(NixSignal::SIGTTOU);
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&ttou), None)?;
            // SAFETY: fd 0 is open for the whole call (the parent checked it is a tty and
            // std's stdio set-up keeps fd 0 as inherited); the borrow ends with the call.
            let stdin = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
            // ENOTTY/ENXIO/EPERM only mean we cannot take the terminal: run anyway.
            let _ = tcsetpgrp(stdin, getpgrp());
        }
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        for &sig in &reset_to_default {
            // SAFETY: installs SIG_DFL, no handler code runs; ignored dispositions would
            // otherwise survive exec.
            unsafe { sigaction(sig, &default) }?;
        }
        // std already empties the mask before pre_exec; doing it here too keeps the guarantee
        // explicit and covers the SIGTTOU block above.
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid, getpid, write,
    // unshare, sigprocmask, tcsetpgrp, getpgrp, sigaction) on values captured by move; it allocates nothing
    // (`reset_to_default` was allocated in the parent and is only read) and takes no lock.
    unsafe {
        cmd.pre_exec(setup);
    }
}

/// The controlling terminal on stdin, when consullock is in its foreground process group.
pub(crate) struct Terminal {
    handed_over: bool,
}

impl Terminal {
    /// Whether the child should be made the terminal's foreground group: stdin is a tty and we
    /// are in its foreground group (not e.g. `consullock ... &` from an interactive shell).
    pub(crate) fn probe() -> Terminal {
        let stdin = std::io::stdin();
        let ours =
            isatty(&stdin).unwrap_or(false) && tcgetpgrp(&stdin).is_ok_and(|fg| fg == getpgrp());
        Terminal { handed_over: ours }
    }

    pub(crate) fn take_for_child(&self) -> bool {
        self.handed_over
    }

    /// Make our own group the foreground group again, after the child's group is gone.
    pub(crate) fn take_back(&mut self) {
        if !std::mem::take(&mut self.handed_over) {
            return;
        }
        // We are a background group: block SIGTTOU in this thread (the kernel checks the
        // calling thread's mask) so tcsetpgrp is allowed instead of stopping us.
        let mut ttou = SigSet::empty();
        ttou.add(NixSignal::SIGTTOU);
        let mut old = SigSet::empty();
        if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old)).is_err() {
            return;
        }
        if let Err(e) = tcsetpgrp(std::io::stdin(), getpgrp()) {
            tracing::debug!("could not take the terminal back: {e}");
        }
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
}
