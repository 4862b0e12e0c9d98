//! Whether Consul refuses to lock a free key for now: the lock-delay of a session that was
//! invalidated while it held the key. Consul shows it nowhere; it only answers when asked to
//! lock. So the question is one transaction that locks each key for the nil session, which
//! cannot exist: Consul refuses it either way, `due to lock delay` in its pre-check (before
//! Raft), or `invalid session` in its state store (rolled back). Nothing changes, but it is a
//! write request: it needs `key:write`, and when no lock-delay is in force it costs a Raft
//! commit that fails. (hashicorp/consul `agent/consul/txn_endpoint.go` `preCheck`,
//! `agent/consul/kvs_endpoint.go` `kvsPreApply`, `agent/consul/state/kvs.go` `kvsLockTxn`.)

use crate::consul::{Client, ConsulError, PutMode, TxnOp, TxnOutcome};

/// The session the probe locks for: the nil UUID, which no Consul session can have.
pub const PROBE_SESSION: &str = "00000000-0000-0000-0000-000000000000";

/// Whether Consul would refuse a lock on a free key right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LockDelay {
    InForce,
    NotInForce,
    Unknown(String),
}

/// Asks Consul whether a lock-delay is in force on each of `keys` (see the module
/// documentation): in transactions that cannot succeed, at most [`OPS_PER_PROBE`] keys each;
/// where the server has no transactions, with one `?acquire` for the nil session per key.
pub(super) async fn probe(client: &Client, keys: &[&str]) -> Result<Vec<LockDelay>, ConsulError> {
    let mut answers = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(OPS_PER_PROBE) {
        let chunk_answers = match client.transactions() {
            true => probe_in_txn(client, chunk).await?,
            false => None,
        };
        match chunk_answers {
            Some(found) => answers.extend(found),
            None => {
                for key in chunk {
                    answers.push(probe_by_acquire(client, key).await?);
                }
            }
        }
    }
    Ok(answers)
}

/// Keys asked about in one transaction: half of Consul's 128 operations, so that an older
/// server's limit of 64 holds too.
const OPS_PER_PROBE: usize = 64;

/// One transaction for `keys`; `None` when the server has no transactions.
async fn probe_in_txn(
    client: &Client,
    keys: &[&str],
) -> Result<Option<Vec<LockDelay>>, ConsulError> {
    let ops: Vec<TxnOp<'_>> = keys
        .iter()
        .map(|key| TxnOp::Lock {
            key,
            value: &[],
            flags: 0,
            session: PROBE_SESSION,
        })
        .collect();
    match client.txn(&ops).await {
        Ok(TxnOutcome::RolledBack(errors)) => Ok(Some(read_probe(&errors, keys.len()))),
        Ok(TxnOutcome::Applied(_)) => Err(granted(client, "/v1/txn")),
        Err(ConsulError::PermissionDenied { .. }) => {
            Ok(Some(vec![LockDelay::Unknown(DENIED.into()); keys.len()]))
        }
        Err(e) if e.means_no_txn() => {
            client.note_no_transactions();
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The same question for one key without transactions: `PUT ?acquire=` for the nil session.
/// Consul answers `false` when a lock-delay refuses it before Raft (`kvsPreApply`), and an
/// invalid-session error from its state store when it does not.
async fn probe_by_acquire(client: &Client, key: &str) -> Result<LockDelay, ConsulError> {
    match client
        .kv_put(key, &[], PutMode::Acquire(PROBE_SESSION), None)
        .await
    {
        Ok(false) => Ok(LockDelay::InForce),
        Ok(true) => Err(granted(client, "/v1/kv")),
        Err(ConsulError::InvalidSession { .. }) => Ok(LockDelay::NotInForce),
        Err(ConsulError::PermissionDenied { .. }) => Ok(LockDelay::Unknown(DENIED.into())),
        Err(e) => Err(e),
    }
}

fn granted(client: &Client, path: &str) -> ConsulError {
    ConsulError::InvalidResponse {
        request: crate::consul::RequestContext {
            address: client.address().to_owned(),
            method: "PUT",
            path: path.into(),
        },
        what: format!("the server granted a lock to the nil session {PROBE_SESSION}"),
    }
}

const DENIED: &str = "permission denied (asking needs key:write on the key)";

/// Reads the probe's refusal, op by op. Consul pre-checks every op before it refuses any
/// (`preCheck` collects an error per op): an op without an error passed the lock-delay check,
/// whatever the others did; so did one that failed later, for the session.
fn read_probe(errors: &[crate::consul::TxnError], ops: usize) -> Vec<LockDelay> {
    (0..ops)
        .map(|op| match errors.iter().find(|e| e.op_index == op) {
            None => LockDelay::NotInForce,
            Some(error) => {
                let what = error.what.to_ascii_lowercase();
                if what.contains("lock delay") {
                    LockDelay::InForce
                } else if what.contains("invalid session") {
                    LockDelay::NotInForce
                } else if what.contains("permission denied") {
                    LockDelay::Unknown(DENIED.into())
                } else {
                    LockDelay::Unknown(format!("consul answered: {}", error.what))
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::TxnError;

    #[test]
    fn the_probe_is_read_op_by_op() {
        let error = |op_index: usize, what: &str| TxnError {
            op_index,
            what: what.into(),
        };
        assert_eq!(
            read_probe(
                &[
                    error(0, r#"failed to lock key "k" due to lock delay"#),
                    error(1, "Permission denied"),
                ],
                3
            ),
            [
                LockDelay::InForce,
                LockDelay::Unknown(DENIED.into()),
                LockDelay::NotInForce
            ]
        );
        assert_eq!(
            read_probe(
                &[error(
                    0,
                    r#"invalid session "00000000-0000-0000-0000-000000000000""#
                )],
                1
            ),
            [LockDelay::NotInForce]
        );
        assert!(matches!(
            read_probe(&[error(0, "something new")], 1)[0],
            LockDelay::Unknown(_)
        ));
    }
}
