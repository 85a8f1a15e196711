//! A mailbox relay's output does not tell real deliveries from drop cover (issue 15, test (b)).
//!
//! An observer sits on the mailbox relay's link to the layer-1 mix, where both SURB-acks and
//! decoys go, and sees only when frames leave. Windows of real deliveries (each with a
//! SURB-ack) and of drop cover, at the same input rate and in random order, are then told
//! apart by the best threshold on a per-window statistic learned on half of the windows; on
//! the other half (and the same the other way round) it must do no better than 0.6. (Before, acks left right after the store and
//! cover made nothing: output count alone told every window apart.)

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use rand::seq::SliceRandom;
use spore_protocol::directory::{Directory, NetworkParams};
use spore_protocol::link::Frame;
use spore_protocol::packet;
use spore_protocol::params::PACKET_SIZE;
use spore_protocol::{MailboxId, MailboxKey};
use spore_testkit::{Observer, plain_packet};

use super::network::Network;

const WINDOW: Duration = Duration::from_millis(250);
const WINDOWS_PER_CLASS: usize = 120;
/// Packets per second into the mailbox relay, real or cover.
const RATE: f64 = 40.0;

/// Publishes the network's directory with the layer-1 mix reached through `mix1_address`.
async fn publish_through(net: &Network, mix1_address: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let relays = net
        .all()
        .iter()
        .map(|r| {
            if r.keys.relay_id() == net.mixes[0].keys.relay_id() {
                spore_relay::build_descriptor(&r.config, &r.keys, mix1_address, now).unwrap()
            } else {
                r.r().descriptor().unwrap()
            }
        })
        .collect();
    let mut doc = Directory {
        epoch: now / 3600,
        valid_after: now - 60,
        valid_until: now + 3600,
        params: NetworkParams::default(),
        relays,
        signatures: vec![],
    };
    doc.sign(&net.authority).unwrap();
    net.directory.set(doc.to_bytes());
    for r in net.all() {
        r.r().refresh_directory().await.unwrap();
    }
}

/// Per-window statistics an observer of the output (and of the arrivals) can compute.
fn window_stats(sends: &[Instant], outputs: &[Instant], from: Instant) -> Vec<f64> {
    let to = from + WINDOW;
    let outs: Vec<Instant> = outputs
        .iter()
        .copied()
        .filter(|t| *t >= from && *t < to)
        .collect();
    let near = outs
        .iter()
        .filter(|o| {
            sends
                .iter()
                .any(|s| *s <= **o && o.duration_since(*s) <= Duration::from_millis(4))
        })
        .count();
    let gaps: Vec<f64> = outs
        .iter()
        .filter_map(|o| {
            sends
                .iter()
                .filter(|s| **s <= *o)
                .max()
                .map(|s| o.duration_since(*s).as_secs_f64())
        })
        .collect();
    let mean_gap = if gaps.is_empty() {
        1.0
    } else {
        gaps.iter().sum::<f64>() / gaps.len() as f64
    };
    vec![outs.len() as f64, near as f64, mean_gap]
}

/// Accuracy on `test` of the best threshold (either direction) on `train`.
fn threshold_accuracy(train: &[(f64, bool)], test: &[(f64, bool)]) -> f64 {
    let mut best = (0.0, f64::NEG_INFINITY, true);
    let mut cuts: Vec<f64> = train.iter().map(|(v, _)| *v).collect();
    cuts.sort_by(|a, b| a.total_cmp(b));
    for c in cuts {
        for above_is_real in [true, false] {
            let acc = train
                .iter()
                .filter(|(v, real)| (*v > c) == (above_is_real == *real))
                .count() as f64
                / train.len() as f64;
            if acc > best.0 {
                best = (acc, c, above_is_real);
            }
        }
    }
    let (_, c, above_is_real) = best;
    test.iter()
        .filter(|(v, real)| (*v > c) == (above_is_real == *real))
        .count() as f64
        / test.len() as f64
}

