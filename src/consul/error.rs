//! Typed errors of the Consul HTTP client.

use std::time::Duration;

/// Which request failed, for messages: method, path (never the query, never a token) and the
/// agent's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The agent's address as configured, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    /// HTTP method.
    pub method: &'static str,
    /// Request path, e.g. `/v1/session/create`.
    pub path: String,
}

impl std::fmt::Display for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} at {}", self.method, self.path, self.address)
    }
}

/// A failed Consul request.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// 403: the ACL token is missing or lacks a permission.
    #[error("permission denied by consul ({request}): {body}")]
    PermissionDenied {
        /// The request.
        request: RequestContext,
        /// Consul's explanation.
        body: String,
    },
    /// 404 where the caller did not expect it (an unknown session on renew).
    #[error("not found ({request}): {body}")]
    NotFound {
        /// The request.
        request: RequestContext,
        /// Consul's answer.
        body: String,
    },
    /// Consul rejected a session id it does not know (acquire answers 500 `invalid session`).
    #[error("invalid session ({request}): {body}")]
    InvalidSession {
        /// The request.
        request: RequestContext,
        /// Consul's answer.
        body: String,
    },
    /// 429: the agent's rate limit was hit.
    #[error("rate limited by consul ({request}): {body}")]
    RateLimited {
        /// The request.
        request: RequestContext,
        /// Consul's answer.
        body: String,
    },
    /// Any other non-success status.
    #[error("consul answered {status} ({request}): {body}")]
    Server {
        /// The request.
        request: RequestContext,
        /// HTTP status code.
        status: u16,
        /// Consul's answer, trimmed.
        body: String,
    },
    /// The agent could not be reached (connection refused, reset, DNS, TLS).
    #[error("consul unreachable ({request}): {reason}")]
    Unreachable {
        /// The request.
        request: RequestContext,
        /// What went wrong, down to the root cause ("connection refused"), on one line.
        reason: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// No answer within the request's deadline.
    #[error("consul did not answer within {after:?} ({request})")]
    TimedOut {
        /// The request.
        request: RequestContext,
        /// The deadline that passed.
        after: Duration,
    },
    /// An answer that does not follow Consul's API (bad JSON, a missing `X-Consul-Index`).
    #[error("unexpected answer from consul ({request}): {what}")]
    InvalidResponse {
        /// The request.
        request: RequestContext,
        /// What was wrong.
        what: String,
    },
}

impl ConsulError {
    /// The request that failed.
    pub fn request(&self) -> &RequestContext {
        match self {
            ConsulError::PermissionDenied { request, .. }
            | ConsulError::NotFound { request, .. }
            | ConsulError::InvalidSession { request, .. }
            | ConsulError::RateLimited { request, .. }
            | ConsulError::Server { request, .. }
            | ConsulError::Unreachable { request, .. }
            | ConsulError::TimedOut { request, .. }
            | ConsulError::InvalidResponse { request, .. } => request,
        }
    }

    /// Whether this is how a server without `PUT /v1/txn` answers it: 404 (a very old Consul,
    /// or a proxy that only lets the KV and session endpoints through) or 405.
    pub fn means_no_txn(&self) -> bool {
        match self {
            ConsulError::NotFound { request, .. } => request.path == "/v1/txn",
            ConsulError::Server {
                request, status, ..
            } => request.path == "/v1/txn" && *status == 405,
            _ => false,
        }
    }

    /// Whether trying again later may succeed: transport failures, timeouts, 429 and 5xx (a
    /// leader election answers 500 `No cluster leader` for a few seconds).
    pub fn is_transient(&self) -> bool {
        match self {
            // A request that could not even be built will not build next time either.
            ConsulError::Unreachable { source, .. } => !source.is_builder(),
            ConsulError::TimedOut { .. } | ConsulError::RateLimited { .. } => true,
            ConsulError::Server { status, .. } => *status >= 500,
            // Garbage from the server is not something waiting fixes: report it.
            ConsulError::InvalidResponse { .. }
            | ConsulError::PermissionDenied { .. }
            | ConsulError::NotFound { .. }
            | ConsulError::InvalidSession { .. } => false,
        }
    }
}

/// An error and its causes on one line, each cause once: reqwest's own message only says
/// "error sending request", the useful part ("Connection refused", a TLS alert) is deeper.
pub(super) fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}
