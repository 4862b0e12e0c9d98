//! The contact window of `execute`: confirmed often enough that a healthy lock is never taken
//! for lost, and started from the acquisition, not from an old renew.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::TestConsul;

#[test]
fn a_lock_acquired_after_a_long_wait_is_not_taken_for_lost() {
    let consul = TestConsul::start();
    let key = consul.unique_key("late-acquire");
    let holder = consul
        .command()
        .args(["lock", &key])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(holder.status.success());

    // Contact window: min(TTL + lock-delay, lock-delay) - grace - 1 s margin = 1.5 s. The
    // waiter's session is created now and next renewed after TTL/2 = 5 s; it acquires after
    // about 3 s, when its last renew is older than the window.
    let waiter = consul
        .command()
        .args([
            "execute",
            "--session-ttl",
            "10",
            "--lock-delay",
            "3",
            "--kill-grace",
            "0.5",
        ])
        .args([&key, "--", "sh", "-c", "sleep 3"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let unlocked = consul
        .command()
        .args(["unlock", &key])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(unlocked.status.success());
    let output = waiter.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the command ran to its end: {stderr}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "waited, then ran 3 s"
    );
}

#[test]
fn a_tiny_contact_window_is_confirmed_in_time_while_the_command_runs() {
    let consul = TestConsul::start();
    let key = consul.unique_key("tiny-window");
    // Window: lock-delay 2 s - grace 0.5 s - 1 s margin = 0.5 s, far below the renew interval
    // (TTL/2 = 5 s): only the watch reads can keep confirming the lock.
    let output = consul
        .command()
        .args([
            "execute",
            "--session-ttl",
            "10",
            "--lock-delay",
            "2",
            "--kill-grace",
            "0.5",
        ])
        .args([&key, "--", "sleep", "3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}
