//! HTTP plumbing of the dev server: routing, query parsing, the options every Consul read takes
//! (consistency, `?index`/`?wait`), token extraction and the ACL gate, enterprise-parameter
//! refusal, blocking queries, response headers and request logging.
//!
//! Checks run in Consul's order: query options first (400s), then per-endpoint validation done
//! by Consul's agent (400s, 413), then, where Consul would make its RPC, the datacenter and the
//! ACL token, then the state machine. Test-only faults (see [`faults`]) are applied in [`handle`],
//! before routing, and never reach the store.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::{Shared, duration, faults, kv, session, txn};

/// Response body type of every answer.
pub(crate) type Body = Full<Bytes>;

/// The only datacenter this server is.
pub(crate) const DATACENTER: &str = "dc1";
/// What `/v1/status/leader` and `/v1/status/peers` report, like a dev agent's server RPC address.
const LEADER_ADDRESS: &str = "127.0.0.1:8300";
/// Consul's `default_query_time`: a blocking query without `?wait` lasts this long.
pub(crate) const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);
/// Consul's `max_query_time`: longer `?wait` values are capped to this.
pub(crate) const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
/// Consul's `JitterFraction`: up to wait/16 is added to every blocking query.
const JITTER_FRACTION: u32 = 16;
/// Request bodies beyond this are refused before being read to the end; Consul's own KV limit
/// (512 KiB, answered with Consul's 413 text) is checked separately by the KV endpoint.
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// An error answer: a status and a plain-text body, as Consul's `handleErr` writes them.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// What an endpoint returns.
pub(crate) type Outcome = Result<Response<Body>, Failure>;

/// A parsed query string, keeping every pair in order like Go's `url.Values`.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`), keeping malformed escapes.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if plus_is_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `url.QueryEscape`.
fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Query {
    pub(crate) fn parse(raw: &str) -> Self {
        let pairs = raw
            .split('&')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect();
        Query { pairs }
    }

    /// Whether the parameter is present at all, even empty (`?recurse`).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// The first value of the parameter.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Go's `url.Values.Encode`: keys sorted, values in order, query-escaped.
    pub(crate) fn encode(&self) -> String {
        let mut sorted: Vec<&(String, String)> = self.pairs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let parts: Vec<String> = sorted
            .iter()
            .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
            .collect();
        parts.join("&")
    }
}

/// A request with its body read.
pub(crate) struct Call {
    pub(crate) method: Method,
    /// Percent-decoded path.
    pub(crate) path: String,
    pub(crate) query: Query,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Call {
    /// The `Content-Length` the client declared, or the body length when it sent none.
    pub(crate) fn content_length(&self) -> u64 {
        self.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.body.len() as u64)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The ACL token: `?token=`, then `X-Consul-Token`, then `Authorization: Bearer <t>` (scheme
    /// case-insensitive, first word only).
    pub(crate) fn token(&self) -> Option<String> {
        if let Some(token) = self.query.get("token").filter(|t| !t.is_empty()) {
            return Some(token.to_string());
        }
        if let Some(token) = self.header("x-consul-token").filter(|t| !t.is_empty()) {
            return Some(token.to_string());
        }
        let authorization = self.header("authorization")?;
        let mut parts = authorization.split(' ');
        let scheme = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() || !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let value = rest.join(" ");
        Some(
            value
                .trim()
                .split(' ')
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        )
    }
}

/// Consistency mode of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Consistency {
    Leader,
    Consistent,
    Stale,
}

impl Consistency {
    /// The `X-Consul-Effective-Consistency` value.
    pub(crate) fn header(self) -> &'static str {
        match self {
            Consistency::Leader => "leader",
            Consistency::Consistent => "consistent",
            Consistency::Stale => "stale",
        }
    }
}

/// The options Consul's `parse` reads for KV and session endpoints.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) dc: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) consistency: Consistency,
    /// `?wait` in nanoseconds, if given.
    pub(crate) wait: Option<i64>,
    /// `?index`; 0 means a plain read.
    pub(crate) index: u64,
}

impl Options {
    /// What a write reads from the query (Consul's `parseDC` and `parseToken`): no consistency
    /// or blocking options, which writes ignore.
    pub(crate) fn write(call: &Call) -> Options {
        Options {
            dc: call
                .query
                .get("dc")
                .filter(|d| !d.is_empty())
                .map(str::to_string),
            token: call.token(),
            consistency: Consistency::Leader,
            wait: None,
            index: 0,
        }
    }
}

