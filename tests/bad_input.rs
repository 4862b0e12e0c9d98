//! Bad input, table-driven: environment values, flags, keys, regexes, metadata, TTLs,
//! lock-delays, kill grace against the TTL, commands that cannot run, unreadable token files,
//! unknown schemes, and servers that answer garbage. Every case must give its documented exit
//! code (README's table, `src/exit.rs`) with exactly one stderr line, never a panic, and leave no
//! session behind on the dev server.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::TestConsul;
use crate::support::fake::FakeServer;

/// No case may take longer than this (a hang is a failure too).
const CASE_DEADLINE: Duration = Duration::from_secs(40);

/// Where a case's consullock is pointed.
enum Server {
    /// The shared dev server, whose sessions are checked after the case.
    Dev,
    /// A fake that answers every request with these bytes.
    Fake(Vec<u8>),
    /// A port nobody listens on.
    Closed,
}

struct Case {
    name: &'static str,
    server: Server,
    env: Vec<(&'static str, OsString)>,
    args: Vec<OsString>,
    code: i32,
}

fn case(
    name: &'static str,
    server: Server,
    env: &[(&'static str, &str)],
    args: &[&str],
    code: i32,
) -> Case {
    Case {
        name,
        server,
        env: env.iter().map(|(k, v)| (*k, OsString::from(v))).collect(),
        args: args.iter().map(OsString::from).collect(),
        code,
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cases(scratch: &std::path::Path) -> Vec<Case> {
    use Server::{Closed, Dev, Fake};
    let not_executable = scratch.join("not-executable.sh");
    std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_executable = not_executable.to_str().unwrap().to_string();
    let dir = scratch.to_str().unwrap().to_string();
    let bad_utf8_token = scratch.join("token-not-utf8");
    std::fs::write(&bad_utf8_token, b"tok\xff\xfe\n").unwrap();
    let bad_utf8_token = bad_utf8_token.to_str().unwrap().to_string();
    let json = |body: &str| {
        FakeServer::http(
            "200 OK",
            &["Content-Type: application/json", "X-Consul-Index: 5"],
            body.as_bytes(),
        )
    };
    let lock = ["lock", "--session-ttl", "10", "bad/input"];
    let nb = ["lock", "--non-blocking", "--session-ttl", "10", "bad/input"];

    let mut table =
        vec![
        // Environment: exit 2, naming the variable.
        case(
            "unknown scheme",
            Dev,
            &[("CONSUL_HTTP_ADDR", "gopher://x:1")],
            &lock,
            2,
        ),
        case(
            "port not a number",
            Dev,
            &[("CONSUL_HTTP_ADDR", "127.0.0.1:notaport")],
            &lock,
            2,
        ),
        case(
            "CONSUL_HTTP_SSL not a bool",
            Dev,
            &[("CONSUL_HTTP_SSL", "sure")],
            &lock,
            2,
        ),
        case(
            "CONSUL_HTTP_SSL_VERIFY not a bool",
            Dev,
            &[("CONSUL_HTTP_SSL_VERIFY", "nope")],
            &lock,
            2,
        ),
        case(
            "CONSUL_SCHEME unknown",
            Dev,
            &[("CONSUL_SCHEME", "ftp")],
            &lock,
            2,
        ),
        case(
            "token file missing",
            Dev,
            &[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token")],
            &lock,
            2,
        ),
        case(
            "token file unreadable (a directory)",
            Dev,
            &[("CONSUL_HTTP_TOKEN_FILE", &dir)],
            &lock,
            2,
        ),
        case(
            "token file not UTF-8",
            Dev,
            &[("CONSUL_HTTP_TOKEN_FILE", &bad_utf8_token)],
            &lock,
            2,
        ),
        case(
            "token with a newline",
            Dev,
            &[("CONSUL_HTTP_TOKEN", "abc\ndef")],
            &lock,
            2,
        ),
        case(
            "token non-ASCII",
            Dev,
            &[("CONSUL_HTTP_TOKEN", "tökén")],
            &["unlock", "k"],
            2,
        ),
        case(
            "client cert without key",
            Dev,
            &[("CONSUL_CLIENT_CERT", "/tmp/cert.pem")],
            &lock,
            2,
        ),
        case(
            "CA file missing",
            Dev,
            &[
                ("CONSUL_HTTP_ADDR", "https://127.0.0.1:1"),
                ("CONSUL_CACERT", "/nonexistent/ca.pem"),
            ],
            &lock,
            2,
        ),
        // TTLs and lock-delays: exit 7.
        case(
            "TTL below Consul's minimum",
            Dev,
            &[],
            &["lock", "--session-ttl", "5", "k"],
            7,
        ),
        case(
            "TTL above a day",
            Dev,
            &[],
            &["lock", "--session-ttl", "86401", "k"],
            7,
        ),
        case(
            "TTL negative",
            Dev,
            &[],
            &["lock", "--session-ttl", "-1", "k"],
            7,
        ),
        case(
            "TTL NaN",
            Dev,
            &[],
            &["execute", "--session-ttl", "nan", "k", "true"],
            7,
        ),
        case(
            "lock-delay above 60 s",
            Dev,
            &[],
            &["lock", "--lock-delay", "61", "k"],
            7,
        ),
        case(
            "lock-delay negative",
            Dev,
            &[],
            &["execute", "--lock-delay", "-1", "k", "true"],
            7,
        ),
        // Flags: exit 3.
        case("unknown flag", Dev, &[], &["lock", "--frob", "k"], 3),
        case("unknown subcommand", Dev, &[], &["frob"], 3),
        case(
            "timeout negative",
            Dev,
            &[],
            &["lock", "--timeout", "-1", "k"],
            3,
        ),
        case(
            "timeout not a number",
            Dev,
            &[],
            &["lock", "--timeout", "soon", "k"],
            3,
        ),
        case(
            "kill grace not below the TTL",
            Dev,
            &[],
            &[
                "execute",
                "--ttl-only",
                "--session-ttl",
                "10",
                "--lock-delay",
                "0",
                "--kill-grace",
                "10",
                "k",
                "true",
            ],
            3,
        ),
        case(
            "kill grace not below the lock-delay",
            Dev,
            &[],
            &["execute", "--kill-grace", "15", "k", "true"],
            3,
        ),
        case(
            "kill grace negative",
            Dev,
            &[],
            &["execute", "--kill-grace", "-1", "k", "true"],
            3,
        ),
        case(
            "conflict exit code out of range",
            Dev,
            &[],
            &["execute", "--conflict-exit-code", "300", "k", "true"],
            3,
        ),
        case("execute without a command", Dev, &[], &["execute", "k"], 3),
        // Keys: exit 6.
        case("key with //", Dev, &[], &["lock", "a//b"], 6),
        case(
            "key with leading and trailing /",
            Dev,
            &[],
            &["execute", "/a/", "true"],
            6,
        ),
        case("key with ..", Dev, &[], &["lock", "a/../b"], 6),
        case("empty key", Dev, &[], &["lock", ""], 6),
        case("unlock key with //", Dev, &[], &["unlock", "a//b"], 6),
        // Regexes: exit 3.
        case("regex does not parse", Dev, &[], &["unlock", "-r", "("], 3),
        case("regex with a reversed range", Dev, &[], &["unlock", "-r", "[z-a]"], 3),
        case("regex with an unknown class", Dev, &[], &["unlock", "-r", r"\p{Foo}"], 3),
        case(
            "regex too big",
            Dev,
            &[],
            &["unlock", "-r", "a{99999999}"],
            3,
        ),
        // Commands that cannot run: 127 and 126, after acquiring (then released).
        case(
            "command not found",
            Dev,
            &[],
            &["execute", "bad/cmd", "--", "/nonexistent/cmd"],
            127,
        ),
        case(
            "command not executable",
            Dev,
            &[],
            &["execute", "bad/cmd", "--", &not_executable],
            126,
        ),
        case(
            "command is a directory",
            Dev,
            &[],
            &["execute", "bad/cmd", "--", &dir],
            126,
        ),
        // Servers that misbehave: exit 8 (4 for a denial), one line naming the address.
        case("connection refused", Closed, &[], &["unlock", "k"], 8),
        case(
            "unix socket missing",
            Dev,
            &[("CONSUL_HTTP_ADDR", "unix:///nonexistent/consul.sock")],
            &["unlock", "k"],
            8,
        ),
        case(
            "garbage instead of HTTP",
            Fake(b"garbage\r\n\r\n".to_vec()),
            &[],
            &["unlock", "k"],
            8,
        ),
        case(
            "garbage instead of HTTP (lock)",
            Fake(b"\x00\x01\x02 nonsense".to_vec()),
            &[],
            &nb,
            8,
        ),
        case(
            "non-JSON 200",
            Fake(json("hello, world")),
            &[],
            &["unlock", "k"],
            8,
        ),
        case(
            "non-JSON 200 on session create",
            Fake(json("<<not json>>")),
            &[],
            &nb,
            8,
        ),
        case(
            "non-JSON 200 (execute)",
            Fake(json("nope")),
            &[],
            &["execute", "--non-blocking", "k", "true"],
            8,
        ),
        case(
            "wrong content type",
            Fake(FakeServer::http(
                "200 OK",
                &["Content-Type: text/html", "X-Consul-Index: 5"],
                b"<html><body>Welcome to nginx!</body></html>",
            )),
            &[],
            &["unlock", "k"],
            8,
        ),
        case(
            "huge body",
            Fake(FakeServer::http(
                "200 OK",
                &["X-Consul-Index: 5"],
                &vec![b'['; 20 * 1024 * 1024],
            )),
            &[],
            &nb,
            8,
        ),
        case(
            "answer over the client's 64 MiB cap",
            Fake(FakeServer::http(
                "200 OK",
                &["X-Consul-Index: 5"],
                &vec![b'['; 65 * 1024 * 1024],
            )),
            &[],
            &nb,
            8,
        ),
        case(
            "closes mid-answer",
            Fake(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Consul-Index: 5\r\n\r\n[{\"Key\":"
                    .to_vec(),
            ),
            &[],
            &["unlock", "k"],
            8,
        ),
        case(
            "closes without answering",
            Fake(Vec::new()),
            &[],
            &["unlock", "k"],
            8,
        ),
        case(
            "missing X-Consul-Index",
            Fake(FakeServer::http("200 OK", &[], b"[]")),
            &[],
            &["unlock", "k"],
            8,
        ),
        case(
            "500 with a multi-line body",
            Fake(FakeServer::http(
                "500 Internal Server Error",
                &[],
                b"line one\nline two\r\nline three",
            )),
            &[],
            &nb,
            8,
        ),
        case(
            "403 from the server",
            Fake(FakeServer::http("403 Forbidden", &[], b"Permission denied")),
            &[],
            &nb,
            4,
        ),
    ];
    // Values that are not UTF-8: metadata, a shell command.
    let mut metadata = case("metadata not UTF-8", Dev, &[], &["lock", "--metadata"], 3);
    metadata
        .args
        .push(OsString::from_vec(b"{\"a\": \"\xff\"}".to_vec()));
    metadata.args.push("k".into());
    table.push(metadata);
    let mut shell = case(
        "shell command not UTF-8",
        Dev,
        &[],
        &["execute", "bad/sh"],
        3,
    );
    shell.args.push(OsString::from_vec(b"echo \xff".to_vec()));
    table.push(shell);
    table
}

/// Runs consullock with a deadline; returns (exit code or None when killed by a signal, stdout,
/// stderr).
fn run_bounded(mut command: Command) -> (Option<i32>, String, String) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consullock");
    let started = Instant::now();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < CASE_DEADLINE {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: kill(2) on a child we spawned and have not reaped (wait_with_output below
        // reaps it only after it dies).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let output = child.wait_with_output().expect("wait consullock");
    let _ = watchdog.join();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_input_table() {
    let consul = TestConsul::start_dev_server(&[]);
    let scratch = std::env::temp_dir().join(format!("consullock-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let table = cases(&scratch);
    assert!(table.len() >= 25, "{} cases", table.len());
    let mut failures = Vec::new();
    for case in &table {
        let fake;
        let mut command = consul.command();
        match &case.server {
            Server::Dev => {}
            Server::Fake(answer) => {
                fake = FakeServer::start(answer.clone());
                command.env("CONSUL_HTTP_ADDR", fake.addr());
            }
            Server::Closed => {
                command.env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{}", closed_port()));
            }
        }
        for (name, value) in &case.env {
            command.env(name, value);
        }
        command.args(&case.args);
        let started = Instant::now();
        let (code, _stdout, stderr) = run_bounded(command);
        let elapsed = started.elapsed();
        let mut problems = Vec::new();
        if code != Some(case.code) {
            problems.push(format!("exit {code:?}, expected {}", case.code));
        }
        if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
            problems.push("panicked".into());
        }
        if stderr.lines().count() != 1 || !stderr.ends_with('\n') {
            problems.push(format!("{} stderr lines", stderr.lines().count()));
        }
        if !stderr.starts_with("consullock: ") {
            problems.push("stderr does not start with `consullock: `".into());
        }
        if matches!(case.server, Server::Dev) {
            let sessions = consul.sessions();
            if !sessions.is_empty() {
                problems.push(format!("left {} session(s) behind", sessions.len()));
                for session in sessions {
                    consul.destroy_session(session["ID"].as_str().unwrap());
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} ({elapsed:?}): {stderr:?}",
                case.name,
                problems.join(", ")
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    println!(
        "bad input: {} cases, each one line with its documented exit code",
        table.len()
    );
}
