//! The Go-recipe contender (`support/go_recipe.rs`) against the dev server: `api.Lock` and
//! `api.Semaphore` as `consul lock` and `consul lock -n` use them. These tests check the
//! reference itself, so that the mixed crowds (consullock and Go-recipe contenders on one
//! prefix) can trust it: exclusion and hand-over, the limit, lost slots coming back, Go's
//! refusals (limit conflict, foreign flags, lock versus semaphore), the races Go handles (a
//! refused acquire, a lost CAS, a vanished `.lock`) and the exact requests and values.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::support::go_recipe::{
    Contender, GoClient, GoError, GoLock, GoLockOptions, GoSemaphore, GoSemaphoreOptions, Held,
    LOCK_FLAG_VALUE, Released, SEMAPHORE_FLAG_VALUE, WireRequest, max_overlap, monotonic_ns,
};
use crate::support::{TestConsul, wait_until};

/// How long any one step (an acquisition, a release, a loss) may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// The entry at `key`, if any.
fn entry(consul: &TestConsul, key: &str) -> Option<Value> {
    let response = consul.get(&format!("/v1/kv/{key}"));
    match response.status {
        200 => Some(response.json()[0].clone()),
        404 => None,
        other => panic!("GET {key}: {other} {}", response.text()),
    }
}

/// The decoded value of an entry (`None` for JSON null).
fn value_text(entry: &Value) -> Option<String> {
    entry["Value"].as_str().map(|b64| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64 value");
        String::from_utf8(bytes).expect("UTF-8 value")
    })
}

/// The sessions named in `PREFIX/.lock`'s `Holders`, read independently of the recipe.
fn holders(consul: &TestConsul, prefix: &str) -> BTreeSet<String> {
    let Some(lock) = entry(consul, &format!("{prefix}/.lock")) else {
        return BTreeSet::new();
    };
    let value: Value = serde_json::from_str(&value_text(&lock).expect(".lock has a value"))
        .expect(".lock holds JSON");
    value["Holders"]
        .as_object()
        .expect("Holders is an object")
        .keys()
        .cloned()
        .collect()
}

/// Whether nothing is left under `prefix`.
fn prefix_empty(consul: &TestConsul, prefix: &str) -> bool {
    consul.get(&format!("/v1/kv/{prefix}?recurse")).status == 404
}

/// Whether `session` no longer exists.
fn session_gone(consul: &TestConsul, session: &str) -> bool {
    consul.get(&format!("/v1/session/info/{session}")).json() == serde_json::json!([])
}

/// `session`'s entry from `/v1/session/info`.
fn session_info(consul: &TestConsul, session: &str) -> Value {
    consul.get(&format!("/v1/session/info/{session}")).json()[0].clone()
}

fn take_held(contender: &mut Contender, who: &str) -> Held {
    contender
        .wait(DEADLINE)
        .unwrap_or_else(|e| panic!("{who} should acquire: {e}"))
}

fn release(held: Held, who: &str) -> Released {
    held.release(DEADLINE)
        .unwrap_or_else(|e| panic!("{who} should release: {e}"))
}

