//! The replay cache's cost per packet (not a timed test; prints one line):
//! marking a tag on a Sphinx worker (memory) and persisting it in the group-commit thread
//! (groups of 512, one fdatasync each).
//!
//! Forwarding throughput, the bare unwrap floor, latency and the mailbox store are measured by
//! `spore bench relay|latency|mailbox` (crate `spore-bench`, see docs/benchmarks.md).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let replay = spore_relay::ReplayCache::open(dir.path(), 0).unwrap();
    let tags: Vec<[u8; 32]> = (0..100_000).map(|_| rand::random()).collect();
    let t0 = Instant::now();
    let marked: Vec<(u64, [u8; 16])> = tags
        .iter()
        .map(|t| (1, replay.mark(1, t).unwrap()))
        .collect();
    let mark_us = t0.elapsed().as_secs_f64() * 1e6 / tags.len() as f64;
    let t0 = Instant::now();
    for chunk in marked.chunks(512) {
        replay.persist(chunk).unwrap();
    }
    let persist_us = t0.elapsed().as_secs_f64() * 1e6 / tags.len() as f64;
    println!(
        "replay tags:     {mark_us:>9.2} us per tag on a worker (memory), \
         {persist_us:.2} us in the commit thread (groups of 512, one fdatasync each)"
    );
}
