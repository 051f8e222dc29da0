//! Keeping the cluster's log short: snapshots of a replica in JetStream's object store, and
//! the log purged up to them.
//!
//! # How
//!
//! Every entry of the log ([`super::jetstream`]) is applied by every node to its replica, so
//! a replica at position `S` holds everything entries `1..=S` made. Once the log holds more
//! than [`LogConfig::compact_after`] entries, a node:
//!
//! 1. copies its replica, as of one read transaction, to a file ([`RedbStore::snapshot`]):
//!    the snapshot at its position `S`;
//! 2. puts it in the object store `<stream>-SNAPSHOTS` as `replica-<S>-<node>` (a name of its
//!    own: two nodes storing the same position never replace each other's object);
//! 3. purges the log up to `S`, or less if a live node has applied less (each node writes its
//!    position every few seconds to the stream `<stream>-NODES`, which keeps the last one of
//!    each node for [`NODE_TTL`], under a key kept beside its replica: [`replica_key`]);
//! 4. deletes the snapshots older than the two newest (a node may be loading the one before
//!    its own).
//!
//! At every check, whether or not it compacts, a node also removes the chunks that puts
//! which failed midway left, once they have stayed unchanged for [`ORPHAN_AGE`] (no object
//! names them, so nothing else would remove them).
//!
//! A node whose replica is behind the start of the log when it starts (a new node, or one
//! that was down through a compaction) says so first (it writes its position, 0 if empty, so
//! that nobody purges past it meanwhile), loads the newest snapshot in place of its replica
//! and follows the log from there. A download that stalls (the object deleted under it) is
//! given up after [`READ_STALL`] and tried again on the newest. The newest snapshot is never behind the log's start: a node
//! purges only up to a snapshot it has stored, and only older ones are deleted.
//!
//! Nodes may compact at the same time: each stores its own snapshot and purges up to it, and
//! every step above stays true. To make that rare, each waits a random part of the interval
//! between checks.
//!
//! # Limits
//!
//! A running node that falls further behind than a compaction purged (cut off from NATS for
//! longer than [`NODE_TTL`]) finds entries missing, stops applying, and exits; started again, it
//! loads the newest snapshot. A snapshot is the whole replica: the object store holds one or
//! two of them, and the node taking one writes it to its data folder first.

use super::{jetstream::LogConfig, RedbStore};
use async_nats::jetstream::{self, object_store, stream};
use futures::StreamExt as _;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// How long a node's position counts without being refreshed: a node that stopped (or lost
/// NATS) this long ago no longer holds the log back.
pub(super) const NODE_TTL: Duration = Duration::from_secs(60);

/// How often a node writes its position.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long a snapshot's download may go without a byte before it is given up: an object
/// deleted while it is read leaves the reader waiting, not failing.
const READ_STALL: Duration = Duration::from_secs(10);

/// How many times a node starting from a snapshot tries again, when the snapshot it was
/// loading was deleted under it (a newer one replaced it).
const LOAD_TRIES: usize = 5;

/// How long chunks that no object names must stay unchanged, as this node sees them, before
/// they are removed. A put writes its chunks, then the object that names them; a put that
/// failed in between (NATS lost mid-snapshot) leaves its chunks for good. A put in progress
/// adds a chunk every moment, or fails within seconds (each chunk's publish times out): chunks
/// unchanged this long are not in progress. Only this node's own clock measures it, so a
/// clock set wrong anywhere cannot make an upload in progress look old.
pub(super) const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// How long a sweep for failed puts' chunks may take: it must not hold up the compactions
/// that follow it.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long listing the snapshots may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Object names: `replica-`, the position zero-padded (names sort as positions do), `-`, and
/// the node that stored it.
const PREFIX: &str = "replica-";

/// What this node's compactions did, for its metrics ([`crate::metrics::LogStatus`]).
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub compactions: AtomicU64,
    pub failures: AtomicU64,
    /// Bytes of the last snapshot stored or loaded.
    pub snapshot_bytes: AtomicU64,
}

