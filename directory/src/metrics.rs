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
//!
//! A node of a cluster also says how it stands with the cluster's log ([`LogMetrics`]), read
//! when scraped from [`crate::store::Store::log_status`]:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `directory_log_applied_position`, `directory_log_last_position` | gauge | |
//! | `directory_log_behind` | gauge | |
//! | `directory_log_entries` | gauge | |
//! | `directory_log_reachable` | gauge | |
//! | `directory_log_compactions_total` | counter | `outcome` (`done`, `failed`) |
//! | `directory_log_snapshot_bytes` | gauge | |

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

/// A count as a gauge's value (gauges are signed), saturating.
fn n(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// How a node of a cluster stands with the cluster's log ([`crate::store::jetstream`]), as
/// its store reports it ([`crate::store::Store::log_status`]) for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStatus {
    /// The position of the last entry this node's replica applied.
    pub applied: u64,
    /// The log as JetStream holds it now: its first and last positions and how many entries
    /// it holds; `None` when JetStream did not answer in time.
    pub log: Option<LogState>,
    /// Compactions of the log this node did since it started.
    pub compactions: u64,
    /// Compactions that failed (a snapshot not taken or not stored, the log not purged).
    pub compaction_failures: u64,
    /// Bytes of the last snapshot this node stored or started from (0: none yet).
    pub snapshot_bytes: u64,
}

/// The log's extent as JetStream reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogState {
    /// The first position it holds (the entries before it were compacted away).
    pub first: u64,
    /// The last position written.
    pub last: u64,
    /// How many entries it holds.
    pub entries: u64,
}

/// How a node of a cluster stands with the cluster's log.
pub struct LogMetrics {
    applied: Gauge,
    last: Gauge,
    behind: Gauge,
    entries: Gauge,
    reachable: Gauge,
    compactions: Family<OutcomeLabel, Counter>,
    snapshot_bytes: Gauge,
    /// Held while the counters catch up with the store's: two scrapes at once must not both
    /// add the same difference.
    setting: Mutex<()>,
}

impl LogMetrics {
    fn register(registry: &mut Registry) -> Self {
        let log = Self {
            applied: Gauge::default(),
            last: Gauge::default(),
            behind: Gauge::default(),
            entries: Gauge::default(),
            reachable: Gauge::default(),
            compactions: Family::default(),
            snapshot_bytes: Gauge::default(),
            setting: Mutex::new(()),
        };
        let gauges = [
            (
                "log_applied_position",
                "Position of the last entry of the cluster's log this node applied",
                &log.applied,
            ),
            (
                "log_last_position",
                "Position of the last entry of the cluster's log, as JetStream holds it",
                &log.last,
            ),
            (
                "log_behind",
                "Entries of the cluster's log this node has not applied yet",
                &log.behind,
            ),
            (
                "log_entries",
                "Entries the cluster's log holds (those before the last compaction are gone)",
                &log.entries,
            ),
            (
                "log_reachable",
                "1 if JetStream answered for the log's state at this scrape, else 0",
                &log.reachable,
            ),
            (
                "log_snapshot_bytes",
                "Bytes of the last snapshot of its replica this node stored or started from",
                &log.snapshot_bytes,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "log_compactions",
            "Compactions of the cluster's log this node did, by outcome",
            log.compactions.clone(),
        );
        log
    }

    /// Sets everything from `status`, read just before a scrape.
    fn set(&self, status: &LogStatus) {
        let _setting = self.setting.lock().unwrap_or_else(|e| e.into_inner());
        self.applied.set(n(status.applied));
        self.reachable.set(i64::from(status.log.is_some()));
        // Left as they were when JetStream did not answer: `reachable` says so.
        if let Some(log) = status.log {
            self.last.set(n(log.last));
            self.entries.set(n(log.entries));
            self.behind.set(n(log.last.saturating_sub(status.applied)));
        }
        self.snapshot_bytes.set(n(status.snapshot_bytes));
        // The store counts; the counters catch up with it.
        for (outcome, total) in [
            ("done", status.compactions),
            ("failed", status.compaction_failures),
        ] {
            let counter = self.compactions.get_or_create(&OutcomeLabel { outcome });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
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
    /// On a node of a cluster, how it stands with the log.
    log: Option<LogMetrics>,
    /// When the hole punching counters were last logged: they are logged at most once a
    /// minute, not per report, which any peer can send at will.
    pub punch_logged: Mutex<Option<std::time::Instant>>,
}

impl Default for Metrics {
    /// The metrics of one node, without a log.
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// Every metric; with `log`, those of a node of a cluster too ([`LogMetrics`]).
    pub fn new(log: bool) -> Self {
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
        let log = log.then(|| LogMetrics::register(&mut registry));
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
            log,
            punch_logged: Mutex::new(None),
        }
    }

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
        self.online.set(n(online as u64));
        self.connections.set(n(connections as u64));
        if let Some((entries, bytes)) = mailbox {
            self.entries.set(n(entries));
            self.bytes.set(n(bytes));
        }
    }

    /// Sets how this node stands with the cluster's log, read just before a scrape.
    pub fn log(&self, status: &LogStatus) {
        if let Some(log) = &self.log {
            log.set(status);
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
