//! What consullock writes in Consul: the lock value (consullock 4.2's JSON, so both tools share
//! keys), and the value of a waiter's entry in a lock's queue.

use serde::{Deserialize, Serialize};

/// The information stored in a lock key, and printed by `consullock lock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// When the lock was taken: ISO-8601 UTC without zone, as consullock 4.2 writes it.
    pub created: String,
    /// The lock key.
    pub key: String,
    /// User metadata (`--metadata`), any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Seconds spent acquiring.
    #[serde(rename = "secondsToLock")]
    pub seconds_to_lock: f64,
    /// The session holding the lock.
    pub session: String,
    /// Host of the holder (consullock 4.2 does not write it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Process id of the holder (consullock 4.2 does not write it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl LockInfo {
    /// Parses a key's value; `None` when it is not a lock's JSON.
    pub fn parse(value: &[u8]) -> Option<LockInfo> {
        serde_json::from_slice(value).ok()
    }

    /// The value to store: pretty-printed with sorted keys, as consullock 4.2 stores it.
    pub fn to_value(&self) -> Vec<u8> {
        // serde_json's map keeps keys sorted (no `preserve_order`), so going through a Value
        // sorts them.
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        serde_json::to_vec_pretty(&value).unwrap_or_default()
    }
}

/// Whether a key's value is a lock that consullock (this one, or 4.2) wrote.
pub fn is_lock_value(value: &[u8]) -> bool {
    LockInfo::parse(value).is_some()
}

/// The current time as consullock 4.2 writes it: `2017-11-30T14:55:49.322108`.
pub fn timestamp_now() -> String {
    let text = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    text.trim_end_matches('Z').to_owned()
}

/// The value of a waiter's entry in a lock's queue (see `queue.rs`): who waits, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The lock key the waiter waits for.
    #[serde(rename = "consullockQueueFor")]
    pub queue_for: String,
    /// The waiter's session.
    pub session: String,
    /// When it joined: ISO-8601 UTC without zone.
    pub since: String,
    /// Host of the waiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Process id of the waiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl QueueEntry {
    /// Parses a key's value; `None` when it is not a queue entry.
    pub fn parse(value: &[u8]) -> Option<QueueEntry> {
        serde_json::from_slice(value).ok()
    }

    /// The value to store (compact JSON).
    pub fn to_value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_python_compatible_json() {
        let info = LockInfo {
            created: "2017-11-30T14:55:49.322108".into(),
            key: "my/lock".into(),
            metadata: Some(serde_json::json!({"testing": 123})),
            seconds_to_lock: 0.5,
            session: "9b92744f-f1a9-db12-7873-ad44af5ae224".into(),
            hostname: None,
            pid: None,
        };
        let value: serde_json::Value = serde_json::from_slice(&info.to_value()).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["created", "key", "metadata", "secondsToLock", "session"]
        );
        // A value written by consullock 4.2 parses.
        let python = br#"{
    "created": "2017-12-05T12:26:13.717995",
    "key": "my/lock",
    "metadata": null,
    "secondsToLock": 4.327880731027108,
    "session": "6ad662de-6e0c-8e0f-d92c-5fface60c49b"
}"#;
        let parsed = LockInfo::parse(python).unwrap();
        assert_eq!(parsed.session, "6ad662de-6e0c-8e0f-d92c-5fface60c49b");
        assert_eq!(LockInfo::parse(b"not json"), None);
    }

    #[test]
    fn timestamps_have_microseconds_and_no_zone() {
        let now = timestamp_now();
        assert_eq!(now.len(), "2017-11-30T14:55:49.322108".len(), "{now}");
        assert!(!now.ends_with('Z'));
    }
}
