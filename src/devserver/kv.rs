//! `/v1/kv/:key`: reads (single, `?recurse`, `?keys`, `?raw`, blocking), writes (plain, `?cas`,
//! `?acquire`, `?release`, `?flags`) and deletes (`?cas`, `?recurse`), with the agent-side
//! validation Consul does before its RPC: missing key, conflicting flags, number parsing and
//! the 512 KiB value limit.

use base64::Engine;
use hyper::{Method, StatusCode};
use serde::Serialize;

use super::Shared;
use super::http::{
    Call, Evaluated, Failure, KV_MAX_VALUE_SIZE, Outcome, blocking, empty, json, key_for_json,
    kv_too_large, parse_options, parse_uint, raw, refuse_enterprise, require_method, rpc_gate,
    with_meta,
};
use super::state::Entry;
use super::watch::Watch;

/// A KV entry as Consul's `DirEntry` serializes: Value base64 or null, Session omitted empty.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EntryJson<'a> {
    lock_index: u64,
    key: std::borrow::Cow<'a, str>,
    flags: u64,
    value: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    session: &'a str,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn entry_json(entry: &Entry) -> EntryJson<'_> {
    EntryJson {
        lock_index: entry.lock_index,
        key: key_for_json(&entry.key),
        flags: entry.flags,
        value: (!entry.value.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value)),
        session: &entry.session,
        create_index: entry.create_index,
        modify_index: entry.modify_index,
    }
}

/// Routes one `/v1/kv/` request; `key` is the decoded rest of the path.
pub(crate) async fn endpoint(shared: &Shared, call: &Call, key: &str) -> Outcome {
    let options = parse_options(call)?;
    require_method(call, &[Method::GET, Method::PUT, Method::DELETE])?;
    match call.method {
        Method::PUT => put(shared, call, key, &options),
        Method::DELETE => delete(shared, call, key, &options),
        _ if call.query.has("keys") => keys(shared, call, key, &options).await,
        _ => get(shared, call, key, &options).await,
    }
}

async fn get(shared: &Shared, call: &Call, key: &str, options: &super::http::Options) -> Outcome {
    let recurse = call.query.has("recurse");
    if !recurse && key.is_empty() {
        return Err(Failure::bad_request("Missing key name"));
    }
    refuse_enterprise(call)?;
    rpc_gate(shared, options)?;
    if recurse {
        let (entries, index) = blocking(shared, options, Watch::Prefix(key.to_string()), |store| {
            let (index, value) = store.kv_list(key);
            Evaluated {
                value,
                index,
                not_found: false,
            }
        })
        .await;
        if entries.is_empty() {
            return Ok(with_meta(empty(StatusCode::NOT_FOUND), index, options));
        }
        let list: Vec<EntryJson<'_>> = entries.iter().map(entry_json).collect();
        return Ok(with_meta(json(&list), index, options));
    }
    let (entry, index) = blocking(
        shared,
        options,
        Watch::Key(key.to_string()),
        |store| match store.kv_get(key) {
            (_, Some(entry)) => Evaluated {
                index: entry.modify_index,
                value: Some(entry),
                not_found: false,
            },
            (table, None) => Evaluated {
                value: None,
                index: table,
                not_found: true,
            },
        },
    )
    .await;
    let Some(entry) = entry else {
        return Ok(with_meta(empty(StatusCode::NOT_FOUND), index, options));
    };
    if call.query.has("raw") {
        return Ok(with_meta(raw(entry.value), index, options));
    }
    Ok(with_meta(json(&[entry_json(&entry)]), index, options))
}

