//! Conformance cases: Consul's HTTP behaviour as `consul-api-notes.md` describes it, checked
//! with raw HTTP requests, never through project code.
//!
//! Each case is a plain `fn(&TestConsul)` listed in [`CASES`]. A `#[test]` per case runs it
//! against [`TestConsul::start`] (a private dev server, or the Consul named by
//! `CONSULLOCK_TEST_CONSUL_ADDR`), and `tests/container.rs` runs the whole table against a real
//! Consul in a container. Cases use unique keys and destroy their sessions, so they can share a
//! real Consul. Cases named `devserver_*` need dev-server-only features (a configured ACL token,
//! `/_devserver/stats`, the start-up line) and start their own dev server explicitly.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::{Response, TestConsul, wait_until};

/// Longest a TTL expiry may take: 2×TTL (20 s for the minimum TTL of 10 s) plus slack.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(40);
/// Ordinary deadline for something that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);
/// Read timeout for blocking queries: their `?wait` plus jitter plus slack.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(60);

/// A session that is destroyed when the case ends, so a shared Consul is left clean.
struct Session<'a> {
    consul: &'a TestConsul,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self
            .consul
            .put(&format!("/v1/session/destroy/{}", self.id), b"");
    }
}

fn session<'a>(c: &'a TestConsul, body: Value) -> Session<'a> {
    let r = c.put("/v1/session/create", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "session create: {}", r.text());
    let id = r.json()["ID"].as_str().expect("ID").to_string();
    assert_eq!(id.len(), 36, "UUID-shaped id: {id}");
    Session { consul: c, id }
}

fn info(c: &TestConsul, id: &str) -> Value {
    let r = c.get(&format!("/v1/session/info/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn put_bool(c: &TestConsul, path: &str, body: &[u8]) -> bool {
    let r = c.put(path, body);
    assert_eq!(r.status, 200, "PUT {path}: {}", r.text());
    r.json()
        .as_bool()
        .unwrap_or_else(|| panic!("PUT {path} answered {}", r.text()))
}

fn delete_bool(c: &TestConsul, path: &str) -> bool {
    let r = c.delete(path);
    assert_eq!(r.status, 200, "DELETE {path}: {}", r.text());
    r.json().as_bool().expect("bool")
}

/// The single entry at `key`; panics when missing.
fn entry(c: &TestConsul, key: &str) -> Value {
    let r = c.get(&format!("/v1/kv/{key}"));
    assert_eq!(r.status, 200, "GET {key}: {}", r.text());
    let list = r.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "one entry: {list}");
    list[0].clone()
}

fn value_of(entry: &Value) -> Vec<u8> {
    match &entry["Value"] {
        Value::Null => Vec::new(),
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64"),
        other => panic!("Value is neither null nor a string: {other}"),
    }
}

fn assert_text(r: &Response, status: u16, text: &str) {
    assert_eq!(
        (r.status, r.text().trim_end()),
        (status, text),
        "full answer: {r:?}"
    );
}

fn fake_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// On a dev server, waits until the server has received one more request than `before`, so a
/// blocking query sent from another thread is known to be in flight. A real Consul has no such
/// counter; there the ordering is left to chance.
fn wait_in_flight(c: &TestConsul, before: Option<u64>) {
    if let Some(before) = before {
        wait_until(PROMPT, "the blocking query to reach the server", || {
            c.dev_stats()
                .and_then(|s| s["requests"].as_u64())
                .unwrap_or(0)
                > before
        });
    }
}

fn requests_so_far(c: &TestConsul) -> Option<u64> {
    c.dev_stats().and_then(|s| s["requests"].as_u64())
}

// ---- sessions -----------------------------------------------------------------------------

fn session_create_defaults(c: &TestConsul) {
    let r = c.put("/v1/session/create", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let s = Session {
        consul: c,
        id: r.json()["ID"].as_str().unwrap().to_string(),
    };
    let list = info(c, &s.id);
    let got = &list[0];
    assert_eq!(got["ID"], json!(s.id));
    assert_eq!(got["Node"], json!(c.node_name()));
    assert_eq!(got["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(got["ServiceChecks"], Value::Null);
    assert!(
        got.get("Checks").is_none(),
        "Checks is left out when empty: {got}"
    );
    assert_eq!(got["LockDelay"], json!(15_000_000_000u64));
    assert_eq!(got["Behavior"], json!("release"));
    assert_eq!(got["TTL"], json!(""));
    assert_eq!(got["Name"], json!(""));
    assert!(got["CreateIndex"].as_u64().unwrap() > 0);
    assert_eq!(got["CreateIndex"], got["ModifyIndex"]);
}

fn session_create_with_fields(c: &TestConsul) {
    let s = session(
        c,
        json!({"Name": "n1", "TTL": "15s", "LockDelay": "2s", "Behavior": "delete"}),
    );
    let got = &info(c, &s.id)[0];
    assert_eq!(got["Name"], json!("n1"));
    assert_eq!(got["TTL"], json!("15s"));
    assert_eq!(got["LockDelay"], json!(2_000_000_000u64));
    assert_eq!(got["Behavior"], json!("delete"));
}

fn session_create_field_names_are_case_insensitive(c: &TestConsul) {
    let s = session(
        c,
        json!({"ttl": "10s", "behavior": "delete", "name": "lower"}),
    );
    let got = &info(c, &s.id)[0];
    assert_eq!(
        (got["TTL"].as_str(), got["Behavior"].as_str()),
        (Some("10s"), Some("delete"))
    );
    assert_eq!(got["Name"], json!("lower"));
}

fn session_create_empty_checks_remove_default(c: &TestConsul) {
    let a = session(c, json!({"Checks": []}));
    assert_eq!(info(c, &a.id)[0]["NodeChecks"], json!([]));
    let b = session(c, json!({"NodeChecks": []}));
    assert_eq!(info(c, &b.id)[0]["NodeChecks"], json!([]));
}

fn session_create_lock_delay_forms(c: &TestConsul) {
    for (given, nanos) in [
        (json!(15), 15_000_000_000u64),
        (json!("20ns"), 20_000_000_000),
        (json!(1_500_000_000u64), 1_500_000_000),
        (json!("1500ms"), 1_500_000_000),
    ] {
        let s = session(c, json!({ "LockDelay": given }));
        assert_eq!(
            info(c, &s.id)[0]["LockDelay"],
            json!(nanos),
            "LockDelay {given}"
        );
    }
}

fn session_create_unitless_lock_delay_is_400(c: &TestConsul) {
    let r = c.put("/v1/session/create", br#"{"LockDelay":"20"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().starts_with("Request decode failed"),
        "{}",
        r.text()
    );
}

fn session_create_invalid_behavior_is_500(c: &TestConsul) {
    let r = c.put("/v1/session/create", br#"{"Behavior":"explode"}"#);
    assert_text(&r, 500, "Invalid Behavior setting 'explode'");
}

fn session_create_ttl_validation(c: &TestConsul) {
    let r = c.put("/v1/session/create", br#"{"TTL":"30"}"#);
    assert_eq!(r.status, 500);
    assert!(
        r.text().starts_with("Session TTL '30' invalid: "),
        "{}",
        r.text()
    );
    let r = c.put("/v1/session/create", br#"{"TTL":"3s"}"#);
    assert_text(
        &r,
        500,
        "Invalid Session TTL '3000000000', must be between [10s=24h0m0s]",
    );
    let r = c.put("/v1/session/create", br#"{"TTL":"25h"}"#);
    assert_eq!(r.status, 500);
    assert!(
        r.text().starts_with("Invalid Session TTL '90000000000000'"),
        "{}",
        r.text()
    );
    // "0s" means no timer and is accepted.
    let s = session(c, json!({"TTL": "0s"}));
    assert_eq!(info(c, &s.id)[0]["TTL"], json!("0s"));
}

fn session_create_unknown_check_is_500(c: &TestConsul) {
    let r = c.put(
        "/v1/session/create",
        br#"{"NodeChecks":["serfHealth","no-such-check"]}"#,
    );
    assert_text(&r, 500, "Missing check 'no-such-check' registration");
}

fn session_create_ignores_body_without_content_length(c: &TestConsul) {
    // Consul decodes the body only when Content-Length > 0; a chunked body has none.
    let body = r#"{"Behavior":"bad"}"#;
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let token = c.token().unwrap_or_default();
    let mut headers = vec![("Transfer-Encoding", "chunked")];
    if !token.is_empty() {
        headers.push(("X-Consul-Token", token.as_str()));
    }
    let r = crate::support::http::request(
        &c.addr(),
        "PUT",
        "/v1/session/create",
        &headers,
        chunked.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let s = Session {
        consul: c,
        id: r.json()["ID"].as_str().unwrap().to_string(),
    };
    assert_eq!(info(c, &s.id)[0]["Behavior"], json!("release"));
}

fn session_renew(c: &TestConsul) {
    let s = session(c, json!({"TTL": "10s"}));
    let r = c.put(&format!("/v1/session/renew/{}", s.id), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["ID"], json!(s.id));
    assert!(list[0]["TTL"].as_str().is_some());
    // A session without TTL renews fine.
    let plain = session(c, json!({}));
    assert_eq!(
        c.put(&format!("/v1/session/renew/{}", plain.id), b"")
            .status,
        200
    );
}

fn session_renew_unknown_is_404(c: &TestConsul) {
    let id = fake_uuid();
    let r = c.put(&format!("/v1/session/renew/{id}"), b"");
    assert_text(&r, 404, &format!("Session id '{id}' not found"));
}

fn session_renew_malformed_or_missing_id(c: &TestConsul) {
    assert_eq!(c.put("/v1/session/renew/not-a-uuid", b"").status, 500);
    assert_text(&c.put("/v1/session/renew/", b""), 400, "Missing session");
}

fn session_destroy_always_true(c: &TestConsul) {
    assert!(put_bool(
        c,
        &format!("/v1/session/destroy/{}", fake_uuid()),
        b""
    ));
    let s = session(c, json!({}));
    assert!(put_bool(c, &format!("/v1/session/destroy/{}", s.id), b""));
    assert_eq!(info(c, &s.id), json!([]));
    assert!(put_bool(c, &format!("/v1/session/destroy/{}", s.id), b""));
}

fn session_info_missing_is_empty_array(c: &TestConsul) {
    let r = c.get(&format!("/v1/session/info/{}", fake_uuid()));
    assert_eq!((r.status, r.json()), (200, json!([])));
    assert!(r.index() >= 1);
}

fn session_list_and_node(c: &TestConsul) {
    let s = session(c, json!({"Name": "listed"}));
    assert!(c.sessions().iter().any(|x| x["ID"] == json!(s.id)));
    let r = c.get(&format!("/v1/session/node/{}", c.node_name()));
    assert_eq!(r.status, 200);
    assert!(
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == json!(s.id))
    );
    assert!(r.index() >= 1);
    let r = c.get("/v1/session/node/no-such-node-consullock");
    assert_eq!((r.status, r.json()), (200, json!([])));
}

fn session_info_blocks_until_destroy(c: &TestConsul) {
    let s = session(c, json!({}));
    let r = c.get(&format!("/v1/session/info/{}", s.id));
    let index = r.index();
    let before = requests_so_far(c);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let path = format!("/v1/session/info/{}?index={index}&wait=30s", s.id);
            let started = Instant::now();
            (
                c.request_timeout("GET", &path, b"", BLOCKING_TIMEOUT),
                started.elapsed(),
            )
        });
        wait_in_flight(c, before);
        assert!(put_bool(c, &format!("/v1/session/destroy/{}", s.id), b""));
        let (r, elapsed) = waiter.join().unwrap();
        assert_eq!((r.status, r.json()), (200, json!([])));
        assert!(r.index() > index);
        assert!(
            elapsed < Duration::from_secs(30),
            "woken by the destroy, not the timeout"
        );
    });
}

fn session_ttl_expiry_releases_keys(c: &TestConsul) {
    let key = c.unique_key("ttl-release");
    let created = Instant::now();
    let s = session(c, json!({"TTL": "10s", "LockDelay": "1s"}));
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}&flags=7", s.id),
        b"held"
    ));
    let before = entry(c, &key);
    wait_until(EXPIRY_DEADLINE, "the TTL session to expire", || {
        info(c, &s.id) == json!([])
    });
    // Consul waits 2×TTL; never less than one TTL.
    assert!(
        created.elapsed() >= Duration::from_secs(10),
        "expired before its TTL"
    );
    let after = entry(c, &key);
    assert!(after.get("Session").is_none(), "released: {after}");
    assert_eq!(value_of(&after), b"held");
    assert_eq!(after["Flags"], json!(7));
    assert_eq!(after["LockIndex"], before["LockIndex"]);
    assert!(after["ModifyIndex"].as_u64() > before["ModifyIndex"].as_u64());
    c.delete(&format!("/v1/kv/{key}"));
}

fn session_ttl_expiry_deletes_keys(c: &TestConsul) {
    let key = c.unique_key("ttl-delete");
    let s = session(
        c,
        json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "1s"}),
    );
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", s.id), b"v"));
    wait_until(EXPIRY_DEADLINE, "the TTL session to expire", || {
        info(c, &s.id) == json!([])
    });
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 404);
}

