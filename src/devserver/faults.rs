//! Test-only HTTP faults: what a real Consul does to its clients on a bad day, on demand.
//!
//! Enabled by the hidden `consullock dev-server --test-faults` option (and
//! [`Options::test_faults`](super::Options::test_faults)); without it the control endpoint
//! answers 404 like any unknown path, so a dev server used for development cannot be made to
//! misbehave by accident.
//!
//! Faults are applied by `http::handle`, in front of routing, to every request except
//! `/_devserver/*`: the store in `state` stays a faithful model of Consul and never knows
//! about them. They are what a client sees from Consul's agent (see `consul-api-notes.md` §3):
//!
//! | fault | control field | what every affected request gets |
//! |---|---|---|
//! | leader election | `no_leader_ms` | 500 `No cluster leader` for that many ms |
//! | rate limit | `rate_limit_ms` | 429 `RPC rate limit exceeded` for that many ms |
//! | ACL outage | `acl_deny_ms` | 403 `Permission denied`, even with the right token |
//! | slow server | `delay_ms` | the answer (error or not) delayed that many ms, until reset to 0 |
//! | index reset | `index_backwards` | the next N successful reads carry `X-Consul-Index: 1` |
//! | no blocking | `answer_at_once_ms` | blocking reads answer at once, as if `?index` were absent |
//! | no transactions | `no_txn` (true/false) | `PUT /v1/txn` answers 404, as before Consul 0.7 or behind a proxy that blocks it |
//! | late answers | `answer_delay_ms` | the request is carried out at once, its answer sent that many ms later, until reset to 0 |
//!
//! `path_prefix` narrows the delay and the period faults to requests whose path starts with it (e.g.
//! `/v1/session/renew/` for renewals failing while reads succeed); empty means every path.
//!
//! Control: `PUT /_devserver/faults` with a JSON object holding any of the fields above sets
//! those faults from now on (a field set to 0 clears its fault; absent fields are unchanged);
//! `DELETE /_devserver/faults` clears every fault; `GET /_devserver/faults` reports what is
//! active (remaining ms) and how many answers each fault has changed so far (`injected`).
//! A session invalidated by an operator needs no fault: it is `PUT /v1/session/destroy/:id`.
//!
//! The checks run in this order: delay, 429, 500, 403 (a rate limiter answers before any RPC;
//! a leaderless cluster fails the RPC before its ACL check).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

/// Consul's text for a leaderless cluster (`structs.ErrNoLeader`).
pub(crate) const NO_LEADER: &str = "No cluster leader";
/// Consul's text for a rate-limited RPC (`structs.ErrRPCRateExceeded`).
pub(crate) const RATE_LIMITED: &str = "RPC rate limit exceeded";
/// Consul's text for an ACL denial (`acl.ErrPermissionDenied`).
pub(crate) const PERMISSION_DENIED: &str = "Permission denied";
/// The index a backwards read carries: below anything a client has seen once a write happened.
pub(crate) const BACKWARDS_INDEX: u64 = 1;

/// What a `PUT /_devserver/faults` body may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    no_leader_ms: Option<u64>,
    rate_limit_ms: Option<u64>,
    acl_deny_ms: Option<u64>,
    delay_ms: Option<u64>,
    index_backwards: Option<u64>,
    answer_at_once_ms: Option<u64>,
    answer_delay_ms: Option<u64>,
    no_txn: Option<bool>,
    path_prefix: Option<String>,
}

/// Active faults.
#[derive(Debug, Default)]
struct Active {
    path_prefix: String,
    no_leader_until: Option<Instant>,
    rate_limited_until: Option<Instant>,
    acl_denied_until: Option<Instant>,
    delay: Duration,
    index_backwards: u64,
    answer_at_once_until: Option<Instant>,
    answer_delay: Duration,
    no_txn: bool,
}

