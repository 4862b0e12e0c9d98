//! `consullock status`: who holds a lock, in each layout (consullock's own, `consul lock`'s
//! `.lock`, a semaphore), a free key under a lock-delay, `-r`, the table, and that it never
//! writes.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::go_recipe::{
    GoClient, GoLock, GoLockOptions, GoSemaphore, GoSemaphoreOptions, consul_lock_session_name,
};
use crate::support::process::{Running, code, run};
use crate::support::{TestConsul, wait_until};

/// How long one step (an acquisition, a waiter joining the queue) may take.
const DEADLINE: Duration = Duration::from_secs(20);

fn consullock(consul: &TestConsul, args: &[&str]) -> Output {
    let mut command = consul.command();
    command.args(args);
    run(command)
}

fn stdout_json(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {output:?}"))
}

/// `consullock status ARGS`, which must succeed with one line of JSON.
fn status(consul: &TestConsul, args: &[&str]) -> Value {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    let output = consullock(consul, &all);
    assert_eq!(code(&output), 0, "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().count(),
        1,
        "one line: {output:?}"
    );
    stdout_json(&output)
}

/// `consullock lock ARGS`: the lock's JSON.
fn lock(consul: &TestConsul, args: &[&str]) -> Value {
    let mut all = vec!["lock"];
    all.extend_from_slice(args);
    let output = consullock(consul, &all);
    assert_eq!(code(&output), 0, "{output:?}");
    stdout_json(&output)
}

/// The dev server's count of write requests.
fn writes(consul: &TestConsul) -> u64 {
    consul.dev_stats().expect("a dev server")["writes"]
        .as_u64()
        .expect("writes")
}

#[test]
fn a_free_key_is_null_and_no_match_is_an_empty_list() {
    let consul = TestConsul::start();
    let key = consul.unique_key("free");
    assert_eq!(status(&consul, &[&key]), Value::Null);
    assert_eq!(status(&consul, &["-r", &format!("{key}.*")]), json!([]));
    // Someone else's data that nobody holds is no lock: nothing is held.
    assert_eq!(consul.put(&format!("/v1/kv/{key}"), b"config").status, 200);
    assert_eq!(status(&consul, &[&key]), Value::Null);
    assert_eq!(consul.key_entry(&key).unwrap()["Session"], Value::Null);
    consul.delete(&format!("/v1/kv/{key}"));

    let bad_regex = consullock(&consul, &["status", "-r", "a("]);
    assert_eq!(code(&bad_regex), 3, "{bad_regex:?}");
    let bad_key = consullock(&consul, &["status", "a//b"]);
    assert_eq!(code(&bad_key), 6, "{bad_key:?}");
}

#[test]
fn a_held_key_shows_its_holder_and_session() {
    let consul = TestConsul::start();
    let key = consul.unique_key("held");
    let held = lock(
        &consul,
        &[
            "--metadata",
            r#"{"owner":"tests"}"#,
            "--session-ttl",
            "600",
            "--lock-delay",
            "3",
            "--ttl-only",
            &key,
        ],
    );
    let session = held["session"].as_str().unwrap().to_string();

    let found = status(&consul, &[&key]);
    let expected = [
        ("key", json!(key)),
        ("layout", json!("consullock")),
        ("lockKey", json!(key)),
        ("held", json!(true)),
        ("session", json!(session)),
        ("hostname", held["hostname"].clone()),
        ("pid", held["pid"].clone()),
        ("created", held["created"].clone()),
        ("metadata", json!({"owner": "tests"})),
        ("ttl", json!(600.0)),
        ("lockDelay", json!(3.0)),
        ("behavior", json!("delete")),
        ("ttlOnly", json!(true)),
        ("node", json!(consul.node_name())),
        ("lockDelayInForce", Value::Null),
        ("waiting", json!(0)),
        ("limit", Value::Null),
        ("holders", Value::Null),
    ];
    for (field, value) in expected {
        assert_eq!(found[field], value, "{field} in {found}");
    }
    assert!(held["pid"].as_u64().is_some(), "{held}");
    assert!(
        found["sessionName"].as_str().unwrap().contains(&key),
        "{found}"
    );

    // A waiter in line (execute queues) is counted, and its entry is no lock of its own.
    let mut waiter = consul.command();
    waiter.args(["execute", &key, "--", "true"]);
    let _waiter = Running::start(waiter, false);
    let queue = format!("/v1/kv/{key}/.queue/?keys");
    wait_until(DEADLINE, "the waiter to join the queue", || {
        consul.get(&queue).status == 200
    });
    assert_eq!(status(&consul, &[&key])["waiting"], json!(1));
    let listed = status(&consul, &["-r", &format!("{key}.*")]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["waiting"], json!(1), "{listed}");

    // A default session: node checks, a TTL.
    let other = consul.unique_key("held-default");
    lock(&consul, &[&other]);
    let found = status(&consul, &[&other]);
    assert_eq!(
        (&found["ttlOnly"], &found["ttl"], &found["lockDelay"]),
        (&json!(false), &json!(86400.0), &json!(0.0)),
        "{found}"
    );
}

