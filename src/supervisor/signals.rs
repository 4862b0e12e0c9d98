//! Signal intake: the process-wide handlers for the signals consullock forwards to its child.
//!
//! Why signal-hook's self-pipe iterator on a dedicated thread rather than `tokio::signal::unix`
//! streams: a tokio stream belongs to the runtime that created it, and must be created inside
//! one. The intake has to exist *before* anything else happens (before the lock wait, before
//! the runtime if the caller wants, and as PID 1 where no default action protects us), and the
//! unit tests run many supervisors on many short-lived runtimes in one process. A plain thread
//! that feeds an unbounded channel is independent of any runtime, and `recv` works from any.
//! Both designs coalesce repeated deliveries of one signal that arrive before they are read,
//! exactly as the kernel does for standard signals anyway.

use std::fmt;
use std::io;
use std::sync::OnceLock;
use std::thread;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal as NixSignal, sigaction};
use tokio::sync::mpsc;

/// A signal number.
///
/// A thin wrapper over the raw number so that any signal a child can die of (real-time ones
/// included) can be represented, with constants for the ones consullock deals with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal(i32);

impl Signal {
    /// SIGTERM: forwarded, and starts the stop escalation.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// SIGINT: forwarded, and starts the stop escalation.
    pub const INT: Signal = Signal(libc::SIGINT);
    /// SIGHUP: forwarded.
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// SIGQUIT: forwarded.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// SIGUSR1: forwarded.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// SIGUSR2: forwarded.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// SIGWINCH: forwarded (terminal size changes).
    pub const WINCH: Signal = Signal(libc::SIGWINCH);
    /// SIGKILL: the end of every stop escalation; never received.
    pub const KILL: Signal = Signal(libc::SIGKILL);

    /// The signals [`Signals::install`] takes over and the supervisor forwards to the child's
    /// process group.
    pub const FORWARDED: [Signal; 7] = [
        Signal::TERM,
        Signal::INT,
        Signal::HUP,
        Signal::QUIT,
        Signal::USR1,
        Signal::USR2,
        Signal::WINCH,
    ];

    /// The signal with this number (not checked: the kernel rejects unknown numbers on use).
    pub const fn from_raw(number: i32) -> Signal {
        Signal(number)
    }

