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

use crate::constants::{
    FINAL_NODE_META_INFO_LENGTH, MAX_PATH_LENGTH, SECURITY_PARAMETER, STREAM_CIPHER_OUTPUT_LENGTH,
};
use crate::crypto;
use crate::crypto::STREAM_CIPHER_INIT_VECTOR;
use crate::header::filler::{Filler, FILLER_STEP_SIZE_INCREASE};
use crate::header::keys::StreamCipherKey;
use crate::header::routing::nodes::EncryptedRoutingInformation;
use crate::header::routing::{RoutingFlag, Version, ENCRYPTED_ROUTING_INFO_SIZE, FINAL_HOP};
use crate::route::{Destination, DestinationAddressBytes, SURBIdentifier};
use crate::utils;
use rand::rng;

use crate::{Error, ErrorKind, Result};

// this is going through the following transformations:
/*
    FinalRoutingInformation -> PaddedFinalRoutingInformation -> EncryptedPaddedFinalRoutingInformation ->
    Encrypted Padded Destination with Filler - this can be treated as EncryptedRoutingInformation
*/

// TODO: perhaps add route_len to all final_routing_info related structs to simplify everything?
// because it seems weird that say 'encrypt' requires route_len argument
pub(super) struct FinalRoutingInformation {
    flag: RoutingFlag,
    version: Version,

    // in paper delta
    destination: DestinationAddressBytes,

    // in paper I
    identifier: SURBIdentifier,
}

impl FinalRoutingInformation {
    pub fn new(dest: &Destination, route_len: usize, version: Version) -> Result<Self> {
        if route_len == 0 || route_len > MAX_PATH_LENGTH {
            return Err(Error::new(
                ErrorKind::InvalidRouting,
                format!(
                    "final routing information requires a route of 1 to {MAX_PATH_LENGTH} hops, got {route_len}"
                ),
            ));
        }
        let max_destination_length = Self::max_destination_length(route_len);
        if dest.address.as_bytes_ref().len() > max_destination_length {
            return Err(Error::new(
                ErrorKind::InvalidRouting,
                format!(
                    "destination address of {} bytes does not fit the {max_destination_length} bytes available on a {route_len}-hop route",
                    dest.address.as_bytes_ref().len()
                ),
            ));
        }

        Ok(Self {
            flag: FINAL_HOP,
            version,
            destination: dest.address,
            identifier: dest.identifier,
        })
    }

    fn max_destination_length(route_len: usize) -> usize {
        (3 * MAX_PATH_LENGTH.saturating_sub(route_len) + 2) * SECURITY_PARAMETER
    }

    fn max_padded_destination_identifier_length(route_len: usize) -> usize {
        ENCRYPTED_ROUTING_INFO_SIZE
            .saturating_sub(FILLER_STEP_SIZE_INCREASE * route_len.saturating_sub(1))
    }

    pub(super) fn add_padding(self, route_len: usize) -> Result<PaddedFinalRoutingInformation> {
        // paper uses 0 bytes for this, however, we use random instead so that we would not be affected by the
        // attack on sphinx described by Kuhn et al.
        let padding_len = ENCRYPTED_ROUTING_INFO_SIZE
            .checked_sub(FILLER_STEP_SIZE_INCREASE * route_len.saturating_sub(1))
            .and_then(|remaining| remaining.checked_sub(FINAL_NODE_META_INFO_LENGTH))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidRouting,
                    format!("no room for final routing information on a {route_len}-hop route"),
                )
            })?;
        let padding = utils::bytes::random(&mut rng(), padding_len);

        // return D || I || PAD
        Ok(PaddedFinalRoutingInformation {
            value: std::iter::once(self.flag)
                .chain(self.version.to_bytes())
                .chain(self.destination.as_bytes().iter().cloned())
                .chain(self.identifier.iter().cloned())
                .chain(padding.iter().cloned())
                .collect(),
        })
    }
}

// in paper D || I || 0
pub(super) struct PaddedFinalRoutingInformation {
    value: Vec<u8>,
}

impl PaddedFinalRoutingInformation {
    pub(super) fn encrypt(
        self,
        key: &StreamCipherKey,
        route_len: usize,
    ) -> EncryptedPaddedFinalRoutingInformation {
        debug_assert_eq!(
            FinalRoutingInformation::max_padded_destination_identifier_length(route_len),
            self.value.len()
        );

        let pseudorandom_bytes = crypto::generate_pseudorandom_bytes(
            key,
            &STREAM_CIPHER_INIT_VECTOR,
            STREAM_CIPHER_OUTPUT_LENGTH,
        );

        EncryptedPaddedFinalRoutingInformation {
            value: utils::bytes::xor(
                &self.value,
                &pseudorandom_bytes[..self.value.len()], // we already asserted it has correct length
            ),
        }
    }
}

// in paper XOR ( (D || I || 0), rho(h_{rho}(s)) )
pub(super) struct EncryptedPaddedFinalRoutingInformation {
    value: Vec<u8>,
}

