//! Semaphores: at most N holders at once, on the keys of Go's `api.Semaphore`
//! (`api/semaphore.go`), so that consullock and `consul lock -n N` contenders on one prefix
//! share the same N slots (see `layout.rs` for the keys and values).
//!
//! **Taking a slot.** Go writes its contender key first, then lists the prefix, prunes the dead
//! holders from `.lock`, and adds itself with a check-and-set; a lost race lists again. Here the
//! listing comes first (a contender that finds every slot taken writes nothing), and the two
//! writes are one transaction, `[lock PREFIX/<session>, cas PREFIX/.lock, get PREFIX/<session>]`:
//! both happen or neither, so no contender key is ever left without its holder entry, and the
//! check-and-set on `.lock` still loses to any concurrent change, as Go's does. Where the server
//! has no transactions, Go's two requests, in Go's order.
//!
//! **Holding.** The prefix is watched (consistent blocking reads, as for a single lock): the slot
//! is lost when our contender key is gone or someone else's, or when `.lock` no longer lists us
//! (deleted, rewritten, or our entry removed), as Go's `monitorLock` decides.
//!
//! **Releasing.** Our entry leaves `.lock` by check-and-set (or `.lock` goes, by check-and-set
//! too, when no live holder is left, as Go's `Destroy` does after its `Release`), and our
//! contender key is deleted, in one transaction; a lost race reads again.
//!
//! **What the lock-delay does here.** A slot is not a key that anyone else acquires: once a
//! holder's session is invalidated (a failed node check, a destroy), Go's contenders prune it
//! from `.lock` at once. Consul still puts the session's lock-delay on the keys it held, its
//! contender key among them, so consullock's contenders ask (a transaction that locks those
//! keys for the nil session, see [`super::lock_delay`]) and leave a dead holder's slot taken
//! until that delay has passed. The contact window of a slot keeps the lock-delay after an
//! invalidation, and leaves it out after an expiry, which frees the slot to Go's contenders at
//! once ([`crate::session::contact_window_guarding`]).

use std::future::Future;
use std::time::Duration;

use crate::clock;
use crate::consul::{
    Client, ConsulError, Indexed, KvEntry, PutMode, QueryOptions, TxnOp, TxnOutcome,
};
use crate::session::{LossReason, RETRY_INTERVAL};

use super::layout::{
    LOCK_FLAG_VALUE, SEMAPHORE_FLAG_VALUE, SemaphoreState, contender_key, coordination_key,
    prefix_of,
};
use super::lock_delay::{self, LockDelay};
use super::value::LockInfo;
use super::wait::{
    self, Bounds, EarlyReturnBackoff, ErrorBudget, after_wait, wait_for_listing_change,
};
use super::{
    AcquireError, AcquireOptions, Acquired, Holder, LOCK_DELAY_BACKOFF_START,
    MIN_LOCK_DELAY_BACKOFF_CAP, Refusal, Waiting, held, new_info, refused,
};

/// How many times a release reads `.lock` again after losing a check-and-set race before it
/// leaves the entry to be pruned (our contender key goes anyway, and the session after it).
const RELEASE_RACES: usize = 10;

/// A slot we hold.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    prefix: String,
    coordination: String,
    contender: String,
    limit: u32,
}

impl Slot {
    /// The semaphore's prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Our contender key, `PREFIX/<session>`.
    pub(crate) fn contender(&self) -> &str {
        &self.contender
    }

    /// How many holders at most.
    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// The loss `listing` (the prefix, listed) shows for `session`'s slot, if any.
    pub(crate) fn loss_in(&self, listing: &[KvEntry], session: &str) -> Option<LossReason> {
        match listing.iter().find(|e| e.key == self.contender) {
            None => return Some(LossReason::KeyDeleted),
            Some(entry) if entry.session.as_deref() != Some(session) => {
                return Some(LossReason::KeyTakenOver {
                    holder: entry.session.clone(),
                });
            }
            Some(_) => {}
        }
        let listed = listing
            .iter()
            .find(|e| e.key == self.coordination)
            .filter(|e| e.flags == SEMAPHORE_FLAG_VALUE)
            .and_then(|e| SemaphoreState::decode(&e.value).ok().flatten())
            .is_some_and(|state| state.holders.contains(session));
        (!listed).then_some(LossReason::SlotRemoved)
    }
}

