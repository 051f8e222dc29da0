//! One command's view of its peer: this process's own [`Node`], or the `peer` process already
//! running for the same name, reached through the control socket. Commands talk to a
//! [`Session`] and never care which.
//!
//! A session on the own node keeps the local [`History`]: an incoming message whose id is
//! already there is a redelivery from before a restart, acknowledged without being shown again;
//! a new one is recorded durably when the command calls [`Received::shown`], and only then
//! acknowledged. Our own messages are recorded as `sending` when submitted and updated with
//! their outcome. A session on a running peer records nothing: the running peer does.

use crate::{
    control::ControlClient,
    files::FileSent,
    history::{History, HistoryError},
    home::Home,
    inbox::{Event, Incoming, Taken, Via},
    node::{FileUpdate, Node},
    outbox::Sent,
};
use anyhow::{bail, Result};
use common::{
    control::{HistoryEntry, Path},
    defaults::MAX_BODY_LEN,
    wire::{ChatMessage, MessageId, PeerInfo},
    KeyId, Name,
};
use std::{future::Future, path::PathBuf, sync::Arc};
use tokio::sync::mpsc;

/// Something for the command to show or act on.
#[derive(Debug)]
pub enum Update {
    /// An incoming message.
    Message(Received),
    /// The outcome of a [`Session::submit`], in no particular order across recipients but in
    /// submission order for each recipient.
    Sent(Result<Sent, SendFailed>),
    /// The answer to a [`Session::whois`], with the direct link the peer has to it, if any.
    Whois(Result<(PeerInfo, Option<Path>), String>),
    /// The mailbox has been drained (own node only).
    MailboxIdle,
    /// Something to tell the user.
    Notice(String),
    /// A file arrived and is stored.
    File(crate::files::ReceivedFile),
    /// How far the file from [`Session::send_file`] is: bytes the recipient has, of the total.
    FileProgress {
        /// Bytes the recipient has.
        done: u64,
        /// The file's size.
        total: u64,
    },
    /// The outcome of [`Session::send_file`].
    FileSent(Result<FileSent, String>),
    /// `from` took these messages (or files) of ours from its mailbox, at that time.
    Receipt {
        /// The recipient that took them.
        from: Name,
        /// Their ids.
        delivered: Vec<MessageId>,
        /// When, by the directory's clock.
        at_ms: u64,
    },
}

/// A send that failed: to whom, and why (for the user).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct SendFailed {
    /// The recipient.
    pub to: Name,
    /// Why.
    pub reason: String,
}

/// An incoming message; call [`Received::shown`] once it is on screen.
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub message: ChatMessage,
    /// How it came.
    pub via: Via,
    ack: Option<Incoming>,
    history: Option<History>,
}

impl Received {
    /// A copy of a message that another process shows and acknowledges.
    pub fn copy(message: ChatMessage, via: Via) -> Self {
        Self {
            message,
            via,
            ack: None,
            history: None,
        }
    }

    /// Lets the message be acknowledged (own node): it is recorded in the history first, and
    /// acknowledged once that is on disk. A no-op for a copy from a running peer.
    pub fn shown(self) {
        let Some(incoming) = self.ack else {
            return;
        };
        let recorded = self.history.map(|h| h.record_in(&self.message, self.via));
        when_recorded(recorded, move || incoming.shown());
    }
}

/// A command's handle on its peer.
pub struct Session {
    /// Our name.
    pub name: Name,
    /// Our key.
    pub key: KeyId,
    backend: Backend,
    updates: mpsc::UnboundedReceiver<Update>,
    tx: mpsc::UnboundedSender<Update>,
}

enum Backend {
    Local(Arc<Node>, Option<History>),
    Remote(ControlClient, Home),
}

