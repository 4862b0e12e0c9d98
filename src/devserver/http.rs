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
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::watch::Watch;
use super::{Shared, duration, faults, router, stats, txn};

/// Response body type of every answer.
pub(crate) type Body = Full<Bytes>;

/// The only datacenter this server is.
pub(crate) const DATACENTER: &str = "dc1";
/// What `/v1/status/leader` and `/v1/status/peers` report, like a dev agent's server RPC address.
pub(crate) const LEADER_ADDRESS: &str = "127.0.0.1:8300";
/// Consul's `default_query_time`: a blocking query without `?wait` lasts this long.
pub(crate) const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);
/// Consul's `max_query_time`: longer `?wait` values are capped to this.
pub(crate) const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
/// Consul's `JitterFraction`: up to wait/16 is added to every blocking query.
const JITTER_FRACTION: u32 = 16;
/// Consul's default `kv_max_value_size` (Raft's suggested maximum entry size): the largest KV
/// value, and the largest body the dev server reads for any endpoint.
pub(crate) const KV_MAX_VALUE_SIZE: u64 = 512 * 1024;
/// Where Consul's KV 413 text sends the reader.
const KV_MAX_VALUE_SIZE_DOC: &str =
    "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size";

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
pub(crate) fn authorize(shared: &Shared, token: Option<&str>) -> Result<(), Failure> {
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
/// soon as the result's index passes the requested one, or at the deadline with the current
/// result. A "not found" result that stays not found keeps blocking even while its index moves.
/// While waiting it holds no result, only its registration for `watch`: it is woken only by a
/// write to what it watches (see `watch`), never by polling.
pub(crate) async fn blocking<T>(
    shared: &Shared,
    options: &Options,
    watch: Watch,
    mut evaluate: impl FnMut(&super::state::Store) -> Evaluated<T>,
) -> (T, u64) {
    let mut run = || {
        let mut result = shared.read(&mut evaluate);
        result.index = result.index.max(1);
        result
    };
    let mut min_index = options.index;
    // A test fault: a server (or proxy) that answers blocking reads at once.
    let no_blocking = shared
        .faults
        .as_ref()
        .is_some_and(|f| f.answer_at_once(std::time::Instant::now()));
    if min_index == 0 || no_blocking {
        let result = run();
        return (result.value, result.index);
    }
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    let deadline = tokio::time::Instant::now() + query_time(options.wait, random);
    let registration = shared.watchers.register(watch);
    let mut was_not_found = false;
    loop {
        let result = run();
        if result.not_found {
            if was_not_found {
                min_index = result.index;
            }
            was_not_found = true;
        }
        if result.index > min_index {
            return (result.value, result.index);
        }
        drop(result);
        tokio::select! {
            () = registration.changed() => {}
            () = tokio::time::sleep_until(deadline) => {
                let result = run();
                return (result.value, result.index);
            }
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

/// The hyper service: checks the path as Go's HTTP server and mux do, reads the body, routes,
/// adds the headers every answer carries, logs.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let logged = shared.verbose.then(|| redacted(&parts.uri));
    let path = decode_path(parts.uri.path());
    // Counted now, so a blocking query is seen as soon as it arrives; a request refused before
    // it reaches `answer` is counted as `other` when the tally drops at the end.
    let tally = shared.stats.arrived(&path);
    // Taken now: `path` moves into the answer, and the delay comes after it.
    let answer_delay = shared
        .faults
        .as_ref()
        .filter(|f| f.applies_to(&path))
        .and_then(faults::Faults::answer_delay);
    let mut response = if let Some(refused) = check_path(&parts.method, &path, parts.uri.query()) {
        refused
    } else {
        match test_fault(&shared, &path).await {
            Some(faulted) => faulted,
            None => {
                answer(
                    &shared,
                    tally,
                    parts.method.clone(),
                    path,
                    &parts.uri,
                    parts.headers,
                    body,
                )
                .await
            }
        }
    };
    if let Some(delay) = answer_delay {
        // The request is done (a session created, a key written); only its answer is late, as
        // from a server whose answer is stuck on the network.
        tokio::time::sleep(delay).await;
    }
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
        tracing::info!(
            "{} {target} {} {:?}",
            parts.method,
            response.status().as_u16(),
            started.elapsed()
        );
    }
    Ok(response)
}

/// First byte of the private-use block that stands for the bytes of a path that are not UTF-8.
const INVALID_BYTE_BASE: u32 = 0xF700;

/// Percent-decodes a request path. Go keeps a path as bytes, so keys that differ only in bytes
/// that are not UTF-8 (`%FF`, `%FE`) are different keys in Consul; here each such byte becomes
/// the private-use character U+F700+byte, so they stay different (see [`key_for_json`]).
pub(crate) fn decode_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = raw.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let mut out = String::with_capacity(decoded.len());
    for chunk in decoded.utf8_chunks() {
        out.push_str(chunk.valid());
        for &b in chunk.invalid() {
            out.push(char::from_u32(INVALID_BYTE_BASE + u32::from(b)).unwrap_or('\u{FFFD}'));
        }
    }
    out
}

fn stands_for_invalid_byte(c: char) -> bool {
    (INVALID_BYTE_BASE + 0x80..=INVALID_BYTE_BASE + 0xFF).contains(&(c as u32))
}

/// A key as Consul's JSON shows it: Go's encoder writes each byte that is not UTF-8 as U+FFFD.
pub(crate) fn key_for_json(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.chars().any(stands_for_invalid_byte) {
        return std::borrow::Cow::Borrowed(key);
    }
    let shown = key
        .chars()
        .map(|c| {
            if stands_for_invalid_byte(c) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    std::borrow::Cow::Owned(shown)
}

/// Go's `unicode.IsPrint` as far as paths need it: no control, format, separator (other than
/// the ASCII space) or private-use characters. A byte that is not UTF-8 reads as U+FFFD in Go,
/// which is printable.
fn printable(c: char) -> bool {
    if stands_for_invalid_byte(c) || c == ' ' {
        return true;
    }
    let format = matches!(
        c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E
            | 0x2060..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0xE0001..=0xE007F
    );
    let private = matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF);
    !(c.is_control() || c.is_whitespace() || format || private)
}

/// Go's `cleanPath` (`net/http`): `path.Clean`, keeping a trailing slash.
fn clean_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut clean = format!("/{}", segments.join("/"));
    if path.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// What Consul's HTTP stack answers before any endpoint sees the request: a path with a
/// non-printable character is a 400 with no body (`cleanhttp.PrintablePathCheckHandler`,
/// `agent/http.go`); a path that is not clean (`..`, `.`, `//`) is a 301 to the cleaned path,
/// query kept (Go's `ServeMux`), so `/v1/kv/../session/create` never reaches the KV endpoint.
fn check_path(method: &Method, path: &str, query: Option<&str>) -> Option<Response<Body>> {
    if !path.chars().all(printable) {
        return Some(empty(StatusCode::BAD_REQUEST));
    }
    let clean = clean_path(path);
    if clean == path || *method == Method::CONNECT {
        return None;
    }
    let mut location = escape_path(&clean);
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    // `http.Redirect`: a small HTML body for GET only.
    let mut response = if *method == Method::GET {
        response(
            StatusCode::MOVED_PERMANENTLY,
            "text/html; charset=utf-8",
            format!("<a href=\"{location}\">Moved Permanently</a>.\n\n"),
        )
    } else {
        empty(StatusCode::MOVED_PERMANENTLY)
    };
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Some(response)
}

/// Go's `url.URL.EscapedPath` for a path without a raw form: unreserved characters, `/` and the
/// sub-delimiters stay, everything else is percent-encoded.
fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if stands_for_invalid_byte(c) {
            out.push_str(&format!("%{:02X}", c as u32 - INVALID_BYTE_BASE));
            continue;
        }
        let mut buffer = [0; 4];
        for &b in c.encode_utf8(&mut buffer).as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// The 413 of a KV value over `kv_max_value_size`, Consul's text (`agent/kvs_endpoint.go`).
pub(crate) fn kv_too_large(length: u64) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({length} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. See \
             {KV_MAX_VALUE_SIZE_DOC}."
        ),
    )
}