/// What one attempt to take a slot found.
enum SlotAttempt {
    /// Ours, with our contender key's LockIndex, confirmed by a request sent at that moment.
    Taken { lock_index: u64, sent_at: Duration },
    /// `.lock` changed since the listing (another contender, a release): list again.
    Raced,
    /// Our contender key is under a lock-delay (a session of ours that died with it).
    LockDelay,
    /// Our session is gone: make a new one.
    SessionGone,
}

/// Waits for a slot of the semaphore at `key` (`consul lock -n limit key`), as
/// [`super::attempts`] does for a single lock.
pub(super) async fn attempts<C: Future<Output = ()>>(
    holder: &mut Holder<'_>,
    key: &str,
    limit: u32,
    options: &AcquireOptions,
    bounds: &mut Bounds<'_, C>,
) -> Result<Acquired, AcquireError> {
    let client = holder.client;
    let prefix = prefix_of(key).to_owned();
    let coordination = coordination_key(&prefix);
    let lock_delay_cap = options
        .lock_delay_backoff_cap
        .max(MIN_LOCK_DELAY_BACKOFF_CAP);
    let mut lock_delay_backoff = LOCK_DELAY_BACKOFF_START;
    let mut early_returns = EarlyReturnBackoff::default();
    let mut errors = ErrorBudget::default();
    let mut known: Option<Indexed<Vec<KvEntry>>> = None;
    let hostname = crate::session::hostname();
    loop {
        if bounds.past_deadline() {
            return Err(bounds.timed_out());
        }
        if let Some(hooks) = &options.hooks {
            bounds
                .run(hooks.before_attempt(&prefix))
                .await
                .map_err(|i| bounds.error(i))?;
        }
        // Go lists by the prefix as a string (`KV().List(prefix)`): keys of a sibling prefix
        // count as alive holders too, and so they do here.
        let listing = match known.take() {
            Some(listing) => listing,
            None => {
                let plain = QueryOptions::default();
                let list = client.kv_list(&prefix, &plain);
                match wait::request(bounds, &mut errors, options.non_blocking, "a slot", list)
                    .await?
                {
                    Some(listing) => listing,
                    None => continue,
                }
            }
        };
        errors.answered();
        let coordination_entry = listing.value.iter().find(|e| e.key == coordination);
        let mut state = semaphore_state(coordination_entry, &coordination, limit)?;
        let recorded = state.holders.clone();
        state.prune(&listing.value);
        // A holder whose session was invalidated (a failed node check, a forced unlock) while
        // it could not hear of it may still be stopping its command. Consul keeps that
        // session's lock-delay on every key it held, its contender key too: until the delay
        // has passed its slot stays taken, as a single lock's key stays refused. (Go's
        // contenders prune at once; consullock's wait.)
        let dead: Vec<String> = recorded.difference(&state.holders).cloned().collect();
        let mut delayed = false;
        if !dead.is_empty() {
            let probe = probe_contenders(client, &prefix, &dead);
            let Some(answers) =
                wait::request(bounds, &mut errors, options.non_blocking, "a slot", probe).await?
            else {
                continue;
            };
            for (dead, answer) in dead.iter().zip(answers) {
                if answer == LockDelay::InForce {
                    state.holders.insert(dead.clone());
                    delayed = true;
                }
            }
        }
        if let Some(ours) = holder.session_id()
            && state.holders.contains(ours)
            && let Some(entry) = listing.value.iter().find(|e| {
                e.key == contender_key(&prefix, ours) && e.session.as_deref() == Some(ours)
            })
        {
            // Ours already: an attempt whose answer was lost took it.
            tracing::info!(key = %prefix, session = %ours, "the slot is already ours");
            let info = LockInfo::parse(&entry.value)
                .unwrap_or_else(|| new_info(&prefix, ours, options, bounds.started, &hostname));
            return Ok(Acquired {
                info,
                value: entry.value.clone(),
                lock_index: entry.lock_index,
                fencing_token: None,
                what: held::What::Slot(Slot {
                    prefix: prefix.clone(),
                    coordination: coordination.clone(),
                    contender: entry.key.clone(),
                    limit,
                }),
            });
        }
        if state.is_full() && delayed {
            // Nothing in the listing changes when a lock-delay ends: ask again after a pause.
            refused(options, bounds, &prefix, || Refusal::Full {
                holders: state.holders.iter().cloned().collect(),
            })
            .await?;
            holder.ensure(false, bounds).await?;
            if let Some(observer) = &options.on_wait {
                observer.waiting(&Waiting {
                    key: prefix.clone(),
                    holder: state.holders.iter().cloned().collect::<Vec<_>>().join(", "),
                    info: None,
                });
            }
            tracing::debug!(key = %prefix, backoff = ?lock_delay_backoff, "a dead holder's slot is under its lock-delay; retrying");
            bounds.pause(lock_delay_backoff).await?;
            lock_delay_backoff = (lock_delay_backoff * 2).min(lock_delay_cap);
            continue;
        }
        if state.is_full() {
            if let Some(hooks) = &options.hooks {
                bounds
                    .run(hooks.already_locked(&prefix))
                    .await
                    .map_err(|i| bounds.error(i))?;
            }
            if options.non_blocking {
                return Err(AcquireError::NotAcquired {
                    key: prefix,
                    refusal: Refusal::Full {
                        holders: state.holders.into_iter().collect(),
                    },
                });
            }
            if bounds.past_deadline() {
                return Err(bounds.timed_out());
            }
            // As for a single lock, a waiter keeps its session, renewed, to try at once.
            holder.ensure(false, bounds).await?;
            if let Some(observer) = &options.on_wait {
                observer.waiting(&Waiting {
                    key: prefix.clone(),
                    holder: state.holders.iter().cloned().collect::<Vec<_>>().join(", "),
                    info: None,
                });
            }
            tracing::debug!(key = %prefix, holders = state.holders.len(), "semaphore full; waiting");
            let wait = wait_for_listing_change(
                client,
                &prefix,
                listing.index,
                holder.liveness(),
                &mut early_returns,
                bounds,
            );
            known = after_wait(wait.await, &mut errors, bounds, "a slot").await?;
            continue;
        }
        let session_id = holder
            .ensure(options.non_blocking, bounds)
            .await?
            .id()
            .to_owned();
        let contender = contender_key(&prefix, &session_id);
        let info = new_info(&prefix, &session_id, options, bounds.started, &hostname);
        // Go's contenders store nothing in their key; ours says who holds the slot, for
        // `status` and for `unlock`, which only frees consullock's own.
        let value = info.to_value();
        state.holders.insert(session_id.clone());
        let encoded = state.encode();
        let attempt = take_slot(
            client,
            &contender,
            &value,
            &session_id,
            &coordination,
            coordination_entry.map_or(0, |e| e.modify_index),
            &encoded,
        );
        let outcome = bounds.run(attempt).await.map_err(|i| bounds.error(i))?;
        if outcome.is_ok() {
            errors.reset();
        }
        match outcome {
            Ok(SlotAttempt::Taken {
                lock_index,
                sent_at,
            }) => {
                if let Some(liveness) = holder.liveness() {
                    liveness.shared.confirm(sent_at);
                }
                tracing::info!(key = %prefix, session = %session_id, limit, "semaphore slot acquired");
                return Ok(Acquired {
                    info,
                    value,
                    lock_index,
                    fencing_token: None,
                    what: held::What::Slot(Slot {
                        prefix,
                        coordination,
                        contender,
                        limit,
                    }),
                });
            }
            Ok(SlotAttempt::Raced) => {}
            Ok(SlotAttempt::SessionGone) => holder.destroy().await,
            Ok(SlotAttempt::LockDelay) => {
                if options.non_blocking {
                    return Err(AcquireError::NotAcquired {
                        key: prefix,
                        refusal: Refusal::LockDelay,
                    });
                }
                bounds.pause(lock_delay_backoff).await?;
                lock_delay_backoff = (lock_delay_backoff * 2).min(lock_delay_cap);
            }
            Err(e) if errors.allows(&e, options.non_blocking) => {
                tracing::warn!("consul error while taking a slot, retrying: {e}");
                bounds.pause(RETRY_INTERVAL).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The semaphore `.lock` describes, checked as Go checks it: flags that are not a semaphore's
/// (`consul lock` holding a single lock there, or anyone's data) and a limit other than ours are
/// refused; an absent or empty `.lock` is an empty semaphore.
fn semaphore_state(
    entry: Option<&KvEntry>,
    coordination: &str,
    limit: u32,
) -> Result<SemaphoreState, AcquireError> {
    let Some(entry) = entry else {
        return Ok(SemaphoreState::empty(limit.into()));
    };
    if entry.flags != SEMAPHORE_FLAG_VALUE {
        let whose = if entry.flags == LOCK_FLAG_VALUE {
            " (a `consul lock` without -n, or consullock --consul-lock, holds the prefix)"
        } else {
            ""
        };
        return Err(AcquireError::NotALock {
            key: coordination.to_owned(),
            what: format!(
                "flags {:#x} where a semaphore's are {SEMAPHORE_FLAG_VALUE:#x}{whose}",
                entry.flags
            ),
        });
    }
    let state = SemaphoreState::decode(&entry.value)
        .map_err(|what| AcquireError::NotALock {
            key: coordination.to_owned(),
            what: format!("a value that is not a semaphore's: {what}"),
        })?
        .unwrap_or_else(|| SemaphoreState::empty(limit.into()));
    // No semaphore ever stores a limit of 0 (Go's `SemaphoreOpts` refuses it): such a value,
    // or an object without `Limit`, is someone's data under the semaphore's flags.
    if state.limit == 0 {
        return Err(AcquireError::NotALock {
            key: coordination.to_owned(),
            what: "a value with no semaphore limit in it".into(),
        });
    }
    if state.limit != u64::from(limit) {
        return Err(AcquireError::LimitConflict {
            key: coordination.to_owned(),
            stored: state.limit,
            asked: limit,
        });
    }
    Ok(state)
}

/// Takes a slot: our contender key and our entry in `.lock` (`encoded`, written only if `.lock`
/// is still at `coordination_index`, 0 when absent).
async fn take_slot(
    client: &Client,
    contender: &str,
    value: &[u8],
    session: &str,
    coordination: &str,
    coordination_index: u64,
    encoded: &[u8],
) -> Result<SlotAttempt, ConsulError> {
    if client.transactions() {
        let ops = [
            TxnOp::Lock {
                key: contender,
                value,
                flags: SEMAPHORE_FLAG_VALUE,
                session,
            },
            TxnOp::Cas {
                key: coordination,
                value: encoded,
                flags: SEMAPHORE_FLAG_VALUE,
                index: coordination_index,
            },
            TxnOp::Get { key: contender },
        ];
        let sent_at = clock::now();
        match client.txn(&ops).await {
            Ok(TxnOutcome::Applied(results)) => {
                return Ok(
                    match results.into_iter().rev().find(|e| e.key == contender) {
                        Some(entry) if entry.session.as_deref() == Some(session) => {
                            SlotAttempt::Taken {
                                lock_index: entry.lock_index,
                                sent_at,
                            }
                        }
                        _ => SlotAttempt::Raced,
                    },
                );
            }
            Ok(TxnOutcome::RolledBack(errors)) => {
                let lock_error = errors
                    .iter()
                    .find(|e| e.op_index == 0)
                    .map(|e| e.what.to_ascii_lowercase());
                return Ok(match lock_error {
                    Some(what) if what.contains("lock delay") => SlotAttempt::LockDelay,
                    Some(what) if what.contains("invalid session") => SlotAttempt::SessionGone,
                    _ => SlotAttempt::Raced,
                });
            }
            Err(e) if e.means_no_txn() => client.note_no_transactions(),
            Err(e) => return Err(e),
        }
    }
    // Go's order: the contender key, then `.lock` by check-and-set.
    let sent_at = clock::now();
    let acquired = match client
        .kv_put(
            contender,
            value,
            PutMode::Acquire(session),
            Some(SEMAPHORE_FLAG_VALUE),
        )
        .await
    {
        Ok(acquired) => acquired,
        Err(ConsulError::InvalidSession { .. }) => return Ok(SlotAttempt::SessionGone),
        Err(e) => return Err(e),
    };
    if !acquired {
        return Ok(SlotAttempt::LockDelay);
    }
    if !client
        .kv_put(
            coordination,
            encoded,
            PutMode::Cas(coordination_index),
            Some(SEMAPHORE_FLAG_VALUE),
        )
        .await?
    {
        // Our contender key stays, held: the next attempt takes it again as it is.
        return Ok(SlotAttempt::Raced);
    }
    let read = client
        .kv_get(contender, &QueryOptions::default().consistent())
        .await?;
    Ok(match read.value {
        Some(entry) if entry.session.as_deref() == Some(session) => SlotAttempt::Taken {
            lock_index: entry.lock_index,
            sent_at,
        },
        _ => SlotAttempt::Raced,
    })
}

/// Gives our slot back: our entry out of `.lock` (or `.lock` deleted when no live holder is
/// left), and our contender key deleted, in one transaction; whether we were still a holder.
pub(super) async fn release_slot(
    client: &Client,
    slot: &Slot,
    session: &str,
) -> Result<bool, ConsulError> {
    for _ in 0..RELEASE_RACES {
        let listing = client
            .kv_list(&slot.prefix, &QueryOptions::default())
            .await?;
        let entry = listing
            .value
            .iter()
            .find(|e| e.key == slot.coordination && e.flags == SEMAPHORE_FLAG_VALUE);
        let mut remaining = None;
        if let Some(entry) = entry
            && let Ok(Some(mut state)) = SemaphoreState::decode(&entry.value)
            && state.holders.remove(session)
        {
            // Others still alive, once we are gone?
            let mut live = state.clone();
            let others: Vec<KvEntry> = listing
                .value
                .iter()
                .filter(|e| e.session.as_deref() != Some(session))
                .cloned()
                .collect();
            live.prune(&others);
            remaining = Some((entry.modify_index, live.holders.is_empty(), state.encode()));
        }
        let was_holder = remaining.is_some();
        if !client.transactions() {
            return release_without_txn(client, slot, remaining).await;
        }
        let mut ops = Vec::new();
        if let Some((index, last, encoded)) = &remaining {
            ops.push(if *last {
                TxnOp::DeleteCas {
                    key: &slot.coordination,
                    index: *index,
                }
            } else {
                TxnOp::Cas {
                    key: &slot.coordination,
                    value: encoded,
                    flags: SEMAPHORE_FLAG_VALUE,
                    index: *index,
                }
            });
        }
        ops.push(TxnOp::Delete {
            key: &slot.contender,
        });
        match client.txn(&ops).await {
            Ok(TxnOutcome::Applied(_)) => return Ok(was_holder),
            Ok(TxnOutcome::RolledBack(_)) => continue,
            Err(e) if e.means_no_txn() => {
                client.note_no_transactions();
                return release_without_txn(client, slot, remaining).await;
            }
            Err(e) => return Err(e),
        }
    }
    // `.lock` kept changing: our entry is pruned by the next contender once our key is gone.
    client.kv_delete(&slot.contender, None).await?;
    Ok(false)
}

/// [`release_slot`] in Go's requests: `.lock` by check-and-set, then our key.
async fn release_without_txn(
    client: &Client,
    slot: &Slot,
    remaining: Option<(u64, bool, Vec<u8>)>,
) -> Result<bool, ConsulError> {
    let was_holder = remaining.is_some();
    if let Some((index, last, encoded)) = remaining {
        let replacement = (!last).then_some(encoded.as_slice());
        if !write_coordination(client, &slot.coordination, index, replacement).await? {
            tracing::debug!(key = %slot.prefix, "lost a race releasing the slot; the next contender prunes our entry");
        }
    }
    client.kv_delete(&slot.contender, None).await?;
    Ok(was_holder)
}

/// Whether Consul holds a lock-delay on the contender key of each of `holders` under `prefix`:
/// the trace a holder whose session was invalidated leaves (see [`lock_delay`]).
pub(super) async fn probe_contenders(
    client: &Client,
    prefix: &str,
    holders: &[String],
) -> Result<Vec<LockDelay>, ConsulError> {
    let keys: Vec<String> = holders.iter().map(|h| contender_key(prefix, h)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    lock_delay::probe(client, &keys).await
}

/// Replaces the `.lock` at `coordination` if it is still at `index`: with `replacement`, or,
/// when `None` (no holder left), by deleting it, as Go's `Destroy` does. Whether it was.
pub(super) async fn write_coordination(
    client: &Client,
    coordination: &str,
    index: u64,
    replacement: Option<&[u8]>,
) -> Result<bool, ConsulError> {
    match replacement {
        None => client.kv_delete(coordination, Some(index)).await,
        Some(value) => {
            let mode = PutMode::Cas(index);
            client
                .kv_put(coordination, value, mode, Some(SEMAPHORE_FLAG_VALUE))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, session: Option<&str>, flags: u64, value: &str) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags,
            session: session.map(Into::into),
            lock_index: 1,
            create_index: 1,
            modify_index: 7,
        }
    }

    #[test]
    fn foreign_flags_and_another_limit_are_refused() {
        let lock = entry("p/.lock", Some("s"), LOCK_FLAG_VALUE, "");
        let refused = semaphore_state(Some(&lock), "p/.lock", 3).unwrap_err();
        assert!(
            matches!(&refused, AcquireError::NotALock { what, .. } if what.contains("consul lock")),
            "{refused:?}"
        );
        let other = entry(
            "p/.lock",
            None,
            SEMAPHORE_FLAG_VALUE,
            r#"{"Limit":2,"Holders":{}}"#,
        );
        assert!(matches!(
            semaphore_state(Some(&other), "p/.lock", 3),
            Err(AcquireError::LimitConflict {
                stored: 2,
                asked: 3,
                ..
            })
        ));
        assert_eq!(
            semaphore_state(None, "p/.lock", 3).unwrap(),
            SemaphoreState::empty(3)
        );
    }

    #[test]
    fn a_slot_is_lost_with_its_key_or_its_entry() {
        let slot = Slot {
            prefix: "p".into(),
            coordination: "p/.lock".into(),
            contender: "p/me".into(),
            limit: 2,
        };
        let ours = entry("p/me", Some("me"), SEMAPHORE_FLAG_VALUE, "");
        let listed = entry(
            "p/.lock",
            None,
            SEMAPHORE_FLAG_VALUE,
            r#"{"Limit":2,"Holders":{"me":true}}"#,
        );
        let dropped = entry(
            "p/.lock",
            None,
            SEMAPHORE_FLAG_VALUE,
            r#"{"Limit":2,"Holders":{"other":true}}"#,
        );
        assert_eq!(slot.loss_in(&[ours.clone(), listed.clone()], "me"), None);
        assert_eq!(slot.loss_in(&[listed], "me"), Some(LossReason::KeyDeleted));
        assert_eq!(
            slot.loss_in(&[ours.clone(), dropped], "me"),
            Some(LossReason::SlotRemoved)
        );
        assert_eq!(slot.loss_in(&[ours], "me"), Some(LossReason::SlotRemoved));
    }
}
