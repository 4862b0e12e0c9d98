//! The keeper: a tiny process that kills the command's whole process group if consullock dies,
//! by any means, SIGKILL included.
//!
//! PR_SET_PDEATHSIG reaches only the direct child (and fires on the death of the *thread* that
//! spawned it): `sh -c 'sleep 300; ...'` loses its `sh`, and the `sleep` runs on, holding nothing.
//! The keeper closes that gap with a pipe. consullock keeps the write end (close-on-exec, so no
//! other program inherits it); the keeper blocks reading the other end. The kernel closes the
//! write end when consullock dies, however it dies, and the keeper's read returns end-of-file:
//! it then SIGKILLs the command's process group and exits. When supervision ends normally,
//! consullock first tells it to stand down.
//!
//! The command learns nothing about it, except through one write: between fork and exec, the
//! command's own process writes its pid (its process group's id) into the pipe, so the keeper
//! knows the group before the command can run a single instruction of its own, and a consullock
//! killed right after the fork still takes the command with it.
//!
//! **A stopped consullock.** SIGSTOP, a debugger or a frozen cgroup stops every thread of
//! consullock, the kill switch included, while the session runs out on Consul's side. The
//! keeper is not stopped with it, so it also enforces the lock's deadline: the [`Deadline`] is
//! mirrored into a page shared with the keeper (written by the thread that moves it, so the
//! page is never behind), and an eventfd wakes the keeper when it moves. Once the deadline plus
//! the kill grace has passed, the keeper SIGKILLs the group. It sends no SIGTERM: a healthy
//! consullock's kill switch sends that at the deadline, and a second one from the keeper could
//! mean "quit now" to the command; a SIGKILL at the end of the grace is what the kill switch
//! would send too.
//!
//! **A kill by name.** `pkill consullock`, `pkill -f consullock` and `killall consullock` must
//! not take the keeper with consullock: it names itself `lock-keeper` (its `comm`) and writes
//! `lock-keeper for pid N` over its copy of the command line, as `setproctitle` does.
//!
//! The keeper is forked without exec from a multi-threaded process, so it may only make
//! async-signal-safe calls: it allocates nothing and takes no lock, it only uses raw syscalls.
//! It blocks every signal and leads a process group of its own, so neither a Ctrl-C nor a kill
//! of consullock's group takes it down before it has done its job.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Deadline, Mirror};

/// Message from the command's pre-exec: `b'p'` then the pid, native-endian.
const PID_MESSAGE: u8 = b'p';
/// Message from consullock: everything of the command is gone, exit without killing.
const STAND_DOWN: u8 = b'x';
/// The pipe's read end, where the keeper moves it so it can close every other descriptor.
const KEEPER_FD: RawFd = 3;
/// The eventfd that says the deadline moved, where the keeper moves it.
const WAKE_FD: RawFd = 4;
/// The keeper's name (`comm`, at most 15 bytes): not consullock's, so a kill by name spares it.
const NAME: &std::ffi::CStr = c"lock-keeper";
/// After the deadline, how often the keeper kills the group again, and how many times: a
/// group SIGKILL already reaches a process forking at that moment (the kernel aborts a fork
/// with a fatal signal pending), the repeats are a margin. It then stops, as the group's
/// processes may linger as zombies of a stopped consullock, keeping the group's id alive.
const KILL_AGAIN_MS: libc::c_int = 50;
const KILL_REPEATS: u32 = 10;
/// Longest the keeper sleeps while a deadline is set: `poll` counts time on `CLOCK_MONOTONIC`,
/// which stands still during a suspend; the deadline is on `CLOCK_BOOTTIME`.
const CLOCK_CHECK_MS: i64 = 1000;

/// The page shared with the keeper: what it must enforce.
#[repr(C)]
struct Page {
    /// The deadline in `CLOCK_BOOTTIME` nanoseconds; [`NO_DEADLINE`] when nothing limits it.
    deadline_ns: AtomicU64,
    /// The kill grace in nanoseconds.
    grace_ns: AtomicU64,
}

