//! The dev server's store: sessions, KV entries, tombstones, lock-delays and TTL deadlines,
//! all stamped from one global Raft-like index.
//!
//! Every rule here is what Consul's state machine does (see `consul-api-notes.md` §1–§3), kept
//! free of HTTP and of the clock: each method that needs the time takes `now`, so unit tests
//! drive TTL expiry and lock-delay by passing instants instead of sleeping. The HTTP layer
//! owns wire formats and request validation that Consul does in its agent rather than in its
//! state store (body decoding, conflicting flags, size limits).
//!
//! Indexes follow Consul: a write that changes a table takes the next global index; the
//! `sessions` table and the `kvs`+`tombstones` tables each remember the last index that changed
//! them. A write that would change nothing (Consul's equality shortcut) takes no index, so
//! watchers are not woken for it.
//!
//! Test-only faults (a leaderless period, 429s, an index going backwards; see `faults`) sit in
//! the HTTP layer in front of this store; the store itself stays a faithful model.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::duration;

/// The one node check every node has, and the only one this single-node server knows.
pub(crate) const SERF_HEALTH: &str = "serfHealth";
/// Consul's `SessionTTLMultiplier`: a session dies this many TTLs after its last renewal.
pub(crate) const SESSION_TTL_MULTIPLIER: u32 = 2;
/// Consul's default `session_ttl_min`.
pub(crate) const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
/// Consul's `SessionTTLMax`.
pub(crate) const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Consul's `MaxLockDelay`: longer lock-delays are stored but capped when applied.
pub(crate) const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Consul's `tombstone_ttl_granularity`: tombstones deleted within this span are reaped together.
pub(crate) const TOMBSTONE_GRANULARITY: Duration = Duration::from_secs(30);
/// Consul's default session lock-delay.
pub(crate) const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// What happens to a dead session's locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Behavior {
    /// Clear the holder, keep the entry.
    #[serde(rename = "release")]
    Release,
    /// Delete the entry.
    #[serde(rename = "delete")]
    Delete,
}

/// A service check reference in a session, `{"ID": ..., "Namespace": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceCheck {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) namespace: String,
}

/// A session create request after the agent's defaults and body decoding.
#[derive(Clone, Debug)]
pub(crate) struct NewSession {
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) lock_delay_ns: i64,
    pub(crate) behavior: String,
    pub(crate) ttl: String,
    pub(crate) node_checks: Option<Vec<String>>,
    pub(crate) service_checks: Option<Vec<ServiceCheck>>,
    pub(crate) checks: Vec<String>,
}

impl NewSession {
    /// The agent's defaults for `node`: serfHealth, 15s lock-delay, release, no TTL.
    pub(crate) fn defaults(node: &str) -> Self {
        NewSession {
            name: String::new(),
            node: node.to_string(),
            lock_delay_ns: DEFAULT_LOCK_DELAY.as_nanos() as i64,
            behavior: String::new(),
            ttl: String::new(),
            node_checks: Some(vec![SERF_HEALTH.to_string()]),
            service_checks: None,
            checks: vec![SERF_HEALTH.to_string()],
        }
    }
}

/// A live session, serialized exactly as Consul's `/v1/session/info` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Session {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) node: String,
    /// Integer nanoseconds on the wire.
    pub(crate) lock_delay: i64,
    pub(crate) behavior: Behavior,
    /// The TTL string as the client sent it.
    #[serde(rename = "TTL")]
    pub(crate) ttl: String,
    pub(crate) node_checks: Option<Vec<String>>,
    pub(crate) service_checks: Option<Vec<ServiceCheck>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) checks: Vec<String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    /// 2×TTL, or None when the session has no TTL.
    #[serde(skip)]
    timer: Option<Duration>,
    #[serde(skip)]
    expires_at: Option<Instant>,
}

/// A KV entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) flags: u64,
    /// Empty when unlocked.
    pub(crate) session: String,
    pub(crate) lock_index: u64,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// The whole in-memory state.
#[derive(Debug)]
pub(crate) struct Store {
    node: String,
    index: u64,
    sessions: BTreeMap<String, Session>,
    sessions_index: u64,
    kv: BTreeMap<String, Entry>,
    /// Index of the `kvs` and `tombstones` tables together.
    kv_index: u64,
    /// Deleted keys and the index that deleted them, so prefix indexes never slide back.
    tombstones: BTreeMap<String, u64>,
    /// Key → instant before which `?acquire` is refused.
    lock_delays: HashMap<String, Instant>,
    /// How long a tombstone lives before it may be reaped (Consul's `tombstone_ttl`).
    tombstone_ttl: Duration,
    /// Consul's tombstone GC hints: when to reap, and every tombstone up to which index.
    reap_plan: VecDeque<(Instant, u64)>,
    /// The highest index of a tombstone not yet in `reap_plan`.
    unplanned_tombstone: u64,
    /// The transaction being applied, if any: its one index and what to restore on failure.
    txn: Option<Undo>,
    /// Keys written or deleted (tombstones included) since the last [`Store::take_changes`].
    changed_keys: Vec<String>,
    /// Whether the sessions table changed since the last [`Store::take_changes`].
    sessions_changed: bool,
}

/// What a transaction changed, so that a failed one leaves no trace.
#[derive(Debug, Default)]
struct Undo {
    /// The index every write of the transaction takes, handed out at its first change.
    index: Option<u64>,
    index_before: u64,
    kv_index_before: u64,
    changed_keys_before: usize,
    unplanned_tombstone_before: u64,
    /// Each touched key's entry and tombstone before its first change.
    kv: HashMap<String, (Option<Entry>, Option<u64>)>,
}

/// What changed in one write, for waking the blocking queries that watch it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) keys: Vec<String>,
    pub(crate) sessions: bool,
}

/// One KV operation of a transaction, as Consul's `api.KVTxnOp` carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TxnKvOp {
    pub(crate) verb: String,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) flags: u64,
    pub(crate) index: u64,
    pub(crate) session: String,
}

/// Consul's `isWrite` (`agent/txn_endpoint.go`): the verbs that make a transaction go through
/// Raft. Every other verb, unknown ones included, may run in a read-only transaction.
pub(crate) fn txn_verb_writes(verb: &str) -> bool {
    matches!(
        verb,
        "set" | "delete" | "delete-cas" | "delete-tree" | "cas" | "lock" | "unlock"
    )
}

/// A failed operation of a transaction: its position and Consul's text.
pub(crate) type TxnError = (usize, String);

