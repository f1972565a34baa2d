//! The protocol end to end, without a network: members and a server exchanging the real
//! messages, members dropping out at every step, and a server that keeps everything it
//! receives.

use std::collections::{BTreeMap, BTreeSet};

use protocol::secagg::{Bytes32, Member, MemberKeys, Reveal, SharedKeys, UnmaskRequest};
use rand::rngs::ChaCha20Rng;
use rand::{Rng, SeedableRng};
use secagg::client::{self, Holding, Masked, Shared};
use secagg::server::{Round, Unmasked};
use secagg::{Encoding, Params, SecAggError, add_into, graph, majority};

/// The last step a member takes before it vanishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drop {
    /// Never sends its keys.
    BeforeKeys,
    /// Sends keys, never its shares.
    AfterKeys,
    /// Sends shares, never its masked vector.
    AfterShares,
    /// Sends its masked vector, never its reveal.
    AfterMasked,
}

/// Everything the server received in a round.
#[derive(Debug, Default)]
struct Transcript {
    keys: Vec<(Member, MemberKeys)>,
    shares: Vec<(Member, SharedKeys)>,
    masked: Vec<(Member, Vec<u32>)>,
    reveals: Vec<(Member, Reveal)>,
}

struct Setup {
    members: u32,
    neighbours: u32,
    threshold: u32,
    vectors: Vec<Vec<u32>>,
    drops: BTreeMap<Member, Drop>,
    /// What each member was told to compute (absent: [`CONTEXT`]); the server unmasks with
    /// [`CONTEXT`].
    contexts: BTreeMap<Member, Bytes32>,
    /// Members' masked vectors reach the server summed by this many gateways (member m's by
    /// gateway m mod g), as the server's gateways sum them; 0: each vector on its own.
    gateways: u32,
}

/// The context an honest server gives every member.
const CONTEXT: Bytes32 = Bytes32([0; 32]);

fn params(s: &Setup, session: Bytes32) -> Params {
    Params {
        session,
        members: s.members,
        threshold: s.threshold,
        vector_len: s.vectors[0].len(),
    }
}

fn gone(s: &Setup, m: Member, at: Drop) -> bool {
    s.drops.get(&m) == Some(&at)
}

/// Runs one round; `Ok` is the server's result, and what it received is in the transcript.
fn run(s: &Setup, rng: &mut ChaCha20Rng, t: &mut Transcript) -> Result<Unmasked, SecAggError> {
    let graph = graph::neighbourhoods(s.members, s.neighbours, rng);
    run_on(s, graph, rng, t)
}

fn run_with_graph(
    s: &Setup,
    graph: Vec<BTreeSet<Member>>,
    rng: &mut ChaCha20Rng,
) -> Result<Unmasked, SecAggError> {
    run_on(s, graph, rng, &mut Transcript::default())
}

