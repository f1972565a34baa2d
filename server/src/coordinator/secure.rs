//! A round with secure aggregation, on the server: which connection is which member, the
//! protocol's state (`secagg::server`), and the deadlines of its key, share and reveal steps.
//!
//! Keys and shares go back and forth in the round's first milliseconds (a member starts
//! training once its shares are out); a member masks its update once it holds its neighbours'
//! shares; when the masked
//! vectors are in (the training deadline and quorum rules as for any round), the survivors are
//! asked to reveal, and the sum is unmasked, decoded and handed to the aggregation interface.
//! Any step that cannot go on fails the round, which is retried: nothing partial is unmasked.
//!
//! A round whose connections are exactly the last secure round's, every member of which was
//! counted, reuses that round's numbering, neighbourhoods and keys: it starts at the share step,
//! one round trip shorter (`secagg::server::ReusableKeys`; the members' side refuses anything
//! unsafe, `secagg::client::Keyed`). A member dropping after sharing fails such a round (its
//! masking secret cannot be revealed), and the retry draws fresh keys.

use std::collections::BTreeMap;

use protocol::admin::SecureAggregationConfig;
use protocol::secagg::{Bytes32, Member, MemberKeys, PeerKeys, Reveal, SecAggSetup, SharedKeys};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use secagg::server::{CollectingKeys, CollectingMasked, CollectingReveals, CollectingShares};
use secagg::{Encoding, Params, SecAggError};

use super::*;

/// How long the key, share and reveal steps wait for a silent member (each takes milliseconds:
/// a member sends its shares before it starts training).
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the protocol is.
#[derive(Debug)]
pub(super) enum Step {
    Keys(CollectingKeys),
    Shares(CollectingShares),
    Masked(CollectingMasked),
    Reveals(CollectingReveals),
    /// Taken out to be closed, or done.
    Closed,
}

/// A round's secure aggregation.
#[derive(Debug)]
pub(super) struct SecureRound {
    /// Connection → member, and back.
    members: HashMap<u64, Member>,
    conns: BTreeMap<Member, u64>,
    pub(super) step: Step,
    /// When the current key, share or reveal step closes even if a member is silent.
    pub(super) step_deadline: tokio::time::Instant,
    /// Members that answered the current step.
    answered: std::collections::BTreeSet<Member>,
    /// Members still in after the last closed step (whose answer the current step waits for).
    expected: std::collections::BTreeSet<Member>,
    decoding: Decoding,
    /// What the members were told to compute (their pairwise masks are bound to it).
    context: Bytes32,
    /// Members that dropped after sharing and whose masks were removed.
    pub(super) recovered: u64,
    /// The round reused the last round's keys (it started at the share step).
    pub(super) keys_reused: bool,
    config: SecureAggregationConfig,
}

/// The keys of the last secure round in which every member was counted, and which connection
/// was which member: the next round of the same connections reuses them.
#[derive(Debug)]
pub(super) struct KeptKeys {
    members: HashMap<u64, Member>,
    config: SecureAggregationConfig,
    keys: secagg::server::ReusableKeys,
}

impl KeptKeys {
    /// Whether a round of `conns` under `config` can reuse these keys: the same connections
    /// (so the same places and neighbourhoods), settings and vector length.
    fn serves(&self, config: &SecureAggregationConfig, conns: &[u64], vector_len: usize) -> bool {
        *config == self.config
            && self.keys.params().vector_len == vector_len
            && conns.len() == self.members.len()
            && conns.iter().all(|c| self.members.contains_key(c))
    }
}

/// What the members' vectors hold, hence how the unmasked sum is read.
#[derive(Debug)]
pub(super) enum Decoding {
    /// FedAvg: each member encoded [w, w·u] (its weight and weighted update).
    Mean(Encoding),
    /// Distributed DP: each member's noisy integer sum of rounded clipped gradients.
    Gradient(GradientSum),
}

/// How a distributed-DP round's integer sum becomes the noisy mean clipped gradient.
#[derive(Debug, Clone)]
pub(super) struct GradientSum {
    pub clip: f32,
    /// S, β and t (fewer counted members than t are never unmasked: their noise is not whole).
    pub noise: protocol::config::DistributedNoise,
    /// The round's noise multiplier z (the same for every member).
    pub noise_multiplier: f64,
    /// Each sampled connection's expected batch q·n (the divisor sums the counted ones').
    pub expected_batch: HashMap<u64, f64>,
}

