//! Waiting, bounded: the caller's cancel future and timeout raced against every await, the
//! budget of transient errors, and blocking reads that never turn into a hot loop.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::consul::{Client, ConsulError, Indexed, KvEntry, QueryOptions};
use crate::session::{Liveness, RETRY_INTERVAL};

use super::{
    AcquireError, EARLY_RETURN_BACKOFF_CAP, EARLY_RETURN_BACKOFF_START, MAX_BLOCKING_WAIT,
    WAIT_ERROR_BUDGET,
};

/// Why waiting stopped early.
pub(super) enum Interrupt {
    Cancelled,
    TimedOut,
}

/// The cancel future and the deadline of one [`acquire`] call, raced against each await.
pub(super) struct Bounds<'a, C: Future<Output = ()>> {
    pub(super) cancel: Pin<&'a mut C>,
    pub(super) deadline: Option<Instant>,
    pub(super) key: &'a str,
    pub(super) started: Instant,
}

impl<C: Future<Output = ()>> Bounds<'_, C> {
    /// Runs `work` unless cancelled or timed out first.
    pub(super) async fn run<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Interrupt> {
        let deadline = self.deadline;
        tokio::select! {
            biased;
            () = &mut self.cancel => Err(Interrupt::Cancelled),
            () = sleep_until_option(deadline) => Err(Interrupt::TimedOut),
            result = work => Ok(result),
        }
    }

    pub(super) fn error(&self, interrupt: Interrupt) -> AcquireError {
        match interrupt {
            Interrupt::Cancelled => AcquireError::Cancelled {
                key: self.key.to_owned(),
            },
            Interrupt::TimedOut => self.timed_out(),
        }
    }

    pub(super) fn timed_out(&self) -> AcquireError {
        AcquireError::TimedOut {
            key: self.key.to_owned(),
            waited: self.started.elapsed(),
        }
    }

    pub(super) fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps for `pause` (cut short by the deadline, which the next check reports).
    pub(super) async fn pause(&mut self, pause: Duration) -> Result<(), AcquireError> {
        match self.run(tokio::time::sleep(pause)).await {
            Ok(()) | Err(Interrupt::TimedOut) => Ok(()),
            Err(interrupt) => Err(self.error(interrupt)),
        }
    }
}

pub(super) async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Counts transient errors back to back, against [`WAIT_ERROR_BUDGET`].
#[derive(Default)]
pub(super) struct ErrorBudget {
    since: Option<Instant>,
    /// Consul has answered once: before that, an agent that cannot be reached at all is more
    /// likely a wrong address than a blip, and fails at once (exit 8).
    answered: bool,
}

impl ErrorBudget {
    /// Whether `error` may be retried: transient, and within the budget.
    pub(super) fn allows(&mut self, error: &ConsulError, non_blocking: bool) -> bool {
        if !error.is_transient() || non_blocking {
            return false;
        }
        if !self.answered && matches!(error, ConsulError::Unreachable { .. }) {
            return false;
        }
        self.since.get_or_insert_with(Instant::now).elapsed() <= WAIT_ERROR_BUDGET
    }

    /// Consul answered a read, but the attempt it prepares has yet to succeed: errors keep
    /// counting (a loop whose read works and whose write keeps failing must end).
    pub(super) fn answered(&mut self) {
        self.answered = true;
    }

    /// An attempt went through: the errors before it no longer count.
    pub(super) fn reset(&mut self) {
        self.since = None;
        self.answered = true;
    }
}

/// The pause after blocking reads that return early with nothing changed: grows from
/// [`EARLY_RETURN_BACKOFF_START`] to [`EARLY_RETURN_BACKOFF_CAP`], with jitter.
#[derive(Default)]
pub(super) struct EarlyReturnBackoff {
    next: Option<Duration>,
}

impl EarlyReturnBackoff {
    /// The pause to take now; the next one is longer.
    pub(super) fn next_pause(&mut self) -> Duration {
        let pause = self.next.unwrap_or(EARLY_RETURN_BACKOFF_START);
        self.next = Some((pause * 2).min(EARLY_RETURN_BACKOFF_CAP));
        jitter(pause)
    }

    pub(super) fn reset(&mut self) {
        self.next = None;
    }
}

/// `pause` scaled by a random factor in [0.5, 1.0), so that many clients do not retry in step.
fn jitter(pause: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    let factor = 0.5 + (random % 1000) as f64 / 2000.0;
    pause.mul_f64(factor)
}

pub(super) enum WaitError {
    Acquire(AcquireError),
    Consul(ConsulError),
}

