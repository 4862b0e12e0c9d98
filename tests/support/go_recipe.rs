//! A `consul lock` contender inside the tests: Go's `api.Lock` and `api.Semaphore`, re-done in
//! Rust over the raw test HTTP client, step by step, so that consullock can be run against the
//! reference algorithm without a Go toolchain or a `consul` binary.
//!
//! Read from `hashicorp/consul`: `api/lock.go` (Lock, Unlock, Destroy, monitorLock),
//! `api/semaphore.go` (Acquire, Release, Destroy, findLock, decodeLock, encodeLock,
//! pruneDeadHolders, monitorLock), `api/session.go` (Create, Renew, RenewPeriodic, Destroy),
//! `api/kv.go` (Get, List, Acquire, Release, CAS, Delete, DeleteCAS, put), `api/api.go`
//! (setQueryOptions, durToMsec, IsRetryableError, toHTTP) and `command/lock/lock.go` (run,
//! setupLock, setupSemaphore). Each step below names the Go function it follows. Nothing here
//! shares code with `src/`: it is a second, independent reading of the same source.
//!
//! # What goes over the wire
//!
//! Query strings are written as Go's `url.Values.Encode` writes them: keys sorted, an empty
//! value as `name=`. KV writes carry `Content-Type: application/octet-stream` and the value as
//! the raw body (`api/kv.go`, `put`); session writes carry JSON (`api/api.go`, `toHTTP`). Every
//! request carries `X-Consul-Token` when a token is configured. `LockFlagValue` is
//! `0x2ddccbc058a50c18` = `3304740253564472344`; `SemaphoreFlagValue` is `0xe0f69a2baa414de0` =
//! `16210313421097356768`; both go out in decimal in `?flags=` (`strconv.FormatUint`), and only
//! when non-zero (they always are here).
//!
//! ## `consul lock PREFIX child...` (`-n 1`, `api.Lock`)
//! `PREFIX` loses one leading `/` (`run`); the key is `path.Join(PREFIX, ".lock")`
//! (`setupLock`): `PREFIX/.lock`, cleaned (no trailing or doubled `/`). No `Value` is set, so
//! every write of the key sends an **empty body** and the key's Value reads back as `null`.
//! 0. `GET /v1/agent/self` (`Agent().NodeName()`; not re-done here).
//! 1. `PUT /v1/session/create`, body `{"Name":"<name>","TTL":"15s"}` + `\n` (Go's map encoding:
//!    keys sorted; `Lock.createSession` → `Session.Create`, which leaves out empty fields). The
//!    name is `-name`, by default `Consul lock for '<child args joined by " ">' at '<PREFIX>'`.
//!    No `LockDelay` (consul lock never sets `LockOptions.LockDelay`; the api sends
//!    `"LockDelay":"<n>ms"` only when it is non-zero), no `Behavior` (server default
//!    `release`), no checks (server default `serfHealth`). So: TTL 15s, lock-delay 15s,
//!    release, serfHealth.
//! 2. `PUT /v1/session/renew/<sid>` (empty body) every TTL/2 from a goroutine
//!    (`Session.RenewPeriodic`): first after 7.5 s; after a success the next wait is half the TTL
//!    the server answered; after an error every 1 s, giving up once more than one TTL has
//!    passed since the last success; a 404 ends it (`session expired`).
//! 3. `GET /v1/kv/PREFIX/.lock?wait=15000ms` (no index the first time: not blocking), then
//!    `GET /v1/kv/PREFIX/.lock?index=<X-Consul-Index>&wait=15000ms` while the key is held by
//!    another session. Default consistency. A key whose `Flags` is not `LockFlagValue` ends
//!    everything: `Existing key does not match lock use`. A key held by our session is held.
//! 4. `PUT /v1/kv/PREFIX/.lock?acquire=<sid>&flags=3304740253564472344`, empty body.
//! 5. Answer `false`: `GET /v1/kv/PREFIX/.lock?wait=15000ms` (index reset to 0, so not
//!    blocking); held by someone → block on its index (step 3); free → lock-delay assumed:
//!    sleep `DefaultLockRetryTime` = 5 s, then step 3 without an index.
//! 6. Held: `GET /v1/kv/PREFIX/.lock?consistent=`, then `?consistent=&index=<n>`, with **no
//!    `wait`** (server default 300 s), for as long as the key exists with our `Session`
//!    (`monitorLock`). consul lock sets `MonitorRetries` 3 and `MonitorRetryTime` 1 s: a 500
//!    or a network error is retried without an index after 1 s, three times in a row at most.
//! 7. Release: `PUT /v1/kv/PREFIX/.lock?flags=3304740253564472344&release=<sid>`, empty body
//!    (`Unlock` → `lockEntry`); a `false` answer is not an error. Then the renew goroutine is
//!    told to stop and sends `PUT /v1/session/destroy/<sid>` (no body), asynchronously.
//! 8. Cleanup (`Destroy`): `GET /v1/kv/PREFIX/.lock`; absent → done; flags not ours →
//!    `Existing key does not match lock use`; any `Session` → `Lock in use` (ignored by
//!    consul lock); else `DELETE /v1/kv/PREFIX/.lock?cas=<ModifyIndex>` (`false` → `Lock in
//!    use`).
//!
//! ## `consul lock -n N PREFIX child...` (N > 1, `api.Semaphore`)
//! `PREFIX` loses one leading `/`. Two kinds of keys: the contender key
//! `path.Join(PREFIX, <sid>)` and the coordination key `path.Join(PREFIX, ".lock")`.
//! 1. `PUT /v1/session/create`, body `{"Behavior":"delete","Name":"<name>","TTL":"15s"}` +
//!    `\n` (`Semaphore.createSession`; no LockDelay: server default 15 s; no checks:
//!    serfHealth). Name as for the lock. Renewed as in step 2 above.
//! 2. `PUT /v1/kv/PREFIX/<sid>?acquire=<sid>&flags=16210313421097356768`, empty body
//!    (`contenderEntry`; `Value` unset). An error, or `false`, ends everything with
//!    `failed to make contender entry: <err>` (`<nil>` when the answer was `false`).
//! 3. `GET /v1/kv/PREFIX?recurse=&wait=15000ms`, then `?index=<n>&recurse=&wait=15000ms` while
//!    full. NB the listing is by **string prefix**, without a trailing `/`: keys of a sibling
//!    prefix (`PREFIX2/...`) are listed too, and their sessions count as alive below.
//! 4. Find `PREFIX/.lock` in the listing (`findLock`); absent → a stand-in with the semaphore
//!    flag, ModifyIndex 0 and no value. Flags not `SemaphoreFlagValue` →
//!    `Existing key does not match semaphore use`.
//! 5. Decode its value (`decodeLock`): no value (absent key, or Value `null`) → `{Limit: N,
//!    Holders: {}}`; otherwise Go's `json.Unmarshal` into `struct { Limit int; Holders
//!    map[string]bool }` (field names matched case-insensitively, unknown fields ignored; a
//!    failure is `lock decoding failed: <err>`). `Limit != N` →
//!    `semaphore limit conflict (lock: <Limit>, local: <N>)`.
//! 6. Prune (`pruneDeadHolders`): a holder stays only if some key in the listing has that
//!    holder as its `Session`. Holders are a set: the `true` is never read, only presence.
//! 7. `len(Holders) >= Limit` → block on the listing's index (step 3).
//! 8. Add `Holders[<sid>] = true` and
//!    `PUT /v1/kv/PREFIX/.lock?cas=<ModifyIndex of .lock, 0 when absent>&flags=16210313421097356768`
//!    with body exactly `{"Limit":N,"Holders":{"<sid1>":true,"<sid2>":true}}`: Go's
//!    `json.Marshal` of the struct, so `Limit` first, then `Holders` with keys sorted, no
//!    spaces, no trailing newline, `{}` when empty (`encodeLock`). Pruned holders are dropped
//!    from what is written. `false` (lost the race) → step 3 with the same index as before
//!    (0 on the first pass: an immediate re-read).
//! 9. Held: `GET /v1/kv/PREFIX?consistent=&recurse=`, then `?consistent=&index=<n>&recurse=`,
//!    no `wait` (`monitorLock`): lost as soon as, after pruning, our sid is not in `Holders`
//!    (our contender key gone with our session, our entry removed, `.lock` deleted or
//!    undecodable). Retries as for the lock.
//! 10. Release (`Release`): `GET /v1/kv/PREFIX/.lock` (default consistency, no flags check);
//!     absent → nothing to remove; if our sid is in `Holders`, remove it and
//!     `PUT /v1/kv/PREFIX/.lock?cas=<ModifyIndex>&flags=16210313421097356768` with the
//!     re-encoded value (dead holders are **not** pruned here); `false` → read again. Then
//!     `DELETE /v1/kv/PREFIX/<sid>` (no cas). The renew goroutine then destroys the session.
//! 11. Cleanup (`Destroy`): `GET /v1/kv/PREFIX?recurse=`; no `.lock` → done; flags not ours →
//!     conflict; prune; any holder left → `Semaphore in use` (ignored by consul lock); else
//!     `DELETE /v1/kv/PREFIX/.lock?cas=<ModifyIndex>`.
//!
//! consul lock runs acquire, then the child, then release and cleanup, and returns: the
//! session destroy of step 7/10 races the process exit and may never be sent, leaving the
//! session (and, for a semaphore, nothing else: the contender key is already deleted) to
//! expire after up to 2×TTL. A failed semaphore acquisition (limit conflict, foreign flags)
//! leaves its contender key until its session is destroyed or expires. Here the contender
//! threads wait for the destroy (see [`Released`]), as a long-lived Go program would see it.
//!
//! # Where this differs from Go, on purpose
//! - Timings that Go hard-codes can be shortened for tests ([`GoLockOptions::lock_retry_time`];
//!   [`GoLockOptions::consul_lock`] and [`GoSemaphoreOptions::consul_lock`] keep Go's values).
//! - Hooks ([`GoLockOptions::before_acquire`], [`GoSemaphoreOptions::before_cas`]) let a test
//!   make a race happen at a chosen step.
//! - Where Go would panic (a `.lock` whose `Holders` is `null`: assignment to a nil map), the
//!   acquisition fails with an error that says so.
//! - Go's JSON error texts are not reproduced word for word (`lock decoding failed: ...`).
//!
//! # Using it
//! ```ignore
//! let client = GoClient::new(&consul);
//! let mut contender = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 3, "job"));
//! let held = contender.wait(Duration::from_secs(10))?;      // a slot, stamped on CLOCK_MONOTONIC
//! assert!(!held.is_lost());
//! let released = held.release(Duration::from_secs(10))?;   // Release, Destroy, session destroy
//! ```

