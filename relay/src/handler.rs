//! One inbound link, from handshake to close: a [`Handler`] owns everything the link decides
//! with (the peer's key and mailbox, its packet allowance, its reply queue), and has one method
//! per frame kind, the way mini-redis has one `apply` per command.
//!
//! Replies go through a bounded queue drained by the link's own writer task, so a slow reader
//! on the other end never stalls the frames this side is still reading.

use std::sync::Arc;
use std::time::Duration;

use spore_protocol::MailboxId;
use spore_protocol::link::{Frame, LinkErrorCode};
use spore_protocol::params::{PACKET_SIZE, PULL_SLOTS};
use spore_protocol::pull::RelayPull;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::admission::{Admission, Admitted};
use crate::connection::{FrameReader, FrameWriter, accept_handshake};
use crate::directory::DirectoryView;
use crate::ingress::PacketIngress;
use crate::mailbox::MailboxService;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How long a closing link's writer may take to send what is queued (pull slots, a final
/// error) before it is abandoned.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// A link must send its first frame within this after the handshake (or the idle timeout, if
/// shorter): a link that never says anything only holds a slot.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A pull's slots and a Delete's `DeleteDone` leave no sooner than this after the request
/// came in, so that when they leave does not say what the mailbox held: reading 16 stored
/// items, or making a real deletion durable (an fsync), takes longer than answering an empty
/// mailbox or an empty Delete, and without the floor a link observer told a client's
/// receiving windows from idle ones by the time to `DeleteDone` (0.66 accuracy in
/// `privacy::a_link_observer_cannot_tell_receiving_or_sending_windows_from_idle_ones`). It is
/// above what both take on an idle disk (well under 5 ms) and far below the pull interval
/// (500 ms by default); an answer whose work took longer leaves when the work is done.
pub(crate) const ANSWER_FLOOR: Duration = Duration::from_millis(15);

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
    /// A relay with neither the entry nor the mailbox role talks only to relays: a peer whose
    /// key is not a listed relay's is refused at the end of the handshake.
    pub relays_only: bool,
    /// The slots of handshaken links.
    pub admission: Arc<Admission>,
    pub directory: Arc<DirectoryView>,
    pub mailbox: Option<MailboxService>,
    pub metrics: Arc<Metrics>,
    pub settings: LinkSettings,
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

/// Whether a link stays open after a frame.
enum Next {
    Continue,
    Close,
}

/// Runs one accepted connection: the handshake, the peer's admission, then a [`Handler`]
/// until the link closes. `permit` (one of the listener's link permits) is held as long as
/// the link, unless the peer is a listed relay that takes a reserved slot instead.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    shutdown: Shutdown,
    mut socket: TcpStream,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let m = shared.metrics.clone();
    let _ = socket.set_nodelay(true);
    let handshake = tokio::select! {
        _ = shutdown.signalled() => return,
        r = accept_handshake(&mut socket, &shared.link_secret, shared.settings.handshake_timeout) => r,
    };
    let (transport, remote_static) = match handshake {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            m.dropped("handshake_failed");
            return;
        }
    };
    let is_relay = shared.directory.is_relay_link_key(&remote_static);
    let (sealer, opener) = transport.split();
    let (rd, wr) = socket.into_split();
    let refusal = if shared.relays_only && !is_relay {
        m.dropped("not_authorized");
        Some(LinkErrorCode::NotAuthorized)
    } else {
        None
    };
    let admitted = match refusal {
        Some(code) => Err(code),
        None => shared
            .admission
            .admit(is_relay, std::time::Instant::now())
            .map_err(|_| {
                m.dropped("link_slots_full");
                LinkErrorCode::RateLimited
            }),
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(code) => {
            // Said once, then closed: the peer knows why.
            let mut writer = FrameWriter::new(wr, sealer);
            let _ = tokio::time::timeout(WRITER_DRAIN, async {
                let _ = writer.write_frame(&Frame::Error { code }).await;
                let _ = writer.flush().await;
                let _ = writer.shutdown().await;
            })
            .await;
            return;
        }
    };
    let _permit = (!admitted.is_relay_slot()).then_some(permit);
    m.connection_opened();
    let (reply, reply_rx) = mpsc::channel(shared.settings.reply_queue);
    let writer = tokio::spawn(write_loop(FrameWriter::new(wr, sealer), reply_rx));
    let handler = Handler::new(shared, shutdown, remote_static, reply, admitted);
    handler.run(FrameReader::new(rd, opener)).await;
    // The handler (and with it the reply sender) is gone: the writer sends what is queued,
    // but not forever.
    let _ = tokio::time::timeout(WRITER_DRAIN, writer).await;
    m.connection_closed();
}

