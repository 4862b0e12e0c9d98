//! Mutual-exclusion torture test: N contenders (default 10, `CONSULLOCK_TORTURE_CONTENDERS`) run
//! `consullock execute` in a loop on one key while faults are injected at random:
//!
//! - `kill9`: SIGKILL of the holder's supervisor (its command dies with it through PDEATHSIG;
//!   its session stays until the TTL runs out);
//! - `destroy`: the holder's session destroyed over HTTP, as an operator would;
//! - `blackhole`: a partition longer than the TTL. Every contender reaches the dev server
//!   through its own [`Proxy`]; the holder's proxy and a random half of the others swallow
//!   everything (requests hang, nothing comes back) while the rest still reach the server.
//!   The dev server ends a session 2×TTL after its last renew and then applies the lock-delay,
//!   so the others get the lock only once the partition has healed: what this checks is that
//!   the isolated holder stops in time and that everyone recovers from the dead connections;
//! - `pause`: the dev server stopped with SIGSTOP for longer than the TTL, then SIGCONT;
//! - `cut`: every live connection of every contender reset at once (blocking queries, renews,
//!   monitors), as when a load balancer or NAT in front of Consul drops its connections.
//!
//! Each command writes its start and end on CLOCK_MONOTONIC (`examples/monotonic.rs`), which
//! every process on the machine shares. The test asserts that no two critical sections overlap,
//! that every contender held the lock at least once, and that at the end no session remains but
//! those of killed supervisors, which expire within 2×TTL. It prints one summary line.
//!
//! Fault kinds come in shuffled rounds with 2–5 s of calm between faults; after the injection
//! phase, a calm phase of at most 30 s lets every contender have its turn.
//! It runs for 40 s of fault injection by default; `CONSULLOCK_SOAK_SECS` runs it longer.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::proxy::{Mode, Proxy};
use crate::support::{TestConsul, wait_until};

/// Session TTL of the contenders: Consul's minimum.
const TTL_SECS: u64 = 10;
/// Lock-delay and kill grace: the contact window is lock-delay − grace − 1 s = 3 s.
const LOCK_DELAY_SECS: u64 = 5;
const KILL_GRACE_SECS: u64 = 1;
/// Blackholes and pauses last longer than the TTL.
const OUTAGE: Duration = Duration::from_secs(TTL_SECS + 1);
/// Default length of the fault-injection phase.
const DEFAULT_SECS: u64 = 40;
/// Longest calm phase after it, in which every contender must get the lock.
const CALM_PHASE: Duration = Duration::from_secs(30);

fn monotonic_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime");
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

/// The `monotonic` example binary, built on demand when `cargo test` was limited to this test
/// binary (examples are only built by a plain `cargo test`).
fn monotonic_helper() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_consullock"));
    let path = bin.parent().unwrap().join("examples").join("monotonic");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "monotonic"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example monotonic");
        assert!(status.success(), "building the monotonic helper failed");
    }
    path
}

/// A tiny xorshift generator: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// run id → monotonic ns when the test saw that run's supervisor end (or killed it).
    ended: Mutex<HashMap<u64, u128>>,
    /// run id → monotonic ns just before that run's supervisor was spawned.
    spawned: Mutex<HashMap<u64, u128>>,
    /// Supervisors currently running: pid → run id.
    running: Mutex<HashMap<u32, u64>>,
    /// Pids killed with SIGKILL.
    killed: Mutex<Vec<u32>>,
    exits: Mutex<BTreeMap<i32, u64>>,
    runs: AtomicU64,
}

