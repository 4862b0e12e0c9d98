//! A lock we hold: its watch (consistent blocking reads of the key, or of a semaphore's prefix,
//! one sent every third of the contact window whether or not the previous one answered), and
//! its release.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::clock;
use crate::consul::{Client, ConsulError, PutMode, QueryOptions, TxnOp, TxnOutcome};
use crate::session::{Liveness, LossReason, Session};

use super::value::LockInfo;
use super::{MAX_BLOCKING_WAIT, MIN_MONITOR_WAIT, RELEASE_REQUEST_TIMEOUT};

/// A lock we hold.
#[derive(Debug)]
pub struct HeldLock {
    session: Session,
    liveness: Option<Liveness>,
    info: LockInfo,
    value: Vec<u8>,
    lock_index: u64,
    fencing_token: Option<u64>,
    what: What,
}

/// What a [`HeldLock`] holds, in Consul's KV store.
#[derive(Debug, Clone)]
pub(super) enum What {
    /// One key, acquired by our session, with these flags (consullock's own layout and
    /// `consul lock`'s).
    Key { key: String, flags: u64 },
    /// A slot of a semaphore (`semaphore.rs`).
    Slot(super::semaphore::Slot),
}

impl HeldLock {
    pub(super) fn new(
        session: Session,
        liveness: Option<Liveness>,
        acquired: super::Acquired,
    ) -> HeldLock {
        HeldLock {
            session,
            liveness,
            info: acquired.info,
            value: acquired.value,
            lock_index: acquired.lock_index,
            fencing_token: acquired.fencing_token,
            what: acquired.what,
        }
    }

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

    /// The key locked: the lock key (`PREFIX/.lock` in `consul lock`'s layout), or a
    /// semaphore's prefix.
    pub fn key(&self) -> &str {
        match &self.what {
            What::Key { key, .. } => key,
            What::Slot(slot) => slot.prefix(),
        }
    }

    /// The key's LockIndex after acquiring (Consul's sequencer, with key and session); for a
    /// semaphore slot, our contender key's.
    pub fn lock_index(&self) -> u64 {
        self.lock_index
    }

