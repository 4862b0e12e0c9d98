//! The JSON shapes of Consul's session and KV endpoints, and read options.

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};

/// What Consul does with a session's keys when the session is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// Keys are released (their Session is cleared).
    Release,
    /// Keys are deleted.
    Delete,
}

/// The body of `PUT /v1/session/create`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRequest {
    /// Human-readable name, shown by `consul` tools.
    #[serde(rename = "Name")]
    pub name: String,
    /// Time to live; `None` for a session without TTL.
    #[serde(
        rename = "TTL",
        skip_serializing_if = "Option::is_none",
        serialize_with = "ttl"
    )]
    pub ttl: Option<Duration>,
    /// Lock-delay applied to held keys when the session is invalidated.
    #[serde(rename = "LockDelay", serialize_with = "lock_delay")]
    pub lock_delay: Duration,
    /// Release or delete held keys on invalidation.
    #[serde(rename = "Behavior")]
    pub behavior: Behavior,
    /// Node health checks bound to the session: `None` keeps Consul's default (`serfHealth`),
    /// `Some(vec![])` makes a TTL-only session that no health check can invalidate.
    #[serde(rename = "NodeChecks", skip_serializing_if = "Option::is_none")]
    pub node_checks: Option<Vec<String>>,
}

/// Consul parses TTL with Go's `time.ParseDuration`: send exactly the TTL the client's clocks
/// assume, in whole seconds when it is, else in milliseconds or nanoseconds.
fn ttl<S: Serializer>(ttl: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match ttl {
        Some(ttl) => s.serialize_str(&go_duration(*ttl)),
        None => s.serialize_none(),
    }
}

/// `duration` as Go's `time.ParseDuration` reads it back exactly.
fn go_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}ns", duration.as_nanos())
    }
}

/// Milliseconds, as the Go client sends it. A zero delay is sent as `"0s"`, not left out:
/// left out, the server would apply its default of 15 s.
fn lock_delay<S: Serializer>(delay: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if delay.is_zero() {
        s.serialize_str("0s")
    } else {
        s.serialize_str(&format!("{}ms", delay.as_millis().max(1)))
    }
}

/// A session as `/v1/session/info` and `/renew` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionEntry {
    /// Session id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Name given at creation.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// The node the session belongs to.
    #[serde(rename = "Node", default)]
    pub node: String,
    /// Lock-delay in nanoseconds (`None` when the answer does not say).
    #[serde(rename = "LockDelay", default)]
    pub lock_delay_ns: Option<u64>,
    /// `release` or `delete`.
    #[serde(rename = "Behavior", default)]
    pub behavior: String,
    /// TTL as a Go duration string (`"15s"`), empty without TTL. The server may answer a higher
    /// TTL than requested to ask for slower renewals.
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    /// Raft index of creation.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Node checks bound to the session (Consul 1.7 and later; `null` or absent for none).
    #[serde(rename = "NodeChecks", default)]
    pub node_checks: Option<Vec<serde_json::Value>>,
    /// Service checks bound to the session (Consul 1.7 and later).
    #[serde(rename = "ServiceChecks", default)]
    pub service_checks: Option<Vec<serde_json::Value>>,
    /// Checks bound to the session, as Consul before 1.7 answers them (deprecated since,
    /// and left out when empty).
    #[serde(rename = "Checks", default)]
    pub checks: Option<Vec<serde_json::Value>>,
}

impl SessionEntry {
    /// Whether no health check can invalidate the session: only its TTL (or a destroy) ends it.
    /// Consul answers the checks in `NodeChecks` and `ServiceChecks` (1.7 and later) or in
    /// `Checks` (before), and leaves an empty list out or as `null`, so a session is TTL-only
    /// when none of the three names a check.
    pub fn ttl_only(&self) -> bool {
        [&self.node_checks, &self.service_checks, &self.checks]
            .iter()
            .all(|checks| checks.as_ref().is_none_or(Vec::is_empty))
    }
}

/// The JSON of a KV entry, before its base64 value is decoded.
#[derive(Debug, Deserialize)]
pub(super) struct RawKvEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", default)]
    flags: u64,
    #[serde(rename = "Session", default)]
    session: Option<String>,
    #[serde(rename = "LockIndex", default)]
    lock_index: u64,
    #[serde(rename = "CreateIndex", default)]
    create_index: u64,
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
}

