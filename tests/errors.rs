//! Failures that come from the environment or from Consul: one line, the documented exit code,
//! and never the token.

use std::process::{Command, Output, Stdio};

use crate::support::TestConsul;

const TOKEN: &str = "s3cr3t-t0ken-6f1d";

fn run(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("run consullock")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn invalid_environment_exits_2_and_names_the_variable() {
    let consul = TestConsul::start();
    let cases = [
        ("CONSUL_HTTP_ADDR", "gopher://x:1"),
        ("CONSUL_HTTP_SSL", "sure"),
        ("CONSUL_HTTP_SSL_VERIFY", "nope"),
        ("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token"),
        ("CONSUL_SCHEME", "ftp"),
        ("CONSUL_CLIENT_CERT", "/tmp/cert.pem"),
    ];
    for (variable, value) in cases {
        for subcommand in [
            &["lock", "k"][..],
            &["unlock", "k"],
            &["execute", "k", "true"],
        ] {
            let mut command = consul.command();
            command.env(variable, value).args(subcommand);
            let output = run(command);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{variable}={value} {subcommand:?}"
            );
            let message = stderr(&output);
            assert!(message.contains(variable), "{message}");
            assert_eq!(message.lines().count(), 1, "one line: {message}");
        }
    }
}

#[test]
fn unreachable_consul_exits_8_naming_the_address() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let consul = TestConsul::start();
    for subcommand in [
        &["lock", "k"][..],
        &["unlock", "k"],
        &["execute", "k", "true"],
    ] {
        let mut command = consul.command();
        command
            .env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .args(subcommand);
        let output = run(command);
        assert_eq!(
            output.status.code(),
            Some(8),
            "{subcommand:?}: {}",
            stderr(&output)
        );
        let message = stderr(&output);
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert_eq!(message.lines().count(), 1, "one line: {message}");
    }
}

#[test]
fn permission_denied_exits_4_with_a_token_hint() {
    let consul = TestConsul::start_dev_server(&["--acl-token", TOKEN]);
    for token in [None, Some("wrong-token")] {
        for subcommand in [
            &["lock", "k"][..],
            &["unlock", "k"],
            &["execute", "k", "true"],
        ] {
            let mut command = consul.command();
            command.env_remove("CONSUL_HTTP_TOKEN").args(subcommand);
            if let Some(token) = token {
                command.env("CONSUL_HTTP_TOKEN", token);
            }
            let output = run(command);
            let message = stderr(&output);
            assert_eq!(output.status.code(), Some(4), "{subcommand:?}: {message}");
            assert!(message.contains("CONSUL_HTTP_TOKEN"), "{message}");
            assert_eq!(message.lines().count(), 1, "one line: {message}");
        }
    }
}

#[test]
fn the_token_is_never_printed_even_at_trace_level() {
    let consul = TestConsul::start_dev_server(&["--acl-token", TOKEN]);
    let key = consul.unique_key("secret");
    let runs: Vec<(Vec<String>, i32)> = vec![
        (vec!["-vvv".into(), "lock".into(), key.clone()], 0),
        (
            vec![
                "-vvv".into(),
                "lock".into(),
                "--non-blocking".into(),
                key.clone(),
            ],
            100,
        ),
        (vec!["-vvv".into(), "unlock".into(), key.clone()], 0),
        (
            vec![
                "-vvv".into(),
                "execute".into(),
                key.clone(),
                "--".into(),
                "true".into(),
            ],
            0,
        ),
        (
            vec![
                "-vvv".into(),
                "execute".into(),
                key.clone(),
                "exit 3".into(),
            ],
            3,
        ),
        (
            vec!["-vvv".into(), "unlock".into(), "-r".into(), ".*".into()],
            0,
        ),
    ];
    for (args, expected) in runs {
        let mut command = consul.command();
        command.args(&args);
        let output = run(command);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        );
        assert!(!all.contains(TOKEN), "{args:?} printed the token: {all}");
        assert_eq!(output.status.code(), Some(expected), "{args:?}: {all}");
    }
    // A denied request at trace level does not echo it either.
    let mut command = consul.command();
    command
        .env("CONSUL_HTTP_TOKEN", format!("{TOKEN}-wrong"))
        .args(["-vvv", "lock", &key]);
    let output = run(command);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(!all.contains(TOKEN), "printed the token: {all}");
    assert_eq!(output.status.code(), Some(4));
}

