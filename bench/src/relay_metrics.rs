//! The latency histograms of a running relay, read from its Prometheus endpoint.
//!
//! `spore bench latency` times packets from outside the relay; these histograms, kept by the
//! relay itself, split the same hops into stages (unwrap queue, commit, delay timer, link), so
//! that a slow p99 can be traced to the stage that caused it. Two scrapes around a load level
//! give that level's own histogram ([`Histogram::since`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::bail;
use crate::error::{Context, Result};
use serde::Serialize;

/// One histogram: upper bounds (the last is +Inf) and cumulative counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    cumulative: Vec<f64>,
}

/// p50 and p99 of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Histogram {
    /// The observations made after `earlier` was scraped.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let cumulative = self
            .cumulative
            .iter()
            .enumerate()
            .map(|(i, c)| c - earlier.cumulative.get(i).copied().unwrap_or(0.0))
            .collect();
        Histogram {
            bounds: self.bounds.clone(),
            cumulative,
        }
    }

    pub fn count(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    /// The `q` quantile in seconds, interpolated linearly inside its bucket (the first bucket
    /// starts at 0; a quantile in the +Inf bucket is reported as the last finite bound).
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total <= 0.0 {
            return 0.0;
        }
        let rank = q * total;
        let mut lower_bound = 0.0;
        let mut lower_count = 0.0;
        for (bound, count) in self.bounds.iter().zip(&self.cumulative) {
            if *count >= rank {
                if bound.is_infinite() {
                    return lower_bound;
                }
                let in_bucket = count - lower_count;
                let frac = if in_bucket > 0.0 {
                    (rank - lower_count) / in_bucket
                } else {
                    1.0
                };
                return lower_bound + frac * (bound - lower_bound);
            }
            lower_bound = *bound;
            lower_count = *count;
        }
        lower_bound
    }

    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            count: self.count() as u64,
            p50_us: self.quantile(0.5) * 1e6,
            p99_us: self.quantile(0.99) * 1e6,
        }
    }
}

/// The relay's per-hop histograms: `added` (its whole added latency) and one per stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayHistograms {
    pub added: Histogram,
    pub stages: BTreeMap<String, Histogram>,
}

impl RelayHistograms {
    /// Fetches and parses the relay's `/metrics`.
    pub fn scrape(addr: SocketAddr) -> Result<Self> {
        Self::parse(&fetch_metrics(addr)?)
    }

    /// Parses an OpenMetrics text exposition; histograms other than the relay's per-hop ones
    /// are ignored.
    pub fn parse(text: &str) -> Result<Self> {
        let mut added: Vec<(f64, f64)> = Vec::new();
        let mut stages: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for line in text.lines() {
            let Some((name, labels, value)) = split_sample(line) else {
                continue;
            };
            let target = match name {
                "spore_relay_added_latency_seconds_bucket" => &mut added,
                "spore_relay_stage_seconds_bucket" => match label(labels, "stage") {
                    Some(stage) => stages.entry(stage.to_string()).or_default(),
                    None => continue,
                },
                _ => continue,
            };
            let le = label(labels, "le").context("histogram bucket without le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()
                    .with_context(|| format!("bad bucket bound {le}"))?
            };
            target.push((bound, value));
        }
        if added.is_empty() {
            bail!("the relay exports no spore_relay_added_latency_seconds histogram");
        }
        Ok(Self {
            added: histogram(added),
            stages: stages.into_iter().map(|(k, v)| (k, histogram(v))).collect(),
        })
    }

    /// What was observed between `earlier` and this scrape.
    pub fn since(&self, earlier: &RelayHistograms) -> RelayHistograms {
        RelayHistograms {
            added: self.added.since(&earlier.added),
            stages: self
                .stages
                .iter()
                .map(|(k, h)| {
                    let before = earlier.stages.get(k).cloned().unwrap_or_default();
                    (k.clone(), h.since(&before))
                })
                .collect(),
        }
    }
}

fn histogram(mut buckets: Vec<(f64, f64)>) -> Histogram {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Histogram {
        bounds: buckets.iter().map(|b| b.0).collect(),
        cumulative: buckets.iter().map(|b| b.1).collect(),
    }
}

/// `name{labels} value` (labels may be absent); None for comments and blank lines.
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    match head.split_once('{') {
        Some((name, rest)) => Some((name, rest.strip_suffix('}')?, value)),
        None => Some((head, "", value)),
    }
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// A plain HTTP/1.1 GET of `/metrics` on a loopback port.
fn fetch_metrics(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the relay's metrics at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let Some((head, text)) = body.split_once("\r\n\r\n") else {
        bail!("malformed metrics response");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "metrics request refused: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE spore_relay_added_latency_seconds histogram
spore_relay_added_latency_seconds_sum 1.0
spore_relay_added_latency_seconds_count 100
spore_relay_added_latency_seconds_bucket{le=\"0.001\"} 50
spore_relay_added_latency_seconds_bucket{le=\"0.002\"} 90
spore_relay_added_latency_seconds_bucket{le=\"0.004\"} 100
spore_relay_added_latency_seconds_bucket{le=\"+Inf\"} 100
spore_relay_stage_seconds_bucket{le=\"0.001\",stage=\"commit\"} 10
spore_relay_stage_seconds_bucket{le=\"+Inf\",stage=\"commit\"} 20
";

    #[test]
    fn reads_quantiles_inside_buckets() {
        let h = RelayHistograms::parse(TEXT).expect("parses");
        assert_eq!(h.added.count(), 100.0);
        assert!((h.added.quantile(0.5) - 0.001).abs() < 1e-12);
        // Rank 99 lies 9/10 of the way through the (2 ms, 4 ms] bucket.
        assert!((h.added.quantile(0.99) - 0.0038).abs() < 1e-9);
        // Half the commits are past the last finite bound: reported as that bound.
        assert_eq!(h.stages["commit"].quantile(0.99), 0.001);
    }

    #[test]
    fn a_difference_of_two_scrapes_is_the_level_between_them() {
        let before = RelayHistograms::parse(TEXT).expect("parses");
        let after = RelayHistograms::parse(&TEXT.replace("} 100", "} 140")).expect("parses");
        let level = after.since(&before);
        assert_eq!(level.added.count(), 40.0);
        // All 40 new observations are in the (2 ms, 4 ms] bucket.
        assert!(level.added.quantile(0.5) > 0.002);
        assert_eq!(level.stages["commit"].count(), 0.0);
    }

    #[test]
    fn refuses_an_exposition_without_the_histogram() {
        assert!(RelayHistograms::parse("# nothing\n").is_err());
    }
}
