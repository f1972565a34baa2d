//! A member's side of one round, as a chain of states: [`Member::new`] → [`advertise`] →
//! [`share`] → [`receive`] → [`mask`] → [`reveal`]. Each step consumes the state before it, so
//! a member cannot mask before it holds its neighbours' shares, and cannot answer two unmask
//! requests (which could reveal both secrets of one neighbour).
//!
//! **Keys across rounds.** After a round in which every neighbour survived and no masking
//! secret was asked for, [`Masked::reveal_keeping`] hands back the member's key pairs and its
//! neighbours' public keys as [`Keyed`]; the next round of the same cohort may
//! [`resume`](Keyed::resume) with them and skip the key step (a round trip). Each resumed round
//! has a fresh session — so new envelope keys (the AEAD's fixed nonce never serves twice under
//! one key) and new pairwise masks — and a fresh self-mask seed. Why that is safe, in both
//! directions of "a seed of one round, the masking secret of another":
//! - *Seeds first, masking secret later*: by a resumed round the server holds, rebuilt from
//!   shares, a seed of every earlier round under these keys, and a masking secret revealed now
//!   would strip the pairwise masks of all of them. So a member reveals a masking secret only
//!   in the round its keys were made in, and a resumed round refuses to reveal any
//!   ([`SecAggError::ResumedKeyReveal`]; the server retries the round with fresh keys).
//! - *Masking secret first, seeds later*: a server that says, in the keys' first round, that v
//!   dropped collects shares of v's masking secret from the holders it told so — and each of
//!   them, having revealed a masking secret, keeps no keys ([`Masked::reveal_keeping`]), so it
//!   can open none of v's later envelopes, which are sealed to the kept keys. Those that revealed
//!   v's seed instead keep theirs, but to rebuild v's masking secret the server needed t
//!   holders, so at most holders − t < t of them (t is a strict majority) are left: v's later
//!   seeds cannot be rebuilt. (This, like every claim of the protocol, assumes that fewer than
//!   2t − holders of v's holders collude with the server; keys are never stored.)
//! - *The same session twice* would repeat the pairwise masks and envelope keys: refused
//!   ([`NotReusable::SessionUsed`]), as is resuming in another place, with other neighbours or
//!   another threshold, cohort size or vector length.
//!
//! [`advertise`]: Member::advertise
//! [`share`]: Advertised::share
//! [`receive`]: Shared::receive
//! [`mask`]: Holding::mask
//! [`reveal`]: Masked::reveal

use std::collections::{BTreeMap, BTreeSet};

use protocol::secagg::{
    Bytes32, ENVELOPE_BYTES, Envelope, Member as Index, MemberKeys, Reveal, RevealedShare,
    SHARE_BYTES, SharedKeys, UnmaskRequest,
};
use rand::Rng;
use zeroize::Zeroizing;

use crate::crypto::{self, KeyPairs, Secret};
use crate::shamir::{self, Share};
use crate::{
    NotReusable, Params, SecAggError, add_into, check_member, check_params, check_threshold,
    holders, pair_sign,
};

/// A member that knows its place in the round: its index and its neighbours.
pub struct Member {
    params: Params,
    me: Index,
    neighbours: BTreeSet<Index>,
}

/// The states print their member's index only: they hold secrets.
macro_rules! debug_index_only {
    ($($state:ident: $($field:ident).+),*) => {$(
        impl std::fmt::Debug for $state {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($state), "(member {})"), self.$($field).+)
            }
        }
    )*};
}

debug_index_only!(Member: me, Advertised: member.me, Shared: member.me, Holding: member.me, Masked: member.me, Keyed: member.me);

/// The sessions a member's key pairs served in, and whether this round resumed them.
#[derive(Clone)]
struct KeyHistory {
    sessions: BTreeSet<Bytes32>,
    resumed: bool,
}

/// Its public keys are out; it waits for its neighbours'.
pub struct Advertised {
    member: Member,
    keys: KeyPairs,
    history: KeyHistory,
}

/// Its shares are out; it waits for the envelopes addressed to it.
pub struct Shared {
    member: Member,
    keys: KeyPairs,
    seed: Secret,
    /// The neighbours' public keys as relayed (its own included, to check for copies).
    peers: BTreeMap<Index, MemberKeys>,
    /// Its own shares of its two secrets (it is one of their holders).
    own: (Share, Share),
    history: KeyHistory,
}

