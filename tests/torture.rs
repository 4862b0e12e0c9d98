//! Mutual-exclusion torture test: N contenders (default 10, `CONSULLOCK_TORTURE_CONTENDERS`) run
//! `consullock execute` in a loop on one key while faults are injected at random:
//!
//! - `kill9`: SIGKILL of the holder's supervisor (its keeper then kills the command's process
//!   group; its session stays until the TTL runs out);
//! - `destroy`: the holder's connections reset, then its session destroyed over HTTP, as an
//!   operator would;
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
//! Every fault but the cut aims at a holder whose command is running, and holds that command
//! in the middle of its work while the fault lasts (`$TORTURE_HOLD`): whatever would end it by
//! itself is postponed, so only consullock stopping it ends it in time.
//!
//! Two things make every run harder than a quiet one:
//!
//! - **stderr is a pipe that is rarely read.** Each contender's consullock (and so its command,
//!   which inherits it) writes to a pipe of which the test reads 4 KiB every 3 s, and nothing
//!   while a fault hits a holder. The commands write to stderr for as long as they run, some
//!   shells block writing to it, and some consullocks log at `-v` or `-vv`: the pipe is full
//!   whenever a fault hits (the summary says how often). A consullock whose lock-keeping or kill
//!   path waited on stderr would let its command run on after the lock is lost.
//! - **commands fork grandchildren** ([`FLAVOURS`]): workers the shell waits for, a grandchild
//!   that outlives its shell and ignores SIGTERM, a double-forked one still in the process group,
//!   a shell that ignores SIGTERM for itself and its children. A consullock that stopped only
//!   its direct child, or released the lock before the rest of the group was gone, lets them run
//!   on without the lock.
//!
//! Every process of a command that does work is `examples/heartbeat.rs`: it stamps its start and
//! then "alive" every 10 ms on CLOCK_MONOTONIC, which every process on the machine shares, so a
//! process killed with SIGKILL still leaves the last moment it ran. The shell itself is stood
//! for by a heartbeat that lives exactly as long as it does. A run's critical section is
//! [first stamp, last stamp] over all its processes, grandchildren included. The test asserts:
//!
//! - no two sections overlap;
//! - nothing of a run stamps after its supervisor exited (it releases the lock only once
//!   everything is gone), nor more than a moment after its supervisor was killed (the keeper);
//! - a holder whose lock a fault took away (destroy, blackhole, pause) stops within the
//!   lock-delay of the fault, before anyone else could be granted the lock;
//! - every contender held the lock at least once;
//! - at the end no session remains but those of killed supervisors, which expire within 2×TTL.
//!
//! It prints one summary line; a failure also lists the faults injected, when and on whom.
//!
//! Fault kinds come in rounds with 2–5 s of calm between faults (the first round in a fixed
//! order, see below); after the injection phase, a calm phase of at most 30 s lets every
//! contender have its turn. It runs for 40 s of fault injection by default (longer if the first
//! round needs it); `CONSULLOCK_SOAK_SECS` runs it longer. `CONSULLOCK_TEST_BIN` drives another
//! consullock build as the contenders.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::process::monotonic_ns;
use crate::support::proxy::{Mode, Proxy};
use crate::support::stamps::{heartbeat, parse_stamp};
use crate::support::{TestConsul, wait_until};

/// Session TTL of the contenders: Consul's minimum.
const TTL_SECS: u64 = 10;
/// Lock-delay and kill grace: the contact window is lock-delay − grace − 1 s = 3 s.
const LOCK_DELAY_SECS: u64 = 5;
const KILL_GRACE_SECS: u64 = 1;
/// Blackholes and pauses last longer than the TTL.
const OUTAGE: Duration = Duration::from_secs(TTL_SECS + 1);
/// How soon a fault that found no holder to hit is tried again.
const RETRY_FAULT: Duration = Duration::from_millis(250);
/// How long a fault other than the kill waits for a holder to hit; then it fires anyway (a
/// blackhole or pause then checks recovery only, a destroy hits a killed supervisor's session).
const FAULT_AIM: Duration = Duration::from_secs(2);
/// How much longer than its length the fault-injection phase may run so that every kind fires.
const FIRST_ROUND_EXTRA: Duration = Duration::from_secs(30);
/// Default length of the fault-injection phase.
const DEFAULT_SECS: u64 = 40;
/// Longest calm phase after it, in which every contender must get the lock.
const CALM_PHASE: Duration = Duration::from_secs(30);
/// How often each contender's stderr pipe is read (except while a fault hits a holder), and how
/// much is read then: far less than the commands and consullock write, so the pipe stays full.
const STDERR_READ_EVERY: Duration = Duration::from_secs(3);
const STDERR_READ_BYTES: usize = 4 * 1024;
/// How long after its supervisor was killed with SIGKILL a process of the command may still
/// stamp: the keeper kills the group as soon as the kernel closes its pipe, so this is
/// scheduling latency on a loaded machine, not a grace.
const AFTER_SUPERVISOR_KILL: Duration = Duration::from_secs(1);

