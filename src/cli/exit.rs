/*!
The exit codes of `consullock`, in one table.

Codes 2–7 and 100 are those of consullock 4.2, so scripts written for it keep working. Once
`execute` has started its command, the command's own exit code wins (128+N when it died of signal
N), as with flock(1), timeout(1) and shells; the codes below are what consullock itself reports.
*/

use consullock::Error;
use consullock::consul::ConsulError;
use consullock::supervisor::{Outcome, SpawnFailure};

/// Success.
pub(crate) const SUCCESS: i32 = 0;
/// An unexpected internal failure (a bug, or the OS refusing something basic).
pub(crate) const INTERNAL: i32 = 1;
/// An environment variable has an invalid value.
pub(crate) const INVALID_ENVIRONMENT: i32 = 2;
/// Invalid command-line arguments.
pub(crate) const INVALID_ARGUMENTS: i32 = 3;
/// Consul denied permission (ACL).
pub(crate) const PERMISSION_DENIED: i32 = 4;
/// Timed out waiting for the lock (`--timeout`).
pub(crate) const TIMEOUT: i32 = 5;
/// Invalid key: contains `//` or is not normalised.
pub(crate) const INVALID_KEY: i32 = 6;
/// Invalid session TTL (10..=86400 s, or 0) or lock-delay (0..=60 s).
pub(crate) const INVALID_SESSION_SETTINGS: i32 = 7;
/// Consul is unreachable or answered an error.
pub(crate) const CONSUL_ERROR: i32 = 8;
/// The key holds data that is not a consullock lock: it was left untouched.
pub(crate) const NOT_A_LOCK: i32 = 9;
/// A semaphore's `.lock` stores another limit than `-n`.
pub(crate) const LIMIT_CONFLICT: i32 = 10;
/// The lock is held by someone else (`--non-blocking`); `--conflict-exit-code` changes it.
pub(crate) const NOT_ACQUIRED: i32 = 100;
/// `execute`: the lock was lost and the command stopped; `--lock-lost-exit-code` changes it.
pub(crate) const LOCK_LOST: i32 = 101;
/// `execute`: the command was found but cannot be executed.
pub(crate) const CANNOT_EXECUTE: i32 = 126;
/// `execute`: the command was not found.
pub(crate) const NOT_FOUND: i32 = 127;
/// Added to a signal's number when consullock or its command ends because of it.
pub(crate) const SIGNAL_BASE: i32 = 128;

/// Every code with its meaning, in Markdown: the README shows this table, `--help` shows it
/// without the backticks.
pub(crate) const TABLE: &[(i32, &str)] = &[
    (
        SUCCESS,
        "success (`execute`: the command's own exit code once it ran)",
    ),
    (INTERNAL, "unexpected internal error"),
    (
        INVALID_ENVIRONMENT,
        "invalid environment variable (the message names it)",
    ),
    (INVALID_ARGUMENTS, "invalid command-line arguments"),
    (
        PERMISSION_DENIED,
        "permission denied by Consul: check `CONSUL_HTTP_TOKEN`",
    ),
    (TIMEOUT, "timed out waiting for the lock (`--timeout`)"),
    (
        INVALID_KEY,
        "invalid key: contains `//` or is not normalised (the message gives the key to use)",
    ),
    (
        INVALID_SESSION_SETTINGS,
        "invalid session TTL (10..=86400 s, or 0) or lock-delay (0..=60 s)",
    ),
    (
        CONSUL_ERROR,
        "Consul unreachable or answered an error (the message names the address and the status); `execute`: the command succeeded but the lock could not be released",
    ),
    (
        NOT_A_LOCK,
        "the key holds data that is not a consullock lock: it was left untouched (`lock`, `execute`, and `unlock` without `--force`)",
    ),
    (
        LIMIT_CONFLICT,
        "`-n N`: the semaphore's `KEY/.lock` allows another number of holders (every contender must use the same N)",
    ),
    (
        NOT_ACQUIRED,
        "lock held elsewhere, or every slot of the semaphore taken (`--non-blocking`); see `--conflict-exit-code`",
    ),
    (
        LOCK_LOST,
        "`execute`: the lock was lost and the command stopped; see `--lock-lost-exit-code`",
    ),
    (CANNOT_EXECUTE, "`execute`: the command cannot be executed"),
    (NOT_FOUND, "`execute`: the command was not found"),
    (SIGNAL_BASE, "ended by signal N (130 SIGINT, 143 SIGTERM)"),
];

/// The exit code for death by `signal`.
pub(crate) fn from_signal(signal: i32) -> i32 {
    SIGNAL_BASE + signal
}

/// The exit code for how a command ended, as shells report it: its own code, 128+N for signal
/// N, 127/126 when it could not be started. (A lost lock has its own, configurable code, which
/// the caller decides.)
pub(crate) fn of_outcome(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Exited(code) => *code,
        Outcome::Signaled(signal) | Outcome::NotStarted { signal } => from_signal(signal.as_raw()),
        Outcome::SpawnFailed { failure, .. } => match failure {
            SpawnFailure::NotFound => NOT_FOUND,
            SpawnFailure::CannotExecute => CANNOT_EXECUTE,
        },
        Outcome::LockLost { .. } => LOCK_LOST,
    }
}

/// The exit code for a library error: the one mapping from errors to codes.
pub(crate) fn of_error(error: &Error) -> i32 {
    match error {
        Error::Config(_) => INVALID_ENVIRONMENT,
        Error::InvalidArguments(_) => INVALID_ARGUMENTS,
        Error::InvalidKey(_) => INVALID_KEY,
        Error::InvalidSessionSettings(_) => INVALID_SESSION_SETTINGS,
        Error::UnsafeSettings(_) => INVALID_ARGUMENTS,
        Error::NotALock { .. } => NOT_A_LOCK,
        Error::LimitConflict { .. } => LIMIT_CONFLICT,
        Error::NotReleased(_) => CONSUL_ERROR,
        Error::Consul(ConsulError::PermissionDenied { .. }) => PERMISSION_DENIED,
        Error::Consul(_) => CONSUL_ERROR,
        Error::NotAcquired { .. } => NOT_ACQUIRED,
        Error::Timeout { .. } => TIMEOUT,
        Error::Interrupted { signal } => from_signal(*signal),
        Error::Io(_) => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's exit-code table and this one say the same: every code with the same meaning,
    /// and no code that is not here.
    #[test]
    fn readme_shows_this_table() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme
            .find("## Exit codes")
            .expect("README has an exit-code table")..];
        let rows: Vec<(String, String)> = section
            .lines()
            .skip_while(|line| !line.starts_with("| code"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].to_owned(), cells[1].to_owned())
            })
            .collect();
        let expected: Vec<(String, String)> = TABLE
            .iter()
            .map(|(code, meaning)| {
                let code = if *code == SIGNAL_BASE {
                    "128+N".to_owned()
                } else {
                    code.to_string()
                };
                (code, meaning.to_string())
            })
            .collect();
        assert_eq!(
            rows, expected,
            "README's exit-code table differs from exit::TABLE"
        );
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<i32> = TABLE.iter().map(|(code, _)| *code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }
}
