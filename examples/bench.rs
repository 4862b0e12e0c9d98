//! Benchmarks what users of `consullock execute` feel, and what it costs the Consul servers,
//! against a dev server it starts itself, and prints one table (issues 7 and 12).
//!
//! ```text
//! cargo build --release && cargo run --release --example bench [-- --quick]
//! ```
//!
//! It drives the release binary `target/release/consullock` (found next to this example's own
//! executable, or named by `CONSULLOCK_BENCH_BIN`): `cargo run --example` does not build it, so
//! build it first. It measures whatever that binary does; nothing here knows how it takes a lock.
//!
//! Requests are counted by the dev server (`/_devserver/stats`, which does not count itself), by
//! what each would cost on a real cluster: **W** writes (a Raft commit to a quorum, with an
//! fsync: session create and destroy, every KV `PUT` and `DELETE`, a transaction with a write
//! verb), **C** consistent reads (`?consistent`: the leader confirms its leadership with a
//! quorum) and **O** other (default-consistency or stale reads, session renewals, agent reads).
//! Where a count varies between runs, the table shows the most common one and in how many runs
//! it was seen; a target on counts must hold in every run.
//!
//! * **execute overhead**: wall time of `consullock execute KEY -- true` minus that of spawning
//!   `true` directly (p50 minus p50, p95 minus p95), runs interleaved, on a key nobody else uses;
//! * **execute requests**: the requests of each of those runs, less its blocking reads (`?index`):
//!   an uncontended run waits for no change, so its only blocking reads are the lock watch, which
//!   runs alongside the command, off the path the user waits for. Each run is counted from the
//!   server's stats right before it starts to right after it exits;
//! * **`--non-blocking` on a held key**: the wall time and the requests of one such attempt
//!   (exit 100) while another `execute` holds the key (the holder's own renewals and lock watch
//!   seldom fall into an attempt's few milliseconds, and are never writes);
//! * **handoff**: from the holder's child exiting to the next holder's child starting, with 1,
//!   10 and 50 waiters. The children are this program (`--child handoff`): each writes
//!   `CLOCK_MONOTONIC` at the top of `main` and right before it exits, so a handoff is exactly
//!   "child A's last instruction → child B's first one". The stamps also check mutual exclusion.
//!   Every contender that finishes is replaced, so the requests per handoff are everything the
//!   server received while the handoffs were measured, divided by their number: one contender's
//!   whole life (arrive, wait, take the lock, release, leave) and the wake-ups of the others.
//!   Once measured, the contenders left are stopped with SIGTERM rather than left to drain;
//! * **lock order**: the first holder takes the lock and its command waits; then waiter *i* is
//!   started only once waiter *i − 1* is visibly waiting: the server holds *i − 1* more sessions
//!   and *i − 1* more blocking queries than with the holder alone (whose lock watch is given
//!   [`HOLDER_SETTLE`] to be armed first). Then the holder lets go and each waiter holds briefly
//!   in turn. The order in which the waiters' children started (their stamps carry the waiter's
//!   number) is the order in which they got the lock: FIFO when it is 1, 2, 3, ... The requests
//!   per handoff are everything from the holder letting go to the last waiter's exit, divided
//!   by the number of handoffs;
//! * **waiter load**: requests per waiting contender per minute while the lock is held, minus a
//!   baseline taken with the holder alone (its renewals and lock watch), renewals included;
//! * **lock-loss reaction**: a raw `PUT /v1/session/destroy/ID` → the child receiving SIGTERM
//!   (the child, `--child term`, blocks SIGTERM and stamps the time `sigwait` returns);
//! * **footprint**: the supervisor's VmHWM while its child runs, and the binary's size.
//!
//! Numbers are wall-clock on whatever else the machine is doing: run it on an idle machine.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Variables that would point the supervisors somewhere else than our dev server.
const CONSUL_VARIABLES: &[&str] = &[
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_AUTH",
    "CONSUL_NAMESPACE",
    "CONSUL_PARTITION",
    "CONSUL_SCHEME",
    "CONSUL_DC",
];

/// How often the driver checks a child's exit or a file, and a gated child its gate.
const POLL: Duration = Duration::from_millis(1);

/// How often the driver asks the server's stats while waiting for something (each is a new
/// connection: keep it rare).
const STATS_POLL: Duration = Duration::from_millis(10);

/// Deadline of anything the benchmark waits for: a hung supervisor fails the run, not the CI.
const DEADLINE: Duration = Duration::from_secs(60);

/// How long the load benchmark lets the waiters settle into their blocking queries.
const SETTLE: Duration = Duration::from_millis(1000);

