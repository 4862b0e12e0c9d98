//! Integration tests: they drive the real `consullock` binary (and the library) against a Consul
//! address: a private dev server per test, or the Consul named by `CONSULLOCK_TEST_CONSUL_ADDR`.

mod bad_input;
mod conformance;
mod container;
mod devserver_robustness;
mod docs;
mod errors;
mod execute;
mod faults;
mod go_recipe;
mod hostile;
mod library;
mod lock;
mod promise;
mod proxy;
mod review_findings;
mod round_trips;
mod safety;
mod semaphore;
mod status;
mod support;
mod torture;
