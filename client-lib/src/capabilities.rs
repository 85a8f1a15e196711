//! Per-contact capabilities on the client side (issue 16): the capability we give each peer,
//! its registration with our mailbox relay, and the capability each peer gave us.
//!
//! A capability we give is derived from our mailbox key, the peer's label and a generation
//! ([`CapabilityId::derive`]); the store keeps only labels and generations. Revoking bumps the
//! generation: the old capability is revoked at the relay and the peer gets a new one the next
//! time we hand it our address; nobody else's address changes.
//!
//! Registration rides in the pull requests the sender sends on its schedule anyway
//! ([`spore_protocol::Frame::CapabilityPull`]), so it adds no frame and moves none in time:
//! [`CapabilityCycle`] hands the sender the next few ops at each pull, changes first, then the
//! whole table round and round. Every op is idempotent at the relay, so repeating the table
//! forever re-registers everything after a reconnect or a relay that lost its table, without
//! any answer to wait for.

use std::collections::VecDeque;
use std::sync::Mutex;

use spore_protocol::capability::MAX_CAPABILITY_OPS;
use spore_protocol::{CapabilityId, CapabilityOp, MailboxKey, SporeAddress};

use crate::error::Result;
use crate::store::{GivenCapability, Store};
use crate::transport::Transport;

/// Items one peer's capability may hold in our mailbox at a time (the relay's total per
/// mailbox, 20,000 by default, still applies): a flood through one capability fills this,
/// not the mailbox, and leaves 12,000 for everyone else. Big enough for one answer of the
/// largest size a sidecar accepts (12 MiB, about 11,000 fragments, does not fit; 5 MiB media,
/// about 5,300, does) and for a day of one busy peer's transactions.
pub const CAPABILITY_QUOTA_ITEMS: u32 = 8_000;
/// The same in payload bytes (an item is a SURB id and a Sphinx payload, about 1 KiB).
pub const CAPABILITY_QUOTA_BYTES: u64 = 12 << 20;

/// The label of the capability our own packets come back on: SURB-acks, replies on our reply
/// SURBs, loop cover. With it, a stranger flooding the raw address (the first-contact share)
/// cannot crowd out our own acks, which would stall everything we send.
pub(crate) const SELF_LABEL: &str = "spore/self";
/// Items the self capability may hold: acks and small replies waiting for our next pulls.
pub const SELF_QUOTA_ITEMS: u32 = 8_000;
/// The same in payload bytes.
pub const SELF_QUOTA_BYTES: u64 = 12 << 20;

/// Our own capability (see [`SELF_LABEL`]); it is never revoked.
pub fn self_capability(key: &MailboxKey) -> CapabilityId {
    CapabilityId::derive(key, SELF_LABEL, 0)
}

fn self_op(key: &MailboxKey) -> CapabilityOp {
    CapabilityOp::Register {
        capability: self_capability(key),
        quota_items: SELF_QUOTA_ITEMS,
        quota_bytes: SELF_QUOTA_BYTES,
    }
}

/// The ops the sender puts in its pull requests: changes first, then the whole table in turn.
#[derive(Debug, Default)]
pub(crate) struct CapabilityCycle {
    /// One cycle per mailbox relay link (first, second): each relay must learn every
    /// capability, so each link sends every change and walks the whole table itself.
    inner: Mutex<[CycleState; 2]>,
}

#[derive(Debug, Default)]
struct CycleState {
    /// Every capability we gave, as the op that says its state.
    table: Vec<CapabilityOp>,
    next: usize,
    /// Changes not yet sent once: sent before the round-robin.
    changes: VecDeque<CapabilityOp>,
    /// Changes sent at least once (bounded like the table: one per capability we gave).
    sent_once: std::collections::HashSet<CapabilityOp>,
}

fn op_of(key: &MailboxKey, given: &GivenCapability) -> CapabilityOp {
    let capability = CapabilityId::derive(key, &given.peer, given.generation);
    match given.revoked {
        true => CapabilityOp::Revoke { capability },
        false => CapabilityOp::Register {
            capability,
            quota_items: CAPABILITY_QUOTA_ITEMS,
            quota_bytes: CAPABILITY_QUOTA_BYTES,
        },
    }
}

