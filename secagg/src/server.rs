//! The server's side of one round, as a chain of states: [`Round::start`] → collect keys →
//! collect shares → collect masked vectors → collect reveals → the sum. Each `close` decides
//! who is still in and what each member is sent next; a member that misses a step is dropped
//! from then on. Masked vectors are summed as they arrive (memory O(vector), not O(members)).
//!
//! After each step, every member still in must keep at least `threshold` live share holders
//! (itself and its neighbours); members that cannot are dropped before anything of theirs is
//! relayed, and if the survivors of the masking step cannot rebuild every secret the sum needs,
//! the round fails: nothing partial is ever unmasked.
//!
//! A round in which every member was counted hands back its keys ([`ReusableKeys`]); the next
//! round of the same cohort may [`resume`](ReusableKeys::resume) with them, under a fresh
//! session, and skip the key step. Such a round cannot recover a member that drops after
//! sharing (its masking secret would unmask its earlier vectors: the members refuse to reveal
//! it, see [`crate::client`]), so it fails instead, and the round is retried with fresh keys.

use std::collections::{BTreeMap, BTreeSet};

use protocol::secagg::{
    Bytes32, ENVELOPE_BYTES, Envelope, Member, MemberKeys, Reveal, RevealedShare, SharedKeys,
    UnmaskRequest,
};

use crate::crypto;
use crate::shamir::{self, Share};
use crate::{
    Params, SecAggError, add_into, check_member, check_params, check_threshold, pair_sign,
};

/// The round's cohort and its neighbourhood graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    params: Params,
    /// `graph[m - 1]`: member m's neighbours.
    graph: Vec<BTreeSet<Member>>,
    /// The members' keys served in an earlier round: no masking secret can be revealed.
    resumed: bool,
}

/// The cohort, graph and public keys of a round in which every member was counted: what the
/// next round of the same cohort needs to skip the key step.
#[derive(Debug, Clone, PartialEq)]
pub struct ReusableKeys {
    round: Round,
    keys: BTreeMap<Member, MemberKeys>,
}

/// Step 1: public keys come in.
#[derive(Debug)]
pub struct CollectingKeys {
    round: Round,
    keys: BTreeMap<Member, MemberKeys>,
}

/// Step 2: envelopes and seed commitments come in from the members that sent keys.
#[derive(Debug)]
pub struct CollectingShares {
    round: Round,
    keys: BTreeMap<Member, MemberKeys>,
    shares: BTreeMap<Member, SharedKeys>,
}

/// Step 3: masked vectors come in from the members whose shares were relayed.
#[derive(Debug)]
pub struct CollectingMasked {
    round: Round,
    keys: BTreeMap<Member, MemberKeys>,
    commitments: BTreeMap<Member, Bytes32>,
    sum: Vec<u32>,
    masked: BTreeSet<Member>,
}

/// Step 4: the survivors' reveals come in.
#[derive(Debug)]
pub struct CollectingReveals {
    round: Round,
    keys: BTreeMap<Member, MemberKeys>,
    commitments: BTreeMap<Member, Bytes32>,
    sum: Vec<u32>,
    requests: BTreeMap<Member, UnmaskRequest>,
    /// Shares received, by whose secret they are.
    seed_shares: BTreeMap<Member, Vec<Share>>,
    key_shares: BTreeMap<Member, Vec<Share>>,
    revealed: BTreeSet<Member>,
}

/// For each member still in: its live neighbours' public keys.
pub type KeysToRelay = BTreeMap<Member, BTreeMap<Member, MemberKeys>>;

/// The round's result: the exact sum (mod 2³²) of the vectors of `counted`.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmasked {
    pub sum: Vec<u32>,
    pub counted: Vec<Member>,
    /// Members that sent shares but no masked vector: their masks were removed.
    pub recovered: Vec<Member>,
    /// The keys, when every member was counted (none dropped at any step).
    pub reusable: Option<ReusableKeys>,
}

