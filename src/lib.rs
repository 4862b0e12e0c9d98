/*!
consullock: run a command only while holding a Consul lock.

The crate is both the `consullock` command-line tool and a library exposing the same engine:
sessions that renew themselves and report loss ([`session`]), locks that are acquired with
blocking queries, watched and released cleanly ([`lock`]), and the supervisor that runs a command
under a lock ([`supervisor`]). [`LockManager`] is the front door.

The examples below run against an in-process [`devserver::DevServer`]; in a program, build the
manager with [`LockManager::from_env`] (it reads `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, ... as
the Consul CLI does).

Guard a critical section, stopping the work if the lock is lost:

```
# tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
# let server = consullock::devserver::DevServer::start(Default::default()).await?;
use consullock::{LockManager, lock::AcquireOptions};

let manager = LockManager::for_address(&server.address().to_string())?;
let mut guard = manager.acquire("jobs/report", AcquireOptions::default()).await?;
let token = guard.fencing_token(); // Some(n): hand it to the resources you change
tokio::select! {
    () = async { /* the work */ } => {}
    reason = guard.lost() => panic!("lock lost: {reason}"),
}
guard.release().await?;
# Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
```

Try once, without waiting, and give up if someone else holds the lock:

```
# tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
# let server = consullock::devserver::DevServer::start(Default::default()).await?;
use consullock::{Error, LockManager, lock::AcquireOptions};

let manager = LockManager::for_address(&server.address().to_string())?;
let holder = manager.acquire("jobs/sync", AcquireOptions::default()).await?;
let try_once = AcquireOptions { non_blocking: true, ..AcquireOptions::default() };
match manager.acquire("jobs/sync", try_once).await {
    Err(Error::NotAcquired { key, refusal }) => println!("{key}: {refusal}; skipping this run"),
    other => panic!("unexpected: {other:?}"),
}
holder.release().await?;
# Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
```

Run a command under a lock (the supervisor of `consullock execute`):

```
# tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
# let server = consullock::devserver::DevServer::start(Default::default()).await?;
use consullock::{LockManager, lock::AcquireOptions, supervisor::{ChildCommand, Outcome}};

let manager = LockManager::for_address(&server.address().to_string())?;
let command = ChildCommand::Shell("test \"$CONSUL_LOCK_HELD\" = true".into());
let executed = manager.execute("jobs/backup", command, AcquireOptions::default()).await?;
assert!(matches!(executed.outcome, Outcome::Exited(0)));
# Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
```

Find and release locks by regular expression, as `consullock unlock -r` does:

```
# tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
# let server = consullock::devserver::DevServer::start(Default::default()).await?;
use consullock::{LockManager, lock::AcquireOptions};

let manager = LockManager::for_address(&server.address().to_string())?;
let a = manager.acquire("deploy/a", AcquireOptions::default()).await?;
let b = manager.acquire("deploy/b", AcquireOptions::default()).await?;
let found = manager.find_regex("deploy/.*").await?;
assert_eq!(found.len(), 2);
assert_eq!(manager.release_regex("deploy/.*").await?, ["deploy/a", "deploy/b"]);
# drop((a, b));
# Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
```
*/

pub mod clock;
pub mod config;
pub mod consul;
#[cfg(feature = "dev-server")]
pub mod devserver;
pub mod error;
pub mod execute;
pub mod key;
pub mod lock;
pub mod manager;
pub mod session;
pub mod supervisor;

pub use error::Error;
pub use manager::{LockGuard, LockManager};