/// Go's `strconv.ParseUint(text, 10, 64)` with its error text.
pub(crate) fn parse_uint(text: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "strconv.ParseUint: parsing {text:?}: invalid syntax"
        ));
    }
    text.parse()
        .map_err(|_| format!("strconv.ParseUint: parsing {text:?}: value out of range"))
}

/// Reads dc, token, consistency and `?wait`/`?index`, with Consul's 400s.
pub(crate) fn parse_options(call: &Call) -> Result<Options, Failure> {
    let query = &call.query;
    let dc = query
        .get("dc")
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let mut stale = query.has("stale");
    let consistent = query.has("consistent");
    if let Some(max_stale) = query.get("max_stale").filter(|v| !v.is_empty()) {
        let value = duration::parse(max_stale)
            .map_err(|_| Failure::bad_request(format!("Invalid max_stale value {max_stale:?}")))?;
        if value > 0 {
            stale = true;
        }
    }
    if stale && consistent {
        return Err(Failure::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    let consistency = if consistent {
        Consistency::Consistent
    } else if stale {
        Consistency::Stale
    } else {
        Consistency::Leader
    };
    let mut wait = None;
    if let Some(text) = query.get("wait").filter(|v| !v.is_empty()) {
        wait = Some(duration::parse(text).map_err(|_| Failure::bad_request("Invalid wait time"))?);
    }
    let mut index = 0;
    if let Some(text) = query.get("index").filter(|v| !v.is_empty()) {
        index = parse_uint(text).map_err(|_| Failure::bad_request("Invalid index"))?;
    }
    Ok(Options {
        dc,
        token: call.token(),
        consistency,
        wait,
        index,
    })
}

/// Consul CE refuses namespaces and partitions, even `default`, before any ACL check.
pub(crate) fn refuse_enterprise(call: &Call) -> Result<(), Failure> {
    let refusals = [
        ("X-Consul-Namespace", "ns", "Namespaces"),
        ("X-Consul-Partition", "partition", "Partitions"),
    ];
    for (header_name, param, feature) in refusals {
        if call.header(header_name).is_some_and(|v| !v.is_empty()) {
            return Err(Failure::bad_request(format!(
                "Invalid header: \"{header_name}\" - {feature} are a Consul Enterprise feature"
            )));
        }
        if call.query.get(param).is_some_and(|v| !v.is_empty()) {
            return Err(Failure::bad_request(format!(
                "Invalid query parameter: \"{param}\" - {feature} are a Consul Enterprise feature"
            )));
        }
    }
    Ok(())
}

/// The ACL check alone: with a configured token, a missing token is denied and a different one
/// is unknown.
fn authorize(shared: &Shared, token: Option<&str>) -> Result<(), Failure> {
    let Some(expected) = &shared.acl_token else {
        return Ok(());
    };
    match token {
        None | Some("") => Err(Failure::new(StatusCode::FORBIDDEN, "Permission denied")),
        Some(t) if t == expected => Ok(()),
        Some(_) => Err(Failure::new(StatusCode::FORBIDDEN, "ACL not found")),
    }
}

/// Resolves a token as Consul's ACL resolver does for endpoints that check each item
/// themselves: `Ok(true)` for the anonymous token (no token while ACLs are on), which may do
/// nothing; `Ok(false)` for a token that may do everything; an unknown token is a 403.
pub(crate) fn resolve_token(shared: &Shared, token: Option<&str>) -> Result<bool, Failure> {
    let Some(expected) = &shared.acl_token else {
        return Ok(false);
    };
    match token {
        None | Some("") => Ok(true),
        Some(t) if t == expected => Ok(false),
        Some(_) => Err(Failure::new(StatusCode::FORBIDDEN, "ACL not found")),
    }
}

/// What Consul checks when it makes its RPC: the datacenter, then the token.
pub(crate) fn rpc_gate(shared: &Shared, options: &Options) -> Result<(), Failure> {
    if options.dc.as_deref().is_some_and(|dc| dc != DATACENTER) {
        return Err(Failure::internal("No path to datacenter"));
    }
    authorize(shared, options.token.as_deref())
}

/// One evaluation of a read: its result, its index and whether it was "not found".
pub(crate) struct Evaluated<T> {
    pub(crate) value: T,
    pub(crate) index: u64,
    pub(crate) not_found: bool,
}

/// The length of a blocking query: `?wait` (default 300s, capped at 600s) plus up to wait/16
/// of jitter.
pub(crate) fn query_time(wait: Option<i64>, random: u64) -> Duration {
    let wait = match wait {
        Some(ns) if ns > 0 => Duration::from_nanos(ns as u64).min(MAX_QUERY_TIME),
        _ => DEFAULT_QUERY_TIME,
    };
    let jitter_span = (wait / JITTER_FRACTION).as_nanos() as u64;
    let jitter = if jitter_span == 0 {
        0
    } else {
        random % jitter_span
    };
    wait + Duration::from_nanos(jitter)
}

/// Runs a read, blocking like Consul's `blockingquery.Query` when `?index` > 0: it answers as
/// soon as the result's index passes the requested one, or at the deadline with the last result.
/// A "not found" result that stays not found keeps blocking even while its index moves.
/// Waiting is driven by the store's change signal, never by polling.
pub(crate) async fn blocking<T>(
    shared: &Shared,
    options: &Options,
    mut evaluate: impl FnMut(&super::state::Store) -> Evaluated<T>,
) -> (T, u64) {
    let run = |evaluate: &mut dyn FnMut(&super::state::Store) -> Evaluated<T>| {
        let mut result = shared.read(evaluate);
        result.index = result.index.max(1);
        result
    };
    let mut min_index = options.index;
    if min_index == 0 {
        let result = run(&mut evaluate);
        return (result.value, result.index);
    }
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    let deadline = tokio::time::Instant::now() + query_time(options.wait, random);
    let mut changes = shared.subscribe();
    let mut was_not_found = false;
    loop {
        changes.borrow_and_update();
        let result = run(&mut evaluate);
        if result.not_found {
            if was_not_found {
                min_index = result.index;
            }
            was_not_found = true;
        }
        if result.index > min_index {
            return (result.value, result.index);
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return (result.value, result.index);
                }
            }
            () = tokio::time::sleep_until(deadline) => return (result.value, result.index),
        }
    }
}

