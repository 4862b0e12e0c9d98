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
//! The keeper is forked without exec from a multi-threaded process, so it may only make
//! async-signal-safe calls: it allocates nothing and takes no lock, it only uses raw syscalls.
//! It blocks every signal and leads a process group of its own, so neither a Ctrl-C nor a kill
//! of consullock's group takes it down before it has done its job.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Message from the command's pre-exec: `b'p'` then the pid, native-endian.
const PID_MESSAGE: u8 = b'p';
/// Message from consullock: everything of the command is gone, exit without killing.
const STAND_DOWN: u8 = b'x';
/// The pipe's read end, where the keeper moves it so it can close every other descriptor.
const KEEPER_FD: RawFd = 3;

/// A running keeper.
#[derive(Debug)]
pub(crate) struct Keeper {
    pid: i32,
    /// The write end; dropping it without [`Keeper::stand_down`] makes the keeper kill.
    pipe: Option<OwnedFd>,
}

impl Keeper {
    /// Forks the keeper. Call before spawning the command; pass [`Keeper::report_fd`] to the
    /// command's pre-exec ([`report_pid`]).
    pub(crate) fn start() -> io::Result<Keeper> {
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
            0 => keeper_main(read.as_raw_fd(), write.as_raw_fd()),
            pid => {
                drop(read);
                Ok(Keeper {
                    pid,
                    pipe: Some(write),
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

/// The keeper's whole life. Only raw, async-signal-safe syscalls: see the module docs.
fn keeper_main(read: RawFd, write: RawFd) -> ! {
    // SAFETY: each call below is a plain syscall on integers or on stack buffers owned by this
    // frame; nothing allocates, locks or unwinds, as a child forked from a multi-threaded
    // process requires.
    unsafe {
        libc::close(write);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::setpgid(0, 0);
        // Hold nothing of consullock's: not its connections, not the pipes its own parent
        // waits on for end-of-file.
        if read != KEEPER_FD {
            libc::dup2(read, KEEPER_FD);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            if null >= 0 && null != fd {
                libc::dup2(null, fd);
            }
        }
        close_from(KEEPER_FD + 1);
        libc::fcntl(KEEPER_FD, libc::F_SETFD, libc::FD_CLOEXEC);

        let mut group: i32 = 0;
        let mut message = [0u8; 5];
        let mut have = 0usize;
        loop {
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
