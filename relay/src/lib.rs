//! # spore-relay
//!
//! The daemon volunteers run. Mix role: accept fixed-size Sphinx packets, unwrap one layer,
//! drop replays, hold each packet for its delay, forward it. Mailbox role: durably store sealed
//! payloads for offline recipients and release them to their authenticated owner.
#![forbid(unsafe_code)]