#[test]
fn a_free_key_under_a_lock_delay_says_so_until_it_passes() {
    let consul = TestConsul::start();
    let key = consul.unique_key("delayed");
    let held = lock(&consul, &["--lock-delay", "5", &key]);
    consul.destroy_session(held["session"].as_str().unwrap());
    // consullock's sessions delete their keys: the key is gone, the lock-delay stays.
    assert_eq!(consul.key_entry(&key), None);

    let found = status(&consul, &[&key]);
    let expected = [
        ("key", json!(key)),
        ("layout", json!("consullock")),
        ("lockKey", json!(key)),
        ("held", json!(false)),
        ("session", Value::Null),
        ("lockDelayInForce", json!(true)),
        ("waiting", json!(0)),
    ];
    for (field, value) in expected {
        assert_eq!(found[field], value, "{field} in {found}");
    }
    let table = consullock(&consul, &["status", "--table", &key]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("lock-delay in force"), "{text}");
    // The probe changed nothing.
    assert_eq!(consul.key_entry(&key), None);
    assert_eq!(consul.key_entry(&format!("{key}/.lock")), None);

    let started = Instant::now();
    loop {
        let now = status(&consul, &[&key]);
        if now == Value::Null {
            break;
        }
        assert_eq!(now["lockDelayInForce"], json!(true), "{now}");
        assert!(
            started.elapsed() < DEADLINE,
            "the lock-delay never passed: {now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(consul.key_entry(&key), None);
    // Free now: it can be taken at once.
    let taken = consullock(&consul, &["lock", "--non-blocking", &key]);
    assert_eq!(code(&taken), 0, "{taken:?}");
}

#[test]
fn a_consul_lock_held_by_the_go_recipe() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("golock");
    let mut contender = GoLock::spawn(&client, GoLockOptions::consul_lock(&prefix, "sh -c job"));
    let held = contender.wait(DEADLINE).expect("the Go lock is taken");

    let found = status(&consul, &[&prefix]);
    let expected = [
        ("key", json!(prefix)),
        ("layout", json!("consul-lock")),
        ("lockKey", json!(format!("{prefix}/.lock"))),
        ("held", json!(true)),
        ("session", json!(held.session())),
        (
            "sessionName",
            json!(consul_lock_session_name("sh -c job", &prefix)),
        ),
        ("node", json!(consul.node_name())),
        ("hostname", Value::Null),
        ("pid", Value::Null),
        ("created", Value::Null),
        ("ttl", json!(15.0)),
        ("lockDelay", json!(15.0)),
        ("behavior", json!("release")),
        ("ttlOnly", json!(false)),
        ("waiting", Value::Null),
    ];
    for (field, value) in expected {
        assert_eq!(found[field], value, "{field} in {found}");
    }
    // `-r` finds it by its prefix and by its `.lock` key, and so does `status PREFIX/.lock`.
    for pattern in [format!("{prefix}.*"), format!("{prefix}/\\.lock")] {
        let listed = status(&consul, &["-r", &pattern]);
        assert_eq!(listed, json!([found.clone()]), "{pattern}");
    }
    assert_eq!(status(&consul, &[&format!("{prefix}/.lock")]), found);

    // Invalidated, the key stays (behaviour release), free under the session's lock-delay.
    consul.destroy_session(held.session());
    let found = status(&consul, &[&prefix]);
    assert_eq!(
        (&found["layout"], &found["held"], &found["lockDelayInForce"]),
        (&json!("consul-lock"), &json!(false), &json!(true)),
        "{found}"
    );
    assert_eq!(
        consul.key_entry(&format!("{prefix}/.lock")).unwrap()["Session"],
        Value::Null
    );
    drop(held);
}

#[test]
fn a_semaphore_with_go_recipe_holders_live_and_dead() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let prefix = consul.unique_key("gosem");
    let mut a = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 3, "a"));
    let held_a = a.wait(DEADLINE).expect("a takes a slot");
    let mut b = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&prefix, 3, "b"));
    let held_b = b.wait(DEADLINE).expect("b takes a slot");

    let found = status(&consul, &[&prefix]);
    assert_eq!(found["layout"], json!("semaphore"), "{found}");
    assert_eq!(
        found["lockKey"],
        json!(format!("{prefix}/.lock")),
        "{found}"
    );
    assert_eq!(
        (
            &found["held"],
            &found["limit"],
            &found["waiting"],
            &found["session"]
        ),
        (&json!(true), &json!(3), &json!(0), &Value::Null),
        "{found}"
    );
    let holders = |found: &Value| -> Vec<(String, bool)> {
        found["holders"]
            .as_array()
            .expect("holders")
            .iter()
            .map(|h| {
                (
                    h["session"].as_str().unwrap().to_string(),
                    h["live"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let mut expected = vec![
        (held_a.session().to_string(), true),
        (held_b.session().to_string(), true),
    ];
    expected.sort();
    assert_eq!(holders(&found), expected);
    let first = &found["holders"][0];
    assert_eq!(
        (&first["ttl"], &first["behavior"], &first["node"]),
        (&json!(15.0), &json!("delete"), &json!(consul.node_name())),
        "{found}"
    );

    // `-r` reports the semaphore once, not each contender key.
    let listed = status(&consul, &["-r", &format!("{prefix}.*")]);
    assert_eq!(listed, json!([found]));

    // a's session ends: its key goes with it, `.lock` still names it until the next
    // acquisition; it is shown as dead and takes no slot.
    consul.destroy_session(held_a.session());
    let found = status(&consul, &[&prefix]);
    let mut expected = vec![
        (held_a.session().to_string(), false),
        (held_b.session().to_string(), true),
    ];
    expected.sort();
    assert_eq!(holders(&found), expected, "{found}");
    let dead = found["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["session"] == json!(held_a.session()))
        .unwrap();
    assert_eq!(dead["ttl"], Value::Null, "the dead session is gone: {dead}");
    let table = consullock(&consul, &["status", "--table", &prefix]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("dead"), "{text}");
    assert!(text.contains("semaphore 1/3"), "{text}");
    drop((held_a, held_b));
}

#[test]
fn regex_lists_every_layout_once() {
    let consul = TestConsul::start();
    let client = GoClient::new(&consul);
    let base = consul.unique_key("many");
    let key = |name: &str| format!("{base}/{name}");
    lock(&consul, &[&key("a")]);
    lock(&consul, &[&key("b")]);
    let mut go_lock = GoLock::spawn(&client, GoLockOptions::consul_lock(&key("c"), "c"));
    let _c = go_lock.wait(DEADLINE).expect("the Go lock");
    let mut one = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&key("d"), 2, "1"));
    let _d1 = one.wait(DEADLINE).expect("a slot");
    let mut two = GoSemaphore::spawn(&client, GoSemaphoreOptions::consul_lock(&key("d"), 2, "2"));
    let _d2 = two.wait(DEADLINE).expect("a slot");
    // Data nobody holds is left out; a key another program holds is reported as foreign.
    assert_eq!(
        consul.put(&format!("/v1/kv/{}", key("e")), b"x").status,
        200
    );
    let created = consul.put("/v1/session/create", br#"{"Name":"leader"}"#);
    let leader = created.json()["ID"].as_str().unwrap().to_string();
    let acquired = consul.put(&format!("/v1/kv/{}?acquire={leader}", key("f")), b"me");
    assert_eq!(acquired.text().trim(), "true");

    let listed = status(&consul, &["-r", &format!("{base}/.*")]);
    let summary: Vec<(&str, &str)> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|l| (l["key"].as_str().unwrap(), l["layout"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (key("a").as_str(), "consullock"),
            (key("b").as_str(), "consullock"),
            (key("c").as_str(), "consul-lock"),
            (key("d").as_str(), "semaphore"),
            (key("f").as_str(), "foreign"),
        ],
        "{listed}"
    );
    assert_eq!(listed[4]["session"], json!(leader));
    assert_eq!(listed[3]["holders"].as_array().map(Vec::len), Some(2));
    // Only the matches: a full match of the pattern, not a search.
    let only_a = status(&consul, &["-r", &format!("{base}/a")]);
    assert_eq!(only_a.as_array().map(Vec::len), Some(1), "{only_a}");
    assert_eq!(status(&consul, &["-r", &format!("{base}/z.*")]), json!([]));
    consul.destroy_session(&leader);
}

#[test]
fn status_never_writes() {
    let consul = TestConsul::start_dev_server(&[]);
    let key = consul.unique_key("reads");
    lock(&consul, &[&key]);
    let before = writes(&consul);
    assert_eq!(status(&consul, &[&key])["held"], json!(true));
    assert_eq!(writes(&consul), before, "status KEY on a held key wrote");
    let listed = status(&consul, &["-r", &format!("{key}.*")]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    // Also over free keys, which -r never probes.
    assert_eq!(
        status(&consul, &["-r", "consullock-test/.*"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(writes(&consul), before, "status -r wrote");
    // On a free key, the probe is the one write request, and it changes nothing.
    let free = consul.unique_key("free");
    let index = consul.get(&format!("/v1/kv/{key}")).index();
    assert_eq!(status(&consul, &[&free]), Value::Null);
    assert_eq!(writes(&consul), before + 1);
    assert_eq!(consul.get(&format!("/v1/kv/{key}")).index(), index);
    assert_eq!(consul.key_entry(&free), None);
}

#[test]
fn a_table_for_people() {
    let consul = TestConsul::start();
    let key = consul.unique_key("table");
    let held = lock(&consul, &["--metadata", r#""nightly""#, &key]);
    let session = held["session"].as_str().unwrap();

    let output = consullock(&consul, &["status", "--table", &key]);
    assert_eq!(code(&output), 0, "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and a row: {text}");
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("SESSION"),
        "{text}"
    );
    for part in [key.as_str(), session, "consullock", "held", "\"nightly\""] {
        assert!(lines[1].contains(part), "{part} missing: {text}");
    }
    let free = consullock(&consul, &["status", "--table", &consul.unique_key("none")]);
    assert!(String::from_utf8_lossy(&free.stdout).contains("not held"));
    let none = consullock(&consul, &["status", "--table", "-r", "nothing/.*"]);
    assert!(String::from_utf8_lossy(&none.stdout).starts_with("no held lock matches"));
    let both = consullock(&consul, &["status", "--table", "--json", &key]);
    assert_eq!(code(&both), 3, "{both:?}");

    // On a terminal (through script(1)) the table is the default; --json still gives JSON.
    if Command::new("script").arg("--version").output().is_err() {
        crate::support::skip(
            "a_table_for_people (terminal part)",
            "script(1) is not installed",
        );
        return;
    }
    let on_terminal = |args: &str| {
        let command = consul.command();
        let shell_command = format!(
            "{} status {args}",
            crate::support::consullock_bin().display()
        );
        let mut script = Command::new("script");
        script.args(["-qec", &shell_command, "/dev/null"]);
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => script.env(name, value),
                None => script.env_remove(name),
            };
        }
        let output = run(script);
        assert_eq!(code(&output), 0, "{output:?}");
        String::from_utf8_lossy(&output.stdout).replace('\r', "")
    };
    let text = on_terminal(&key);
    assert!(text.starts_with("KEY"), "{text:?}");
    assert!(text.contains(session) && text.contains(&key), "{text:?}");
    let text = on_terminal(&format!("--json {key}"));
    let json: Value = serde_json::from_str(text.trim()).expect("JSON on request");
    assert_eq!(json["session"], json!(session));
}

/// One KEY locked in both layouts: `status KEY` shows the lock on KEY itself, `status
/// KEY/.lock` the one on KEY/.lock.
#[test]
fn a_dot_lock_key_is_reported_as_asked() {
    let consul = TestConsul::start();
    let key = consul.unique_key("dual");
    lock(&consul, &[&key]);
    lock(&consul, &["--consul-lock", &key]);
    assert_eq!(status(&consul, &[&key])["layout"], json!("consullock"));
    let found = status(&consul, &[&format!("{key}/.lock")]);
    assert_eq!(
        (&found["layout"], &found["lockKey"]),
        (&json!("consul-lock"), &json!(format!("{key}/.lock")))
    );
    let output = consullock(&consul, &["unlock", "-r", &format!("{key}.*")]);
    assert_eq!(code(&output), 0, "{output:?}");
}