pub(crate) use super::process::monotonic_ns;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;

use super::TestConsul;
use super::http;

// ---- Go's constants ----------------------------------------------------------------------

/// `api.LockFlagValue` (`api/lock.go`): the flags of a key used as an `api.Lock`.
pub(crate) const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;
/// `api.SemaphoreFlagValue` (`api/semaphore.go`): the flags of every semaphore key.
pub(crate) const SEMAPHORE_FLAG_VALUE: u64 = 0xe0f6_9a2b_aa41_4de0;
/// `api.DefaultSemaphoreKey`: the coordination key under a prefix, which `consul lock` also
/// uses as its lock key so that a lock and a semaphore on one prefix conflict.
pub(crate) const SEMAPHORE_KEY: &str = ".lock";
/// `api.DefaultLockSessionName`.
pub(crate) const DEFAULT_LOCK_SESSION_NAME: &str = "Consul API Lock";
/// `api.DefaultSemaphoreSessionName`.
pub(crate) const DEFAULT_SEMAPHORE_SESSION_NAME: &str = "Consul API Semaphore";
/// `api.DefaultLockSessionTTL` and `api.DefaultSemaphoreSessionTTL`.
pub(crate) const DEFAULT_SESSION_TTL: &str = "15s";
/// `api.DefaultLockWaitTime` and `api.DefaultSemaphoreWaitTime`: `?wait` of each blocking read.
pub(crate) const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(15);
/// `api.DefaultLockRetryTime`: the sleep after an acquire refused by a lock-delay.
pub(crate) const DEFAULT_LOCK_RETRY_TIME: Duration = Duration::from_secs(5);
/// `api.DefaultMonitorRetryTime`.
pub(crate) const DEFAULT_MONITOR_RETRY_TIME: Duration = Duration::from_secs(2);
/// `defaultMonitorRetry` of `command/lock/lock.go` (its `-monitor-retry` default).
pub(crate) const CONSUL_LOCK_MONITOR_RETRIES: u32 = 3;
/// `defaultMonitorRetryTime` of `command/lock/lock.go`.
pub(crate) const CONSUL_LOCK_MONITOR_RETRY_TIME: Duration = Duration::from_secs(1);
/// `Session.RenewPeriodic`: the wait between renew attempts after an error.
const RENEW_ERROR_RETRY: Duration = Duration::from_secs(1);

// ---- Timeouts of the recipe itself (not Go's) --------------------------------------------

/// Read timeout of a request that does not block.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Consul's `default_query_time`: how long a blocking read without `?wait` lasts.
const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);
/// Consul's `max_query_time`.
const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
/// Added to a blocking read's wait + wait/16 jitter before the HTTP read gives up.
const BLOCKING_SLACK: Duration = Duration::from_secs(5);
/// How long a contender thread waits for its session's destroy after a release or a failure.
const BACKGROUND_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The session name `consul lock` gives by default (`command/lock/lock.go`, `run`).
pub(crate) fn consul_lock_session_name(child_args: &str, prefix: &str) -> String {
    format!("Consul lock for '{child_args}' at '{prefix}'")
}

// ---- Errors --------------------------------------------------------------------------------

/// What a Go call returns as an error, with Go's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GoError {
    /// `api.ErrLockHeld`.
    LockHeld,
    /// `api.ErrLockNotHeld`.
    LockNotHeld,
    /// `api.ErrLockInUse`.
    LockInUse,
    /// `api.ErrLockConflict`.
    LockConflict,
    /// `api.ErrSemaphoreHeld`.
    SemaphoreHeld,
    /// `api.ErrSemaphoreNotHeld`.
    SemaphoreNotHeld,
    /// `api.ErrSemaphoreInUse`.
    SemaphoreInUse,
    /// `api.ErrSemaphoreConflict`.
    SemaphoreConflict,
    /// Any other error, e.g. `semaphore limit conflict (lock: 3, local: 2)`.
    Failed(String),
    /// Go's `(nil, nil)`: the stop channel fired or a one-shot attempt ran out of time.
    Stopped,
    /// The recipe's own deadline (not Go's): a test waited longer than it allowed.
    Timeout(String),
}

impl fmt::Display for GoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            GoError::LockHeld => "Lock already held",
            GoError::LockNotHeld => "Lock not held",
            GoError::LockInUse => "Lock in use",
            GoError::LockConflict => "Existing key does not match lock use",
            GoError::SemaphoreHeld => "Semaphore already held",
            GoError::SemaphoreNotHeld => "Semaphore not held",
            GoError::SemaphoreInUse => "Semaphore in use",
            GoError::SemaphoreConflict => "Existing key does not match semaphore use",
            GoError::Failed(text) => text,
            // What consul lock prints when Lock/Acquire returns (nil, nil).
            GoError::Stopped => "Shutdown triggered or timeout during lock acquisition",
            GoError::Timeout(what) => return write!(f, "timed out: {what}"),
        };
        f.write_str(text)
    }
}

/// An HTTP call that failed, as the Go client reports it.
#[derive(Debug, Clone)]
pub(crate) enum CallError {
    /// A transport error (Go's `*url.Error` wrapping a `net.Error`): retryable.
    Net(String),
    /// An unexpected status (`api.StatusError`): retryable only when it is a 500.
    Status { code: u16, body: String },
    /// Refused by the client itself (a key with a leading `/`) or an answer it cannot decode.
    Client(String),
}

impl CallError {
    /// `api.IsRetryableError`: a `net.Error`, or any text containing
    /// `Unexpected response code: 500`.
    fn retryable(&self) -> bool {
        match self {
            CallError::Net(_) => true,
            CallError::Status { code, .. } => *code == 500,
            CallError::Client(_) => false,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Net(text) | CallError::Client(text) => f.write_str(text),
            // `api.generateUnexpectedResponseCodeError` → `StatusError.Error`.
            CallError::Status { code, body } => {
                write!(f, "Unexpected response code: {code} ({})", body.trim())
            }
        }
    }
}

// ---- The client: api.KV and api.Session over the raw test HTTP client ----------------------

/// One request as sent: for tests that pin the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireRequest {
    pub(crate) method: String,
    pub(crate) path_and_query: String,
    pub(crate) body: String,
}

/// A KV entry as `api.KVPair` holds it. `value` is `None` for JSON `null` (Go's nil slice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KvPair {
    pub(crate) key: String,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) lock_index: u64,
    pub(crate) flags: u64,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) session: String,
}

/// `api.QueryOptions`, the fields these recipes use.
#[derive(Debug, Clone, Default)]
struct QueryOptions {
    require_consistent: bool,
    wait_index: u64,
    /// `WaitTime`: zero is not sent.
    wait_time: Duration,
}

/// The Go client's view of one Consul: address, token, and optionally a log of every request.
#[derive(Clone)]
pub(crate) struct GoClient {
    addr: String,
    token: Option<String>,
    wire: Option<Arc<Mutex<Vec<WireRequest>>>>,
}

impl GoClient {
    /// A client for the Consul of a test.
    pub(crate) fn new(consul: &TestConsul) -> GoClient {
        GoClient {
            addr: consul.addr(),
            token: consul.token(),
            wire: None,
        }
    }

    /// The same client, recording every request it sends (see [`GoClient::wire`]).
    pub(crate) fn recording(mut self) -> GoClient {
        self.wire = Some(Arc::default());
        self
    }

    /// The requests sent so far by a [`GoClient::recording`] client (and its clones).
    pub(crate) fn wire(&self) -> Vec<WireRequest> {
        self.wire
            .as_ref()
            .map(|w| w.lock().unwrap().clone())
            .unwrap_or_default()
    }

