//! End-to-end sealing of one fragment to its recipient's mailbox key.
//!
//! Relays carry and store fragments they cannot read: each fragment is sealed to the
//! recipient's X25519 mailbox key with a fresh ephemeral key (an ECIES-style construction):
//!
//! ```text
//! sealed = ephemeral_pk (32) || ChaCha20-Poly1305(key, nonce = 0, aad = "", plaintext) (+16 tag)
//! key    = HKDF-SHA256(salt = ephemeral_pk || recipient_pk, ikm = X25519(e, R), info = "spore/seal/v1")
//! ```
//!
//! Every seal derives a new key from a new ephemeral secret, so the all-zero nonce is never
//! reused under one key. Binding both public keys into the salt ties the key to this exact
//! exchange. A non-contributory Diffie-Hellman (a low-order point on either side) would give a
//! key anyone can compute, so it is refused in both directions.
//!
//! A sealed fragment has no sender identity: whoever knows the mailbox key can seal to it.
//! Authenticity of the content comes from the Matrix layer (X-Matrix signatures) inside.

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use hkdf::Hkdf;
use rand::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{InvalidMessage, PeerMisbehaved, Result};
use crate::params::SEAL_OVERHEAD;

/// HKDF `info` for the seal key; bump the version to change the construction.
const SEAL_INFO: &[u8] = b"spore/seal/v1";
/// Length of the ephemeral public key that opens a sealed message.
const EPHEMERAL_KEY_SIZE: usize = 32;

/// Seals `plaintext` so that only the holder of `recipient`'s secret key can read it.
///
/// The output is exactly `plaintext.len() + SEAL_OVERHEAD` bytes. Fails with
/// [`PeerMisbehaved::LowOrderPoint`] if `recipient` is a low-order point (a published address
/// carrying such a key would make the "encryption" readable by everyone).
///
/// ```
/// use spore_protocol::{seal, MailboxKey};
///
/// let bob = MailboxKey::generate(&mut rand::rng());
/// let sealed = seal::seal(&mut rand::rng(), &bob.public(), b"fragment").unwrap();
/// assert_eq!(seal::open(bob.secret(), &sealed).unwrap(), b"fragment");
/// ```
///
/// The ephemeral key comes from `rng` (the caller's, so time and randomness come from
/// outside this crate); it must be a cryptographic generator.
pub fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &PublicKey,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    // Drawn straight into the secret type, so it is zeroized on drop with no stray copy.
    let ephemeral = StaticSecret::random_from_rng(rng);
    seal_with_ephemeral(&ephemeral, recipient, plaintext)
}

/// The deterministic core of [`seal`], split out so tests can fix the ephemeral key.
fn seal_with_ephemeral(
    ephemeral: &StaticSecret,
    recipient: &PublicKey,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let ephemeral_pk = PublicKey::from(ephemeral);
    let shared = ephemeral.diffie_hellman(recipient);
    let cipher = cipher_for(&shared, &ephemeral_pk, recipient)?;
    let ciphertext = cipher
        .encrypt(&Nonce::default(), plaintext)
        // ChaCha20-Poly1305 only fails for inputs beyond 256 GiB.
        .map_err(|_| crate::error::ApiMisuse::InvalidArgument("plaintext too long to seal"))?;

    let mut sealed = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    sealed.extend_from_slice(ephemeral_pk.as_bytes());
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// Opens a message produced by [`seal`] for the key `recipient_secret`.
///
/// Fails with [`InvalidMessage::Truncated`] if `sealed` is shorter than [`SEAL_OVERHEAD`],
/// [`PeerMisbehaved::LowOrderPoint`] if the ephemeral key is a low-order point, and
/// [`InvalidMessage::Decrypt`] if the message was not sealed to this key or was modified.
pub fn open(recipient_secret: &StaticSecret, sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(InvalidMessage::Truncated.into());
    }
    let (ephemeral_bytes, ciphertext) = sealed
        .split_first_chunk::<EPHEMERAL_KEY_SIZE>()
        .ok_or(InvalidMessage::Truncated)?;
    let ephemeral_pk = PublicKey::from(*ephemeral_bytes);
    let recipient_pk = PublicKey::from(recipient_secret);
    let shared = recipient_secret.diffie_hellman(&ephemeral_pk);
    let cipher = cipher_for(&shared, &ephemeral_pk, &recipient_pk)?;
    let plaintext = cipher
        .decrypt(&Nonce::default(), ciphertext)
        .map_err(|_| InvalidMessage::Decrypt)?;
    Ok(plaintext)
}

