/*!
The session engine: create a Consul session, keep it alive, notice when it is lost, destroy it.

A lock in Consul is only as alive as the session that holds it, and Consul prefers liveness to
safety: a session can vanish (TTL expiry, a failed node check, an operator's destroy) while its
owner still believes it holds the lock. This module therefore reports loss *pessimistically*:

- a renew that answers 404 means the session is gone, now;
- otherwise, a successful renew restarts the session's TTL, and a renew or a read that shows
  the lock still ours *confirms* the session; both count from the moment the request was
  **sent**. When either has been missing for too long (see [`contact_window`]), the session
  counts as lost, because past that point another holder could be granted the lock before our
  child could be stopped. The two are kept apart because only a renew pushes the TTL back: reads
  that keep succeeding while renewals fail must not keep a TTL-only session alive.

Both clocks are on `CLOCK_BOOTTIME` ([`crate::clock`]), which keeps counting while the machine is
suspended, as Consul's servers do. The moment the window runs out is kept in a [`Deadline`] that
the supervisor's kill switch watches from a thread of its own; a loss seen on the wire sets it to
"now". Loss is also published on a [`tokio::sync::watch`] channel, so any number of tasks can wait
on it.
*/

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{self, Deadline};
use crate::consul::{Behavior, Client, ConsulError, SessionRequest};

/// Consul caps the lock-delay it applies at 60 s, whatever the session asked for.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// Slack kept between "the child is dead" and "another holder could have the lock": clock
/// granularity, scheduling, the time a kill takes.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(1);

/// Pause between retries of a failed renew or watch read.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bound of one renew request; the real deadline is the smaller of this and TTL/3, so a
/// hung request leaves time for retries while the session can still be saved.
pub const MAX_RENEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of the destroy request made on the way out.
pub const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);

/// Consul's servers end a session this many TTLs after its last renewal at the latest
/// (`SessionTTLMultiplier`); the TTL itself is the earliest.
pub const SESSION_TTL_MULTIPLIER: u32 = 2;

/// This machine's host name, for lock values and session names (`None` when unreadable).
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

/// The session name that tells operators who holds `key`: key, host and pid.
pub fn holder_name(key: &str) -> String {
    let host = hostname().unwrap_or_else(|| "unknown-host".into());
    format!("consullock {key} on {host} (pid {})", std::process::id())
}

/// Shortest session TTL Consul accepts (its servers' default `session_ttl_min`).
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// Longest session TTL Consul accepts (`SessionTTLMax`).
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(86400);

/// Session TTL of `execute` and of the library when none is given (renewed every TTL/2).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(15);

/// Lock-delay of `execute` and of the library when none is given: Consul's own default.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// How a session is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Session name: who holds it (key, host, pid), for operators reading `consul` output.
    pub name: String,
    /// Time to live; `None` for a session that never expires by itself.
    pub ttl: Option<Duration>,
    /// Lock-delay Consul applies to the session's keys when it is invalidated.
    pub lock_delay: Duration,
    /// A TTL-only session: no node health check can invalidate it (safety over liveness).
    pub ttl_only: bool,
}

impl SessionSettings {
    /// Settings checked against Consul's bounds: a TTL of 10 s to 24 h (or none), a lock-delay
    /// of at most 60 s. Consul would refuse a TTL outside them, and a zero TTL means "no TTL" to
    /// it, which a clock computed for a TTL must never meet.
    pub fn new(
        name: String,
        ttl: Option<Duration>,
        lock_delay: Duration,
        ttl_only: bool,
    ) -> Result<SessionSettings, String> {
        let settings = SessionSettings {
            name,
            ttl,
            lock_delay,
            ttl_only,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the bounds [`SessionSettings::new`] checks, for settings built field by field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(ttl) = self.ttl
            && !(MIN_SESSION_TTL..=MAX_SESSION_TTL).contains(&ttl)
        {
            return Err(format!(
                "invalid session TTL {ttl:?}: it must be between {MIN_SESSION_TTL:?} and \
                 {MAX_SESSION_TTL:?}, or none"
            ));
        }
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(format!(
                "invalid lock-delay {:?}: it must be at most {MAX_LOCK_DELAY:?}",
                self.lock_delay
            ));
        }
        Ok(())
    }
}

