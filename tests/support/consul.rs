//! `TestConsul`: the Consul a test talks to.
//!
//! By default every test starts its own `consullock dev-server` on an ephemeral port, so tests
//! run in parallel and never share state. Setting `CONSULLOCK_TEST_CONSUL_ADDR` (e.g.
//! `127.0.0.1:8500` or `http://host:8500`, plus `CONSULLOCK_TEST_CONSUL_TOKEN` if ACLs are on)
//! points [`TestConsul::start`] at an existing Consul instead; tests then use
//! [`TestConsul::unique_key`] so they can share it.
//!
//! [`TestConsul::start_dev_server`] always starts a dev server, even when an external Consul is
//! configured: the cases that use it need something only a private dev server gives (a
//! configured ACL token, `/_devserver/stats`), and running them against the dev server still
//! checks the dev server, which is better than skipping them.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{self, Response};

/// Environment variable naming an existing Consul to test against.
pub(crate) const ADDR_ENV: &str = "CONSULLOCK_TEST_CONSUL_ADDR";
/// Environment variable with the token for that Consul.
pub(crate) const TOKEN_ENV: &str = "CONSULLOCK_TEST_CONSUL_TOKEN";
/// How long a dev server may take to print its start-up line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often [`wait_until`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The start-up line's marker before the URL.
const LISTENING: &str = "listening on http://";

/// A Consul for one test: a private dev server (killed on drop) or an external Consul.
pub(crate) struct TestConsul {
    addr: String,
    /// The address as given for `CONSUL_HTTP_ADDR` (may carry a scheme).
    http_addr: String,
    token: Option<String>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestConsul {
    /// The Consul named by `CONSULLOCK_TEST_CONSUL_ADDR`, else a fresh dev server.
    pub(crate) fn start() -> TestConsul {
        match std::env::var(ADDR_ENV) {
            Ok(addr) if !addr.trim().is_empty() => {
                let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
                TestConsul::external(addr.trim(), token)
            }
            _ => TestConsul::start_dev_server(&[]),
        }
    }

    /// An existing Consul at `addr` (`host:port` or `http://host:port`).
    pub(crate) fn external(addr: &str, token: Option<String>) -> TestConsul {
        assert!(
            !addr.starts_with("https://"),
            "the raw test client speaks plain HTTP only: {addr}"
        );
        let host_port = addr
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        TestConsul {
            addr: host_port,
            http_addr: addr.to_string(),
            token,
            child: None,
            log: Arc::default(),
        }
    }

    /// Always a fresh dev server, with extra arguments (e.g. `&["--acl-token", "secret"]`). A
    /// `--acl-token` given here becomes this TestConsul's token.
    pub(crate) fn start_dev_server(extra_args: &[&str]) -> TestConsul {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consullock"))
            .args(["dev-server", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn consullock dev-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_log = log.clone();
        // Drain stderr for the server's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                thread_log.lock().unwrap().push(line.clone());
                if let Some(at) = line.find(LISTENING)
                    && let Some(tx) = ready.take()
                {
                    let rest = &line[at + LISTENING.len()..];
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match ready_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "dev server did not start within {STARTUP_TIMEOUT:?}: {:?}",
                    log.lock().unwrap()
                );
            }
        };
        let token = extra_args
            .windows(2)
            .find(|pair| pair[0] == "--acl-token")
            .map(|pair| pair[1].to_string());
        TestConsul {
            http_addr: format!("http://{addr}"),
            addr,
            token,
            child: Some(child),
            log,
        }
    }

    /// Whether this is a private dev server.
    pub(crate) fn is_dev_server(&self) -> bool {
        self.child.is_some()
    }

    /// `host:port`.
    pub(crate) fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The ACL token requests carry, if any.
    pub(crate) fn token(&self) -> Option<String> {
        self.token.clone()
    }

    /// What the dev server printed on stderr so far (empty for an external Consul).
    pub(crate) fn server_log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// A request carrying this Consul's token (as `X-Consul-Token`) when there is one.
    pub(crate) fn request(&self, method: &str, path: &str, body: &[u8]) -> Response {
        self.request_timeout(method, path, body, http::DEFAULT_TIMEOUT)
    }

    /// [`TestConsul::request`] with an explicit timeout, for blocking queries.
    pub(crate) fn request_timeout(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Response {
        let token = self.token.clone().unwrap_or_default();
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("X-Consul-Token", token.as_str())]
        };
        http::request_with_timeout(&self.addr, method, path, &headers, body, timeout)
    }