fn session_not_expired_within_its_ttl(c: &TestConsul) {
    let s = session(c, json!({"TTL": "10s"}));
    // Bounded "not before" check: renewing well within the TTL keeps it alive.
    for _ in 0..3 {
        assert_eq!(
            c.put(&format!("/v1/session/renew/{}", s.id), b"").status,
            200
        );
        assert_eq!(info(c, &s.id).as_array().map(Vec::len), Some(1));
    }
}

// ---- lock-delay ---------------------------------------------------------------------------

fn lock_delay_after_destroy(c: &TestConsul) {
    let key = c.unique_key("lock-delay");
    let a = session(c, json!({"LockDelay": "2s"}));
    let b = session(c, json!({}));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", a.id), b"a"));
    assert!(put_bool(c, &format!("/v1/session/destroy/{}", a.id), b""));
    let destroyed = Instant::now();
    // Right after the destroy the key is free but the delay refuses acquisition with `false`.
    assert!(entry(c, &key).get("Session").is_none());
    assert!(!put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}", b.id),
        b"b"
    ));
    wait_until(PROMPT, "the lock-delay to pass", || {
        put_bool(c, &format!("/v1/kv/{key}?acquire={}", b.id), b"b")
    });
    assert!(
        destroyed.elapsed() >= Duration::from_millis(1500),
        "delay honoured"
    );
    assert_eq!(entry(c, &key)["Session"], json!(b.id));
    c.delete(&format!("/v1/kv/{key}"));
}

fn lock_delay_zero_means_none(c: &TestConsul) {
    let key = c.unique_key("no-delay");
    let a = session(c, json!({"LockDelay": "0s"}));
    let b = session(c, json!({}));
    assert_eq!(info(c, &a.id)[0]["LockDelay"], json!(0));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", a.id), b""));
    assert!(put_bool(c, &format!("/v1/session/destroy/{}", a.id), b""));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", b.id), b""));
    c.delete(&format!("/v1/kv/{key}"));
}

fn release_sets_no_lock_delay(c: &TestConsul) {
    let key = c.unique_key("release-no-delay");
    let a = session(c, json!({"LockDelay": "10s"}));
    let b = session(c, json!({}));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", a.id), b""));
    assert!(put_bool(c, &format!("/v1/kv/{key}?release={}", a.id), b""));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", b.id), b""));
    c.delete(&format!("/v1/kv/{key}"));
}

// ---- KV reads and writes ------------------------------------------------------------------

fn kv_put_get_roundtrip(c: &TestConsul) {
    let key = c.unique_key("roundtrip");
    let value: &[u8] = b"\x00binary\xffvalue";
    assert!(put_bool(c, &format!("/v1/kv/{key}"), value));
    let r = c.get(&format!("/v1/kv/{key}"));
    assert_eq!(r.status, 200);
    let e = &r.json()[0];
    assert_eq!(e["Key"], json!(key));
    assert_eq!(value_of(e), value);
    assert_eq!(
        (e["Flags"].as_u64(), e["LockIndex"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        e.get("Session").is_none(),
        "Session omitted when empty: {e}"
    );
    assert_eq!(e["CreateIndex"], e["ModifyIndex"]);
    assert_eq!(json!(r.index()), e["ModifyIndex"]);
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_empty_value_is_null(c: &TestConsul) {
    let key = c.unique_key("empty");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b""));
    assert_eq!(entry(c, &key)["Value"], Value::Null);
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_missing_key_is_404_with_index(c: &TestConsul) {
    let r = c.get(&format!("/v1/kv/{}", c.unique_key("missing")));
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty(), "empty body: {}", r.text());
    assert!(r.index() >= 1);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    assert!(r.header("x-consul-lastcontact").is_some());
}

fn kv_missing_key_index_is_the_table_index(c: &TestConsul) {
    let other = c.unique_key("other");
    assert!(put_bool(c, &format!("/v1/kv/{other}"), b"x"));
    let written = entry(c, &other)["ModifyIndex"].as_u64().unwrap();
    let r = c.get(&format!("/v1/kv/{}", c.unique_key("missing")));
    assert_eq!(r.status, 404);
    if c.is_dev_server() {
        assert_eq!(r.index(), written);
    } else {
        assert!(r.index() >= written);
    }
    c.delete(&format!("/v1/kv/{other}"));
}

fn kv_empty_key_is_400(c: &TestConsul) {
    assert_text(&c.get("/v1/kv/"), 400, "Missing key name");
    assert_text(&c.put("/v1/kv/", b"x"), 400, "Missing key name");
    assert_text(&c.delete("/v1/kv/"), 400, "Missing key name");
}

fn kv_flags(c: &TestConsul) {
    let key = c.unique_key("flags");
    assert!(put_bool(c, &format!("/v1/kv/{key}?flags=42"), b"v"));
    assert_eq!(entry(c, &key)["Flags"], json!(42));
    // Without ?flags every write sets 0.
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"v"));
    assert_eq!(entry(c, &key)["Flags"], json!(0));
    assert_eq!(c.put(&format!("/v1/kv/{key}?flags=abc"), b"v").status, 500);
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_raw(c: &TestConsul) {
    let key = c.unique_key("raw");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"plain bytes"));
    let r = c.get(&format!("/v1/kv/{key}?raw"));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"plain bytes"[..]));
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain")
    );
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_recurse(c: &TestConsul) {
    let p = c.unique_key("tree");
    for k in ["a", "b", "c/d"] {
        assert!(put_bool(c, &format!("/v1/kv/{p}/{k}"), k.as_bytes()));
    }
    let r = c.get(&format!("/v1/kv/{p}/?recurse"));
    assert_eq!(r.status, 200);
    let keys: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        vec![format!("{p}/a"), format!("{p}/b"), format!("{p}/c/d")]
    );
    let max = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ModifyIndex"].as_u64().unwrap())
        .max();
    assert_eq!(Some(r.index()), max);
    assert_eq!(c.get(&format!("/v1/kv/{p}/nothing/?recurse")).status, 404);
    c.delete(&format!("/v1/kv/{p}?recurse"));
}

