/*!
`consullock status`: who holds a lock, as JSON for programs or as a table for people.

JSON is the default when stdout is not a terminal, as every subcommand prints it (one line: an
object or `null` for a key, a list for `-r`); on a terminal the default is a table of plain text
columns, one row per holder. `--json` and `--table` force either. The engine is
`consullock::lock::status`; this file only chooses, prints and words the notes on stderr.
*/

use std::io::IsTerminal;

use consullock::Error;
use consullock::key::LockKey;
use consullock::lock::{self, FoundLayout, LockStatus, SessionDetails};

use super::args::StatusArgs;
use super::{exit, say};

/// What goes in a cell that has nothing to show.
const NONE: &str = "-";

/// Space between two columns.
const GAP: &str = "  ";

pub(super) async fn run(args: StatusArgs) -> Result<i32, Error> {
    let table = if args.json {
        false
    } else {
        args.table || std::io::stdout().is_terminal()
    };
    if args.regex {
        let pattern = regex::Regex::new(&args.key)
            .map_err(|e| Error::InvalidArguments(super::regex_error(&args.key, &e)))?;
        let client = super::client_from_env()?;
        let found = lock::status_regex(&client, &pattern).await?;
        let text = if !table {
            serde_json::to_string(&found).unwrap_or_default()
        } else if found.is_empty() {
            format!("no held lock matches {}", args.key)
        } else {
            render(&found)
        };
        print(&text)?;
        return Ok(exit::SUCCESS);
    }
    let key = LockKey::new(&args.key)?;
    let client = super::client_from_env()?;
    let status = lock::status(&client, &key).await?;
    for other in &status.also {
        say(&format!(
            "{} is also locked in the {} layout ({}); `consullock status -r` lists every lock",
            other.lock_key,
            other.layout,
            holder_words(other)
        ));
    }
    for unknown in &status.lock_delay_unknown {
        say(&format!(
            "cannot tell whether a lock-delay is in force on {}: {}",
            unknown.key, unknown.reason
        ));
    }
    let text = match (&status.lock, table) {
        (None, false) => "null".to_owned(),
        (None, true) => format!("{key}: not held"),
        (Some(found), false) => serde_json::to_string(found).unwrap_or_default(),
        (Some(found), true) => render(std::slice::from_ref(found)),
    };
    print(&text)?;
    Ok(exit::SUCCESS)
}

fn print(text: &str) -> Result<(), Error> {
    super::print_line(text).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write to stdout: {e}"),
        ))
    })
}

/// Who holds `lock`, in a few words for a stderr line.
fn holder_words(lock: &LockStatus) -> String {
    match (&lock.session, &lock.holders) {
        (Some(session), _) => format!("session {session}"),
        (None, Some(holders)) => format!("{} holders", holders.len()),
        (None, None) => "free, under a lock-delay".to_owned(),
    }
}

/// The column titles.
const HEADER: [&str; 11] = [
    "KEY",
    "LAYOUT",
    "SESSION",
    "HOST",
    "PID",
    "SINCE (UTC)",
    "TTL",
    "LOCK-DELAY",
    "TTL-ONLY",
    "STATE",
    "METADATA",
];

/// The table: a header, then a row per holder (a semaphore has one per holder, live or dead;
/// a free key under a lock-delay has one without a holder). Columns are padded with spaces to
/// their widest cell; nothing is cut, so the last column (metadata, of any length) comes last.
pub(super) fn render(locks: &[LockStatus]) -> String {
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| (*h).to_owned()).collect()];
    for lock in locks {
        rows.extend(rows_of(lock));
    }
    let columns = HEADER.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:width$}"))
                .collect();
            cells.join(GAP).trim_end().to_owned()
        })
        .collect();
    lines.join("\n")
}