#[test]
fn go_locks_exclude_each_other_and_hand_over() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("golock");
    let key = format!("{prefix}/.lock");

    let mut a = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "sh -c a"));
    let held_a = take_held(&mut a, "a");
    assert_eq!(consul.holder(&key).as_deref(), Some(held_a.session()));

    // B sees the key held by A and blocks on its index.
    let mut b = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "sh -c b"));
    wait_until(DEADLINE, "b to block on a's lock", || {
        b.progress().index_waits >= 1
    });
    assert!(b.try_take().is_none(), "b acquired while a holds");

    // consul lock -timeout: one attempt that gives up, and takes its session with it.
    let mut once = GoLockOptions::consul_lock(&prefix, "sh -c once");
    once.lock_try_once = true;
    once.lock_wait_time = Duration::from_millis(300);
    let mut one_shot = GoLock::spawn(&client, once);
    assert_eq!(one_shot.wait(DEADLINE).err(), Some(GoError::Stopped));
    let one_shot_session = one_shot.progress().session.expect("one-shot session");
    assert!(session_gone(&consul, &one_shot_session));
    assert!(!held_a.is_lost());

    let released_a = release(held_a, "a");
    assert_eq!(released_a.unlock, Ok(()));
    // A's cleanup races B's acquisition: either it deleted the free key first or B had it.
    assert!(
        matches!(released_a.cleanup, Ok(()) | Err(GoError::LockInUse)),
        "a's cleanup: {:?}",
        released_a.cleanup
    );
    assert!(released_a.session_destroyed);
    assert!(session_gone(&consul, &released_a.session));

    let held_b = take_held(&mut b, "b");
    assert!(
        released_a.released_ns < held_b.acquired_ns(),
        "b acquired before a released"
    );
    assert_eq!(consul.holder(&key).as_deref(), Some(held_b.session()));
    let released_b = release(held_b, "b");
    assert_eq!((released_b.unlock, released_b.cleanup), (Ok(()), Ok(())));
    assert!(
        entry(&consul, &key).is_none(),
        "the last cleanup deletes the key"
    );
    assert!(session_gone(&consul, &released_b.session));
}

#[test]
fn go_lock_is_lost_with_its_session_and_taken_after_the_lock_delay() {
    const LOCK_DELAY: Duration = Duration::from_secs(2);
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("golock-delay");
    let key = format!("{prefix}/.lock");

    let mut a_opts = GoLockOptions::consul_lock(&prefix, "a");
    a_opts.lock_delay = LOCK_DELAY;
    let mut a = GoLock::spawn(&client, a_opts);
    let held_a = take_held(&mut a, "a");
    assert_eq!(
        session_info(&consul, held_a.session())["LockDelay"],
        LOCK_DELAY.as_nanos() as u64
    );

    let mut b_opts = GoLockOptions::consul_lock(&prefix, "b");
    b_opts.lock_retry_time = Duration::from_millis(200);
    let mut b = GoLock::spawn(&client, b_opts);
    wait_until(DEADLINE, "b to block on a's lock", || {
        b.progress().index_waits >= 1
    });

    let destroyed_at = monotonic_ns();
    consul.destroy_session(held_a.session());
    assert!(held_a.wait_lost(DEADLINE), "a never saw its lock go");

    // The key is free (release behavior) but under a's lock-delay: b's acquire is refused,
    // b re-reads, finds no holder and sleeps its retry time until the delay is over.
    let held_b = take_held(&mut b, "b");
    assert!(
        held_b.acquired_ns() >= destroyed_at + LOCK_DELAY.as_nanos(),
        "b acquired inside the lock-delay"
    );
    let progress = b.progress();
    assert!(progress.refusals >= 1, "{progress:?}");
    assert!(progress.retry_sleeps >= 1, "{progress:?}");

    // A releases after the loss: `false` is no error, and the cleanup finds b holding.
    let released_a = release(held_a, "a");
    assert_eq!(released_a.unlock, Ok(()));
    assert_eq!(released_a.cleanup, Err(GoError::LockInUse));
    assert!(released_a.lost_ns.is_some());
    assert_eq!(consul.holder(&key).as_deref(), Some(held_b.session()));

    let released_b = release(held_b, "b");
    assert_eq!((released_b.unlock, released_b.cleanup), (Ok(()), Ok(())));
    assert!(entry(&consul, &key).is_none());
}