/// Sends one request of an acquire loop within its bounds: the answer, or `None` after a
/// transient error (the caller tries again, after a pause, while the error budget lasts), or
/// the end of the loop.
pub(super) async fn request<T, C: Future<Output = ()>>(
    bounds: &mut Bounds<'_, C>,
    errors: &mut ErrorBudget,
    non_blocking: bool,
    waiting_for: &str,
    request: impl Future<Output = Result<T, ConsulError>>,
) -> Result<Option<T>, AcquireError> {
    match bounds.run(request).await.map_err(|i| bounds.error(i))? {
        Ok(answer) => Ok(Some(answer)),
        Err(e) if errors.allows(&e, non_blocking) => {
            tracing::warn!("consul error while waiting for {waiting_for}, retrying: {e}");
            bounds.pause(RETRY_INTERVAL).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Folds a wait's outcome into an acquire loop: the read it saw (`None`: read again), or a
/// transient error retried after a pause while the error budget lasts, or the end of it.
pub(super) async fn after_wait<T, C: Future<Output = ()>>(
    outcome: Result<Option<T>, WaitError>,
    errors: &mut ErrorBudget,
    bounds: &mut Bounds<'_, C>,
    waiting_for: &str,
) -> Result<Option<T>, AcquireError> {
    match outcome {
        Ok(read) => {
            errors.reset();
            Ok(read)
        }
        Err(WaitError::Acquire(e)) => Err(e),
        Err(WaitError::Consul(e)) if errors.allows(&e, false) => {
            // A blocking read is the request most exposed to a cut connection or a proxy that
            // times it out. Pause, then read again: the next attempt reconnects, and errors
            // that go on count against the budget.
            tracing::warn!("consul error while waiting for {waiting_for}, retrying: {e}");
            bounds.pause(RETRY_INTERVAL).await?;
            Ok(None)
        }
        Err(WaitError::Consul(e)) => Err(e.into()),
    }
}

/// Blocks on the key until it is deleted, freed or changed (then returns the read that shows
/// it, so the caller need not read it again), the session is lost, or the timeout passes (then
/// `None`, and the caller reads the key again). The cancel future ends it with an error.
pub(super) async fn wait_for_change<C: Future<Output = ()>>(
    client: &Client,
    key: &str,
    index: u64,
    liveness: Option<&Liveness>,
    backoff: &mut EarlyReturnBackoff,
    bounds: &mut Bounds<'_, C>,
) -> Result<Option<Indexed<Option<KvEntry>>>, WaitError> {
    let read = |options: QueryOptions| async move { client.kv_get(key, &options).await };
    let changed = |read: &Indexed<Option<KvEntry>>, index: u64| {
        let holder = read.value.as_ref().and_then(|e| e.session.as_ref());
        holder.is_none() || read.index > index
    };
    wait_until(key, index, read, changed, liveness, backoff, bounds).await
}

/// Blocks on everything under `prefix` until any of it changes (then returns the listing that
/// shows it), the session is lost, or the timeout passes (then `None`, and the caller lists
/// again). The cancel future ends it with an error.
pub(super) async fn wait_for_listing_change<C: Future<Output = ()>>(
    client: &Client,
    prefix: &str,
    index: u64,
    liveness: Option<&Liveness>,
    backoff: &mut EarlyReturnBackoff,
    bounds: &mut Bounds<'_, C>,
) -> Result<Option<Indexed<Vec<KvEntry>>>, WaitError> {
    let read = |options: QueryOptions| async move { client.kv_list(prefix, &options).await };
    let changed = |read: &Indexed<Vec<KvEntry>>, index: u64| read.index > index;
    wait_until(prefix, index, read, changed, liveness, backoff, bounds).await
}

/// The loop behind both waits: blocking reads of `what` from `index` on, until `changed` says
/// a read shows a change (returned), our session is lost or the timeout passes (`None`).
async fn wait_until<T, C, R, F>(
    what: &str,
    index: u64,
    read: R,
    changed: impl Fn(&Indexed<T>, u64) -> bool,
    liveness: Option<&Liveness>,
    backoff: &mut EarlyReturnBackoff,
    bounds: &mut Bounds<'_, C>,
) -> Result<Option<Indexed<T>>, WaitError>
where
    C: Future<Output = ()>,
    R: Fn(QueryOptions) -> F,
    F: Future<Output = Result<Indexed<T>, ConsulError>>,
{
    let mut index = index.max(1);
    loop {
        let wait = match bounds.deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(MAX_BLOCKING_WAIT),
            None => MAX_BLOCKING_WAIT,
        };
        if wait.is_zero() {
            return Ok(None);
        }
        let sent = Instant::now();
        let reading = read(QueryOptions::blocking(index, wait));
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
                    result = reading => Some(result),
                    () = lost => None,
                }
            })
            .await;
        let result = match result {
            Ok(Some(result)) => result,
            // Our session died: the caller makes a new one.
            Ok(None) => return Ok(None),
            Err(Interrupt::TimedOut) => return Ok(None),
            Err(interrupt) => return Err(WaitError::Acquire(bounds.error(interrupt))),
        };
        let read = result.map_err(WaitError::Consul)?;
        if changed(&read, index) {
            backoff.reset();
            return Ok(Some(read));
        }
        // Nothing changed (or the index went backwards, after a snapshot restore). A read that
        // came back long before its wait was up is a server or proxy not blocking: pause before
        // the next, longer each time, instead of asking again at once.
        if sent.elapsed() < wait / 2 {
            let pause = backoff.next_pause();
            tracing::debug!(
                what,
                ?pause,
                "blocking read returned early without a change"
            );
            bounds.pause(pause).await.map_err(WaitError::Acquire)?;
        } else {
            backoff.reset();
        }
        index = read.index.max(1);
    }
}