fn rows_of(lock: &LockStatus) -> Vec<Vec<String>> {
    let waiting = match lock.waiting {
        Some(n) if n > 0 => format!(", {n} waiting"),
        _ => String::new(),
    };
    match &lock.holders {
        Some(holders) => {
            let live = holders.iter().filter(|h| h.live).count();
            let layout = format!(
                "{} {live}/{}",
                lock.layout,
                lock.limit.map_or_else(|| "?".to_owned(), |l| l.to_string())
            );
            holders
                .iter()
                .enumerate()
                .map(|(i, holder)| {
                    let state = if holder.live {
                        "holds a slot"
                    } else {
                        "dead: session gone, slot free"
                    };
                    let state = if i == 0 {
                        format!("{state}{waiting}")
                    } else {
                        state.to_owned()
                    };
                    row(
                        lock,
                        &layout,
                        Some(&holder.session),
                        (holder.hostname.as_deref(), holder.pid),
                        holder.created.as_deref(),
                        &holder.details,
                        state,
                        holder.metadata.as_ref(),
                    )
                })
                .collect()
        }
        None => {
            let state = if lock.held {
                let held = match lock.layout {
                    FoundLayout::Foreign => "held; not a lock's value",
                    _ => "held",
                };
                format!("{held}{waiting}")
            } else if lock.lock_delay_in_force == Some(true) {
                format!("free, lock-delay in force{waiting}")
            } else {
                format!("free{waiting}")
            };
            vec![row(
                lock,
                lock.layout.as_str(),
                lock.session.as_deref(),
                (lock.hostname.as_deref(), lock.pid),
                lock.created.as_deref(),
                &lock.details,
                state,
                lock.metadata.as_ref(),
            )]
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    lock: &LockStatus,
    layout: &str,
    session: Option<&str>,
    (hostname, pid): (Option<&str>, Option<u32>),
    created: Option<&str>,
    details: &SessionDetails,
    state: String,
    metadata: Option<&serde_json::Value>,
) -> Vec<String> {
    // `consul lock` writes no host into its key: the session's node is the best answer.
    let host = hostname.or(details.node.as_deref()).unwrap_or(NONE);
    let ttl = match (details.ttl, &details.session_name) {
        (Some(ttl), _) => seconds(ttl),
        // A session that is known but has no TTL.
        (None, Some(_)) => "none".to_owned(),
        (None, None) => NONE.to_owned(),
    };
    let ttl_only = match details.ttl_only {
        Some(true) => "yes",
        Some(false) => "no",
        None => NONE,
    };
    vec![
        lock.key.clone(),
        layout.to_owned(),
        session.unwrap_or(NONE).to_owned(),
        host.to_owned(),
        pid.map_or_else(|| NONE.to_owned(), |p| p.to_string()),
        created.unwrap_or(NONE).to_owned(),
        ttl,
        details.lock_delay.map_or_else(|| NONE.to_owned(), seconds),
        ttl_only.to_owned(),
        state,
        match metadata {
            Some(value) => value.to_string(),
            None => NONE.to_owned(),
        },
    ]
}

/// Seconds as people write them: `15s`, `0.5s`.
fn seconds(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use consullock::lock::SemaphoreHolder;

    fn lock(key: &str, layout: FoundLayout) -> LockStatus {
        LockStatus {
            key: key.into(),
            layout,
            lock_key: key.into(),
            held: true,
            session: Some("7d901121-42ba-4fbb-b177-30df0fe2b51f".into()),
            hostname: Some("vm".into()),
            pid: Some(19142),
            created: Some("2026-11-27T14:34:09.360705".into()),
            metadata: Some(serde_json::json!({"owner": "alice"})),
            details: SessionDetails {
                session_name: Some("consullock jobs/a on vm (pid 19142)".into()),
                node: Some("vm".into()),
                ttl: Some(86400.0),
                lock_delay: Some(0.0),
                behavior: Some("delete".into()),
                ttl_only: Some(false),
            },
            lock_delay_in_force: None,
            waiting: Some(2),
            limit: None,
            holders: None,
        }
    }

    #[test]
    fn a_table_row_per_holder_aligned() {
        let mut semaphore = lock("jobs/sem", FoundLayout::Semaphore);
        semaphore.lock_key = "jobs/sem/.lock".into();
        semaphore.session = None;
        semaphore.limit = Some(3);
        semaphore.waiting = Some(0);
        semaphore.holders = Some(vec![
            SemaphoreHolder {
                session: "a".into(),
                live: true,
                hostname: None,
                pid: None,
                created: None,
                metadata: None,
                details: SessionDetails {
                    node: Some("node1".into()),
                    session_name: Some("Consul lock".into()),
                    ttl: Some(15.0),
                    lock_delay: Some(15.0),
                    ..SessionDetails::default()
                },
            },
            SemaphoreHolder {
                session: "b".into(),
                live: false,
                hostname: None,
                pid: None,
                created: None,
                metadata: None,
                details: SessionDetails::default(),
            },
        ]);
        let text = render(&[lock("jobs/a", FoundLayout::Consullock), semaphore]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("KEY"), "{text}");
        // Every column starts where its title does.
        let at = lines[0].find("SESSION").unwrap();
        assert_eq!(&lines[1][at..at + 8], "7d901121", "{text}");
        assert_eq!(&lines[2][at..at + 1], "a", "{text}");
        assert!(lines[1].contains("held, 2 waiting"), "{text}");
        assert!(lines[1].ends_with(r#"{"owner":"alice"}"#), "{text}");
        assert!(lines[2].starts_with("jobs/sem ") && lines[2].contains("semaphore 1/3"));
        assert!(
            lines[2].contains("node1") && lines[2].contains("15s"),
            "{text}"
        );
        assert!(lines[3].contains("dead"), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn seconds_read_naturally() {
        assert_eq!(seconds(15.0), "15s");
        assert_eq!(seconds(0.5), "0.5s");
        assert_eq!(seconds(0.0), "0s");
        assert_eq!(seconds(10.25), "10.25s");
    }
}
