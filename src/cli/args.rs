/*!
The command line: clap definitions and help text, nothing else.

Subcommands and options follow consullock 4.2 (`lock`, `unlock`, `execute`, `-v`, `--session-ttl`,
`--non-blocking`, `--timeout`, `--metadata`, `--on-before-lock`, `--on-already-locked`, `-i`) so
existing scripts keep working; the rest is new.
*/

use std::ffi::OsString;
use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use super::exit;

const ENVIRONMENT_HELP: &str = "\
Connection settings come from the environment, as for the consul CLI: CONSUL_HTTP_ADDR \
(host[:port], http://, https://, unix://; default 127.0.0.1:8500), CONSUL_HTTP_TOKEN, \
CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY, CONSUL_CACERT, CONSUL_CAPATH, \
CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME, CONSUL_HTTP_AUTH, CONSUL_NAMESPACE, \
CONSUL_PARTITION, and CONSUL_SCHEME and CONSUL_DC as consullock 4.2 reads them.";

/// The text after `--help`: the environment, then the exit codes from [`exit::TABLE`], the same
/// table the README shows.
fn after_long_help() -> String {
    let mut text = format!("{ENVIRONMENT_HELP}\n\nExit codes:\n");
    for (code, meaning) in exit::TABLE {
        let code = if *code == exit::SIGNAL_BASE {
            "128+N".to_owned()
        } else {
            code.to_string()
        };
        text.push_str(&format!("  {code:>5}  {}\n", meaning.replace('`', "")));
    }
    text
}

/// The whole command-line model: the clap derive plus what is computed (the help's exit table).
pub(crate) fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().after_long_help(after_long_help())
}

/// Parses `args` (program name first) with [`command`].
pub(crate) fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// Run commands only while holding a Consul lock; take and release locks from shells.
#[derive(Debug, Parser)]
#[command(name = "consullock", version, about)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); stdout carries only results.
    #[arg(short, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Acquire a lock, print its JSON and exit, leaving it held until `unlock` or its TTL.
    Lock(LockArgs),
    /// Release a lock (anyone's) by destroying the session that holds it.
    Unlock(UnlockArgs),
    /// Show who holds a lock (consullock's, `consul lock`'s or a semaphore) without changing
    /// anything: JSON, or a table on a terminal.
    Status(StatusArgs),
    /// Run a command while holding a lock: renew it, forward signals, stop the command if the
    /// lock is lost, release it when the command ends, and exit with the command's code.
    Execute(ExecuteArgs),
    /// Run an in-memory Consul-compatible server for development and tests (keeps nothing on
    /// disk; no replacement for Consul).
    DevServer(DevServerArgs),
    /// Print the man page (roff) on stdout, e.g. `consullock man > consullock.1`.
    Man,
    /// Print a shell completion script on stdout, e.g. `consullock completions bash`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `--session-ttl`'s help, with the defaults from the library.
fn session_ttl_help(long: bool) -> String {
    let short = format!(
        "Session TTL in seconds [default: lock {}, execute {}]",
        consullock::lock::LEFT_HELD_SESSION_TTL.as_secs(),
        consullock::session::DEFAULT_SESSION_TTL.as_secs()
    );
    if !long {
        return short;
    }
    format!(
        "{short}\n\n{}..={}, or 0 for no TTL. `execute` renews its session every TTL/2; `lock` \
         leaves it to live its TTL, so the lock outlives the command that took it.",
        consullock::session::MIN_SESSION_TTL.as_secs(),
        consullock::session::MAX_SESSION_TTL.as_secs()
    )
}

/// `--lock-delay`'s help, with the defaults from the library.
fn lock_delay_help(long: bool) -> String {
    let short = format!(
        "Lock-delay in seconds [default: lock {}, execute {}]",
        consullock::lock::LEFT_HELD_LOCK_DELAY.as_secs(),
        consullock::session::DEFAULT_LOCK_DELAY.as_secs()
    );
    if !long {
        return short;
    }
    format!(
        "{short}\n\n0..={}. After the session is invalidated (not after a clean release), nobody \
         can take the lock for this long: the time a holder that lost its lock has to stop.",
        consullock::session::MAX_LOCK_DELAY.as_secs()
    )
}

