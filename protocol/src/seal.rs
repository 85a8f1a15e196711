//! End-to-end sealing of one fragment to its recipient's mailbox key, authenticated by the
//! sender's own mailbox key.
//!
//! Relays carry and store fragments they cannot read. Each fragment is sealed to the
//! recipient's X25519 mailbox key the way Noise's one-way `X` pattern does it (`-> e, es, s,
//! ss`): a fresh ephemeral key gives secrecy, and a second Diffie-Hellman between the
//! sender's long-term mailbox key and the recipient's mixes the sender's identity into the
//! payload key, so only the holder of that sender key could have produced a seal that opens
//! with it (issue 16: a bundle's `origin` was an unauthenticated claim).
//!
//! ```text
//! sealed = version (1) = 2
//!       || e_pk (32)
//!       || enc_s = ChaCha20-Poly1305(k1, nonce 0, aad = h0, s_pk)          (32 + 16)
//!       || ChaCha20-Poly1305(k2, nonce 0, aad = h1, plaintext)            (+16)
//! h0 = version || e_pk || recipient_pk
//! h1 = h0 || enc_s
//! k1 = HKDF-SHA256(salt = h0, ikm = X25519(e, R),                 info = "spore/seal/v2/es")
//! k2 = HKDF-SHA256(salt = h1, ikm = X25519(e, R) || X25519(s, R), info = "spore/seal/v2/ss")
//! ```
//!
//! The sender's static key travels encrypted under the ephemeral exchange, so relays (and
//! anyone but the recipient) learn nothing about who sent a fragment; the recipient learns the
//! authenticated sender key. The recipient could not prove that to a third party (it could
//! have computed the same seal itself): deniable, like Noise `X`. Every seal derives both keys
//! from a new ephemeral secret, so the all-zero nonce is never reused under one key. A
//! non-contributory Diffie-Hellman (a low-order point anywhere) is refused in both directions.
//!
//! The version byte makes the construction explicit: a seal of any other version — the
//! anonymous v1 seals, whose first byte was the first byte of an ephemeral key — is refused
//! with [`PeerMisbehaved::SealVersion`], never opened as anonymous.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use hkdf::Hkdf;
use rand::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{ApiMisuse, InvalidMessage, PeerMisbehaved, Result};
use crate::params::SEAL_OVERHEAD;

/// The only seal version accepted: sender-authenticated (Noise `X`-like).
pub const SEAL_VERSION: u8 = 2;
/// HKDF `info` for the key that encrypts the sender's static key.
const INFO_ES: &[u8] = b"spore/seal/v2/es";
/// HKDF `info` for the payload key (ephemeral-static and static-static mixed).
const INFO_SS: &[u8] = b"spore/seal/v2/ss";
/// X25519 public key length.
const KEY_SIZE: usize = 32;
/// ChaCha20-Poly1305 tag length.
const TAG_SIZE: usize = 16;
/// Version byte + ephemeral key: the part of the seal sent in the clear.
const HEADER_SIZE: usize = 1 + KEY_SIZE;
/// The encrypted sender key.
const SENDER_BOX_SIZE: usize = KEY_SIZE + TAG_SIZE;

const _: () = assert!(SEAL_OVERHEAD == HEADER_SIZE + SENDER_BOX_SIZE + TAG_SIZE);

/// An opened seal: the plaintext and the mailbox key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sender's long-term mailbox public key, proven by the static-static exchange.
    pub sender: PublicKey,
    pub plaintext: Vec<u8>,
}

