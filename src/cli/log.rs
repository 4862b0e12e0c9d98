/*!
Everything consullock writes to stderr goes through here: log lines, error lines, the waiting
line. Nothing that keeps a lock safe may ever wait on stderr.

stderr is often a pipe: a log collector, a terminal multiplexer, or the command's own stderr,
which the command shares with us. When its reader stops reading, the pipe fills and `write(2)`
blocks. A renewal loop or a kill path that logs would then stop with it, and the command would
run on without its lock. So writers never write: they append the line to a bounded queue and
return at once. One thread, which does nothing else, takes lines off the queue and writes them.
When the queue is full, lines are dropped and counted; once stderr takes lines again, that thread
first says how many were lost.

Why not `O_NONBLOCK` on fd 2: the flag belongs to the open file description, which the command
inherits, and many programs fail on `EAGAIN` from a write they did not expect to fail.

At exit, [`flush`] gives the queue a bounded time to drain, so the last lines (the error that
explains the exit code) are seen whenever stderr is read at all, and a stuck stderr delays the
exit by at most that time.
*/

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Most bytes held while stderr is not taking them; lines beyond are dropped.
const CAPACITY: usize = 256 * 1024;

/// How long [`flush`] waits at exit for stderr to take what is queued.
pub(crate) const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

struct Queue {
    state: Mutex<State>,
    /// Signalled when a line is queued.
    queued: Condvar,
    /// Signalled when the writer has written everything.
    drained: Condvar,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    dropped: u64,
    /// The writer thread is inside `write(2)`.
    writing: bool,
    /// The writer thread could not be started: write nothing rather than block.
    dead: bool,
}

static STDERR: OnceLock<Arc<Queue>> = OnceLock::new();

fn stderr_queue() -> &'static Queue {
    STDERR.get_or_init(|| Queue::start(io::stderr()))
}

impl Queue {
    /// A queue whose own thread writes to `sink`.
    fn start(sink: impl Write + Send + 'static) -> Arc<Queue> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            drained: Condvar::new(),
        });
        let writer = queue.clone();
        let started = std::thread::Builder::new()
            .name("consullock-stderr".into())
            .spawn(move || writer.write_loop(sink));
        if started.is_err() {
            queue.lock().dead = true;
        }
        queue
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `bytes`; never waits for the sink. Returns false when they were dropped.
    fn push(&self, bytes: Vec<u8>) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let mut state = self.lock();
        if state.dead || state.bytes + bytes.len() > CAPACITY {
            state.dropped += 1;
            return false;
        }
        state.bytes += bytes.len();
        state.lines.push_back(bytes);
        self.queued.notify_one();
        true
    }

    /// Waits up to `timeout` until everything queued has been written; false if it had not.
    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.dead && (state.writing || !state.lines.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .drained
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn write_loop(&self, mut sink: impl Write) {
        loop {
            let (line, dropped) = {
                let mut state = self.lock();
                while state.lines.is_empty() {
                    state.writing = false;
                    self.drained.notify_all();
                    state = self.queued.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                let line = state.lines.pop_front().unwrap_or_default();
                state.bytes -= line.len();
                state.writing = true;
                (line, std::mem::take(&mut state.dropped))
            };
            if dropped > 0 {
                let notice = format!(
                    "consullock: {dropped} log line(s) dropped while stderr was not being read\n"
                );
                let _ = sink.write_all(notice.as_bytes());
            }
            // A closed or broken stderr loses the line; there is nowhere else to say so.
            let _ = sink.write_all(&line);
        }
    }
}

/// Queues one line for stderr (a newline is added).
pub(crate) fn line(text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    stderr_queue().push(bytes);
}

/// Queues text for stderr as it is (for a line rewritten in place on a terminal).
pub(crate) fn raw(text: &str) {
    stderr_queue().push(text.as_bytes().to_vec());
}

/// Waits up to `timeout` until stderr has taken everything queued; false if it had not.
pub(crate) fn flush(timeout: Duration) -> bool {
    STDERR.get().is_none_or(|queue| queue.flush(timeout))
}

/// A tracing writer that queues each formatted event as one line.
#[derive(Default)]
pub(crate) struct QueuedLine(Vec<u8>);

impl Write for QueuedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        stderr_queue().push(std::mem::take(&mut self.0));
    }
}

/// Hands tracing-subscriber a [`QueuedLine`] per event.
pub(crate) struct QueuedStderr;

impl<'a> MakeWriter<'a> for QueuedStderr {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> QueuedLine {
        QueuedLine::default()
    }
}

/// Installs the log subscriber: `-v` info, `-vv` debug, `-vvv` trace, warnings otherwise.
pub(crate) fn init(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(QueuedStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose >= 3)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose reader never reads: every write blocks for ever.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            loop {
                std::thread::park();
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_never_blocks_the_writers() {
        let queue = Queue::start(Stuck);
        let started = Instant::now();
        let line = vec![b'x'; 1024];
        let accepted = (0..1000).filter(|_| queue.push(line.clone())).count();
        // One line may be in the stuck write; the rest fill the queue, then lines are dropped.
        assert!(
            (CAPACITY / 1024..=CAPACITY / 1024 + 1).contains(&accepted),
            "{accepted}"
        );
        assert_eq!(queue.lock().dropped, 1000 - accepted as u64);
        assert!(!queue.flush(Duration::from_millis(50)), "nothing can drain");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn after_drops_the_sink_is_told_how_many_lines_were_lost() {
        let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        struct Gated(
            std::sync::mpsc::Sender<Vec<u8>>,
            Arc<(Mutex<bool>, Condvar)>,
        );
        impl Write for Gated {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let (open, opened) = &*self.1;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
                self.0.send(buf.to_vec()).unwrap();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let queue = Queue::start(Gated(sender, gate.clone()));
        let big = vec![b'y'; CAPACITY / 2];
        let accepted = (0..5).filter(|_| queue.push(big.clone())).count();
        assert!(accepted < 5);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert!(queue.flush(Duration::from_secs(10)));
        assert!(queue.push(b"last\n".to_vec()));
        assert!(queue.flush(Duration::from_secs(10)));
        let written: Vec<Vec<u8>> = receiver.try_iter().collect();
        let text: Vec<String> = written
            .iter()
            .filter(|w| w.len() < 200)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        assert!(
            text.iter().any(|t| t.contains("log line(s) dropped")),
            "{text:?}"
        );
        assert_eq!(text.last().map(String::as_str), Some("last\n"));
    }
}