/// Why a session or the lock it holds is no longer ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossReason {
    /// A renew answered 404: the session was destroyed or expired.
    #[error("the session was invalidated (renew answered 404)")]
    SessionInvalidated,
    /// The lock key disappeared.
    #[error("the lock key was deleted")]
    KeyDeleted,
    /// A semaphore's `.lock` no longer lists our session among its holders (deleted,
    /// rewritten, or our entry removed).
    #[error("the semaphore no longer lists our session among its holders")]
    SlotRemoved,
    /// The lock key is held by another session, or by none.
    #[error("the lock key is no longer held by our session (now: {})", .holder.as_deref().unwrap_or("no session"))]
    KeyTakenOver {
        /// The session holding the key now, if any.
        holder: Option<String>,
    },
    /// Consul did not renew or confirm the session for longer than the contact window.
    #[error("consul could not renew or confirm the lock for {silent_for:?} (limit {window:?})")]
    NoContact {
        /// How long since the last confirmation was sent.
        silent_for: Duration,
        /// The contact window.
        window: Duration,
    },
}

/// How long the owner of a session may go without news before it must assume the lock lost,
/// so that a child stopped then (SIGTERM, `kill_grace`, SIGKILL) is dead before anyone else can
/// be granted the lock. Each bound is `None` when nothing limits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactWindow {
    /// Limit on the time since the last successful renew (or the creation): the session cannot
    /// expire before TTL after it (Consul's documented lower bound; its servers wait 2×TTL), and
    /// expiry then sets the lock-delay.
    pub since_renew: Option<Duration>,
    /// Limit on the time since the last confirmation of any kind (renew, acquisition, or a
    /// consistent read showing the lock still ours): the session may be invalidated at any
    /// moment after it (a failed node check, an operator's destroy, `consullock unlock`), and
    /// then only the lock-delay protects. `None` without a lock-delay.
    pub since_confirmation: Option<Duration>,
    /// How often the session is renewed: TTL/2, or sooner when the window is tight, so that a
    /// renewal as slow as its own deadline, and a retry, still land within the window.
    pub renew_every: Option<Duration>,
    /// The deadline of one renew request: [`renew_timeout`], or a third of the window when
    /// that is shorter.
    pub renew_timeout: Option<Duration>,
}

