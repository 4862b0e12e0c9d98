//! Test harness shared by the integration tests: a raw HTTP client and the Consul under test.

// Each test file uses a different part of the harness.
#![allow(dead_code)]

pub(crate) mod consul;
pub(crate) mod fake;
pub(crate) mod http;
pub(crate) mod proxy;

pub(crate) use consul::{TestConsul, wait_until};
#[allow(unused_imports)]
pub(crate) use http::Response;

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
