//! Keys kept across the rounds of a stable cohort: each resumed round's sum is exact and its
//! masks are new, a dropout fails it rather than revealing a masking secret, and a server
//! that asks for one, replays a session or moves a member is refused.

use std::collections::{BTreeMap, BTreeSet};

use protocol::secagg::{Bytes32, Member, UnmaskRequest};
use rand::rngs::ChaCha20Rng;
use rand::{Rng, SeedableRng};
use secagg::client::{self, Keyed, Masked};
use secagg::server::{CollectingShares, ReusableKeys, Round, Unmasked};
use secagg::{NotReusable, Params, SecAggError, graph, majority};

const CONTEXT: Bytes32 = Bytes32([0; 32]);
const LEN: usize = 8;

/// What the members and the server keep between rounds.
struct Cohort {
    members: u32,
    graph: Vec<BTreeSet<Member>>,
    threshold: u32,
    kept: BTreeMap<Member, Keyed>,
    server: Option<ReusableKeys>,
}

/// One round's outcome: the server's result and each member's masked vector.
struct Outcome {
    unmasked: Unmasked,
    masked: BTreeMap<Member, Vec<u32>>,
}

fn session(rng: &mut impl Rng) -> Bytes32 {
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    Bytes32(s)
}

fn params(c: &Cohort, session: Bytes32) -> Params {
    Params {
        session,
        members: c.members,
        threshold: c.threshold,
        vector_len: LEN,
    }
}

fn cohort(members: u32, neighbours: u32, rng: &mut ChaCha20Rng) -> Cohort {
    let graph = graph::neighbourhoods(members, neighbours, rng);
    let threshold = majority(graph[0].len() + 1);
    Cohort {
        members,
        graph,
        threshold,
        kept: BTreeMap::new(),
        server: None,
    }
}

fn vectors(c: &Cohort, rng: &mut impl Rng) -> Vec<Vec<u32>> {
    (0..c.members)
        .map(|_| (0..LEN).map(|_| rng.next_u32() >> 10).collect())
        .collect()
}

fn sum_of(vectors: &[Vec<u32>], counted: &[Member]) -> Vec<u32> {
    let mut sum = vec![0u32; LEN];
    for &m in counted {
        secagg::add_into(&mut sum, &vectors[m as usize - 1], 1);
    }
    sum
}

/// A round with fresh keys; every member keeps what `reveal_keeping` hands back.
fn fresh_round(
    c: &mut Cohort,
    inputs: &[Vec<u32>],
    drop_after_shares: Option<Member>,
    rng: &mut ChaCha20Rng,
) -> Result<Outcome, SecAggError> {
    let (shares, shared) = fresh_shares(c, rng)?;
    mask_and_unmask(c, shares, shared, inputs, drop_after_shares)
}

/// The key and share steps of a round with fresh keys.
fn fresh_shares(
    c: &Cohort,
    rng: &mut ChaCha20Rng,
) -> Result<(CollectingShares, BTreeMap<Member, client::Shared>), SecAggError> {
    let params = params(c, session(rng));
    let mut keys = Round::start(params.clone(), c.graph.clone())?;
    let mut advertised = BTreeMap::new();
    for m in 1..=c.members {
        let member = client::Member::new(params.clone(), m, c.graph[m as usize - 1].clone())?;
        let (next, public) = member.advertise(rng);
        keys.add(m, public)?;
        advertised.insert(m, next);
    }
    let (mut shares, relayed) = keys.close()?;
    let mut shared = BTreeMap::new();
    for (m, peers) in relayed {
        let (next, msg) = advertised.remove(&m).unwrap().share(&peers, rng)?;
        shares.add(m, msg)?;
        shared.insert(m, next);
    }
    Ok((shares, shared))
}

/// A round on the keys kept from the last: no key step.
fn resumed_round(
    c: &mut Cohort,
    inputs: &[Vec<u32>],
    drop_after_shares: Option<Member>,
    rng: &mut ChaCha20Rng,
) -> Result<Outcome, SecAggError> {
    let s = session(rng);
    let (shares, shared) = resume_all(c, s, rng)?;
    mask_and_unmask(c, shares, shared, inputs, drop_after_shares)
}

/// The server and every member resume their kept keys under `session`; the shares are in.
fn resume_all(
    c: &mut Cohort,
    session: Bytes32,
    rng: &mut ChaCha20Rng,
) -> Result<(CollectingShares, BTreeMap<Member, client::Shared>), SecAggError> {
    let params = params(c, session);
    let mut shares = c
        .server
        .take()
        .expect("the server kept keys")
        .resume(session);
    let mut shared = BTreeMap::new();
    for m in 1..=c.members {
        let keyed = c.kept.remove(&m).expect("the member kept keys");
        let (next, msg) = keyed.resume(params.clone(), m, c.graph[m as usize - 1].clone(), rng)?;
        shares.add(m, msg)?;
        shared.insert(m, next);
    }
    Ok((shares, shared))
}

