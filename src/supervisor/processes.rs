//! The command's processes: who they are, which still run, and how to signal them all.
//!
//! The command leads its own process group, so one `killpg` reaches everything that stays in
//! it. Two kinds of process leave it and must be reached another way:
//!
//! * the command itself, if it calls `setpgid`/`setsid`: it is signalled by pid as well, for as
//!   long as it is not reaped (the reaper's lock makes "not reaped" and "this pid is still it"
//!   the same thing, see [`super::reaper::signal_unreaped`]);
//! * descendants that start their own group or session (a daemonising `setsid`): when consullock
//!   is PID 1 or a subreaper, orphans are re-parented to it, so every descendant stays a process
//!   whose parent chain leads back to us. They are found through the kernel's lists of each
//!   task's children, not a listing of `/proc`: a listing is stale by the time its entries are
//!   read, and a process that keeps forking and exiting (a new pid every few milliseconds) is
//!   never where the listing saw it. Each task's list is read at one instant, and the walk is
//!   repeated until our own children are the same before and after it: then any process that
//!   moved while we walked would have become our child and changed that list. They are
//!   signalled one by one. Without PID 1 or a subreaper, such a process escapes (README says
//!   so).
//!
//! Descendants are found by scanning `/proc`, and a pid can be reused between the scan and the
//! signal. Each one is therefore signalled through a pidfd opened after the scan and checked
//! against the start time the scan saw: the signal reaches that process or nobody.

use std::io;

use super::signals::Signal;

/// One line of `/proc/PID/stat`, the fields we need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    /// `Z` (zombie) and `X` (dead) run nothing.
    pub(crate) state: u8,
    /// Clock ticks after boot; with the pid, names one process for its whole life.
    pub(crate) start_time: u64,
}

impl Proc {
    fn runs(&self) -> bool {
        !matches!(self.state, b'Z' | b'X')
    }
}

/// Parses a `/proc/PID/stat` line (the command name may hold spaces and parentheses).
pub(crate) fn parse_stat(pid: i32, stat: &str) -> Option<Proc> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) session(6) tty(7) tpgid(8) flags(9) minflt(10)
    // cminflt(11) majflt(12) cmajflt(13) utime(14) stime(15) cutime(16) cstime(17) priority(18)
    // nice(19) num_threads(20) itrealvalue(21) starttime(22): index = field - 3.
    Some(Proc {
        pid,
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// Every process in `/proc` (empty when there is no procfs).
pub(crate) fn scan() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// The processes that belong to the command.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tree {
    /// The command's pid, which is also its process group's id.
    pub(crate) child: i32,
    /// Our own pid: the root of the descendants.
    pub(crate) supervisor: i32,
    /// A process of ours that is not the command's (the keeper), never counted nor signalled.
    pub(crate) keeper: Option<i32>,
    /// Count every descendant of ours, in whatever group: we are PID 1 or a subreaper, so
    /// orphans come back to us instead of escaping to init.
    pub(crate) descendants: bool,
}

impl Tree {
    /// The command's processes that still run, other than the command itself: members of its
    /// group, and (with `descendants`) every descendant of ours but the keeper.
    pub(crate) fn others_running(&self) -> Vec<Proc> {
        // Listing /proc costs a read per process on the machine: skip it when the kernel says
        // the group is empty (the usual end of a command).
        let mut scanned: Option<Vec<Proc>> = None;
        let mut found: Vec<Proc> = Vec::new();
        if group_exists(self.child) {
            let procs = scanned.get_or_insert_with(scan);
            found.extend(
                procs
                    .iter()
                    .filter(|p| p.runs() && p.pid != self.child && Some(p.pid) != self.keeper)
                    .filter(|p| p.pgrp == self.child)
                    .copied(),
            );
        }
        if self.descendants {
            for p in self.descendants(&mut scanned) {
                if p.runs()
                    && p.pid != self.child
                    && Some(p.pid) != self.keeper
                    && !found.iter().any(|f| f.pid == p.pid)
                {
                    found.push(p);
                }
            }
        }
        found
    }

    /// Every descendant of ours, from the kernel's children lists, or from a /proc listing
    /// (`scanned`, made now if need be) where the kernel keeps no such lists.
    fn descendants(&self, scanned: &mut Option<Vec<Proc>>) -> Vec<Proc> {
        descendants_by_children(self.supervisor)
            .unwrap_or_else(|| descendants_of(self.supervisor, scanned.get_or_insert_with(scan)))
    }

    /// Sends `signal` to everything of the command: its group, the command by pid (until it is
    /// reaped), and (with `descendants`) every other descendant outside the group. Returns how
    /// many processes outside the group were signalled one by one.
    pub(crate) fn signal_all(&self, signal: Signal) -> usize {
        let Some(sig) = signal.to_nix() else {
            return 0;
        };
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child), sig);
        super::reaper::signal_unreaped(self.child, signal, self.child);
        if !self.descendants {
            return 0;
        }
        let mut one_by_one = 0;
        for p in self.descendants(&mut None) {
            if p.runs()
                && p.pgrp != self.child
                && p.pid != self.child
                && Some(p.pid) != self.keeper
                && signal_exact(&p, signal).is_ok()
            {
                one_by_one += 1;
            }
        }
        one_by_one
    }

    /// Sends `signal` to the command's group and to the command by pid: what forwarded signals
    /// reach (processes that left the group on purpose are not disturbed by a SIGWINCH).
    pub(crate) fn signal_command(&self, signal: Signal) {
        if let Some(sig) = signal.to_nix() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child), sig);
        }
        super::reaper::signal_unreaped(self.child, signal, self.child);
    }
}