/// How long a holder whose command has started is given to arm its lock watch (if it has one),
/// before the lock-order benchmark counts the blocking queries in flight.
const HOLDER_SETTLE: Duration = Duration::from_millis(200);

/// Exit code of `execute --non-blocking` on a held key (consullock's default conflict code).
const CONFLICT_EXIT: i32 = 100;

/// Sizes of one run.
struct Plan {
    overhead_runs: usize,
    non_blocking_runs: usize,
    handoffs: usize,
    waiters: &'static [usize],
    order_waiters: usize,
    order_rounds: usize,
    load_waiters: usize,
    load_sample: Duration,
    reactions: usize,
}

const FULL: Plan = Plan {
    overhead_runs: 200,
    non_blocking_runs: 50,
    handoffs: 100,
    waiters: &[1, 10, 50],
    order_waiters: 10,
    order_rounds: 5,
    load_waiters: 10,
    load_sample: Duration::from_secs(30),
    reactions: 20,
};

const QUICK: Plan = Plan {
    overhead_runs: 20,
    non_blocking_runs: 5,
    handoffs: 10,
    waiters: &[1, 10, 50],
    order_waiters: 10,
    order_rounds: 1,
    load_waiters: 10,
    load_sample: Duration::from_secs(3),
    reactions: 5,
};

