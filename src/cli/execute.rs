/*!
`consullock execute`: the command line's side of [`consullock::execute`]: settings from the
options, the command from its words, and the exit code from the outcome.
*/

use std::ffi::OsString;

use consullock::Error;
use consullock::execute::{DEFAULT_LOCK_DELAY, DEFAULT_TTL, ExecuteSettings, execute_locked};
use consullock::key::validate_key;
use consullock::supervisor::{self, ChildCommand, Outcome, Signals};

use super::args::ExecuteArgs;
use super::{acquire_options, client_from_env, exit, log, seconds, session_settings};

/// Runs `execute` from the command line; `direct` is true for the `-- PROG ARGS` form (no
/// shell). Returns the exit code.
pub(super) async fn run(args: ExecuteArgs, direct: bool) -> Result<i32, Error> {
    validate_key(&args.lock.key)?;
    let session = session_settings(&args.lock, DEFAULT_TTL, DEFAULT_LOCK_DELAY)?;
    let acquire = acquire_options(&args.lock, true)?;
    let kill_grace = seconds("--kill-grace", args.kill_grace, &(0.0..=3600.0))
        .map_err(Error::InvalidArguments)?;
    let settings = ExecuteSettings {
        session,
        acquire,
        kill_grace,
    };
    settings.contact_window()?;
    if !settings.session.ttl_only && settings.session.lock_delay.is_zero() {
        tracing::warn!(
            "--lock-delay 0 with node checks: if a node check invalidates the session, another \
             holder may get the lock before the command is stopped; use --ttl-only or a lock-delay"
        );
    }
    let command = child_command(args.command, direct)?;
    let client = client_from_env()?;

    // Before anything can be spawned or waited for (see the module docs).
    let mut signals = Signals::install()?;
    if args.subreaper {
        supervisor::become_subreaper()?;
    }

    let key = &args.lock.key;
    let executed = match execute_locked(&client, key, &settings, command, &mut signals).await {
        Ok(executed) => executed,
        Err(error @ (Error::NotAcquired { .. } | Error::Timeout { .. })) => {
            // stdout belongs to the command, even when it did not run: no `null` here.
            return match args.conflict_exit_code {
                Some(code) => {
                    log::line(&format!("consullock: {error}"));
                    Ok(i32::from(code))
                }
                None => Err(error),
            };
        }
        Err(error) => return Err(error),
    };
    Ok(match executed.outcome {
        Outcome::Exited(code) => code,
        Outcome::Signaled(signal) => exit::from_signal(signal.as_raw()),
        Outcome::SpawnFailed { code, error } => {
            log::line(&format!("consullock: cannot run the command: {error}"));
            code
        }
        Outcome::LockLost { .. } => {
            let reason = executed
                .loss
                .map(|r| r.to_string())
                .unwrap_or_else(|| "unknown".into());
            log::line(&format!(
                "consullock: lock lost on {key}: {reason}; the command was stopped"
            ));
            i32::from(args.lock_lost_exit_code)
        }
    })
}

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
