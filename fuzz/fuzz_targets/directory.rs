//! Directory documents, descriptors and Spore addresses from untrusted sources.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spore_protocol::directory::{Directory, RelayDescriptor};
use spore_protocol::SporeAddress;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Directory::from_bytes(data) {
        let _ = d.verify(&[[1u8; 32]], 1, 0);
    }
    if let Ok(d) = RelayDescriptor::from_bytes(data) {
        let _ = d.verify(0);
    }
    let _ = SporeAddress::from_bytes(data);
});
