//! The library's engine used directly: acquire, find, watch, release, unlock.

use std::time::Duration;

use consullock::config::ConsulConfig;
use consullock::consul::Client;
use consullock::lock::{self, AcquireError, AcquireOptions};
use consullock::session::{LossReason, SessionSettings};

use crate::support::TestConsul;

fn client(consul: &TestConsul) -> Client {
    let mut config = ConsulConfig::for_address(&consul.addr()).unwrap();
    config.token = consul.token().map(consullock::config::Secret::new);
    Client::new(&config).unwrap()
}

fn settings(key: &str) -> SessionSettings {
    SessionSettings {
        name: format!("library test {key}"),
        ttl: Some(Duration::from_secs(15)),
        lock_delay: Duration::ZERO,
        ttl_only: false,
    }
}

/// Acquires `key` with the test session settings and no cancellation.
async fn acquire(
    client: &Client,
    key: &str,
    options: &AcquireOptions,
) -> Result<lock::HeldLock, AcquireError> {
    lock::acquire(client, key, &settings(key), options, std::future::pending()).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn acquire_find_release() {
    let consul = TestConsul::start();
    let key = consul.unique_key("lib");
    runtime().block_on(async {
        let client = client(&consul);
        let options = AcquireOptions {
            metadata: Some(serde_json::json!({"who": "lib"})),
            ..AcquireOptions::default()
        };
        let held = acquire(&client, &key, &options).await.unwrap();
        assert_eq!(held.key(), key);
        assert!(held.fencing_token().is_some_and(|t| t > 0));

        let found = lock::find(&client, &key).await.unwrap().expect("found");
        assert_eq!(found.holder.as_deref(), Some(held.session_id()));
        let info = found.info.expect("lock JSON");
        assert_eq!(info.session, held.session_id());
        assert_eq!(info.metadata, Some(serde_json::json!({"who": "lib"})));

        let busy = AcquireOptions {
            non_blocking: true,
            ..AcquireOptions::default()
        };
        let refused = acquire(&client, &key, &busy).await;
        assert!(
            matches!(refused, Err(AcquireError::NotAcquired { .. })),
            "{refused:?}"
        );

        let first_token = held.fencing_token();
        let session = held.session_id().to_owned();
        held.release(std::future::pending()).await.unwrap();
        assert_eq!(
            lock::find(&client, &key).await.unwrap(),
            None,
            "released and deleted"
        );
        let info = client
            .session_info(&session, &Default::default())
            .await
            .unwrap();
        assert_eq!(info.value, None, "session destroyed");

        // The next holder gets a larger fencing token, although the key was deleted between.
        let again = acquire(&client, &key, &busy).await.unwrap();
        assert!(again.fencing_token() > first_token);
        again.release(std::future::pending()).await.unwrap();
    });
}

#[test]
fn find_regex_lists_non_lock_keys_without_information() {
    let consul = TestConsul::start();
    let base = consul.unique_key("findre");
    consul.put(&format!("/v1/kv/{base}/plain"), b"not a lock");
    runtime().block_on(async {
        let client = client(&consul);
        let key = format!("{base}/lock");
        let held = acquire(&client, &key, &AcquireOptions::default())
            .await
            .unwrap();
        let pattern = regex::Regex::new(&format!("{}/.*", regex::escape(&base))).unwrap();
        let found = lock::find_regex(&client, &pattern).await.unwrap();
        let summary: Vec<(String, bool)> = found
            .iter()
            .map(|f| (f.key.clone(), f.info.is_some()))
            .collect();
        assert_eq!(
            summary,
            [(key.clone(), true), (format!("{base}/plain"), false)]
        );

        let unlocked = lock::unlock_regex(&client, &pattern, false).await.unwrap();
        assert_eq!(unlocked.released, std::slice::from_ref(&key));
        drop(held);
    });
    consul.delete(&format!("/v1/kv/{base}/plain"));
}

#[test]
fn a_watched_lock_reports_loss_when_its_session_is_destroyed() {
    let consul = TestConsul::start();
    let key = consul.unique_key("watch");
    runtime().block_on(async {
        let client = client(&consul);
        let mut held = acquire(&client, &key, &AcquireOptions::default())
            .await
            .unwrap();
        held.watch(Duration::ZERO).unwrap();
        client
            .session_destroy(held.session_id(), Duration::from_secs(5))
            .await
            .unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), held.lost())
            .await
            .expect("loss reported");
        assert!(
            matches!(
                reason,
                LossReason::KeyDeleted | LossReason::SessionInvalidated
            ),
            "{reason:?}"
        );
        held.release(std::future::pending()).await.ok();
    });
}