/// One inbound link after its handshake.
pub(crate) struct Handler {
    shared: Arc<Shared>,
    shutdown: Shutdown,
    /// The peer's authenticated static key.
    remote_static: [u8; 32],
    /// The only mailbox this link may pull from or delete in: the one its key owns.
    owner: MailboxId,
    /// Decided at the first packet, from the directory in force then.
    may_send_packets: Option<bool>,
    bucket: TokenBucket,
    /// The relay's half of the link's pull/delete conversation.
    pull: RelayPull,
    reply: mpsc::Sender<Frame>,
    /// The link's slot; closed when it is given to another link.
    slot: Admitted,
    /// Unique among this relay's links.
    link_id: u64,
}

/// Numbers links for their share of the delay queue.
static NEXT_LINK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Handler {
    fn new(
        shared: Arc<Shared>,
        shutdown: Shutdown,
        remote_static: [u8; 32],
        reply: mpsc::Sender<Frame>,
        slot: Admitted,
    ) -> Self {
        let bucket = TokenBucket::new(
            shared.settings.packets_per_sec,
            shared.settings.packet_burst,
        );
        Self {
            shared,
            shutdown,
            remote_static,
            owner: MailboxId::for_key_bytes(&remote_static),
            may_send_packets: None,
            bucket,
            pull: RelayPull::new(),
            reply,
            slot,
            link_id: NEXT_LINK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Reads and handles frames until the peer closes, a frame closes the link, the link
    /// idles out or the relay shuts down.
    async fn run(mut self, mut reader: FrameReader<OwnedReadHalf>) {
        let m = self.shared.metrics.clone();
        let mut timeout = self.shared.settings.idle_timeout.min(FIRST_FRAME_TIMEOUT);
        let evicted = self.slot.evicted.clone();
        loop {
            let frame = tokio::select! {
                _ = self.shutdown.signalled() => {
                    let _ = self.reply.try_send(Frame::Error { code: LinkErrorCode::ShuttingDown });
                    break;
                }
                _ = evicted.cancelled() => {
                    m.dropped("link_evicted");
                    break;
                }
                r = tokio::time::timeout(timeout, reader.read_frame()) => r,
            };
            timeout = self.shared.settings.idle_timeout;
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
            if !matches!(frame, Frame::Padding) {
                self.slot.touch();
            }
            let next = match frame {
                Frame::Packet(p) => self.packet(p),
                Frame::PullRequest => self.pull_request(Frame::PullRequest, Vec::new()).await,
                Frame::BulkPullRequest => {
                    self.pull_request(Frame::BulkPullRequest, Vec::new()).await
                }
                Frame::CapabilityPull { ops } => self.pull_request(Frame::PullRequest, ops).await,
                Frame::Delete { handles } => self.delete(handles).await,
                Frame::Padding => Next::Continue,
                Frame::Error { code } => self.peer_error(code),
                Frame::PullSlot(_) | Frame::DeleteDone { .. } => self.relay_only_frame(),
            };
            if let Next::Close = next {
                break;
            }
        }
    }

    /// A Sphinx packet: to the workers if this link may send packets and has a token left.
    fn packet(&mut self, packet: Box<[u8; PACKET_SIZE]>) -> Next {
        let m = &self.shared.metrics;
        m.packet_in();
        let shared = &self.shared;
        let remote_static = &self.remote_static;
        if !*self.may_send_packets.get_or_insert_with(|| {
            shared.packets_from_anyone || shared.directory.is_relay_link_key(remote_static)
        }) {
            m.dropped("not_authorized");
            let _ = self.reply.try_send(Frame::Error {
                code: LinkErrorCode::NotAuthorized,
            });
            return Next::Close;
        }
        if self.bucket.take() {
            // A client link's packets count against its share of the delay queue.
            let link = (!self.slot.is_relay_slot()).then_some(self.link_id);
            self.shared.ingress.submit_from(link, packet);
        } else {
            m.dropped("rate_limited");
        }
        Next::Continue
    }

    /// A pull: the [`PULL_SLOTS`] slots of the link's own mailbox (`BULK_PULL_SLOTS` for a
    /// catch-up pull), as [`RelayPull`] pads them. Capability `ops` the pull carried are
    /// applied (durably) first, for the link's own mailbox only; the answer is the same
    /// whatever they did.
    async fn pull_request(
        &mut self,
        request: Frame,
        ops: Vec<spore_protocol::CapabilityOp>,
    ) -> Next {
        let answer_at = Instant::now() + ANSWER_FLOOR;
        let slots = RelayPull::slots_for(&request).unwrap_or(PULL_SLOTS);
        // A pull reads `slots` items: it costs as many tokens as that many packets.
        for _ in 0..slots {
            if !self.bucket.take() {
                self.shared.metrics.dropped("rate_limited");
                self.send(Frame::Error {
                    code: LinkErrorCode::RateLimited,
                })
                .await;
                return Next::Continue;
            }
        }
        let Some(service) = self.shared.mailbox.clone() else {
            self.send(Frame::Error {
                code: LinkErrorCode::NotAuthorized,
            })
            .await;
            return Next::Continue;
        };
        let owner = self.owner;
        let items = match tokio::task::spawn_blocking(move || {
            if !ops.is_empty() {
                service.apply_capability_ops(&owner, &ops)?;
            }
            service.pull(&owner, slots)
        })
        .await
        {
            Ok(Ok(items)) => items,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "mailbox read failed");
                self.send(Frame::Error {
                    code: LinkErrorCode::Internal,
                })
                .await;
                return Next::Close;
            }
            Err(_) => return Next::Close,
        };
        let slots = match std::mem::take(&mut self.pull).answer(&request, items) {
            Ok((pull, slots)) => {
                self.pull = pull;
                slots
            }
            Err(e) => return self.pull_session_broken(e),
        };
        tokio::time::sleep_until(answer_at).await;
        for f in slots {
            if self.reply.send(f).await.is_err() {
                return Next::Close;
            }
        }
        Next::Continue
    }

    /// The owner acknowledges items: delete those of its own mailbox, say how many.
    async fn delete(&mut self, handles: Vec<u64>) -> Next {
        let answer_at = Instant::now() + ANSWER_FLOOR;
        let frame = Frame::Delete { handles };
        let deletion = match std::mem::take(&mut self.pull).handle_delete(&frame) {
            Ok((pull, deletion)) => {
                self.pull = pull;
                deletion
            }
            Err(e) => return self.pull_session_broken(e),
        };
        if let Some(irregular) = deletion.irregular {
            // Carried out all the same (see RelayPull): only the owner's items can go.
            tracing::debug!(reason = irregular.reason(), "delete outside a pull");
            self.shared.metrics.dropped(irregular.reason());
        }
        let Some(service) = self.shared.mailbox.clone() else {
            self.send(Frame::DeleteDone { count: 0 }).await;
            return Next::Continue;
        };
        let owner = self.owner;
        let handles = deletion.handles;
        match tokio::task::spawn_blocking(move || service.delete(&owner, &handles)).await {
            Ok(Ok(count)) => {
                tokio::time::sleep_until(answer_at).await;
                if self.reply.send(Frame::DeleteDone { count }).await.is_err() {
                    return Next::Close;
                }
                Next::Continue
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "mailbox delete failed");
                self.send(Frame::Error {
                    code: LinkErrorCode::Internal,
                })
                .await;
                Next::Close
            }
            Err(_) => Next::Close,
        }
    }

    /// [`RelayPull`] refused a step: answered like any other protocol error.
    fn pull_session_broken(&mut self, e: spore_protocol::pull::PullError) -> Next {
        tracing::debug!(error = %e, "pull session broken, closing link");
        self.shared.metrics.dropped("pull_session");
        let _ = self.reply.try_send(Frame::Error {
            code: LinkErrorCode::Protocol,
        });
        Next::Close
    }

    /// The peer is closing the link.
    fn peer_error(&mut self, code: LinkErrorCode) -> Next {
        tracing::debug!(?code, "peer closed link with an error");
        Next::Close
    }

    /// A frame only a relay sends: the peer is confused or hostile.
    fn relay_only_frame(&mut self) -> Next {
        self.shared.metrics.dropped("unexpected_frame");
        let _ = self.reply.try_send(Frame::Error {
            code: LinkErrorCode::Protocol,
        });
        Next::Close
    }

    /// Queues a reply, waiting for room; a writer that is gone means the link is closing
    /// anyway.
    async fn send(&self, frame: Frame) {
        let _ = self.reply.send(frame).await;
    }
}

async fn write_loop(mut writer: FrameWriter<OwnedWriteHalf>, mut rx: mpsc::Receiver<Frame>) {
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
