//! Direct connections from other peers: accepting them, and serving the streams a remote
//! opens on any link (accepted or dialed by us): chat streams and file streams.
//!
//! A direct connection proves a key in its TLS handshake; the first message on it names its
//! sender, and the directory confirms that name is bound to that key before anything is
//! shown. Every later message on the connection must carry the same sender.
//!
//! Until then a connection is a stranger's, and strangers are bounded like the directory's
//! clients: at most [`PEER_CONNECTIONS_PER_IP`] inbound connections per host, at most
//! [`PEER_UNVERIFIED`] unverified ones in all, and each verified within
//! [`PEER_VERIFY_TIMEOUT`] of its first packet or closed. Past a limit a connection is refused
//! before its handshake.

use crate::{
    contacts::Verdict,
    directory_client::DirectoryClient,
    files,
    inbox::{Inbox, Shown, Via},
    links::{DirectPath, Links},
    rooms::Rooms,
    tasks::Tasks,
};
use anyhow::{anyhow, bail, Result};
use common::{
    admit::{self, Slot, Slots},
    defaults::{PEER_CONNECTIONS_PER_IP, PEER_UNVERIFIED, PEER_VERIFY_TIMEOUT, SEND_WINDOW},
    framing, tls,
    wire::{codes, FileHeader, FileRefusal, MessageId, PeerFrame, RoomMessage},
    KeyId, Name,
};
use std::{sync::Arc, time::Duration};
use tokio::{
    sync::{mpsc, Notify, OnceCell, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::{debug, info_span, warn, Instrument};

/// What serving peer connections needs; cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    /// Where their messages go.
    pub inbox: Inbox,
    /// Where their files go.
    pub files: files::Receiver,
    /// Confirms who owns a key.
    pub directory: DirectoryClient,
    /// Where verified connections are recorded.
    pub links: Arc<Links>,
    /// Who may post in which room.
    pub rooms: Rooms,
    /// Where the tasks serving them run.
    pub tasks: Tasks,
}

/// How long a connection we dialed may go unused once it is not the link to its peer (a dial
/// that lost a race, a link replaced by a newer one) before we close it. The peer may send
/// on it (both of us dialed at once, and it took ours as its link); it dials again if it
/// finds it closed. Without a bound, introductions by a hostile contact could pile up idle
/// connections, kept alive by both sides' keep-alives.
const SPARE_IDLE: Duration = Duration::from_secs(120);

impl Acceptor {
    /// Serves the streams the remote opens on `conn`, which we dialed to `name` (its key was
    /// checked then), from now on: for as long as it is the link to `name`, and while spare,
    /// until it goes [`SPARE_IDLE`] without stream data from the remote.
    pub fn adopt(&self, name: Name, conn: quinn::Connection) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let links = this.links.clone();
            let is_link = || {
                links
                    .get(&name)
                    .is_some_and(|(link, _)| link.stable_id() == conn.stable_id())
            };
            tokio::select! {
                () = serve_connection(conn.clone(), Some(name.clone()), this, None) => {}
                () = close_when_spare(&conn, is_link, SPARE_IDLE) => {}
            }
        });
    }
}

/// Closes `conn` once, while `is_link` says no, the remote has sent no stream data for `idle`
/// (checked every `idle`, so it closes between one and two `idle`s after its last use).
async fn close_when_spare(conn: &quinn::Connection, is_link: impl Fn() -> bool, idle: Duration) {
    let mut seen = conn.stats().frame_rx.stream;
    loop {
        tokio::time::sleep(idle).await;
        let now = conn.stats().frame_rx.stream;
        if now == seen && !is_link() {
            debug!("closing a spare connection nobody uses");
            conn.close(codes::OK.into(), b"spare connection unused");
            return;
        }
        seen = now;
    }
}

/// An inbound connection not verified yet: its place among the [`PEER_UNVERIFIED`], and when
/// it must be verified by.
struct Stranger {
    _permit: OwnedSemaphorePermit,
    deadline: Instant,
}

