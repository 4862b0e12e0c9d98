//! The torture test's stamper: a process that is inside a critical section says so on
//! CLOCK_MONOTONIC for as long as it runs, so the test can see when it really ran.
//!
//! ```text
//! heartbeat TAG MILLIS [--ignore-term] [--linger MS] [--while-parent] [--stderr BYTES]
//! ```
//! Appends lines `KIND RUN TAG PID NS` to the file named by `$TORTURE_LOG` (`RUN` is `$RUN_ID`,
//! `NS` CLOCK_MONOTONIC in nanoseconds, a clock every process on the machine shares and that
//! never jumps): `S` when it starts, `A` ("alive") every 10 ms, `T` when SIGTERM arrives (with
//! `--linger`), `E` when it ends by itself after MILLIS. Each line is one `write(2)` on an
//! `O_APPEND` descriptor, so lines of concurrent stampers never mix.
//!
//! Why a heartbeat and not a start and an end: SIGKILL leaves no chance to write an end, and the
//! processes the torture test must catch are exactly the ones killed late or never. A process
//! that stops stamping has stopped running (or ran at most one period longer): its section is
//! [first stamp, last stamp], and any stamp of one holder inside another holder's section is a
//! moment when both ran.
//!
//! * `--ignore-term`: SIGTERM is ignored; only SIGKILL stops it before MILLIS.
//! * `--linger MS`: on SIGTERM, stamp `T` and keep working (stamping) for MS more, then exit 143:
//!   a command that cleans up within the kill grace.
//! * `--while-parent`: also end when its parent is gone: it stands for a shell, whose own work
//!   cannot be stamped, by running exactly as long as the shell does.
//! * `--stderr BYTES`: a second thread writes BYTES to stderr in whole lines of 1 KiB. It blocks
//!   when stderr is a full pipe while the main thread keeps stamping; the process ends after
//!   MILLIS whether or not everything was written.
//!
//! Without flags it stops at SIGTERM (the default action).
//!
//! When `$TORTURE_HOLD` names a file that exists at the moment it would end after MILLIS, it
//! keeps working until the file is gone: the test holds every command in the middle of its work
//! while a fault takes its lock away, so only consullock stopping it ends it in time.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Time between two "alive" stamps: how much later than its last stamp a killed process may
/// have run.
const PERIOD: Duration = Duration::from_millis(10);
/// Length of each line written to stderr with `--stderr`.
const STDERR_LINE: usize = 1024;

fn monotonic_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

struct Options {
    tag: String,
    run_for: Duration,
    ignore_term: bool,
    linger: Option<Duration>,
    while_parent: bool,
    stderr_bytes: usize,
}

fn parse() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let tag = args.next().ok_or("usage: heartbeat TAG MILLIS [options]")?;
    let millis = |value: Option<String>| -> Result<Duration, String> {
        value
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| "expected milliseconds".to_string())
    };
    let mut options = Options {
        tag,
        run_for: millis(args.next())?,
        ignore_term: false,
        linger: None,
        while_parent: false,
        stderr_bytes: 0,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ignore-term" => options.ignore_term = true,
            "--linger" => options.linger = Some(millis(args.next())?),
            "--while-parent" => options.while_parent = true,
            "--stderr" => {
                options.stderr_bytes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--stderr needs BYTES")?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

struct Stamper {
    log: std::fs::File,
    run: String,
    tag: String,
    pid: u32,
}

impl Stamper {
    /// One line, one write: the time is read just before it, so a stamp never claims a moment
    /// the process had not reached.
    fn stamp(&mut self, kind: &str) {
        let line = format!(
            "{kind} {} {} {} {}\n",
            self.run,
            self.tag,
            self.pid,
            monotonic_ns()
        );
        // A failed stamp would hide that the process ran: better to die loudly.
        self.log
            .write_all(line.as_bytes())
            .expect("write to $TORTURE_LOG");
    }
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::from(2);
        }
    };
    let (Some(log), Some(run)) = (
        std::env::var_os("TORTURE_LOG"),
        std::env::var("RUN_ID").ok(),
    ) else {
        eprintln!("heartbeat: TORTURE_LOG and RUN_ID must be set");
        return ExitCode::from(2);
    };
    let term = Arc::new(AtomicBool::new(false));
    if options.ignore_term {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    } else if options.linger.is_some()
        && let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())
    {
        eprintln!("heartbeat: cannot handle SIGTERM: {e}");
        return ExitCode::from(2);
    }
    let log = match std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&log)
    {
        Ok(log) => log,
        Err(e) => {
            eprintln!("heartbeat: {}: {e}", log.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    let mut stamper = Stamper {
        log,
        run,
        tag: options.tag.clone(),
        pid: std::process::id(),
    };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    stamper.stamp("S");

    if options.stderr_bytes > 0 {
        let head = format!("heartbeat {} {}: ", stamper.run, stamper.tag);
        let mut line = head.into_bytes();
        line.resize(STDERR_LINE - 1, b'x');
        line.push(b'\n');
        let lines = options.stderr_bytes.div_ceil(STDERR_LINE);
        std::thread::spawn(move || {
            let mut stderr = std::io::stderr().lock();
            for _ in 0..lines {
                if stderr.write_all(&line).is_err() {
                    return;
                }
            }
        });
    }

    let hold = std::env::var_os("TORTURE_HOLD").map(std::path::PathBuf::from);
    let held = || hold.as_ref().is_some_and(|path| path.exists());
    let started = Instant::now();
    let mut stop_at = started + options.run_for;
    let mut exit = 0u8;
    loop {
        std::thread::sleep(PERIOD);
        if exit == 0 && term.load(Ordering::Relaxed) {
            stamper.stamp("T");
            stop_at = stop_at.min(Instant::now() + options.linger.unwrap_or_default());
            exit = 143;
        }
        // SAFETY: getppid has no preconditions.
        let orphaned = options.while_parent && unsafe { libc::getppid() } != parent;
        if orphaned || (Instant::now() >= stop_at && (exit != 0 || !held())) {
            stamper.stamp("E");
            // The stderr thread may still be blocked in a write: the process ends anyway.
            return ExitCode::from(exit);
        }
        stamper.stamp("A");
    }
}
