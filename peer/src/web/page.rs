//! What the page and the server say to each other over the WebSocket: JSON objects, each with
//! a `type`.
//!
//! # The page asks ([`PageRequest`])
//!
//! * `send {to, body}`: a message to a name or a `#room`, or one of the terminal client's
//!   `/commands`.
//! * `open {with}`: put a conversation in the list (and ask its peer's presence).
//! * `history {with, limit}`: the last `limit` messages of a conversation.
//! * `read {with}`: the user has seen it.
//!
//! # The server tells every page (`hub`)
//!
//! * `hello`: who we are, the directory's state and the conversations; the page starts (or
//!   starts again) from it.
//! * `conversation`, `presence`, `unread`: a conversation added, its peer's presence, its
//!   unread count.
//! * `message {with, message}`: a message received, or ours being sent (`state: sending` and a
//!   `cid`, the hub's number for it); `state {with, cid, id, state, detail}` settles ours;
//!   `receipt {with, ids, at_ms}`: those of ours were taken from the mailbox.
//! * `history {with, messages, files, complete}`: the answer to `history`.
//! * `file`, `file_progress`, `file_sent`: a file received (with its download link); how far
//!   ours is; its outcome.
//! * `directory`, `notice`, `show`: the directory connection; something to tell; a
//!   conversation to show (after `/to` or `/join`).
//!
//! A message's JSON: `{id, cid, from, at_ms, body, state, detail}`, where `state` is the
//! history's (`sending`, `delivered`, `queued`, `delivered_later`, `failed`, `received`) and
//! `detail` what goes with it (the path, why it failed, when it was picked up, how it came).

use crate::{
    history::{HistoryEntry, HistoryState},
    inbox::Via,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// What a page asks, as its JSON says.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PageRequest {
    /// Send `body` to `to` (a name, or `#room`).
    Send {
        /// The conversation.
        to: String,
        /// The text.
        body: String,
    },
    /// Put the conversation in the list and say how its peer is.
    Open {
        /// The conversation.
        with: String,
    },
    /// The last `limit` messages of a conversation.
    History {
        /// The conversation.
        with: String,
        /// How many.
        limit: usize,
    },
    /// The user has seen the conversation: no more unread.
    Read {
        /// The conversation.
        with: String,
    },
}

/// How a message came, as the page says it.
pub fn via_str(via: Via) -> &'static str {
    match via {
        Via::Direct => "direct",
        Via::Mailbox => "via the mailbox",
    }
}

/// What the page shows beside a state: why it failed, when it was picked up, how it came.
pub fn state_detail(state: &HistoryState) -> Value {
    match state {
        HistoryState::Failed { reason } => json!(reason),
        HistoryState::DeliveredLater { at_ms } => json!(at_ms),
        HistoryState::Delivered { path: Some(path) } => json!(path.as_str()),
        HistoryState::Received { via } | HistoryState::Verified { via, .. } => json!(via_str(*via)),
        _ => Value::Null,
    }
}

/// A message of the history as the page shows it; `cid` for ours still being sent.
pub fn entry_json(e: &HistoryEntry, cid: Option<u64>) -> Value {
    json!({
        "id": e.id.map(|id| id.to_string()),
        "cid": cid,
        "from": e.from.to_string(),
        "at_ms": e.sent_at_ms,
        "body": e.body,
        "state": e.state.as_str(),
        "detail": state_detail(&e.state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Name;

    #[test]
    fn requests_parse_and_junk_does_not() {
        let send: PageRequest =
            serde_json::from_str(r#"{"type":"send","to":"bob","body":"hi"}"#).expect("send");
        assert!(matches!(send, PageRequest::Send { to, body } if to == "bob" && body == "hi"));
        for junk in [
            r#"{"type":"send","to":"bob"}"#,
            r#"{"type":"history","with":"bob","limit":-1}"#,
            r#"{"type":"rm","path":"/"}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<PageRequest>(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn an_entry_says_its_state_and_why() {
        let entry = HistoryEntry {
            id: None,
            from: Name::new("alice").expect("name"),
            to: Name::new("bob").expect("name"),
            sent_at_ms: 5,
            body: "<b>hi</b>".to_string(),
            state: HistoryState::Failed {
                reason: "bob is unknown".to_string(),
            },
            room: None,
        };
        assert_eq!(
            entry_json(&entry, Some(3)),
            json!({"id": null, "cid": 3, "from": "alice", "at_ms": 5, "body": "<b>hi</b>",
                   "state": "failed", "detail": "bob is unknown"})
        );
    }
}