const NO_DEADLINE: u64 = 0;

/// The shared page, mapped in consullock and (through the fork) in the keeper, and the eventfd
/// that wakes the keeper when the deadline moves.
struct SharedDeadline {
    page: NonNull<Page>,
    wake: OwnedFd,
}

// SAFETY: the page is only accessed through atomics, and the mapping lives as long as this.
unsafe impl Send for SharedDeadline {}
// SAFETY: as above.
unsafe impl Sync for SharedDeadline {}

impl SharedDeadline {
    fn new(grace: Duration) -> io::Result<SharedDeadline> {
        // SAFETY: an anonymous shared mapping of one page; the result is checked.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Page>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            let error = io::Error::last_os_error();
            // SAFETY: unmaps exactly what was mapped above.
            unsafe { libc::munmap(mapped, std::mem::size_of::<Page>()) };
            return Err(error);
        }
        let page = NonNull::new(mapped.cast::<Page>()).expect("mmap succeeded");
        let shared = SharedDeadline {
            page,
            // SAFETY: the eventfd was just created and is owned by nothing else.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
        };
        let grace = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        shared.page().grace_ns.store(grace, Ordering::SeqCst);
        shared
            .page()
            .deadline_ns
            .store(NO_DEADLINE, Ordering::SeqCst);
        Ok(shared)
    }

    fn page(&self) -> &Page {
        // SAFETY: the mapping is valid, aligned and zero-initialised (a valid `Page`) for as
        // long as `self` lives.
        unsafe { self.page.as_ref() }
    }
}

impl Mirror for SharedDeadline {
    fn show(&self, at: Option<Duration>) {
        let ns = match at {
            None => NO_DEADLINE,
            // A deadline set in the past (an expired one is 0) passes now: the kill switch
            // counts the grace from the moment it fires, and so must the keeper.
            Some(at) => u64::try_from(at.max(crate::clock::now()).as_nanos()).unwrap_or(u64::MAX),
        };
        self.page().deadline_ns.store(ns, Ordering::SeqCst);
        // SAFETY: writes 8 bytes from a valid stack buffer to our eventfd; it is non-blocking,
        // and a failure (a counter at its maximum) still leaves the keeper awake.
        let _ =
            unsafe { libc::write(self.wake.as_raw_fd(), 1u64.to_ne_bytes().as_ptr().cast(), 8) };
    }
}

impl Drop for SharedDeadline {
    fn drop(&mut self) {
        // SAFETY: unmaps the page mapped in `new`; nothing refers to it any more.
        unsafe { libc::munmap(self.page.as_ptr().cast(), std::mem::size_of::<Page>()) };
    }
}

/// A running keeper.
pub(crate) struct Keeper {
    pid: i32,
    /// The write end; dropping it without [`Keeper::stand_down`] makes the keeper kill.
    pipe: Option<OwnedFd>,
    /// The deadline mirrored into the shared page, until the keeper is done.
    deadline: Deadline,
    mirror: Arc<dyn Mirror>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper").field("pid", &self.pid).finish()
    }
}

