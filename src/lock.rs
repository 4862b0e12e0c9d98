/*!
Locks on Consul keys: acquire, watch, release, find and unlock.

The value stored in a lock key is the JSON object consullock 4.2 writes (`created`, `key`,
`metadata`, `secondsToLock`, `session`), plus `hostname` and `pid`, so that each tool can find and
release the other's locks.

Waiting for a held lock uses Consul blocking queries on the key: the waiter sleeps in one HTTP
request until the key changes, so a release wakes it within a round trip and the server sees a
handful of requests per wait instead of one per poll interval.
*/

use std::ffi::OsString;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::consul::{Client, ConsulError, KvEntry, PutMode, QueryOptions};
use crate::session::{
    ContactWindow, Liveness, LossReason, RETRY_INTERVAL, Session, SessionSettings,
};

/// Longest single blocking read while waiting for a lock; the server's own default.
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(300);

/// Shortest blocking read while watching a held lock (tiny contact windows).
pub const MIN_MONITOR_WAIT: Duration = Duration::from_millis(100);

/// First pause when a free key refuses the lock (lock-delay in force); doubles each time.
pub const LOCK_DELAY_BACKOFF_START: Duration = Duration::from_millis(25);

/// Default cap of that pause (`-i` sets it): Consul does not say how long the lock-delay lasts.
pub const LOCK_DELAY_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// How long transient errors (500, 429, connection failures) may last, back to back, while
/// waiting for a lock before the wait gives up.
pub const WAIT_ERROR_BUDGET: Duration = Duration::from_secs(30);

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

/// The current time as consullock 4.2 writes it: `2017-11-30T14:55:49.322108`.
pub fn timestamp_now() -> String {
    let text = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    text.trim_end_matches('Z').to_owned()
}

/// Executables run around each acquire attempt, with the key as their only argument. Their
/// failures are logged, never fatal.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Run before each attempt.
    pub before_lock: Vec<OsString>,
    /// Run after each attempt that found the lock held.
    pub already_locked: Vec<OsString>,
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
    /// Hook executables.
    pub hooks: Hooks,
    /// Cap of the retry pause while lock-delay keeps a free key from being locked.
    pub lock_delay_backoff_cap: Duration,
    /// Renew the session while waiting and holding (`execute` and the library); `lock` leaves
    /// its session to live its TTL.
    pub keep_alive: bool,
    /// Told who holds the lock whenever a wait for it begins.
    pub on_wait: Option<std::sync::Arc<dyn WaitObserver>>,
}

impl std::fmt::Debug for AcquireOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquireOptions")
            .field("non_blocking", &self.non_blocking)
            .field("timeout", &self.timeout)
            .field("metadata", &self.metadata)
            .field("hooks", &self.hooks)
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
            hooks: Hooks::default(),
            lock_delay_backoff_cap: LOCK_DELAY_BACKOFF_CAP,
            keep_alive: true,
            on_wait: None,
        }
    }
}

