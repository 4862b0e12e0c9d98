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

/// Says, past the test harness's output capture, that a test skipped something and why: a skip
/// must be seen in a passing run, not only in a failing one.
pub(crate) fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}
