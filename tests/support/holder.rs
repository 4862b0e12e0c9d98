//! Holding a lock the way the safety cases need it: an `execute` whose command reports what it
//! receives, and session settings with short, known contact windows.

use super::TestConsul;
use super::process::{Running, example};

/// Session settings whose contact window is 3 s: lock-delay 5 s (a node check may invalidate
/// the session at any time) − 1 s kill grace − 1 s margin.
pub(crate) const SHORT_WINDOW: [&str; 6] = [
    "--session-ttl",
    "10",
    "--lock-delay",
    "5",
    "--kill-grace",
    "1",
];
/// Settings whose contact window is 13 s: TTL-only, TTL 10 s, lock-delay 15 s − 2 s (an unlock
/// by force bounds every session by its lock-delay, TTL-only or not).
pub(crate) const LONG_WINDOW: [&str; 7] = [
    "--ttl-only",
    "--session-ttl",
    "10",
    "--lock-delay",
    "15",
    "--kill-grace",
    "1",
];
/// An `execute` holding `key` (with `settings` before the key) whose command is `print_signals
/// --exit-on-term` (one line per signal received, exit on TERM), once that command runs.
pub(crate) fn hold(consul: &TestConsul, key: &str, settings: &[&str]) -> Running {
    let print_signals = example("print_signals");
    let mut command = consul.command();
    command.arg("execute").args(settings).args([
        key,
        "--",
        print_signals.to_str().unwrap(),
        "--exit-on-term",
    ]);
    let mut holder = Running::start(command, false);
    holder.ready_pid();
    holder
}

/// An `execute` holding `key` (with `settings` before the key) whose command is `print_signals
/// --stdin --exit-on-term`, once that command runs: it ends by itself (exit 0) when the test
/// closes its stdin ([`Running::wait`] does), and exits 143 on TERM.
pub(crate) fn hold_until_stdin_closes(
    consul: &TestConsul,
    key: &str,
    settings: &[&str],
) -> Running {
    let print_signals = example("print_signals");
    let mut command = consul.command();
    command.arg("execute").args(settings).args([
        key,
        "--",
        print_signals.to_str().unwrap(),
        "--stdin",
        "--exit-on-term",
    ]);
    let mut holder = Running::start(command, true);
    holder.ready_pid();
    holder
}
