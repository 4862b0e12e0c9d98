//! Runs one command under the supervisor, as `consullock execute` will (minus Consul): for
//! trying the supervisor by hand and for the PID-1 test under `unshare --pid --fork --mount-proc`.
//!
//! ```text
//! supervise_demo [--kill-grace-ms N] [--subreaper] [--report-zombies] -- PROG [ARGS...]
//! ```
//! Installs the signal intake first, runs PROG directly (no shell) on a current-thread runtime on
//! the main thread, and exits with the child's code (1 when it did not exit by itself). `--report-zombies`
//! waits (up to 5 s) until this process has no zombie in its PID namespace's /proc and prints
//! `zombies N` on stderr: as PID 1 every orphan must have been reaped.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use consullock::clock::Deadline;
use consullock::supervisor::{
    ChildCommand, Outcome, Signals, SupervisorOptions, become_subreaper, is_pid1, supervise,
};

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(u8::MAX)),
        Err(e) => {
            eprintln!("supervise_demo: {e}");
            ExitCode::from(125)
        }
    }
}

fn run() -> Result<i32, Box<dyn std::error::Error>> {
    // Signals first: as PID 1 nothing else protects us, and a TERM before spawn must be queued.
    let mut signals = Signals::install()?;
    let mut options = SupervisorOptions::default();
    let mut subreaper = false;
    let mut report_zombies = false;
    let mut args = std::env::args_os().skip(1);
    let mut command: Vec<OsString> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--kill-grace-ms") => {
                let ms = args
                    .next()
                    .and_then(|v| v.to_str()?.parse().ok())
                    .ok_or("bad ms")?;
                options.kill_grace = Duration::from_millis(ms);
            }
            Some("--subreaper") => subreaper = true,
            Some("--report-zombies") => report_zombies = true,
            Some("--") => {
                command.extend(args.by_ref());
            }
            _ => return Err(format!("unexpected argument {arg:?}").into()),
        }
    }
    if subreaper {
        become_subreaper()?;
    }
    let mut command = command.into_iter();
    let program = command
        .next()
        .ok_or("usage: supervise_demo [options] -- PROG [ARGS...]")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime
        .block_on(supervise(
            ChildCommand::Exec {
                program,
                args: command.collect(),
            },
            &options,
            &mut signals,
            &Deadline::unset(),
        ))?
        .outcome;
    eprintln!("outcome {outcome:?} pid1 {}", is_pid1());
    if report_zombies {
        eprintln!("zombies {}", wait_for_no_zombies(Duration::from_secs(5)));
    }
    // The outcome is printed above; turning it into exit codes is each program's own business
    // (consullock's is in src/cli/exit.rs): here, the command's code, or 1.
    if let Outcome::SpawnFailed { error, .. } = &outcome {
        eprintln!("supervise_demo: {error}");
    }
    Ok(match outcome {
        Outcome::Exited(code) => code,
        _ => 1,
    })
}

/// Zombies visible in /proc, polled until none or `within` elapsed; returns the last count.
fn wait_for_no_zombies(within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let count = count_zombies();
        if count == 0 || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count_zombies() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        // The state follows the parenthesised command name, which may itself contain ") ".
        .filter(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .count()
}
