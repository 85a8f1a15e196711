//! The relay's signed descriptor, as submitted to the directory authorities.

use crate::config::RelayConfig;
use crate::error::{RelayError, Result};
use crate::keys::RelayKeys;

/// Placeholder until the protocol's descriptor type lands.
#[derive(Debug, Clone)]
pub struct RelayDescriptor;

impl RelayDescriptor {
    pub fn to_bytes(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// Builds and signs the descriptor: identity, address, roles, layer, link key, and the Sphinx
/// public keys of the current and next epochs.
pub fn build(
    config: &RelayConfig,
    keys: &RelayKeys,
    address: &str,
    now_unix: u64,
) -> Result<RelayDescriptor> {
    let _ = (config, keys, address, now_unix);
    Err(RelayError::Directory(
        "descriptor support not built yet".into(),
    ))
}