/// Two-fold cross-validated threshold accuracy: trained on the even windows and tested on the
/// odd ones, then the other way round, averaged. Every window is tested once, so chance
/// stays within 0.5 ± 0.032 (one standard deviation at 240 windows) and the 0.6 bar is three
/// of them; a single split (120 tested) put it at 2.2 and failed by chance (0.62) in CI.
fn cross_validated_accuracy(windows: &[(f64, bool)]) -> f64 {
    let half = |parity: usize| -> Vec<(f64, bool)> {
        windows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, w)| *w)
            .collect()
    };
    let (even, odd) = (half(0), half(1));
    (threshold_accuracy(&even, &odd) * odd.len() as f64
        + threshold_accuracy(&odd, &even) * even.len() as f64)
        / windows.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_relays_output_does_not_show_real_deliveries() {
    let net = Network::start(|_| {}).await;
    let observer = Observer::start(net.mixes[0].r().local_addr())
        .await
        .unwrap();
    publish_through(&net, &observer.local_addr().to_string()).await;

    // Acks go to the layer-1 mix and end at a mix that holds no mailbox: in a network they
    // would go on to the sender's mailbox relay, which is not the relay observed here.
    let ack_route: Vec<_> = net.mixes.iter().map(|m| m.hop()).collect();
    let recipient = MailboxKey::generate(&mut rand::rng());
    let sender = MailboxKey::generate(&mut rand::rng());
    let mut classes: Vec<bool> = (0..2 * WINDOWS_PER_CLASS).map(|i| i % 2 == 0).collect();
    classes.shuffle(&mut rand::rng());
    let mut rng = rand::rng();
    // Each window's packets and their send offsets, built before any is sent.
    let plan: Vec<Vec<(Duration, Vec<u8>)>> = classes
        .iter()
        .map(|real| {
            let mut at = Duration::ZERO;
            let mut v = Vec::new();
            loop {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                at += Duration::from_secs_f64(-u.ln() / RATE);
                if at >= WINDOW {
                    break v;
                }
                let p = if *real {
                    let (surb, _) = packet::build_surb(
                        &ack_route,
                        sender.mailbox_id(),
                        packet::random_surb_id(&mut rand::rng()),
                        &[Duration::ZERO; 3],
                    )
                    .unwrap();
                    let payload = packet::ForwardPayload {
                        ack_surb: surb,
                        sealed_fragment: vec![7; spore_protocol::params::SEALED_FRAGMENT_SIZE],
                    }
                    .encode()
                    .unwrap();
                    plain_packet(
                        &[net.entry.hop(), net.mailbox.hop()],
                        recipient.mailbox_id(),
                        &[Duration::ZERO; 2],
                        &payload,
                    )
                } else {
                    plain_packet(
                        &[net.entry.hop(), net.mailbox.hop()],
                        MailboxId::DROP,
                        &[Duration::ZERO; 2],
                        b"cover",
                    )
                };
                v.push((at, p));
            }
        })
        .collect();

    // Through the entry relay, as a client's packets come (a mailbox relay takes packets only
    // from relays).
    let mut link = net.entry.link(&rand::random()).await;
    let mut sends = Vec::new();
    let mut starts = Vec::new();
    let start = Instant::now() + Duration::from_millis(200);
    for (w, packets) in plan.into_iter().enumerate() {
        let window_start = start + WINDOW * w as u32;
        starts.push(window_start);
        for (at, p) in packets {
            tokio::time::sleep_until((window_start + at).into()).await;
            let p: Box<[u8; PACKET_SIZE]> = p.into_boxed_slice().try_into().unwrap();
            link.writer.write_frame(&Frame::Packet(p)).await.unwrap();
            link.writer.flush().await.unwrap();
            sends.push(Instant::now());
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outputs: Vec<Instant> = observer.records().iter().map(|r| r.at).collect();
    let m = net.mailbox.r().metrics();
    assert!(
        m.acks_sent > 0 && m.cover_received > 0,
        "both kinds arrived: {m:?}"
    );
    assert!(
        outputs.len() as f64 > 0.8 * sends.len() as f64,
        "every final-hop packet makes one output: {} outputs for {} arrivals",
        outputs.len(),
        sends.len()
    );

    let stats: Vec<(Vec<f64>, bool)> = starts
        .iter()
        .zip(&classes)
        .map(|(s, real)| (window_stats(&sends, &outputs, *s), *real))
        .collect();
    for (k, name) in ["outputs", "outputs within 4 ms of an arrival", "mean gap"]
        .iter()
        .enumerate()
    {
        let windows: Vec<(f64, bool)> = stats.iter().map(|(s, r)| (s[k], *r)).collect();
        let acc = cross_validated_accuracy(&windows);
        eprintln!("output statistic {name}: threshold accuracy {acc:.2}");
        assert!(
            acc <= 0.6,
            "{name} tells real from cover: accuracy {acc:.2}"
        );
    }
    net.shutdown().await;
}