/// Runs `args` at `-vvv` and asserts the token is in neither stdout nor stderr; returns the
/// exit code and stderr.
fn run_secret(consul: &TestConsul, env: &[(&str, String)], args: &[&str]) -> (Option<i32>, String) {
    let mut command = consul.command();
    command
        .env("CONSUL_HTTP_TOKEN", TOKEN)
        .arg("-vvv")
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = run(command);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(!all.contains(TOKEN), "{args:?} printed the token: {all}");
    (output.status.code(), stderr(&output))
}

/// Every subcommand and every failure path we can reach, at `-vvv` with a token set: the token
/// appears nowhere in stdout or stderr.
#[test]
fn the_token_is_never_printed_on_any_path() {
    use crate::support::fake::FakeServer;
    let consul = TestConsul::start_dev_server(&["--acl-token", TOKEN, "--test-faults"]);
    let key = consul.unique_key("secret-paths");
    let expect = |got: (Option<i32>, String), code: i32, what: &str| {
        assert_eq!(got.0, Some(code), "{what}: {}", got.1);
    };
    // Success paths of every subcommand.
    expect(
        run_secret(&consul, &[], &["lock", "--session-ttl", "10", &key]),
        0,
        "lock",
    );
    expect(run_secret(&consul, &[], &["unlock", &key]), 0, "unlock");
    expect(
        run_secret(&consul, &[], &["unlock", "-r", "nothing/.*"]),
        0,
        "unlock -r",
    );
    expect(
        run_secret(&consul, &[], &["execute", &key, "--", "true"]),
        0,
        "execute",
    );
    expect(run_secret(&consul, &[], &["man"]), 0, "man");
    expect(
        run_secret(&consul, &[], &["completions", "bash"]),
        0,
        "completions",
    );
    expect(run_secret(&consul, &[], &["--help"]), 0, "--help");
    // The command's environment carries no token either (it is not ours to hand on), and the
    // token file path works the same.
    let file = std::env::temp_dir().join(format!("consullock-token-{}", std::process::id()));
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let env = [("CONSUL_HTTP_TOKEN_FILE", file.to_str().unwrap().to_string())];
    expect(
        run_secret(
            &consul,
            &env,
            &["execute", &key, "env | grep -v CONSUL_HTTP_TOKEN"],
        ),
        0,
        "token file",
    );
    let _ = std::fs::remove_file(&file);
    // Held elsewhere: non-blocking failure, and a timeout.
    expect(
        run_secret(&consul, &[], &["lock", "--session-ttl", "10", &key]),
        0,
        "hold",
    );
    expect(
        run_secret(&consul, &[], &["lock", "--non-blocking", &key]),
        100,
        "non-blocking",
    );
    expect(
        run_secret(&consul, &[], &["execute", "--non-blocking", &key, "true"]),
        100,
        "execute non-blocking",
    );
    expect(
        run_secret(&consul, &[], &["lock", "--timeout", "1", &key]),
        5,
        "timeout",
    );
    expect(
        run_secret(&consul, &[], &["execute", "--timeout", "1", &key, "true"]),
        5,
        "execute timeout",
    );
    expect(
        run_secret(&consul, &[], &["unlock", &key]),
        0,
        "unlock held",
    );
    // A command that cannot run.
    expect(
        run_secret(&consul, &[], &["execute", &key, "--", "/nonexistent/cmd"]),
        127,
        "127",
    );
    // Consul denies (an ACL outage while the token is right).
    consul.faults(serde_json::json!({"acl_deny_ms": 60_000}));
    expect(run_secret(&consul, &[], &["lock", &key]), 4, "denied");
    expect(
        run_secret(&consul, &[], &["unlock", "-r", ".*"]),
        4,
        "denied -r",
    );
    consul.clear_faults();
    // Consul errors: 500 and 429 with the request retried at trace level.
    consul.faults(serde_json::json!({"no_leader_ms": 1_500}));
    expect(
        run_secret(&consul, &[], &["lock", "--session-ttl", "10", &key]),
        0,
        "no leader",
    );
    expect(
        run_secret(&consul, &[], &["unlock", &key]),
        0,
        "unlock after no leader",
    );
    consul.faults(serde_json::json!({"rate_limit_ms": 60_000}));
    expect(run_secret(&consul, &[], &["unlock", &key]), 8, "429");
    consul.clear_faults();
    // Unreachable and garbage servers.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = [("CONSUL_HTTP_ADDR", format!("127.0.0.1:{port}"))];
    expect(
        run_secret(&consul, &closed, &["unlock", "k"]),
        8,
        "unreachable",
    );
    expect(
        run_secret(&consul, &closed, &["lock", "--non-blocking", "k"]),
        8,
        "unreachable lock",
    );
    for answer in [
        b"garbage\r\n\r\n".to_vec(),
        FakeServer::http("200 OK", &["X-Consul-Index: 3"], b"not json"),
        // Closes without answering.
        Vec::new(),
    ] {
        let fake = FakeServer::start(answer);
        let env = [("CONSUL_HTTP_ADDR", fake.addr())];
        expect(run_secret(&consul, &env, &["unlock", "k"]), 8, "garbage");
        expect(
            run_secret(&consul, &env, &["execute", "--non-blocking", "k", "true"]),
            8,
            "garbage execute",
        );
    }
    // Lock loss in execute: an operator destroys the session.
    let mut child = consul.command();
    child
        .env("CONSUL_HTTP_TOKEN", TOKEN)
        .args([
            "-vvv",
            "execute",
            "--session-ttl",
            "10",
            "--lock-delay",
            "5",
            "--kill-grace",
            "1",
            &key,
            "--",
            "sleep",
            "60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = child.spawn().unwrap();
    crate::support::wait_until(std::time::Duration::from_secs(10), "the lock", || {
        consul.holder(&key).is_some()
    });
    consul.destroy_session(&consul.holder(&key).unwrap());
    let output = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert_eq!(output.status.code(), Some(101), "{all}");
    assert!(!all.contains(TOKEN), "lock loss printed the token: {all}");
}

/// The dev server's request log at `-v` shows neither a `?token=` value nor the
/// `X-Consul-Token` header, on accepted and denied requests alike.
#[test]
fn the_dev_server_log_never_shows_the_token() {
    let consul = TestConsul::start_dev_server(&["-v", "--acl-token", TOKEN]);
    let addr = consul.addr();
    use crate::support::http::request;
    let paths = [
        format!("/v1/kv/a?token={TOKEN}"),
        format!("/v1/kv/a?recurse&token={TOKEN}&stale"),
        format!("/v1/kv/a?%74oken={TOKEN}"),
        format!("/v1/session/list?token={TOKEN}-wrong"),
        "/v1/kv/a".to_string(),
    ];
    for path in &paths {
        request(&addr, "GET", path, &[], b"");
    }
    request(&addr, "GET", "/v1/kv/b", &[("X-Consul-Token", TOKEN)], b"");
    request(&addr, "PUT", "/v1/kv/b", &[("X-Consul-Token", TOKEN)], b"v");
    request(
        &addr,
        "GET",
        "/v1/kv/b",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    );
    let mut command = consul.command();
    command.args(["-vvv", "lock", "--session-ttl", "10", "k"]);
    assert_eq!(run(command).status.code(), Some(0));
    crate::support::wait_until(std::time::Duration::from_secs(5), "the log", || {
        consul.server_log().len() >= paths.len() + 5
    });
    let log = consul.server_log().join("\n");
    assert!(log.contains("/v1/kv/a?token=REDACTED"), "{log}");
    assert!(
        !log.contains(TOKEN),
        "the dev server logged the token:\n{log}"
    );
}

/// `lock` prints the session that `unlock` needs: when nobody can read it (the reader of its
/// stdout went away), the lock must not be left held, and the exit is an error (1), not a panic
/// (101 is the code of a lost lock). (A closed stdout is /dev/null to a Rust program.)
#[test]
fn lock_leaves_nothing_held_when_its_json_cannot_be_written() {
    let consul = TestConsul::start();
    let bin = crate::support::consullock_bin();
    for (case, redirect) in [("reader gone", "| true")] {
        let key = consul.unique_key("lock-unread");
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!(
            "{{ '{}' lock '{key}'; echo \"exit $?\" >&2; }} {redirect}",
            bin.display()
        ));
        for (name, value) in consul.command().get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let output = run(command);
        let stderr = stderr(&output);
        assert!(stderr.contains("exit 1"), "{case}: {stderr}");
        assert!(stderr.contains("stdout"), "{case}: {stderr}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        consul.assert_nothing_left(&key);
    }
}
