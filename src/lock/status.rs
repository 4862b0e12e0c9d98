//! Who holds a lock: `consullock status KEY` and `status -r REGEX`, read without changing
//! anything.
//!
//! A lock can live in three layouts, and each is recognised (see `layout.rs`):
//!
//! * **consullock's own**: the key itself holds consullock's lock JSON ([`LockInfo`]: host,
//!   pid, since when, metadata) and is acquired by the holder's session. Waiters line up under
//!   `KEY/.queue/` (`queue.rs`): their number is reported.
//! * **`consul lock KEY`** (Go's `api.Lock`): `KEY/.lock` with the flags [`LOCK_FLAG_VALUE`]
//!   and an empty value, acquired by the holder's session. The value names nobody: the
//!   session's name and node do. Any key with those flags is an `api.Lock`, so a key that
//!   carries them itself is reported in this layout too.
//! * **a semaphore** (`consul lock -n N KEY`, Go's `api.Semaphore`): `KEY/.lock` with
//!   [`SEMAPHORE_FLAG_VALUE`] holds the limit and the holders, and each contender holds its own
//!   key `KEY/<session>`. A holder counts as live only while some key of the prefix listing
//!   (Go lists by string prefix) is held by its session, as Go's `pruneDeadHolders` counts;
//!   the others are reported as dead (Go drops them at the next acquisition).
//!
//! **Someone else's data** is reported, not refused: a key held by a session whose value is
//! none of these (another program's leader lock, or consullock's JSON naming another session,
//! which `unlock` leaves alone too) is [`FoundLayout::Foreign`]: held, but not a lock consullock would
//! take or release. A `.lock` key with other flags is not a lock of its prefix: it is reported
//! under its own name when it is held. A key that is not held is not reported at all.
//!
//! **A lock-delay on a free key** cannot be read: Consul keeps it in its leader's memory and
//! only consults it when asked to lock the key. So [`status`] asks, in a way that can never
//! succeed: one transaction that locks the free key for the nil session
//! `00000000-0000-0000-0000-000000000000`, which cannot exist (Consul makes every session id
//! itself). Consul checks the lock-delay of every `lock` op before the transaction reaches
//! Raft (`kvsPreApply` in `agent/consul/kvs_endpoint.go`, called by `preCheck` in
//! `agent/consul/txn_endpoint.go`) and answers 409 with `failed to lock key "KEY" due to lock
//! delay`; without a lock-delay the transaction fails in the state store with `invalid session
//! "00000000-..."` and is rolled back (`kvsLockTxn`). Nothing changes either way, but it is a
//! write request (the second kind goes through Raft), so it needs `key:write` on the key: a
//! refusal leaves the answer unknown rather than failing. `status_regex` never probes: one
//! write per matching key is too many for a look around.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::consul::{Client, ConsulError, KvEntry, QueryOptions, SessionEntry};

use super::find::literal_prefix;
use super::layout::{self, LOCK_FLAG_VALUE, SEMAPHORE_FLAG_VALUE, SemaphoreState};
pub use super::lock_delay::PROBE_SESSION;
use super::lock_delay::{LockDelay, probe as probe_lock_delay};
use super::queue::{is_queue_key, queue_prefix};
use super::value::LockInfo;

/// The suffix of a `.lock` key under its prefix.
const COORDINATION_SUFFIX: &str = "/.lock";

/// How a lock that `status` found is laid out in Consul's KV store (see [`super::Layout`] for
/// the layouts a lock is taken in), or that the key is held by something that is not a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FoundLayout {
    /// consullock's own: the key holds consullock's (or consullock 4.2's) lock JSON.
    Consullock,
    /// `consul lock KEY` (Go's `api.Lock`): `KEY/.lock`, or any key with `api.Lock`'s flags.
    ConsulLock,
    /// `consul lock -n N KEY` (Go's `api.Semaphore`): `KEY/.lock` and a key per contender.
    Semaphore,
    /// Held by a session, but its value is not a lock's: another program's.
    Foreign,
}

