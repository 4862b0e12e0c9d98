/*!
The `consullock` program: parse the command line, run the subcommand, map the outcome to an exit
code. `main.rs` only calls [`main`].

stdout carries only results (JSON for `lock` and `unlock`; the child's own output for `execute`);
everything else goes to stderr.
*/

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command, DevServerArgs, LockArgs, UnlockArgs};
use crate::config::ConsulConfig;
use crate::consul::Client;
use crate::error::Error;
use crate::exit;
use crate::key::validate_key;
use crate::lock::{self, AcquireOptions, Hooks};
use crate::session::SessionSettings;

/// Session TTL bounds (seconds), as Consul and consullock 4.2 enforce them; 0 means no TTL.
pub const SESSION_TTL_RANGE: std::ops::RangeInclusive<f64> = 10.0..=86400.0;
/// Lock-delay bounds (seconds): Consul applies at most 60 s.
pub const LOCK_DELAY_RANGE: std::ops::RangeInclusive<f64> = 0.0..=60.0;

/// `lock` defaults, as in consullock 4.2: a day-long session that is not renewed, and no
/// lock-delay so that `lock`, `unlock`, `lock` from a shell never waits.
const LOCK_DEFAULT_TTL: f64 = 86400.0;
const LOCK_DEFAULT_LOCK_DELAY: f64 = 0.0;

/// Runs the program and returns its exit code.
pub fn main() -> std::process::ExitCode {
    let code = run(std::env::args_os().collect());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

fn run(args: Vec<OsString>) -> i32 {
    let raw_args = args.clone();
    let cli = match Cli::try_parse_from(args) {
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
                    eprint!("{}", e.render());
                    exit::INVALID_ARGUMENTS
                }
                _ => {
                    eprintln!("consullock: {}", one_line_usage_error(&e));
                    exit::INVALID_ARGUMENTS
                }
            };
        }
    };
    init_logging(cli.verbose);
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
            Command::Execute(args) => {
                // clap drops the `--` that marks the direct form of a single-argument command.
                let direct = args.command.len() > 1 || raw_args.iter().any(|a| a == "--");
                crate::execute::run(args, direct).await
            }
            Command::DevServer(args) => run_dev_server(args, cli.verbose).await,
            Command::Man => print_bytes(&crate::cli::man_page()?),
            Command::Completions { shell } => print_bytes(&crate::cli::completions(shell)),
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

fn print_bytes(bytes: &[u8]) -> Result<i32, Error> {
    use std::io::Write;
    std::io::stdout().write_all(bytes)?;
    Ok(exit::SUCCESS)
}

/// Prints the one-line error and returns its exit code.
fn report(error: &Error) -> i32 {
    eprintln!("consullock: {error}");
    error.exit_code()
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose >= 3)
        .try_init();
}

/// Connection settings and client from the environment.
pub(crate) fn client_from_env() -> Result<Client, Error> {
    let config = ConsulConfig::from_env()?;
    Ok(Client::new(&config)?)
}

