/*!
A thin typed client for the part of Consul's HTTP API that locks need: sessions, KV and blocking
reads.

Why our own client on reqwest rather than a crate: none of the published Consul crates covers
renewing and monitoring a session with per-request deadlines, strict `X-Consul-Index` parsing and
connection reuse (see the design notes). The client is deliberately small:

- every request has a deadline: a blocking read waits `wait + wait/16` (the server's jitter) plus
  [`BLOCKING_READ_MARGIN`]; everything else gets [`DEFAULT_REQUEST_TIMEOUT`] or the caller's own;
- `X-Consul-Index` is parsed strictly: a missing or garbled header is an error, never 0, because
  index 0 means "do not block" and would turn a watch into a hot loop;
- connections are pooled (HTTP/1.1 keep-alive), so a renew does not pay a new TCP/TLS handshake;
- the token travels only in the `X-Consul-Token` header, never in a URL, so no error message or
  log line can carry it.
*/

mod error;
mod types;

use std::time::Duration;

use reqwest::{Method, StatusCode};

pub use error::{ConsulError, RequestContext};
pub use types::{
    Behavior, Indexed, KvEntry, QueryOptions, SessionEntry, SessionRequest, TxnError, TxnOp,
    TxnOutcome,
};

use crate::config::{ConfigError, ConsulConfig, Endpoint, Scheme, Secret};

/// Deadline of every request that is not a blocking read, unless the caller gives its own.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed to open a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Added to `wait + wait/16` for a blocking read's deadline: network and scheduling slack.
pub const BLOCKING_READ_MARGIN: Duration = Duration::from_secs(5);

/// Consul's default `wait` for a blocking read that names none.
pub const SERVER_DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// Consul's maximum `wait`.
pub const SERVER_MAX_WAIT: Duration = Duration::from_secs(600);

/// Largest answer read from Consul: far above any lock's (a KV value is at most 512 KiB), and a
/// bound on what a misbehaving server can make us hold in memory.
pub const MAX_RESPONSE_BODY: usize = 64 << 20;

