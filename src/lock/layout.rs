//! The key layouts of `consul lock` and Go's `api` package, which consullock shares with them.
//!
//! * **`consul lock PREFIX`** (`api.Lock`, `api/lock.go`): one key, `PREFIX/.lock`, acquired by
//!   the holder's session, with the flags [`LOCK_FLAG_VALUE`] and an empty value. A key at
//!   that path with other flags is refused ("Existing key does not match lock use").
//! * **`consul lock -n N PREFIX`** (`api.Semaphore`, `api/semaphore.go`): each contender writes
//!   its own key `PREFIX/<session>`, acquired by its session; the coordination key
//!   `PREFIX/.lock` holds `{"Limit":N,"Holders":{"<session>":true,...}}` and is only written
//!   by check-and-set. Both carry [`SEMAPHORE_FLAG_VALUE`]. A holder counts only while some key
//!   of the prefix listing is held by its session (`pruneDeadHolders`).
//!
//! Both name their keys with Go's `path.Join`, which cleans the path ([`join`]). The flags are
//! what tells the two layouts (and anyone's data) apart: a lock and a semaphore on one prefix
//! refuse each other's `.lock` key.

use std::collections::BTreeSet;

use crate::consul::KvEntry;

/// `api.LockFlagValue`: the flags of a key used as an `api.Lock`.
pub const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;

/// `api.SemaphoreFlagValue`: the flags of every key of an `api.Semaphore`.
pub const SEMAPHORE_FLAG_VALUE: u64 = 0xe0f6_9a2b_aa41_4de0;

/// `api.DefaultSemaphoreKey`: the coordination key under a prefix, which `consul lock` also
/// uses as its lock key, so that a lock and a semaphore on one prefix conflict.
pub const COORDINATION_KEY: &str = ".lock";

