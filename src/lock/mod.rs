/*!
Locks on Consul keys: acquire, watch, release, find and unlock.

The value stored in a lock key is the JSON object consullock 4.2 writes (`created`, `key`,
`metadata`, `secondsToLock`, `session`), plus `hostname` and `pid`, so that each tool can find and
release the other's locks.

**A key that holds anything else is not ours to take.** Acquiring overwrites a key's value and
releasing deletes the key, so a lock on `app/config` would destroy whatever configuration lived
there. Every attempt therefore reads the key first, and a key whose value is not a lock's JSON is
refused ([`AcquireError::NotALock`]); `unlock` leaves such keys alone unless forced. (Go's
`api.Lock` refuses keys without its flag value for the same reason.)

**Waiting** for a held lock uses Consul blocking queries on the key: the waiter sleeps in one
HTTP request until the key changes, so a release wakes it within a round trip and the server sees
a handful of requests per wait instead of one per poll interval. A server (or proxy) that answers
a blocking read at once without a change gets a growing, capped pause before the next one, as
Consul's documentation asks of clients, so no misbehaving peer can turn a wait into a hot loop.

**Holding**: once the lock is held, its key is watched with consistent blocking reads, one sent
every third of the contact window whether or not the previous one has answered, each confirming
the lock from the moment it was sent. A slow but healthy Consul therefore keeps confirming the
lock: the window measures Consul's silence, not our own serial waiting.

**Every attempt is bounded** by the caller's timeout and cancel future, the session's creation
included; a session whose creation request was already on its way when the attempt ended is
waited for briefly and destroyed, so no session is left behind.

**A contender that cannot get the lock writes nothing**: the key is read before anything is
created, and a held lock is answered at once (`non_blocking`) or waited for; a session is made
only when the lock looks free, or when a blocking waiter settles down to wait (it keeps that
session, renewed, so it can try the moment the lock is free). The attempt itself is one
transaction (`attempt.rs`), and waiters line up (`queue.rs`) so that a release wakes one of them.

**Layouts** ([`Layout`]): consullock's own (the key holds the lock's JSON), `consul lock`'s
(`PREFIX/.lock` with `api.Lock`'s flags), and `consul lock -n N`'s semaphore (`semaphore.rs`:
at most N holders, on `api.Semaphore`'s keys), so that consullock and `consul lock` contenders
share locks while a fleet moves from one to the other (`layout.rs`).

The parts: `value.rs` (what is stored), `layout.rs` (Go's keys and flags), `attempt.rs` (one
try), `queue.rs` (the line of waiters), `semaphore.rs` (slots), `wait.rs` (bounded waiting),
`held.rs` (watch and release), `find.rs` (find and unlock anyone's), `status.rs` (who holds a
lock, in any layout, read-only).
*/

mod attempt;
mod find;
mod held;
pub mod layout;
mod lock_delay;
mod queue;
mod semaphore;
mod status;
mod value;
mod wait;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::consul::{Client, ConsulError};
use crate::session::{Liveness, RETRY_INTERVAL, Session, SessionSettings};

use attempt::{Attempt, KeyState, key_state, try_acquire};
pub use find::{
    FoundLock, Unlocked, UnlockedKeys, find, find_keys, find_regex, literal_prefix, unlock,
    unlock_regex,
};
pub use held::{HeldLock, ReleaseError, ReleaseFailure};
pub use queue::{MAX_QUEUE_TTL, is_queue_key, queue_prefix};
pub use status::{
    FoundLayout, KeyStatus, LockStatus, PROBE_SESSION, SemaphoreHolder, SessionDetails,
    UnknownLockDelay, status, status_regex,
};
pub use value::{LockInfo, QueueEntry, is_lock_value, timestamp_now};
use wait::{Bounds, EarlyReturnBackoff, ErrorBudget, after_wait, wait_for_change};

/// Longest single blocking read while waiting for a lock; the server's own default.
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(300);

/// Shortest blocking read while watching a held lock (tiny contact windows), and the least time
/// between two watch reads: the watch never sends more than a few requests per second.
pub const MIN_MONITOR_WAIT: Duration = Duration::from_millis(150);

