/*!
The exit codes of `consullock`, in one table.

Codes 2–7 and 100 are those of consullock 4.2, so scripts written for it keep working. Once
`execute` has started its command, the command's own exit code wins (128+N when it died of signal
N), as with flock(1), timeout(1) and shells; the codes below are what consullock itself reports.
*/

/// Success.
pub const SUCCESS: i32 = 0;
/// An unexpected internal failure (a bug, or the OS refusing something basic).
pub const INTERNAL: i32 = 1;
/// An environment variable has an invalid value.
pub const INVALID_ENVIRONMENT: i32 = 2;
/// Invalid command-line arguments.
pub const INVALID_ARGUMENTS: i32 = 3;
/// Consul denied permission (ACL).
pub const PERMISSION_DENIED: i32 = 4;
/// Timed out waiting for the lock (`--timeout`).
pub const TIMEOUT: i32 = 5;
/// Invalid key: contains `//` or is not normalised.
pub const INVALID_KEY: i32 = 6;
/// Invalid session TTL (10..=86400 s, or 0) or lock-delay (0..=60 s).
pub const INVALID_SESSION_SETTINGS: i32 = 7;
/// Consul is unreachable or answered an error.
pub const CONSUL_ERROR: i32 = 8;
/// The lock is held by someone else (`--non-blocking`); `--conflict-exit-code` changes it.
pub const NOT_ACQUIRED: i32 = 100;
/// `execute`: the lock was lost and the command stopped; `--lock-lost-exit-code` changes it.
pub const LOCK_LOST: i32 = 101;
/// `execute`: the command was found but cannot be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// `execute`: the command was not found.
pub const NOT_FOUND: i32 = 127;
/// Added to a signal's number when consullock or its command ends because of it.
pub const SIGNAL_BASE: i32 = 128;

/// Every code with its meaning, for `--help` and the README.
pub const TABLE: &[(i32, &str)] = &[
    (
        SUCCESS,
        "success (execute: the command's own exit code once it ran)",
    ),
    (INTERNAL, "unexpected internal error"),
    (
        INVALID_ENVIRONMENT,
        "invalid environment variable (the message names it)",
    ),
    (INVALID_ARGUMENTS, "invalid command-line arguments"),
    (
        PERMISSION_DENIED,
        "permission denied by Consul: check CONSUL_HTTP_TOKEN",
    ),
    (TIMEOUT, "timed out waiting for the lock (--timeout)"),
    (INVALID_KEY, "invalid key: contains // or is not normalised"),
    (
        INVALID_SESSION_SETTINGS,
        "invalid session TTL (10..=86400 s or 0) or lock-delay (0..=60 s)",
    ),
    (CONSUL_ERROR, "Consul unreachable or answered an error"),
    (
        NOT_ACQUIRED,
        "lock held elsewhere (--non-blocking); see --conflict-exit-code",
    ),
    (
        LOCK_LOST,
        "execute: lock lost, command stopped; see --lock-lost-exit-code",
    ),
    (CANNOT_EXECUTE, "execute: command cannot be executed"),
    (NOT_FOUND, "execute: command not found"),
    (
        SIGNAL_BASE,
        "+N: ended by signal N (130 SIGINT, 143 SIGTERM)",
    ),
];

/// The exit code for death by `signal`.
pub fn from_signal(signal: i32) -> i32 {
    SIGNAL_BASE + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<i32> = TABLE.iter().map(|(code, _)| *code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }
}