/// Who the remote of a connection is, once verified; `done` is notified then.
struct Verified {
    name: OnceCell<Name>,
    done: Notify,
}

/// Accepts connections from other peers until the endpoint closes, within the limits on
/// strangers (see the module's docs).
pub async fn serve(endpoint: quinn::Endpoint, acceptor: Acceptor) {
    let slots = Slots::new(PEER_CONNECTIONS_PER_IP);
    let unverified = Arc::new(Semaphore::new(PEER_UNVERIFIED));
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let Some(slot) = slots.take(remote.ip()) else {
            debug!(%remote, "refusing a connection: its host holds as many as it may");
            incoming.refuse();
            continue;
        };
        let Ok(permit) = unverified.clone().try_acquire_owned() else {
            debug!(%remote, "refusing a connection: too many unverified ones");
            incoming.refuse();
            continue;
        };
        let stranger = Stranger {
            _permit: permit,
            deadline: Instant::now() + PEER_VERIFY_TIMEOUT,
        };
        let span = info_span!("peer_conn", %remote);
        let acceptor = acceptor.clone();
        acceptor
            .tasks
            .clone()
            .spawn(accept_one(incoming, slot, stranger, acceptor).instrument(span));
    }
}

/// Completes the handshake of `incoming` and serves it, holding its host's `_slot` to the end.
async fn accept_one(
    incoming: quinn::Incoming,
    _slot: Slot,
    stranger: Stranger,
    acceptor: Acceptor,
) {
    let links = &acceptor.links;
    let Some(conn) = admit::handshake(incoming, stranger.deadline).await else {
        return;
    };
    // A peer we asked the directory to introduce is answering: its key is the one the
    // directory holds for the name, so the link is verified already.
    let known = tls::remote_key(&conn).and_then(|key| links.expected(&key));
    if let Some(name) = &known {
        debug!(peer = %name, "introduced peer connected");
        links.insert(name.clone(), conn.clone(), DirectPath::Punched);
    }
    let stranger = known.is_none().then_some(stranger);
    serve_connection(conn, known, acceptor, stranger).await;
}

/// Serves the chat streams the remote opens on `conn`. `known` is the remote's name when we
/// dialed it (its key was checked then); otherwise the first message names it and the
/// directory confirms it, before the `stranger`'s deadline or the connection is closed.
async fn serve_connection(
    conn: quinn::Connection,
    known: Option<Name>,
    acceptor: Acceptor,
    mut stranger: Option<Stranger>,
) {
    let Some(key) = tls::remote_key(&conn) else {
        conn.close(codes::UNAUTHORIZED.into(), b"no certificate");
        return;
    };
    let verified = Arc::new(Verified {
        name: OnceCell::new_with(known),
        done: Notify::new(),
    });
    loop {
        let deadline = stranger.as_ref().map(|s| s.deadline);
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            () = verified.done.notified(), if stranger.is_some() => {
                stranger = None;
                continue;
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if verified.name.initialized() {
                    stranger = None;
                    continue;
                }
                debug!("not verified in time; closing");
                conn.close(codes::TIMED_OUT.into(), b"not verified in time");
                return;
            }
        };
        let (send, recv) = match accepted {
            Ok(streams) => streams,
            Err(e) => {
                debug!(cause = %e, "peer connection ended");
                return;
            }
        };
        let stream = ChatStream {
            conn: conn.clone(),
            key,
            verified: verified.clone(),
            inbox: acceptor.inbox.clone(),
            files: acceptor.files.clone(),
            directory: acceptor.directory.clone(),
            links: acceptor.links.clone(),
            rooms: acceptor.rooms.clone(),
        };
        acceptor.tasks.spawn(async move {
            if let Err(e) = stream.run(send, recv).await {
                debug!(cause = %format!("{e:#}"), "chat stream ended");
            }
        });
    }
}

struct ChatStream {
    conn: quinn::Connection,
    key: KeyId,
    verified: Arc<Verified>,
    inbox: Inbox,
    files: files::Receiver,
    directory: DirectoryClient,
    links: Arc<Links>,
    rooms: Rooms,
}