/// Seals `plaintext` from `sender` so that only the holder of `recipient`'s secret key can
/// read it, and learns that `sender`'s public key sealed it.
///
/// The output is exactly `plaintext.len() + SEAL_OVERHEAD` bytes. Fails with
/// [`PeerMisbehaved::LowOrderPoint`] if `recipient` is a low-order point (a published address
/// carrying such a key would make the "encryption" readable by everyone).
///
/// ```
/// use spore_protocol::{seal, MailboxKey};
///
/// let alice = MailboxKey::generate(&mut rand::rng());
/// let bob = MailboxKey::generate(&mut rand::rng());
/// let sealed = seal::seal(&mut rand::rng(), alice.secret(), &bob.public(), b"fragment").unwrap();
/// let opened = seal::open(bob.secret(), &sealed).unwrap();
/// assert_eq!(opened.plaintext, b"fragment");
/// assert_eq!(opened.sender, alice.public());
/// ```
///
/// The ephemeral key comes from `rng` (the caller's, so time and randomness come from
/// outside this crate); it must be a cryptographic generator.
pub fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    sender: &StaticSecret,
    recipient: &PublicKey,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    // Drawn straight into the secret type, so it is zeroized on drop with no stray copy.
    let ephemeral = StaticSecret::random_from_rng(rng);
    seal_with_ephemeral(
        &ephemeral,
        sender,
        &PublicKey::from(sender),
        recipient,
        plaintext,
    )
}

/// The deterministic core of [`seal`], split out so tests can fix the ephemeral key and
/// claim a sender key other than the one whose secret is used.
fn seal_with_ephemeral(
    ephemeral: &StaticSecret,
    sender: &StaticSecret,
    claimed_sender: &PublicKey,
    recipient: &PublicKey,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let ephemeral_pk = PublicKey::from(ephemeral);
    let mut transcript = Vec::with_capacity(HEADER_SIZE + KEY_SIZE + SENDER_BOX_SIZE);
    transcript.push(SEAL_VERSION);
    transcript.extend_from_slice(ephemeral_pk.as_bytes());
    transcript.extend_from_slice(recipient.as_bytes());

    let es = ephemeral.diffie_hellman(recipient);
    let sender_box = cipher(&transcript, &[&es], INFO_ES)?
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: claimed_sender.as_bytes(),
                aad: &transcript,
            },
        )
        .map_err(|_| ApiMisuse::InvalidArgument("sender key did not seal"))?;
    transcript.extend_from_slice(&sender_box);

    let ss = sender.diffie_hellman(recipient);
    let ciphertext = cipher(&transcript, &[&es, &ss], INFO_SS)?
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad: &transcript,
            },
        )
        // ChaCha20-Poly1305 only fails for inputs beyond 256 GiB.
        .map_err(|_| ApiMisuse::InvalidArgument("plaintext too long to seal"))?;

    let mut sealed = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    sealed.push(SEAL_VERSION);
    sealed.extend_from_slice(ephemeral_pk.as_bytes());
    sealed.extend_from_slice(&sender_box);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// Opens a message produced by [`seal`] for the key `recipient_secret`, and returns it with
/// the sender key that sealed it.
///
/// Fails with [`InvalidMessage::Truncated`] if `sealed` is shorter than [`SEAL_OVERHEAD`],
/// [`PeerMisbehaved::SealVersion`] for any version but [`SEAL_VERSION`] (an anonymous v1
/// seal among them), [`PeerMisbehaved::LowOrderPoint`] if the ephemeral or sender key is a
/// low-order point, and [`InvalidMessage::Decrypt`] if the message was not sealed to this
/// key, was modified, or names a sender key its sealer does not hold.
pub fn open(recipient_secret: &StaticSecret, sealed: &[u8]) -> Result<Opened> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(InvalidMessage::Truncated.into());
    }
    let (&version, rest) = sealed.split_first().ok_or(InvalidMessage::Truncated)?;
    if version != SEAL_VERSION {
        return Err(PeerMisbehaved::SealVersion(version).into());
    }
    let (ephemeral_bytes, rest) = rest
        .split_first_chunk::<KEY_SIZE>()
        .ok_or(InvalidMessage::Truncated)?;
    let (sender_box, ciphertext) = rest
        .split_first_chunk::<SENDER_BOX_SIZE>()
        .ok_or(InvalidMessage::Truncated)?;
    let ephemeral_pk = PublicKey::from(*ephemeral_bytes);
    let recipient_pk = PublicKey::from(recipient_secret);
    let mut transcript = Vec::with_capacity(HEADER_SIZE + KEY_SIZE + SENDER_BOX_SIZE);
    transcript.push(version);
    transcript.extend_from_slice(ephemeral_pk.as_bytes());
    transcript.extend_from_slice(recipient_pk.as_bytes());

    let es = recipient_secret.diffie_hellman(&ephemeral_pk);
    let sender_bytes = cipher(&transcript, &[&es], INFO_ES)?
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: sender_box,
                aad: &transcript,
            },
        )
        .map_err(|_| InvalidMessage::Decrypt)?;
    let sender_bytes: [u8; KEY_SIZE] = sender_bytes
        .try_into()
        .map_err(|_| InvalidMessage::Decrypt)?;
    let sender = PublicKey::from(sender_bytes);
    transcript.extend_from_slice(sender_box);

    let ss = recipient_secret.diffie_hellman(&sender);
    let plaintext = cipher(&transcript, &[&es, &ss], INFO_SS)?
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: ciphertext,
                aad: &transcript,
            },
        )
        .map_err(|_| InvalidMessage::Decrypt)?;
    Ok(Opened { sender, plaintext })
}

