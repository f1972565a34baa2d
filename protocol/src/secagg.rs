//! What a client and the server exchange for secure aggregation (SecAgg, Bonawitz et al., CCS 2017,
//! with the neighbourhoods of SecAgg+, Bell et al., CCS 2020): public keys, encrypted shares,
//! which neighbours survived, and the shares that unmask the sum. Plain bytes and indices, defined
//! once here for the server, the browser worker and the simulator; the cryptography that makes
//! and checks them is the `secagg` crate's.
//!
//! Every byte string has a fixed length ([`SHARE_BYTES`], [`ENVELOPE_BYTES`], 32 for keys),
//! enforced where a peer's message is decoded (`ClientMessage::decode`).

use serde::{Deserialize, Serialize};

/// A client's place in one round's cohort, `1..=n`. It is also the x-coordinate of the Shamir
/// shares it holds, so it is never 0.
pub type Member = u32;

/// Largest cohort a round runs secure aggregation with.
pub const MAX_MEMBERS: u32 = 10_000;
/// Most neighbours a member shares with (SecAgg+'s k): what keeps the relayed keys and
/// envelopes of one member inside one control message.
pub const MAX_NEIGHBOURS: u32 = 200;
/// Most members whose encoded sum cannot wrap 2³² when each value is at most `levels`.
pub fn max_members(levels: u32) -> u32 {
    (u32::MAX / levels.max(1)).min(MAX_MEMBERS)
}

/// A Shamir share of a 32-byte secret: the member it belongs to (4 bytes) and five field
/// elements of 8 bytes.
pub const SHARE_BYTES: usize = 4 + 5 * 8;
/// An encrypted pair of shares: sender and recipient (4 + 4 bytes), a share of the sender's
/// self-mask seed and one of its masking key, and the 16-byte Poly1305 tag.
pub const ENVELOPE_BYTES: usize = 8 + 2 * SHARE_BYTES + 16;

/// 32 bytes (a public key, a commitment, a session id), hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes32(pub [u8; 32]);

/// A member's two X25519 public keys: one to encrypt the shares sent to it, one to agree on
/// the pairwise masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberKeys {
    pub encryption: Bytes32,
    pub masking: Bytes32,
}

/// Shares from one member for another, encrypted so that only the recipient reads them (the
/// server relays it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: Member,
    pub to: Member,
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A member's second message: its envelopes for its neighbours, and a commitment to its
/// self-mask seed (SHA-256), so that a seed rebuilt from wrong shares is caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedKeys {
    pub envelopes: Vec<Envelope>,
    pub seed_commitment: Bytes32,
}

/// What the server asks a surviving member to reveal: shares of the self-mask seeds of its
/// neighbours that sent a masked vector, and shares of the masking keys of those that did not.
/// A member answers one request per round and never for a neighbour in both lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    pub survivors: Vec<Member>,
    pub dropped: Vec<Member>,
}

/// One revealed share, of the secret of `of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    pub of: Member,
    #[serde(with = "hex_bytes")]
    pub share: Vec<u8>,
}

/// A member's answer to an [`UnmaskRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    pub seeds: Vec<RevealedShare>,
    pub masking_keys: Vec<RevealedShare>,
}

/// What the server tells a sampled member before a secure round: its place in the cohort, who
/// its neighbours are, and how to encode its update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecAggSetup {
    pub server_round: u64,
    /// Random per round and attempt: every key of the round is derived with it.
    pub session: Bytes32,
    pub member: Member,
    pub members: u32,
    /// Shares that rebuild a member's secret (among it and its neighbours).
    pub threshold: u32,
    pub neighbours: Vec<Member>,
    /// Update values are clipped to [−clip, clip] and mapped onto `0..=levels`.
    pub clip: f32,
    pub levels: u32,
    /// Examples that weigh 1: a member's FedAvg weight is min(examples, this) / this.
    pub max_weight: u64,
    /// The cohort, places and neighbours are the last round's, and every member keeps its keys
    /// from it: no key step, the member shares at once (under this fresh session).
    #[serde(default)]
    pub reuse_keys: bool,
}

/// A neighbour's public keys, as the server relays them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKeys {
    pub member: Member,
    pub keys: MemberKeys,
}

impl Serialize for Bytes32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = from_hex(&text).map_err(serde::de::Error::custom)?;
        let array: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            serde::de::Error::custom(format!("{} bytes: expected 32", b.len()))
        })?;
        Ok(Self(array))
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase or uppercase hex, an even number of digits.
fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!(
            "hex of {} digits: expected an even number",
            text.len()
        ));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("not hex at digit {i}: expected 0-9, a-f"))
        })
        .collect()
}

/// Byte strings as hex in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_travel_as_hex_and_bad_hex_is_named() {
        let keys = MemberKeys {
            encryption: Bytes32([0xab; 32]),
            masking: Bytes32([1; 32]),
        };
        let json = serde_json::to_string(&keys).unwrap();
        assert!(json.contains(&"ab".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<MemberKeys>(&json).unwrap(), keys);
        let short = json.replace(&"ab".repeat(32), "abcd");
        let err = serde_json::from_str::<MemberKeys>(&short).unwrap_err();
        assert!(err.to_string().contains("2 bytes: expected 32"), "{err}");
        let odd = json.replace(&"ab".repeat(32), "abc");
        assert!(serde_json::from_str::<MemberKeys>(&odd).is_err());
        let not_hex = json.replace(&"ab".repeat(32), &"zz".repeat(32));
        let err = serde_json::from_str::<MemberKeys>(&not_hex).unwrap_err();
        assert!(err.to_string().contains("not hex"), "{err}");
    }
}
