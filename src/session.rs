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

Loss is published on a [`tokio::sync::watch`] channel, so any number of tasks can wait on it.
*/

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

/// Why a session or the lock it holds is no longer ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossReason {
    /// A renew answered 404: the session was destroyed or expired.
    #[error("the session was invalidated (renew answered 404)")]
    SessionInvalidated,
    /// The lock key disappeared.
    #[error("the lock key was deleted")]
    KeyDeleted,
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
    /// consistent read showing the lock still ours), for sessions with node checks: a check may
    /// invalidate the session at any moment after it, and then only the lock-delay protects.
    pub since_confirmation: Option<Duration>,
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
/// its child, keeping [`SAFETY_MARGIN`] in hand. Returns an error when the grace and the margin
/// do not fit in a bound.
pub fn contact_window(
    settings: &SessionSettings,
    kill_grace: Duration,
) -> Result<ContactWindow, String> {
    let lock_delay = settings.lock_delay.min(MAX_LOCK_DELAY);
    let needed = kill_grace + SAFETY_MARGIN;
    let fit = |bound: Duration| {
        if bound <= needed {
            Err(format!(
                "kill grace {kill_grace:?} plus a {SAFETY_MARGIN:?} margin does not fit before \
                 another holder could get the lock ({bound:?} after the last news from consul): \
                 lower --kill-grace or raise --session-ttl / --lock-delay"
            ))
        } else {
            Ok(bound - needed)
        }
    };
    let since_renew = match settings.ttl.filter(|t| !t.is_zero()) {
        Some(ttl) => Some(fit(ttl + lock_delay)?),
        None => None,
    };
    let since_confirmation = if !settings.ttl_only && !lock_delay.is_zero() {
        Some(fit(lock_delay)?)
    } else {
        None
    };
    Ok(ContactWindow {
        since_renew,
        since_confirmation,
    })
}

/// A live Consul session. Destroy it with [`Session::destroy`]; dropping it does not.
#[derive(Debug)]
pub struct Session {
    client: Client,
    id: String,
    settings: SessionSettings,
    /// When the create request was sent: the first confirmation.
    created_at: Instant,
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
        let created_at = Instant::now();
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

    /// Destroys the session (idempotent on Consul's side). Keys it holds are deleted and get its
    /// lock-delay, so release them first for a clean hand-over.
    pub async fn destroy(&self) -> Result<(), ConsulError> {
        let result = self.client.session_destroy(&self.id, DESTROY_TIMEOUT).await;
        match &result {
            Ok(()) => tracing::debug!(session = %self.id, "session destroyed"),
            Err(e) => tracing::warn!(session = %self.id, "could not destroy the session: {e}"),
        }
        result
    }

    /// Starts renewing the session in the background every TTL/2 (nothing to do without a TTL).
    /// The returned [`Liveness`] reports loss; dropping it stops the renewals.
    pub fn keep_alive(&self) -> Liveness {
        let liveness = Liveness::new(self.created_at);
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
    /// (last renew or creation, last confirmation of any kind), as request send times.
    news: Mutex<(Instant, Instant)>,
    lost: watch::Sender<Option<LossReason>>,
}

impl Shared {
    fn news(&self) -> std::sync::MutexGuard<'_, (Instant, Instant)> {
        self.news.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the session (and lock) were known good when a request sent at `sent_at`
    /// succeeded.
    pub(crate) fn confirm(&self, sent_at: Instant) {
        let mut news = self.news();
        news.1 = news.1.max(sent_at);
    }

    /// Records a successful renew sent at `sent_at`: the TTL starts again, and the session is
    /// confirmed.
    pub(crate) fn renewed(&self, sent_at: Instant) {
        let mut news = self.news();
        news.0 = news.0.max(sent_at);
        news.1 = news.1.max(sent_at);
    }