impl FoundLayout {
    /// The name the JSON uses.
    pub fn as_str(self) -> &'static str {
        match self {
            FoundLayout::Consullock => "consullock",
            FoundLayout::ConsulLock => "consul-lock",
            FoundLayout::Semaphore => "semaphore",
            FoundLayout::Foreign => "foreign",
        }
    }
}

impl std::fmt::Display for FoundLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Consul says about a holder's session (`/v1/session/info`). Every field is `None` when
/// the session is gone (or its id is not one Consul could have made).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDetails {
    /// The session's name: consullock's names the key, host and pid; `consul lock`'s the
    /// command and prefix.
    pub session_name: Option<String>,
    /// The node the session belongs to (for `consul lock`, the holder's agent).
    pub node: Option<String>,
    /// The session's TTL in seconds; `None` also for a session without TTL.
    pub ttl: Option<f64>,
    /// The session's lock-delay in seconds: how long the key stays refused to everyone once the
    /// session is invalidated.
    pub lock_delay: Option<f64>,
    /// `release` or `delete`: what becomes of the key when the session is invalidated.
    pub behavior: Option<String>,
    /// Whether no health check can invalidate the session (only its TTL or a destroy can).
    pub ttl_only: Option<bool>,
}

impl SessionDetails {
    /// The details of a session as `/v1/session/info` answers it.
    pub fn of(session: &SessionEntry) -> SessionDetails {
        SessionDetails {
            session_name: Some(session.name.clone()),
            node: Some(session.node.clone()),
            // An empty TTL is a session without one.
            ttl: crate::session::parse_go_duration(&session.ttl).map(|ttl| ttl.as_secs_f64()),
            lock_delay: session
                .lock_delay_ns
                .map(|ns| Duration::from_nanos(ns).as_secs_f64()),
            behavior: (!session.behavior.is_empty()).then(|| session.behavior.clone()),
            ttl_only: Some(session.ttl_only()),
        }
    }
}

/// One holder of a semaphore's slot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SemaphoreHolder {
    /// The holder's session, as the semaphore's `.lock` names it.
    pub session: String,
    /// Whether some key of the prefix is still held by that session (Go's rule): a dead
    /// holder takes no slot, and the next acquisition drops it.
    pub live: bool,
    /// The holder's host, when its contender key holds consullock's lock JSON.
    pub hostname: Option<String>,
    /// The holder's process id, likewise.
    pub pid: Option<u32>,
    /// When it took its slot, likewise.
    pub created: Option<String>,
    /// Its metadata, likewise.
    pub metadata: Option<serde_json::Value>,
    /// Its session.
    #[serde(flatten)]
    pub details: SessionDetails,
}

/// A lock as `consullock status` prints it: one JSON object per lock. Every object has every
/// field, `null` where it does not apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockStatus {
    /// The lock's name: the key for consullock's layout, the prefix `consul lock` was given
    /// for the `.lock` layouts.
    pub key: String,
    /// How the lock is laid out.
    pub layout: FoundLayout,
    /// The key that carries the lock: `key` itself, or `key/.lock`.
    pub lock_key: String,
    /// Whether a session holds it (for a semaphore: whether a live holder has a slot). A
    /// reported lock that is not held is a free key under a lock-delay.
    pub held: bool,
    /// The session holding it (`None` for a semaphore: see `holders`).
    pub session: Option<String>,
    /// The holder's host, from consullock's lock JSON.
    pub hostname: Option<String>,
    /// The holder's process id, from consullock's lock JSON.
    pub pid: Option<u32>,
    /// Since when it is held (UTC, ISO 8601 without zone), from consullock's lock JSON; the Go
    /// layouts keep no time.
    pub created: Option<String>,
    /// The metadata of consullock's lock JSON.
    pub metadata: Option<serde_json::Value>,
    /// The holding session, as Consul describes it.
    #[serde(flatten)]
    pub details: SessionDetails,
    /// For a free key: whether Consul refuses to lock it for now (a lock-delay). `None` when
    /// the question was not asked (a held lock, `status_regex`).
    pub lock_delay_in_force: Option<bool>,
    /// How many contenders wait: consullock's queue, or a semaphore's contenders without a
    /// slot. `None` for `consul lock`, whose waiters leave no trace.
    pub waiting: Option<u64>,
    /// A semaphore's limit.
    pub limit: Option<u64>,
    /// A semaphore's holders, live and dead.
    pub holders: Option<Vec<SemaphoreHolder>>,
}