/// Validates a session id the way Consul's UUID index does before any lookup.
fn check_uuid(id: &str) -> Result<(), String> {
    if id.len() != 36 {
        return Err("UUID must be 36 characters".to_string());
    }
    let hyphens = id.matches('-').count();
    if hyphens > 4 {
        return Err(format!(
            "UUID should have maximum of 4 \"-\"; got {hyphens}"
        ));
    }
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if !hex.len().is_multiple_of(2) {
        return Err("Input (without hyphens) must be even length".to_string());
    }
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("encoding/hex: invalid byte: {bad:?}"));
    }
    Ok(())
}

impl Store {
    /// An empty store for the single node `node`. The global index starts at 1, standing for
    /// the node's own registration, so no write is ever stamped 0 or 1.
    pub(crate) fn new(node: &str, tombstone_ttl: Duration) -> Self {
        Store {
            node: node.to_string(),
            index: 1,
            sessions: BTreeMap::new(),
            sessions_index: 0,
            kv: BTreeMap::new(),
            kv_index: 0,
            tombstones: BTreeMap::new(),
            lock_delays: HashMap::new(),
            tombstone_ttl,
            reap_plan: VecDeque::new(),
            unplanned_tombstone: 0,
            txn: None,
            changed_keys: Vec::new(),
            sessions_changed: false,
        }
    }

    /// The last global index handed out.
    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    /// Number of live sessions.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of live keys.
    pub(crate) fn key_count(&self) -> usize {
        self.kv.len()
    }

    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// The index a KV write takes: the next one, or the transaction's single index.
    fn stamp(&mut self) -> u64 {
        match self.txn.as_ref().map(|t| t.index) {
            Some(Some(index)) => index,
            Some(None) => {
                let index = self.next_index();
                if let Some(txn) = &mut self.txn {
                    txn.index = Some(index);
                }
                index
            }
            None => self.next_index(),
        }
    }

    /// Remembers `key`'s entry and tombstone before a transaction first changes it.
    fn save(&mut self, key: &str) {
        let Some(txn) = &self.txn else { return };
        if txn.kv.contains_key(key) {
            return;
        }
        let before = (self.kv.get(key).cloned(), self.tombstones.get(key).copied());
        if let Some(txn) = &mut self.txn {
            txn.kv.insert(key.to_string(), before);
        }
    }

    /// Stores an entry (the one place entries are written).
    fn put_entry(&mut self, entry: Entry) {
        self.save(&entry.key);
        self.kv_index = entry.modify_index;
        self.changed_keys.push(entry.key.clone());
        self.kv.insert(entry.key.clone(), entry);
    }

