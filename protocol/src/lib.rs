//! # spore-protocol
//!
//! Everything Spore puts on a wire or on a disk, and nothing else: this crate never opens a
//! socket, reads a clock or touches a file. Relays (`spore-relay`) and clients (`spore-client`)
//! feed it bytes and a `now`, and get typed values or typed errors back.
//!
//! The data path, in the order a federation request travels it:
//! [`Bundle`] (the opaque signed request) → compressed and padded to a size class →
//! [`fragment`]s → each [`seal`]ed to the recipient's mailbox key → placed with a SURB-ack in a
//! Sphinx packet ([`packet`]) routed entry → 3 mix layers → mailbox relay → carried hop to hop
//! in fixed-size [`link`] frames over Noise → stored, pulled (the [`pull`] session, both
//! halves), opened and reassembled.
//! Relays and routes are found in the signed [`directory`], which also holds the one rule for
//! trusting fetched directory bytes ([`directory::Trust`]) and what an authority builds; the
//! bytes themselves are fetched by `spore-directory-fetch`. Randomness comes from the caller:
//! functions that need it take an `rng`.
#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed test, not a remote crash. Library code is still
// checked without `cfg(test)`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bundle;
pub mod capability;
pub mod codec;
pub mod directory;
pub mod error;
pub mod fragment;
pub mod ids;
pub mod link;
pub mod packet;
pub mod params;
pub mod pull;
pub mod route;
pub mod seal;

pub use bundle::{Bundle, BundleBody, FederationRequest, FederationResponse, pack, unpack};
pub use capability::{CapabilityId, CapabilityOp};
pub use directory::{
    AuthoritySignature, DescriptorFields, Directory, NetworkParams, RelayDescriptor, Roles,
    SphinxKey,
};
pub use error::{ApiMisuse, Error, InvalidMessage, PeerMisbehaved, Result};
pub use fragment::{Fragment, MessageId, Reassembled, Reassembler, ReassemblyLimits};
pub use ids::{MailboxId, MailboxKey, RelayId, SporeAddress};
pub use link::{
    Frame, LinkErrorCode, LinkHandshake, LinkOpener, LinkSealer, LinkTransport, MailboxItem,
    PullSlot,
};
pub use packet::{
    IncomingPacket, PacketLimits, PreparedPacket, RouteHop, SurbRecovery, Unwrapped, build_packet,
};