/// The most a request may carry, and what to answer when it carries more: Consul's KV and
/// transaction limits (512 KiB each by default) with their texts; other endpoints take tiny
/// bodies in Consul, and the dev server reads no more than the KV limit for them either.
fn body_limit(method: &Method, path: &str) -> (u64, fn(Option<u64>) -> Failure) {
    if path == "/v1/txn" {
        return (txn::TXN_MAX_REQ_LEN, |declared| match declared {
            Some(length) => txn::too_large(length),
            None => txn::too_long(),
        });
    }
    if *method == Method::PUT && path.starts_with("/v1/kv/") {
        return (KV_MAX_VALUE_SIZE, |declared| {
            kv_too_large(declared.unwrap_or(KV_MAX_VALUE_SIZE + 1))
        });
    }
    (KV_MAX_VALUE_SIZE, |declared| {
        let what = declared.map_or_else(String::new, |length| format!("({length} bytes)"));
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body{what} too large, max size: {KV_MAX_VALUE_SIZE} bytes."),
        )
    })
}

/// Reads the body (refused on its declared length before reading, and read within
/// [`Options::body_read_timeout`](super::Options::body_read_timeout)), counts the request by
/// kind, and routes it.
async fn answer(
    shared: &Arc<Shared>,
    tally: stats::Tally<'_>,
    method: Method,
    path: String,
    uri: &hyper::Uri,
    headers: HeaderMap,
    body: Incoming,
) -> Response<Body> {
    let (limit, too_large) = body_limit(&method, &path);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = declared
        && length > limit
    {
        return failure(too_large(Some(length)));
    }
    let reading = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect();
    let collected = match tokio::time::timeout(shared.options.body_read_timeout, reading).await {
        Ok(Ok(collected)) => collected,
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return failure(too_large(None));
        }
        Ok(Err(e)) => {
            return failure(Failure::bad_request(format!(
                "Request body could not be read: {e}"
            )));
        }
        Err(_) => {
            return failure(Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "Request body not received within {:?}",
                    shared.options.body_read_timeout
                ),
            ));
        }
    };
    let call = Call {
        method,
        path,
        query: Query::parse(uri.query().unwrap_or("")),
        headers,
        body: collected.to_bytes(),
    };
    tally.classify(&call);
    router::route(shared, &call).await.unwrap_or_else(failure)
}

/// The test-only fault that replaces this request's answer, after the injected delay (see
/// [`faults`]). `/_devserver/*` is never faulted, so tests can always turn faults off.
async fn test_fault(shared: &Shared, path: &str) -> Option<Response<Body>> {
    let faults = shared.faults.as_ref()?;
    if path == "/v1/txn" && faults.no_txn() {
        // As a Consul before transactions (or a proxy that blocks them) answers.
        return Some(failure(Failure::new(
            StatusCode::NOT_FOUND,
            "404 page not found",
        )));
    }
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
