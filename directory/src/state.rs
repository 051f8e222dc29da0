//! What every connection shares: the store and its writer, who is online, the settings and the
//! counters. Here rather than in `server`, so that the modules serving a connection depend on
//! this state and not on the accept loop.

use crate::{
    registry::Registry,
    store::{Quota, Store, Writer},
};
use std::sync::{atomic::AtomicU64, Arc};

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

impl Shared {
    /// The state of a directory that starts with nobody online; starts the store's writer.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        Self {
            writer: Writer::spawn(store.clone(), config.quota),
            store,
            registry: Registry::default(),
            config,
            metrics: Metrics::default(),
        }
    }
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