fn contender(
    consul: &TestConsul,
    addr: &str,
    shared: &Shared,
    index: u64,
    key: &str,
    script: &str,
    log: &std::path::Path,
) {
    let mut n = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let run_id = index * 1_000_000 + n;
        shared
            .spawned
            .lock()
            .unwrap()
            .insert(run_id, monotonic_ns());
        let mut child: Child = consul
            .command()
            .env("CONSUL_HTTP_ADDR", format!("http://{addr}"))
            .args([
                "execute",
                "--session-ttl",
                &TTL_SECS.to_string(),
                "--lock-delay",
                &LOCK_DELAY_SECS.to_string(),
                "--kill-grace",
                &KILL_GRACE_SECS.to_string(),
                "--timeout",
                "30",
                key,
                "--",
                "sh",
                "-c",
                script,
            ])
            .env("RUN_ID", run_id.to_string())
            .env("TORTURE_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn execute");
        shared.running.lock().unwrap().insert(child.id(), run_id);
        let status = child.wait().expect("wait execute");
        shared.running.lock().unwrap().remove(&child.id());
        shared
            .ended
            .lock()
            .unwrap()
            .entry(run_id)
            .or_insert_with(monotonic_ns);
        let code = status.code().unwrap_or(-1);
        *shared.exits.lock().unwrap().entry(code).or_default() += 1;
        shared.runs.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pid in a consullock session name: `consullock KEY on HOST (pid N)`.
fn session_pid(session: &serde_json::Value) -> Option<u32> {
    let name = session["Name"].as_str()?;
    let start = name.rfind("(pid ")? + 5;
    name[start..].trim_end_matches(')').parse().ok()
}

/// The supervisor holding `key` now, if the test started it: its pid and run id.
fn holder_run(consul: &TestConsul, shared: &Shared, key: &str) -> Option<(u32, u64)> {
    let session = consul.holder(key)?;
    let info = consul.get(&format!("/v1/session/info/{session}")).json();
    let pid = info[0].as_object().and(session_pid(&info[0]))?;
    let run = shared.running.lock().unwrap().get(&pid).copied()?;
    Some((pid, run))
}

/// The contenders that have started a critical section so far.
fn held_by(log: &std::path::Path) -> std::collections::HashSet<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("S "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|run| run / 1_000_000)
        .collect()
}

struct Interval {
    run: u64,
    start: u128,
    end: u128,
}