/// What the contenders run, by contender: `sh -c SCRIPT` with `$HB` the heartbeat helper. Every
/// script starts a heartbeat that stands for the shell (`--while-parent`). All but `wait` leave a
/// grandchild that would run for a minute unless stopped ("bait"): only consullock stopping the
/// whole group keeps it out of the next holder's section, so a supervisor that stops less, or
/// releases the lock before the group is gone, shows as an overlap. Processes with `--stderr`
/// write to stderr for as long as they run (1 MiB is more than the pipe takes meanwhile).
const FLAVOURS: [(&str, &str); 6] = [
    // The command itself stamps (the shell execs it), with a grandchild it never waits for.
    (
        "exec",
        r#""$HB" sh 60000 --while-parent &
"$HB" bait 60000 &
exec "$HB" cmd 200 --stderr 1048576"#,
    ),
    // Two grandchildren the shell waits for; one cleans up for 300 ms after SIGTERM. Nothing
    // outlives the shell.
    (
        "wait",
        r#""$HB" sh 60000 --while-parent &
"$HB" worker 200 --stderr 1048576 & a=$!
"$HB" cleaner 150 --linger 300 & b=$!
wait $a $b"#,
    ),
    // A grandchild that outlives its shell and ignores SIGTERM: only SIGKILL after the grace
    // stops it.
    (
        "orphan",
        r#""$HB" sh 60000 --while-parent &
"$HB" bait 60000 --ignore-term --stderr 1048576 &
"$HB" work 100"#,
    ),
    // A shell that blocks writing to the full stderr, then a double-forked grandchild (its
    // parent exits at once; it stays in the process group) that outlives the shell and cleans
    // up for 200 ms after SIGTERM.
    (
        "double-fork",
        r#""$HB" sh 60000 --while-parent &
printf '%1023s\n' '' >&2
( "$HB" bait 60000 --linger 200 --stderr 1048576 & )
"$HB" work 100"#,
    ),
    // The shell and everything it starts ignore SIGTERM (inherited); it blocks on stderr too.
    (
        "ignore-term",
        r#"trap '' TERM
"$HB" sh 60000 --while-parent &
printf '%1023s\n' '' >&2
"$HB" bait 60000 &
"$HB" work 300 --stderr 1048576 & w=$!
wait $w"#,
    ),
    // A grandchild that would work for a minute and a shell that lasts 2 s: whatever takes the
    // lock away in those 2 s finds work that does not end by itself, and only consullock's kill
    // path stops it in time.
    (
        "long",
        r#""$HB" sh 60000 --while-parent &
"$HB" work 60000 --stderr 1048576 &
"$HB" lead 2000"#,
    ),
];

/// consullock's verbosity by contender: some log a lot into the full pipe.
fn verbosity(index: u64) -> &'static [&'static str] {
    match index % 3 {
        0 => &["-vv"],
        1 => &["-v"],
        _ => &[],
    }
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
    /// The calm phase: contenders that have held the lock stop contending.
    calm: AtomicBool,
    /// run id → monotonic ns when the test saw that run's supervisor end (or killed it).
    ended: Mutex<HashMap<u64, u128>>,
    /// Supervisors currently running: pid → run id.
    running: Mutex<HashMap<u32, u64>>,
    /// Pids and run ids of supervisors killed with SIGKILL.
    killed: Mutex<Vec<(u32, u64)>>,
    exits: Mutex<BTreeMap<i32, u64>>,
    runs: AtomicU64,
}