    /// When `window` runs out, given the news so far.
    fn deadline(&self, window: &ContactWindow) -> Option<Instant> {
        let (renewed, confirmed) = *self.news();
        let by_renew = window.since_renew.map(|w| renewed + w);
        let by_confirmation = window.since_confirmation.map(|w| confirmed + w);
        match (by_renew, by_confirmation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Publishes a loss; the first reason wins.
    pub(crate) fn declare_lost(&self, reason: LossReason) {
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
    fn new(confirmed_at: Instant) -> Liveness {
        let (lost, _) = watch::channel(None);
        Liveness {
            shared: Arc::new(Shared {
                news: Mutex::new((confirmed_at, confirmed_at)),
                lost,
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

    /// Declares the lock lost once `window` runs out without news.
    pub fn enforce_contact_window(&self, window: ContactWindow) {
        let task = tokio::spawn(watchdog(self.shared.clone(), window));
        self.push_task(task);
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

async fn renew_loop(client: Client, id: String, ttl: Duration, shared: Arc<Shared>) {
    let timeout = (ttl / 3).min(MAX_RENEW_TIMEOUT);
    let mut interval = ttl / 2;
    let mut next = Instant::now() + interval;
    loop {
        tokio::time::sleep_until(next).await;
        let sent_at = Instant::now();
        match client.session_renew(&id, timeout).await {
            Ok(entry) => {
                shared.renewed(sent_at);
                // The server may answer a longer TTL to ask for slower renewals.
                if let Some(server_ttl) = parse_go_duration(&entry.ttl).filter(|t| *t >= ttl) {
                    interval = server_ttl / 2;
                }
                tracing::trace!(session = %id, "session renewed");
                next = sent_at + interval;
            }
            Err(ConsulError::NotFound { .. }) => {
                shared.declare_lost(LossReason::SessionInvalidated);
                return;
            }
            Err(e) => {
                tracing::warn!(session = %id, "renew failed, retrying in {RETRY_INTERVAL:?}: {e}");
                next = Instant::now() + RETRY_INTERVAL;
            }
        }
    }
}

async fn watchdog(shared: Arc<Shared>, window: ContactWindow) {
    loop {
        let Some(deadline) = shared.deadline(&window) else {
            return;
        };
        let now = Instant::now();
        if now < deadline {
            tokio::time::sleep_until(deadline).await;
            continue;
        }
        let (renewed, confirmed) = *shared.news();
        // Report the bound that ran out.
        let (since, limit) = match (window.since_renew, window.since_confirmation) {
            (Some(r), _) if renewed + r <= now => (renewed, r),
            (_, Some(c)) => (confirmed, c),
            (Some(r), None) => (renewed, r),
            (None, None) => return,
        };
        shared.declare_lost(LossReason::NoContact {
            silent_for: now - since,
            window: limit,
        });
        return;
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

    fn window(renew: Option<u64>, confirmation: Option<u64>) -> ContactWindow {
        ContactWindow {
            since_renew: renew.map(Duration::from_secs),
            since_confirmation: confirmation.map(Duration::from_secs),
        }
    }

    #[test]
    fn contact_window_for_defaults() {
        let grace = Duration::from_secs(5);
        // Node checks: renew bound TTL + lock-delay - 5 - 1; confirmation bound 15 - 5 - 1.
        let defaults = contact_window(&settings(15, 15, false), grace);
        assert_eq!(defaults, Ok(window(Some(24), Some(9))));
        assert_eq!(defaults.unwrap().shortest(), Some(Duration::from_secs(9)));
        // TTL-only: only the renew bound.
        let ttl_only = contact_window(&settings(15, 15, true), grace);
        assert_eq!(ttl_only, Ok(window(Some(24), None)));
        // No lock-delay: only the TTL bounds it.
        let no_delay = contact_window(&settings(15, 0, false), grace);
        assert_eq!(no_delay, Ok(window(Some(9), None)));
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

    #[tokio::test(start_paused = true)]
    async fn watchdog_declares_loss_after_the_window_without_confirmation() {
        let liveness = Liveness::new(Instant::now());
        liveness.enforce_contact_window(window(None, Some(9)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        liveness.shared.confirm(Instant::now());
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(
            liveness.loss(),
            None,
            "a confirmation 8 s ago is within the window"
        );
        let reason = liveness.lost().await;
        assert!(matches!(reason, LossReason::NoContact { .. }), "{reason:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_do_not_stand_in_for_renewals() {
        // A TTL-only session whose renewals fail while reads of the lock keep succeeding: the
        // TTL still runs out, so the renew bound must fire although confirmations keep coming.
        let start = Instant::now();
        let liveness = Liveness::new(start);
        liveness.enforce_contact_window(window(Some(24), None));
        let mut receiver = liveness.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    liveness.shared.confirm(Instant::now());
                }
                _ = receiver.changed() => break,
            }
        }
        assert_eq!(start.elapsed(), Duration::from_secs(24));
        assert!(matches!(
            liveness.loss(),
            Some(LossReason::NoContact { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_pushes_both_bounds() {
        let start = Instant::now();
        let liveness = Liveness::new(start);
        liveness.enforce_contact_window(window(Some(24), Some(9)));
        tokio::time::sleep(Duration::from_secs(8)).await;
        liveness.shared.renewed(Instant::now());
        let reason = liveness.lost().await;
        assert_eq!(start.elapsed(), Duration::from_secs(17), "{reason:?}");
    }
}
