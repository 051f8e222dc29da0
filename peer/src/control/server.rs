//! The control socket: a Unix socket in the home folder through which other `peer` commands for
//! the same name use the running `listen` or `chat` process instead of bringing up a second
//! endpoint. The running process stays the one online presence and sees every message.
//!
//! Ownership of the socket goes with an exclusive lock on `HOME/peer.lock`, held for the life
//! of the running process, so two processes never both think they serve the name.

use crate::{
    history::History,
    home::Home,
    inbox::Via,
    node::{FileUpdate, Node},
    outbox::{Sent, Status},
    session::{Received, SendFailed, Update},
};
use anyhow::{bail, Context, Result};
use common::{
    control::{ControlRequest, ControlResponse, HistoryEntry},
    framing, KeyId, Name,
};
use std::{fs::File, path::PathBuf, sync::Arc};
use tokio::{
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{broadcast, mpsc},
};
use tracing::{debug, warn};

/// Held while this process serves the control socket; removes the socket when dropped.
#[derive(Debug)]
pub struct ControlGuard {
    _lock: File,
    path: PathBuf,
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the home's lock. `None` when another process holds it.
pub fn lock(home: &Home) -> Result<Option<File>> {
    let path = home.path().join("peer.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("locking the home folder"),
    }
}

/// Serves the control socket for `node` until the process ends. Messages sent through it are
/// recorded in `history`, which also answers [`ControlRequest::History`].
pub fn serve(
    home: &Home,
    lock: File,
    node: Arc<Node>,
    history: Option<History>,
) -> Result<ControlGuard> {
    let path = home.control_socket();
    // We hold the lock, so a socket file left here is from a process that died.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("creating {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(stream, node.clone(), history.clone()));
                }
                Err(e) => {
                    warn!(cause = %e, "control socket accept failed");
                    return;
                }
            }
        }
    });
    Ok(ControlGuard { _lock: lock, path })
}

async fn serve_client(stream: UnixStream, node: Arc<Node>, history: Option<History>) {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<ControlResponse>();
    tokio::spawn(write_responses(wr, rx));
    loop {
        let request = match framing::read_frame::<ControlRequest, _>(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                debug!(cause = %e, "bad control request");
                return;
            }
        };
        match request {
            ControlRequest::Hello => {
                let _ = tx.send(ControlResponse::Hello {
                    name: node.name.clone(),
                    key: node.key,
                });
            }
            ControlRequest::Send { to, body } => match node.submit(to.clone(), body.clone()) {
                Ok(outcome) => {
                    let tx = tx.clone();
                    let record = history
                        .as_ref()
                        .map(|h| (h.clone(), h.sending(&node.name, &to, &body)));
                    tokio::spawn(async move {
                        let outcome = outcome.await;
                        if let Some((history, key)) = record {
                            match &outcome {
                                Ok(sent) => history.settle(key, Ok(sent)),
                                Err(e) => history.settle(key, Err(&format!("{e:#}"))),
                            }
                        }
                        let _ = tx.send(match outcome {
                            Ok(s) => ControlResponse::Sent {
                                id: s.id,
                                to: s.to,
                                delivered: s.status == crate::outbox::Status::Delivered,
                                path: s.path,
                            },
                            Err(e) => ControlResponse::SendFailed {
                                to,
                                reason: format!("{e:#}"),
                            },
                        });
                    });
                }
                Err(e) => {
                    let _ = tx.send(ControlResponse::SendFailed {
                        to,
                        reason: format!("{e:#}"),
                    });
                }
            },
            ControlRequest::SendFile { to, path } => {
                let (node, tx) = (node.clone(), tx.clone());
                tokio::spawn(send_file(node, tx, to, PathBuf::from(path)));
            }
            ControlRequest::Whois { name } => {
                let (node, tx) = (node.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(match node.whois(&name).await {
                        Ok((info, path)) => ControlResponse::Whois { info, path },
                        Err(e) => ControlResponse::WhoisFailed {
                            name,
                            reason: format!("{e:#}"),
                        },
                    });
                });
            }
            ControlRequest::History { with, limit } => {
                let (history, tx) = (history.clone(), tx.clone());
                tokio::spawn(async move {
                    let Some(history) = history else {
                        let _ = tx.send(ControlResponse::HistoryEnd { available: false });
                        return;
                    };
                    // Everything recorded before this request (a send's outcome, say) is in
                    // the answer.
                    if let Err(e) = history.flush().await {
                        warn!("history: {e}");
                    }
                    let read = tokio::task::spawn_blocking(move || {
                        history.conversation(&with, limit as usize)
                    })
                    .await;
                    match read {
                        Ok(Ok(entries)) => {
                            for entry in entries {
                                let _ = tx.send(ControlResponse::HistoryEntry(entry));
                            }
                        }
                        Ok(Err(e)) => warn!("history: {e}"),
                        Err(e) => warn!("history: {e}"),
                    }
                    let _ = tx.send(ControlResponse::HistoryEnd { available: true });
                });
            }
            ControlRequest::Attach => {
                let _ = tx.send(ControlResponse::Attached);
                let inbox = node.inbox();
                forward(
                    inbox.subscribe(),
                    tx.clone(),
                    |(message, via)| ControlResponse::Message {
                        message,
                        via_mailbox: via == Via::Mailbox,
                    },
                    |n| {
                        Some(ControlResponse::Notice(format!(
                            "{n} messages were not copied to this window; see the main one"
                        )))
                    },
                );
                // A receipt lost to a slow reader only leaves a mark stale in this window; the
                // running peer recorded it.
                forward(
                    inbox.subscribe_receipts(),
                    tx.clone(),
                    |r| ControlResponse::Receipt {
                        from: r.from,
                        delivered: r.delivered,
                        at_ms: r.at_ms,
                    },
                    |_| None,
                );
            }
        }
    }
}

