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
*/

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clock;
use crate::consul::{Client, ConsulError, KvEntry, PutMode, QueryOptions};
use crate::session::{Liveness, LossReason, RETRY_INTERVAL, Session, SessionSettings};

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

/// The information stored in a lock key, and printed by `consullock lock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// When the lock was taken: ISO-8601 UTC without zone, as consullock 4.2 writes it.
    pub created: String,
    /// The lock key.
    pub key: String,
    /// User metadata (`--metadata`), any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Seconds spent acquiring.
    #[serde(rename = "secondsToLock")]
    pub seconds_to_lock: f64,
    /// The session holding the lock.
    pub session: String,
    /// Host of the holder (consullock 4.2 does not write it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Process id of the holder (consullock 4.2 does not write it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl LockInfo {
    /// Parses a key's value; `None` when it is not a lock's JSON.
    pub fn parse(value: &[u8]) -> Option<LockInfo> {
        serde_json::from_slice(value).ok()
    }

    /// The value to store: pretty-printed with sorted keys, as consullock 4.2 stores it.
    pub fn to_value(&self) -> Vec<u8> {
        // serde_json's map keeps keys sorted (no `preserve_order`), so going through a Value
        // sorts them.
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        serde_json::to_vec_pretty(&value).unwrap_or_default()
    }
}

/// Whether a key's value is a lock that consullock (this one, or 4.2) wrote.
pub fn is_lock_value(value: &[u8]) -> bool {
    LockInfo::parse(value).is_some()
}

/// The current time as consullock 4.2 writes it: `2017-11-30T14:55:49.322108`.
pub fn timestamp_now() -> String {
    let text = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    text.trim_end_matches('Z').to_owned()
}

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
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Held { .. } => f.write_str("held by another session"),
            Refusal::LockDelay => {
                f.write_str("free, but under the lock-delay of a session that lost it")
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
    /// Consul failed.
    #[error(transparent)]
    Consul(#[from] ConsulError),
}

/// A lock we hold.
#[derive(Debug)]
pub struct HeldLock {
    session: Session,
    liveness: Option<Liveness>,
    info: LockInfo,
    value: Vec<u8>,
    lock_index: u64,
    fencing_token: u64,
}

/// What a key holds, as one attempt sees it.
enum KeyState {
    /// Absent, or a lock nobody holds.
    Free,
    /// A lock some session holds.
    Held {
        holder: String,
        index: u64,
        info: Option<LockInfo>,
    },
    /// Someone else's data.
    NotALock { what: String },
}

fn describe(entry: &KvEntry) -> String {
    let kind = if entry.value.is_empty() {
        "an empty value".to_owned()
    } else {
        format!("{} bytes", entry.value.len())
    };
    match &entry.session {
        Some(session) => format!("{kind}, held by session {session}"),
        None => kind,
    }
}

fn key_state(read: &crate::consul::Indexed<Option<KvEntry>>) -> KeyState {
    let Some(entry) = &read.value else {
        return KeyState::Free;
    };
    if !is_lock_value(&entry.value) {
        return KeyState::NotALock {
            what: describe(entry),
        };
    }
    match &entry.session {
        Some(holder) => KeyState::Held {
            holder: holder.clone(),
            index: read.index,
            info: LockInfo::parse(&entry.value),
        },
        None => KeyState::Free,
    }
}

/// Why waiting stopped early.
enum Interrupt {
    Cancelled,
    TimedOut,
}

/// The cancel future and the deadline of one [`acquire`] call, raced against each await.
struct Bounds<'a, C: Future<Output = ()>> {
    cancel: Pin<&'a mut C>,
    deadline: Option<Instant>,
    key: &'a str,
    started: Instant,
}

