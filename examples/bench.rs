//! Benchmarks what users of `consullock execute` feel, against a dev server it starts itself, and
//! prints one table (issue 7).
//!
//! ```text
//! cargo build --release && cargo run --release --example bench [-- --quick]
//! ```
//!
//! It drives the release binary `target/release/consullock` (found next to this example's own
//! executable, or named by `CONSULLOCK_BENCH_BIN`): `cargo run --example` does not build it, so
//! build it first. It measures:
//!
//! * **execute overhead**: wall time of `consullock execute KEY -- true` minus that of spawning
//!   `true` directly (p50 minus p50, p95 minus p95), runs interleaved;
//! * **handoff**: from the holder's child exiting to the next holder's child starting, with 1,
//!   10 and 50 waiters. The children are this program (`--child handoff`): each writes
//!   `CLOCK_MONOTONIC` at the top of `main` and right before it exits, so a handoff is exactly
//!   "child A's last instruction → child B's first one". The stamps also check mutual exclusion;
//! * **server load while waiting**: requests per waiting contender per minute while the lock is
//!   held, minus a baseline taken with the holder alone (its renewals and lock watch);
//! * **lock-loss reaction**: a raw `PUT /v1/session/destroy/ID` → the child receiving SIGTERM
//!   (the child, `--child term`, blocks SIGTERM and stamps the time `sigwait` returns);
//! * **footprint**: the supervisor's VmHWM while its child runs, and the binary's size.
//!
//! Numbers are wall-clock on whatever else the machine is doing: run it on an idle machine.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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

/// How often the driver asks the server's stats (each is a new connection: keep it rare).
const STATS_POLL: Duration = Duration::from_millis(10);

/// Deadline of anything the benchmark waits for: a hung supervisor fails the run, not the CI.
const DEADLINE: Duration = Duration::from_secs(60);

/// How long the load benchmark lets the waiters settle into their blocking queries.
const SETTLE: Duration = Duration::from_millis(1000);

/// Sizes of one run.
struct Plan {
    overhead_runs: usize,
    handoffs: usize,
    waiters: &'static [usize],
    load_waiters: usize,
    load_sample: Duration,
    reactions: usize,
}

const FULL: Plan = Plan {
    overhead_runs: 200,
    handoffs: 100,
    waiters: &[1, 10, 50],
    load_waiters: 10,
    load_sample: Duration::from_secs(20),
    reactions: 20,
};

const QUICK: Plan = Plan {
    overhead_runs: 20,
    handoffs: 20,
    waiters: &[1, 10, 50],
    load_waiters: 10,
    load_sample: Duration::from_secs(4),
    reactions: 5,
};

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

