//! # spore-relay
//!
//! The daemon volunteers run, and a library to run it in-process. It sits in the middle of the
//! Spore data path: clients' Sphinx packets arrive on Noise links (`listener`, `handler`,
//! `connection`), enter the unwrap queue (`ingress`), a pool of worker threads unwraps one
//! layer each and drops replays (`mix`, `replay`), the packet is held for the delay its header asks for and forwarded on a pooled
//! link to the next hop named in the header and found in the signed directory (`forward`,
//! `delay_queue`, `link_pool`). At the last hop the mailbox role stores the still-sealed payload
//! durably in segment files (`store`), releases the sender's SURB-ack, and later hands the
//! payload to the mailbox's owner, and only to it (`mailbox`). Modules are private; what
//! callers use is the flat list below.
//!
//! Promises: every network input is bounded and never panics the relay; nothing is forwarded
//! or acknowledged before its replay tag and payload are on disk (one group commit per batch);
//! every queue is bounded and overload drops (and counts) rather than grows; info-level logs
//! name no client address, mailbox id or per-packet timing.
//!
//! In-process use (tests, tools): build a [`RelayConfig`] (e.g. [`RelayConfig::for_test`]),
//! then [`Relay::start`] returns a [`RunningRelay`] with the bound address, the descriptor,
//! a metrics snapshot and `shutdown()`. Talk to it with [`Link`].
//!
//! ## What a peer on a link can rely on
//!
//! * Entry relays take `Packet` frames from any key; other relays only from keys that are a
//!   relay's `link_key` in the directory (`Error { NotAuthorized }`, then close). A relay with
//!   neither the entry nor the mailbox role says so right after the handshake.
//! * Links are counted per address prefix (/24, /64; `limits.max_connections_per_ip`).
//!   Listed relays have reserved slots. When every other slot is taken and a connection
//!   waits, the link quiet longest (no frame but `Padding` for over a second) is closed. A
//!   client link may hold at most 1/8 of the delay queue (`delay_share_full`).
//! * Packets over the per-link token bucket (`limits.packets_per_sec`, `limits.packet_burst`)
//!   are dropped silently (counted). A `PullRequest` costs `PULL_SLOTS` tokens; without them
//!   the relay answers `Error { RateLimited }` and keeps the link.
//! * `PullRequest` → exactly `PULL_SLOTS` `PullSlot` frames (index 0..16, items oldest first,
//!   then `item: None`); on a relay without the mailbox role → `Error { NotAuthorized }`.
//!   `Delete { handles }` → `DeleteDone { count }` once the deletion is on disk; handles of
//!   other mailboxes count nothing. Pulling deletes nothing. The relay's half of this
//!   conversation is `spore_protocol::pull::RelayPull`.
//! * A link that sends nothing for `limits.idle_timeout_secs` (default 300 s), or no first
//!   frame within 10 s, is closed; send `Padding` to keep it. Any record that fails to decrypt or parse closes the link.
//! * Sphinx keys are fresh random per epoch and erased after it (forward secrecy,
//!   `epoch_keys`); a graceful stop keeps the delay queue for the next start
//!   (`held_packets`). Packets for the current epoch, the previous one during `mix.grace_secs`
//!   after a rotation and the next one during `mix.grace_secs` before it are accepted.
#![forbid(unsafe_code)]

mod admission;
mod clock;
mod config;
mod connection;
mod cover;
mod delay_queue;
mod descriptor;
mod directory;
mod epoch_keys;
mod error;
mod final_hop_output;
mod forward;
mod handler;
mod held_packets;
mod ingress;
mod keys;
mod link_pool;
mod listener;
mod loop_monitor;
mod mailbox;
mod metrics;
mod mix;
mod private_files;
mod publish;
mod quarantine;
mod relay;
mod replay;
mod shutdown;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    DirectoryConfig, LimitsConfig, MailboxConfig, MixConfig, RelayConfig, RolesConfig, Template,
};
pub use connection::{FrameReader, FrameWriter, Link, accept_handshake, connect_handshake};
pub use delay_queue::{DelayQueue, precise_timers};
pub use descriptor::build as build_descriptor;
pub use directory::{DirectorySource, MemoryDirectory, NetworkView, RelayInfo, Trust};
pub use epoch_keys::EpochKeys;
pub use error::{RelayError, Result, UtcTime};
pub use keys::{KeySchedule, RelayKeys};
pub use metrics::{Health, Metrics, MetricsSnapshot, RelayDescription, Stage};
pub use relay::{Relay, RunningRelay};
pub use replay::ReplayCache;
pub use shutdown::{Shutdown, os_signal};
pub use store::{Database, MailboxLimits, MailboxStore};