/// Go's `path.Join(prefix, name)`: the parts joined by `/`, with empty and `.` parts dropped
/// and `..` taking the part before it away (`path.Clean`). Consul keys never start with `/`.
pub fn join(prefix: &str, name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in prefix.split('/').chain(name.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// The prefix as `consul lock` takes it from its command line: one leading `/` dropped.
pub fn prefix_of(argument: &str) -> &str {
    argument.strip_prefix('/').unwrap_or(argument)
}

/// The `.lock` key under `prefix`: `consul lock`'s lock key and a semaphore's coordination key.
pub fn coordination_key(prefix: &str) -> String {
    join(prefix, COORDINATION_KEY)
}

/// Whether `entry` is a lock of `consul lock PREFIX`'s layout: the key `PREFIX/.lock`, with
/// `api.Lock`'s flags and the empty value `consul lock` writes. Other programs use `api.Lock`
/// for their own leader keys (with a value, under another name): those are theirs, not locks
/// that `unlock` may release or `status` may call `consul lock`'s.
pub fn is_consul_lock(entry: &KvEntry) -> bool {
    entry.flags == LOCK_FLAG_VALUE
        && entry.value.is_empty()
        && (entry.key == COORDINATION_KEY
            || entry
                .key
                .strip_suffix(COORDINATION_KEY)
                .is_some_and(|prefix| prefix.ends_with('/')))
}

/// A semaphore contender's own key: `prefix/<session>`.
pub fn contender_key(prefix: &str, session: &str) -> String {
    join(prefix, session)
}

/// The value of a semaphore's `.lock` key: its limit and the sessions holding a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreState {
    /// How many holders at most.
    pub limit: u64,
    /// The sessions holding a slot (Go's `map[string]bool`: only the names count).
    pub holders: BTreeSet<String>,
}

impl SemaphoreState {
    /// An empty semaphore with `limit` slots: what a contender starts from when `.lock` is
    /// absent or has no value (`decodeLock`).
    pub fn empty(limit: u64) -> SemaphoreState {
        SemaphoreState {
            limit,
            holders: BTreeSet::new(),
        }
    }

    /// Reads a `.lock` value as Go's `json.Unmarshal` into `{Limit int; Holders
    /// map[string]bool}` would: field names in any case, other fields ignored, a missing or
    /// `null` field left empty. `None` for an empty value (a key written without one); an
    /// error for anything that is not such an object.
    pub fn decode(value: &[u8]) -> Result<Option<SemaphoreState>, String> {
        if value.is_empty() {
            return Ok(None);
        }
        let parsed: serde_json::Value =
            serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
        let object = match parsed {
            serde_json::Value::Object(object) => object,
            serde_json::Value::Null => return Ok(None),
            other => return Err(format!("not a JSON object: {other}")),
        };
        let field = |name: &str| {
            // Go matches an exact name first, then any other case of it.
            object.get(name).or_else(|| {
                object
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
        };
        let limit = match field("Limit") {
            None | Some(serde_json::Value::Null) => 0,
            Some(limit) => limit
                .as_u64()
                .ok_or_else(|| format!("Limit is not a whole number: {limit}"))?,
        };
        let holders = match field("Holders") {
            None | Some(serde_json::Value::Null) => BTreeSet::new(),
            Some(serde_json::Value::Object(holders)) => holders.keys().cloned().collect(),
            Some(other) => return Err(format!("Holders is not an object: {other}")),
        };
        Ok(Some(SemaphoreState { limit, holders }))
    }

    /// The value as Go's `json.Marshal` writes it (`encodeLock`): `Limit` first, holders sorted,
    /// no spaces, `{}` when there are none.
    pub fn encode(&self) -> Vec<u8> {
        let holders: Vec<String> = self
            .holders
            .iter()
            .map(|h| format!("{}:true", serde_json::Value::from(h.as_str())))
            .collect();
        format!(
            "{{\"Limit\":{},\"Holders\":{{{}}}}}",
            self.limit,
            holders.join(",")
        )
        .into_bytes()
    }

    /// Drops every holder that no key of `listing` (the prefix, listed) is held by: its session
    /// is gone, and its contender key with it (`pruneDeadHolders`).
    pub fn prune(&mut self, listing: &[KvEntry]) {
        let alive: BTreeSet<&str> = listing
            .iter()
            .filter_map(|entry| entry.session.as_deref())
            .collect();
        self.holders
            .retain(|holder| alive.contains(holder.as_str()));
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        self.holders.len() as u64 >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_joined_as_go_joins_paths() {
        assert_eq!(coordination_key("service/job"), "service/job/.lock");
        assert_eq!(coordination_key("service/job/"), "service/job/.lock");
        assert_eq!(coordination_key("a//b/./c/../d"), "a/b/d/.lock");
        assert_eq!(contender_key("jobs", "abc"), "jobs/abc");
        assert_eq!(prefix_of("/jobs"), "jobs");
        assert_eq!(prefix_of("//jobs"), "/jobs");
    }

    #[test]
    fn the_state_is_written_as_go_marshals_it() {
        let mut state = SemaphoreState::empty(3);
        assert_eq!(state.encode(), br#"{"Limit":3,"Holders":{}}"#);
        state.holders.insert("b".into());
        state.holders.insert("a".into());
        assert_eq!(
            state.encode(),
            br#"{"Limit":3,"Holders":{"a":true,"b":true}}"#
        );
    }

    #[test]
    fn the_state_is_read_as_go_unmarshals_it() {
        let read = |text: &str| SemaphoreState::decode(text.as_bytes());
        assert_eq!(read(""), Ok(None));
        let state = read(r#"{"limit":2,"HOLDERS":{"x":true,"y":false},"Other":1}"#)
            .unwrap()
            .unwrap();
        assert_eq!(state.limit, 2);
        assert_eq!(state.holders.len(), 2, "presence counts, not the boolean");
        assert_eq!(
            read(r#"{"Limit":2,"Holders":null}"#)
                .unwrap()
                .unwrap()
                .holders
                .len(),
            0
        );
        assert!(read("[1]").is_err());
        assert!(read(r#"{"Limit":"2"}"#).is_err());
        assert!(read("{not json").is_err());
    }

    #[test]
    fn dead_holders_are_pruned() {
        let entry = |key: &str, session: Option<&str>| KvEntry {
            key: key.into(),
            value: Vec::new(),
            flags: SEMAPHORE_FLAG_VALUE,
            session: session.map(Into::into),
            lock_index: 0,
            create_index: 1,
            modify_index: 1,
        };
        let mut state = SemaphoreState::empty(2);
        state.holders.extend(["live".to_owned(), "dead".to_owned()]);
        state.prune(&[entry("p/live", Some("live")), entry("p/.lock", None)]);
        assert_eq!(state.holders.iter().collect::<Vec<_>>(), ["live"]);
        assert!(!state.is_full());
    }
}