/// `--child handoff LOG HOLD_MS`: stamp the start, hold, stamp the end, exit.
/// `--child term FILE`: block SIGTERM, write `ready SESSION`, stamp when SIGTERM arrives.
fn child(start: u64, args: &[String]) -> Result<()> {
    match args {
        [mode, log, hold_ms] if mode == "handoff" => {
            let hold: u64 = hold_ms.parse().map_err(|_| "bad HOLD_MS")?;
            let log = Path::new(log);
            let gate = log.with_extension("go");
            let mut log = append(log)?;
            let pid = std::process::id();
            write_line(&mut log, &format!("S {pid} {start}\n"))?;
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
    eprintln!("bench: execute overhead, {} runs", plan.overhead_runs);
    push(&mut rows, bench.overhead(plan.overhead_runs)?);
    for &waiters in plan.waiters {
        eprintln!(
            "bench: handoff, {waiters} waiters, {} handoffs",
            plan.handoffs
        );
        push(&mut rows, bench.handoff(waiters, plan.handoffs)?);
    }
    eprintln!(
        "bench: server load, {} waiters, {:?} samples",
        plan.load_waiters, plan.load_sample
    );
    push(&mut rows, bench.load(plan.load_waiters, plan.load_sample)?);
    eprintln!("bench: lock-loss reaction, {} runs", plan.reactions);
    let (reaction, rss) = bench.reaction(plan.reactions)?;
    push(&mut rows, reaction);
    push(&mut rows, rss);
    let size = std::fs::metadata(&bench.binary)
        .map_err(|e| e.to_string())?
        .len();
    push(
        &mut rows,
        Row {
            metric: "release binary size".into(),
            values: [mib(size), String::new(), String::new()],
            target: String::new(),
            met: None,
        },
    );

    print_table(&rows);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores, {cpu}; load average before: {}; took {:.0} s",
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Adds a row, and shows it at once on stderr (a long run is not silent until its end).
fn push(rows: &mut Vec<Row>, row: Row) {
    eprintln!("bench:   {}: {}", row.metric, row.values.join(" ").trim());
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
    /// A `consullock execute KEY -- ARGS...` command against our server.
    fn execute(&self, key: &str, args: &[&std::ffi::OsStr]) -> Command {
        let mut cmd = Command::new(&self.binary);
        for name in CONSUL_VARIABLES {
            cmd.env_remove(name);
        }
        cmd.env("CONSUL_HTTP_ADDR", &self.server.address)
            .arg("execute")
            .arg(key)
            .arg("--")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn overhead(&self, runs: usize) -> Result<Row> {
        let warmup = 3;
        let mut direct = Vec::new();
        let mut supervised = Vec::new();
        for i in 0..runs + warmup {
            let t = Instant::now();
            expect_code(Command::new("true").status(), 0, "true")?;
            let plain = t.elapsed();
            let t = Instant::now();
            let status = self.execute("bench/overhead", &["true".as_ref()]).status();
            expect_code(status, 0, "consullock execute bench/overhead -- true")?;
            let locked = t.elapsed();
            if i >= warmup {
                direct.push(plain.as_nanos() as u64);
                supervised.push(locked.as_nanos() as u64);
            }
        }
        direct.sort_unstable();
        supervised.sort_unstable();
        let p50 = percentile(&supervised, 50).saturating_sub(percentile(&direct, 50));
        let p95 = percentile(&supervised, 95).saturating_sub(percentile(&direct, 95));
        Ok(Row {
            metric: format!("execute overhead ({runs} runs)"),
            values: [ms(p50), ms(p95), String::new()],
            target: "p50 ≤ 5 ms".into(),
            met: Some(p50 <= 5_000_000),
        })
    }

    /// Keeps `waiters` + 1 supervisors contending for one key, each child holding briefly, and
    /// measures the handoffs that happen once all of them are in place.
    fn handoff(&self, waiters: usize, handoffs: usize) -> Result<Row> {
        let key = format!("bench/handoff/{waiters}");
        let log = self.dir.path.join(format!("handoff-{waiters}.log"));
        // Long enough for the replacement of a finished contender to be waiting again before
        // the next handoff, and for a wake-up storm of 50 waiters to die down.
        let hold_ms = (20 + waiters).to_string();
        let spawn = || {
            self.execute(
                &key,
                &[
                    self.me.as_os_str(),
                    "--child".as_ref(),
                    "handoff".as_ref(),
                    log.as_os_str(),
                    hold_ms.as_ref(),
                ],
            )
            .spawn()
            .map_err(|e| format!("spawn: {e}"))
        };
        let sessions_before = self.server.stats()?.sessions;
        let mut running: Vec<Child> = Vec::new();
        for _ in 0..=waiters {
            running.push(spawn()?);
        }
        // Nobody can leave before the gate opens (see the child), so the count only grows.
        wait_for(|| Ok(self.server.stats()?.sessions > sessions_before + waiters as u64))?;
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
                    expect_code(finished.wait(), 0, "a contender")?;
                    finished_after_ready += 1;
                    running.push(spawn()?);
                } else {
                    i += 1;
                }
            }
            std::thread::sleep(POLL);
        }
        let stop_at = now_ns();
        for mut child in running {
            expect_code(child.wait(), 0, "a contender")?;
        }

        let mut holds = parse_holds(&log)?;
        holds.sort_unstable();
        let overlaps = holds.windows(2).filter(|w| w[1].0 < w[0].1).count();
        if overlaps > 0 {
            return Err(format!(
                "{overlaps} holders of {key} overlapped: mutual exclusion is broken"
            ));
        }
        let mut gaps: Vec<u64> = holds
            .windows(2)
            .filter(|w| w[0].1 >= ready_at && w[0].1 <= stop_at)
            .map(|w| w[1].0 - w[0].1)
            .collect();
        gaps.sort_unstable();
        let p50 = percentile(&gaps, 50);
        let plural = if waiters == 1 { "" } else { "s" };
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
            target: if waiters == 10 {
                "p50 ≤ 5 ms".into()
            } else {
                String::new()
            },
            met: (waiters == 10).then_some(p50 <= 5_000_000),
        })
    }

    fn load(&self, waiters: usize, sample: Duration) -> Result<Row> {
        let key = "bench/load";
        let mut holder = self
            .execute(key, &["sleep".as_ref(), "3600".as_ref()])
            .spawn()
            .map_err(|e| e.to_string())?;
        wait_for(|| {
            let (status, body) = self.server.request("GET", &format!("/v1/kv/{key}"))?;
            Ok(status == 200 && body.contains("\"Session\""))
        })?;
        std::thread::sleep(SETTLE);
        let baseline = self.server.count_requests(sample)?;

        let sessions_before = self.server.stats()?.sessions;
        let mut contenders = Vec::new();
        for _ in 0..waiters {
            contenders.push(
                self.execute(key, &["true".as_ref()])
                    // Each says "interrupted by signal 15" when we stop it.
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
        }
        wait_for(|| Ok(self.server.stats()?.sessions >= sessions_before + waiters as u64))?;
        std::thread::sleep(SETTLE);
        let loaded = self.server.count_requests(sample)?;

        for contender in &mut contenders {
            terminate(contender);
        }
        for mut contender in contenders {
            expect_code(contender.wait(), 143, "a waiter stopped by SIGTERM")?;
        }
        terminate(&mut holder);
        expect_code(holder.wait(), 143, "the holder stopped by SIGTERM")?;

        let minutes = sample.as_secs_f64() / 60.0;
        let per_waiter = (loaded as f64 - baseline as f64) / waiters as f64 / minutes;
        Ok(Row {
            metric: format!(
                "server load, {waiters} waiters ({} s sample; holder alone: {:.0} req/min)",
                sample.as_secs(),
                baseline as f64 / minutes
            ),
            values: [
                format!("{per_waiter:.1} req/waiter/min"),
                String::new(),
                String::new(),
            ],
            target: String::new(),
            met: None,
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
            target: "p50 ≤ 50 ms".into(),
            met: Some(p50 <= 50_000_000),
        };
        let rss = Row {
            metric: "peak RSS of the supervisor (VmHWM)".into(),
            values: [mib(peak_rss), String::new(), String::new()],
            target: "≤ 8 MiB".into(),
            met: Some(peak_rss <= 8 << 20),
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

/// `(start, end)` of every child of a handoff log.
fn parse_holds(log: &Path) -> Result<Vec<(u64, u64)>> {
    let mut starts = std::collections::HashMap::new();
    let mut holds = Vec::new();
    for line in read_lines(log) {
        let mut words = line.split(' ');
        let (Some(kind), Some(pid), Some(ns)) = (words.next(), words.next(), words.next()) else {
            return Err(format!("bad line {line:?} in {}", log.display()));
        };
        let ns: u64 = ns.parse().map_err(|_| format!("bad stamp in {line:?}"))?;
        match kind {
            "S" => {
                starts.insert(pid.to_owned(), ns);
            }
            "E" => {
                let start = starts
                    .remove(pid)
                    .ok_or_else(|| format!("end without start: {line:?}"))?;
                holds.push((start, ns));
            }
            _ => return Err(format!("bad line {line:?}")),
        }
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

// ---- the table ----

struct Row {
    metric: String,
    /// p50, p95, max.
    values: [String; 3],
    target: String,
    met: Option<bool>,
}

fn print_table(rows: &[Row]) {
    let header = ["metric", "p50", "p95", "max", "target"];
    let cells: Vec<[String; 5]> = rows
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

struct Stats {
    requests: u64,
    sessions: u64,
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
            json[name]
                .as_u64()
                .ok_or_else(|| format!("no {name} in {body}"))
        };
        Ok(Stats {
            requests: field("requests")?,
            sessions: field("sessions")?,
        })
    }

    /// Requests the server receives during `sample` (its stats endpoint does not count itself).
    fn count_requests(&self, sample: Duration) -> Result<u64> {
        let before = self.stats()?.requests;
        std::thread::sleep(sample);
        Ok(self.stats()?.requests - before)
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