    fn call(
        &self,
        method: &str,
        path_and_query: &str,
        content_type: Option<&str>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<http::Response, CallError> {
        if let Some(wire) = &self.wire {
            wire.lock().unwrap().push(WireRequest {
                method: method.to_string(),
                path_and_query: path_and_query.to_string(),
                body: String::from_utf8_lossy(body).into_owned(),
            });
        }
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("X-Consul-Token", token));
        }
        if let Some(content_type) = content_type {
            headers.push(("Content-Type", content_type));
        }
        http::try_request(&self.addr, method, path_and_query, &headers, body, timeout).map_err(
            |e| {
                // Go's `*url.Error`: `Get "http://host/path?query": <cause>`.
                let verb = format!("{}{}", &method[..1], method[1..].to_ascii_lowercase());
                CallError::Net(format!(
                    "{verb} \"http://{}{path_and_query}\": {e}",
                    self.addr
                ))
            },
        )
    }

    /// `api.KV.Get` (`getInternal`): 200 → the first entry, 404 → none; the index is
    /// `X-Consul-Index` (0 when absent, as `parseQueryMeta` leaves it).
    fn kv_get(&self, key: &str, q: &QueryOptions) -> Result<(Option<KvPair>, u64), CallError> {
        let (pairs, index) = self.kv_read(key, false, q)?;
        Ok((pairs.into_iter().next(), index))
    }

    /// `api.KV.List`: `?recurse=`; 404 → an empty list.
    fn kv_list(&self, prefix: &str, q: &QueryOptions) -> Result<(Vec<KvPair>, u64), CallError> {
        self.kv_read(prefix, true, q)
    }

    fn kv_read(
        &self,
        key: &str,
        recurse: bool,
        q: &QueryOptions,
    ) -> Result<(Vec<KvPair>, u64), CallError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        // `setQueryOptions`.
        if q.require_consistent {
            params.push(("consistent", String::new()));
        }
        if q.wait_index != 0 {
            params.push(("index", q.wait_index.to_string()));
        }
        if !q.wait_time.is_zero() {
            params.push(("wait", dur_to_msec(q.wait_time)));
        }
        if recurse {
            params.push(("recurse", String::new()));
        }
        let key = key.strip_prefix('/').unwrap_or(key);
        let target = format!("/v1/kv/{}{}", escape_path(key), encode_query(params));
        let response = self.call("GET", &target, None, b"", read_timeout(q))?;
        let index = response
            .header("x-consul-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match response.status {
            404 => Ok((Vec::new(), index)),
            200 => Ok((parse_pairs(&response.body)?, index)),
            code => Err(CallError::Status {
                code,
                body: response.text(),
            }),
        }
    }

    /// `api.KV.put`: a PUT of `body` with `params`; the answer is whether it contains `true`.
    fn kv_put(
        &self,
        key: &str,
        mut params: Vec<(&str, String)>,
        flags: u64,
        body: &[u8],
    ) -> Result<bool, CallError> {
        if key.starts_with('/') {
            return Err(CallError::Client(format!(
                "Invalid key. Key must not begin with a '/': {key}"
            )));
        }
        if flags != 0 {
            params.push(("flags", flags.to_string()));
        }
        let target = format!("/v1/kv/{}{}", escape_path(key), encode_query(params));
        let response = self.call(
            "PUT",
            &target,
            Some("application/octet-stream"),
            body,
            REQUEST_TIMEOUT,
        )?;
        if response.status != 200 {
            return Err(CallError::Status {
                code: response.status,
                body: response.text(),
            });
        }
        Ok(response.text().contains("true"))
    }

    /// `api.KV.Acquire`: `?acquire=<session>&flags=<flags>`.
    fn kv_acquire(&self, pair: &KvPair) -> Result<bool, CallError> {
        let body = pair.value.as_deref().unwrap_or_default();
        let params = vec![("acquire", pair.session.clone())];
        self.kv_put(&pair.key, params, pair.flags, body)
    }

    /// `api.KV.Release`: `?flags=<flags>&release=<session>`.
    fn kv_release(&self, pair: &KvPair) -> Result<bool, CallError> {
        let body = pair.value.as_deref().unwrap_or_default();
        let params = vec![("release", pair.session.clone())];
        self.kv_put(&pair.key, params, pair.flags, body)
    }

    /// `api.KV.CAS`: `?cas=<ModifyIndex>&flags=<flags>`.
    fn kv_cas(&self, pair: &KvPair) -> Result<bool, CallError> {
        let body = pair.value.as_deref().unwrap_or_default();
        let params = vec![("cas", pair.modify_index.to_string())];
        self.kv_put(&pair.key, params, pair.flags, body)
    }

    /// `api.KV.Delete` / `DeleteCAS` (`deleteInternal`).
    fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, CallError> {
        let key = key.strip_prefix('/').unwrap_or(key);
        let params = cas.map(|c| ("cas", c.to_string())).into_iter().collect();
        let target = format!("/v1/kv/{}{}", escape_path(key), encode_query(params));
        let response = self.call("DELETE", &target, None, b"", REQUEST_TIMEOUT)?;
        if response.status != 200 {
            return Err(CallError::Status {
                code: response.status,
                body: response.text(),
            });
        }
        Ok(response.text().contains("true"))
    }

    /// `api.Session.Create`: only the non-empty fields, as a Go map (keys sorted), plus the
    /// newline of `json.Encoder`.
    fn session_create(&self, fields: &BTreeMap<&str, String>) -> Result<String, CallError> {
        let members: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{}", go_json_string(k), go_json_string(v)))
            .collect();
        let body = format!("{{{}}}\n", members.join(","));
        let response = self.call(
            "PUT",
            "/v1/session/create",
            Some("application/json"),
            body.as_bytes(),
            REQUEST_TIMEOUT,
        )?;
        if response.status != 200 {
            return Err(CallError::Status {
                code: response.status,
                body: response.text(),
            });
        }
        let answer: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|e| CallError::Client(format!("Failed to decode response: {e}")))?;
        Ok(answer["ID"].as_str().unwrap_or_default().to_string())
    }

    /// `api.Session.Renew`: 404 → no entry; another non-200 →
    /// `Unexpected response code: <n>` (no body); 200 → the TTL of the first entry.
    fn session_renew(&self, id: &str) -> Result<Option<String>, CallError> {
        let target = format!("/v1/session/renew/{id}");
        let response = self.call("PUT", &target, None, b"", REQUEST_TIMEOUT)?;
        match response.status {
            404 => Ok(None),
            200 => {
                let entries: serde_json::Value = serde_json::from_slice(&response.body)
                    .map_err(|e| CallError::Client(format!("Failed to read response: {e}")))?;
                Ok(entries
                    .get(0)
                    .map(|entry| entry["TTL"].as_str().unwrap_or_default().to_string()))
            }
            code => Err(CallError::Client(format!(
                "Unexpected response code: {code}"
            ))),
        }
    }

    /// `api.Session.Destroy`: a PUT without a body.
    fn session_destroy(&self, id: &str) -> Result<(), CallError> {
        let target = format!("/v1/session/destroy/{id}");
        let response = self.call("PUT", &target, None, b"", REQUEST_TIMEOUT)?;
        if response.status != 200 {
            return Err(CallError::Status {
                code: response.status,
                body: response.text(),
            });
        }
        Ok(())
    }
}

/// How long the HTTP read of a query may take: a blocking one lasts its wait (300 s without
/// one) plus up to wait/16 of server jitter.
fn read_timeout(q: &QueryOptions) -> Duration {
    if q.wait_index == 0 {
        return REQUEST_TIMEOUT;
    }
    let wait = if q.wait_time.is_zero() {
        DEFAULT_QUERY_TIME
    } else {
        q.wait_time.min(MAX_QUERY_TIME)
    };
    wait + wait / 16 + BLOCKING_SLACK
}