impl LockStatus {
    /// A lock of `layout` named `key`, carried by `lock_key`, with nothing filled in yet.
    fn new(key: &str, layout: FoundLayout, lock_key: &str) -> LockStatus {
        LockStatus {
            key: key.to_owned(),
            layout,
            lock_key: lock_key.to_owned(),
            held: false,
            session: None,
            hostname: None,
            pid: None,
            created: None,
            metadata: None,
            details: SessionDetails::default(),
            lock_delay_in_force: None,
            waiting: None,
            limit: None,
            holders: None,
        }
    }
}

/// A lock-delay that [`status`] could not check, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLockDelay {
    /// The free key it asked about.
    pub key: String,
    /// Why there is no answer.
    pub reason: String,
}

/// What [`status`] found at one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyStatus {
    /// The lock: held in one of the layouts (consullock's own first, then the `.lock` key's),
    /// or a free key under a lock-delay. `None` when nothing is held and no lock-delay was
    /// found.
    pub lock: Option<LockStatus>,
    /// Further locks at the same key in another layout. The layouts do not exclude each other
    /// (consullock locks `KEY`, `consul lock` locks `KEY/.lock`), so both can be held at once.
    pub also: Vec<LockStatus>,
    /// Free keys whose lock-delay could not be checked (the probe was refused).
    pub lock_delay_unknown: Vec<UnknownLockDelay>,
}

/// Who holds the lock `key`, in whichever layout it is: see the module documentation. Only
/// reads, but for one transaction, refused by Consul whatever the answer, that asks whether a
/// lock-delay is in force when nothing is held.
pub async fn status(client: &Client, key: &str) -> Result<KeyStatus, ConsulError> {
    // `PREFIX/.lock` of a `consul lock` layout names the lock on PREFIX, as `status -r` says.
    if let Some(prefix) = key
        .strip_suffix(COORDINATION_SUFFIX)
        .filter(|p| !p.is_empty())
        && let Some(entry) = client.kv_get(key, &QueryOptions::default()).await?.value
        && (layout::is_consul_lock(&entry) || entry.flags == SEMAPHORE_FLAG_VALUE)
    {
        // The lock asked about first, should PREFIX itself be locked too.
        let mut found = status_of(client, prefix).await?;
        if let Some(lock) = &mut found.lock
            && lock.lock_key != key
            && let Some(asked) = found.also.iter_mut().find(|l| l.lock_key == key)
        {
            std::mem::swap(lock, asked);
        }
        return Ok(found);
    }
    status_of(client, key).await
}

