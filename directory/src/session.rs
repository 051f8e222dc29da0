//! One peer's QUIC connection, from handshake to close: the handshake proves its key, then each
//! bi-stream carries requests, one after another, each answered in order; [`service`] decides
//! the answers, this module only reads frames and writes them. A client may send the next
//! requests before the answers come (pipelining): those that arrived together are answered in
//! one write, so in as few packets as possible.

use crate::{
    mailbox,
    registry::Link,
    service::{self, Caller, Reply},
    state::Shared,
};
use anyhow::Result;
use common::{
    defaults::REQUEST_TIMEOUT,
    framing::{self, FrameError, FrameReader},
    now_ms, tls,
    wire::{codes, DirectoryRequest, DirectoryResponse},
};
use std::{net::SocketAddr, sync::Arc};
use tracing::{debug, info, warn, Instrument};

/// The state of one connection.
struct Session {
    conn: quinn::Connection,
    shared: Arc<Shared>,
    caller: Caller,
}

/// Answers to pipelined requests are gathered into one write up to about this many bytes.
const ANSWER_BATCH: usize = 16 * 1024;

/// Runs one connection to its end. Errors end this connection only.
pub async fn run(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            debug!(cause = %e, "handshake failed");
            return;
        }
    };
    let Some(key) = tls::remote_key(&conn) else {
        // The TLS verifier requires a certificate, so this cannot happen; refuse anyway.
        conn.close(codes::UNAUTHORIZED.into(), b"no certificate");
        return;
    };
    debug!(key = %key.short(), "connected");
    let session = Arc::new(Session {
        conn: conn.clone(),
        shared,
        caller: Caller::new(key, Arc::new(conn.clone())),
    });
    let reason = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let session = session.clone();
                tokio::spawn(
                    async move {
                        if let Err(e) = session.serve_stream(send, recv).await {
                            debug!(cause = %e, "request failed");
                        }
                    }
                    .in_current_span(),
                );
            }
            Err(e) => break e,
        }
    };
    debug!(cause = %reason, "connection closed");
    if let Some(name) = session.caller.name() {
        // The time is stored before the peer leaves the registry, so that a lookup never finds
        // it offline without a last-seen time. Should a newer connection hold the name, the
        // time is still true, and that connection reports the peer online anyway.
        let store = session.shared.store.clone();
        let seen = name.clone();
        let _ = tokio::task::spawn_blocking(move || store.set_last_seen(&seen, now_ms())).await;
        if session.shared.registry.remove_if(name, conn.stable_id()) {
            info!("offline");
        }
    }
}

impl Session {
    async fn serve_stream(
        self: &Arc<Self>,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<()> {
        let mut requests = FrameReader::new(recv);
        loop {
            let request = match requests.next(REQUEST_TIMEOUT).await {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(e) => return Err(self.refuse_stream(&mut send, requests.get_mut(), e)),
            };
            let mut answers = self.answer(request).await?;
            while answers.len() < ANSWER_BATCH {
                match requests.buffered() {
                    Ok(Some(request)) => answers.extend(self.answer(request).await?),
                    Ok(None) => break,
                    Err(e) => return Err(self.refuse_stream(&mut send, requests.get_mut(), e)),
                }
            }
            send.write_all(&answers).await?;
        }
        send.finish()?;
        Ok(())
    }

    /// The encoded answer to one request.
    async fn answer(self: &Arc<Self>, request: DirectoryRequest) -> Result<Vec<u8>> {
        let response = match service::handle(&self.shared, &self.caller, request).await {
            Ok(Reply { response, online }) => {
                if let (Some(feed), Some(name)) = (online, self.caller.name()) {
                    tokio::spawn(
                        mailbox::deliver(
                            self.conn.clone(),
                            name.clone(),
                            self.shared.clone(),
                            feed,
                        )
                        .in_current_span(),
                    );
                }
                response
            }
            Err(code) => DirectoryResponse::Error(code),
        };
        Ok(framing::encode(&response)?)
    }

    /// Closes a stream whose requests cannot be read: a bad frame (with a code saying why) or
    /// one that did not arrive whole in time. A stream that merely ended or failed is left.
    fn refuse_stream(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        e: FrameError,
    ) -> anyhow::Error {
        if e.is_violation() {
            warn!(cause = %e, "bad request frame; closing the stream");
        }
        if e.is_violation() || matches!(e, FrameError::TimedOut(_)) {
            let _ = send.reset(e.code().into());
            let _ = recv.stop(e.code().into());
        }
        e.into()
    }
}

/// The registry's view of a connection.
impl Link for quinn::Connection {
    fn id(&self) -> usize {
        self.stable_id()
    }

    fn remote_address(&self) -> SocketAddr {
        quinn::Connection::remote_address(self)
    }

    fn close(&self, code: u32, reason: &[u8]) {
        quinn::Connection::close(self, code.into(), reason);
    }
}
