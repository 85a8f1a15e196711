//! Link frames as a relay or client decodes them, and Noise handshake messages.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spore_protocol::link::{Frame, LinkHandshake};

fuzz_target!(|data: &[u8]| {
    let _ = Frame::decode(data);
    if let Ok(mut hs) = LinkHandshake::responder(&[9u8; 32]) {
        let _ = hs.read_message(data);
    }
});