async fn status_of(client: &Client, key: &str) -> Result<KeyStatus, ConsulError> {
    let plain = QueryOptions::default();
    let mut sessions = Sessions::new(client);
    let own = client.kv_get(key, &plain).await?.value;
    let coordination = layout::coordination_key(key);
    let dot_lock = client.kv_get(&coordination, &plain).await?.value;

    let mut found = Vec::new();
    if let Some(entry) = &own
        && let Some(mut lock) = held_lock(key, key, entry)
    {
        if lock.layout == FoundLayout::Consullock {
            lock.waiting = Some(queue_length(client, key).await?);
        }
        sessions.fill(&mut lock).await?;
        found.push(lock);
    }
    if let Some(entry) = &dot_lock {
        match entry.flags {
            LOCK_FLAG_VALUE if layout::is_consul_lock(entry) => {
                if let Some(mut lock) = held_lock(key, &coordination, entry) {
                    sessions.fill(&mut lock).await?;
                    found.push(lock);
                }
            }
            SEMAPHORE_FLAG_VALUE => {
                // Listed by string prefix, as Go lists it: whose sessions count as alive is
                // Go's reading, siblings (`KEY2/...`) included.
                let listing = client.kv_list(key, &plain).await?.value;
                if let Some(mut lock) = semaphore(key, entry, &listing) {
                    sessions.fill(&mut lock).await?;
                    found.push(lock);
                }
            }
            // Someone else's `.lock`: not a lock of KEY.
            _ => {}
        }
    }
    if !found.is_empty() {
        let lock = found.remove(0);
        return Ok(KeyStatus {
            lock: Some(lock),
            also: found,
            lock_delay_unknown: Vec::new(),
        });
    }

    // Nothing held: ask about a lock-delay on each key that a contender would lock. Someone
    // else's data is no lock to wait for, and a semaphore's contenders each lock a key of
    // their own, named after a new session: no lock-delay can be in their way.
    let mut candidates: Vec<(&str, FoundLayout)> = Vec::new();
    match &own {
        None => candidates.push((key, FoundLayout::Consullock)),
        Some(entry) if entry.session.is_none() => match kind(entry) {
            Kind::Consullock(_) => candidates.push((key, FoundLayout::Consullock)),
            Kind::ApiLock => candidates.push((key, FoundLayout::ConsulLock)),
            Kind::Contender | Kind::Foreign => {}
        },
        Some(_) => {}
    }
    // An absent `.lock` too: a holder whose session deletes its keys leaves none behind.
    if dot_lock
        .as_ref()
        .is_none_or(|entry| entry.session.is_none() && layout::is_consul_lock(entry))
    {
        candidates.push((&coordination, FoundLayout::ConsulLock));
    }
    let keys: Vec<&str> = candidates.iter().map(|(k, _)| *k).collect();
    let answers = probe_lock_delay(client, &keys).await?;
    let mut result = KeyStatus::default();
    for ((lock_key, layout), answer) in candidates.into_iter().zip(answers) {
        match answer {
            LockDelay::InForce => {
                let mut lock = LockStatus::new(key, layout, lock_key);
                lock.lock_delay_in_force = Some(true);
                if layout == FoundLayout::Consullock {
                    lock.waiting = Some(queue_length(client, key).await?);
                }
                match result.lock {
                    None => result.lock = Some(lock),
                    Some(_) => result.also.push(lock),
                }
            }
            LockDelay::NotInForce => {}
            LockDelay::Unknown(reason) => result.lock_delay_unknown.push(UnknownLockDelay {
                key: lock_key.to_owned(),
                reason,
            }),
        }
    }
    Ok(result)
}

