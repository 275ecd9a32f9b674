//! The hub's background tasks, by name, so that a stop that takes too long
//! says which of them had not finished instead of hanging.
//!
//! Invariants: a task counts as running from its spawn until its future
//! ends, panics or is dropped (a guard, not the task's last line, takes it
//! off); [`Tasks::stop`] waits at most its limit, then logs the names still
//! running and returns, leaving them to the runtime's own shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::task::TaskTracker;

/// Background tasks, counted by name.
#[derive(Default)]
pub(super) struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

/// Takes its task off the count when the task ends in any way.
struct Running {
    name: &'static str,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                running.remove(self.name);
            }
        }
    }
}

impl Tasks {
    /// Runs `task` in the background under `name`.
    pub(super) fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        *self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default() += 1;
        let guard = Running {
            name,
            running: self.running.clone(),
        };
        self.tracker.spawn(async move {
            let _guard = guard;
            task.await;
        });
    }

    /// The names of the tasks still running.
    pub(super) fn running(&self) -> Vec<&'static str> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.keys().copied().collect()
    }

    /// Waits for every task (their shutdown signal was given) for at most
    /// `limit`; past it, logs the ones still running and returns.
    pub(super) async fn stop(&self, limit: Duration) {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = ?self.running(),
                limit_s = limit.as_secs(),
                "background tasks did not stop in time; stopping without them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_does_not_stop_is_named_and_not_waited_for() {
        let tasks = Tasks::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tasks.spawn("polite", async move { s.cancelled().await });
        tasks.spawn("stuck", std::future::pending());
        tasks.spawn("done", async {});
        tokio::task::yield_now().await;
        assert_eq!(tasks.running(), vec!["polite", "stuck"]);
        stop.cancel();
        tasks.stop(Duration::from_secs(15)).await;
        assert_eq!(tasks.running(), vec!["stuck"]);
    }

    #[tokio::test]
    async fn a_panicking_task_is_no_longer_counted() {
        let tasks = Tasks::default();
        tasks.spawn("boom", async { panic!("a bug") });
        tasks.stop(Duration::from_secs(5)).await;
        assert!(tasks.running().is_empty());
    }
}
