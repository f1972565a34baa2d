//! The primitives, each from a maintained crate: X25519 (x25519-dalek) for key agreement,
//! HKDF-SHA256 (hkdf, sha2) to turn an agreement into a key, ChaCha20-Poly1305
//! (chacha20poly1305) for the shares on their way through the server, and the ChaCha20
//! keystream (chacha20, RFC 8439) to expand a 32-byte seed into a mask. Nothing here is a
//! primitive of our own: only which key is derived for what (domain separation).

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use protocol::secagg::{Bytes32, Member, MemberKeys};
use rand::Rng;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Why a key or a ciphertext is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "member {0}'s public key gives no shared secret (a low-order point): refused, it can only come from a broken or hostile peer"
    )]
    WeakKey(Member),
    #[error(
        "an envelope from member {from} to {to} does not decrypt: it was altered or is not for this round"
    )]
    Envelope { from: Member, to: Member },
}

/// 32 secret bytes, wiped when dropped.
pub type Secret = Zeroizing<[u8; 32]>;

/// 32 fresh random bytes from `rng` (the OS's CSPRNG in the clients and the server).
pub fn random_secret(rng: &mut impl Rng) -> Secret {
    let mut s = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(s.as_mut());
    s
}

/// A member's two key pairs for one round. The masking key's secret is shared among its
/// neighbours (so that it can be rebuilt if the member drops); the encryption key's never is.
pub struct KeyPairs {
    pub encryption: StaticSecret,
    pub masking: StaticSecret,
}

impl KeyPairs {
    pub fn generate(rng: &mut impl Rng) -> Self {
        Self {
            encryption: StaticSecret::from(*random_secret(rng)),
            masking: StaticSecret::from(*random_secret(rng)),
        }
    }

    pub fn public(&self) -> MemberKeys {
        MemberKeys {
            encryption: Bytes32(PublicKey::from(&self.encryption).to_bytes()),
            masking: Bytes32(PublicKey::from(&self.masking).to_bytes()),
        }
    }
}

/// Whether a public key is a low-order point: an X25519 agreement with it is the same known
/// value whatever the secret, so it protects nothing.
pub fn is_weak(key: &Bytes32) -> bool {
    // Any clamped scalar maps a low-order point to the identity.
    !StaticSecret::from([1u8; 32])
        .diffie_hellman(&PublicKey::from(key.0))
        .was_contributory()
}

/// The public key of a masking secret (to check a rebuilt one against what was published).
pub fn masking_public(secret: &[u8; 32]) -> Bytes32 {
    Bytes32(PublicKey::from(&StaticSecret::from(*secret)).to_bytes())
}

/// X25519 then HKDF-SHA256: the round's `session` is the salt, and `info` names the use, so no
/// key serves two purposes or two rounds.
fn derive(
    mine: &StaticSecret,
    theirs: &Bytes32,
    peer: Member,
    session: &Bytes32,
    info: &[u8],
) -> Result<Secret, CryptoError> {
    let shared = mine.diffie_hellman(&PublicKey::from(theirs.0));
    if !shared.was_contributory() {
        return Err(CryptoError::WeakKey(peer));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&session.0), shared.as_bytes())
        .expand(info, key.as_mut())
        .map_err(|_| CryptoError::WeakKey(peer))?;
    Ok(key)
}

fn info(label: &[u8], a: Member, b: Member) -> Vec<u8> {
    let mut v = label.to_vec();
    v.extend_from_slice(&a.to_le_bytes());
    v.extend_from_slice(&b.to_le_bytes());
    v
}

/// The seed of the mask `me` and `peer` share: the same on both sides (the pair is ordered)
/// when both mask under the same `context` — what each was told to compute (a distributed-DP
/// round's noise settings). Members told different things get masks that do not cancel, so a
/// server cannot sum one member's vector with others that were given less noise to add.
pub fn pairwise_seed(
    my_masking: &StaticSecret,
    me: Member,
    peer: Member,
    peer_masking: &Bytes32,
    session: &Bytes32,
    context: &Bytes32,
) -> Result<Secret, CryptoError> {
    let (lo, hi) = (me.min(peer), me.max(peer));
    let mut info = info(b"fl-dp secagg pairwise mask v2", lo, hi);
    info.extend_from_slice(&context.0);
    derive(my_masking, peer_masking, peer, session, &info)
}

/// The AEAD key for the envelope `from` → `to`: one key per direction and round, so the fixed
/// nonce is never used twice under one key.
fn envelope_key(
    my_encryption: &StaticSecret,
    from: Member,
    to: Member,
    peer_encryption: &Bytes32,
    peer: Member,
    session: &Bytes32,
) -> Result<Secret, CryptoError> {
    derive(
        my_encryption,
        peer_encryption,
        peer,
        session,
        &info(b"fl-dp secagg envelope v1", from, to),
    )
}

fn aad(session: &Bytes32, from: Member, to: Member) -> Vec<u8> {
    let mut v = session.0.to_vec();
    v.extend_from_slice(&from.to_le_bytes());
    v.extend_from_slice(&to.to_le_bytes());
    v
}