impl Round {
    /// A cohort of `params.members` with each member's neighbours; every member's threshold
    /// must be a strict majority of its holders.
    pub fn start(
        params: Params,
        graph: Vec<BTreeSet<Member>>,
    ) -> Result<CollectingKeys, SecAggError> {
        check_params(&params)?;
        if graph.len() != params.members as usize {
            return Err(SecAggError::CohortSize(graph.len() as u32));
        }
        for (i, ns) in graph.iter().enumerate() {
            let m = i as Member + 1;
            for &j in ns {
                check_member(&params, j)?;
                if j == m || !graph[j as usize - 1].contains(&m) {
                    return Err(SecAggError::NotANeighbour { member: j, of: m });
                }
            }
            check_threshold(params.threshold, ns.len() + 1)?;
        }
        Ok(CollectingKeys {
            round: Self {
                params,
                graph,
                resumed: false,
            },
            keys: BTreeMap::new(),
        })
    }

    /// Member m's neighbours.
    pub fn neighbours(&self, m: Member) -> &BTreeSet<Member> {
        &self.graph[m as usize - 1]
    }

    /// Drops, until none is left, every member of `live` with fewer than `threshold` live
    /// holders (itself and its live neighbours).
    fn prune(&self, live: &mut BTreeSet<Member>) {
        loop {
            let short: Vec<Member> = live
                .iter()
                .copied()
                .filter(|&m| self.live_holders(m, live) < self.params.threshold as usize)
                .collect();
            if short.is_empty() {
                return;
            }
            for m in short {
                live.remove(&m);
            }
        }
    }

    /// Whether `members` form one group through neighbour links among themselves.
    fn connected(&self, members: &BTreeSet<Member>) -> bool {
        let Some(&first) = members.iter().next() else {
            return true;
        };
        let mut seen = BTreeSet::from([first]);
        let mut frontier = vec![first];
        while let Some(m) = frontier.pop() {
            for &j in self.neighbours(m).intersection(members) {
                if seen.insert(j) {
                    frontier.push(j);
                }
            }
        }
        seen.len() == members.len()
    }

    fn live_holders(&self, m: Member, live: &BTreeSet<Member>) -> usize {
        self.neighbours(m).intersection(live).count() + usize::from(live.contains(&m))
    }
}

impl ReusableKeys {
    /// The cohort's size, threshold and vector length (the session is the last round's).
    pub fn params(&self) -> &Params {
        &self.round.params
    }

    /// Member m's neighbours.
    pub fn neighbours(&self, m: Member) -> &BTreeSet<Member> {
        self.round.neighbours(m)
    }

    /// The next round of the same cohort, under a fresh `session`: it starts at the share
    /// step (the members hold each other's keys).
    pub fn resume(self, session: Bytes32) -> CollectingShares {
        let mut round = self.round;
        round.params.session = session;
        round.resumed = true;
        CollectingShares {
            round,
            keys: self.keys,
            shares: BTreeMap::new(),
        }
    }
}

impl CollectingKeys {
    /// Member m's public keys.
    pub fn add(&mut self, m: Member, keys: MemberKeys) -> Result<(), SecAggError> {
        check_member(&self.round.params, m)?;
        if self.keys.contains_key(&m) {
            return Err(SecAggError::Twice(m));
        }
        self.keys.insert(m, keys);
        Ok(())
    }

    /// Closes step 1: the members still in, each with its live neighbours' keys to be sent.
    /// Members whose key copies another's are dropped (a copied key would let its copier read
    /// shares meant for the original), and so are those with a low-order key.
    pub fn close(self) -> Result<(CollectingShares, KeysToRelay), SecAggError> {
        let mut owners: BTreeMap<Bytes32, Vec<Member>> = BTreeMap::new();
        for (&m, k) in &self.keys {
            owners.entry(k.encryption).or_default().push(m);
            owners.entry(k.masking).or_default().push(m);
        }
        // Copied keys, and low-order points (every agreement with them is the same known value):
        // their members are out before any neighbour shares with them.
        let copied: BTreeSet<Member> = owners
            .iter()
            .filter(|(key, ms)| ms.len() > 1 || crypto::is_weak(key))
            .flat_map(|(_, ms)| ms)
            .copied()
            .collect();
        let mut live: BTreeSet<Member> = self
            .keys
            .keys()
            .copied()
            .filter(|m| !copied.contains(m))
            .collect();
        self.round.prune(&mut live);
        if live.is_empty() {
            return Err(SecAggError::Empty);
        }
        let keys: BTreeMap<Member, MemberKeys> = self
            .keys
            .into_iter()
            .filter(|(m, _)| live.contains(m))
            .collect();
        let relay = live
            .iter()
            .map(|&m| {
                let theirs = self
                    .round
                    .neighbours(m)
                    .iter()
                    .filter_map(|j| keys.get(j).map(|k| (*j, *k)))
                    .collect();
                (m, theirs)
            })
            .collect();
        Ok((
            CollectingShares {
                round: self.round,
                keys,
                shares: BTreeMap::new(),
            },
            relay,
        ))
    }
}

