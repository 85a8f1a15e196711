//! # spore-authority
//!
//! A directory authority as a long-running service (`spore authority run`). It sits at the
//! start of the directory's data path: relays upload their signed descriptors to it
//! (`POST /descriptor`), and for each epoch the configured authorities agree on one document,
//! each sign it, and publish it threshold-signed at `GET /directory`, where relays, clients
//! and mirrors fetch it (`spore-directory-fetch`). The document format, building and
//! verification are `spore_protocol::directory`'s; this crate adds the uploads, the schedule,
//! the exchange between authorities and the HTTP server (hyper).
//!
//! ## One epoch (length `L`), producing the document for epoch `N + 1` during epoch `N`
//!
//! * **Uploads, all the time.** A relay's descriptor is checked at once (structure, its own
//!   signature, its validity window) and kept, the latest per relay. A bad upload gets a 4xx
//!   with the reason and changes nothing; bodies and the number of relays held are bounded.
//! * **Vote at `0.35 L`.** The authority takes the descriptors it holds that are valid at
//!   that instant, stay valid to the end of epoch `N + 1` and carry a key for it, probes each
//!   relay's link address (a TCP connect, 5 s or `L/20` at most), and freezes those that
//!   answered into a vote: a [`Directory`] signed by itself alone, served at `GET /vote/{N+1}`.
//! * **Consensus from `0.45 L`.** It fetches the other authorities' votes (until all answered
//!   or `0.55 L`), checks each against that authority's key, and applies one rule: *a relay
//!   is listed if a majority of the authorities that voted saw a valid descriptor for it and
//!   found it reachable*; when votes carry different descriptors of one relay, the most
//!   recently published wins (ties by bytes). The result is a deterministic function of the
//!   votes, so authorities that saw the same votes build byte-identical documents. Each signs it and serves its
//!   signature at `GET /signature/{N+1}`.
//! * **Publish.** It collects the others' signatures over the same document, and once it holds
//!   `threshold` of them serves the document at `GET /directory` (valid from `N L + L/4` to
//!   the end of epoch `N + 1`), adding signatures as they arrive; until then the previous
//!   document is served. One authority down costs its signature and its vote, nothing else,
//!   while a threshold remains.
//!
//! ## What it does not defend against
//!
//! * **A majority of authorities colluding**: they can list whom they like (e.g. only their
//!   own relays) and sign it. Trust in the directory is trust in the authority majority.
//! * **Split views from network faults**: authorities that did not see the same votes build
//!   different documents; if no document reaches the threshold that epoch, nothing new is
//!   published and readers keep the previous one until it expires (relays warn). There is no
//!   second round.
//! * **Sybil relays**: anyone can upload a descriptor; nothing limits relays per operator.
//! * **Liveness lies**: listing means "a majority of the voters received a valid signed
//!   descriptor and could open a TCP connection to its address", not "the relay forwards
//!   packets"; a relay that answers probes and drops packets stays listed, and a majority of
//!   voters can drop any relay by claiming it did not answer (docs/operating.md, Liveness).
//! * **Denial of service on the HTTP endpoints** beyond body, relay-count and connection-time
//!   bounds (no rate limiting per client, no TLS: the documents are signed, the transport is
//!   not trusted).
//! * **Clock disagreement** beyond a few seconds between authorities: the schedule is by wall
//!   clock; keep authorities on NTP.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod consensus;
mod schedule;
mod service;

pub use config::{AuthorityConfig, ConfigError, ParamsSection, PeerConfig};
pub use consensus::{consensus, majority};
pub use schedule::Schedule;
pub use service::{MAX_DESCRIPTOR_BYTES, RunningAuthority, ServiceError, start};

use spore_protocol::directory::Directory;
