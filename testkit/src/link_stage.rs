//! A userspace delay/loss stage for TCP links between test hosts, for kernels without the
//! `netem` qdisc.
//!
//! It sits on a host's listening side: it accepts on the host's public address and forwards
//! every connection to the service on the host's loopback. What it emulates, per connection,
//! in each direction:
//!
//! * **Delay**: every chunk read is written on `delay` later (a fixed one-way latency for the
//!   link, e.g. 10-80 ms per host), in order, so the stream is delayed, never reordered.
//! * **Loss, as TCP shows it to an application**: a dropped segment is retransmitted, so an
//!   application sees the bytes late, never missing. With probability `stall_probability` a
//!   chunk (and everything behind it) is held back a further `stall` (200 ms: Linux's minimum
//!   retransmission timeout), which is what a 1% segment loss costs a TCP reader.
//! * **Broken links**: with probability `break_probability` a connection is closed by the stage
//!   at a random moment in its first `break_within`, in both directions, as a link whose path
//!   died; the peers must notice and reconnect.
//!
//! What it does not emulate: loss of single packets below TCP (the kernels of both ends see a
//! clean loopback and bridge), bandwidth limits, reordering, congestion-window effects of loss,
//! or delay on connections the host opens (the peer's stage delays those: a link between two
//! hosts is delayed by the listening host's stage in both directions).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How a [`run`] stage treats the links through it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// One-way delay added to every chunk.
    pub delay: Duration,
    /// Chance that a chunk is held back a further `stall` (a retransmitted segment).
    pub stall_probability: f64,
    /// How long a retransmission holds the stream.
    pub stall: Duration,
    /// Chance that a connection is closed by the stage within `break_within` of its start.
    pub break_probability: f64,
    pub break_within: Duration,
}

impl Impairment {
    /// `delay` one way, 1% of chunks retransmitted after 200 ms, 1% of connections broken in
    /// their first 30 s.
    pub fn with_delay(delay: Duration) -> Self {
        Self {
            delay,
            stall_probability: 0.01,
            stall: Duration::from_millis(200),
            break_probability: 0.01,
            break_within: Duration::from_secs(30),
        }
    }
}

/// Accepts on `listener` forever and forwards each connection to `target` through
/// `impairment`. Returns only if accepting fails.
pub async fn run(
    listener: TcpListener,
    target: SocketAddr,
    impairment: Impairment,
) -> std::io::Result<()> {
    loop {
        let (inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            // The service is not up (yet, or again): the caller sees the link fail, as it
            // would dialing the host directly.
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            forward(inbound, outbound, impairment).await;
        });
    }
}

async fn forward(inbound: TcpStream, outbound: TcpStream, impairment: Impairment) {
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let both = async {
        tokio::join!(
            one_way(in_read, out_write, impairment),
            one_way(out_read, in_write, impairment)
        )
    };
    if rand::random::<f64>() < impairment.break_probability {
        let after = impairment.break_within.mul_f64(rand::random::<f64>());
        // Dropping both halves closes both sockets: each peer sees its link end.
        let _ = tokio::time::timeout(after, both).await;
    } else {
        both.await;
    }
}

/// Copies `from` to `to`, each chunk released `delay` (plus any stall) after it was read.
async fn one_way(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    impairment: Impairment,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut release = Instant::now() + impairment.delay;
            if rand::random::<f64>() < impairment.stall_probability {
                release += impairment.stall;
            }
            // In order: nothing overtakes a stalled chunk.
            release = release.max(last);
            last = release;
            if tx.send((release, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((release, bytes)) = rx.recv().await {
            tokio::time::sleep_until(release).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An echo service behind a stage; returns the stage's address.
    async fn echo_behind(impairment: Impairment) -> SocketAddr {
        let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = service.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = service.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let stage = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = stage.local_addr().unwrap();
        tokio::spawn(run(stage, target, impairment));
        addr
    }

    #[tokio::test]
    async fn bytes_come_back_whole_in_order_and_a_round_trip_late() {
        let delay = Duration::from_millis(40);
        let addr = echo_behind(Impairment {
            stall_probability: 0.0,
            break_probability: 0.0,
            ..Impairment::with_delay(delay)
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        s.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent);
        // Through the stage both ways: at least twice the one-way delay.
        assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_broken_link_is_closed_by_the_stage() {
        let addr = echo_behind(Impairment {
            delay: Duration::from_millis(1),
            stall_probability: 0.0,
            stall: Duration::ZERO,
            break_probability: 1.0,
            break_within: Duration::from_millis(200),
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the stage closes the link: {read:?}"
        );
    }
}
