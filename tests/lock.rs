//! `consullock lock` and `unlock` against a Consul (the dev server unless
//! `CONSULLOCK_TEST_CONSUL_ADDR` names another).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::support::process::{EXIT, Running, code, run};
use crate::support::{TestConsul, wait_until};

fn stdout_json(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}"))
}

fn lock(consul: &TestConsul, args: &[&str]) -> Output {
    let mut command = consul.command();
    command.arg("lock").args(args);
    run(command)
}

fn unlock(consul: &TestConsul, args: &[&str]) -> Output {
    let mut command = consul.command();
    command.arg("unlock").args(args);
    run(command)
}

fn value_json(entry: &Value) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry["Value"].as_str().expect("a value"))
        .expect("base64");
    serde_json::from_slice(&bytes).expect("lock JSON")
}

/// A `lock` waiting in the background at `-vv`, once it says it blocks on the key.
fn waiter(consul: &TestConsul, key: &str, extra: &[&str]) -> Running {
    let mut command = consul.command();
    command.args(["-vv", "lock"]).args(extra).arg(key);
    let mut waiter = Running::start(command, false);
    waiter.wait_stderr("waiting for a change");
    waiter
}

#[test]
fn lock_when_unlocked_prints_the_lock_json_and_stores_it() {
    let consul = TestConsul::start();
    let key = consul.unique_key("plain");
    let output = lock(&consul, &["--metadata", r#"{"owner":"tests","n":1}"#, &key]);
    assert_eq!(code(&output), 0, "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout:?}");
    let printed = stdout_json(&output);
    for field in ["created", "key", "metadata", "secondsToLock", "session"] {
        assert!(printed.get(field).is_some(), "{field} missing in {printed}");
    }
    assert_eq!(printed["key"], key.as_str());
    assert_eq!(
        printed["metadata"],
        serde_json::json!({"owner": "tests", "n": 1})
    );
    let created = printed["created"].as_str().unwrap();
    assert_eq!(
        created.len(),
        "2017-11-30T14:55:49.322108".len(),
        "{created}"
    );

    let stored = consul.key_entry(&key).expect("the key exists");
    assert_eq!(
        stored["Session"], printed["session"],
        "held by the printed session"
    );
    let value = value_json(&stored);
    assert_eq!(value["metadata"], printed["metadata"]);
    assert_eq!(value["session"], printed["session"]);
    assert_eq!(printed["fencingToken"], stored["ModifyIndex"]);

    // The lock stays held after `lock` exits.
    let again = lock(&consul, &["--non-blocking", &key]);
    assert_eq!(code(&again), 100);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "null");
    assert!(String::from_utf8_lossy(&again.stderr).contains("unable to acquire lock"));

    let output = unlock(&consul, &[&key]);
    assert_eq!(stdout_json(&output), Value::String(key.clone()));
    assert_eq!(
        consul.key_entry(&key),
        None,
        "behavior delete removes the key"
    );
    assert!(consul.sessions_of(&key).is_empty(), "no session left");
}

#[test]
fn metadata_that_is_not_json_is_refused_as_by_consullock_4_2() {
    let consul = TestConsul::start();
    let key = consul.unique_key("meta");
    let output = lock(&consul, &["--metadata", "{bad", &key]);
    assert_eq!(code(&output), 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"Unable to parse value for "metadata" as JSON"#),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(consul.key_entry(&key), None, "nothing was locked");
    // A JSON string is metadata like any other JSON value.
    let output = lock(&consul, &["--metadata", r#""not an object""#, &key]);
    assert_eq!(stdout_json(&output)["metadata"], "not an object");
    unlock(&consul, &[&key]);
}

#[test]
fn blocking_lock_is_woken_by_the_release_without_polling() {
    // Counting requests needs the dev server's statistics.
    let consul = TestConsul::start_dev_server(&[]);
    let key = consul.unique_key("blocking");
    assert_eq!(code(&lock(&consul, &[&key])), 0);

    let waiter = waiter(&consul, &key, &[]);
    let before = consul.dev_stats().unwrap()["requests"].as_u64().unwrap();
    // Let time pass while the lock is held: a polling client would show up in the count.
    std::thread::sleep(Duration::from_secs(3));
    let during = consul.dev_stats().unwrap()["requests"].as_u64().unwrap() - before;
    assert!(
        during <= 1,
        "the waiter sent {during} requests in 3 s while blocked"
    );

    let mut waiter = waiter;
    assert_eq!(
        stdout_json(&unlock(&consul, &[&key])),
        Value::String(key.clone())
    );
    let released_at = Instant::now();
    let acquired_at = waiter.first_stdout_line_at();
    let line = waiter.stdout();
    let handoff = acquired_at.saturating_duration_since(released_at);
    let printed: Value = serde_json::from_str(line.trim()).expect("lock JSON");
    assert_eq!(printed["key"], key.as_str());
    crate::support::report(&format!(
        "blocking_lock: {during} requests from the waiter in 3 s of waiting; hand-over {handoff:?}"
    ));
    assert!(
        handoff < Duration::from_millis(50),
        "hand-over took {handoff:?}"
    );
    assert_eq!(waiter.wait(EXIT), 0);
    unlock(&consul, &[&key]);
}

#[test]
fn non_blocking_and_timeout_on_a_held_lock() {
    let consul = TestConsul::start();
    let key = consul.unique_key("held");
    assert_eq!(code(&lock(&consul, &[&key])), 0);

    let output = lock(&consul, &["--non-blocking", &key]);
    assert_eq!(
        (
            code(&output),
            String::from_utf8_lossy(&output.stdout).trim()
        ),
        (100, "null")
    );

    let started = Instant::now();
    let output = lock(&consul, &["--timeout", "1", &key]);
    assert_eq!(
        (
            code(&output),
            String::from_utf8_lossy(&output.stdout).trim()
        ),
        (5, "null")
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the timeout"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("timed out"));

    // Only the holder's session remains: the failed attempts destroyed theirs.
    assert_eq!(consul.sessions_of(&key).len(), 1);
    unlock(&consul, &[&key]);
    assert!(consul.sessions_of(&key).is_empty());
}

#[test]
fn a_lock_with_a_short_ttl_is_free_again_after_its_ttl() {
    let consul = TestConsul::start();
    let key = consul.unique_key("ttl");
    let taken = Instant::now();
    assert_eq!(code(&lock(&consul, &["--session-ttl", "10", &key])), 0);
    wait_until(Duration::from_secs(40), "the session to expire", || {
        consul.key_entry(&key).is_none()
    });
    let expired_after = taken.elapsed();
    assert!(
        expired_after >= Duration::from_secs(10),
        "expired after {expired_after:?}, before its TTL"
    );
    assert_eq!(
        code(&lock(&consul, &["--non-blocking", &key])),
        0,
        "free again"
    );
    unlock(&consul, &[&key]);
}

#[test]
fn invalid_ttl_lock_delay_and_keys_are_refused() {
    let consul = TestConsul::start();
    let key = consul.unique_key("invalid");
    for ttl in ["5", "9.9", "86401", "-1", "nan"] {
        let output = lock(&consul, &["--session-ttl", ttl, &key]);
        assert_eq!(code(&output), 7, "--session-ttl {ttl}: {output:?}");
    }
    for delay in ["61", "-1"] {
        let output = lock(&consul, &["--lock-delay", delay, &key]);
        assert_eq!(code(&output), 7, "--lock-delay {delay}: {output:?}");
    }
    for (bad, normalized) in [
        ("a//b", "a/b"),
        ("a/../b", "b"),
        ("a/b/", "a/b"),
        ("a/./b", "a/b"),
    ] {
        let output = lock(&consul, &[bad]);
        assert_eq!(code(&output), 6, "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{normalized:?}")),
            "{bad}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    assert!(consul.sessions_of(&key).is_empty(), "nothing was created");
    assert_eq!(consul.key_entry(&key), None);
}

#[test]
fn usage_errors_exit_3_and_help_exits_0() {
    let consul = TestConsul::start();
    let run_args = |args: &[&str]| {
        let mut command = consul.command();
        command.args(args);
        run(command)
    };
    for args in [
        &[][..],
        &["lock"],
        &["lock", "--no-such-flag", "k"],
        &["frobnicate"],
    ] {
        let output = run_args(args);
        assert_eq!(code(&output), 3, "{args:?}");
        assert!(
            output.stdout.is_empty(),
            "{args:?}: usage errors go to stderr"
        );
    }
    for args in [
        &["--help"][..],
        &["--version"],
        &["lock", "--help"],
        &["-h"],
        &["help"],
    ] {
        let output = run_args(args);
        assert_eq!(code(&output), 0, "{args:?}");
        assert!(!output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn unlock_of_a_free_key_prints_null() {
    let consul = TestConsul::start();
    let key = consul.unique_key("free");
    let output = unlock(&consul, &[&key]);
    assert_eq!((code(&output), stdout_json(&output)), (0, Value::Null));
}

#[test]
fn unlock_regex_releases_matching_locks_and_leaves_others() {
    let consul = TestConsul::start();
    let base = consul.unique_key("regex");
    let keys = [
        format!("{base}/a"),
        format!("{base}/b"),
        format!("{base}/other-a"),
    ];
    for key in &keys {
        assert_eq!(code(&lock(&consul, &[key])), 0);
    }
    // A key that is not a lock at all is left alone too.
    consul.put(&format!("/v1/kv/{base}/plain"), b"x");

    let pattern = format!("{}/[ab]", regex::escape(&base));
    let output = unlock(&consul, &["-r", &pattern]);
    assert_eq!(stdout_json(&output), serde_json::json!([keys[0], keys[1]]));
    assert_eq!(consul.key_entry(&keys[0]), None);
    assert_eq!(consul.key_entry(&keys[1]), None);
    assert!(
        consul.key_entry(&keys[2]).unwrap()["Session"].is_string(),
        "other lock still held"
    );
    assert!(consul.key_entry(&format!("{base}/plain")).is_some());

    let output = unlock(&consul, &["-r", &format!("{}/.*", regex::escape(&base))]);
    assert_eq!(stdout_json(&output), serde_json::json!([keys[2]]));
    consul.delete(&format!("/v1/kv/{base}/plain"));

    let output = unlock(&consul, &["-r", "("]);
    assert_eq!(code(&output), 3, "an invalid regex is an argument error");
}

#[test]
fn hooks_receive_the_key() {
    let consul = TestConsul::start();
    let key = consul.unique_key("hooks");
    let dir = std::env::temp_dir().join(format!("consullock-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join(format!("{}.log", key.replace('/', "_")));
    let hook = |name: &str| {
        let path = dir.join(format!("{name}-{}", key.replace('/', "_")));
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{name} $1\" >> '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path.to_string_lossy().into_owned()
    };
    let before = hook("before");
    let already = hook("already");
    let failing = dir.join("does-not-exist").to_string_lossy().into_owned();

    let output = lock(&consul, &[&key, "--on-before-lock", &before, &failing]);
    assert_eq!(code(&output), 0, "a failing hook is not fatal: {output:?}");
    let output = lock(
        &consul,
        &[
            &key,
            "--non-blocking",
            "--on-before-lock",
            &before,
            "--on-already-locked",
            &already,
        ],
    );
    assert_eq!(code(&output), 100);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged,
        format!("before {key}\nbefore {key}\nalready {key}\n")
    );
    unlock(&consul, &[&key]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_lock_written_by_consullock_4_2_is_found_and_released() {
    let consul = TestConsul::start();
    let key = consul.unique_key("python");
    // What the Python tool does: a session with lock-delay 0 and behavior delete, then acquire
    // with its pretty-printed, sorted JSON.
    let created = consul.put(
        "/v1/session/create",
        br#"{"LockDelay":"0s","Behavior":"delete","TTL":"86400s","Name":"python"}"#,
    );
    let session = created.json()["ID"].as_str().unwrap().to_string();
    let value = format!(
        "{{\n    \"created\": \"2017-11-30T14:55:49.322108\",\n    \"key\": \"{key}\",\n    \"metadata\": null,\n    \"secondsToLock\": 2.6241003070026636e-05,\n    \"session\": \"{session}\"\n}}"
    );
    let acquired = consul.put(&format!("/v1/kv/{key}?acquire={session}"), value.as_bytes());
    assert_eq!(acquired.text().trim(), "true");

    assert_eq!(
        code(&lock(&consul, &["--non-blocking", &key])),
        100,
        "seen as held"
    );
    let output = unlock(&consul, &[&key]);
    assert_eq!(stdout_json(&output), Value::String(key.clone()));
    assert_eq!(consul.key_entry(&key), None);
    let info = consul.get(&format!("/v1/session/info/{session}")).json();
    assert_eq!(info, serde_json::json!([]), "its session was destroyed");
}

#[test]
fn sigterm_during_a_blocking_wait_exits_promptly_and_leaves_no_session() {
    let consul = TestConsul::start();
    let key = consul.unique_key("sigterm");
    assert_eq!(code(&lock(&consul, &[&key])), 0);
    for (signal, expected) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGINT, 130),
    ] {
        let mut waiter = waiter(&consul, &key, &[]);
        assert_eq!(consul.sessions_of(&key).len(), 2, "holder and waiter");
        waiter.signal(signal);
        let sent = Instant::now();
        let status = waiter.wait(EXIT);
        let took = sent.elapsed();
        assert_eq!(status, expected, "{signal}");
        crate::support::report(&format!(
            "sigterm_during_wait: {signal} ended the wait in {took:?}"
        ));
        assert!(took < Duration::from_secs(1), "{signal} took {took:?}");
        assert_eq!(
            consul.sessions_of(&key).len(),
            1,
            "the waiter's session is gone"
        );
    }
    unlock(&consul, &[&key]);
}

#[test]
fn a_waiting_lock_shows_its_holder_on_a_terminal_only() {
    let consul = TestConsul::start();
    let key = consul.unique_key("holderline");
    assert_eq!(code(&lock(&consul, &["--metadata", r#""m""#, &key])), 0);
    let holder_pid = value_json(&consul.key_entry(&key).unwrap())["pid"].clone();

    // Not a terminal: nothing but the one-line error.
    let output = lock(&consul, &["--timeout", "0.5", &key]);
    assert_eq!(code(&output), 5);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("held by session"), "{stderr}");

    // A terminal, through script(1): one line naming the holder, then cleared in place.
    if Command::new("script").arg("--version").output().is_err() {
        crate::support::skip(
            "a_waiting_lock_shows_its_holder (terminal part)",
            "script(1) is not installed",
        );
    } else {
        let command = consul.command();
        let shell_command = format!(
            "{} lock --timeout 0.5 {key}",
            crate::support::consullock_bin().display()
        );
        let mut script = Command::new("script");
        script.args(["-qec", &shell_command, "/dev/null"]);
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => script.env(name, value),
                None => script.env_remove(name),
            };
        }
        let output = run(script);
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(text.matches("held by session").count(), 1, "{text:?}");
        assert!(
            text.contains(&format!("waiting for {key}, held by session")),
            "{text:?}"
        );
        assert!(text.contains(&format!("pid {holder_pid}")), "{text:?}");
        assert!(
            text.contains("\r\x1b[2Knull"),
            "the line is cleared before the result: {text:?}"
        );
    }
    unlock(&consul, &[&key]);
}

#[test]
fn a_free_key_under_lock_delay_is_retried_until_the_delay_ends() {
    let consul = TestConsul::start();
    let key = consul.unique_key("lockdelay");
    let created = consul.put(
        "/v1/session/create",
        br#"{"LockDelay":"2s","Behavior":"delete","Name":"delayed"}"#,
    );
    let session = created.json()["ID"].as_str().unwrap().to_string();
    assert_eq!(
        consul
            .put(&format!("/v1/kv/{key}?acquire={session}"), b"x")
            .text()
            .trim(),
        "true"
    );
    // Invalidating the session deletes the key and puts a 2 s lock-delay on it.
    consul.put(&format!("/v1/session/destroy/{session}"), b"");
    let invalidated = Instant::now();
    assert_eq!(consul.key_entry(&key), None);

    let output = lock(&consul, &["--timeout", "10", "-i", "0.2", &key]);
    let waited = invalidated.elapsed();
    assert_eq!(code(&output), 0, "{output:?}");
    assert!(
        waited >= Duration::from_secs(2),
        "acquired during the lock-delay ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(5),
        "kept retrying with a short pause ({waited:?})"
    );
    unlock(&consul, &[&key]);
}
