//! The accept loop: admits connections up to a cap, runs one [`session`] task per connection,
//! expires silent peers, and shuts everything down when asked.

use crate::{
    registry::Registry,
    session,
    store::{Quota, Store, Writer},
};
use anyhow::Result;
use common::wire::codes;
use std::{
    future::Future,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};
use tokio::task::JoinSet;
use tracing::{info, Instrument};

/// How the directory is run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Mailbox quota per recipient.
    pub quota: Quota,
    /// Most connections served at once.
    pub max_connections: u32,
}

/// What every session shares.
pub struct Shared {
    /// Durable state, for reads.
    pub store: Arc<dyn Store>,
    /// Durable state, for writes (group commit).
    pub writer: Writer,
    /// Who is online.
    pub registry: Registry,
    /// Settings.
    pub config: Config,
    /// Counters, for logs.
    pub metrics: Metrics,
}

/// What the directory counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Introductions sent (hole punching).
    pub introductions: AtomicU64,
    /// Introductions that ended in a direct link, as reported by the peer that asked.
    pub punched: AtomicU64,
    /// Introductions that did not.
    pub punch_failed: AtomicU64,
}

/// Serves `endpoint` until `shutdown` resolves.
pub async fn run(
    endpoint: quinn::Endpoint,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let writer = Writer::spawn(store.clone(), config.quota);
    let shared = Arc::new(Shared {
        store,
        writer,
        registry: Registry::default(),
        config,
        metrics: Metrics::default(),
    });
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
