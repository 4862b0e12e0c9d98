//! Test harness shared by the integration tests: a raw HTTP client and the Consul under test.

// Each test file uses a different part of the harness.
#![allow(dead_code)]

pub(crate) mod consul;
pub(crate) mod fake;
pub(crate) mod go_recipe;
pub(crate) mod holder;
pub(crate) mod http;
pub(crate) mod process;
pub(crate) mod proxy;
pub(crate) mod stamps;

pub(crate) use consul::{TestConsul, wait_until};
#[allow(unused_imports)]
pub(crate) use http::Response;

/// The `consullock` binary the tests drive as a client: this build's, or the one named by
/// `CONSULLOCK_TEST_BIN` (to show that a new test fails against an older build). Dev servers
/// always come from this build.
pub(crate) fn consullock_bin() -> std::path::PathBuf {
    match std::env::var_os("CONSULLOCK_TEST_BIN") {
        Some(path) if !path.is_empty() => path.into(),
        _ => env!("CARGO_BIN_EXE_consullock").into(),
    }
}

/// Prints a line past the test harness's output capture: skips and summaries must be seen in a
/// passing run, not only in a failing one.
pub(crate) fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Says that a test skipped something, and why.
pub(crate) fn skip(test: &str, reason: &str) {
    report(&format!("SKIP {test}: {reason}"));
}

/// The value consullock 4.2 stores in a lock key it holds with `session`: pretty-printed JSON
/// with sorted keys. Tests that take a lock by hand store this, so that consullock sees a lock
/// (a key holding anything else is refused untouched).
pub(crate) fn lock_value(key: &str, session: &str) -> String {
    format!(
        "{{\n    \"created\": \"2017-11-30T14:55:49.322108\",\n    \"key\": \"{key}\",\n    \"metadata\": null,\n    \"secondsToLock\": 2.6241003070026636e-05,\n    \"session\": \"{session}\"\n}}"
    )
}
