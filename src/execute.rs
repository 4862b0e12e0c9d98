//! `consullock execute`: hold a lock while a command runs.

use crate::cli::ExecuteArgs;
use crate::error::Error;

/// Runs `execute`; `direct` is true for the `-- PROG ARGS` form (no shell).
pub async fn run(args: ExecuteArgs, direct: bool) -> Result<i32, Error> {
    let _ = (args, direct);
    Err(Error::InvalidArguments(
        "execute is not available yet".into(),
    ))
}
