//! A leader loop: acquire the lock, lead until the lock is lost, wait, and try again.
//!
//! Run several copies against one Consul and stop the leader (Ctrl-C) or destroy its session:
//! another copy takes over.
//!
//! ```sh
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example leader_loop
//! ```

use std::time::Duration;

use consullock::LockManager;
use consullock::lock::AcquireOptions;

/// Pause after losing leadership before competing again, so a flapping leader does not thrash.
const REJOIN_DELAY: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = LockManager::from_env()?.with_session_ttl(Some(Duration::from_secs(10)));
    let key = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/leader".into());
    loop {
        println!("waiting to lead {key}");
        let acquire = manager.acquire(&key, AcquireOptions::default());
        let mut guard = tokio::select! {
            guard = acquire => guard?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        println!(
            "leading with fencing token {}",
            guard.fencing_token().unwrap_or_default()
        );
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticks.tick() => println!("leader work (token {})", guard.fencing_token().unwrap_or_default()),
                reason = guard.lost() => {
                    println!("leadership lost: {reason}");
                    break;
                }
                _ = tokio::signal::ctrl_c() => {
                    guard.release().await?;
                    println!("stepped down");
                    return Ok(());
                }
            }
        }
        drop(guard);
        tokio::time::sleep(REJOIN_DELAY).await;
    }
}
