//! The global passive adversary of [`super::network`] and [`super::trace`]: its Bayesian view
//! of who sent each packet ([`Observer`]), and the scoring of each delivered message against the
//! truth ([`DeliveryStats`] -> [`AnonymityMetrics`]). A simulated network and a recorded trace
//! feed the same observer, so their numbers compare.

use std::collections::HashMap;

use serde::Serialize;

use super::metrics::{Summary, degree, effective_set, entropy_bits};

/// What a node does with packets, for the adversary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// Sender number `sender`.
    Client { sender: usize },
    /// A delaying relay; a corrupt one tells the adversary its input-output links.
    Mix { corrupt: bool },
    /// End of a forward route.
    Mailbox,
}

/// The global passive adversary's state: each honest mix's summed sender vector.
pub(crate) struct Observer {
    kinds: Vec<NodeKind>,
    /// Per node: packets inside (honest mixes) and the sum of their sender vectors.
    pools: Vec<(usize, Vec<f64>)>,
    /// Packets inside corrupt mixes, by input link packet.
    held: HashMap<u64, Vec<f64>>,
    scratch: Vec<f64>,
}

impl Observer {
    pub(crate) fn new(senders: usize, kinds: Vec<NodeKind>) -> Self {
        let pools = kinds
            .iter()
            .map(|k| match k {
                NodeKind::Mix { corrupt: false } => (0, vec![0.0; senders]),
                _ => (0, Vec::new()),
            })
            .collect();
        Observer {
            kinds,
            pools,
            held: HashMap::new(),
            scratch: vec![0.0; senders],
        }
    }

    /// Link packet `pkt` goes from node `from` to node `to`. `linked_input` is the input packet a
    /// corrupt `from` reports for it. Returns the sender distribution when `to` is a mailbox.
    pub(crate) fn hop(
        &mut self,
        from: usize,
        to: usize,
        pkt: u64,
        linked_input: Option<u64>,
    ) -> Result<Option<&[f64]>, String> {
        let (Some(&from_kind), Some(&to_kind)) = (self.kinds.get(from), self.kinds.get(to)) else {
            return Err("node index out of range".into());
        };
        // Fast path: a client's packet into an honest mix adds one to its sender's entry.
        if let (NodeKind::Client { sender }, NodeKind::Mix { corrupt: false }) =
            (from_kind, to_kind)
        {
            let pool = &mut self.pools[to];
            pool.0 += 1;
            pool.1[sender] += 1.0;
            return Ok(None);
        }
        match from_kind {
            NodeKind::Client { sender } => {
                self.scratch.fill(0.0);
                self.scratch[sender] = 1.0;
            }
            NodeKind::Mix { corrupt: false } => {
                let (n, w) = &mut self.pools[from];
                if *n == 0 {
                    return Err("a packet leaves a mix the observer saw empty".into());
                }
                let inv = 1.0 / *n as f64;
                for (s, x) in self.scratch.iter_mut().zip(w.iter_mut()) {
                    let o = *x * inv;
                    *s = o;
                    *x -= o;
                }
                *n -= 1;
                if *n == 0 {
                    w.fill(0.0);
                }
            }
            NodeKind::Mix { corrupt: true } => {
                let input = linked_input.ok_or("corrupt relay output without a relay record")?;
                let v = self
                    .held
                    .remove(&input)
                    .ok_or("corrupt relay output of an unseen input")?;
                self.scratch.copy_from_slice(&v);
            }
            // Mailbox-to-client pulls and packets into clients carry no sender information.
            NodeKind::Mailbox => return Ok(None),
        }
        match to_kind {
            NodeKind::Mix { corrupt: false } => {
                let (n, w) = &mut self.pools[to];
                *n += 1;
                for (x, s) in w.iter_mut().zip(&self.scratch) {
                    *x += s;
                }
                Ok(None)
            }
            NodeKind::Mix { corrupt: true } => {
                self.held.insert(pkt, self.scratch.clone());
                Ok(None)
            }
            NodeKind::Mailbox => Ok(Some(&self.scratch)),
            NodeKind::Client { .. } => Ok(None),
        }
    }
}

/// The anonymity a network gave the messages scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnonymityMetrics {
    /// Messages scored.
    pub messages: usize,
    /// Candidate senders.
    pub senders: usize,
    /// Mean sender entropy (bits).
    pub entropy_bits: f64,
    /// Sender entropy distribution (bits).
    pub entropy: Summary,
    /// `2^mean entropy`.
    pub effective_set: f64,
    /// Mean entropy / log2(senders).
    pub degree: f64,
    /// Fraction of messages whose most likely sender is the true one.
    pub top1_success: f64,
    /// `|ln(p_a/p_b)|` over messages sent by a challenge sender (finite values).
    pub epsilon: Summary,
    /// Challenge messages where one challenger had probability exactly 0.
    pub distinguished: usize,
    /// End-to-end latency, seconds.
    pub latency: Summary,
}

/// Accumulates per-delivery results.
pub(crate) struct DeliveryStats {
    senders: usize,
    challenge: Option<(usize, usize)>,
    entropies: Vec<f64>,
    epsilons: Vec<f64>,
    distinguished: usize,
    top1: usize,
    latencies: Vec<f64>,
}

impl DeliveryStats {
    pub(crate) fn new(senders: usize, challenge: Option<(usize, usize)>) -> Self {
        DeliveryStats {
            senders,
            challenge,
            entropies: Vec::new(),
            epsilons: Vec::new(),
            distinguished: 0,
            top1: 0,
            latencies: Vec::new(),
        }
    }

    /// Scores one delivery: `dist` is the adversary's posterior, `sender` the truth.
    pub(crate) fn record(&mut self, dist: &[f64], sender: usize, latency: f64) {
        self.entropies.push(entropy_bits(dist));
        self.latencies.push(latency);
        let truth = dist.get(sender).copied().unwrap_or(0.0);
        if dist.iter().all(|p| *p <= truth) {
            self.top1 += 1;
        }
        if let Some((a, b)) = self.challenge
            && (sender == a || sender == b)
        {
            let (pa, pb) = (
                dist.get(a).copied().unwrap_or(0.0),
                dist.get(b).copied().unwrap_or(0.0),
            );
            if pa > 0.0 && pb > 0.0 {
                self.epsilons.push((pa / pb).ln().abs());
            } else {
                self.distinguished += 1;
            }
        }
    }

    pub(crate) fn finish(mut self) -> AnonymityMetrics {
        let messages = self.entropies.len();
        let entropy = Summary::of(&mut self.entropies);
        AnonymityMetrics {
            messages,
            senders: self.senders,
            entropy_bits: entropy.mean,
            entropy,
            effective_set: effective_set(entropy.mean),
            degree: degree(entropy.mean, self.senders),
            top1_success: if messages > 0 {
                self.top1 as f64 / messages as f64
            } else {
                0.0
            },
            epsilon: Summary::of(&mut self.epsilons),
            distinguished: self.distinguished,
            latency: Summary::of(&mut self.latencies),
        }
    }
}
