//! The one rule that turns the authorities' votes into a document: pure, so authorities that
//! saw the same votes build the same bytes.

use std::collections::BTreeMap;

use spore_protocol::RelayId;
use spore_protocol::directory::{NetworkParams, RelayDescriptor};

use crate::Directory;

/// More than half of `authorities`.
pub fn majority(authorities: usize) -> usize {
    authorities / 2 + 1
}

/// The unsigned document for `epoch` from `votes` (each one authority's descriptors, already
/// checked, and only those it found reachable): a relay is listed if a majority of the
/// authorities that voted (`majority(votes.len())`) carry it; of its descriptors the most
/// recently published wins, ties broken by encoding. Relays are sorted by id, so the result
/// depends only on the set of votes.
///
/// Counting the authorities that voted, not all configured ones, keeps a relay listed when
/// some authorities are down: with 2 of 5 down, the 3 left need 2 to agree, not all 3. An
/// authority that votes and finds a relay unreachable counts against it.
pub fn consensus(
    votes: &[Vec<RelayDescriptor>],
    epoch: u64,
    validity: (u64, u64),
    params: NetworkParams,
) -> Directory {
    let mut seen: BTreeMap<RelayId, (usize, RelayDescriptor)> = BTreeMap::new();
    for vote in votes {
        // One vote counts once per relay, whatever it repeats.
        let mut in_vote: BTreeMap<RelayId, &RelayDescriptor> = BTreeMap::new();
        for d in vote {
            in_vote
                .entry(d.id)
                .and_modify(|cur| {
                    if later(d, cur) {
                        *cur = d;
                    }
                })
                .or_insert(d);
        }
        for (id, d) in in_vote {
            seen.entry(id)
                .and_modify(|(n, best)| {
                    *n += 1;
                    if later(d, best) {
                        *best = d.clone();
                    }
                })
                .or_insert((1, d.clone()));
        }
    }
    let needed = majority(votes.len());
    Directory {
        epoch,
        valid_after: validity.0,
        valid_until: validity.1,
        params,
        relays: seen
            .into_values()
            .filter(|(n, _)| *n >= needed)
            .map(|(_, d)| d)
            .collect(),
        signatures: Vec::new(),
    }
}

fn later(a: &RelayDescriptor, b: &RelayDescriptor) -> bool {
    (a.published_at, a.to_bytes()) > (b.published_at, b.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use spore_protocol::directory::{DescriptorFields, Roles, SphinxKey};

    fn desc(seed: u8, published_at: u64) -> RelayDescriptor {
        RelayDescriptor::sign(
            DescriptorFields {
                address: format!("127.0.0.1:{}", 4000 + u16::from(seed)),
                roles: Roles {
                    entry: true,
                    mix: false,
                    mailbox: true,
                },
                layer: 0,
                link_key: [seed; 32],
                sphinx_keys: vec![SphinxKey {
                    epoch: 1,
                    public: [seed; 32],
                }],
                published_at,
                expires_at: published_at + 1000,
            },
            &SigningKey::from_bytes(&[seed; 32]),
        )
        .unwrap()
    }

    #[test]
    fn listed_by_majority_latest_descriptor_order_independent() {
        let (a, b, c) = (desc(1, 10), desc(2, 10), desc(3, 10));
        let a_later = desc(1, 20);
        let votes = vec![
            vec![a.clone(), b.clone()],
            vec![a_later.clone(), c.clone()],
            vec![b.clone()],
        ];
        let doc = consensus(&votes, 7, (0, 100), NetworkParams::default());
        let ids: Vec<_> = doc.relays.iter().map(|d| d.id).collect();
        assert_eq!(doc.relays.len(), 2, "c seen by one of three authorities");
        assert!(ids.contains(&a.id) && ids.contains(&b.id));
        assert!(doc.relays.contains(&a_later), "the later descriptor wins");
        let mut reversed = votes.clone();
        reversed.reverse();
        assert_eq!(
            consensus(&reversed, 7, (0, 100), NetworkParams::default()).to_bytes(),
            doc.to_bytes()
        );
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(1), 1);
        // Two authorities voted (a third was down): both must carry a relay.
        let two = consensus(&votes[..2], 7, (0, 100), NetworkParams::default());
        let ids: Vec<_> = two.relays.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![a.id], "b and c each in one of the two votes");
    }
}