/// It holds its neighbours' shares and can mask its vector.
pub struct Holding {
    member: Member,
    keys: KeyPairs,
    seed: Secret,
    peers: BTreeMap<Index, MemberKeys>,
    /// Per member (itself included): its shares of that member's seed and masking secret.
    held: BTreeMap<Index, (Share, Share)>,
    history: KeyHistory,
}

/// Its masked vector is out; it answers one unmask request.
pub struct Masked {
    member: Member,
    keys: KeyPairs,
    peers: BTreeMap<Index, MemberKeys>,
    held: BTreeMap<Index, (Share, Share)>,
    history: KeyHistory,
}

/// What a member keeps after a round in which all its neighbours survived and no masking
/// secret was revealed: its key pairs and its neighbours' public keys, for the next round of
/// the same cohort.
pub struct Keyed {
    member: Member,
    keys: KeyPairs,
    /// The neighbours' public keys and its own.
    peers: BTreeMap<Index, MemberKeys>,
    sessions: BTreeSet<Bytes32>,
}

impl Member {
    /// `me` in a cohort of `params.members`, sharing with `neighbours` (as the server's graph
    /// says); refused when the threshold is not a strict majority of its holders.
    pub fn new(
        params: Params,
        me: Index,
        neighbours: BTreeSet<Index>,
    ) -> Result<Self, SecAggError> {
        check_params(&params)?;
        check_member(&params, me)?;
        for &n in &neighbours {
            check_member(&params, n)?;
            if n == me {
                return Err(SecAggError::NotANeighbour { member: me, of: me });
            }
        }
        check_threshold(params.threshold, neighbours.len() + 1)?;
        Ok(Self {
            params,
            me,
            neighbours,
        })
    }

    /// Step 1: fresh key pairs for this round; the public keys go to the server.
    pub fn advertise(self, rng: &mut impl Rng) -> (Advertised, MemberKeys) {
        let keys = KeyPairs::generate(rng);
        let public = keys.public();
        let history = KeyHistory {
            sessions: BTreeSet::from([self.params.session]),
            resumed: false,
        };
        (
            Advertised {
                member: self,
                keys,
                history,
            },
            public,
        )
    }
}

impl Keyed {
    /// Step 1 of a round that reuses this member's keys: the same place in the same cohort
    /// (index, size, threshold, vector length, neighbours) under a session these keys never
    /// served in; then step 2 at once, with the neighbours' keys kept from before.
    pub fn resume(
        self,
        params: Params,
        me: Index,
        neighbours: BTreeSet<Index>,
        rng: &mut impl Rng,
    ) -> Result<(Shared, SharedKeys), SecAggError> {
        let m = &self.member;
        let refuse = |why| Err(SecAggError::NotReusable(why));
        if me != m.me {
            return refuse(NotReusable::Place);
        }
        if neighbours != m.neighbours {
            return refuse(NotReusable::Neighbours);
        }
        if (params.members, params.threshold, params.vector_len)
            != (m.params.members, m.params.threshold, m.params.vector_len)
        {
            return refuse(NotReusable::Cohort);
        }
        if self.sessions.contains(&params.session) {
            return refuse(NotReusable::SessionUsed);
        }
        let mut sessions = self.sessions;
        sessions.insert(params.session);
        let mut peers = self.peers;
        peers.remove(&me);
        let advertised = Advertised {
            member: Member::new(params, me, neighbours)?,
            keys: self.keys,
            history: KeyHistory {
                sessions,
                resumed: true,
            },
        };
        advertised.share(&peers, rng)
    }
}