/// First pause when a free key refuses the lock (lock-delay in force); doubles each time.
pub const LOCK_DELAY_BACKOFF_START: Duration = Duration::from_millis(25);

/// Default cap of that pause (`-i` sets it): Consul does not say how long the lock-delay lasts.
pub const LOCK_DELAY_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// The least cap of that pause: below it, a lock-delay of 15 s would cost hundreds of requests.
pub const MIN_LOCK_DELAY_BACKOFF_CAP: Duration = Duration::from_millis(250);

/// How long transient errors (500, 429, connection failures) may last, back to back, while
/// waiting for a lock before the wait gives up.
pub const WAIT_ERROR_BUDGET: Duration = Duration::from_secs(30);

/// First pause after a blocking read that came back early with nothing changed; it doubles up
/// to [`EARLY_RETURN_BACKOFF_CAP`], with jitter, and starts over once something changes.
pub const EARLY_RETURN_BACKOFF_START: Duration = Duration::from_millis(100);

/// Longest such pause.
pub const EARLY_RETURN_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// How long an attempt that was cancelled (or timed out) while its session-create request was
/// in flight still waits for the answer, to destroy the session the server may have made.
pub const ABANDONED_CREATE_GRACE: Duration = Duration::from_secs(1);

/// Deadline of each request of a release: a Consul that stopped answering must not hold the
/// program for long, the session expires by itself anyway.
pub const RELEASE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Session TTL of a lock left held by `consullock lock` when none is given (consullock 4.2's):
/// a day, not renewed.
pub const LEFT_HELD_SESSION_TTL: Duration = Duration::from_secs(86400);

/// Lock-delay of a lock left held by `consullock lock` when none is given (consullock 4.2's):
/// none, so that `lock`, `unlock`, `lock` from a shell never waits.
pub const LEFT_HELD_LOCK_DELAY: Duration = Duration::ZERO;

/// A future a hook returns.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Called around each attempt to take the lock (consullock 4.2's `--on-before-lock` and
/// `--on-already-locked`). The engine only calls them; running programs is the caller's business
/// (the command line runs them through the supervisor's reaper).
pub trait AttemptHooks: Send + Sync {
    /// Before each attempt.
    fn before_attempt<'a>(&'a self, key: &'a str) -> HookFuture<'a>;
    /// After each attempt that found the lock held.
    fn already_locked<'a>(&'a self, key: &'a str) -> HookFuture<'a>;
}

/// Who holds a lock that [`acquire`] is waiting for.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// The key.
    pub key: String,
    /// The holder's session.
    pub holder: String,
    /// The holder's lock information, when its value is a lock's JSON.
    pub info: Option<LockInfo>,
}

/// Told by [`acquire`] who holds the lock it waits for, e.g. for a progress line.
pub trait WaitObserver: Send + Sync {
    /// A wait for a held lock begins (again).
    fn waiting(&self, waiting: &Waiting);

    /// [`acquire`] is returning, whatever the result: time to clear a progress line.
    fn finished(&self) {}
}

/// How a lock is laid out in Consul's KV store (see [`layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// consullock's own (and consullock 4.2's): the key itself, holding the lock's JSON.
    #[default]
    Own,
    /// `consul lock PREFIX`'s (`api.Lock`): the key `PREFIX/.lock`, with `api.Lock`'s flags and
    /// an empty value. consullock and `consul lock` exclude each other on it.
    ConsulLock,
    /// `consul lock -n N PREFIX`'s semaphore (`api.Semaphore`): at most `limit` holders, each
    /// with a key `PREFIX/<session>`, counted in `PREFIX/.lock`.
    Semaphore {
        /// How many holders at most (2 or more; `consul lock -n 1` is [`Layout::ConsulLock`]).
        limit: u32,
    },
}