fn kv_recurse_index_counts_deletes(c: &TestConsul) {
    let p = c.unique_key("tomb");
    assert!(put_bool(c, &format!("/v1/kv/{p}/a"), b""));
    assert!(put_bool(c, &format!("/v1/kv/{p}/b"), b""));
    let before = c.get(&format!("/v1/kv/{p}/?recurse")).index();
    assert!(delete_bool(c, &format!("/v1/kv/{p}/b")));
    let r = c.get(&format!("/v1/kv/{p}/?recurse"));
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    assert!(r.index() > before, "the tombstone raises the prefix index");
    c.delete(&format!("/v1/kv/{p}?recurse"));
}

fn kv_keys_and_separator(c: &TestConsul) {
    let p = c.unique_key("keys");
    for k in ["a", "b/c", "b/d"] {
        assert!(put_bool(c, &format!("/v1/kv/{p}/{k}"), b""));
    }
    let all = c.get(&format!("/v1/kv/{p}/?keys"));
    assert_eq!(
        all.json(),
        json!([format!("{p}/a"), format!("{p}/b/c"), format!("{p}/b/d")])
    );
    let cut = json!([format!("{p}/a"), format!("{p}/b/")]);
    assert_eq!(c.get(&format!("/v1/kv/{p}/?keys&separator=/")).json(), cut);
    assert_eq!(c.get(&format!("/v1/kv/{p}/?keys&seperator=/")).json(), cut);
    assert_eq!(c.get(&format!("/v1/kv/{p}/none/?keys")).status, 404);
    let root = c.get("/v1/kv/?keys");
    assert_eq!(root.status, 200);
    assert!(root.json().is_array());
    c.delete(&format!("/v1/kv/{p}?recurse"));
}

fn kv_equality_shortcut(c: &TestConsul) {
    let key = c.unique_key("same");
    assert!(put_bool(c, &format!("/v1/kv/{key}?flags=1"), b"v"));
    let first = entry(c, &key)["ModifyIndex"].clone();
    assert!(put_bool(c, &format!("/v1/kv/{key}?flags=1"), b"v"));
    assert_eq!(
        entry(c, &key)["ModifyIndex"],
        first,
        "identical write changes nothing"
    );
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_cas_put(c: &TestConsul) {
    let key = c.unique_key("cas");
    assert!(
        !put_bool(c, &format!("/v1/kv/{key}?cas=5"), b"x"),
        "cas=N on an absent key"
    );
    assert!(put_bool(c, &format!("/v1/kv/{key}?cas=0"), b"a"));
    assert!(!put_bool(c, &format!("/v1/kv/{key}?cas=0"), b"b"));
    let index = entry(c, &key)["ModifyIndex"].as_u64().unwrap();
    assert!(!put_bool(
        c,
        &format!("/v1/kv/{key}?cas={}", index + 1000),
        b"b"
    ));
    assert!(put_bool(c, &format!("/v1/kv/{key}?cas={index}"), b"b"));
    assert_eq!(value_of(&entry(c, &key)), b"b");
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_conflicting_flags(c: &TestConsul) {
    let key = c.unique_key("conflict");
    let r = c.put(&format!("/v1/kv/{key}?cas=0&acquire={}", fake_uuid()), b"");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Conflicting flags: "), "{}", r.text());
    let r = c.put(&format!("/v1/kv/{key}?acquire=a&release=b"), b"");
    assert_eq!(r.status, 400);
    let r = c.delete(&format!("/v1/kv/{key}?recurse&cas=0"));
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Conflicting flags: "), "{}", r.text());
}

fn kv_value_size_limit(c: &TestConsul) {
    let key = c.unique_key("big");
    let max = vec![b'x'; 512 * 1024];
    assert!(put_bool(c, &format!("/v1/kv/{key}"), &max));
    let r = c.put(&format!("/v1/kv/{key}"), &[max.as_slice(), b"y"].concat());
    assert_eq!(r.status, 413);
    let text = r.text();
    assert!(
        text.starts_with("Request body(524289 bytes) too large, max size: 524288 bytes."),
        "{text}"
    );
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_acquire_absent_key(c: &TestConsul) {
    let key = c.unique_key("acquire-new");
    let s = session(c, json!({}));
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}&flags=9", s.id),
        b"mine"
    ));
    let e = entry(c, &key);
    assert_eq!(
        (e["LockIndex"].as_u64(), e["Flags"].as_u64()),
        (Some(1), Some(9))
    );
    assert_eq!(e["Session"], json!(s.id));
    assert_eq!(value_of(&e), b"mine");
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_acquire_held_by_other_is_false(c: &TestConsul) {
    let key = c.unique_key("acquire-held");
    let a = session(c, json!({}));
    let b = session(c, json!({}));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", a.id), b"a"));
    assert!(!put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}", b.id),
        b"b"
    ));
    assert_eq!(entry(c, &key)["Session"], json!(a.id));
    assert_eq!(value_of(&entry(c, &key)), b"a");
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_reacquire_by_same_session(c: &TestConsul) {
    let key = c.unique_key("reacquire");
    let s = session(c, json!({}));
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}&flags=3", s.id),
        b"v"
    ));
    let first = entry(c, &key);
    // Same value and flags: true, and nothing moves.
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}&flags=3", s.id),
        b"v"
    ));
    assert_eq!(entry(c, &key), first);
    // New value, no ?flags: true, LockIndex kept, value replaced and flags reset to 0.
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", s.id), b"w"));
    let second = entry(c, &key);
    assert_eq!(second["LockIndex"], first["LockIndex"]);
    assert_eq!(
        (value_of(&second), second["Flags"].as_u64()),
        (b"w".to_vec(), Some(0))
    );
    assert!(second["ModifyIndex"].as_u64() > first["ModifyIndex"].as_u64());
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_acquire_existing_unlocked_key_bumps_lock_index(c: &TestConsul) {
    let key = c.unique_key("lock-index");
    let a = session(c, json!({}));
    let b = session(c, json!({}));
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"plain"));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", a.id), b"a"));
    assert_eq!(entry(c, &key)["LockIndex"], json!(1));
    assert!(put_bool(c, &format!("/v1/kv/{key}?release={}", a.id), b"a"));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", b.id), b"b"));
    assert_eq!(entry(c, &key)["LockIndex"], json!(2));
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_acquire_unknown_session_is_500(c: &TestConsul) {
    let key = c.unique_key("acquire-bad");
    let id = fake_uuid();
    let r = c.put(&format!("/v1/kv/{key}?acquire={id}"), b"");
    assert_eq!(r.status, 500);
    assert!(
        r.text().to_lowercase().contains("invalid session"),
        "{}",
        r.text()
    );
    let r = c.put(&format!("/v1/kv/{key}?acquire="), b"");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("missing session"), "{}", r.text());
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 404);
}

fn kv_release_rules(c: &TestConsul) {
    let key = c.unique_key("release");
    let a = session(c, json!({}));
    let b = session(c, json!({}));
    assert!(
        !put_bool(c, &format!("/v1/kv/{key}?release={}", a.id), b""),
        "missing key"
    );
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}&flags=4", a.id),
        b"held"
    ));
    assert!(
        !put_bool(c, &format!("/v1/kv/{key}?release={}", b.id), b""),
        "not the holder"
    );
    let r = c.put(&format!("/v1/kv/{key}?release="), b"");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("missing session"), "{}", r.text());
    let before = entry(c, &key);
    // The release's empty body and missing ?flags replace the value and flags.
    assert!(put_bool(c, &format!("/v1/kv/{key}?release={}", a.id), b""));
    let after = entry(c, &key);
    assert!(after.get("Session").is_none());
    assert_eq!(
        (after["Value"].clone(), after["Flags"].as_u64()),
        (Value::Null, Some(0))
    );
    assert_eq!(after["LockIndex"], before["LockIndex"]);
    assert!(after["ModifyIndex"].as_u64() > before["ModifyIndex"].as_u64());
    c.delete(&format!("/v1/kv/{key}"));
}

fn kv_locks_are_advisory(c: &TestConsul) {
    let key = c.unique_key("advisory");
    let s = session(c, json!({}));
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}", s.id),
        b"held"
    ));
    // A plain PUT succeeds and keeps the holder; it carries LockIndex 0 (kvsSetTxn).
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"overwritten"));
    let e = entry(c, &key);
    assert_eq!(e["Session"], json!(s.id));
    assert_eq!(value_of(&e), b"overwritten");
    assert_eq!(e["LockIndex"], json!(0));
    // A plain DELETE removes a locked key.
    assert!(delete_bool(c, &format!("/v1/kv/{key}")));
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 404);
}

fn kv_delete(c: &TestConsul) {
    let key = c.unique_key("delete");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"x"));
    assert!(delete_bool(c, &format!("/v1/kv/{key}")));
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 404);
    assert!(
        delete_bool(c, &format!("/v1/kv/{key}")),
        "deleting an absent key is true"
    );
}

fn kv_delete_cas(c: &TestConsul) {
    let key = c.unique_key("delete-cas");
    assert!(
        delete_bool(c, &format!("/v1/kv/{key}?cas=123")),
        "absent key: true whatever N"
    );
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"x"));
    let index = entry(c, &key)["ModifyIndex"].as_u64().unwrap();
    assert!(!delete_bool(c, &format!("/v1/kv/{key}?cas=0")));
    assert!(!delete_bool(
        c,
        &format!("/v1/kv/{key}?cas={}", index + 1000)
    ));
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 200);
    assert!(delete_bool(c, &format!("/v1/kv/{key}?cas={index}")));
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 404);
}