fn run_on(
    s: &Setup,
    graph: Vec<BTreeSet<Member>>,
    rng: &mut ChaCha20Rng,
    t: &mut Transcript,
) -> Result<Unmasked, SecAggError> {
    let mut session = [0u8; 32];
    rng.fill_bytes(&mut session);
    let params = params(s, Bytes32(session));
    let mut keys = Round::start(params.clone(), graph.clone())?;
    let mut advertised = BTreeMap::new();
    for m in 1..=s.members {
        let member = client::Member::new(params.clone(), m, graph[m as usize - 1].clone())?;
        let (next, public) = member.advertise(rng);
        if gone(s, m, Drop::BeforeKeys) {
            continue;
        }
        keys.add(m, public)?;
        t.keys.push((m, public));
        advertised.insert(m, next);
    }
    let (mut shares, relayed) = keys.close()?;
    let mut shared: BTreeMap<Member, Shared> = BTreeMap::new();
    for (m, peers) in relayed {
        let (next, msg) = advertised.remove(&m).unwrap().share(&peers, rng)?;
        if gone(s, m, Drop::AfterKeys) {
            continue;
        }
        shares.add(m, msg.clone())?;
        t.shares.push((m, msg));
        shared.insert(m, next);
    }
    let (mut masked, inboxes) = shares.close()?;
    let mut waiting: BTreeMap<Member, Masked> = BTreeMap::new();
    let mut at_gateways: BTreeMap<u32, (Vec<Member>, Vec<u32>)> = BTreeMap::new();
    for (m, inbox) in inboxes {
        let holding: Holding = shared.remove(&m).unwrap().receive(&inbox)?;
        let context = s.contexts.get(&m).unwrap_or(&CONTEXT);
        let (next, y) = holding.mask(&s.vectors[m as usize - 1], context)?;
        if gone(s, m, Drop::AfterShares) {
            continue;
        }
        if s.gateways == 0 {
            masked.add(m, &y)?;
        } else {
            let (members, sum) = at_gateways
                .entry(m % s.gateways)
                .or_insert_with(|| (Vec::new(), vec![0; y.len()]));
            members.push(m);
            add_into(sum, &y, 1);
        }
        t.masked.push((m, y));
        waiting.insert(m, next);
    }
    for (members, sum) in at_gateways.values() {
        masked.add_sum(members, sum)?;
    }
    let (mut reveals, requests) = masked.close()?;
    for (m, request) in requests {
        let reveal = waiting.remove(&m).unwrap().reveal(&request)?;
        if gone(s, m, Drop::AfterMasked) {
            continue;
        }
        reveals.add(m, &reveal)?;
        t.reveals.push((m, reveal));
    }
    reveals.finish(&CONTEXT)
}

fn random_vectors(n: u32, len: usize, rng: &mut impl Rng) -> Vec<Vec<u32>> {
    // Encoded updates are at most `levels` each; any u32 would do for the masks.
    (0..n)
        .map(|_| (0..len).map(|_| rng.next_u32() >> 10).collect())
        .collect()
}

fn plain_sum(vectors: &[Vec<u32>], counted: &[Member]) -> Vec<u32> {
    let mut sum = vec![0u32; vectors[0].len()];
    for &m in counted {
        for (s, v) in sum.iter_mut().zip(&vectors[m as usize - 1]) {
            *s = s.wrapping_add(*v);
        }
    }
    sum
}

#[test]
fn the_masks_cancel_to_the_exact_sum() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // (members, neighbours): everyone for small cohorts, SecAgg+ neighbourhoods for 100.
    // g: gateways summing the masked vectors first (0: none).
    for (n, k, g) in [
        (2, 1, 0),
        (3, 2, 0),
        (10, 9, 0),
        (10, 4, 0),
        (100, 8, 0),
        (10, 4, 3),
        (100, 8, 4),
    ] {
        let vectors = random_vectors(n, 33, &mut rng);
        let holders = (k as usize).min(n as usize - 1) + 1;
        let setup = Setup {
            members: n,
            neighbours: k,
            threshold: majority(holders),
            vectors,
            drops: BTreeMap::new(),
            contexts: BTreeMap::new(),
            gateways: g,
        };
        let out = run(&setup, &mut rng, &mut Transcript::default()).unwrap();
        assert_eq!(out.counted.len(), n as usize);
        assert_eq!(
            out.sum,
            plain_sum(&setup.vectors, &out.counted),
            "n {n} k {k} gateways {g}"
        );
    }
}

#[test]
fn members_told_to_compute_different_things_cannot_be_summed() {
    // A server that gave member 2 other instructions (less noise to add, in distributed DP)
    // and sums it with the others gets masks that do not cancel: noise, not the sum. Honestly
    // told, the same members sum exactly.
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let vectors = random_vectors(4, 33, &mut rng);
    let mut setup = Setup {
        members: 4,
        neighbours: 3,
        threshold: majority(4),
        vectors,
        drops: BTreeMap::new(),
        contexts: BTreeMap::new(),
        gateways: 0,
    };
    let honest = run(&setup, &mut rng, &mut Transcript::default()).unwrap();
    assert_eq!(honest.sum, plain_sum(&setup.vectors, &honest.counted));
    setup.contexts.insert(2, Bytes32([7; 32]));
    let split = run(&setup, &mut rng, &mut Transcript::default()).unwrap();
    let expected = plain_sum(&setup.vectors, &split.counted);
    let equal = split
        .sum
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a == b)
        .count();
    assert!(equal <= 1, "{equal} of 33 values came out right");
}