fn parse_pairs(body: &[u8]) -> Result<Vec<KvPair>, CallError> {
    let bad = |what: String| CallError::Client(format!("Failed to decode KV entries: {what}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let entries = value
        .as_array()
        .ok_or_else(|| bad("not an array".to_string()))?;
    let mut pairs = Vec::with_capacity(entries.len());
    for entry in entries {
        let number = |name: &str| entry[name].as_u64().unwrap_or(0);
        let value = match &entry["Value"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(text) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => return Err(bad(format!("Value {other}"))),
        };
        pairs.push(KvPair {
            key: entry["Key"].as_str().unwrap_or_default().to_string(),
            create_index: number("CreateIndex"),
            modify_index: number("ModifyIndex"),
            lock_index: number("LockIndex"),
            flags: number("Flags"),
            value,
            session: entry["Session"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(pairs)
}

/// `api.durToMsec`: whole milliseconds, at least 1 ms for a positive duration.
fn dur_to_msec(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if !duration.is_zero() && ms == 0 {
        ms = 1;
    }
    format!("{ms}ms")
}

/// `url.Values.Encode`: sorted by key, `QueryEscape`d, with the leading `?` (none if empty).
fn encode_query(mut params: Vec<(&str, String)>) -> String {
    if params.is_empty() {
        return String::new();
    }
    params.sort_by(|a, b| a.0.cmp(b.0));
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect();
    format!("?{}", pairs.join("&"))
}

/// Go's `url.QueryEscape`.
fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Go's `url.URL.EscapedPath` for a path without a `RawPath`.
fn escape_path(path: &str) -> String {
    let mut out = String::new();
    for byte in path.bytes() {
        match byte {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'$'
            | b'&'
            | b'+'
            | b','
            | b'/'
            | b':'
            | b';'
            | b'='
            | b'@' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A JSON string as Go's `encoding/json` writes it: HTML-safe (`<`, `>`, `&` as `\u003c`...)
/// and U+2028/U+2029 escaped.
fn go_json_string(text: &str) -> String {
    let json = serde_json::to_string(text).unwrap_or_default();
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Go's `path.Clean`.
fn go_path_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Go's `path.Join` of two elements.
pub(crate) fn go_path_join(a: &str, b: &str) -> String {
    let parts: Vec<&str> = [a, b].into_iter().filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return String::new();
    }
    go_path_clean(&parts.join("/"))
}

/// Go's `time.ParseDuration`, for the non-negative values sessions use (`15s`, `1m30s`,
/// `1.5s`, `500ms`, `0`).
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration \"{text}\"");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration \"{text}\""))?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => {
                return Err(format!(
                    "time: unknown unit \"{unit}\" in duration \"{text}\""
                ));
            }
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// The largest number of `[start, end)` intervals that overlap at one instant.
pub(crate) fn max_overlap(intervals: &[(u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for &(start, end) in intervals {
        events.push((start, 1));
        events.push((end, -1));
    }
    // At equal stamps an end comes first: [a, b) and [b, c) do not overlap.
    events.sort();
    let mut current = 0i32;
    let mut peak = 0i32;
    for (_, delta) in events {
        current += delta;
        peak = peak.max(current);
    }
    peak as usize
}

// ---- Signals between threads (Go's channels) ------------------------------------------------

/// Go's `stopCh`: closed once, read by the acquire loop between its requests.
#[derive(Clone, Default)]
pub(crate) struct StopSignal(Arc<(Mutex<bool>, Condvar)>);

impl StopSignal {
    /// Closes the channel.
    pub(crate) fn stop(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// Whether it is closed (`select { case <-stopCh: ... default: }`).
    pub(crate) fn is_stopped(&self) -> bool {
        *self.0.0.lock().unwrap()
    }

    /// `select { case <-time.After(d): case <-stopCh: }`: true when stopped.
    fn sleep(&self, duration: Duration) -> bool {
        let guard = self.0.0.lock().unwrap();
        let (guard, _) = self
            .0
            .1
            .wait_timeout_while(guard, duration, |stopped| !*stopped)
            .unwrap();
        *guard
    }
}

/// The channel `Lock`/`Acquire` return: closed when the monitor ends (lock lost, error, or
/// after a release). Records when, on CLOCK_MONOTONIC.
#[derive(Clone, Default)]
pub(crate) struct LostSignal(Arc<(Mutex<Option<u128>>, Condvar)>);

impl LostSignal {
    fn close(&self) {
        let mut lost = self.0.0.lock().unwrap();
        if lost.is_none() {
            *lost = Some(monotonic_ns());
        }
        self.0.1.notify_all();
    }

    /// Whether the channel is closed.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost_ns().is_some()
    }

    /// When it was closed.
    pub(crate) fn lost_ns(&self) -> Option<u128> {
        *self.0.0.lock().unwrap()
    }

    /// Waits up to `timeout` for it to close; true if it did.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let guard = self.0.0.lock().unwrap();
        let (guard, _) = self
            .0
            .1
            .wait_timeout_while(guard, timeout, |lost| lost.is_none())
            .unwrap();
        guard.is_some()
    }
}

/// Go's `defer close(stopCh)` in the monitors: closes even if the thread panics.
struct CloseOnDrop(LostSignal);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What an acquisition did so far: lets a test wait for a step (e.g. "blocked on the holder")
/// instead of sleeping.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// The session, once created.
    pub(crate) session: Option<String>,
    /// Reads of the key (lock) or the prefix (semaphore) in the acquire loop.
    pub(crate) reads: u32,
    /// Times it chose to block on an index: held by another (lock), full (semaphore).
    pub(crate) index_waits: u32,
    /// `?acquire` answered `false` (lock).
    pub(crate) refusals: u32,
    /// Sleeps of the lock-delay retry time (lock).
    pub(crate) retry_sleeps: u32,
    /// CAS of `.lock` answered `false` (semaphore).
    pub(crate) cas_failures: u32,
}

/// A test hook run at a chosen step, with the number of the attempt (1, 2, ...).
pub(crate) type Hook = Arc<dyn Fn(u32) + Send + Sync>;

// ---- Session renewal: api.Session.RenewPeriodic -------------------------------------------

/// `go session.RenewPeriodic(ttl, id, q, doneCh)`: renews in a thread until told to stop, then
/// destroys the session. Its result (Go ignores it) is kept for tests.
struct Renewer {
    done: Sender<()>,
    finished: Receiver<Result<(), String>>,
}

impl Renewer {
    fn start(client: &GoClient, initial_ttl: &str, id: &str) -> Renewer {
        let (done, done_rx) = mpsc::channel();
        let (finished_tx, finished) = mpsc::channel();
        let client = client.clone();
        let ttl = initial_ttl.to_string();
        let id = id.to_string();
        thread::spawn(move || {
            let _ = finished_tx.send(renew_periodic(&client, &ttl, &id, &done_rx));
        });
        Renewer { done, finished }
    }

    /// `close(sessionRenew)`: the thread destroys the session on its own time.
    fn close(self) -> RenewerClosed {
        let _ = self.done.send(());
        RenewerClosed(self.finished)
    }
}

/// A renewer told to stop, whose end can be awaited.
struct RenewerClosed(Receiver<Result<(), String>>);

impl RenewerClosed {
    /// The renewer's result once it ended (after its destroy request), or None after `timeout`.
    fn wait(self, timeout: Duration) -> Option<Result<(), String>> {
        self.0.recv_timeout(timeout).ok()
    }
}

/// `Session.RenewPeriodic` (`api/session.go`).
fn renew_periodic(
    client: &GoClient,
    initial_ttl: &str,
    id: &str,
    done: &Receiver<()>,
) -> Result<(), String> {
    let mut ttl = parse_go_duration(initial_ttl)?;
    let mut wait = ttl / 2;
    let mut last_renew = Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        // Checked at the top of the loop: more than one TTL without a successful renew.
        if last_renew.elapsed() > ttl {
            return match last_error {
                Some(error) => Err(error),
                None => Ok(()),
            };
        }
        match done.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => match client.session_renew(id) {
                Err(error) => {
                    wait = RENEW_ERROR_RETRY;
                    last_error = Some(error.to_string());
                }
                Ok(None) => return Err("session expired".to_string()),
                Ok(Some(server_ttl)) => {
                    // The server may ask for a longer TTL; Go ignores a parse error (TTL 0).
                    ttl = parse_go_duration(&server_ttl).unwrap_or(Duration::ZERO);
                    wait = ttl / 2;
                    last_renew = Instant::now();
                }
            },
            // doneCh closed: one best-effort destroy.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = client.session_destroy(id);
                return Ok(());
            }
        }
    }
}

// ---- api.Lock --------------------------------------------------------------------------------

/// `api.LockOptions`, the fields `consul lock` uses, plus test knobs.
#[derive(Clone)]
pub(crate) struct GoLockOptions {
    /// `Key`: `consul lock` uses `path.Join(prefix, ".lock")`.
    pub(crate) key: String,
    /// `Value`: `consul lock` sets none (an empty body on every write).
    pub(crate) value: Option<Vec<u8>>,
    /// `SessionName`.
    pub(crate) session_name: String,
    /// `SessionTTL`.
    pub(crate) session_ttl: String,
    /// `LockDelay`: zero is not sent (the server's 15 s applies); `consul lock` leaves it zero.
    pub(crate) lock_delay: Duration,
    /// `MonitorRetries`.
    pub(crate) monitor_retries: u32,
    /// `MonitorRetryTime`.
    pub(crate) monitor_retry_time: Duration,
    /// `LockWaitTime`: `?wait` of each blocking read (and the budget of a one-shot attempt).
    pub(crate) lock_wait_time: Duration,
    /// `LockTryOnce` (`consul lock -timeout`).
    pub(crate) lock_try_once: bool,
    /// `DefaultLockRetryTime`, a constant in Go: shortened by tests that meet a lock-delay.
    pub(crate) lock_retry_time: Duration,
    /// Test hook, run just before each `?acquire` of the key.
    pub(crate) before_acquire: Option<Hook>,
}

impl GoLockOptions {
    /// What `api.LockOpts` makes of a bare `LockOptions{Key: key}`.
    pub(crate) fn new(key: &str) -> GoLockOptions {
        GoLockOptions {
            key: key.to_string(),
            value: None,
            session_name: DEFAULT_LOCK_SESSION_NAME.to_string(),
            session_ttl: DEFAULT_SESSION_TTL.to_string(),
            lock_delay: Duration::ZERO,
            monitor_retries: 0,
            monitor_retry_time: DEFAULT_MONITOR_RETRY_TIME,
            lock_wait_time: DEFAULT_WAIT_TIME,
            lock_try_once: false,
            lock_retry_time: DEFAULT_LOCK_RETRY_TIME,
            before_acquire: None,
        }
    }

    /// What `consul lock PREFIX <child>` passes (`setupLock`), `-timeout` unset.
    pub(crate) fn consul_lock(prefix: &str, child_args: &str) -> GoLockOptions {
        let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
        GoLockOptions {
            session_name: consul_lock_session_name(child_args, prefix),
            monitor_retries: CONSUL_LOCK_MONITOR_RETRIES,
            monitor_retry_time: CONSUL_LOCK_MONITOR_RETRY_TIME,
            ..GoLockOptions::new(&go_path_join(prefix, SEMAPHORE_KEY))
        }
    }
}

/// `api.Lock`: one contender for one key. Its methods block like Go's; [`GoLock::spawn`] runs
/// one in a thread, as `consul lock` does.
pub(crate) struct GoLock {
    client: GoClient,
    opts: GoLockOptions,
    is_held: bool,
    session_renew: Option<Renewer>,
    closed_renewers: Vec<RenewerClosed>,
    lock_session: String,
    progress: Arc<Mutex<Progress>>,
}

impl GoLock {
    /// `Client.LockOpts`: checks the key and the TTL.
    pub(crate) fn new(client: &GoClient, opts: GoLockOptions) -> Result<GoLock, GoError> {
        if opts.key.is_empty() {
            return Err(GoError::Failed("missing key".to_string()));
        }
        parse_go_duration(&opts.session_ttl)
            .map_err(|e| GoError::Failed(format!("invalid SessionTTL: {e}")))?;
        Ok(GoLock {
            client: client.clone(),
            opts,
            is_held: false,
            session_renew: None,
            closed_renewers: Vec::new(),
            lock_session: String::new(),
            progress: Arc::default(),
        })
    }

    /// A contender thread running this lock as `consul lock` does: see [`Contender`].
    pub(crate) fn spawn(client: &GoClient, opts: GoLockOptions) -> Contender {
        match GoLock::new(client, opts) {
            Ok(lock) => Contender::spawn(lock),
            Err(error) => Contender::failed(error),
        }
    }

    fn note(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap());
    }

    /// `Lock.Lock(stopCh)`: `Ok(None)` is Go's `(nil, nil)` (stopped, or a one-shot attempt
    /// that ran out of time).
    pub(crate) fn lock(&mut self, stop: &StopSignal) -> Result<Option<LostSignal>, GoError> {
        if self.is_held {
            return Err(GoError::LockHeld);
        }
        // No `LockOptions.Session`: always a session of our own.
        // `createSession` → `Session.Create`: only the fields that are set.
        let mut fields = BTreeMap::new();
        if !self.opts.session_name.is_empty() {
            fields.insert("Name", self.opts.session_name.clone());
        }
        if !self.opts.session_ttl.is_empty() {
            fields.insert("TTL", self.opts.session_ttl.clone());
        }
        if !self.opts.lock_delay.is_zero() {
            fields.insert("LockDelay", dur_to_msec(self.opts.lock_delay));
        }
        let session = self
            .client
            .session_create(&fields)
            .map_err(|e| GoError::Failed(format!("failed to create session: {e}")))?;
        self.lock_session = session.clone();
        self.note(|p| p.session = Some(session.clone()));
        self.session_renew = Some(Renewer::start(
            &self.client,
            &self.opts.session_ttl,
            &session,
        ));
        let result = self.lock_loop(stop);
        // The deferred cleanup: a failed acquisition stops renewing, which destroys the session.
        if !self.is_held
            && let Some(renew) = self.session_renew.take()
        {
            self.closed_renewers.push(renew.close());
        }
        result
    }

    /// The `WAIT:` loop of `Lock.Lock`.
    fn lock_loop(&mut self, stop: &StopSignal) -> Result<Option<LostSignal>, GoError> {
        let key = self.opts.key.clone();
        let mut q = QueryOptions {
            wait_time: self.opts.lock_wait_time,
            ..QueryOptions::default()
        };
        let start = Instant::now();
        let mut attempts = 0u32;
        loop {
            if stop.is_stopped() {
                return Ok(None);
            }
            // One-shot mode: give up once LockWaitTime has passed, and never wait past it.
            if self.opts.lock_try_once && attempts > 0 {
                let elapsed = start.elapsed();
                if elapsed > self.opts.lock_wait_time {
                    return Ok(None);
                }
                q.wait_time = self.opts.lock_wait_time - elapsed;
            }
            attempts += 1;

            self.note(|p| p.reads += 1);
            let (pair, index) = self
                .client
                .kv_get(&key, &q)
                .map_err(|e| GoError::Failed(format!("failed to read lock: {e}")))?;
            if let Some(pair) = &pair {
                if pair.flags != LOCK_FLAG_VALUE {
                    return Err(GoError::LockConflict);
                }
                if pair.session == self.lock_session {
                    break;
                }
                if !pair.session.is_empty() {
                    self.note(|p| p.index_waits += 1);
                    q.wait_index = index;
                    continue;
                }
            }

            if let Some(hook) = &self.opts.before_acquire {
                hook(attempts);
            }
            let locked = self
                .client
                .kv_acquire(&self.lock_entry(&self.lock_session))
                .map_err(|e| GoError::Failed(format!("failed to acquire lock: {e}")))?;
            if !locked {
                self.note(|p| p.refusals += 1);
                // Why not? Read again without blocking.
                q.wait_index = 0;
                let (pair, index) = self
                    .client
                    .kv_get(&key, &q)
                    .map_err(|e| GoError::Failed(e.to_string()))?;
                if pair.is_some_and(|p| !p.session.is_empty()) {
                    // Someone got there first: a long poll on its index is safe.
                    self.note(|p| p.index_waits += 1);
                    q.wait_index = index;
                } else {
                    // Free but refused: a lock-delay is in force; a timed wait.
                    self.note(|p| p.retry_sleeps += 1);
                    if stop.sleep(self.opts.lock_retry_time) {
                        return Ok(None);
                    }
                }
                continue;
            }
            break;
        }
        // HELD: watch the key, mark it held.
        let lost = LostSignal::default();
        let monitor = LockMonitor {
            client: self.client.clone(),
            key,
            session: self.lock_session.clone(),
            retries: self.opts.monitor_retries,
            retry_time: self.opts.monitor_retry_time,
        };
        let signal = lost.clone();
        thread::spawn(move || monitor.run(signal));
        self.is_held = true;
        Ok(Some(lost))
    }

    /// `Lock.lockEntry`.
    fn lock_entry(&self, session: &str) -> KvPair {
        KvPair {
            key: self.opts.key.clone(),
            value: self.opts.value.clone(),
            session: session.to_string(),
            flags: LOCK_FLAG_VALUE,
            ..KvPair::default()
        }
    }

    /// `Lock.Unlock`: `?release` with the same value and flags; `false` is no error. Then the
    /// renewal stops (deferred in Go: after the release request).
    pub(crate) fn unlock(&mut self) -> Result<(), GoError> {
        if !self.is_held {
            return Err(GoError::LockNotHeld);
        }
        self.is_held = false;
        let renew = self.session_renew.take();
        let entry = self.lock_entry(&self.lock_session);
        self.lock_session.clear();
        let result = self
            .client
            .kv_release(&entry)
            .map(|_| ())
            .map_err(|e| GoError::Failed(format!("failed to release lock: {e}")));
        if let Some(renew) = renew {
            self.closed_renewers.push(renew.close());
        }
        result
    }

    /// `Lock.Destroy`: deletes the key when nobody holds it.
    pub(crate) fn destroy(&mut self) -> Result<(), GoError> {
        if self.is_held {
            return Err(GoError::LockHeld);
        }
        let (pair, _) = self
            .client
            .kv_get(&self.opts.key, &QueryOptions::default())
            .map_err(|e| GoError::Failed(format!("failed to read lock: {e}")))?;
        let Some(pair) = pair else {
            return Ok(());
        };
        if pair.flags != LOCK_FLAG_VALUE {
            return Err(GoError::LockConflict);
        }
        if !pair.session.is_empty() {
            return Err(GoError::LockInUse);
        }
        let removed = self
            .client
            .kv_delete(&pair.key, Some(pair.modify_index))
            .map_err(|e| GoError::Failed(format!("failed to remove lock: {e}")))?;
        if !removed {
            return Err(GoError::LockInUse);
        }
        Ok(())
    }
}

/// `Lock.monitorLock`, in its own thread.
struct LockMonitor {
    client: GoClient,
    key: String,
    session: String,
    retries: u32,
    retry_time: Duration,
}

impl LockMonitor {
    fn run(self, lost: LostSignal) {
        let _close = CloseOnDrop(lost);
        let mut q = QueryOptions {
            require_consistent: true,
            ..QueryOptions::default()
        };
        // WAIT: the retry budget starts over after every good read.
        loop {
            let mut retries = self.retries;
            // RETRY:
            let (pair, index) = loop {
                match self.client.kv_get(&self.key, &q) {
                    Ok(answer) => break answer,
                    Err(error) if retries > 0 && error.retryable() => {
                        thread::sleep(self.retry_time);
                        retries -= 1;
                        q.wait_index = 0;
                    }
                    Err(_) => return,
                }
            };
            if pair.is_some_and(|p| p.session == self.session) {
                q.wait_index = index;
                continue;
            }
            return;
        }
    }
}

// ---- api.Semaphore ---------------------------------------------------------------------------

/// `api.SemaphoreOptions`, the fields `consul lock -n` uses, plus a test hook.
#[derive(Clone)]
pub(crate) struct GoSemaphoreOptions {
    /// `Prefix`: `consul lock` passes its prefix without the leading `/`.
    pub(crate) prefix: String,
    /// `Limit`.
    pub(crate) limit: i64,
    /// `Value` of the contender key: `consul lock` sets none.
    pub(crate) value: Option<Vec<u8>>,
    /// `SessionName`.
    pub(crate) session_name: String,
    /// `SessionTTL`.
    pub(crate) session_ttl: String,
    /// `MonitorRetries`.
    pub(crate) monitor_retries: u32,
    /// `MonitorRetryTime`.
    pub(crate) monitor_retry_time: Duration,
    /// `SemaphoreWaitTime`.
    pub(crate) semaphore_wait_time: Duration,
    /// `SemaphoreTryOnce` (`consul lock -n N -timeout`).
    pub(crate) semaphore_try_once: bool,
    /// Test hook, run just before each CAS of `.lock` in the acquire loop.
    pub(crate) before_cas: Option<Hook>,
}

impl GoSemaphoreOptions {
    /// What `api.SemaphoreOpts` makes of `SemaphoreOptions{Prefix: prefix, Limit: limit}`.
    pub(crate) fn new(prefix: &str, limit: i64) -> GoSemaphoreOptions {
        GoSemaphoreOptions {
            prefix: prefix.to_string(),
            limit,
            value: None,
            session_name: DEFAULT_SEMAPHORE_SESSION_NAME.to_string(),
            session_ttl: DEFAULT_SESSION_TTL.to_string(),
            monitor_retries: 0,
            monitor_retry_time: DEFAULT_MONITOR_RETRY_TIME,
            semaphore_wait_time: DEFAULT_WAIT_TIME,
            semaphore_try_once: false,
            before_cas: None,
        }
    }

    /// What `consul lock -n LIMIT PREFIX <child>` passes (`setupSemaphore`), `-timeout` unset.
    pub(crate) fn consul_lock(prefix: &str, limit: i64, child_args: &str) -> GoSemaphoreOptions {
        let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
        GoSemaphoreOptions {
            session_name: consul_lock_session_name(child_args, prefix),
            monitor_retries: CONSUL_LOCK_MONITOR_RETRIES,
            monitor_retry_time: CONSUL_LOCK_MONITOR_RETRY_TIME,
            ..GoSemaphoreOptions::new(prefix, limit)
        }
    }
}

/// The value of `.lock`: Go's `semaphoreLock{Limit int; Holders map[string]bool}`. `holders`
/// is `None` for Go's nil map (`"Holders": null`, or no such field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SemaphoreLock {
    pub(crate) limit: i64,
    pub(crate) holders: Option<BTreeMap<String, bool>>,
}

impl SemaphoreLock {
    fn len(&self) -> usize {
        self.holders.as_ref().map_or(0, BTreeMap::len)
    }

    /// Whether `session` is a key of `Holders` (Go reads presence, never the bool).
    pub(crate) fn has(&self, session: &str) -> bool {
        self.holders
            .as_ref()
            .is_some_and(|h| h.contains_key(session))
    }

    /// `Semaphore.decodeLock`: no value → `{limit, {}}`; otherwise Go's `json.Unmarshal`.
    pub(crate) fn decode(value: Option<&[u8]>, local_limit: i64) -> Result<SemaphoreLock, String> {
        let Some(value) = value else {
            return Ok(SemaphoreLock {
                limit: local_limit,
                holders: Some(BTreeMap::new()),
            });
        };
        let fail = |what: String| format!("lock decoding failed: {what}");
        let json: serde_json::Value =
            serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
        let mut lock = SemaphoreLock {
            limit: 0,
            holders: None,
        };
        let fields = match json {
            // `null` into a struct changes nothing.
            serde_json::Value::Null => return Ok(lock),
            serde_json::Value::Object(fields) => fields,
            other => {
                return Err(fail(format!(
                    "json: cannot unmarshal {} into Go value of type api.semaphoreLock",
                    go_json_kind(&other)
                )));
            }
        };
        // encoding/json matches field names case-insensitively and ignores unknown ones.
        for (name, value) in fields {
            if name.eq_ignore_ascii_case("Limit") {
                match value {
                    serde_json::Value::Null => {}
                    serde_json::Value::Number(n) if n.as_i64().is_some() => {
                        lock.limit = n.as_i64().unwrap_or_default();
                    }
                    other => {
                        return Err(fail(format!(
                            "json: cannot unmarshal {} into Go struct field semaphoreLock.Limit of type int",
                            go_json_kind(&other)
                        )));
                    }
                }
            } else if name.eq_ignore_ascii_case("Holders") {
                match value {
                    serde_json::Value::Null => lock.holders = None,
                    serde_json::Value::Object(entries) => {
                        let holders = lock.holders.get_or_insert_with(BTreeMap::new);
                        for (session, held) in entries {
                            match held {
                                serde_json::Value::Bool(b) => {
                                    holders.insert(session, b);
                                }
                                // A null element is the zero value.
                                serde_json::Value::Null => {
                                    holders.insert(session, false);
                                }
                                other => {
                                    return Err(fail(format!(
                                        "json: cannot unmarshal {} into Go struct field semaphoreLock.Holders of type bool",
                                        go_json_kind(&other)
                                    )));
                                }
                            }
                        }
                    }
                    other => {
                        return Err(fail(format!(
                            "json: cannot unmarshal {} into Go struct field semaphoreLock.Holders of type map[string]bool",
                            go_json_kind(&other)
                        )));
                    }
                }
            }
        }
        Ok(lock)
    }

    /// `Semaphore.encodeLock`'s value: `json.Marshal` of the struct.
    pub(crate) fn encode(&self) -> String {
        let holders = match &self.holders {
            None => "null".to_string(),
            Some(holders) => {
                let members: Vec<String> = holders
                    .iter()
                    .map(|(session, held)| format!("{}:{held}", go_json_string(session)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        };
        format!("{{\"Limit\":{},\"Holders\":{holders}}}", self.limit)
    }

    /// `Semaphore.pruneDeadHolders`: keep the holders that are the `Session` of some listed key.
    fn prune_dead_holders(&mut self, pairs: &[KvPair]) {
        let alive: BTreeSet<&str> = pairs
            .iter()
            .filter(|p| !p.session.is_empty())
            .map(|p| p.session.as_str())
            .collect();
        if let Some(holders) = &mut self.holders {
            holders.retain(|holder, _| alive.contains(holder.as_str()));
        }
    }
}

/// The type names Go's JSON errors use.
fn go_json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// `api.Semaphore`: one contender for a slot under a prefix. [`GoSemaphore::spawn`] runs one
/// in a thread, as `consul lock -n` does.
pub(crate) struct GoSemaphore {
    client: GoClient,
    opts: GoSemaphoreOptions,
    is_held: bool,
    session_renew: Option<Renewer>,
    closed_renewers: Vec<RenewerClosed>,
    lock_session: String,
    progress: Arc<Mutex<Progress>>,
}

impl GoSemaphore {
    /// `Client.SemaphoreOpts`: checks the prefix, the limit and the TTL.
    pub(crate) fn new(client: &GoClient, opts: GoSemaphoreOptions) -> Result<GoSemaphore, GoError> {
        if opts.prefix.is_empty() {
            return Err(GoError::Failed("missing prefix".to_string()));
        }
        if opts.limit <= 0 {
            return Err(GoError::Failed(
                "semaphore limit must be positive".to_string(),
            ));
        }
        parse_go_duration(&opts.session_ttl)
            .map_err(|e| GoError::Failed(format!("invalid SessionTTL: {e}")))?;
        Ok(GoSemaphore {
            client: client.clone(),
            opts,
            is_held: false,
            session_renew: None,
            closed_renewers: Vec::new(),
            lock_session: String::new(),
            progress: Arc::default(),
        })
    }

    /// A contender thread running this semaphore as `consul lock -n` does: see [`Contender`].
    pub(crate) fn spawn(client: &GoClient, opts: GoSemaphoreOptions) -> Contender {
        match GoSemaphore::new(client, opts) {
            Ok(semaphore) => Contender::spawn(semaphore),
            Err(error) => Contender::failed(error),
        }
    }

    fn note(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap());
    }

    fn lock_key(&self) -> String {
        go_path_join(&self.opts.prefix, SEMAPHORE_KEY)
    }

    /// `Semaphore.contenderEntry`.
    fn contender_entry(&self, session: &str) -> KvPair {
        KvPair {
            key: go_path_join(&self.opts.prefix, session),
            value: self.opts.value.clone(),
            session: session.to_string(),
            flags: SEMAPHORE_FLAG_VALUE,
            ..KvPair::default()
        }
    }

    /// `Semaphore.findLock`: the `.lock` entry, or a stand-in with our flag and index 0.
    fn find_lock(&self, pairs: &[KvPair]) -> KvPair {
        let key = self.lock_key();
        pairs
            .iter()
            .find(|p| p.key == key)
            .cloned()
            .unwrap_or(KvPair {
                flags: SEMAPHORE_FLAG_VALUE,
                ..KvPair::default()
            })
    }

    /// `Semaphore.encodeLock`: the CAS entry for `.lock`.
    fn encode_lock(&self, lock: &SemaphoreLock, old_index: u64) -> KvPair {
        KvPair {
            key: self.lock_key(),
            value: Some(lock.encode().into_bytes()),
            flags: SEMAPHORE_FLAG_VALUE,
            modify_index: old_index,
            ..KvPair::default()
        }
    }

    /// `Semaphore.Acquire(stopCh)`: `Ok(None)` is Go's `(nil, nil)`.
    pub(crate) fn acquire(&mut self, stop: &StopSignal) -> Result<Option<LostSignal>, GoError> {
        if self.is_held {
            return Err(GoError::SemaphoreHeld);
        }
        // `createSession`: Behavior delete, so a dead contender's key goes with its session.
        let fields = BTreeMap::from_iter(
            [
                ("Name", self.opts.session_name.clone()),
                ("TTL", self.opts.session_ttl.clone()),
                ("Behavior", "delete".to_string()),
            ]
            .into_iter()
            .filter(|(_, value)| !value.is_empty()),
        );
        let session = self
            .client
            .session_create(&fields)
            .map_err(|e| GoError::Failed(format!("failed to create session: {e}")))?;
        self.lock_session = session.clone();
        self.note(|p| p.session = Some(session.clone()));
        self.session_renew = Some(Renewer::start(
            &self.client,
            &self.opts.session_ttl,
            &session,
        ));
        let result = self.acquire_loop(stop);
        if !self.is_held
            && let Some(renew) = self.session_renew.take()
        {
            self.closed_renewers.push(renew.close());
        }
        result
    }

    fn acquire_loop(&mut self, stop: &StopSignal) -> Result<Option<LostSignal>, GoError> {
        // The contender entry; `false` has no error to show, so Go prints `<nil>`.
        match self
            .client
            .kv_acquire(&self.contender_entry(&self.lock_session))
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(GoError::Failed(
                    "failed to make contender entry: <nil>".to_string(),
                ));
            }
            Err(e) => {
                return Err(GoError::Failed(format!(
                    "failed to make contender entry: {e}"
                )));
            }
        }
        let mut q = QueryOptions {
            wait_time: self.opts.semaphore_wait_time,
            ..QueryOptions::default()
        };
        let start = Instant::now();
        let mut attempts = 0u32;
        loop {
            if stop.is_stopped() {
                return Ok(None);
            }
            // One-shot mode, as Go writes it: the remaining wait shrinks by the whole elapsed
            // time on every pass (not by the time since the last pass).
            if self.opts.semaphore_try_once && attempts > 0 {
                let elapsed = start.elapsed();
                if elapsed > q.wait_time {
                    return Ok(None);
                }
                q.wait_time -= elapsed;
            }
            attempts += 1;

            self.note(|p| p.reads += 1);
            let (pairs, index) = self
                .client
                .kv_list(&self.opts.prefix, &q)
                .map_err(|e| GoError::Failed(format!("failed to read prefix: {e}")))?;
            let lock_pair = self.find_lock(&pairs);
            if lock_pair.flags != SEMAPHORE_FLAG_VALUE {
                return Err(GoError::SemaphoreConflict);
            }
            let mut lock = SemaphoreLock::decode(lock_pair.value.as_deref(), self.opts.limit)
                .map_err(GoError::Failed)?;
            if lock.limit != self.opts.limit {
                return Err(GoError::Failed(format!(
                    "semaphore limit conflict (lock: {}, local: {})",
                    lock.limit, self.opts.limit
                )));
            }
            lock.prune_dead_holders(&pairs);
            if lock.len() as i64 >= lock.limit {
                self.note(|p| p.index_waits += 1);
                q.wait_index = index;
                continue;
            }
            let Some(holders) = &mut lock.holders else {
                // Go: `lock.Holders[s.lockSession] = true` on a nil map panics.
                return Err(GoError::Failed(
                    "panic: assignment to entry in nil map (.lock has \"Holders\": null)"
                        .to_string(),
                ));
            };
            holders.insert(self.lock_session.clone(), true);
            let new_lock = self.encode_lock(&lock, lock_pair.modify_index);
            if let Some(hook) = &self.opts.before_cas {
                hook(attempts);
            }
            let did_set = self
                .client
                .kv_cas(&new_lock)
                .map_err(|e| GoError::Failed(format!("failed to update lock: {e}")))?;
            if !did_set {
                // A race with another contender: read again (same index as before).
                self.note(|p| p.cas_failures += 1);
                continue;
            }
            break;
        }
        let lost = LostSignal::default();
        let monitor = SemaphoreMonitor {
            client: self.client.clone(),
            prefix: self.opts.prefix.clone(),
            lock_key: self.lock_key(),
            limit: self.opts.limit,
            session: self.lock_session.clone(),
            retries: self.opts.monitor_retries,
            retry_time: self.opts.monitor_retry_time,
        };
        let signal = lost.clone();
        thread::spawn(move || monitor.run(signal));
        self.is_held = true;
        Ok(Some(lost))
    }

    /// `Semaphore.Release`: remove ourselves from `.lock` (CAS loop), delete the contender
    /// key, then stop the renewal (which destroys the session).
    pub(crate) fn release(&mut self) -> Result<(), GoError> {
        if !self.is_held {
            return Err(GoError::SemaphoreNotHeld);
        }
        self.is_held = false;
        let renew = self.session_renew.take();
        let session = std::mem::take(&mut self.lock_session);
        let result = self.remove_holder(&session);
        if let Some(renew) = renew {
            self.closed_renewers.push(renew.close());
        }
        result
    }

    fn remove_holder(&mut self, session: &str) -> Result<(), GoError> {
        let key = self.lock_key();
        // READ:
        loop {
            let (pair, _) = self
                .client
                .kv_get(&key, &QueryOptions::default())
                .map_err(|e| GoError::Failed(e.to_string()))?;
            // A vanished `.lock` decodes as an empty one: nothing to remove.
            let pair = pair.unwrap_or_default();
            let mut lock = SemaphoreLock::decode(pair.value.as_deref(), self.opts.limit)
                .map_err(GoError::Failed)?;
            if lock.has(session) {
                if let Some(holders) = &mut lock.holders {
                    holders.remove(session);
                }
                let new_lock = self.encode_lock(&lock, pair.modify_index);
                let did_set = self
                    .client
                    .kv_cas(&new_lock)
                    .map_err(|e| GoError::Failed(format!("failed to update lock: {e}")))?;
                if !did_set {
                    continue;
                }
            }
            break;
        }
        self.client
            .kv_delete(&go_path_join(&self.opts.prefix, session), None)
            .map_err(|e| GoError::Failed(e.to_string()))?;
        Ok(())
    }

    /// `Semaphore.Destroy`: deletes `.lock` when no live holder remains.
    pub(crate) fn destroy(&mut self) -> Result<(), GoError> {
        if self.is_held {
            return Err(GoError::SemaphoreHeld);
        }
        let (pairs, _) = self
            .client
            .kv_list(&self.opts.prefix, &QueryOptions::default())
            .map_err(|e| GoError::Failed(format!("failed to read prefix: {e}")))?;
        let lock_pair = self.find_lock(&pairs);
        if lock_pair.modify_index == 0 {
            return Ok(());
        }
        if lock_pair.flags != SEMAPHORE_FLAG_VALUE {
            return Err(GoError::SemaphoreConflict);
        }
        let mut lock = SemaphoreLock::decode(lock_pair.value.as_deref(), self.opts.limit)
            .map_err(GoError::Failed)?;
        lock.prune_dead_holders(&pairs);
        if lock.len() > 0 {
            return Err(GoError::SemaphoreInUse);
        }
        let removed = self
            .client
            .kv_delete(&lock_pair.key, Some(lock_pair.modify_index))
            .map_err(|e| GoError::Failed(format!("failed to remove semaphore: {e}")))?;
        if !removed {
            return Err(GoError::SemaphoreInUse);
        }
        Ok(())
    }
}

/// `Semaphore.monitorLock`, in its own thread.
struct SemaphoreMonitor {
    client: GoClient,
    prefix: String,
    lock_key: String,
    limit: i64,
    session: String,
    retries: u32,
    retry_time: Duration,
}

impl SemaphoreMonitor {
    fn run(self, lost: LostSignal) {
        let _close = CloseOnDrop(lost);
        let mut q = QueryOptions {
            require_consistent: true,
            ..QueryOptions::default()
        };
        loop {
            let mut retries = self.retries;
            let (pairs, index) = loop {
                match self.client.kv_list(&self.prefix, &q) {
                    Ok(answer) => break answer,
                    Err(error) if retries > 0 && error.retryable() => {
                        thread::sleep(self.retry_time);
                        retries -= 1;
                        q.wait_index = 0;
                    }
                    Err(_) => return,
                }
            };
            // findLock + decodeLock: no `.lock` (or a null value) decodes as an empty one.
            let value = pairs
                .iter()
                .find(|p| p.key == self.lock_key)
                .and_then(|p| p.value.clone());
            let Ok(mut lock) = SemaphoreLock::decode(value.as_deref(), self.limit) else {
                return;
            };
            lock.prune_dead_holders(&pairs);
            if lock.has(&self.session) {
                q.wait_index = index;
                continue;
            }
            return;
        }
    }
}

// ---- Contender threads: what `consul lock` does around Lock/Acquire ------------------------

/// The calls `consul lock` makes through its `LockUnlock` (`lockFn`, `unlockFn`, `cleanupFn`).
trait Recipe: Send + 'static {
    fn lock_fn(&mut self, stop: &StopSignal) -> Result<Option<LostSignal>, GoError>;
    fn unlock_fn(&mut self) -> Result<(), GoError>;
    fn cleanup_fn(&mut self) -> Result<(), GoError>;
    fn session(&self) -> String;
    fn progress(&self) -> Arc<Mutex<Progress>>;
    /// Waits for the renew threads told to stop (each destroys its session).
    fn join_renewers(&mut self) -> Vec<Option<Result<(), String>>>;
}

