/*!
The one error type of the consullock library. What each error means for a program's exit code is
the command line's business (`src/cli/exit.rs`), not the library's.
*/

use crate::config::ConfigError;
use crate::consul::ConsulError;
use crate::key::InvalidKey;
use crate::lock::{AcquireError, Refusal, ReleaseError};

/// Everything that can go wrong in consullock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable has an invalid value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Invalid command-line arguments or options.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// An invalid lock key.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
    /// An invalid session TTL or lock-delay.
    #[error("{0}")]
    InvalidSessionSettings(String),
    /// Settings under which the lock cannot be kept safely (the kill grace does not fit before
    /// another holder could get the lock, or renewals cannot keep up): the message says which
    /// setting to change.
    #[error("unsafe settings: {0}")]
    UnsafeSettings(String),
    /// Consul failed.
    #[error("{}", consul_message(.0))]
    Consul(#[from] ConsulError),
    /// The lock was not granted and only one attempt was allowed.
    #[error("unable to acquire lock: {key} ({refusal})")]
    NotAcquired {
        /// The key.
        key: String,
        /// Why: held by another session, or under a lock-delay.
        refusal: Refusal,
    },
    /// The key holds data that is not a consullock lock: it was left untouched.
    #[error(
        "refusing to lock {key}: it holds data that is not a consullock lock ({what}); choose another key"
    )]
    NotALock {
        /// The key.
        key: String,
        /// What it holds.
        what: String,
    },
    /// A semaphore's `.lock` stores another limit than ours.
    #[error(
        "semaphore limit conflict on {key}: it allows {stored} holders, this contender asked \
         for {asked}; every contender of a semaphore must use the same -n"
    )]
    LimitConflict {
        /// The `.lock` key.
        key: String,
        /// The limit it stores.
        stored: u64,
        /// Ours.
        asked: u32,
    },
    /// The lock could not be released; it stays held until its session ends.
    #[error(transparent)]
    NotReleased(Box<ReleaseError>),
    /// The wait for the lock timed out.
    #[error("timed out after {:.1}s waiting for the lock {key}", .waited.as_secs_f64())]
    Timeout {
        /// The key.
        key: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A signal ended the operation.
    #[error("interrupted by signal {signal}")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// The operating system refused something basic (signal handlers, a runtime).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn consul_message(error: &ConsulError) -> String {
    match error {
        ConsulError::PermissionDenied { .. } => format!(
            "{error}; check CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE): the token needs \
             session:write and key:write on the lock's key"
        ),
        _ => error.to_string(),
    }
}

impl From<ReleaseError> for Error {
    fn from(error: ReleaseError) -> Error {
        Error::NotReleased(Box::new(error))
    }
}

impl From<AcquireError> for Error {
    fn from(error: AcquireError) -> Error {
        match error {
            AcquireError::NotAcquired { key, refusal } => Error::NotAcquired { key, refusal },
            AcquireError::NotALock { key, what } => Error::NotALock { key, what },
            AcquireError::TimedOut { key, waited } => Error::Timeout { key, waited },
            // The caller that cancelled knows which signal did it and reports that instead.
            AcquireError::Cancelled { .. } => Error::Interrupted { signal: 0 },
            AcquireError::LimitConflict { key, stored, asked } => {
                Error::LimitConflict { key, stored, asked }
            }
            AcquireError::Consul(e) => Error::Consul(e),
        }
    }
}