impl CollectingShares {
    /// Member m's envelopes: exactly one for each neighbour whose keys it was sent.
    pub fn add(&mut self, m: Member, shared: SharedKeys) -> Result<(), SecAggError> {
        if !self.keys.contains_key(&m) {
            return Err(SecAggError::NotAMember(m));
        }
        if self.shares.contains_key(&m) {
            return Err(SecAggError::Twice(m));
        }
        let expected: BTreeSet<Member> = self
            .round
            .neighbours(m)
            .iter()
            .copied()
            .filter(|j| self.keys.contains_key(j))
            .collect();
        let mut to = BTreeSet::new();
        for e in &shared.envelopes {
            let malformed = |why: String| SecAggError::Malformed {
                what: "shares",
                member: m,
                why,
            };
            if e.from != m {
                return Err(malformed(format!("an envelope says it is from {}", e.from)));
            }
            if !expected.contains(&e.to) || !to.insert(e.to) {
                return Err(malformed(format!(
                    "an envelope for {}, not one per live neighbour",
                    e.to
                )));
            }
            if e.ciphertext.len() != ENVELOPE_BYTES {
                return Err(malformed(format!(
                    "an envelope of {} bytes, expected {ENVELOPE_BYTES}",
                    e.ciphertext.len()
                )));
            }
        }
        if to != expected {
            return Err(SecAggError::Malformed {
                what: "shares",
                member: m,
                why: format!(
                    "{} envelopes for {} live neighbours",
                    to.len(),
                    expected.len()
                ),
            });
        }
        self.shares.insert(m, shared);
        Ok(())
    }

    /// Closes step 2: the members still in, each with the envelopes addressed to it by members
    /// that are also still in (the neighbours it will mask with).
    pub fn close(self) -> Result<(CollectingMasked, BTreeMap<Member, Vec<Envelope>>), SecAggError> {
        let mut live: BTreeSet<Member> = self.shares.keys().copied().collect();
        self.round.prune(&mut live);
        if live.is_empty() {
            return Err(SecAggError::Empty);
        }
        let mut inbox: BTreeMap<Member, Vec<Envelope>> =
            live.iter().map(|&m| (m, Vec::new())).collect();
        let mut commitments = BTreeMap::new();
        for (m, shared) in self.shares {
            if !live.contains(&m) {
                continue;
            }
            commitments.insert(m, shared.seed_commitment);
            for e in shared.envelopes {
                if let Some(box_) = inbox.get_mut(&e.to) {
                    box_.push(e);
                }
            }
        }
        let keys = self
            .keys
            .into_iter()
            .filter(|(m, _)| live.contains(m))
            .collect();
        let len = self.round.params.vector_len;
        Ok((
            CollectingMasked {
                round: self.round,
                keys,
                commitments,
                sum: vec![0; len],
                masked: BTreeSet::new(),
            },
            inbox,
        ))
    }
}

impl CollectingMasked {
    /// Member m's masked vector, added to the running sum at once.
    pub fn add(&mut self, m: Member, masked: &[u32]) -> Result<(), SecAggError> {
        self.add_sum(&[m], masked)
    }

    /// Whether member m's masked vector is still awaited (its shares were relayed, no vector
    /// yet): asked before accepting a vector that waits elsewhere, at a gateway that adds it
    /// to others first ([`CollectingMasked::add_sum`]).
    pub fn expects(&self, m: Member) -> Result<(), SecAggError> {
        if !self.commitments.contains_key(&m) {
            return Err(SecAggError::NotAMember(m));
        }
        if self.masked.contains(&m) {
            return Err(SecAggError::Twice(m));
        }
        Ok(())
    }

