//! # spore-tests
//!
//! Cross-crate integration tests: whole networks of real relays and clients on loopback,
//! crash and fault tests, hostile input. The shared harness lives here ([`Testnet`], a
//! [`StubHomeserver`], a link [`Observer`]); the tests live in `tests/tests.rs` and its
//! modules. `spore demo` builds on the same harness.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use spore_tests::{Testnet, TestnetConfig};
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

mod homeserver;
mod observer;
mod testnet;

pub use homeserver::StubHomeserver;
pub use observer::{LinkRecord, Observer, TimingStats};
pub use testnet::{RelayRole, Testnet, TestnetConfig, TestnetError};
