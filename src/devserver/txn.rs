//! `PUT /v1/txn`: several KV operations applied atomically, as Consul's transaction endpoint
//! does (`agent/txn_endpoint.go` for the HTTP part, `agent/consul/txn_endpoint.go` for the checks
//! made before Raft, `agent/consul/state/txn.go` for the verbs, which live in `state`).
//!
//! In Consul's order: the declared `Content-Length` against `txn_max_req_len` (413), the body
//! decoded strictly (unknown members are a 400, so a `Session` op, which the HTTP API does not
//! offer, is refused), the op count (413 past 128) and each value's size (413), then either a
//! read-only transaction (no write verb: the consistency and blocking options are parsed and
//! Raft is skipped, so no index moves) or a write through "Raft". The token is resolved first:
//! an unknown one is a 403; no token is Consul's anonymous token, which may do nothing, so each
//! op it touches fails the pre-check with `Permission denied` and reads come back filtered. Any
//! failed op makes the answer 409 with every op's error and nothing applied.
//!
//! The dev server has no catalog: `Node`, `Service` and `Check` ops are decoded but only a `get`
//! of this node answers; other gets fail as Consul's do for a missing entity, and catalog writes
//! fail with a text saying the dev server does not support them.

use base64::Engine;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

use super::Shared;
use super::http::{Call, Failure, Options, Outcome, parse_options, require_method, resolve_token};
use super::kv::{EntryJson, entry_json};
use super::state::{Entry, TxnError, TxnKvOp, txn_verb_writes};

/// Consul's `maxTxnOps` (128 since Consul 1.14; 64 before).
pub(crate) const MAX_TXN_OPS: usize = 128;
/// Consul's default `txn_max_req_len` (Raft's suggested maximum entry size).
pub(crate) const TXN_MAX_REQ_LEN: u64 = 512 * 1024;
/// Consul's default `kv_max_value_size`, also the limit of each value in a transaction.
const KV_MAX_VALUE_SIZE: usize = 512 * 1024;
/// Where Consul's 413 texts send the reader.
const TXN_MAX_REQ_LEN_DOC: &str =
    "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len";

/// The 413 for a declared body over the limit, before anything is read.
pub(crate) fn too_large(length: u64) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({length} bytes) too large, max size: {TXN_MAX_REQ_LEN} bytes. See \
             {TXN_MAX_REQ_LEN_DOC}."
        ),
    )
}

/// The 413 for a body without `Content-Length` that turned out too long while being read.
pub(crate) fn too_long() -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body too large, max size: {TXN_MAX_REQ_LEN} bytes. See {TXN_MAX_REQ_LEN_DOC}."
        ),
    )
}

/// One decoded op.
enum Op {
    Kv(TxnKvOp),
    /// A catalog op: its kind (`Node`, `Service`, `Check`), verb, and the names it refers to.
    Catalog {
        kind: &'static str,
        verb: String,
        node: String,
        id: String,
    },
}

impl Op {
    fn writes(&self) -> bool {
        match self {
            Op::Kv(op) => txn_verb_writes(&op.verb),
            Op::Catalog { verb, .. } => verb != "get",
        }
    }
}

/// A result: a KV entry, or this node for a `Node` get.
enum Outcome1 {
    Kv(Entry),
    Node,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorJson {
    op_index: usize,
    what: String,
}

/// Go's `encoding/json` name for a JSON value's type, for its error texts.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn mismatch(value: &Value, field: &str, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field {field} of type {go_type}",
        kind(value)
    )
}

/// The members of a JSON object matched case-insensitively against `known` (Go's rule), with
/// Go's `DisallowUnknownFields` error for any other.
fn members<'a>(
    object: &'a Map<String, Value>,
    known: &[&'static str],
) -> Result<Vec<(&'static str, &'a Value)>, String> {
    object
        .iter()
        .map(|(name, value)| {
            known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(name))
                .map(|k| (*k, value))
                .ok_or_else(|| format!("json: unknown field {name:?}"))
        })
        .collect()
}

fn string(value: &Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        other => Err(mismatch(other, field, "string")),
    }
}

fn uint(value: &Value, field: &str) -> Result<u64, String> {
    match value {
        Value::Null => Ok(0),
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            format!("json: cannot unmarshal number {n} into Go struct field {field} of type uint64")
        }),
        other => Err(mismatch(other, field, "uint64")),
    }
}