/// Why a lock was not acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// `non_blocking` and the lock was held.
    #[error("the lock {key:?} is held by another session")]
    NotAcquired {
        /// The key.
        key: String,
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

/// Acquires the lock on `key` with a new session made from `settings`.
///
/// `cancel` ends the wait early (pass `std::future::pending()` for none): the session is
/// destroyed and [`AcquireError::Cancelled`] returned. Every path that does not return the lock
/// destroys the session it created.
pub async fn acquire(
    client: &Client,
    key: &str,
    settings: &SessionSettings,
    options: &AcquireOptions,
    cancel: impl Future<Output = ()>,
) -> Result<HeldLock, AcquireError> {
    let acquired = acquire_inner(client, key, settings, options, cancel).await;
    if let Some(observer) = &options.on_wait {
        observer.finished();
    }
    acquired
}

async fn acquire_inner(
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
        .map(|t| started + t);
    tokio::pin!(cancel);
    let create = || create_session(client, key, settings, options, started, deadline);
    let mut session = tokio::select! {
        biased;
        () = &mut cancel => return Err(AcquireError::Cancelled { key: key.to_owned() }),
        session = create() => session?,
    };
    let mut liveness = options.keep_alive.then(|| session.keep_alive());
    loop {
        let attempt = attempt_loop(
            client,
            key,
            &session,
            liveness.as_ref(),
            options,
            started,
            deadline,
        );
        let result = tokio::select! {
            biased;
            () = &mut cancel => Err(AcquireError::Cancelled { key: key.to_owned() }),
            result = attempt => result,
        };
        match result {
            Ok(held) => {
                return Ok(HeldLock {
                    session,
                    liveness,
                    info: held.info,
                    value: held.value,
                    lock_index: held.lock_index,
                    fencing_token: held.fencing_token,
                });
            }
            // Our session died while we waited (a failed node check, an operator): make a new
            // one and keep waiting.
            Err(AcquireError::Consul(ConsulError::InvalidSession { .. })) => {
                tracing::info!(session = %session.id(), "session lost while waiting; creating a new one");
                drop(liveness.take());
                let _ = session.destroy().await;
                session = tokio::select! {
                    biased;
                    () = &mut cancel => return Err(AcquireError::Cancelled { key: key.to_owned() }),
                    session = create() => session?,
                };
                liveness = options.keep_alive.then(|| session.keep_alive());
            }
            Err(e) => {
                drop(liveness.take());
                let _ = session.destroy().await;
                return Err(e);
            }
        }
    }
}

/// Creates the session, retrying what a live server answers during a leader election or under
/// load (5xx, 429) for up to [`WAIT_ERROR_BUDGET`], as the wait itself does, except with
/// `non_blocking`, which makes one attempt. An agent that cannot be reached at all on first
/// contact is more likely a wrong address than a blip: that fails at once (exit 8).
async fn create_session(
    client: &Client,
    key: &str,
    settings: &SessionSettings,
    options: &AcquireOptions,
    started: Instant,
    deadline: Option<Instant>,
) -> Result<Session, AcquireError> {
    let mut errors_since: Option<Instant> = None;
    loop {
        match Session::create(client, settings.clone()).await {
            Ok(session) => return Ok(session),
            Err(e) if server_busy(&e) && !options.non_blocking => {
                let since = *errors_since.get_or_insert_with(Instant::now);
                if since.elapsed() > WAIT_ERROR_BUDGET {
                    return Err(e.into());
                }
                tracing::warn!("consul error while creating a session, retrying: {e}");
                sleep_until_or_deadline(Instant::now() + RETRY_INTERVAL, deadline).await;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(AcquireError::TimedOut {
                        key: key.to_owned(),
                        waited: started.elapsed(),
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
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

async fn attempt_loop(
    client: &Client,
    key: &str,
    session: &Session,
    liveness: Option<&Liveness>,
    options: &AcquireOptions,
    started: Instant,
    deadline: Option<Instant>,
) -> Result<Acquired, AcquireError> {
    let timed_out = || AcquireError::TimedOut {
        key: key.to_owned(),
        waited: started.elapsed(),
    };
    let mut backoff = LOCK_DELAY_BACKOFF_START;
    let mut errors_since: Option<Instant> = None;
    let hostname = crate::session::hostname();
    loop {
        if liveness.is_some_and(|l| l.loss().is_some()) {
            return Err(AcquireError::Consul(ConsulError::InvalidSession {
                request: crate::consul::RequestContext {
                    address: client.address().to_owned(),
                    method: "PUT",
                    path: format!("/v1/session/renew/{}", session.id()),
                },
                body: "session expired while waiting".into(),
            }));
        }
        run_hooks(&options.hooks.before_lock, key).await;
        let info = LockInfo {
            created: timestamp_now(),
            key: key.to_owned(),
            metadata: options.metadata.clone(),
            seconds_to_lock: started.elapsed().as_secs_f64(),
            session: session.id().to_owned(),
            hostname: hostname.clone(),
            pid: Some(std::process::id()),
        };
        let value = info.to_value();
        let attempt_sent_at = Instant::now();
        let attempt = async {
            if client
                .kv_put(key, &value, PutMode::Acquire(session.id()), None)
                .await?
            {
                // Read back consistently: the ModifyIndex is the fencing token, and it must be
                // the one of our acquisition.
                let read = client
                    .kv_get(key, &QueryOptions::default().consistent())
                    .await?;
                return Ok::<_, ConsulError>(Ok(read.value));
            }
            // Refused: held by someone else, or a free key under lock-delay. Tell them apart.
            let read = client.kv_get(key, &QueryOptions::default()).await?;
            Ok(Err(read))
        };
        let outcome = match attempt.await {
            Ok(outcome) => {
                errors_since = None;
                outcome
            }
            Err(e) if e.is_transient() && !options.non_blocking => {
                let since = *errors_since.get_or_insert_with(Instant::now);
                if since.elapsed() > WAIT_ERROR_BUDGET {
                    return Err(e.into());
                }
                tracing::warn!("consul error while waiting for the lock, retrying: {e}");
                sleep_until_or_deadline(Instant::now() + RETRY_INTERVAL, deadline).await;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(timed_out());
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let read = match outcome {
            Ok(Some(entry)) if entry.session.as_deref() == Some(session.id()) => {
                // Consul just confirmed the session (and now the lock): the contact window
                // starts here, not at the last renew.
                if let Some(liveness) = liveness {
                    liveness.shared.confirm(attempt_sent_at);
                }
                tracing::info!(key, session = %session.id(), fencing_token = entry.modify_index, "lock acquired");
                return Ok(Acquired {
                    info,
                    value,
                    lock_index: entry.lock_index,
                    fencing_token: entry.modify_index,
                });
            }
            Ok(_) => {
                // Acquired, then lost before the read (an operator's unlock): try again.
                tracing::warn!(
                    key,
                    "the lock was taken from us right after acquiring; retrying"
                );
                continue;
            }
            Err(read) => read,
        };
        run_hooks(&options.hooks.already_locked, key).await;
        if options.non_blocking {
            return Err(AcquireError::NotAcquired {
                key: key.to_owned(),
            });
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out());
        }
        match read.value.as_ref().and_then(|e| e.session.clone()) {
            Some(holder) => {
                backoff = LOCK_DELAY_BACKOFF_START;
                if let Some(observer) = &options.on_wait {
                    let info = read.value.as_ref().and_then(|e| LockInfo::parse(&e.value));
                    observer.waiting(&Waiting {
                        key: key.to_owned(),
                        holder: holder.clone(),
                        info,
                    });
                }
                tracing::debug!(key, holder = %holder, "lock held; waiting for a change");
                wait_for_change(client, key, read.index, deadline, liveness).await?;
            }
            None => {
                // Free but refused: lock-delay from an invalidated session. Consul does not say
                // for how long, so back off with a short, capped pause.
                tracing::debug!(
                    key,
                    ?backoff,
                    "lock refused on a free key (lock-delay); retrying"
                );
                sleep_until_or_deadline(Instant::now() + backoff, deadline).await;
                backoff =
                    (backoff * 2).min(options.lock_delay_backoff_cap.max(LOCK_DELAY_BACKOFF_START));
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out());
        }
    }
}

/// Blocks on the key until it changes, the deadline passes, the session is lost, or a
/// transient error (then after a pause, so that the caller reads the key again).
async fn wait_for_change(
    client: &Client,
    key: &str,
    index: u64,
    deadline: Option<Instant>,
    liveness: Option<&Liveness>,
) -> Result<(), AcquireError> {
    let mut index = index.max(1);
    loop {
        let wait = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(MAX_BLOCKING_WAIT),
            None => MAX_BLOCKING_WAIT,
        };
        if wait.is_zero() {
            return Ok(());
        }
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
        let result = tokio::select! {
            result = read => result,
            () = lost => return Ok(()),
        };
        match result {
            Ok(read) => {
                let holder = read.value.as_ref().and_then(|e| e.session.as_ref());
                if holder.is_none() || read.index != index {
                    return Ok(());
                }
                // Timed out with nothing changed: block again.
                index = read.index.max(1);
            }
            Err(e) if e.is_transient() => {
                // A blocking read is the request most exposed to a cut connection or a proxy
                // that times it out. Pause, then let the caller read the key again: its next
                // attempt reconnects, and it counts errors that go on against its own budget.
                tracing::warn!("consul error while waiting for the lock, retrying: {e}");
                sleep_until_or_deadline(Instant::now() + RETRY_INTERVAL, deadline).await;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn sleep_until_or_deadline(until: Instant, deadline: Option<Instant>) {
    let until = match deadline {
        Some(d) => until.min(d),
        None => until,
    };
    tokio::time::sleep_until(until).await;
}

/// Runs each hook with `key` as its only argument; failures are logged and ignored. Hooks go
/// through the supervisor's reaper, the one place in the process that waits for children.
async fn run_hooks(hooks: &[OsString], key: &str) {
    for hook in hooks {
        let shown = hook.to_string_lossy();
        match crate::supervisor::run_hook(hook, &[std::ffi::OsStr::new(key)]).await {
            Ok(crate::supervisor::ChildStatus::Exited(0)) => {
                tracing::debug!(hook = %shown, "hook ran")
            }
            Ok(status) => tracing::warn!(hook = %shown, "hook failed: {status:?}"),
            Err(e) => tracing::warn!(hook = %shown, "hook could not run: {e}"),
        }
    }
}

impl HeldLock {
    /// Stops renewing and watching (dropping the [`Liveness`] aborts its tasks).
    fn stop_watching(&mut self) {
        self.liveness = None;
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

    /// Starts watching the lock: consistent blocking reads of the key, plus the contact-window
    /// watchdog when `window` is given. Loss is then reported by [`HeldLock::lost`].
    pub fn watch(&mut self, window: ContactWindow) {
        let liveness = self
            .liveness
            .get_or_insert_with(|| self.session.keep_alive());
        if !window.is_unbounded() {
            liveness.enforce_contact_window(window);
        }
        // Each watch read that returns confirms the lock, so it must return well within the
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
    }

    /// A receiver of the loss, for code that waits on it elsewhere.
    pub fn loss_receiver(&mut self) -> tokio::sync::watch::Receiver<Option<LossReason>> {
        self.liveness
            .get_or_insert_with(|| self.session.keep_alive())
            .subscribe()
    }

    /// Waits until the lock is lost (only meaningful after [`HeldLock::watch`]).
    pub async fn lost(&mut self) -> LossReason {
        crate::session::wait_lost(self.loss_receiver()).await
    }

    /// Releases the lock cleanly: `?release` with our session (no lock-delay for the next
    /// holder), delete the key if nobody changed it since, destroy the session.
    pub async fn release(mut self) -> Result<(), ConsulError> {
        self.stop_watching();
        let client = self.session.client().clone();
        let key = self.info.key.clone();
        let result = async {
            if client
                .kv_put(&key, &self.value, PutMode::Release(self.session.id()), None)
                .await?
            {
                let read = client.kv_get(&key, &QueryOptions::default()).await?;
                if let Some(entry) = read
                    .value
                    .filter(|e| e.session.is_none() && e.value == self.value)
                {
                    client.kv_delete(&key, Some(entry.modify_index)).await?;
                }
            }
            Ok(())
        }
        .await;
        let destroyed = self.session.destroy().await;
        tracing::info!(key = %key, "lock released");
        result.and(destroyed)
    }

    /// Gives the lock up to Consul: the session is neither renewed nor destroyed, so the lock
    /// stays held until `unlock` or the session's TTL (what `consullock lock` does).
    pub fn leave_held(mut self) -> LockInfo {
        self.stop_watching();
        self.info
    }

    /// Destroys the session without releasing first (the key goes with it, under lock-delay).
    pub async fn abandon(mut self) -> Result<(), ConsulError> {
        self.stop_watching();
        self.session.destroy().await
    }
}

async fn monitor_loop(
    client: Client,
    key: String,
    session: String,
    mut index: u64,
    wait: Duration,
    shared: std::sync::Arc<crate::session::Shared>,
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
    loop {
        let sent_at = Instant::now();
        let options = QueryOptions::blocking(index.max(1), wait).consistent();
        match client.kv_get(&key, &options).await {
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
                    // An index that goes backwards (snapshot restore) restarts the watch.
                    index = if read.index < index { 0 } else { read.index };
                    if shared.is_lost() {
                        return;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(key = %key, "watching the lock failed, retrying: {e}");
                tokio::time::sleep(RETRY_INTERVAL).await;
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

/// Every key that fully matches `pattern`, listed under the pattern's literal prefix.
pub async fn find_regex(
    client: &Client,
    pattern: &regex::Regex,
) -> Result<Vec<FoundLock>, ConsulError> {
    let prefix = literal_prefix(pattern.as_str());
    let anchored = regex::Regex::new(&format!("^(?:{})$", pattern.as_str()))
        .unwrap_or_else(|_| pattern.clone());
    let read = client.kv_list(&prefix, &QueryOptions::default()).await?;
    let mut found: Vec<FoundLock> = read
        .value
        .into_iter()
        .filter(|entry| anchored.is_match(&entry.key))
        .map(FoundLock::from_entry)
        .collect();
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

/// Releases anyone's lock on `key` by destroying the session that holds it, as consullock 4.2
/// does: Consul then applies that session's lock-delay before the next holder can acquire,
/// which gives a live holder time to notice and stop. Returns whether a lock was released.
pub async fn unlock(client: &Client, key: &str) -> Result<bool, ConsulError> {
    match find(client, key).await? {
        Some(found) => unlock_found(client, &found).await,
        None => Ok(false),
    }
}

async fn unlock_found(client: &Client, found: &FoundLock) -> Result<bool, ConsulError> {
    // The key's Session is the real holder; the JSON names it too for locks written by either
    // tool.
    let Some(session) = found.holder.as_deref() else {
        return Ok(false);
    };
    client
        .session_destroy(session, crate::session::DESTROY_TIMEOUT)
        .await?;
    tracing::info!(key = %found.key, session, "lock released by destroying its session");
    Ok(true)
}

/// Releases every held lock whose key fully matches `pattern`; returns the released keys, sorted.
pub async fn unlock_regex(
    client: &Client,
    pattern: &regex::Regex,
) -> Result<Vec<String>, ConsulError> {
    let mut released = Vec::new();
    for found in find_regex(client, pattern).await? {
        if unlock_found(client, &found).await? {
            released.push(found.key);
        }
    }
    released.sort();
    Ok(released)
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
