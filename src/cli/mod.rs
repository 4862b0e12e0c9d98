/*!
The command line: parse, run the subcommand, map the outcome to an exit code.

stdout carries only results (JSON for `lock`, `unlock` and `status`, or `status`'s table on a
terminal; the child's own output for `execute`); everything else goes to stderr.
*/

use std::ffi::OsString;
use std::time::Duration;

mod args;
mod execute;
pub(crate) mod exit;
mod hooks;
pub(crate) mod log;
mod status;

use consullock::Error;
use consullock::config::ConsulConfig;
use consullock::consul::Client;
use consullock::key::LockKey;
use consullock::lock::{self, AcquireOptions};
use consullock::session::SessionSettings;

use args::{Command, DevServerArgs, LockArgs, UnlockArgs};

/// Serves as the relay and init of `execute --contain` when `args` asks for it (see
/// `consullock::supervisor::contain`), before anything starts a thread; `None` otherwise.
pub(crate) fn contain_init(args: &[OsString]) -> Option<i32> {
    use consullock::supervisor::contain;
    let (grace, command) = match contain::init_request(args)? {
        Ok(request) => request,
        Err(e) => {
            say(&e.to_string());
            return Some(exit::INVALID_ARGUMENTS);
        }
    };
    let init = || {
        let code = match contain::run_init(command, grace) {
            Ok(outcome) => {
                if let consullock::supervisor::Outcome::SpawnFailed { error, .. } = &outcome {
                    say(&format!("cannot run the command: {error}"));
                }
                exit::of_outcome(&outcome)
            }
            Err(e) => report(&Error::Io(e)),
        };
        // The init ends with `exit`, not through `main`: its last lines are flushed here.
        log::flush(log::EXIT_FLUSH_TIMEOUT);
        code
    };
    Some(match contain::relay(init) {
        Ok(code) => code,
        Err(e) => report(&Error::Io(e)),
    })
}

