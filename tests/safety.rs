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

#[test]
fn failing_renewals_lose_a_ttl_only_lock_although_reads_still_succeed() {
    // Only renewals fail: the lock watch's reads keep succeeding, but they do not push the TTL
    // back, so the lock must count as lost once TTL + lock-delay - grace - margin has passed
    // since the last renew (10 + 3 - 1 - 1 = 11 s), long before the server would expire the
    // session (2×TTL) and the watch could see it.
    let consul = TestConsul::start_dev_server(&["--test-faults"]);
    let key = consul.unique_key("renew-fails");
    let dir = std::env::temp_dir().join(format!("consullock-safety-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let started_file = dir.join(format!("{}.started", key.replace('/', "_")));
    let child = consul
        .command()
        .args([
            "execute",
            "--ttl-only",
            "--session-ttl",
            "10",
            "--lock-delay",
            "3",
        ])
        .args(["--kill-grace", "1", &key, "--", "sh", "-c"])
        .arg(format!("touch '{}'; exec sleep 60", started_file.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_until(Duration::from_secs(10), "the command to start", || {
        started_file.exists()
    });
    consul.faults(serde_json::json!({"no_leader_ms": 60_000, "path_prefix": "/v1/session/renew/"}));
    let faulted = Instant::now();
    let output = child.wait_with_output().unwrap();
    let stopped_after = faulted.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("could not renew or confirm"), "{stderr}");
    // The last renew was at most TTL/2 = 5 s before the fault; the window is 11 s after it,
    // and nobody else can have the lock before 13 s after it.
    assert!(
        stopped_after < Duration::from_secs(12),
        "stopped {stopped_after:?} after the fault"
    );
    consul.clear_faults();
    std::fs::remove_dir_all(&dir).ok();
}
