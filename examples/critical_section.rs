//! Guard a critical section in a Rust program, and stop working the moment the lock is lost.
//!
//! ```sh
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example critical_section
//! ```
//! Without `CONSUL_HTTP_ADDR`, the example starts an in-process dev server to run against.

use std::time::Duration;

use consullock::LockManager;
use consullock::devserver::DevServer;
use consullock::lock::AcquireOptions;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _demo_server;
    let manager = if std::env::var_os("CONSUL_HTTP_ADDR").is_some() {
        LockManager::from_env()?
    } else {
        let server = DevServer::start(Default::default()).await?;
        let manager = LockManager::for_address(&server.address().to_string())?;
        _demo_server = server;
        manager
    };

    let options = AcquireOptions {
        timeout: Some(Duration::from_secs(30)),
        metadata: Some(serde_json::json!({"purpose": "example"})),
        ..AcquireOptions::default()
    };
    let mut guard = manager
        .acquire("examples/critical-section", options)
        .await?;
    // A single lock has a fencing token (a semaphore slot would not).
    let token = guard.fencing_token().unwrap_or_default();
    println!("lock held; fencing token {token}");

    tokio::select! {
        // The work, which must not go on without the lock.
        done = work(token) => println!("work done: {done} steps"),
        // Consul says the lock is gone (or could not confirm it in time): stop at once.
        reason = guard.lost() => {
            eprintln!("lock lost ({reason}); abandoning the work");
            return Ok(());
        }
    }
    guard.release().await?;
    println!("lock released");
    Ok(())
}

/// Stands for real work: each step would carry the fencing token to the resource it changes.
async fn work(fencing_token: u64) -> u32 {
    let mut steps = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        steps += 1;
        println!("step {steps} with fencing token {fencing_token}");
    }
    steps
}