/// How many answers each fault changed.
#[derive(Debug, Default)]
struct Injected {
    no_leader: AtomicU64,
    rate_limited: AtomicU64,
    acl_denied: AtomicU64,
    delayed: AtomicU64,
    index_backwards: AtomicU64,
    answered_at_once: AtomicU64,
}

/// The fault switchboard of one dev server.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    active: Mutex<Active>,
    injected: Injected,
}

/// What `GET /_devserver/faults` answers.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    no_leader_ms: u64,
    rate_limit_ms: u64,
    acl_deny_ms: u64,
    delay_ms: u64,
    index_backwards: u64,
    answer_at_once_ms: u64,
    answer_delay_ms: u64,
    no_txn: bool,
    path_prefix: String,
    injected: InjectedReport,
}

#[derive(Debug, Serialize)]
struct InjectedReport {
    no_leader: u64,
    rate_limited: u64,
    acl_denied: u64,
    delayed: u64,
    index_backwards: u64,
    answered_at_once: u64,
}

fn remaining(until: Option<Instant>, now: Instant) -> u64 {
    until.map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64)
}

fn period(ms: u64, now: Instant) -> Option<Instant> {
    (ms > 0).then(|| now + Duration::from_millis(ms))
}

fn active_at(until: Option<Instant>, now: Instant) -> bool {
    until.is_some_and(|u| now < u)
}

