//! One attempt to take a free-looking lock.
//!
//! With transactions (every Consul since 0.7), one `PUT /v1/txn` does it in one Raft commit:
//! `[check, lock, get]`, plus the delete of our entry in the waiter queue when we waited in
//! line. The check repeats what the read before the attempt saw (`check-not-exists`, or
//! `check-index` on the ModifyIndex it saw), so that nothing written in between (someone's data,
//! another lock) can be overwritten; the `get` reads, in the same commit, the ModifyIndex of this
//! very acquisition: the fencing token, without a consistent read of its own. `lock` honours
//! lock-delay as `?acquire` does.
//!
//! Where the server has no transactions (404 or 405 on `/v1/txn`: a very old Consul, or a proxy
//! that lets only the KV and session endpoints through), the attempt falls back, once for the
//! whole run, to `?acquire` and a consistent read.

use std::time::Duration;

use crate::clock;
use crate::consul::{
    Client, ConsulError, Indexed, KvEntry, PutMode, QueryOptions, TxnOp, TxnOutcome,
};

use super::value::{LockInfo, is_lock_value};

/// What a key holds, as one attempt sees it.
pub(super) enum KeyState {
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

/// What `read` shows, for a lock whose key carries `flags`: 0 for consullock's own layout,
/// whose value must be a lock's JSON; `api.Lock`'s flags for `consul lock`'s, whose value must
/// be empty. (`api/lock.go` checks only the flags, but `consul lock` sets no value,
/// `command/lock/lock.go`: a value there is another program's data under `api.Lock`.)
pub(super) fn key_state(read: &crate::consul::Indexed<Option<KvEntry>>, flags: u64) -> KeyState {
    let Some(entry) = &read.value else {
        return KeyState::Free;
    };
    if flags != 0 && entry.flags != flags {
        return KeyState::NotALock {
            what: format!(
                "{}, with flags {:#x} where `consul lock` sets {flags:#x}",
                describe(entry),
                entry.flags
            ),
        };
    }
    // `consul lock` leaves its key empty: a value is someone's data under `api.Lock`'s flags.
    if flags == super::layout::LOCK_FLAG_VALUE && !entry.value.is_empty() {
        return KeyState::NotALock {
            what: format!("{}, where `consul lock` stores nothing", describe(entry)),
        };
    }
    if flags == 0 && !is_lock_value(&entry.value) {
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

/// What one attempt found.
pub(super) enum Attempt {
    /// Ours: the entry right after the acquisition, and when the request that confirmed it was
    /// sent.
    Acquired(KvEntry, Duration),
    /// Refused because of a lock-delay on the free key.
    LockDelay,
    /// The key is not what the read before the attempt saw: read it again (this one, when
    /// known).
    Changed(Option<Indexed<Option<KvEntry>>>),
    /// Our session is gone (invalidated while we waited): make a new one.
    SessionGone,
}

/// Tries to take `key` for `session`, storing `value` and `flags`, given what the read before
/// saw (`seen`: `None` when the key was absent). With `queue_entry`, our entry in the waiter
/// queue goes in the same commit.
pub(super) async fn try_acquire(
    client: &Client,
    key: &str,
    value: &[u8],
    flags: u64,
    session: &str,
    seen: Option<&KvEntry>,
    queue_entry: Option<&str>,
) -> Result<Attempt, ConsulError> {
    if client.transactions() {
        match with_transaction(client, key, value, flags, session, seen, queue_entry).await {
            Err(e) if e.means_no_txn() => client.note_no_transactions(),
            result => return result,
        }
    }
    let attempt = with_acquire(client, key, value, flags, session).await?;
    if let (Attempt::Acquired(..), Some(entry)) = (&attempt, queue_entry) {
        // Leave the line; if this fails, the entry goes with the session at the latest.
        if let Err(e) = client.kv_delete(entry, None).await {
            tracing::debug!("leaving the queue of {key} failed: {e}");
        }
    }
    Ok(attempt)
}

async fn with_transaction(
    client: &Client,
    key: &str,
    value: &[u8],
    flags: u64,
    session: &str,
    seen: Option<&KvEntry>,
    queue_entry: Option<&str>,
) -> Result<Attempt, ConsulError> {
    let check = match seen {
        None => TxnOp::CheckNotExists { key },
        Some(entry) => TxnOp::CheckIndex {
            key,
            index: entry.modify_index,
        },
    };
    let mut ops = vec![
        check,
        TxnOp::Lock {
            key,
            value,
            flags,
            session,
        },
        TxnOp::Get { key },
    ];
    if let Some(entry) = queue_entry {
        ops.push(TxnOp::Delete { key: entry });
    }
    let sent_at = clock::now();
    match client.txn(&ops).await? {
        // Results come only from ops that give one (the lock's entry and the get's, here):
        // the last one for our key is the get, in the same commit as the lock.
        TxnOutcome::Applied(results) => match results.into_iter().rev().find(|e| e.key == key) {
            Some(entry) if entry.session.as_deref() == Some(session) => {
                Ok(Attempt::Acquired(entry, sent_at))
            }
            _ => Ok(Attempt::Changed(None)),
        },
        TxnOutcome::RolledBack(errors) => {
            let lock_error = errors.iter().find(|e| e.op_index == 1);
            let what = lock_error.map(|e| e.what.to_ascii_lowercase());
            Ok(match what {
                Some(what) if what.contains("lock delay") => Attempt::LockDelay,
                Some(what) if what.contains("invalid session") => Attempt::SessionGone,
                // The check (or the lock, as already held) failed: the key changed since read.
                _ => Attempt::Changed(None),
            })
        }
    }
}

/// `?acquire`, then a read to tell what happened: the consistent read after a success gives the
/// fencing token (the ModifyIndex of our acquisition); after a refusal, it tells a holder from a
/// lock-delay.
async fn with_acquire(
    client: &Client,
    key: &str,
    value: &[u8],
    flags: u64,
    session: &str,
) -> Result<Attempt, ConsulError> {
    let acquired = match client
        .kv_put(
            key,
            value,
            PutMode::Acquire(session),
            (flags != 0).then_some(flags),
        )
        .await
    {
        Ok(acquired) => acquired,
        Err(ConsulError::InvalidSession { .. }) => return Ok(Attempt::SessionGone),
        Err(e) => return Err(e),
    };
    if acquired {
        let sent_at = clock::now();
        let read = client
            .kv_get(key, &QueryOptions::default().consistent())
            .await?;
        return Ok(match read.value {
            Some(entry) if entry.session.as_deref() == Some(session) => {
                Attempt::Acquired(entry, sent_at)
            }
            // Acquired, then gone before the read (an operator's unlock): try again.
            _ => Attempt::Changed(None),
        });
    }
    let read = client.kv_get(key, &QueryOptions::default()).await?;
    Ok(match key_state(&read, flags) {
        KeyState::Free => Attempt::LockDelay,
        _ => Attempt::Changed(Some(read)),
    })
}