#[test]
fn torture_mutual_exclusion_under_faults() {
    let soak = std::env::var("CONSULLOCK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let contenders: u64 = std::env::var("CONSULLOCK_TORTURE_CONTENDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let monotonic = monotonic_helper();
    let consul = Arc::new(TestConsul::start_dev_server(&[]));
    let key = consul.unique_key("torture");
    let log = std::env::temp_dir().join(format!("consullock-torture-{}.log", std::process::id()));
    std::fs::File::create(&log).unwrap();
    let mono = monotonic.to_str().unwrap();
    // Start, then a short critical section; a SIGTERM (lock lost) records the end before dying.
    let script = format!(
        r#"echo "S $RUN_ID $({mono})" >> "$TORTURE_LOG"
trap 'echo "E $RUN_ID $({mono})" >> "$TORTURE_LOG"; exit 143' TERM
sleep 0.2 & wait $!
echo "E $RUN_ID $({mono})" >> "$TORTURE_LOG""#
    );
    let seed = std::env::var("CONSULLOCK_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (monotonic_ns() as u64) | 1);
    let shared = Arc::new(Shared::default());
    // One proxy per contender, not one for all: a partition cuts some clients off from the
    // server while others still reach it, and that is what threatens mutual exclusion (the
    // isolated holder must stop its command before the others can be granted the lock). One
    // shared proxy could only cut everyone off at once, which is the `pause` fault again.
    let proxies: Vec<Proxy> = (0..contenders)
        .map(|_| Proxy::start(&consul.addr()))
        .collect();
    let mut threads = Vec::new();
    for index in 1..=contenders {
        let (consul, addr, shared, key, script, log) = (
            consul.clone(),
            proxies[index as usize - 1].addr(),
            shared.clone(),
            key.clone(),
            script.clone(),
            log.clone(),
        );
        threads.push(std::thread::spawn(move || {
            contender(&consul, &addr, &shared, index, &key, &script, &log)
        }));
    }

    // Fault injection.
    let mut rng = Rng(seed);
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut connections_cut = 0;
    let mut last_kill: Option<Instant> = None;
    let mut last_outage: Option<Instant> = None;
    let server_pid = consul.pid().expect("a private dev server") as i32;
    let started = Instant::now();
    // Kinds come in shuffled rounds, so even a short run injects each of them. The first round
    // starts with the kill: kills are only allowed early (see below). A kind that finds nothing
    // to hit (no holder yet) goes back to the round and is tried again after the next calm.
    let mut round: Vec<u64> = Vec::new();
    let mut first_round = true;
    while started.elapsed() < Duration::from_secs(soak) {
        // Calm between faults, so handoffs happen and contenders make progress.
        std::thread::sleep(Duration::from_millis(2_000 + rng.below(3_000)));
        if round.is_empty() {
            round = vec![0, 1, 2, 3, 4];
            for i in (1..round.len()).rev() {
                round.swap(i, rng.below(i as u64 + 1) as usize);
            }
            if first_round {
                round.retain(|&k| k != 0);
                round.push(0);
                first_round = false;
            }
        }
        let kind = round.pop().unwrap_or(0);
        match kind {
            0 => {
                // At most one kill per 2×TTL + lock-delay, so the lock is not orphaned all the
                // time and contenders make progress.
                // None near the end either, so the last runs need not wait for an orphan.
                let orphan = Duration::from_secs(2 * TTL_SECS + LOCK_DELAY_SECS);
                if last_kill.is_some_and(|t| t.elapsed() < orphan)
                    || started.elapsed() + orphan > Duration::from_secs(soak)
                {
                    continue;
                }
                let Some((pid, run)) = holder_run(&consul, &shared, &key) else {
                    round.push(kind);
                    continue;
                };
                // SAFETY: kill(2) on a supervisor this test spawned and has not reaped (its
                // contender thread reaps it).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                shared.ended.lock().unwrap().insert(run, monotonic_ns());
                shared.killed.lock().unwrap().push(pid);
                last_kill = Some(Instant::now());
                *faults.entry("kill9").or_default() += 1;
            }
            1 => {
                let Some(session) = consul.holder(&key) else {
                    round.push(kind);
                    continue;
                };
                consul.destroy_session(&session);
                *faults.entry("destroy").or_default() += 1;
            }
            2 => {
                // The holder (when the test knows it) and about half the others.
                let holder = holder_run(&consul, &shared, &key).map(|(_, run)| run / 1_000_000);
                let isolated: Vec<&Proxy> = (1..=contenders)
                    .filter(|&c| Some(c) == holder || rng.below(2) == 0)
                    .map(|c| &proxies[c as usize - 1])
                    .collect();
                for proxy in &isolated {
                    proxy.set_mode(Mode::Blackhole);
                }
                std::thread::sleep(OUTAGE);
                for proxy in &isolated {
                    proxy.set_mode(Mode::Pass);
                }
                last_outage = Some(Instant::now());
                *faults.entry("blackhole").or_default() += 1;
            }
            3 => {
                // SAFETY: kill(2) on the dev server this test started.
                unsafe { libc::kill(server_pid, libc::SIGSTOP) };
                std::thread::sleep(OUTAGE);
                // SAFETY: as above.
                unsafe { libc::kill(server_pid, libc::SIGCONT) };
                last_outage = Some(Instant::now());
                *faults.entry("pause").or_default() += 1;
            }
            _ => {
                connections_cut += proxies.iter().map(Proxy::cut_all).sum::<usize>();
                // A cut can lose the answer to a session create or destroy: a session it strands
                // is accounted for like an outage's.
                last_outage = Some(Instant::now());
                *faults.entry("cut").or_default() += 1;
            }
        }
    }
    // A calm phase, bounded, so that every contender gets its turn after the last fault.
    let injection = started.elapsed();
    let calm_until = Instant::now() + CALM_PHASE;
    while Instant::now() < calm_until && held_by(&log).len() < contenders as usize {
        std::thread::sleep(Duration::from_millis(200));
    }
    shared.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("contender thread");
    }

    // Critical sections from the log; a section without an end line ended at the latest when
    // the test saw its supervisor end (or killed it).
    let text = std::fs::read_to_string(&log).unwrap();
    let spawned = shared.spawned.lock().unwrap().clone();
    let _ = std::fs::remove_file(&log);
    let mut starts: HashMap<u64, u128> = HashMap::new();
    let mut ends: HashMap<u64, u128> = HashMap::new();
    for line in text.lines() {
        // A line without a time: the group was being killed while the helper ran. Fall back
        // to bounds the test saw itself: the spawn (an earlier start) or the supervisor's end.
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (kind, run, t) = match parts[..] {
            [kind, run, t] => (kind, run.parse::<u64>().unwrap(), t.parse::<u128>().ok()),
            [kind, run] => (kind, run.parse::<u64>().unwrap(), None),
            _ => panic!("bad log line {line:?}"),
        };
        match (kind, t) {
            ("S", Some(t)) => {
                starts.insert(run, t);
            }
            ("S", None) => {
                starts.insert(run, spawned[&run]);
            }
            (_, Some(t)) => {
                ends.entry(run).or_insert(t);
            }
            (_, None) => {}
        }
    }
    let ended = shared.ended.lock().unwrap().clone();
    let mut intervals: Vec<Interval> = starts
        .iter()
        .map(|(&run, &start)| Interval {
            run,
            start,
            end: ends
                .get(&run)
                .or_else(|| ended.get(&run))
                .copied()
                .unwrap_or(u128::MAX),
        })
        .collect();
    intervals.sort_by_key(|i| i.start);
    let mut overlaps = Vec::new();
    let mut longest_handoff = 0u128;
    for pair in intervals.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.start < a.end {
            overlaps.push(format!(
                "run {} [{}, {}] overlaps run {} [{}, {}]",
                a.run, a.start, a.end, b.run, b.start, b.end
            ));
        } else {
            longest_handoff = longest_handoff.max(b.start - a.end);
        }
    }
    let holders: std::collections::HashSet<u64> =
        intervals.iter().map(|i| i.run / 1_000_000).collect();

    // Sessions left: only killed supervisors', and those expire within 2×TTL of the kill.
    // A supervisor that ends during an outage (or whose destroy is cut) cannot destroy its
    // session, and a create sent to a paused server may be served after the client gave up:
    // those are stranded until their TTL too, so they are allowed only after an outage or a
    // cut, and must expire the same way.
    let killed = shared.killed.lock().unwrap().clone();
    let mut stranded = 0;
    for session in consul.sessions() {
        if session_pid(&session).is_some_and(|p| killed.contains(&p)) {
            continue;
        }
        assert!(
            last_outage.is_some(),
            "a session of a supervisor that was not killed remains: {session}"
        );
        stranded += 1;
    }
    let last_kill = match (last_kill, last_outage) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let expiry_deadline = last_kill
        .map(|t| {
            (t + Duration::from_secs(2 * TTL_SECS + 2)).saturating_duration_since(Instant::now())
        })
        .unwrap_or_default();
    wait_until(
        expiry_deadline + Duration::from_millis(100),
        "killed supervisors' sessions to expire within 2×TTL",
        || consul.sessions().is_empty(),
    );

    let faults_text: Vec<String> = faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let exits: Vec<String> = shared
        .exits
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    let summary = format!(
        "torture: {} runs ({} held the lock) by {contenders} contenders in {:.0?} ({:.0?} of faults), seed {seed}; \
         faults {}; connections cut {connections_cut}; exits {}; sessions stranded by outages {stranded}; \
         overlaps {}; longest handoff {:.1?}",
        shared.runs.load(Ordering::Relaxed),
        intervals.len(),
        started.elapsed(),
        injection,
        if faults_text.is_empty() {
            "none".to_string()
        } else {
            faults_text.join(" ")
        },
        exits.join(" "),
        overlaps.len(),
        Duration::from_nanos(longest_handoff as u64),
    );
    crate::support::report(&summary);
    let _ = std::io::stdout().flush();
    assert!(overlaps.is_empty(), "{summary}\n{}", overlaps.join("\n"));
    let missing: Vec<u64> = (1..=contenders).filter(|c| !holders.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "contenders {missing:?} never held the lock: {summary}"
    );
}
