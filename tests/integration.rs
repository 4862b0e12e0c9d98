//! Integration tests: they drive the real `consullock` binary against a Consul address.

mod conformance;
mod container;
mod support;
