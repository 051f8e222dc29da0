//! What the directory counts, for its logs and for Prometheus (`directory --metrics ADDR`:
//! [`crate::server`] serves them as text at `/metrics`).
//!
//! Counters and histograms are updated where things happen (a request answered, a connection
//! refused, a punch reported); gauges that are a count of something held elsewhere (peers
//! online, connections, mail held) are read when scraped, so they cannot drift.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `directory_requests_total` | counter | `kind` (register, lookup, deposit_letter, …), `outcome` (`ok` or the error code) |
//! | `directory_request_seconds` | histogram | `kind` |
//! | `directory_connections_refused_total` | counter | `reason` |
//! | `directory_introductions_total` | counter | |
//! | `directory_punches_total` | counter | `outcome` (`direct`, `failed`) |
//! | `directory_online_peers` | gauge | |
//! | `directory_connections` | gauge | |
//! | `directory_mailbox_entries`, `directory_mailbox_bytes` | gauge | |
//! | `directory_store_seconds` | histogram | `op`: `read` (a scrape's), and the writer's commits: `deposit`, `remove`, `names` (registrations and last-seen times) |

use common::wire::{DirectoryRequest, ErrorCode};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{sync::Mutex, time::Duration};
use tracing::warn;

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// What was asked.
    pub kind: &'static str,
    /// `ok`, or the error code answered.
    pub outcome: String,
}

/// Labels of a request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What was asked.
    pub kind: &'static str,
}

/// Labels of a refused connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Labels of a punch outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `direct` or `failed`.
    pub outcome: &'static str,
}

/// Labels of a store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// What the store did.
    pub op: &'static str,
}

/// Every metric, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by kind and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// How long each kind of request took to answer.
    pub latency: Family<KindLabel, Histogram>,
    /// Connections refused, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Introductions sent (hole punching).
    pub introductions: Counter,
    /// Introductions that ended in a direct link, or did not, as reported by the peer that
    /// asked.
    pub punches: Family<OutcomeLabel, Counter>,
    /// Store operations timed: a scrape's read, and each group commit of the writer
    /// ([`crate::store::Writer`], which holds a handle to it).
    pub store: Family<OpLabel, Histogram>,
    online: Gauge,
    connections: Gauge,
    entries: Gauge,
    bytes: Gauge,
    /// When the hole punching counters were last logged: they are logged at most once a
    /// minute, not per report, which any peer can send at will.
    pub punch_logged: Mutex<Option<std::time::Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        // Latency buckets from 50 µs to about 3 s.
        let buckets = || {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                50e-6, 3.0, 11,
            ))
        };
        let mut registry = Registry::with_prefix("directory");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<KindLabel, Histogram>::new_with_constructor(buckets as fn() -> _);
        let refused = Family::<ReasonLabel, Counter>::default();
        let introductions = Counter::default();
        let punches = Family::<OutcomeLabel, Counter>::default();
        let store = Family::<OpLabel, Histogram>::new_with_constructor(buckets as fn() -> _);
        let (online, connections) = (Gauge::default(), Gauge::default());
        let (entries, bytes) = (Gauge::default(), Gauge::default());
        registry.register(
            "requests",
            "Requests answered, by kind and outcome",
            requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Time to answer a request, by kind",
            latency.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by reason",
            refused.clone(),
        );
        registry.register("introductions", "Introductions sent", introductions.clone());
        registry.register("punches", "Reported punch outcomes", punches.clone());
        registry.register("store_seconds", "Time of store operations", store.clone());
        registry.register("online_peers", "Peers online now", online.clone());
        registry.register("connections", "Open connections", connections.clone());
        registry.register(
            "mailbox_entries",
            "Entries held in all mailboxes",
            entries.clone(),
        );
        registry.register(
            "mailbox_bytes",
            "Bytes held in all mailboxes",
            bytes.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            refused,
            introductions,
            punches,
            store,
            online,
            connections,
            entries,
            bytes,
            punch_logged: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn answered(&self, kind: &'static str, outcome: Result<(), ErrorCode>, took: Duration) {
        let outcome = match outcome {
            Ok(()) => "ok".to_string(),
            Err(code) => format!("{code:?}"),
        };
        self.requests
            .get_or_create(&RequestLabels { kind, outcome })
            .inc();
        self.latency
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    /// Counts one refused connection.
    pub fn refused(&self, reason: impl std::fmt::Debug) {
        let reason = format!("{reason:?}");
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Sets the gauges that count what is held elsewhere, read just before a scrape.
    pub fn held(&self, online: usize, connections: usize, mailbox: Option<(u64, u64)>) {
        let n = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.online.set(n(online as u64));
        self.connections.set(n(connections as u64));
        if let Some((entries, bytes)) = mailbox {
            self.entries.set(n(entries));
            self.bytes.set(n(bytes));
        }
    }

    /// Everything, as Prometheus (OpenMetrics) text.
    pub fn text(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            warn!("metrics: encoding failed");
        }
        text
    }

    /// Times one store read.
    pub fn store_read(&self, took: Duration) {
        let op = "read";
        self.store
            .get_or_create(&OpLabel { op })
            .observe(took.as_secs_f64());
    }

    /// Counts one reported punch.
    pub fn punched(&self, success: bool) -> (u64, u64) {
        let outcome = if success { "direct" } else { "failed" };
        self.punches.get_or_create(&OutcomeLabel { outcome }).inc();
        let get = |outcome| self.punches.get_or_create(&OutcomeLabel { outcome }).get();
        (get("direct"), get("failed"))
    }
}

/// The kind of a [`DirectoryRequest::DepositLetter`], which the session times itself.
pub const DEPOSIT_LETTER: &str = "deposit_letter";

/// The name of a request's kind, for labels.
pub fn kind(request: &DirectoryRequest) -> &'static str {
    match request {
        DirectoryRequest::Register { .. } => "register",
        DirectoryRequest::Heartbeat => "heartbeat",
        DirectoryRequest::Lookup { .. } => "lookup",
        DirectoryRequest::Deposit { .. } => "deposit",
        DirectoryRequest::Introduce { .. } => "introduce",
        DirectoryRequest::PunchOutcome { .. } => "punch_outcome",
        DirectoryRequest::DepositFilePart { .. } => "deposit_file_part",
        DirectoryRequest::SetReach { .. } => "set_reach",
        DirectoryRequest::DepositLetter { .. } => DEPOSIT_LETTER,
        DirectoryRequest::RoomOp { .. } => "room_op",
        DirectoryRequest::RoomLog { .. } => "room_log",
    }
}