/// Runs the program with `args` (the program name first) and returns its exit code.
pub(crate) fn run(args: Vec<OsString>) -> i32 {
    let raw_args = args.clone();
    let cli = match args::parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    exit::SUCCESS
                }
                // No subcommand: the help goes to stderr, and it is a usage error (exit 3, as in
                // consullock 4.2), so a script that lost its arguments does not pass for done.
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    log::raw(&e.render().to_string());
                    exit::INVALID_ARGUMENTS
                }
                _ => {
                    say(&one_line_usage_error(&e));
                    exit::INVALID_ARGUMENTS
                }
            };
        }
    };
    log::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&Error::Io(e)),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Lock(args) => run_lock(args).await,
            Command::Unlock(args) => run_unlock(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Execute(args) => {
                // clap drops the `--` that marks the direct form of a single-argument command.
                let direct = args.command.len() > 1 || raw_args.iter().any(|a| a == "--");
                execute::run(args, direct).await
            }
            Command::DevServer(args) => run_dev_server(args, cli.verbose).await,
            Command::Man => print_bytes(&args::man_page()?),
            Command::Completions { shell } => print_bytes(&args::completions(shell)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// clap's error as one line, like every other error of consullock: scripts and log collectors
/// read one line per failure. The usage block and tips are dropped (`--help` has them); a list
/// of missing arguments is joined onto the line.
fn one_line_usage_error(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() || line.starts_with("tip:") {
            continue;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    format!("invalid arguments: {} (see --help)", parts.join(" "))
}

/// Writes `line` and a newline to stdout and flushes it: an error, not a panic, when stdout is
/// closed or full.
fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

fn print_bytes(bytes: &[u8]) -> Result<i32, Error> {
    use std::io::Write;
    std::io::stdout().write_all(bytes)?;
    Ok(exit::SUCCESS)
}

/// Prints the one-line error and returns its exit code.
fn report(error: &Error) -> i32 {
    say(&error.to_string());
    exit::of_error(error)
}

/// Prints one of consullock's own lines on stderr (`consullock: ...`): every error, warning
/// of the command line and end-of-run report goes through here, one line each.
pub(crate) fn say(line: &str) {
    log::line(&format!("consullock: {line}"));
}

/// Connection settings and client from the environment.
fn client_from_env() -> Result<Client, Error> {
    let config = ConsulConfig::from_env()?;
    Ok(Client::new(&config)?)
}

/// The largest number of seconds any duration option takes (about 136 years): a bound far
/// beyond any use that keeps every deadline computable.
const MAX_SECONDS: f64 = u32::MAX as f64;

/// Seconds given on the command line as a duration, checked: not a number, infinite, negative
/// or beyond `max` seconds is refused with a message naming the option.
fn seconds(option: &str, value: f64, max: f64) -> Result<Duration, String> {
    if !value.is_finite() || !(0.0..=max).contains(&value) {
        return Err(format!(
            "{option} must be a number of seconds between 0 and {max}, got {value:?}"
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|e| format!("{option}: {e}"))
}

/// Session settings from the lock options, with the subcommand's defaults. A TTL or lock-delay
/// out of Consul's bounds is exit 7, as in consullock 4.2.
fn session_settings(
    args: &LockArgs,
    default_ttl: Duration,
    default_lock_delay: Duration,
) -> Result<SessionSettings, Error> {
    let invalid = Error::InvalidSessionSettings;
    let ttl = match args.session_ttl {
        None => Some(default_ttl),
        Some(0.0) => None,
        Some(seconds_given) => {
            let ttl = seconds("--session-ttl", seconds_given, MAX_SECONDS)
                .map_err(|e| invalid(format!("invalid session TTL: {e} (or 0 for no TTL)")))?;
            Some(ttl)
        }
    };
    let lock_delay = match args.lock_delay {
        None => default_lock_delay,
        Some(given) => seconds("--lock-delay", given, MAX_SECONDS)
            .map_err(|e| invalid(format!("invalid lock-delay: {e}")))?,
    };
    SessionSettings::new(
        consullock::session::holder_name(&args.key),
        ttl,
        lock_delay,
        args.ttl_only,
    )
    .map_err(|e| {
        invalid(format!(
            "{e} (--session-ttl 10..=86400 or 0 for none; --lock-delay 0..=60)"
        ))
    })
}

/// Acquire options from the lock options.
fn acquire_options(args: &LockArgs, keep_alive: bool) -> Result<AcquireOptions, Error> {
    let timeout =
        seconds("--timeout", args.timeout, MAX_SECONDS).map_err(Error::InvalidArguments)?;
    let interval = seconds("-i", args.interval, MAX_INTERVAL).map_err(Error::InvalidArguments)?;
    let metadata = match &args.metadata {
        None => None,
        // As consullock 4.2: metadata is JSON, and anything else is refused.
        Some(text) => Some(serde_json::from_str(text).map_err(|e| {
            Error::InvalidArguments(format!(
                "Unable to parse value for \"metadata\" as JSON: {e}"
            ))
        })?),
    };
    let hooks = hooks::CommandHooks::for_engine(&args.on_before_lock, &args.on_already_locked);
    let layout = match (args.limit, args.consul_lock) {
        (Some(2..), true) => {
            return Err(Error::InvalidArguments(
                "-n/--limit above 1 and --consul-lock exclude each other: a semaphore and \
                 `consul lock`'s single lock use the same KEY/.lock differently"
                    .into(),
            ));
        }
        // `consul lock -n 1` takes a single lock, not a semaphore of one.
        (Some(0..=1), _) | (None, true) => lock::Layout::ConsulLock,
        (Some(limit), false) => lock::Layout::Semaphore { limit },
        (None, false) => lock::Layout::Own,
    };
    Ok(AcquireOptions {
        non_blocking: args.non_blocking,
        timeout: (!timeout.is_zero()).then_some(timeout),
        metadata,
        hooks,
        lock_delay_backoff_cap: interval,
        keep_alive,
        on_wait: HolderLine::observer(),
        layout,
    })
}

/// The largest `-i`: it caps a retry pause, and an hour is already far beyond any lock-delay.
const MAX_INTERVAL: f64 = 3600.0;

/// How long clearing the waiting line may wait for the terminal.
const HOLDER_LINE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// The one stderr line that says who holds the lock we wait for, rewritten in place. Only on
/// a terminal: in a log file, a line per wake-up would be noise.
struct HolderLine {
    shown: std::sync::atomic::AtomicBool,
}

impl HolderLine {
    fn observer() -> Option<std::sync::Arc<dyn lock::WaitObserver>> {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal().then(|| {
            std::sync::Arc::new(HolderLine {
                shown: std::sync::atomic::AtomicBool::new(false),
            }) as std::sync::Arc<dyn lock::WaitObserver>
        })
    }

    fn text(waiting: &lock::Waiting) -> String {
        let mut text = format!(
            "consullock: waiting for {}, held by session {}",
            waiting.key, waiting.holder
        );
        if let Some(info) = &waiting.info {
            let mut details = Vec::new();
            if let Some(host) = &info.hostname {
                details.push(format!("host {host}"));
            }
            if let Some(pid) = info.pid {
                details.push(format!("pid {pid}"));
            }
            details.push(format!("since {} UTC", info.created));
            text.push_str(&format!(" ({})", details.join(", ")));
        }
        text
    }
}

impl lock::WaitObserver for HolderLine {
    fn waiting(&self, waiting: &lock::Waiting) {
        log::raw(&format!("\r\x1b[2K{}", HolderLine::text(waiting)));
        self.shown.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Clears the line, if one was shown, before anything else is printed: what comes next
    /// (the JSON on stdout, the command's output) shares the terminal, so the clear is written
    /// before returning, within a bound (a terminal that does not take it is not waited for).
    fn finished(&self) {
        if self.shown.swap(false, std::sync::atomic::Ordering::Relaxed) {
            log::raw("\r\x1b[2K");
            log::flush(HOLDER_LINE_FLUSH_TIMEOUT);
        }
    }
}

async fn run_lock(args: LockArgs) -> Result<i32, Error> {
    let key = LockKey::new(&args.key)?;
    let settings = session_settings(
        &args,
        lock::LEFT_HELD_SESSION_TTL,
        lock::LEFT_HELD_LOCK_DELAY,
    )?;
    let options = acquire_options(&args, false)?;
    let client = client_from_env()?;
    // Handlers first: a SIGTERM during the wait must destroy our session, not kill us.
    let mut signals = consullock::supervisor::Signals::install()?;
    let acquired = consullock::execute::acquire_until_stop_request(
        &client,
        &key,
        &settings,
        &options,
        &mut signals,
    )
    .await;
    match acquired {
        Ok(held) => {
            let mut json = serde_json::to_value(held.info()).unwrap_or_default();
            if let Some(object) = json.as_object_mut() {
                object.insert("lockIndex".into(), held.lock_index().into());
                if let Some(token) = held.fencing_token() {
                    object.insert("fencingToken".into(), token.into());
                }
                if let Some(limit) = held.limit() {
                    object.insert("limit".into(), limit.into());
                }
                if let Some(contender) = held.contender_key() {
                    object.insert("contenderKey".into(), contender.into());
                }
            }
            // The JSON names the session that `unlock` needs: a lock nobody learnt about
            // (stdout closed, a full disk) is released again rather than left held.
            if let Err(e) = print_line(&json.to_string()) {
                let stop = async {
                    signals.next_stop_request().await;
                };
                let released = held.release(stop).await;
                let left = match released {
                    Ok(()) => "the lock was released again".to_owned(),
                    Err(e) => e.to_string(),
                };
                return Err(Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot write the lock's JSON to stdout ({e}); {left}"),
                )));
            }
            held.leave_held();
            Ok(exit::SUCCESS)
        }
        Err(error) => {
            if matches!(error, Error::NotAcquired { .. } | Error::Timeout { .. }) {
                println!("null");
            }
            Err(error)
        }
    }
}

async fn run_unlock(args: UnlockArgs) -> Result<i32, Error> {
    let client = client_from_env()?;
    let left_alone = |key: &str| {
        say(&format!(
            "left {key} alone: its value is not a consullock lock (--force releases \
             it anyway, destroying the session that holds it)"
        ));
    };
    if args.regex {
        let pattern = regex::Regex::new(&args.key)
            .map_err(|e| Error::InvalidArguments(regex_error(&args.key, &e)))?;
        let unlocked = lock::unlock_regex(&client, &pattern, args.force).await?;
        for key in &unlocked.not_locks {
            left_alone(key);
        }
        println!("{}", serde_json::Value::from(unlocked.released));
        return Ok(exit::SUCCESS);
    }
    let key = LockKey::new(&args.key)?;
    match lock::unlock(&client, &key, args.force).await? {
        lock::Unlocked::Released => {
            println!("{}", serde_json::Value::from(args.key));
            Ok(exit::SUCCESS)
        }
        lock::Unlocked::NotHeld => {
            println!("null");
            Ok(exit::SUCCESS)
        }
        lock::Unlocked::NotALock => {
            println!("null");
            left_alone(&args.key);
            Ok(exit::NOT_A_LOCK)
        }
    }
}

/// A regex error on one line: the regex crate's syntax errors span several lines (the pattern,
/// a caret under the fault, then the reason), so name the reason and its offset instead.
fn regex_error(pattern: &str, error: &regex::Error) -> String {
    let detail = match regex_syntax::Parser::new().parse(pattern) {
        Err(regex_syntax::Error::Parse(e)) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        Err(regex_syntax::Error::Translate(e)) => {
            format!("{} at offset {}", e.kind(), e.span().start.offset)
        }
        _ => error
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    format!("invalid regular expression {pattern:?}: {detail}")
}

/// `consullock dev-server`: binds, says where on stderr (tests read the address from that
/// line), serves until SIGINT or SIGTERM. Its log lines go through the same stderr queue as
/// everything else, so a stderr nobody reads never stops it from answering.
async fn run_dev_server(args: DevServerArgs, verbose: u8) -> Result<i32, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = listener.local_addr()?;
    // Handlers before the announcement, so a test that signals right after reading it is
    // handled.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    log::line(&consullock::devserver::startup_line(bound));
    let stop = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    let options = consullock::devserver::Options {
        listen: bound,
        acl_token: args.acl_token,
        verbose,
        test_faults: args.test_faults,
        node: args.node,
        ..Default::default()
    };
    consullock::devserver::serve(listener, options, stop).await;
    Ok(exit::SUCCESS)
}