    /// The signal number, e.g. 15 for SIGTERM; a process killed by it exits 128 + this.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The conventional name, e.g. `"SIGTERM"`, when the number is a standard signal.
    pub fn name(self) -> Option<&'static str> {
        self.to_nix().map(NixSignal::as_str)
    }

    /// Whether receiving this signal means "stop": it starts the TERM → grace → KILL escalation.
    pub fn is_stop_request(self) -> bool {
        self == Signal::TERM || self == Signal::INT
    }

    /// Whether receiving this signal before the command runs means "do not run it": TERM, INT,
    /// HUP and QUIT end a wait for the lock, and prevent a start.
    pub fn ends_a_wait(self) -> bool {
        [Signal::TERM, Signal::INT, Signal::HUP, Signal::QUIT].contains(&self)
    }

    pub(crate) fn to_nix(self) -> Option<NixSignal> {
        NixSignal::try_from(self.0).ok()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// The process-wide intake of the forwarded signals (TERM, INT, HUP, QUIT, USR1, USR2, WINCH).
///
/// Create it with [`Signals::install`] at program start, before waiting for a lock and before
/// spawning anything: from then on none of those signals has its default action, so a SIGTERM
/// that arrives early is queued here instead of killing consullock and orphaning a child.
/// While waiting for the lock, the caller reads [`Signals::recv`] itself (TERM/INT end the
/// wait); during [`supervise`](super::supervise) the supervisor reads it and forwards.
///
/// Dropping it stops the intake thread, but the handlers stay installed for the life of the
/// process (signal-hook cannot restore the default action): the signals are then ignored.
pub struct Signals {
    rx: mpsc::UnboundedReceiver<Signal>,
    handle: Option<signal_hook::iterator::Handle>,
}

/// Feeds a [`Signals`] made by [`Signals::manual`].
#[derive(Clone)]
pub struct SignalSender(mpsc::UnboundedSender<Signal>);

impl SignalSender {
    /// Queue `signal` as if the process had received it. Returns false when the [`Signals`] is
    /// gone.
    pub fn send(&self, signal: Signal) -> bool {
        self.0.send(signal).is_ok()
    }
}

impl Signals {
    /// Install the handlers for [`Signal::FORWARDED`], start the process-wide child reaper, and
    /// ignore SIGTTIN/SIGTTOU for consullock itself (as tini does: after handing the terminal to
    /// the child, consullock is a background process group and must not be stopped for touching
    /// the terminal; children get the default back before exec).
    ///
    /// Call it once, early, on the main thread. Installing twice works (each intake gets every
    /// signal) but there is no reason to.
    pub fn install() -> io::Result<Signals> {
        super::reaper::start()?;
        ignore_tty_stop_signals()?;
        let raw: Vec<i32> = Signal::FORWARDED.iter().map(|s| s.as_raw()).collect();
        let mut intake = signal_hook::iterator::Signals::new(raw)?;
        let handle = intake.handle();
        let (tx, rx) = mpsc::unbounded_channel();
        thread::Builder::new()
            .name("consullock-signals".into())
            .spawn(move || {
                for raw in intake.forever() {
                    if tx.send(Signal(raw)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Signals {
            rx,
            handle: Some(handle),
        })
    }

    /// An intake fed by the caller instead of the operating system: for tests, and for programs
    /// that embed the supervisor and own signal handling themselves. Installs no handler.
    pub fn manual() -> (SignalSender, Signals) {
        let (tx, rx) = mpsc::unbounded_channel();
        (SignalSender(tx), Signals { rx, handle: None })
    }

    /// Drops every signal received and not read yet.
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// A stop request (TERM, INT, HUP, QUIT) received and not read yet, if any; every other
    /// signal received so far is dropped (there is no command yet to forward it to).
    pub fn pending_stop_request(&mut self) -> Option<Signal> {
        let mut stop = None;
        while let Ok(signal) = self.rx.try_recv() {
            if stop.is_none() && signal.ends_a_wait() {
                stop = Some(signal);
            }
        }
        stop
    }

    /// The next stop request received (TERM, INT, HUP, QUIT); other signals are dropped.
    pub async fn next_stop_request(&mut self) -> Signal {
        loop {
            let signal = self.recv().await;
            if signal.is_stop_request() {
                return signal;
            }
        }
    }

    /// The next received signal, in arrival order. Pends forever when no signal can come any
    /// more (the intake thread ended or every [`SignalSender`] was dropped).
    pub async fn recv(&mut self) -> Signal {
        match self.rx.recv().await {
            Some(signal) => signal,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.close();
        }
    }
}

/// SIGTTIN/SIGTTOU that consullock set to SIG_IGN and that the child must get back as SIG_DFL:
/// an ignored disposition, unlike a handler, survives exec. Signals that were already ignored
/// when we started are left ignored, as our own parent wanted.
static TTY_STOP_IGNORED: OnceLock<Vec<NixSignal>> = OnceLock::new();

fn ignore_tty_stop_signals() -> io::Result<()> {
    let mut result = Ok(());
    TTY_STOP_IGNORED.get_or_init(|| {
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        let mut changed = Vec::new();
        for sig in [NixSignal::SIGTTIN, NixSignal::SIGTTOU] {
            // SAFETY: SIG_IGN is not a handler function, so no async-signal-safety concern;
            // the previous disposition is returned to us and kept.
            match unsafe { sigaction(sig, &ignore) } {
                Ok(old) if !matches!(old.handler(), SigHandler::SigIgn) => changed.push(sig),
                Ok(_) => {}
                Err(e) => result = Err(io::Error::from(e)),
            }
        }
        changed
    });
    result
}

/// The signals a child must reset to SIG_DFL before exec (see [`TTY_STOP_IGNORED`]).
pub(crate) fn ignored_by_us() -> Vec<NixSignal> {
    TTY_STOP_IGNORED.get().cloned().unwrap_or_default()
}
