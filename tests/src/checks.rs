//! Checks on message lines shared by the scenarios.

use crate::util::{body, is_hex32};
use anyhow::{ensure, Result};
use serde_json::Value;

/// Checks that `msgs` are message lines from `from` to `to` with exactly the bodies `bodies`,
/// in that order, each via `via` (when given).
pub fn check_messages(
    msgs: &[Value],
    from: &str,
    to: &str,
    bodies: &[String],
    via: Option<&str>,
) -> Result<()> {
    let got: Vec<&str> = msgs.iter().map(body).collect();
    ensure!(
        got == bodies.iter().map(String::as_str).collect::<Vec<_>>(),
        "bodies from {from} to {to} differ:\n  expected {bodies:?}\n  received {got:?}"
    );
    for m in msgs {
        ensure!(
            m["from"] == from && m["to"] == to,
            "message {m} is not from {from} to {to}"
        );
        ensure!(
            m["id"].as_str().is_some_and(is_hex32),
            "message {m} has no 32-hex id"
        );
        ensure!(m["sent_at_ms"].is_u64(), "message {m} has no sent_at_ms");
        if let Some(via) = via {
            ensure!(m["via"] == via, "message {m} did not come via {via}");
        }
    }
    let mut ids: Vec<&str> = msgs.iter().filter_map(|m| m["id"].as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    ensure!(
        ids.len() == before,
        "duplicate ids among messages from {from}"
    );
    Ok(())
}

/// Numbered bodies `"{prefix} {i}"` for `i` in `range`.
pub fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}
