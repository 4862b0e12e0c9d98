//! The waiter queue: consullock's waiters for a held lock take it in the order they came, and a
//! release wakes one of them, not all.
//!
//! Without it, every waiter blocks on the lock key, so every release wakes them all and they all
//! try at once (as `consul lock` waiters do): one wins, the others read again and go back to
//! sleep, a herd of requests and processes on every hand-over. With it, as etcd's lock does:
//!
//! * a contender that finds the lock held joins the line: the key `KEY/.queue/<session>`,
//!   acquired by its own session (so a waiter that dies leaves the line by itself, its session's
//!   Behavior being `delete`), holding a [`QueueEntry`];
//! * the line's order is the entries' CreateIndex, Consul's Raft index: the order they joined;
//! * a waiter that is not first watches only the entry just ahead of it (a blocking read on that
//!   one key), and reads the line again when it goes;
//! * the first waiter watches the lock key, and takes the lock (in the same transaction, it
//!   deletes its entry, which wakes the next one).
//!
//! The lock key alone still decides who holds the lock: contenders that do not queue (consullock
//! 4.2, which polls; `--non-blocking`; a waiter whose session would outlive a crash for too
//! long) can still take it when it is free, and the line only orders consullock's own waiters.
//! Only waiters whose sessions are renewed and end within [`MAX_QUEUE_TTL`] when their process
//! dies join it: an entry left by a dead waiter with a day-long session would block the line
//! for a day. A line that cannot be joined (an ACL that covers only the lock key) is not an
//! error: the waiter then waits on the lock key like the others.

use std::future::Future;
use std::time::Duration;

use crate::consul::{Client, ConsulError, KvEntry, PutMode, QueryOptions};
use crate::session::hostname;

use super::value::{QueueEntry, timestamp_now};
use super::wait::{Bounds, EarlyReturnBackoff, WaitError, wait_for_change};

/// The longest session TTL of a waiter that joins the line (see the module docs).
pub const MAX_QUEUE_TTL: Duration = Duration::from_secs(60);

/// The segment between a lock key and its waiters' entries.
const QUEUE_SEGMENT: &str = ".queue";

/// Where the waiters for `lock_key` line up: `KEY/.queue/`.
pub fn queue_prefix(lock_key: &str) -> String {
    format!("{lock_key}/{QUEUE_SEGMENT}/")
}

/// Whether `key` names an entry of a lock's queue (`KEY/.queue/<session>`).
pub fn is_queue_key(key: &str) -> bool {
    key.rsplit_once('/')
        .and_then(|(rest, last)| (!last.is_empty()).then_some(rest))
        .and_then(|rest| rest.rsplit_once('/'))
        .is_some_and(|(lock, segment)| segment == QUEUE_SEGMENT && !lock.is_empty())
}

/// Our place in the line for one lock.
#[derive(Debug)]
pub(super) struct Place {
    prefix: String,
    entry: String,
    /// We were seen first: nobody can get ahead of us any more (later waiters come after us,
    /// and entries only leave).
    first: bool,
}

/// How waiting for our turn ended.
pub(super) enum Turn {
    /// We are first: watch the lock.
    First,
    /// Our entry is gone (our session died, or someone deleted it): join again.
    Gone,
}

impl Place {
    /// Joins the line for `lock_key` with `session`.
    pub(super) async fn join(
        client: &Client,
        lock_key: &str,
        session: &str,
    ) -> Result<Place, ConsulError> {
        let prefix = queue_prefix(lock_key);
        let entry = format!("{prefix}{session}");
        let value = QueueEntry {
            queue_for: lock_key.to_owned(),
            session: session.to_owned(),
            since: timestamp_now(),
            hostname: hostname(),
            pid: Some(std::process::id()),
        }
        .to_value();
        if !client
            .kv_put(&entry, &value, PutMode::Acquire(session), None)
            .await?
        {
            // Only our own session can hold a key named after it; a lock-delay left by an
            // earlier session of that name cannot exist. Treat it as not joined.
            return Err(ConsulError::InvalidResponse {
                request: crate::consul::RequestContext {
                    address: client.address().to_owned(),
                    method: "PUT",
                    path: format!("/v1/kv/{entry}"),
                },
                what: "the queue entry was refused to its own session".into(),
            });
        }
        tracing::debug!(key = lock_key, entry = %entry, "joined the queue");
        Ok(Place {
            prefix,
            entry,
            first: false,
        })
    }

    /// Our entry's key, to delete when we take the lock.
    pub(super) fn entry(&self) -> &str {
        &self.entry
    }

    /// Waits until we are first in line (at once when we already were).
    pub(super) async fn wait_turn<C: Future<Output = ()>>(
        &mut self,
        client: &Client,
        backoff: &mut EarlyReturnBackoff,
        bounds: &mut Bounds<'_, C>,
    ) -> Result<Turn, WaitError> {
        while !self.first {
            let listed = bounds
                .run(client.kv_list(&self.prefix, &QueryOptions::default()))
                .await
                .map_err(|i| WaitError::Acquire(bounds.error(i)))?
                .map_err(WaitError::Consul)?;
            let mut line: Vec<&KvEntry> = listed
                .value
                .iter()
                .filter(|e| e.session.is_some() && !e.key[self.prefix.len()..].contains('/'))
                .collect();
            line.sort_by_key(|e| (e.create_index, e.key.clone()));
            let Some(position) = line.iter().position(|e| e.key == self.entry) else {
                return Ok(Turn::Gone);
            };
            if position == 0 {
                self.first = true;
                break;
            }
            let ahead = line[position - 1];
            tracing::debug!(entry = %self.entry, ahead = %ahead.key, position, "waiting in line");
            // Wait for the one ahead to leave (it took the lock, or gave up, or died). Our own
            // session's loss shows as our entry gone on the next reading of the line.
            wait_for_change(
                client,
                &ahead.key,
                ahead.modify_index,
                None,
                backoff,
                bounds,
            )
            .await?;
        }
        Ok(Turn::First)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_are_recognised() {
        let session = "7d901121-42ba-4fbb-b177-30df0fe2b51f";
        let entry = format!("{}{session}", queue_prefix("jobs/backup"));
        assert_eq!(entry, format!("jobs/backup/.queue/{session}"));
        assert!(is_queue_key(&entry));
        for not_one in [
            "jobs/backup",
            "jobs/backup/.queue/",
            ".queue/x",
            "jobs/.queued/x",
            "jobs/.queue/x/y",
        ] {
            assert!(!is_queue_key(not_one), "{not_one}");
        }
    }
}
