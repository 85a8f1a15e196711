//! What a directory authority does with descriptors, without the files and sockets around it:
//! [`build`] checks and signs one epoch's document, [`describe`] summarises one for a human.
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

/// A human summary of a directory document.
pub fn describe(dir: &Directory) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let p = &dir.params;
    let _ = writeln!(
        s,
        "epoch {}  valid {}..{}  {} relays  {} signature(s)",
        dir.epoch,
        dir.valid_after,
        dir.valid_until,
        dir.relays.len(),
        dir.signatures.len()
    );
    let _ = writeln!(
        s,
        "params: mu={} /s (mean {:.1} ms/hop)  lambda_p={} lambda_l={} lambda_d={} lambda_m={}  packet={} B  epoch={} s  max_delay={} ms  pull={} ms",
        p.mu,
        1000.0 / p.mu,
        p.lambda_p,
        p.lambda_l,
        p.lambda_d,
        p.lambda_m,
        p.packet_size,
        p.epoch_length_secs,
        p.max_delay_ms,
        p.pull_interval_ms
    );
    for r in &dir.relays {
        let mut roles = Vec::new();
        if r.roles.entry {
            roles.push("entry");
        }
        if r.roles.mix {
            roles.push("mix");
        }
        if r.roles.mailbox {
            roles.push("mailbox");
        }
        let _ = writeln!(
            s,
            "  relay {}  {:<21}  {:<18} layer {}  keys for epochs {:?}",
            r.id.short(),
            r.address,
            roles.join("+"),
            r.layer,
            r.sphinx_keys.iter().map(|k| k.epoch).collect::<Vec<_>>()
        );
    }
    for sig in &dir.signatures {
        let _ = writeln!(
            s,
            "  signed by authority {}",
            hex::encode(&sig.authority[..6])
        );
    }
    s
}