/// Options shared by `lock` and `execute`.
#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    /// Lock key, e.g. `jobs/backup` (must not contain `//` and must be normalised).
    pub(crate) key: String,

    #[arg(
        long,
        value_name = "SECONDS",
        allow_negative_numbers = true,
        help = session_ttl_help(false),
        long_help = session_ttl_help(true)
    )]
    pub(crate) session_ttl: Option<f64>,

    #[arg(
        long,
        value_name = "SECONDS",
        allow_negative_numbers = true,
        help = lock_delay_help(false),
        long_help = lock_delay_help(true)
    )]
    pub(crate) lock_delay: Option<f64>,

    /// TTL-only session: no node health check can take the lock away
    ///
    /// Consul binds sessions to the node's `serfHealth` check by default, which releases the
    /// lock when the node is judged failed (liveness). A TTL-only session keeps the lock until
    /// its TTL runs out (safety).
    #[arg(long)]
    pub(crate) ttl_only: bool,

    /// Make exactly one attempt; if the lock is held, exit 100 (or --conflict-exit-code).
    #[arg(long)]
    pub(crate) non_blocking: bool,

    /// Give up waiting after this many seconds (0 waits for ever); exit 5.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub(crate) timeout: f64,

    /// Metadata to store in the lock's value, as JSON (e.g. '{"owner": "alice"}' or '"text"').
    #[arg(long, value_name = "JSON")]
    pub(crate) metadata: Option<String>,

    /// Executables run before each attempt, with the key as only argument (failures ignored).
    #[arg(long, value_name = "EXE", num_args = 1.., action = clap::ArgAction::Append)]
    pub(crate) on_before_lock: Vec<OsString>,

    /// Executables run after each attempt that found the lock held, with the key as only
    /// argument (failures ignored).
    #[arg(long, value_name = "EXE", num_args = 1.., action = clap::ArgAction::Append)]
    pub(crate) on_already_locked: Vec<OsString>,

    /// At most N holders at once: a semaphore shared with `consul lock -n N KEY` (see --help)
    ///
    /// The keys are those of `consul lock -n N` and Go's `api.Semaphore`: each holder's own
    /// `KEY/<session>` and the shared `KEY/.lock`, which lists the holders and the limit. Every
    /// contender of one semaphore must use the same N (exit 10 otherwise). `-n 1` is a single
    /// lock, as with `consul lock -n 1`: the same as --consul-lock.
    #[arg(short = 'n', long = "limit", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_LIMIT))]
    pub(crate) limit: Option<u32>,

    /// Take the lock as `consul lock KEY` does: the key `KEY/.lock`, with its flags and no value
    ///
    /// consullock and `consul lock KEY` (without -n, or with -n 1) then exclude each other on
    /// KEY, so a fleet can move from one to the other host by host.
    #[arg(long)]
    pub(crate) consul_lock: bool,

    /// Compatibility with consullock 4.2's poll interval (see --help)
    ///
    /// consullock 4.2 polled every I seconds. consullock waits with blocking queries instead;
    /// I only caps the retry pause while a lock-delay keeps a free key locked (at least 0.25 s).
    #[arg(
        short = 'i',
        value_name = "SECONDS",
        default_value_t = consullock::lock::LOCK_DELAY_BACKOFF_CAP.as_secs_f64(),
        allow_negative_numbers = true
    )]
    pub(crate) interval: f64,
}

/// The largest `-n`: far beyond any fleet, and small enough that `.lock`'s list of holders
/// stays well within Consul's 512 KiB value limit (about 45 bytes per holder).
pub(crate) const MAX_LIMIT: i64 = 10_000;

/// `unlock` options.
#[derive(Debug, Args)]
pub(crate) struct UnlockArgs {
    /// Treat KEY as a regular expression and release every lock whose key fully matches it.
    #[arg(short = 'r', long = "regex")]
    pub(crate) regex: bool,

    /// Also release keys whose value is not a consullock lock (another program's lock).
    ///
    /// Without it, a held key whose value is not a consullock lock is reported on stderr and
    /// left alone: its session may be another program's leader lock.
    #[arg(long)]
    pub(crate) force: bool,

    /// Lock key (or regular expression with -r).
    pub(crate) key: String,
}

/// `status` options.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Treat KEY as a regular expression and report every held lock whose key fully matches it
    /// (no lock-delay check).
    #[arg(short = 'r', long = "regex")]
    pub(crate) regex: bool,

    /// Print JSON even on a terminal (the default when stdout is not one).
    #[arg(long, conflicts_with = "table")]
    pub(crate) json: bool,

    /// Print a table even when stdout is not a terminal (the default on one).
    #[arg(long)]
    pub(crate) table: bool,

    /// Lock key (or regular expression with -r); for `consul lock`, its prefix.
    pub(crate) key: String,
}

