//! Runs every conformance case against a real Consul in a container, when a Docker engine is
//! reachable. Without one it prints a single SKIP line and passes: the dev server is then checked
//! by `tests/conformance.rs` alone, and `CONSULLOCK_TEST_CONSUL_ADDR` remains the way to point
//! the suite at an existing Consul.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::conformance::CASES;
use crate::support::{TestConsul, http, wait_until};

/// The Consul image and a recent real tag of it.
const CONSUL_IMAGE: &str = "hashicorp/consul";
const CONSUL_TAG: &str = "1.20.1";
/// The line a Consul agent logs once it serves.
const READY_LINE: &str = "Consul agent running!";
/// The local Docker socket probed when DOCKER_HOST is unset.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// How long the Docker probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the new agent may take to elect itself leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(60);

/// Whether a Docker engine answers `GET /_ping`; the reason when it does not.
fn docker_engine() -> Result<(), String> {
    let ping = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n";
    let answer = match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("tcp://") => {
            let addr = host.trim_start_matches("tcp://").trim_end_matches('/');
            http::try_request(addr, "GET", "/_ping", &[], b"", PROBE_TIMEOUT)
                .map(|r| r.status == 200)
                .map_err(|e| format!("DOCKER_HOST={host} unreachable: {e}"))?
        }
        Ok(host) if host.starts_with("unix://") => {
            ping_unix(Path::new(host.trim_start_matches("unix://")), ping)
                .map_err(|e| format!("DOCKER_HOST={host} unreachable: {e}"))?
        }
        Ok(host) if !host.is_empty() => {
            return Err(format!("DOCKER_HOST={host} is not tcp:// or unix://"));
        }
        _ => {
            let socket = Path::new(DOCKER_SOCKET);
            if !socket.exists() {
                return Err(format!("DOCKER_HOST unset, {DOCKER_SOCKET} absent"));
            }
            ping_unix(socket, ping)
                .map_err(|e| format!("DOCKER_HOST unset, {DOCKER_SOCKET}: {e}"))?
        }
    };
    if answer {
        Ok(())
    } else {
        Err("the Docker engine did not answer its ping with 200".into())
    }
}

fn ping_unix(socket: &Path, ping: &[u8]) -> std::io::Result<bool> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(ping)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"))
}

#[test]
fn conformance_against_consul_container() {
    if let Err(reason) = docker_engine() {
        crate::support::skip(
            "conformance_against_consul_container",
            &format!(
                "no Docker engine reachable ({reason}); set CONSULLOCK_TEST_CONSUL_ADDR to run the \
                 suite against an existing Consul"
            ),
        );
        return;
    }
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let image = GenericImage::new(CONSUL_IMAGE, CONSUL_TAG)
        .with_exposed_port(8500.tcp())
        .with_wait_for(WaitFor::message_on_stdout(READY_LINE))
        .with_cmd(["agent", "-dev", "-client", "0.0.0.0"]);
    let container = runtime
        .block_on(image.start())
        .expect("start the Consul container");
    let port = runtime
        .block_on(container.get_host_port_ipv4(8500))
        .expect("mapped port");
    let consul = TestConsul::external(&format!("127.0.0.1:{port}"), None);
    wait_until(
        LEADER_DEADLINE,
        "the Consul container to elect a leader",
        || {
            http::try_request(
                &consul.addr(),
                "GET",
                "/v1/status/leader",
                &[],
                b"",
                PROBE_TIMEOUT,
            )
            .is_ok_and(|r| r.status == 200 && r.json().as_str().is_some_and(|l| !l.is_empty()))
        },
    );
    let mut failed = Vec::new();
    for (name, case) in CASES {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&consul)));
        println!("{} {name}", if outcome.is_ok() { "ok  " } else { "FAIL" });
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    runtime.block_on(container.rm()).ok();
    assert!(
        failed.is_empty(),
        "cases failing against real Consul {CONSUL_TAG}: {failed:?}"
    );
}