    /// GET with the token.
    pub(crate) fn get(&self, path: &str) -> Response {
        self.request("GET", path, b"")
    }

    /// PUT with the token.
    pub(crate) fn put(&self, path: &str, body: &[u8]) -> Response {
        self.request("PUT", path, body)
    }

    /// DELETE with the token.
    pub(crate) fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, b"")
    }

    /// The `consullock` binary with every `CONSUL_*` variable removed, then `CONSUL_HTTP_ADDR`
    /// (and `CONSUL_HTTP_TOKEN`) set for this Consul.
    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(super::consullock_bin());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CONSUL_") {
                command.env_remove(&name);
            }
        }
        command.env("CONSUL_HTTP_ADDR", &self.http_addr);
        if let Some(token) = &self.token {
            command.env("CONSUL_HTTP_TOKEN", token);
        }
        command
    }

    /// A key no other test (or process) uses: `consullock-test/<pid>-<n>-<name>`.
    pub(crate) fn unique_key(&self, name: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("consullock-test/{}-{n}-{name}", std::process::id())
    }

    /// The dev server's `/_devserver/stats`; None on a real Consul.
    pub(crate) fn dev_stats(&self) -> Option<serde_json::Value> {
        self.is_dev_server()
            .then(|| self.get("/_devserver/stats").json())
    }

    /// `/v1/session/list`.
    pub(crate) fn sessions(&self) -> Vec<serde_json::Value> {
        match self.get("/v1/session/list").json() {
            serde_json::Value::Array(list) => list,
            other => panic!("session list is not an array: {other}"),
        }
    }

    /// Sets test-only faults on a dev server started with `--test-faults` (`PUT
    /// /_devserver/faults`, e.g. `{"no_leader_ms": 2000}`); returns the fault report.
    pub(crate) fn faults(&self, settings: serde_json::Value) -> serde_json::Value {
        let response = self.put("/_devserver/faults", settings.to_string().as_bytes());
        assert_eq!(response.status, 200, "setting faults: {}", response.text());
        response.json()
    }

    /// Clears every fault; returns the report (with the `injected` counters).
    pub(crate) fn clear_faults(&self) -> serde_json::Value {
        let response = self.delete("/_devserver/faults");
        assert_eq!(response.status, 200, "clearing faults: {}", response.text());
        response.json()
    }

    /// Invalidates a session as an operator would: `PUT /v1/session/destroy/:id`.
    pub(crate) fn destroy_session(&self, id: &str) {
        let response = self.put(&format!("/v1/session/destroy/{id}"), b"");
        assert_eq!(response.status, 200, "destroy {id}: {}", response.text());
    }

    /// The key's entry over raw HTTP, or None when it does not exist.
    pub(crate) fn key_entry(&self, key: &str) -> Option<serde_json::Value> {
        let response = self.get(&format!("/v1/kv/{key}"));
        match response.status {
            404 => None,
            200 => Some(response.json()[0].clone()),
            other => panic!("GET /v1/kv/{key}: {other} {}", response.text()),
        }
    }

    /// The sessions whose name mentions `fragment` (consullock names its sessions after their
    /// key, host and pid).
    pub(crate) fn sessions_of(&self, fragment: &str) -> Vec<serde_json::Value> {
        self.sessions()
            .into_iter()
            .filter(|s| {
                s["Name"]
                    .as_str()
                    .is_some_and(|name| name.contains(fragment))
            })
            .collect()
    }

    /// No session and no key of ours is left behind for `key`.
    pub(crate) fn assert_nothing_left(&self, key: &str) {
        let sessions = self.sessions_of(key);
        assert!(
            sessions.is_empty(),
            "sessions left behind for {key}: {sessions:?}"
        );
        assert_eq!(self.key_entry(key), None, "key {key} left behind");
    }

    /// Every entry under `prefix` (`?recurse`, listed by string prefix as Consul does), empty
    /// when there is none.
    pub(crate) fn kv_listing(&self, prefix: &str) -> Vec<serde_json::Value> {
        let response = self.get(&format!("/v1/kv/{prefix}?recurse"));
        match response.status {
            404 => Vec::new(),
            200 => match response.json() {
                serde_json::Value::Array(entries) => entries,
                other => panic!("listing {prefix} is not an array: {other}"),
            },
            other => panic!("GET /v1/kv/{prefix}?recurse: {other} {}", response.text()),
        }
    }

    /// The names of the keys under `prefix`, sorted.
    pub(crate) fn keys_under(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .kv_listing(prefix)
            .iter()
            .map(|e| e["Key"].as_str().expect("Key").to_string())
            .collect();
        keys.sort();
        keys
    }

    /// The sessions named in the `Holders` of a semaphore's `PREFIX/.lock`, read over raw
    /// HTTP; `None` when `.lock` does not exist.
    pub(crate) fn semaphore_holders(&self, prefix: &str) -> Option<BTreeSet<String>> {
        let entry = self.key_entry(&format!("{prefix}/.lock"))?;
        let text = value_text(&entry).expect(".lock has a value");
        let value: serde_json::Value = serde_json::from_str(&text).expect(".lock holds JSON");
        Some(
            value["Holders"]
                .as_object()
                .expect("Holders is an object")
                .keys()
                .cloned()
                .collect(),
        )
    }

    /// Whether the session exists.
    pub(crate) fn session_exists(&self, id: &str) -> bool {
        self.get(&format!("/v1/session/info/{id}")).json() != serde_json::json!([])
    }

    /// The sessions consullock made for `key` (named `consullock KEY on HOST (pid N)`), by
    /// exact key: a longer key that starts with it does not count.
    pub(crate) fn consullock_sessions(&self, key: &str) -> Vec<serde_json::Value> {
        let name = format!("consullock {key} on ");
        self.sessions()
            .into_iter()
            .filter(|s| s["Name"].as_str().is_some_and(|n| n.starts_with(&name)))
            .collect()
    }

    /// The session of the consullock process `pid` for `key`, if it has one.
    pub(crate) fn consullock_session_of(&self, key: &str, pid: i32) -> Option<String> {
        let suffix = format!(" (pid {pid})");
        self.consullock_sessions(key)
            .into_iter()
            .find(|s| s["Name"].as_str().is_some_and(|n| n.ends_with(&suffix)))
            .map(|s| s["ID"].as_str().expect("ID").to_string())
    }

    /// The dev server's count of write requests (`/_devserver/stats`); None on a real Consul.
    pub(crate) fn writes(&self) -> Option<u64> {
        self.dev_stats()
            .map(|s| s["writes"].as_u64().expect("writes"))
    }

    /// The session holding `key`, if any.
    pub(crate) fn holder(&self, key: &str) -> Option<String> {
        let response = self.get(&format!("/v1/kv/{key}"));
        if response.status != 200 {
            return None;
        }
        response.json()[0]["Session"].as_str().map(str::to_string)
    }

    /// The dev server's process id (None for an external Consul), for SIGSTOP/SIGCONT.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's node name, from `/v1/agent/self`.
    pub(crate) fn node_name(&self) -> String {
        let agent = self.get("/v1/agent/self").json();
        agent["Config"]["NodeName"]
            .as_str()
            .expect("NodeName")
            .to_string()
    }
}

impl Drop for TestConsul {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The decoded value of a KV entry as the HTTP API shows it (`None` for JSON null).
pub(crate) fn value_text(entry: &serde_json::Value) -> Option<String> {
    use base64::Engine;
    entry["Value"].as_str().map(|b64| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64 value");
        String::from_utf8(bytes).expect("UTF-8 value")
    })
}

/// Polls `f` every few milliseconds until it holds; panics naming `what` after `deadline`.
pub(crate) fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}