/// Fresh OS randomness for the round's session, graph and stochastic choices.
fn os_rng() -> Result<ChaCha20Rng, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(ChaCha20Rng::from_seed(seed))
}

/// Who is which member, their neighbourhoods and threshold, and the step a round starts at.
struct Cohort {
    members: HashMap<u64, Member>,
    /// `graph[m - 1]`: member m's neighbours.
    graph: Vec<std::collections::BTreeSet<Member>>,
    threshold: u32,
    step: Step,
}

impl Cohort {
    /// Numbers the connections 1..=n and draws their neighbourhoods: the round starts with
    /// the key step.
    fn fresh(
        config: &SecureAggregationConfig,
        conns: &[u64],
        session: Bytes32,
        vector_len: usize,
        rng: &mut ChaCha20Rng,
    ) -> Result<Self, String> {
        let n = conns.len() as u32;
        let graph = secagg::graph::neighbourhoods(n, config.neighbours, rng);
        let holders = graph.first().map_or(1, |g| g.len() + 1);
        let params = Params {
            session,
            members: n,
            threshold: config.threshold_for(holders),
            vector_len,
        };
        let threshold = params.threshold;
        let keys =
            secagg::server::Round::start(params, graph.clone()).map_err(|e| e.to_string())?;
        Ok(Self {
            members: conns
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, i as Member + 1))
                .collect(),
            graph,
            threshold,
            step: Step::Keys(keys),
        })
    }

    /// The last round's numbering, neighbourhoods and keys under a fresh session: the round
    /// starts with the share step.
    fn resumed(kept: KeptKeys, session: Bytes32) -> Self {
        let n = kept.keys.params().members;
        Self {
            graph: (1..=n).map(|m| kept.keys.neighbours(m).clone()).collect(),
            threshold: kept.keys.params().threshold,
            members: kept.members,
            step: Step::Shares(kept.keys.resume(session)),
        }
    }
}

