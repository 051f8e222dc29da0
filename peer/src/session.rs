//! One command's view of its peer: this process's own node (through its [`Service`]), or the
//! `peer` process already running for the same name, reached through the control socket.
//! Commands talk to a [`Session`] and never care which: both give the same [`Update`]s.

use crate::{
    contacts::Standing,
    control::ControlClient,
    history::HistoryEntry,
    home::Home,
    inbox::Event,
    rooms::RoomCommand,
    service::{relay, Service, Update},
    target::Target,
};
use anyhow::{bail, Result};
use common::{room::RoomName, KeyId, Name};
use std::path::PathBuf;
use tokio::sync::mpsc;

pub use crate::service::Received;

/// A command's handle on its peer.
pub struct Session {
    /// Our name.
    pub name: Name,
    /// Our key.
    pub key: KeyId,
    backend: Backend,
    updates: mpsc::UnboundedReceiver<Update>,
}

enum Backend {
    /// This process's node, and where its answers go.
    Local(Service, mpsc::UnboundedSender<Update>),
    /// The running peer's: only the client's reader sends updates, so that they end (and
    /// [`Session::next`] says `None`) when the running peer goes away.
    Remote(ControlClient, Home),
}

impl Session {
    /// A session on this process's own node, fed by its inbox `events`.
    pub fn local(service: Service, events: mpsc::Receiver<Event>) -> Self {
        let service = service.view();
        let (tx, updates) = mpsc::unbounded_channel();
        service
            .node()
            .spawn(service.clone().pump(events, tx.clone()));
        // The other views' messages, and how far files arriving are (a report lost to a
        // slow view only leaves its progress behind until the next one).
        let origin = service.origin();
        service.node().spawn(relay(
            service.echoes(),
            tx.clone(),
            move |echo| (echo.origin != origin).then_some(Update::Echo(echo)),
            |n| Some(Update::Notice(crate::echo::lost(n))),
        ));
        service.node().spawn(relay(
            service.node().inbox().subscribe_arrivals(),
            tx.clone(),
            |progress| Some(Update::FileArriving(progress)),
            |_| None,
        ));
        Self {
            name: service.name().clone(),
            key: service.key(),
            backend: Backend::Local(service, tx),
            updates,
        }
    }

