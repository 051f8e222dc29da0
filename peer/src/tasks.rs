//! Every background task of a running peer is spawned here and ends with it: one `JoinSet`
//! holds them all, and [`Tasks::shutdown`] aborts what is left and waits for it (the pattern of
//! iroh-relay's server, where every spawned task is attached to a handle). Nothing in the peer
//! calls `tokio::spawn` and forgets the task.
//!
//! Why a set and not a cancellation token raced against each task: a token is checked on every
//! poll of every task, under one lock that all of them share; on the message path that lock
//! was contended between the runtime's threads (measured: a fifth of direct messages per
//! second). The set's lock is taken only to spawn and to stop.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::task::JoinSet;
use tracing::Instrument;

/// The tasks of one peer; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    set: JoinSet<()>,
    /// Set by shutdown: later tasks are not started.
    stopped: bool,
}

impl Tasks {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `task` in the current span until it ends or [`Tasks::shutdown`] stops it. After
    /// shutdown, `task` is dropped without running.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut inner = self.inner();
        if inner.stopped {
            return;
        }
        // Forget the tasks that ended, so the set holds only those that run.
        while inner.set.try_join_next().is_some() {}
        inner.set.spawn(task.in_current_span());
    }

    /// How many tasks run now (or have ended since the last spawn).
    pub fn len(&self) -> usize {
        self.inner().set.len()
    }

    /// True when no task runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every task at its next await and waits up to `grace` for all of them to end.
    /// Returns how many were still running then (0 when all ended).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let mut set = {
            let mut inner = self.inner();
            inner.stopped = true;
            std::mem::take(&mut inner.set)
        };
        set.abort_all();
        let _ =
            tokio::time::timeout(grace, async { while set.join_next().await.is_some() {} }).await;
        set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_ends_every_task_even_those_that_never_finish() {
        let tasks = Tasks::default();
        for _ in 0..3 {
            tasks.spawn(std::future::pending());
        }
        let nested = tasks.clone();
        tasks.spawn(async move {
            nested.spawn(std::future::pending());
            std::future::pending::<()>().await
        });
        tokio::task::yield_now().await;
        assert_eq!(tasks.len(), 5);
        assert_eq!(tasks.shutdown(Duration::from_secs(5)).await, 0);
        assert!(tasks.is_empty());
        // Nothing starts after shutdown.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = tx.send(());
        });
        assert!(rx.await.is_err(), "a task ran after shutdown");
    }

    #[tokio::test]
    async fn ended_tasks_are_not_kept() {
        let tasks = Tasks::default();
        for _ in 0..100 {
            tasks.spawn(async {});
            tokio::task::yield_now().await;
        }
        assert!(tasks.len() < 10, "{} tasks kept", tasks.len());
    }
}