impl SecureRound {
    /// Numbers the sampled connections 1..=n, draws the neighbourhoods and the session, and
    /// says what each member is told before training. When the connections are those of
    /// `kept`'s round (and reuse is on: by default in distributed-DP rounds), their numbers,
    /// neighbourhoods and keys serve again and the round starts at the share step.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan(
        config: &SecureAggregationConfig,
        conns: &[u64],
        server_round: u64,
        vector_len: usize,
        gradient: Option<GradientSum>,
        context: Bytes32,
        kept: Option<KeptKeys>,
    ) -> Result<(Self, Vec<(u64, SecAggSetup)>), String> {
        let mut rng = os_rng().map_err(|e| format!("no randomness for secure aggregation: {e}"))?;
        let encoding = Encoding {
            clip: config.clip,
            levels: config.levels,
        };
        encoding
            .check(conns.len() as u32)
            .map_err(|e| e.to_string())?;
        let mut session = [0u8; 32];
        rand::Rng::fill_bytes(&mut rng, &mut session);
        let session = Bytes32(session);
        let reuse = config.reuses_keys(gradient.is_some());
        let cohort = match kept.filter(|k| reuse && k.serves(config, conns, vector_len)) {
            Some(k) => Cohort::resumed(k, session),
            None => Cohort::fresh(config, conns, session, vector_len, &mut rng)?,
        };
        let keys_reused = matches!(cohort.step, Step::Shares(_));
        let mut setups = Vec::with_capacity(conns.len());
        for c in conns {
            let member = *cohort
                .members
                .get(c)
                .ok_or("a sampled connection without a place in the cohort")?;
            let setup = SecAggSetup {
                server_round,
                session,
                member,
                members: conns.len() as u32,
                threshold: cohort.threshold,
                neighbours: cohort.graph[member as usize - 1].iter().copied().collect(),
                clip: config.clip,
                levels: config.levels,
                max_weight: config.max_weight,
                reuse_keys: keys_reused,
            };
            setups.push((*c, setup));
        }
        let Cohort { members, step, .. } = cohort;
        Ok((
            Self {
                conns: members.iter().map(|(&c, &m)| (m, c)).collect(),
                expected: members.values().copied().collect(),
                members,
                step,
                step_deadline: tokio::time::Instant::now() + STEP_TIMEOUT,
                answered: Default::default(),
                decoding: match gradient {
                    Some(g) => Decoding::Gradient(g),
                    None => Decoding::Mean(encoding),
                },
                context,
                recovered: 0,
                keys_reused,
                config: *config,
            },
            setups,
        ))
    }

    /// t of a distributed-DP round.
    fn contributors(&self) -> Option<u32> {
        match &self.decoding {
            Decoding::Gradient(g) => Some(g.noise.contributors),
            Decoding::Mean(_) => None,
        }
    }

    /// The unmasked sum of the `counted` members as the aggregator's input: FedAvg's weighted
    /// mean update, or distributed DP's noisy mean clipped gradient (refused below t members).
    fn decode(&self, sum: &[u32], counted: &[Member]) -> Result<Vec<f32>, String> {
        match &self.decoding {
            Decoding::Mean(encoding) => encoding
                .decode(sum, counted.len() as u32)
                .map(|(mean, _)| mean)
                .map_err(|e| e.to_string()),
            Decoding::Gradient(g) => {
                let t = g.noise.contributors;
                if counted.len() < t as usize {
                    return Err(format!(
                        "{} members counted, fewer than the {t} contributors the noise needs",
                        counted.len()
                    ));
                }
                let batches: Vec<f64> = counted
                    .iter()
                    .filter_map(|m| self.conn(*m))
                    .filter_map(|c| g.expected_batch.get(&c).copied())
                    .collect();
                // The last slot of every vector is 0 (the weight slot of FedAvg's encoding).
                let values = sum.split_last().map_or(sum, |(_, v)| v);
                let integers = secagg::encode::unwrap_sum(values);
                let reach =
                    protocol::config::distributed_reach(&g.noise, &batches, g.noise_multiplier);
                if let Some(v) = integers.iter().find(|v| v.unsigned_abs() as f64 > reach) {
                    return Err(format!(
                        "a coordinate of the sum is {v}, past the {reach:.0} an honest sum reaches: masks did not cancel (a member masked under other instructions, or sent garbage)"
                    ));
                }
                learning::distributed::mean_gradient(
                    &integers,
                    g.clip,
                    g.noise.scale,
                    batches.iter().sum(),
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    pub(super) fn member(&self, conn: u64) -> Option<Member> {
        self.members.get(&conn).copied()
    }

    fn conn(&self, m: Member) -> Option<u64> {
        self.conns.get(&m).copied()
    }

    /// The connections of the members a step left out (not in `still_in`).
    fn connections_not_in<V>(&self, still_in: &BTreeMap<Member, V>) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(m, _)| !still_in.contains_key(m))
            .map(|(_, &c)| c)
            .collect()
    }

    /// Per-member messages, addressed to their members' connections.
    fn addressed<V>(&self, per_member: impl IntoIterator<Item = (Member, V)>) -> Vec<(u64, V)> {
        per_member
            .into_iter()
            .filter_map(|(m, v)| Some((self.conn(m)?, v)))
            .collect()
    }

    /// A step still waits for an answer (keys, shares, reveals), so its deadline applies.
    pub(super) fn waiting_step(&self) -> bool {
        matches!(
            self.step,
            Step::Keys(_) | Step::Shares(_) | Step::Reveals(_)
        )
    }

    fn next_step(
        &mut self,
        step: Step,
        expected: impl IntoIterator<Item = Member>,
        deadline: tokio::time::Instant,
    ) {
        self.step = step;
        self.expected = expected.into_iter().collect();
        self.answered.clear();
        self.step_deadline = deadline;
    }

    /// Whether every member the step waits for answered or is `gone` — or, for the reveals,
    /// whether every secret the sum needs has its shares already (a silent survivor does not
    /// hold the round).
    fn step_complete(&self, gone: impl Fn(Member) -> bool) -> bool {
        if let Step::Reveals(r) = &self.step
            && r.ready()
        {
            return true;
        }
        self.expected
            .iter()
            .all(|m| self.answered.contains(m) || gone(*m))
    }

    /// Whether `conn`'s masked vector is awaited: it waits at a gateway, which sums it with
    /// its other clients' ([`SecureRound::add_masked_sum`]).
    pub(super) fn expects_masked(&self, conn: u64) -> Result<(), String> {
        let m = self.member(conn).ok_or(NOT_A_MEMBER)?;
        match &self.step {
            Step::Masked(s) => s.expects(m).map_err(|e| e.to_string()),
            _ => Err(NOT_THE_MASKED_STEP.into()),
        }
    }

    /// The modular sum of the masked vectors of `conns` (one member's own, or a gateway's
    /// sum of its clients'), into the protocol's running sum: all or none.
    pub(super) fn add_masked_sum(&mut self, conns: &[u64], sum: &[u32]) -> Result<(), String> {
        let members = conns
            .iter()
            .map(|&c| self.member(c).ok_or(NOT_A_MEMBER))
            .collect::<Result<Vec<Member>, _>>()?;
        match &mut self.step {
            Step::Masked(s) => s.add_sum(&members, sum).map_err(|e| e.to_string()),
            _ => Err(NOT_THE_MASKED_STEP.into()),
        }
    }

    /// A masked vector from `conn`, into the protocol's running sum.
    pub(super) fn add_masked(&mut self, conn: u64, values: &[u32]) -> Result<(), String> {
        self.add_masked_sum(&[conn], values)
    }
}

const NOT_A_MEMBER: &str = "not a member of this round's secure aggregation";
const NOT_THE_MASKED_STEP: &str = "a masked vector outside the masked vectors' step (before this member was sent its neighbours' shares, or after the step closed)";

/// What a member answers in a key, share or reveal step.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum SecAggAnswer {
    Keys(MemberKeys),
    Shares(SharedKeys),
    Reveal(Reveal),
}

