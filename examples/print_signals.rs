//! Test helper: prints `ready <pid>`, then one line per signal it receives (`TERM`, `INT`,
//! `HUP`, `QUIT`, `USR1`, `USR2`, `WINCH`), each flushed, and keeps running, so a test can wait
//! on the handshake and count deliveries (the dumb-init `print_signals.py` pattern).
//!
//! ```text
//! print_signals [--exit-on-term] [--spawn-grandchild] [--orphan N] [--stdin] [--leave-group]
//! ```
//! * `--exit-on-term`: after printing `TERM`, exit 143 (128 + SIGTERM).
//! * `--spawn-grandchild`: start `sleep 1000` (in our process group) and print
//!   `grandchild <pid>` before `ready`.
//! * `--orphan N`: before `ready`, leave N orphaned grandchildren that exit by themselves soon
//!   after (through a shell that backgrounds them and exits), printing `orphans N`.
//! * `--stdin`: exit 0 when stdin reaches EOF or gives a line `exit`.
//! * `--leave-group`: before `ready`, move out of its process group into its parent's
//!   (`setpgid(0, getpgid(getppid()))`), as a program that manages its own groups may, and
//!   print `group <pgid>`.
//!
//! Without `--exit-on-term` or `--stdin` it runs until killed.

use std::io::{BufRead, Write};
use std::process::{Command, ExitCode};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("print_signals: {e}");
            ExitCode::from(2)
        }
    }
}

fn say(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

fn run() -> std::io::Result<ExitCode> {
    let mut exit_on_term = false;
    let mut grandchild = false;
    let mut orphans = 0u32;
    let mut watch_stdin = false;
    let mut leave_group = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exit-on-term" => exit_on_term = true,
            "--spawn-grandchild" => grandchild = true,
            "--stdin" => watch_stdin = true,
            "--leave-group" => leave_group = true,
            "--orphan" => {
                orphans = args.next().and_then(|n| n.parse().ok()).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "--orphan needs N")
                })?
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("unknown argument {other}"),
                ));
            }
        }
    }

    // Handlers first, so no signal sent after `ready` can hit a default action.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH])?;

    if grandchild {
        let child = Command::new("sleep").arg("1000").spawn()?;
        say(&format!("grandchild {}", child.id()))?;
    }
    if orphans > 0 {
        // The shell backgrounds the workers and exits at once; we reap the shell, so the
        // workers are orphans: re-parented to the nearest subreaper or PID 1, which must reap
        // them when they exit.
        let script = format!("for i in $(seq {orphans}); do (sleep 0.2; exit 3) & done; exit 0");
        Command::new("/bin/sh").arg("-c").arg(script).status()?;
        say(&format!("orphans {orphans}"))?;
    }
    if leave_group {
        let parents = nix::unistd::getpgid(Some(nix::unistd::getppid()))?;
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), parents)?;
        say(&format!("group {}", nix::unistd::getpgrp()))?;
    }
    say(&format!("ready {}", std::process::id()))?;

    if watch_stdin {
        std::thread::spawn(|| {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(line) if line.trim() == "exit" => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            std::process::exit(0);
        });
    }

    for signal in signals.forever() {
        let name = match signal {
            SIGTERM => "TERM",
            SIGINT => "INT",
            SIGHUP => "HUP",
            SIGQUIT => "QUIT",
            SIGUSR1 => "USR1",
            SIGUSR2 => "USR2",
            SIGWINCH => "WINCH",
            _ => "OTHER",
        };
        say(name)?;
        if signal == SIGTERM && exit_on_term {
            return Ok(ExitCode::from(143));
        }
    }
    Ok(ExitCode::SUCCESS)
}
