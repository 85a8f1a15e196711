//! Relay descriptors, the signed directory document, and what readers do with it.
//!
//! A relay describes itself in a [`RelayDescriptor`] signed with its ed25519 identity key (the
//! key that is also its [`RelayId`](crate::RelayId)): where to reach it, which roles it plays,
//! its Noise link key and its Sphinx keys for the current and next epoch. Directory authorities
//! collect the descriptors into a [`Directory`] with the network-wide [`NetworkParams`]
//! ([`build`]) and each sign it; clients and relays accept a document only if enough trusted
//! authorities did ([`Trust::verify_bytes`], over [`Directory::verify`]). Relays keep it as a
//! [`NetworkView`] of lookup tables. Fetching the bytes is I/O and lives in
//! `spore-directory-fetch`.
//!
//! Encodings are versioned, have exactly one form (no trailing bytes, unknown bits or values
//! rejected) and are what the signatures cover, so a document that parses and verifies means
//! the same thing to everyone.

mod authority;
mod descriptor;
mod document;
mod params;
mod trust;
mod view;

pub use authority::{BuildError, build};
pub use descriptor::{DescriptorFields, RelayDescriptor, Roles, SphinxKey};
pub use document::{AuthoritySignature, Directory};
pub use params::NetworkParams;
pub use trust::{BadAuthorityKey, Trust};
pub use view::{NetworkView, RelayInfo};

/// Longest `host:port` a descriptor may carry.
pub const MAX_ADDRESS_LEN: usize = 255;
/// A relay publishes its current Sphinx key and, ahead of rotation, the next one.
pub const MAX_SPHINX_KEYS: usize = 2;
/// Most relays one directory lists; bounds parsing memory (a descriptor is under 500 bytes).
pub const MAX_RELAYS: usize = 4096;
/// Most authority signatures one directory carries.
pub const MAX_AUTHORITY_SIGNATURES: usize = 16;

const DESCRIPTOR_DOMAIN: &[u8] = b"spore/descriptor/v1";
const DIRECTORY_DOMAIN: &[u8] = b"spore/directory/v1";
const DESCRIPTOR_VERSION: u8 = 1;
const DIRECTORY_VERSION: u8 = 1;

#[cfg(test)]
mod tests;