impl Layout {
    /// Whether a session that ends (invalidated by force, or expired) keeps its lock from every
    /// contender for its lock-delay. Not quite for a semaphore: Go's contenders prune a dead
    /// holder from `.lock` at once, without touching any key the lock-delay guards; only
    /// consullock's wait until the lock-delay on the dead holder's contender key has passed.
    pub fn lock_delay_protects(self) -> bool {
        !matches!(self, Layout::Semaphore { .. })
    }
}

/// How to wait for a lock.
#[derive(Clone)]
pub struct AcquireOptions {
    /// Make exactly one attempt.
    pub non_blocking: bool,
    /// Give up after this long (monotonic clock); `None` waits for ever.
    pub timeout: Option<Duration>,
    /// Stored in the lock's value.
    pub metadata: Option<serde_json::Value>,
    /// Called around each attempt.
    pub hooks: Option<Arc<dyn AttemptHooks>>,
    /// Cap of the retry pause while lock-delay keeps a free key from being locked (at least
    /// [`MIN_LOCK_DELAY_BACKOFF_CAP`]).
    pub lock_delay_backoff_cap: Duration,
    /// Renew the session while waiting and holding (`execute` and the library); `lock` leaves
    /// its session to live its TTL.
    pub keep_alive: bool,
    /// Told who holds the lock whenever a wait for it begins.
    pub on_wait: Option<Arc<dyn WaitObserver>>,
    /// Which keys the lock takes.
    pub layout: Layout,
}

impl std::fmt::Debug for AcquireOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquireOptions")
            .field("non_blocking", &self.non_blocking)
            .field("timeout", &self.timeout)
            .field("metadata", &self.metadata)
            .field("hooks", &self.hooks.as_ref().map(|_| "AttemptHooks"))
            .field("lock_delay_backoff_cap", &self.lock_delay_backoff_cap)
            .field("keep_alive", &self.keep_alive)
            .field("on_wait", &self.on_wait.as_ref().map(|_| "WaitObserver"))
            .field("layout", &self.layout)
            .finish()
    }
}

impl Default for AcquireOptions {
    fn default() -> AcquireOptions {
        AcquireOptions {
            non_blocking: false,
            timeout: None,
            metadata: None,
            hooks: None,
            lock_delay_backoff_cap: LOCK_DELAY_BACKOFF_CAP,
            keep_alive: true,
            on_wait: None,
            layout: Layout::Own,
        }
    }
}

/// Why a free-looking lock was not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another session holds it.
    Held {
        /// That session.
        holder: String,
    },
    /// Nobody holds it, but Consul refuses it for a while: the lock-delay of a session that
    /// was invalidated while holding it.
    LockDelay,
    /// Every slot of the semaphore is taken.
    Full {
        /// The sessions holding them.
        holders: Vec<String>,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Held { .. } => f.write_str("held by another session"),
            Refusal::LockDelay => {
                f.write_str("free, but under the lock-delay of a session that lost it")
            }
            Refusal::Full { holders } => {
                write!(f, "full ({} holders)", holders.len())
            }
        }
    }
}

/// Why a lock was not acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// `non_blocking`, and the lock was not granted.
    #[error("the lock {key:?} is {refusal}")]
    NotAcquired {
        /// The key.
        key: String,
        /// Why.
        refusal: Refusal,
    },
    /// The timeout passed.
    #[error("timed out after {waited:?} waiting for the lock {key:?}")]
    TimedOut {
        /// The key.
        key: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The caller's cancel future completed (a signal, usually).
    #[error("interrupted while waiting for the lock {key:?}")]
    Cancelled {
        /// The key.
        key: String,
    },
    /// The key exists and holds something that is not a consullock lock: taking it would
    /// overwrite that value, and releasing it would delete the key.
    #[error(
        "the key {key:?} holds data that is not a consullock lock ({what}); it was left untouched"
    )]
    NotALock {
        /// The key.
        key: String,
        /// A short description of what it holds.
        what: String,
    },
    /// The semaphore's `.lock` key says another limit than ours: its holders and we disagree on
    /// how many may hold it (`consul lock -n` fails the same way).
    #[error(
        "the semaphore {key:?} has a limit of {stored} holders, not {asked}: every contender \
         must use the same -n"
    )]
    LimitConflict {
        /// The `.lock` key.
        key: String,
        /// The limit it stores.
        stored: u64,
        /// Ours.
        asked: u32,
    },
    /// Consul failed.
    #[error(transparent)]
    Consul(#[from] ConsulError),
}