#[test]
fn go_lock_refused_acquire_blocks_on_the_new_holder() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("golock-race");

    // Just before a's first acquire, c takes the lock: a's acquire is refused, a re-reads,
    // sees c holding and long-polls instead of sleeping.
    let slot: Arc<Mutex<Option<Held>>> = Arc::default();
    let (hook_slot, hook_client, hook_prefix) = (slot.clone(), client.clone(), prefix.clone());
    let mut a_opts = GoLockOptions::consul_lock(&prefix, "a");
    a_opts.before_acquire = Some(Arc::new(move |attempt| {
        if attempt == 1 {
            let mut c = GoLock::spawn(&hook_client, GoLockOptions::consul_lock(&hook_prefix, "c"));
            *hook_slot.lock().unwrap() = Some(take_held(&mut c, "c"));
        }
    }));
    let mut a = GoLock::spawn(&client, a_opts);
    wait_until(DEADLINE, "a to be refused and block on c", || {
        let progress = a.progress();
        progress.refusals == 1 && progress.index_waits >= 1
    });
    assert!(a.try_take().is_none(), "a acquired while c holds");

    let held_c = slot.lock().unwrap().take().expect("c holds");
    let released_c = release(held_c, "c");
    let held_a = take_held(&mut a, "a");
    assert!(released_c.released_ns < held_a.acquired_ns());
    assert_eq!(
        a.progress().retry_sleeps,
        0,
        "a slept instead of long-polling"
    );
    let released_a = release(held_a, "a");
    assert_eq!((released_a.unlock, released_a.cleanup), (Ok(()), Ok(())));
}

#[test]
fn go_semaphore_never_exceeds_its_limit_and_fills_it() {
    const LIMIT: usize = 3;
    const CONTENDERS: usize = 8;
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("gosem");

    let mut waiting: Vec<Contender> = (0..CONTENDERS)
        .map(|i| {
            let opts = GoSemaphoreOptions::consul_lock(&prefix, LIMIT as i64, &format!("job {i}"));
            GoSemaphore::spawn(&client, opts)
        })
        .collect();
    let mut holding: VecDeque<Held> = VecDeque::new();
    let mut released: Vec<Released> = Vec::new();
    let mut peak = 0;
    // Each round: wait until every free slot is taken, check who holds, release the oldest.
    while !waiting.is_empty() || !holding.is_empty() {
        let target = LIMIT.min(waiting.len() + holding.len());
        wait_until(DEADLINE, "the free slots to be taken", || {
            let mut i = 0;
            while i < waiting.len() {
                match waiting[i].try_take() {
                    Some(outcome) => {
                        holding.push_back(outcome.unwrap_or_else(|e| panic!("contender: {e}")));
                        waiting.swap_remove(i);
                    }
                    None => i += 1,
                }
            }
            assert!(holding.len() <= LIMIT, "{} holders", holding.len());
            holding.len() == target
        });
        peak = peak.max(holding.len());
        let ours: BTreeSet<String> = holding.iter().map(|h| h.session().to_string()).collect();
        assert_eq!(holders(&consul, &prefix), ours, ".lock names the holders");
        let oldest = holding.pop_front().expect("a holder");
        assert!(!oldest.is_lost());
        released.push(release(oldest, "a holder"));
    }

    assert_eq!(peak, LIMIT);
    let intervals: Vec<(u128, u128)> = released.iter().map(Released::interval).collect();
    assert_eq!(max_overlap(&intervals), LIMIT, "stamped critical sections");
    for r in &released {
        assert_eq!(r.unlock, Ok(()));
        assert!(
            matches!(r.cleanup, Ok(()) | Err(GoError::SemaphoreInUse)),
            "cleanup: {:?}",
            r.cleanup
        );
        assert!(r.lost_ns.is_none());
        assert!(r.session_destroyed && session_gone(&consul, &r.session));
    }
    assert_eq!(released.last().map(|r| r.cleanup.clone()), Some(Ok(())));
    assert!(prefix_empty(&consul, &prefix), "keys left under {prefix}");
}

