//! Test harness shared by the integration tests: a raw HTTP client and the Consul under test.

// Each test file uses a different part of the harness.
#![allow(dead_code)]

pub(crate) mod consul;
pub(crate) mod fake;
pub(crate) mod http;

pub(crate) use consul::{TestConsul, wait_until};
#[allow(unused_imports)]
pub(crate) use http::Response;
