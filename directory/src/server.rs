//! The accept loop: admits connections as [`admission`] decides (global cap, Retry under load,
//! limits per host), runs one [`session`] task per connection, and shuts everything down when
//! asked.
//!
//! Every task the directory runs is attached to a handle (as in iroh-relay's server): sessions
//! to this loop's `JoinSet`, a connection's request streams and mailbox to its session's, the
//! mailbox's ack reader and removals to the mailbox driver's. A set aborts its tasks when
//! dropped, so aborting a session ends everything under it. On shutdown a
//! `CancellationToken` stops the sessions, the endpoint closes every connection, and the
//! sessions get a moment to finish before the rest is aborted.

use crate::{
    admission::{Admission, Decision, Limits},
    cluster::Membership,
    session,
    state::{Config, Shared},
    store::{Store, StoreError},
};
use anyhow::Result;
use common::wire::codes;
use std::{future::Future, sync::Arc, time::Duration};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

/// Serves `endpoint` until `shutdown` resolves, admitting connections within `limits`; and
/// Prometheus metrics on `metrics`, if given (see [`crate::metrics`]). With `cluster`, the
/// node works with the other nodes of its cluster (see [`crate::cluster`]).
pub async fn run(
    endpoint: quinn::Endpoint,
    store: Arc<dyn Store>,
    config: Config,
    limits: Limits,
    metrics: Option<tokio::net::TcpListener>,
    cluster: Option<Membership>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let admission = Admission::new(config.max_connections, limits);
    let mut shared = Shared::new(store, config);
    let changes = cluster.map(|Membership { cluster, changes }| {
        shared.cluster = Some(cluster);
        changes
    });
    let shared = Arc::new(shared);
    let mut sessions = JoinSet::new();
    // What runs as long as the server does, aborted when it returns (not waited for, as the
    // sessions are).
    let mut background = JoinSet::new();
    if let Some(changes) = changes {
        let following = shared.clone();
        background.spawn(async move {
            if let Some(cluster) = &following.cluster {
                let (registry, rooms) = (&following.registry, &following.rooms);
                cluster
                    .follow(changes, registry, rooms, &following.store)
                    .await;
            }
        });
    }
    let cancel = CancellationToken::new();
    if let Some(listener) = metrics {
        let serve = serve_metrics(
            listener,
            shared.clone(),
            endpoint.clone(),
            cancel.child_token(),
        );
        sessions.spawn(serve);
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                let validated = incoming.remote_address_validated();
                let slot = match admission.decide(remote.ip(), validated, endpoint.open_connections()) {
                    Decision::Accept(slot) => slot,
                    Decision::Retry => {
                        // Answered by the client's next Initial, which comes back validated.
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().refuse();
                        }
                        continue;
                    }
                    Decision::Refuse(why) => {
                        // Attackers choose how often this happens: debug, not info.
                        debug!(%remote, ?why, "refusing a connection");
                        shared.metrics.refused(why);
                        incoming.refuse();
                        continue;
                    }
                };
                let span = tracing::info_span!("conn", %remote, name = tracing::field::Empty);
                let session = session::run(
                    incoming,
                    shared.clone(),
                    cancel.child_token(),
                    slot,
                    limits.registration_timeout,
                );
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
    background.shutdown().await;
    Ok(())
}

/// The metrics as Prometheus text, with the gauges read now.
async fn scrape(shared: &Shared, endpoint: &quinn::Endpoint) -> String {
    let metrics = &shared.metrics;
    let store = shared.store.clone();
    let started = std::time::Instant::now();
    let read = move || Ok::<_, StoreError>((store.held_entries()?, store.held_bytes()?));
    let held = match tokio::task::spawn_blocking(read).await {
        Ok(Ok(held)) => Some(held),
        _ => {
            warn!("metrics: the mailbox totals could not be read");
            None
        }
    };
    metrics.store_read(started.elapsed());
    metrics.held(shared.registry.len(), endpoint.open_connections(), held);
    if let Some(status) = shared.store.log_status() {
        metrics.log(&status.await);
    }
    metrics.text()
}

/// Serves `/metrics` on `listener` until `cancel`.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    cancel: CancellationToken,
) {
    use axum::{http::header, routing::get, Router};
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (shared, endpoint) = (shared.clone(), endpoint.clone());
            async move {
                let text = scrape(&shared, &endpoint).await;
                ([(header::CONTENT_TYPE, OPENMETRICS)], text)
            }
        }),
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
    if let Err(e) = served.await {
        warn!(cause = %e, "the metrics server stopped");
    }
}
