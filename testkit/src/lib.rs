//! # spore-testkit
//!
//! What Spore's tests share, written once. It sits on top of every crate in the data path
//! (protocol <- relay, client <- testkit) and below the crates that test them (`spore-relay`'s
//! and `spore-tools`' integration tests, the whole-network tests in `tests/`), `spore-bench`,
//! and the `spore` CLI's `demo` and `testnet` commands, which run the same loopback network:
//!
//! * [`Testnet`]: a whole network (directory authority, mailbox relays, three mix layers) in
//!   this process on loopback, with ready-made client configs.
//! * [`TestRelay`]: one in-process relay on `127.0.0.1:0` that restarts on the same data;
//!   [`relay_process`]: the real `spore-relay` binary as a child process.
//! * [`pull`]/[`delete`] and friends: the owner's side of a mailbox over a raw link;
//!   [`plain_packet`], [`acked_packet`]: packets built as a client builds them.
//! * [`wait_until`], [`within`]: deadlines for what a test cannot be told about.
//! * [`binaries`]: `spore-relay`, `spore-sidecar` and `spore` located next to the test
//!   executable and built on demand, so `cargo test --workspace` passes on a fresh clone.
//! * [`StubHomeserver`], [`Observer`]: a homeserver that records what it receives, and a
//!   passive observer of a client's encrypted link.
//! * [`netns`], [`link_stage`]: hosts of their own in network namespaces on a bridge, and a
//!   delay/loss stage on their links, for the multi-host test (root only).
//! * [`SidecarNode`] and [`Testnet::write_sidecar_config`]: a `spore-sidecar` config for a
//!   node of the network.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use spore_testkit::{Testnet, TestnetConfig};
//! use spore_client::Transport;
//!
//! let net = Testnet::start(TestnetConfig::default()).await?;
//! let mailboxes = net.mailbox_relays();
//! let alice = Transport::start(net.client_config("alice.example", mailboxes[0], "/tmp/alice")).await?;
//! let bob = Transport::start(net.client_config("bob.example", mailboxes[1], "/tmp/bob")).await?;
//! // alice.send(&bob.address(), request).await?; bob.incoming().await?; ...
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod binaries;
mod homeserver;
pub mod link_stage;
pub mod netns;
mod observer;
mod packets;
mod pull;
pub mod relay_process;
mod sidecar_config;
mod test_relay;
mod testnet;
mod wait;

pub use homeserver::StubHomeserver;
pub use observer::{LinkRecord, Observer, TimingStats};
pub use packets::{
    acked_packet, acked_packet_with_ids, packet_frame, packet_to, plain_packet, send_and_close,
    write_packets,
};
pub use pull::{PullError, delete, drain, pull, try_delete, try_pull};
pub use sidecar_config::{SidecarNode, SidecarRates};
pub use test_relay::TestRelay;
pub use testnet::{RelayRole, Testnet, TestnetConfig, TestnetError, signed_directory};
pub use wait::{wait_until, within};