impl ContactWindow {
    /// The shorter of the two bounds.
    pub fn shortest(&self) -> Option<Duration> {
        match (self.since_renew, self.since_confirmation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether nothing bounds it (no TTL, and no node check with a lock-delay).
    pub fn is_unbounded(&self) -> bool {
        self.shortest().is_none()
    }
}

/// The [`ContactWindow`] of a session with `settings` whose holder needs `kill_grace` to stop
/// its child, keeping [`SAFETY_MARGIN`] in hand. Returns an error, naming what to change, when
/// the grace and the margin do not fit in a bound, or when the renewals cannot keep the lock
/// within its window on a healthy Consul: such settings could only end in a false "lock lost".
pub fn contact_window(
    settings: &SessionSettings,
    kill_grace: Duration,
) -> Result<ContactWindow, String> {
    contact_window_guarding(settings, kill_grace, true)
}

/// [`contact_window`] for a lock whose lock-delay may not keep it from every contender
/// (`lock_delay_protects` false: a semaphore slot, see
/// [`crate::lock::Layout::lock_delay_protects`]). Go's contenders then take a slot as soon as
/// its holder's session has ended, so the bound after the last renewal leaves the lock-delay
/// out; consullock's contenders wait out a dead holder's lock-delay, so the bound after an
/// invalidation keeps it.
pub fn contact_window_guarding(
    settings: &SessionSettings,
    kill_grace: Duration,
    lock_delay_protects: bool,
) -> Result<ContactWindow, String> {
    let lock_delay = settings.lock_delay.min(MAX_LOCK_DELAY);
    let after_expiry = if lock_delay_protects {
        lock_delay
    } else {
        Duration::ZERO
    };
    let needed = kill_grace + SAFETY_MARGIN;
    let fit = |bound: Duration, what: &str, change: &str| {
        if bound <= needed {
            Err(format!(
                "the kill grace ({kill_grace:?}) plus a {SAFETY_MARGIN:?} margin does not fit \
                 before another holder could get the lock ({bound:?} after {what}): {change}"
            ))
        } else {
            Ok(bound - needed)
        }
    };
    let since_renew = match settings.ttl.filter(|t| !t.is_zero()) {
        Some(ttl) => Some(fit(
            ttl + after_expiry,
            "the last renewal",
            "lower --kill-grace, or raise --session-ttl or --lock-delay",
        )?),
        None => None,
    };
    // Any session can be invalidated at any moment, by a failed node check (unless TTL-only),
    // an operator's destroy or `consullock unlock`: then only the lock-delay protects.
    let since_confirmation = if lock_delay.is_zero() {
        None
    } else {
        let change = if settings.ttl_only {
            "lower --kill-grace or raise --lock-delay"
        } else {
            "lower --kill-grace, raise --lock-delay, or use --ttl-only"
        };
        Some(fit(lock_delay, "the session could be invalidated", change)?)
    };
    let mut window = ContactWindow {
        since_renew,
        since_confirmation,
        renew_every: None,
        renew_timeout: None,
    };
    if let (Some(ttl), Some(bound)) = (settings.ttl.filter(|t| !t.is_zero()), since_renew) {
        // Only a renewal pushes the TTL back, so it must be able to take its whole deadline,
        // fail, and be retried once, all within the renew bound: renew at TTL/2, or sooner
        // when the window is tight, never more often than once a second. (The confirmation
        // bound is kept by the lock watch's reads, sent every third of the window.)
        let timeout = renew_timeout(ttl).min(bound / 3);
        let every = (ttl / 2).min(bound.saturating_sub(timeout + RETRY_INTERVAL));
        if every < MIN_RENEW_INTERVAL {
            return Err(format!(
                "with this kill grace and lock-delay the lock counts as lost {bound:?} after \
                 its last renewal, which leaves no room to renew it (a renewal may take \
                 {timeout:?}, and a retry waits {RETRY_INTERVAL:?}): raise --session-ttl or \
                 --lock-delay, or lower --kill-grace"
            ));
        }
        window.renew_every = Some(every);
        window.renew_timeout = Some(timeout);
    }
    Ok(window)
}

/// The least time between two renewals, however tight the window.
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// The deadline of one renew request: a third of the TTL, at most [`MAX_RENEW_TIMEOUT`], so a
/// hung request leaves time for retries while the session can still be saved.
pub fn renew_timeout(ttl: Duration) -> Duration {
    (ttl / 3).min(MAX_RENEW_TIMEOUT)
}

/// Why settings that [`contact_window`] accepts can still let another holder in while the
/// command is being stopped, if any: a session destroyed by force (`consullock unlock`, an
/// operator, or a failed node check) frees the lock after its lock-delay, and the command may
/// need up to `kill_grace` plus the margin to stop once the loss is seen.
pub fn forced_release_risk(settings: &SessionSettings, kill_grace: Duration) -> Option<String> {
    let lock_delay = settings.lock_delay.min(MAX_LOCK_DELAY);
    let needed = kill_grace + SAFETY_MARGIN;
    if lock_delay >= needed {
        return None;
    }
    let how = if settings.ttl_only {
        "an unlock by force (consullock unlock, an operator)"
    } else {
        "an unlock by force (consullock unlock, an operator) or a failed node check"
    };
    Some(format!(
        "the lock-delay ({lock_delay:?}) is shorter than the kill grace plus a {SAFETY_MARGIN:?} \
         margin ({needed:?}): after {how}, another holder can get the lock while the command is \
         still being stopped; use --lock-delay {} or more, or a shorter --kill-grace",
        needed.as_secs_f64()
    ))
}

/// A live Consul session. Destroy it with [`Session::destroy`]; dropping it does not.
#[derive(Debug)]
pub struct Session {
    client: Client,
    id: String,
    settings: SessionSettings,
    /// When the create request was sent ([`clock::now`]): the first confirmation.
    created_at: Duration,
}

impl Session {
    /// `PUT /v1/session/create` with Behavior `delete`, so a lock whose session dies
    /// disappears instead of lingering unheld (as consullock 4.2 does).
    pub async fn create(
        client: &Client,
        settings: SessionSettings,
    ) -> Result<Session, ConsulError> {
        let request = SessionRequest {
            name: settings.name.clone(),
            ttl: settings.ttl.filter(|ttl| !ttl.is_zero()),
            lock_delay: settings.lock_delay,
            behavior: Behavior::Delete,
            node_checks: settings.ttl_only.then(Vec::new),
        };
        let created_at = clock::now();
        let id = client.session_create(&request).await?;
        tracing::debug!(session = %id, name = %settings.name, "session created");
        Ok(Session {
            client: client.clone(),
            id,
            settings,
            created_at,
        })
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The settings it was created with.
    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The client it was created through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// When the create request was sent ([`clock::now`]).
    pub fn created_at(&self) -> Duration {
        self.created_at
    }

    /// Destroys the session (idempotent on Consul's side). Keys it holds are deleted and get its
    /// lock-delay, so release them first for a clean hand-over.
    pub async fn destroy(&self) -> Result<(), ConsulError> {
        self.destroy_with_timeout(DESTROY_TIMEOUT).await
    }

    /// [`Session::destroy`] giving up after `timeout`.
    pub async fn destroy_with_timeout(&self, timeout: Duration) -> Result<(), ConsulError> {
        let result = self.client.session_destroy(&self.id, timeout).await;
        match &result {
            Ok(()) => tracing::debug!(session = %self.id, "session destroyed"),
            Err(e) => tracing::warn!(session = %self.id, "could not destroy the session: {e}"),
        }
        result
    }

    /// Starts renewing the session in the background every TTL/2 (nothing to do without a TTL).
    /// The returned [`Liveness`] reports loss; dropping it stops the renewals.
    pub fn keep_alive(&self) -> Liveness {
        let liveness = Liveness::new(self.created_at, self.settings.clone());
        if let Some(ttl) = self.settings.ttl.filter(|t| !t.is_zero()) {
            let task = tokio::spawn(renew_loop(
                self.client.clone(),
                self.id.clone(),
                ttl,
                liveness.shared.clone(),
            ));
            liveness.push_task(task);
        }
        liveness
    }
}

/// Shared between the tasks that watch one session.
#[derive(Debug)]
pub(crate) struct Shared {
    news: Mutex<News>,
    lost: watch::Sender<Option<LossReason>>,
    /// When the contact window runs out, given the news so far; "now" once the lock is lost.
    deadline: Deadline,
}

#[derive(Debug)]
struct News {
    /// Last successful renew, or the creation ([`clock::now`] when the request was sent).
    renewed: Duration,
    /// Last renew sent, answered or not: Consul may have carried out one whose answer was lost,
    /// which pushed the session's end further than `renewed` says.
    renew_sent: Duration,
    /// Last confirmation of any kind (a renew, the acquisition, a read showing the lock ours).
    confirmed: Duration,
    /// The session as Consul last described it: its TTL and lock-delay decide the window.
    settings: SessionSettings,
    /// The time the holder needs to stop its work, once a window is enforced.
    kill_grace: Option<Duration>,
    /// The window from `settings` and `kill_grace`.
    window: Option<ContactWindow>,
    /// Whether the lock-delay keeps the lock from others once the session is invalidated.
    lock_delay_protects: bool,
}

impl News {
    /// The contact window of these settings for a holder that needs `kill_grace` to stop.
    fn window(&self, kill_grace: Duration) -> Result<ContactWindow, String> {
        contact_window_guarding(&self.settings, kill_grace, self.lock_delay_protects)
    }

    fn deadline(&self) -> Option<Duration> {
        let window = self.window?;
        let by_renew = window.since_renew.map(|w| self.renewed + w);
        let by_confirmation = window.since_confirmation.map(|w| self.confirmed + w);
        match (by_renew, by_confirmation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Shared {
    fn news(&self) -> std::sync::MutexGuard<'_, News> {
        self.news.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recomputes the deadline after news; call with the news lock released.
    fn publish_deadline(&self) {
        if self.is_lost() {
            return;
        }
        let at = self.news().deadline();
        self.deadline.set(at);
    }

    /// Records that the session (and lock) were known good when a request sent at `sent_at`
    /// ([`clock::now`]) succeeded.
    pub(crate) fn confirm(&self, sent_at: Duration) {
        {
            let mut news = self.news();
            news.confirmed = news.confirmed.max(sent_at);
        }
        self.publish_deadline();
    }

    /// Records a successful renew sent at `sent_at`: the TTL starts again, and the session is
    /// confirmed. `answer` is the session as the renew described it: Consul may answer a longer
    /// TTL (asking for slower renewals) or apply another lock-delay, and the window follows what
    /// the server applies. A field the answer lacks keeps its last value: an answer can change
    /// the window, never remove a bound from it.
    pub(crate) fn renewed(&self, sent_at: Duration, answer: Option<RenewAnswer>) {
        let mut refused = None;
        {
            let mut news = self.news();
            news.renewed = news.renewed.max(sent_at);
            news.confirmed = news.confirmed.max(sent_at);
            if let Some(answer) = answer {
                let before = (news.settings.ttl, news.settings.lock_delay);
                if let Some(ttl) = answer.ttl.filter(|t| !t.is_zero()) {
                    news.settings.ttl = Some(ttl);
                }
                if let Some(lock_delay) = answer.lock_delay {
                    news.settings.lock_delay = lock_delay;
                }
                let changed = before != (news.settings.ttl, news.settings.lock_delay);
                if changed && let Some(grace) = news.kill_grace {
                    match news.window(grace) {
                        Ok(window) => news.window = Some(window),
                        Err(e) => refused = Some(e),
                    }
                }
            }
        }
        if let Some(e) = refused {
            tracing::warn!(
                "consul changed the session so that the lock cannot be kept safely: {e}"
            );
            self.declare_lost(LossReason::NoContact {
                silent_for: Duration::ZERO,
                window: Duration::ZERO,
            });
            return;
        }
        self.publish_deadline();
    }

    /// Records that a renew is being sent at `sent_at`.
    fn renew_sent(&self, sent_at: Duration) {
        let mut news = self.news();
        news.renew_sent = news.renew_sent.max(sent_at);
    }

    /// When to send the next renewal after one sent at `last`, for a session that asked for
    /// `requested` as its TTL: TTL/2, or sooner when the contact window is tight (see
    /// [`ContactWindow::renew_every`]).
    fn next_renewal(&self, last: Duration, requested: Duration) -> Duration {
        let news = self.news();
        let ttl = news.settings.ttl.unwrap_or(requested);
        let every = news
            .window
            .and_then(|w| w.renew_every)
            .unwrap_or(ttl / 2)
            .min(ttl / 2);
        last + every
    }

    /// The deadline of the next renew, for a session that asked for `requested` as its TTL.
    fn renew_timeout(&self, requested: Duration) -> Duration {
        let news = self.news();
        news.window
            .and_then(|w| w.renew_timeout)
            .unwrap_or_else(|| renew_timeout(news.settings.ttl.unwrap_or(requested)))
    }

    /// The TTL the server applies, as last answered (the requested one until a renew says).
    #[cfg(test)]
    fn ttl(&self) -> Option<Duration> {
        self.news().settings.ttl
    }

    /// Publishes a loss; the first reason wins. The deadline passes at once.
    pub(crate) fn declare_lost(&self, reason: LossReason) {
        self.deadline.expire();
        self.lost.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            tracing::info!("lock lost: {reason}");
            *current = Some(reason);
            true
        });
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }
}

/// Watches a session (and, once held, its lock) and reports loss. Dropping it stops every
/// background task it started.
#[derive(Debug)]
pub struct Liveness {
    pub(crate) shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Liveness {
    fn new(confirmed_at: Duration, settings: SessionSettings) -> Liveness {
        let (lost, _) = watch::channel(None);
        Liveness {
            shared: Arc::new(Shared {
                news: Mutex::new(News {
                    renewed: confirmed_at,
                    renew_sent: confirmed_at,
                    confirmed: confirmed_at,
                    settings,
                    kill_grace: None,
                    window: None,
                    lock_delay_protects: true,
                }),
                lost,
                deadline: Deadline::unset(),
            }),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn push_task(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Declares the lock lost once the contact window for a holder that needs `kill_grace` to
    /// stop runs out without news (see [`contact_window`]), and keeps [`Liveness::deadline`] on
    /// it. Fails when the settings leave no such window.
    ///
    /// `lock_delay_protects` says whether the lock-delay keeps the lock from others after the
    /// session is invalidated (not for a semaphore slot: see
    /// [`crate::lock::Layout::lock_delay_protects`]); when not, the window is computed as for a
    /// session without lock-delay.
    pub fn enforce_contact_window(
        &self,
        kill_grace: Duration,
        lock_delay_protects: bool,
    ) -> Result<ContactWindow, String> {
        let window = {
            let mut news = self.shared.news();
            news.lock_delay_protects = lock_delay_protects;
            let window = news.window(kill_grace)?;
            news.kill_grace = Some(kill_grace);
            news.window = Some(window);
            window
        };
        self.shared.publish_deadline();
        if !window.is_unbounded() {
            let task = tokio::spawn(watchdog(self.shared.clone()));
            self.push_task(task);
        }
        Ok(window)
    }

    /// The moment (on [`clock::now`]'s clock) after which the lock may be someone else's: unset
    /// while no window is enforced or nothing bounds it, passed once the lock is lost.
    pub fn deadline(&self) -> Deadline {
        self.shared.deadline.clone()
    }

    /// When the session was last renewed (or created), on [`clock::now`]'s clock, and the TTL
    /// the server applies.
    pub fn last_renewal(&self) -> (Duration, Option<Duration>) {
        let news = self.shared.news();
        // A renew whose answer never came may still have been carried out.
        (news.renewed.max(news.renew_sent), news.settings.ttl)
    }

    /// A receiver that sees `Some(reason)` once the session or lock is lost.
    pub fn subscribe(&self) -> watch::Receiver<Option<LossReason>> {
        self.shared.lost.subscribe()
    }

    /// The loss, if it happened.
    pub fn loss(&self) -> Option<LossReason> {
        self.shared.lost.borrow().clone()
    }

    /// Waits until the session or lock is lost.
    pub async fn lost(&self) -> LossReason {
        wait_lost(self.subscribe()).await
    }

    /// Stops every background task (renewal, watch, watchdog).
    pub fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a loss is published on `receiver`.
pub async fn wait_lost(mut receiver: watch::Receiver<Option<LossReason>>) -> LossReason {
    loop {
        if let Some(reason) = receiver.borrow_and_update().clone() {
            return reason;
        }
        if receiver.changed().await.is_err() {
            // The sender is gone: nobody watches the lock any more, so it cannot be trusted.
            return LossReason::NoContact {
                silent_for: Duration::ZERO,
                window: Duration::ZERO,
            };
        }
    }
}

/// How far the renew loop may oversleep its next renewal: tokio's timers run on
/// `CLOCK_MONOTONIC`, so after a suspend a renewal that is due is noticed within this.
const RENEW_CLOCK_CHECK: Duration = Duration::from_secs(1);

/// What a renew answer says about the session, when it says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RenewAnswer {
    pub(crate) ttl: Option<Duration>,
    pub(crate) lock_delay: Option<Duration>,
}

async fn renew_loop(client: Client, id: String, ttl: Duration, shared: Arc<Shared>) {
    // The first renewal is due counting from the creation; the window, once enforced, may call
    // for it sooner than TTL/2, so each wait reads the schedule again.
    let mut last_sent = shared.news().renewed;
    let mut retry_at = None;
    loop {
        loop {
            let due = retry_at.unwrap_or_else(|| shared.next_renewal(last_sent, ttl));
            let now = clock::now();
            if now >= due {
                break;
            }
            tokio::time::sleep((due - now).min(RENEW_CLOCK_CHECK)).await;
        }
        let timeout = shared.renew_timeout(ttl);
        let sent_at = clock::now();
        shared.renew_sent(sent_at);
        match client.session_renew(&id, timeout).await {
            Ok(entry) if entry.id == id => {
                let answer = RenewAnswer {
                    ttl: parse_go_duration(&entry.ttl),
                    lock_delay: entry.lock_delay_ns.map(Duration::from_nanos),
                };
                shared.renewed(sent_at, Some(answer));
                tracing::trace!(session = %id, "session renewed");
                last_sent = sent_at;
                retry_at = None;
            }
            Ok(entry) => {
                tracing::warn!(
                    session = %id,
                    "renew answered for another session ({:?}); retrying in {RETRY_INTERVAL:?}",
                    entry.id
                );
                retry_at = Some(clock::now() + RETRY_INTERVAL);
            }
            Err(ConsulError::NotFound { .. }) => {
                shared.declare_lost(LossReason::SessionInvalidated);
                return;
            }
            Err(e) => {
                tracing::warn!(session = %id, "renew failed, retrying in {RETRY_INTERVAL:?}: {e}");
                retry_at = Some(clock::now() + RETRY_INTERVAL);
            }
        }
    }
}

/// How often the watchdog reads the clock when nothing wakes it: tokio's timers do not count a
/// suspend, the clock does.
const WATCHDOG_CLOCK_CHECK: Duration = Duration::from_millis(250);

/// Publishes [`LossReason::NoContact`] when the deadline passes, for those who wait on the loss
/// channel (the supervisor's kill switch watches the deadline itself).
async fn watchdog(shared: Arc<Shared>) {
    loop {
        if shared.is_lost() || shared.declare_if_past_deadline() {
            return;
        }
        let now = clock::now();
        let sleep = match shared.deadline.at() {
            Some(at) => at.saturating_sub(now).min(WATCHDOG_CLOCK_CHECK),
            None => WATCHDOG_CLOCK_CHECK,
        };
        tokio::time::sleep(sleep.max(Duration::from_millis(1))).await;
    }
}

impl Shared {
    /// If the contact window has run out, publishes [`LossReason::NoContact`] for the bound that
    /// ran out, and says so.
    pub(crate) fn declare_if_past_deadline(&self) -> bool {
        let now = clock::now();
        if self.deadline.at().is_none_or(|at| now < at) {
            return false;
        }
        let bound = {
            let news = self.news();
            news.window.and_then(
                |window| match (window.since_renew, window.since_confirmation) {
                    (Some(r), _) if news.renewed + r <= now => Some((news.renewed, r)),
                    (_, Some(c)) => Some((news.confirmed, c)),
                    (Some(r), None) => Some((news.renewed, r)),
                    (None, None) => None,
                },
            )
        };
        let (since, limit) = bound.unwrap_or((now, Duration::ZERO));
        self.declare_lost(LossReason::NoContact {
            silent_for: now.saturating_sub(since),
            window: limit,
        });
        true
    }
}

/// Parses the durations Go prints (`"15s"`, `"1m30s"`, `"24h0m0s"`, `"1.5s"`, `"250ms"`).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ttl: u64, lock_delay: u64, ttl_only: bool) -> SessionSettings {
        SessionSettings {
            name: "t".into(),
            ttl: (ttl > 0).then(|| Duration::from_secs(ttl)),
            lock_delay: Duration::from_secs(lock_delay),
            ttl_only,
        }
    }

    /// A window with these bounds, renewed every `every` s (or TTL/2 = 7.5 s by default).
    fn window(renew: Option<u64>, confirmation: Option<u64>) -> ContactWindow {
        window_renewing(renew, confirmation, None)
    }

    /// A window whose renewals come every `every_ms` with a deadline of `timeout_ms`.
    fn window_renewing(
        renew: Option<u64>,
        confirmation: Option<u64>,
        renewal: Option<(u64, u64)>,
    ) -> ContactWindow {
        ContactWindow {
            since_renew: renew.map(Duration::from_secs),
            since_confirmation: confirmation.map(Duration::from_secs),
            renew_every: renewal.map(|(every, _)| Duration::from_millis(every)),
            renew_timeout: renewal.map(|(_, timeout)| Duration::from_millis(timeout)),
        }
    }

    #[test]
    fn contact_window_for_defaults() {
        let grace = Duration::from_secs(5);
        // Node checks: renew bound TTL + lock-delay - 5 - 1; confirmation bound 15 - 5 - 1.
        // Renewals at TTL/2 with a 5 s deadline: one that times out and its retry land well
        // within the 24 s.
        let defaults = contact_window(&settings(15, 15, false), grace);
        assert_eq!(
            defaults,
            Ok(window_renewing(Some(24), Some(9), Some((7500, 5000))))
        );
        assert_eq!(defaults.unwrap().shortest(), Some(Duration::from_secs(9)));
        // TTL-only: an unlock by force can still invalidate the session at any moment, so the
        // confirmation bound stays.
        let ttl_only = contact_window(&settings(15, 15, true), grace);
        assert_eq!(
            ttl_only,
            Ok(window_renewing(Some(24), Some(9), Some((7500, 5000))))
        );
        // No lock-delay: the renew bound is 9 s, so renewals come sooner than TTL/2, with a
        // shorter deadline, so that one that times out and its retry land within it.
        let no_delay = contact_window(&settings(15, 0, false), grace);
        assert_eq!(
            no_delay,
            Ok(window_renewing(Some(9), None, Some((5000, 3000))))
        );
        // A roomy window renews at TTL/2 with the full deadline.
        let roomy = contact_window(&settings(30, 60, false), grace);
        assert_eq!(
            roomy,
            Ok(window_renewing(Some(84), Some(54), Some((15000, 5000))))
        );
        // Lock-delay is capped at 60 s by Consul.
        let no_ttl = contact_window(&settings(0, 120, false), grace);
        assert_eq!(no_ttl, Ok(window(None, Some(54))));
        // Nothing can invalidate it by time.
        assert!(
            contact_window(&settings(0, 0, true), grace)
                .unwrap()
                .is_unbounded()
        );
    }

    #[test]
    fn a_slot_keeps_the_lock_delay_after_an_invalidation_only() {
        let grace = Duration::from_secs(5);
        // Go's contenders take a slot once its holder's session has expired: the renew bound
        // is TTL - 5 - 1. consullock's wait out the lock-delay of an invalidated holder: the
        // confirmation bound is 15 - 5 - 1, as for a single lock.
        let slot = contact_window_guarding(&settings(15, 15, false), grace, false);
        assert_eq!(
            slot,
            Ok(window_renewing(Some(9), Some(9), Some((5000, 3000))))
        );
        let no_delay = contact_window_guarding(&settings(15, 0, false), grace, false);
        assert_eq!(
            no_delay,
            Ok(window_renewing(Some(9), None, Some((5000, 3000))))
        );
    }

    #[test]
    fn contact_window_refuses_a_grace_that_does_not_fit() {
        assert!(contact_window(&settings(10, 0, true), Duration::from_secs(9)).is_err());
        assert!(contact_window(&settings(15, 5, false), Duration::from_secs(5)).is_err());
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("15s", 15_000),
            ("1m30s", 90_000),
            ("24h0m0s", 86_400_000),
            ("1.5s", 1_500),
            ("250ms", 250),
            ("0", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_go_duration(text),
                Some(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["", "15", "s", "1x", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A liveness created at `t = 0` of a synthetic clock, with the defaults' window (24 s since
    /// the last renew, 9 s since the last confirmation).
    fn defaults_at_zero() -> Liveness {
        let liveness = Liveness::new(Duration::ZERO, settings(15, 15, false));
        {
            let mut news = liveness.shared.news();
            news.kill_grace = Some(secs(5));
            news.window = contact_window(&news.settings, secs(5)).ok();
        }
        liveness
    }

    #[test]
    fn the_deadline_is_the_earlier_bound() {
        let liveness = defaults_at_zero();
        assert_eq!(liveness.shared.news().deadline(), Some(secs(9)));
        liveness.shared.confirm(secs(5));
        assert_eq!(liveness.deadline().at(), Some(secs(14)));
        // Confirmations sent earlier than one already counted change nothing.
        liveness.shared.confirm(secs(3));
        assert_eq!(liveness.deadline().at(), Some(secs(14)));
    }

    #[test]
    fn reads_do_not_stand_in_for_renewals() {
        // Renewals fail while reads of the lock keep succeeding: the TTL still runs out, so the
        // renew bound decides although confirmations keep coming.
        let liveness = defaults_at_zero();
        for t in 1..=30 {
            liveness.shared.confirm(secs(t));
        }
        assert_eq!(liveness.deadline().at(), Some(secs(24)));
    }

    #[test]
    fn a_renewal_pushes_both_bounds() {
        let liveness = defaults_at_zero();
        liveness.shared.renewed(secs(8), None);
        assert_eq!(liveness.deadline().at(), Some(secs(17)));
    }

    fn answer(ttl: Option<u64>, lock_delay: Option<u64>) -> RenewAnswer {
        RenewAnswer {
            ttl: ttl.map(secs),
            lock_delay: lock_delay.map(secs),
        }
    }

    #[test]
    fn an_answer_without_ttl_or_lock_delay_keeps_the_window() {
        let liveness = defaults_at_zero();
        liveness.shared.renewed(secs(1), Some(answer(None, None)));
        assert_eq!(liveness.shared.ttl(), Some(secs(15)));
        assert_eq!(
            liveness.shared.news().window,
            Some(window_renewing(Some(24), Some(9), Some((7500, 5000))))
        );
        liveness
            .shared
            .renewed(secs(2), Some(answer(Some(0), None)));
        assert_eq!(
            liveness.shared.ttl(),
            Some(secs(15)),
            "0s is no TTL: ignored"
        );
        assert_eq!(liveness.deadline().at(), Some(secs(11)));
    }

    #[test]
    fn the_window_follows_the_ttl_and_lock_delay_the_server_answers() {
        let liveness = defaults_at_zero();
        // A longer TTL (Consul asking for slower renewals): the renew bound grows with it.
        liveness
            .shared
            .renewed(secs(1), Some(answer(Some(30), Some(15))));
        assert_eq!(
            liveness.shared.news().window,
            Some(window_renewing(Some(39), Some(9), Some((15000, 5000))))
        );
        assert_eq!(liveness.shared.ttl(), Some(secs(30)));
        // A shorter lock-delay than asked for: the confirmation bound shrinks.
        liveness
            .shared
            .renewed(secs(2), Some(answer(Some(30), Some(12))));
        assert_eq!(
            liveness.shared.news().window,
            Some(window_renewing(Some(36), Some(6), Some((15000, 5000))))
        );
        assert_eq!(liveness.deadline().at(), Some(secs(8)));
        // One that leaves no window at all: lost at once.
        liveness
            .shared
            .renewed(secs(3), Some(answer(Some(30), Some(5))));
        assert!(matches!(
            liveness.loss(),
            Some(LossReason::NoContact { .. })
        ));
        assert!(liveness.deadline().has_passed());
    }

    #[tokio::test]
    async fn the_watchdog_declares_loss_when_the_window_runs_out() {
        // No TTL, lock-delay 1.3 s, no grace: the window is 0.3 s after the last confirmation.
        let mut settings = settings(0, 0, false);
        settings.lock_delay = Duration::from_millis(1300);
        let liveness = Liveness::new(clock::now(), settings);
        let window = liveness
            .enforce_contact_window(Duration::ZERO, true)
            .unwrap();
        assert_eq!(window.since_confirmation, Some(Duration::from_millis(300)));
        let started = clock::now();
        let reason = liveness.lost().await;
        assert!(matches!(reason, LossReason::NoContact { .. }), "{reason:?}");
        assert!(clock::now() - started >= Duration::from_millis(250));
        assert!(liveness.deadline().has_passed());
    }

    #[test]
    fn a_loss_on_the_wire_passes_the_deadline_at_once() {
        let liveness = defaults_at_zero();
        liveness.shared.publish_deadline();
        assert!(!liveness.deadline().has_passed() || clock::now() >= secs(9));
        liveness.shared.declare_lost(LossReason::KeyDeleted);
        assert_eq!(liveness.deadline().at(), Some(Duration::ZERO));
        assert_eq!(liveness.loss(), Some(LossReason::KeyDeleted));
    }
}
