/*!
consullock: run a command only while holding a Consul lock.

The crate is both the `consullock` command-line tool and a library exposing the same engine:
sessions that renew themselves and report loss ([`session`]), locks that are acquired with
blocking queries, watched and released cleanly ([`lock`]), and the supervisor that runs a command
under a lock ([`supervisor`]).
*/

pub mod app;
pub mod cli;
pub mod config;
pub mod consul;
pub mod devserver;
pub mod error;
pub mod execute;
pub mod exit;
pub mod key;
pub mod lock;
pub mod manager;
pub mod session;
pub mod supervisor;

pub use error::Error;
pub use manager::{LockGuard, LockManager};
