//! The trace format: what an observer of a real Spore network sees, plus ground truth.
//!
//! A trace is JSON lines, one [`TraceRecord`] per line, tagged by `"type"`:
//!
//! ```text
//! {"type":"meta","version":1,"source":"simulation","measure_from":3.0,"measure_until":57.0,"challenge":["c0","c1"]}
//! {"type":"node","id":"c0","role":"client"}
//! {"type":"node","id":"m0.3","role":"mix","layer":0}
//! {"type":"node","id":"mb7","role":"mailbox"}
//! {"type":"hop","t":3.012,"from":"c0","to":"m0.3","pkt":1812}
//! {"type":"relay","node":"m0.3","t_in":3.012,"t_out":3.071,"in_pkt":1812,"out_pkt":1815}
//! {"type":"truth","msg":904,"sender":"c0","receiver":"mb7","sent":3.012,"pkts":[1812,1815,1830,1841]}
//! ```
//!
//! - `hop` is what a global passive observer records: a packet crossed a link at time `t`
//!   (seconds, any epoch). `pkt` names that link packet; Sphinx makes a packet's bytes unlinkable
//!   across hops, so every hop has a fresh id (a relay derives it from a hash of the bytes it
//!   sent). Every packet on every link is listed, cover included.
//! - `relay` is what a corrupt relay adds: which input became which output.
//! - `truth` is ground truth, used only to score the adversary, never to infer: who sent each
//!   message, to which mailbox, over which link packets (`pkts[last]` is the delivery hop).
//!   `cover: true` marks loop and drop cover, which is not scored.
//! - `node` declares roles: `client` (a source), `mix` (any relay that delays and reorders,
//!   the entry relay included; `layer` is informative), `mailbox` (a sink).
//!
//! Ground truth may sit in the same file or in a separate one (`spore analyze trace FILE
//! --truth TRUTH`), so an observer's file can be handed out without it. The relay writes its
//! part only when built with a non-default cargo feature and enabled in its config.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::Error;
use super::adversary::{AnonymityMetrics, DeliveryStats, NodeKind, Observer};

/// The format version this module reads and writes.
pub const TRACE_VERSION: u32 = 1;

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TraceRecord {
    /// Run description; at most one, first.
    Meta(Meta),
    /// A node and its role.
    Node(Node),
    /// A packet crossing a link, as a passive observer sees it.
    Hop(Hop),
    /// A relay's own input-to-output link (known only if the relay is corrupt).
    Relay(RelayLink),
    /// Ground truth for one message.
    Truth(Truth),
}

/// Run description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// [`TRACE_VERSION`].
    pub version: u32,
    /// `"simulation"` or `"testnet"`, free text.
    #[serde(default)]
    pub source: String,
    /// Score only messages sent at or after this time (warm-up excluded).
    #[serde(default)]
    pub measure_from: Option<f64>,
    /// Score only messages sent before this time (drain excluded).
    #[serde(default)]
    pub measure_until: Option<f64>,
    /// The two challenge senders for epsilon.
    #[serde(default)]
    pub challenge: Option<(String, String)>,
}

/// Role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Originates packets.
    Client,
    /// Delays and reorders (entry relays and mix layers).
    Mix,
    /// Stores packets for a recipient: the end of a forward route.
    Mailbox,
}

/// A node declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Name used by hops.
    pub id: String,
    /// What it does.
    pub role: Role,
    /// Mix layer, informative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u32>,
}

/// A packet on a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// Seconds.
    pub t: f64,
    /// Sending node.
    pub from: String,
    /// Receiving node.
    pub to: String,
    /// Link packet id, fresh per hop.
    pub pkt: u64,
}

/// A relay's knowledge of its own mixing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayLink {
    /// The relay.
    pub node: String,
    /// When the input arrived.
    pub t_in: f64,
    /// When the output left.
    pub t_out: f64,
    /// Input link packet.
    pub in_pkt: u64,
    /// Output link packet.
    pub out_pkt: u64,
}

