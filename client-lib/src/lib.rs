//! # spore-client
//!
//! What a homeserver embeds (or runs beside itself as `spore-sidecar`): federation requests go
//! in, leave as padded, delayed, cover-traffic-hidden Sphinx packets, and come back out of the
//! recipient's mailbox exactly once.
#![forbid(unsafe_code)]