/// Every way the members of a small cohort can drop (each at any step, or not at all).
fn every_drop_pattern(n: u32) -> Vec<BTreeMap<Member, Drop>> {
    let choices = [
        None,
        Some(Drop::BeforeKeys),
        Some(Drop::AfterKeys),
        Some(Drop::AfterShares),
        Some(Drop::AfterMasked),
    ];
    let mut patterns = vec![BTreeMap::new()];
    for m in 1..=n {
        patterns = patterns
            .into_iter()
            .flat_map(|p| {
                choices.iter().map(move |c| {
                    let mut q = p.clone();
                    if let Some(d) = c {
                        q.insert(m, *d);
                    }
                    q
                })
            })
            .collect();
    }
    patterns
}

#[test]
fn up_to_n_minus_t_drops_at_any_step_are_recovered_and_more_never_give_a_wrong_sum() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for n in [3u32, 4, 5] {
        let t = majority(n as usize);
        let vectors = random_vectors(n, 5, &mut rng);
        let (mut recovered, mut refused) = (0, 0);
        for drops in every_drop_pattern(n) {
            let setup = Setup {
                members: n,
                neighbours: n - 1,
                threshold: t,
                vectors: vectors.clone(),
                drops: drops.clone(),
                contexts: BTreeMap::new(),
                // Each vector alone, or summed first by one or two gateways.
                gateways: (recovered + refused) % 3,
            };
            let mut transcript = Transcript::default();
            let result = run(&setup, &mut rng, &mut transcript);
            // The members whose vectors the server holds: all but those that dropped before
            // sending one.
            let sent: Vec<Member> = (1..=n)
                .filter(|m| matches!(drops.get(m), None | Some(Drop::AfterMasked)))
                .collect();
            match result {
                Ok(out) => {
                    recovered += 1;
                    assert_eq!(out.counted, sent, "{drops:?}");
                    assert_eq!(out.sum, plain_sum(&vectors, &out.counted), "{drops:?}");
                }
                Err(e) => {
                    refused += 1;
                    assert!(
                        drops.len() > (n - t) as usize,
                        "{} drops (≤ n − t = {}) must be recovered: {drops:?}: {e}",
                        drops.len(),
                        n - t
                    );
                    assert!(refusal(&e), "{drops:?}: {e}");
                }
            }
            never_both_secrets(&transcript);
        }
        assert!(
            recovered > 0 && refused > 0,
            "n {n}: {recovered} recovered, {refused} refused"
        );
    }
}

/// The ways a round may end without a sum (never with a wrong one).
fn refusal(e: &SecAggError) -> bool {
    matches!(
        e,
        SecAggError::TooFewSurvivors { .. } | SecAggError::Empty | SecAggError::Split
    )
}

#[test]
fn on_sparse_neighbourhoods_drops_are_recovered_or_refused_never_summed_wrong() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let stages = [
        Drop::BeforeKeys,
        Drop::AfterKeys,
        Drop::AfterShares,
        Drop::AfterMasked,
    ];
    for (n, k) in [(10u32, 4u32), (12, 2), (30, 6)] {
        let t = majority(k as usize + 1);
        let vectors = random_vectors(n, 4, &mut rng);
        let (mut recovered, mut refused) = (0, 0);
        for _ in 0..150 {
            let mut drops = BTreeMap::new();
            for m in 1..=n {
                let r = rng.next_u32();
                if r % 5 == 0 {
                    drops.insert(m, stages[(r / 5 % 4) as usize]);
                }
            }
            let setup = Setup {
                members: n,
                neighbours: k,
                threshold: t,
                vectors: vectors.clone(),
                drops: drops.clone(),
                contexts: BTreeMap::new(),
                gateways: 0,
            };
            let mut transcript = Transcript::default();
            match run(&setup, &mut rng, &mut transcript) {
                Ok(out) => {
                    recovered += 1;
                    assert_eq!(out.sum, plain_sum(&vectors, &out.counted), "{drops:?}");
                    for m in &out.counted {
                        assert!(matches!(drops.get(m), None | Some(Drop::AfterMasked)));
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(refusal(&e), "{drops:?}: {e}");
                }
            }
            never_both_secrets(&transcript);
        }
        assert!(
            recovered > 0,
            "n {n} k {k}: nothing recovered, {refused} refused"
        );
    }
}

