//! What a directory authority does with descriptors, without the files and sockets around it:
//! [`build`] checks and signs one epoch's document (the CLI's `spore directory show`
//! summarises one for a human).
//! Several authorities sign the same document independently ([`Directory::sign`]); a reader
//! accepts it when enough of the authorities it trusts have signed ([`super::Trust`]).

use ed25519_dalek::SigningKey;
use thiserror::Error;

use super::{Directory, NetworkParams, RelayDescriptor};
use crate::error::{Error, InvalidMessage};

/// Why an authority refused to build a directory.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("invalid network parameters")]
    Params(#[source] InvalidMessage),
    /// Named so the operator knows which relay's descriptor to look at.
    #[error("descriptor of relay {relay} does not verify")]
    Descriptor {
        relay: String,
        #[source]
        source: Error,
    },
    #[error("cannot sign the directory")]
    Sign(#[source] Error),
}

/// Builds and signs the directory for the epoch containing `now_unix`. Descriptors that do
/// not verify are refused with the relay's name, not silently skipped: an operator must know.
pub fn build(
    descriptors: Vec<RelayDescriptor>,
    params: NetworkParams,
    key: &SigningKey,
    now_unix: u64,
    valid_secs: u64,
) -> Result<Directory, BuildError> {
    params.validate().map_err(BuildError::Params)?;
    for d in &descriptors {
        d.verify(now_unix)
            .map_err(|source| BuildError::Descriptor {
                relay: d.id.short(),
                source,
            })?;
    }
    let mut dir = Directory {
        epoch: now_unix / params.epoch_length_secs,
        valid_after: now_unix,
        valid_until: now_unix.saturating_add(valid_secs),
        params,
        relays: descriptors,
        signatures: Vec::new(),
    };
    dir.sign(key).map_err(BuildError::Sign)?;
    Ok(dir)
}
