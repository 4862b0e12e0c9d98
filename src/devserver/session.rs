//! `/v1/session/*`: create (with the agent's defaults and Consul's lenient body decoding),
//! renew, destroy, info, list and node.
//!
//! Body decoding follows Go's `encoding/json` as Consul uses it: field names match
//! case-insensitively, unknown fields are ignored, `null` leaves a string as it was and empties a
//! list, and `LockDelay` accepts a duration string or a number of nanoseconds, where anything
//! under 1000 means seconds.

use hyper::{Method, StatusCode, header};
use serde_json::Value;

use super::Shared;
use super::duration;
use super::http::{
    Call, Evaluated, Failure, Outcome, blocking, json, parse_options, refuse_enterprise,
    require_method, rpc_gate, with_meta,
};
use super::state::{NewSession, SERF_HEALTH, ServiceCheck, Session};
use super::watch::Watch;

/// Consul's `lockDelayMinThreshold`: smaller LockDelay values are taken as seconds.
const LOCK_DELAY_MIN_THRESHOLD: i64 = 1000;
const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Routes one `/v1/session/` request; `rest` is the path after that prefix.
pub(crate) async fn endpoint(shared: &Shared, call: &Call, rest: &str) -> Outcome {
    if rest == "create" {
        require_method(call, &[Method::PUT])?;
        return create(shared, call);
    }
    if rest == "list" {
        require_method(call, &[Method::GET])?;
        return list(shared, call, None).await;
    }
    if let Some(id) = rest.strip_prefix("renew/") {
        require_method(call, &[Method::PUT])?;
        return renew(shared, call, id);
    }
    if let Some(id) = rest.strip_prefix("destroy/") {
        require_method(call, &[Method::PUT])?;
        return destroy(shared, call, id);
    }
    if let Some(id) = rest.strip_prefix("info/") {
        require_method(call, &[Method::GET])?;
        return info(shared, call, id).await;
    }
    if let Some(node) = rest.strip_prefix("node/") {
        require_method(call, &[Method::GET])?;
        if node.is_empty() {
            return Err(Failure::bad_request("Missing node name"));
        }
        return list(shared, call, Some(node)).await;
    }
    Err(Failure::new(StatusCode::NOT_FOUND, "404 page not found"))
}

fn create(shared: &Shared, call: &Call) -> Outcome {
    let options = parse_options(call)?;
    refuse_enterprise(call)?;
    let mut request = NewSession::defaults(&shared.node);
    // Like Consul, only a declared non-zero Content-Length makes the body count.
    let declared = call
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if declared > 0 {
        decode(&call.body, &mut request)
            .map_err(|e| Failure::bad_request(format!("Request decode failed: {e}")))?;
    }
    fix_up_empty_checks(&mut request);
    rpc_gate(shared, &options)?;
    let created = shared.write(|store, now| store.create_session(request, now));
    let session = created.map_err(Failure::internal)?;
    Ok(json(&serde_json::json!({ "ID": session.id })))
}

/// Consul's backward-compatible handling of the deprecated `Checks` field: an empty `Checks`
/// removes the default node check; a `Checks` of just serfHealth defers to `NodeChecks`; an
/// empty `NodeChecks` wins over `Checks`.
fn fix_up_empty_checks(request: &mut NewSession) {
    let only_serf = request.checks.len() == 1 && request.checks[0] == SERF_HEALTH;
    if request.checks.is_empty() {
        request.node_checks = Some(Vec::new());
    } else if only_serf || request.node_checks.as_ref().is_none_or(Vec::is_empty) {
        request.checks.clear();
    }
}

/// The JSON type name Go uses in its unmarshal errors.
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
        "json: cannot unmarshal {} into Go struct field Session.{field} of type {go_type}",
        kind(value)
    )
}

fn string_field(target: &mut String, value: &Value, field: &str) -> Result<(), String> {
    match value {
        Value::String(s) => *target = s.clone(),
        Value::Null => {}
        other => return Err(mismatch(other, field, "string")),
    }
    Ok(())
}

fn string_list(value: &Value, field: &str) -> Result<Option<Vec<String>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(mismatch(other, field, "string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(mismatch(other, field, "[]string")),
    }
}

fn service_checks(value: &Value) -> Result<Option<Vec<ServiceCheck>>, String> {
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        other => return Err(mismatch(other, "ServiceChecks", "[]structs.ServiceCheck")),
    };
    let mut checks = Vec::new();
    for item in items {
        let Value::Object(fields) = item else {
            return Err(mismatch(item, "ServiceChecks", "structs.ServiceCheck"));
        };
        let mut check = ServiceCheck {
            id: String::new(),
            namespace: String::new(),
        };
        for (name, value) in fields {
            match name.to_ascii_lowercase().as_str() {
                "id" => string_field(&mut check.id, value, "ServiceChecks.ID")?,
                "namespace" => {
                    string_field(&mut check.namespace, value, "ServiceChecks.Namespace")?
                }
                _ => {}
            }
        }
        checks.push(check);
    }
    Ok(Some(checks))
}

/// Consul's `Session.UnmarshalJSON` rule for `LockDelay`. `None` keeps the default.
fn lock_delay(value: &Value) -> Result<Option<i64>, String> {
    let nanos = match value {
        Value::Null => return Ok(None),
        Value::String(text) => duration::parse(text)?,
        // Go decodes numbers as float64 and converts with truncation.
        Value::Number(n) => n.as_f64().map_or(0, |f| f as i64),
        // Any other JSON type falls through Go's type switch as a zero duration.
        _ => 0,
    };
    if nanos < LOCK_DELAY_MIN_THRESHOLD {
        return Ok(Some(nanos.wrapping_mul(NANOS_PER_SECOND)));
    }
    Ok(Some(nanos))
}

