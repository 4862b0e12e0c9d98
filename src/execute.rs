/*!
`consullock execute`: hold a lock while a command runs, and never let the command run without it.

The order of events is the safety argument, so it is spelled out:

1. signal handlers are installed before anything else, so a SIGTERM during the wait ends the
   wait cleanly (session destroyed, exit 128+N) instead of killing us with the session alive;
2. the session is created and renewed every TTL/2 while waiting and holding;
3. once the lock is held, its key is watched with consistent blocking reads, and a watchdog
   declares the lock lost when Consul has not confirmed it for the contact window (see
   [`crate::session::contact_window`]): that window ends `kill_grace` + 1 s before another
   holder could possibly be granted the lock;
4. on loss the command's process group gets SIGTERM, then SIGKILL after `kill_grace`;
5. when the command is done (its whole group gone), the lock is released with `?release` (no
   lock-delay for the next holder), the key deleted if unchanged, the session destroyed; a
   release that fails or is interrupted says so, and until when the lock stays held.
*/

use std::ffi::OsString;
use std::time::Duration;

use crate::consul::Client;
use crate::error::Error;
use crate::key::LockKey;
use crate::lock::{self, AcquireOptions, HeldLock, ReleaseError};
use crate::session::{LossReason, SessionSettings, contact_window_guarding};
use crate::supervisor::{self, ChildCommand, Outcome, Signal, Signals, SupervisorOptions};

/// How `execute` holds its lock: checked once, when made ([`ExecuteSettings::new`]).
#[derive(Debug, Clone)]
pub struct ExecuteSettings {
    session: SessionSettings,
    acquire: AcquireOptions,
    kill_grace: Duration,
    contain: Option<std::path::PathBuf>,
}

impl ExecuteSettings {
    /// Settings for [`execute_locked`], refused when the session's TTL or lock-delay is out of
    /// Consul's bounds ([`Error::InvalidSessionSettings`]) or when they cannot keep the promise:
    /// the kill grace does not fit before another holder could get the lock, or the renewals
    /// cannot keep it ([`Error::UnsafeSettings`], see [`contact_window_guarding`]).
    ///
    /// `contain` runs the command in a PID namespace of its own through that init program (see
    /// [`supervisor::contain`]).
    pub fn new(
        session: SessionSettings,
        acquire: AcquireOptions,
        kill_grace: Duration,
        contain: Option<std::path::PathBuf>,
    ) -> Result<ExecuteSettings, Error> {
        session.validate().map_err(Error::InvalidSessionSettings)?;
        let protects = acquire.layout.lock_delay_protects();
        contact_window_guarding(&session, kill_grace, protects).map_err(Error::UnsafeSettings)?;
        Ok(ExecuteSettings {
            session,
            acquire,
            kill_grace,
            contain,
        })
    }

    /// The session to create (renewed every TTL/2).
    pub fn session(&self) -> &SessionSettings {
        &self.session
    }

    /// Which keys the lock takes.
    pub fn layout(&self) -> lock::Layout {
        self.acquire.layout
    }

    /// Time between SIGTERM and SIGKILL when the command must stop.
    pub fn kill_grace(&self) -> Duration {
        self.kill_grace
    }
}

/// How a command run under a lock ended.
#[derive(Debug)]
pub struct Executed {
    /// What the supervisor saw.
    pub outcome: Outcome,
    /// Why the lock was lost, when it was.
    pub loss: Option<LossReason>,
    /// The fencing token the command was given (none for a semaphore slot).
    pub fencing_token: Option<u64>,
    /// Processes of the command that SIGKILL did not end (normally none).
    pub survivors: Vec<i32>,
    /// Whether the lock was released at the end; when not, the error says until when it stays
    /// held.
    pub release: Result<(), ReleaseError>,
}

