//! Sender tests.