impl Recipe for GoLock {
    fn lock_fn(&mut self, stop: &StopSignal) -> Result<Option<LostSignal>, GoError> {
        self.lock(stop)
    }
    fn unlock_fn(&mut self) -> Result<(), GoError> {
        self.unlock()
    }
    fn cleanup_fn(&mut self) -> Result<(), GoError> {
        self.destroy()
    }
    fn session(&self) -> String {
        self.lock_session.clone()
    }
    fn progress(&self) -> Arc<Mutex<Progress>> {
        self.progress.clone()
    }
    fn join_renewers(&mut self) -> Vec<Option<Result<(), String>>> {
        self.closed_renewers
            .drain(..)
            .map(|r| r.wait(BACKGROUND_JOIN_TIMEOUT))
            .collect()
    }
}

impl Recipe for GoSemaphore {
    fn lock_fn(&mut self, stop: &StopSignal) -> Result<Option<LostSignal>, GoError> {
        self.acquire(stop)
    }
    fn unlock_fn(&mut self) -> Result<(), GoError> {
        self.release()
    }
    fn cleanup_fn(&mut self) -> Result<(), GoError> {
        self.destroy()
    }
    fn session(&self) -> String {
        self.lock_session.clone()
    }
    fn progress(&self) -> Arc<Mutex<Progress>> {
        self.progress.clone()
    }
    fn join_renewers(&mut self) -> Vec<Option<Result<(), String>>> {
        self.closed_renewers
            .drain(..)
            .map(|r| r.wait(BACKGROUND_JOIN_TIMEOUT))
            .collect()
    }
}

