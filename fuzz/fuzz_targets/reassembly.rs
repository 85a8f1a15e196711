//! A stream of hostile fragments into one reassembler, and through the admission rule into a
//! model of the client's durable store (fragment-counted tables, as `Store::put_fragment`
//! keeps them): bounded memory, no panic.
#![no_main]
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use spore_protocol::fragment::{
    Admission, Capacity, Fragment, Held, HoldUnit, Reassembler, ReassemblyLimits, Refusal, admit,
};

const MAX_MESSAGES: usize = 8;
const MAX_FRAGMENTS_HELD: usize = 64;

/// The durable store's tables, in memory.
#[derive(Default)]
struct StoreModel {
    done: HashSet<[u8; 16]>,
    partial: HashMap<[u8; 16], (u16, usize, BTreeMap<u16, Vec<u8>>)>,
    fragments: usize,
}

impl StoreModel {
    fn put(&mut self, f: &Fragment) -> Result<Admission, Refusal> {
        let partial = self.partial.get(&f.message_id);
        let held = Held {
            completed: self.done.contains(&f.message_id),
            partial: partial.map(|(c, d, _)| (*c, *d)),
            at_index: partial
                .and_then(|(_, _, r)| r.get(&f.index))
                .map(Vec::as_slice),
        };
        let admission = admit(f, &held)?;
        match admission {
            Admission::Duplicate => {}
            Admission::Complete => {
                self.done.insert(f.message_id);
            }
            Admission::Hold { new_message } => {
                Capacity {
                    messages: self.partial.len(),
                    max_messages: MAX_MESSAGES,
                    held: self.fragments,
                    max_held: MAX_FRAGMENTS_HELD,
                    unit: HoldUnit::Fragments,
                }
                .check(f, new_message)?;
                let entry = self
                    .partial
                    .entry(f.message_id)
                    .or_insert_with(|| (f.count, f.data.len(), BTreeMap::new()));
                entry.2.insert(f.index, f.data.clone());
                self.fragments += 1;
                if entry.2.len() == usize::from(entry.0) {
                    if let Some((_, _, r)) = self.partial.remove(&f.message_id) {
                        self.fragments -= r.len();
                    }
                    self.done.insert(f.message_id);
                }
            }
        }
        Ok(admission)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(ReassemblyLimits {
        max_messages: 8,
        max_bytes: 64 * 1024,
        ttl: Duration::from_secs(60),
        max_completed: 16,
    });
    let mut store = StoreModel::default();
    let now = Instant::now();
    // Fragments of 8 data bytes each: header (20) + 8.
    for (i, chunk) in data.chunks(28).enumerate() {
        if let Ok(f) = Fragment::decode(chunk, 8) {
            // Validity is stateless: what the rule calls invalid, the reassembler refuses.
            if let Err(Refusal::Invalid(_)) = store.put(&f) {
                assert!(r.insert(f, now).is_err());
                continue;
            }
            let _ = r.insert(f, now + Duration::from_millis(i as u64));
        }
    }
    assert!(r.pending_bytes() <= 64 * 1024);
    assert!(store.partial.len() <= MAX_MESSAGES);
    assert!(store.fragments <= MAX_FRAGMENTS_HELD);
    let _ = r.expire(now + Duration::from_secs(3600));
});
