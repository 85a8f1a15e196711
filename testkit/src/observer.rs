//! A passive observer on a client's link: a TCP proxy between the client and its relay that
//! sees only what a network adversary sees — encrypted bytes and their timing, both ways.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use spore_protocol::link::WIRE_FRAME_LEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes the client sends before its first frame: Noise messages 1 (`-> e`, 32 bytes) and
/// 3 (`-> s, se`, 64 bytes), each with a 2-byte length prefix.
const CLIENT_HANDSHAKE_BYTES: usize = 2 + 32 + 2 + 64;
/// Bytes the relay sends before its first frame: Noise message 2 (`<- e, ee, s, es`, 96
/// bytes) with its length prefix.
const RELAY_HANDSHAKE_BYTES: usize = 2 + 96;

/// One record the client sent, as the observer saw it.
#[derive(Debug, Clone, Copy)]
pub struct LinkRecord {
    /// When the record's last byte arrived.
    pub at: Instant,
    /// Its length (every record is `WIRE_FRAME_LEN` if the link is uniform).
    pub len: usize,
}

#[derive(Debug, Default)]
struct Seen {
    records: Vec<LinkRecord>,
    /// Bytes after the handshake that do not (yet) form a whole record.
    partial: usize,
}

impl Seen {
    /// `n` more bytes arrived at `now`, `total` in all on this connection, of which the first
    /// `handshake` were the handshake.
    fn count(&mut self, now: Instant, before: usize, total: usize, handshake: usize) {
        let start = before.max(handshake);
        if total > start {
            let mut pending = self.partial + (total - start);
            while pending >= WIRE_FRAME_LEN {
                self.records.push(LinkRecord {
                    at: now,
                    len: WIRE_FRAME_LEN,
                });
                pending -= WIRE_FRAME_LEN;
            }
            self.partial = pending;
        }
    }
}

/// A TCP proxy that timestamps the client→relay byte stream.
#[derive(Debug, Clone)]
pub struct Observer {
    local_addr: SocketAddr,
    /// Client to relay.
    seen: Arc<Mutex<Seen>>,
    /// Relay to client.
    answers: Arc<Mutex<Seen>>,
}

impl Observer {
    /// Listens on 127.0.0.1:0 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Observer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let answers = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let a = answers.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(relay) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = relay.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut rr, mut rw) = relay.into_split();
                let a = a.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0usize;
                    loop {
                        let n = match rr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let now = Instant::now();
                        let before = total;
                        total += n;
                        a.lock().unwrap_or_else(|e| e.into_inner()).count(
                            now,
                            before,
                            total,
                            RELAY_HANDSHAKE_BYTES,
                        );
                        if cw
                            .write_all(buf.get(..n).unwrap_or_default())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0usize;
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let now = Instant::now();
                        let before = total;
                        total += n;
                        s.lock().unwrap_or_else(|e| e.into_inner()).count(
                            now,
                            before,
                            total,
                            CLIENT_HANDSHAKE_BYTES,
                        );
                        if rw
                            .write_all(buf.get(..n).unwrap_or_default())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Observer {
            local_addr,
            seen,
            answers,
        })
    }

    /// Where the client should connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Records seen so far.
    pub fn records(&self) -> Vec<LinkRecord> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records
            .clone()
    }

    /// Records the relay sent so far (pull slots and delete confirmations), as seen on the
    /// way to the client.
    pub fn relay_records(&self) -> Vec<LinkRecord> {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records
            .clone()
    }

    /// Bytes after the handshake that are not a whole record (0 on a uniform link at rest).
    pub fn partial_bytes(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).partial
    }

    /// Timing statistics of records seen in `[from, to)`.
    pub fn stats_between(&self, from: Instant, to: Instant) -> TimingStats {
        let times: Vec<Instant> = self
            .records()
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .map(|r| r.at)
            .collect();
        TimingStats::from_times(&times)
    }
}

/// Inter-record gaps: how an adversary would test a link for Poisson behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimingStats {
    pub records: usize,
    /// Mean gap in seconds.
    pub mean_gap: f64,
    /// Standard deviation / mean of the gaps: 1 for a Poisson process.
    pub cv: f64,
    /// Records per second.
    pub rate: f64,
}

impl TimingStats {
    pub fn from_times(times: &[Instant]) -> Self {
        let gaps: Vec<f64> = times
            .windows(2)
            .filter_map(|w| match w {
                [a, b] => Some(b.saturating_duration_since(*a).as_secs_f64()),
                _ => None,
            })
            .collect();
        if gaps.is_empty() {
            return Self {
                records: times.len(),
                mean_gap: 0.0,
                cv: 0.0,
                rate: 0.0,
            };
        }
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        Self {
            records: times.len(),
            mean_gap: mean,
            cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
            rate: if mean > 0.0 { 1.0 / mean } else { 0.0 },
        }
    }
}