/// Targets of issue 12, on an idle 2-core machine against the dev server.
const OVERHEAD_P50: u64 = 3_500_000;
const EXECUTE_WRITES: u64 = 4;
const EXECUTE_REQUESTS: u64 = 5;
const WAITER_LOAD: f64 = 10.0;
/// Handoff p50 targets by number of waiters.
const HANDOFF_P50: &[(usize, u64)] = &[(10, 5_000_000), (50, 8_000_000)];
const REACTION_P50: u64 = 50_000_000;
const RSS: u64 = 8 << 20;

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let stamp = now_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--child") => child(stamp, &args[1..]),
        None => run(&FULL),
        Some("--quick") if args.len() == 1 => run(&QUICK),
        _ => Err("usage: bench [--quick]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- the children ----

/// `--child handoff LOG HOLD_MS LABEL`: stamp the start, wait for the gate, hold, stamp the
/// end, exit.
/// `--child term FILE`: block SIGTERM, write `ready SESSION`, stamp when SIGTERM arrives.
fn child(start: u64, args: &[String]) -> Result<()> {
    match args {
        [mode, log, hold_ms, label] if mode == "handoff" => {
            let hold: u64 = hold_ms.parse().map_err(|_| "bad HOLD_MS")?;
            let log = Path::new(log);
            let gate = log.with_extension("go");
            let mut log = append(log)?;
            let pid = std::process::id();
            write_line(&mut log, &format!("S {pid} {start} {label}\n"))?;
            // The first holder keeps the lock until the driver has every waiter in place.
            while !gate.exists() {
                std::thread::sleep(POLL);
            }
            std::thread::sleep(Duration::from_millis(hold));
            let end = now_ns();
            // One write, then exit: nothing after the stamp but this syscall and the exit.
            write_line(&mut log, &format!("E {pid} {end}\n"))?;
            std::process::exit(0);
        }
        [mode, file] if mode == "term" => {
            use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
            let mut term = SigSet::empty();
            term.add(Signal::SIGTERM);
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&term), None).map_err(|e| e.to_string())?;
            let session = std::env::var("CONSULLOCK_SESSION").map_err(|e| e.to_string())?;
            let mut out = append(Path::new(file))?;
            write_line(&mut out, &format!("ready {session}\n"))?;
            term.wait().map_err(|e| e.to_string())?;
            let at = now_ns();
            write_line(&mut out, &format!("term {at}\n"))?;
            Ok(())
        }
        _ => Err(format!("unknown child mode {args:?}")),
    }
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_line(file: &mut File, line: &str) -> Result<()> {
    // O_APPEND and one write per line: lines from concurrent children never interleave.
    file.write_all(line.as_bytes()).map_err(|e| e.to_string())
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- the driver ----

struct Bench {
    binary: PathBuf,
    me: PathBuf,
    server: Server,
    dir: TempDir,
}

fn run(plan: &Plan) -> Result<()> {
    let started = Instant::now();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let binary = consullock_binary(&me)?;
    let dir = TempDir::new()?;
    let server = Server::start(&binary)?;
    let bench = Bench {
        binary,
        me,
        server,
        dir,
    };
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut rows = Vec::new();
    let step = |what: String| {
        eprintln!("bench: {what}");
        Instant::now()
    };

    let t = step(format!("execute overhead, {} runs", plan.overhead_runs));
    let (overhead, requests) = bench.overhead(plan.overhead_runs)?;
    push(&mut rows, overhead, t);
    push(&mut rows, requests, t);
    let t = step(format!(
        "--non-blocking on a held key, {} runs",
        plan.non_blocking_runs
    ));
    push(&mut rows, bench.non_blocking(plan.non_blocking_runs)?, t);
    for &waiters in plan.waiters {
        let t = step(format!(
            "handoff, {waiters} waiters, {} handoffs",
            plan.handoffs
        ));
        push(&mut rows, bench.handoff(waiters, plan.handoffs)?, t);
    }
    let t = step(format!(
        "lock order, {} waiters, {} rounds",
        plan.order_waiters, plan.order_rounds
    ));
    push(
        &mut rows,
        bench.order(plan.order_waiters, plan.order_rounds)?,
        t,
    );
    let t = step(format!(
        "waiter load, {} waiters, {:?} samples",
        plan.load_waiters, plan.load_sample
    ));
    push(
        &mut rows,
        bench.load(plan.load_waiters, plan.load_sample)?,
        t,
    );
    let t = step(format!("lock-loss reaction, {} runs", plan.reactions));
    let (reaction, rss) = bench.reaction(plan.reactions)?;
    push(&mut rows, reaction, t);
    push(&mut rows, rss, t);
    let size = std::fs::metadata(&bench.binary)
        .map_err(|e| e.to_string())?
        .len();
    rows.push(Row {
        metric: "binary size".into(),
        values: [mib(size), String::new(), String::new()],
        ..Row::default()
    });

    print_table(&rows);
    println!(
        "requests: W writes (Raft commits on a real cluster), C consistent reads (a quorum check \
         by the leader), O other (default-consistency reads, renewals, ...)"
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = |text: &str| {
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cores} cores, {cpu}; load average before: {}, after: {}; took {:.0} s",
        load(&load_before),
        load(&load_after),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Adds a row, and shows it at once on stderr (a long run is not silent until its end).
fn push(rows: &mut Vec<Row>, row: Row, started: Instant) {
    eprintln!(
        "bench:   {}: {} {} ({:.1} s)",
        row.metric,
        row.values.join(" ").trim(),
        row.requests,
        started.elapsed().as_secs_f64()
    );
    rows.push(row);
}

/// `target/release/consullock`, next to `target/release/examples/bench`.
fn consullock_binary(me: &Path) -> Result<PathBuf> {
    let binary = match std::env::var_os("CONSULLOCK_BENCH_BIN") {
        Some(path) => PathBuf::from(path),
        None => me
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("consullock"))
            .ok_or("cannot locate the target directory")?,
    };
    if !binary.is_file() {
        return Err(format!(
            "{} not found: build it first with `cargo build --release` (cargo run --example \
             does not build the binary), or set CONSULLOCK_BENCH_BIN",
            binary.display()
        ));
    }
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let sources = newest_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    if let (Some(built), Some(sources)) = (built, sources)
        && sources > built
    {
        eprintln!(
            "bench: warning: {} is older than the sources: run `cargo build --release`",
            binary.display()
        );
    }
    Ok(binary)
}

fn newest_file(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_file(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

impl Bench {
    /// A `consullock execute [FLAGS] KEY -- ARGS...` command against our server.
    fn execute(&self, flags: &[&str], key: &str, args: &[&OsStr]) -> Command {
        let mut cmd = Command::new(&self.binary);
        for name in CONSUL_VARIABLES {
            cmd.env_remove(name);
        }
        cmd.env("CONSUL_HTTP_ADDR", &self.server.address)
            .arg("execute")
            .args(flags)
            .arg(key)
            .arg("--")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// A contender whose command is `--child handoff LOG HOLD_MS LABEL`.
    ///
    /// Its stderr goes to LOG with the extension `stderr` (see [`stderr_tail`]): the ones the
    /// benchmark stops say so there.
    fn contender(&self, key: &str, log: &Path, hold_ms: usize, label: &str) -> Result<Child> {
        let stderr = append(&log.with_extension("stderr"))?;
        let hold_ms = hold_ms.to_string();
        self.execute(
            &[],
            key,
            &[
                self.me.as_os_str(),
                "--child".as_ref(),
                "handoff".as_ref(),
                log.as_os_str(),
                hold_ms.as_ref(),
                label.as_ref(),
            ],
        )
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))
    }

    /// A holder that keeps `key` until it is sent SIGTERM, once it holds it.
    fn hold(&self, key: &str) -> Result<Child> {
        let holder = self
            .execute(&[], key, &["sleep".as_ref(), "3600".as_ref()])
            // It says "interrupted by signal 15" when we stop it.
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        wait_for(|| {
            let (status, body) = self.server.request("GET", &format!("/v1/kv/{key}"))?;
            Ok(status == 200 && body.contains("\"Session\""))
        })?;
        Ok(holder)
    }

    /// The overhead row and the row of the requests each run made.
    fn overhead(&self, runs: usize) -> Result<(Row, Row)> {
        let warmup = 3;
        let mut direct = Vec::new();
        let mut supervised = Vec::new();
        let mut counted = Vec::new();
        for i in 0..runs + warmup {
            let t = Instant::now();
            expect_code(Command::new("true").status(), 0, "true")?;
            let plain = t.elapsed();
            let before = self.server.stats()?.counts;
            let t = Instant::now();
            let status = self
                .execute(&[], "bench/overhead", &["true".as_ref()])
                .status();
            let locked = t.elapsed();
            expect_code(status, 0, "consullock execute bench/overhead -- true")?;
            let after = self.server.stats()?.counts;
            if i >= warmup {
                direct.push(plain.as_nanos() as u64);
                supervised.push(locked.as_nanos() as u64);
                counted.push(after.since(before));
            }
        }
        direct.sort_unstable();
        supervised.sort_unstable();
        let p50 = percentile(&supervised, 50).saturating_sub(percentile(&direct, 50));
        let p95 = percentile(&supervised, 95).saturating_sub(percentile(&direct, 95));
        let overhead = Row {
            metric: format!("execute overhead ({runs} runs)"),
            values: [ms(p50), ms(p95), String::new()],
            target: format!("p50 ≤ {}", ms(OVERHEAD_P50)),
            met: Some(p50 <= OVERHEAD_P50),
            ..Row::default()
        };

        let watch: u64 = counted.iter().map(Counts::blocking).sum();
        let critical: Vec<Counts> = counted.iter().map(|c| c.without_blocking()).collect();
        let met = critical.iter().all(|c| {
            c.writes <= EXECUTE_WRITES && c.consistent == 0 && c.requests <= EXECUTE_REQUESTS
        });
        let requests = Row {
            metric: format!(
                "execute requests on the critical path, uncontended (lock watch left out: {:.1} \
                 blocking reads per run)",
                watch as f64 / runs as f64
            ),
            requests: typical(&critical),
            target: format!("{EXECUTE_WRITES} W, 0 C, ≤ {EXECUTE_REQUESTS} in all"),
            met: Some(met),
            ..Row::default()
        };
        Ok((overhead, requests))
    }

    /// `execute --non-blocking KEY -- true` while another `execute` holds KEY: its wall time
    /// and its requests.
    fn non_blocking(&self, runs: usize) -> Result<Row> {
        let key = "bench/non-blocking";
        let mut holder = self.hold(key)?;
        let warmup = 2;
        let mut times = Vec::new();
        let mut counted = Vec::new();
        for i in 0..runs + warmup {
            let before = self.server.stats()?.counts;
            let t = Instant::now();
            let status = self
                .execute(&["--non-blocking"], key, &["true".as_ref()])
                // It says the key is held.
                .stderr(Stdio::null())
                .status();
            let elapsed = t.elapsed();
            expect_code(
                status,
                CONFLICT_EXIT,
                "execute --non-blocking on a held key",
            )?;
            let after = self.server.stats()?.counts;
            if i >= warmup {
                times.push(elapsed.as_nanos() as u64);
                counted.push(after.since(before));
            }
        }
        terminate(&mut holder);
        expect_code(holder.wait(), 143, "the holder stopped by SIGTERM")?;
        times.sort_unstable();
        Ok(Row {
            metric: format!("--non-blocking on a held key ({runs} runs, wall time)"),
            values: [
                ms(percentile(&times, 50)),
                ms(percentile(&times, 95)),
                ms(*times.last().unwrap_or(&0)),
            ],
            requests: typical(&counted),
            target: "0 W".into(),
            met: Some(counted.iter().all(|c| c.writes == 0)),
        })
    }

    /// Keeps `waiters` + 1 supervisors contending for one key, each child holding briefly, and
    /// measures the handoffs that happen once all of them are in place.
    fn handoff(&self, waiters: usize, handoffs: usize) -> Result<Row> {
        let key = format!("bench/handoff/{waiters}");
        let log = self.dir.path.join(format!("handoff-{waiters}.log"));
        // Long enough for the replacement of a finished contender to be waiting again before
        // the next handoff, and for a wake-up storm of 50 waiters to die down.
        let hold_ms = 20 + waiters;
        let spawn = || self.contender(&key, &log, hold_ms, "-");
        let sessions_before = self.server.stats()?.sessions;
        let mut running: Vec<Child> = Vec::new();
        for _ in 0..=waiters {
            running.push(spawn()?);
        }
        // Nobody can leave before the gate opens (see the child), so the count only grows.
        wait_for(|| Ok(self.server.stats()?.sessions > sessions_before + waiters as u64))?;
        let counts_before = self.server.stats()?.counts;
        let ready_at = now_ns();
        File::create(log.with_extension("go")).map_err(|e| e.to_string())?;
        let mut finished_after_ready = 0;
        let deadline = Instant::now() + DEADLINE;
        // Replace every contender that finishes, until enough handoffs happened in steady state.
        while finished_after_ready < handoffs + 1 {
            if Instant::now() > deadline {
                return Err(format!("handoff with {waiters} waiters: timed out"));
            }
            let mut i = 0;
            while i < running.len() {
                if running[i].try_wait().map_err(|e| e.to_string())?.is_some() {
                    // Reaped already: wait() returns the status try_wait() saw.
                    let mut finished = running.swap_remove(i);
                    expect_code(finished.wait(), 0, "a contender")
                        .map_err(|e| stderr_tail(e, &log))?;
                    finished_after_ready += 1;
                    running.push(spawn()?);
                } else {
                    i += 1;
                }
            }
            std::thread::sleep(POLL);
        }
        let stop_at = now_ns();
        let counted = self.server.stats()?.counts.since(counts_before);
        // The rest would take their turns one by one: stop them instead (a waiter, or a holder
        // whose command gets the SIGTERM, ends with 143; one just started, by the signal; one
        // that just finished, with 0).
        for child in &mut running {
            terminate(child);
        }
        for mut child in running {
            let status = child.wait().map_err(|e| e.to_string())?;
            let stopped = status.code() == Some(143) || status.signal() == Some(libc::SIGTERM);
            if !(status.success() || stopped) {
                let e = format!("a contender stopped by SIGTERM ended with {status}");
                return Err(stderr_tail(e, &log));
            }
        }

        let holds = holds_in_order(&log, &key)?;
        let mut gaps: Vec<u64> = holds
            .windows(2)
            .filter(|w| w[0].end >= ready_at && w[0].end <= stop_at)
            .map(|w| w[1].start - w[0].end)
            .collect();
        gaps.sort_unstable();
        let p50 = percentile(&gaps, 50);
        let plural = if waiters == 1 { "" } else { "s" };
        let target = HANDOFF_P50.iter().find(|(n, _)| *n == waiters);
        Ok(Row {
            metric: format!(
                "handoff, {waiters} waiter{plural} ({} handoffs)",
                gaps.len()
            ),
            values: [
                ms(p50),
                ms(percentile(&gaps, 95)),
                ms(*gaps.last().unwrap_or(&0)),
            ],
            requests: format!("{} per handoff", counted.per(gaps.len() as f64)),
            target: target.map_or(String::new(), |(_, p)| format!("p50 ≤ {}", ms(*p))),
            met: target.map(|(_, p)| p50 <= *p),
        })
    }

    /// The order in which waiters that queued one after another got the lock (see the module
    /// docs), over `rounds` rounds.
    fn order(&self, waiters: usize, rounds: usize) -> Result<Row> {
        let hold_ms = 20 + waiters;
        let mut in_order = 0;
        let mut shown: Option<String> = None;
        let mut drained = Counts::default();
        for round in 0..rounds {
            let key = format!("bench/order/{round}");
            let log = self.dir.path.join(format!("order-{round}.log"));
            let mut running = vec![self.contender(&key, &log, hold_ms, "0")?];
            // The first holder's command has started: it holds the lock until the gate opens.
            wait_for(|| Ok(read_lines(&log).iter().any(|l| l.starts_with("S "))))?;
            std::thread::sleep(HOLDER_SETTLE);
            // A lock watch re-arming when it times out is briefly not in flight: the most seen
            // in a few looks is the holder's count.
            let base = self.server.stats()?;
            let mut base_blocking = base.blocking_queries;
            for _ in 0..3 {
                std::thread::sleep(STATS_POLL);
                base_blocking = base_blocking.max(self.server.stats()?.blocking_queries);
            }
            for i in 1..=waiters as u64 {
                running.push(self.contender(&key, &log, hold_ms, &i.to_string())?);
                // Visibly waiting: its session exists and its blocking read is in flight.
                wait_for(|| {
                    let now = self.server.stats()?;
                    Ok(now.sessions >= base.sessions + i
                        && now.blocking_queries >= base_blocking + i)
                })
                .map_err(|e| {
                    format!("lock order: waiter {i} never had a session and a blocking read: {e}")
                })?;
            }
            let before = self.server.stats()?.counts;
            File::create(log.with_extension("go")).map_err(|e| e.to_string())?;
            for mut child in running {
                expect_code(child.wait(), 0, "a queued contender")
                    .map_err(|e| stderr_tail(e, &log))?;
            }
            drained = drained.plus(self.server.stats()?.counts.since(before));
            let order: Vec<String> = holds_in_order(&log, &key)?
                .into_iter()
                .map(|h| h.label)
                .filter(|label| label != "0")
                .collect();
            let fifo = order.len() == waiters
                && order
                    .iter()
                    .enumerate()
                    .all(|(i, label)| *label == (i + 1).to_string());
            if fifo {
                in_order += 1;
            }
            if shown.is_none() && (!fifo || round + 1 == rounds) {
                shown = Some(order.join(" "));
            }
        }
        Ok(Row {
            metric: format!(
                "lock order, {waiters} waiters queued one after another ({rounds} round{}; \
                 e.g. {})",
                if rounds == 1 { "" } else { "s" },
                shown.unwrap_or_default()
            ),
            values: [
                format!("FIFO in {in_order}/{rounds}"),
                String::new(),
                String::new(),
            ],
            requests: format!("{} per handoff", drained.per((waiters * rounds) as f64)),
            target: "arrival order".into(),
            met: Some(in_order == rounds),
        })
    }

    fn load(&self, waiters: usize, sample: Duration) -> Result<Row> {
        let key = "bench/load";
        let mut holder = self.hold(key)?;
        std::thread::sleep(SETTLE);
        let baseline = self.server.count(sample)?;

        let sessions_before = self.server.stats()?.sessions;
        let mut contenders = Vec::new();
        for _ in 0..waiters {
            contenders.push(
                self.execute(&[], key, &["true".as_ref()])
                    // Each says "interrupted by signal 15" when we stop it.
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
        }
        wait_for(|| Ok(self.server.stats()?.sessions >= sessions_before + waiters as u64))?;
        std::thread::sleep(SETTLE);
        let loaded = self.server.count(sample)?;

        for contender in &mut contenders {
            terminate(contender);
        }
        for mut contender in contenders {
            expect_code(contender.wait(), 143, "a waiter stopped by SIGTERM")?;
        }
        terminate(&mut holder);
        expect_code(holder.wait(), 143, "the holder stopped by SIGTERM")?;

        let minutes = sample.as_secs_f64() / 60.0;
        let per_waiter = loaded.minus(baseline, waiters as f64 * minutes);
        Ok(Row {
            metric: format!(
                "waiter load, {waiters} waiters ({} s sample; holder alone: {:.0} req/min)",
                sample.as_secs(),
                baseline.requests as f64 / minutes
            ),
            values: [
                format!("{:.1} req/waiter/min", per_waiter.requests),
                String::new(),
                String::new(),
            ],
            requests: format!("{per_waiter} per waiter per minute"),
            target: format!("≤ {WAITER_LOAD} req/waiter/min"),
            met: Some(per_waiter.requests <= WAITER_LOAD),
        })
    }

    /// Returns the reaction row and the footprint row (VmHWM read while each child ran).
    fn reaction(&self, runs: usize) -> Result<(Row, Row)> {
        let mut delays = Vec::new();
        let mut peak_rss = 0;
        for i in 0..runs {
            // A fresh key each time: a destroyed session leaves its key under lock-delay.
            let key = format!("bench/reaction/{i}");
            let file = self.dir.path.join(format!("reaction-{i}"));
            let mut supervisor = self
                .execute(
                    &[],
                    &key,
                    &[
                        self.me.as_os_str(),
                        "--child".as_ref(),
                        "term".as_ref(),
                        file.as_os_str(),
                    ],
                )
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let session = wait_for_value(|| {
                Ok(read_lines(&file)
                    .iter()
                    .find_map(|l| l.strip_prefix("ready ").map(str::to_owned)))
            })?;
            peak_rss = peak_rss.max(vm_hwm(supervisor.id())?);
            let destroyed_at = now_ns();
            let (status, _) = self
                .server
                .request("PUT", &format!("/v1/session/destroy/{session}"))?;
            if status != 200 {
                return Err(format!("destroying the session answered {status}"));
            }
            expect_code(supervisor.wait(), 101, "a supervisor whose lock was lost")?;
            let terminated_at: u64 = read_lines(&file)
                .iter()
                .find_map(|l| l.strip_prefix("term ")?.parse().ok())
                .ok_or("the child did not record SIGTERM")?;
            delays.push(terminated_at.saturating_sub(destroyed_at));
        }
        delays.sort_unstable();
        let p50 = percentile(&delays, 50);
        let reaction = Row {
            metric: format!("lock-loss reaction ({runs} runs)"),
            values: [ms(p50), String::new(), ms(*delays.last().unwrap_or(&0))],
            target: format!("p50 ≤ {}", ms(REACTION_P50)),
            met: Some(p50 <= REACTION_P50),
            ..Row::default()
        };
        let rss = Row {
            metric: "peak RSS of the supervisor (VmHWM)".into(),
            values: [mib(peak_rss), String::new(), String::new()],
            target: format!("≤ {}", mib(RSS)),
            met: Some(peak_rss <= RSS),
            ..Row::default()
        };
        Ok((reaction, rss))
    }
}

fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

fn expect_code(status: io::Result<std::process::ExitStatus>, code: i32, what: &str) -> Result<()> {
    let status = status.map_err(|e| format!("{what}: {e}"))?;
    if status.code() == Some(code) {
        Ok(())
    } else {
        Err(format!(
            "{what} ended with {status}, expected exit code {code}"
        ))
    }
}

/// An error about a contender, with the last lines the contenders of LOG wrote on stderr.
fn stderr_tail(error: String, log: &Path) -> String {
    let lines = read_lines(&log.with_extension("stderr"));
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    format!("{error}; the contenders' stderr ends with:\n  {tail}")
}

/// One child's time holding the lock, from a handoff log.
struct Hold {
    start: u64,
    end: u64,
    label: String,
}

/// The holds of a handoff log by start time, checked for overlaps: two children of the same
/// key running at once would mean mutual exclusion is broken.
fn holds_in_order(log: &Path, key: &str) -> Result<Vec<Hold>> {
    let mut starts = HashMap::new();
    let mut holds = Vec::new();
    for line in read_lines(log) {
        let words: Vec<&str> = line.split(' ').collect();
        let stamp = |word: &str| {
            word.parse::<u64>()
                .map_err(|_| format!("bad stamp in {line:?}"))
        };
        match words.as_slice() {
            ["S", pid, ns, label] => {
                starts.insert(pid.to_string(), (stamp(ns)?, label.to_string()));
            }
            ["E", pid, ns] => {
                let (start, label) = starts
                    .remove(*pid)
                    .ok_or_else(|| format!("end without start: {line:?}"))?;
                holds.push(Hold {
                    start,
                    end: stamp(ns)?,
                    label,
                });
            }
            _ => return Err(format!("bad line {line:?} in {}", log.display())),
        }
    }
    holds.sort_unstable_by_key(|h| h.start);
    let overlaps = holds.windows(2).filter(|w| w[1].start < w[0].end).count();
    if overlaps > 0 {
        return Err(format!(
            "{overlaps} holders of {key} overlapped: mutual exclusion is broken"
        ));
    }
    Ok(holds)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// VmHWM (peak resident set) of a process, in bytes.
fn vm_hwm(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmHWM in /proc/{pid}/status"))
}

fn wait_for(mut condition: impl FnMut() -> Result<bool>) -> Result<()> {
    poll_until(STATS_POLL, || Ok(condition()?.then_some(())))
}

fn wait_for_value<T>(probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    poll_until(POLL, probe)
}

fn poll_until<T>(interval: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("nothing happened for {DEADLINE:?}"));
        }
        std::thread::sleep(interval);
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

// ---- request counts ----

/// Requests the dev server counted, in all and by kind (`src/devserver/stats.rs`), and the
/// blocking reads among the consistent and the other ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Counts {
    requests: u64,
    writes: u64,
    consistent: u64,
    other: u64,
    consistent_blocking: u64,
    other_blocking: u64,
}

impl Counts {
    fn fields(self) -> [u64; 6] {
        [
            self.requests,
            self.writes,
            self.consistent,
            self.other,
            self.consistent_blocking,
            self.other_blocking,
        ]
    }

    fn from_fields(f: [u64; 6]) -> Counts {
        Counts {
            requests: f[0],
            writes: f[1],
            consistent: f[2],
            other: f[3],
            consistent_blocking: f[4],
            other_blocking: f[5],
        }
    }

    /// What was counted since `before` (counters only grow).
    fn since(self, before: Counts) -> Counts {
        let (a, b) = (self.fields(), before.fields());
        Counts::from_fields(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
    }

    fn plus(self, other: Counts) -> Counts {
        let (a, b) = (self.fields(), other.fields());
        Counts::from_fields(std::array::from_fn(|i| a[i] + b[i]))
    }

    fn blocking(&self) -> u64 {
        self.consistent_blocking + self.other_blocking
    }

    /// The same requests less the blocking reads.
    fn without_blocking(&self) -> Counts {
        Counts {
            requests: self.requests - self.blocking(),
            consistent: self.consistent - self.consistent_blocking,
            other: self.other - self.other_blocking,
            consistent_blocking: 0,
            other_blocking: 0,
            ..*self
        }
    }

    /// These requests divided by `n` (per handoff, per waiter and minute, ...).
    fn per(self, n: f64) -> Rates {
        let n = n.max(1.0);
        Rates {
            requests: self.requests as f64 / n,
            writes: self.writes as f64 / n,
            consistent: self.consistent as f64 / n,
            other: self.other as f64 / n,
        }
    }

    /// `(self − baseline) / n`, each kind on its own (so a kind may come out below zero when
    /// the baseline sample happened to catch more of it).
    fn minus(self, baseline: Counts, n: f64) -> Rates {
        let (a, b) = (self.per(n), baseline.per(n));
        Rates {
            requests: a.requests - b.requests,
            writes: a.writes - b.writes,
            consistent: a.consistent - b.consistent,
            other: a.other - b.other,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} W + {} C + {} O",
            self.requests, self.writes, self.consistent, self.other
        )
    }
}

/// Requests by kind, per something.
struct Rates {
    requests: f64,
    writes: f64,
    consistent: f64,
    other: f64,
}

impl std::fmt::Display for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} = {:.1} W + {:.1} C + {:.1} O",
            self.requests, self.writes, self.consistent, self.other
        )
    }
}