/// Acquires the lock on `key`, runs `command` while it is held, stops the command if the lock is
/// lost, then releases the lock. `signals` must have been created before anything else (see
/// [`Signals::install`]); a stop request (TERM, INT, HUP, QUIT) while waiting ends the wait with
/// [`Error::Interrupted`], one that arrives after the lock is taken but before the command
/// starts keeps it from starting ([`Outcome::NotStarted`]), and one during the final release
/// ends the release at once (the lock then stays held until its session ends by itself).
pub async fn execute_locked(
    client: &Client,
    key: &LockKey,
    settings: &ExecuteSettings,
    command: ChildCommand,
    signals: &mut Signals,
) -> Result<Executed, Error> {
    let mut held =
        acquire_until_stop_request(client, key, &settings.session, &settings.acquire, signals)
            .await?;
    let deadline = match held.watch(settings.kill_grace) {
        Ok(deadline) => deadline,
        Err(e) => {
            let _ = held.release(std::future::pending()).await;
            return Err(Error::UnsafeSettings(e));
        }
    };
    let options = SupervisorOptions {
        kill_grace: settings.kill_grace,
        env: child_environment(&held),
        contain: settings.contain.clone(),
    };
    let supervised = supervisor::supervise(command, &options, signals, &deadline).await;
    let fencing_token = held.fencing_token();
    let loss = held.loss();
    // After a loss the key is gone or someone else's, or Consul is out of reach: a release
    // would only answer `false` or hang for its deadline. Destroying the session is all that is
    // left to do (it is a no-op when Consul already invalidated it).
    // Signals that came with the command's end (a service manager signals the whole group:
    // TERM, then HUP) are not a request to skip the release: only a TERM or INT that arrives
    // once the release has begun ends it.
    signals.drain();
    let stop = async {
        let signal = signals.next_stop_request().await;
        tracing::debug!("{signal} received: the release ends now");
    };
    let release = if loss.is_some() {
        held.abandon(stop).await
    } else {
        held.release(stop).await
    };
    let supervised = supervised?;
    Ok(Executed {
        outcome: supervised.outcome,
        loss,
        fencing_token,
        survivors: supervised.survivors,
        release,
    })
}

/// Acquires the lock, ending the wait on a stop request (TERM, INT, HUP, QUIT) with
/// [`Error::Interrupted`] naming that signal; the holder line, if shown, is cleared either way.
pub async fn acquire_until_stop_request(
    client: &Client,
    key: &str,
    session: &SessionSettings,
    options: &AcquireOptions,
    signals: &mut Signals,
) -> Result<HeldLock, Error> {
    let interrupted = std::cell::Cell::new(None);
    let cancel = async {
        interrupted.set(Some(wait_for_stop_request(signals).await));
    };
    let acquired = lock::acquire(client, key, session, options, cancel).await;
    acquired.map_err(|e| match (Error::from(e), interrupted.get()) {
        (Error::Interrupted { .. }, Some(signal)) => Error::Interrupted {
            signal: signal.as_raw(),
        },
        (error, _) => error,
    })
}

/// Waits for a signal that asks us to stop (TERM, INT, HUP, QUIT). The others have no child to
/// go to yet and are dropped: as PID 1 nothing else would handle them, and USR1/WINCH must not
/// end a wait.
async fn wait_for_stop_request(signals: &mut Signals) -> Signal {
    loop {
        let signal = signals.recv().await;
        if signal.ends_a_wait() {
            return signal;
        }
        tracing::debug!("ignoring {signal} while waiting for the lock");
    }
}

/// What the child is told about its lock (and `CONSUL_LOCK_HELD` for `consul lock` users).
/// A semaphore slot gets its limit and its own key instead of a fencing token: several hold
/// one at once, so no token can fence them.
fn child_environment(held: &HeldLock) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("CONSULLOCK_KEY".into(), held.key().into()),
        ("CONSULLOCK_SESSION".into(), held.session_id().into()),
        (
            "CONSULLOCK_LOCK_INDEX".into(),
            held.lock_index().to_string().into(),
        ),
    ];
    if let Some(token) = held.fencing_token() {
        env.push(("CONSULLOCK_FENCING_TOKEN".into(), token.to_string().into()));
    }
    if let Some(limit) = held.limit() {
        env.push(("CONSULLOCK_LIMIT".into(), limit.to_string().into()));
    }
    if let Some(contender) = held.contender_key() {
        env.push(("CONSULLOCK_CONTENDER_KEY".into(), contender.into()));
    }
    env.push(("CONSUL_LOCK_HELD".into(), "true".into()));
    env
}
