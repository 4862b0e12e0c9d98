//! The dev server's router: which endpoint answers which path, and the small endpoints that
//! need no module of their own (status, agent self, the dev server's own `/_devserver/*`).
//!
//! Every path Consul would answer and the dev server does not implement gets Consul's answer to
//! an unknown path, a 404 `404 page not found` (README lists what is and is not implemented).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hyper::{Method, StatusCode};

use super::http::{
    Call, DATACENTER, Failure, LEADER_ADDRESS, Outcome, authorize, json, require_method,
};
use super::{Shared, faults, kv, session, txn};

/// Dispatches on the path.
pub(crate) async fn route(shared: &Arc<Shared>, call: &Call) -> Outcome {
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
            let (sessions, keys, tombstones) =
                shared.read(|s| (s.session_count(), s.key_count(), s.tombstone_count()));
            let connections: usize = shared
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .sum();
            let mut stats = serde_json::json!({
                "sessions": sessions,
                "keys": keys,
                "tombstones": tombstones,
                "connections": connections,
                "blocking_queries": shared.watchers.waiting(),
                "wakeups": shared.watchers.wakeups.load(Ordering::Relaxed),
            });
            if let Some(stats) = stats.as_object_mut() {
                stats.extend(shared.stats.json());
            }
            Ok(json(&stats))
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
