//! The accept loop: one [`handler::Handler`](crate::handler) per inbound link.
//!
//! A [`Semaphore`] caps open links other than listed relays': the accept loop holds at most one
//! accepted connection waiting for a permit, so beyond the cap connections wait in the kernel
//! backlog instead of costing memory here, and while one waits the quietest link is closed to
//! make room (`admission`). A per-prefix cap (/24, /64) keeps one source from taking them all.
//! A handshaken listed relay gives its permit back for a reserved slot. Each link gets a
//! per-link token bucket for packets, an idle timeout and a bounded reply queue drained by its
//! own writer task (see `handler`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admission::PerPrefix;
use crate::handler::{self, Shared};
use crate::shutdown::Shutdown;

pub(crate) struct Listener {
    pub listener: TcpListener,
    pub limit: Arc<Semaphore>,
    pub per_prefix: Arc<PerPrefix>,
    pub max_per_prefix: usize,
    pub shared: Arc<Shared>,
    pub shutdown: Shutdown,
}

impl Listener {
    /// Accepts links until shutdown.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let (socket, prefix_slot) = tokio::select! {
                _ = self.shutdown.signalled() => return,
                r = self.listener.accept() => match r {
                    Ok((socket, peer)) => {
                        backoff = Duration::from_millis(10);
                        match self.per_prefix.take(peer.ip(), self.max_per_prefix) {
                            Some(slot) => (socket, slot),
                            None => {
                                // Never logged with the address, even at debug.
                                self.shared.metrics.dropped("per_ip_limit");
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        // Typically EMFILE: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            // One accepted connection at a time waits for a permit; the rest wait in the
            // kernel's backlog. A quiet link makes room for it if there is one.
            let permit = match self.limit.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.shared
                        .admission
                        .evict_quietest(std::time::Instant::now());
                    let wait = self.shared.settings.handshake_timeout;
                    tokio::select! {
                        _ = self.shutdown.signalled() => return,
                        p = tokio::time::timeout(wait, self.limit.clone().acquire_owned()) => match p {
                            Ok(Ok(p)) => p,
                            Ok(Err(_)) => return,
                            Err(_) => {
                                self.shared.metrics.dropped("connection_cap");
                                continue;
                            }
                        },
                    }
                }
            };
            let serve = handler::serve(self.shared.clone(), self.shutdown.clone(), socket, permit);
            self.shutdown.spawn(async move {
                serve.await;
                drop(prefix_slot);
            });
        }
    }
}
