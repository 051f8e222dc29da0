//! The accept loop: admits connections up to a cap, runs one [`session`] task per connection,
//! expires silent peers, and shuts everything down when asked.

use crate::{
    session,
    state::{Config, Shared},
    store::Store,
};
use anyhow::Result;
use common::wire::codes;
use std::{future::Future, sync::Arc, time::Duration};
use tokio::task::JoinSet;
use tracing::{info, Instrument};

/// Serves `endpoint` until `shutdown` resolves.
pub async fn run(
    endpoint: quinn::Endpoint,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let shared = Arc::new(Shared::new(store, config));
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
                sessions.spawn(session::run(incoming, shared.clone()).instrument(span));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    endpoint.close(codes::SHUTDOWN.into(), b"directory shutting down");
    // Give peers a moment to hear the close; sessions end as their connections do.
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    sessions.shutdown().await;
    Ok(())
}