/// Every held lock whose name fully matches `pattern`, in any layout, sorted by key. For the
/// `.lock` layouts, the name is the `.lock` key's prefix, or the `.lock` key itself; a
/// semaphore's contender keys and consullock's queue entries are parts of their lock, not
/// locks. The key names are listed under the pattern's literal prefix (as `unlock -r` lists
/// them) and only candidates are read. No lock-delay is probed.
pub async fn status_regex(
    client: &Client,
    pattern: &regex::Regex,
) -> Result<Vec<LockStatus>, ConsulError> {
    let plain = QueryOptions::default();
    let anchored = regex::Regex::new(&format!("^(?:{})$", pattern.as_str()))
        .unwrap_or_else(|_| pattern.clone());
    let listed = client
        .kv_keys(&literal_prefix(pattern.as_str()), None, &plain)
        .await?
        .value;
    let names: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    let mut sessions = Sessions::new(client);
    let mut found = Vec::new();
    // Keys accounted for as parts of a `.lock` layout, and entries already read.
    let mut parts: HashSet<String> = HashSet::new();
    let mut read: HashMap<&str, Option<KvEntry>> = HashMap::new();

    for name in &listed {
        let Some(prefix) = name
            .strip_suffix(COORDINATION_SUFFIX)
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        if !anchored.is_match(prefix) && !anchored.is_match(name) {
            continue;
        }
        let entry = client.kv_get(name, &plain).await?.value;
        match entry.as_ref().map(|e| e.flags) {
            Some(LOCK_FLAG_VALUE) if entry.as_ref().is_some_and(layout::is_consul_lock) => {
                parts.insert(name.clone());
                if let Some(mut lock) = entry.as_ref().and_then(|e| held_lock(prefix, name, e)) {
                    sessions.fill(&mut lock).await?;
                    found.push(lock);
                }
            }
            Some(SEMAPHORE_FLAG_VALUE) => {
                parts.insert(name.clone());
                let listing = client.kv_list(prefix, &plain).await?.value;
                parts.extend(contender_keys(prefix, &listing));
                if let Some(mut lock) = entry.as_ref().and_then(|e| semaphore(prefix, e, &listing))
                {
                    sessions.fill(&mut lock).await?;
                    found.push(lock);
                }
            }
            // Absent by now, or someone else's `.lock`: an ordinary key below.
            _ => {
                read.insert(name, entry);
            }
        }
    }

    for name in &listed {
        if parts.contains(name) || is_queue_key(name) || !anchored.is_match(name) {
            continue;
        }
        let entry = match read.remove(name.as_str()) {
            Some(entry) => entry,
            None => client.kv_get(name, &plain).await?.value,
        };
        let Some(mut lock) = entry.as_ref().and_then(|e| held_lock(name, name, e)) else {
            continue;
        };
        if lock.layout == FoundLayout::Consullock {
            // The listing holds every key under the literal prefix, which this key starts
            // with: its queue is in it.
            lock.waiting = Some(waiters(&names, name));
        }
        sessions.fill(&mut lock).await?;
        found.push(lock);
    }
    found.sort_by(|a, b| (&a.key, &a.lock_key).cmp(&(&b.key, &b.lock_key)));
    Ok(found)
}

/// What a key's entry is, by its flags and value.
enum Kind {
    /// consullock's lock JSON, naming the session that holds the key (if any does).
    Consullock(LockInfo),
    /// `api.Lock`'s flags.
    ApiLock,
    /// `api.Semaphore`'s flags on a key that is not `.lock`: a contender, part of a semaphore.
    Contender,
    /// Anything else.
    Foreign,
}

fn kind(entry: &KvEntry) -> Kind {
    match entry.flags {
        LOCK_FLAG_VALUE if layout::is_consul_lock(entry) => Kind::ApiLock,
        // consullock's own contenders store its lock JSON, but carry the semaphore's flags.
        SEMAPHORE_FLAG_VALUE => Kind::Contender,
        _ => match LockInfo::parse(&entry.value) {
            // A value naming another session than the holder is not that holder's lock
            // (`unlock` leaves it alone too).
            Some(info) if entry.session.as_ref().is_none_or(|s| *s == info.session) => {
                Kind::Consullock(info)
            }
            _ => Kind::Foreign,
        },
    }
}

/// The lock named `key` that `entry` (the key `lock_key`) carries, when a session holds it
/// and it is not a semaphore's contender. Session details are left to fill.
fn held_lock(key: &str, lock_key: &str, entry: &KvEntry) -> Option<LockStatus> {
    let session = entry.session.as_ref()?;
    let mut lock = match kind(entry) {
        Kind::Contender => return None,
        Kind::Consullock(info) => {
            let mut lock = LockStatus::new(key, FoundLayout::Consullock, lock_key);
            lock.hostname = info.hostname;
            lock.pid = info.pid;
            lock.created = Some(info.created);
            lock.metadata = info.metadata;
            lock
        }
        Kind::ApiLock => LockStatus::new(key, FoundLayout::ConsulLock, lock_key),
        Kind::Foreign => LockStatus::new(key, FoundLayout::Foreign, lock_key),
    };
    lock.held = true;
    lock.session = Some(session.clone());
    Some(lock)
}

