//! Finding locks and releasing anyone's: `find`, `find -r`, `unlock`, `unlock -r`.
//!
//! Only consullock's locks are released (this tool's or 4.2's JSON): a held key with other data
//! may be another program's leader lock. Regular expressions are matched against the key names
//! listed under their literal prefix, and only the matching keys are read, one by one: a prefix
//! may hold far more data than locks. The entries of a lock's waiter queue (`queue.rs`) are not
//! locks and are skipped.

use crate::consul::{Client, ConsulError, KvEntry, QueryOptions};

use super::value::LockInfo;
use super::{layout, queue};

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
/// literal prefix without their values (a prefix may hold far more data than locks). The
/// `PREFIX/.lock` of a matching PREFIX counts as matching too: that is where `consul lock`'s
/// layouts keep the lock on PREFIX. Entries of lock queues are left out.
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
        .filter(|key| {
            let lock_of_match = key
                .strip_suffix("/.lock")
                .is_some_and(|prefix| anchored.is_match(prefix));
            (anchored.is_match(key) || lock_of_match) && !queue::is_queue_key(key)
        })
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
///
/// `consul lock`'s layouts are understood too (see [`super::layout`]): when `key` itself is
/// not a held lock (absent, free, or someone's data: a prefix often holds data), its
/// `key/.lock` is looked at. An empty `.lock` with `api.Lock`'s flags is `consul lock`'s lock,
/// whoever took it: its session is destroyed. A semaphore's (`key` its prefix, or its `.lock`)
/// frees the slots of consullock's own contenders, whose keys name their session (every slot
/// with `force`), and takes them out of `.lock`.
pub async fn unlock(client: &Client, key: &str, force: bool) -> Result<Unlocked, ConsulError> {
    let own = match find(client, key).await? {
        Some(found) => unlock_entry(client, &found, force).await?,
        None => Unlocked::NotHeld,
    };
    // Released; or held by another program, whose session may hold `key/.lock` too: it is
    // left alone as a whole unless forced.
    if own == Unlocked::Released || (own == Unlocked::NotALock && !force) {
        return Ok(own);
    }
    let dot_lock = match find(client, &layout::coordination_key(key)).await? {
        // Flags 0: someone's data, no lock of `key`.
        Some(found) if found.entry.flags != 0 => unlock_entry(client, &found, force).await?,
        _ => Unlocked::NotHeld,
    };
    Ok(match (own, dot_lock) {
        (_, Unlocked::Released) => Unlocked::Released,
        (Unlocked::NotALock, _) | (_, Unlocked::NotALock) => Unlocked::NotALock,
        _ => Unlocked::NotHeld,
    })
}

/// Releases the lock `found` is, by its flags: `consul lock`'s, a semaphore's (its `.lock` or
/// one contender's key), or a key of consullock's own layout.
async fn unlock_entry(
    client: &Client,
    found: &FoundLock,
    force: bool,
) -> Result<Unlocked, ConsulError> {
    match found.entry.flags {
        layout::LOCK_FLAG_VALUE if layout::is_consul_lock(&found.entry) => {
            match found.holder.as_deref() {
                Some(session) => {
                    client
                        .session_destroy(session, crate::session::DESTROY_TIMEOUT)
                        .await?;
                    tracing::info!(key = %found.key, session, "consul lock released by destroying its session");
                    Ok(Unlocked::Released)
                }
                None => Ok(Unlocked::NotHeld),
            }
        }
        layout::SEMAPHORE_FLAG_VALUE => match found.key.strip_suffix("/.lock") {
            Some(prefix) => unlock_semaphore(client, prefix, &found.key, force).await,
            // One contender's key: that slot, as a lock of its own (the next contender prunes
            // it from `.lock`).
            None => unlock_found(client, found, force).await,
        },
        _ => unlock_found(client, found, force).await,
    }
}