impl Faults {
    fn active(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a control request at `now`.
    pub(crate) fn set(&self, request: &Request, now: Instant) {
        let mut active = self.active();
        if let Some(ms) = request.no_leader_ms {
            active.no_leader_until = period(ms, now);
        }
        if let Some(ms) = request.rate_limit_ms {
            active.rate_limited_until = period(ms, now);
        }
        if let Some(ms) = request.acl_deny_ms {
            active.acl_denied_until = period(ms, now);
        }
        if let Some(ms) = request.delay_ms {
            active.delay = Duration::from_millis(ms);
        }
        if let Some(n) = request.index_backwards {
            active.index_backwards = n;
        }
        if let Some(ms) = request.answer_at_once_ms {
            active.answer_at_once_until = period(ms, now);
        }
        if let Some(ms) = request.answer_delay_ms {
            active.answer_delay = Duration::from_millis(ms);
        }
        if let Some(no_txn) = request.no_txn {
            active.no_txn = no_txn;
        }
        if let Some(prefix) = &request.path_prefix {
            active.path_prefix = prefix.clone();
        }
    }

    /// Whether the faults apply to a request for `path`.
    pub(crate) fn applies_to(&self, path: &str) -> bool {
        !path.starts_with("/_devserver/") && path.starts_with(self.active().path_prefix.as_str())
    }

    /// Clears every fault (the counters stay).
    pub(crate) fn clear(&self) {
        *self.active() = Active::default();
    }

    /// The state for `GET /_devserver/faults`.
    pub(crate) fn report(&self, now: Instant) -> Report {
        let active = self.active();
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Report {
            no_leader_ms: remaining(active.no_leader_until, now),
            rate_limit_ms: remaining(active.rate_limited_until, now),
            acl_deny_ms: remaining(active.acl_denied_until, now),
            delay_ms: active.delay.as_millis() as u64,
            index_backwards: active.index_backwards,
            answer_at_once_ms: remaining(active.answer_at_once_until, now),
            answer_delay_ms: active.answer_delay.as_millis() as u64,
            no_txn: active.no_txn,
            path_prefix: active.path_prefix.clone(),
            injected: InjectedReport {
                no_leader: count(&self.injected.no_leader),
                rate_limited: count(&self.injected.rate_limited),
                acl_denied: count(&self.injected.acl_denied),
                delayed: count(&self.injected.delayed),
                index_backwards: count(&self.injected.index_backwards),
                answered_at_once: count(&self.injected.answered_at_once),
            },
        }
    }

    /// The delay to add to the current request, if any.
    pub(crate) fn delay(&self) -> Option<Duration> {
        let delay = self.active().delay;
        if delay.is_zero() {
            return None;
        }
        self.injected.delayed.fetch_add(1, Ordering::Relaxed);
        Some(delay)
    }

    /// The error that replaces the answer at `now`, if a period fault is active.
    pub(crate) fn failure(&self, now: Instant) -> Option<(StatusCode, &'static str)> {
        let active = self.active();
        let (status, text, counter) = if active_at(active.rate_limited_until, now) {
            (
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMITED,
                &self.injected.rate_limited,
            )
        } else if active_at(active.no_leader_until, now) {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                NO_LEADER,
                &self.injected.no_leader,
            )
        } else if active_at(active.acl_denied_until, now) {
            (
                StatusCode::FORBIDDEN,
                PERMISSION_DENIED,
                &self.injected.acl_denied,
            )
        } else {
            return None;
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some((status, text))
    }

    /// Whether `PUT /v1/txn` must answer 404.
    pub(crate) fn no_txn(&self) -> bool {
        self.active().no_txn
    }

    /// How long to hold back the answer of a request already carried out, if at all.
    pub(crate) fn answer_delay(&self) -> Option<Duration> {
        let delay = self.active().answer_delay;
        if delay.is_zero() {
            return None;
        }
        self.injected.delayed.fetch_add(1, Ordering::Relaxed);
        Some(delay)
    }

    /// Whether a blocking read at `now` must answer at once instead of blocking.
    pub(crate) fn answer_at_once(&self, now: Instant) -> bool {
        let at_once = active_at(self.active().answer_at_once_until, now);
        if at_once {
            self.injected
                .answered_at_once
                .fetch_add(1, Ordering::Relaxed);
        }
        at_once
    }

    /// Whether this successful read's index must go backwards (uses up one of the N).
    pub(crate) fn take_backwards_index(&self) -> bool {
        let mut active = self.active();
        if active.index_backwards == 0 {
            return false;
        }
        active.index_backwards -= 1;
        self.injected
            .index_backwards
            .fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Request {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn periods_start_now_and_end() {
        let faults = Faults::default();
        let now = Instant::now();
        faults.set(&request(r#"{"no_leader_ms": 1000}"#), now);
        assert_eq!(
            faults.failure(now),
            Some((StatusCode::INTERNAL_SERVER_ERROR, NO_LEADER))
        );
        assert!(faults.failure(now + Duration::from_millis(999)).is_some());
        assert_eq!(faults.failure(now + Duration::from_millis(1000)), None);
        assert_eq!(faults.report(now).injected.no_leader, 2);
    }

    #[test]
    fn rate_limit_wins_over_no_leader_which_wins_over_acl() {
        let faults = Faults::default();
        let now = Instant::now();
        faults.set(
            &request(r#"{"no_leader_ms": 2000, "rate_limit_ms": 1000, "acl_deny_ms": 3000}"#),
            now,
        );
        let at = |ms| faults.failure(now + Duration::from_millis(ms)).map(|f| f.0);
        assert_eq!(at(0), Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(at(1500), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(at(2500), Some(StatusCode::FORBIDDEN));
        assert_eq!(at(3000), None);
    }

    #[test]
    fn zero_clears_and_absent_keeps() {
        let faults = Faults::default();
        let now = Instant::now();
        faults.set(&request(r#"{"acl_deny_ms": 1000, "delay_ms": 5}"#), now);
        faults.set(&request(r#"{"acl_deny_ms": 0}"#), now);
        assert_eq!(faults.failure(now), None);
        assert_eq!(faults.delay(), Some(Duration::from_millis(5)));
        faults.clear();
        assert_eq!(faults.delay(), None);
    }

    #[test]
    fn backwards_index_counts_down() {
        let faults = Faults::default();
        faults.set(&request(r#"{"index_backwards": 2}"#), Instant::now());
        assert!(faults.take_backwards_index());
        assert!(faults.take_backwards_index());
        assert!(!faults.take_backwards_index());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"no_leader": 1}"#).is_err());
    }
}