#[test]
fn go_semaphore_slot_of_a_destroyed_session_comes_back() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("gosem-destroy");
    let spawn = |child: &str| {
        GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, child))
    };

    let held_a = take_held(&mut spawn("a"), "a");
    let held_b = take_held(&mut spawn("b"), "b");
    let mut c = spawn("c");
    wait_until(DEADLINE, "c to wait for a slot", || {
        c.progress().index_waits >= 1
    });
    assert!(c.try_take().is_none(), "c got a third slot of two");

    // A's session dies: its contender key goes with it (behavior delete), so a's monitor
    // prunes a and reports the loss, and c prunes a and takes the slot.
    consul.destroy_session(held_a.session());
    assert!(held_a.wait_lost(DEADLINE), "a never saw its slot go");
    let contender_a = format!("{prefix}/{}", held_a.session());
    assert!(entry(&consul, &contender_a).is_none());
    let held_c = take_held(&mut c, "c");
    let expected: BTreeSet<String> = [held_b.session(), held_c.session()]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(holders(&consul, &prefix), expected, "c's CAS drops dead a");
    assert!(!held_b.is_lost());

    // A releases after the loss: it is no longer in `.lock`, its key is already gone.
    let released_a = release(held_a, "a");
    assert_eq!(released_a.unlock, Ok(()));
    assert_eq!(released_a.cleanup, Err(GoError::SemaphoreInUse));
    assert_eq!(holders(&consul, &prefix), expected);

    let released_b = release(held_b, "b");
    assert_eq!(released_b.cleanup, Err(GoError::SemaphoreInUse));
    let released_c = release(held_c, "c");
    assert_eq!((released_c.unlock, released_c.cleanup), (Ok(()), Ok(())));
    assert!(prefix_empty(&consul, &prefix));
}

#[test]
fn go_semaphore_refuses_a_different_limit() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("gosem-limit");

    let mut a = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 3, "a"));
    let held_a = take_held(&mut a, "a");
    let before = entry(&consul, &format!("{prefix}/.lock")).expect(".lock");

    let mut b = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, "b"));
    let error = b.wait(DEADLINE).err().expect("b is refused");
    assert_eq!(
        error.to_string(),
        "semaphore limit conflict (lock: 3, local: 2)"
    );
    // B had made its contender key; giving up destroyed its session, which deleted the key.
    let b_session = b.progress().session.expect("b's session");
    assert!(session_gone(&consul, &b_session));
    assert!(entry(&consul, &format!("{prefix}/{b_session}")).is_none());

    assert_eq!(entry(&consul, &format!("{prefix}/.lock")), Some(before));
    assert!(!held_a.is_lost());
    let released_a = release(held_a, "a");
    assert_eq!((released_a.unlock, released_a.cleanup), (Ok(()), Ok(())));
    assert!(prefix_empty(&consul, &prefix));
}

#[test]
fn go_recipes_refuse_a_lock_key_with_foreign_flags() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("go-foreign");
    let key = format!("{prefix}/.lock");
    let put = consul.put(&format!("/v1/kv/{key}?flags=42"), b"not a lock");
    assert_eq!(put.text(), "true");
    let before = entry(&consul, &key).expect("the foreign key");

    let mut lock = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "l"));
    let error = lock.wait(DEADLINE).err().expect("the lock is refused");
    assert_eq!(error, GoError::LockConflict);
    assert_eq!(error.to_string(), "Existing key does not match lock use");

    let mut semaphore =
        GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, "s"));
    let error = semaphore
        .wait(DEADLINE)
        .err()
        .expect("the semaphore is refused");
    assert_eq!(error, GoError::SemaphoreConflict);
    assert_eq!(
        error.to_string(),
        "Existing key does not match semaphore use"
    );

    assert_eq!(
        entry(&consul, &key),
        Some(before),
        "the foreign key was touched"
    );
    let keys = consul.get(&format!("/v1/kv/{prefix}?keys")).json();
    assert_eq!(keys, serde_json::json!([key]), "contender keys left behind");
}

#[test]
fn go_lock_and_go_semaphore_on_one_prefix_conflict_through_flags() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("go-mixed");

    // `consul lock PREFIX` holds: `consul lock -n 2 PREFIX` is refused.
    let mut lock = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "l"));
    let held_lock = take_held(&mut lock, "the lock");
    let mut semaphore =
        GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, "s"));
    assert_eq!(
        semaphore.wait(DEADLINE).err(),
        Some(GoError::SemaphoreConflict)
    );
    assert!(!held_lock.is_lost());
    let released = release(held_lock, "the lock");
    assert_eq!((released.unlock, released.cleanup), (Ok(()), Ok(())));
    assert!(prefix_empty(&consul, &prefix));

    // `consul lock -n 2 PREFIX` holds: `consul lock PREFIX` is refused.
    let mut semaphore =
        GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, "s"));
    let held_slot = take_held(&mut semaphore, "the semaphore");
    let mut lock = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "l"));
    assert_eq!(lock.wait(DEADLINE).err(), Some(GoError::LockConflict));
    assert!(!held_slot.is_lost());
    let released = release(held_slot, "the semaphore");
    assert_eq!((released.unlock, released.cleanup), (Ok(()), Ok(())));
    assert!(prefix_empty(&consul, &prefix));
}