/// The contender keys of the semaphore under `prefix` in its listing: the direct children with
/// the semaphore's flags, `.lock` aside.
fn contender_keys(prefix: &str, listing: &[KvEntry]) -> Vec<String> {
    let coordination = layout::coordination_key(prefix);
    listing
        .iter()
        .filter(|entry| entry.flags == SEMAPHORE_FLAG_VALUE && entry.key != coordination)
        .filter(|entry| {
            entry
                .key
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| !name.is_empty() && !name.contains('/'))
        })
        .map(|entry| entry.key.clone())
        .collect()
}

/// The semaphore under `prefix` whose `.lock` is `coordination`, read against the prefix's
/// listing: its holders, live and dead, and the contenders waiting for a slot. `None` when no
/// live holder has a slot (nothing is held), or when `.lock` holds no semaphore state.
fn semaphore(prefix: &str, coordination: &KvEntry, listing: &[KvEntry]) -> Option<LockStatus> {
    let state = match SemaphoreState::decode(&coordination.value) {
        Ok(Some(state)) => state,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(
                key = %coordination.key,
                "the key has a semaphore's flags but no semaphore's value ({e}); not reported"
            );
            return None;
        }
    };
    let mut live = state.clone();
    live.prune(listing);
    let entries: HashMap<&str, &KvEntry> = listing.iter().map(|e| (e.key.as_str(), e)).collect();
    let holders: Vec<SemaphoreHolder> = state
        .holders
        .iter()
        .map(|session| {
            // A holder's own key may carry consullock's lock JSON (consullock's contenders).
            let info = entries
                .get(layout::contender_key(prefix, session).as_str())
                .and_then(|entry| LockInfo::parse(&entry.value))
                .filter(|info| info.session == *session);
            SemaphoreHolder {
                session: session.clone(),
                live: live.holders.contains(session),
                hostname: info.as_ref().and_then(|i| i.hostname.clone()),
                pid: info.as_ref().and_then(|i| i.pid),
                created: info.as_ref().map(|i| i.created.clone()),
                metadata: info.and_then(|i| i.metadata),
                details: SessionDetails::default(),
            }
        })
        .collect();
    if !holders.iter().any(|h| h.live) {
        return None;
    }
    // A contender waits while its own key is held by its session and it has no slot.
    let waiting = contender_keys(prefix, listing)
        .iter()
        .filter_map(|key| entries.get(key.as_str()))
        .filter(|entry| {
            entry.session.as_ref().is_some_and(|session| {
                entry.key == layout::contender_key(prefix, session)
                    && !state.holders.contains(session)
            })
        })
        .count();
    let mut lock = LockStatus::new(prefix, FoundLayout::Semaphore, &coordination.key);
    lock.held = true;
    lock.limit = Some(state.limit);
    lock.holders = Some(holders);
    lock.waiting = Some(waiting as u64);
    Some(lock)
}

/// How many of consullock's waiters are in line for `key` (`queue.rs`).
async fn queue_length(client: &Client, key: &str) -> Result<u64, ConsulError> {
    let listed = client
        .kv_keys(&queue_prefix(key), None, &QueryOptions::default())
        .await?
        .value;
    let names: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    Ok(waiters(&names, key))
}

/// How many entries of `key`'s queue are among `names`.
fn waiters(names: &BTreeSet<&str>, key: &str) -> u64 {
    let prefix = queue_prefix(key);
    names
        .range(prefix.as_str()..)
        .take_while(|name| name.starts_with(&prefix))
        .filter(|name| !name[prefix.len()..].is_empty() && !name[prefix.len()..].contains('/'))
        .count() as u64
}

/// Session details, each session read once.
struct Sessions<'a> {
    client: &'a Client,
    known: HashMap<String, SessionDetails>,
}