/// Acquires the lock on `key` with a new session made from `settings`.
///
/// `cancel` ends the wait early (pass `std::future::pending()` for none) with
/// [`AcquireError::Cancelled`]; `options.timeout` ends it with [`AcquireError::TimedOut`]. Both
/// bound everything, the session's creation included. Every path that does not return the lock
/// destroys the session it created.
pub async fn acquire(
    client: &Client,
    key: &str,
    settings: &SessionSettings,
    options: &AcquireOptions,
    cancel: impl Future<Output = ()>,
) -> Result<HeldLock, AcquireError> {
    let started = Instant::now();
    let deadline = options
        .timeout
        .filter(|t| !t.is_zero())
        .and_then(|t| started.checked_add(t));
    tokio::pin!(cancel);
    let mut bounds = Bounds {
        cancel,
        deadline,
        key,
        started,
    };
    let mut holder = Holder {
        client,
        settings,
        keep_alive: options.keep_alive,
        session: None,
    };
    let acquired = match options.layout {
        Layout::Semaphore { limit } => {
            semaphore::attempts(&mut holder, key, limit, options, &mut bounds).await
        }
        layout => {
            attempts(
                &mut holder,
                &KeyLayout::of(layout, key),
                options,
                &mut bounds,
            )
            .await
        }
    };
    if let Some(observer) = &options.on_wait {
        observer.finished();
    }
    match acquired {
        Ok(acquired) => {
            let (session, liveness) = holder
                .session
                .take()
                .expect("an acquired lock has a session");
            Ok(HeldLock::new(session, liveness, acquired))
        }
        Err(error) => {
            holder.destroy().await;
            Err(error)
        }
    }
}

/// The session of an [`acquire`] call, created when first needed.
struct Holder<'a> {
    client: &'a Client,
    settings: &'a SessionSettings,
    keep_alive: bool,
    session: Option<(Session, Option<Liveness>)>,
}

impl Holder<'_> {
    /// The session, created now if there is none (or if the one we had died while we waited).
    async fn ensure<C: Future<Output = ()>>(
        &mut self,
        non_blocking: bool,
        bounds: &mut Bounds<'_, C>,
    ) -> Result<&Session, AcquireError> {
        let dead = self
            .session
            .as_ref()
            .and_then(|(_, liveness)| liveness.as_ref())
            .is_some_and(|l| l.loss().is_some());
        if dead {
            tracing::info!("session lost while waiting; creating a new one");
            self.destroy().await;
        }
        if self.session.is_none() {
            let session = create_session(self.client, self.settings, non_blocking, bounds).await?;
            let liveness = self.keep_alive.then(|| session.keep_alive());
            self.session = Some((session, liveness));
        }
        Ok(&self.session.as_ref().expect("just made").0)
    }

    /// Our session's id, if we have one.
    fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|(session, _)| session.id())
    }

    fn liveness(&self) -> Option<&Liveness> {
        self.session.as_ref().and_then(|(_, l)| l.as_ref())
    }

    async fn destroy(&mut self) {
        if let Some((session, liveness)) = self.session.take() {
            drop(liveness);
            let _ = session.destroy().await;
        }
    }
}

