//! consullock: run a command only while holding a Consul lock.
//!
//! The crate is both the `consullock` command-line tool and a library exposing the same engine.

pub mod devserver;
pub mod supervisor;
