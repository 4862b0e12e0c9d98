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
