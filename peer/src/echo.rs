//! Our own messages, for every view of their conversation: a line sent with `peer send`, from a
//! second `chat` window or from the web page shows in every other running view as well, and
//! settles there as it settles where it was typed.
//!
//! Each view (the running peer's own session, each control connection) has an origin number;
//! the [`crate::service::Service`] of that view announces each message it submits, and its
//! outcome, on one broadcast. A view shows the echoes of every origin but its own, which it
//! shows already.

use crate::{history::HistoryState, target::Target};
use common::wire::MessageId;
use serde::{Deserialize, Serialize};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};
use tokio::sync::broadcast;

/// Echoes a slow view may fall behind by before it loses some (and is told how many).
const BACKLOG: usize = 256;

/// One of our messages, as another view sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// The view it was sent from.
    pub origin: u64,
    /// Its number, the same in its submission and its outcome.
    pub number: u64,
    /// The conversation.
    pub to: Target,
    /// Submitted or settled.
    pub stage: Stage,
}

/// Where an echoed message stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Handed to the outbox: show it as sending.
    Submitted {
        /// Its text.
        body: String,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// Its outcome.
    Settled {
        /// Its id, once it has one (a failed message may have none).
        id: Option<MessageId>,
        /// Delivered, queued or failed.
        state: HistoryState,
    },
}

/// What a view is told when it fell `n` echoes behind and lost them.
pub fn lost(n: u64) -> String {
    format!("{n} of your messages from other windows were not copied to this one")
}

/// The broadcast of a running peer's echoes; cheap to clone.
#[derive(Clone)]
pub struct Echoes {
    tx: broadcast::Sender<Echo>,
    next: Arc<AtomicU64>,
}

impl Default for Echoes {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl Echoes {
    /// A number no other view or message of this peer has: a new view's origin.
    pub fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Announces that view `origin` submitted `body` to `to`; `None` when no view listens (a
    /// view that starts listening later never sees the outcome's submission, and ignores it).
    pub fn submitted(&self, origin: u64, to: &Target, body: &str) -> Option<Submitted> {
        if self.tx.receiver_count() == 0 {
            return None;
        }
        let echo = Echo {
            origin,
            number: self.number(),
            to: to.clone(),
            stage: Stage::Submitted {
                body: body.to_string(),
                at_ms: common::now_ms(),
            },
        };
        let number = echo.number;
        let _ = self.tx.send(echo);
        Some(Submitted {
            echoes: self.clone(),
            origin,
            number,
            to: to.clone(),
        })
    }

    /// Every echo from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Echo> {
        self.tx.subscribe()
    }
}

/// A message announced as submitted, whose outcome is still to announce.
pub struct Submitted {
    echoes: Echoes,
    origin: u64,
    number: u64,
    to: Target,
}

impl Submitted {
    /// Announces the message's outcome.
    pub fn settled(self, id: Option<MessageId>, state: HistoryState) {
        let _ = self.echoes.tx.send(Echo {
            origin: self.origin,
            number: self.number,
            to: self.to,
            stage: Stage::Settled { id, state },
        });
    }
}
