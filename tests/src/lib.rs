//! # spore-tests
//!
//! Cross-crate integration tests: whole networks of real relays and clients on loopback,
//! crash and fault tests, hostile input. The shared harness lives here; the tests live in
//! `tests/tests.rs` and its modules.
#![forbid(unsafe_code)]