impl CapabilityCycle {
    /// The table as the store holds it (at start, and after every change).
    pub fn load(&self, key: &MailboxKey, store: &Store) -> Result<()> {
        let own = self_op(key);
        let table: Vec<CapabilityOp> = std::iter::once(own)
            .chain(store.given_capabilities()?.iter().map(|g| op_of(key, g)))
            .collect();
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for st in links.iter_mut() {
            st.table.clone_from(&table);
            // Our own capability goes in each link's first pull, before any ack can come back.
            if !st.sent_once.contains(&own) && !st.changes.contains(&own) {
                st.changes.push_front(own);
            }
        }
        Ok(())
    }

    /// `op` goes out in the next pull unless it already went: a capability handed out for
    /// every send must not crowd the round-robin out.
    fn changed_if_new(&self, op: CapabilityOp) {
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for st in links.iter_mut() {
            if !st.sent_once.contains(&op) && !st.changes.contains(&op) {
                st.changes.push_back(op);
            }
        }
    }

    fn changed(&self, op: CapabilityOp) {
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for st in links.iter_mut() {
            if !st.changes.contains(&op) {
                st.changes.push_back(op);
            }
        }
    }

    /// The ops for the next pull request on link `link` (0: the first mailbox relay, 1: the
    /// second): at most [`MAX_CAPABILITY_OPS`], none when we gave no capability.
    pub fn next_ops(&self, link: usize) -> Vec<CapabilityOp> {
        let mut links = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(st) = links.get_mut(link) else {
            return Vec::new();
        };
        let mut ops = Vec::with_capacity(MAX_CAPABILITY_OPS);
        while ops.len() < MAX_CAPABILITY_OPS {
            let Some(op) = st.changes.pop_front() else {
                break;
            };
            st.sent_once.insert(op);
            ops.push(op);
        }
        let room = (MAX_CAPABILITY_OPS - ops.len()).min(st.table.len());
        for _ in 0..room {
            let at = st.next % st.table.len();
            st.next = at + 1;
            if let Some(op) = st.table.get(at).copied()
                && !ops.contains(&op)
            {
                ops.push(op);
            }
        }
        ops
    }
}

/// The label under which we give the peer with this mailbox key its capability: its key, so
/// every component (the transport's own sends, the sidecar, an operator's CLI) names a peer
/// the same way.
pub fn peer_label(mailbox_key: &[u8; 32]) -> String {
    let hex: String = mailbox_key.iter().map(|b| format!("{b:02x}")).collect();
    format!("key:{hex}")
}

impl Transport {
    /// The sender address a bundle to `destination` carries: ours, with the capability we
    /// give that peer, so that its answers come in through its own quota. Sending to
    /// ourselves carries the plain address.
    pub async fn sender_address_for(&self, destination: &SporeAddress) -> Result<SporeAddress> {
        if destination.mailbox_key == self.shared.address.mailbox_key {
            return Ok(self.shared.address.clone());
        }
        self.capability_address_for(&peer_label(&destination.mailbox_key))
            .await
    }

    /// Our address as we hand it to the peer we call `peer_label`: with that peer's own
    /// capability, made (and registered with our mailbox relay at the next pulls) if it has
    /// none. Durable before it returns, so the capability survives a crash.
    pub async fn capability_address_for(&self, peer_label: &str) -> Result<SporeAddress> {
        let shared = self.shared.clone();
        let peer = peer_label.to_owned();
        let op = tokio::task::spawn_blocking(move || -> Result<CapabilityOp> {
            let (generation, created) = shared.store.capability_generation(&peer)?;
            if created {
                shared.store.flush_blocking()?;
                shared.capabilities.load(&shared.key, &shared.store)?;
            }
            Ok(op_of(
                &shared.key,
                &GivenCapability {
                    peer,
                    generation,
                    revoked: false,
                },
            ))
        })
        .await
        .map_err(|_| crate::error::ClientError::Stopped)??;
        let capability = *op.capability();
        self.shared.capabilities.changed_if_new(op);
        Ok(self.address().with_capability(Some(capability)))
    }

