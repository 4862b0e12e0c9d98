//! Which blocking queries a write wakes.
//!
//! A blocking query registers what it watches (one key, a prefix, or the sessions table) and
//! sleeps on its own `Notify`. After each write the store says which keys changed (tombstones
//! included) and whether sessions did; only the queries watching one of those are woken, as
//! Consul's memdb watch channels wake only the queries whose radix-tree nodes changed. A write
//! to an unrelated key therefore costs a waiting query nothing, and a waiting query holds no
//! copy of its result: it re-reads the store when woken or when its wait runs out.
//!
//! Per waiting query this costs one registry entry (the watched key or prefix, an id and an
//! `Arc<Notify>`, about 100 bytes plus the key) besides its connection; a write scans the
//! registry once (one string comparison per watcher and changed key).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::state::Changes;

/// What a blocking query watches.
#[derive(Clone, Debug)]
pub(crate) enum Watch {
    /// One KV key (present or not).
    Key(String),
    /// Every KV key under a prefix (the empty prefix is the whole store).
    Prefix(String),
    /// The sessions table.
    Sessions,
}

impl Watch {
    fn affected_by(&self, changes: &Changes) -> bool {
        match self {
            Watch::Key(key) => changes.keys.iter().any(|k| k == key),
            Watch::Prefix(prefix) => changes.keys.iter().any(|k| k.starts_with(prefix.as_str())),
            Watch::Sessions => changes.sessions,
        }
    }
}

/// The registry of waiting blocking queries.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    registry: Mutex<Registry>,
    /// How many times a waiting query was woken, for `/_devserver/stats`.
    pub(crate) wakeups: AtomicU64,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    waiting: HashMap<u64, (Watch, Arc<Notify>)>,
}

/// A registered blocking query; unregistered when dropped.
pub(crate) struct Registration<'a> {
    watchers: &'a Watchers,
    id: u64,
    notify: Arc<Notify>,
}

impl Registration<'_> {
    /// Resolves once a write touched what this query watches (a wake-up that came before this
    /// call is not lost).
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.watchers.registry().waiting.remove(&self.id);
    }
}

impl Watchers {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a query watching `watch`, before it first reads the store, so no change after
    /// that read can be missed.
    pub(crate) fn register(&self, watch: Watch) -> Registration<'_> {
        let notify = Arc::new(Notify::new());
        let mut registry = self.registry();
        registry.next_id += 1;
        let id = registry.next_id;
        registry.waiting.insert(id, (watch, notify.clone()));
        Registration {
            watchers: self,
            id,
            notify,
        }
    }

    /// Wakes the queries that watch something in `changes`.
    pub(crate) fn wake(&self, changes: &Changes) {
        if changes.keys.is_empty() && !changes.sessions {
            return;
        }
        let registry = self.registry();
        for (watch, notify) in registry.waiting.values() {
            if watch.affected_by(changes) {
                self.wakeups.fetch_add(1, Ordering::Relaxed);
                notify.notify_one();
            }
        }
    }

    /// How many queries are waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.registry().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(keys: &[&str], sessions: bool) -> Changes {
        Changes {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            sessions,
        }
    }

    #[test]
    fn wakes_only_what_changed() {
        let watchers = Watchers::default();
        let key = watchers.register(Watch::Key("a/b".into()));
        let prefix = watchers.register(Watch::Prefix("a/".into()));
        let sessions = watchers.register(Watch::Sessions);
        assert_eq!(watchers.waiting(), 3);
        watchers.wake(&changes(&["b", "a/bc"], false));
        assert_eq!(watchers.wakeups.load(Ordering::Relaxed), 1);
        watchers.wake(&changes(&["a/b"], true));
        assert_eq!(watchers.wakeups.load(Ordering::Relaxed), 4);
        drop((key, prefix, sessions));
        assert_eq!(watchers.waiting(), 0);
    }
}