    /// Several members' masked vectors already added together (mod 2³²), as a gateway adds
    /// those of its clients: the sum is associative, so the result is the same as adding each.
    /// All or nothing: every member must be awaited and listed once.
    pub fn add_sum(&mut self, members: &[Member], sum: &[u32]) -> Result<(), SecAggError> {
        if sum.len() != self.sum.len() {
            return Err(SecAggError::Length {
                expected: self.sum.len(),
                actual: sum.len(),
            });
        }
        let mut listed = BTreeSet::new();
        for &m in members {
            self.expects(m)?;
            if !listed.insert(m) {
                return Err(SecAggError::Twice(m));
            }
        }
        if listed.is_empty() {
            return Err(SecAggError::Empty);
        }
        self.masked.extend(listed);
        add_into(&mut self.sum, sum, 1);
        Ok(())
    }

    /// Closes step 3: what each survivor is asked to reveal — or the round fails, when the
    /// survivors cannot rebuild a survivor's seed or a dropped member's masking secret.
    pub fn close(
        self,
    ) -> Result<(CollectingReveals, BTreeMap<Member, UnmaskRequest>), SecAggError> {
        let survivors = &self.masked;
        if survivors.is_empty() {
            return Err(SecAggError::Empty);
        }
        let dropped: BTreeSet<Member> = self
            .commitments
            .keys()
            .copied()
            .filter(|m| !survivors.contains(m))
            .collect();
        // Survivors in two groups with no edge between them would each have masks that cancel
        // inside the group: unmasking would give the server each group's sum. Refused.
        if !self.round.connected(survivors) {
            return Err(SecAggError::Split);
        }
        let t = self.round.params.threshold as usize;
        for &m in survivors.iter().chain(&dropped) {
            let holders = self.round.live_holders(m, survivors);
            let needed = survivors.contains(&m) || !self.round.neighbours(m).is_disjoint(survivors);
            if needed && self.round.resumed && !survivors.contains(&m) {
                return Err(SecAggError::ResumedKeyDropout(m));
            }
            if needed && holders < t {
                return Err(SecAggError::TooFewSurvivors {
                    member: m,
                    holders,
                    threshold: t as u32,
                });
            }
        }
        let requests: BTreeMap<Member, UnmaskRequest> = survivors
            .iter()
            .map(|&i| {
                let ns = self.round.neighbours(i);
                let mut alive: Vec<Member> = ns.intersection(survivors).copied().collect();
                alive.push(i);
                alive.sort_unstable();
                let gone = ns.intersection(&dropped).copied().collect();
                (
                    i,
                    UnmaskRequest {
                        survivors: alive,
                        dropped: gone,
                    },
                )
            })
            .collect();
        Ok((
            CollectingReveals {
                round: self.round,
                keys: self.keys,
                commitments: self.commitments,
                sum: self.sum,
                requests: requests.clone(),
                seed_shares: BTreeMap::new(),
                key_shares: BTreeMap::new(),
                revealed: BTreeSet::new(),
            },
            requests,
        ))
    }
}

impl CollectingReveals {
    /// Member m's reveal: exactly the shares it was asked for, each its own.
    pub fn add(&mut self, m: Member, reveal: &Reveal) -> Result<(), SecAggError> {
        let Some(request) = self.requests.get(&m) else {
            return Err(SecAggError::NotAMember(m));
        };
        if self.revealed.contains(&m) {
            return Err(SecAggError::Twice(m));
        }
        let parse = |list: &[RevealedShare],
                     wanted: &[Member]|
         -> Result<Vec<(Member, Share)>, SecAggError> {
            let of: Vec<Member> = list.iter().map(|r| r.of).collect();
            if of != wanted {
                return Err(SecAggError::Malformed {
                    what: "a reveal",
                    member: m,
                    why: format!("shares of {of:?}, asked for {wanted:?}"),
                });
            }
            list.iter()
                .map(|r| {
                    let share = Share::from_bytes(&r.share)?;
                    if share.x != m {
                        return Err(SecAggError::Malformed {
                            what: "a reveal",
                            member: m,
                            why: format!("a share held by {}", share.x),
                        });
                    }
                    Ok((r.of, share))
                })
                .collect()
        };
        let seeds = parse(&reveal.seeds, &request.survivors)?;
        let keys = parse(&reveal.masking_keys, &request.dropped)?;
        for (of, share) in seeds {
            self.seed_shares.entry(of).or_default().push(share);
        }
        for (of, share) in keys {
            self.key_shares.entry(of).or_default().push(share);
        }
        self.revealed.insert(m);
        Ok(())
    }

