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
    pub mailbox: Option<MailboxService>,
    pub metrics: Arc<Metrics>,
    pub settings: LinkSettings,
}

pub(crate) struct Listener {
    pub listener: TcpListener,
    pub limit: Arc<Semaphore>,
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
            let socket = tokio::select! {
                _ = self.shutdown.signalled() => return,
                r = self.listener.accept() => match r {
                    Ok((socket, _peer)) => {
                        backoff = Duration::from_millis(10);
                        socket
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
            match self.handle(frame, &owner, &mut bucket, &reply_tx).await {
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
        bucket: &mut TokenBucket,
        reply: &mpsc::Sender<Frame>,
    ) -> Next {
        let m = &self.shared.metrics;
        match frame {
            Frame::Packet(p) => {
                m.packet_in();
                if bucket.take() {
                    self.shared.ingress.submit(p);
                } else {
                    m.dropped("rate_limited");
                }
                Next::Continue
            }
            Frame::PullRequest => {
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
