//! In-memory Consul-compatible dev server (for development and tests only).

use std::net::SocketAddr;

/// How to run the dev server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on; port 0 picks an ephemeral port.
    pub listen: SocketAddr,
    /// When set, every request must carry this ACL token.
    pub acl_token: Option<String>,
    /// Log every request to stderr (`-v`).
    pub verbose: u8,
}

/// Runs the dev server until SIGINT or SIGTERM.
pub async fn run(options: Options) -> std::io::Result<()> {
    let _ = options;
    Err(std::io::Error::other("not yet implemented"))
}
