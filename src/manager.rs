/*!
The library's front door: [`LockManager`], built from the environment or explicit settings,
offering what consullock 4.2's Python `ConsulLockManager` offers (acquire, execute, find, find by
regex, release one, many, or by regex) on the engine the CLI uses.
*/

use std::time::Duration;

use crate::config::ConsulConfig;
use crate::consul::Client;
use crate::error::Error;
use crate::execute::{ExecuteSettings, Executed, execute_locked};
use crate::key::LockKey;
use crate::lock::{self, AcquireOptions, FoundLock, HeldLock, LockInfo};
use crate::session::{LossReason, SessionSettings};
use crate::supervisor::{ChildCommand, Signals};

pub use crate::session::{DEFAULT_LOCK_DELAY, DEFAULT_SESSION_TTL};
pub use crate::supervisor::DEFAULT_KILL_GRACE;

/// Takes, finds and releases locks in one Consul.
///
/// ```
/// # use consullock::{LockManager, devserver::DevServer};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # let server = DevServer::start(Default::default()).await?;
/// # let address = server.address().to_string();
/// // With CONSUL_HTTP_ADDR and friends set: LockManager::from_env()?
/// let manager = LockManager::for_address(&address)?;
/// let guard = manager.acquire("jobs/report", Default::default()).await?;
/// let token = guard.fencing_token().expect("a single lock has a fencing token");
/// println!("holding {} with fencing token {token}", guard.info().key);
/// assert!(manager.find("jobs/report").await?.is_some());
/// guard.release().await?;
/// assert!(manager.find("jobs/report").await?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct LockManager {
    client: Client,
    session_ttl: Option<Duration>,
    lock_delay: Duration,
    ttl_only: bool,
    kill_grace: Duration,
}

impl LockManager {
    /// A manager for the Consul the environment names (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`,
    /// ...), read as the CLI reads it.
    pub fn from_env() -> Result<LockManager, Error> {
        LockManager::new(&ConsulConfig::from_env()?)
    }

    /// A manager for explicit connection settings.
    pub fn new(config: &ConsulConfig) -> Result<LockManager, Error> {
        Ok(LockManager {
            client: Client::new(config)?,
            session_ttl: Some(DEFAULT_SESSION_TTL),
            lock_delay: DEFAULT_LOCK_DELAY,
            ttl_only: false,
            kill_grace: DEFAULT_KILL_GRACE,
        })
    }

    /// A manager for `address` (any `CONSUL_HTTP_ADDR` form) with no token.
    pub fn for_address(address: &str) -> Result<LockManager, Error> {
        LockManager::new(&ConsulConfig::for_address(address)?)
    }

    /// Sets the session TTL (`None`: no TTL; the session then lives until released). Consul
    /// accepts 10 s to 24 h: anything else makes `acquire` and `execute` fail with
    /// [`Error::InvalidSessionSettings`].
    pub fn with_session_ttl(mut self, ttl: Option<Duration>) -> LockManager {
        self.session_ttl = ttl;
        self
    }

    /// Sets the lock-delay Consul applies when a session of ours is invalidated.
    pub fn with_lock_delay(mut self, lock_delay: Duration) -> LockManager {
        self.lock_delay = lock_delay;
        self
    }

    /// Creates TTL-only sessions, which no node health check can invalidate.
    pub fn with_ttl_only(mut self, ttl_only: bool) -> LockManager {
        self.ttl_only = ttl_only;
        self
    }

    /// Sets the grace between SIGTERM and SIGKILL for [`LockManager::execute`].
    pub fn with_kill_grace(mut self, kill_grace: Duration) -> LockManager {
        self.kill_grace = kill_grace;
        self
    }

    /// The underlying Consul client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The session settings for `key`, checked against Consul's bounds.
    fn session_settings(&self, key: &str) -> Result<SessionSettings, Error> {
        SessionSettings::new(
            crate::session::holder_name(key),
            self.session_ttl,
            self.lock_delay,
            self.ttl_only,
        )
        .map_err(Error::InvalidSessionSettings)
    }

    /// Acquires the lock on `key`: blocking (the default), non-blocking or with a timeout, with
    /// metadata and hooks, as `options` say. The session is renewed while the guard lives, and
    /// the lock is watched: [`LockGuard::lost`] tells when it is lost.
    ///
    /// Not acquired gives [`Error::NotAcquired`] (non-blocking) or [`Error::Timeout`].
    pub async fn acquire(&self, key: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        self.acquire_until(key, options, std::future::pending())
            .await
    }