/// The most common count and how many runs had it.
fn mode(runs: &[Counts]) -> Option<(Counts, usize)> {
    let mut seen: HashMap<Counts, usize> = HashMap::new();
    for run in runs {
        *seen.entry(*run).or_default() += 1;
    }
    seen.into_iter().max_by_key(|(_, n)| *n)
}

/// The most common count, and in how many runs it was seen when not in all.
fn typical(runs: &[Counts]) -> String {
    match mode(runs) {
        Some((counts, n)) if n == runs.len() => format!("{counts}"),
        Some((counts, n)) => format!("{counts} (in {n} of {} runs)", runs.len()),
        None => String::new(),
    }
}

// ---- the table ----

#[derive(Default)]
struct Row {
    metric: String,
    /// p50 (or the value of a row that is not a distribution), p95, max.
    values: [String; 3],
    /// Requests by kind, where the row counts them.
    requests: String,
    target: String,
    met: Option<bool>,
}

fn print_table(rows: &[Row]) {
    let header = ["metric", "p50 / value", "p95", "max", "requests", "target"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let target = match r.met {
                Some(true) => format!("{} (met)", r.target),
                Some(false) => format!("{} (MISSED)", r.target),
                None => r.target.clone(),
            };
            [
                r.metric.clone(),
                r.values[0].clone(),
                r.values[1].clone(),
                r.values[2].clone(),
                r.requests.clone(),
                target,
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&header.map(String::from));
    line(&widths.map(|w| "-".repeat(w)));
    for row in &cells {
        line(row);
    }
}

// ---- the dev server and raw HTTP ----

struct Server {
    child: Child,
    address: String,
}

/// What `/_devserver/stats` says.
struct Stats {
    counts: Counts,
    sessions: u64,
    /// Blocking queries waiting right now.
    blocking_queries: u64,
}

impl Server {
    fn start(binary: &Path) -> Result<Server> {
        let mut child = Command::new(binary)
            .args(["dev-server", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the dev server: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr);
        let mut first = String::new();
        lines.read_line(&mut first).map_err(|e| e.to_string())?;
        let address = first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .ok_or_else(|| format!("unexpected dev-server output: {first:?}"))?
            .to_owned();
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = io::copy(&mut lines, &mut io::sink());
        });
        Ok(Server { child, address })
    }

    /// One request on its own connection; the status and the body.
    fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.address).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad answer {answer:?}"))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        Ok((status, body))
    }

    fn stats(&self) -> Result<Stats> {
        let (status, body) = self.request("GET", "/_devserver/stats")?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("stats answered {status} {body:?}: {e}"))?;
        let field = |name: &str| {
            json[name].as_u64().ok_or_else(|| {
                format!("no {name} in {body}: is the dev server older than this benchmark?")
            })
        };
        Ok(Stats {
            counts: Counts {
                requests: field("requests")?,
                writes: field("writes")?,
                consistent: field("consistent_reads")?,
                other: field("other")?,
                consistent_blocking: field("consistent_blocking_reads")?,
                other_blocking: field("other_blocking_reads")?,
            },
            sessions: field("sessions")?,
            blocking_queries: field("blocking_queries")?,
        })
    }

    /// Requests the server receives during `sample`.
    fn count(&self, sample: Duration) -> Result<Counts> {
        let before = self.stats()?.counts;
        std::thread::sleep(sample);
        Ok(self.stats()?.counts.since(before))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("consullock-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