#[test]
fn survivors_cut_into_two_groups_are_not_unmasked() {
    // A ring (k = 2, t = 2 of 3 holders). Two members at distance 3 send their shares and
    // vanish: the two members between them mask only against each other and the vanished,
    // so unmasking would hand the server their pair's sum. The round must refuse.
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let n = 10;
    let g = graph::neighbourhoods(n, 2, &mut rng);
    let mut ring = vec![1u32];
    while ring.len() < n as usize {
        let last = *ring.last().unwrap();
        let next = g[last as usize - 1]
            .iter()
            .copied()
            .find(|j| !ring.contains(j))
            .unwrap();
        ring.push(next);
    }
    let drops = BTreeMap::from([(ring[0], Drop::AfterShares), (ring[3], Drop::AfterShares)]);
    let setup = Setup {
        members: n,
        neighbours: 2,
        threshold: 2,
        vectors: random_vectors(n, 3, &mut rng),
        drops,
        contexts: BTreeMap::new(),
        gateways: 0,
    };
    let err = run_with_graph(&setup, g, &mut rng).unwrap_err();
    assert_eq!(err, SecAggError::Split);
}

#[test]
fn a_low_order_public_key_is_dropped_before_anyone_shares_with_it() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let params = Params {
        session: Bytes32([3; 32]),
        members: 4,
        threshold: 3,
        vector_len: 1,
    };
    let g = graph::neighbourhoods(4, 3, &mut rng);
    let mut keys = Round::start(params.clone(), g.clone()).unwrap();
    for m in 1..=4 {
        let (_, mut k) = client::Member::new(params.clone(), m, g[m as usize - 1].clone())
            .unwrap()
            .advertise(&mut rng);
        if m == 2 {
            k.masking = Bytes32([0; 32]);
        }
        keys.add(m, k).unwrap();
    }
    let (_, relayed) = keys.close().unwrap();
    assert_eq!(relayed.keys().copied().collect::<Vec<_>>(), [1, 3, 4]);
    assert!(relayed.values().all(|peers| !peers.contains_key(&2)));
}

/// No member ever had shares of both its seed and its masking secret sent to the server.
fn never_both_secrets(t: &Transcript) {
    let seeds: BTreeSet<Member> = t
        .reveals
        .iter()
        .flat_map(|(_, r)| r.seeds.iter().map(|s| s.of))
        .collect();
    let keys: BTreeSet<Member> = t
        .reveals
        .iter()
        .flat_map(|(_, r)| r.masking_keys.iter().map(|s| s.of))
        .collect();
    assert!(
        seeds.is_disjoint(&keys),
        "seeds {seeds:?} and keys {keys:?} of one member"
    );
}