impl<'a> Sessions<'a> {
    fn new(client: &'a Client) -> Sessions<'a> {
        Sessions {
            client,
            known: HashMap::new(),
        }
    }

    async fn details(&mut self, id: &str) -> Result<SessionDetails, ConsulError> {
        if let Some(details) = self.known.get(id) {
            return Ok(details.clone());
        }
        // A semaphore's `.lock` may name anything; only a UUID can be a session.
        let details = if crate::consul::is_uuid(id) {
            self.client
                .session_info(id, &QueryOptions::default())
                .await?
                .value
                .map(|session| SessionDetails::of(&session))
                .unwrap_or_default()
        } else {
            SessionDetails::default()
        };
        self.known.insert(id.to_owned(), details.clone());
        Ok(details)
    }

    /// Fills in the details of the lock's session, or of each of its holders.
    async fn fill(&mut self, lock: &mut LockStatus) -> Result<(), ConsulError> {
        if let Some(session) = &lock.session {
            lock.details = self.details(session).await?;
        }
        for holder in lock.holders.iter_mut().flatten() {
            holder.details = self.details(&holder.session).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "11111111-1111-1111-1111-111111111111";
    const B: &str = "22222222-2222-2222-2222-222222222222";
    const C: &str = "33333333-3333-3333-3333-333333333333";

    fn entry(key: &str, value: &[u8], flags: u64, session: Option<&str>) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: value.to_vec(),
            flags,
            session: session.map(Into::into),
            lock_index: 1,
            create_index: 1,
            modify_index: 1,
        }
    }

    fn info(key: &str, session: &str) -> Vec<u8> {
        LockInfo {
            created: "2026-11-27T14:34:09.360705".into(),
            key: key.into(),
            metadata: Some(serde_json::json!({"owner": "alice"})),
            seconds_to_lock: 0.1,
            session: session.into(),
            hostname: Some("vm".into()),
            pid: Some(42),
        }
        .to_value()
    }

    #[test]
    fn layouts_are_told_by_flags_then_value() {
        let consullock = held_lock("k", "k", &entry("k", &info("k", A), 0, Some(A))).unwrap();
        assert_eq!(consullock.layout, FoundLayout::Consullock);
        assert_eq!(
            (consullock.hostname.as_deref(), consullock.pid),
            (Some("vm"), Some(42))
        );
        let api = held_lock(
            "p",
            "p/.lock",
            &entry("p/.lock", b"", LOCK_FLAG_VALUE, Some(A)),
        );
        assert_eq!(api.unwrap().layout, FoundLayout::ConsulLock);
        let other = held_lock("k", "k", &entry("k", b"leader", 0, Some(A))).unwrap();
        assert_eq!(other.layout, FoundLayout::Foreign);
        // consullock's JSON naming another session is not the holder's lock.
        let copied = held_lock("k", "k", &entry("k", &info("k", B), 0, Some(A))).unwrap();
        assert_eq!(copied.layout, FoundLayout::Foreign);
        // A contender is part of its semaphore; a free key is not held.
        assert!(
            held_lock(
                "p/x",
                "p/x",
                &entry("p/x", b"", SEMAPHORE_FLAG_VALUE, Some(A))
            )
            .is_none()
        );
        assert!(held_lock("k", "k", &entry("k", &info("k", A), 0, None)).is_none());
    }

    #[test]
    fn the_json_has_every_field_in_camel_case() {
        let lock = held_lock(
            "jobs/a",
            "jobs/a",
            &entry("jobs/a", &info("jobs/a", A), 0, Some(A)),
        );
        let json = serde_json::to_value(lock.unwrap()).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "key",
            "layout",
            "lockKey",
            "held",
            "session",
            "hostname",
            "pid",
            "created",
            "metadata",
            "sessionName",
            "node",
            "ttl",
            "lockDelay",
            "behavior",
            "ttlOnly",
            "lockDelayInForce",
            "waiting",
            "limit",
            "holders",
        ];
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(json["layout"], "consullock");
        assert_eq!(json["metadata"], serde_json::json!({"owner": "alice"}));
        assert_eq!(json["holders"], serde_json::Value::Null);
        assert_eq!(
            serde_json::to_value(FoundLayout::ConsulLock).unwrap(),
            "consul-lock"
        );
    }