/// What a release did, with the critical section's stamps on CLOCK_MONOTONIC.
#[derive(Debug, Clone)]
pub(crate) struct Released {
    /// The session that held.
    pub(crate) session: String,
    /// When `Lock`/`Acquire` returned.
    pub(crate) acquired_ns: u128,
    /// When the release was asked for, before the first release request.
    pub(crate) released_ns: u128,
    /// When the lost channel had closed before the release, if it had.
    pub(crate) lost_ns: Option<u128>,
    /// `Unlock` / `Release`.
    pub(crate) unlock: Result<(), GoError>,
    /// `Destroy` (consul lock ignores `Lock in use` / `Semaphore in use`).
    pub(crate) cleanup: Result<(), GoError>,
    /// Whether the renew thread ended (after its session destroy) in time.
    pub(crate) session_destroyed: bool,
}

impl Released {
    /// The critical section `[acquired, end)`, ending at the loss if it came first.
    pub(crate) fn interval(&self) -> (u128, u128) {
        let end = self
            .lost_ns
            .map_or(self.released_ns, |lost| lost.min(self.released_ns));
        (self.acquired_ns, end)
    }
}

/// A held lock or slot. Dropping it releases in the background.
pub(crate) struct Held {
    session: String,
    acquired_ns: u128,
    lost: LostSignal,
    release: Option<Sender<()>>,
    released: Receiver<Released>,
}

