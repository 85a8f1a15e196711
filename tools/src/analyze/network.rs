//! A stratified mix network watched by a global passive adversary (Loopix §4, Piotrowska et
//! al. 2017).
//!
//! `senders` clients emit packets as one merged Poisson stream of total rate `rate` (each client
//! `rate / senders`, cover included: real and cover packets look alike). Each packet crosses
//! `layers` layers of `width` mixes, picking a mix per layer uniformly, waits an exponential
//! delay of mean `delay` at each, and ends in the recipient's mailbox.
//!
//! The adversary sees every link. For every packet it holds a probability vector over senders:
//! one-hot when a client sends it. An honest mix is memoryless, so (as in [`super::poisson_mix`])
//! a departing packet is equally likely to be any of the `n` packets inside: the mix keeps the
//! sum `W` of its inputs' vectors, and an output carries `W / n`, after which `W` shrinks by
//! `(n - 1) / n`. This is exact Bayesian inference for this adversary and costs `O(senders)` per
//! hop. A corrupt mix reveals which input each output is, so its outputs carry their input's
//! vector unchanged.
//!
//! At delivery the vector is the adversary's posterior over who sent the message. Reported:
//! - **sender entropy** `H` of that posterior (bits), its effective set and degree;
//! - **epsilon** for two challenge senders `a` and `b` (clients 0 and 1): for each delivered
//!   message truly sent by `a` or `b`, `|ln(p_a / p_b)|`. With equal sending rates this is the
//!   log-likelihood ratio of "a sent this" against "b sent this" given everything the adversary
//!   saw, i.e. the smallest `epsilon` with `P[view | a] <= e^epsilon P[view | b]` for that message
//!   (Loopix's sender-receiver unlinkability game, measured per message rather than bounded).
//!   Messages where one of the two has probability exactly 0 are counted as *distinguished*
//!   (`epsilon` infinite) and kept out of the quantiles;
//! - **top-1 success**: how often the most likely sender is the true one;
//! - **latency**: end-to-end delay, simulated and from its Gamma (Erlang) law.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;

use rand::RngExt;
use rand_distr::{Distribution, Exp};
use serde::Serialize;

pub use super::adversary::AnonymityMetrics;
use super::adversary::{DeliveryStats, NodeKind, Observer};
use super::metrics::ErlangDelay;
use super::trace::{
    Hop, Meta, Node, RelayLink, Role, TRACE_VERSION, TraceRecord, TraceWriter, Truth,
};
use super::{Error, require, seeded_rng};

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkParams {
    /// Mix layers.
    pub layers: u32,
    /// Mixes per layer.
    pub width: u32,
    /// Total packets per second from all clients.
    pub rate: f64,
    /// Mean per-hop delay, seconds (`1 / mu`).
    pub delay: f64,
    /// Clients (each also owns one mailbox).
    pub senders: u32,
    /// Seconds during which clients send.
    pub duration: f64,
    /// Mixes the adversary controls, chosen at random.
    pub corrupt: u32,
    /// Seed.
    pub seed: u64,
}

/// Gamma (Erlang) law of the end-to-end delay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GammaLatency {
    /// Shape (hops).
    pub shape: u32,
    /// Scale (mean per-hop delay).
    pub scale: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl GammaLatency {
    /// The law of `hops` exponential delays of mean `delay`.
    pub fn new(hops: u32, delay: f64) -> Self {
        let e = ErlangDelay {
            hops,
            mean_delay: delay,
        };
        GammaLatency {
            shape: hops,
            scale: delay,
            mean: e.mean(),
            p50: e.quantile(0.5),
            p99: e.quantile(0.99),
        }
    }
}