impl EncryptedPaddedFinalRoutingInformation {
    // technically it's not exactly EncryptedRoutingInformation
    // as it's EncryptedPaddedFinalRoutingInformation with possibly concatenated filler string
    // however, for all of our purposes, it behaves exactly like EncryptedRoutingInformation
    pub(super) fn combine_with_filler(
        self,
        filler: Filler,
        route_len: usize,
    ) -> EncryptedRoutingInformation {
        let filler_bytes: Vec<u8> = filler.into();
        debug_assert_eq!(
            filler_bytes.len(),
            FILLER_STEP_SIZE_INCREASE * route_len.saturating_sub(1)
        );

        let final_routing_info_vec: Vec<u8> = self.value.into_iter().chain(filler_bytes).collect();

        // sanity check assertion, because we're using vectors
        debug_assert_eq!(final_routing_info_vec.len(), ENCRYPTED_ROUTING_INFO_SIZE);
        let mut final_routing_information = [0u8; ENCRYPTED_ROUTING_INFO_SIZE];
        final_routing_information
            .copy_from_slice(&final_routing_info_vec[..ENCRYPTED_ROUTING_INFO_SIZE]);
        EncryptedRoutingInformation::from_bytes(final_routing_information)
    }
}

#[cfg(test)]
mod test_encapsulating_final_routing_information_and_mac {
    use crate::header::mac::HeaderIntegrityMac;
    use crate::test_utils::fixtures::expanded_shared_secret_fixture;
    use crate::version::Version;
    use crate::{
        header::routing::EncapsulatedRoutingInformation,
        test_utils::{
            fixtures::{destination_fixture, filler_fixture},
            random_node,
        },
    };

    #[test]
    fn it_returns_mac_on_correct_data() {
        // this test is created to ensure we MAC the encrypted data BEFORE it is truncated
        let route = [random_node(), random_node(), random_node()];
        let expanded_shared_secret = [
            expanded_shared_secret_fixture(),
            expanded_shared_secret_fixture(),
            expanded_shared_secret_fixture(),
        ];
        let filler = filler_fixture(route.len() - 1);
        let destination = destination_fixture();
        let final_routing_info = EncapsulatedRoutingInformation::for_final_hop(
            &destination,
            expanded_shared_secret.last().unwrap(),
            filler,
            route.len(),
            Version::default(),
        )
        .unwrap();

        let expected_mac = HeaderIntegrityMac::compute(
            expanded_shared_secret
                .last()
                .unwrap()
                .header_integrity_hmac_key(),
            final_routing_info.enc_routing_information.as_ref(),
        )
        .unwrap();
        assert_eq!(
            expected_mac.into_inner(),
            final_routing_info.integrity_mac.into_inner()
        );
    }
}

#[cfg(test)]
mod test_encapsulating_final_routing_information {
    use super::*;
    use crate::test_utils::fixtures::{
        destination_fixture, expanded_shared_secret_fixture, filler_fixture,
    };

    #[test]
    fn it_produces_result_of_length_filler_plus_padded_concatenated_destination_and_identifier_and_flag_for_route_of_length_5(
    ) {
        let final_keys = expanded_shared_secret_fixture();
        let route_len = 5;
        let filler = filler_fixture(route_len - 1);
        let destination = destination_fixture();

        let final_routing_header =
            FinalRoutingInformation::new(&destination, route_len, Version::default())
                .unwrap()
                .add_padding(route_len)
                .unwrap()
                .encrypt(final_keys.stream_cipher_key(), route_len)
                .combine_with_filler(filler, route_len);

        let expected_final_header_len = ENCRYPTED_ROUTING_INFO_SIZE;

        assert_eq!(
            expected_final_header_len,
            final_routing_header.as_ref().len()
        );
    }

    #[test]
    fn it_produces_result_of_length_filler_plus_padded_concatenated_destination_and_identifier_and_flag_for_route_of_length_3(
    ) {
        let final_keys = expanded_shared_secret_fixture();
        let route_len = 3;
        let filler = filler_fixture(route_len - 1);
        let destination = destination_fixture();

        let final_routing_header =
            FinalRoutingInformation::new(&destination, route_len, Version::default())
                .unwrap()
                .add_padding(route_len)
                .unwrap()
                .encrypt(final_keys.stream_cipher_key(), route_len)
                .combine_with_filler(filler, route_len);

        let expected_final_header_len = ENCRYPTED_ROUTING_INFO_SIZE;

        assert_eq!(
            expected_final_header_len,
            final_routing_header.as_ref().len()
        );
    }

    #[test]
    fn it_produces_result_of_length_filler_plus_padded_concatenated_destination_and_identifier_and_flag_for_route_of_length_1(
    ) {
        let final_keys = expanded_shared_secret_fixture();
        let route_len = 1;
        let filler = filler_fixture(route_len - 1);
        let destination = destination_fixture();

        let final_routing_header =
            FinalRoutingInformation::new(&destination, route_len, Version::default())
                .unwrap()
                .add_padding(route_len)
                .unwrap()
                .encrypt(final_keys.stream_cipher_key(), route_len)
                .combine_with_filler(filler, route_len);

        let expected_final_header_len = ENCRYPTED_ROUTING_INFO_SIZE;

        assert_eq!(
            expected_final_header_len,
            final_routing_header.as_ref().len()
        );
    }

    // relies on a `debug_assert_eq!` inside `combine_with_filler`
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic]
    fn it_panics_if_it_receives_filler_different_than_filler_step_multiplied_with_i() {
        let final_keys = expanded_shared_secret_fixture();
        let route_len = 3;
        let filler = filler_fixture(route_len);
        let destination = destination_fixture();

        FinalRoutingInformation::new(&destination, route_len, Version::default())
            .unwrap()
            .add_padding(route_len)
            .unwrap()
            .encrypt(final_keys.stream_cipher_key(), route_len)
            .combine_with_filler(filler, route_len);
    }
}