impl Held {
    /// The holder's session.
    pub(crate) fn session(&self) -> &str {
        &self.session
    }

    /// When `Lock`/`Acquire` returned, on CLOCK_MONOTONIC.
    pub(crate) fn acquired_ns(&self) -> u128 {
        self.acquired_ns
    }

    /// Whether the lost channel is closed.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }

    /// Waits up to `timeout` for the loss; true if it came.
    pub(crate) fn wait_lost(&self, timeout: Duration) -> bool {
        self.lost.wait(timeout)
    }

    /// `unlockFn` then `cleanupFn`, as `consul lock` does after its child, and the session's
    /// destroy; waits up to `timeout` for all of it.
    pub(crate) fn release(mut self, timeout: Duration) -> Result<Released, GoError> {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        self.released
            .recv_timeout(timeout)
            .map_err(|_| GoError::Timeout(format!("release of {}", self.session)))
    }
}

/// One contender thread: creates its session, acquires, reports, holds until told to release,
/// then releases and cleans up, as `consul lock` does around its child.
pub(crate) struct Contender {
    stop: StopSignal,
    outcome: Receiver<Result<Held, GoError>>,
    progress: Arc<Mutex<Progress>>,
}

impl Contender {
    fn spawn<R: Recipe>(mut recipe: R) -> Contender {
        let stop = StopSignal::default();
        let (outcome_tx, outcome) = mpsc::channel();
        let progress = recipe.progress();
        let thread_stop = stop.clone();
        thread::spawn(move || {
            let lost = match recipe.lock_fn(&thread_stop) {
                Err(error) => {
                    recipe.join_renewers();
                    let _ = outcome_tx.send(Err(error));
                    return;
                }
                Ok(None) => {
                    recipe.join_renewers();
                    let _ = outcome_tx.send(Err(GoError::Stopped));
                    return;
                }
                Ok(Some(lost)) => lost,
            };
            let acquired_ns = monotonic_ns();
            let session = recipe.session();
            // consul lock: "Shutdown triggered during lock acquisition": release, no child.
            if thread_stop.is_stopped() {
                let _ = recipe.unlock_fn();
                let _ = recipe.cleanup_fn();
                recipe.join_renewers();
                let _ = outcome_tx.send(Err(GoError::Stopped));
                return;
            }
            let (release_tx, release_rx) = mpsc::channel();
            let (released_tx, released) = mpsc::channel();
            let held = Held {
                session: session.clone(),
                acquired_ns,
                lost: lost.clone(),
                release: Some(release_tx),
                released,
            };
            // If nobody takes the Held, it is dropped and the release below runs at once.
            let _ = outcome_tx.send(Ok(held));
            let _ = release_rx.recv();
            let released_ns = monotonic_ns();
            let lost_ns = lost.lost_ns();
            let unlock = recipe.unlock_fn();
            let cleanup = recipe.cleanup_fn();
            let renewers = recipe.join_renewers();
            let _ = released_tx.send(Released {
                session,
                acquired_ns,
                released_ns,
                lost_ns,
                unlock,
                cleanup,
                session_destroyed: renewers.iter().all(Option::is_some),
            });
        });
        Contender {
            stop,
            outcome,
            progress,
        }
    }