    /// Deletes an entry and leaves a tombstone at `index` (the one place entries are deleted).
    fn remove_entry(&mut self, key: &str, index: u64) {
        self.save(key);
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), index);
            self.kv_index = index;
            self.unplanned_tombstone = index;
            self.changed_keys.push(key.to_string());
        }
    }

    /// Plans the reaping of the tombstones written since the last call, `tombstone_ttl` from
    /// `now`, grouped in spans of [`TOMBSTONE_GRANULARITY`] as Consul's `TombstoneGC.Hint` does
    /// (`agent/consul/state/tombstone_gc.go`). Called after every write.
    pub(crate) fn plan_reaping(&mut self, now: Instant) {
        if self.unplanned_tombstone == 0 {
            return;
        }
        let index = std::mem::take(&mut self.unplanned_tombstone);
        let expires = now + self.tombstone_ttl;
        match self.reap_plan.back_mut() {
            Some((at, max)) if *at >= expires => *max = (*max).max(index),
            _ => self
                .reap_plan
                .push_back((expires + TOMBSTONE_GRANULARITY, index)),
        }
    }

    /// Reaps the tombstones whose time has come (Consul's leader issues `ReapTombstones` with
    /// the highest index of the expired span). The reap is itself a write: it takes an index,
    /// which becomes the KV table's, so a read of a prefix that held only reaped tombstones
    /// answers a higher index than before, never a lower one (`kvsListTxn` falls back to the
    /// table index). Returns how many were reaped.
    pub(crate) fn reap_tombstones(&mut self, now: Instant) -> usize {
        let mut up_to = 0;
        while let Some(&(at, max)) = self.reap_plan.front() {
            if at > now {
                break;
            }
            up_to = up_to.max(max);
            self.reap_plan.pop_front();
        }
        if up_to == 0 {
            return 0;
        }
        let reaped: Vec<String> = self
            .tombstones
            .iter()
            .filter(|(_, index)| **index <= up_to)
            .map(|(key, _)| key.clone())
            .collect();
        if reaped.is_empty() {
            return 0;
        }
        for key in &reaped {
            self.tombstones.remove(key);
        }
        self.kv_index = self.next_index();
        let count = reaped.len();
        self.changed_keys.extend(reaped);
        count
    }

    /// Number of tombstones kept.
    pub(crate) fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// The next instant the timer task has work: a session's 2×TTL or a tombstone reap.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let reap = self.reap_plan.front().map(|(at, _)| *at);
        match (self.next_expiry(), reap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What changed since the last call, for waking blocking queries.
    pub(crate) fn take_changes(&mut self) -> Changes {
        Changes {
            keys: std::mem::take(&mut self.changed_keys),
            sessions: std::mem::take(&mut self.sessions_changed),
        }
    }

    // ---- sessions -------------------------------------------------------------------------

    /// Creates a session, applying Consul's server-side validation in its order: Behavior, TTL,
    /// node, checks. Errors are the texts Consul answers with HTTP 500.
    pub(crate) fn create_session(
        &mut self,
        request: NewSession,
        now: Instant,
    ) -> Result<Session, String> {
        let behavior = match request.behavior.as_str() {
            "" | "release" => Behavior::Release,
            "delete" => Behavior::Delete,
            other => return Err(format!("Invalid Behavior setting '{other}'")),
        };
        let mut timer = None;
        if !request.ttl.is_empty() {
            let ttl = duration::parse(&request.ttl)
                .map_err(|e| format!("Session TTL '{}' invalid: {e}", request.ttl))?;
            let min = SESSION_TTL_MIN.as_nanos() as i64;
            let max = SESSION_TTL_MAX.as_nanos() as i64;
            if ttl != 0 && !(min..=max).contains(&ttl) {
                return Err(format!(
                    "Invalid Session TTL '{ttl}', must be between [{}={}]",
                    duration::format(min),
                    duration::format(max)
                ));
            }
            if ttl > 0 {
                timer = Some(Duration::from_nanos(ttl as u64) * SESSION_TTL_MULTIPLIER);
            }
        }
        if request.node != self.node {
            return Err("Missing node registration".to_string());
        }
        let node_checks = request.node_checks.iter().flatten();
        for check in request.checks.iter().chain(node_checks) {
            if check != SERF_HEALTH {
                return Err(format!("Missing check '{check}' registration"));
            }
        }
        if let Some(check) = request.service_checks.iter().flatten().next() {
            return Err(format!("Missing check '{}' registration", check.id));
        }
        let mut id = uuid::Uuid::new_v4().to_string();
        while self.sessions.contains_key(&id) {
            id = uuid::Uuid::new_v4().to_string();
        }
        let index = self.next_index();
        let session = Session {
            id: id.clone(),
            name: request.name,
            node: request.node,
            lock_delay: request.lock_delay_ns,
            behavior,
            ttl: request.ttl,
            node_checks: request.node_checks,
            service_checks: request.service_checks,
            checks: request.checks,
            create_index: index,
            modify_index: index,
            timer,
            expires_at: timer.map(|t| now + t),
        };
        self.sessions.insert(id, session.clone());
        self.sessions_index = index;
        self.sessions_changed = true;
        Ok(session)
    }

    /// Restarts a session's TTL timer. `Ok(None)` when it does not exist. Renewal is not a
    /// Raft write in Consul, so no index moves.
    pub(crate) fn renew_session(
        &mut self,
        id: &str,
        now: Instant,
    ) -> Result<Option<Session>, String> {
        check_uuid(id)?;
        let Some(session) = self.sessions.get_mut(id) else {
            return Ok(None);
        };
        if let Some(timer) = session.timer {
            session.expires_at = Some(now + timer);
        }
        Ok(Some(session.clone()))
    }

    /// Destroys a session if it exists (invalidating its locks); absent sessions are fine.
    pub(crate) fn destroy_session(&mut self, id: &str, now: Instant) -> Result<(), String> {
        check_uuid(id)?;
        if self.sessions.contains_key(id) {
            self.invalidate(id, now);
        }
        Ok(())
    }

    /// Removes a session and applies its Behavior and lock-delay to every key it holds.
    fn invalidate(&mut self, id: &str, now: Instant) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        let index = self.next_index();
        self.sessions_index = index;
        self.sessions_changed = true;
        let held: Vec<String> = self
            .kv
            .values()
            .filter(|e| e.session == id)
            .map(|e| e.key.clone())
            .collect();
        for key in held {
            match session.behavior {
                Behavior::Release => {
                    if let Some(mut entry) = self.kv.get(&key).cloned() {
                        entry.session.clear();
                        entry.modify_index = index;
                        self.put_entry(entry);
                    }
                }
                Behavior::Delete => self.remove_entry(&key, index),
            }
            if session.lock_delay > 0 {
                let delay = Duration::from_nanos(session.lock_delay as u64).min(MAX_LOCK_DELAY);
                self.lock_delays.insert(key, now + delay);
            }
        }
    }

    /// Invalidates every session whose 2×TTL timer has run out by `now`; returns their ids.
    pub(crate) fn expire_sessions(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.expires_at.is_some_and(|at| at <= now))
            .map(|s| s.id.clone())
            .collect();
        for id in &expired {
            self.invalidate(id, now);
        }
        // Lock-delays that have run out are no longer needed.
        self.lock_delays.retain(|_, until| *until > now);
        expired
    }

    /// The earliest TTL deadline, for the timer task.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.sessions.values().filter_map(|s| s.expires_at).min()
    }

    /// One session and the sessions table index.
    pub(crate) fn session(&self, id: &str) -> Result<(u64, Option<Session>), String> {
        check_uuid(id)?;
        Ok((self.sessions_index, self.sessions.get(id).cloned()))
    }

    /// All sessions (ordered by id) and the sessions table index.
    pub(crate) fn sessions(&self) -> (u64, Vec<Session>) {
        (
            self.sessions_index,
            self.sessions.values().cloned().collect(),
        )
    }

    /// The sessions of one node and the sessions table index.
    pub(crate) fn node_sessions(&self, node: &str) -> (u64, Vec<Session>) {
        let list = self
            .sessions
            .values()
            .filter(|s| s.node == node)
            .cloned()
            .collect();
        (self.sessions_index, list)
    }

    // ---- KV reads -------------------------------------------------------------------------

    /// One entry; the index is the KV table's (tombstones included), as Consul reports for a
    /// missing key. Callers use the entry's own ModifyIndex when it exists.
    pub(crate) fn kv_get(&self, key: &str) -> (u64, Option<Entry>) {
        (self.kv_index, self.kv.get(key).cloned())
    }

    /// The highest index under `prefix` (entries and tombstones), or the table index when the
    /// prefix is empty or nothing under it ever existed.
    fn prefix_index(&self, prefix: &str, entries_max: u64) -> u64 {
        let mut index = entries_max;
        if prefix.is_empty() {
            index = self.kv_index;
        } else {
            let graves = self.tombstones.range(prefix.to_string()..);
            let graves = graves
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, i)| *i);
            index = index.max(graves.max().unwrap_or(0));
        }
        if index == 0 { self.kv_index } else { index }
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
    }

    /// Every entry under `prefix`, ordered by key, with the prefix index.
    pub(crate) fn kv_list(&self, prefix: &str) -> (u64, Vec<Entry>) {
        let entries: Vec<Entry> = self.under(prefix).cloned().collect();
        let max = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
        (self.prefix_index(prefix, max), entries)
    }

    /// The keys under `prefix`, each cut after the first `separator` past the prefix and
    /// de-duplicated, with the prefix index.
    pub(crate) fn kv_keys(&self, prefix: &str, separator: &str) -> (u64, Vec<String>) {
        let mut keys: Vec<String> = Vec::new();
        let mut max = 0;
        for entry in self.under(prefix) {
            max = max.max(entry.modify_index);
            let rest = &entry.key[prefix.len()..];
            let key = match rest.find(separator) {
                Some(at) if !separator.is_empty() => {
                    &entry.key[..prefix.len() + at + separator.len()]
                }
                _ => entry.key.as_str(),
            };
            if keys.last().map(String::as_str) != Some(key) {
                keys.push(key.to_string());
            }
        }
        (self.prefix_index(prefix, max), keys)
    }

    // ---- KV writes ------------------------------------------------------------------------

    /// Consul's `kvsSetTxn`: store the entry unless it equals the existing one, in which case
    /// nothing is written and no index moves.
    fn write_entry(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        lock_index: u64,
        session: String,
    ) {
        if let Some(existing) = self.kv.get(key)
            && existing.value == value
            && existing.flags == flags
            && existing.lock_index == lock_index
            && existing.session == session
        {
            return;
        }
        let index = self.stamp();
        let create_index = self.kv.get(key).map_or(index, |e| e.create_index);
        self.put_entry(Entry {
            key: key.to_string(),
            value,
            flags,
            session,
            lock_index,
            create_index,
            modify_index: index,
        });
    }

    /// A plain PUT. It keeps the holder's session (locks are advisory) but, as in Consul, the
    /// request carries LockIndex 0, so the stored LockIndex becomes 0.
    pub(crate) fn kv_set(&mut self, key: &str, value: Vec<u8>, flags: u64) {
        let session = self
            .kv
            .get(key)
            .map(|e| e.session.clone())
            .unwrap_or_default();
        self.write_entry(key, value, flags, 0, session);
    }

    /// `?cas=N`: 0 creates only if absent; N > 0 writes only if ModifyIndex == N.
    pub(crate) fn kv_cas(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: u64) -> bool {
        let current = self.kv.get(key).map(|e| e.modify_index);
        let allowed = match (cas, current) {
            (0, None) => true,
            (0, Some(_)) | (_, None) => false,
            (n, Some(index)) => n == index,
        };
        if allowed {
            self.kv_set(key, value, flags);
        }
        allowed
    }

    /// Whether a lock-delay still blocks `?acquire` on `key` at `now`.
    pub(crate) fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delays.get(key).is_some_and(|until| now < *until)
    }

    /// `?acquire=<session>`, checked in Consul's order: lock-delay (`false`), session missing
    /// or unknown (error), held by another (`false`), held by us (`true`, LockIndex kept),
    /// unheld (`true`, LockIndex + 1), absent (`true`, LockIndex 1).
    pub(crate) fn kv_acquire(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        now: Instant,
    ) -> Result<bool, String> {
        if self.lock_delayed(key, now) {
            return Ok(false);
        }
        self.lock_entry(key, value, flags, session)
    }

    /// Consul's `kvsLockTxn`: the session checks and the holder rules of an acquire, after the
    /// lock-delay check that Consul makes before Raft.
    fn lock_entry(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<bool, String> {
        if session.is_empty() {
            return Err("missing session".to_string());
        }
        check_uuid(session).map_err(|e| format!("failed session lookup: {e}"))?;
        if !self.sessions.contains_key(session) {
            return Err(format!("invalid session {session:?}"));
        }
        let lock_index = match self.kv.get(key) {
            Some(e) if e.session == session => e.lock_index,
            Some(e) if !e.session.is_empty() => return Ok(false),
            Some(e) => e.lock_index + 1,
            None => 1,
        };
        self.write_entry(key, value, flags, lock_index, session.to_string());
        Ok(true)
    }

    /// `?release=<session>`: `true` only when that session holds the key; the value and flags
    /// of the request replace the stored ones. Never sets a lock-delay.
    pub(crate) fn kv_release(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<bool, String> {
        if session.is_empty() {
            return Err("missing session".to_string());
        }
        let lock_index = match self.kv.get(key) {
            Some(e) if e.session == session => e.lock_index,
            _ => return Ok(false),
        };
        self.write_entry(key, value, flags, lock_index, String::new());
        Ok(true)
    }

    /// Deletes one key (no-op when absent), leaving a tombstone.
    pub(crate) fn kv_delete(&mut self, key: &str) {
        if self.kv.contains_key(key) {
            let index = self.stamp();
            self.remove_entry(key, index);
        }
    }

    /// `DELETE ?cas=N`: deletes only when ModifyIndex == N; an absent key answers `true`.
    pub(crate) fn kv_delete_cas(&mut self, key: &str, cas: u64) -> bool {
        match self.kv.get(key) {
            None => true,
            Some(e) if e.modify_index == cas => {
                self.kv_delete(key);
                true
            }
            Some(_) => false,
        }
    }

    /// `DELETE ?recurse`: deletes every key under `prefix` at one index.
    pub(crate) fn kv_delete_tree(&mut self, prefix: &str) {
        let keys: Vec<String> = self.under(prefix).map(|e| e.key.clone()).collect();
        if keys.is_empty() {
            return;
        }
        let index = self.stamp();
        for key in keys {
            self.remove_entry(&key, index);
        }
    }

    // ---- transactions (`PUT /v1/txn`) --------------------------------------------------------

    /// Consul's `preCheck` for KV ops (`agent/consul/txn_endpoint.go`, `kvsPreApply`), run on
    /// every op before anything applies: a key is required (except by `delete-tree`), the ACL
    /// (`acl` answers an op's refusal, if any; reads are filtered later instead), then lock-delay
    /// for `lock`. At most one error per op.
    pub(crate) fn txn_precheck(
        &self,
        ops: &[TxnKvOp],
        now: Instant,
        acl: &dyn Fn(&TxnKvOp) -> Option<String>,
    ) -> Vec<TxnError> {
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if op.key.is_empty() && op.verb != "delete-tree" {
                errors.push((i, "Must provide key".to_string()));
            } else if let Some(denied) = acl(op) {
                errors.push((i, denied));
            } else if op.verb == "lock" && self.lock_delayed(&op.key, now) {
                errors.push((
                    i,
                    format!("failed to lock key {:?} due to lock delay", op.key),
                ));
            }
        }
        errors
    }

    /// A read-only transaction (Consul's `TxnRO`): every op runs, and any error fails the whole.
    /// Only for transactions without a write verb (see [`txn_verb_writes`]).
    pub(crate) fn txn_read(&self, ops: &[TxnKvOp]) -> Result<Vec<Vec<Entry>>, Vec<TxnError>> {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match self.txn_read_op(op) {
                Ok(entries) => results.push(entries),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(results)
        } else {
            Err(errors)
        }
    }

    /// A transaction with writes (Consul's `TxnRW`, one Raft entry): the ops apply in order, each
    /// seeing the ones before it; every entry written takes the same index; if any op fails,
    /// every error is reported and nothing is kept (no index moves). Results come per op.
    pub(crate) fn txn_write(&mut self, ops: &[TxnKvOp]) -> Result<Vec<Vec<Entry>>, Vec<TxnError>> {
        self.txn = Some(Undo {
            index: None,
            index_before: self.index,
            kv_index_before: self.kv_index,
            changed_keys_before: self.changed_keys.len(),
            unplanned_tombstone_before: self.unplanned_tombstone,
            kv: HashMap::new(),
        });
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let outcome = if txn_verb_writes(&op.verb) {
                self.txn_write_op(op)
            } else {
                self.txn_read_op(op)
            };
            match outcome {
                Ok(entries) => results.push(entries),
                Err(e) => errors.push((i, e)),
            }
        }
        let Some(undo) = self.txn.take() else {
            return Err(errors);
        };
        if errors.is_empty() {
            return Ok(results);
        }
        for (key, (entry, tombstone)) in undo.kv {
            match entry {
                Some(entry) => self.kv.insert(key.clone(), entry),
                None => self.kv.remove(&key),
            };
            match tombstone {
                Some(index) => self.tombstones.insert(key, index),
                None => self.tombstones.remove(&key),
            };
        }
        self.index = undo.index_before;
        self.kv_index = undo.kv_index_before;
        self.changed_keys.truncate(undo.changed_keys_before);
        self.unplanned_tombstone = undo.unplanned_tombstone_before;
        Err(errors)
    }

    /// One read verb (`agent/consul/state/txn.go`, `txnKVS`). Results carry values.
    fn txn_read_op(&self, op: &TxnKvOp) -> Result<Vec<Entry>, String> {
        let key = op.key.as_str();
        let current = self.kv.get(key);
        match op.verb.as_str() {
            "get" => current
                .cloned()
                .map(|e| vec![e])
                .ok_or_else(|| format!("key {key:?} doesn't exist")),
            // A missing key answers the op itself, without a value.
            "get-or-empty" => Ok(vec![current.cloned().unwrap_or_else(|| Entry {
                key: op.key.clone(),
                value: Vec::new(),
                flags: op.flags,
                session: op.session.clone(),
                lock_index: 0,
                create_index: 0,
                modify_index: op.index,
            })]),
            "get-tree" => Ok(self.under(key).cloned().collect()),
            "check-session" => match current {
                None => Err(format!(
                    "failed to check session, key {key:?} doesn't exist"
                )),
                Some(e) if e.session != op.session => Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {:?}",
                    e.session, op.session
                )),
                Some(e) => Ok(vec![without_value(e)]),
            },
            "check-index" => match current {
                None => Err(format!("failed to check index, key {key:?} doesn't exist")),
                Some(e) if e.modify_index != op.index => Err(format!(
                    "failed index check for key {key:?}, current modify index {} != {}",
                    e.modify_index, op.index
                )),
                Some(e) => Ok(vec![without_value(e)]),
            },
            "check-not-exists" => match current {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(Vec::new()),
            },
            other => Err(format!("unknown KV verb {other:?}")),
        }
    }

    /// One write verb. Results are the written entry without its value; deletes give none.
    fn txn_write_op(&mut self, op: &TxnKvOp) -> Result<Vec<Entry>, String> {
        let key = op.key.as_str();
        let written = |store: &Self| store.kv.get(key).map(without_value).into_iter().collect();
        match op.verb.as_str() {
            "set" => {
                self.kv_set(key, op.value.clone(), op.flags);
                Ok(written(self))
            }
            "cas" => {
                if !self.kv_cas(key, op.value.clone(), op.flags, op.index) {
                    return Err(format!("failed to set key {key:?}, index is stale"));
                }
                Ok(written(self))
            }
            "lock" => {
                if !self.lock_entry(key, op.value.clone(), op.flags, &op.session)? {
                    return Err(format!("failed to lock key {key:?}, lock is already held"));
                }
                Ok(written(self))
            }
            "unlock" => {
                if !self.kv_release(key, op.value.clone(), op.flags, &op.session)? {
                    return Err(format!(
                        "failed to unlock key {key:?}, lock isn't held, or is held by another \
                         session"
                    ));
                }
                Ok(written(self))
            }
            "delete" => {
                self.kv_delete(key);
                Ok(Vec::new())
            }
            "delete-cas" => {
                if !self.kv_delete_cas(key, op.index) {
                    return Err(format!("failed to delete key {key:?}, index is stale"));
                }
                Ok(Vec::new())
            }
            "delete-tree" => {
                self.kv_delete_tree(key);
                Ok(Vec::new())
            }
            _ => self.txn_read_op(op),
        }
    }
}