/// Copies every item of `copies` to an attached client as `response(item)`, until either side
/// goes away; `lagged(n)` says what to tell it when `n` items were lost to its slowness.
fn forward<T: Clone + Send + 'static>(
    mut copies: broadcast::Receiver<T>,
    tx: mpsc::UnboundedSender<ControlResponse>,
    response: impl Fn(T) -> ControlResponse + Send + 'static,
    lagged: impl Fn(u64) -> Option<ControlResponse> + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            let sent = match copies.recv().await {
                Ok(item) => tx.send(response(item)),
                Err(broadcast::error::RecvError::Lagged(n)) => match lagged(n) {
                    Some(notice) => tx.send(notice),
                    None => Ok(()),
                },
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if sent.is_err() {
                return;
            }
        }
    });
}

/// Sends a file for a short command, relaying its progress.
async fn send_file(
    node: Arc<Node>,
    tx: mpsc::UnboundedSender<ControlResponse>,
    to: Name,
    path: PathBuf,
) {
    let progress = tx.clone();
    let report = move |update| {
        let _ = progress.send(match update {
            FileUpdate::Progress { done, total } => ControlResponse::FileProgress { done, total },
            FileUpdate::Waiting(text) => ControlResponse::Notice(text),
        });
    };
    let result = node.send_file(&to, &path, report).await;
    let _ = tx.send(match result {
        Ok(sent) => match sent.path {
            Some(path) => ControlResponse::FileSent {
                to: sent.to,
                size: sent.size,
                hash: sent.hash,
                resumed_from: sent.resumed_from,
                path,
            },
            None => ControlResponse::FileQueued {
                to: sent.to,
                size: sent.size,
                hash: sent.hash,
            },
        },
        Err(e) => ControlResponse::FileFailed {
            to,
            reason: format!("{e:#}"),
        },
    });
}

async fn write_responses(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<ControlResponse>) {
    while let Some(response) = rx.recv().await {
        if framing::write_frame(&mut wr, &response).await.is_err() {
            return;
        }
    }
}

/// A connection to the running peer.
pub struct ControlClient {
    stream: Option<UnixStream>,
    requests: Option<mpsc::UnboundedSender<ControlRequest>>,
}

impl ControlClient {
    /// Connects to the running peer of `home`, if there is one.
    pub async fn connect(home: &Home) -> Option<Self> {
        let stream = UnixStream::connect(home.control_socket()).await.ok()?;
        Some(Self {
            stream: Some(stream),
            requests: None,
        })
    }