/// Creates the session, retrying what a live server answers during a leader election or under
/// load (5xx, 429) for up to [`WAIT_ERROR_BUDGET`], as the wait itself does, except with
/// `non_blocking`, which makes one attempt. An agent that cannot be reached at all on first
/// contact is more likely a wrong address than a blip: that fails at once (exit 8).
async fn create_session<C: Future<Output = ()>>(
    client: &Client,
    settings: &SessionSettings,
    non_blocking: bool,
    bounds: &mut Bounds<'_, C>,
) -> Result<Session, AcquireError> {
    let mut errors_since: Option<Instant> = None;
    loop {
        let create = Session::create(client, settings.clone());
        tokio::pin!(create);
        let result = match bounds.run(&mut create).await {
            Ok(result) => result,
            Err(interrupt) => {
                // The time waited is the time until the interrupt, not until the cleanup ends.
                let error = bounds.error(interrupt);
                abandon_create(create, settings.ttl.is_none()).await;
                return Err(error);
            }
        };
        match result {
            Ok(session) => return Ok(session),
            Err(e) if server_busy(&e) && !non_blocking => {
                let since = *errors_since.get_or_insert_with(Instant::now);
                if since.elapsed() > WAIT_ERROR_BUDGET {
                    return Err(e.into());
                }
                tracing::warn!("consul error while creating a session, retrying: {e}");
                bounds.pause(RETRY_INTERVAL).await?;
                if bounds.past_deadline() {
                    return Err(bounds.timed_out());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A session-create request we stopped waiting for may still reach the server, which would then
/// hold a session nobody knows about. Give it a moment to answer, and destroy what it made. A
/// session without a TTL would live for ever: for it, wait as long as the request itself may
/// take (its own deadline); one with a TTL ends by itself, so a short moment is enough.
async fn abandon_create(
    create: Pin<&mut impl Future<Output = Result<Session, ConsulError>>>,
    no_ttl: bool,
) {
    let grace = if no_ttl {
        crate::consul::DEFAULT_REQUEST_TIMEOUT
    } else {
        ABANDONED_CREATE_GRACE
    };
    match tokio::time::timeout(grace, create).await {
        Ok(Ok(session)) => {
            let _ = session.destroy().await;
        }
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(
            "a session-create request got no answer within {grace:?}; if consul created that \
             session, it is not destroyed (it ends with its TTL, if it has one)"
        ),
    }
}

/// A transient answer from a server that is up: 5xx (no leader) or 429.
fn server_busy(error: &ConsulError) -> bool {
    match error {
        ConsulError::RateLimited { .. } => true,
        ConsulError::Server { status, .. } => *status >= 500,
        _ => false,
    }
}

/// A lock just taken, for [`HeldLock::new`].
struct Acquired {
    info: LockInfo,
    value: Vec<u8>,
    lock_index: u64,
    /// The ModifyIndex of the lock key right after the acquisition; none for a semaphore slot.
    fencing_token: Option<u64>,
    what: held::What,
}

/// The key a single lock ([`Layout::Own`] or [`Layout::ConsulLock`]) takes, and how.
struct KeyLayout {
    /// The key locked.
    key: String,
    /// Its flags: 0 for consullock's own layout, `api.Lock`'s for `consul lock`'s.
    flags: u64,
    /// Whether the key stores the lock's JSON (`consul lock`'s keys stay empty).
    stores_info: bool,
}

impl KeyLayout {
    fn of(layout: Layout, key: &str) -> KeyLayout {
        match layout {
            Layout::ConsulLock => KeyLayout {
                key: layout::coordination_key(layout::prefix_of(key)),
                flags: layout::LOCK_FLAG_VALUE,
                stores_info: false,
            },
            _ => KeyLayout {
                key: key.to_owned(),
                flags: 0,
                stores_info: true,
            },
        }
    }
}

/// Whether a waiter with these settings may join the line (see `queue.rs`): its session must
/// be renewed and end soon after its process dies.
fn may_queue(settings: &SessionSettings, options: &AcquireOptions) -> bool {
    // `consul lock` contenders do not know the line: everyone waits on the key there.
    options.layout == Layout::Own
        && options.keep_alive
        && !options.non_blocking
        && settings.ttl.is_some_and(|ttl| ttl <= MAX_QUEUE_TTL)
}

async fn attempts<C: Future<Output = ()>>(
    holder: &mut Holder<'_>,
    layout: &KeyLayout,
    options: &AcquireOptions,
    bounds: &mut Bounds<'_, C>,
) -> Result<Acquired, AcquireError> {
    let key = layout.key.as_str();
    let client = holder.client;
    let mut lock_delay_backoff = LOCK_DELAY_BACKOFF_START;
    let lock_delay_cap = options
        .lock_delay_backoff_cap
        .max(MIN_LOCK_DELAY_BACKOFF_CAP);
    let mut early_returns = EarlyReturnBackoff::default();
    let mut errors = ErrorBudget::default();
    let mut queueing = may_queue(holder.settings, options);
    let mut place: Option<queue::Place> = None;
    // A read of the key already in hand (the one that ended a wait): no need to read it again.
    let mut known: Option<crate::consul::Indexed<Option<crate::consul::KvEntry>>> = None;
    let hostname = crate::session::hostname();
    loop {
        if bounds.past_deadline() {
            return Err(bounds.timed_out());
        }
        if let Some(hooks) = &options.hooks {
            bounds
                .run(hooks.before_attempt(key))
                .await
                .map_err(|i| bounds.error(i))?;
        }
        // In line and not first: wait for our turn before looking at the lock.
        if let Some(line) = &mut place {
            let turn = line.wait_turn(client, &mut early_returns, bounds).await;
            match after_wait(turn.map(Some), &mut errors, bounds, "a turn in line").await? {
                Some(queue::Turn::First) => {}
                Some(queue::Turn::Gone) => {
                    place = None;
                    known = None;
                }
                None => continue,
            }
        }
        // Read first: a key holding someone else's data is refused untouched, and a held lock
        // is waited for without writing anything.
        let read = match known.take() {
            Some(read) => read,
            None => {
                let plain = crate::consul::QueryOptions::default();
                let get = client.kv_get(key, &plain);
                match wait::request(bounds, &mut errors, options.non_blocking, "the lock", get)
                    .await?
                {
                    Some(read) => read,
                    None => continue,
                }
            }
        };
        errors.answered();
        let held = match key_state(&read, layout.flags) {
            KeyState::NotALock { what } => {
                return Err(AcquireError::NotALock {
                    key: key.to_owned(),
                    what,
                });
            }
            KeyState::Held {
                holder: session,
                index,
                info,
            } => (session, index, info),
            KeyState::Free => {
                let session_id = holder
                    .ensure(options.non_blocking, bounds)
                    .await?
                    .id()
                    .to_owned();
                let info = new_info(key, &session_id, options, bounds.started, &hostname);
                let value = if layout.stores_info {
                    info.to_value()
                } else {
                    Vec::new()
                };
                let attempt = try_acquire(
                    client,
                    key,
                    &value,
                    layout.flags,
                    &session_id,
                    read.value.as_ref(),
                    place.as_ref().map(queue::Place::entry),
                );
                let outcome = bounds.run(attempt).await.map_err(|i| bounds.error(i))?;
                if outcome.is_ok() {
                    errors.reset();
                }
                match outcome {
                    Ok(Attempt::Acquired(entry, confirmed_at)) => {
                        // Consul just confirmed the session (and now the lock): the contact
                        // window starts here, not at the last renew.
                        if let Some(liveness) = holder.liveness() {
                            liveness.shared.confirm(confirmed_at);
                        }
                        tracing::info!(key, session = %session_id, fencing_token = entry.modify_index, "lock acquired");
                        return Ok(Acquired {
                            info,
                            value,
                            lock_index: entry.lock_index,
                            fencing_token: Some(entry.modify_index),
                            what: held::What::Key {
                                key: key.to_owned(),
                                flags: layout.flags,
                            },
                        });
                    }
                    Ok(Attempt::Changed(read)) => {
                        known = read;
                        continue;
                    }
                    Ok(Attempt::SessionGone) => {
                        // Our session died while we waited (a failed node check, an operator):
                        // the next attempt makes a new one (and joins the line again).
                        holder.destroy().await;
                        place = None;
                        continue;
                    }
                    Ok(Attempt::LockDelay) => {
                        // Free but refused: lock-delay from an invalidated session. Consul does
                        // not say for how long, so back off with a short, capped pause.
                        refused(options, bounds, key, || Refusal::LockDelay).await?;
                        tracing::debug!(
                            key,
                            backoff = ?lock_delay_backoff,
                            "lock refused on a free key (lock-delay); retrying"
                        );
                        bounds.pause(lock_delay_backoff).await?;
                        lock_delay_backoff = (lock_delay_backoff * 2).min(lock_delay_cap);
                        continue;
                    }
                    Err(e) if errors.allows(&e, options.non_blocking) => {
                        tracing::warn!("consul error while waiting for the lock, retrying: {e}");
                        bounds.pause(RETRY_INTERVAL).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let (holder_session, index, info) = held;
        if let Some(ours) = holder.session_id()
            && ours == holder_session
            && let Some(entry) = read.value.as_ref()
            && let Some(info) = info.clone().or_else(|| {
                (!layout.stores_info)
                    .then(|| new_info(key, ours, options, bounds.started, &hostname))
            })
        {
            // Ours already: an attempt whose answer was lost (a timeout after the commit) took
            // it. Waiting for ourselves would never end.
            tracing::info!(key, session = %ours, "the lock is already ours");
            return Ok(Acquired {
                value: entry.value.clone(),
                info,
                lock_index: entry.lock_index,
                fencing_token: Some(entry.modify_index),
                what: held::What::Key {
                    key: key.to_owned(),
                    flags: layout.flags,
                },
            });
        }
        lock_delay_backoff = LOCK_DELAY_BACKOFF_START;
        refused(options, bounds, key, || Refusal::Held {
            holder: holder_session.clone(),
        })
        .await?;
        if bounds.past_deadline() {
            return Err(bounds.timed_out());
        }
        // A waiter keeps a session, renewed while it waits: the moment the lock is free, it
        // tries at once instead of creating one first. It also takes its place in line.
        let session_id = holder.ensure(false, bounds).await?.id().to_owned();
        if queueing && place.is_none() {
            match bounds
                .run(queue::Place::join(client, key, &session_id))
                .await
                .map_err(|i| bounds.error(i))?
            {
                Ok(joined) => {
                    place = Some(joined);
                    // Others may be ahead of us: wait for our turn before watching the lock.
                    continue;
                }
                Err(e) => {
                    // The line is an optimisation: without it, wait on the lock key as all did.
                    tracing::debug!(key, "cannot join the queue, waiting without it: {e}");
                    queueing = false;
                }
            }
        }
        if let Some(observer) = &options.on_wait {
            observer.waiting(&Waiting {
                key: key.to_owned(),
                holder: holder_session.clone(),
                info,
            });
        }
        tracing::debug!(key, holder = %holder_session, "lock held; waiting for a change");
        let wait = wait_for_change(
            client,
            key,
            index,
            holder.liveness(),
            &mut early_returns,
            bounds,
        );
        known = after_wait(wait.await, &mut errors, bounds, "the lock").await?;
    }
}

/// Our lock's JSON for `session` taking `key` now, as both tools write it.
fn new_info(
    key: &str,
    session: &str,
    options: &AcquireOptions,
    started: tokio::time::Instant,
    hostname: &Option<String>,
) -> LockInfo {
    LockInfo {
        created: timestamp_now(),
        key: key.to_owned(),
        metadata: options.metadata.clone(),
        seconds_to_lock: started.elapsed().as_secs_f64(),
        session: session.to_owned(),
        hostname: hostname.clone(),
        pid: Some(std::process::id()),
    }
}

/// The key is held, or refused though free: tells the hook, and ends a non-blocking attempt
/// with `refusal`; a blocking one goes on waiting.
async fn refused<C: Future<Output = ()>>(
    options: &AcquireOptions,
    bounds: &mut Bounds<'_, C>,
    key: &str,
    refusal: impl FnOnce() -> Refusal,
) -> Result<(), AcquireError> {
    if let Some(hooks) = &options.hooks {
        bounds
            .run(hooks.already_locked(key))
            .await
            .map_err(|i| bounds.error(i))?;
    }
    if options.non_blocking {
        return Err(AcquireError::NotAcquired {
            key: key.to_owned(),
            refusal: refusal(),
        });
    }
    Ok(())
}
