//! Secure aggregation: the server learns the sum of the members' vectors and nothing else about
//! any one of them, even when some members drop out along the way.
//!
//! The protocol is SecAgg (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
//! Machine Learning", CCS 2017) with the neighbourhoods of SecAgg+ (Bell et al., "Secure
//! Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020), in four steps:
//!
//! 1. **Keys** — each member makes two X25519 key pairs and sends the public keys; the server
//!    relays each member's neighbours' keys to it.
//! 2. **Shares** — each member draws a self-mask seed `b` and Shamir-shares it and its masking
//!    secret `s` (threshold t) among itself and its neighbours, each pair of shares encrypted
//!    for its holder (ChaCha20-Poly1305 under an HKDF key from the X25519 agreement); the server
//!    relays the envelopes.
//! 3. **Masked vector** — each member adds to its integer vector the mask expanded from `b` and,
//!    for each neighbour, ± the mask expanded from their agreed pairwise seed (mod 2³²). The
//!    pairwise masks cancel in the sum; the self-masks do not.
//! 4. **Unmask** — the server tells each survivor who of its neighbours sent a vector and who
//!    did not; the survivor reveals shares of the former's `b` and of the latter's `s`, never both
//!    for one member. With t shares the server rebuilds every survivor's `b` and every dropped
//!    member's `s`, removes the self-masks and the dropped members' leftover pairwise masks, and
//!    has exactly the sum of the survivors' vectors.
//!
//! [`client`] and [`server`] are the two sides as state machines in types (a member cannot
//! mask before it holds shares, nor reveal twice); they do no I/O, so they run the same in the
//! browser worker, the simulator and the server, and are tested without a network. The wire
//! types are `protocol::secagg`'s. [`encode`] turns float updates into the integers summed.
//!
//! Threat model: the server is honest but curious (it follows the protocol and reads everything
//! it receives) and may collude with fewer than t of a member's share holders. The threshold
//! must be a strict majority of each member's holders (2t > k + 1), so that even a server that
//! lied about who dropped could not collect t shares of both secrets of one member from honest
//! holders, each of which reveals only one of the two. That does not make it safe against a
//! server that deviates: one that relays to a member only a few neighbours' envelopes (so it
//! masks with those few) and tells different holders different survivor lists can rebuild the
//! member's seed and those few neighbours' masking secrets, and unmask it. SecAgg's consistency
//! step (survivors sign the list they were given and check t matching signatures) would close
//! that; it needs authenticated keys and is not built. Public keys are not authenticated: a
//! server that substitutes them (an active attacker) is out of scope.

pub mod bench;
pub mod client;
pub mod crypto;
pub mod encode;
pub mod graph;
pub mod server;
pub mod shamir;

use std::collections::BTreeSet;

pub use encode::{Encoding, EncodingError};
use protocol::secagg::{Bytes32, MAX_MEMBERS, Member};

/// What both sides of a round agree on before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Random per round (and per attempt): the salt of every key derivation, so nothing of one
    /// round is valid in another.
    pub session: Bytes32,
    /// Members of the cohort, numbered 1..=members.
    pub members: u32,
    /// Shares needed to rebuild a member's secret, among the member and its neighbours.
    pub threshold: u32,
    /// Values in each member's vector.
    pub vector_len: usize,
}