/// Adds the headers Consul's `setMeta` puts on reads.
pub(crate) fn with_meta(
    mut response: Response<Body>,
    index: u64,
    options: &Options,
) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    headers.insert(
        "x-consul-effective-consistency",
        HeaderValue::from_static(options.consistency.header()),
    );
    response
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A 200 JSON answer.
pub(crate) fn json(value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(StatusCode::OK, "application/json", body),
        Err(e) => failure(Failure::internal(format!(
            "encoding the answer failed: {e}"
        ))),
    }
}

/// Raw bytes with the headers Consul sets for `?raw`.
pub(crate) fn raw(body: Vec<u8>) -> Response<Body> {
    let mut response = response(StatusCode::OK, "text/plain", body);
    let headers = response.headers_mut();
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox"),
    );
    response
}

/// An empty answer with a status (a missing key's 404).
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn failure(failure: Failure) -> Response<Body> {
    response(failure.status, "text/plain; charset=utf-8", failure.message)
}

/// Path and query for the log, with any `token` parameter's value replaced.
fn redacted(uri: &hyper::Uri) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|part| {
            let name = part.split_once('=').map_or(part, |(k, _)| k);
            if percent_decode(name, true) == "token" {
                format!("{name}=REDACTED")
            } else {
                part.to_string()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// The hyper service: reads the body, routes, adds the headers every answer carries, logs.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let logged = shared.verbose.then(|| redacted(&parts.uri));
    let path = percent_decode(parts.uri.path(), false);
    if !path.starts_with("/_devserver/") {
        shared.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut response = match test_fault(&shared, &path).await {
        Some(faulted) => faulted,
        None => {
            answer(
                &shared,
                parts.method.clone(),
                path,
                &parts.uri,
                parts.headers,
                body,
            )
            .await
        }
    };
    if let Some(faults) = &shared.faults
        && response.status().is_success()
        && response.headers().contains_key("x-consul-index")
        && faults.take_backwards_index()
    {
        response
            .headers_mut()
            .insert("x-consul-index", HeaderValue::from(faults::BACKWARDS_INDEX));
    }
    let policy = if shared.acl_token.is_some() {
        "deny"
    } else {
        "allow"
    };
    response.headers_mut().insert(
        "x-consul-default-acl-policy",
        HeaderValue::from_static(policy),
    );
    if let Some(target) = logged {
        eprintln!(
            "consullock dev-server: {} {target} {} {:?}",
            parts.method,
            response.status().as_u16(),
            started.elapsed()
        );
    }
    Ok(response)
}

/// Reads the body and routes the request.
async fn answer(
    shared: &Arc<Shared>,
    method: Method,
    path: String,
    uri: &hyper::Uri,
    headers: HeaderMap,
    body: Incoming,
) -> Response<Body> {
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => {
            let call = Call {
                method,
                path,
                query: Query::parse(uri.query().unwrap_or("")),
                headers,
                body: collected.to_bytes(),
            };
            route(shared, &call).await.unwrap_or_else(failure)
        }
        Err(e) => failure(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body could not be read: {e}"),
        )),
    }
}

