//! The running peer's side of the control socket: each connected command's requests go to the
//! [`Service`], the same one this process's own commands use, so a message sent through the
//! socket is recorded in the history exactly as one sent here.

use super::{
    protocol::{ControlRequest, ControlResponse},
    ControlGuard,
};
use crate::{
    directory_client::Status,
    failure::Failure,
    files::FileUpdate,
    home::Home,
    outbox::SendFailed,
    service::{relay, Service},
};
use anyhow::{Context, Result};
use common::framing;
use std::{fs::File, path::PathBuf};
use tokio::{
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{broadcast, mpsc},
};
use tracing::{debug, warn};

/// Serves the control socket for `service` until its node shuts down. Every task it starts
/// is the node's.
pub fn serve(home: &Home, lock: File, service: Service) -> Result<ControlGuard> {
    let path = home.control_socket();
    // We hold the lock, so a socket file left here is from a process that died.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("creating {}", path.display()))?;
    let node = service.node().clone();
    node.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) if same_user(&stream) => {
                    service.node().spawn(serve_client(stream, service.clone()))
                }
                Ok(_) => warn!("refused a control connection from another user"),
                Err(e) => {
                    warn!(cause = %e, "control socket accept failed");
                    return;
                }
            }
        }
    });
    Ok(ControlGuard { _lock: lock, path })
}

/// Whether the process at the other end of `stream` runs as our user. The socket's folder is
/// private already; this holds even where it is not (a home shared on purpose, a permissive
/// umask), since whoever controls the running peer can send as the user and send the user's
/// files.
fn same_user(stream: &UnixStream) -> bool {
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == rustix::process::getuid().as_raw())
}