/// TCP keep-alive probes notice a silently dead peer during a long blocking read.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// The Consul client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `scheme://host:port/prefix`, without a trailing slash.
    base_url: String,
    /// For messages: the address as configured.
    display_address: String,
    token: Option<Secret>,
    basic_auth: Option<(String, Option<Secret>)>,
    /// `dc`, `ns`, `partition`: sent on every request when configured.
    common_query: Vec<(&'static str, String)>,
    /// What the client was built from, for [`Client::with_own_pool`].
    config: std::sync::Arc<ConsulConfig>,
    /// Deadline of every request that is not a blocking read and names none of its own.
    request_timeout: Duration,
    /// Whether the server has refused `PUT /v1/txn` (404 or 405) once: then no transaction is
    /// tried again in this process. Shared by every clone.
    no_transactions: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.display_address)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// What a KV write does besides storing the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode<'a> {
    /// A plain write.
    Plain,
    /// Write only if the key's ModifyIndex equals this (0: only if absent).
    Cas(u64),
    /// Take the lock for this session.
    Acquire(&'a str),
    /// Release the lock held by this session.
    Release(&'a str),
}

impl Client {
    /// Builds a client for `config`. Fails, naming the variable, when a TLS file cannot be used.
    pub fn new(config: &ConsulConfig) -> Result<Client, ConfigError> {
        tls::install_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(TCP_KEEPALIVE)
            .tcp_nodelay(true)
            .http1_only()
            // A redirect is not an answer of Consul's API (Consul redirects a path it cleaned,
            // e.g. one with `..`): follow none, report it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("consullock/", env!("CARGO_PKG_VERSION")));
        let host_for_url;
        match &config.endpoint {
            Endpoint::Unix(path) => {
                builder = builder.unix_socket(path.clone());
                // The Go client sends `Host: localhost` over a unix socket.
                host_for_url = "localhost".to_owned();
            }
            Endpoint::Tcp { host, port } => {
                host_for_url = match (&config.tls.server_name, config.scheme) {
                    // To check the certificate against another name than the address, connect
                    // to the address but speak to the server name.
                    (Some(name), Scheme::Https) => {
                        let target = resolve(host, *port).map_err(|message| ConfigError {
                            variable: "CONSUL_HTTP_ADDR",
                            message,
                        })?;
                        builder = builder.resolve(name, target);
                        format!("{name}:{port}")
                    }
                    _ => format!("{host}:{port}"),
                };
            }
        }
        if config.scheme == Scheme::Https {
            builder = tls::configure(builder, config)?;
        } else {
            builder = tls::plain_http(builder);
        }
        let http = builder.build().map_err(|e| ConfigError {
            variable: "CONSUL_HTTP_ADDR",
            message: format!("cannot build an HTTP client: {e}"),
        })?;
        let scheme = match config.endpoint {
            Endpoint::Unix(_) => "http",
            Endpoint::Tcp { .. } => config.scheme.as_str(),
        };
        let mut common_query = Vec::new();
        if let Some(dc) = &config.datacenter {
            common_query.push(("dc", dc.clone()));
        }
        if let Some(ns) = &config.namespace {
            common_query.push(("ns", ns.clone()));
        }
        if let Some(partition) = &config.partition {
            common_query.push(("partition", partition.clone()));
        }
        Ok(Client {
            http,
            base_url: format!("{scheme}://{host_for_url}{}", config.path_prefix),
            display_address: config.display_address(),
            token: config.token.clone(),
            basic_auth: config.basic_auth.clone(),
            common_query,
            config: std::sync::Arc::new(config.clone()),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            no_transactions: Default::default(),
        })
    }

    /// Whether to use transactions: until the server refuses them once.
    pub fn transactions(&self) -> bool {
        !self
            .no_transactions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The server refused `PUT /v1/txn` (see [`ConsulError::means_no_txn`]): the locks fall back
    /// to `?acquire` and `?release` from now on, in every clone of this client.
    pub fn note_no_transactions(&self) {
        tracing::debug!("consul has no transactions here; falling back to ?acquire and ?release");
        self.no_transactions
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The same client (same connection pool) whose requests that are not blocking reads give
    /// up after `timeout` instead of [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn with_request_timeout(&self, timeout: Duration) -> Client {
        Client {
            request_timeout: timeout,
            ..self.clone()
        }
    }

    /// A client for the same agent with a connection pool of its own. A long blocking read
    /// holds its connection for minutes, and aborting it closes that connection: on its own
    /// pool, it leaves the connection of the other requests idle and ready, so e.g. the
    /// release after a watch needs no new TCP (or TLS) handshake.
    pub fn with_own_pool(&self) -> Result<Client, ConfigError> {
        let own = Client::new(&self.config)?;
        Ok(Client {
            request_timeout: self.request_timeout,
            no_transactions: self.no_transactions.clone(),
            ..own
        })
    }

    /// The agent's address, for messages.
    pub fn address(&self) -> &str {
        &self.display_address
    }

    // ---- sessions ----

    /// `PUT /v1/session/create`: returns the new session's id.
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String, ConsulError> {
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let body = serde_json::to_vec(request).map_err(|e| ConsulError::InvalidResponse {
            request: self.context("PUT", "/v1/session/create"),
            what: format!("cannot encode the session request: {e}"),
        })?;
        let response = self
            .send(
                Method::PUT,
                "/v1/session/create".into(),
                &[],
                Some(body),
                self.request_timeout,
            )
            .await?;
        let created: Created = response.json()?;
        // The id goes into every later path: anything but a UUID (an empty id, `../../kv/x`)
        // would address something else than the session.
        if !is_uuid(&created.id) {
            return Err(response.invalid(format!(
                "the new session's ID {:?} is not a UUID",
                snippet(created.id.as_bytes())
            )));
        }
        Ok(created.id)
    }

    /// `PUT /v1/session/renew/:id` with its own deadline. An unknown or expired session gives
    /// [`ConsulError::NotFound`].
    pub async fn session_renew(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<SessionEntry, ConsulError> {
        let path = format!("/v1/session/renew/{}", escape_segment(id));
        let response = self.send(Method::PUT, path, &[], None, timeout).await?;
        let sessions: Vec<SessionEntry> = response.json()?;
        sessions
            .into_iter()
            .next()
            .ok_or_else(|| ConsulError::InvalidResponse {
                request: response.request.clone(),
                what: "renew answered an empty list".into(),
            })
    }

    /// `PUT /v1/session/destroy/:id`. Destroying a session that is already gone succeeds.
    pub async fn session_destroy(&self, id: &str, timeout: Duration) -> Result<(), ConsulError> {
        let path = format!("/v1/session/destroy/{}", escape_segment(id));
        self.send(Method::PUT, path, &[], None, timeout).await?;
        Ok(())
    }

    /// `GET /v1/session/info/:id`: `None` when the session does not exist.
    pub async fn session_info(
        &self,
        id: &str,
        options: &QueryOptions,
    ) -> Result<Indexed<Option<SessionEntry>>, ConsulError> {
        let path = format!("/v1/session/info/{}", escape_segment(id));
        let response = self.read(path, &[], options).await?;
        let index = response.index()?;
        let sessions: Vec<SessionEntry> = response.json()?;
        Ok(response.indexed(sessions.into_iter().next(), index))
    }

    /// `GET /v1/session/list`.
    pub async fn session_list(
        &self,
        options: &QueryOptions,
    ) -> Result<Indexed<Vec<SessionEntry>>, ConsulError> {
        let response = self.read("/v1/session/list".into(), &[], options).await?;
        let index = response.index()?;
        let sessions: Vec<SessionEntry> = response.json()?;
        Ok(response.indexed(sessions, index))
    }

    // ---- KV ----

    /// `GET /v1/kv/:key`: `None` when the key does not exist (its index still comes back, so a
    /// caller can block on a key that is not there yet).
    pub async fn kv_get(
        &self,
        key: &str,
        options: &QueryOptions,
    ) -> Result<Indexed<Option<KvEntry>>, ConsulError> {
        let response = self.read(kv_path(key), &[], options).await?;
        let index = response.index()?;
        if response.status == StatusCode::NOT_FOUND {
            return Ok(response.indexed(None, index));
        }
        let entries: Vec<types::RawKvEntry> = response.json()?;
        let entry = match entries.into_iter().next() {
            Some(raw) => Some(raw.decode().map_err(|what| response.invalid(what))?),
            None => None,
        };
        Ok(response.indexed(entry, index))
    }

    /// `GET /v1/kv/:prefix?recurse`: every entry under a prefix (empty when there is none).
    pub async fn kv_list(
        &self,
        prefix: &str,
        options: &QueryOptions,
    ) -> Result<Indexed<Vec<KvEntry>>, ConsulError> {
        let response = self
            .read(kv_path(prefix), &[("recurse", "")], options)
            .await?;
        let index = response.index()?;
        if response.status == StatusCode::NOT_FOUND {
            return Ok(response.indexed(Vec::new(), index));
        }
        let raw: Vec<types::RawKvEntry> = response.json()?;
        let entries = raw
            .into_iter()
            .map(types::RawKvEntry::decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|what| response.invalid(what))?;
        Ok(response.indexed(entries, index))
    }

    /// `GET /v1/kv/:prefix?keys[&separator=]`: the key names under a prefix.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        options: &QueryOptions,
    ) -> Result<Indexed<Vec<String>>, ConsulError> {
        let mut query = vec![("keys", "")];
        if let Some(separator) = separator {
            query.push(("separator", separator));
        }
        let response = self.read(kv_path(prefix), &query, options).await?;
        let index = response.index()?;
        if response.status == StatusCode::NOT_FOUND {
            return Ok(response.indexed(Vec::new(), index));
        }
        let keys: Vec<String> = response.json()?;
        Ok(response.indexed(keys, index))
    }

    /// `PUT /v1/kv/:key`: stores `value`, with the mode's condition. Returns Consul's verdict.
    /// `flags` is sent when given; Consul sets Flags to 0 on every write without it.
    pub async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        mode: PutMode<'_>,
        flags: Option<u64>,
    ) -> Result<bool, ConsulError> {
        let cas;
        let flags_text;
        let mut query: Vec<(&str, &str)> = Vec::new();
        match mode {
            PutMode::Plain => {}
            PutMode::Cas(index) => {
                cas = index.to_string();
                query.push(("cas", &cas));
            }
            PutMode::Acquire(session) => query.push(("acquire", session)),
            PutMode::Release(session) => query.push(("release", session)),
        }
        if let Some(flags) = flags {
            flags_text = flags.to_string();
            query.push(("flags", &flags_text));
        }
        let response = self
            .send(
                Method::PUT,
                kv_path(key),
                &query,
                Some(value.to_vec()),
                self.request_timeout,
            )
            .await?;
        response.json()
    }

    /// `DELETE /v1/kv/:key[?cas=N]`. With `cas`, deletes only if ModifyIndex equals it (an
    /// absent key counts as deleted).
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, ConsulError> {
        let cas_text = cas.map(|c| c.to_string());
        let query: Vec<(&str, &str)> = cas_text.iter().map(|c| ("cas", c.as_str())).collect();
        let response = self
            .send(
                Method::DELETE,
                kv_path(key),
                &query,
                None,
                self.request_timeout,
            )
            .await?;
        response.json()
    }

    /// `DELETE /v1/kv/:prefix?recurse`: every key under the prefix.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<bool, ConsulError> {
        let response = self
            .send(
                Method::DELETE,
                kv_path(prefix),
                &[("recurse", "")],
                None,
                self.request_timeout,
            )
            .await?;
        response.json()
    }

    // ---- transactions ----

    /// `PUT /v1/txn`: `ops` applied atomically, in one Raft commit when any of them writes.
    /// A transaction that Consul rolled back (409) is [`TxnOutcome::RolledBack`] with its
    /// errors, not an error. A server without the endpoint (404, 405: a very old Consul, or a
    /// proxy that blocks it) gives [`ConsulError::NotFound`] or [`ConsulError::Server`] with 405,
    /// which [`ConsulError::means_no_txn`] recognises.
    pub async fn txn(&self, ops: &[TxnOp<'_>]) -> Result<TxnOutcome, ConsulError> {
        let body = serde_json::to_vec(&ops.iter().map(TxnOp::to_json).collect::<Vec<_>>())
            .map_err(|e| ConsulError::InvalidResponse {
                request: self.context("PUT", "/v1/txn"),
                what: format!("cannot encode the transaction: {e}"),
            })?;
        let response = self
            .send(
                Method::PUT,
                "/v1/txn".into(),
                &[],
                Some(body),
                self.request_timeout,
            )
            .await?;
        let answer: types::RawTxnResponse = response.json()?;
        if response.status == StatusCode::CONFLICT {
            return Ok(TxnOutcome::RolledBack(
                answer
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| TxnError {
                        op_index: e.op_index,
                        what: e.what,
                    })
                    .collect(),
            ));
        }
        let results = answer
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|result| result.kv.map(types::RawKvEntry::decode))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|what| response.invalid(what))?;
        Ok(TxnOutcome::Applied(results))
    }

    // ---- plumbing ----

    fn context(&self, method: &'static str, path: &str) -> RequestContext {
        RequestContext {
            address: self.display_address.clone(),
            method,
            path: path.to_owned(),
        }
    }

    /// A read, blocking when `options.index` is set.
    async fn read(
        &self,
        path: String,
        query: &[(&str, &str)],
        options: &QueryOptions,
    ) -> Result<Response, ConsulError> {
        let mut query: Vec<(&str, String)> =
            query.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut timeout = options.timeout.unwrap_or(self.request_timeout);
        if let Some(index) = options.index.filter(|i| *i > 0) {
            let wait = options
                .wait
                .unwrap_or(SERVER_DEFAULT_WAIT)
                .min(SERVER_MAX_WAIT);
            query.push(("index", index.to_string()));
            query.push(("wait", format!("{}ms", wait.as_millis().max(1))));
            timeout = wait + wait / 16 + BLOCKING_READ_MARGIN;
        }
        if options.consistent {
            query.push(("consistent", String::new()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send(Method::GET, path, &query, None, timeout).await
    }

    async fn send(
        &self,
        method: Method,
        path: String,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, ConsulError> {
        let method_name = method_name(&method);
        let request = self.context(method_name, &path);
        let mut builder = self
            .http
            .request(method, format!("{}{}", self.base_url, path))
            .timeout(timeout)
            .query(query)
            .query(&self.common_query);
        if let Some(token) = &self.token {
            builder = builder.header("X-Consul-Token", token.expose());
        }
        if let Some((user, password)) = &self.basic_auth {
            builder = builder.basic_auth(user, password.as_ref().map(Secret::expose));
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        tracing::trace!(method = method_name, path = %path, "consul request");
        let started = std::time::Instant::now();
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => return Err(transport_error(request, e, timeout)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                        return Err(ConsulError::InvalidResponse {
                            request,
                            what: format!("the answer is larger than {MAX_RESPONSE_BODY} bytes"),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(transport_error(request, e, timeout)),
            }
        }
        tracing::trace!(
            method = method_name,
            path = %path,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "consul answer"
        );
        let response = Response {
            request,
            status,
            headers,
            body,
        };
        let answers_with_a_body = (status == StatusCode::NOT_FOUND && path.starts_with("/v1/kv/"))
            || (status == StatusCode::CONFLICT && path == "/v1/txn");
        if status.is_success() || answers_with_a_body {
            return Ok(response);
        }
        Err(response.into_error())
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::POST => "POST",
        _ => "HTTP",
    }
}

fn transport_error(
    request: RequestContext,
    error: reqwest::Error,
    timeout: Duration,
) -> ConsulError {
    if error.is_timeout() {
        ConsulError::TimedOut {
            request,
            after: timeout,
        }
    } else {
        ConsulError::Unreachable {
            request,
            // reqwest's own message only repeats the URL we already show.
            reason: match std::error::Error::source(&error) {
                Some(cause) => error::cause_chain(cause),
                None => error.to_string(),
            },
            source: error,
        }
    }
}

/// A response whose status the caller will look at.
struct Response {
    request: RequestContext,
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Response {
    fn invalid(&self, what: impl Into<String>) -> ConsulError {
        ConsulError::InvalidResponse {
            request: self.request.clone(),
            what: what.into(),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConsulError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            self.invalid(format!(
                "body is not the expected JSON ({e}): {}",
                snippet(&self.body)
            ))
        })
    }

    /// `X-Consul-Index`, strictly: missing or not a decimal u64 is an error.
    fn index(&self) -> Result<u64, ConsulError> {
        let header = self
            .headers
            .get("X-Consul-Index")
            .ok_or_else(|| self.invalid("the X-Consul-Index header is missing"))?;
        header
            .to_str()
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                self.invalid(format!(
                    "the X-Consul-Index header {header:?} is not a number"
                ))
            })
    }

    fn indexed<T>(&self, value: T, index: u64) -> Indexed<T> {
        let known_leader = self
            .headers
            .get("X-Consul-KnownLeader")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true")
            .unwrap_or(false);
        let last_contact = self
            .headers
            .get("X-Consul-LastContact")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or_default();
        Indexed {
            value,
            index,
            known_leader,
            last_contact,
        }
    }

    fn into_error(self) -> ConsulError {
        let body = snippet(&self.body);
        let request = self.request;
        match self.status.as_u16() {
            403 => ConsulError::PermissionDenied { request, body },
            404 => ConsulError::NotFound { request, body },
            429 => ConsulError::RateLimited { request, body },
            // Consul answers 500 for an unknown session on acquire; older servers capitalise it
            // and forwarding agents prefix "rpc error making call: ", so match a substring.
            500 if body.to_ascii_lowercase().contains("invalid session") => {
                ConsulError::InvalidSession { request, body }
            }
            status => ConsulError::Server {
                request,
                status,
                body,
            },
        }
    }
}

/// The start of a body, on one line, for messages.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim().replace(['\n', '\r'], " ");
    if text.chars().count() > MAX {
        format!("{}…", text.chars().take(MAX).collect::<String>())
    } else if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    }
}

fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", escape_path(key))
}