/// Derives a one-time AEAD key from the Diffie-Hellman results `shared`, salted with the
/// transcript so far (which binds it to this exact exchange).
fn cipher(salt: &[u8], shared: &[&SharedSecret], info: &[u8]) -> Result<ChaCha20Poly1305> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(shared.len() * KEY_SIZE));
    for s in shared {
        if !s.was_contributory() {
            return Err(PeerMisbehaved::LowOrderPoint.into());
        }
        ikm.extend_from_slice(s.as_bytes());
    }
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), &ikm)
        .expand(info, key.as_mut())
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        .map_err(|_| ApiMisuse::InvalidArgument("hkdf output length"))?;
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
    fn sealed_message_round_trips_with_its_sender() {
        let (sender, sender_pk) = keypair(70);
        let (secret, public) = keypair(7);
        let sealed = seal(&mut rand::rng(), &sender, &public, b"hello mailbox").unwrap();
        assert_eq!(sealed.len(), b"hello mailbox".len() + SEAL_OVERHEAD);
        assert_eq!(sealed[0], SEAL_VERSION);
        let opened = open(&secret, &sealed).unwrap();
        assert_eq!(opened.plaintext, b"hello mailbox");
        assert_eq!(opened.sender, sender_pk);
    }

    #[test]
    fn the_sender_key_is_not_in_the_clear() {
        let (sender, sender_pk) = keypair(71);
        let (_, public) = keypair(7);
        let sealed = seal(&mut rand::rng(), &sender, &public, b"x").unwrap();
        assert!(
            !sealed
                .windows(KEY_SIZE)
                .any(|w| w == sender_pk.as_bytes().as_slice()),
            "only the recipient may learn who sealed"
        );
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let (sender, _) = keypair(80);
        let (secret, public) = keypair(8);
        let sealed = seal(&mut rand::rng(), &sender, &public, b"").unwrap();
        assert_eq!(sealed.len(), SEAL_OVERHEAD);
        assert_eq!(open(&secret, &sealed).unwrap().plaintext, b"");
    }

    #[test]
    fn each_seal_uses_a_fresh_ephemeral_key() {
        let (sender, _) = keypair(90);
        let (_, public) = keypair(9);
        let a = seal(&mut rand::rng(), &sender, &public, b"same").unwrap();
        let b = seal(&mut rand::rng(), &sender, &public, b"same").unwrap();
        assert_ne!(a[..HEADER_SIZE], b[..HEADER_SIZE]);
        assert_ne!(a, b);
    }

    #[test]
    fn the_callers_rng_decides_the_ephemeral_key() {
        use rand::SeedableRng;
        use rand::rngs::StdRng;
        let (sender, _) = keypair(91);
        let (secret, public) = keypair(9);
        let a = seal(&mut StdRng::seed_from_u64(1), &sender, &public, b"same").unwrap();
        let b = seal(&mut StdRng::seed_from_u64(1), &sender, &public, b"same").unwrap();
        assert_eq!(a, b, "same seed, same sealed bytes");
        assert_eq!(open(&secret, &a).unwrap().plaintext, b"same");
    }

    #[test]
    fn wrong_recipient_cannot_open() {
        let (sender, _) = keypair(10);
        let (_, public) = keypair(1);
        let (other_secret, _) = keypair(2);
        let sealed = seal(&mut rand::rng(), &sender, &public, b"secret").unwrap();
        assert_eq!(
            open(&other_secret, &sealed),
            Err(Error::InvalidMessage(InvalidMessage::Decrypt))
        );
    }

    /// Issue 16: a peer who knows another sender's public key (it is in that sender's address)
    /// cannot seal in its name: without that sender's secret the static-static key differs.
    #[test]
    fn a_seal_claiming_another_senders_key_does_not_open() {
        let (forger, _) = keypair(20);
        let (_, victim_pk) = keypair(21);
        let (secret, public) = keypair(22);
        let eph = StaticSecret::from([23u8; 32]);
        let forged =
            seal_with_ephemeral(&eph, &forger, &victim_pk, &public, b"from victim").unwrap();
        assert_eq!(
            open(&secret, &forged),
            Err(Error::InvalidMessage(InvalidMessage::Decrypt))
        );
        // The same construction with the victim's real secret opens: the forgery fails for
        // the missing secret alone.
        let (victim, _) = keypair(21);
        let real = seal_with_ephemeral(&eph, &victim, &victim_pk, &public, b"from victim").unwrap();
        assert_eq!(open(&secret, &real).unwrap().sender, victim_pk);
    }

    /// Swapping in another (honestly encrypted) sender box for a seal made by someone else
    /// fails too: the payload key is bound to the sender box through the transcript.
    #[test]
    fn a_transplanted_sender_box_does_not_open() {
        let (alice, _) = keypair(30);
        let (mallory, _) = keypair(31);
        let (secret, public) = keypair(32);
        let eph = StaticSecret::from([33u8; 32]);
        let from_alice = seal_with_ephemeral(
            &eph,
            &alice,
            &PublicKey::from(&alice),
            &public,
            b"same length",
        )
        .unwrap();
        let mut from_mallory = seal_with_ephemeral(
            &eph,
            &mallory,
            &PublicKey::from(&mallory),
            &public,
            b"same length",
        )
        .unwrap();
        from_mallory[HEADER_SIZE..HEADER_SIZE + SENDER_BOX_SIZE]
            .copy_from_slice(&from_alice[HEADER_SIZE..HEADER_SIZE + SENDER_BOX_SIZE]);
        assert!(open(&secret, &from_mallory).is_err());
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let (sender, _) = keypair(30);
        let (secret, public) = keypair(3);
        let sealed = seal(&mut rand::rng(), &sender, &public, b"tamper with me").unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[byte] ^= 1 << bit;
                assert!(open(&secret, &tampered).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    /// No silent downgrade: an anonymous v1 seal (ephemeral key first, no version byte) and
    /// any unknown version are refused by version, before any decryption.
    #[test]
    fn other_seal_versions_are_refused() {
        let (sender, _) = keypair(40);
        let (secret, public) = keypair(4);
        let mut sealed = seal(&mut rand::rng(), &sender, &public, b"x").unwrap();
        for version in [0u8, 1, 3, 0xff] {
            sealed[0] = version;
            assert_eq!(
                open(&secret, &sealed),
                Err(Error::PeerMisbehaved(PeerMisbehaved::SealVersion(version)))
            );
        }
        assert_eq!(
            Error::from(PeerMisbehaved::SealVersion(1)).reason(),
            "seal_version"
        );
    }

    #[test]
    fn truncated_seal_is_rejected() {
        let (sender, _) = keypair(41);
        let (secret, public) = keypair(4);
        let sealed = seal(&mut rand::rng(), &sender, &public, b"x").unwrap();
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
            let mut sealed = vec![SEAL_VERSION];
            sealed.extend_from_slice(&point);
            sealed.extend_from_slice(&[0u8; SEAL_OVERHEAD]);
            assert_eq!(
                open(&secret, &sealed),
                Err(Error::PeerMisbehaved(PeerMisbehaved::LowOrderPoint))
            );
        }
    }

    #[test]
    fn low_order_sender_key_is_rejected() {
        let (secret, public) = keypair(5);
        let (sender, _) = keypair(50);
        let eph = StaticSecret::from([51u8; 32]);
        for point in [[0u8; 32], LOW_ORDER_POINT] {
            // The sealer can encrypt any claimed key; the recipient's ss exchange with a
            // low-order point is refused before it could yield a key anyone can compute.
            let sealed =
                seal_with_ephemeral(&eph, &sender, &PublicKey::from(point), &public, b"x").unwrap();
            assert_eq!(
                open(&secret, &sealed),
                Err(Error::PeerMisbehaved(PeerMisbehaved::LowOrderPoint))
            );
        }
    }

    #[test]
    fn low_order_recipient_key_is_refused() {
        let (sender, _) = keypair(52);
        for point in [[0u8; 32], LOW_ORDER_POINT] {
            assert_eq!(
                seal(&mut rand::rng(), &sender, &PublicKey::from(point), b"x"),
                Err(Error::PeerMisbehaved(PeerMisbehaved::LowOrderPoint))
            );
        }
    }

    #[test]
    fn fixed_ephemeral_key_is_deterministic() {
        let (sender, sender_pk) = keypair(60);
        let (_, public) = keypair(6);
        let eph = StaticSecret::from([42u8; 32]);
        let a = seal_with_ephemeral(&eph, &sender, &sender_pk, &public, b"abc").unwrap();
        let b = seal_with_ephemeral(&eph, &sender, &sender_pk, &public, b"abc").unwrap();
        assert_eq!(a, b);
    }

    proptest! {
        #[test]
        fn open_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (secret, _) = keypair(11);
            let _ = open(&secret, &data);
        }

        #[test]
        fn seal_round_trips_arbitrary_plaintext(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            sender_seed in any::<[u8; 32]>(),
        ) {
            let sender = StaticSecret::from(sender_seed);
            let (secret, public) = keypair(12);
            let sealed = seal(&mut rand::rng(), &sender, &public, &data).unwrap();
            prop_assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
            let opened = open(&secret, &sealed).unwrap();
            prop_assert_eq!(opened.sender, PublicKey::from(&sender));
            prop_assert_eq!(opened.plaintext, data);
        }

        #[test]
        fn any_tampered_byte_fails(
            data in proptest::collection::vec(any::<u8>(), 0..100),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (sender, _) = keypair(13);
            let (secret, public) = keypair(14);
            let mut sealed = seal(&mut rand::rng(), &sender, &public, &data).unwrap();
            let i = at.index(sealed.len());
            sealed[i] ^= flip;
            prop_assert!(open(&secret, &sealed).is_err());
        }

        #[test]
        fn a_claimed_sender_without_its_secret_never_opens(
            forger_seed in any::<[u8; 32]>(),
            victim_seed in any::<[u8; 32]>(),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let forger = StaticSecret::from(forger_seed);
            let victim = PublicKey::from(&StaticSecret::from(victim_seed));
            prop_assume!(PublicKey::from(&forger) != victim);
            let (secret, public) = keypair(15);
            let eph = StaticSecret::from([16u8; 32]);
            let forged = seal_with_ephemeral(&eph, &forger, &victim, &public, &data).unwrap();
            prop_assert!(open(&secret, &forged).is_err());
        }

        #[test]
        fn only_the_recipient_opens(
            other_seed in any::<[u8; 32]>(),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (sender, _) = keypair(17);
            let (secret, public) = keypair(18);
            let other = StaticSecret::from(other_seed);
            prop_assume!(PublicKey::from(&other) != public);
            let sealed = seal(&mut rand::rng(), &sender, &public, &data).unwrap();
            prop_assert!(open(&other, &sealed).is_err());
            prop_assert!(open(&secret, &sealed).is_ok());
        }
    }
}