async fn serve_client(stream: UnixStream, service: Service) {
    // A view of its own: what it sends is echoed to the other views, not to itself.
    let service = service.view();
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<ControlResponse>();
    service.node().spawn(write_responses(wr, rx));
    loop {
        let request = match framing::read_frame::<ControlRequest, _>(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                debug!(cause = %e, "bad control request");
                return;
            }
        };
        let (service, tx) = (service.clone(), tx.clone());
        match request {
            ControlRequest::Hello => {
                let _ = tx.send(ControlResponse::Hello {
                    name: service.name().clone(),
                    key: service.key(),
                });
            }
            ControlRequest::Send { to, body } => {
                let outcome = service.submit(to.clone(), body);
                let node = service.node().clone();
                service.node().spawn(async move {
                    // The message is kept while the directory is away, however long; the
                    // command that asked is told so once it has waited as long as a request
                    // does, and the outcome still settles the history.
                    let mut outcome = std::pin::pin!(outcome);
                    let sent = tokio::select! {
                        sent = &mut outcome => sent,
                        _ = tokio::time::sleep(node.directory_wait()) => {
                            if *node.directory_status().borrow() != Status::Connected {
                                let failure = Failure::StillWaiting {
                                    addr: node.directory_addr().to_string(),
                                };
                                let _ = tx.send(ControlResponse::Sent(Err(SendFailed { to, failure })));
                                let _ = outcome.await;
                                return;
                            }
                            outcome.await
                        }
                    };
                    let _ = tx.send(ControlResponse::Sent(sent));
                });
            }
            ControlRequest::SendRoom { room, body } => {
                let outcome = service.submit_room(room, body);
                service.node().spawn(async move {
                    let _ = tx.send(ControlResponse::RoomSent(outcome.await));
                });
            }
            ControlRequest::Room(command) => {
                let node = service.node().clone();
                node.spawn(async move {
                    let _ = tx.send(ControlResponse::Rooms(service.room(command).await));
                });
            }
            ControlRequest::SendFile { to, path } => {
                let node = service.node().clone();
                node.spawn(async move {
                    let progress = tx.clone();
                    let report = move |update| {
                        let _ = progress.send(match update {
                            FileUpdate::Progress { done, total } => {
                                ControlResponse::FileProgress { done, total }
                            }
                            FileUpdate::Waiting(text) => ControlResponse::Notice(text),
                        });
                    };
                    let sent = service.send_file(&to, &PathBuf::from(path), report).await;
                    let _ = tx.send(ControlResponse::FileSent(sent));
                });
            }
            ControlRequest::Trust { name, key } => {
                let node = service.node().clone();
                node.spawn(async move {
                    let trusted = service.trust(&name, key).await;
                    let _ = tx.send(ControlResponse::Trusted(trusted));
                });
            }
            ControlRequest::SetContact { name, standing } => {
                let node = service.node().clone();
                node.spawn(async move {
                    let set = service.set_contact(&name, standing).await;
                    let _ = tx.send(ControlResponse::Contact(set));
                });
            }
            ControlRequest::Whois { name } => {
                let node = service.node().clone();
                node.spawn(async move {
                    let _ = tx.send(ControlResponse::Whois(service.whois(&name).await));
                });
            }
            ControlRequest::History { with, limit } => {
                let node = service.node().clone();
                node.spawn(async move {
                    // Everything recorded before this request (a send's outcome, say) is in
                    // the answer.
                    let available = match service.conversation(&with, limit as usize).await {
                        Ok(Some(entries)) => {
                            for entry in entries {
                                let _ = tx.send(ControlResponse::HistoryEntry(entry));
                            }
                            true
                        }
                        Ok(None) => false,
                        Err(e) => {
                            warn!("history: {e}");
                            true
                        }
                    };
                    let _ = tx.send(ControlResponse::HistoryEnd { available });
                });
            }
            ControlRequest::Peers => {
                let _ = tx.send(ControlResponse::Peers(service.history_peers()));
            }
            ControlRequest::Directory => {
                let node = service.node().clone();
                let mut status = node.directory_status();
                node.clone().spawn(async move {
                    loop {
                        let now = status.borrow_and_update().clone();
                        let addr = node.directory_addr().to_string();
                        let response = ControlResponse::Directory { addr, status: now };
                        if tx.send(response).is_err() || status.changed().await.is_err() {
                            return;
                        }
                    }
                });
            }
            ControlRequest::Attach => {
                let _ = tx.send(ControlResponse::Attached);
                let inbox = service.node().inbox();
                forward(
                    &service,
                    inbox.subscribe(),
                    tx.clone(),
                    |(message, room, via, request)| {
                        Some(ControlResponse::Message {
                            message,
                            room,
                            via,
                            request,
                        })
                    },
                    |n| {
                        Some(ControlResponse::Notice(format!(
                            "{n} messages were not copied to this window; see the main one"
                        )))
                    },
                );
                forward(
                    &service,
                    inbox.subscribe_rooms(),
                    tx.clone(),
                    |notice| Some(ControlResponse::Room(notice)),
                    |_| None,
                );
                forward(
                    &service,
                    inbox.subscribe_files(),
                    tx.clone(),
                    |file| Some(ControlResponse::File(file)),
                    |n| {
                        Some(ControlResponse::Notice(format!(
                            "{n} files received were not copied to this window; see the main one"
                        )))
                    },
                );
                forward(
                    &service,
                    inbox.subscribe_arrivals(),
                    tx.clone(),
                    |progress| Some(ControlResponse::FileArriving(progress)),
                    |_| None,
                );
                let origin = service.origin();
                forward(
                    &service,
                    service.echoes(),
                    tx.clone(),
                    move |echo| (echo.origin != origin).then_some(ControlResponse::Echo(echo)),
                    |n| Some(ControlResponse::Notice(crate::echo::lost(n))),
                );
                // A receipt lost to a slow reader only leaves a mark stale in this window; the
                // running peer recorded it.
                forward(
                    &service,
                    inbox.subscribe_receipts(),
                    tx,
                    |r| {
                        Some(ControlResponse::Receipt {
                            from: r.from,
                            delivered: r.delivered,
                            at_ms: r.at_ms,
                        })
                    },
                    |_| None,
                );
            }
        }
    }
}

/// Follows `copies` for an attached client: see [`relay`].
fn forward<T: Clone + Send + 'static>(
    service: &Service,
    copies: broadcast::Receiver<T>,
    tx: mpsc::UnboundedSender<ControlResponse>,
    response: impl Fn(T) -> Option<ControlResponse> + Send + 'static,
    lagged: impl Fn(u64) -> Option<ControlResponse> + Send + 'static,
) {
    service.node().spawn(relay(copies, tx, response, lagged));
}

async fn write_responses(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<ControlResponse>) {
    while let Some(response) = rx.recv().await {
        if framing::write_frame(&mut wr, &response).await.is_err() {
            return;
        }
    }
}
