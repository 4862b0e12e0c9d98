/*!
`consullock execute`: the command line's side of [`consullock::execute`]: settings from the
options, the command from its words, and the exit code from the outcome.
*/

use std::ffi::OsString;

use consullock::Error;
use consullock::execute::{ExecuteSettings, execute_locked};
use consullock::key::LockKey;
use consullock::session::{DEFAULT_LOCK_DELAY, DEFAULT_SESSION_TTL, forced_release_risk};
use consullock::supervisor::{self, ChildCommand, Outcome, Signals};

use super::args::ExecuteArgs;
use super::{acquire_options, client_from_env, exit, say, seconds, session_settings};

/// Runs `execute` from the command line; `direct` is true for the `-- PROG ARGS` form (no
/// shell). Returns the exit code.
pub(super) async fn run(args: ExecuteArgs, direct: bool) -> Result<i32, Error> {
    let key = LockKey::new(&args.lock.key)?;
    let session = session_settings(&args.lock, DEFAULT_SESSION_TTL, DEFAULT_LOCK_DELAY)?;
    let acquire = acquire_options(&args.lock, true)?;
    let kill_grace = seconds("--kill-grace", args.kill_grace, MAX_KILL_GRACE)
        .map_err(Error::InvalidArguments)?;
    let contain = if args.contain {
        if !supervisor::contain::can_contain() {
            return Err(Error::InvalidArguments(
                "--contain needs the right to create a PID namespace (CAP_SYS_ADMIN, e.g. root)"
                    .into(),
            ));
        }
        Some(std::env::current_exe()?)
    } else {
        None
    };
    let settings = ExecuteSettings::new(session, acquire, kill_grace, contain)?;
    if let Some(risk) = forced_release_risk(settings.session(), kill_grace) {
        tracing::warn!("{risk}");
    }
    if !settings.layout().lock_delay_protects() {
        let how = if settings.session().ttl_only {
            "an unlock by force"
        } else {
            "an unlock by force or a failed node check (--ttl-only rules that out)"
        };
        tracing::info!(
            "a semaphore slot is kept by its lock-delay from consullock's contenders only: \
             after {how}, a `consul lock -n` contender can take the slot while the command is \
             still being stopped"
        );
    }
    let command = child_command(args.command, direct)?;
    let client = client_from_env()?;

    // Before anything can be spawned or waited for (see the module docs).
    let mut signals = Signals::install()?;
    if args.subreaper {
        supervisor::become_subreaper()?;
    }

    let executed = match execute_locked(&client, &key, &settings, command, &mut signals).await {
        Ok(executed) => executed,
        Err(error @ (Error::NotAcquired { .. } | Error::Timeout { .. })) => {
            // stdout belongs to the command, even when it did not run: no `null` here.
            return match args.conflict_exit_code {
                Some(code) => {
                    say(&error.to_string());
                    Ok(i32::from(code))
                }
                None => Err(error),
            };
        }
        Err(error) => return Err(error),
    };
    let code = match &executed.outcome {
        Outcome::Exited(_) | Outcome::Signaled(_) => exit::of_outcome(&executed.outcome),
        Outcome::SpawnFailed { error, .. } => {
            say(&format!("cannot run the command: {error}"));
            exit::of_outcome(&executed.outcome)
        }
        Outcome::NotStarted { signal } => {
            say(&format!(
                "{signal} received before the command started: it was not started"
            ));
            exit::of_outcome(&executed.outcome)
        }
        Outcome::LockLost { child } => {
            let reason = executed
                .loss
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "unknown".into());
            let stopped = if child.is_none() {
                "the command was not started".to_owned()
            } else if executed.survivors.is_empty() {
                "the command was stopped".to_owned()
            } else {
                format!(
                    "the command was stopped, but processes {:?} of it still run after SIGKILL",
                    executed.survivors
                )
            };
            say(&format!("lock lost on {key}: {reason}; {stopped}"));
            i32::from(args.lock_lost_exit_code)
        }
    };
    if !executed.survivors.is_empty() && !matches!(executed.outcome, Outcome::LockLost { .. }) {
        say(&format!(
            "processes {:?} of the command still run after SIGKILL",
            executed.survivors
        ));
    }
    match executed.release {
        Ok(()) => Ok(code),
        Err(error) if executed.loss.is_some() => {
            // The lock was lost already; only its session could not be destroyed.
            tracing::warn!("{error}");
            Ok(code)
        }
        Err(error) => {
            say(&error.to_string());
            // The command's own failure wins; a success does not hide a lock left held.
            Ok(if code == exit::SUCCESS {
                exit::CONSUL_ERROR
            } else {
                code
            })
        }
    }
}

/// The longest `--kill-grace`: an hour.
const MAX_KILL_GRACE: f64 = 3600.0;

/// One string runs through `sh -c` (consullock 4.2); `--` or several words run directly.
fn child_command(mut words: Vec<OsString>, direct: bool) -> Result<ChildCommand, Error> {
    if words.is_empty() {
        return Err(Error::InvalidArguments("no command given".into()));
    }
    if direct {
        let program = words.remove(0);
        return Ok(ChildCommand::Exec {
            program,
            args: words,
        });
    }
    let script = words.remove(0).into_string().map_err(|_| {
        Error::InvalidArguments("the shell command is not valid UTF-8; use the `--` form".into())
    })?;
    Ok(ChildCommand::Shell(script))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_forms() {
        assert_eq!(
            child_command(vec!["echo hi".into()], false).unwrap(),
            ChildCommand::Shell("echo hi".into())
        );
        assert_eq!(
            child_command(vec!["echo hi".into()], true).unwrap(),
            ChildCommand::Exec {
                program: "echo hi".into(),
                args: vec![]
            }
        );
        assert_eq!(
            child_command(vec!["printf".into(), "a b".into()], true).unwrap(),
            ChildCommand::Exec {
                program: "printf".into(),
                args: vec!["a b".into()]
            }
        );
    }
}