/// What the simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkReport {
    /// Layers.
    pub layers: u32,
    /// Width.
    pub width: u32,
    /// Total rate.
    pub rate: f64,
    /// Mean per-hop delay.
    pub delay: f64,
    /// Clients.
    pub senders: u32,
    /// Sending time.
    pub duration: f64,
    /// Corrupt mixes.
    pub corrupt: u32,
    /// Seed.
    pub seed: u64,
    /// Packets sent.
    pub sent: usize,
    /// Messages sent in `[measure_from, measure_until)` are scored.
    pub measure_from: f64,
    /// End of the scoring window.
    pub measure_until: f64,
    /// Mean pool size of one mix, `rate / width * delay`.
    pub mean_pool: f64,
    /// Scored metrics.
    pub metrics: AnonymityMetrics,
    /// The latency law to compare `metrics.latency` with.
    pub latency_gamma: GammaLatency,
}

struct Departure {
    t: f64,
    seq: u64,
    layer: u32,
    node: u32,
    msg: u32,
    in_pkt: u64,
}

impl PartialEq for Departure {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Departure {}
impl PartialOrd for Departure {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Departure {
    /// Reversed: `BinaryHeap` pops the earliest.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

struct Message {
    sender: u32,
    receiver: u32,
    sent: f64,
}

/// Runs the simulation.
pub fn simulate(p: &NetworkParams) -> Result<NetworkReport, Error> {
    simulate_traced::<std::io::Sink>(p, None)
}

/// Runs the simulation and writes the observer's view and ground truth as a trace.
pub fn simulate_traced<W: Write>(
    p: &NetworkParams,
    mut trace: Option<&mut TraceWriter<W>>,
) -> Result<NetworkReport, Error> {
    require(p.layers >= 1, "layers", ">= 1")?;
    require(p.width >= 1, "width", ">= 1")?;
    require(p.rate.is_finite() && p.rate > 0.0, "rate", "finite and > 0")?;
    require(
        p.delay.is_finite() && p.delay > 0.0,
        "delay",
        "finite and > 0",
    )?;
    require(p.senders >= 2, "senders", ">= 2 (two challenge senders)")?;
    require(
        p.duration.is_finite() && p.duration > 0.0,
        "duration",
        "finite and > 0",
    )?;
    require(
        p.corrupt <= p.layers * p.width,
        "corrupt",
        "at most layers * width",
    )?;
    require(
        p.rate * p.duration < f64::from(u32::MAX),
        "rate * duration",
        "below 2^32 packets",
    )?;

    let mut rng = seeded_rng(p.seed);
    let (n, layers, width) = (p.senders as usize, p.layers as usize, p.width as usize);
    let mix_base = n;
    let mailbox_base = n + layers * width;
    let mut kinds: Vec<NodeKind> = (0..n).map(|sender| NodeKind::Client { sender }).collect();
    let mut corrupt = vec![false; layers * width];
    {
        let mut pick = seeded_rng(p.seed ^ 0xC0_22_0F_7E);
        let mut order: Vec<usize> = (0..layers * width).collect();
        for i in 0..p.corrupt as usize {
            let j = pick.random_range(i..order.len());
            order.swap(i, j);
            corrupt[order[i]] = true;
        }
    }
    kinds.extend(corrupt.iter().map(|c| NodeKind::Mix { corrupt: *c }));
    kinds.extend((0..n).map(|_| NodeKind::Mailbox));
    let node_name = |i: usize| -> String {
        if i < mix_base {
            format!("c{i}")
        } else if i < mailbox_base {
            let m = i - mix_base;
            format!("m{}.{}", m / width, m % width)
        } else {
            format!("mb{}", i - mailbox_base)
        }
    };

    let warm = (20.0 * p.delay * f64::from(p.layers)).min(p.duration / 4.0);
    let (measure_from, measure_until) = (warm, p.duration - warm);
    if let Some(w) = trace.as_deref_mut() {
        w.write(&TraceRecord::Meta(Meta {
            version: TRACE_VERSION,
            source: "simulation".into(),
            measure_from: Some(measure_from),
            measure_until: Some(measure_until),
            challenge: Some(("c0".into(), "c1".into())),
        }))?;
        for (i, k) in kinds.iter().enumerate() {
            let (role, layer) = match k {
                NodeKind::Client { .. } => (Role::Client, None),
                NodeKind::Mix { .. } => (Role::Mix, Some(((i - mix_base) / width) as u32)),
                NodeKind::Mailbox => (Role::Mailbox, None),
            };
            w.write(&TraceRecord::Node(Node {
                id: node_name(i),
                role,
                layer,
            }))?;
        }
    }

    let send_gap = Exp::new(p.rate).map_err(|_| super::InvalidParams::OutOfRange {
        name: "rate",
        requirement: "> 0",
    })?;
    let hop_delay = Exp::new(1.0 / p.delay).map_err(|_| super::InvalidParams::OutOfRange {
        name: "delay",
        requirement: "> 0",
    })?;
    let mut observer = Observer::new(n, kinds);
    let mut stats = DeliveryStats::new(n, Some((0, 1)));
    let mut heap: BinaryHeap<Departure> = BinaryHeap::new();
    let mut messages: Vec<Message> = Vec::new();
    let mut route_pkts: Vec<Vec<u64>> = Vec::new();
    let mut relay_in_time: HashMap<u64, f64> = HashMap::new();
    let (mut next_pkt, mut seq) = (0u64, 0u64);
    let mut next_send = send_gap.sample(&mut rng);

    loop {
        let next_departure = heap.peek().map_or(f64::INFINITY, |d| d.t);
        if next_send < p.duration && next_send <= next_departure {
            let t = next_send;
            next_send += send_gap.sample(&mut rng);
            let sender = rng.random_range(0..n);
            let receiver = rng.random_range(0..n);
            let node = mix_base + rng.random_range(0..width);
            let pkt = next_pkt;
            next_pkt += 1;
            let msg = messages.len() as u32;
            messages.push(Message {
                sender: sender as u32,
                receiver: receiver as u32,
                sent: t,
            });
            observer
                .hop(sender, node, pkt, None)
                .map_err(|r| Error::BadTrace { line: 0, reason: r })?;
            if let Some(w) = trace.as_deref_mut() {
                w.write(&TraceRecord::Hop(Hop {
                    t,
                    from: node_name(sender),
                    to: node_name(node),
                    pkt,
                }))?;
                route_pkts.push(vec![pkt]);
                relay_in_time.insert(pkt, t);
            }
            heap.push(Departure {
                t: t + hop_delay.sample(&mut rng),
                seq,
                layer: 0,
                node: node as u32,
                msg,
                in_pkt: pkt,
            });
            seq += 1;
            continue;
        }
        let Some(d) = heap.pop() else { break };
        let m = &messages[d.msg as usize];
        let last = d.layer as usize + 1 == layers;
        let to = if last {
            mailbox_base + m.receiver as usize
        } else {
            mix_base + (d.layer as usize + 1) * width + rng.random_range(0..width)
        };
        let pkt = next_pkt;
        next_pkt += 1;
        let from = d.node as usize;
        let delivered = observer
            .hop(from, to, pkt, Some(d.in_pkt))
            .map_err(|r| Error::BadTrace { line: 0, reason: r })?;
        if let Some(dist) = delivered
            && (measure_from..measure_until).contains(&m.sent)
        {
            stats.record(dist, m.sender as usize, d.t - m.sent);
        }
        if let Some(w) = trace.as_deref_mut() {
            let t_in = relay_in_time.remove(&d.in_pkt).unwrap_or(d.t);
            w.write(&TraceRecord::Relay(RelayLink {
                node: node_name(from),
                t_in,
                t_out: d.t,
                in_pkt: d.in_pkt,
                out_pkt: pkt,
            }))?;
            w.write(&TraceRecord::Hop(Hop {
                t: d.t,
                from: node_name(from),
                to: node_name(to),
                pkt,
            }))?;
            let pkts = &mut route_pkts[d.msg as usize];
            pkts.push(pkt);
            if last {
                w.write(&TraceRecord::Truth(Truth {
                    msg: u64::from(d.msg),
                    sender: node_name(m.sender as usize),
                    receiver: node_name(to),
                    sent: m.sent,
                    pkts: std::mem::take(pkts),
                    cover: false,
                }))?;
            } else {
                relay_in_time.insert(pkt, d.t);
            }
        }
        if !last {
            heap.push(Departure {
                t: d.t + hop_delay.sample(&mut rng),
                seq,
                layer: d.layer + 1,
                node: to as u32,
                msg: d.msg,
                in_pkt: pkt,
            });
            seq += 1;
        }
    }

    Ok(NetworkReport {
        layers: p.layers,
        width: p.width,
        rate: p.rate,
        delay: p.delay,
        senders: p.senders,
        duration: p.duration,
        corrupt: p.corrupt,
        seed: p.seed,
        sent: messages.len(),
        measure_from,
        measure_until,
        mean_pool: p.rate / f64::from(p.width) * p.delay,
        metrics: stats.finish(),
        latency_gamma: GammaLatency::new(p.layers, p.delay),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> NetworkParams {
        NetworkParams {
            layers: 3,
            width: 3,
            rate: 300.0,
            delay: 0.05,
            senders: 40,
            duration: 20.0,
            corrupt: 0,
            seed: 9,
        }
    }

    #[test]
    fn busy_network_hides_senders_well_and_latency_follows_gamma() {
        let r = simulate(&params()).expect("valid");
        let m = &r.metrics;
        assert!(m.messages > 4_000, "{m:?}");
        // 40 equally active senders: close to log2 40 = 5.32 bits, never above it.
        assert!(
            m.entropy_bits > 4.5 && m.entropy_bits <= 40f64.log2() + 1e-9,
            "{m:?}"
        );
        assert!(m.degree > 0.85 && m.degree <= 1.0 + 1e-9);
        assert!(m.epsilon.count > 100 && m.epsilon.p50 < 1.0, "{m:?}");
        let g = &r.latency_gamma;
        assert!((g.mean - 0.15).abs() < 1e-12);
        assert!(
            (m.latency.mean - g.mean).abs() < 0.1 * g.mean,
            "{m:?} {g:?}"
        );
        assert!((m.latency.p99 - g.p99).abs() < 0.15 * g.p99, "{m:?} {g:?}");
    }

    #[test]
    fn less_traffic_or_less_delay_means_less_anonymity() {
        let base = simulate(&params()).expect("valid").metrics.entropy_bits;
        let sparse = simulate(&NetworkParams {
            rate: 20.0,
            ..params()
        })
        .expect("valid")
        .metrics
        .entropy_bits;
        let fast = simulate(&NetworkParams {
            delay: 0.002,
            ..params()
        })
        .expect("valid")
        .metrics
        .entropy_bits;
        assert!(sparse < base - 0.5, "{sparse} vs {base}");
        assert!(fast < base - 0.5, "{fast} vs {base}");
    }

    #[test]
    fn corrupting_every_mix_exposes_every_sender() {
        let r = simulate(&NetworkParams {
            corrupt: 9,
            ..params()
        })
        .expect("valid");
        assert_eq!(r.metrics.entropy_bits, 0.0);
        assert_eq!(r.metrics.top1_success, 1.0);
        assert_eq!(r.metrics.epsilon.count, 0);
        assert!(r.metrics.distinguished > 100);
        let some = simulate(&NetworkParams {
            corrupt: 3,
            ..params()
        })
        .expect("valid")
        .metrics
        .entropy_bits;
        let none = simulate(&params()).expect("valid").metrics.entropy_bits;
        assert!(some < none && some > 0.0, "{some} {none}");
    }

    #[test]
    fn deterministic_per_seed() {
        let a = simulate(&NetworkParams {
            duration: 5.0,
            ..params()
        })
        .expect("valid");
        let b = simulate(&NetworkParams {
            duration: 5.0,
            ..params()
        })
        .expect("valid");
        assert_eq!(a, b);
        let c = simulate(&NetworkParams {
            duration: 5.0,
            seed: 10,
            ..params()
        })
        .expect("valid");
        assert_ne!(a.metrics, c.metrics);
    }
}
