//! The accept loop: admits connections up to a cap, runs one [`session`] task per connection,
//! and shuts everything down when asked.
//!
//! Every task the directory runs is attached to a handle (as in iroh-relay's server): sessions
//! to this loop's `JoinSet`, a connection's request streams and mailbox to its session's, the
//! mailbox's ack reader and removals to the mailbox driver's. A set aborts its tasks when
//! dropped, so aborting a session ends everything under it. On shutdown a
//! `CancellationToken` stops the sessions, the endpoint closes every connection, and the
//! sessions get a moment to finish before the rest is aborted.

use crate::{
    session,
    state::{Config, Shared},
    store::Store,
};
use anyhow::Result;
use common::wire::codes;
use std::{future::Future, sync::Arc, time::Duration};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

/// Serves `endpoint` until `shutdown` resolves.
pub async fn run(
    endpoint: quinn::Endpoint,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let shared = Arc::new(Shared::new(store, config));
    let cancel = CancellationToken::new();
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if endpoint.open_connections() >= shared.config.max_connections as usize {
                    info!(remote = %incoming.remote_address(), "refusing: connection limit reached");
                    incoming.refuse();
                    continue;
                }
                let span = tracing::info_span!(
                    "conn",
                    remote = %incoming.remote_address(),
                    name = tracing::field::Empty,
                );
                let session = session::run(incoming, shared.clone(), cancel.child_token());
                sessions.spawn(session.instrument(span));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    cancel.cancel();
    endpoint.close(codes::SHUTDOWN.into(), b"directory shutting down");
    // Give peers a moment to hear the close, and sessions to finish (their connections are
    // closed, so their streams end); what is left then is aborted.
    let finished = async {
        endpoint.wait_idle().await;
        while sessions.join_next().await.is_some() {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), finished).await;
    sessions.shutdown().await;
    Ok(())
}
