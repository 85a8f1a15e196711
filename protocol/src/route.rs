//! Choosing routes from the signed directory.
//!
//! Spore uses Loopix's stratified topology: a forward packet goes entry relay → one mix from
//! each of the [`MIX_LAYERS`] layers → the recipient's mailbox relay; a SURB (ack or reply)
//! goes one mix per layer → the SURB owner's mailbox relay. Mixes are picked uniformly and
//! independently per packet, so two packets of one message share nothing but their ends.
//!
//! A client may exclude mixes it has seen drop its loops ([`RouteSelector::excluding`], issue
//! 15/19 route choice): they are skipped while another mix of their layer is usable, and chosen
//! from again only if excluding them would leave a layer empty (a route through a suspect mix
//! beats no route at all).

use std::collections::HashSet;

use rand::Rng;
use rand::seq::IteratorRandom;
use x25519_dalek::PublicKey;

use crate::directory::{Directory, RelayDescriptor};
use crate::error::{ApiMisuse, Result};
use crate::ids::RelayId;
use crate::packet::RouteHop;
use crate::params::MIX_LAYERS;

/// Picks hops for one key epoch of one directory.
///
/// ```
/// # use spore_protocol::route::RouteSelector;
/// # fn demo(dir: &spore_protocol::Directory, entry: spore_protocol::RelayId, mailbox: spore_protocol::RelayId) -> spore_protocol::Result<()> {
/// let routes = RouteSelector::new(dir, dir.epoch);
/// let hops = routes.forward_route(&mut rand::rng(), &entry, &mailbox)?;
/// assert_eq!(hops.len(), spore_protocol::params::FORWARD_HOPS);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RouteSelector<'a> {
    directory: &'a Directory,
    epoch: u64,
    /// Mixes not to choose while their layer has another.
    excluded: Option<&'a HashSet<RelayId>>,
}

impl<'a> RouteSelector<'a> {
    pub fn new(directory: &'a Directory, epoch: u64) -> Self {
        Self {
            directory,
            epoch,
            excluded: None,
        }
    }

    /// The same selector, avoiding the mixes in `excluded` (quarantined for dropping
    /// packets): each layer is chosen from its other mixes, or from all of it if every one is
    /// excluded. Entry and mailbox relays are named by the caller and never excluded.
    ///
    /// ```
    /// # use std::collections::HashSet;
    /// # use spore_protocol::route::RouteSelector;
    /// # fn demo(dir: &spore_protocol::Directory, entry: spore_protocol::RelayId, mailbox: spore_protocol::RelayId, suspect: spore_protocol::RelayId) -> spore_protocol::Result<()> {
    /// let quarantined = HashSet::from([suspect]);
    /// let routes = RouteSelector::new(dir, dir.epoch).excluding(&quarantined);
    /// let hops = routes.forward_route(&mut rand::rng(), &entry, &mailbox)?;
    /// // hops[1..4] avoid `suspect`, unless it is the only mix of its layer.
    /// # let _ = hops;
    /// # Ok(()) }
    /// ```
    pub fn excluding(self, excluded: &'a HashSet<RelayId>) -> Self {
        Self {
            excluded: Some(excluded),
            ..self
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn hop(&self, d: &RelayDescriptor) -> Result<RouteHop> {
        let key = d
            .sphinx_key(self.epoch)
            .ok_or(ApiMisuse::NoRoute("relay has no key for this epoch"))?;
        Ok(RouteHop {
            id: d.id,
            sphinx_key: PublicKey::from(key),
        })
    }

    fn named(&self, id: &RelayId, what: &'static str) -> Result<RouteHop> {
        let d = self.directory.relay(id).ok_or(ApiMisuse::NoRoute(what))?;
        self.hop(d)
    }

    fn mixes<R: Rng + ?Sized>(&self, rng: &mut R, out: &mut Vec<RouteHop>) -> Result<()> {
        for layer in 1..=MIX_LAYERS as u8 {
            let usable = || {
                self.directory
                    .mixes_in_layer(layer)
                    .filter(|d| d.sphinx_key(self.epoch).is_some())
            };
            let preferred = match self.excluded {
                Some(excluded) if !excluded.is_empty() => {
                    usable().filter(|d| !excluded.contains(&d.id)).choose(rng)
                }
                _ => None,
            };
            let d = match preferred {
                Some(d) => d,
                None => usable()
                    .choose(rng)
                    .ok_or(ApiMisuse::NoRoute("a mix layer is empty"))?,
            };
            out.push(self.hop(d)?);
        }
        Ok(())
    }

    /// entry → mix layer 1..=3 → `mailbox_relay`.
    pub fn forward_route<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        entry: &RelayId,
        mailbox_relay: &RelayId,
    ) -> Result<Vec<RouteHop>> {
        let mut hops = Vec::with_capacity(MIX_LAYERS + 2);
        hops.push(self.named(entry, "entry relay not in directory")?);
        self.mixes(rng, &mut hops)?;
        hops.push(self.named(mailbox_relay, "mailbox relay not in directory")?);
        Ok(hops)
    }

    /// mix layer 1..=3 → `mailbox_relay` (where the SURB's owner pulls).
    pub fn surb_route<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        mailbox_relay: &RelayId,
    ) -> Result<Vec<RouteHop>> {
        let mut hops = Vec::with_capacity(MIX_LAYERS + 1);
        self.mixes(rng, &mut hops)?;
        hops.push(self.named(mailbox_relay, "mailbox relay not in directory")?);
        Ok(hops)
    }

