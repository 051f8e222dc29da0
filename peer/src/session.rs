//! One command's view of its peer: this process's own [`Node`], or the `peer` process already
//! running for the same name, reached through the control socket. Commands talk to a
//! [`Session`] and never care which.

use crate::{
    control::ControlClient,
    inbox::{Event, Incoming, Via},
    node::Node,
    outbox::Sent,
};
use anyhow::Result;
use common::{
    control::Path,
    wire::{ChatMessage, PeerInfo},
    KeyId, Name,
};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Something for the command to show or act on.
#[derive(Debug)]
pub enum Update {
    /// An incoming message.
    Message(Received),
    /// The outcome of a [`Session::submit`], in no particular order across recipients.
    Sent(Result<Sent, String>),
    /// The answer to a [`Session::whois`], with the direct link the peer has to it, if any.
    Whois(Result<(PeerInfo, Option<Path>), String>),
    /// The mailbox has been drained (own node only).
    MailboxIdle,
    /// Something to tell the user.
    Notice(String),
}

/// An incoming message; call [`Received::shown`] once it is on screen.
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub message: ChatMessage,
    /// How it came.
    pub via: Via,
    ack: Option<Incoming>,
}

impl Received {
    /// A copy of a message that another process shows and acknowledges.
    pub fn copy(message: ChatMessage, via: Via) -> Self {
        Self {
            message,
            via,
            ack: None,
        }
    }

    /// Lets the message be acknowledged (own node); a no-op for a copy from a running peer.
    pub fn shown(self) {
        if let Some(incoming) = self.ack {
            incoming.shown();
        }
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
    Local(Arc<Node>),
    Remote(ControlClient),
}

impl Session {
    /// A session on this process's own node, fed by its inbox events.
    pub fn local(node: Arc<Node>, mut events: mpsc::Receiver<Event>) -> Self {
        let (tx, updates) = mpsc::unbounded_channel();
        let pump = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let update = match event {
                    Event::Message(incoming) => Update::Message(Received {
                        message: incoming.message.clone(),
                        via: incoming.via,
                        ack: Some(incoming),
                    }),
                    Event::MailboxIdle => Update::MailboxIdle,
                };
                if pump.send(update).is_err() {
                    return;
                }
            }
        });
        Self {
            name: node.name.clone(),
            key: node.key,
            backend: Backend::Local(node),
            updates,
            tx,
        }
    }

    /// A session on the running peer behind `client`.
    pub async fn remote(mut client: ControlClient) -> Result<Self> {
        let (name, key) = client.hello().await?;
        let (tx, updates) = mpsc::unbounded_channel();
        client.start(tx.clone());
        Ok(Self {
            name,
            key,
            backend: Backend::Remote(client),
            updates,
            tx,
        })
    }

    /// True when another process runs the peer.
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::Remote(_))
    }

    /// Sends `body` to `to`; the outcome comes back as [`Update::Sent`]. Messages submitted by
    /// one session leave in submission order.
    pub fn submit(&self, to: Name, body: String) {
        match &self.backend {
            Backend::Local(node) => match node.submit(to, body) {
                Ok(outcome) => {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(Update::Sent(outcome.await.map_err(|e| format!("{e:#}"))));
                    });
                }
                Err(e) => {
                    let _ = self.tx.send(Update::Sent(Err(format!("{e:#}"))));
                }
            },
            Backend::Remote(client) => client.send(to, body),
        }
    }

    /// Looks `name` up; the answer comes back as [`Update::Whois`].
    pub fn whois(&self, name: Name) {
        match &self.backend {
            Backend::Local(node) => {
                let (node, tx) = (node.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Update::Whois(
                        node.whois(&name).await.map_err(|e| format!("{e:#}")),
                    ));
                });
            }
            Backend::Remote(client) => client.whois(name),
        }
    }

    /// Starts receiving copies of incoming messages (remote) — the own node always receives.
    pub fn attach(&self) {
        if let Backend::Remote(client) = &self.backend {
            client.attach();
        }
    }

    /// The next update; `None` when the peer is gone.
    pub async fn next(&mut self) -> Option<Update> {
        self.updates.recv().await
    }

    /// Leaves: the own node goes offline cleanly; a remote one is left running.
    pub async fn close(self) {
        if let Backend::Local(node) = &self.backend {
            node.shutdown().await;
        }
    }
}
