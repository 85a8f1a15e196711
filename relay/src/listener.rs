//! The accept loop: one [`handler::Handler`](crate::handler) per inbound link.
//!
//! A [`Semaphore`] caps open links: the accept loop takes a permit before accepting, so beyond
//! the cap connections wait in the kernel backlog instead of costing memory here; a per-address
//! cap keeps one source from taking them all. Each link then gets a handshake deadline, a
//! per-link token bucket for packets, an idle timeout and a bounded reply queue drained by its
//! own writer task (see `handler`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::handler::{self, Shared};
use crate::shutdown::Shutdown;

/// Open links per source address.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// Holds one slot of an address's allowance; gives it back on drop.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

pub(crate) struct Listener {
    pub listener: TcpListener,
    pub limit: Arc<Semaphore>,
    pub per_ip: Arc<PerIp>,
    pub max_per_ip: usize,
    pub shared: Arc<Shared>,
    pub shutdown: Shutdown,
}

impl Listener {
    /// Accepts links until shutdown.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let permit = tokio::select! {
                _ = self.shutdown.signalled() => return,
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (socket, ip_slot) = tokio::select! {
                _ = self.shutdown.signalled() => return,
                r = self.listener.accept() => match r {
                    Ok((socket, peer)) => {
                        backoff = Duration::from_millis(10);
                        match self.per_ip.take(peer.ip(), self.max_per_ip) {
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
            let serve = handler::serve(self.shared.clone(), self.shutdown.clone(), socket);
            self.shutdown.spawn(async move {
                serve.await;
                drop(ip_slot);
                drop(permit);
            });
        }
    }
}