    /// [`LockManager::acquire`], ending the wait when `cancel` completes (then
    /// [`Error::Interrupted`] with signal 0).
    pub async fn acquire_until(
        &self,
        key: &str,
        options: AcquireOptions,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<LockGuard, Error> {
        let key = LockKey::new(key)?;
        let options = AcquireOptions {
            keep_alive: true,
            ..options
        };
        let settings = self.session_settings(&key)?;
        crate::session::contact_window(&settings, Duration::ZERO).map_err(Error::UnsafeSettings)?;
        let mut held = lock::acquire(&self.client, &key, &settings, &options, cancel).await?;
        if let Err(e) = held.watch(Duration::ZERO) {
            let _ = held.release(std::future::pending()).await;
            return Err(Error::UnsafeSettings(e));
        }
        Ok(LockGuard { held: Some(held) })
    }

    /// Runs `command` while holding the lock on `key` (the supervisor of `consullock execute`:
    /// renewal, loss detection, process-group stop). Signals are not forwarded from this
    /// process; use [`crate::execute::execute_locked`] with [`Signals::install`] for that.
    pub async fn execute(
        &self,
        key: &str,
        command: ChildCommand,
        options: AcquireOptions,
    ) -> Result<Executed, Error> {
        let key = LockKey::new(key)?;
        let settings = ExecuteSettings::new(
            self.session_settings(&key)?,
            AcquireOptions {
                keep_alive: true,
                ..options
            },
            self.kill_grace,
            None,
        )?;
        let (_sender, mut signals) = Signals::manual();
        execute_locked(&self.client, &key, &settings, command, &mut signals).await
    }

    /// The lock on `key`, if the key exists (its information is `None` when the value is not a
    /// lock's JSON).
    pub async fn find(&self, key: &str) -> Result<Option<FoundLock>, Error> {
        Ok(lock::find(&self.client, key).await?)
    }

    /// Every key that fully matches `pattern`, sorted.
    pub async fn find_regex(&self, pattern: &str) -> Result<Vec<FoundLock>, Error> {
        Ok(lock::find_regex(&self.client, &compile(pattern)?).await?)
    }

    /// Releases anyone's lock on `key` by destroying its session; whether there was one. A key
    /// whose value is not a consullock lock is left alone (false): its session may be another
    /// program's.
    pub async fn release(&self, key: &str) -> Result<bool, Error> {
        let key = LockKey::new(key)?;
        Ok(lock::unlock(&self.client, &key, false).await? == lock::Unlocked::Released)
    }

    /// Releases the locks on `keys`; returns those that were held, sorted.
    pub async fn release_all<S: AsRef<str>>(&self, keys: &[S]) -> Result<Vec<String>, Error> {
        let mut released = Vec::new();
        for key in keys {
            if self.release(key.as_ref()).await? {
                released.push(key.as_ref().to_owned());
            }
        }
        released.sort();
        Ok(released)
    }

    /// Releases every lock whose key fully matches `pattern`; returns their keys, sorted. Keys
    /// whose value is not a consullock lock are left alone.
    pub async fn release_regex(&self, pattern: &str) -> Result<Vec<String>, Error> {
        Ok(lock::unlock_regex(&self.client, &compile(pattern)?, false)
            .await?
            .released)
    }
}

fn compile(pattern: &str) -> Result<regex::Regex, Error> {
    regex::Regex::new(pattern)
        .map_err(|e| Error::InvalidArguments(format!("invalid regular expression: {e}")))
}

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases it too, in a
/// background task of the current tokio runtime (best effort: a runtime that shuts down first
/// leaves the session to expire after its TTL).
#[derive(Debug)]
pub struct LockGuard {
    held: Option<HeldLock>,
}

impl LockGuard {
    fn held(&self) -> &HeldLock {
        // Only `release` and `drop` take it, and both consume the guard.
        self.held.as_ref().expect("a live guard holds its lock")
    }

    /// The lock's information, as stored in its key.
    pub fn info(&self) -> &LockInfo {
        self.held().info()
    }

    /// The fencing token: the key's ModifyIndex right after acquiring. Pass it to resources so
    /// they can refuse a holder older than the newest they have seen. `None` for a semaphore
    /// slot, which several hold at once.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held().fencing_token()
    }

    /// The key's LockIndex after acquiring.
    pub fn lock_index(&self) -> u64 {
        self.held().lock_index()
    }

    /// Waits until the lock is lost (the session invalidated, the key deleted or taken, or
    /// Consul silent for longer than the session's TTL allows). Stop the work it protects then.
    pub async fn lost(&mut self) -> LossReason {
        match self.held.as_mut() {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Releases the lock: no lock-delay for the next holder; the key is deleted if unchanged;
    /// the session is destroyed.
    pub async fn release(mut self) -> Result<(), Error> {
        match self.held.take() {
            Some(held) => Ok(held.release(std::future::pending()).await?),
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = held.release(std::future::pending()).await {
                    tracing::warn!("releasing a dropped lock failed: {e}");
                }
            });
        }
    }
}