/// A copy of an entry without its value, as transaction results of writes and checks carry.
fn without_value(entry: &Entry) -> Entry {
    Entry {
        value: Vec::new(),
        ..entry.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node1";

    fn store() -> Store {
        Store::new(NODE, Duration::from_secs(900))
    }

    #[test]
    fn tombstones_are_reaped_after_their_ttl_and_indexes_never_slide_back() {
        let mut s = store();
        let now = Instant::now();
        s.kv_set("p/a", vec![], 0);
        s.kv_set("p/b", vec![], 0);
        s.kv_set("q", vec![], 0);
        s.kv_delete("p/a");
        s.kv_delete("q");
        s.plan_reaping(now);
        let later = now + Duration::from_secs(10);
        s.kv_delete("p/b");
        s.plan_reaping(later);
        // All three fall in one span of the granularity.
        assert_eq!(s.reap_plan.len(), 1);
        let (before_prefix, _) = s.kv_list("p/");
        let (before_q, _) = s.kv_get("q");
        assert_eq!(s.reap_tombstones(now + Duration::from_secs(899)), 0);
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(930)));
        assert_eq!(s.reap_tombstones(now + Duration::from_secs(930)), 3);
        assert_eq!(s.tombstone_count(), 0);
        // An emptied prefix and a missing key answer the table index, which the reap moved on.
        assert!(s.kv_list("p/").0 > before_prefix);
        assert!(s.kv_get("q").0 > before_q);
        assert_eq!(s.take_changes().keys.len(), 3 + 3 + 3);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn failed_txn_plans_no_reaping() {
        let mut s = store();
        s.kv_set("k", vec![], 0);
        let ops = [op("delete", "k"), op("get", "missing")];
        assert!(s.txn_write(&ops).is_err());
        s.plan_reaping(Instant::now());
        assert!(s.reap_plan.is_empty());
    }

    fn session_with(store: &mut Store, now: Instant, edit: impl FnOnce(&mut NewSession)) -> String {
        let mut request = NewSession::defaults(NODE);
        edit(&mut request);
        store.create_session(request, now).unwrap().id
    }

    fn session(store: &mut Store, now: Instant) -> String {
        session_with(store, now, |_| {})
    }

    #[test]
    fn create_validates_behavior_then_ttl() {
        let mut s = store();
        let now = Instant::now();
        let mut r = NewSession::defaults(NODE);
        r.behavior = "explode".into();
        r.ttl = "1s".into();
        assert_eq!(
            s.create_session(r, now).unwrap_err(),
            "Invalid Behavior setting 'explode'"
        );
        let mut r = NewSession::defaults(NODE);
        r.ttl = "30".into();
        assert_eq!(
            s.create_session(r, now).unwrap_err(),
            r#"Session TTL '30' invalid: time: missing unit in duration "30""#
        );
        let mut r = NewSession::defaults(NODE);
        r.ttl = "3s".into();
        assert_eq!(
            s.create_session(r, now).unwrap_err(),
            "Invalid Session TTL '3000000000', must be between [10s=24h0m0s]"
        );
        let mut r = NewSession::defaults(NODE);
        r.ttl = "25h".into();
        assert!(
            s.create_session(r, now)
                .unwrap_err()
                .starts_with("Invalid Session TTL '90000")
        );
        let mut r = NewSession::defaults(NODE);
        r.ttl = "0s".into();
        let created = s.create_session(r, now).unwrap();
        assert_eq!(created.ttl, "0s");
        assert_eq!(s.next_expiry(), None);
    }

    #[test]
    fn create_checks_node_and_checks() {
        let mut s = store();
        let now = Instant::now();
        let mut r = NewSession::defaults(NODE);
        r.node = "other".into();
        assert_eq!(
            s.create_session(r, now).unwrap_err(),
            "Missing node registration"
        );
        let mut r = NewSession::defaults(NODE);
        r.node_checks = Some(vec!["serfHealth".into(), "web".into()]);
        assert_eq!(
            s.create_session(r, now).unwrap_err(),
            "Missing check 'web' registration"
        );
        let mut r = NewSession::defaults(NODE);
        r.service_checks = Some(vec![ServiceCheck {
            id: "svc".into(),
            namespace: String::new(),
        }]);
        assert_eq!(
            s.create_session(r, now).unwrap_err(),
            "Missing check 'svc' registration"
        );
        assert_eq!(s.session_count(), 0);
    }

    #[test]
    fn one_global_index_across_tables() {
        let mut s = store();
        let now = Instant::now();
        let id = session(&mut s, now);
        let (sidx, sess) = s.session(&id).unwrap();
        let sess = sess.unwrap();
        assert_eq!(sess.create_index, sidx);
        s.kv_set("a", b"1".to_vec(), 0);
        let (_, a) = s.kv_get("a");
        assert_eq!(a.unwrap().modify_index, sidx + 1);
        assert_eq!(s.index(), sidx + 1);
    }

    #[test]
    fn acquire_order_of_checks() {
        let mut s = store();
        let now = Instant::now();
        // Unknown and empty sessions are errors.
        assert_eq!(
            s.kv_acquire("k", vec![], 0, "", now).unwrap_err(),
            "missing session"
        );
        let ghost = "00000000-0000-0000-0000-000000000000";
        assert_eq!(
            s.kv_acquire("k", vec![], 0, ghost, now).unwrap_err(),
            format!("invalid session \"{ghost}\"")
        );
        let a = session(&mut s, now);
        let b = session(&mut s, now);
        // Absent key: created with LockIndex 1.
        assert!(s.kv_acquire("k", b"v".to_vec(), 7, &a, now).unwrap());
        let e = s.kv_get("k").1.unwrap();
        assert_eq!(
            (e.lock_index, e.session.as_str(), e.flags),
            (1, a.as_str(), 7)
        );
        // Held by another session: false.
        assert!(!s.kv_acquire("k", b"w".to_vec(), 0, &b, now).unwrap());
        // Held by us with identical value/flags: true, nothing moves.
        let before = s.index();
        assert!(s.kv_acquire("k", b"v".to_vec(), 7, &a, now).unwrap());
        assert_eq!(s.index(), before);
        assert_eq!(s.kv_get("k").1.unwrap().modify_index, e.modify_index);
        // Held by us with a new value: LockIndex kept, value and flags replaced.
        assert!(s.kv_acquire("k", b"x".to_vec(), 0, &a, now).unwrap());
        let e2 = s.kv_get("k").1.unwrap();
        assert_eq!(
            (e2.lock_index, e2.value.as_slice(), e2.flags),
            (1, &b"x"[..], 0)
        );
        assert!(e2.modify_index > e.modify_index);
        // Released, then acquired by b: LockIndex + 1.
        assert!(s.kv_release("k", b"x".to_vec(), 0, &a).unwrap());
        assert!(s.kv_acquire("k", b"y".to_vec(), 0, &b, now).unwrap());
        assert_eq!(s.kv_get("k").1.unwrap().lock_index, 2);
    }

    #[test]
    fn lock_delay_comes_before_session_checks() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        assert!(s.kv_acquire("k", vec![], 0, &a, now).unwrap());
        s.destroy_session(&a, now).unwrap();
        // Even an empty session gets `false` while the delay runs.
        assert_eq!(s.kv_acquire("k", vec![], 0, "", now), Ok(false));
        let b = session(&mut s, now);
        assert_eq!(
            s.kv_acquire("k", vec![], 0, &b, now + Duration::from_secs(14)),
            Ok(false)
        );
        assert_eq!(
            s.kv_acquire("k", vec![], 0, &b, now + Duration::from_secs(15)),
            Ok(true)
        );
    }

    #[test]
    fn lock_delay_is_capped_at_60s_and_skipped_when_not_positive() {
        let mut s = store();
        let now = Instant::now();
        let a = session_with(&mut s, now, |r| r.lock_delay_ns = 3_600 * 1_000_000_000);
        assert!(s.kv_acquire("k", vec![], 0, &a, now).unwrap());
        s.destroy_session(&a, now).unwrap();
        assert!(s.lock_delayed("k", now + Duration::from_secs(59)));
        assert!(!s.lock_delayed("k", now + MAX_LOCK_DELAY));
        let b = session_with(&mut s, now, |r| r.lock_delay_ns = 0);
        assert!(s.kv_acquire("z", vec![], 0, &b, now).unwrap());
        s.destroy_session(&b, now).unwrap();
        assert!(!s.lock_delayed("z", now));
    }

    #[test]
    fn explicit_release_sets_no_lock_delay_and_replaces_value() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        assert!(s.kv_acquire("k", b"held".to_vec(), 5, &a, now).unwrap());
        assert_eq!(
            s.kv_release("k", vec![], 0, ""),
            Err("missing session".to_string())
        );
        assert_eq!(s.kv_release("missing", vec![], 0, &a), Ok(false));
        assert!(s.kv_release("k", vec![], 0, &a).unwrap());
        let e = s.kv_get("k").1.unwrap();
        assert_eq!(
            (e.session.as_str(), e.value.len(), e.flags, e.lock_index),
            ("", 0, 0, 1)
        );
        assert!(!s.lock_delayed("k", now));
        assert_eq!(s.kv_release("k", vec![], 0, &a), Ok(false));
    }

    #[test]
    fn cas_rules() {
        let mut s = store();
        assert!(!s.kv_cas("k", b"a".to_vec(), 0, 5));
        assert!(s.kv_cas("k", b"a".to_vec(), 0, 0));
        assert!(!s.kv_cas("k", b"b".to_vec(), 0, 0));
        let index = s.kv_get("k").1.unwrap().modify_index;
        assert!(!s.kv_cas("k", b"b".to_vec(), 0, index + 1));
        assert!(s.kv_cas("k", b"b".to_vec(), 0, index));
        assert_eq!(s.kv_get("k").1.unwrap().value, b"b");
    }

    #[test]
    fn plain_put_keeps_holder_and_resets_lock_index() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        assert!(s.kv_acquire("k", b"v".to_vec(), 0, &a, now).unwrap());
        s.kv_set("k", b"w".to_vec(), 3);
        let e = s.kv_get("k").1.unwrap();
        assert_eq!(
            (e.session.as_str(), e.lock_index, e.flags),
            (a.as_str(), 0, 3)
        );
        // Equality shortcut for plain writes too.
        let before = s.index();
        s.kv_set("k", b"w".to_vec(), 3);
        assert_eq!(s.index(), before);
    }

    #[test]
    fn delete_cas_and_tree() {
        let mut s = store();
        assert!(s.kv_delete_cas("absent", 42));
        s.kv_set("p/a", vec![], 0);
        s.kv_set("p/b", vec![], 0);
        s.kv_set("q", vec![], 0);
        let index = s.kv_get("p/a").1.unwrap().modify_index;
        assert!(!s.kv_delete_cas("p/a", 0));
        assert!(!s.kv_delete_cas("p/a", index + 1));
        assert!(s.kv_delete_cas("p/a", index));
        assert!(s.kv_get("p/a").1.is_none());
        s.kv_delete_tree("p/");
        assert_eq!(s.key_count(), 1);
        s.kv_delete_tree("");
        assert_eq!(s.key_count(), 0);
    }

    #[test]
    fn missing_key_and_prefix_indexes_count_tombstones() {
        let mut s = store();
        assert_eq!(s.kv_get("x").0, 0);
        s.kv_set("p/a", vec![], 0);
        s.kv_set("other", vec![], 0);
        let other = s.index();
        assert_eq!(s.kv_get("missing").0, other);
        let (idx, _) = s.kv_list("p/");
        assert_eq!(idx, other - 1);
        s.kv_delete("p/a");
        let deleted = s.index();
        let (idx, entries) = s.kv_list("p/");
        assert!(entries.is_empty());
        assert_eq!(idx, deleted);
        // A prefix that never had anything reports the table index.
        assert_eq!(s.kv_list("nothing/").0, deleted);
        assert_eq!(s.kv_list("").0, deleted);
    }

    #[test]
    fn keys_with_separator() {
        let mut s = store();
        for k in ["a/b/c", "a/b/d", "a/e", "a/f/", "b"] {
            s.kv_set(k, vec![], 0);
        }
        assert_eq!(s.kv_keys("a/", "/").1, vec!["a/b/", "a/e", "a/f/"]);
        assert_eq!(s.kv_keys("", "/").1, vec!["a/", "b"]);
        assert_eq!(s.kv_keys("a/", "").1, vec!["a/b/c", "a/b/d", "a/e", "a/f/"]);
    }

    #[test]
    fn ttl_expiry_after_twice_the_ttl_with_release() {
        let mut s = store();
        let now = Instant::now();
        let a = session_with(&mut s, now, |r| {
            r.ttl = "10s".into();
            r.lock_delay_ns = 1_000_000_000;
        });
        assert!(s.kv_acquire("k", b"v".to_vec(), 9, &a, now).unwrap());
        assert_eq!(s.next_expiry(), Some(now + Duration::from_secs(20)));
        assert!(s.expire_sessions(now + Duration::from_secs(19)).is_empty());
        // A renewal at 15s pushes the deadline to 35s.
        let later = now + Duration::from_secs(15);
        assert!(s.renew_session(&a, later).unwrap().is_some());
        assert!(s.expire_sessions(now + Duration::from_secs(34)).is_empty());
        let at = now + Duration::from_secs(35);
        assert_eq!(s.expire_sessions(at), vec![a.clone()]);
        let e = s.kv_get("k").1.unwrap();
        assert_eq!(
            (
                e.session.as_str(),
                e.value.as_slice(),
                e.flags,
                e.lock_index
            ),
            ("", &b"v"[..], 9, 1)
        );
        assert_eq!(e.modify_index, s.index());
        assert!(s.lock_delayed("k", at));
        assert!(!s.lock_delayed("k", at + Duration::from_secs(1)));
        assert!(matches!(s.renew_session(&a, at), Ok(None)));
    }

    #[test]
    fn ttl_expiry_with_delete_behavior_leaves_a_tombstone() {
        let mut s = store();
        let now = Instant::now();
        let a = session_with(&mut s, now, |r| {
            r.ttl = "10s".into();
            r.behavior = "delete".into();
        });
        assert!(s.kv_acquire("d/k", b"v".to_vec(), 0, &a, now).unwrap());
        s.expire_sessions(now + Duration::from_secs(20));
        assert!(s.kv_get("d/k").1.is_none());
        assert_eq!(s.kv_list("d/").0, s.index());
        assert_eq!(s.session_count(), 0);
    }

    fn op(verb: &str, key: &str) -> TxnKvOp {
        TxnKvOp {
            verb: verb.into(),
            key: key.into(),
            ..TxnKvOp::default()
        }
    }

    #[test]
    fn txn_applies_every_write_at_one_index() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        s.kv_set("old", b"x".to_vec(), 0);
        let before = s.index();
        let mut lock = op("lock", "k");
        lock.session = a.clone();
        lock.value = b"v".to_vec();
        let mut set = op("set", "other");
        set.flags = 3;
        let results: Vec<Entry> = s
            .txn_write(&[lock, set, op("get", "k"), op("delete", "old")])
            .unwrap()
            .concat();
        assert_eq!(s.index(), before + 1);
        assert_eq!(results.len(), 3, "{results:?}");
        // The lock result has no value; the get that follows sees the lock with its value.
        assert_eq!((results[0].lock_index, results[0].value.len()), (1, 0));
        assert_eq!(results[0].session, a);
        assert_eq!(results[1].flags, 3);
        assert_eq!(results[2].value, b"v");
        for r in &results {
            assert_eq!(r.modify_index, before + 1);
        }
        assert_eq!(s.tombstones.get("old"), Some(&(before + 1)));
        assert_eq!(s.take_changes().keys, vec!["old", "k", "other", "old"]);
    }

    #[test]
    fn failed_txn_changes_nothing_and_reports_every_error() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        s.kv_set("k", b"v".to_vec(), 0);
        s.kv_delete("gone");
        let before = s.index();
        let snapshot = (s.kv.clone(), s.tombstones.clone(), s.kv_index);
        s.take_changes();
        let mut cas = op("cas", "k");
        cas.index = 999;
        let mut unlock = op("unlock", "k");
        unlock.session = a.clone();
        let errors = s
            .txn_write(&[
                op("set", "new"),
                op("delete", "k"),
                cas,
                unlock,
                op("check-not-exists", "new"),
            ])
            .unwrap_err();
        assert_eq!(
            errors,
            vec![
                (2, r#"failed to set key "k", index is stale"#.to_string()),
                (
                    3,
                    r#"failed to unlock key "k", lock isn't held, or is held by another session"#
                        .to_string()
                ),
                (4, r#"key "new" exists"#.to_string()),
            ]
        );
        assert_eq!(s.index(), before);
        assert_eq!((s.kv.clone(), s.tombstones.clone(), s.kv_index), snapshot);
        assert_eq!(s.take_changes(), Changes::default());
    }

    #[test]
    fn txn_error_texts() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        let b = session(&mut s, now);
        let mut lock = op("lock", "held");
        lock.session = a.clone();
        s.txn_write(&[lock.clone()]).unwrap();
        let index = s.kv_get("held").1.unwrap().modify_index;
        let text = |s: &mut Store, o: TxnKvOp| s.txn_write(&[o]).unwrap_err()[0].1.clone();
        let mut other = lock.clone();
        other.session = b.clone();
        assert_eq!(
            text(&mut s, other),
            r#"failed to lock key "held", lock is already held"#
        );
        assert_eq!(text(&mut s, op("lock", "x")), "missing session");
        let mut ghost = op("lock", "x");
        ghost.session = "00000000-0000-0000-0000-000000000000".into();
        assert_eq!(
            text(&mut s, ghost),
            r#"invalid session "00000000-0000-0000-0000-000000000000""#
        );
        assert_eq!(text(&mut s, op("get", "x")), r#"key "x" doesn't exist"#);
        let mut check = op("check-session", "held");
        check.session = b.clone();
        assert_eq!(
            text(&mut s, check),
            format!(r#"failed session check for key "held", current session "{a}" != "{b}""#)
        );
        assert_eq!(
            text(&mut s, op("check-session", "x")),
            r#"failed to check session, key "x" doesn't exist"#
        );
        let mut check = op("check-index", "held");
        check.index = index + 5;
        assert_eq!(
            text(&mut s, check),
            format!(
                r#"failed index check for key "held", current modify index {index} != {}"#,
                index + 5
            )
        );
        assert_eq!(
            text(&mut s, op("check-index", "x")),
            r#"failed to check index, key "x" doesn't exist"#
        );
        let mut delete = op("delete-cas", "held");
        delete.index = index + 1;
        assert_eq!(
            text(&mut s, delete),
            r#"failed to delete key "held", index is stale"#
        );
        assert_eq!(
            text(&mut s, op("explode", "x")),
            r#"unknown KV verb "explode""#
        );
    }

    #[test]
    fn txn_reads_and_checks() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        let mut lock = op("lock", "p/k");
        lock.session = a.clone();
        lock.value = b"v".to_vec();
        s.txn_write(&[lock]).unwrap();
        s.kv_set("p/j", b"w".to_vec(), 0);
        let index = s.kv_get("p/k").1.unwrap().modify_index;
        let mut check = op("check-index", "p/k");
        check.index = index;
        let mut session_check = op("check-session", "p/k");
        session_check.session = a.clone();
        let mut empty = op("get-or-empty", "p/none");
        empty.flags = 9;
        let results: Vec<Entry> = s
            .txn_read(&[
                op("get-tree", "p/"),
                check,
                session_check,
                op("check-not-exists", "p/none"),
                empty,
            ])
            .unwrap()
            .concat();
        let keys: Vec<&str> = results.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["p/j", "p/k", "p/k", "p/k", "p/none"]);
        assert_eq!(results[1].value, b"v");
        assert!(results[2].value.is_empty() && results[3].value.is_empty());
        assert_eq!((results[4].flags, results[4].modify_index), (9, 0));
        // A delete-cas of a missing key succeeds, as the KV endpoint's does.
        let mut delete = op("delete-cas", "p/none");
        delete.index = 4;
        let before = s.index();
        assert_eq!(s.txn_write(&[delete]), Ok(vec![vec![]]));
        assert_eq!(s.index(), before);
    }

    #[test]
    fn txn_precheck_order_and_lock_delay() {
        let mut s = store();
        let now = Instant::now();
        let a = session(&mut s, now);
        assert!(s.kv_acquire("k", vec![], 0, &a, now).unwrap());
        s.destroy_session(&a, now).unwrap();
        let deny = |o: &TxnKvOp| (o.key == "secret").then(|| "Permission denied".to_string());
        let ops = [
            op("get", ""),
            op("delete-tree", ""),
            op("set", "secret"),
            op("lock", "k"),
            op("lock", "free"),
        ];
        assert_eq!(
            s.txn_precheck(&ops, now, &deny),
            vec![
                (0, "Must provide key".to_string()),
                (2, "Permission denied".to_string()),
                (3, r#"failed to lock key "k" due to lock delay"#.to_string()),
            ]
        );
        assert!(
            s.txn_precheck(&ops[3..], now + DEFAULT_LOCK_DELAY, &deny)
                .is_empty()
        );
    }

    #[test]
    fn malformed_session_ids() {
        let mut s = store();
        let now = Instant::now();
        assert_eq!(
            s.renew_session("abc", now).unwrap_err(),
            "UUID must be 36 characters"
        );
        assert!(s.destroy_session("abc", now).is_err());
        assert!(s.session("abc").is_err());
        assert!(
            s.destroy_session("00000000-0000-0000-0000-000000000000", now)
                .is_ok()
        );
    }
}