#[test]
fn go_semaphore_retries_a_lost_cas_race() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("gosem-cas");

    // Between a's read (no `.lock` yet) and its CAS with cas=0, b creates `.lock`.
    let slot: Arc<Mutex<Option<Held>>> = Arc::default();
    let (hook_slot, hook_client, hook_prefix) = (slot.clone(), client.clone(), prefix.clone());
    let mut a_opts = GoSemaphoreOptions::consul_lock(&prefix, 2, "a");
    a_opts.before_cas = Some(Arc::new(move |attempt| {
        if attempt == 1 {
            let mut b = GoSemaphore::spawn(
                &hook_client,
                GoSemaphoreOptions::consul_lock(&hook_prefix, 2, "b"),
            );
            *hook_slot.lock().unwrap() = Some(take_held(&mut b, "b"));
        }
    }));
    let mut a = GoSemaphore::spawn(&client, a_opts);
    let held_a = take_held(&mut a, "a");
    assert_eq!(a.progress().cas_failures, 1, "{:?}", a.progress());
    let held_b = slot.lock().unwrap().take().expect("b holds");
    let expected: BTreeSet<String> = [held_a.session(), held_b.session()]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(holders(&consul, &prefix), expected);

    release(held_b, "b");
    let released_a = release(held_a, "a");
    assert_eq!((released_a.unlock, released_a.cleanup), (Ok(()), Ok(())));
    assert!(prefix_empty(&consul, &prefix));
}

#[test]
fn go_semaphore_holders_lose_their_slots_when_the_lock_key_vanishes() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("gosem-vanish");
    let spawn = |child: &str| {
        GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 2, child))
    };
    let held_a = take_held(&mut spawn("a"), "a");
    let held_b = take_held(&mut spawn("b"), "b");

    // Go's monitor decodes a missing `.lock` as an empty one: nobody holds any more.
    assert_eq!(
        consul.delete(&format!("/v1/kv/{prefix}/.lock")).text(),
        "true"
    );
    assert!(held_a.wait_lost(DEADLINE), "a kept its slot");
    assert!(held_b.wait_lost(DEADLINE), "b kept its slot");

    // A newcomer recreates `.lock` (cas=0) with itself alone, though a's and b's keys remain.
    let held_c = take_held(&mut spawn("c"), "c");
    let only_c: BTreeSet<String> = [held_c.session().to_string()].into();
    assert_eq!(holders(&consul, &prefix), only_c);
    assert!(entry(&consul, &format!("{prefix}/{}", held_a.session())).is_some());

    for (held, who) in [(held_a, "a"), (held_b, "b")] {
        let released = release(held, who);
        assert_eq!(released.unlock, Ok(()));
        assert_eq!(released.cleanup, Err(GoError::SemaphoreInUse));
    }
    assert_eq!(holders(&consul, &prefix), only_c);
    let released_c = release(held_c, "c");
    assert_eq!((released_c.unlock, released_c.cleanup), (Ok(()), Ok(())));
    assert!(prefix_empty(&consul, &prefix));
}

