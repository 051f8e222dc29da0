//! Group commit for async callers: one thread takes every queued deposit, removal, registration
//! and last-seen time, commits them in as few transactions as it can, and answers each caller,
//! so one fsync serves many: a peer cannot make the directory fsync once per request.

use super::{Bind, Binding, Naming, Quota, Removal, Store, StoreError};
use crate::metrics::{Metrics, OpLabel};
use common::{wire::Mail, Name};
use prometheus_client::metrics::{family::Family, histogram::Histogram};
use std::{sync::Arc, time::Instant};
use tokio::sync::{mpsc, oneshot};

/// Most operations one group commit takes from the queue.
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<(), StoreError>>;
type RemoveReply = oneshot::Sender<Result<Option<Name>, StoreError>>;
type BindReply = oneshot::Sender<Result<Bind, StoreError>>;

enum Op {
    Deposit(Mail, Reply),
    Remove(Removal, RemoveReply),
    Bind(Binding, BindReply),
    Seen((Name, u64), Reply),
}

/// Group-commit front of a [`Store`] for async code. One dedicated thread takes everything
/// queued (up to 1024 operations), commits all deposits in one transaction, all removals in
/// another and all registrations and last-seen times in a third, then answers each caller: one
/// fsync serves a whole batch. Cheap to clone (a channel handle); the thread ends when the last
/// clone is dropped.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

fn stopped() -> StoreError {
    StoreError::Db("the store writer has stopped".into())
}

