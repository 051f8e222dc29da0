//! Group commit for async callers: one thread takes every queued deposit and removal, commits
//! them in as few transactions as it can, and answers each caller, so one fsync serves many.

use super::{Quota, Store, StoreError};
use common::{wire::Mail, Name};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most operations one group commit takes from the queue.
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<(), StoreError>>;
type RemoveReply = oneshot::Sender<Result<Option<Name>, StoreError>>;

enum Op {
    Deposit(Mail, Reply),
    Remove((Name, u64), RemoveReply),
}

/// Group-commit front of a [`Store`] for async code. One dedicated thread takes everything
/// queued (up to 1024 operations), commits all deposits in one transaction and all
/// removals in another, then answers each caller: one fsync serves a whole batch. Cheap to
/// clone (a channel handle); the thread ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

fn stopped() -> StoreError {
    StoreError::Db("the store writer has stopped".into())
}

impl Writer {
    /// Starts the writer thread; deposits are checked against `quota`.
    pub fn spawn(store: Arc<dyn Store>, quota: Quota) -> Writer {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let started = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store.as_ref(), quota, rx));
        if let Err(e) = started {
            // The receiver went down with the closure, so every call reports the failure.
            tracing::error!("cannot start the store writer: {e}");
        }
        Writer { tx }
    }

    /// Durably stores `mail`; `Ok` once it is committed (or was already held).
    pub async fn deposit(&self, mail: Mail) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Deposit(mail, reply), answer).await
    }

    /// Durably deletes the mailbox entry `(recipient, seq)`, if it exists, with the receipt it
    /// earns its sender; returns that sender if a receipt was stored.
    pub async fn remove(&self, recipient: Name, seq: u64) -> Result<Option<Name>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Remove((recipient, seq), reply), answer)
            .await
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

fn run(store: &dyn Store, quota: Quota, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.blocking_recv() {
        let (mut deposits, mut deposit_replies) = (Vec::new(), Vec::new());
        let (mut removes, mut remove_replies) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(op) = next {
            match op {
                Op::Deposit(m, reply) => {
                    deposits.push(m);
                    deposit_replies.push(reply);
                }
                Op::Remove(entry, reply) => {
                    removes.push(entry);
                    remove_replies.push(reply);
                }
            }
            taken += 1;
            next = if taken < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        // Removals first, so the space they free is there for this batch's deposits.
        if !removes.is_empty() {
            match store.remove_batch(&removes, quota) {
                Ok(woken) => {
                    for (reply, sender) in remove_replies.into_iter().zip(woken) {
                        let _ = reply.send(Ok(sender));
                    }
                }
                Err(e) => {
                    for reply in remove_replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        if !deposits.is_empty() {
            match store.deposit_batch(&deposits, quota) {
                Ok(results) => {
                    for (reply, result) in deposit_replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    for reply in deposit_replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        suite::{body, msg, name, TestResult},
        RedbStore,
    };
    use std::collections::HashMap;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writer_keeps_concurrent_deposits_in_sender_order() -> TestResult {
        const SENDERS: usize = 20;
        const EACH: usize = 50;
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("d.redb"))?);
        let writer = Writer::spawn(store.clone(), Quota::default());
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
        assert_eq!(
            writer.remove(name("r"), pending[0].seq).await?,
            Some(pending[0].mail.from().clone())
        );
        assert_eq!(writer.remove(name("r"), pending[0].seq).await?, None);
        assert_eq!(store.usage(&name("r"))?.0, (SENDERS * EACH - 1) as u64);
        Ok(())
    }
}