impl Session {
    /// A session on this process's own node, fed by its inbox events, keeping `history` if
    /// there is one.
    pub fn local(
        node: Arc<Node>,
        mut events: mpsc::Receiver<Event>,
        history: Option<History>,
    ) -> Self {
        let (tx, updates) = mpsc::unbounded_channel();
        let pump = tx.clone();
        let pump_history = history.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let update = match event {
                    Event::Message(incoming) => {
                        if seen_before(pump_history.as_ref(), &incoming.message) {
                            // Shown before a restart: acknowledge it, show it not again.
                            incoming.shown();
                            continue;
                        }
                        Update::Message(Received {
                            message: incoming.message.clone(),
                            via: incoming.via,
                            ack: Some(incoming),
                            history: pump_history.clone(),
                        })
                    }
                    Event::MailboxIdle => Update::MailboxIdle,
                    Event::File(file) => Update::File(file),
                    Event::Notice(text) => Update::Notice(text),
                    Event::Receipt(taken) => {
                        let receipt = taken.receipt.clone();
                        record_receipt(pump_history.as_ref(), taken);
                        Update::Receipt {
                            from: receipt.from,
                            delivered: receipt.delivered,
                            at_ms: receipt.at_ms,
                        }
                    }
                };
                if pump.send(update).is_err() {
                    return;
                }
            }
        });
        Self {
            name: node.name.clone(),
            key: node.key,
            backend: Backend::Local(node, history),
            updates,
            tx,
        }
    }

    /// A session on the running peer behind `client`, which serves `home`.
    pub async fn remote(mut client: ControlClient, home: Home) -> Result<Self> {
        let (name, key) = client.hello().await?;
        let (tx, updates) = mpsc::unbounded_channel();
        client.start(tx.clone());
        Ok(Self {
            name,
            key,
            backend: Backend::Remote(client, home),
            updates,
            tx,
        })
    }

    /// True when another process runs the peer.
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::Remote(..))
    }

    /// Sends `body` to `to`; the outcome comes back as [`Update::Sent`]. Messages submitted by
    /// one session leave in submission order, and their outcomes for one recipient come back
    /// in that order.
    pub fn submit(&self, to: Name, body: String) {
        if body.len() > MAX_BODY_LEN {
            // Refused here, at once, so that it cannot overtake the outcome of an earlier one.
            let reason = format!(
                "the message is too large: {} bytes, the limit is {MAX_BODY_LEN}",
                body.len()
            );
            let _ = self.tx.send(Update::Sent(Err(SendFailed { to, reason })));
            return;
        }
        match &self.backend {
            Backend::Local(node, history) => {
                let tx = self.tx.clone();
                let record = history
                    .as_ref()
                    .map(|h| (h.clone(), h.sending(&self.name, &to, &body)));
                let outcome = node.submit(to.clone(), body);
                tokio::spawn(async move {
                    let result = match outcome {
                        Ok(outcome) => outcome.await,
                        Err(e) => Err(e),
                    }
                    .map_err(|e| SendFailed {
                        to,
                        reason: format!("{e:#}"),
                    });
                    if let Some((history, key)) = record {
                        history.settle(key, result.as_ref().map_err(|e| e.reason.as_str()));
                    }
                    let _ = tx.send(Update::Sent(result));
                });
            }
            Backend::Remote(client, _) => client.send(to, body),
        }
    }

    /// The last `limit` messages of the conversation with `with`, oldest first; `None` when
    /// there is no history (the database could not be opened).
    pub async fn history(&self, with: &Name, limit: usize) -> Result<Option<Vec<HistoryEntry>>> {
        match &self.backend {
            Backend::Local(_, None) => Ok(None),
            Backend::Local(_, Some(history)) => {
                history.flush().await?;
                let (history, with) = (history.clone(), with.clone());
                let entries =
                    tokio::task::spawn_blocking(move || history.conversation(&with, limit))
                        .await??;
                Ok(Some(entries))
            }
            Backend::Remote(_, home) => {
                let Some(mut client) = ControlClient::connect(home).await else {
                    bail!("the running peer has gone");
                };
                client.hello().await?;
                client.history(with, limit).await
            }
        }
    }

    /// The peers with a conversation in the local history, latest first (own node only).
    pub fn history_peers(&self) -> Vec<Name> {
        match &self.backend {
            Backend::Local(_, Some(history)) => history
                .peers()
                .map(|p| p.into_iter().map(|(name, _)| name).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Sends the file at `path` to `to` (see [`Node::send_file`]); progress comes back as
    /// [`Update::FileProgress`], reasons to wait as [`Update::Notice`], the outcome as
    /// [`Update::FileSent`].
    pub fn send_file(&self, to: Name, path: PathBuf) {
        match &self.backend {
            Backend::Local(node, _) => {
                let (node, tx) = (node.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let progress = tx.clone();
                    let report = move |update| {
                        let _ = progress.send(match update {
                            FileUpdate::Progress { done, total } => {
                                Update::FileProgress { done, total }
                            }
                            FileUpdate::Waiting(text) => Update::Notice(text),
                        });
                    };
                    let result = node.send_file(&to, &path, report).await;
                    let _ = tx.send(Update::FileSent(result.map_err(|e| format!("{e:#}"))));
                });
            }
            Backend::Remote(client, _) => client.send_file(to, path),
        }
    }

    /// Looks `name` up; the answer comes back as [`Update::Whois`].
    pub fn whois(&self, name: Name) {
        match &self.backend {
            Backend::Local(node, _) => {
                let (node, tx) = (node.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Update::Whois(
                        node.whois(&name).await.map_err(|e| format!("{e:#}")),
                    ));
                });
            }
            Backend::Remote(client, _) => client.whois(name),
        }
    }

    /// Starts receiving copies of incoming messages (remote) — the own node always receives.
    pub fn attach(&self) {
        if let Backend::Remote(client, _) = &self.backend {
            client.attach();
        }
    }

    /// The next update; `None` when the peer is gone.
    pub async fn next(&mut self) -> Option<Update> {
        self.updates.recv().await
    }

    /// Leaves: the own node records what is pending in the history and goes offline cleanly;
    /// a remote one is left running.
    pub async fn close(self) {
        if let Backend::Local(node, history) = &self.backend {
            if let Some(history) = history {
                if let Err(e) = history.flush().await {
                    tracing::warn!("history: {e}");
                }
            }
            node.shutdown().await;
        }
    }
}

/// Records a receipt in the history, then lets it be acknowledged.
fn record_receipt(history: Option<&History>, taken: Taken) {
    let recorded =
        history.map(|h| h.delivered_later(taken.receipt.delivered.clone(), taken.receipt.at_ms));
    when_recorded(recorded, move || taken.done());
}

/// Calls `then` once the history write `recorded` (if any) is on disk. A failed write is only
/// logged: the history is a convenience, and what it was about has reached the user.
fn when_recorded(
    recorded: Option<impl Future<Output = Result<(), HistoryError>> + Send + 'static>,
    then: impl FnOnce() + Send + 'static,
) {
    let Some(recorded) = recorded else {
        then();
        return;
    };
    tokio::spawn(async move {
        if let Err(e) = recorded.await {
            tracing::warn!("history: {e}");
        }
        then();
    });
}

/// Whether `message` is in the history already (a redelivery after a restart).
fn seen_before(history: Option<&History>, message: &ChatMessage) -> bool {
    let Some(history) = history else {
        return false;
    };
    match history.contains(&message.id) {
        Ok(seen) => seen,
        Err(e) => {
            tracing::warn!("history: {e}");
            false
        }
    }
}