/// Splits a recorded wire log into the acquiring/releasing thread's requests, the monitor's
/// (`?consistent`) and the renew thread's (`/v1/session/renew|destroy`), whose order relative
/// to the others is up to the scheduler.
fn split_wire(wire: Vec<WireRequest>) -> (Vec<WireRequest>, Vec<WireRequest>, Vec<WireRequest>) {
    let mut main = Vec::new();
    let mut monitor = Vec::new();
    let mut renew = Vec::new();
    for request in wire {
        if request.path_and_query.contains("consistent=") {
            monitor.push(request);
        } else if request.path_and_query.starts_with("/v1/session/renew/")
            || request.path_and_query.starts_with("/v1/session/destroy/")
        {
            renew.push(request);
        } else {
            main.push(request);
        }
    }
    (main, monitor, renew)
}

fn wire(method: &str, path_and_query: &str, body: &str) -> WireRequest {
    WireRequest {
        method: method.to_string(),
        path_and_query: path_and_query.to_string(),
        body: body.to_string(),
    }
}

/// The wire of a monitor that read once and then blocked once until the release.
fn assert_monitor(monitor: &[WireRequest], first: &str, blocking_prefix: &str) {
    assert_eq!(monitor.len(), 2, "{monitor:#?}");
    assert_eq!(monitor[0], wire("GET", first, ""));
    assert!(
        monitor[1].path_and_query.starts_with(blocking_prefix),
        "{monitor:#?}"
    );
}

/// Waits until the monitor's blocking read is out, so that it sees the release (a handshake
/// on the recorded wire instead of a sleep).
fn wait_for_blocking_monitor(client: &GoClient) {
    wait_until(DEADLINE, "the monitor's blocking read", || {
        client
            .wire()
            .iter()
            .any(|r| r.path_and_query.contains("consistent=&index="))
    });
}