    /// Revokes the capability we gave `peer_label`: our mailbox relay refuses it from the next
    /// pulls on; the peer's next address from [`Transport::capability_address_for`] carries a
    /// new one. Our address for everybody else stays as it was. Returns whether there was one.
    pub async fn revoke_capability(&self, peer_label: &str) -> Result<bool> {
        let shared = self.shared.clone();
        let peer = peer_label.to_owned();
        let op = tokio::task::spawn_blocking(move || -> Result<Option<CapabilityOp>> {
            // (Revoking one that was never handed out still refuses it from now on.)
            let Some(generation) = shared.store.revoke_capability(&peer)? else {
                return Ok(None);
            };
            shared.store.flush_blocking()?;
            shared.capabilities.load(&shared.key, &shared.store)?;
            Ok(Some(op_of(
                &shared.key,
                &GivenCapability {
                    peer,
                    generation,
                    revoked: true,
                },
            )))
        })
        .await
        .map_err(|_| crate::error::ClientError::Stopped)??;
        let revoked = op.is_some();
        if let Some(op) = op {
            self.shared.capabilities.changed(op);
        }
        Ok(revoked)
    }

    /// Takes the capability in `sender`, the address an authenticated peer sent us (the bundle's
    /// sender, from the peer whose seal key is `sealed_by`): we send to that peer through it
    /// from now on. Ignored unless the address is the sealing key's own (a peer cannot give us
    /// a capability for somebody else's mailbox), or when it carries none. Returns whether it
    /// changed what we use.
    pub async fn learn_capability(
        &self,
        sealed_by: &[u8; 32],
        sender: &SporeAddress,
    ) -> Result<bool> {
        let Some(capability) = sender.capability else {
            return Ok(false);
        };
        if sender.mailbox_key != *sealed_by {
            return Ok(false);
        }
        let shared = self.shared.clone();
        let key = sender.mailbox_key;
        tokio::task::spawn_blocking(move || -> Result<bool> {
            if shared.store.learned_capability(&key)? == Some(capability.0) {
                return Ok(false);
            }
            shared.store.learn_capability(&key, &capability.0)?;
            shared.store.flush_blocking()?;
            Ok(true)
        })
        .await
        .map_err(|_| crate::error::ClientError::Stopped)?
    }

    /// `destination` with the capability its owner gave us, if it gave us one (else as it
    /// is: first contact).
    pub async fn with_learned_capability(
        &self,
        destination: &SporeAddress,
    ) -> Result<SporeAddress> {
        let shared = self.shared.clone();
        let key = destination.mailbox_key;
        let learned = tokio::task::spawn_blocking(move || shared.store.learned_capability(&key))
            .await
            .map_err(|_| crate::error::ClientError::Stopped)??;
        Ok(match learned {
            Some(c) => destination.with_capability(Some(CapabilityId(c))),
            None => destination.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(i: u8) -> CapabilityOp {
        CapabilityOp::Revoke {
            capability: CapabilityId([i; 32]),
        }
    }

    #[test]
    fn the_cycle_sends_changes_first_then_the_whole_table_round_and_round() {
        let cycle = CapabilityCycle::default();
        assert!(cycle.next_ops(0).is_empty(), "no capability, plain pulls");
        let table: Vec<CapabilityOp> = (0..20).map(op).collect();
        for st in cycle.inner.lock().unwrap().iter_mut() {
            st.table = table.clone();
        }
        cycle.changed(op(99));
        // Each link (mailbox relay) gets the change and the whole table, whatever the other
        // link's pulls took: pulls of the two links interleave.
        let mut seen: [Vec<CapabilityOp>; 2] = [Vec::new(), Vec::new()];
        for round in 0..3 {
            for (link, seen) in seen.iter_mut().enumerate() {
                let ops = cycle.next_ops(link);
                assert_eq!(ops.len(), MAX_CAPABILITY_OPS);
                assert_eq!(
                    ops[0] == op(99),
                    round == 0,
                    "the change first, once per link"
                );
                seen.extend(ops);
            }
        }
        for (link, seen) in seen.iter().enumerate() {
            for o in &table {
                assert!(seen.contains(o), "every entry comes round on link {link}");
            }
        }
        assert!(cycle.next_ops(2).is_empty(), "no third link");
    }
}