    /// A uniformly chosen relay with the mailbox role (where drop cover ends).
    pub fn random_mailbox_relay<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<RelayId> {
        self.directory
            .mailboxes()
            .filter(|d| d.sphinx_key(self.epoch).is_some())
            .choose(rng)
            .map(|d| d.id)
            .ok_or(ApiMisuse::NoRoute("no mailbox relay").into())
    }

    /// A uniformly chosen relay with the entry role.
    pub fn random_entry<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<RelayId> {
        self.directory
            .entries()
            .filter(|d| d.sphinx_key(self.epoch).is_some())
            .choose(rng)
            .map(|d| d.id)
            .ok_or(ApiMisuse::NoRoute("no entry relay").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{DescriptorFields, NetworkParams, Roles, SphinxKey};
    use crate::params::{FORWARD_HOPS, SURB_HOPS};
    use ed25519_dalek::SigningKey;

    fn relay(roles: Roles, layer: u8, port: u16) -> RelayDescriptor {
        let key = SigningKey::from_bytes(&rand::random());
        RelayDescriptor::sign(
            DescriptorFields {
                address: format!("127.0.0.1:{port}"),
                roles,
                layer,
                link_key: [port as u8; 32],
                sphinx_keys: vec![SphinxKey {
                    epoch: 7,
                    public: [port as u8 + 1; 32],
                }],
                published_at: 0,
                expires_at: 100,
            },
            &key,
        )
        .unwrap()
    }

    fn directory(width: u16) -> Directory {
        let edge = Roles {
            entry: true,
            mix: false,
            mailbox: true,
        };
        let mix = Roles {
            entry: false,
            mix: true,
            mailbox: false,
        };
        let mut relays = vec![relay(edge, 0, 1), relay(edge, 0, 2)];
        for layer in 1..=3u8 {
            for i in 0..width {
                relays.push(relay(mix, layer, 10 * u16::from(layer) + i));
            }
        }
        Directory {
            epoch: 7,
            valid_after: 0,
            valid_until: 100,
            params: NetworkParams::default(),
            relays,
            signatures: vec![],
        }
    }

    #[test]
    fn forward_route_is_stratified() {
        let dir = directory(2);
        let sel = RouteSelector::new(&dir, 7);
        let entry = dir.relays[0].id;
        let mailbox = dir.relays[1].id;
        for _ in 0..50 {
            let hops = sel
                .forward_route(&mut rand::rng(), &entry, &mailbox)
                .unwrap();
            assert_eq!(hops.len(), FORWARD_HOPS);
            assert_eq!(hops[0].id, entry);
            assert_eq!(hops[4].id, mailbox);
            for (i, hop) in hops[1..4].iter().enumerate() {
                assert_eq!(dir.relay(&hop.id).unwrap().layer, i as u8 + 1);
            }
        }
        let surb = sel.surb_route(&mut rand::rng(), &mailbox).unwrap();
        assert_eq!(surb.len(), SURB_HOPS);
        assert_eq!(surb[3].id, mailbox);
    }

    #[test]
    fn mixes_are_chosen_across_the_layer() {
        let dir = directory(3);
        let sel = RouteSelector::new(&dir, 7);
        let (e, m) = (dir.relays[0].id, dir.relays[1].id);
        let seen: std::collections::HashSet<RelayId> = (0..200)
            .map(|_| sel.forward_route(&mut rand::rng(), &e, &m).unwrap()[2].id)
            .collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn excluded_mixes_are_avoided_unless_their_layer_would_be_empty() {
        let dir = directory(2);
        let (e, m) = (dir.relays[0].id, dir.relays[1].id);
        let layer1: Vec<RelayId> = dir.mixes_in_layer(1).map(|d| d.id).collect();
        let one = HashSet::from([layer1[0]]);
        let sel = RouteSelector::new(&dir, 7).excluding(&one);
        for _ in 0..100 {
            let hops = sel.forward_route(&mut rand::rng(), &e, &m).unwrap();
            assert_eq!(hops[1].id, layer1[1]);
            assert_eq!(
                sel.surb_route(&mut rand::rng(), &m).unwrap()[0].id,
                layer1[1]
            );
        }
        // Both of layer 1 excluded: a route through one of them beats none.
        let both: HashSet<RelayId> = layer1.iter().copied().collect();
        let sel = RouteSelector::new(&dir, 7).excluding(&both);
        let seen: HashSet<RelayId> = (0..100)
            .map(|_| sel.forward_route(&mut rand::rng(), &e, &m).unwrap()[1].id)
            .collect();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn missing_layer_or_epoch_is_no_route() {
        let dir = directory(0);
        let sel = RouteSelector::new(&dir, 7);
        let (e, m) = (dir.relays[0].id, dir.relays[1].id);
        assert!(sel.forward_route(&mut rand::rng(), &e, &m).is_err());
        let dir = directory(1);
        let wrong_epoch = RouteSelector::new(&dir, 8);
        assert!(wrong_epoch.forward_route(&mut rand::rng(), &e, &m).is_err());
        assert!(wrong_epoch.random_mailbox_relay(&mut rand::rng()).is_err());
        let sel = RouteSelector::new(&dir, 7);
        assert!(
            sel.forward_route(&mut rand::rng(), &RelayId([0; 32]), &m)
                .is_err()
        );
    }
}