fn mask_and_unmask(
    c: &mut Cohort,
    shares: CollectingShares,
    mut shared: BTreeMap<Member, client::Shared>,
    inputs: &[Vec<u32>],
    drop_after_shares: Option<Member>,
) -> Result<Outcome, SecAggError> {
    let (mut masked, inboxes) = shares.close()?;
    let mut waiting: BTreeMap<Member, Masked> = BTreeMap::new();
    let mut sent = BTreeMap::new();
    for (m, inbox) in inboxes {
        let holding = shared.remove(&m).unwrap().receive(&inbox)?;
        let (next, y) = holding.mask(&inputs[m as usize - 1], &CONTEXT)?;
        if drop_after_shares == Some(m) {
            continue;
        }
        masked.add(m, &y)?;
        sent.insert(m, y);
        waiting.insert(m, next);
    }
    let (mut reveals, requests) = masked.close()?;
    c.kept.clear();
    for (m, request) in requests {
        let (reveal, kept) = waiting.remove(&m).unwrap().reveal_keeping(&request)?;
        reveals.add(m, &reveal)?;
        if let Some(k) = kept {
            c.kept.insert(m, k);
        }
    }
    let unmasked = reveals.finish(&CONTEXT)?;
    c.server = unmasked.reusable.clone();
    Ok(Outcome {
        unmasked,
        masked: sent,
    })
}

#[test]
fn keys_serve_several_rounds_of_a_stable_cohort_with_exact_sums_and_new_masks() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let mut c = cohort(7, 4, &mut rng);
    let first = vectors(&c, &mut rng);
    let out = fresh_round(&mut c, &first, None, &mut rng).unwrap();
    assert_eq!(out.unmasked.sum, sum_of(&first, &out.unmasked.counted));
    assert_eq!(c.kept.len(), 7, "every member keeps its keys");
    assert!(c.server.is_some());
    // The same inputs twice: the masked vectors must differ (new session, new masks).
    let same = vectors(&c, &mut rng);
    let mut previous: Option<BTreeMap<Member, Vec<u32>>> = None;
    for _ in 0..3 {
        let out = resumed_round(&mut c, &same, None, &mut rng).unwrap();
        assert_eq!(out.unmasked.counted, (1..=7).collect::<Vec<_>>());
        assert_eq!(out.unmasked.sum, sum_of(&same, &out.unmasked.counted));
        if let Some(p) = &previous {
            for (m, y) in &out.masked {
                assert_ne!(&p[m], y, "member {m}'s masks repeated across rounds");
            }
        }
        previous = Some(out.masked);
        assert_eq!(c.kept.len(), 7);
    }
}

#[test]
fn a_dropout_after_sharing_fails_a_resumed_round_instead_of_revealing_a_masking_secret() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let mut c = cohort(5, 4, &mut rng);
    let v = vectors(&c, &mut rng);
    fresh_round(&mut c, &v, None, &mut rng).unwrap();
    let err = resumed_round(&mut c, &v, Some(3), &mut rng)
        .err()
        .expect("the resumed round must fail");
    assert_eq!(err, SecAggError::ResumedKeyDropout(3));
    assert!(err.to_string().contains("fresh keys"), "{err}");
}

#[test]
fn a_round_that_recovered_a_dropout_leaves_no_keys_to_reuse() {
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let mut c = cohort(5, 4, &mut rng);
    let v = vectors(&c, &mut rng);
    let out = fresh_round(&mut c, &v, Some(2), &mut rng).unwrap();
    assert_eq!(out.unmasked.recovered, vec![2]);
    assert_eq!(out.unmasked.sum, sum_of(&v, &out.unmasked.counted));
    // Everyone is 2's neighbour and revealed a share of its masking secret: nobody keeps keys.
    assert!(c.kept.is_empty());
    assert!(c.server.is_none());
}

/// A cohort after one fresh round, and member 1's state after masking in a resumed round.
fn resumed_member_one(rng: &mut ChaCha20Rng) -> (Cohort, Masked) {
    let mut c = cohort(5, 4, rng);
    let v = vectors(&c, rng);
    fresh_round(&mut c, &v, None, rng).unwrap();
    let s = session(rng);
    let (shares, mut shared) = resume_all(&mut c, s, rng).unwrap();
    let (_, inboxes) = shares.close().unwrap();
    let holding = shared.remove(&1).unwrap().receive(&inboxes[&1]).unwrap();
    let (masked, _) = holding.mask(&v[0], &CONTEXT).unwrap();
    (c, masked)
}

#[test]
fn attack_a_server_asking_for_a_masking_secret_in_a_resumed_round_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(24);
    let (c, masked) = resumed_member_one(&mut rng);
    let neighbour = *c.graph[0].iter().next().unwrap();
    let mut survivors: Vec<Member> = c.graph[0]
        .iter()
        .copied()
        .filter(|&m| m != neighbour)
        .collect();
    survivors.push(1);
    survivors.sort_unstable();
    let request = UnmaskRequest {
        survivors,
        dropped: vec![neighbour],
    };
    let err = masked.reveal_keeping(&request).err().unwrap();
    assert_eq!(err, SecAggError::ResumedKeyReveal(neighbour));
}