/// The test-only fault that replaces this request's answer, after the injected delay (see
/// [`faults`]). `/_devserver/*` is never faulted, so tests can always turn faults off.
async fn test_fault(shared: &Shared, path: &str) -> Option<Response<Body>> {
    let faults = shared.faults.as_ref()?;
    if !faults.applies_to(path) {
        return None;
    }
    if let Some(delay) = faults.delay() {
        tokio::time::sleep(delay).await;
    }
    let (status, message) = faults.failure(Instant::now())?;
    Some(failure(Failure::new(status, message)))
}

/// Accepts only `allowed`, else 405 with Consul's text.
pub(crate) fn require_method(call: &Call, allowed: &[Method]) -> Result<(), Failure> {
    if allowed.contains(&call.method) {
        return Ok(());
    }
    Err(Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} not allowed", call.method),
    ))
}

/// Dispatches on the path.
async fn route(shared: &Arc<Shared>, call: &Call) -> Outcome {
    let path = call.path.as_str();
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        return kv::endpoint(shared, call, key).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        return session::endpoint(shared, call, rest).await;
    }
    if path == "/v1/txn" {
        return txn::endpoint(shared, call);
    }
    match path {
        "/v1/status/leader" => {
            require_method(call, &[Method::GET])?;
            Ok(json(&LEADER_ADDRESS))
        }
        "/v1/status/peers" => {
            require_method(call, &[Method::GET])?;
            Ok(json(&[LEADER_ADDRESS]))
        }
        "/v1/agent/self" => {
            require_method(call, &[Method::GET])?;
            authorize(shared, call.token().as_deref())?;
            Ok(json(&agent_self(shared)))
        }
        "/_devserver/stats" => {
            require_method(call, &[Method::GET])?;
            let (sessions, keys) = shared.read(|s| (s.session_count(), s.key_count()));
            Ok(json(&serde_json::json!({
                "requests": shared.requests.load(Ordering::Relaxed),
                "sessions": sessions,
                "keys": keys,
            })))
        }
        "/_devserver/faults" if shared.faults.is_some() => fault_control(shared, call),
        _ => Err(Failure::new(StatusCode::NOT_FOUND, "404 page not found")),
    }
}

/// `/_devserver/faults`: GET reports, PUT sets, DELETE clears (see [`faults`]).
fn fault_control(shared: &Shared, call: &Call) -> Outcome {
    require_method(call, &[Method::GET, Method::PUT, Method::DELETE])?;
    let Some(faults) = &shared.faults else {
        return Err(Failure::new(StatusCode::NOT_FOUND, "404 page not found"));
    };
    let now = Instant::now();
    if call.method == Method::PUT {
        let request: faults::Request = serde_json::from_slice(&call.body)
            .map_err(|e| Failure::bad_request(format!("Invalid fault request: {e}")))?;
        faults.set(&request, now);
    } else if call.method == Method::DELETE {
        faults.clear();
    }
    Ok(json(&faults.report(now)))
}