/// `execute` options.
#[derive(Debug, Args)]
pub(crate) struct ExecuteArgs {
    /// Lock options.
    #[command(flatten)]
    pub(crate) lock: LockArgs,

    /// Seconds between SIGTERM and SIGKILL when the command must stop (lock lost, signal).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = consullock::supervisor::DEFAULT_KILL_GRACE.as_secs_f64(),
        allow_negative_numbers = true
    )]
    pub(crate) kill_grace: f64,

    /// Exit code when the lock is not acquired [default: 100, or 5 on timeout]
    ///
    /// Used for --non-blocking and --timeout, like flock's -E: 0 makes a skipped cron run a
    /// success.
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u8))]
    pub(crate) conflict_exit_code: Option<u8>,

    /// Exit code when the lock was lost and the command stopped.
    #[arg(
        long,
        value_name = "CODE",
        default_value_t = exit::LOCK_LOST as u8,
        value_parser = clap::value_parser!(u8)
    )]
    pub(crate) lock_lost_exit_code: u8,

    /// Become a child subreaper (when not PID 1), so orphaned grandchildren are reaped here.
    ///
    /// Descendants that leave the command's process group (daemons that setsid) are then still
    /// seen: they are stopped too (TERM, grace, KILL) before the lock is released.
    #[arg(long)]
    pub(crate) subreaper: bool,

    /// Run the command in a PID namespace of its own (needs CAP_SYS_ADMIN, e.g. root)
    ///
    /// Nothing the command starts can outlive it, whatever it does: when it exits, everything
    /// left in its namespace is stopped (TERM, grace, KILL), and if consullock dies, the kernel
    /// kills the whole namespace. The command does not get the terminal's foreground.
    #[arg(long)]
    pub(crate) contain: bool,

    /// The command: one string for `sh -c`, or `-- PROG ARGS...`
    ///
    /// One string runs through `sh -c` (as in consullock 4.2); after `--`, or as several
    /// arguments, the program runs directly with its arguments untouched.
    #[arg(value_name = "COMMAND", required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<OsString>,
}

/// `dev-server` options.
#[derive(Debug, Args)]
pub(crate) struct DevServerArgs {
    /// Address to listen on (port 0 picks a free port; the start-up line says which).
    #[arg(long, default_value = "127.0.0.1:8500")]
    pub(crate) listen: SocketAddr,

    /// Require this ACL token on every request (403 `Permission denied` without it).
    #[arg(long, value_name = "TOKEN")]
    pub(crate) acl_token: Option<String>,

    /// The agent's node name, as Consul's `-node` (default: the host name)
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,

    /// Test-only: serve `/_devserver/faults` to inject HTTP faults (see `devserver::faults`).
    #[arg(long, hide = true)]
    pub(crate) test_faults: bool,
}

/// The man page: the program's page, then each subcommand's synopsis, description and
/// options, all from the clap model.
pub(crate) fn man_page() -> std::io::Result<Vec<u8>> {
    let command = command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("consullock {}", sub.get_name());
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        let man = clap_mangen::Man::new(sub.clone().bin_name(name));
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
    }
    Ok(out)
}

/// A completion script for `shell`.
pub(crate) fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(), "consullock", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_man_page_is_up_to_date() {
        let committed = include_bytes!("../../man/consullock.1");
        let current = man_page().unwrap();
        assert!(
            committed[..] == current[..],
            "man/consullock.1 is out of date: run `cargo run -- man > man/consullock.1`"
        );
    }

    #[test]
    fn completions_render_for_each_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = String::from_utf8(completions(shell)).unwrap();
            assert!(script.contains("consullock"), "{shell}");
            for word in [
                "lock",
                "unlock",
                "execute",
                "status",
                "session-ttl",
                "kill-grace",
            ] {
                assert!(script.contains(word), "{shell} lacks {word}");
            }
        }
    }

    #[test]
    fn clap_model_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn execute_command_forms() {
        let parse = |args: &[&str]| match parse(args.iter().map(OsString::from).collect())
            .unwrap()
            .command
        {
            Command::Execute(e) => e.command,
            _ => unreachable!(),
        };
        assert_eq!(parse(&["c", "execute", "k", "echo hi"]), ["echo hi"]);
        assert_eq!(
            parse(&["c", "execute", "k", "--", "ls", "-la"]),
            ["ls", "-la"]
        );
        assert_eq!(
            parse(&["c", "execute", "--timeout", "3", "k", "ls", "-l", "--", "x"]),
            ["ls", "-l", "--", "x"]
        );
    }
}