    #[test]
    fn session_details_in_seconds() {
        let session: SessionEntry = serde_json::from_str(
            r#"{"ID":"x","Name":"n","Node":"vm","LockDelay":15000000000,"Behavior":"delete",
                "TTL":"10.5s","NodeChecks":[],"ServiceChecks":null}"#,
        )
        .unwrap();
        let details = SessionDetails::of(&session);
        assert_eq!(details.ttl, Some(10.5));
        assert_eq!(details.lock_delay, Some(15.0));
        assert_eq!(details.ttl_only, Some(true));
        assert_eq!(details.behavior.as_deref(), Some("delete"));
        let no_ttl: SessionEntry =
            serde_json::from_str(r#"{"ID":"x","TTL":"","NodeChecks":["serfHealth"]}"#).unwrap();
        let details = SessionDetails::of(&no_ttl);
        assert_eq!((details.ttl, details.ttl_only), (None, Some(false)));
        let json = serde_json::to_value(SessionDetails::default()).unwrap();
        assert!(json.as_object().unwrap().values().all(|v| v.is_null()));
    }

    #[test]
    fn semaphore_holders_live_dead_and_waiting() {
        let state = format!(r#"{{"Limit":2,"Holders":{{"{A}":true,"{B}":true}}}}"#);
        let coordination = entry("p/.lock", state.as_bytes(), SEMAPHORE_FLAG_VALUE, None);
        let listing = vec![
            coordination.clone(),
            // A holds its slot, with consullock's JSON in its key; B's session is gone.
            entry(
                &format!("p/{A}"),
                &info("p", A),
                SEMAPHORE_FLAG_VALUE,
                Some(A),
            ),
            // C waits for a slot.
            entry(&format!("p/{C}"), b"", SEMAPHORE_FLAG_VALUE, Some(C)),
            // Not contenders: deeper keys and other flags.
            entry("p/x/y", b"", SEMAPHORE_FLAG_VALUE, None),
            entry("p/data", b"d", 0, None),
        ];
        let lock = semaphore("p", &coordination, &listing).unwrap();
        assert_eq!(
            (
                lock.layout,
                lock.lock_key.as_str(),
                lock.limit,
                lock.waiting
            ),
            (FoundLayout::Semaphore, "p/.lock", Some(2), Some(1))
        );
        let holders = lock.holders.unwrap();
        let summary: Vec<(&str, bool, Option<u32>)> = holders
            .iter()
            .map(|h| (h.session.as_str(), h.live, h.pid))
            .collect();
        assert_eq!(summary, [(A, true, Some(42)), (B, false, None)]);
        let mut contenders = contender_keys("p", &listing);
        contenders.sort();
        assert_eq!(contenders, [format!("p/{A}"), format!("p/{C}")]);

        // Only dead holders: nothing is held.
        assert!(semaphore("p", &coordination, &listing[3..]).is_none());
        // No state yet, or not a semaphore's.
        let empty = entry("p/.lock", b"", SEMAPHORE_FLAG_VALUE, None);
        assert!(semaphore("p", &empty, &listing).is_none());
        let garbage = entry("p/.lock", b"[1]", SEMAPHORE_FLAG_VALUE, None);
        assert!(semaphore("p", &garbage, &listing).is_none());
    }

    #[test]
    fn queue_entries_are_counted_one_level_deep() {
        let names: BTreeSet<&str> = [
            "jobs/a",
            "jobs/a/.queue/s1",
            "jobs/a/.queue/s2",
            "jobs/a/.queue/s2/deeper",
            "jobs/ab/.queue/s3",
            "jobs/b/.queue/s4",
        ]
        .into_iter()
        .collect();
        assert_eq!(waiters(&names, "jobs/a"), 2);
        assert_eq!(waiters(&names, "jobs/c"), 0);
    }
}
