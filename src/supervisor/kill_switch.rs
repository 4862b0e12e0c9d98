//! The kill switch: a thread that stops the command when the lock's deadline passes, needing
//! nothing but the clock.
//!
//! Everything else of consullock (renewals, the lock watch, the supervisor loop) runs on one
//! async runtime thread, and anything can stall a thread: a blocked write, a slow DNS lookup in a
//! library, a bug. The rule "the command is dead before anyone else can hold the lock" must not
//! depend on any of it. So the stop on loss is done here, on a thread that only waits on the
//! [`Deadline`] (on `CLOCK_BOOTTIME`), then sends SIGTERM to everything of the command, waits
//! the grace on the same clock, and sends SIGKILL. It logs nothing, takes no lock that anything
//! slow holds, and allocates only to scan `/proc`.
//!
//! The supervisor loop learns that the switch fired through a [`Notify`], and then only waits
//! for the processes to be gone: the signals of a loss are sent here and nowhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::processes::Tree;
use super::signals::Signal;
use crate::clock::{self, Deadline};

/// After SIGKILL, how often what is left is looked for and killed again (a process of the
/// command that was forking while the group was killed).
const KILL_AGAIN_INTERVAL: Duration = Duration::from_millis(50);

/// A running kill switch; dropping it disarms it.
#[derive(Debug)]
pub(crate) struct KillSwitch {
    shared: Arc<Shared>,
    deadline: Deadline,
}

#[derive(Debug, Default)]
struct Shared {
    disarmed: AtomicBool,
    fired: AtomicBool,
    fired_notify: Notify,
}

impl KillSwitch {
    /// Starts the thread: once `deadline` passes, SIGTERM to `tree`, SIGKILL after `grace`.
    pub(crate) fn arm(
        deadline: Deadline,
        tree: Tree,
        grace: Duration,
    ) -> std::io::Result<KillSwitch> {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread_deadline = deadline.clone();
        std::thread::Builder::new()
            .name("consullock-kill-switch".into())
            .spawn(move || run(&thread_deadline, &tree, grace, &thread_shared))?;
        Ok(KillSwitch { shared, deadline })
    }

    /// Whether the switch has fired.
    pub(crate) fn has_fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Resolves once the switch has fired.
    pub(crate) async fn fired(&self) {
        loop {
            let notified = self.shared.fired_notify.notified();
            if self.shared.fired.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Stops the thread (within [`clock::MAX_SLEEP`]), fired or not.
    pub(crate) fn disarm(&self) {
        self.shared.disarmed.store(true, Ordering::SeqCst);
        self.deadline.wake();
    }
}

impl Drop for KillSwitch {
    fn drop(&mut self) {
        self.disarm();
    }
}

fn run(deadline: &Deadline, tree: &Tree, grace: Duration, shared: &Shared) {
    let disarmed = || shared.disarmed.load(Ordering::SeqCst);
    if !deadline.wait_blocking(disarmed) {
        return;
    }
    shared.fired.store(true, Ordering::SeqCst);
    shared.fired_notify.notify_one();
    tree.signal_all(Signal::TERM);
    if !clock::sleep_until_blocking(clock::now() + grace, disarmed) {
        return;
    }
    loop {
        tree.signal_all(Signal::KILL);
        if !clock::sleep_until_blocking(clock::now() + KILL_AGAIN_INTERVAL, disarmed) {
            return;
        }
    }
}