impl RawKvEntry {
    pub(super) fn decode(self) -> Result<KvEntry, String> {
        let value = match self.value {
            None => Vec::new(),
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| format!("the value of key {:?} is not base64: {e}", self.key))?,
        };
        Ok(KvEntry {
            key: self.key,
            value,
            flags: self.flags,
            session: self.session.filter(|s| !s.is_empty()),
            lock_index: self.lock_index,
            create_index: self.create_index,
            modify_index: self.modify_index,
        })
    }
}

/// A KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value's bytes (empty when Consul has none).
    pub value: Vec<u8>,
    /// Opaque flags.
    pub flags: u64,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
    /// How many times the key's lock has been acquired.
    pub lock_index: u64,
    /// Raft index of creation.
    pub create_index: u64,
    /// Raft index of the last change.
    pub modify_index: u64,
}

/// One KV operation of a transaction (`PUT /v1/txn`), as Consul's `KVTxnOp` (`api/txn.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp<'a> {
    /// Take the lock for `session` (as `?acquire`: lock-delay applies), storing `value`.
    Lock {
        /// The key.
        key: &'a str,
        /// The value to store.
        value: &'a [u8],
        /// The flags to store.
        flags: u64,
        /// The session taking the lock.
        session: &'a str,
    },
    /// Read the key (the result carries its value).
    Get {
        /// The key.
        key: &'a str,
    },
    /// Fail unless the key's ModifyIndex is `index`.
    CheckIndex {
        /// The key.
        key: &'a str,
        /// The expected ModifyIndex.
        index: u64,
    },
    /// Fail if the key exists.
    CheckNotExists {
        /// The key.
        key: &'a str,
    },
    /// Fail unless `session` holds the key.
    CheckSession {
        /// The key.
        key: &'a str,
        /// The expected holder.
        session: &'a str,
    },
    /// Store `value` if the key's ModifyIndex is `index` (0: only if it does not exist).
    Cas {
        /// The key.
        key: &'a str,
        /// The value to store.
        value: &'a [u8],
        /// The flags to store.
        flags: u64,
        /// The expected ModifyIndex.
        index: u64,
    },
    /// Delete the key.
    Delete {
        /// The key.
        key: &'a str,
    },
    /// Delete the key if its ModifyIndex is `index` (an absent key counts as deleted).
    DeleteCas {
        /// The key.
        key: &'a str,
        /// The expected ModifyIndex.
        index: u64,
    },
}

impl TxnOp<'_> {
    /// The op as Consul reads it: `{"KV": {"Verb": ..., "Key": ..., ...}}`, values in base64.
    pub(super) fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let b64 = |value: &[u8]| base64::engine::general_purpose::STANDARD.encode(value);
        let kv = match self {
            TxnOp::Lock {
                key,
                value,
                flags,
                session,
            } => {
                json!({"Verb": "lock", "Key": key, "Value": b64(value), "Flags": flags, "Session": session})
            }
            TxnOp::Get { key } => json!({"Verb": "get", "Key": key}),
            TxnOp::CheckIndex { key, index } => {
                json!({"Verb": "check-index", "Key": key, "Index": index})
            }
            TxnOp::CheckNotExists { key } => json!({"Verb": "check-not-exists", "Key": key}),
            TxnOp::CheckSession { key, session } => {
                json!({"Verb": "check-session", "Key": key, "Session": session})
            }
            TxnOp::Cas {
                key,
                value,
                flags,
                index,
            } => {
                json!({"Verb": "cas", "Key": key, "Value": b64(value), "Flags": flags, "Index": index})
            }
            TxnOp::Delete { key } => json!({"Verb": "delete", "Key": key}),
            TxnOp::DeleteCas { key, index } => {
                json!({"Verb": "delete-cas", "Key": key, "Index": index})
            }
        };
        json!({ "KV": kv })
    }
}