/// Frees the slots of the semaphore at `prefix` (see [`unlock`]).
async fn unlock_semaphore(
    client: &Client,
    prefix: &str,
    coordination: &str,
    force: bool,
) -> Result<Unlocked, ConsulError> {
    let listing = client.kv_list(prefix, &QueryOptions::default()).await?;
    let Some(entry) = listing.value.iter().find(|e| e.key == coordination) else {
        return Ok(Unlocked::NotHeld);
    };
    let Ok(Some(mut state)) = layout::SemaphoreState::decode(&entry.value) else {
        return Ok(Unlocked::NotALock);
    };
    if state.limit == 0 {
        // No semaphore stores a limit of 0: someone's data under the semaphore's flags.
        return Ok(Unlocked::NotALock);
    }
    let stored = state.clone();
    state.prune(&listing.value);
    let mut released = Vec::new();
    let mut left_alone = false;
    for holder in &state.holders {
        let contender = layout::contender_key(prefix, holder);
        let ours = listing.value.iter().any(|e| {
            e.key == contender
                && e.session.as_deref() == Some(holder)
                && LockInfo::parse(&e.value).is_some_and(|info| info.session == *holder)
        });
        if !ours && !force {
            left_alone = true;
            continue;
        }
        client
            .session_destroy(holder, crate::session::DESTROY_TIMEOUT)
            .await?;
        tracing::info!(key = %prefix, session = %holder, "semaphore slot released by destroying its session");
        released.push(holder.clone());
    }
    // Released and dead holders leave `.lock` only once no lock-delay guards their contender
    // key: a holder may still be stopping its command, and consullock's contenders leave its
    // slot taken until then (they prune it afterwards). A `.lock` left with no holder is
    // deleted, as Go's `Destroy` does; else it is rewritten. Both by check-and-set.
    if entry.session.is_none() {
        let gone: Vec<String> = stored
            .holders
            .iter()
            .filter(|h| !state.holders.contains(*h) || released.contains(*h))
            .cloned()
            .collect();
        let answers = super::semaphore::probe_contenders(client, prefix, &gone).await?;
        let mut remaining = stored.clone();
        for (holder, answer) in gone.iter().zip(&answers) {
            if *answer == super::lock_delay::LockDelay::NotInForce {
                remaining.holders.remove(holder);
            }
        }
        if remaining.holders.len() < stored.holders.len() || stored.holders.is_empty() {
            let encoded = remaining.encode();
            let replacement = (!remaining.holders.is_empty()).then_some(encoded.as_slice());
            let index = entry.modify_index;
            let done =
                super::semaphore::write_coordination(client, coordination, index, replacement);
            if let Err(e) = done.await {
                tracing::debug!(key = %coordination, "cannot tidy the semaphore's holders: {e}");
            }
        }
        let kept = gone.len() - (stored.holders.len() - remaining.holders.len());
        if kept > 0 {
            tracing::info!(key = %coordination, kept, "holders under a lock-delay stay in .lock until it has passed");
        }
    }
    Ok(match (released.is_empty(), left_alone) {
        (false, _) => Unlocked::Released,
        (true, true) => Unlocked::NotALock,
        (true, false) => Unlocked::NotHeld,
    })
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
///
/// Each matching key is released as what it is, so a key locked in consullock's layout and its
/// `KEY/.lock` held in `consul lock`'s are both released. A `.lock` of `consul lock`'s layouts
/// (its flags say which) is reported by its prefix, as `unlock PREFIX` takes it, and a
/// semaphore's contender keys (`PREFIX/<session id>`) are left to its `.lock`. The lists are
/// sorted, each name once.
pub async fn unlock_regex(
    client: &Client,
    pattern: &regex::Regex,
    force: bool,
) -> Result<UnlockedKeys, ConsulError> {
    let mut unlocked = UnlockedKeys::default();
    let keys = find_keys(client, pattern).await?;
    let prefixes: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_suffix("/.lock"))
        .collect();
    for key in &keys {
        let contender = prefixes.iter().any(|p| {
            key.strip_prefix(p)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| uuid::Uuid::try_parse(name).is_ok())
        });
        if contender {
            continue;
        }
        // Gone since it was listed: nothing to release.
        let Some(found) = find(client, key).await? else {
            continue;
        };
        let name = match key.strip_suffix("/.lock") {
            Some(prefix)
                if layout::is_consul_lock(&found.entry)
                    || found.entry.flags == layout::SEMAPHORE_FLAG_VALUE =>
            {
                prefix
            }
            _ => key.as_str(),
        };
        match unlock_entry(client, &found, force).await? {
            Unlocked::Released => unlocked.released.push(name.to_owned()),
            Unlocked::NotALock => unlocked.not_locks.push(name.to_owned()),
            Unlocked::NotHeld => {}
        }
    }
    for list in [&mut unlocked.released, &mut unlocked.not_locks] {
        list.sort();
        list.dedup();
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