fn kv_delete_recurse(c: &TestConsul) {
    let p = c.unique_key("rm");
    for k in ["a", "b/c"] {
        assert!(put_bool(c, &format!("/v1/kv/{p}/{k}"), b""));
    }
    assert!(put_bool(c, &format!("/v1/kv/{p}-sibling"), b""));
    assert!(delete_bool(c, &format!("/v1/kv/{p}/?recurse")));
    assert_eq!(c.get(&format!("/v1/kv/{p}/?recurse")).status, 404);
    assert_eq!(c.get(&format!("/v1/kv/{p}-sibling")).status, 200);
    c.delete(&format!("/v1/kv/{p}-sibling"));
}

fn index_is_global_across_sessions_and_kv(c: &TestConsul) {
    let key = c.unique_key("global");
    let a = session(c, json!({}));
    let a_index = info(c, &a.id)[0]["CreateIndex"].as_u64().unwrap();
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b""));
    let k_index = entry(c, &key)["ModifyIndex"].as_u64().unwrap();
    let b = session(c, json!({}));
    let b_index = info(c, &b.id)[0]["CreateIndex"].as_u64().unwrap();
    assert!(
        a_index < k_index && k_index < b_index,
        "{a_index} < {k_index} < {b_index}"
    );
    c.delete(&format!("/v1/kv/{key}"));
}

// ---- blocking queries ---------------------------------------------------------------------

fn blocking_returns_on_change(c: &TestConsul) {
    let key = c.unique_key("watch");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"one"));
    let index = c.get(&format!("/v1/kv/{key}")).index();
    let before = requests_so_far(c);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let path = format!("/v1/kv/{key}?index={index}&wait=30s");
            let started = Instant::now();
            (
                c.request_timeout("GET", &path, b"", BLOCKING_TIMEOUT),
                started.elapsed(),
            )
        });
        wait_in_flight(c, before);
        assert!(put_bool(c, &format!("/v1/kv/{key}"), b"two"));
        let (r, elapsed) = waiter.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(value_of(&r.json()[0]), b"two");
        assert!(r.index() > index);
        assert!(
            elapsed < Duration::from_secs(30),
            "woken by the write, not the timeout"
        );
    });
    c.delete(&format!("/v1/kv/{key}"));
}

fn blocking_times_out_with_unchanged_result(c: &TestConsul) {
    let key = c.unique_key("timeout");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"same"));
    let index = c.get(&format!("/v1/kv/{key}")).index();
    let started = Instant::now();
    let r = c.request_timeout(
        "GET",
        &format!("/v1/kv/{key}?index={index}&wait=1s"),
        b"",
        BLOCKING_TIMEOUT,
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for ?wait"
    );
    assert_eq!((r.status, r.index()), (200, index));
    assert_eq!(value_of(&r.json()[0]), b"same");
    c.delete(&format!("/v1/kv/{key}"));
}

fn blocking_on_existing_key_wakes_on_delete(c: &TestConsul) {
    let key = c.unique_key("watch-delete");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"x"));
    let index = c.get(&format!("/v1/kv/{key}")).index();
    let before = requests_so_far(c);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let path = format!("/v1/kv/{key}?index={index}&wait=30s");
            let started = Instant::now();
            (
                c.request_timeout("GET", &path, b"", BLOCKING_TIMEOUT),
                started.elapsed(),
            )
        });
        wait_in_flight(c, before);
        assert!(delete_bool(c, &format!("/v1/kv/{key}")));
        let (r, elapsed) = waiter.join().unwrap();
        assert_eq!(r.status, 404);
        assert!(r.index() > index);
        assert!(
            elapsed < Duration::from_secs(30),
            "woken by the delete, not the timeout"
        );
    });
}

fn blocking_missing_key_ignores_other_writes(c: &TestConsul) {
    let missing = c.unique_key("absent");
    let other = c.unique_key("busy");
    let index = c.get(&format!("/v1/kv/{missing}")).index();
    let before = requests_so_far(c);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let path = format!("/v1/kv/{missing}?index={index}&wait=2s");
            let started = Instant::now();
            (
                c.request_timeout("GET", &path, b"", BLOCKING_TIMEOUT),
                started.elapsed(),
            )
        });
        wait_in_flight(c, before);
        for n in 0..3 {
            assert!(put_bool(
                c,
                &format!("/v1/kv/{other}"),
                format!("{n}").as_bytes()
            ));
        }
        let (r, elapsed) = waiter.join().unwrap();
        assert_eq!(r.status, 404);
        // On a shared Consul, other writers may move the KV index before the query is first
        // evaluated, which rightly answers at once; only a private server pins the timing.
        if before.is_some() {
            assert!(
                elapsed >= Duration::from_secs(2),
                "returned after {elapsed:?}: woken by other keys"
            );
        }
    });
    c.delete(&format!("/v1/kv/{other}"));
}

fn blocking_missing_key_wakes_when_created(c: &TestConsul) {
    let key = c.unique_key("appears");
    let index = c.get(&format!("/v1/kv/{key}")).index();
    let before = requests_so_far(c);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let path = format!("/v1/kv/{key}?index={index}&wait=30s");
            c.request_timeout("GET", &path, b"", BLOCKING_TIMEOUT)
        });
        wait_in_flight(c, before);
        assert!(put_bool(c, &format!("/v1/kv/{key}"), b"here"));
        let r = waiter.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(value_of(&r.json()[0]), b"here");
    });
    c.delete(&format!("/v1/kv/{key}"));
}

fn blocking_bad_wait_or_index_is_400(c: &TestConsul) {
    let key = c.unique_key("bad-params");
    assert_text(
        &c.get(&format!("/v1/kv/{key}?index=1&wait=abc")),
        400,
        "Invalid wait time",
    );
    assert_text(
        &c.get(&format!("/v1/kv/{key}?index=abc")),
        400,
        "Invalid index",
    );
}

// ---- consistency, headers, datacenter, enterprise parameters, routing ---------------------

fn consistency_modes(c: &TestConsul) {
    let path = "/v1/session/list";
    let mode = |q: &str| {
        c.get(&format!("{path}{q}"))
            .header("x-consul-effective-consistency")
            .map(str::to_string)
    };
    assert_eq!(mode("").as_deref(), Some("leader"));
    assert_eq!(mode("?consistent").as_deref(), Some("consistent"));
    assert_eq!(mode("?stale").as_deref(), Some("stale"));
    assert_eq!(c.get(&format!("{path}?leader")).status, 200);
    assert_eq!(c.get(&format!("{path}?max_stale=5s")).status, 200);
    assert_text(
        &c.get(&format!("{path}?stale&consistent")),
        400,
        "Cannot specify ?stale with ?consistent, conflicting semantics.",
    );
}

fn read_headers(c: &TestConsul) {
    let key = c.unique_key("headers");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b""));
    let r = c.get(&format!("/v1/kv/{key}"));
    assert!(r.index() >= 1);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    assert!(r.header("x-consul-lastcontact").is_some());
    assert!(r.header("x-consul-effective-consistency").is_some());
    let policy = r.header("x-consul-default-acl-policy");
    assert!(matches!(policy, Some("allow" | "deny")), "{policy:?}");
    c.delete(&format!("/v1/kv/{key}"));
}