/// One contender's stderr: a pipe that the test reads a little of, rarely.
struct StderrPipe {
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
}

#[derive(Default)]
struct StderrStats {
    /// Reads done, and how many of them found the pipe full.
    reads: AtomicU64,
    full: AtomicU64,
    bytes_read: AtomicU64,
    /// Lines consullock said it dropped because stderr was not taking them.
    dropped_lines: AtomicU64,
}

impl StderrPipe {
    fn new() -> StderrPipe {
        let (reader, writer) = std::io::pipe().expect("pipe");
        // The read end only: the writers (consullock, its commands) keep blocking writes.
        // SAFETY: fcntl on a descriptor we own, with integer arguments.
        unsafe {
            let flags = libc::fcntl(reader.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        let pipe = StderrPipe { reader, writer };
        pipe.fill();
        pipe
    }

    /// Fills the pipe before anyone uses it, as a command that floods its stderr would: full
    /// from the first run on. O_NONBLOCK is set on the write end only for this, before any
    /// process shares it.
    fn fill(&self) {
        let fd = self.writer.as_raw_fd();
        let line = [b'.'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        // SAFETY: fcntl and write on a descriptor we own, from a valid buffer.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            while libc::write(fd, line.as_ptr().cast(), line.len()) > 0 {}
            libc::fcntl(fd, libc::F_SETFL, flags);
        }
        assert!(self.is_full(), "a filled pipe takes no more");
    }

    /// Bytes in the pipe not read yet.
    fn unread(&self) -> u64 {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into the valid, exclusively borrowed `n`.
        let rc = unsafe { libc::ioctl(self.reader.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc == 0 { n as u64 } else { 0 }
    }

    /// Whether a write would block: no free page in the pipe (what poll(2) says).
    fn is_full(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.writer.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd, valid and exclusively borrowed; no wait.
        let rc = unsafe { libc::poll(&mut fd, 1, 0) };
        rc == 0
    }
}

/// Reads `STDERR_READ_BYTES` from the pipe every `STDERR_READ_EVERY`, except while `paused`,
/// until `stop`; counts what consullock says it dropped.
fn read_rarely(pipe: &StderrPipe, stats: &StderrStats, paused: &AtomicBool, stop: &AtomicBool) {
    const NOTICE: &str = " log line(s) dropped while stderr was not being read";
    let mut buf = vec![0u8; STDERR_READ_BYTES];
    let mut partial: Vec<u8> = Vec::new();
    let mut next = Instant::now() + STDERR_READ_EVERY;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next += STDERR_READ_EVERY;
        if paused.load(Ordering::Relaxed) {
            continue;
        }
        stats.reads.fetch_add(1, Ordering::Relaxed);
        if pipe.is_full() {
            stats.full.fetch_add(1, Ordering::Relaxed);
        }
        let n = match (&pipe.reader).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("reading a contender's stderr: {e}"),
        };
        stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        partial.extend_from_slice(&buf[..n]);
        let Some(last) = partial.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        for line in String::from_utf8_lossy(&partial[..last]).lines() {
            if let Some(count) = line
                .strip_prefix("consullock: ")
                .and_then(|rest| rest.strip_suffix(NOTICE))
                .and_then(|n| n.parse::<u64>().ok())
            {
                stats.dropped_lines.fetch_add(count, Ordering::Relaxed);
            }
        }
        partial.drain(..=last);
    }
}

struct Contender<'a> {
    consul: &'a TestConsul,
    /// Its proxy's address.
    addr: String,
    index: u64,
    key: &'a str,
    script: &'a str,
    verbosity: &'a [&'a str],
    stderr: &'a std::io::PipeWriter,
    heartbeat: &'a Path,
    log: &'a Path,
    hold: &'a Path,
}

