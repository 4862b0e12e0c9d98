//! The request counters `/_devserver/stats` reports: every request outside `/_devserver/*`, and
//! the same requests by what each would cost on a real Consul cluster. On the dev server every
//! round trip costs about the same; on a cluster a write is a Raft commit (a quorum round and an
//! fsync) and a consistent read makes the leader confirm its leadership with a quorum, so the
//! benchmark (`examples/bench.rs`) counts those apart.
//!
//! | kind | requests |
//! |---|---|
//! | `writes` | session create and destroy, KV `PUT` (plain, cas, acquire, release), KV `DELETE`, a `PUT /v1/txn` holding any write verb |
//! | `consistent_reads` | KV and session reads with `?consistent`, a read-only transaction with `?consistent` |
//! | `other` | default-consistency and stale reads, session renewals, status and agent reads, and anything refused before it was read in full (an unclean path, an injected fault, a body over the limit) |
//!
//! Every counted request is in exactly one kind, told by what was asked, not by how it went: a
//! cas that fails has still been through Raft. Blocking reads (`?index` above 0) are counted a
//! second time, by consistency (`consistent_blocking_reads`, `other_blocking_reads`): in an
//! uncontended `execute` the only one is the lock watch, which runs alongside the command
//! rather than on the path the user waits for.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::Method;

use super::http::Call;
use super::txn;

/// The counters of one dev server.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    writes: AtomicU64,
    consistent_reads: AtomicU64,
    other: AtomicU64,
    consistent_blocking_reads: AtomicU64,
    other_blocking_reads: AtomicU64,
}

impl Counters {
    /// Counts a request as it arrives (unless it is one of `/_devserver/*`); its kind is counted
    /// through the returned tally.
    pub(crate) fn arrived(&self, path: &str) -> Tally<'_> {
        if path.starts_with("/_devserver/") {
            return Tally(None);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Tally(Some(self))
    }

    /// The counters as `/_devserver/stats` shows them.
    pub(crate) fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let counters = [
            ("requests", &self.requests),
            ("writes", &self.writes),
            ("consistent_reads", &self.consistent_reads),
            ("other", &self.other),
            ("consistent_blocking_reads", &self.consistent_blocking_reads),
            ("other_blocking_reads", &self.other_blocking_reads),
        ];
        counters
            .into_iter()
            .map(|(name, counter)| (name.to_string(), counter.load(Ordering::Relaxed).into()))
            .collect()
    }
}

/// One request's kind, still to be counted: by [`Tally::classify`] once the request has been
/// read in full, or as `other` when it is dropped without (the request was refused before).
pub(crate) struct Tally<'a>(Option<&'a Counters>);

impl Tally<'_> {
    /// Counts the request by its kind.
    pub(crate) fn classify(mut self, call: &Call) {
        let Some(counters) = self.0.take() else {
            return;
        };
        let kind = kind(call);
        let counter = match kind {
            Kind::Write => &counters.writes,
            Kind::ConsistentRead => &counters.consistent_reads,
            Kind::Other => &counters.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let blocking = call.method == Method::GET
            && call
                .query
                .get("index")
                .and_then(|index| index.parse::<u64>().ok())
                .is_some_and(|index| index > 0);
        if blocking {
            let counter = match kind {
                Kind::ConsistentRead => &counters.consistent_blocking_reads,
                _ => &counters.other_blocking_reads,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if let Some(counters) = self.0.take() {
            counters.other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Write,
    ConsistentRead,
    Other,
}

fn kind(call: &Call) -> Kind {
    let path = call.path.as_str();
    let put = call.method == Method::PUT;
    let write = if path == "/v1/txn" {
        put && txn::writes(&call.body)
    } else if path.starts_with("/v1/kv/") {
        put || call.method == Method::DELETE
    } else {
        put && (path == "/v1/session/create" || path.starts_with("/v1/session/destroy/"))
    };
    let read = if path == "/v1/txn" {
        put
    } else {
        call.method == Method::GET
            && (path.starts_with("/v1/kv/") || path.starts_with("/v1/session/"))
    };
    if write {
        Kind::Write
    } else if read && call.query.has("consistent") {
        Kind::ConsistentRead
    } else {
        Kind::Other
    }
}
