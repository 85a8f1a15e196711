//! Integration tests for spore-relay: real relays on 127.0.0.1 over real TCP and Noise links.
//! One test binary; each module is one promise area. The helpers (in-process relays, the relay
//! process, pull/delete, packet builders) come from `spore-testkit`.
#![allow(clippy::unwrap_used)]

#[path = "relay/hostile.rs"]
mod hostile;
#[path = "relay/keys.rs"]
mod keys;
#[path = "relay/liveness.rs"]
mod liveness;
#[path = "relay/lockout.rs"]
mod lockout;
#[path = "relay/loops.rs"]
mod loops;
#[path = "relay/mailbox.rs"]
mod mailbox;
#[path = "relay/mix.rs"]
mod mix;
#[path = "relay/network.rs"]
mod network;
#[path = "relay/operator.rs"]
mod operator;
#[path = "relay/ops.rs"]
mod ops;
#[path = "relay/output.rs"]
mod output;
#[path = "relay/process.rs"]
mod process;