impl Contender<'_> {
    fn run(&self, shared: &Shared) {
        let mut n = 0;
        while !shared.stop.load(Ordering::Relaxed) {
            // The lock is not fair (neither is Consul's): a contender that is slower to its
            // acquire request (one logging at -vv, say) can lose every race for a long time.
            // Once the faults are over, those that have held it make way for the others.
            if shared.calm.load(Ordering::Relaxed) && held_by(self.log).contains(&self.index) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            n += 1;
            let run_id = self.index * 1_000_000 + n;
            let stderr = self.stderr.try_clone().expect("dup stderr pipe");
            let mut child: Child = self
                .consul
                .command()
                .env("CONSUL_HTTP_ADDR", format!("http://{}", self.addr))
                .args(self.verbosity)
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
                    self.key,
                    "--",
                    "sh",
                    "-c",
                    self.script,
                ])
                .env("RUN_ID", run_id.to_string())
                .env("TORTURE_LOG", self.log)
                .env("TORTURE_HOLD", self.hold)
                .env("HB", self.heartbeat)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn execute");
            shared.running.lock().unwrap().insert(child.id(), run_id);
            // Wait for the exit without reaping, and only reap once the pid is out of
            // `running`: the injector signals pids it finds there, which must still be ours.
            loop {
                // SAFETY: all-zero is a valid siginfo_t; waitid writes into it.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waitid on our own child, with a valid, exclusively borrowed siginfo.
                let rc = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        child.id(),
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if rc == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
            shared.running.lock().unwrap().remove(&child.id());
            let status = child.wait().expect("wait execute");
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
}

/// The pid in a consullock session name: `consullock KEY on HOST (pid N)`.
fn session_pid(session: &serde_json::Value) -> Option<u32> {
    let name = session["Name"].as_str()?;
    let start = name.rfind("(pid ")? + 5;
    name[start..].trim_end_matches(')').parse().ok()
}

/// A supervisor of this test that holds the lock.
struct Holder {
    session: String,
    pid: u32,
    run: u64,
}

/// The supervisor holding `key` now, if the test started it and it still runs.
fn holder_run(consul: &TestConsul, shared: &Shared, key: &str) -> Option<Holder> {
    let session = consul.holder(key)?;
    let info = consul.get(&format!("/v1/session/info/{session}")).json();
    let pid = info[0].as_object().and(session_pid(&info[0]))?;
    let run = shared.running.lock().unwrap().get(&pid).copied()?;
    Some(Holder { session, pid, run })
}

/// The contenders that have started a critical section so far.
fn held_by(log: &Path) -> HashSet<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("S "))
        .filter_map(|line| Some(parse_stamp(line)?.run / 1_000_000))
        .collect()
}

/// One process that stamped: when it was first and last seen running.
struct Process {
    tag: String,
    pid: u32,
    first: u128,
    last: u128,
}

/// A run's critical section: from the first stamp of any of its processes to the last.
struct Section {
    run: u64,
    start: u128,
    end: u128,
    /// The process that stamped last.
    last_by: String,
}

