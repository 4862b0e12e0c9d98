//! `--on-before-lock` and `--on-already-locked`: programs run around each attempt to take the
//! lock, with the key as their only argument. Their failures are logged, never fatal, as in
//! consullock 4.2. They run through the supervisor's reaper, the one place in the process that
//! waits for children.

use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use consullock::lock::{AttemptHooks, HookFuture};
use consullock::supervisor::{ChildStatus, run_hook};

/// The hook programs of one `lock` or `execute`.
pub(super) struct CommandHooks {
    before_lock: Vec<OsString>,
    already_locked: Vec<OsString>,
}

impl CommandHooks {
    /// Hooks for the engine, or `None` when no program was given.
    pub(super) fn for_engine(
        before_lock: &[OsString],
        already_locked: &[OsString],
    ) -> Option<Arc<dyn AttemptHooks>> {
        if before_lock.is_empty() && already_locked.is_empty() {
            return None;
        }
        Some(Arc::new(CommandHooks {
            before_lock: before_lock.to_vec(),
            already_locked: already_locked.to_vec(),
        }))
    }
}

impl AttemptHooks for CommandHooks {
    fn before_attempt<'a>(&'a self, key: &'a str) -> HookFuture<'a> {
        Box::pin(run_all(&self.before_lock, key))
    }

    fn already_locked<'a>(&'a self, key: &'a str) -> HookFuture<'a> {
        Box::pin(run_all(&self.already_locked, key))
    }
}

/// Runs each program with `key` as its only argument, one after the other.
async fn run_all(programs: &[OsString], key: &str) {
    for program in programs {
        let shown = program.to_string_lossy();
        match run_hook(program, &[OsStr::new(key)]).await {
            Ok(ChildStatus::Exited(0)) => tracing::debug!(hook = %shown, "hook ran"),
            Ok(status) => tracing::warn!(hook = %shown, "hook failed: {status:?}"),
            Err(e) => tracing::warn!(hook = %shown, "hook could not run: {e}"),
        }
    }
}
