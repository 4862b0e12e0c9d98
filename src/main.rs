/*!
The `consullock` program: a client of the `consullock` library. Parse the command line, run the
subcommand, turn the outcome into an exit code. The command-line modules live under `cli/` and
belong to this binary; the library never sees them.
*/

mod cli;

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // First, while the process has a single thread: `execute --contain` starts this program
    // again as the init of the command's PID namespace, and that init forks at once.
    // A panic is an internal error (exit 1), never the default 101: that is the code of a lost
    // lock. The panic's message has been printed by then.
    let code = std::panic::catch_unwind(|| {
        cli::contain_init(&args).unwrap_or_else(|| cli::run(args.clone()))
    })
    .unwrap_or(cli::exit::INTERNAL);
    // The last lines (the error that explains the code) must be seen whenever stderr is read
    // at all; a stderr nobody reads delays the exit by at most this.
    cli::log::flush(cli::log::EXIT_FLUSH_TIMEOUT);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