/// An op of a transaction that failed, as Consul reports it in a 409.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnError {
    /// Which op (0-based).
    pub op_index: usize,
    /// Why, in Consul's words (e.g. `failed to lock key "k", lock is already held`).
    pub what: String,
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied: the entries the ops gave, in op order. Only ops that give an entry add one
    /// (written entries come without their value; deletes and `check-not-exists` give none), as
    /// Consul's state store appends each op's results (`agent/consul/state/txn.go`).
    Applied(Vec<KvEntry>),
    /// Rolled back: nothing applied, for these reasons.
    RolledBack(Vec<TxnError>),
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTxnResponse {
    #[serde(rename = "Results", default)]
    pub(super) results: Option<Vec<RawTxnResult>>,
    #[serde(rename = "Errors", default)]
    pub(super) errors: Option<Vec<RawTxnError>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTxnResult {
    #[serde(rename = "KV", default)]
    pub(super) kv: Option<RawKvEntry>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTxnError {
    #[serde(rename = "OpIndex", default)]
    pub(super) op_index: usize,
    #[serde(rename = "What", default)]
    pub(super) what: String,
}

/// A read result with Consul's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The result.
    pub value: T,
    /// `X-Consul-Index`: pass it back as [`QueryOptions::index`] to block until it changes.
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`.
    pub last_contact: Duration,
}

/// Options of a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Block until the result's index passes this one (ignored when 0 or `None`).
    pub index: Option<u64>,
    /// How long the server may block (default 5 min, at most 10 min).
    pub wait: Option<Duration>,
    /// `?consistent`: the leader confirms its leadership before answering.
    pub consistent: bool,
    /// Deadline of a non-blocking read (default [`super::DEFAULT_REQUEST_TIMEOUT`]).
    pub timeout: Option<Duration>,
}

impl QueryOptions {
    /// A blocking read that returns once the index passes `index` or after `wait`.
    pub fn blocking(index: u64, wait: Duration) -> QueryOptions {
        QueryOptions {
            index: Some(index),
            wait: Some(wait),
            ..QueryOptions::default()
        }
    }

    /// The same options with `?consistent`.
    pub fn consistent(mut self) -> QueryOptions {
        self.consistent = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_request_json() {
        let request = SessionRequest {
            name: "n".into(),
            ttl: Some(Duration::from_secs(15)),
            lock_delay: Duration::ZERO,
            behavior: Behavior::Delete,
            node_checks: Some(vec![]),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Name":"n","TTL":"15s","LockDelay":"0s","Behavior":"delete","NodeChecks":[]})
        );
        let request = SessionRequest {
            ttl: None,
            lock_delay: Duration::from_secs(15),
            node_checks: None,
            ..request
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Name":"n","LockDelay":"15000ms","Behavior":"delete"})
        );
    }

    #[test]
    fn ttls_are_sent_exactly() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(10_900)), "10900ms");
        assert_eq!(go_duration(Duration::new(10, 500)), "10000000500ns");
    }

    #[test]
    fn ttl_only_sessions_are_those_without_checks() {
        let session = |json: &str| serde_json::from_str::<SessionEntry>(json).unwrap();
        // Consul 1.7 and later: the default node check, then none in each form Consul uses.
        assert!(
            !session(r#"{"ID":"a","NodeChecks":["serfHealth"],"ServiceChecks":null}"#).ttl_only()
        );
        assert!(session(r#"{"ID":"a","NodeChecks":[],"ServiceChecks":null}"#).ttl_only());
        assert!(session(r#"{"ID":"a","NodeChecks":null,"ServiceChecks":null}"#).ttl_only());
        assert!(
            !session(r#"{"ID":"a","NodeChecks":[],"ServiceChecks":[{"ID":"web","Namespace":""}]}"#)
                .ttl_only()
        );
        // Before 1.7: `Checks` only.
        assert!(!session(r#"{"ID":"a","Checks":["serfHealth"]}"#).ttl_only());
        assert!(session(r#"{"ID":"a","Checks":[]}"#).ttl_only());
        assert!(session(r#"{"ID":"a"}"#).ttl_only());
    }

    #[test]
    fn kv_entry_decodes_value_and_empty_session() {
        let raw: Vec<RawKvEntry> = serde_json::from_str(
            r#"[{"LockIndex":1,"Key":"k","Flags":3,"Value":"aGk=","CreateIndex":5,"ModifyIndex":6}]"#,
        )
        .unwrap();
        let entry = raw.into_iter().next().unwrap().decode().unwrap();
        assert_eq!(entry.value, b"hi");
        assert_eq!(
            (entry.flags, entry.session, entry.modify_index),
            (3, None, 6)
        );
        let raw: RawKvEntry = serde_json::from_str(r#"{"Key":"k","Value":null}"#).unwrap();
        assert!(raw.decode().unwrap().value.is_empty());
    }
}