impl<C: Future<Output = ()>> Bounds<'_, C> {
    /// Runs `work` unless cancelled or timed out first.
    async fn run<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Interrupt> {
        let deadline = self.deadline;
        tokio::select! {
            biased;
            () = &mut self.cancel => Err(Interrupt::Cancelled),
            () = sleep_until_option(deadline) => Err(Interrupt::TimedOut),
            result = work => Ok(result),
        }
    }

    fn error(&self, interrupt: Interrupt) -> AcquireError {
        match interrupt {
            Interrupt::Cancelled => AcquireError::Cancelled {
                key: self.key.to_owned(),
            },
            Interrupt::TimedOut => self.timed_out(),
        }
    }

    fn timed_out(&self) -> AcquireError {
        AcquireError::TimedOut {
            key: self.key.to_owned(),
            waited: self.started.elapsed(),
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps for `pause` (cut short by the deadline, which the next check reports).
    async fn pause(&mut self, pause: Duration) -> Result<(), AcquireError> {
        match self.run(tokio::time::sleep(pause)).await {
            Ok(()) | Err(Interrupt::TimedOut) => Ok(()),
            Err(interrupt) => Err(self.error(interrupt)),
        }
    }
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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
    let acquired = attempts(&mut holder, key, options, &mut bounds).await;
    if let Some(observer) = &options.on_wait {
        observer.finished();
    }
    match acquired {
        Ok(acquired) => {
            let (session, liveness) = holder
                .session
                .take()
                .expect("an acquired lock has a session");
            Ok(HeldLock {
                session,
                liveness,
                info: acquired.info,
                value: acquired.value,
                lock_index: acquired.lock_index,
                fencing_token: acquired.fencing_token,
            })
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
                abandon_create(create).await;
                return Err(bounds.error(interrupt));
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
/// hold a session nobody knows about (for ever, without a TTL). Give it a moment to answer, and
/// destroy what it made.
async fn abandon_create(create: Pin<&mut impl Future<Output = Result<Session, ConsulError>>>) {
    match tokio::time::timeout(ABANDONED_CREATE_GRACE, create).await {
        Ok(Ok(session)) => {
            let _ = session.destroy().await;
        }
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(
            "a session-create request got no answer within {ABANDONED_CREATE_GRACE:?}; if consul \
             created that session, it is not destroyed (it ends with its TTL, if it has one)"
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

struct Acquired {
    info: LockInfo,
    value: Vec<u8>,
    lock_index: u64,
    fencing_token: u64,
}

/// Counts transient errors back to back, against [`WAIT_ERROR_BUDGET`].
#[derive(Default)]
struct ErrorBudget {
    since: Option<Instant>,
    /// Consul has answered once: before that, an agent that cannot be reached at all is more
    /// likely a wrong address than a blip, and fails at once (exit 8).
    answered: bool,
}

impl ErrorBudget {
    /// Whether `error` may be retried: transient, and within the budget.
    fn allows(&mut self, error: &ConsulError, non_blocking: bool) -> bool {
        if !error.is_transient() || non_blocking {
            return false;
        }
        if !self.answered && matches!(error, ConsulError::Unreachable { .. }) {
            return false;
        }
        self.since.get_or_insert_with(Instant::now).elapsed() <= WAIT_ERROR_BUDGET
    }

    /// A request succeeded: the errors before it no longer count.
    fn reset(&mut self) {
        self.since = None;
        self.answered = true;
    }
}

async fn attempts<C: Future<Output = ()>>(
    holder: &mut Holder<'_>,
    key: &str,
    options: &AcquireOptions,
    bounds: &mut Bounds<'_, C>,
) -> Result<Acquired, AcquireError> {
    let client = holder.client;
    let mut lock_delay_backoff = LOCK_DELAY_BACKOFF_START;
    let lock_delay_cap = options
        .lock_delay_backoff_cap
        .max(MIN_LOCK_DELAY_BACKOFF_CAP);
    let mut early_returns = EarlyReturnBackoff::default();
    let mut errors = ErrorBudget::default();
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
        // Read first: a key holding someone else's data is refused untouched, and a held lock
        // is waited for without writing anything.
        let read = match bounds
            .run(client.kv_get(key, &QueryOptions::default()))
            .await
            .map_err(|i| bounds.error(i))?
        {
            Ok(read) => read,
            Err(e) if errors.allows(&e, options.non_blocking) => {
                tracing::warn!("consul error while waiting for the lock, retrying: {e}");
                bounds.pause(RETRY_INTERVAL).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        errors.reset();
        let refusal = match key_state(&read) {
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
            } => Some((session, index, info)),
            KeyState::Free => None,
        };
        let (holder_session, index, info) = match refusal {
            Some(held) => held,
            None => {
                let session_id = holder
                    .ensure(options.non_blocking, bounds)
                    .await?
                    .id()
                    .to_owned();
                let info = LockInfo {
                    created: timestamp_now(),
                    key: key.to_owned(),
                    metadata: options.metadata.clone(),
                    seconds_to_lock: bounds.started.elapsed().as_secs_f64(),
                    session: session_id.clone(),
                    hostname: hostname.clone(),
                    pid: Some(std::process::id()),
                };
                let value = info.to_value();
                let attempt = try_acquire(client, key, &value, &session_id, read.index);
                match bounds.run(attempt).await.map_err(|i| bounds.error(i))? {
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
                            fencing_token: entry.modify_index,
                        });
                    }
                    Ok(Attempt::LostRightAway) => {
                        tracing::warn!(
                            key,
                            "the lock was taken from us right after acquiring; retrying"
                        );
                        continue;
                    }
                    Ok(Attempt::Refused(read)) => match key_state(&read) {
                        KeyState::Held {
                            holder,
                            index,
                            info,
                        } => (holder, index, info),
                        KeyState::NotALock { what } => {
                            return Err(AcquireError::NotALock {
                                key: key.to_owned(),
                                what,
                            });
                        }
                        KeyState::Free => {
                            // Free but refused: lock-delay from an invalidated session. Consul
                            // does not say for how long, so back off with a short, capped pause.
                            if let Some(hooks) = &options.hooks {
                                bounds
                                    .run(hooks.already_locked(key))
                                    .await
                                    .map_err(|i| bounds.error(i))?;
                            }
                            if options.non_blocking {
                                return Err(AcquireError::NotAcquired {
                                    key: key.to_owned(),
                                    refusal: Refusal::LockDelay,
                                });
                            }
                            tracing::debug!(
                                key,
                                backoff = ?lock_delay_backoff,
                                "lock refused on a free key (lock-delay); retrying"
                            );
                            bounds.pause(lock_delay_backoff).await?;
                            lock_delay_backoff = (lock_delay_backoff * 2).min(lock_delay_cap);
                            continue;
                        }
                    },
                    Err(ConsulError::InvalidSession { .. }) => {
                        // Our session died while we waited (a failed node check, an operator):
                        // the next attempt makes a new one.
                        holder.destroy().await;
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
        lock_delay_backoff = LOCK_DELAY_BACKOFF_START;
        if let Some(hooks) = &options.hooks {
            bounds
                .run(hooks.already_locked(key))
                .await
                .map_err(|i| bounds.error(i))?;
        }
        if options.non_blocking {
            return Err(AcquireError::NotAcquired {
                key: key.to_owned(),
                refusal: Refusal::Held {
                    holder: holder_session,
                },
            });
        }
        if bounds.past_deadline() {
            return Err(bounds.timed_out());
        }
        // A waiter keeps a session, renewed while it waits: the moment the lock is free, it
        // tries at once instead of creating one first.
        holder.ensure(options.non_blocking, bounds).await?;
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
        match wait.await {
            Ok(()) => errors.reset(),
            Err(WaitError::Acquire(e)) => return Err(e),
            Err(WaitError::Consul(e)) if errors.allows(&e, false) => {
                // A blocking read is the request most exposed to a cut connection or a proxy
                // that times it out. Pause, then read the key again: the next attempt
                // reconnects, and errors that go on count against the budget.
                tracing::warn!("consul error while waiting for the lock, retrying: {e}");
                bounds.pause(RETRY_INTERVAL).await?;
            }
            Err(WaitError::Consul(e)) => return Err(e.into()),
        }
    }
}

/// What one acquire request found.
enum Attempt {
    /// Ours, with the entry read right after, and when that read (which confirms the lock) was
    /// sent.
    Acquired(KvEntry, Duration),
    /// Acquired, then gone before the read (an operator's unlock).
    LostRightAway,
    /// Refused: the key as read right after.
    Refused(crate::consul::Indexed<Option<KvEntry>>),
}

/// `?acquire`, then a read to tell what happened: the consistent read after a success gives the
/// fencing token (the ModifyIndex of our acquisition); after a refusal, it tells a holder from a
/// lock-delay.
async fn try_acquire(
    client: &Client,
    key: &str,
    value: &[u8],
    session: &str,
    _read_index: u64,
) -> Result<Attempt, ConsulError> {
    if client
        .kv_put(key, value, PutMode::Acquire(session), None)
        .await?
    {
        let sent_at = clock::now();
        let read = client
            .kv_get(key, &QueryOptions::default().consistent())
            .await?;
        return Ok(match read.value {
            Some(entry) if entry.session.as_deref() == Some(session) => {
                Attempt::Acquired(entry, sent_at)
            }
            _ => Attempt::LostRightAway,
        });
    }
    let read = client.kv_get(key, &QueryOptions::default()).await?;
    Ok(Attempt::Refused(read))
}

/// The pause after blocking reads that return early with nothing changed: grows from
/// [`EARLY_RETURN_BACKOFF_START`] to [`EARLY_RETURN_BACKOFF_CAP`], with jitter.
#[derive(Default)]
struct EarlyReturnBackoff {
    next: Option<Duration>,
}

impl EarlyReturnBackoff {
    /// The pause to take now; the next one is longer.
    fn next_pause(&mut self) -> Duration {
        let pause = self.next.unwrap_or(EARLY_RETURN_BACKOFF_START);
        self.next = Some((pause * 2).min(EARLY_RETURN_BACKOFF_CAP));
        jitter(pause)
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

/// `pause` scaled by a random factor in [0.5, 1.0), so that many clients do not retry in step.
fn jitter(pause: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    let factor = 0.5 + (random % 1000) as f64 / 2000.0;
    pause.mul_f64(factor)
}

enum WaitError {
    Acquire(AcquireError),
    Consul(ConsulError),
}

/// Blocks on the key until it changes, the session is lost, or the bounds end the wait.
async fn wait_for_change<C: Future<Output = ()>>(
    client: &Client,
    key: &str,
    index: u64,
    liveness: Option<&Liveness>,
    backoff: &mut EarlyReturnBackoff,
    bounds: &mut Bounds<'_, C>,
) -> Result<(), WaitError> {
    let mut index = index.max(1);
    loop {
        let wait = match bounds.deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(MAX_BLOCKING_WAIT),
            None => MAX_BLOCKING_WAIT,
        };
        if wait.is_zero() {
            return Ok(());
        }
        let sent = Instant::now();
        let options = QueryOptions::blocking(index, wait);
        let read = client.kv_get(key, &options);
        let lost = async {
            match liveness {
                Some(l) => {
                    l.lost().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let result = bounds
            .run(async {
                tokio::select! {
                    result = read => Some(result),
                    () = lost => None,
                }
            })
            .await;
        let result = match result {
            Ok(Some(result)) => result,
            // Our session died: the caller makes a new one.
            Ok(None) => return Ok(()),
            Err(Interrupt::TimedOut) => return Ok(()),
            Err(interrupt) => return Err(WaitError::Acquire(bounds.error(interrupt))),
        };
        let read = result.map_err(WaitError::Consul)?;
        let holder = read.value.as_ref().and_then(|e| e.session.as_ref());
        if holder.is_none() || read.value.is_none() || read.index > index {
            backoff.reset();
            return Ok(());
        }
        // Nothing changed (or the index went backwards, after a snapshot restore). A read that
        // came back long before its wait was up is a server or proxy not blocking: pause before
        // the next, longer each time, instead of asking again at once.
        if sent.elapsed() < wait / 2 {
            let pause = backoff.next_pause();
            tracing::debug!(key, ?pause, "blocking read returned early without a change");
            bounds.pause(pause).await.map_err(WaitError::Acquire)?;
        } else {
            backoff.reset();
        }
        index = read.index.max(1);
    }
}

impl HeldLock {
    /// Stops renewing and watching (dropping the [`Liveness`] aborts its tasks).
    fn stop_watching(&mut self) -> Option<Liveness> {
        self.liveness.take()
    }

    /// The lock's information, as stored in the key.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// The session holding the lock.
    pub fn session_id(&self) -> &str {
        self.session.id()
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.info.key
    }

    /// The key's LockIndex after acquiring (Consul's sequencer, with key and session).
    pub fn lock_index(&self) -> u64 {
        self.lock_index
    }

    /// The key's ModifyIndex read consistently right after acquiring. It is a Raft index, so it
    /// only grows from one holder to the next, even when the key is deleted in between: a
    /// resource that remembers the highest token it has seen can refuse a stale holder.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Starts watching the lock for a holder that needs `kill_grace` to stop its work once the
    /// lock is lost: consistent blocking reads of the key, and the contact window (see
    /// [`crate::session::contact_window`]). Loss is then reported by [`HeldLock::lost`] and by
    /// the returned deadline, which passes when the lock may be someone else's, minus the grace
    /// and a margin. Fails when the settings leave no such window.
    pub fn watch(&mut self, kill_grace: Duration) -> Result<clock::Deadline, String> {
        let liveness = self
            .liveness
            .get_or_insert_with(|| self.session.keep_alive());
        let window = liveness.enforce_contact_window(kill_grace)?;
        // Each watch read that returns confirms the lock, so they must be sent well within the
        // contact window, even with nothing changing.
        let monitor_wait = window.shortest().map_or(MAX_BLOCKING_WAIT, |w| {
            (w / 3).clamp(MIN_MONITOR_WAIT, MAX_BLOCKING_WAIT)
        });
        let task = tokio::spawn(monitor_loop(
            self.session.client().clone(),
            self.info.key.clone(),
            self.session.id().to_owned(),
            self.fencing_token,
            monitor_wait,
            liveness.shared.clone(),
        ));
        liveness.push_task(task);
        Ok(liveness.deadline())
    }

    /// A receiver of the loss, for code that waits on it elsewhere.
    pub fn loss_receiver(&mut self) -> tokio::sync::watch::Receiver<Option<LossReason>> {
        self.liveness
            .get_or_insert_with(|| self.session.keep_alive())
            .subscribe()
    }

    /// The loss, if it happened (a contact window that has run out counts, even if the task
    /// that watches it has not noticed yet).
    pub fn loss(&self) -> Option<LossReason> {
        let liveness = self.liveness.as_ref()?;
        liveness.shared.declare_if_past_deadline();
        liveness.loss()
    }

    /// Waits until the lock is lost (only meaningful after [`HeldLock::watch`]).
    pub async fn lost(&mut self) -> LossReason {
        crate::session::wait_lost(self.loss_receiver()).await
    }

    /// When Consul will have ended the session by itself at the latest, if it has a TTL: twice
    /// the TTL after the last renewal (Consul's servers wait 2×TTL).
    fn expires_by(&self, liveness: Option<&Liveness>) -> Option<std::time::SystemTime> {
        let (renewed, ttl) = match liveness {
            Some(liveness) => liveness.last_renewal(),
            None => (self.session.created_at(), self.session.settings().ttl),
        };
        let ends = renewed + ttl? * crate::session::SESSION_TTL_MULTIPLIER;
        let from_now = ends.saturating_sub(clock::now());
        Some(std::time::SystemTime::now() + from_now)
    }

    /// Releases the lock cleanly: `?release` with our session (no lock-delay for the next
    /// holder), delete the key if nobody changed it since, destroy the session.
    ///
    /// Each request gives up after [`RELEASE_REQUEST_TIMEOUT`]; `cancel` (a stop signal) ends
    /// the release at once. When the lock could not be released, the error says when the
    /// session ends by itself. A release that failed is followed by a destroy of the session,
    /// which also frees the key (under the session's lock-delay).
    pub async fn release(mut self, cancel: impl Future<Output = ()>) -> Result<(), ReleaseError> {
        let liveness = self.stop_watching();
        let expires_by = self.expires_by(liveness.as_ref());
        drop(liveness);
        let client = self
            .session
            .client()
            .with_request_timeout(RELEASE_REQUEST_TIMEOUT);
        let key = self.info.key.clone();
        let session = self.session.id().to_owned();
        tokio::pin!(cancel);
        let release = async {
            let released = client
                .kv_put(&key, &self.value, PutMode::Release(&session), None)
                .await?;
            if released {
                // Leave no unheld lock value behind, unless someone wrote the key since.
                let read = client.kv_get(&key, &QueryOptions::default()).await;
                if let Ok(read) = read
                    && let Some(entry) = read
                        .value
                        .filter(|e| e.session.is_none() && e.value == self.value)
                {
                    let _ = client.kv_delete(&key, Some(entry.modify_index)).await;
                }
            }
            Ok::<bool, ConsulError>(released)
        };
        let released = tokio::select! {
            biased;
            () = &mut cancel => Err(ReleaseFailure::Interrupted),
            result = release => result.map_err(ReleaseFailure::Consul),
        };
        if matches!(released, Err(ReleaseFailure::Interrupted)) {
            return Err(ReleaseError {
                key,
                failure: ReleaseFailure::Interrupted,
                expires_by,
            });
        }
        let destroy = self.session.destroy_with_timeout(RELEASE_REQUEST_TIMEOUT);
        let destroyed = tokio::select! {
            biased;
            () = &mut cancel => Err(ReleaseFailure::Interrupted),
            result = destroy => result.map_err(ReleaseFailure::Consul),
        };
        match (released, destroyed) {
            (Ok(released), destroyed) => {
                if released {
                    tracing::info!(key = %key, "lock released");
                } else {
                    tracing::info!(key = %key, "the lock was no longer ours to release");
                }
                if let Err(e) = destroyed {
                    tracing::warn!(
                        "the session of {key} could not be destroyed ({e}); it ends with its TTL"
                    );
                }
                Ok(())
            }
            (Err(e), Ok(())) => {
                tracing::info!(
                    key = %key,
                    "lock released by destroying its session (the release failed: {e})"
                );
                Ok(())
            }
            (Err(failure), Err(_)) => Err(ReleaseError {
                key,
                failure,
                expires_by,
            }),
        }
    }

    /// Gives the lock up to Consul: the session is neither renewed nor destroyed, so the lock
    /// stays held until `unlock` or the session's TTL (what `consullock lock` does).
    pub fn leave_held(mut self) -> LockInfo {
        self.stop_watching();
        self.info
    }

    /// Destroys the session without releasing first (the key goes with it, under lock-delay):
    /// after a loss, a release would only answer `false` or hang.
    pub async fn abandon(mut self, cancel: impl Future<Output = ()>) -> Result<(), ReleaseError> {
        let liveness = self.stop_watching();
        let expires_by = self.expires_by(liveness.as_ref());
        drop(liveness);
        let destroy = self.session.destroy_with_timeout(RELEASE_REQUEST_TIMEOUT);
        let result = tokio::select! {
            biased;
            () = cancel => Err(ReleaseFailure::Interrupted),
            result = destroy => result.map_err(ReleaseFailure::Consul),
        };
        result.map_err(|failure| ReleaseError {
            key: self.info.key.clone(),
            failure,
            expires_by,
        })
    }
}

/// Why a release did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseFailure {
    /// A stop request ended it.
    #[error("interrupted")]
    Interrupted,
    /// Consul failed or did not answer.
    #[error(transparent)]
    Consul(#[from] ConsulError),
}

/// A lock that could not be released: it stays held until its session ends by itself.
#[derive(Debug, thiserror::Error)]
#[error("the lock on {key} was NOT released ({failure}); {}", expiry(.expires_by))]
pub struct ReleaseError {
    /// The key.
    pub key: String,
    /// Why.
    pub failure: ReleaseFailure,
    /// When Consul ends the session (and frees the lock) at the latest; `None` for a session
    /// without TTL, which only an unlock ends.
    pub expires_by: Option<std::time::SystemTime>,
}

fn expiry(expires_by: &Option<std::time::SystemTime>) -> String {
    match expires_by {
        Some(at) => format!(
            "its session ends by itself by {} UTC at the latest",
            humantime::format_rfc3339_seconds(*at)
                .to_string()
                .trim_end_matches('Z')
        ),
        None => "its session has no TTL: it stays held until `consullock unlock`".to_owned(),
    }
}

async fn monitor_loop(
    client: Client,
    key: String,
    session: String,
    index: u64,
    wait: Duration,
    shared: Arc<crate::session::Shared>,
) {
    // Its own pool: the release that aborts this watch then finds the shared pool's
    // connection idle instead of connecting anew (on the handoff's critical path). Built here,
    // in the task, so that it costs nothing before the child starts.
    let client = match client.with_own_pool() {
        Ok(own) => own,
        Err(e) => {
            tracing::debug!("watching on the shared connection pool: {e}");
            client
        }
    };
    let mut index = index;
    let mut in_flight = tokio::task::JoinSet::new();
    // Send a read every `wait`, whether or not the previous ones have answered: each confirms
    // the lock from its own send time, so slow answers overlap instead of adding up.
    let mut next_send = tokio::time::Instant::now();
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_send) => {
                let sent_at = clock::now();
                last_sent = Some(tokio::time::Instant::now());
                let client = client.clone();
                let key = key.clone();
                let options = QueryOptions::blocking(index.max(1), wait).consistent();
                in_flight.spawn(async move { (sent_at, client.kv_get(&key, &options).await) });
                next_send = tokio::time::Instant::now() + wait;
            }
            Some(joined) = in_flight.join_next() => {
                let Ok((sent_at, result)) = joined else { continue };
                match result {
                    Ok(read) => match read.value {
                        None => {
                            shared.declare_lost(LossReason::KeyDeleted);
                            return;
                        }
                        Some(entry) if entry.session.as_deref() != Some(session.as_str()) => {
                            shared.declare_lost(LossReason::KeyTakenOver {
                                holder: entry.session,
                            });
                            return;
                        }
                        Some(_) => {
                            shared.confirm(sent_at);
                            if shared.is_lost() {
                                return;
                            }
                            let changed = read.index > index;
                            // An index that goes backwards (snapshot restore) restarts the watch.
                            index = if read.index < index { 0 } else { read.index };
                            // Keep a read blocked on the key at all times, so a change is seen
                            // at once; but never faster than the floor, whatever the server does.
                            if changed && in_flight.is_empty() {
                                let floor = last_sent.map_or(next_send, |at| at + MIN_MONITOR_WAIT);
                                next_send = next_send.min(floor.max(tokio::time::Instant::now()));
                            }
                        }
                    },
                    Err(e) => {
                        tracing::warn!(key = %key, "watching the lock failed, retrying: {e}");
                    }
                }
            }
        }
    }
}

/// A key found by [`find`] or [`find_regex`]: its lock information when its value is a lock's
/// JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundLock {
    /// The key.
    pub key: String,
    /// The session holding the key, if any.
    pub holder: Option<String>,
    /// The parsed value, when it is a lock's JSON.
    pub info: Option<LockInfo>,
    /// The raw entry.
    pub entry: KvEntry,
}

impl FoundLock {
    fn from_entry(entry: KvEntry) -> FoundLock {
        FoundLock {
            key: entry.key.clone(),
            holder: entry.session.clone(),
            info: LockInfo::parse(&entry.value),
            entry,
        }
    }
}

/// The lock on `key`, if the key exists.
pub async fn find(client: &Client, key: &str) -> Result<Option<FoundLock>, ConsulError> {
    let read = client.kv_get(key, &QueryOptions::default()).await?;
    Ok(read.value.map(FoundLock::from_entry))
}

/// The names of every key that fully matches `pattern`, sorted: listed under the pattern's
/// literal prefix without their values (a prefix may hold far more data than locks).
pub async fn find_keys(
    client: &Client,
    pattern: &regex::Regex,
) -> Result<Vec<String>, ConsulError> {
    let prefix = literal_prefix(pattern.as_str());
    let anchored = regex::Regex::new(&format!("^(?:{})$", pattern.as_str()))
        .unwrap_or_else(|_| pattern.clone());
    let listed = client
        .kv_keys(&prefix, None, &QueryOptions::default())
        .await?;
    let mut keys: Vec<String> = listed
        .value
        .into_iter()
        .filter(|key| anchored.is_match(key))
        .collect();
    keys.sort();
    Ok(keys)
}

/// Every key that fully matches `pattern`, sorted, read one by one.
pub async fn find_regex(
    client: &Client,
    pattern: &regex::Regex,
) -> Result<Vec<FoundLock>, ConsulError> {
    let mut found = Vec::new();
    for key in find_keys(client, pattern).await? {
        if let Some(lock) = find(client, &key).await? {
            found.push(lock);
        }
    }
    Ok(found)
}

/// What [`unlock`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlocked {
    /// The session holding the lock was destroyed.
    Released,
    /// Nobody held it (or the key does not exist).
    NotHeld,
    /// The key holds something that is not a consullock lock, and it was left alone.
    NotALock,
}

/// Releases anyone's lock on `key` by destroying the session that holds it, as consullock 4.2
/// does: Consul then applies that session's lock-delay before the next holder can acquire,
/// which gives a live holder time to notice and stop. A key whose value is not a consullock lock
/// is left alone unless `force`: its session may be another program's leader lock.
pub async fn unlock(client: &Client, key: &str, force: bool) -> Result<Unlocked, ConsulError> {
    match find(client, key).await? {
        Some(found) => unlock_found(client, &found, force).await,
        None => Ok(Unlocked::NotHeld),
    }
}

async fn unlock_found(
    client: &Client,
    found: &FoundLock,
    force: bool,
) -> Result<Unlocked, ConsulError> {
    // The key's Session is the real holder; the JSON names it too for locks written by either
    // tool.
    let Some(session) = found.holder.as_deref() else {
        return Ok(Unlocked::NotHeld);
    };
    if found.info.is_none() && !force {
        return Ok(Unlocked::NotALock);
    }
    client
        .session_destroy(session, crate::session::DESTROY_TIMEOUT)
        .await?;
    tracing::info!(key = %found.key, session, "lock released by destroying its session");
    Ok(Unlocked::Released)
}

/// What [`unlock_regex`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnlockedKeys {
    /// Keys whose lock was released, sorted.
    pub released: Vec<String>,
    /// Held keys left alone because their value is not a consullock lock, sorted.
    pub not_locks: Vec<String>,
}

/// Releases every held lock whose key fully matches `pattern` (see [`unlock`] for `force`).
pub async fn unlock_regex(
    client: &Client,
    pattern: &regex::Regex,
    force: bool,
) -> Result<UnlockedKeys, ConsulError> {
    let mut unlocked = UnlockedKeys::default();
    for key in find_keys(client, pattern).await? {
        match unlock(client, &key, force).await? {
            Unlocked::Released => unlocked.released.push(key),
            Unlocked::NotALock => unlocked.not_locks.push(key),
            Unlocked::NotHeld => {}
        }
    }
    Ok(unlocked)
}

/// The literal text every match of `pattern` starts with, used as the KV prefix to list.
pub fn literal_prefix(pattern: &str) -> String {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return String::new();
    };
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(&hir);
    let Some(literals) = seq.literals() else {
        return String::new();
    };
    let mut prefix: Option<&[u8]> = None;
    for literal in literals {
        let bytes = literal.as_bytes();
        prefix = Some(match prefix {
            None => bytes,
            Some(p) => {
                let common = p.iter().zip(bytes).take_while(|(a, b)| a == b).count();
                &p[..common]
            }
        });
    }
    let prefix = prefix.unwrap_or_default();
    // Cut at a char boundary: a literal can end inside a multi-byte character.
    let mut end = prefix.len();
    while end > 0 && std::str::from_utf8(&prefix[..end]).is_err() {
        end -= 1;
    }
    String::from_utf8_lossy(&prefix[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        let cases = [
            ("my/lock-.*", "my/lock-"),
            ("my/lock", "my/lock"),
            ("my/(a|b)", "my/"),
            ("my/a?", "my/"),
            (".*", ""),
            ("a\\.b/.+", "a.b/"),
            ("[ab]/c", ""),
        ];
        for (pattern, prefix) in cases {
            assert_eq!(literal_prefix(pattern), prefix, "{pattern}");
        }
    }

    #[test]
    fn value_is_python_compatible_json() {
        let info = LockInfo {
            created: "2017-11-30T14:55:49.322108".into(),
            key: "my/lock".into(),
            metadata: Some(serde_json::json!({"testing": 123})),
            seconds_to_lock: 0.5,
            session: "9b92744f-f1a9-db12-7873-ad44af5ae224".into(),
            hostname: None,
            pid: None,
        };
        let value: serde_json::Value = serde_json::from_slice(&info.to_value()).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["created", "key", "metadata", "secondsToLock", "session"]
        );
        // A value written by consullock 4.2 parses.
        let python = br#"{
    "created": "2017-12-05T12:26:13.717995",
    "key": "my/lock",
    "metadata": null,
    "secondsToLock": 4.327880731027108,
    "session": "6ad662de-6e0c-8e0f-d92c-5fface60c49b"
}"#;
        let parsed = LockInfo::parse(python).unwrap();
        assert_eq!(parsed.session, "6ad662de-6e0c-8e0f-d92c-5fface60c49b");
        assert_eq!(LockInfo::parse(b"not json"), None);
    }

    #[test]
    fn timestamps_have_microseconds_and_no_zone() {
        let now = timestamp_now();
        assert_eq!(now.len(), "2017-11-30T14:55:49.322108".len(), "{now}");
        assert!(!now.ends_with('Z'));
    }
}
