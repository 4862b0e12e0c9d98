/*!
The clock that decides when a held lock may already be someone else's, and the deadline on it
that the session engine moves and the supervisor's kill switch watches.

**Which clock.** Consul's servers count a session's TTL and a key's lock-delay in real time,
suspended machines or not. `CLOCK_MONOTONIC` (tokio's `Instant`, `std::time::Instant`) stops
while this machine is suspended: after a resume, a deadline on it would still be ahead while the
session may long have expired and the lock been granted elsewhere. `CLOCK_BOOTTIME` counts the
suspended time too, and never jumps otherwise; every safety deadline is on it.

**Why a deadline cell.** The engine learns, from Consul's answers, until when the lock is surely
still ours; the supervisor must stop the command before then, on a thread of its own that needs
nothing but the clock (no runtime, no network, no stderr). A [`Deadline`] is the one value both
share: the engine moves it forward as news arrives, sets it to "now" when the lock is lost, and
the kill switch waits on it. Neither knows the other.
*/

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Time since boot, suspended time included (`CLOCK_BOOTTIME`); `CLOCK_MONOTONIC` where the
/// kernel lacks it.
pub fn now() -> Duration {
    read(libc::CLOCK_BOOTTIME).unwrap_or_else(|| read(libc::CLOCK_MONOTONIC).unwrap_or_default())
}

fn read(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    (rc == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// Longest a thread waiting on a [`Deadline`] sleeps before it reads the clock again. Condition
/// variables time out on `CLOCK_MONOTONIC`: after a suspend, a waiter notices within this that
/// the deadline has passed.
pub const MAX_SLEEP: Duration = Duration::from_millis(100);

/// A moment on [`now`]'s clock, shared between threads: unset ("no limit"), or a time after
/// which something must happen. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Deadline(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    at: Option<Duration>,
    mirrors: Vec<Arc<dyn Mirror>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("at", &self.at)
            .field("mirrors", &self.mirrors.len())
            .finish()
    }
}

/// A copy of a [`Deadline`] kept where threads cannot reach, such as a page shared with another
/// process. `show` runs on the thread that moves the deadline, under the deadline's lock, so a
/// mirror never holds an older value than the deadline itself; it must not block.
pub(crate) trait Mirror: Send + Sync {
    /// The deadline is now `at`.
    fn show(&self, at: Option<Duration>);
}

impl Deadline {
    /// A deadline that is not set: nothing limits it until [`Deadline::set`].
    pub fn unset() -> Deadline {
        Deadline::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves it to `at` (`None`: no limit) and wakes every waiter.
    pub fn set(&self, at: Option<Duration>) {
        {
            let mut state = self.lock();
            state.at = at;
            for mirror in &state.mirrors {
                mirror.show(at);
            }
        }
        self.0.changed.notify_all();
    }

    /// Makes it pass now: waiters act at once.
    pub fn expire(&self) {
        self.set(Some(Duration::ZERO));
    }

    /// When it passes, if it is set.
    pub fn at(&self) -> Option<Duration> {
        self.lock().at
    }

    /// Whether it has passed.
    pub fn has_passed(&self) -> bool {
        self.at().is_some_and(|at| now() >= at)
    }

    /// Keeps `mirror` showing this deadline, from its current value on, until
    /// [`Deadline::remove_mirror`].
    pub(crate) fn add_mirror(&self, mirror: Arc<dyn Mirror>) {
        let mut state = self.lock();
        mirror.show(state.at);
        state.mirrors.push(mirror);
    }

    /// Stops updating `mirror`.
    pub(crate) fn remove_mirror(&self, mirror: &Arc<dyn Mirror>) {
        self.lock().mirrors.retain(|m| !Arc::ptr_eq(m, mirror));
    }

    /// Blocks the calling thread until the deadline has passed (`true`) or `give_up` says to stop
    /// waiting (`false`, checked at least every [`MAX_SLEEP`] and whenever the deadline moves).
    pub fn wait_blocking(&self, give_up: impl Fn() -> bool) -> bool {
        let mut state = self.lock();
        loop {
            if give_up() {
                return false;
            }
            let now = now();
            let sleep = match state.at {
                Some(deadline) if now >= deadline => return true,
                Some(deadline) => (deadline - now).min(MAX_SLEEP),
                None => MAX_SLEEP,
            };
            state = self
                .0
                .changed
                .wait_timeout(state, sleep)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wakes every thread in [`Deadline::wait_blocking`] so it checks its `give_up` at once.
    pub fn wake(&self) {
        self.0.changed.notify_all();
    }
}

/// Sleeps the calling thread until [`now`] reaches `until`, in steps of at most [`MAX_SLEEP`] so
/// that a suspend is noticed; returns early (`false`) once `give_up` says so.
pub fn sleep_until_blocking(until: Duration, give_up: impl Fn() -> bool) -> bool {
    loop {
        if give_up() {
            return false;
        }
        let now = now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(MAX_SLEEP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    #[test]
    fn boottime_runs_with_real_time() {
        let (a, started) = (now(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = now() - a;
        assert!(elapsed >= Duration::from_millis(20), "{elapsed:?}");
        assert!(elapsed <= started.elapsed() + Duration::from_millis(5));
    }

    #[test]
    fn an_expired_deadline_releases_a_waiter_at_once() {
        let deadline = Deadline::unset();
        let waiter = {
            let deadline = deadline.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let passed = deadline.wait_blocking(|| false);
                (passed, started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        deadline.expire();
        let (passed, waited) = waiter.join().unwrap();
        assert!(passed);
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn a_deadline_passes_by_itself_and_moves_later_when_set_later() {
        let deadline = Deadline::unset();
        deadline.set(Some(now() + Duration::from_millis(50)));
        deadline.set(Some(now() + Duration::from_millis(150)));
        let started = Instant::now();
        assert!(deadline.wait_blocking(|| false));
        assert!(started.elapsed() >= Duration::from_millis(140));
        assert!(deadline.has_passed());
    }

    #[test]
    fn a_mirror_sees_every_value_from_the_current_one_until_removed() {
        struct Seen(Mutex<Vec<Option<Duration>>>);
        impl Mirror for Seen {
            fn show(&self, at: Option<Duration>) {
                self.0.lock().unwrap().push(at);
            }
        }
        let deadline = Deadline::unset();
        deadline.set(Some(Duration::from_secs(1)));
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        let mirror: Arc<dyn Mirror> = seen.clone();
        deadline.add_mirror(mirror.clone());
        deadline.set(Some(Duration::from_secs(2)));
        deadline.set(None);
        deadline.remove_mirror(&mirror);
        deadline.expire();
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                None
            ]
        );
    }

    #[test]
    fn a_waiter_gives_up_when_told() {
        let deadline = Deadline::unset();
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (deadline, stop) = (deadline.clone(), stop.clone());
            std::thread::spawn(move || deadline.wait_blocking(|| stop.load(Ordering::SeqCst)))
        };
        stop.store(true, Ordering::SeqCst);
        deadline.wake();
        assert!(!waiter.join().unwrap());
    }
}