/// The snapshots of one log and the positions of its nodes.
#[derive(Clone)]
pub(super) struct Snapshots {
    objects: object_store::ObjectStore,
    /// The object store's bucket.
    bucket: String,
    js: jetstream::Context,
    /// The stream of positions: the last one of each node, on its own subject.
    nodes: stream::Stream,
    /// `directory.<log>.nodes.`: each node's subject is this and its key.
    subjects: String,
    /// This node's key.
    node: String,
    pub stats: Arc<Stats>,
    /// [`READ_STALL`], shorter in tests.
    read_stall: Duration,
    /// The chunks no object named at the last [`Snapshots::sweep`]: by subject, the last
    /// chunk's position in the object store's stream, and since when it has been the last.
    unnamed: Arc<std::sync::Mutex<HashMap<String, (u64, Instant)>>>,
}

/// What a compaction did.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Compacted {
    /// The position of the snapshot it stored.
    pub snapshot: u64,
    /// The first entry the log holds now.
    pub first: u64,
}

fn name_of(position: u64, node: &str) -> String {
    format!("{PREFIX}{position:020}-{node}")
}

fn position_of(name: &str) -> Option<u64> {
    let (position, _node) = name.strip_prefix(PREFIX)?.split_once('-')?;
    position.parse().ok()
}