/// Ground truth of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Message id, free.
    pub msg: u64,
    /// Sending client node.
    pub sender: String,
    /// Destination mailbox node.
    pub receiver: String,
    /// When the sender emitted it.
    pub sent: f64,
    /// Its link packets in route order; the last is the delivery hop.
    pub pkts: Vec<u64>,
    /// Loop or drop cover (not scored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cover: bool,
}

/// Writes records as JSON lines.
pub struct TraceWriter<W: Write> {
    out: W,
}

impl<W: Write> TraceWriter<W> {
    /// Wraps a writer (buffer it: one line per packet hop).
    pub fn new(out: W) -> Self {
        TraceWriter { out }
    }

    /// Appends one record.
    pub fn write(&mut self, record: &TraceRecord) -> Result<(), Error> {
        serde_json::to_writer(&mut self.out, record).map_err(std::io::Error::from)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, Error> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// How to analyse a trace.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// Relays whose `relay` records the adversary may use.
    pub corrupt: Vec<String>,
    /// Overrides the meta challenge pair.
    pub challenge: Option<(String, String)>,
}

/// What the adversary learned from a trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceReport {
    /// Records read.
    pub records: usize,
    /// Hops replayed.
    pub hops: usize,
    /// Clients, mixes, mailboxes.
    pub nodes: (usize, usize, usize),
    /// Corrupt relays used.
    pub corrupt: Vec<String>,
    /// The metrics over scored messages.
    pub metrics: AnonymityMetrics,
}

fn bad(line: usize, reason: impl Into<String>) -> Error {
    Error::BadTrace {
        line,
        reason: reason.into(),
    }
}

/// Reads every record, keeping 1-based line numbers.
pub fn read_records(input: impl BufRead) -> Result<Vec<(usize, TraceRecord)>, Error> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: TraceRecord =
            serde_json::from_str(&line).map_err(|e| bad(i + 1, e.to_string()))?;
        out.push((i + 1, rec));
    }
    Ok(out)
}

