//! The accept loop and one [`Handler`] per inbound link.
//!
//! A [`Semaphore`] caps open links: the accept loop takes a permit before accepting, so beyond
//! the cap connections wait in the kernel backlog instead of costing memory here. Each link
//! gets a handshake deadline, a per-link token bucket for packets, an idle timeout and a
//! bounded reply queue drained by its own writer task.

use std::sync::Arc;
use std::time::Duration;

use spore_protocol::MailboxId;
use spore_protocol::link::{Frame, LinkErrorCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::connection::{FrameReader, FrameWriter, accept_handshake};
use crate::directory::DirectoryView;
use crate::mailbox::MailboxService;
use crate::metrics::Metrics;
use crate::mix::PacketIngress;
use crate::shutdown::Shutdown;

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub packets_per_sec: u32,
    pub packet_burst: u32,
    pub reply_queue: usize,
}

/// State shared by every handler.
#[derive(Debug)]
pub(crate) struct Shared {
    pub link_secret: [u8; 32],
    pub ingress: PacketIngress,
    /// Entry relays take packets from anyone; other relays only from relays in the directory
    /// (so clients cannot skip the entry layer, and strangers cannot load a mix directly).
    pub packets_from_anyone: bool,
    pub directory: Arc<DirectoryView>,
    pub mailbox: Option<MailboxService>,
    pub metrics: Arc<Metrics>,
    pub settings: LinkSettings,
}

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
            let handler = Handler {
                shared: self.shared.clone(),
                shutdown: self.shutdown.clone(),
            };
            self.shutdown.spawn(async move {
                handler.run(socket).await;
                drop(ip_slot);
                drop(permit);
            });
        }
    }
}

/// Token bucket for one link's packets.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One inbound link.
pub(crate) struct Handler {
    shared: Arc<Shared>,
    shutdown: Shutdown,
}

enum Next {
    Continue,
    Close,
}

impl Handler {
    async fn run(self, mut socket: TcpStream) {
        let m = &self.shared.metrics;
        let _ = socket.set_nodelay(true);
        let handshake = tokio::select! {
            _ = self.shutdown.signalled() => return,
            r = accept_handshake(&mut socket, &self.shared.link_secret, self.shared.settings.handshake_timeout) => r,
        };
        let (transport, remote_static) = match handshake {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "handshake failed");
                m.dropped("handshake_failed");
                return;
            }
        };
        m.connection_opened();
        let owner = MailboxId::for_key_bytes(&remote_static);
        let (sealer, opener) = transport.split();
        let (rd, wr) = socket.into_split();
        let mut reader = FrameReader::new(rd, opener);
        let (reply_tx, reply_rx) = mpsc::channel(self.shared.settings.reply_queue);
        let writer = tokio::spawn(write_loop(FrameWriter::new(wr, sealer), reply_rx));
        // Decided at the first packet, from the directory in force then.
        let mut may_send_packets = None;
        let mut bucket = TokenBucket::new(
            self.shared.settings.packets_per_sec,
            self.shared.settings.packet_burst,
        );
        loop {
            let frame = tokio::select! {
                _ = self.shutdown.signalled() => {
                    let _ = reply_tx.try_send(Frame::Error { code: LinkErrorCode::ShuttingDown });
                    break;
                }
                r = tokio::time::timeout(self.shared.settings.idle_timeout, reader.read_frame()) => r,
            };
            let frame = match frame {
                Err(_) => {
                    tracing::debug!("link idle, closing");
                    break;
                }
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "bad frame, closing link");
                    m.dropped("bad_frame");
                    break;
                }
            };
            match self
                .handle(
                    frame,
                    &owner,
                    &remote_static,
                    &mut may_send_packets,
                    &mut bucket,
                    &reply_tx,
                )
                .await
            {
                Next::Continue => {}
                Next::Close => break,
            }
        }
        drop(reply_tx);
        // Let the writer send what is queued (pull slots, a final error), but not forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        m.connection_closed();
    }

    async fn handle(
        &self,
        frame: Frame,
        owner: &MailboxId,
        remote_static: &[u8; 32],
        may_send_packets: &mut Option<bool>,
        bucket: &mut TokenBucket,
        reply: &mpsc::Sender<Frame>,
    ) -> Next {
        let m = &self.shared.metrics;
        match frame {
            Frame::Packet(p) => {
                m.packet_in();
                if !*may_send_packets.get_or_insert_with(|| {
                    self.shared.packets_from_anyone
                        || self.shared.directory.is_relay_link_key(remote_static)
                }) {
                    m.dropped("not_authorized");
                    let _ = reply.try_send(Frame::Error {
                        code: LinkErrorCode::NotAuthorized,
                    });
                    return Next::Close;
                }
                if bucket.take() {
                    self.shared.ingress.submit(p);
                } else {
                    m.dropped("rate_limited");
                }
                Next::Continue
            }
            Frame::PullRequest => {
                // A pull reads PULL_SLOTS items: it costs as many tokens as that many packets.
                for _ in 0..spore_protocol::params::PULL_SLOTS {
                    if !bucket.take() {
                        m.dropped("rate_limited");
                        let _ = reply
                            .send(Frame::Error {
                                code: LinkErrorCode::RateLimited,
                            })
                            .await;
                        return Next::Continue;
                    }
                }
                let Some(service) = self.shared.mailbox.clone() else {
                    let _ = reply
                        .send(Frame::Error {
                            code: LinkErrorCode::NotAuthorized,
                        })
                        .await;
                    return Next::Continue;
                };
                let owner = *owner;
                match tokio::task::spawn_blocking(move || service.pull(&owner)).await {
                    Ok(Ok(frames)) => {
                        for f in frames {
                            if reply.send(f).await.is_err() {
                                return Next::Close;
                            }
                        }
                        Next::Continue
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "mailbox read failed");
                        let _ = reply
                            .send(Frame::Error {
                                code: LinkErrorCode::Internal,
                            })
                            .await;
                        Next::Close
                    }
                    Err(_) => Next::Close,
                }
            }
            Frame::Delete { handles } => {
                let Some(service) = self.shared.mailbox.clone() else {
                    let _ = reply.send(Frame::DeleteDone { count: 0 }).await;
                    return Next::Continue;
                };
                let owner = *owner;
                match tokio::task::spawn_blocking(move || service.delete(&owner, &handles)).await {
                    Ok(Ok(count)) => {
                        if reply.send(Frame::DeleteDone { count }).await.is_err() {
                            return Next::Close;
                        }
                        Next::Continue
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "mailbox delete failed");
                        let _ = reply
                            .send(Frame::Error {
                                code: LinkErrorCode::Internal,
                            })
                            .await;
                        Next::Close
                    }
                    Err(_) => Next::Close,
                }
            }
            Frame::Padding => Next::Continue,
            Frame::Error { code } => {
                tracing::debug!(?code, "peer closed link with an error");
                Next::Close
            }
            // Frames only a relay sends: the peer is confused or hostile.
            Frame::PullSlot(_) | Frame::DeleteDone { .. } => {
                m.dropped("unexpected_frame");
                let _ = reply.try_send(Frame::Error {
                    code: LinkErrorCode::Protocol,
                });
                Next::Close
            }
        }
    }
}

async fn write_loop(
    mut writer: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        if writer.write_frame(&frame).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if writer.write_frame(&more).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}
