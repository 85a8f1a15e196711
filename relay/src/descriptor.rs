//! The relay's signed descriptor, as submitted to the directory authorities.

use spore_protocol::directory::{DescriptorFields, RelayDescriptor, Roles, SphinxKey};

use crate::config::RelayConfig;
use crate::error::Result;
use crate::keys::{KeySchedule, RelayKeys};

/// Builds and signs the descriptor: identity, address, roles, layer, link key, and the Sphinx
/// public keys of the current and next epochs (so senders can build packets for the next
/// epoch before it starts). Valid from `now_unix` for `descriptor_lifetime_secs`.
pub fn build(
    config: &RelayConfig,
    keys: &RelayKeys,
    address: &str,
    now_unix: u64,
) -> Result<RelayDescriptor> {
    let schedule = KeySchedule {
        epoch_length_secs: config.mix.epoch_length_secs,
        grace_secs: config.mix.grace_secs,
    };
    let epoch = schedule.epoch_at(now_unix);
    let sphinx_keys = [epoch, epoch + 1]
        .into_iter()
        .map(|e| SphinxKey {
            epoch: e,
            public: keys.sphinx_public(e).to_bytes(),
        })
        .collect();
    let fields = DescriptorFields {
        address: address.to_owned(),
        roles: Roles {
            entry: config.roles.entry,
            mix: config.roles.mix,
            mailbox: config.roles.mailbox,
        },
        layer: if config.roles.mix { config.layer } else { 0 },
        link_key: keys.link_public(),
        sphinx_keys,
        published_at: now_unix,
        expires_at: now_unix.saturating_add(config.descriptor_lifetime_secs),
    };
    Ok(RelayDescriptor::sign(fields, keys.identity())?)
}