impl Keeper {
    /// Forks the keeper, which enforces `deadline` (plus `grace`) on the command's group even
    /// while consullock is stopped. Call before spawning the command; pass
    /// [`Keeper::report_fd`] to the command's pre-exec ([`report_pid`]).
    pub(crate) fn start(deadline: &Deadline, grace: Duration) -> io::Result<Keeper> {
        let shared = Arc::new(SharedDeadline::new(grace)?);
        let title = Title::prepare();
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child branch only runs `keeper_main`, which makes async-signal-safe
        // syscalls and never returns; the parent branch continues normally.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => keeper_main(&Fds {
                read: read.as_raw_fd(),
                write: write.as_raw_fd(),
                wake: shared.wake.as_raw_fd(),
                page: shared.page.as_ptr(),
                title: &title,
            }),
            pid => {
                drop(read);
                // From now on, every move of the deadline reaches the keeper.
                let mirror: Arc<dyn Mirror> = shared;
                deadline.add_mirror(mirror.clone());
                Ok(Keeper {
                    pid,
                    pipe: Some(write),
                    deadline: deadline.clone(),
                    mirror,
                })
            }
        }
    }

    /// The keeper's pid (it is a child of ours; the reaper collects it).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The descriptor the command's pre-exec writes its pid into (see [`report_pid`]).
    pub(crate) fn report_fd(&self) -> RawFd {
        self.pipe.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Everything of the command is gone: the keeper exits without killing.
    pub(crate) fn stand_down(mut self) {
        if let Some(pipe) = self.pipe.take() {
            // SAFETY: plain write of one byte from a valid buffer to a fd we own.
            let _ = unsafe { libc::write(pipe.as_raw_fd(), [STAND_DOWN].as_ptr().cast(), 1) };
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.deadline.remove_mirror(&self.mirror);
    }
}

/// Where consullock's command line lies in memory, and what the keeper writes over its copy;
/// prepared before the fork, since the keeper may not allocate.
struct Title {
    area: Option<(usize, usize)>,
    text: Vec<u8>,
}

impl Title {
    fn prepare() -> Title {
        Title {
            area: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|stat| argument_area(&stat)),
            text: format!("lock-keeper for pid {}", std::process::id()).into_bytes(),
        }
    }
}

/// `arg_start` and `arg_end` from a `/proc/PID/stat` line (fields 48 and 49; the name in field
/// 2 may hold spaces and parentheses, so count from the last `)`).
fn argument_area(stat: &str) -> Option<(usize, usize)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    (start != 0 && end > start).then_some((start, end))
}

