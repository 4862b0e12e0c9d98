//! The execute supervisor: spawn, forward signals, reap, stop escalation, exit status.