fn decode_kv(value: &Value) -> Result<TxnKvOp, String> {
    let Value::Object(object) = value else {
        return Err(mismatch(value, "TxnOp.KV", "api.KVTxnOp"));
    };
    let known = [
        "Verb",
        "Key",
        "Value",
        "Flags",
        "Index",
        "Session",
        "Namespace",
        "Partition",
    ];
    let mut op = TxnKvOp::default();
    for (name, value) in members(object, &known)? {
        let field = format!("TxnOp.KV.{name}");
        match name {
            "Verb" => op.verb = string(value, &field)?,
            "Key" => op.key = string(value, &field)?,
            "Session" => op.session = string(value, &field)?,
            "Flags" => op.flags = uint(value, &field)?,
            "Index" => op.index = uint(value, &field)?,
            "Value" => {
                op.value = match value {
                    Value::Null => Vec::new(),
                    Value::String(text) => base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|e| format!("illegal base64 data: {e}"))?,
                    other => return Err(mismatch(other, &field, "[]uint8")),
                }
            }
            // Consul CE keeps these empty; a client that sends `default` is not refused here.
            _ => {
                string(value, &field)?;
            }
        }
    }
    Ok(op)
}

/// A catalog op, decoded only as far as the dev server can answer it.
fn decode_catalog(kind_name: &'static str, value: &Value) -> Result<Op, String> {
    let Value::Object(object) = value else {
        return Err(mismatch(value, &format!("TxnOp.{kind_name}"), "object"));
    };
    let field = |name: &str| -> Option<&Value> {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let text = |value: Option<&Value>, name: &str| -> Option<String> {
        value
            .and_then(|v| v.as_object())
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_string)
    };
    let verb = field("Verb")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (node, id) = match kind_name {
        "Node" => (
            text(field("Node"), "Node").unwrap_or_default(),
            String::new(),
        ),
        "Service" => (
            field("Node")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            text(field("Service"), "ID").unwrap_or_default(),
        ),
        _ => (
            text(field("Check"), "Node").unwrap_or_default(),
            text(field("Check"), "CheckID").unwrap_or_default(),
        ),
    };
    Ok(Op::Catalog {
        kind: kind_name,
        verb,
        node,
        id,
    })
}

/// Decodes the body as Go decodes it into `api.TxnOps`: a list of objects with the members
/// `KV`, `Node`, `Service` and `Check` (any case), nothing else. An op with none of them is
/// skipped, as Consul skips it.
fn decode(body: &[u8]) -> Result<Vec<Op>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let items = match value {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type api.TxnOps",
                kind(&other)
            ));
        }
    };
    let mut ops = Vec::new();
    for item in &items {
        let object = match item {
            Value::Object(object) => object,
            Value::Null => continue,
            other => return Err(mismatch(other, "TxnOps", "api.TxnOp")),
        };
        for (name, value) in members(object, &["KV", "Node", "Service", "Check"])? {
            if value.is_null() {
                continue;
            }
            ops.push(match name {
                "KV" => Op::Kv(decode_kv(value)?),
                other => decode_catalog(other, value)?,
            });
            // Consul's conversion takes the first of the members that is set.
            break;
        }
    }
    Ok(ops)
}

/// What a catalog op answers on a server without a catalog besides its own node.
fn catalog(shared: &Shared, kind: &str, verb: &str, node: &str, id: &str) -> Result<(), String> {
    if verb != "get" {
        return Err(format!(
            "{kind} op {verb:?} is not supported by consullock's dev server, which has no catalog"
        ));
    }
    match kind {
        "Node" if node == shared.node => Ok(()),
        "Node" => Err(format!("node {node:?} doesn't exist")),
        "Service" => Err(format!("service {id:?} on node {node:?} doesn't exist")),
        _ => Err(format!("check {id:?} on node {node:?} doesn't exist")),
    }
}