/// A `DELETE KEY?cas=N` with N past `after` (the index of the write the cleanup read).
fn assert_cas_delete(request: &WireRequest, key: &str, after: u64) {
    let prefix = format!("/v1/kv/{key}?cas=");
    let index: u64 = request
        .path_and_query
        .strip_prefix(&prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a CAS delete of {key}: {request:?}"));
    assert_eq!(
        (request.method.as_str(), request.body.as_str()),
        ("DELETE", "")
    );
    assert!(index > after, "{request:?}");
}

#[test]
fn go_recipe_requests_keys_and_values_are_gos() {
    let consul = TestConsul::start();
    let prefix = consul.unique_key("go-wire");
    let key = format!("{prefix}/.lock");
    let name = format!("Consul lock for 'sh -c true' at '{prefix}'");

    // `consul lock PREFIX sh -c true`.
    let client = GoClient::new(&consul).recording();
    let mut lock = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "sh -c true"));
    let held = take_held(&mut lock, "the lock");
    let sid = held.session().to_string();
    let stored = entry(&consul, &key).expect("the lock key");
    assert_eq!(stored["Flags"].as_u64(), Some(LOCK_FLAG_VALUE));
    assert_eq!(stored["Value"], Value::Null);
    assert_eq!(stored["Session"], sid.as_str());
    assert_eq!(stored["LockIndex"], 1);
    let session = session_info(&consul, &sid);
    assert_eq!(session["Name"], name.as_str());
    assert_eq!(session["Behavior"], "release");
    assert_eq!(session["TTL"], "15s");
    assert_eq!(session["LockDelay"], 15_000_000_000u64);
    assert_eq!(session["NodeChecks"], serde_json::json!(["serfHealth"]));
    wait_for_blocking_monitor(&client);
    let released = release(held, "the lock");
    let modify_index = stored["ModifyIndex"].as_u64().unwrap();
    let (mut main, monitor, renew) = split_wire(client.wire());
    let flags = format!("flags={LOCK_FLAG_VALUE}");
    // The cleanup's CAS index is the release's write: whatever index the server gave it.
    let cleanup = main.pop().expect("the cleanup's delete");
    assert_cas_delete(&cleanup, &key, modify_index);
    assert_eq!(
        main,
        vec![
            wire(
                "PUT",
                "/v1/session/create",
                &format!("{{\"Name\":\"{name}\",\"TTL\":\"15s\"}}\n")
            ),
            wire("GET", &format!("/v1/kv/{key}?wait=15000ms"), ""),
            wire("PUT", &format!("/v1/kv/{key}?acquire={sid}&{flags}"), ""),
            wire("PUT", &format!("/v1/kv/{key}?{flags}&release={sid}"), ""),
            wire("GET", &format!("/v1/kv/{key}"), ""),
        ]
    );
    assert_monitor(
        &monitor,
        &format!("/v1/kv/{key}?consistent="),
        &format!("/v1/kv/{key}?consistent=&index={modify_index}"),
    );
    assert_eq!(
        renew,
        vec![wire("PUT", &format!("/v1/session/destroy/{sid}"), "")]
    );
    assert_eq!((released.unlock, released.cleanup), (Ok(()), Ok(())));

    // `consul lock -n 2 PREFIX sh -c true`.
    let client = GoClient::new(&consul).recording();
    let mut semaphore = GoSemaphore::spawn(
        &client,
        GoSemaphoreOptions::consul_lock(&prefix, 2, "sh -c true"),
    );
    let held = take_held(&mut semaphore, "the semaphore");
    let sid = held.session().to_string();
    let contender_key = format!("{prefix}/{sid}");
    let contender = entry(&consul, &contender_key).expect("the contender key");
    assert_eq!(contender["Flags"].as_u64(), Some(SEMAPHORE_FLAG_VALUE));
    assert_eq!(contender["Value"], Value::Null);
    assert_eq!(contender["Session"], sid.as_str());
    let lock_entry = entry(&consul, &key).expect(".lock");
    let holding = format!("{{\"Limit\":2,\"Holders\":{{\"{sid}\":true}}}}");
    assert_eq!(lock_entry["Flags"].as_u64(), Some(SEMAPHORE_FLAG_VALUE));
    assert_eq!(value_text(&lock_entry).as_deref(), Some(holding.as_str()));
    assert_eq!(
        lock_entry["Session"].as_str().unwrap_or(""),
        "",
        ".lock has no session"
    );
    let session = session_info(&consul, &sid);
    assert_eq!(session["Name"], name.as_str());
    assert_eq!(session["Behavior"], "delete");
    assert_eq!(session["TTL"], "15s");
    assert_eq!(session["LockDelay"], 15_000_000_000u64);
    wait_for_blocking_monitor(&client);
    let released = release(held, "the semaphore");
    let lock_index = lock_entry["ModifyIndex"].as_u64().unwrap();
    let (mut main, monitor, renew) = split_wire(client.wire());
    let flags = format!("flags={SEMAPHORE_FLAG_VALUE}");
    let cleanup = main.pop().expect("the cleanup's delete");
    assert_cas_delete(&cleanup, &key, lock_index);
    assert_eq!(
        main,
        vec![
            wire(
                "PUT",
                "/v1/session/create",
                &format!("{{\"Behavior\":\"delete\",\"Name\":\"{name}\",\"TTL\":\"15s\"}}\n")
            ),
            wire(
                "PUT",
                &format!("/v1/kv/{contender_key}?acquire={sid}&{flags}"),
                ""
            ),
            wire("GET", &format!("/v1/kv/{prefix}?recurse=&wait=15000ms"), ""),
            wire("PUT", &format!("/v1/kv/{key}?cas=0&{flags}"), &holding),
            wire("GET", &format!("/v1/kv/{key}"), ""),
            wire(
                "PUT",
                &format!("/v1/kv/{key}?cas={lock_index}&{flags}"),
                "{\"Limit\":2,\"Holders\":{}}"
            ),
            wire("DELETE", &format!("/v1/kv/{contender_key}"), ""),
            wire("GET", &format!("/v1/kv/{prefix}?recurse="), ""),
        ]
    );
    assert_monitor(
        &monitor,
        &format!("/v1/kv/{prefix}?consistent=&recurse="),
        &format!("/v1/kv/{prefix}?consistent=&index={lock_index}&recurse="),
    );
    assert_eq!(
        renew,
        vec![wire("PUT", &format!("/v1/session/destroy/{sid}"), "")]
    );
    assert_eq!((released.unlock, released.cleanup), (Ok(()), Ok(())));
    assert!(prefix_empty(&consul, &prefix));
}