/// Seconds given on the command line, checked against a range.
pub(crate) fn seconds(
    name: &str,
    value: f64,
    range: &std::ops::RangeInclusive<f64>,
) -> Result<Duration, String> {
    if !value.is_finite() || !range.contains(&value) {
        return Err(format!(
            "{name} must be between {} and {} seconds, got {value}",
            range.start(),
            range.end()
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Session settings from the lock options, with the subcommand's defaults.
pub(crate) fn session_settings(
    args: &LockArgs,
    default_ttl: f64,
    default_lock_delay: f64,
) -> Result<SessionSettings, Error> {
    let ttl = args.session_ttl.unwrap_or(default_ttl);
    let ttl = if ttl == 0.0 {
        None
    } else {
        Some(
            seconds("--session-ttl", ttl, &SESSION_TTL_RANGE).map_err(|e| {
                Error::InvalidSessionSettings(format!("invalid session TTL: {e} (or 0 for no TTL)"))
            })?,
        )
    };
    let lock_delay = seconds(
        "--lock-delay",
        args.lock_delay.unwrap_or(default_lock_delay),
        &LOCK_DELAY_RANGE,
    )
    .map_err(|e| Error::InvalidSessionSettings(format!("invalid lock-delay: {e}")))?;
    Ok(SessionSettings {
        name: crate::session::holder_name(&args.key),
        ttl,
        lock_delay,
        ttl_only: args.ttl_only,
    })
}

/// Acquire options from the lock options.
pub(crate) fn acquire_options(args: &LockArgs, keep_alive: bool) -> Result<AcquireOptions, Error> {
    let timeout =
        seconds("--timeout", args.timeout, &(0.0..=f64::MAX)).map_err(Error::InvalidArguments)?;
    let interval =
        seconds("-i", args.interval, &(0.0..=f64::MAX)).map_err(Error::InvalidArguments)?;
    let metadata = args.metadata.as_ref().map(|text| {
        // Lenient, as consullock 4.2: what is not JSON is kept as a string.
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.clone()))
    });
    Ok(AcquireOptions {
        non_blocking: args.non_blocking,
        timeout: (!timeout.is_zero()).then_some(timeout),
        metadata,
        hooks: Hooks {
            before_lock: args.on_before_lock.clone(),
            already_locked: args.on_already_locked.clone(),
        },
        lock_delay_backoff_cap: interval,
        keep_alive,
        on_wait: HolderLine::observer(),
    })
}

/// The one stderr line that says who holds the lock we wait for, rewritten in place. Only on
/// a terminal: in a log file, a line per wake-up would be noise.
pub(crate) struct HolderLine;

impl HolderLine {
    fn observer() -> Option<lock::WaitObserver> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        Some(lock::WaitObserver(std::sync::Arc::new(
            |waiting: &lock::Waiting| {
                eprint!("\r\x1b[2K{}", HolderLine::text(waiting));
                HOLDER_LINE_SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
            },
        )))
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

    /// Clears the line, if one was shown, before anything else is printed.
    pub(crate) fn clear() {
        if HOLDER_LINE_SHOWN.swap(false, std::sync::atomic::Ordering::Relaxed) {
            eprint!("\r\x1b[2K");
        }
    }
}

static HOLDER_LINE_SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn run_lock(args: LockArgs) -> Result<i32, Error> {
    validate_key(&args.key)?;
    let settings = session_settings(&args, LOCK_DEFAULT_TTL, LOCK_DEFAULT_LOCK_DELAY)?;
    let options = acquire_options(&args, false)?;
    let client = client_from_env()?;
    // Handlers first: a SIGTERM during the wait must destroy our session, not kill us.
    let mut signals = crate::supervisor::Signals::install()?;
    let acquired = crate::execute::acquire_until_stop_request(
        &client,
        &args.key,
        &settings,
        &options,
        &mut signals,
    )
    .await;
    match acquired {
        Ok(held) => {
            let fencing_token = held.fencing_token();
            let lock_index = held.lock_index();
            let info = held.leave_held();
            let mut json = serde_json::to_value(&info).unwrap_or_default();
            if let Some(object) = json.as_object_mut() {
                object.insert("lockIndex".into(), lock_index.into());
                object.insert("fencingToken".into(), fencing_token.into());
            }
            println!("{json}");
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
    if args.regex {
        let pattern = regex::Regex::new(&args.key)
            .map_err(|e| Error::InvalidArguments(regex_error(&args.key, &e)))?;
        let released = lock::unlock_regex(&client, &pattern).await?;
        println!("{}", serde_json::Value::from(released));
    } else {
        validate_key(&args.key)?;
        if lock::unlock(&client, &args.key).await? {
            println!("{}", serde_json::Value::from(args.key));
        } else {
            println!("null");
        }
    }
    Ok(exit::SUCCESS)
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

async fn run_dev_server(args: DevServerArgs, verbose: u8) -> Result<i32, Error> {
    crate::devserver::run(crate::devserver::Options {
        listen: args.listen,
        acl_token: args.acl_token,
        verbose,
        test_faults: args.test_faults,
        node: args.node,
        ..Default::default()
    })
    .await?;
    Ok(exit::SUCCESS)
}