/// Encrypts `plaintext` from `from` (whose encryption secret is `mine`) to `to`.
pub fn seal(
    mine: &StaticSecret,
    from: Member,
    to: Member,
    their_key: &Bytes32,
    session: &Bytes32,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = envelope_key(mine, from, to, their_key, to, session)?;
    let cipher = ChaCha20Poly1305::new((&*key).into());
    let aad = aad(session, from, to);
    cipher
        .encrypt(
            &Default::default(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Envelope { from, to })
}

/// Decrypts an envelope `from` → `to` received by `to` (whose encryption secret is `mine`).
pub fn open(
    mine: &StaticSecret,
    from: Member,
    to: Member,
    their_key: &Bytes32,
    session: &Bytes32,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let key = envelope_key(mine, from, to, their_key, from, session)?;
    let cipher = ChaCha20Poly1305::new((&*key).into());
    let aad = aad(session, from, to);
    cipher
        .decrypt(
            &Default::default(),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Envelope { from, to })
}

/// `len` pseudorandom u32s from a seed: the ChaCha20 keystream (nonce 0) read little-endian.
/// Adding it mod 2³² hides a vector as well as a one-time pad, for anyone without the seed.
pub fn expand(seed: &[u8; 32], len: usize) -> Vec<u32> {
    let mut bytes = vec![0u8; len * 4];
    let mut stream = ChaCha20::new(seed.into(), &Default::default());
    stream.apply_keystream(&mut bytes);
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// SHA-256 of a member's self-mask seed, bound to the round and the member: published before
/// any vector is, so that a seed rebuilt from wrong shares is caught rather than used.
pub fn seed_commitment(session: &Bytes32, member: Member, seed: &[u8; 32]) -> Bytes32 {
    let mut h = Sha256::new();
    h.update(b"fl-dp secagg seed commitment v1");
    h.update(session.0);
    h.update(member.to_le_bytes());
    h.update(seed);
    Bytes32(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    #[test]
    fn both_sides_derive_the_same_mask_and_only_they_can_open_envelopes() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (a, b, eve) = (
            KeyPairs::generate(&mut rng),
            KeyPairs::generate(&mut rng),
            KeyPairs::generate(&mut rng),
        );
        let session = Bytes32([9; 32]);
        let (pa, pb) = (a.public(), b.public());
        let ctx = Bytes32([0; 32]);
        let ab = pairwise_seed(&a.masking, 1, 2, &pb.masking, &session, &ctx).unwrap();
        let ba = pairwise_seed(&b.masking, 2, 1, &pa.masking, &session, &ctx).unwrap();
        assert_eq!(*ab, *ba);
        let other_round =
            pairwise_seed(&a.masking, 1, 2, &pb.masking, &Bytes32([8; 32]), &ctx).unwrap();
        // Told to compute something else: another mask, which does not cancel.
        let other_context =
            pairwise_seed(&a.masking, 1, 2, &pb.masking, &session, &Bytes32([1; 32])).unwrap();
        assert_ne!(*ab, *other_context);
        assert_ne!(*ab, *other_round, "each round its own masks");

        let sealed = seal(&a.encryption, 1, 2, &pb.encryption, &session, b"shares").unwrap();
        assert_eq!(sealed.len(), 6 + 16);
        let opened = open(&b.encryption, 1, 2, &pa.encryption, &session, &sealed).unwrap();
        assert_eq!(&opened[..], b"shares");
        // Not by a third party, not as if sent the other way, not in another round, not altered.
        let pe = eve.public();
        assert!(open(&eve.encryption, 1, 2, &pa.encryption, &session, &sealed).is_err());
        assert!(open(&b.encryption, 2, 1, &pa.encryption, &session, &sealed).is_err());
        assert!(
            open(
                &b.encryption,
                1,
                2,
                &pa.encryption,
                &Bytes32([0; 32]),
                &sealed
            )
            .is_err()
        );
        // Each session its own envelope key: the fixed nonce never serves twice under one key,
        // even when key pairs are reused across rounds.
        let key = |session| envelope_key(&a.encryption, 1, 2, &pb.encryption, 2, session).unwrap();
        assert_ne!(*key(&session), *key(&Bytes32([8; 32])));
        let mut altered = sealed.clone();
        altered[0] ^= 1;
        assert!(open(&b.encryption, 1, 2, &pa.encryption, &session, &altered).is_err());
        assert_ne!(pe, pa);
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let a = KeyPairs::generate(&mut rng);
        let zero = Bytes32([0; 32]);
        assert_eq!(
            pairwise_seed(
                &a.masking,
                1,
                5,
                &zero,
                &Bytes32([1; 32]),
                &Bytes32([0; 32])
            )
            .unwrap_err(),
            CryptoError::WeakKey(5)
        );
    }

    #[test]
    fn masks_are_the_rfc_8439_keystream() {
        // RFC 8439 §2.4.2's key and a zero nonce would differ from its test vector (which uses
        // a nonce and counter 1); check the first block of key 0, nonce 0 instead (§A.1 #1).
        let first = expand(&[0; 32], 4);
        assert_eq!(
            first,
            [0xade0b876, 0x903df1a0, 0xe56a5d40, 0x28bd8653],
            "ChaCha20 block 0 of the all-zero key and nonce"
        );
        assert_eq!(expand(&[1; 32], 1000).len(), 1000);
        let commitment = seed_commitment(&Bytes32([0; 32]), 1, &[0; 32]);
        assert_ne!(commitment, seed_commitment(&Bytes32([0; 32]), 2, &[0; 32]));
    }
}