#[test]
fn a_curious_server_learns_the_sum_and_no_single_vector() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let encoding = Encoding::default();
    // Five members' float updates, encoded as they would be for the round.
    let updates: Vec<Vec<f32>> = (0..5)
        .map(|_| {
            (0..200)
                .map(|_| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 0.2)
                .collect()
        })
        .collect();
    let vectors: Vec<Vec<u32>> = updates
        .iter()
        .map(|u| encoding.encode(1.0, u, &mut rng).unwrap())
        .collect();
    // Member 5 vanishes after its shares: the server asks for its masking secret, and the
    // others' seeds — never both of one member.
    let setup = Setup {
        members: 5,
        neighbours: 4,
        threshold: 3,
        vectors: vectors.clone(),
        drops: BTreeMap::from([(5, Drop::AfterShares)]),
        contexts: BTreeMap::new(),
        gateways: 0,
    };
    let mut t = Transcript::default();
    let out = run(&setup, &mut rng, &mut t).unwrap();
    assert_eq!(out.counted, [1, 2, 3, 4]);
    assert_eq!(out.recovered, [5]);
    assert_eq!(out.sum, plain_sum(&vectors, &out.counted));
    let (mean, _) = encoding.decode(&out.sum, 4).unwrap();
    for (k, m) in mean.iter().enumerate() {
        let want = updates[..4].iter().map(|u| u[k]).sum::<f32>() / 4.0;
        assert!((m - want).abs() < 1e-4, "{k}: {m} vs {want}");
    }
    // What the server holds is no member's vector, nor close to one: within one rounding
    // step of a plaintext value it finds only as many coordinates as chance gives (3 of 2³²).
    for (_, y) in &t.masked {
        for x in &vectors {
            let close = y
                .iter()
                .zip(x)
                .filter(|(a, b)| a.wrapping_sub(**b).min(b.wrapping_sub(**a)) <= 1)
                .count();
            assert!(
                close <= 1,
                "{close} coordinates of a masked vector sit on a plaintext's"
            );
        }
        for u in &updates {
            let decoded = encoding.decode(y, 1).map(|(v, _)| v).unwrap_or_default();
            let near = decoded
                .iter()
                .zip(u)
                .filter(|(a, b)| (*a - *b).abs() < 1e-3)
                .count();
            assert!(
                near <= 2,
                "{near} coordinates of a masked vector decode near an update"
            );
        }
    }
    // The shares travelled encrypted: no envelope contains a revealed share's bytes.
    for (_, shared) in &t.shares {
        for e in &shared.envelopes {
            for (_, r) in &t.reveals {
                for s in r.seeds.iter().chain(&r.masking_keys) {
                    assert!(
                        !e.ciphertext
                            .windows(s.share.len())
                            .any(|w| w == &s.share[..])
                    );
                }
            }
        }
    }
    never_both_secrets(&t);
}

#[test]
fn a_member_refuses_to_reveal_both_secrets_or_to_mask_twice() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let params = Params {
        session: Bytes32([1; 32]),
        members: 3,
        threshold: 2,
        vector_len: 2,
    };
    let g = graph::neighbourhoods(3, 2, &mut rng);
    let mut keys = Round::start(params.clone(), g.clone()).unwrap();
    let mut adv = BTreeMap::new();
    for m in 1..=3 {
        let (a, k) = client::Member::new(params.clone(), m, g[m as usize - 1].clone())
            .unwrap()
            .advertise(&mut rng);
        keys.add(m, k).unwrap();
        adv.insert(m, a);
    }
    let (mut shares, relayed) = keys.close().unwrap();
    let mut shared = BTreeMap::new();
    for (m, peers) in relayed {
        let (s, msg) = adv.remove(&m).unwrap().share(&peers, &mut rng).unwrap();
        shares.add(m, msg).unwrap();
        shared.insert(m, s);
    }
    let (_, inboxes) = shares.close().unwrap();
    let holding = shared.remove(&1).unwrap().receive(&inboxes[&1]).unwrap();
    let (masked, _) = holding.mask(&[1, 2], &CONTEXT).unwrap();
    let greedy = UnmaskRequest {
        survivors: vec![1, 2],
        dropped: vec![2],
    };
    assert_eq!(
        masked.reveal(&greedy).unwrap_err(),
        SecAggError::BothSecrets(2)
    );
    // (`reveal` consumed the state: a second request cannot even be asked in code.)
    let holding = shared.remove(&2).unwrap().receive(&inboxes[&2]).unwrap();
    assert_eq!(
        holding.mask(&[1, 2, 3], &CONTEXT).unwrap_err(),
        SecAggError::Length {
            expected: 2,
            actual: 3
        }
    );
}

