//! What a recipient does with an opened message: unpad, decompress (bomb-proof), decode.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spore_protocol::bundle::{Bundle, unpack};

fuzz_target!(|data: &[u8]| {
    let _ = unpack(data);
    let _ = Bundle::decode(data);
    let _ = spore_protocol::seal::open(&x25519_dalek::StaticSecret::from([3u8; 32]), data);
});
