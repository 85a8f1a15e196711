// Copyright 2020 Nym Technologies SA
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::constants::INTEGRITY_MAC_KEY_SIZE;
use crate::crypto::STREAM_CIPHER_KEY_SIZE;
use crate::header::shared_secret::{expand_shared_secret, ExpandedSharedSecret};
use crate::route::Node;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

pub type StreamCipherKey = [u8; STREAM_CIPHER_KEY_SIZE];
pub type HeaderIntegrityMacKey = [u8; INTEGRITY_MAC_KEY_SIZE];

pub struct KeyMaterial {
    pub initial_shared_secret: PublicKey,
    pub expanded_shared_secrets: Vec<ExpandedSharedSecret>,
}

impl KeyMaterial {
    // derive shared keys, group elements, blinding factors
    //
    // Spore patch: one variable-base scalar multiplication per hop instead of i + 1 for hop i
    // (15 instead of 5 + 4 + 3 + 2 + 1 for five hops). The original computes
    // `s_i = [c_x][c_b0]...[c_b(i-1)] y_i` one clamped Diffie-Hellman at a time; the product of
    // the clamped integers is a multiple of 8, so it kills any small-order part of `y_i` and only
    // its value mod l matters on the prime-order part. We keep `k = (c_x / 8) * prod c_bj mod l`
    // and multiply `y_i` once by the integer `8k`, which is congruent to the product mod l and
    // still a multiple of 8: the same point, bit for bit (see `derive_slow` in the tests).
    pub fn derive(route: &[Node], initial_secret: &StaticSecret) -> Self {
        let initial_shared_secret = PublicKey::from(initial_secret);

        let mut expanded_shared_secrets = Vec::with_capacity(route.len());
        let mut k = Scalar::from_bytes_mod_order(shr3(clamp_integer(initial_secret.to_bytes())));

        for (i, node) in route.iter().enumerate() {
            let n = shl3(k.to_bytes());
            let point = MontgomeryPoint(*node.pub_key.as_bytes());
            let mut shared = point.mul_bits_be(bits_be(&n));
            let expanded_shared_secret = expand_shared_secret(shared.as_bytes());
            shared.0.zeroize();

            if i != route.len() - 1 {
                k *= Scalar::from_bytes_mod_order(clamp_integer(
                    *expanded_shared_secret.blinding_factor_bytes(),
                ));
            }
            expanded_shared_secrets.push(expanded_shared_secret);
        }
        k.zeroize();

        Self {
            initial_shared_secret,
            expanded_shared_secrets,
        }
    }
}

/// Little-endian 256-bit integer divided by 8 (a clamped scalar is a multiple of 8).
fn shr3(bytes: [u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        let hi = if i + 1 < 32 { bytes[i + 1] << 5 } else { 0 };
        out[i] = (bytes[i] >> 3) | hi;
    }
    out
}

/// Little-endian integer times 8; `bytes` < l < 2^253, so the result fits in 256 bits.
fn shl3(bytes: [u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        let lo = if i > 0 { bytes[i - 1] >> 5 } else { 0 };
        out[i] = (bytes[i] << 3) | lo;
    }
    out
}

/// The 256 bits of a little-endian integer, most significant first.
fn bits_be(bytes: &[u8; 32]) -> impl Iterator<Item = bool> + '_ {
    bytes
        .iter()
        .rev()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1 == 1))
}

#[cfg(test)]
mod deriving_key_material {
    use super::*;
    use crate::route::Node;

    #[cfg(test)]
    mod with_an_empty_route {
        use super::*;

        #[test]
        fn it_returns_no_routing_keys() {
            let empty_route: Vec<Node> = vec![];
            let initial_secret = StaticSecret::random();
            let key_material = KeyMaterial::derive(&empty_route, &initial_secret);
            assert_eq!(0, key_material.expanded_shared_secrets.len());
            assert_eq!(
                PublicKey::from(&initial_secret).as_bytes(),
                key_material.initial_shared_secret.as_bytes()
            )
        }
    }

