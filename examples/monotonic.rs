//! Prints CLOCK_MONOTONIC in nanoseconds: a system-wide clock that never jumps, so intervals
//! recorded by different processes (the torture test's critical sections) can be compared.
//! `date +%s%N` reads the wall clock, which may jump; `/proc/uptime` has 10 ms steps.

fn main() {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        eprintln!(
            "monotonic: clock_gettime failed: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    println!(
        "{}",
        now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
    );
}