impl Snapshots {
    /// Opens the object store and the bucket of positions of `log`, making them if absent;
    /// `node` names this node's replica (see [`replica_key`]).
    pub(super) async fn open(
        js: &jetstream::Context,
        log: &LogConfig,
        node: u64,
    ) -> Result<Self, String> {
        let bucket = format!("{}-SNAPSHOTS", log.stream);
        let objects = match js.get_object_store(&bucket).await {
            Ok(objects) => objects,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    num_replicas: log.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot make the snapshots' object store: {e}"))?,
        };
        let subjects = format!("directory.{}.nodes.", log.stream);
        let nodes = js
            .get_or_create_stream(stream::Config {
                name: format!("{}-NODES", log.stream),
                subjects: vec![format!("{subjects}*")],
                max_messages_per_subject: 1,
                max_age: NODE_TTL,
                num_replicas: log.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot make the stream of node positions: {e}"))?;
        Ok(Self {
            objects,
            bucket,
            js: js.clone(),
            nodes,
            subjects,
            node: format!("{node:016x}"),
            stats: Arc::default(),
            read_stall: READ_STALL,
            unnamed: Arc::default(),
        })
    }

    /// The position and name of each snapshot stored, oldest first.
    async fn list(&self) -> Result<Vec<(u64, String)>, String> {
        let mut found = Vec::new();
        for info in self.objects().await? {
            if let Some(position) = position_of(&info.name).filter(|_| !info.deleted) {
                found.push((position, info.name));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Every object the store lists, within [`LIST_TIMEOUT`]: the listing follows a consumer,
    /// which can wait for good on a stream whose NATS server just restarted, and a listing
    /// that never ends would stop every compaction after it.
    async fn objects(&self) -> Result<Vec<object_store::ObjectInfo>, String> {
        let listing = async {
            let mut list = self.objects.list().await.map_err(|e| e.to_string())?;
            let mut found = Vec::new();
            while let Some(info) = list.next().await {
                found.push(info.map_err(|e| e.to_string())?);
            }
            Ok(found)
        };
        (tokio::time::timeout(LIST_TIMEOUT, listing).await)
            .map_err(|_| format!("listing the snapshots took over {LIST_TIMEOUT:?}"))?
    }

    /// Replaces the file `replica` with the newest snapshot, which must be at `at_least` or
    /// later, and returns its position.
    pub(super) async fn load(&self, replica: &Path, at_least: u64) -> Result<u64, String> {
        let mut why = String::new();
        for _ in 0..LOAD_TRIES {
            let Some((position, name)) = self.list().await?.pop() else {
                return Err("no snapshot is stored".into());
            };
            if position < at_least {
                return Err(format!(
                    "the newest snapshot is at {position}, before the log's start"
                ));
            }
            match self.download(&name, replica).await {
                Ok(()) => return Ok(position),
                // Deleted meanwhile: newer ones are stored.
                Err(e) => {
                    tracing::info!(cause = %e, "loading snapshot {name} failed; trying again");
                    why = e;
                }
            }
        }
        Err(why)
    }

    /// Downloads snapshot `name` in place of `replica`, through a part file that is removed
    /// if it fails.
    async fn download(&self, name: &str, replica: &Path) -> Result<(), String> {
        let part = with_suffix(replica, "loading");
        let downloaded = self.download_to(name, &part).await;
        if downloaded.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        let size = downloaded?;
        tokio::fs::rename(&part, replica)
            .await
            .map_err(|e| e.to_string())?;
        self.stats.snapshot_bytes.store(size, Ordering::Relaxed);
        Ok(())
    }

    /// Downloads snapshot `name` to `part`; its size.
    async fn download_to(&self, name: &str, part: &Path) -> Result<u64, String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut object = self.objects.get(name).await.map_err(|e| e.to_string())?;
        let size = object.info.size as u64;
        let mut file = tokio::fs::File::create(part)
            .await
            .map_err(|e| e.to_string())?;
        let mut buffer = vec![0; 256 * 1024];
        let mut read = 0u64;
        loop {
            let n = tokio::time::timeout(self.read_stall, object.read(&mut buffer))
                .await
                .map_err(|_| format!("snapshot {name} stalled after {read} of {size} bytes"))?
                .map_err(|e| format!("reading snapshot {name}: {e}"))?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])
                .await
                .map_err(|e| e.to_string())?;
            read += n as u64;
        }
        if read != size {
            return Err(format!("snapshot {name}: {read} bytes of {size}"));
        }
        file.sync_all().await.map_err(|e| e.to_string())?;
        Ok(size)
    }

    /// Records that this node has applied the log up to `position`.
    pub(super) async fn report(&self, position: u64) -> Result<(), String> {
        let subject = format!("{}{}", self.subjects, self.node);
        let ack = (self
            .js
            .publish(subject, position.to_be_bytes().to_vec().into())
            .await)
            .map_err(|e| e.to_string())?;
        ack.await.map(drop).map_err(|e| e.to_string())
    }

    /// Forgets this node's position: it no longer holds the log back.
    pub(super) async fn leave(&self) -> Result<(), String> {
        let subject = format!("{}{}", self.subjects, self.node);
        (self.nodes.purge().filter(subject).await)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The lowest position a live node reported.
    async fn lowest_live(&self) -> Result<Option<u64>, String> {
        let filter = format!("{}*", self.subjects);
        let mut subjects =
            (self.nodes.info_with_subjects(filter).await).map_err(|e| e.to_string())?;
        let mut lowest: Option<u64> = None;
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| e.to_string())?;
            // Gone meanwhile: expired.
            let Ok(last) = self.nodes.get_last_raw_message_by_subject(&subject).await else {
                continue;
            };
            if let Ok(bytes) = <[u8; 8]>::try_from(last.payload.as_ref()) {
                let position = u64::from_be_bytes(bytes);
                lowest = Some(lowest.map_or(position, |l| l.min(position)));
            }
        }
        Ok(lowest)
    }

    /// Compacts the log of `stream` if it holds more than `compact_after` entries and the
    /// live nodes let enough of it go; `local` is this node's replica, at `replica`. A
    /// compaction that was due is counted in [`Stats`], done or failed.
    pub(super) async fn compact(
        &self,
        stream: &mut stream::Stream,
        local: &Arc<RedbStore>,
        replica: &Path,
        compact_after: u64,
    ) -> Result<Option<Compacted>, String> {
        let Some(state) = self.due(stream, compact_after).await? else {
            return Ok(None);
        };
        let done = self.compact_from(state, stream, local, replica).await;
        let counter = match &done {
            Ok(_) => &self.stats.compactions,
            Err(_) => &self.stats.failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        done.map(Some)
    }

    /// The log's state, if it holds more than `compact_after` entries and the live nodes let
    /// enough of them go.
    async fn due(
        &self,
        stream: &mut stream::Stream,
        compact_after: u64,
    ) -> Result<Option<stream::State>, String> {
        let state = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .clone();
        if state.messages <= compact_after {
            return Ok(None);
        }
        // Not worth a snapshot when a live node holds most of the log back.
        let lowest = self.lowest_live().await?.unwrap_or(0);
        if lowest < state.first_sequence + compact_after / 2 {
            tracing::debug!(lowest, "a node far behind holds the log back");
            return Ok(None);
        }
        Ok(Some(state))
    }

    /// Takes a snapshot, stores it, purges the log up to it (or to the lowest live node) and
    /// deletes the older snapshots.
    async fn compact_from(
        &self,
        state: stream::State,
        stream: &mut stream::Stream,
        local: &Arc<RedbStore>,
        replica: &Path,
    ) -> Result<Compacted, String> {
        let file = with_suffix(replica, "snapshot");
        let snapshot = {
            let (local, file) = (local.clone(), file.clone());
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(&file);
                local.snapshot(&file)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot take a snapshot: {e}"))?
        };
        let stored = self.store(&file, snapshot).await;
        let bytes = tokio::fs::metadata(&file).await.map(|m| m.len());
        let _ = tokio::fs::remove_file(&file).await;
        stored?;
        if let Ok(bytes) = bytes {
            self.stats.snapshot_bytes.store(bytes, Ordering::Relaxed);
        }
        // Those behind the snapshot stay, for the live nodes that have not applied them yet.
        let lowest = self.lowest_live().await?.unwrap_or(0);
        let keep_from = snapshot.min(lowest) + 1;
        if keep_from > state.first_sequence {
            stream
                .purge()
                .sequence(keep_from)
                .await
                .map_err(|e| format!("cannot purge the log: {e}"))?;
        }
        // The two newest stay: one may be loading the one before the newest.
        let stored = self.list().await?;
        for (_, name) in stored.iter().rev().skip(2) {
            let _ = self.objects.delete(name).await;
        }
        let first = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .first_sequence;
        Ok(Compacted { snapshot, first })
    }

    /// Removes the chunks that no object names and that have not changed for `unchanged`,
    /// as earlier sweeps saw them: what puts that failed left behind (see [`ORPHAN_AGE`]).
    /// Returns how many puts' chunks it removed. Chunks seen for the first time are only
    /// noted.
    pub(super) async fn sweep(&self, unchanged: Duration) -> Result<usize, String> {
        // The objects first: a put that ends after this has chunks written after it too.
        let named: std::collections::HashSet<_> = self
            .objects()
            .await?
            .into_iter()
            .map(|info| info.nuid)
            .collect();
        let stream = (self.js.get_stream(format!("OBJ_{}", self.bucket)).await)
            .map_err(|e| e.to_string())?;
        let prefix = format!("$O.{}.C.", self.bucket);
        let mut subjects =
            (stream.info_with_subjects(format!("{prefix}*")).await).map_err(|e| e.to_string())?;
        let mut unnamed = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| e.to_string())?;
            if !subject
                .strip_prefix(&prefix)
                .is_some_and(|nuid| named.contains(nuid))
            {
                unnamed.push(subject);
            }
        }
        let mut lasts = Vec::with_capacity(unnamed.len());
        for subject in unnamed {
            if let Ok(last) = stream.get_last_raw_message_by_subject(&subject).await {
                lasts.push((subject, last.sequence));
            }
        }
        // Forget what is gone; keep since when each is unchanged.
        let old = {
            let mut seen = self.unnamed.lock().unwrap_or_else(|e| e.into_inner());
            let before = std::mem::take(&mut *seen);
            let mut old = Vec::new();
            for (subject, sequence) in lasts {
                match before.get(&subject) {
                    Some(&(was, since)) if was == sequence && since.elapsed() >= unchanged => {
                        old.push(subject)
                    }
                    Some(&(was, since)) if was == sequence => {
                        seen.insert(subject, (sequence, since));
                    }
                    _ => {
                        seen.insert(subject, (sequence, Instant::now()));
                    }
                }
            }
            old
        };
        for subject in &old {
            (stream.purge().filter(subject).await).map_err(|e| e.to_string())?;
        }
        Ok(old.len())
    }

