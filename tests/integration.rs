//! Integration tests: they drive the real `consullock` binary against a Consul address.

mod execute;
mod support;