impl Coordinator {
    /// A member's answer to the current step. A malformed one fails the member's slot; one the
    /// step does not wait for (late, from an abandoned attempt) is refused and the member stays.
    pub(super) fn secagg_answer(&mut self, conn: u64, server_round: u64, answer: SecAggAnswer) {
        let current = self.current_round();
        let closed = self.run.as_ref().map_or(0, |r| r.summary.completed_rounds);
        if server_round <= closed && matches!(answer, SecAggAnswer::Reveal(_)) {
            // A reveal of a round already unmasked and closed (the sum needed only a threshold
            // of the shares): not needed, nothing to say — also between rounds, when no round
            // is open (distributed-DP rounds follow each other within milliseconds, so a tab's
            // reveal often lands there; answering it "wrong round" put a server error on every
            // tab's page every round).
            return;
        }
        if current != server_round {
            let expected = match current {
                0 => "no round is open".to_string(),
                _ => format!("expected round {current}"),
            };
            return self.reject(
                conn,
                ErrorCode::WrongRound,
                format!("secure aggregation message for round {server_round}: {expected}"),
            );
        }
        let member = self.secure_mut().map(|s| s.member(conn));
        let m = match member {
            None => {
                return self.reject(
                    conn,
                    ErrorCode::BadSequence,
                    "this round has no secure aggregation".into(),
                );
            }
            Some(None) => {
                return self.reject(
                    conn,
                    ErrorCode::NotSampled,
                    "not a member of this round's secure aggregation".into(),
                );
            }
            Some(Some(m)) => m,
        };
        let Some(secure) = self.secure_mut() else {
            return;
        };
        let added = match (&mut secure.step, answer) {
            (Step::Keys(s), SecAggAnswer::Keys(k)) => s.add(m, k),
            (Step::Shares(s), SecAggAnswer::Shares(sh)) => s.add(m, sh),
            (Step::Reveals(s), SecAggAnswer::Reveal(r)) => s.add(m, &r),
            // A reveal after the sum was already unmasked (every secret had its shares): not
            // needed, nothing to say.
            (_, SecAggAnswer::Reveal(_)) => return,
            // Late or early (a slow member of an abandoned attempt of this round): refused, but
            // the member stays in.
            _ => {
                return self.reject(
                    conn,
                    ErrorCode::BadSequence,
                    "secure aggregation: not the message this step waits for".into(),
                );
            }
        };
        match added {
            Ok(()) => {
                secure.answered.insert(m);
                self.advance_secure(false);
            }
            Err(e) => {
                let msg = format!("secure aggregation: {e}");
                self.reject(conn, ErrorCode::InvalidUpdate, msg.clone());
                self.fail_slot(conn, Some(server_round), &msg);
                self.advance_secure(false);
            }
        }
    }