#[test]
fn a_threshold_that_is_not_a_majority_and_copied_keys_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let params = |threshold| Params {
        session: Bytes32([2; 32]),
        members: 5,
        threshold,
        vector_len: 1,
    };
    let g = graph::neighbourhoods(5, 4, &mut rng);
    // 5 holders: 3 is the smallest strict majority.
    assert!(matches!(
        Round::start(params(2), g.clone()),
        Err(SecAggError::Threshold { .. })
    ));
    assert!(matches!(
        client::Member::new(params(2), 1, g[0].clone()),
        Err(SecAggError::Threshold { .. })
    ));
    assert!(Round::start(params(6), g.clone()).is_err());
    // Member 2 publishes member 1's keys: both are dropped before any share is relayed.
    let mut keys = Round::start(params(3), g.clone()).unwrap();
    let mut published = BTreeMap::new();
    for m in 1..=5 {
        let (_, k) = client::Member::new(params(3), m, g[m as usize - 1].clone())
            .unwrap()
            .advertise(&mut rng);
        published.insert(m, k);
    }
    published.insert(2, published[&1]);
    for (m, k) in &published {
        keys.add(*m, *k).unwrap();
    }
    assert_eq!(keys.add(3, published[&3]), Err(SecAggError::Twice(3)));
    let (_, relayed) = keys.close().unwrap();
    assert_eq!(relayed.keys().copied().collect::<Vec<_>>(), [3, 4, 5]);
}

/// A gateway's sum of masked vectors counts for the members it lists only if each is awaited
/// and listed once; a refused sum adds nothing, so the members stay awaited.
#[test]
fn a_gateway_sum_listing_a_stranger_a_member_twice_or_one_already_in_is_refused_whole() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let n = 4;
    let params = Params {
        session: Bytes32([3; 32]),
        members: n,
        threshold: majority(n as usize),
        vector_len: 6,
    };
    let graph = graph::neighbourhoods(n, n - 1, &mut rng);
    let mut keys = Round::start(params.clone(), graph.clone()).unwrap();
    let mut advertised = BTreeMap::new();
    for m in 1..=n {
        let member = client::Member::new(params.clone(), m, graph[m as usize - 1].clone()).unwrap();
        let (next, public) = member.advertise(&mut rng);
        keys.add(m, public).unwrap();
        advertised.insert(m, next);
    }
    let (mut shares, relayed) = keys.close().unwrap();
    let mut shared = BTreeMap::new();
    for (m, peers) in relayed {
        let (next, msg) = advertised
            .remove(&m)
            .unwrap()
            .share(&peers, &mut rng)
            .unwrap();
        shares.add(m, msg).unwrap();
        shared.insert(m, next);
    }
    let (mut masked, inboxes) = shares.close().unwrap();
    let vectors = random_vectors(n, 6, &mut rng);
    let mut ys = BTreeMap::new();
    let mut waiting = BTreeMap::new();
    for (m, inbox) in inboxes {
        let holding = shared.remove(&m).unwrap().receive(&inbox).unwrap();
        let (next, y) = holding.mask(&vectors[m as usize - 1], &CONTEXT).unwrap();
        ys.insert(m, y);
        waiting.insert(m, next);
    }
    let sum_of = |ms: &[Member]| {
        let mut sum = vec![0u32; 6];
        for y in ms.iter().filter_map(|m| ys.get(m)) {
            add_into(&mut sum, y, 1);
        }
        sum
    };
    masked.add(4, &ys[&4]).unwrap();
    for (listed, what) in [
        (vec![1, 5], "a stranger"),
        (vec![1, 1], "a member twice"),
        (vec![2, 4], "a member already in"),
        (vec![], "nobody"),
    ] {
        assert!(
            masked.add_sum(&listed, &sum_of(&listed)).is_err(),
            "a sum listing {what} was taken"
        );
    }
    assert!(
        masked.add_sum(&[1, 2], &[0; 5]).is_err(),
        "a sum of the wrong length was taken"
    );
    for m in 1..=3 {
        masked.expects(m).unwrap();
    }
    assert!(matches!(masked.expects(4), Err(SecAggError::Twice(4))));
    masked.add_sum(&[1, 2, 3], &sum_of(&[1, 2, 3])).unwrap();
    let (mut reveals, requests) = masked.close().unwrap();
    for (m, request) in requests {
        let reveal = waiting.remove(&m).unwrap().reveal(&request).unwrap();
        reveals.add(m, &reveal).unwrap();
    }
    let out = reveals.finish(&CONTEXT).unwrap();
    assert_eq!(out.counted, vec![1, 2, 3, 4]);
    assert_eq!(out.sum, plain_sum(&vectors, &out.counted));
}
