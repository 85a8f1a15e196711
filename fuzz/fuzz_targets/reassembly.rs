//! A stream of hostile fragments into one reassembler: bounded memory, no panic.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use spore_protocol::fragment::{Fragment, Reassembler, ReassemblyLimits};

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(ReassemblyLimits {
        max_messages: 8,
        max_bytes: 64 * 1024,
        ttl: Duration::from_secs(60),
        max_completed: 16,
    });
    let now = Instant::now();
    // Fragments of 8 data bytes each: header (20) + 8.
    for (i, chunk) in data.chunks(28).enumerate() {
        if let Ok(f) = Fragment::decode(chunk, 8) {
            let _ = r.insert(f, now + Duration::from_millis(i as u64));
        }
    }
    assert!(r.pending_bytes() <= 64 * 1024);
    let _ = r.expire(now + Duration::from_secs(3600));
});