/// Derives the one-time AEAD key for one (ephemeral, recipient) exchange.
fn cipher_for(
    shared: &SharedSecret,
    ephemeral_pk: &PublicKey,
    recipient_pk: &PublicKey,
) -> Result<ChaCha20Poly1305> {
    if !shared.was_contributory() {
        return Err(PeerMisbehaved::LowOrderPoint.into());
    }
    let mut salt = [0u8; 64];
    let (eph, rec) = salt.split_at_mut(32);
    eph.copy_from_slice(ephemeral_pk.as_bytes());
    rec.copy_from_slice(recipient_pk.as_bytes());

    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(SEAL_INFO, key.as_mut())
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        .map_err(|_| crate::error::ApiMisuse::InvalidArgument("hkdf output length"))?;
    Ok(ChaCha20Poly1305::new(&Key::from(*key)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::error::Error;
    use proptest::prelude::*;

    fn keypair(seed: u8) -> (StaticSecret, PublicKey) {
        let secret = StaticSecret::from([seed; 32]);
        let public = PublicKey::from(&secret);
        (secret, public)
    }

    /// A point of order 8 on Curve25519 (from the libsodium blocklist).
    const LOW_ORDER_POINT: [u8; 32] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];

    #[test]
    fn sealed_message_round_trips() {
        let (secret, public) = keypair(7);
        let sealed = seal(&mut rand::rng(), &public, b"hello mailbox").unwrap();
        assert_eq!(sealed.len(), b"hello mailbox".len() + SEAL_OVERHEAD);
        assert_eq!(open(&secret, &sealed).unwrap(), b"hello mailbox");
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let (secret, public) = keypair(8);
        let sealed = seal(&mut rand::rng(), &public, b"").unwrap();
        assert_eq!(sealed.len(), SEAL_OVERHEAD);
        assert_eq!(open(&secret, &sealed).unwrap(), b"");
    }

    #[test]
    fn each_seal_uses_a_fresh_ephemeral_key() {
        let (_, public) = keypair(9);
        let a = seal(&mut rand::rng(), &public, b"same").unwrap();
        let b = seal(&mut rand::rng(), &public, b"same").unwrap();
        assert_ne!(a[..32], b[..32]);
        assert_ne!(a, b);
    }

    #[test]
    fn the_callers_rng_decides_the_ephemeral_key() {
        use rand::SeedableRng;
        use rand::rngs::StdRng;
        let (secret, public) = keypair(9);
        let a = seal(&mut StdRng::seed_from_u64(1), &public, b"same").unwrap();
        let b = seal(&mut StdRng::seed_from_u64(1), &public, b"same").unwrap();
        assert_eq!(a, b, "same seed, same sealed bytes");
        assert_eq!(open(&secret, &a).unwrap(), b"same");
    }

    #[test]
    fn wrong_key_cannot_open() {
        let (_, public) = keypair(1);
        let (other_secret, _) = keypair(2);
        let sealed = seal(&mut rand::rng(), &public, b"secret").unwrap();
        assert_eq!(
            open(&other_secret, &sealed),
            Err(Error::InvalidMessage(InvalidMessage::Decrypt))
        );
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let (secret, public) = keypair(3);
        let sealed = seal(&mut rand::rng(), &public, b"tamper with me").unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[byte] ^= 1 << bit;
                assert!(open(&secret, &tampered).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn truncated_seal_is_rejected() {
        let (secret, public) = keypair(4);
        let sealed = seal(&mut rand::rng(), &public, b"x").unwrap();
        assert!(open(&secret, &sealed[..sealed.len() - 1]).is_err());
        assert_eq!(
            open(&secret, &sealed[..SEAL_OVERHEAD - 1]),
            Err(Error::InvalidMessage(InvalidMessage::Truncated))
        );
    }

    #[test]
    fn low_order_ephemeral_key_is_rejected() {
        let (secret, _) = keypair(5);
        for point in [[0u8; 32], LOW_ORDER_POINT] {
            let mut sealed = point.to_vec();
            sealed.extend_from_slice(&[0u8; 40]);
            assert_eq!(
                open(&secret, &sealed),
                Err(Error::PeerMisbehaved(PeerMisbehaved::LowOrderPoint))
            );
        }
    }

    #[test]
    fn low_order_recipient_key_is_refused() {
        for point in [[0u8; 32], LOW_ORDER_POINT] {
            assert_eq!(
                seal(&mut rand::rng(), &PublicKey::from(point), b"x"),
                Err(Error::PeerMisbehaved(PeerMisbehaved::LowOrderPoint))
            );
        }
    }

    #[test]
    fn fixed_ephemeral_key_is_deterministic() {
        let (_, public) = keypair(6);
        let eph = StaticSecret::from([42u8; 32]);
        let a = seal_with_ephemeral(&eph, &public, b"abc").unwrap();
        let b = seal_with_ephemeral(&eph, &public, b"abc").unwrap();
        assert_eq!(a, b);
    }

    proptest! {
        #[test]
        fn open_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (secret, _) = keypair(11);
            let _ = open(&secret, &data);
        }

        #[test]
        fn seal_round_trips_arbitrary_plaintext(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            let (secret, public) = keypair(12);
            let sealed = seal(&mut rand::rng(), &public, &data).unwrap();
            prop_assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
            prop_assert_eq!(open(&secret, &sealed).unwrap(), data);
        }
    }
}