    async fn store(&self, file: &Path, position: u64) -> Result<(), String> {
        let mut reader = tokio::fs::File::open(file)
            .await
            .map_err(|e| e.to_string())?;
        self.objects
            .put(name_of(position, &self.node).as_str(), &mut reader)
            .await
            .map(drop)
            .map_err(|e| format!("cannot store the snapshot: {e}"))
    }
}

/// `path` with `.suffix` added to its name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// The key this node's position is written under: kept beside the replica (in
/// `<replica>.node`), made at random the first time. A node restarted on its replica writes
/// over the position it left when it was killed, instead of that stale one holding every
/// compaction back until it expires ([`NODE_TTL`]); a replica started afresh gets a key of
/// its own (its folder copied to another host would share it: give each node its own folder).
pub(super) fn replica_key(replica: &Path) -> Result<u64, String> {
    let path = with_suffix(replica, "node");
    let kept = std::fs::read_to_string(&path).ok();
    if let Some(key) = kept.and_then(|k| u64::from_str_radix(k.trim(), 16).ok()) {
        return Ok(key);
    }
    let key = rand::random::<u64>();
    common::identity::write_atomically(&path, format!("{key:016x}").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(key)
}

/// Writes this node's position every `every`, for as long as the node runs, apart from the
/// compaction, which may take longer than a position lives.
pub(super) async fn report_position(
    snapshots: Snapshots,
    applied: watch::Receiver<u64>,
    every: Duration,
) {
    loop {
        let position = *applied.borrow();
        if let Err(e) = snapshots.report(position).await {
            tracing::debug!(cause = %e, "cannot record this node's position in the log");
        }
        tokio::time::sleep(every).await;
    }
}

/// Compacts the log when it is long, checking every `log.compact_check` or so, for as long as
/// the node runs.
pub(super) async fn keep_short(
    snapshots: Snapshots,
    mut stream: stream::Stream,
    local: Arc<RedbStore>,
    replica: PathBuf,
    log: LogConfig,
) {
    loop {
        tokio::time::sleep(jittered(log.compact_check)).await;
        match snapshots
            .compact(&mut stream, &local, &replica, log.compact_after)
            .await
        {
            Ok(Some(done)) => tracing::info!(
                snapshot = done.snapshot,
                first = done.first,
                "compacted the cluster's log"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(cause = %e, "cannot compact the cluster's log"),
        }
        // At every check, not only after a compaction: failed puts may be what keeps the
        // next one from being stored (the object store full).
        let swept = tokio::time::timeout(SWEEP_TIMEOUT, snapshots.sweep(ORPHAN_AGE)).await;
        match swept.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "removed the chunks of snapshots whose put failed"),
            Err(e) => tracing::debug!(cause = %e, "cannot look for the chunks of failed puts"),
        }
    }
}