/// Kills the heartbeats still running (a consullock that let them escape), so a failing run
/// leaves nothing behind; returns what it found. A pid is only killed while its command line is
/// still the helper's.
fn kill_stray_heartbeats(processes: &[&Process], heartbeat: &Path) -> Vec<String> {
    let mut stray = Vec::new();
    for p in processes {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
        if cmdline.starts_with(heartbeat.as_os_str().as_encoded_bytes()) {
            // SAFETY: kill(2) with integer arguments, on a heartbeat this test started.
            unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
            stray.push(format!("{} (pid {})", p.tag, p.pid));
        }
    }
    stray
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
    let heartbeat = heartbeat();
    let consul = Arc::new(TestConsul::start_dev_server(&[]));
    let key = consul.unique_key("torture");
    let log = std::env::temp_dir().join(format!("consullock-torture-{}.log", std::process::id()));
    std::fs::File::create(&log).unwrap();
    let hold = log.with_extension("hold");
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
    let pipes: Vec<StderrPipe> = (0..contenders).map(|_| StderrPipe::new()).collect();
    let stderr_stats = StderrStats::default();
    let readers_stop = AtomicBool::new(false);
    // Set while a fault hits a holder: nothing is read then, so a consullock whose lock-keeping
    // or kill path waited on stderr would wait for the whole fault.
    let readers_paused = AtomicBool::new(false);

    // Fault injection (on this thread) while the contenders and the stderr readers run.
    let mut rng = Rng(seed);
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut connections_cut = 0;
    let mut last_kill: Option<Instant> = None;
    let mut last_outage: Option<Instant> = None;
    // Faults that hit a holder of ours, and how many of them found its stderr full.
    let (mut holders_hit, mut holders_hit_full) = (0u64, 0u64);
    // What was injected when, on whom: printed when the test fails.
    let mut fault_log: Vec<String> = Vec::new();
    // Runs whose lock a fault took away (destroy, blackhole, pause), the fault and its time.
    let mut taken: Vec<(u64, &str, u128)> = Vec::new();
    let server_pid = consul.pid().expect("a private dev server") as i32;
    let started = Instant::now();
    let injection = std::thread::scope(|scope| {
        for pipe in &pipes {
            let (stats, paused, stop) = (&stderr_stats, &readers_paused, &readers_stop);
            scope.spawn(move || read_rarely(pipe, stats, paused, stop));
        }
        let mut threads = Vec::new();
        for index in 1..=contenders {
            let i = index as usize - 1;
            let contender = Contender {
                consul: &consul,
                addr: proxies[i].addr(),
                index,
                key: &key,
                script: FLAVOURS[i % FLAVOURS.len()].1,
                verbosity: verbosity(index),
                stderr: &pipes[i].writer,
                heartbeat: &heartbeat,
                log: &log,
                hold: &hold,
            };
            let shared = &shared;
            threads.push(scope.spawn(move || contender.run(shared)));
        }

        // Kinds come in rounds, so even a short run injects each of them. Every fault but the
        // cut aims at a holder this test started, whose command runs: it waits up to FAULT_AIM
        // for one (the kill waits as long as it takes), then fires anyway; a blackhole or a
        // pause then checks recovery only, a destroy ends a stranded session as an operator
        // would. A holder hit by a kill or a blackhole strands its session: the lock stays
        // orphaned for up to 2×TTL + lock-delay. So that a default run stays near a minute,
        // the first round goes in a fixed order: the kill first (kills are only allowed early,
        // see below), the cut and the blackhole within its orphan time, then the pause and the
        // destroy, which cost little. Later rounds are shuffled.
        let mut round: Vec<u64> = Vec::new();
        let mut first_round = true;
        let mut retry = false;
        // Since when the next fault has been waiting for a holder to hit.
        let mut aiming: Option<Instant> = None;
        // Past `soak`, only until every kind has fired once, and never for more than
        // FIRST_ROUND_EXTRA.
        while started.elapsed() < Duration::from_secs(soak)
            || (faults.len() < 5
                && started.elapsed() < Duration::from_secs(soak) + FIRST_ROUND_EXTRA)
        {
            // Calm between faults, so handoffs happen and contenders make progress.
            std::thread::sleep(if std::mem::take(&mut retry) {
                RETRY_FAULT
            } else {
                Duration::from_millis(2_000 + rng.below(3_000))
            });
            if round.is_empty() {
                // Popped from the end.
                round = vec![1, 3, 2, 4, 0];
                if !std::mem::take(&mut first_round) {
                    for i in (1..round.len()).rev() {
                        round.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                }
            }
            let kind = round.pop().unwrap_or(0);
            if kind == 0 {
                // At most one kill per 2×TTL + lock-delay, so the lock is not orphaned all the
                // time and contenders make progress.
                // None near the end either, so the last runs need not wait for an orphan.
                let orphan = Duration::from_secs(2 * TTL_SECS + LOCK_DELAY_SECS);
                if last_kill.is_some_and(|t| t.elapsed() < orphan)
                    || started.elapsed() + orphan > Duration::from_secs(soak)
                {
                    continue;
                }
            }
            if kind == 4 {
                fault_log.push(format!("{:.1?} cut", started.elapsed()));
                connections_cut += proxies.iter().map(Proxy::cut_all).sum::<usize>();
                // A cut can lose the answer to a session create or destroy: a session it
                // strands is accounted for like an outage's.
                last_outage = Some(Instant::now());
                *faults.entry("cut").or_default() += 1;
                continue;
            }
            let holder = holder_run(&consul, &shared, &key);
            let aimed_since = *aiming.get_or_insert_with(Instant::now);
            if holder.is_none() && (kind == 0 || aimed_since.elapsed() < FAULT_AIM) {
                round.push(kind);
                retry = true;
                continue;
            }
            aiming = None;
            // A holder hit in the middle of its work: its command keeps working (past its usual
            // end) until the fault is over, so only consullock stopping it ends it in time.
            let hold_until = Instant::now()
                + match kind {
                    0 => AFTER_SUPERVISOR_KILL + Duration::from_secs(1),
                    1 => Duration::from_secs(LOCK_DELAY_SECS + 1),
                    _ => OUTAGE,
                };
            if let Some(h) = &holder {
                holders_hit += 1;
                holders_hit_full += u64::from(pipes[(h.run / 1_000_000 - 1) as usize].is_full());
                std::fs::File::create(&hold).expect("create the hold file");
                readers_paused.store(true, Ordering::Relaxed);
            }
            let at = monotonic_ns();
            let fired = format!(
                "{:.1?} {} on {}",
                started.elapsed(),
                ["kill9", "destroy", "blackhole", "pause"][kind as usize],
                holder
                    .as_ref()
                    .map_or("no holder".to_string(), |h| format!("run {}", h.run))
            );
            match (kind, holder) {
                (0, Some(holder)) => {
                    let running = shared.running.lock().unwrap();
                    if running.get(&holder.pid) != Some(&holder.run) {
                        // It ended since: not ours to signal any more.
                        let _ = std::fs::remove_file(&hold);
                        readers_paused.store(false, Ordering::Relaxed);
                        round.push(kind);
                        retry = true;
                        continue;
                    }
                    // SAFETY: kill(2) on a supervisor this test spawned and has not reaped: its
                    // contender thread reaps it only after removing it from `running`, whose
                    // lock is held here.
                    unsafe { libc::kill(holder.pid as i32, libc::SIGKILL) };
                    drop(running);
                    shared
                        .ended
                        .lock()
                        .unwrap()
                        .insert(holder.run, monotonic_ns());
                    shared.killed.lock().unwrap().push((holder.pid, holder.run));
                    last_kill = Some(Instant::now());
                    *faults.entry("kill9").or_default() += 1;
                }
                (0, None) => unreachable!("a kill waits for a holder"),
                (1, holder) => {
                    // No holder of ours: whatever session holds the lock (a killed supervisor's).
                    let Some(session) = holder
                        .as_ref()
                        .map(|h| h.session.clone())
                        .or_else(|| consul.holder(&key))
                    else {
                        round.push(kind);
                        retry = true;
                        continue;
                    };
                    if let Some(holder) = &holder {
                        // Its connections reset first, as when an operator unlocks during a
                        // network hiccup: the holder must notice the loss while it reconnects
                        // and logs the failed requests into its full stderr.
                        connections_cut += proxies[(holder.run / 1_000_000 - 1) as usize].cut_all();
                    }
                    consul.destroy_session(&session);
                    if let Some(holder) = holder {
                        taken.push((holder.run, "destroy", at));
                    }
                    *faults.entry("destroy").or_default() += 1;
                }
                (2, holder) => {
                    // The holder and about half the others.
                    let holder_index = holder.as_ref().map(|h| h.run / 1_000_000);
                    let isolated: Vec<&Proxy> = (1..=contenders)
                        .filter(|&c| Some(c) == holder_index || rng.below(2) == 0)
                        .map(|c| &proxies[c as usize - 1])
                        .collect();
                    for proxy in &isolated {
                        proxy.set_mode(Mode::Blackhole);
                    }
                    if let Some(holder) = holder {
                        taken.push((holder.run, "blackhole", at));
                    }
                    std::thread::sleep(OUTAGE);
                    for proxy in &isolated {
                        proxy.set_mode(Mode::Pass);
                    }
                    last_outage = Some(Instant::now());
                    *faults.entry("blackhole").or_default() += 1;
                }
                (_, holder) => {
                    // SAFETY: kill(2) on the dev server this test started.
                    unsafe { libc::kill(server_pid, libc::SIGSTOP) };
                    if let Some(holder) = holder {
                        taken.push((holder.run, "pause", at));
                    }
                    std::thread::sleep(OUTAGE);
                    // SAFETY: as above.
                    unsafe { libc::kill(server_pid, libc::SIGCONT) };
                    last_outage = Some(Instant::now());
                    *faults.entry("pause").or_default() += 1;
                }
            }
            fault_log.push(fired);
            if hold.exists() {
                std::thread::sleep(hold_until.saturating_duration_since(Instant::now()));
                std::fs::remove_file(&hold).expect("remove the hold file");
                readers_paused.store(false, Ordering::Relaxed);
            }
        }
        // A calm phase, bounded, so that every contender gets its turn after the last fault.
        let injection = started.elapsed();
        shared.calm.store(true, Ordering::Relaxed);
        let calm_until = Instant::now() + CALM_PHASE;
        while Instant::now() < calm_until && held_by(&log).len() < contenders as usize {
            std::thread::sleep(Duration::from_millis(200));
        }
        shared.stop.store(true, Ordering::Relaxed);
        // Waiting contenders would each take the lock once more before they see the stop; a
        // stop signal ends them at once (and a holder's command within the grace).
        for &pid in shared.running.lock().unwrap().keys() {
            // SAFETY: kill(2) on a supervisor this test spawned and has not reaped: its contender
            // thread reaps it only after removing it from `running`, whose lock is held here.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        for thread in threads {
            thread.join().expect("contender thread");
        }
        readers_stop.store(true, Ordering::Relaxed);
        injection
    });
    let _ = std::fs::remove_file(&hold);
    let unread: u64 = pipes.iter().map(StderrPipe::unread).sum();

    // Processes and critical sections from the stamps.
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let mut processes: HashMap<(u64, u32), Process> = HashMap::new();
    let mut stamps = 0u64;
    for line in text.lines() {
        let stamp = parse_stamp(line).unwrap_or_else(|| panic!("bad stamp line {line:?}"));
        stamps += 1;
        let p = processes
            .entry((stamp.run, stamp.pid))
            .or_insert_with(|| Process {
                tag: stamp.tag.to_string(),
                pid: stamp.pid,
                first: stamp.at,
                last: stamp.at,
            });
        p.first = p.first.min(stamp.at);
        p.last = p.last.max(stamp.at);
    }
    let mut by_run: HashMap<u64, Vec<&Process>> = HashMap::new();
    for ((run, _), p) in &processes {
        by_run.entry(*run).or_default().push(p);
    }
    let stray = kill_stray_heartbeats(&processes.values().collect::<Vec<_>>(), &heartbeat);
    // Every heartbeat but `cmd` (the command itself, exec'd by its shell) is a descendant of the
    // command: a grandchild of consullock or further down.
    let grandchildren = processes.values().filter(|p| p.tag != "cmd").count();
    let mut sections: Vec<Section> = by_run
        .iter()
        .map(|(&run, procs)| {
            let last = procs.iter().max_by_key(|p| p.last).unwrap();
            Section {
                run,
                start: procs.iter().map(|p| p.first).min().unwrap(),
                end: last.last,
                last_by: format!("{} (pid {})", last.tag, last.pid),
            }
        })
        .collect();
    sections.sort_by_key(|s| s.start);

    // Overlaps: every pair of sections of which one starts before the other's last stamp.
    let mut overlaps = Vec::new();
    for (i, a) in sections.iter().enumerate() {
        for b in sections[i + 1..].iter().take_while(|b| b.start < a.end) {
            overlaps.push(format!(
                "run {} [{}, {}] (last stamp by {}) overlaps run {} [{}, {}] by {} ms",
                a.run,
                a.start,
                a.end,
                a.last_by,
                b.run,
                b.start,
                b.end,
                (a.end.min(b.end) - b.start) / 1_000_000
            ));
        }
    }
    // The longest time the lock was free between two sections.
    let mut longest_handoff = 0u128;
    let mut reach = None;
    for s in &sections {
        if let Some(end) = reach {
            longest_handoff = longest_handoff.max(s.start.saturating_sub(end));
        }
        reach = reach.max(Some(s.end));
    }
    let holders: HashSet<u64> = sections.iter().map(|s| s.run / 1_000_000).collect();

    // Containment: nothing of a run stamps after its supervisor exited (it releases the lock
    // only once everything is gone), nor more than a moment after its supervisor was killed.
    let ended = shared.ended.lock().unwrap().clone();
    let killed = shared.killed.lock().unwrap().clone();
    let killed_runs: HashSet<u64> = killed.iter().map(|&(_, run)| run).collect();
    let mut outlived = Vec::new();
    let mut longest_after_kill = 0u128;
    for s in &sections {
        let Some(&end_seen) = ended.get(&s.run) else {
            continue;
        };
        let after = s.end.saturating_sub(end_seen);
        if killed_runs.contains(&s.run) {
            longest_after_kill = longest_after_kill.max(after);
            if after > AFTER_SUPERVISOR_KILL.as_nanos() {
                outlived.push(format!(
                    "run {}: {} stamped {} ms after its supervisor was killed",
                    s.run,
                    s.last_by,
                    after / 1_000_000
                ));
            }
        } else if after > 0 {
            outlived.push(format!(
                "run {}: {} stamped {} ms after its supervisor exited",
                s.run,
                s.last_by,
                after / 1_000_000
            ));
        }
    }

    // A holder whose lock a fault took away stops before anyone else can be granted it: the
    // lock-delay after a destroy, and the contact window plus the grace (1 s less) when it is
    // cut off from the server.
    let mut longest_stop = 0u128;
    for &(run, fault, at) in &taken {
        let Some(s) = sections.iter().find(|s| s.run == run) else {
            continue;
        };
        let after = s.end.saturating_sub(at);
        longest_stop = longest_stop.max(after);
        if after > Duration::from_secs(LOCK_DELAY_SECS).as_nanos() {
            outlived.push(format!(
                "run {run}: {} stamped {} ms after a {fault} took its lock away",
                s.last_by,
                after / 1_000_000
            ));
        }
    }

    // Sessions left: only killed supervisors', and those expire within 2×TTL of the kill.
    // A supervisor that ends during an outage (or whose destroy is cut) cannot destroy its
    // session, and a create sent to a paused server may be served after the client gave up:
    // those are stranded until their TTL too, so they are allowed only after an outage or a
    // cut, and must expire the same way.
    let killed_pids: Vec<u32> = killed.iter().map(|&(pid, _)| pid).collect();
    let mut stranded = 0;
    for session in consul.sessions() {
        if session_pid(&session).is_some_and(|p| killed_pids.contains(&p)) {
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
    let reads = stderr_stats.reads.load(Ordering::Relaxed);
    let summary = format!(
        "torture: {} runs ({} held the lock) by {contenders} contenders in {:.0?} ({:.0?} of faults), seed {seed}; \
         faults {}; connections cut {connections_cut}; exits {}; sessions stranded by outages {stranded}; \
         stamped {} processes ({grandchildren} grandchildren), {stamps} stamps; \
         stderr full for {holders_hit_full}/{holders_hit} holders hit and at {}/{reads} reads, {} KiB read, \
         {} KiB left unread, {} lines dropped by consullock; \
         longest stop after a lost lock {:.0?} (of {}); longest life after a supervisor's SIGKILL {:.0?}; \
         ran on after their lock {}; overlaps {}; longest handoff {:.1?}",
        shared.runs.load(Ordering::Relaxed),
        sections.len(),
        started.elapsed(),
        injection,
        if faults_text.is_empty() {
            "none".to_string()
        } else {
            faults_text.join(" ")
        },
        exits.join(" "),
        processes.len(),
        stderr_stats.full.load(Ordering::Relaxed),
        stderr_stats.bytes_read.load(Ordering::Relaxed) / 1024,
        unread / 1024,
        stderr_stats.dropped_lines.load(Ordering::Relaxed),
        Duration::from_nanos(longest_stop as u64),
        taken.len(),
        Duration::from_nanos(longest_after_kill as u64),
        outlived.len(),
        overlaps.len(),
        Duration::from_nanos(longest_handoff as u64),
    );
    crate::support::report(&summary);
    let _ = std::io::stdout().flush();
    let missing: Vec<u64> = (1..=contenders).filter(|c| !holders.contains(c)).collect();
    let mut failures = Vec::new();
    for (what, lines) in [
        ("overlaps", &overlaps),
        ("processes that ran on after their lock", &outlived),
        (
            "heartbeats still running after every supervisor ended",
            &stray,
        ),
    ] {
        if !lines.is_empty() {
            failures.push(format!("{} {what}:", lines.len()));
            failures.extend(lines.iter().take(20).map(|l| format!("  {l}")));
        }
    }
    if !missing.is_empty() {
        failures.push(format!("contenders {missing:?} never held the lock"));
    }
    assert!(
        failures.is_empty(),
        "{summary}\n{}\nfaults: {}",
        failures.join("\n"),
        fault_log.join(", ")
    );
}