impl Writer {
    /// Starts the writer thread; deposits are checked against the quota, bindings against
    /// the naming rules; each commit is timed in `metrics`' `store_seconds`.
    pub fn spawn(store: Arc<dyn Store>, rules: (Quota, Naming), metrics: &Metrics) -> Writer {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let times = metrics.store.clone();
        let started = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store.as_ref(), rules, &times, rx));
        if let Err(e) = started {
            // The receiver went down with the closure, so every call reports the failure.
            tracing::error!("cannot start the store writer: {e}");
        }
        Writer { tx }
    }

    /// Durably stores `mail`; `Ok` once it is committed (or was already held).
    pub async fn deposit(&self, mail: Mail) -> Result<(), StoreError> {
        self.queue_deposit(mail).await?.committed().await
    }

    /// Queues `mail` for the next group commit and returns without waiting for it: deposits
    /// queued one after another are stored in that order, and those queued before the writer
    /// takes its next batch share one commit. Waits only while the queue is full.
    pub async fn queue_deposit(&self, mail: Mail) -> Result<Queued, StoreError> {
        let (reply, answer) = oneshot::channel();
        (self.tx.send(Op::Deposit(mail, reply)).await).map_err(|_| stopped())?;
        Ok(Queued(answer))
    }

    /// Durably deletes a mailbox entry, if it exists, with the receipt it earns its sender;
    /// returns that sender if a receipt was stored.
    pub async fn remove(&self, removal: Removal) -> Result<Option<Name>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Remove(removal, reply), answer).await
    }

    /// Durably binds, or refreshes, a registration (see [`Store::update_names`]).
    pub async fn bind(&self, binding: Binding) -> Result<Bind, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Bind(binding, reply), answer).await
    }

    /// Durably records when `name` was last seen online.
    pub async fn set_last_seen(&self, name: Name, ms: u64) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Seen((name, ms), reply), answer).await
    }

    async fn submit<T>(
        &self,
        op: Op,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.tx.send(op).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A deposit queued by [`Writer::queue_deposit`].
#[derive(Debug)]
pub struct Queued(oneshot::Receiver<Result<(), StoreError>>);

impl Queued {
    /// `Ok` once the deposit is committed (or was already held).
    pub async fn committed(self) -> Result<(), StoreError> {
        self.0.await.map_err(|_| stopped())?
    }
}

/// What one group commit takes from the queue, by kind, with the callers to answer.
#[derive(Default)]
struct Batch {
    deposits: (Vec<Mail>, Vec<Reply>),
    removes: (Vec<Removal>, Vec<RemoveReply>),
    bindings: (Vec<Binding>, Vec<BindReply>),
    seen: (Vec<(Name, u64)>, Vec<Reply>),
}

impl Batch {
    fn push(&mut self, op: Op) {
        match op {
            Op::Deposit(m, reply) => {
                self.deposits.0.push(m);
                self.deposits.1.push(reply);
            }
            Op::Remove(entry, reply) => {
                self.removes.0.push(entry);
                self.removes.1.push(reply);
            }
            Op::Bind(binding, reply) => {
                self.bindings.0.push(binding);
                self.bindings.1.push(reply);
            }
            Op::Seen(seen, reply) => {
                self.seen.0.push(seen);
                self.seen.1.push(reply);
            }
        }
    }
}

/// Answers each caller with its own result, or all of them with the batch's error.
fn answer<T>(
    replies: Vec<oneshot::Sender<Result<T, StoreError>>>,
    results: Result<Vec<Result<T, StoreError>>, StoreError>,
) {
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Calls `commit`, timing it as `op` in `times`.
fn timed<T>(times: &Family<OpLabel, Histogram>, op: &'static str, commit: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let done = commit();
    let took = started.elapsed().as_secs_f64();
    times.get_or_create(&OpLabel { op }).observe(took);
    done
}

fn run(
    store: &dyn Store,
    (quota, naming): (Quota, Naming),
    times: &Family<OpLabel, Histogram>,
    mut rx: mpsc::Receiver<Op>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Batch::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(op) = next {
            batch.push(op);
            taken += 1;
            next = if taken < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let Batch {
            deposits,
            removes,
            bindings,
            seen,
        } = batch;
        // Removals first, so the space they free is there for this batch's deposits.
        if !removes.0.is_empty() {
            let results = timed(times, "remove", || store.remove_batch(&removes.0, quota));
            answer(removes.1, results.map(|r| r.into_iter().map(Ok).collect()));
        }
        if !deposits.0.is_empty() {
            let results = timed(times, "deposit", || store.deposit_batch(&deposits.0, quota));
            answer(deposits.1, results);
        }
        if !bindings.0.is_empty() || !seen.0.is_empty() {
            let results = timed(times, "names", || {
                store.update_names(&bindings.0, &seen.0, naming)
            });
            let done = results
                .as_ref()
                .map(|_| seen.0.iter().map(|_| Ok(())).collect());
            answer(seen.1, done.map_err(Clone::clone));
            answer(bindings.1, results);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        suite::{body, msg, name, taken, TestResult},
        RedbStore,
    };
    use std::collections::HashMap;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writer_keeps_concurrent_deposits_in_sender_order() -> TestResult {
        const SENDERS: usize = 20;
        const EACH: usize = 50;
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("d.redb"))?);
        let metrics = Metrics::default();
        let rules = (Quota::default(), Naming::default());
        let writer = Writer::spawn(store.clone(), rules, &metrics);
        let mut tasks = Vec::new();
        for s in 0..SENDERS {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    writer
                        .deposit(msg(&format!("s{s}"), "r", &i.to_string()))
                        .await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let pending = store.pending(&name("r"), None, usize::MAX)?;
        assert_eq!(pending.len(), SENDERS * EACH);
        let mut per_sender: HashMap<&str, Vec<usize>> = HashMap::new();
        for s in &pending {
            per_sender
                .entry(s.mail.from().as_str())
                .or_default()
                .push(body(&s.mail).parse()?);
        }
        let expected: Vec<usize> = (0..EACH).collect();
        assert_eq!(per_sender.len(), SENDERS);
        assert!(per_sender.values().all(|v| *v == expected));
        assert_eq!(store.queued_from(&name("r"), &name("s0"))?, EACH as u32);

        // Removing the oldest entry names its sender, whichever task deposited first.
        let oldest = || taken(&[(name("r"), pending[0].seq)]).remove(0);
        assert_eq!(
            writer.remove(oldest()).await?,
            Some(pending[0].mail.from().clone())
        );
        assert_eq!(writer.remove(oldest()).await?, None);
        assert_eq!(store.usage(&name("r"))?.0, (SENDERS * EACH - 1) as u64);
        // Every commit was timed: at least one per kind used, at most one per operation.
        let text = metrics.text();
        let count = |op: &str| -> u64 {
            let prefix = format!("directory_store_seconds_count{{op=\"{op}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let deposits = count("deposit");
        assert!((1..=(SENDERS * EACH) as u64).contains(&deposits), "{text}");
        assert_eq!(count("remove"), 2, "{text}");
        Ok(())
    }
}