#[test]
fn attack_a_replayed_session_or_a_moved_member_cannot_resume_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(25);
    // A ring of 4: members facing each other have the same two neighbours, so a move to the
    // other's place is caught by the place, not by the neighbours.
    let mut c = cohort(4, 2, &mut rng);
    let v = vectors(&c, &mut rng);
    fresh_round(&mut c, &v, None, &mut rng).unwrap();
    // One resumed round under session s; the keys come back with s among their sessions.
    let s = session(&mut rng);
    let (shares, shared) = resume_all(&mut c, s, &mut rng).unwrap();
    mask_and_unmask(&mut c, shares, shared, &v, None).unwrap();
    let refused =
        |keyed: Keyed, p: Params, me: Member, ns: &BTreeSet<Member>, rng: &mut ChaCha20Rng| {
            match keyed.resume(p, me, ns.clone(), rng) {
                Err(SecAggError::NotReusable(why)) => why,
                Err(other) => panic!("refused for another reason: {other}"),
                Ok(_) => panic!("resumed"),
            }
        };
    let ns = |m: Member| &c.graph[m as usize - 1];
    let why = refused(
        c.kept.remove(&1).unwrap(),
        params(&c, s),
        1,
        ns(1),
        &mut rng,
    );
    assert_eq!(why, NotReusable::SessionUsed);
    let fresh = params(&c, session(&mut rng));
    let facing = (2..=4).find(|&m| ns(m) == ns(1)).expect("a ring of 4");
    let why = refused(
        c.kept.remove(&facing).unwrap(),
        fresh.clone(),
        1,
        ns(1),
        &mut rng,
    );
    assert_eq!(why, NotReusable::Place);
    let next = *ns(1).iter().next().unwrap();
    let others: BTreeSet<Member> = (1..=4)
        .filter(|&j| j != next && !ns(next).contains(&j))
        .collect();
    let why = refused(
        c.kept.remove(&next).unwrap(),
        fresh.clone(),
        next,
        &others,
        &mut rng,
    );
    assert_eq!(why, NotReusable::Neighbours);
    let last = *c.kept.keys().next().expect("one member left");
    let mut higher = fresh;
    higher.members += 1;
    let why = refused(
        c.kept.remove(&last).unwrap(),
        higher,
        last,
        ns(last),
        &mut rng,
    );
    assert_eq!(why, NotReusable::Cohort);
}

#[test]
fn attack_a_lie_in_the_keys_first_round_leaves_too_few_keyed_holders_to_rebuild_later_seeds() {
    let mut rng = ChaCha20Rng::seed_from_u64(26);
    // Everyone's neighbour, t = 3 of 5 holders.
    let c = cohort(5, 4, &mut rng);
    assert_eq!(c.threshold, 3);
    let v = vectors(&c, &mut rng);
    let (shares, mut shared) = fresh_shares(&c, &mut rng).unwrap();
    let (_, inboxes) = shares.close().unwrap();
    // The server tells 2, 3 and 4 that member 1 dropped (they reveal shares of its masking
    // secret: t of them rebuild it) and tells 1 and 5 that everyone survived.
    let mut kept = BTreeMap::new();
    for (m, inbox) in inboxes {
        let holding = shared.remove(&m).unwrap().receive(&inbox).unwrap();
        let (masked, _) = holding.mask(&v[m as usize - 1], &CONTEXT).unwrap();
        let lied_to = (2..=4).contains(&m);
        let request = UnmaskRequest {
            survivors: (1..=5).filter(|&j| !(lied_to && j == 1)).collect(),
            dropped: if lied_to { vec![1] } else { vec![] },
        };
        let (reveal, keyed) = masked.reveal_keeping(&request).unwrap();
        assert_eq!(reveal.masking_keys.len(), usize::from(lied_to));
        if let Some(k) = keyed {
            kept.insert(m, k);
        }
    }
    // Those that revealed a masking secret keep no keys: only 1 and 5 do.
    assert_eq!(kept.keys().copied().collect::<Vec<_>>(), vec![1, 5]);
    // Next round, the server would need t shares of member 1's fresh seed; 1's envelopes are
    // sealed to its neighbours' kept keys, and only member 5 still holds its key pairs. Member
    // 1, holding 5's envelope and its own shares (2 < t), does not mask at all.
    let s = session(&mut rng);
    let p = params(&c, s);
    let mut resumed = BTreeMap::new();
    let mut envelopes = Vec::new();
    for (m, k) in kept {
        let (next, msg) = k
            .resume(p.clone(), m, c.graph[m as usize - 1].clone(), &mut rng)
            .unwrap();
        envelopes.extend(msg.envelopes);
        resumed.insert(m, next);
    }
    let to_one: Vec<_> = envelopes.into_iter().filter(|e| e.to == 1).collect();
    let err = resumed.remove(&1).unwrap().receive(&to_one).err().unwrap();
    assert!(
        matches!(
            err,
            SecAggError::TooFewSurvivors {
                member: 1,
                holders: 2,
                threshold: 3
            }
        ),
        "{err}"
    );
}