/// Whether any process (a zombie included) is in process group `group`: one syscall.
fn group_exists(group: i32) -> bool {
    // SAFETY: kill with signal 0 only checks; the argument is a plain integer.
    let rc = unsafe { libc::kill(-group, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether `/proc` shows this process's PID namespace: a PID 1 started without a /proc of its
/// own (`unshare --pid --fork` without `--mount-proc`) sees the host's, where its own pid and
/// its descendants' pids mean other processes. Such a PID 1 reaches the command's group only.
pub(crate) fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .is_ok_and(|target| target.as_os_str() == std::process::id().to_string().as_str())
}

/// How many times [`descendants_by_children`] walks the tree before it settles for the last
/// walk: only a tree that changes faster than a walk (well under a millisecond for a few
/// processes) gets that far, and the last walk still holds processes of it.
const MAX_WALKS: usize = 50;

/// Every process below `root`, walking each task's `children` list; `None` where the kernel
/// does not keep those lists (`CONFIG_PROC_CHILDREN`), or without a procfs.
fn descendants_by_children(root: i32) -> Option<Vec<Proc>> {
    let mut found = Vec::new();
    for _ in 0..MAX_WALKS {
        let before = children_of(root)?;
        found.clear();
        let mut frontier = before.clone();
        while let Some(pid) = frontier.pop() {
            if found.contains(&pid) {
                continue;
            }
            found.push(pid);
            frontier.extend(children_of(pid).unwrap_or_default());
        }
        if children_of(root)? == before {
            break;
        }
    }
    Some(found.into_iter().filter_map(read_proc).collect())
}

/// The children of every task of process `pid`, sorted; `None` if they cannot be read.
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("children");
        match std::fs::read_to_string(&path) {
            Ok(list) => children.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            ),
            // The task ended since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound && path.parent()?.exists() => {
                return None;
            }
            Err(_) => {}
        }
    }
    children.sort_unstable();
    children.dedup();
    Some(children)
}

/// Every process whose parent chain leads to `root` (not `root` itself).
fn descendants_of(root: i32, procs: &[Proc]) -> Vec<Proc> {
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent) {
            if !found.iter().any(|f: &Proc| f.pid == p.pid) {
                found.push(*p);
                frontier.push(p.pid);
            }
        }
    }
    found
}

/// Signals the process `p` names, never one that took its pid since the scan.
fn signal_exact(p: &Proc, signal: Signal) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments; a returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid, 0) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ENOSYS) {
            // Kernels before 5.3: the check below still narrows the race to a few syscalls.
            if read_proc(p.pid).is_some_and(|now| now.start_time == p.start_time) {
                // SAFETY: plain syscall with integer arguments.
                if unsafe { libc::kill(p.pid, signal.as_raw()) } == 0 {
                    return Ok(());
                }
            }
            return Err(io::Error::last_os_error());
        }
        return Err(error);
    }
    // SAFETY: pidfd_open returned a new fd that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // The pidfd pins the process: if it is still the one the scan saw, it is the one we signal.
    if read_proc(p.pid).is_none_or(|now| now.start_time != p.start_time) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: plain syscall; `raw` is a valid pidfd for the duration, the info pointer is null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            raw,
            signal.as_raw(),
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_awkward_names() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615";
        let p = parse_stat(4242, line).unwrap();
        assert_eq!(
            (p.pid, p.state, p.ppid, p.pgrp, p.start_time),
            (4242, b'S', 1, 4242, 987654)
        );
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn descendants_follow_parent_chains() {
        let p = |pid, ppid| Proc {
            pid,
            ppid,
            pgrp: pid,
            state: b'S',
            start_time: 0,
        };
        let procs = [p(10, 1), p(11, 10), p(12, 11), p(13, 1), p(14, 12)];
        let mut found: Vec<i32> = descendants_of(10, &procs).iter().map(|p| p.pid).collect();
        found.sort();
        assert_eq!(found, [11, 12, 14]);
    }

    #[test]
    fn children_lists_find_a_grandchild() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let pid = child.id() as i32;
        let started = std::time::Instant::now();
        let grandchild = loop {
            let found = descendants_by_children(me).expect("children lists");
            if let Some(g) = found.iter().find(|p| p.ppid == pid) {
                break g.pid;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(
            descendants_by_children(me)
                .unwrap()
                .iter()
                .any(|p| p.pid == pid)
        );
        // SAFETY: plain syscall; the grandchild is ours to stop.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        child.wait().unwrap();
    }

    #[test]
    fn our_own_process_is_found_in_proc() {
        let me = std::process::id() as i32;
        let found = scan().into_iter().find(|p| p.pid == me).unwrap();
        assert!(found.runs());
    }
}