    /// The key's ModifyIndex read in the same commit as the acquisition. It is a Raft index, so
    /// it only grows from one holder to the next, even when the key is deleted in between: a
    /// resource that remembers the highest token it has seen can refuse a stale holder. `None`
    /// for a semaphore slot: several hold one at once, so no token can fence them.
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }

    /// For a semaphore slot: how many may hold the semaphore at once.
    pub fn limit(&self) -> Option<u32> {
        match &self.what {
            What::Key { .. } => None,
            What::Slot(slot) => Some(slot.limit()),
        }
    }

    /// For a semaphore slot: our own key, `PREFIX/<session>`.
    pub fn contender_key(&self) -> Option<&str> {
        match &self.what {
            What::Key { .. } => None,
            What::Slot(slot) => Some(slot.contender()),
        }
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
        let lock_delay_protects = matches!(self.what, What::Key { .. });
        let window = liveness.enforce_contact_window(kill_grace, lock_delay_protects)?;
        // Each watch read that returns confirms the lock, so they must be sent well within the
        // contact window, even with nothing changing.
        let monitor_wait = window.shortest().map_or(MAX_BLOCKING_WAIT, |w| {
            (w / 3).clamp(MIN_MONITOR_WAIT, MAX_BLOCKING_WAIT)
        });
        let watched = Watched {
            what: self.what.clone(),
            session: self.session.id().to_owned(),
        };
        let task = tokio::spawn(monitor_loop(
            self.session.client().clone(),
            watched,
            self.fencing_token.unwrap_or(self.lock_index),
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
        // Shown to the second: round up, never down.
        let at = std::time::SystemTime::now() + from_now;
        let fraction = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(Duration::ZERO, |d| {
                Duration::from_nanos(d.subsec_nanos().into())
            });
        Some(match fraction.is_zero() {
            true => at,
            false => at + (Duration::from_secs(1) - fraction),
        })
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
        let key = self.key().to_owned();
        let session = self.session.id().to_owned();
        tokio::pin!(cancel);
        let release = async {
            match &self.what {
                What::Key { key, flags } => {
                    release_key(&client, key, *flags, &session, &self.value).await
                }
                What::Slot(slot) => super::semaphore::release_slot(&client, slot, &session).await,
            }
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
    /// after a loss, a release would only answer `false` or hang. A semaphore slot's entry in
    /// `.lock` is then taken out too, if it is still there: left behind, it would keep the
    /// semaphore's limit fixed for every later contender (Go's contenders refuse another).
    pub async fn abandon(mut self, cancel: impl Future<Output = ()>) -> Result<(), ReleaseError> {
        let liveness = self.stop_watching();
        let expires_by = self.expires_by(liveness.as_ref());
        drop(liveness);
        tokio::pin!(cancel);
        let destroy = self.session.destroy_with_timeout(RELEASE_REQUEST_TIMEOUT);
        let result = tokio::select! {
            biased;
            () = &mut cancel => Err(ReleaseFailure::Interrupted),
            result = destroy => result.map_err(ReleaseFailure::Consul),
        };
        if result.is_ok()
            && let What::Slot(slot) = &self.what
        {
            let client = self
                .session
                .client()
                .with_request_timeout(RELEASE_REQUEST_TIMEOUT);
            let tidy = super::semaphore::release_slot(&client, slot, self.session.id());
            tokio::select! {
                biased;
                () = &mut cancel => {}
                result = tidy => if let Err(e) = result {
                    tracing::debug!(key = %slot.prefix(), "cannot take the lost slot out of .lock: {e}");
                },
            }
        }
        result.map_err(|failure| ReleaseError {
            key: self.key().to_owned(),
            failure,
            expires_by,
        })
    }
}

/// Frees `key` if `session` still holds it; whether it did. One transaction,
/// `[check-session, delete]`: the key goes only while it is ours, and no lock-delay follows a
/// release. Where the server has no transactions (404, 405), `?release`, then the key deleted by
/// check-and-set unless someone wrote it since.
async fn release_key(
    client: &Client,
    key: &str,
    flags: u64,
    session: &str,
    value: &[u8],
) -> Result<bool, ConsulError> {
    if client.transactions() {
        let ops = [TxnOp::CheckSession { key, session }, TxnOp::Delete { key }];
        match client.txn(&ops).await {
            Ok(TxnOutcome::Applied(_)) => return Ok(true),
            // The check failed: the key is gone or someone else's.
            Ok(TxnOutcome::RolledBack(_)) => return Ok(false),
            Err(e) if e.means_no_txn() => client.note_no_transactions(),
            Err(e) => return Err(e),
        }
    }
    // The flags go with it: a write without them sets them to 0, and a key left behind with
    // `api.Lock`'s flags gone would stop every `consul lock` contender.
    let released = client
        .kv_put(
            key,
            value,
            PutMode::Release(session),
            (flags != 0).then_some(flags),
        )
        .await?;
    if released {
        // Leave no unheld lock value behind, unless someone wrote the key since.
        let read = client.kv_get(key, &QueryOptions::default()).await;
        if let Ok(read) = read
            && let Some(entry) = read
                .value
                .filter(|e| e.session.is_none() && e.value == value)
        {
            let _ = client.kv_delete(key, Some(entry.modify_index)).await;
        }
    }
    Ok(released)
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
            "its session ends by itself by {} UTC at the latest (twice its TTL after its last \
             renewal; a change of Consul leader restarts that time)",
            humantime::format_rfc3339_seconds(*at)
                .to_string()
                .trim_end_matches('Z')
        ),
        None => "its session has no TTL: it stays held until `consullock unlock`".to_owned(),
    }
}

/// What the watch reads, and how it tells that the lock is still ours.
struct Watched {
    what: What,
    session: String,
}

impl Watched {
    /// One read with `options`: its index, and the loss it shows, if any.
    async fn read(
        &self,
        client: &Client,
        options: &QueryOptions,
    ) -> Result<(u64, Option<LossReason>), ConsulError> {
        match &self.what {
            What::Key { key, .. } => {
                let read = client.kv_get(key, options).await?;
                let loss = match read.value {
                    None => Some(LossReason::KeyDeleted),
                    Some(entry) if entry.session.as_deref() != Some(self.session.as_str()) => {
                        Some(LossReason::KeyTakenOver {
                            holder: entry.session,
                        })
                    }
                    Some(_) => None,
                };
                Ok((read.index, loss))
            }
            What::Slot(slot) => {
                let read = client.kv_list(slot.prefix(), options).await?;
                Ok((read.index, slot.loss_in(&read.value, &self.session)))
            }
        }
    }
}

async fn monitor_loop(
    client: Client,
    watched: Watched,
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
    let watched = Arc::new(watched);
    let mut index = index;
    let mut in_flight = tokio::task::JoinSet::new();
    // Send a read every `wait`, whether or not the previous ones have answered: each confirms
    // the lock from its own send time, so slow answers overlap instead of adding up.
    // The first goes out at the timer's next tick (about a millisecond on): a command that is
    // done sooner never pays for a read, a connection and a server's wait, and the acquisition
    // itself was the first confirmation.
    let mut next_send = tokio::time::Instant::now();
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_send) => {
                let sent_at = clock::now();
                last_sent = Some(tokio::time::Instant::now());
                let client = client.clone();
                let watched = watched.clone();
                let options = QueryOptions::blocking(index.max(1), wait).consistent();
                in_flight.spawn(async move { (sent_at, watched.read(&client, &options).await) });
                next_send = tokio::time::Instant::now() + wait;
            }
            Some(joined) = in_flight.join_next() => {
                let Ok((sent_at, result)) = joined else { continue };
                match result {
                    Ok((_, Some(loss))) => {
                        shared.declare_lost(loss);
                        return;
                    }
                    Ok((read_index, None)) => {
                        shared.confirm(sent_at);
                        if shared.is_lost() {
                            return;
                        }
                        let changed = read_index > index;
                        // An index that goes backwards (snapshot restore) restarts the watch.
                        index = if read_index < index { 0 } else { read_index };
                        // Keep a read blocked on the key at all times, so a change is seen
                        // at once; but never faster than the floor, whatever the server does.
                        if changed && in_flight.is_empty() {
                            let floor = last_sent.map_or(next_send, |at| at + MIN_MONITOR_WAIT);
                            next_send = next_send.min(floor.max(tokio::time::Instant::now()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(key = %watched.what.key(), "watching the lock failed, retrying: {e}");
                    }
                }
            }
        }
    }
}

impl What {
    /// The key (or prefix) watched, for logs.
    fn key(&self) -> &str {
        match self {
            What::Key { key, .. } => key,
            What::Slot(slot) => slot.prefix(),
        }
    }
}