fn enterprise_parameters_are_refused(c: &TestConsul) {
    let key = c.unique_key("ent");
    let r = c.get(&format!("/v1/kv/{key}?ns=default"));
    assert_text(
        &r,
        400,
        "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
    );
    assert!(r.header("x-consul-index").is_none());
    let r = c.get(&format!("/v1/kv/{key}?partition=default"));
    assert_text(
        &r,
        400,
        "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature",
    );
    let r = c.put(&format!("/v1/kv/{key}?ns=default"), b"");
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/v1/session/list?ns=default").status, 400);
    let r = crate::support::http::request(
        &c.addr(),
        "GET",
        "/v1/session/list",
        &[("X-Consul-Namespace", "default")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Namespace"), "{}", r.text());
    let r = crate::support::http::request(
        &c.addr(),
        "GET",
        &format!("/v1/kv/{key}"),
        &[("X-Consul-Partition", "default")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        c.get(&format!("/v1/kv/{key}")).status,
        404,
        "nothing was written"
    );
}

fn status_endpoints(c: &TestConsul) {
    let r = c.get("/v1/status/leader");
    assert_eq!(r.status, 200);
    assert!(!r.json().as_str().unwrap_or("").is_empty(), "{}", r.text());
    let r = c.get("/v1/status/peers");
    assert_eq!(r.status, 200);
    assert!(!r.json().as_array().unwrap().is_empty());
}

fn agent_self(c: &TestConsul) {
    let r = c.get("/v1/agent/self");
    assert_eq!(r.status, 200);
    let agent = r.json();
    assert!(
        !agent["Config"]["NodeName"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    assert!(agent["Config"]["Datacenter"].is_string());
    assert!(agent["Member"].is_object());
    assert_eq!(agent["Member"]["Name"], agent["Config"]["NodeName"]);
    assert!(agent["Meta"].is_object(), "{agent}");
}

/// `Config.Version` is a plain release number (`X.Y.Z`, perhaps with a `-suffix`) that version
/// parsers accept; `Server` is a bool.
fn agent_self_version(c: &TestConsul) {
    let agent = c.get("/v1/agent/self").json();
    let version = agent["Config"]["Version"].as_str().expect("Version");
    let release = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = release.split('.').collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert!(
        parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "{version}"
    );
    assert!(agent["Config"]["Server"].is_boolean());
    assert_eq!(agent["Stats"]["build"]["version"].as_str(), Some(release));
}

/// `Stats` is a map of maps of strings (Go's `map[string]map[string]string`); `Stats.consul` has
/// what `Server.Stats` gives on a server (`agent/consul/server.go`) and what `Client.Stats` gives
/// on a client agent (`agent/consul/client.go`).
fn agent_self_stats(c: &TestConsul) {
    let agent = c.get("/v1/agent/self").json();
    let stats = agent["Stats"].as_object().expect("Stats is an object");
    for (section, fields) in stats {
        let fields = fields
            .as_object()
            .unwrap_or_else(|| panic!("Stats.{section} is not an object"));
        for (name, value) in fields {
            assert!(value.is_string(), "Stats.{section}.{name} = {value}");
        }
    }
    let consul = &agent["Stats"]["consul"];
    let server = consul["server"].as_str().expect("server");
    let is_bool = |v: &Value| matches!(v.as_str(), Some("true" | "false"));
    if server == "true" {
        assert!(is_bool(&consul["leader"]), "{consul}");
        assert!(is_bool(&consul["bootstrap"]), "{consul}");
        let leader = consul["leader_addr"].as_str().expect("leader_addr");
        assert!(leader.contains(':'), "{consul}");
        assert_eq!(c.get("/v1/status/leader").json().as_str(), Some(leader));
        let known: u64 = consul["known_datacenters"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("known_datacenters");
        assert!(known >= 1);
        assert!(matches!(
            consul["acl"].as_str(),
            Some("enabled" | "disabled")
        ));
    } else {
        assert_eq!(server, "false");
        let known: Option<u64> = consul["known_servers"]
            .as_str()
            .and_then(|v| v.parse().ok());
        assert!(known.is_some(), "{consul}");
    }
    assert!(agent["Stats"]["raft"].is_object() || server == "false");
}

fn unknown_datacenter_is_500(c: &TestConsul) {
    let r = c.get(&format!(
        "/v1/kv/{}?dc=consullock-nowhere",
        c.unique_key("dc")
    ));
    assert_eq!(r.status, 500);
    assert!(r.text().contains("No path to datacenter"), "{}", r.text());
    let dc = c.get("/v1/agent/self").json()["Config"]["Datacenter"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(c.get(&format!("/v1/session/list?dc={dc}")).status, 200);
}

fn routing_404_and_405(c: &TestConsul) {
    assert_eq!(c.get("/v1/consullock-no-such-endpoint").status, 404);
    assert_eq!(c.get("/v1/session/create").status, 405);
    assert_eq!(c.request("POST", "/v1/session/list", b"").status, 405);
    assert_eq!(
        c.request("PATCH", &format!("/v1/kv/{}", c.unique_key("m")), b"")
            .status,
        405
    );
}

/// A path that is not clean is redirected to the cleaned path by Go's `ServeMux` before any
/// endpoint sees it (so `../` never reaches the KV store), query kept.
fn unclean_paths_are_redirected(c: &TestConsul) {
    let r = c.put("/v1/kv/../session/create", b"");
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(r.header("location"), Some("/v1/session/create"));
    let key = c.unique_key("clean");
    let r = c.get(&format!("/v1/kv/{key}/./x//y?raw"));
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/kv/{key}/x/y?raw").as_str())
    );
    assert_eq!(c.get("/v1/kv/?keys").status, 200);
    let keys = c.get("/v1/kv/?keys").json();
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| !k.as_str().unwrap().contains("..")),
        "{keys}"
    );
}

/// A path with a non-printable character is refused with an empty 400
/// (`cleanhttp.PrintablePathCheckHandler`).
fn non_printable_paths_are_400(c: &TestConsul) {
    let key = c.unique_key("ctl");
    for path in [
        format!("/v1/kv/{key}%01"),
        format!("/v1/kv/{key}%7F"),
        format!("/v1/kv/{key}%C2%A0"),
    ] {
        let r = c.put(&path, b"x");
        assert_eq!((r.status, r.body.len()), (400, 0), "{path}: {}", r.text());
    }
    assert_eq!(c.get(&format!("/v1/kv/{key}?recurse")).status, 404);
}

/// Keys are bytes: two keys that differ only in bytes that are not UTF-8 are two keys (JSON shows
/// each such byte as U+FFFD, as Go's encoder does).
fn non_utf8_keys_stay_distinct(c: &TestConsul) {
    let prefix = c.unique_key("bytes");
    assert!(put_bool(c, &format!("/v1/kv/{prefix}/%FF"), b"ff"));
    assert!(put_bool(c, &format!("/v1/kv/{prefix}/%FE"), b"fe"));
    assert_eq!(c.get(&format!("/v1/kv/{prefix}/%FF?raw")).body, b"ff");
    assert_eq!(c.get(&format!("/v1/kv/{prefix}/%FE?raw")).body, b"fe");
    let keys = c.get(&format!("/v1/kv/{prefix}/?keys")).json();
    assert_eq!(
        keys,
        json!([format!("{prefix}/\u{FFFD}"), format!("{prefix}/\u{FFFD}")])
    );
    assert!(delete_bool(c, &format!("/v1/kv/{prefix}?recurse")));
}

// ---- transactions (`PUT /v1/txn`) --------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `PUT /v1/txn` with a JSON body.
fn txn(c: &TestConsul, ops: Value) -> Response {
    c.put("/v1/txn", ops.to_string().as_bytes())
}

/// The `What` of each error of a 409, by op index.
fn txn_errors(r: &Response) -> Vec<(u64, String)> {
    assert_eq!(r.status, 409, "{}", r.text());
    let body = r.json();
    assert_eq!(body["Results"], Value::Null, "{body}");
    body["Errors"]
        .as_array()
        .expect("Errors")
        .iter()
        .map(|e| {
            (
                e["OpIndex"].as_u64().expect("OpIndex"),
                e["What"].as_str().expect("What").to_string(),
            )
        })
        .collect()
}

/// `lock` acquires as `?acquire` does (LockIndex 1, the session, no value in the result) and the
/// `get` after it reads the same commit, value included (`agent/consul/state/txn.go`).
fn txn_lock_then_get(c: &TestConsul) {
    let key = c.unique_key("txn-lock");
    let s = session(c, json!({"LockDelay": "0s"}));
    let r = txn(
        c,
        json!([
            {"KV": {"Verb": "lock", "Key": key, "Value": b64(b"holder"), "Flags": 7, "Session": s.id}},
            {"KV": {"Verb": "get", "Key": key}},
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["Errors"], Value::Null, "{body}");
    let locked = &body["Results"][0]["KV"];
    let read = &body["Results"][1]["KV"];
    assert_eq!(locked["LockIndex"], 1, "{body}");
    assert_eq!(locked["Session"], json!(s.id));
    assert_eq!(locked["Value"], Value::Null);
    assert_eq!(locked["Flags"], 7);
    assert_eq!(value_of(read), b"holder");
    assert_eq!(read["ModifyIndex"], locked["ModifyIndex"]);
    let stored = entry(c, &key);
    assert_eq!(stored["ModifyIndex"], locked["ModifyIndex"]);
    assert_eq!(stored["Session"], json!(s.id));
    // Locking again with the same session keeps LockIndex, as `?acquire` does.
    let r = txn(
        c,
        json!([{"KV": {"Verb": "lock", "Key": key, "Session": s.id}}]),
    );
    assert_eq!(r.json()["Results"][0]["KV"]["LockIndex"], 1);
    assert!(delete_bool(c, &format!("/v1/kv/{key}")));
}

/// Every entry a transaction writes takes the same ModifyIndex.
fn txn_one_index_for_the_whole_transaction(c: &TestConsul) {
    let a = c.unique_key("txn-a");
    let b = c.unique_key("txn-b");
    let gone = c.unique_key("txn-gone");
    assert!(put_bool(c, &format!("/v1/kv/{gone}"), b"x"));
    let r = txn(
        c,
        json!([
            {"KV": {"Verb": "set", "Key": a, "Value": b64(b"1")}},
            {"KV": {"Verb": "delete", "Key": gone}},
            {"KV": {"Verb": "set", "Key": b, "Value": b64(b"2")}},
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["Results"].clone();
    assert_eq!(results.as_array().map(Vec::len), Some(2), "{results}");
    assert_eq!(
        results[0]["KV"]["ModifyIndex"],
        results[1]["KV"]["ModifyIndex"]
    );
    assert_eq!(results[0]["KV"]["Value"], Value::Null);
    let index = results[0]["KV"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(entry(c, &b)["ModifyIndex"], index);
    assert_eq!(c.get(&format!("/v1/kv/{gone}")).status, 404);
    for key in [a, b] {
        assert!(delete_bool(c, &format!("/v1/kv/{key}")));
    }
}

/// One failed op: 409 with every error, and nothing of the transaction is applied.
fn txn_failure_applies_nothing(c: &TestConsul) {
    let key = c.unique_key("txn-k");
    let fresh = c.unique_key("txn-fresh");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"v"));
    let index = entry(c, &key)["ModifyIndex"].as_u64().unwrap();
    let r = txn(
        c,
        json!([
            {"KV": {"Verb": "set", "Key": fresh, "Value": b64(b"new")}},
            {"KV": {"Verb": "cas", "Key": key, "Value": b64(b"w"), "Index": index + 1000}},
            {"KV": {"Verb": "delete", "Key": key}},
            {"KV": {"Verb": "check-index", "Key": key, "Index": index}},
        ]),
    );
    assert_eq!(
        txn_errors(&r),
        vec![
            (1, format!("failed to set key {key:?}, index is stale")),
            (
                3,
                format!("failed to check index, key {key:?} doesn't exist")
            ),
        ]
    );
    assert_eq!(c.get(&format!("/v1/kv/{fresh}")).status, 404);
    assert_eq!(entry(c, &key)["ModifyIndex"], index);
    assert!(delete_bool(c, &format!("/v1/kv/{key}")));
}

/// The release recipe: delete the key only while our session holds it.
fn txn_check_session_then_delete(c: &TestConsul) {
    let key = c.unique_key("txn-release");
    let ours = session(c, json!({"LockDelay": "0s"}));
    let theirs = session(c, json!({"LockDelay": "0s"}));
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}", ours.id),
        b"x"
    ));
    let release = |sid: &str| {
        txn(
            c,
            json!([
                {"KV": {"Verb": "check-session", "Key": key, "Session": sid}},
                {"KV": {"Verb": "delete", "Key": key}},
            ]),
        )
    };
    assert_eq!(
        txn_errors(&release(&theirs.id)),
        vec![(
            0,
            format!(
                "failed session check for key {key:?}, current session {:?} != {:?}",
                ours.id, theirs.id
            )
        )]
    );
    let r = release(&ours.id);
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["Results"].clone();
    assert_eq!(results.as_array().map(Vec::len), Some(1), "{results}");
    assert_eq!(results[0]["KV"]["Session"], json!(ours.id));
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 404);
    assert_eq!(
        txn_errors(&release(&ours.id)),
        vec![(
            0,
            format!("failed to check session, key {key:?} doesn't exist")
        )]
    );
}

/// `lock` on a key another session holds, and `unlock` by a session that does not hold it.
fn txn_lock_conflicts(c: &TestConsul) {
    let key = c.unique_key("txn-held");
    let a = session(c, json!({"LockDelay": "0s"}));
    let b = session(c, json!({"LockDelay": "0s"}));
    assert!(put_bool(c, &format!("/v1/kv/{key}?acquire={}", a.id), b""));
    let r = txn(
        c,
        json!([
            {"KV": {"Verb": "lock", "Key": key, "Session": b.id}},
            {"KV": {"Verb": "unlock", "Key": key, "Session": b.id}},
            {"KV": {"Verb": "lock", "Key": key}},
        ]),
    );
    assert_eq!(
        txn_errors(&r),
        vec![
            (
                0,
                format!("failed to lock key {key:?}, lock is already held")
            ),
            (
                1,
                format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                )
            ),
            (2, "missing session".to_string()),
        ]
    );
    let r = txn(
        c,
        json!([{"KV": {"Verb": "unlock", "Key": key, "Session": a.id}}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let unlocked = &r.json()["Results"][0]["KV"];
    assert_eq!(
        (unlocked["LockIndex"].as_u64(), unlocked.get("Session")),
        (Some(1), None)
    );
    assert!(delete_bool(c, &format!("/v1/kv/{key}")));
}

/// `lock` honours lock-delay like `?acquire`, but as a 409 (checked before Raft,
/// `agent/consul/txn_endpoint.go` `preCheck`).
fn txn_lock_honours_lock_delay(c: &TestConsul) {
    let key = c.unique_key("txn-delay");
    let dead = session(c, json!({"LockDelay": "15s"}));
    assert!(put_bool(
        c,
        &format!("/v1/kv/{key}?acquire={}", dead.id),
        b""
    ));
    c.destroy_session(&dead.id);
    let next = session(c, json!({}));
    let r = txn(
        c,
        json!([{"KV": {"Verb": "lock", "Key": key, "Session": next.id}}]),
    );
    assert_eq!(
        txn_errors(&r),
        vec![(0, format!("failed to lock key {key:?} due to lock delay"))]
    );
    assert!(delete_bool(c, &format!("/v1/kv/{key}")));
}

/// `consullock status`'s lock-delay probe: a `lock` op for the nil session, which no session
/// can have (Consul makes every session id itself), is refused either way and changes nothing.
/// Under a lock-delay, `preCheck` (`agent/consul/txn_endpoint.go`) refuses it before Raft with
/// the text `kvsPreApply` (`agent/consul/kvs_endpoint.go`) leads to; otherwise the state store
/// refuses it (`invalid session`) and rolls the transaction back. Every op is pre-checked, so
/// an op beside a refused one gets no error of its own.
fn txn_lock_for_the_nil_session_changes_nothing(c: &TestConsul) {
    const NIL: &str = "00000000-0000-0000-0000-000000000000";
    let absent = c.unique_key("nil-absent");
    let present = c.unique_key("nil-present");
    let delayed = c.unique_key("nil-delayed");
    let lock = |key: &str| json!({"KV": {"Verb": "lock", "Key": key, "Value": "", "Flags": 0, "Session": NIL}});
    let invalid = format!("invalid session {NIL:?}");

    assert_eq!(
        txn_errors(&txn(c, json!([lock(&absent)]))),
        vec![(0, invalid.clone())]
    );
    assert_eq!(c.get(&format!("/v1/kv/{absent}")).status, 404);

    assert!(put_bool(c, &format!("/v1/kv/{present}?flags=7"), b"data"));
    let before = entry(c, &present);
    assert_eq!(
        txn_errors(&txn(c, json!([lock(&present)]))),
        vec![(0, invalid.clone())]
    );
    assert_eq!(entry(c, &present), before, "the entry is untouched");

    // The default behaviour (release) keeps the key, free, under the lock-delay.
    let dead = session(c, json!({"LockDelay": "15s"}));
    assert!(put_bool(
        c,
        &format!("/v1/kv/{delayed}?acquire={}", dead.id),
        b"held"
    ));
    c.destroy_session(&dead.id);
    let after_destroy = entry(c, &delayed);
    assert!(after_destroy.get("Session").is_none(), "{after_destroy}");
    assert_eq!(
        txn_errors(&txn(c, json!([lock(&delayed), lock(&absent)]))),
        vec![(
            0,
            format!("failed to lock key {delayed:?} due to lock delay")
        )]
    );
    assert_eq!(entry(c, &delayed), after_destroy, "the entry is untouched");
    assert_eq!(c.get(&format!("/v1/kv/{absent}")).status, 404);
    assert!(delete_bool(c, &format!("/v1/kv/{present}")));
    assert!(delete_bool(c, &format!("/v1/kv/{delayed}")));
}

/// Reads and checks: `get-tree`, `get-or-empty`, `check-not-exists`, and the texts of a missing
/// key.
fn txn_reads_and_checks(c: &TestConsul) {
    let prefix = c.unique_key("txn-tree");
    for k in ["a", "b"] {
        assert!(put_bool(c, &format!("/v1/kv/{prefix}/{k}"), k.as_bytes()));
    }
    let missing = format!("{prefix}/missing");
    let r = txn(
        c,
        json!([
            {"KV": {"Verb": "get-tree", "Key": format!("{prefix}/")}},
            {"KV": {"Verb": "check-not-exists", "Key": missing}},
            {"KV": {"Verb": "get-or-empty", "Key": missing, "Flags": 3}},
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["Results"].clone();
    let keys: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["KV"]["Key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            format!("{prefix}/a"),
            format!("{prefix}/b"),
            missing.clone()
        ]
    );
    assert_eq!(value_of(&results[0]["KV"]), b"a");
    assert_eq!(results[2]["KV"]["Value"], Value::Null);
    assert_eq!(results[2]["KV"]["Flags"], 3);
    let r = txn(
        c,
        json!([
            {"KV": {"Verb": "get", "Key": missing}},
            {"KV": {"Verb": "check-not-exists", "Key": format!("{prefix}/a")}},
            {"KV": {"Verb": "frobnicate", "Key": missing}},
        ]),
    );
    assert_eq!(
        txn_errors(&r),
        vec![
            (0, format!("key {missing:?} doesn't exist")),
            (1, format!("key \"{prefix}/a\" exists")),
            (2, "unknown KV verb \"frobnicate\"".to_string()),
        ]
    );
    // The pre-check (a key is required) fails the transaction before any op runs.
    let r = txn(
        c,
        json!([
            {"KV": {"Verb": "get", "Key": missing}},
            {"KV": {"Verb": "get", "Key": ""}},
        ]),
    );
    assert_eq!(txn_errors(&r), vec![(1, "Must provide key".to_string())]);
    assert!(delete_bool(c, &format!("/v1/kv/{prefix}?recurse")));
}

/// A transaction of reads only skips Raft: no index moves, it answers the read metadata
/// (`KnownLeader`, `LastContact`) in its headers and body, and it takes the consistency options
/// (and their 400s), which a transaction with writes ignores.
fn txn_read_only_skips_raft(c: &TestConsul) {
    let key = c.unique_key("txn-ro");
    let other = c.unique_key("txn-ro-other");
    assert!(put_bool(c, &format!("/v1/kv/{key}"), b"v"));
    let index = entry(c, &key)["ModifyIndex"].as_u64().unwrap();
    let before = c.get(&format!("/v1/kv/{other}")).index();
    let ops = json!([
        {"KV": {"Verb": "get", "Key": key}},
        {"KV": {"Verb": "check-index", "Key": key, "Index": index}},
    ]);
    let r = c.put("/v1/txn?stale", ops.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    assert!(r.header("x-consul-lastcontact").is_some());
    assert_eq!(r.header("x-consul-index"), None);
    let body = r.json();
    assert_eq!(body["KnownLeader"], true, "{body}");
    assert_eq!(body["Errors"], Value::Null);
    assert_eq!(value_of(&body["Results"][0]["KV"]), b"v");
    assert_eq!(body["Results"][1]["KV"]["Value"], Value::Null);
    assert_eq!(c.get(&format!("/v1/kv/{other}")).index(), before);
    let conflicting = c.put("/v1/txn?stale&consistent", ops.to_string().as_bytes());
    assert_text(
        &conflicting,
        400,
        "Cannot specify ?stale with ?consistent, conflicting semantics.",
    );
    let write = json!([{"KV": {"Verb": "set", "Key": key, "Value": b64(b"w")}}]);
    let r = c.put("/v1/txn?stale&consistent", write.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().get("KnownLeader").is_none());
    assert!(delete_bool(c, &format!("/v1/kv/{key}")));
}

/// Body decoding is strict: an op member other than KV/Node/Service/Check (there is no Session
/// op in the HTTP API) or an unknown KV field is a 400; so is a value that is not base64.
fn txn_bad_bodies_are_400(c: &TestConsul) {
    let key = c.unique_key("txn-bad");
    let bodies = [
        json!([{"Session": {"Verb": "delete", "Session": {"ID": fake_uuid()}}}]),
        json!([{"KV": {"Verb": "get", "Key": key, "Bogus": 1}}]),
        json!([{"KV": {"Verb": "set", "Key": key, "Value": "not base64!"}}]),
        json!({"KV": {}}),
    ];
    for body in bodies {
        let r = txn(c, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.text().starts_with("Failed to parse body: "),
            "{}",
            r.text()
        );
    }
    let r = c.put("/v1/txn", b"[{");
    assert_eq!(r.status, 400, "{}", r.text());
    // Field names match case-insensitively, as Go decodes them.
    let r = txn(c, json!([{"kv": {"verb": "check-not-exists", "key": key}}]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get("/v1/txn").status, 405);
}

/// At most 128 ops, and the body's declared length is checked against `txn_max_req_len`
/// (512 KiB) before the body is decoded: both 413.
fn txn_limits_are_413(c: &TestConsul) {
    let key = c.unique_key("txn-many");
    let op = json!({"KV": {"Verb": "get-or-empty", "Key": key}});
    let r = txn(c, Value::Array(vec![op.clone(); 129]));
    assert_text(
        &r,
        413,
        "Transaction contains too many operations (129 > 128)",
    );
    assert_eq!(txn(c, Value::Array(vec![op; 128])).status, 200);
    let big = json!([{"KV": {"Verb": "set", "Key": key, "Value": b64(&vec![b'x'; 400 * 1024])}}]);
    let body = big.to_string();
    let r = c.put("/v1/txn", body.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    let expected = format!(
        "Request body({} bytes) too large, max size: 524288 bytes.",
        body.len()
    );
    assert!(r.text().starts_with(&expected), "{}", r.text());
    assert_eq!(c.get(&format!("/v1/kv/{key}")).status, 404);
}

/// A catalog op this server can answer: reading the agent's own node.
fn txn_node_get(c: &TestConsul) {
    let node = c.node_name();
    let r = txn(
        c,
        json!([{"Node": {"Verb": "get", "Node": {"Node": node}}}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Results"][0]["Node"]["Node"], json!(node));
    let r = txn(
        c,
        json!([{"Node": {"Verb": "get", "Node": {"Node": "consullock-no-such-node"}}}]),
    );
    assert_eq!(
        txn_errors(&r),
        vec![(
            0,
            "node \"consullock-no-such-node\" doesn't exist".to_string()
        )]
    );
}

// ---- dev-server-only cases ----------------------------------------------------------------

/// Needs a dev server with a configured ACL token.
fn devserver_acl_token(_: &TestConsul) {
    let c = TestConsul::start_dev_server(&["--acl-token", "secret"]);
    let addr = c.addr();
    let get = |path: &str, headers: &[(&str, &str)]| {
        crate::support::http::request(&addr, "GET", path, headers, b"")
    };
    let r = get("/v1/kv/k", &[]);
    assert_text(&r, 403, "Permission denied");
    assert_eq!(r.header("x-consul-default-acl-policy"), Some("deny"));
    assert_text(
        &get("/v1/kv/k", &[("X-Consul-Token", "wrong")]),
        403,
        "ACL not found",
    );
    assert_eq!(get("/v1/kv/k?token=secret", &[]).status, 404);
    assert_eq!(get("/v1/kv/k", &[("X-Consul-Token", "secret")]).status, 404);
    assert_eq!(
        get("/v1/kv/k", &[("Authorization", "bearer secret trailing")]).status,
        404
    );
    assert_eq!(
        get("/v1/kv/k", &[("Authorization", "Basic secret")]).status,
        403
    );
    // ?token= wins over the header.
    assert_eq!(
        get("/v1/kv/k?token=wrong", &[("X-Consul-Token", "secret")]).status,
        403
    );
    assert_eq!(get("/v1/status/leader", &[]).status, 200);
    assert_eq!(get("/v1/status/peers", &[]).status, 200);
    assert_eq!(get("/v1/session/list", &[]).status, 403);
    assert_eq!(get("/v1/agent/self", &[]).status, 403);
    // Enterprise parameters are refused before the token is looked at.
    assert_eq!(get("/v1/kv/k?ns=default", &[]).status, 400);
    let put = crate::support::http::request(&addr, "PUT", "/v1/session/create", &[], b"");
    assert_eq!(put.status, 403);
    // The harness sends the configured token itself.
    assert_eq!(c.put("/v1/session/create", b"").status, 200);
}

/// Needs `/_devserver/stats`.
fn devserver_stats(_: &TestConsul) {
    let c = TestConsul::start_dev_server(&[]);
    let counts = |stats: Value| {
        (
            stats["requests"].clone(),
            stats["sessions"].clone(),
            stats["keys"].clone(),
        )
    };
    let stats = c.dev_stats().unwrap();
    assert_eq!(counts(stats), (json!(0), json!(0), json!(0)));
    let s = session(&c, json!({}));
    assert!(put_bool(&c, "/v1/kv/a", b""));
    assert!(put_bool(&c, "/v1/kv/b", b""));
    let stats = c.dev_stats().unwrap();
    assert_eq!(counts(stats.clone()), (json!(3), json!(1), json!(2)));
    assert_eq!(stats["tombstones"], 0, "{stats}");
    assert_eq!(stats["blocking_queries"], 0, "{stats}");
    assert!(stats["connections"].as_u64().unwrap() >= 1, "{stats}");
    drop(s);
    assert_eq!(c.dev_stats().unwrap()["sessions"], json!(0));
    assert!(
        c.get("/v1/kv/?keys").json() == json!(["a", "b"]),
        "a fresh server holds only ours"
    );
}

/// Needs `/_devserver/stats`: each request is counted once more in `requests` and once in
/// exactly one kind, by what it would cost on a real cluster (a Raft write, a consistent read,
/// or neither); blocking reads are also counted apart, by consistency.
fn devserver_stats_by_kind(_: &TestConsul) {
    const NAMES: [&str; 6] = [
        "requests",
        "writes",
        "consistent_reads",
        "other",
        "consistent_blocking_reads",
        "other_blocking_reads",
    ];
    let c = TestConsul::start_dev_server(&[]);
    let counters = || {
        let stats = c.dev_stats().unwrap();
        NAMES.map(|name| {
            stats[name]
                .as_u64()
                .unwrap_or_else(|| panic!("no {name} in {stats}"))
        })
    };
    // What one request added to each counter, in the order of NAMES.
    let added = |send: &dyn Fn() -> Response| {
        let before = counters();
        let r = send();
        let after = counters();
        (
            r,
            std::array::from_fn::<u64, 6, _>(|i| after[i] - before[i]),
        )
    };
    const WRITE: [u64; 6] = [1, 1, 0, 0, 0, 0];
    const CONSISTENT: [u64; 6] = [1, 0, 1, 0, 0, 0];
    const OTHER: [u64; 6] = [1, 0, 0, 1, 0, 0];
    const CONSISTENT_BLOCKING: [u64; 6] = [1, 0, 1, 0, 1, 0];
    const OTHER_BLOCKING: [u64; 6] = [1, 0, 0, 1, 0, 1];
    let check = |what: &str, expected: [u64; 6], send: &dyn Fn() -> Response| {
        let (r, counted) = added(send);
        assert_eq!(counted, expected, "{what} ({} {})", r.status, r.text());
        r
    };

    let r = check("session create", WRITE, &|| {
        c.put("/v1/session/create", b"")
    });
    let id = r.json()["ID"].as_str().unwrap().to_string();
    check("KV put", WRITE, &|| c.put("/v1/kv/k", b"v"));
    check("KV put ?acquire", WRITE, &|| {
        c.put(&format!("/v1/kv/k?acquire={id}"), b"v")
    });
    let r = check("a failed cas", WRITE, &|| c.put("/v1/kv/k?cas=1", b"v"));
    assert_eq!(r.json(), json!(false));
    let r = check("KV get", OTHER, &|| c.get("/v1/kv/k"));
    let index = r.index();
    check("KV get ?stale", OTHER, &|| c.get("/v1/kv/k?stale"));
    check("KV get ?consistent", CONSISTENT, &|| {
        c.get("/v1/kv/k?consistent")
    });
    check("a blocking read", OTHER_BLOCKING, &|| {
        c.get(&format!("/v1/kv/k?index={index}&wait=10ms"))
    });
    check("a consistent blocking read", CONSISTENT_BLOCKING, &|| {
        c.get(&format!("/v1/kv/k?index={index}&wait=10ms&consistent"))
    });
    check("session renew", OTHER, &|| {
        c.put(&format!("/v1/session/renew/{id}"), b"")
    });
    check("session info ?consistent", CONSISTENT, &|| {
        c.get(&format!("/v1/session/info/{id}?consistent"))
    });
    check("agent self", OTHER, &|| c.get("/v1/agent/self"));
    check("status leader", OTHER, &|| c.get("/v1/status/leader"));
    let get = json!([{"KV": {"Verb": "get", "Key": "k"}}]).to_string();
    check("a read-only txn", OTHER, &|| {
        c.put("/v1/txn", get.as_bytes())
    });
    check("a read-only txn ?consistent", CONSISTENT, &|| {
        c.put("/v1/txn?consistent", get.as_bytes())
    });
    // One write verb makes the whole transaction a Raft write, even if it fails.
    let get_then_unlock = json!([
        {"KV": {"Verb": "get", "Key": "k"}},
        {"KV": {"Verb": "unlock", "Key": "k", "Session": fake_uuid()}},
    ])
    .to_string();
    let r = check("a txn with a write verb", WRITE, &|| {
        c.put("/v1/txn?consistent", get_then_unlock.as_bytes())
    });
    assert_eq!(r.status, 409, "{}", r.text());
    check("a txn body that does not decode", OTHER, &|| {
        c.put("/v1/txn", b"{")
    });
    check("KV put ?release", WRITE, &|| {
        c.put(&format!("/v1/kv/k?release={id}"), b"v")
    });
    check("KV delete", WRITE, &|| c.delete("/v1/kv/k"));
    check("session destroy", WRITE, &|| {
        c.put(&format!("/v1/session/destroy/{id}"), b"")
    });
    // Refused before it is read: no Raft write happens.
    let r = check("an unclean path", OTHER, &|| c.put("/v1/kv/../kv/k", b"v"));
    assert_eq!(r.status, 301);

    let [requests, writes, consistent, other, ..] = counters();
    assert_eq!(
        requests,
        writes + consistent + other,
        "one kind per request"
    );
}

/// Needs the dev server's start-up line.
fn devserver_startup_line(_: &TestConsul) {
    let c = TestConsul::start_dev_server(&[]);
    let line = c
        .server_log()
        .into_iter()
        .find(|l| l.contains("listening on"))
        .unwrap();
    assert!(line.contains(&format!("http://{}", c.addr())), "{line}");
    for words in [
        "development and tests only",
        "keeps nothing on disk",
        "no replacement for Consul",
    ] {
        assert!(line.contains(words), "{line}");
    }
}

/// Needs a dev server with `-v` and a token, to read its log.
fn devserver_verbose_log_redacts_tokens(_: &TestConsul) {
    let c = TestConsul::start_dev_server(&["-v", "--acl-token", "hunter2-token"]);
    let r =
        crate::support::http::request(&c.addr(), "GET", "/v1/kv/x?token=hunter2-token", &[], b"");
    assert_eq!(r.status, 404);
    wait_until(PROMPT, "the request line in the log", || {
        c.server_log()
            .iter()
            .any(|l| l.contains("GET /v1/kv/x?token=REDACTED 404"))
    });
    assert!(
        c.server_log().iter().all(|l| !l.contains("hunter2")),
        "{:?}",
        c.server_log()
    );
}

/// Needs a dev server started with `--node`.
fn devserver_node_name(_: &TestConsul) {
    let c = TestConsul::start_dev_server(&["--node", "node1"]);
    let agent = c.get("/v1/agent/self").json();
    assert_eq!(agent["Config"]["NodeName"], "node1");
    assert_eq!(agent["Member"]["Name"], "node1");
    let s = session(&c, json!({}));
    assert_eq!(info(&c, &s.id)[0]["Node"], "node1");
    let on_node = c.get("/v1/session/node/node1").json();
    assert_eq!(on_node.as_array().map(Vec::len), Some(1), "{on_node}");
    assert_eq!(c.get("/v1/session/node/other").json(), json!([]));
    // A session for any other node is refused as Consul refuses an unregistered node.
    let r = c.put("/v1/session/create", br#"{"Node": "other"}"#);
    assert_text(&r, 500, "Missing node registration");
}

/// Needs the dev server: it says what it is (its `Meta`, the ACL stat of a token).
fn devserver_agent_self_says_what_it_is(_: &TestConsul) {
    let c = TestConsul::start_dev_server(&["--acl-token", "secret"]);
    let agent = c.get("/v1/agent/self").json();
    let version = agent["Config"]["Version"].as_str().unwrap().to_string();
    assert_eq!(
        agent["Meta"]["consul-version"].as_str(),
        Some(version.as_str())
    );
    assert!(
        agent["Meta"]["consullock-dev-server"].is_string(),
        "{agent}"
    );
    assert_eq!(agent["Stats"]["consul"]["acl"], "enabled");
    assert_eq!(agent["Stats"]["consul"]["server"], "true");
    assert_eq!(agent["Stats"]["consul"]["leader"], "true");
    assert!(agent["Stats"]["consul"].get("known_servers").is_none());
    let line = c
        .server_log()
        .into_iter()
        .find(|l| l.contains("listening on"))
        .unwrap();
    assert!(line.contains(&format!("Consul {version}")), "{line}");
    assert!(line.contains("consullock"), "{line}");
}

/// Needs a dev server with a token: each op is checked before anything applies; the anonymous
/// token's writes and checks fail with `Permission denied`, its reads come back filtered; an
/// unknown token is a 403.
fn devserver_txn_acl(_: &TestConsul) {
    let c = TestConsul::start_dev_server(&["--acl-token", "secret"]);
    assert!(put_bool(&c, "/v1/kv/k", b"v"));
    let addr = c.addr();
    let anonymous = |ops: Value| {
        crate::support::http::request(&addr, "PUT", "/v1/txn", &[], ops.to_string().as_bytes())
    };
    let r = anonymous(json!([
        {"KV": {"Verb": "set", "Key": "new", "Value": b64(b"x")}},
        {"KV": {"Verb": "check-index", "Key": "k", "Index": 1}},
        {"KV": {"Verb": "get", "Key": "k"}},
    ]));
    let errors = txn_errors(&r);
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        [0, 1],
        "{errors:?}"
    );
    assert!(
        errors.iter().all(|e| e.1.starts_with("Permission denied")),
        "{errors:?}"
    );
    assert_eq!(c.get("/v1/kv/new").status, 404);
    let r = anonymous(json!([{"KV": {"Verb": "get", "Key": "k"}}]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Results"], json!([]));
    assert_eq!(r.json()["ResultsFilteredByACLs"], true);
    let r = crate::support::http::request(
        &addr,
        "PUT",
        "/v1/txn",
        &[("X-Consul-Token", "wrong")],
        b"[]",
    );
    assert_text(&r, 403, "ACL not found");
}

/// Every case, by name, for this file's tests and for `tests/container.rs`.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        pub(crate) const CASES: &[(&str, fn(&TestConsul))] = &[$((stringify!($name), $name)),*];
        mod cases {
            $(
                #[test]
                fn $name() {
                    super::$name(&crate::support::TestConsul::start());
                }
            )*
        }
    };
}

cases![
    session_create_defaults,
    session_create_with_fields,
    session_create_field_names_are_case_insensitive,
    session_create_empty_checks_remove_default,
    session_create_lock_delay_forms,
    session_create_unitless_lock_delay_is_400,
    session_create_invalid_behavior_is_500,
    session_create_ttl_validation,
    session_create_unknown_check_is_500,
    session_create_ignores_body_without_content_length,
    session_renew,
    session_renew_unknown_is_404,
    session_renew_malformed_or_missing_id,
    session_destroy_always_true,
    session_info_missing_is_empty_array,
    session_list_and_node,
    session_info_blocks_until_destroy,
    session_ttl_expiry_releases_keys,
    session_ttl_expiry_deletes_keys,
    session_not_expired_within_its_ttl,
    lock_delay_after_destroy,
    lock_delay_zero_means_none,
    release_sets_no_lock_delay,
    kv_put_get_roundtrip,
    kv_empty_value_is_null,
    kv_missing_key_is_404_with_index,
    kv_missing_key_index_is_the_table_index,
    kv_empty_key_is_400,
    kv_flags,
    kv_raw,
    kv_recurse,
    kv_recurse_index_counts_deletes,
    kv_keys_and_separator,
    kv_equality_shortcut,
    kv_cas_put,
    kv_conflicting_flags,
    kv_value_size_limit,
    kv_acquire_absent_key,
    kv_acquire_held_by_other_is_false,
    kv_reacquire_by_same_session,
    kv_acquire_existing_unlocked_key_bumps_lock_index,
    kv_acquire_unknown_session_is_500,
    kv_release_rules,
    kv_locks_are_advisory,
    kv_delete,
    kv_delete_cas,
    kv_delete_recurse,
    index_is_global_across_sessions_and_kv,
    blocking_returns_on_change,
    blocking_times_out_with_unchanged_result,
    blocking_on_existing_key_wakes_on_delete,
    blocking_missing_key_ignores_other_writes,
    blocking_missing_key_wakes_when_created,
    blocking_bad_wait_or_index_is_400,
    consistency_modes,
    read_headers,
    enterprise_parameters_are_refused,
    status_endpoints,
    agent_self,
    agent_self_version,
    agent_self_stats,
    unknown_datacenter_is_500,
    routing_404_and_405,
    unclean_paths_are_redirected,
    non_printable_paths_are_400,
    non_utf8_keys_stay_distinct,
    txn_lock_then_get,
    txn_one_index_for_the_whole_transaction,
    txn_failure_applies_nothing,
    txn_check_session_then_delete,
    txn_lock_conflicts,
    txn_lock_honours_lock_delay,
    txn_lock_for_the_nil_session_changes_nothing,
    txn_reads_and_checks,
    txn_read_only_skips_raft,
    txn_bad_bodies_are_400,
    txn_limits_are_413,
    txn_node_get,
    devserver_acl_token,
    devserver_stats,
    devserver_stats_by_kind,
    devserver_startup_line,
    devserver_verbose_log_redacts_tokens,
    devserver_node_name,
    devserver_agent_self_says_what_it_is,
    devserver_txn_acl,
];