impl ChatStream {
    /// Serves one stream the remote opened: its first frame says whether it is a chat stream
    /// or a file stream.
    async fn run(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
        let first = match self.next_frame(&mut recv).await? {
            Some(PeerFrame::FileStream(header)) => {
                return self.receive_file(header, &mut send, &mut recv).await;
            }
            Some(PeerFrame::Chat(message)) => (message, None),
            Some(PeerFrame::RoomChat(RoomMessage {
                room,
                version,
                message,
            })) => (message, Some((room, version))),
            Some(other) => {
                return Err(self.refuse(codes::PROTOCOL, anyhow!("unexpected {other:?}")))
            }
            None => return Ok(()),
        };
        // Reading runs ahead of acknowledging: messages are handed over in order while earlier
        // ones are still being shown (and recorded), and the acks follow in the same order.
        let (pending_tx, mut pending) = mpsc::channel::<(MessageId, Shown)>(SEND_WINDOW);
        let read = async {
            let mut next = Some(first);
            while let Some((message, room)) = next {
                if !self.inbox.fits(&message) {
                    return Err(
                        self.refuse(codes::PROTOCOL, anyhow!("message not for us or too large"))
                    );
                }
                self.check_sender(&message.from).await?;
                let id = message.id;
                let from = &message.from;
                let shown = match room {
                    Some((room, version))
                        if !self.rooms.admits(&room, from, &self.key, version).await =>
                    {
                        // Acknowledged, so it is not sent again, but not shown: whoever is not
                        // a member by the room's signed log does not speak in it.
                        debug!(%room, %from, "a room message from a non-member dropped");
                        Shown::already()
                    }
                    room => {
                        let room = room.map(|(room, _)| room);
                        (self.inbox)
                            .hand_over(message, room, Via::Direct, self.key)
                            .await?
                    }
                };
                if pending_tx.send((id, shown)).await.is_err() {
                    return Ok(()); // the ack writer failed; its error is the one reported
                }
                next = match self.next_frame(&mut recv).await? {
                    Some(PeerFrame::Chat(message)) => Some((message, None)),
                    Some(PeerFrame::RoomChat(RoomMessage {
                        room,
                        version,
                        message,
                    })) => Some((message, Some((room, version)))),
                    Some(other) => {
                        return Err(self.refuse(codes::PROTOCOL, anyhow!("unexpected {other:?}")))
                    }
                    None => None,
                };
            }
            drop(pending_tx);
            Ok::<_, anyhow::Error>(())
        };
        let ack = async {
            while let Some((id, shown)) = pending.recv().await {
                shown.wait().await?;
                framing::write_frame(&mut send, &PeerFrame::Ack(id)).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::try_join!(read, ack)?;
        Ok(())
    }

    /// The next frame; a frame that breaks the protocol closes the connection.
    async fn next_frame(&self, recv: &mut quinn::RecvStream) -> Result<Option<PeerFrame>> {
        match framing::read_frame::<PeerFrame, _>(recv).await {
            Ok(frame) => Ok(frame),
            Err(e) if e.is_violation() => Err(self.refuse(e.code(), e.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// A file stream: the header came first; once its sender is checked, the rest is the
    /// file's, received by [`files::Receiver::direct`].
    async fn receive_file(
        &self,
        header: FileHeader,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<()> {
        if header.to != *self.inbox.me() {
            return Err(self.refuse(codes::PROTOCOL, anyhow!("file not for us")));
        }
        self.check_sender(&header.from).await?;
        if self.inbox.verdict(&header.from) != Verdict::Contact {
            // A stranger's file waits for the user's consent: its sender falls back to the
            // mailbox, within the directory's quotas, or waits until it is accepted.
            debug!(from = %header.from, "file refused: not a contact");
            framing::write_frame(send, &PeerFrame::FileRefused(FileRefusal::NotAccepted)).await?;
            let _ = send.finish();
            return Ok(());
        }
        self.files.direct(header, send, recv).await
    }

    /// Checks that the connection's key owns `from`, asking the directory the first time.
    async fn check_sender(&self, from: &Name) -> Result<()> {
        let name = self
            .verified
            .name
            .get_or_try_init(|| async {
                let info = self.directory.lookup(from).await?;
                if info.key != self.key {
                    return Err(self.refuse(
                        codes::UNAUTHORIZED,
                        anyhow!("{from} is not the owner of key {}", self.key.short()),
                    ));
                }
                if let Err(changed) = self.inbox.vouch(&info) {
                    self.inbox
                        .notice(format!("refused a direct connection: {changed}"))
                        .await;
                    return Err(self.refuse(codes::UNAUTHORIZED, anyhow!(changed)));
                }
                if self.inbox.verdict(from) == Verdict::Blocked {
                    return Err(self.refuse(codes::UNAUTHORIZED, anyhow!("{from} is blocked")));
                }
                let path = DirectPath::classify(self.conn.remote_address(), &info, false);
                self.links.insert(from.clone(), self.conn.clone(), path);
                self.verified.done.notify_one();
                Ok(from.clone())
            })
            .await?;
        if name != from {
            bail!(self.refuse(
                codes::UNAUTHORIZED,
                anyhow!("sender changed from {name} to {from}")
            ));
        }
        Ok(())
    }

    fn refuse(&self, code: u32, cause: anyhow::Error) -> anyhow::Error {
        warn!(cause = %cause, "closing a peer connection");
        self.conn.close(code.into(), b"refused");
        cause
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{defaults::ALPN_PEER, tls::Expect, Identity};

    /// Two endpoints on loopback and a connection between them: (ours, theirs).
    async fn pair() -> Result<(quinn::Endpoint, quinn::Connection, quinn::Connection)> {
        let (a, b) = (Identity::generate("a")?, Identity::generate("b")?);
        let ours = crate::endpoint::bind(&a, "127.0.0.1:0".parse()?)?;
        let theirs = crate::endpoint::bind(&b, "127.0.0.1:0".parse()?)?;
        let config = tls::client_config(&a, ALPN_PEER, Expect::Key(b.key_id))?;
        let dial = ours.connect_with(config, theirs.local_addr()?, "peer")?;
        let (dialed, accepted) = tokio::join!(dial, async {
            theirs
                .accept()
                .await
                .ok_or(anyhow!("no connection"))?
                .await
                .map_err(anyhow::Error::from)
        });
        // The remote's endpoint lives as long as its connection is used (a handle is kept).
        std::mem::forget(theirs);
        Ok((ours, dialed?, accepted?))
    }

    #[tokio::test]
    async fn a_spare_connection_is_closed_once_unused_and_a_used_one_or_the_link_is_kept(
    ) -> Result<()> {
        let idle = Duration::from_millis(200);
        // Unused and not the link: closed after one or two idle periods.
        let (_ours, spare, _remote) = pair().await?;
        let closed = tokio::time::timeout(idle * 4, close_when_spare(&spare, || false, idle));
        closed
            .await
            .map_err(|_| anyhow!("a spare connection was kept"))?;
        assert!(spare.close_reason().is_some());
        // The link: kept, however idle.
        let (_ours, link, _remote) = pair().await?;
        let kept = tokio::time::timeout(idle * 5, close_when_spare(&link, || true, idle)).await;
        assert!(
            kept.is_err() && link.close_reason().is_none(),
            "the link was closed"
        );
        // Spare, but the remote sends on it (it took it as its link): kept.
        let (_ours, used, remote) = pair().await?;
        let sends = async {
            loop {
                // Bi-streams: a peer connection takes no uni-streams.
                let (mut stream, _) = remote.open_bi().await?;
                stream.write_all(b"a message").await?;
                stream.finish()?;
                tokio::time::sleep(idle / 4).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            () = close_when_spare(&used, || false, idle) => bail!("a used connection was closed"),
            sent = sends => sent?,
            () = tokio::time::sleep(idle * 5) => {}
        }
        assert!(used.close_reason().is_none());
        Ok(())
    }
}