    /// Closes the current key, share or reveal step once every member it waits for answered or
    /// is gone — or, with `force`, at its deadline.
    pub(super) fn advance_secure(&mut self, force: bool) {
        loop {
            let Some(round) = self.run.as_ref().and_then(|r| r.round.as_ref()) else {
                return;
            };
            let Some(secure) = round.secure.as_ref() else {
                return;
            };
            if !secure.waiting_step() {
                return;
            }
            let gone = |m: Member| {
                secure.conn(m).is_none_or(|c| {
                    !self.clients.contains_key(&c)
                        || (!matches!(secure.step, Step::Reveals(_))
                            && !matches!(round.sampled.get(&c), Some((_, Slot::Pending))))
                })
            };
            if !force && !secure.step_complete(gone) {
                return;
            }
            let closing_keys = matches!(secure.step, Step::Keys(_));
            let closing_shares = matches!(secure.step, Step::Shares(_));
            let closed = if closing_keys {
                self.close_keys()
            } else if closing_shares {
                self.close_shares()
            } else {
                return self.finish_unmask();
            };
            if let Err(e) = closed {
                return self.abandon_round(&format!("secure aggregation: {e}"));
            }
            // The next step may already be complete (every member gone): check again.
            if force {
                return;
            }
        }
    }

    fn secure_mut(&mut self) -> Option<&mut SecureRound> {
        self.run.as_mut()?.round.as_mut()?.secure.as_mut()
    }

    /// Members of the round no longer in it after a step: their slots fail.
    fn drop_members(&mut self, left: Vec<u64>, why: &str) {
        let round = self
            .run
            .as_ref()
            .and_then(|r| r.round.as_ref())
            .map(|r| r.server_round);
        for conn in left {
            self.fail_slot(conn, round, why);
        }
    }

    fn close_keys(&mut self) -> Result<(), SecAggError> {
        let Some(secure) = self.secure_mut() else {
            return Ok(());
        };
        let Step::Keys(keys) = std::mem::replace(&mut secure.step, Step::Closed) else {
            return Ok(());
        };
        let (shares, relay) = keys.close()?;
        let left = secure.connections_not_in(&relay);
        let still_in: Vec<Member> = relay.keys().copied().collect();
        let out = secure.addressed(relay.into_iter().map(|(m, peers)| {
            let list: Vec<PeerKeys> = peers
                .into_iter()
                .map(|(member, keys)| PeerKeys { member, keys })
                .collect();
            (m, list)
        }));
        // Members share before they train (the session holds training until its shares are
        // out), so a silent member holds this step only briefly.
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        secure.next_step(Step::Shares(shares), still_in, deadline);
        self.drop_members(
            left,
            "secure aggregation: no keys in time, or too few neighbours left",
        );
        let server_round = self.current_round();
        for (conn, peers) in out {
            self.send_msg(
                conn,
                &ServerMessage::SecAggPeers {
                    server_round,
                    peers,
                },
            );
        }
        Ok(())
    }

    fn close_shares(&mut self) -> Result<(), SecAggError> {
        let Some(secure) = self.secure_mut() else {
            return Ok(());
        };
        let Step::Shares(shares) = std::mem::replace(&mut secure.step, Step::Closed) else {
            return Ok(());
        };
        let (masked, inbox) = shares.close()?;
        let left = secure.connections_not_in(&inbox);
        let out = secure.addressed(inbox);
        secure.next_step(Step::Masked(masked), [], tokio::time::Instant::now());
        self.drop_members(
            left,
            "secure aggregation: no shares in time, or too few neighbours left",
        );
        let server_round = self.current_round();
        for (conn, envelopes) in out {
            self.send_msg(
                conn,
                &ServerMessage::SecAggInbox {
                    server_round,
                    envelopes,
                },
            );
        }
        Ok(())
    }