    fn failed(error: GoError) -> Contender {
        let (tx, outcome) = mpsc::channel();
        let _ = tx.send(Err(error));
        Contender {
            stop: StopSignal::default(),
            outcome,
            progress: Arc::default(),
        }
    }

    /// The outcome if there is one yet: the held lock, or why there is none.
    pub(crate) fn try_take(&mut self) -> Option<Result<Held, GoError>> {
        self.outcome.try_recv().ok()
    }

    /// Waits up to `timeout` for the outcome; [`GoError::Timeout`] if none came.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<Held, GoError> {
        match self.outcome.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) => {
                Err(GoError::Timeout(format!("acquisition after {timeout:?}")))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(GoError::Failed("contender thread ended".to_string()))
            }
        }
    }

    /// Closes the stop channel: the acquisition ends at its next step (Go checks between
    /// requests, so a blocking read finishes first).
    pub(crate) fn stop(&self) {
        self.stop.stop();
    }

    /// What the acquisition did so far.
    pub(crate) fn progress(&self) -> Progress {
        self.progress.lock().unwrap().clone()
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn go_encodings() {
        assert_eq!(go_path_join("a/b/", ".lock"), "a/b/.lock");
        assert_eq!(go_path_join("a//b", "x"), "a/b/x");
        assert_eq!(go_path_join("/a", ".lock"), "/a/.lock");
        assert_eq!(go_path_join("a/../..", "b"), "../b");
        assert_eq!(dur_to_msec(Duration::from_secs(15)), "15000ms");
        assert_eq!(dur_to_msec(Duration::from_nanos(1)), "1ms");
        assert_eq!(
            encode_query(vec![
                ("recurse", String::new()),
                ("index", "7".into()),
                ("consistent", String::new()),
            ]),
            "?consistent=&index=7&recurse="
        );
        assert_eq!(go_json_string("a<b>&"), "\"a\\u003cb\\u003e\\u0026\"");
        assert_eq!(parse_go_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_go_duration("15").is_err());
        assert_eq!(max_overlap(&[(0, 10), (10, 20), (5, 15)]), 2);
    }

    #[test]
    fn semaphore_lock_json_as_go() {
        let lock = SemaphoreLock::decode(
            Some(br#"{"limit":3,"HOLDERS":{"b":true,"a":false},"Other":1}"#),
            9,
        )
        .unwrap();
        assert_eq!(lock.limit, 3);
        assert!(lock.has("a") && lock.has("b"));
        assert_eq!(
            lock.encode(),
            r#"{"Limit":3,"Holders":{"a":false,"b":true}}"#
        );
        let absent = SemaphoreLock::decode(None, 2).unwrap();
        assert_eq!(absent.encode(), r#"{"Limit":2,"Holders":{}}"#);
        let null = SemaphoreLock::decode(Some(b"null"), 2).unwrap();
        assert_eq!((null.limit, null.holders), (0, None));
        assert!(SemaphoreLock::decode(Some(b"{\"Limit\":1.5}"), 2).is_err());
        assert!(SemaphoreLock::decode(Some(b"[]"), 2).is_err());
    }
}