async fn keys(
    shared: &Shared,
    call: &Call,
    prefix: &str,
    options: &super::http::Options,
) -> Outcome {
    refuse_enterprise(call)?;
    // Consul accepts its historic misspelling too; the right spelling wins when both are sent.
    let separator = call
        .query
        .get("separator")
        .or_else(|| call.query.get("seperator"))
        .unwrap_or("")
        .to_string();
    rpc_gate(shared, options)?;
    let (keys, index) = blocking(
        shared,
        options,
        Watch::Prefix(prefix.to_string()),
        |store| {
            let (index, value) = store.kv_keys(prefix, &separator);
            Evaluated {
                value,
                index,
                not_found: false,
            }
        },
    )
    .await;
    // Nothing under a prefix is a 404, but the root answers an empty list.
    if keys.is_empty() && !prefix.is_empty() {
        return Ok(with_meta(empty(StatusCode::NOT_FOUND), index, options));
    }
    let keys: Vec<_> = keys.iter().map(|k| key_for_json(k)).collect();
    Ok(with_meta(json(&keys), index, options))
}

/// 400 when more than one of `names` is present, with Go's encoding of the whole query.
fn conflicting(call: &Call, names: &[&str]) -> Result<(), Failure> {
    if names.iter().filter(|name| call.query.has(name)).count() > 1 {
        return Err(Failure::bad_request(format!(
            "Conflicting flags: {}\n",
            call.query.encode()
        )));
    }
    Ok(())
}

/// An optional unsigned query parameter; a bad number is a bare parse error, so a 500.
fn uint_param(call: &Call, name: &str) -> Result<Option<u64>, Failure> {
    if !call.query.has(name) {
        return Ok(None);
    }
    parse_uint(call.query.get(name).unwrap_or(""))
        .map(Some)
        .map_err(Failure::internal)
}

enum Write {
    Set,
    Cas(u64),
    Acquire(String),
    Release(String),
}

fn put(shared: &Shared, call: &Call, key: &str, options: &super::http::Options) -> Outcome {
    refuse_enterprise(call)?;
    if key.is_empty() {
        return Err(Failure::bad_request("Missing key name"));
    }
    conflicting(call, &["cas", "acquire", "release"])?;
    let flags = uint_param(call, "flags")?.unwrap_or(0);
    let mut write = Write::Set;
    if let Some(cas) = uint_param(call, "cas")? {
        write = Write::Cas(cas);
    }
    if call.query.has("acquire") {
        write = Write::Acquire(call.query.get("acquire").unwrap_or("").to_string());
    }
    if call.query.has("release") {
        write = Write::Release(call.query.get("release").unwrap_or("").to_string());
    }
    // The declared length was already checked before the body was read (`http::body_limit`);
    // a body sent without one is checked here, as Consul checks what it read.
    let length = call.body.len() as u64;
    if length > KV_MAX_VALUE_SIZE {
        return Err(kv_too_large(length));
    }
    rpc_gate(shared, options)?;
    let value = call.body.to_vec();
    let answer = shared.write(|store, now| match &write {
        Write::Set => {
            store.kv_set(key, value, flags);
            Ok(true)
        }
        Write::Cas(cas) => Ok(store.kv_cas(key, value, flags, *cas)),
        Write::Acquire(session) => store.kv_acquire(key, value, flags, session, now),
        Write::Release(session) => store.kv_release(key, value, flags, session),
    });
    answer.map(|done| json(&done)).map_err(Failure::internal)
}

fn delete(shared: &Shared, call: &Call, key: &str, options: &super::http::Options) -> Outcome {
    refuse_enterprise(call)?;
    conflicting(call, &["recurse", "cas"])?;
    let recurse = call.query.has("recurse");
    if !recurse && key.is_empty() {
        return Err(Failure::bad_request("Missing key name"));
    }
    let cas = uint_param(call, "cas")?;
    rpc_gate(shared, options)?;
    let done = shared.write(|store, _| {
        if recurse {
            store.kv_delete_tree(key);
            true
        } else if let Some(cas) = cas {
            store.kv_delete_cas(key, cas)
        } else {
            store.kv_delete(key);
            true
        }
    });
    Ok(json(&done))
}