    fn current_round(&self) -> u64 {
        self.run
            .as_ref()
            .and_then(|r| r.round.as_ref())
            .map_or(0, |r| r.server_round)
    }

    /// The masked vectors are in: asks the survivors to reveal (instead of aggregating).
    pub(super) fn start_unmask(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let (quorum, accept_failures) = (
            run.summary.config.quorum,
            run.summary.config.accept_failures,
        );
        let Some(round) = run.round.as_mut() else {
            return;
        };
        let server_round = round.server_round;
        // The quorum is checked before anything is unmasked: a sum unmasked and then refused
        // would be retried with an overlapping cohort, and two sums give their difference.
        let (results, sampled, failures) = (
            round.aggregator.count(),
            round.sampled.len(),
            round.failures(),
        );
        let needed = quorum_needed(quorum, sampled);
        if results < needed || (failures > 0 && !accept_failures) {
            return self.abandon_round(&format!(
                "secure aggregation: {results} masked vectors of {sampled} sampled (quorum {needed}), {failures} failures: not unmasked"
            ));
        }
        let Some(secure) = round.secure.as_mut() else {
            return;
        };
        if let Some(t) = secure.contributors()
            && results < t as usize
        {
            return self.abandon_round(&format!(
                "distributed DP: {results} masked vectors, fewer than the {t} contributors whose noise shares make the noise whole: not unmasked"
            ));
        }
        let step = std::mem::replace(&mut secure.step, Step::Closed);
        let masked = match step {
            Step::Masked(m) => m,
            // Keys or shares never completed: no member could mask.
            _ => return self.abandon_round(
                "secure aggregation: the key and share steps did not complete before the deadline",
            ),
        };
        let (reveals, requests) = match masked.close() {
            Ok(r) => r,
            Err(e) => return self.abandon_round(&format!("secure aggregation: {e}")),
        };
        round.phase = Phase::Unmasking;
        let out = secure.addressed(requests);
        let survivors: Vec<Member> = out.iter().filter_map(|(c, _)| secure.member(*c)).collect();
        secure.next_step(
            Step::Reveals(reveals),
            survivors,
            tokio::time::Instant::now() + STEP_TIMEOUT,
        );
        for (conn, request) in out {
            self.send_msg(
                conn,
                &ServerMessage::SecAggUnmask {
                    server_round,
                    request,
                },
            );
        }
        self.advance_secure(false);
    }

    /// The reveals are in (or their deadline passed): unmasks, decodes and aggregates — or
    /// fails the round if a secret cannot be rebuilt.
    fn finish_unmask(&mut self) {
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return;
        };
        let Some(secure) = round.secure.as_mut() else {
            return;
        };
        let Step::Reveals(reveals) = std::mem::replace(&mut secure.step, Step::Closed) else {
            return;
        };
        let t = Instant::now();
        let mut unmasked = match reveals.finish(&secure.context) {
            Ok(u) => u,
            Err(e) => return self.abandon_round(&format!("secure aggregation: {e}")),
        };
        let kept = unmasked.reusable.take().map(|keys| KeptKeys {
            members: secure.members.clone(),
            config: secure.config,
            keys,
        });
        let decoded = secure
            .decode(&unmasked.sum, &unmasked.counted)
            .and_then(|mean| {
                round
                    .aggregator
                    .set_unmasked(mean)
                    .map_err(|e| e.to_string())
            });
        round.aggregate_ms += t.elapsed().as_secs_f64() * 1e3;
        secure.recovered = unmasked.recovered.len() as u64;
        round.span.in_scope(|| {
            info!(
                counted = unmasked.counted.len(),
                recovered = unmasked.recovered.len(),
                "secure aggregation unmasked the sum"
            )
        });
        match decoded {
            Ok(()) => {
                if let Some(run) = self.run.as_mut() {
                    run.kept_keys = kept;
                }
                self.aggregate_round()
            }
            Err(e) => self.abandon_round(&format!(
                "secure aggregation: the unmasked sum does not decode: {e}"
            )),
        }
    }
}
