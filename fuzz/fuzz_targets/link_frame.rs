//! A link's incoming bytes as a relay or client decodes them: arbitrary bytes cut into
//! arbitrary chunks and fed to the one `LinkDecoder`, first as handshake messages (handed to a
//! responder handshake), then as transport records (opened under a real link's keys), and the
//! whole input as one frame. Nothing may panic, and the decoder never holds more than one
//! partial item beyond what it was given.
#![no_main]
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use spore_protocol::link::{
    Frame, HANDSHAKE_MAX_LEN, LinkDecoder, LinkHandshake, LinkOpener, WIRE_FRAME_LEN,
};

/// The receiving half of one real link. Random records never authenticate, so its nonce never
/// moves and one opener serves every input.
fn opener() -> &'static Mutex<LinkOpener> {
    static OPENER: OnceLock<Mutex<LinkOpener>> = OnceLock::new();
    OPENER.get_or_init(|| {
        let mut client = LinkHandshake::initiator(&[1u8; 32], None).expect("initiator");
        let mut relay = LinkHandshake::responder(&[2u8; 32]).expect("responder");
        relay
            .read_message(&client.write_message().expect("msg 1"))
            .expect("read 1");
        client
            .read_message(&relay.write_message().expect("msg 2"))
            .expect("read 2");
        relay
            .read_message(&client.write_message().expect("msg 3"))
            .expect("read 3");
        let (transport, _) = relay.into_transport().expect("transport");
        Mutex::new(transport.split().1)
    })
}

/// Cuts `stream` into chunks whose sizes come from `sizes` (cycled), as TCP might deliver it.
fn chunks<'a>(sizes: &'a [u8], mut stream: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut sizes = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if stream.is_empty() {
            return None;
        }
        let n = sizes
            .next()
            .map_or(stream.len(), |s| usize::from(*s) * 11 + 1)
            .min(stream.len());
        let (chunk, rest) = stream.split_at(n);
        stream = rest;
        Some(chunk)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = Frame::decode(data);

    let (sizes, stream) = data.split_at(data.len().min(4));

    let mut decoder = LinkDecoder::new();
    let mut hs = LinkHandshake::responder(&[9u8; 32]).ok();
    'handshake: for chunk in chunks(sizes, stream) {
        decoder.push(chunk);
        loop {
            match decoder.pop_handshake() {
                Ok(Some(msg)) => {
                    assert!(msg.len() <= HANDSHAKE_MAX_LEN);
                    if let Some(hs) = hs.as_mut() {
                        let _ = hs.read_message(&msg);
                    }
                }
                Ok(None) => break,
                Err(_) => break 'handshake,
            }
        }
        assert!(decoder.buffered() < 2 + HANDSHAKE_MAX_LEN);
        let _ = decoder.handshake_bytes_wanted();
    }
    let _ = decoder.finish();

    let mut opener = opener().lock().unwrap_or_else(|e| e.into_inner());
    let mut decoder = LinkDecoder::new();
    'records: for chunk in chunks(sizes, stream) {
        decoder.push(chunk);
        loop {
            match decoder.pop_frame(&mut opener) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'records,
            }
        }
        assert!(decoder.buffered() < WIRE_FRAME_LEN);
    }
    let _ = decoder.finish();
});