/// Why a step of the protocol cannot be taken. Nothing partial is ever unmasked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    #[error("{0}")]
    Crypto(#[from] crypto::CryptoError),
    #[error("{0}")]
    Shamir(#[from] shamir::ShamirError),
    #[error(
        "threshold {threshold} with {holders} share holders (the member and its neighbours): expected more than half of them and at most all"
    )]
    Threshold { threshold: u32, holders: usize },
    #[error("member {0}: expected a member from 1 to the cohort's size")]
    NotAMember(Member),
    #[error("a cohort of {0}: expected 2 to {MAX_MEMBERS} members")]
    CohortSize(u32),
    #[error("member {member} is not a neighbour of {of}")]
    NotANeighbour { member: Member, of: Member },
    #[error("member {0} appears twice")]
    Twice(Member),
    #[error("members {0} and {1} published the same public key")]
    SameKey(Member, Member),
    #[error("{what} from member {member}: {why}")]
    Malformed {
        what: &'static str,
        member: Member,
        why: String,
    },
    #[error("a vector of {actual} values: expected {expected}")]
    Length { expected: usize, actual: usize },
    #[error(
        "member {member} has {holders} share holders left, fewer than the threshold {threshold}: the round cannot be unmasked"
    )]
    TooFewSurvivors {
        member: Member,
        holders: usize,
        threshold: u32,
    },
    #[error("no member is left in the round")]
    Empty,
    #[error(
        "the members that sent a vector fall apart into groups with no neighbour in common: unmasking would reveal each group's sum; the round cannot be unmasked"
    )]
    Split,
    #[error("asked to reveal both secrets of member {0}: refused (that would unmask its vector)")]
    BothSecrets(Member),
    #[error("the secret of member {0} rebuilt from its shares does not match what it published")]
    Mismatch(Member),
    #[error(
        "asked to reveal the masking secret of member {0} in a round that reuses keys: refused (its self-mask seeds of earlier rounds under the same keys were revealed, and with its masking secret they would unmask those rounds' vectors)"
    )]
    ResumedKeyReveal(Member),
    #[error(
        "member {0} dropped after sharing in a round that reuses keys: its masking secret cannot be revealed (it would unmask its earlier rounds' vectors); the round needs fresh keys"
    )]
    ResumedKeyDropout(Member),
    #[error("keys kept from an earlier round cannot serve this one: {0}")]
    NotReusable(NotReusable),
}

/// Why a member's kept keys cannot serve a round (`client::Keyed::resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReusable {
    #[error("the member is given another place in the cohort")]
    Place,
    #[error("the member is given other neighbours")]
    Neighbours,
    #[error("another cohort size, threshold or vector length")]
    Cohort,
    #[error(
        "a session these keys already served in (the pairwise masks and envelope keys would repeat, and two rounds' vectors would give their difference)"
    )]
    SessionUsed,
}

/// 2t > holders and t ≤ holders: a strict majority of each member's holders — and a member
/// has at least one neighbour (alone, its vector would be masked by its own seed only).
pub fn check_threshold(threshold: u32, holders: usize) -> Result<(), SecAggError> {
    if holders < 2
        || threshold == 0
        || threshold as usize > holders
        || 2 * threshold as usize <= holders
    {
        return Err(SecAggError::Threshold { threshold, holders });
    }
    Ok(())
}

/// The smallest threshold that is a strict majority of `holders`.
pub fn majority(holders: usize) -> u32 {
    (holders / 2 + 1) as u32
}

/// Adds `b` into `a` mod 2³² (`sign` −1 subtracts).
pub fn add_into(a: &mut [u32], b: &[u32], sign: i8) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = if sign >= 0 {
            x.wrapping_add(y)
        } else {
            x.wrapping_sub(y)
        };
    }
}

/// Member `me` adds the pairwise mask with `peer` (+ when me < peer, − otherwise), so each
/// pair's two masks cancel.
pub fn pair_sign(me: Member, peer: Member) -> i8 {
    if me < peer { 1 } else { -1 }
}

fn check_member(params: &Params, m: Member) -> Result<(), SecAggError> {
    if m == 0 || m > params.members {
        return Err(SecAggError::NotAMember(m));
    }
    Ok(())
}

fn check_params(params: &Params) -> Result<(), SecAggError> {
    if !(2..=MAX_MEMBERS).contains(&params.members) {
        return Err(SecAggError::CohortSize(params.members));
    }
    Ok(())
}

/// The member and its neighbours: who holds shares of its secrets.
fn holders(me: Member, neighbours: &BTreeSet<Member>) -> Vec<Member> {
    let mut h: Vec<Member> = neighbours.iter().copied().collect();
    h.push(me);
    h.sort_unstable();
    h
}
