//! Building the packets a client sends. Real fragments, loop cover and drop cover all come out
//! of [`PacketFactory`] as one [`PACKET_SIZE`](spore_protocol::params::PACKET_SIZE)-byte
//! Sphinx packet on a forward route that starts at our own relay; only the sender knows which
//! is which.

use std::collections::HashSet;
use std::time::Duration;

use rand::{CryptoRng, RngExt};
use spore_protocol::packet::{
    self, ForwardPayload, SurbRecovery, build_packet, build_surb, random_surb_id, sample_delays,
};
use spore_protocol::params::{FORWARD_HOPS, SEALED_FRAGMENT_SIZE, SURB_HOPS, SURB_SIZE};
use spore_protocol::route::RouteSelector;
use spore_protocol::{Directory, MailboxId, RelayId, SporeAddress, seal};

use x25519_dalek::StaticSecret;

use crate::config::Rates;
use crate::error::Result;

/// A built packet and what the sender needs to recognise its SURB-ack.
pub(crate) struct BuiltPacket<R = SurbRecovery> {
    pub bytes: Vec<u8>,
    /// The SURB id the ack will carry, and how to open it.
    pub ack: Option<([u8; 16], R)>,
    /// The sum of the delays this packet and its ack were given: the earliest the ack can be
    /// back, before pull intervals and margins.
    pub round_trip: Duration,
    /// The mixes of the packet's forward route, layer 1 first: what a loop's loss or return
    /// is evidence about (route choice, `quarantine.rs`).
    pub mixes: Vec<RelayId>,
}

/// The mix hops of a forward route (entry, mixes, last hop).
fn mix_hops(route: &[spore_protocol::packet::RouteHop]) -> Vec<RelayId> {
    route
        .get(1..route.len().saturating_sub(1))
        .unwrap_or_default()
        .iter()
        .map(|h| h.id)
        .collect()
}

/// Builds packets against one directory.
pub(crate) struct PacketFactory<'a> {
    pub directory: &'a Directory,
    pub epoch: u64,
    pub rates: &'a Rates,
    /// Our relay: entry for everything we send, and the mailbox our acks come back to.
    pub own_relay: RelayId,
    pub own_mailbox: MailboxId,
    /// Mixes quarantined for dropping our loops: avoided in every route we build.
    pub excluded: HashSet<RelayId>,
    /// Our mailbox secret: every fragment's seal authenticates it to the recipient.
    pub own_key: &'a StaticSecret,
}

fn total(delays: &[Duration], hops_that_wait: usize) -> Duration {
    delays.iter().take(hops_that_wait).sum()
}

impl PacketFactory<'_> {
    fn routes(&self) -> RouteSelector<'_> {
        RouteSelector::new(self.directory, self.epoch).excluding(&self.excluded)
    }

    /// A fresh SURB-ack back to our own mailbox.
    fn ack_surb<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<(Vec<u8>, SurbRecovery, [u8; 16], Duration)> {
        let route = self.routes().surb_route(rng, &self.own_relay)?;
        let delays = sample_delays(rng, self.rates.mu, SURB_HOPS, self.rates.max_delay)?;
        let id = random_surb_id(rng);
        let (surb, recovery) = build_surb(&route, self.own_mailbox, id, &delays)?;
        Ok((surb, recovery, id, total(&delays, SURB_HOPS - 1)))
    }

    /// One encoded fragment, sealed from our mailbox key to `destination`'s (so the recipient
    /// knows it is from us, and nobody else does), with a SURB-ack, routed
    /// own relay → 3 mixes → `destination`'s `copy`-th mailbox relay (an address may name
    /// two; each copy of a fragment is stored at one of them).
    pub fn fragment<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        destination: &SporeAddress,
        copy: u8,
        fragment: &[u8],
    ) -> Result<BuiltPacket> {
        let sealed_fragment = seal::seal(
            rng,
            self.own_key,
            &destination.mailbox_public_key(),
            fragment,
        )?;
        let (ack_surb, recovery, ack_id, ack_delay) = self.ack_surb(rng)?;
        let payload = ForwardPayload {
            ack_surb,
            sealed_fragment,
        }
        .encode()?;
        let mailbox_relay = destination.mailbox_relays.get(usize::from(copy)).ok_or(
            spore_protocol::Error::from(spore_protocol::ApiMisuse::NoRoute(
                "address names no such mailbox relay",
            )),
        )?;
        let route = self
            .routes()
            .forward_route(rng, &self.own_relay, mailbox_relay)?;
        let delays = sample_delays(rng, self.rates.mu, FORWARD_HOPS, self.rates.max_delay)?;
        let bytes = build_packet(
            &route,
            destination.final_destination(),
            random_surb_id(rng),
            &delays,
            &payload,
        )?;
        Ok(BuiltPacket {
            bytes,
            ack: Some((ack_id, recovery)),
            round_trip: total(&delays, FORWARD_HOPS - 1) + ack_delay,
            mixes: mix_hops(&route),
        })
    }

    /// Drop cover: random bytes where a real packet has its SURB and sealed fragment, to a
    /// random mailbox relay, for the mailbox nobody reads.
    pub fn drop_cover<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<BuiltPacket> {
        let mut ack_surb = vec![0u8; SURB_SIZE];
        rng.fill_bytes(&mut ack_surb);
        let mut sealed_fragment = vec![0u8; SEALED_FRAGMENT_SIZE];
        rng.fill_bytes(&mut sealed_fragment);
        let payload = ForwardPayload {
            ack_surb,
            sealed_fragment,
        }
        .encode()?;
        let routes = self.routes();
        let mailbox_relay = routes.random_mailbox_relay(rng)?;
        let route = routes.forward_route(rng, &self.own_relay, &mailbox_relay)?;
        let delays = sample_delays(rng, self.rates.mu, FORWARD_HOPS, self.rates.max_delay)?;
        let bytes = build_packet(
            &route,
            MailboxId::DROP,
            random_surb_id(rng),
            &delays,
            &payload,
        )?;
        Ok(BuiltPacket {
            bytes,
            ack: None,
            round_trip: total(&delays, FORWARD_HOPS - 1),
            mixes: mix_hops(&route),
        })
    }

    /// A reply SURB for a request to `peer`: it enters the network at the peer's own relay
    /// (where the peer's link is, so the reply leaves the peer like any other packet), crosses
    /// the mix layers and ends in our mailbox.
    pub fn reply_surb<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        peer: &SporeAddress,
    ) -> Result<(Vec<u8>, SurbRecovery, [u8; 16])> {
        let peer_relay = peer
            .mailbox_relays
            .first()
            .ok_or(spore_protocol::Error::from(
                spore_protocol::ApiMisuse::NoRoute("address names no mailbox relay"),
            ))?;
        let route = self
            .routes()
            .forward_route(rng, peer_relay, &self.own_relay)?;
        let delays = sample_delays(rng, self.rates.mu, FORWARD_HOPS, self.rates.max_delay)?;
        let id = random_surb_id(rng);
        let (surb, recovery) = build_surb(&route, self.own_mailbox, id, &delays)?;
        Ok((surb, recovery, id))
    }
}

/// Whether a pulled payload is the ack our SURB expects.
pub(crate) fn is_ack(recovery: &SurbRecovery, payload: &[u8]) -> bool {
    recovery
        .open(payload)
        .map(|m| m.starts_with(packet::ACK_MESSAGE))
        .unwrap_or(false)
}

/// 16 random bytes (message ids, request ids, loop nonces).
pub(crate) fn random_id() -> [u8; 16] {
    rand::rng().random()
}