    /// A session on the running peer behind `client`, which serves `home`.
    pub async fn remote(mut client: ControlClient, home: Home) -> Result<Self> {
        let (name, key) = client.hello().await?;
        let (tx, updates) = mpsc::unbounded_channel();
        client.start(tx);
        Ok(Self {
            name,
            key,
            backend: Backend::Remote(client, home),
            updates,
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
        match &self.backend {
            Backend::Local(service, tx) => {
                let (outcome, tx) = (service.submit(to, body), tx.clone());
                service.node().spawn(async move {
                    let _ = tx.send(Update::Sent(outcome.await));
                });
            }
            Backend::Remote(client, _) => client.send(to, body),
        }
    }

    /// Sends `body` to the members of `room`; the outcome comes back as [`Update::RoomSent`].
    /// Messages to rooms submitted by one session leave in submission order.
    pub fn submit_room(&self, room: RoomName, body: String) {
        match &self.backend {
            Backend::Local(service, tx) => {
                let (outcome, tx) = (service.submit_room(room, body), tx.clone());
                service.node().spawn(async move {
                    let _ = tx.send(Update::RoomSent(outcome.await));
                });
            }
            Backend::Remote(client, _) => client.send_room(room, body),
        }
    }

    /// Does a `peer room …` command; the answer comes back as [`Update::Rooms`].
    pub fn room(&self, command: RoomCommand) {
        match &self.backend {
            Backend::Local(service, tx) => {
                let (service, tx) = (service.clone(), tx.clone());
                let node = service.node().clone();
                node.spawn(async move {
                    let _ = tx.send(Update::Rooms(service.room(command).await));
                });
            }
            Backend::Remote(client, _) => client.room(command),
        }
    }

    /// The last `limit` messages of the conversation with `with`, oldest first; `None` when
    /// there is no history (the database could not be opened).
    pub async fn history(&self, with: &Target, limit: usize) -> Result<Option<Vec<HistoryEntry>>> {
        match &self.backend {
            Backend::Local(service, _) => Ok(service.conversation(with, limit).await?),
            Backend::Remote(_, home) => {
                let Some(mut client) = ControlClient::connect(home).await else {
                    bail!("the running peer has gone");
                };
                client.hello().await?;
                client.history(with, limit).await
            }
        }
    }

    /// The peers with a conversation in the local history, latest first; none when the
    /// running peer cannot say (an older version).
    pub async fn history_peers(&self) -> Vec<Name> {
        match &self.backend {
            Backend::Local(service, _) => service.history_peers(),
            Backend::Remote(_, home) => {
                let Some(mut client) = ControlClient::connect(home).await else {
                    return Vec::new();
                };
                match client.hello().await {
                    Ok(_) => client.peers().await.unwrap_or_default(),
                    Err(_) => Vec::new(),
                }
            }
        }
    }

    /// Sends the file at `path` to `to`; progress comes back as [`Update::FileProgress`],
    /// reasons to wait as [`Update::Notice`], the outcome as [`Update::FileSent`].
    pub fn send_file(&self, to: Name, path: PathBuf) {
        match &self.backend {
            Backend::Local(service, tx) => {
                let (service, tx) = (service.clone(), tx.clone());
                let node = service.node().clone();
                node.spawn(async move {
                    let progress = tx.clone();
                    let report = move |update| {
                        let _ = progress.send(match update {
                            crate::files::FileUpdate::Progress { done, total } => {
                                Update::FileProgress { done, total }
                            }
                            crate::files::FileUpdate::Waiting(text) => Update::Notice(text),
                        });
                    };
                    let result = service.send_file(&to, &path, report).await;
                    let _ = tx.send(Update::FileSent(result));
                });
            }
            Backend::Remote(client, _) => client.send_file(to, path),
        }
    }

    /// Looks `name` up; the answer comes back as [`Update::Whois`].
    pub fn whois(&self, name: Name) {
        match &self.backend {
            Backend::Local(service, tx) => {
                let (service, tx) = (service.clone(), tx.clone());
                let node = service.node().clone();
                node.spawn(async move {
                    let _ = tx.send(Update::Whois(service.whois(&name).await));
                });
            }
            Backend::Remote(client, _) => client.whois(name),
        }
    }

    /// Trusts `key` (or the directory's) as `name`'s; the answer comes back as
    /// [`Update::Trusted`].
    pub fn trust(&self, name: Name, key: Option<KeyId>) {
        match &self.backend {
            Backend::Local(service, tx) => {
                let (service, tx) = (service.clone(), tx.clone());
                let node = service.node().clone();
                node.spawn(async move {
                    let _ = tx.send(Update::Trusted(service.trust(&name, key).await));
                });
            }
            Backend::Remote(client, _) => client.trust(name, key),
        }
    }

    /// Accepts or blocks `name`; the contact as recorded comes back as [`Update::Contact`].
    pub fn set_contact(&self, name: Name, standing: Standing) {
        match &self.backend {
            Backend::Local(service, tx) => {
                let (service, tx) = (service.clone(), tx.clone());
                let node = service.node().clone();
                node.spawn(async move {
                    let _ = tx.send(Update::Contact(service.set_contact(&name, standing).await));
                });
            }
            Backend::Remote(client, _) => client.set_contact(name, standing),
        }
    }

    /// Starts reporting where the directory connection stands, as [`Update::Directory`]: now,
    /// and at every change.
    pub fn watch_directory(&self) {
        match &self.backend {
            Backend::Local(service, tx) => {
                let (node, tx) = (service.node().clone(), tx.clone());
                let mut status = node.directory_status();
                service.node().spawn(async move {
                    loop {
                        let now = status.borrow_and_update().clone();
                        let addr = node.directory_addr().to_string();
                        let update = Update::Directory { addr, status: now };
                        if tx.send(update).is_err() || status.changed().await.is_err() {
                            return;
                        }
                    }
                });
            }
            Backend::Remote(client, _) => client.watch_directory(),
        }
    }

    /// The file this process's log lines go to while the full-screen client owns the
    /// terminal.
    pub fn log_file(&self) -> PathBuf {
        let home = match &self.backend {
            Backend::Local(service, _) => service.node().home().path(),
            Backend::Remote(_, home) => home.path(),
        };
        home.join("peer.log")
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
        if let Backend::Local(service, _) = &self.backend {
            service.close().await;
        }
    }
}
