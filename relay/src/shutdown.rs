//! Shutdown signalling, the mini-redis way: one signal every task listens for, and a tracker
//! whose emptiness tells that every task has finished.
//!
//! Order on shutdown (see `RunningRelay::shutdown`): stop releasing delayed packets, stop
//! accepting links, close inbound links, flush and close outbound links, let the Sphinx workers
//! finish the packets they hold, commit (flush) the database, write the delay queue to disk for
//! the next start (`forward`, `held_packets`), and only then return. Nothing is acknowledged that is not durable, so a crash at any point loses only
//! unacknowledged packets, which senders retransmit.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by all tasks of one relay.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutdown: every task's [`Shutdown::signalled`] completes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown has been triggered.
    pub async fn signalled(&self) {
        self.token.cancelled().await
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Waits until every task spawned through [`Shutdown::spawn`] has finished.
    pub async fn wait_tasks(&self) {
        self.tracker.close();
        self.tracker.wait().await
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
