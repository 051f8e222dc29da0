//! Every background task of a running peer is spawned here and ends with it: one tracker to
//! wait for them and one cancellation token to stop them (the pattern of iroh-relay's server,
//! where every spawned task is attached to a handle). Nothing in the peer calls
//! `tokio::spawn` and forgets the task.

use std::{future::Future, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// The tasks of one peer; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// Runs `task` in the current span until it ends or [`Tasks::shutdown`] stops it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(
            async move {
                cancel.run_until_cancelled(task).await;
            }
            .in_current_span(),
        );
    }

    /// Resolves when shutdown has begun; for loops that want to finish a step first.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// How many tasks run now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// True when no task runs.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Stops every task at its next await and waits up to `grace` for all of them to end.
    /// Returns how many were still running then (0 when all ended).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        self.tracker.len()
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
    }
}
