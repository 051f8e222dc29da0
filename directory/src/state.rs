//! What every connection shares: the store and its writer, who is online, the settings and the
//! counters. Here rather than in `server`, so that the modules serving a connection depend on
//! this state and not on the accept loop.

use crate::{
    cluster::Cluster,
    rates::{Allowances, Rates},
    registry::Registry,
    rooms::Rooms,
    store::{Naming, Quota, Store, Writer},
};
use std::sync::Arc;

/// How the directory is run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Mailbox quotas: per recipient, per sender, in all.
    pub quota: Quota,
    /// Most connections served at once.
    pub max_connections: u32,
    /// Names per key, and when an unused name expires.
    pub naming: Naming,
    /// Rates of introductions and of new names.
    pub rates: Rates,
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
    /// Counters, for logs and Prometheus.
    pub metrics: crate::metrics::Metrics,
    /// What callers may still ask for: introductions, new names.
    pub allowances: Allowances,
    /// The rooms' membership logs.
    pub rooms: Rooms,
    /// The other nodes, when this one is part of a cluster.
    pub cluster: Option<Cluster>,
}

impl Shared {
    /// The state of a directory that starts with nobody online; starts the store's writer.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        let metrics = crate::metrics::Metrics::new(store.log_status().is_some());
        Self {
            writer: Writer::spawn(store.clone(), (config.quota, config.naming), &metrics),
            store,
            registry: Registry::default(),
            allowances: Allowances::new(config.rates),
            rooms: Rooms::default(),
            cluster: None,
            config,
            metrics,
        }
    }
}