/// Replays the observer's view of a trace through the same Bayesian adversary as the network
/// simulation, and scores it against the ground truth.
pub fn analyze(
    records: &[(usize, TraceRecord)],
    opts: &TraceOptions,
) -> Result<TraceReport, Error> {
    let mut meta: Option<&Meta> = None;
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut kinds: Vec<NodeKind> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    let mut senders = 0usize;
    let mut hops: Vec<(usize, &Hop)> = Vec::new();
    let mut linked_input: HashMap<u64, u64> = HashMap::new();
    let mut delivery_truth: HashMap<u64, &Truth> = HashMap::new();
    let corrupt: Vec<&str> = opts.corrupt.iter().map(String::as_str).collect();

    for (line, rec) in records {
        match rec {
            TraceRecord::Meta(m) => {
                if m.version != TRACE_VERSION {
                    return Err(bad(
                        *line,
                        format!(
                            "trace version {} (this tool reads {TRACE_VERSION})",
                            m.version
                        ),
                    ));
                }
                meta = Some(m);
            }
            TraceRecord::Node(n) => {
                if index.contains_key(n.id.as_str()) {
                    return Err(bad(*line, format!("node {} declared twice", n.id)));
                }
                let kind = match n.role {
                    Role::Client => {
                        senders += 1;
                        NodeKind::Client {
                            sender: senders - 1,
                        }
                    }
                    Role::Mix => NodeKind::Mix {
                        corrupt: corrupt.contains(&n.id.as_str()),
                    },
                    Role::Mailbox => NodeKind::Mailbox,
                };
                index.insert(n.id.as_str(), kinds.len());
                kinds.push(kind);
                names.push(n.id.as_str());
            }
            TraceRecord::Hop(h) => {
                if !h.t.is_finite() {
                    return Err(bad(*line, "non-finite time"));
                }
                hops.push((*line, h));
            }
            TraceRecord::Relay(r) => {
                if corrupt.contains(&r.node.as_str()) {
                    linked_input.insert(r.out_pkt, r.in_pkt);
                }
            }
            TraceRecord::Truth(t) => {
                if !t.cover {
                    let last = t
                        .pkts
                        .last()
                        .ok_or_else(|| bad(*line, "truth without packets"))?;
                    delivery_truth.insert(*last, t);
                }
            }
        }
    }
    for c in &corrupt {
        if !index.contains_key(c) {
            return Err(bad(
                0,
                format!("corrupt relay {c} is not a node of the trace"),
            ));
        }
    }
    let challenge = opts
        .challenge
        .clone()
        .or_else(|| meta.and_then(|m| m.challenge.clone()));
    let challenge_idx = match &challenge {
        Some((a, b)) => {
            let sender_of = |name: &str| match index.get(name).map(|i| &kinds[*i]) {
                Some(NodeKind::Client { sender }) => Ok(*sender),
                _ => Err(bad(0, format!("challenge sender {name} is not a client"))),
            };
            Some((sender_of(a)?, sender_of(b)?))
        }
        None => None,
    };
    let measure_from = meta
        .and_then(|m| m.measure_from)
        .unwrap_or(f64::NEG_INFINITY);
    let measure_until = meta.and_then(|m| m.measure_until).unwrap_or(f64::INFINITY);

    // Stable by time: ties keep file order.
    hops.sort_by(|a, b| a.1.t.total_cmp(&b.1.t));
    let mut observer = Observer::new(senders, kinds.clone());
    let mut stats = DeliveryStats::new(senders, challenge_idx);
    for (line, h) in &hops {
        let from = *index
            .get(h.from.as_str())
            .ok_or_else(|| bad(*line, format!("unknown node {}", h.from)))?;
        let to = *index
            .get(h.to.as_str())
            .ok_or_else(|| bad(*line, format!("unknown node {}", h.to)))?;
        let linked = linked_input.get(&h.pkt).copied();
        let delivered = observer
            .hop(from, to, h.pkt, linked)
            .map_err(|reason| bad(*line, reason))?;
        if let Some(dist) = delivered
            && let Some(t) = delivery_truth.get(&h.pkt)
            && (measure_from..measure_until).contains(&t.sent)
        {
            let sender = match index.get(t.sender.as_str()).map(|i| &kinds[*i]) {
                Some(NodeKind::Client { sender }) => *sender,
                _ => {
                    return Err(bad(
                        *line,
                        format!("truth sender {} is not a client", t.sender),
                    ));
                }
            };
            stats.record(dist, sender, h.t - t.sent);
        }
    }
    let count = |f: fn(&NodeKind) -> bool| kinds.iter().filter(|k| f(k)).count();
    Ok(TraceReport {
        records: records.len(),
        hops: hops.len(),
        nodes: (
            count(|k| matches!(k, NodeKind::Client { .. })),
            count(|k| matches!(k, NodeKind::Mix { .. })),
            count(|k| matches!(k, NodeKind::Mailbox)),
        ),
        corrupt: opts.corrupt.clone(),
        metrics: stats.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::network::{NetworkParams, simulate_traced};

    fn simulated_trace(corrupt: u32) -> (Vec<u8>, crate::analyze::network::NetworkReport) {
        let p = NetworkParams {
            layers: 3,
            width: 2,
            rate: 150.0,
            delay: 0.05,
            senders: 12,
            duration: 8.0,
            corrupt,
            seed: 4,
        };
        let mut w = TraceWriter::new(Vec::new());
        let report = simulate_traced(&p, Some(&mut w)).expect("simulates");
        (w.finish().expect("in memory"), report)
    }

    #[test]
    fn simulated_trace_parses_and_replays_to_the_simulations_metrics() {
        let (bytes, sim) = simulated_trace(0);
        let records = read_records(bytes.as_slice()).expect("parses");
        let r = analyze(&records, &TraceOptions::default()).expect("analyses");
        assert_eq!(r.nodes, (12, 6, 12));
        assert_eq!(r.hops, sim.sent * 4);
        let (a, b) = (&r.metrics, &sim.metrics);
        assert_eq!(a.messages, b.messages);
        assert!(a.messages > 500);
        assert!(a.entropy_bits.is_finite() && a.entropy_bits > 2.0, "{a:?}");
        assert!(
            (a.entropy_bits - b.entropy_bits).abs() < 1e-9,
            "{a:?} vs {b:?}"
        );
        assert!((a.epsilon.mean - b.epsilon.mean).abs() < 1e-9);
        assert!((a.latency.p99 - b.latency.p99).abs() < 1e-9);
    }

    #[test]
    fn corrupt_relays_in_a_trace_lower_anonymity() {
        let (bytes, _) = simulated_trace(0);
        let records = read_records(bytes.as_slice()).expect("parses");
        let honest = analyze(&records, &TraceOptions::default())
            .expect("analyses")
            .metrics;
        let one = TraceOptions {
            corrupt: vec!["m1.0".into()],
            challenge: None,
        };
        let some = analyze(&records, &one).expect("analyses").metrics;
        let all_names = ["m0.0", "m0.1", "m1.0", "m1.1", "m2.0", "m2.1"];
        let all = TraceOptions {
            corrupt: all_names.iter().map(|s| s.to_string()).collect(),
            challenge: None,
        };
        let every = analyze(&records, &all).expect("analyses").metrics;
        assert!(
            some.entropy_bits < honest.entropy_bits,
            "{some:?} {honest:?}"
        );
        assert_eq!(every.entropy_bits, 0.0);
        assert_eq!(every.top1_success, 1.0);
    }

    #[test]
    fn ground_truth_can_live_in_a_separate_file() {
        let (bytes, _) = simulated_trace(0);
        let text = String::from_utf8(bytes).expect("utf8");
        let (truth, observed): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.contains("\"type\":\"truth\""));
        let mut records = read_records(observed.join("\n").as_bytes()).expect("parses");
        let without = analyze(&records, &TraceOptions::default()).expect("analyses");
        assert_eq!(
            without.metrics.messages, 0,
            "nothing to score without truth"
        );
        records.extend(read_records(truth.join("\n").as_bytes()).expect("parses"));
        let with = analyze(&records, &TraceOptions::default()).expect("analyses");
        assert!(with.metrics.messages > 500);
    }

    #[test]
    fn malformed_traces_are_errors_with_line_numbers() {
        let unknown = "{\"type\":\"node\",\"id\":\"c0\",\"role\":\"client\"}\n{\"type\":\"hop\",\"t\":1.0,\"from\":\"c0\",\"to\":\"m9\",\"pkt\":1}\n";
        let recs = read_records(unknown.as_bytes()).expect("parses");
        match analyze(&recs, &TraceOptions::default()) {
            Err(Error::BadTrace { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        match read_records("{\"type\":\"hop\",\"t\":1.0}\n".as_bytes()) {
            Err(Error::BadTrace { line: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        let empty_mix = "{\"type\":\"node\",\"id\":\"m\",\"role\":\"mix\"}\n{\"type\":\"node\",\"id\":\"b\",\"role\":\"mailbox\"}\n{\"type\":\"hop\",\"t\":1.0,\"from\":\"m\",\"to\":\"b\",\"pkt\":1}\n";
        let recs = read_records(empty_mix.as_bytes()).expect("parses");
        assert!(matches!(
            analyze(&recs, &TraceOptions::default()),
            Err(Error::BadTrace { line: 3, .. })
        ));
        let future = "{\"type\":\"meta\",\"version\":99}\n";
        let recs = read_records(future.as_bytes()).expect("parses");
        assert!(analyze(&recs, &TraceOptions::default()).is_err());
    }
}