/// Called in the command's process between fork and exec: tells the keeper the pid, which is the
/// process group's id. Async-signal-safe.
pub(crate) fn report_pid(fd: RawFd) -> io::Result<()> {
    if fd < 0 {
        return Ok(());
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut message = [0u8; 5];
    message[0] = PID_MESSAGE;
    message[1..].copy_from_slice(&pid.to_ne_bytes());
    // SAFETY: writes 5 bytes from a valid stack buffer; a pipe write this small is atomic.
    let written = unsafe { libc::write(fd, message.as_ptr().cast(), message.len()) };
    if written == message.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the keeper inherits, by raw number and address.
struct Fds<'a> {
    read: RawFd,
    write: RawFd,
    wake: RawFd,
    page: *const Page,
    title: &'a Title,
}

/// The keeper's whole life. Only raw, async-signal-safe syscalls: see the module docs.
fn keeper_main(fds: &Fds<'_>) -> ! {
    // SAFETY: each call below is a plain syscall on integers or on stack buffers owned by this
    // frame, or an atomic load from the shared page, which stays mapped in this process; the
    // title overwrite writes within this process's own copy of the argument area. Nothing
    // allocates, locks or unwinds, as a child forked from a multi-threaded process requires.
    unsafe {
        libc::close(fds.write);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr());
        if let Some((start, end)) = fds.title.area {
            let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
            let text = &fds.title.text[..fds.title.text.len().min(area.len() - 1)];
            area[..text.len()].copy_from_slice(text);
            area[text.len()..].fill(0);
        }
        // Hold nothing of consullock's: not its connections, not the pipes its own parent
        // waits on for end-of-file. The eventfd may sit where the pipe goes: move it first.
        let wake = if fds.wake == KEEPER_FD {
            libc::fcntl(fds.wake, libc::F_DUPFD_CLOEXEC, WAKE_FD + 1)
        } else {
            fds.wake
        };
        if fds.read != KEEPER_FD {
            libc::dup2(fds.read, KEEPER_FD);
        }
        if wake != WAKE_FD {
            libc::dup2(wake, WAKE_FD);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            if null >= 0 && null != fd {
                libc::dup2(null, fd);
            }
        }
        close_from(WAKE_FD + 1);
        libc::fcntl(KEEPER_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(WAKE_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        let page = &*fds.page;

        let mut group: i32 = 0;
        let mut kills = 0;
        let mut message = [0u8; 5];
        let mut have = 0usize;
        loop {
            // Past the deadline and its grace: the lock may be someone else's; kill, and kill
            // again a few times while anything of the group is left.
            let timeout = match enforce(page, group) {
                Enforced::Killed if kills < KILL_REPEATS => {
                    kills += 1;
                    KILL_AGAIN_MS
                }
                Enforced::Killed | Enforced::GroupGone => {
                    group = 0;
                    -1
                }
                Enforced::Wait(ms) => ms,
            };
            let mut polled = [
                libc::pollfd {
                    fd: KEEPER_FD,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: WAKE_FD,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ready = libc::poll(polled.as_mut_ptr(), 2, timeout);
            if ready <= 0 {
                continue;
            }
            if polled[1].revents != 0 {
                let mut count = [0u8; 8];
                libc::read(WAKE_FD, count.as_mut_ptr().cast(), count.len());
            }
            if polled[0].revents == 0 {
                continue;
            }
            let n = libc::read(
                KEEPER_FD,
                message.as_mut_ptr().add(have).cast(),
                message.len() - have,
            );
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if n == 0 {
                break;
            }
            have += n as usize;
            match message[0] {
                STAND_DOWN => libc::_exit(0),
                PID_MESSAGE if have == message.len() => {
                    group = i32::from_ne_bytes([message[1], message[2], message[3], message[4]]);
                    have = 0;
                }
                PID_MESSAGE => {}
                _ => have = 0,
            }
        }
        // consullock is gone without standing us down.
        if group > 0 {
            libc::kill(-group, libc::SIGKILL);
            libc::kill(group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// What the keeper did about the deadline.
enum Enforced {
    /// Nothing yet: look again within this many milliseconds (-1: only when woken).
    Wait(libc::c_int),
    /// The deadline and its grace passed: the group was sent SIGKILL.
    Killed,
    /// The deadline passed and nothing of the group is left: never signal that id again (it
    /// may be reused).
    GroupGone,
}

/// Kills `group` once the page's deadline plus grace has passed. Async-signal-safe.
fn enforce(page: &Page, group: i32) -> Enforced {
    let deadline = page.deadline_ns.load(Ordering::SeqCst);
    if group <= 0 || deadline == NO_DEADLINE {
        return Enforced::Wait(-1);
    }
    let kill_at = deadline.saturating_add(page.grace_ns.load(Ordering::SeqCst));
    let now = boottime_ns();
    if now < kill_at {
        let ms = ((kill_at - now) / 1_000_000 + 1).min(CLOCK_CHECK_MS as u64);
        return Enforced::Wait(ms as libc::c_int);
    }
    // SAFETY: kill is a plain syscall.
    let (by_group, by_pid) = unsafe {
        (
            libc::kill(-group, libc::SIGKILL),
            libc::kill(group, libc::SIGKILL),
        )
    };
    if by_group == 0 || by_pid == 0 {
        Enforced::Killed
    } else {
        Enforced::GroupGone
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds (the clock of [`Deadline`]). Async-signal-safe.
fn boottime_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `now`.
    let clock = if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } == 0 {
        now
    } else {
        // SAFETY: as above; the fallback clock::now uses too.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        now
    };
    clock.tv_sec as u64 * 1_000_000_000 + clock.tv_nsec as u64
}

/// Closes every descriptor from `first` on. Async-signal-safe.
unsafe fn close_from(first: RawFd) {
    // SAFETY: close_range is a plain syscall; on kernels without it, close each descriptor up
    // to the process's limit (close on a descriptor that is not open is harmless).
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) == 0 {
            return;
        }
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as RawFd
        } else {
            4096
        };
        for fd in first..max {
            libc::close(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_is_read_past_a_name_with_spaces_and_parentheses() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "140737000".into();
        fields[49 - 3] = "140737100".into();
        let stat = format!("123 (odd) name) {}", fields.join(" "));
        assert_eq!(argument_area(&stat), Some((140737000, 140737100)));
        assert_eq!(argument_area("123 (short) S 1"), None);
    }
}