/// Between half and all of `interval`, at random.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jetstream::tests::nats;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The snapshots of log `stream` on the NATS server at `url`, one of them stored: 300 KiB
    /// of 7s at position 5. Also a folder for files.
    async fn one_snapshot(
        url: &str,
        stream: &str,
    ) -> Result<(jetstream::Context, Snapshots, tempfile::TempDir), Box<dyn std::error::Error>>
    {
        let js = jetstream::new(async_nats::connect(url).await?);
        let log = LogConfig {
            stream: stream.into(),
            ..LogConfig::default()
        };
        let snapshots = Snapshots::open(&js, &log, 1).await?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("snapshot");
        std::fs::write(&file, vec![7u8; 300 * 1024])?;
        snapshots.store(&file, 5).await?;
        Ok((js, snapshots, dir))
    }

    /// The chunks a failed put left (no object names them) are removed once they are old
    /// enough, and those of stored snapshots stay: the snapshot still loads.
    #[test]
    fn chunks_of_failed_puts_are_swept_and_stored_snapshots_kept() -> TestResult {
        let Some(nats) = nats()? else {
            return Ok(());
        };
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let (js, snapshots, dir) = one_snapshot(&nats.url, "SWEEP").await?;
            // What a put that lost NATS after two chunks leaves.
            for _ in 0..2 {
                let chunk = js.publish("$O.SWEEP-SNAPSHOTS.C.failedput", vec![1u8; 1024].into());
                chunk.await?.await?;
            }
            let chunks = |js: jetstream::Context| async move {
                let stream = js.get_stream("OBJ_SWEEP-SNAPSHOTS").await?;
                let mut subjects = stream.info_with_subjects("$O.SWEEP-SNAPSHOTS.C.*").await?;
                let mut found = Vec::new();
                while let Some(subject) = subjects.next().await {
                    found.push(subject?.0);
                }
                found.sort();
                Ok::<_, Box<dyn std::error::Error>>(found)
            };
            assert_eq!(
                chunks(js.clone()).await?.len(),
                2,
                "the snapshot's and the failed put's"
            );
            // The first sweep only notes them; the next ones remove them once unchanged for
            // the time asked.
            assert_eq!(
                snapshots.sweep(ORPHAN_AGE).await?,
                0,
                "seen for the first time"
            );
            assert_eq!(
                snapshots.sweep(ORPHAN_AGE).await?,
                0,
                "too young to be swept"
            );
            // A put in progress writes another chunk: it is young again.
            let chunk = js.publish("$O.SWEEP-SNAPSHOTS.C.failedput", vec![1u8; 1024].into());
            chunk.await?.await?;
            assert_eq!(snapshots.sweep(Duration::ZERO).await?, 0, "changed since");
            assert_eq!(snapshots.sweep(Duration::ZERO).await?, 1);
            let left = chunks(js.clone()).await?;
            assert!(
                left.len() == 1 && !left[0].ends_with(".failedput"),
                "left: {left:?}"
            );
            let replica = dir.path().join("replica");
            assert_eq!(snapshots.load(&replica, 5).await?, 5);
            assert_eq!(std::fs::read(&replica)?, vec![7u8; 300 * 1024]);
            Ok(())
        })
    }

    /// A snapshot whose chunks vanish under its reader (what a deletion does midway) leaves
    /// the reader waiting for bytes that never come: the download gives up after the stall
    /// time, and loading says why, instead of hanging a starting node for good. The replica
    /// in place is not touched.
    #[test]
    fn a_download_that_stalls_is_given_up() -> TestResult {
        let Some(nats) = nats()? else {
            return Ok(());
        };
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let (js, mut snapshots, dir) = one_snapshot(&nats.url, "STALL").await?;
            snapshots.read_stall = Duration::from_millis(300);
            // Its chunks go; the object naming them stays.
            let stream = js.get_stream("OBJ_STALL-SNAPSHOTS").await?;
            stream.purge().filter("$O.STALL-SNAPSHOTS.C.>").await?;
            let replica = dir.path().join("replica");
            std::fs::write(&replica, b"the replica before")?;
            let started = std::time::Instant::now();
            let loaded =
                tokio::time::timeout(Duration::from_secs(30), snapshots.load(&replica, 5)).await?;
            let why = loaded.expect_err("a snapshot without its chunks cannot load");
            assert!(why.contains("stalled after 0 of 307200 bytes"), "{why}");
            assert!(started.elapsed() >= Duration::from_millis(300) * LOAD_TRIES as u32);
            assert_eq!(std::fs::read(&replica)?, b"the replica before");
            assert!(
                !with_suffix(&replica, "loading").exists(),
                "the part is left"
            );
            Ok(())
        })
    }

    #[test]
    fn a_replica_keeps_its_key_across_restarts_and_another_gets_its_own() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
        let first = replica_key(&a)?;
        assert_eq!(replica_key(&a)?, first, "a restart on the same replica");
        assert_ne!(replica_key(&b)?, first, "another replica");
        // A damaged key file is replaced by a new key rather than stopping the node.
        std::fs::write(with_suffix(&a, "node"), "not hex").map_err(|e| e.to_string())?;
        let new = replica_key(&a)?;
        assert_eq!(replica_key(&a)?, new);
        Ok(())
    }
}
