//! Critical sections stamped on CLOCK_MONOTONIC by the commands themselves, with
//! `examples/heartbeat.rs` (see its docs for the line format `KIND RUN TAG PID NS`), and read
//! back as intervals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `heartbeat` example binary, built on demand when `cargo test` was limited to the
/// integration tests (examples are only built by a plain `cargo test`).
pub(crate) fn heartbeat() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_consullock"));
    let path = bin.parent().unwrap().join("examples").join("heartbeat");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "heartbeat"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example heartbeat");
        assert!(status.success(), "building the heartbeat helper failed");
    }
    path
}

/// One stamp line: `KIND RUN TAG PID NS`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp<'a> {
    /// `S` (start), `A` (alive), `T` (SIGTERM seen), `E` (end).
    pub(crate) kind: &'a str,
    pub(crate) run: u64,
    pub(crate) tag: &'a str,
    pub(crate) pid: u32,
    pub(crate) at: u128,
}

/// Parses one stamp line.
pub(crate) fn parse_stamp(line: &str) -> Option<Stamp<'_>> {
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        [kind, run, tag, pid, at] => Some(Stamp {
            kind,
            run: run.parse().ok()?,
            tag,
            pid: pid.parse().ok()?,
            at: at.parse().ok()?,
        }),
        _ => None,
    }
}

/// What one run (one `$RUN_ID`) stamped: its process, its first and last stamps, and whether
/// it stamped its own end (`E`: it ran to its end; without it, it was killed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) tag: String,
    pub(crate) pid: u32,
    pub(crate) first: u128,
    pub(crate) last: u128,
    pub(crate) ended: bool,
}

/// Every run in the stamp log at `log`, by `$RUN_ID` (one heartbeat process per run). A line
/// that does not parse fails the test: a torn line would hide a moment something ran.
pub(crate) fn runs(log: &Path) -> BTreeMap<u64, Run> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: BTreeMap<u64, Run> = BTreeMap::new();
    for line in text.lines() {
        let stamp = parse_stamp(line).unwrap_or_else(|| panic!("bad stamp line {line:?}"));
        let run = runs.entry(stamp.run).or_insert_with(|| Run {
            tag: stamp.tag.to_string(),
            pid: stamp.pid,
            first: stamp.at,
            last: stamp.at,
            ended: false,
        });
        assert_eq!(
            run.pid, stamp.pid,
            "run {} stamped from two processes",
            stamp.run
        );
        run.first = run.first.min(stamp.at);
        run.last = run.last.max(stamp.at);
        run.ended |= stamp.kind == "E";
    }
    runs
}