/// `/v1/agent/self` as a Consul dev agent answers it (`agent/agent_endpoint.go`, `AgentSelf`):
/// `Config`, `Coord`, `Member`, `Stats` and `Meta`. `Stats` has Consul's shape, a map of maps of
/// strings: `consul` holds exactly what `Server.Stats` gives (`agent/consul/server.go`; a server
/// has no `known_servers`, which only a client agent reports), `raft`, `serf_lan` and `runtime`
/// the fields clients read, and `agent`/`build` what `Agent.Stats` adds. `Meta` names the
/// consullock dev server, so a person reading the answer is not misled by `Config.Version`.
fn agent_self(shared: &Shared) -> serde_json::Value {
    let node = shared.node.as_str();
    let index = shared.read(super::state::Store::index).to_string();
    let acl = if shared.acl_token.is_some() {
        "enabled"
    } else {
        "disabled"
    };
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    serde_json::json!({
        "Config": {
            "Datacenter": DATACENTER,
            "PrimaryDatacenter": DATACENTER,
            "NodeName": node,
            "NodeID": shared.node_id,
            "Revision": "",
            "Server": true,
            "Version": super::CONSUL_VERSION,
            "BuildDate": "1970-01-01T00:00:01Z",
        },
        "DebugConfig": {},
        "Coord": {
            "Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "Error": 1.5,
            "Adjustment": 0.0,
            "Height": 1e-05,
        },
        "Member": {
            "Name": node,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Tags": {
                "acls": if shared.acl_token.is_some() { "1" } else { "0" },
                "bootstrap": "1",
                "build": format!("{}:", super::CONSUL_VERSION),
                "dc": DATACENTER,
                "id": shared.node_id,
                "port": "8300",
                "raft_vsn": "3",
                "role": "consul",
                "segment": "",
                "vsn": "2",
                "vsn_max": "3",
                "vsn_min": "2",
            },
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        },
        "Stats": {
            "agent": {
                "check_monitors": "0",
                "check_ttls": "0",
                "checks": "0",
                "services": "0",
            },
            "build": {
                "prerelease": "",
                "revision": "",
                "version": super::CONSUL_VERSION,
                "version_metadata": "",
            },
            "consul": {
                "acl": acl,
                "bootstrap": "true",
                "known_datacenters": "1",
                "leader": "true",
                "leader_addr": LEADER_ADDRESS,
                "server": "true",
            },
            "raft": {
                "applied_index": index,
                "commit_index": index,
                "fsm_pending": "0",
                "last_contact": "0",
                "last_log_index": index,
                "last_log_term": "2",
                "last_snapshot_index": "0",
                "last_snapshot_term": "0",
                "num_peers": "0",
                "protocol_version": "3",
                "protocol_version_max": "3",
                "protocol_version_min": "0",
                "state": "Leader",
                "term": "2",
            },
            "runtime": {
                "arch": std::env::consts::ARCH,
                "cpu_count": cpus,
                "goroutines": "0",
                "max_procs": cpus,
                "os": std::env::consts::OS,
                "version": "consullock-devserver",
            },
            "serf_lan": {
                "encrypted": "false",
                "failed": "0",
                "left": "0",
                "members": "1",
            },
        },
        "Meta": {
            "consul-network-segment": "",
            "consul-version": super::CONSUL_VERSION,
            "consullock-dev-server": env!("CARGO_PKG_VERSION"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_and_encoding() {
        let q = Query::parse("recurse&b=x+y&a=%2F&a=2");
        assert!(q.has("recurse"));
        assert_eq!(q.get("recurse"), Some(""));
        assert_eq!(q.get("b"), Some("x y"));
        assert_eq!(q.get("a"), Some("/"));
        assert_eq!(q.encode(), "a=%2F&a=2&b=x+y&recurse=");
    }

    #[test]
    fn query_time_defaults_caps_and_jitter() {
        assert_eq!(query_time(None, 0), DEFAULT_QUERY_TIME);
        assert_eq!(query_time(Some(0), 0), DEFAULT_QUERY_TIME);
        assert_eq!(query_time(Some(-1), 0), DEFAULT_QUERY_TIME);
        let hour = 3_600 * 1_000_000_000;
        assert_eq!(query_time(Some(hour), 0), MAX_QUERY_TIME);
        let max = query_time(Some(hour), u64::MAX);
        assert!(max < MAX_QUERY_TIME + MAX_QUERY_TIME / 16);
        let sixteen = 16_000_000_000;
        assert!(query_time(Some(sixteen), 999_999_999) < Duration::from_secs(17));
    }

    #[test]
    fn redacts_tokens() {
        let uri: hyper::Uri = "/v1/kv/a?token=secret&recurse".parse().unwrap();
        assert_eq!(redacted(&uri), "/v1/kv/a?token=REDACTED&recurse");
    }

    #[test]
    fn go_parse_uint() {
        assert_eq!(parse_uint("42"), Ok(42));
        assert!(parse_uint("+1").is_err());
        assert_eq!(
            parse_uint("abc").unwrap_err(),
            "strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
        assert!(
            parse_uint("99999999999999999999")
                .unwrap_err()
                .ends_with("value out of range")
        );
    }
}