#[test]
fn cancelling_a_wait_destroys_the_session() {
    let consul = TestConsul::start();
    let key = consul.unique_key("cancel");
    runtime().block_on(async {
        let client = client(&consul);
        let held = acquire(&client, &key, &AcquireOptions::default())
            .await
            .unwrap();
        let cancel = tokio::time::sleep(Duration::from_millis(300));
        let result = lock::acquire(
            &client,
            &key,
            &settings(&key),
            &AcquireOptions::default(),
            cancel,
        )
        .await;
        assert!(
            matches!(result, Err(AcquireError::Cancelled { .. })),
            "{result:?}"
        );
        let sessions = client
            .session_list(&Default::default())
            .await
            .unwrap()
            .value;
        let ours: Vec<_> = sessions.iter().filter(|s| s.name.contains(&key)).collect();
        assert_eq!(ours.len(), 1, "only the holder's session: {ours:?}");
        held.release(std::future::pending()).await.unwrap();
    });
}

/// An HTTP server that answers every connection with `status`, `headers` and `body`.
fn fake_server(status: &str, headers: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let answer = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    address
}

#[test]
fn the_index_header_is_parsed_strictly() {
    let cases = [
        ("", "missing"),
        ("X-Consul-Index: 12abc\r\n", "not a number"),
        ("X-Consul-Index: -1\r\n", "not a number"),
    ];
    runtime().block_on(async {
        for (headers, what) in cases {
            let address = fake_server("200 OK", headers, "[]");
            let client = Client::new(&ConsulConfig::for_address(&address).unwrap()).unwrap();
            let error = client.kv_get("k", &Default::default()).await.unwrap_err();
            assert!(
                matches!(&error, consullock::consul::ConsulError::InvalidResponse { what: w, .. } if w.contains(what)),
                "{error}"
            );
        }
    });
}

#[test]
fn errors_are_typed_by_status() {
    use consullock::consul::ConsulError;
    type Case = (&'static str, &'static str, fn(&ConsulError) -> bool);
    let cases: [Case; 4] = [
        ("403 Forbidden", "Permission denied", |e| {
            matches!(e, ConsulError::PermissionDenied { .. })
        }),
        ("429 Too Many Requests", "RPC rate limit exceeded", |e| {
            matches!(e, ConsulError::RateLimited { .. }) && e.is_transient()
        }),
        ("500 Internal Server Error", "No cluster leader", |e| {
            matches!(e, ConsulError::Server { status: 500, .. }) && e.is_transient()
        }),
        (
            "500 Internal Server Error",
            "rpc error making call: invalid session \"abc-123\"",
            |e| matches!(e, ConsulError::InvalidSession { .. }),
        ),
    ];
    runtime().block_on(async {
        for (status, body, expected) in cases {
            let address = fake_server(status, "", body);
            let client = Client::new(&ConsulConfig::for_address(&address).unwrap()).unwrap();
            let error = client
                .kv_put(
                    "k",
                    b"v",
                    consullock::consul::PutMode::Acquire("abc-123"),
                    None,
                )
                .await
                .unwrap_err();
            assert!(expected(&error), "{error:?}");
            assert!(
                error.to_string().contains(&address),
                "names the address: {error}"
            );
        }
    });
}
