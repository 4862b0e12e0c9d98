/*!
Lock keys: the validation rules of consullock 4.2, so that both tools agree on what a key is.

A key must not contain `//` and must already be normalised: no `.` or `..` segment, no leading or
trailing `/`. A key that breaks a rule is refused (exit code 6) with the normalised key to use,
rather than silently rewritten, because two tools that rewrote keys differently would lock
different keys while their users believe they share one.
*/

/// A key that cannot be used, with the key to use instead where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key {key:?}: {reason}{}", suggestion(.normalized))]
pub struct InvalidKey {
    /// The key as given.
    pub key: String,
    /// Why it is refused.
    pub reason: &'static str,
    /// The normalised key, when there is a non-empty one.
    pub normalized: Option<String>,
}

fn suggestion(normalized: &Option<String>) -> String {
    match normalized {
        Some(key) => format!("; use {key:?}"),
        None => String::new(),
    }
}

/// A lock key that passed [`validate_key`]: code that takes one need not check it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockKey(String);

impl LockKey {
    /// `key`, if it is a valid, normalised lock key.
    pub fn new(key: &str) -> Result<LockKey, InvalidKey> {
        validate_key(key)?;
        Ok(LockKey(key.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for LockKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `key` is a valid, normalised lock key.
pub fn validate_key(key: &str) -> Result<(), InvalidKey> {
    let normalized = normalize_key(key);
    let invalid = |reason| InvalidKey {
        key: key.to_owned(),
        reason,
        normalized: Some(normalized.clone()).filter(|n| !n.is_empty()),
    };
    if key.is_empty() {
        return Err(invalid("the key is empty"));
    }
    if key.contains("//") {
        return Err(invalid("it contains \"//\""));
    }
    if normalized.is_empty() {
        return Err(invalid("it names no key"));
    }
    if normalized != key {
        return Err(invalid("it is not normalised"));
    }
    Ok(())
}

/// The normalised form of a key: `.` segments dropped, `..` resolved, empty segments and outer
/// slashes removed.
pub fn normalize_key(key: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in key.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    segments.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_keys() {
        for key in ["a", "my/lock", "a.b/c-d_e", "service/x/.lock", "ünï/cødé"] {
            assert_eq!(validate_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn invalid_keys_suggest_the_normalised_key() {
        let cases = [
            ("a//b", Some("a/b")),
            ("a/../b", Some("b")),
            ("a/./b", Some("a/b")),
            ("a/b/", Some("a/b")),
            ("/a/b", Some("a/b")),
            ("", None),
            ("/", None),
            ("..", None),
        ];
        for (key, normalized) in cases {
            let err = validate_key(key).unwrap_err();
            assert_eq!(err.normalized.as_deref(), normalized, "{key}");
        }
        let message = validate_key("a//b").unwrap_err().to_string();
        assert!(message.contains("use \"a/b\""), "{message}");
    }
}