    /// Asks the running peer who it is.
    pub async fn hello(&mut self) -> Result<(Name, KeyId)> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("control session already started")
        };
        framing::write_frame(stream, &ControlRequest::Hello).await?;
        match framing::read_frame(stream).await? {
            Some(ControlResponse::Hello { name, key }) => Ok((name, key)),
            other => bail!("the running peer answered {other:?}"),
        }
    }

    /// The last `limit` entries of the conversation with `with` in the running peer's history,
    /// oldest first; `None` when it keeps none. Call after [`ControlClient::hello`], instead of
    /// [`ControlClient::start`].
    pub async fn history(
        &mut self,
        with: &Name,
        limit: usize,
    ) -> Result<Option<Vec<HistoryEntry>>> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("control session already started")
        };
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let request = ControlRequest::History {
            with: with.clone(),
            limit,
        };
        framing::write_frame(stream, &request).await?;
        let mut entries = Vec::new();
        loop {
            match framing::read_frame(stream).await? {
                Some(ControlResponse::HistoryEntry(entry)) => entries.push(entry),
                Some(ControlResponse::HistoryEnd { available: true }) => return Ok(Some(entries)),
                Some(ControlResponse::HistoryEnd { available: false }) => return Ok(None),
                other => bail!("the running peer answered {other:?}"),
            }
        }
    }

    /// Starts the reader and writer tasks; answers become [`Update`]s on `updates`.
    pub fn start(&mut self, updates: mpsc::UnboundedSender<Update>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<ControlRequest>();
        self.requests = Some(tx);
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                if framing::write_frame(&mut wr, &request).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let update = match framing::read_frame::<ControlResponse, _>(&mut rd).await {
                    Ok(Some(ControlResponse::Sent {
                        id,
                        to,
                        delivered,
                        path,
                    })) => {
                        let status = if delivered {
                            Status::Delivered
                        } else {
                            Status::Queued
                        };
                        Update::Sent(Ok(Sent {
                            id,
                            to,
                            status,
                            path,
                        }))
                    }
                    Ok(Some(ControlResponse::SendFailed { to, reason })) => {
                        Update::Sent(Err(SendFailed { to, reason }))
                    }
                    Ok(Some(ControlResponse::WhoisFailed { reason, .. })) => {
                        Update::Whois(Err(reason))
                    }
                    Ok(Some(ControlResponse::Notice(text))) => Update::Notice(text),
                    Ok(Some(ControlResponse::FileProgress { done, total })) => {
                        Update::FileProgress { done, total }
                    }
                    Ok(Some(ControlResponse::FileSent {
                        to,
                        size,
                        hash,
                        resumed_from,
                        path,
                    })) => Update::FileSent(Ok(crate::files::FileSent {
                        to,
                        size,
                        hash,
                        resumed_from,
                        path: Some(path),
                    })),
                    Ok(Some(ControlResponse::FileQueued { to, size, hash })) => {
                        Update::FileSent(Ok(crate::files::FileSent {
                            to,
                            size,
                            hash,
                            resumed_from: 0,
                            path: None,
                        }))
                    }
                    Ok(Some(ControlResponse::Receipt {
                        from,
                        delivered,
                        at_ms,
                    })) => Update::Receipt {
                        from,
                        delivered,
                        at_ms,
                    },
                    Ok(Some(ControlResponse::FileFailed { reason, .. })) => {
                        Update::FileSent(Err(reason))
                    }
                    Ok(Some(ControlResponse::Whois { info, path })) => {
                        Update::Whois(Ok((info, path)))
                    }
                    Ok(Some(ControlResponse::Message {
                        message,
                        via_mailbox,
                    })) => {
                        let via = if via_mailbox {
                            Via::Mailbox
                        } else {
                            Via::Direct
                        };
                        Update::Message(Received::copy(message, via))
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                };
                if updates.send(update).is_err() {
                    return;
                }
            }
        });
    }

    fn request(&self, request: ControlRequest) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(request);
        }
    }

    /// Sends a message through the running peer.
    pub fn send(&self, to: Name, body: String) {
        self.request(ControlRequest::Send { to, body });
    }

    /// Sends a file through the running peer.
    pub fn send_file(&self, to: Name, path: PathBuf) {
        let path = std::path::absolute(&path).unwrap_or(path);
        self.request(ControlRequest::SendFile {
            to,
            path: path.to_string_lossy().into_owned(),
        });
    }

    /// Looks a name up through the running peer.
    pub fn whois(&self, name: Name) {
        self.request(ControlRequest::Whois { name });
    }

    /// Asks for copies of incoming messages.
    pub fn attach(&self) {
        self.request(ControlRequest::Attach);
    }
}