/// Decodes a session create body over the defaults.
fn decode(body: &[u8], request: &mut NewSession) -> Result<(), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let fields = match value {
        Value::Object(fields) => fields,
        Value::Null => return Ok(()),
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type structs.Session",
                kind(&other)
            ));
        }
    };
    for (name, value) in &fields {
        match name.to_ascii_lowercase().as_str() {
            "name" => string_field(&mut request.name, value, "Name")?,
            "node" => string_field(&mut request.node, value, "Node")?,
            "behavior" => string_field(&mut request.behavior, value, "Behavior")?,
            "ttl" => string_field(&mut request.ttl, value, "TTL")?,
            "lockdelay" => {
                if let Some(nanos) = lock_delay(value)? {
                    request.lock_delay_ns = nanos;
                }
            }
            "nodechecks" => request.node_checks = string_list(value, "NodeChecks")?,
            "checks" => request.checks = string_list(value, "Checks")?.unwrap_or_default(),
            "servicechecks" => request.service_checks = service_checks(value)?,
            _ => {}
        }
    }
    Ok(())
}

fn renew(shared: &Shared, call: &Call, id: &str) -> Outcome {
    let options = parse_options(call)?;
    refuse_enterprise(call)?;
    if id.is_empty() {
        return Err(Failure::bad_request("Missing session"));
    }
    rpc_gate(shared, &options)?;
    match shared.write(|store, now| store.renew_session(id, now)) {
        Ok(Some(session)) => Ok(json(&[session])),
        Ok(None) => Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )),
        Err(e) => Err(Failure::internal(e)),
    }
}

fn destroy(shared: &Shared, call: &Call, id: &str) -> Outcome {
    let options = parse_options(call)?;
    refuse_enterprise(call)?;
    if id.is_empty() {
        return Err(Failure::bad_request("Missing session"));
    }
    rpc_gate(shared, &options)?;
    shared
        .write(|store, now| store.destroy_session(id, now))
        .map_err(Failure::internal)?;
    Ok(json(&true))
}

async fn info(shared: &Shared, call: &Call, id: &str) -> Outcome {
    let options = parse_options(call)?;
    refuse_enterprise(call)?;
    if id.is_empty() {
        return Err(Failure::bad_request("Missing session"));
    }
    rpc_gate(shared, &options)?;
    // A malformed id fails the lookup itself; check once before blocking on it.
    shared
        .read(|store| store.session(id).map(|_| ()))
        .map_err(Failure::internal)?;
    let (session, index) = blocking(shared, &options, Watch::Sessions, |store| {
        let (index, session) = store.session(id).unwrap_or((0, None));
        let not_found = session.is_none();
        Evaluated {
            value: session,
            index,
            not_found,
        }
    })
    .await;
    let list: Vec<Session> = session.into_iter().collect();
    Ok(with_meta(json(&list), index, &options))
}

async fn list(shared: &Shared, call: &Call, node: Option<&str>) -> Outcome {
    let options = parse_options(call)?;
    refuse_enterprise(call)?;
    rpc_gate(shared, &options)?;
    let (sessions, index) = blocking(shared, &options, Watch::Sessions, |store| {
        let (index, value) = match node {
            Some(node) => store.node_sessions(node),
            None => store.sessions(),
        };
        Evaluated {
            value,
            index,
            not_found: false,
        }
    })
    .await;
    Ok(with_meta(json(&sessions), index, &options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(body: &str) -> Result<NewSession, String> {
        let mut request = NewSession::defaults("n");
        decode(body.as_bytes(), &mut request)?;
        fix_up_empty_checks(&mut request);
        Ok(request)
    }

    #[test]
    fn lock_delay_forms() {
        let s = NANOS_PER_SECOND;
        assert_eq!(
            decoded(r#"{"LockDelay":"15s"}"#).unwrap().lock_delay_ns,
            15 * s
        );
        assert_eq!(
            decoded(r#"{"LockDelay":15}"#).unwrap().lock_delay_ns,
            15 * s
        );
        assert_eq!(
            decoded(r#"{"LockDelay":"20ns"}"#).unwrap().lock_delay_ns,
            20 * s
        );
        assert_eq!(
            decoded(r#"{"LockDelay":1500000000}"#)
                .unwrap()
                .lock_delay_ns,
            1_500_000_000
        );
        assert_eq!(
            decoded(r#"{"LockDelay":-5}"#).unwrap().lock_delay_ns,
            -5 * s
        );
        assert_eq!(
            decoded(r#"{"lockdelay":"2s"}"#).unwrap().lock_delay_ns,
            2 * s
        );
        assert_eq!(
            decoded(r#"{"LockDelay":null}"#).unwrap().lock_delay_ns,
            15 * s
        );
        assert_eq!(
            decoded(r#"{"LockDelay":"20"}"#).unwrap_err(),
            r#"time: missing unit in duration "20""#
        );
    }

    #[test]
    fn empty_checks_remove_the_default() {
        let r = decoded(r#"{"Checks":[]}"#).unwrap();
        assert_eq!((r.node_checks, r.checks.len()), (Some(vec![]), 0));
        let r = decoded(r#"{"NodeChecks":[]}"#).unwrap();
        assert_eq!((r.node_checks, r.checks.len()), (Some(vec![]), 0));
        let r = decoded("{}").unwrap();
        assert_eq!(
            (r.node_checks, r.checks.len()),
            (Some(vec![SERF_HEALTH.to_string()]), 0)
        );
    }

    #[test]
    fn type_errors() {
        assert!(
            decoded(r#"{"TTL":30}"#)
                .unwrap_err()
                .contains("Session.TTL of type string")
        );
        assert!(decoded("[1]").is_err());
        assert!(decoded("{").is_err());
    }
}