/// Percent-encodes everything but unreserved characters and `/`, so any key reaches Consul
/// unchanged. (Keys are paths: their `/` stay.)
fn escape_path(text: &str) -> String {
    escape(text, true)
}

/// Percent-encodes everything but unreserved characters: one path segment (a session id),
/// which no `/` may split.
fn escape_segment(text: &str) -> String {
    escape(text, false)
}

fn escape(text: &str, keep_slashes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slashes => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Whether `id` is a UUID as Consul makes them: 8-4-4-4-12 hexadecimal digits.
pub fn is_uuid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn resolve(host: &str, port: u16) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    (bare, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

#[cfg(feature = "tls")]
mod tls {
    use crate::config::{ConfigError, ConsulConfig};

    /// reqwest is built without a default crypto provider (ring is smaller than aws-lc and
    /// builds without a C toolchain) and needs one for any client, even a plain-HTTP one.
    /// A second install fails harmlessly.
    pub(super) fn install_provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    /// A client for plain HTTP never verifies a certificate, yet reqwest builds its TLS
    /// verifier in `build()`, and the platform verifier reads and parses every system root
    /// certificate (~150 files under /etc/ssl/certs): most of `execute`'s start-up time. An
    /// empty root set makes that free, and fails closed should the client ever meet HTTPS
    /// (a redirect): no certificate can be trusted.
    pub(super) fn plain_http(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.tls_certs_only(Vec::new())
    }

    /// Applies the TLS settings: CA file or directory, client certificate, verification.
    pub(super) fn configure(
        mut builder: reqwest::ClientBuilder,
        config: &ConsulConfig,
    ) -> Result<reqwest::ClientBuilder, ConfigError> {
        let tls = &config.tls;
        let mut roots = Vec::new();
        if let Some(file) = &tls.ca_file {
            roots.extend(read_certificates("CONSUL_CACERT", file)?);
        }
        if let Some(dir) = &tls.ca_path {
            let entries = std::fs::read_dir(dir).map_err(|e| ConfigError {
                variable: "CONSUL_CAPATH",
                message: format!("cannot read directory {}: {e}", dir.display()),
            })?;
            let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            paths.sort();
            for path in paths.into_iter().filter(|p| p.is_file()) {
                roots.extend(read_certificates("CONSUL_CAPATH", &path)?);
            }
        }
        if !roots.is_empty() {
            builder = builder.tls_certs_only(roots);
        } else if tls.ca_file.is_some() || tls.ca_path.is_some() {
            return Err(ConfigError {
                variable: if tls.ca_file.is_some() {
                    "CONSUL_CACERT"
                } else {
                    "CONSUL_CAPATH"
                },
                message: "contains no PEM certificate".into(),
            });
        }
        if let Some((cert, key)) = &tls.client_cert {
            let mut pem = read("CONSUL_CLIENT_CERT", cert)?;
            pem.push(b'\n');
            pem.extend(read("CONSUL_CLIENT_KEY", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| ConfigError {
                variable: "CONSUL_CLIENT_CERT",
                message: format!("unusable client certificate or key: {e}"),
            })?;
            builder = builder.identity(identity);
        }
        if !tls.verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        Ok(builder)
    }

    fn read(variable: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(path).map_err(|e| ConfigError {
            variable,
            message: format!("cannot read {}: {e}", path.display()),
        })
    }

    fn read_certificates(
        variable: &'static str,
        path: &std::path::Path,
    ) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        reqwest::Certificate::from_pem_bundle(&read(variable, path)?).map_err(|e| ConfigError {
            variable,
            message: format!("{} is not a PEM certificate bundle: {e}", path.display()),
        })
    }
}

#[cfg(not(feature = "tls"))]
mod tls {
    use crate::config::{ConfigError, ConsulConfig};

    pub(super) fn install_provider() {}

    pub(super) fn plain_http(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder
    }

    pub(super) fn configure(
        _builder: reqwest::ClientBuilder,
        _config: &ConsulConfig,
    ) -> Result<reqwest::ClientBuilder, ConfigError> {
        Err(ConfigError {
            variable: "CONSUL_HTTP_ADDR",
            message: "https needs the `tls` feature, which this build of consullock lacks".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_but_slashes_kept() {
        assert_eq!(escape_path("a/b c/ü?#%"), "a/b%20c/%C3%BC%3F%23%25");
        assert_eq!(escape_segment("../../kv/x"), "..%2F..%2Fkv%2Fx");
    }

    #[test]
    fn session_ids_must_be_uuids() {
        assert!(is_uuid("7d901121-42ba-4fbb-b177-30df0fe2b51f"));
        for bad in [
            "",
            "../../kv/pwned",
            "7d901121-42ba-4fbb-b177-30df0fe2b51",
            "7d901121-42ba-4fbb-b177_30df0fe2b51f",
            "7d901121-42ba-4fbb-b177-30df0fe2b51g",
        ] {
            assert!(!is_uuid(bad), "{bad:?}");
        }
    }

    #[test]
    fn snippets_are_one_line_and_bounded() {
        assert_eq!(snippet(b"  a\nb  "), "a b");
        assert_eq!(snippet(b""), "(empty body)");
        assert!(snippet(&[b'x'; 1000]).chars().count() <= 201);
    }
}
