//! Both halves of the pull session driven by a hostile byte stream: frames out of order, too
//! many or too few slots, stray deletes, foreign handles. No panic; a pull is answered with
//! exactly PULL_SLOTS slots and never yields more than PULL_SLOTS items.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spore_protocol::link::{Frame, MailboxItem, PullSlot};
use spore_protocol::params::{PAYLOAD_SIZE, PULL_SLOTS};
use spore_protocol::pull::{ClientPull, RelayPull};

fn item(handle: u8) -> MailboxItem {
    MailboxItem {
        handle: u64::from(handle),
        surb_id: [handle; 16],
        payload: Box::new([handle; PAYLOAD_SIZE]),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut client = ClientPull::new();
    let mut relay = RelayPull::new();
    let mut bytes = data.iter().copied();
    while let (Some(op), Some(arg)) = (bytes.next(), bytes.next()) {
        match op % 8 {
            // An honest round trip of one pull.
            0 => {
                if let Ok(request) = client.start() {
                    let items = (0..arg % (PULL_SLOTS as u8 + 4)).map(item).collect();
                    match relay.clone().answer(&request, items) {
                        Ok((next, slots)) => {
                            assert_eq!(slots.len(), PULL_SLOTS);
                            relay = next;
                            for slot in slots {
                                if let Ok(Some(items)) = client.handle_frame(slot) {
                                    assert!(items.len() <= PULL_SLOTS);
                                }
                            }
                        }
                        Err(_) => client.reset(),
                    }
                }
            }
            // A hostile slot.
            1 => {
                let slot = PullSlot {
                    index: arg,
                    item: (arg & 1 == 1).then(|| item(arg)),
                };
                if let Ok(Some(items)) = client.handle_frame(Frame::PullSlot(slot)) {
                    assert!(items.len() <= PULL_SLOTS);
                }
            }
            2 => {
                let _ = client.handle_frame(Frame::DeleteDone {
                    count: u32::from(arg),
                });
            }
            3 => {
                let handles = (0..arg % 4).map(|h| u64::from(h.wrapping_add(arg))).collect();
                if let Ok(delete) = client.delete(handles) {
                    match relay.clone().handle_delete(&delete) {
                        Ok((next, _)) => relay = next,
                        Err(_) => relay = RelayPull::new(),
                    }
                }
            }
            4 => {
                let handles = (0..arg % 4).map(|h| u64::from(h ^ arg)).collect();
                relay = match relay.handle_delete(&Frame::Delete { handles }) {
                    Ok((next, _)) => next,
                    Err(_) => RelayPull::new(),
                };
            }
            5 => {
                let items = (0..arg % (PULL_SLOTS as u8 + 4)).map(item).collect();
                relay = match relay.answer(&Frame::PullRequest, items) {
                    Ok((next, slots)) => {
                        assert_eq!(slots.len(), PULL_SLOTS);
                        next
                    }
                    Err(_) => RelayPull::new(),
                };
            }
            6 => client.reset(),
            _ => {
                let _ = client.handle_frame(Frame::Padding);
                let _ = client.handle_frame(Frame::PullRequest);
            }
        }
    }
});
