//! Finding locks and releasing anyone's: `find`, `find -r`, `unlock`, `unlock -r`.
//!
//! Only consullock's locks are released (this tool's or 4.2's JSON): a held key with other data
//! may be another program's leader lock. Regular expressions are matched against the key names
//! listed under their literal prefix, and only the matching keys are read, one by one: a prefix
//! may hold far more data than locks. The entries of a lock's waiter queue (`queue.rs`) are not
//! locks and are skipped.

use crate::consul::{Client, ConsulError, KvEntry, QueryOptions};

use super::queue;
use super::value::LockInfo;

/// A key found by [`find`] or [`find_regex`]: its lock information when its value is a lock's
/// JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundLock {
    /// The key.
    pub key: String,
    /// The session holding the key, if any.
    pub holder: Option<String>,
    /// The parsed value, when it is a lock's JSON.
    pub info: Option<LockInfo>,
    /// The raw entry.
    pub entry: KvEntry,
}

impl FoundLock {
    fn from_entry(entry: KvEntry) -> FoundLock {
        FoundLock {
            key: entry.key.clone(),
            holder: entry.session.clone(),
            info: LockInfo::parse(&entry.value),
            entry,
        }
    }
}

/// The lock on `key`, if the key exists.
pub async fn find(client: &Client, key: &str) -> Result<Option<FoundLock>, ConsulError> {
    let read = client.kv_get(key, &QueryOptions::default()).await?;
    Ok(read.value.map(FoundLock::from_entry))
}

/// The names of every key that fully matches `pattern`, sorted: listed under the pattern's
/// literal prefix without their values (a prefix may hold far more data than locks). Entries of
/// lock queues are left out.
pub async fn find_keys(
    client: &Client,
    pattern: &regex::Regex,
) -> Result<Vec<String>, ConsulError> {
    let prefix = literal_prefix(pattern.as_str());
    let anchored = regex::Regex::new(&format!("^(?:{})$", pattern.as_str()))
        .unwrap_or_else(|_| pattern.clone());
    let listed = client
        .kv_keys(&prefix, None, &QueryOptions::default())
        .await?;
    let mut keys: Vec<String> = listed
        .value
        .into_iter()
        .filter(|key| anchored.is_match(key) && !queue::is_queue_key(key))
        .collect();
    keys.sort();
    Ok(keys)
}

/// Every key that fully matches `pattern`, sorted, read one by one.
pub async fn find_regex(
    client: &Client,
    pattern: &regex::Regex,
) -> Result<Vec<FoundLock>, ConsulError> {
    let mut found = Vec::new();
    for key in find_keys(client, pattern).await? {
        if let Some(lock) = find(client, &key).await? {
            found.push(lock);
        }
    }
    Ok(found)
}

/// What [`unlock`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlocked {
    /// The session holding the lock was destroyed.
    Released,
    /// Nobody held it (or the key does not exist).
    NotHeld,
    /// The key holds something that is not a consullock lock, and it was left alone.
    NotALock,
}

/// Releases anyone's lock on `key` by destroying the session that holds it, as consullock 4.2
/// does: Consul then applies that session's lock-delay before the next holder can acquire,
/// which gives a live holder time to notice and stop. A key whose value is not a consullock lock
/// is left alone unless `force`: its session may be another program's leader lock.
pub async fn unlock(client: &Client, key: &str, force: bool) -> Result<Unlocked, ConsulError> {
    match find(client, key).await? {
        Some(found) => unlock_found(client, &found, force).await,
        None => Ok(Unlocked::NotHeld),
    }
}

async fn unlock_found(
    client: &Client,
    found: &FoundLock,
    force: bool,
) -> Result<Unlocked, ConsulError> {
    // The key's Session is the real holder; a lock written by either tool names it in its JSON
    // too. A value that names another session is not that session's lock: destroying the
    // holder would take whatever else that session holds (another program's leader key).
    let Some(session) = found.holder.as_deref() else {
        return Ok(Unlocked::NotHeld);
    };
    let ours = found
        .info
        .as_ref()
        .is_some_and(|info| info.session == session);
    if !ours && !force {
        return Ok(Unlocked::NotALock);
    }
    client
        .session_destroy(session, crate::session::DESTROY_TIMEOUT)
        .await?;
    tracing::info!(key = %found.key, session, "lock released by destroying its session");
    Ok(Unlocked::Released)
}

/// What [`unlock_regex`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnlockedKeys {
    /// Keys whose lock was released, sorted.
    pub released: Vec<String>,
    /// Held keys left alone because their value is not a consullock lock, sorted.
    pub not_locks: Vec<String>,
}

/// Releases every held lock whose key fully matches `pattern` (see [`unlock`] for `force`).
pub async fn unlock_regex(
    client: &Client,
    pattern: &regex::Regex,
    force: bool,
) -> Result<UnlockedKeys, ConsulError> {
    let mut unlocked = UnlockedKeys::default();
    for key in find_keys(client, pattern).await? {
        match unlock(client, &key, force).await? {
            Unlocked::Released => unlocked.released.push(key),
            Unlocked::NotALock => unlocked.not_locks.push(key),
            Unlocked::NotHeld => {}
        }
    }
    Ok(unlocked)
}

/// The literal text every match of `pattern` starts with, used as the KV prefix to list.
pub fn literal_prefix(pattern: &str) -> String {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return String::new();
    };
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(&hir);
    let Some(literals) = seq.literals() else {
        return String::new();
    };
    let mut prefix: Option<&[u8]> = None;
    for literal in literals {
        let bytes = literal.as_bytes();
        prefix = Some(match prefix {
            None => bytes,
            Some(p) => {
                let common = p.iter().zip(bytes).take_while(|(a, b)| a == b).count();
                &p[..common]
            }
        });
    }
    let prefix = prefix.unwrap_or_default();
    // Cut at a char boundary: a literal can end inside a multi-byte character.
    let mut end = prefix.len();
    while end > 0 && std::str::from_utf8(&prefix[..end]).is_err() {
        end -= 1;
    }
    String::from_utf8_lossy(&prefix[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        let cases = [
            ("my/lock-.*", "my/lock-"),
            ("my/lock", "my/lock"),
            ("my/(a|b)", "my/"),
            ("my/a?", "my/"),
            (".*", ""),
            ("a\\.b/.+", "a.b/"),
            ("[ab]/c", ""),
        ];
        for (pattern, prefix) in cases {
            assert_eq!(literal_prefix(pattern), prefix, "{pattern}");
        }
    }
}