    /// Whether every secret the sum needs has `threshold` shares.
    pub fn ready(&self) -> bool {
        let t = self.round.params.threshold as usize;
        self.requests
            .keys()
            .all(|m| self.seed_shares.get(m).is_some_and(|s| s.len() >= t))
            && self.dropped().iter().all(|j| {
                self.round.neighbours(*j).is_disjoint(&self.survivors())
                    || self.key_shares.get(j).is_some_and(|s| s.len() >= t)
            })
    }

    fn survivors(&self) -> BTreeSet<Member> {
        self.requests.keys().copied().collect()
    }

    fn dropped(&self) -> BTreeSet<Member> {
        self.commitments
            .keys()
            .copied()
            .filter(|m| !self.requests.contains_key(m))
            .collect()
    }

    /// Rebuilds the secrets, removes every mask and returns the survivors' exact sum — or fails
    /// without a partial result when a secret has too few shares or does not match what its
    /// member published. `context`: what the members were told to compute (their pairwise
    /// masks are bound to it).
    pub fn finish(self, context: &Bytes32) -> Result<Unmasked, SecAggError> {
        let t = self.round.params.threshold;
        let len = self.sum.len();
        let survivors = self.survivors();
        let mut sum = self.sum.clone();
        for &i in &survivors {
            let shares = self.seed_shares.get(&i).map_or(&[][..], Vec::as_slice);
            let seed = shamir::combine(shares, t).map_err(|e| too_few(i, e, t))?;
            if crypto::seed_commitment(&self.round.params.session, i, &seed) != self.commitments[&i]
            {
                return Err(SecAggError::Mismatch(i));
            }
            add_into(&mut sum, &crypto::expand(&seed, len), -1);
        }
        let mut recovered = Vec::new();
        for j in self.dropped() {
            let touched: Vec<Member> = self
                .round
                .neighbours(j)
                .intersection(&survivors)
                .copied()
                .collect();
            if touched.is_empty() {
                continue;
            }
            let shares = self.key_shares.get(&j).map_or(&[][..], Vec::as_slice);
            let secret =
                zeroize::Zeroizing::new(shamir::combine(shares, t).map_err(|e| too_few(j, e, t))?);
            if crypto::masking_public(&secret) != self.keys[&j].masking {
                return Err(SecAggError::Mismatch(j));
            }
            let masking = x25519_dalek::StaticSecret::from(*secret);
            for i in touched {
                let seed = crypto::pairwise_seed(
                    &masking,
                    j,
                    i,
                    &self.keys[&i].masking,
                    &self.round.params.session,
                    context,
                )?;
                // Survivor i added sign(i, j)·mask: take exactly that away.
                add_into(&mut sum, &crypto::expand(&seed, len), -pair_sign(i, j));
            }
            recovered.push(j);
        }
        let everyone = survivors.len() == self.round.params.members as usize
            && self.keys.len() == survivors.len();
        let reusable = (everyone && recovered.is_empty()).then_some(ReusableKeys {
            round: self.round,
            keys: self.keys,
        });
        Ok(Unmasked {
            sum,
            counted: survivors.into_iter().collect(),
            recovered,
            reusable,
        })
    }
}

fn too_few(member: Member, e: shamir::ShamirError, threshold: u32) -> SecAggError {
    match e {
        shamir::ShamirError::TooFew { got, .. } => SecAggError::TooFewSurvivors {
            member,
            holders: got,
            threshold,
        },
        other => SecAggError::Shamir(other),
    }
}