    #[cfg(test)]
    mod for_a_route_with_3_forward_hops {
        use super::*;
        use crate::test_utils::random_node;

        fn setup() -> (Vec<Node>, StaticSecret, KeyMaterial) {
            let route: Vec<Node> = vec![random_node(), random_node(), random_node()];
            let initial_secret = StaticSecret::random();
            let key_material = KeyMaterial::derive(&route, &initial_secret);
            (route, initial_secret, key_material)
        }

        #[test]
        fn it_returns_number_of_shared_keys_equal_to_length_of_the_route() {
            let (_, _, key_material) = setup();
            assert_eq!(3, key_material.expanded_shared_secrets.len());
        }

        #[test]
        fn it_returns_correctly_inited_shared_secret() {
            let (_, initial_secret, key_material) = setup();
            assert_eq!(
                PublicKey::from(&initial_secret).as_bytes(),
                key_material.initial_shared_secret.as_bytes()
            );
        }

        #[test]
        fn it_generates_correct_expanded_shared_secret() {
            let (route, initial_secret, key_material) = setup();
            // The accumulator is the key to our blinding factors working.
            // If the accumulator value isn't incremented correctly, we risk passing an
            // incorrectly blinded shared key through the mixnet in the (unencrypted)
            // Sphinx packet header. So this test ensures that the accumulator gets incremented
            // properly on each run through the loop.
            let mut expected_accumulator = vec![initial_secret];
            for (i, node) in route.iter().enumerate() {
                let expected_shared_key =
                    expected_accumulator
                        .iter()
                        .fold(node.pub_key, |acc, blinding_factor| {
                            PublicKey::from(blinding_factor.diffie_hellman(&acc).to_bytes())
                        });

                let expected_expanded_ss = expand_shared_secret(expected_shared_key.as_bytes());

                expected_accumulator.push(expected_expanded_ss.blinding_factor());
                assert_eq!(
                    expected_expanded_ss,
                    key_material.expanded_shared_secrets[i]
                )
            }
        }
    }

    /// The original, quadratic derivation: the patched one must agree with it bit for bit.
    fn derive_slow(route: &[Node], initial_secret: &StaticSecret) -> Vec<ExpandedSharedSecret> {
        let mut out = Vec::new();
        let mut blinding_factors: Vec<StaticSecret> = Vec::new();
        for node in route {
            let mut acc = node.pub_key;
            for b in std::iter::once(initial_secret).chain(&blinding_factors) {
                acc = PublicKey::from(b.diffie_hellman(&acc).to_bytes());
            }
            let e = expand_shared_secret(acc.as_bytes());
            blinding_factors.push(e.blinding_factor());
            out.push(e);
        }
        out
    }

    #[test]
    fn linear_derivation_matches_the_original_one() {
        use crate::test_utils::random_node;
        use curve25519_dalek::edwards::CompressedEdwardsY;
        // A point of order 8 (from the well-known list of small-order Ed25519 encodings).
        let hex = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a";
        let mut enc = [0u8; 32];
        for (i, b) in enc.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let torsion = CompressedEdwardsY(enc).decompress().unwrap();
        assert!(torsion.is_small_order());
        for len in 1..=5 {
            for _ in 0..20 {
                let mut route: Vec<Node> = (0..len).map(|_| random_node()).collect();
                // A public key with a small-order component must give the same secrets too.
                let tainted = MontgomeryPoint(*route[0].pub_key.as_bytes())
                    .to_edwards(0)
                    .map(|p| (p + torsion).to_montgomery().to_bytes());
                if let Some(bytes) = tainted {
                    route[0].pub_key = PublicKey::from(bytes);
                }
                let secret = StaticSecret::random();
                let fast = KeyMaterial::derive(&route, &secret);
                assert_eq!(fast.expanded_shared_secrets, derive_slow(&route, &secret));
            }
        }
    }
}