impl Advertised {
    /// Step 2: given the public keys of the neighbours still in the round, shares the fresh
    /// self-mask seed and the masking secret among them and itself, one envelope per
    /// neighbour.
    pub fn share(
        self,
        peers: &BTreeMap<Index, MemberKeys>,
        rng: &mut impl Rng,
    ) -> Result<(Shared, SharedKeys), SecAggError> {
        let m = &self.member;
        let mut peers = peers.clone();
        for &j in peers.keys() {
            if !m.neighbours.contains(&j) {
                return Err(SecAggError::NotANeighbour {
                    member: j,
                    of: m.me,
                });
            }
        }
        peers.insert(m.me, self.keys.public());
        check_distinct_keys(&peers)?;
        let live: BTreeSet<Index> = peers.keys().copied().filter(|&j| j != m.me).collect();
        let holders = holders(m.me, &live);
        if (holders.len() as u32) < m.params.threshold {
            return Err(SecAggError::TooFewSurvivors {
                member: m.me,
                holders: holders.len(),
                threshold: m.params.threshold,
            });
        }
        let seed = crypto::random_secret(rng);
        let masking = Zeroizing::new(self.keys.masking.to_bytes());
        let seed_shares = shamir::split(&seed, m.params.threshold, &holders, rng)?;
        let key_shares = shamir::split(&masking, m.params.threshold, &holders, rng)?;
        let mut own = None;
        let mut envelopes = Vec::with_capacity(live.len());
        for (b, s) in seed_shares.into_iter().zip(key_shares) {
            let to = b.x;
            if to == m.me {
                own = Some((b, s));
                continue;
            }
            let plaintext = envelope_plaintext(m.me, to, &b, &s);
            let ciphertext = crypto::seal(
                &self.keys.encryption,
                m.me,
                to,
                &peers[&to].encryption,
                &m.params.session,
                &plaintext,
            )?;
            envelopes.push(Envelope {
                from: m.me,
                to,
                ciphertext,
            });
        }
        let own = own.ok_or(SecAggError::NotAMember(m.me))?;
        let commitment = crypto::seed_commitment(&m.params.session, m.me, &seed);
        Ok((
            Shared {
                member: self.member,
                keys: self.keys,
                seed,
                peers,
                own,
                history: self.history,
            },
            SharedKeys {
                envelopes,
                seed_commitment: commitment,
            },
        ))
    }
}

fn envelope_plaintext(from: Index, to: Index, b: &Share, s: &Share) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(Vec::with_capacity(8 + 2 * SHARE_BYTES));
    p.extend_from_slice(&from.to_le_bytes());
    p.extend_from_slice(&to.to_le_bytes());
    p.extend_from_slice(&b.to_bytes());
    p.extend_from_slice(&s.to_bytes());
    p
}

fn check_distinct_keys(peers: &BTreeMap<Index, MemberKeys>) -> Result<(), SecAggError> {
    let mut seen: BTreeMap<Bytes32, Index> = BTreeMap::new();
    for (&j, k) in peers {
        for key in [k.encryption, k.masking] {
            if let Some(&other) = seen.get(&key) {
                return Err(SecAggError::SameKey(other, j));
            }
            seen.insert(key, j);
        }
    }
    Ok(())
}

impl Shared {
    /// Step 3a: opens the envelopes addressed to this member. Their senders are the neighbours
    /// it masks with: the server forwards only those of members that stay in the round.
    pub fn receive(self, envelopes: &[Envelope]) -> Result<Holding, SecAggError> {
        let m = &self.member;
        let mut held = BTreeMap::new();
        held.insert(m.me, self.own.clone());
        for e in envelopes {
            let malformed = |why: String| SecAggError::Malformed {
                what: "an envelope",
                member: e.from,
                why,
            };
            if e.to != m.me {
                return Err(malformed(format!("addressed to {}, not to {}", e.to, m.me)));
            }
            let Some(keys) = self.peers.get(&e.from).filter(|_| e.from != m.me) else {
                return Err(SecAggError::NotANeighbour {
                    member: e.from,
                    of: m.me,
                });
            };
            if e.ciphertext.len() != ENVELOPE_BYTES {
                return Err(malformed(format!(
                    "{} bytes, expected {ENVELOPE_BYTES}",
                    e.ciphertext.len()
                )));
            }
            let plain = crypto::open(
                &self.keys.encryption,
                e.from,
                e.to,
                &keys.encryption,
                &m.params.session,
                &e.ciphertext,
            )?;
            let (from, to) = (word(&plain[0..4]), word(&plain[4..8]));
            let b = Share::from_bytes(&plain[8..8 + SHARE_BYTES])?;
            let s = Share::from_bytes(&plain[8 + SHARE_BYTES..])?;
            if (from, to, b.x, s.x) != (e.from, m.me, m.me, m.me) {
                return Err(malformed("its contents name other members".into()));
            }
            if held.insert(e.from, (b, s)).is_some() {
                return Err(SecAggError::Twice(e.from));
            }
        }
        if (held.len() as u32) < m.params.threshold {
            return Err(SecAggError::TooFewSurvivors {
                member: m.me,
                holders: held.len(),
                threshold: m.params.threshold,
            });
        }
        Ok(Holding {
            member: self.member,
            keys: self.keys,
            seed: self.seed,
            peers: self.peers,
            held,
            history: self.history,
        })
    }
}

fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl Holding {
    /// Step 3b: the vector plus its self-mask plus ± a pairwise mask per neighbour it holds
    /// shares of (mod 2³²). What leaves looks uniformly random to anyone without the seeds.
    /// The pairwise masks are bound to `context`, what this member was told to compute: they
    /// cancel only against neighbours told the same ([`crate::crypto::pairwise_seed`]).
    pub fn mask(self, input: &[u32], context: &Bytes32) -> Result<(Masked, Vec<u32>), SecAggError> {
        let m = &self.member;
        if input.len() != m.params.vector_len {
            return Err(SecAggError::Length {
                expected: m.params.vector_len,
                actual: input.len(),
            });
        }
        let len = input.len();
        let mut out = input.to_vec();
        add_into(&mut out, &crypto::expand(&self.seed, len), 1);
        for &j in self.held.keys().filter(|&&j| j != m.me) {
            let seed = crypto::pairwise_seed(
                &self.keys.masking,
                m.me,
                j,
                &self.peers[&j].masking,
                &m.params.session,
                context,
            )?;
            add_into(&mut out, &crypto::expand(&seed, len), pair_sign(m.me, j));
        }
        Ok((
            Masked {
                member: self.member,
                keys: self.keys,
                peers: self.peers,
                held: self.held,
                history: self.history,
            },
            out,
        ))
    }
}

impl Masked {
    /// Step 4: shares of the survivors' seeds and of the dropped members' masking secrets —
    /// refused if one member is in both lists, or if either names a member it holds no share
    /// of. Consumes the state: one answer per round.
    pub fn reveal(self, request: &UnmaskRequest) -> Result<Reveal, SecAggError> {
        self.reveal_keeping(request).map(|(reveal, _)| reveal)
    }

    /// [`reveal`](Self::reveal), and the keys for the next round when they may serve again:
    /// every neighbour survived and no masking secret was asked for. In a round that resumed
    /// keys, a request for any masking secret is refused.
    pub fn reveal_keeping(
        self,
        request: &UnmaskRequest,
    ) -> Result<(Reveal, Option<Keyed>), SecAggError> {
        let me = self.member.me;
        let threshold = self.member.params.threshold;
        let survivors: BTreeSet<Index> = request.survivors.iter().copied().collect();
        let dropped: BTreeSet<Index> = request.dropped.iter().copied().collect();
        if survivors.len() != request.survivors.len() || dropped.len() != request.dropped.len() {
            return Err(SecAggError::Malformed {
                what: "an unmask request",
                member: me,
                why: "a member is listed twice".into(),
            });
        }
        if let Some(&j) = survivors.intersection(&dropped).next() {
            return Err(SecAggError::BothSecrets(j));
        }
        if dropped.contains(&me) {
            return Err(SecAggError::BothSecrets(me));
        }
        if let Some(&j) = dropped.iter().next()
            && self.history.resumed
        {
            return Err(SecAggError::ResumedKeyReveal(j));
        }
        // Fewer survivors than the threshold cannot unmask anything: a request that says so
        // is answered with nothing.
        if survivors.len() < threshold as usize {
            return Err(SecAggError::TooFewSurvivors {
                member: me,
                holders: survivors.len(),
                threshold,
            });
        }
        let share = |j: &Index, pick: fn(&(Share, Share)) -> &Share| {
            self.held
                .get(j)
                .map(|pair| RevealedShare {
                    of: *j,
                    share: pick(pair).to_bytes(),
                })
                .ok_or(SecAggError::NotANeighbour { member: *j, of: me })
        };
        let reveal = Reveal {
            seeds: survivors
                .iter()
                .map(|j| share(j, |p| &p.0))
                .collect::<Result<_, _>>()?,
            masking_keys: dropped
                .iter()
                .map(|j| share(j, |p| &p.1))
                .collect::<Result<_, _>>()?,
        };
        // Every holder survived (so none dropped) and every neighbour's keys are known.
        let everyone: BTreeSet<Index> = holders(me, &self.member.neighbours).into_iter().collect();
        let peers: BTreeSet<Index> = self.peers.keys().copied().collect();
        let kept = (survivors == everyone && peers == everyone).then(|| Keyed {
            member: self.member,
            keys: self.keys,
            peers: self.peers,
            sessions: self.history.sessions,
        });
        Ok((reveal, kept))
    }
}