fn node_json(shared: &Shared) -> Value {
    serde_json::json!({
        "ID": shared.node_id,
        "Node": shared.node,
        "Address": "127.0.0.1",
        "Datacenter": super::http::DATACENTER,
        "TaggedAddresses": {"lan": "127.0.0.1", "lan_ipv4": "127.0.0.1", "wan": "127.0.0.1", "wan_ipv4": "127.0.0.1"},
        "Meta": {"consul-network-segment": "", "consul-version": super::CONSUL_VERSION},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

/// Whether a transaction body holds a write verb, so that Consul would commit it through Raft
/// (for `/_devserver/stats`); a body that does not decode applies nothing.
pub(crate) fn writes(body: &[u8]) -> bool {
    decode(body).is_ok_and(|ops| ops.iter().any(Op::writes))
}

/// Handles `/v1/txn`.
pub(crate) fn endpoint(shared: &Shared, call: &Call) -> Outcome {
    require_method(call, &[Method::PUT])?;
    let length = call.content_length();
    if length > TXN_MAX_REQ_LEN {
        return Err(too_large(length));
    }
    let ops = decode(&call.body)
        .map_err(|e| Failure::bad_request(format!("Failed to parse body: {e}")))?;
    if ops.len() > MAX_TXN_OPS {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            ),
        ));
    }
    for op in &ops {
        if let Op::Kv(kv) = op
            && kv.value.len() > KV_MAX_VALUE_SIZE
        {
            return Err(Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Value for key {:?} is too large ({} > {KV_MAX_VALUE_SIZE} bytes)",
                    kv.key,
                    kv.value.len()
                ),
            ));
        }
    }
    let writes = ops.iter().any(Op::writes);
    // A read-only transaction takes every query option (400s as for reads); a write only the
    // datacenter and the token.
    let options = if writes {
        Options::write(call)
    } else {
        parse_options(call)?
    };
    if options
        .dc
        .as_deref()
        .is_some_and(|dc| dc != super::http::DATACENTER)
    {
        return Err(Failure::internal("No path to datacenter"));
    }
    let anonymous = resolve_token(shared, options.token.as_deref())?;
    let denied = |op: &TxnKvOp| -> Option<String> {
        if !anonymous || matches!(op.verb.as_str(), "get" | "get-tree" | "get-or-empty") {
            return None;
        }
        let access = match op.verb.as_str() {
            "check-session" | "check-index" => "read",
            _ => "write",
        };
        let prefix = if op.verb == "delete-tree" {
            " prefix"
        } else {
            ""
        };
        Some(format!(
            "Permission denied: anonymous token lacks permission 'key:{access}' on{prefix} {:?}",
            op.key
        ))
    };
    let kv_ops: Vec<TxnKvOp> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Kv(kv) => Some(kv.clone()),
            Op::Catalog { .. } => None,
        })
        .collect();
    // Positions of the KV ops in the whole list, to report errors at the right OpIndex.
    let positions: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op, Op::Kv(_)))
        .map(|(i, _)| i)
        .collect();
    let relabel = |errors: Vec<TxnError>| -> Vec<TxnError> {
        errors
            .into_iter()
            .map(|(i, what)| (positions.get(i).copied().unwrap_or(i), what))
            .collect()
    };
    let mut catalog_errors: Vec<TxnError> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Catalog {
            kind,
            verb,
            node,
            id,
        } = op
            && let Err(what) = catalog(shared, kind, verb, node, id)
        {
            catalog_errors.push((i, what));
        }
    }
    let applied = shared.write(|store, now| {
        let mut errors = relabel(store.txn_precheck(&kv_ops, now, &denied));
        if !errors.is_empty() || !catalog_errors.is_empty() {
            errors.extend(catalog_errors.iter().cloned());
            errors.sort_by_key(|(i, _)| *i);
            return Err(errors);
        }
        let result = if writes {
            store.txn_write(&kv_ops)
        } else {
            store.txn_read(&kv_ops)
        };
        result.map_err(relabel)
    });
    let mut results: Vec<Outcome1> = Vec::new();
    let mut filtered = false;
    if let Ok(per_op) = &applied {
        let mut per_op = per_op.iter();
        for op in &ops {
            match op {
                // Only a get of this node gets this far.
                Op::Catalog { .. } => results.push(Outcome1::Node),
                Op::Kv(_) => {
                    for entry in per_op.next().into_iter().flatten() {
                        // The anonymous token may read nothing: its results are filtered out.
                        if anonymous {
                            filtered = true;
                        } else {
                            results.push(Outcome1::Kv(entry.clone()));
                        }
                    }
                }
            }
        }
    }
    let results_json: Option<Vec<Value>> = applied.as_ref().ok().map(|_| {
        results
            .iter()
            .map(|r| match r {
                Outcome1::Kv(entry) => {
                    let kv: EntryJson<'_> = entry_json(entry);
                    serde_json::json!({ "KV": kv })
                }
                Outcome1::Node => serde_json::json!({ "Node": node_json(shared) }),
            })
            .collect()
    });
    let errors_json: Option<Vec<ErrorJson>> = applied.as_ref().err().map(|errors| {
        errors
            .iter()
            .map(|(i, what)| ErrorJson {
                op_index: *i,
                what: what.clone(),
            })
            .collect()
    });
    let mut body = serde_json::json!({ "Results": results_json, "Errors": errors_json });
    if !writes {
        // A read-only transaction answers Consul's `TxnReadResponse`, which embeds `QueryMeta`.
        let meta = serde_json::json!({
            "Index": 0,
            "LastContact": 0,
            "KnownLeader": true,
            "ConsistencyLevel": options.consistency.header(),
            "NotModified": false,
            "Backend": 0,
            "ResultsFilteredByACLs": filtered,
        });
        if let (Value::Object(body), Value::Object(meta)) = (&mut body, meta) {
            body.extend(meta);
        }
    }
    let status = if applied.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    let mut response = super::http::json(&body);
    *response.status_mut() = status;
    if !writes {
        let headers = response.headers_mut();
        headers.insert("x-consul-knownleader", "true".parse().expect("header"));
        headers.insert("x-consul-lastcontact", "0".parse().expect("header"));
    }
    Ok(response)
}
