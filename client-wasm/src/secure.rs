//! A member's side of a secure-aggregation round inside the session: the `secagg::client`
//! states, the trained update waiting for its neighbours' shares, and the encoding. The
//! session feeds it the server's `SecAgg*` messages and the training result; it answers with
//! what to send. Any step that fails drops the member from the round (the server hears why).

use protocol::config::TrainConfig;
use protocol::secagg::{Bytes32, PeerKeys, SecAggSetup, UnmaskRequest};
use protocol::{ClientMessage, MaskedFrame};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use secagg::client::{Advertised, Holding, Keyed, Masked, Member, Shared};
use secagg::{Encoding, Params};

use learning::Update;

use crate::session::Outgoing;

/// Where this member is in the round.
enum Step {
    Advertised(Advertised),
    Shared(Shared),
    Holding(Holding),
    Masked(Masked),
    /// Revealed; the keys, when they may serve the next round of the same cohort.
    Done(Option<Keyed>),
    /// Between steps, or failed.
    Spent,
}

/// The trained update, kept until the member can mask it.
struct Trained {
    update: Update,
    num_examples: u64,
    steps: u64,
}

/// One round's secure aggregation, for this member.
pub struct SecureRound {
    pub server_round: u64,
    setup: SecAggSetup,
    step: Step,
    trained: Option<Trained>,
    /// t of a distributed-DP round: the noise is whole only in a sum of t members' shares.
    contributors: Option<u32>,
    /// What this member was told to compute: its pairwise masks are bound to it.
    context: Bytes32,
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for SecureRound {
    // Never the secrets it holds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecureRound(round {}, member {})",
            self.server_round, self.setup.member
        )
    }
}

/// Fresh OS randomness (crypto.getRandomValues in a browser).
fn os_rng() -> Result<ChaCha20Rng, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness for secure aggregation: {e}"))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

fn text(msg: ClientMessage) -> Outgoing {
    Outgoing::Text(msg.encode())
}

impl SecureRound {
    /// Step 1: joins the round as the member `setup` names and says its public keys — or,
    /// when the server reuses the last round's keys, resumes `kept` (this member's keys from
    /// it) and sends its shares at once. A reuse without kept keys, or in another place of
    /// the cohort or under a session they served in, is refused (`secagg::client::Keyed`).
    pub fn start(
        setup: SecAggSetup,
        vector_len: usize,
        kept: Option<Keyed>,
    ) -> Result<(Self, Outgoing), String> {
        let mut rng = os_rng()?;
        let params = Params {
            session: setup.session,
            members: setup.members,
            threshold: setup.threshold,
            vector_len,
        };
        Encoding {
            clip: setup.clip,
            levels: setup.levels,
        }
        .check(setup.members)
        .map_err(|e| e.to_string())?;
        if setup.max_weight == 0 {
            return Err("max_weight is 0: expected at least 1".into());
        }
        let neighbours = setup.neighbours.iter().copied().collect();
        let server_round = setup.server_round;
        let (step, msg) = if setup.reuse_keys {
            let kept = kept.ok_or(
                "the server reuses keys this client does not hold (it kept none from the last round)",
            )?;
            let (shared, msg) = kept
                .resume(params, setup.member, neighbours, &mut rng)
                .map_err(|e| e.to_string())?;
            let msg = ClientMessage::SecAggShares {
                server_round,
                shared: msg,
            };
            (Step::Shared(shared), msg)
        } else {
            let member =
                Member::new(params, setup.member, neighbours).map_err(|e| e.to_string())?;
            let (advertised, keys) = member.advertise(&mut rng);
            let msg = ClientMessage::SecAggKeys { server_round, keys };
            (Step::Advertised(advertised), msg)
        };
        Ok((
            Self {
                server_round,
                setup,
                step,
                trained: None,
                contributors: None,
                context: Bytes32([0; 32]),
                rng,
            },
            text(msg),
        ))
    }

    /// The keys this member may reuse in the next round of the same cohort (after a round in
    /// which all its neighbours survived and no masking secret was revealed).
    pub fn into_kept(self) -> Option<Keyed> {
        match self.step {
            Step::Done(kept) => kept,
            _ => None,
        }
    }

    /// Step 2: the neighbours' keys → this member's encrypted shares.
    pub fn on_peers(&mut self, peers: &[PeerKeys]) -> Result<Outgoing, String> {
        let Step::Advertised(advertised) = std::mem::replace(&mut self.step, Step::Spent) else {
            return Err("neighbours' keys twice, or out of order".into());
        };
        let peers = peers.iter().map(|p| (p.member, p.keys)).collect();
        let (shared, msg) = advertised
            .share(&peers, &mut self.rng)
            .map_err(|e| e.to_string())?;
        self.step = Step::Shared(shared);
        Ok(text(ClientMessage::SecAggShares {
            server_round: self.server_round,
            shared: msg,
        }))
    }

    /// Step 3a: the envelopes for this member; if the update is trained, it goes out masked.
    pub fn on_inbox(
        &mut self,
        envelopes: &[protocol::secagg::Envelope],
    ) -> Result<Vec<Outgoing>, String> {
        let Step::Shared(shared) = std::mem::replace(&mut self.step, Step::Spent) else {
            return Err("envelopes twice, or before this member's shares went out".into());
        };
        self.step = Step::Holding(shared.receive(envelopes).map_err(|e| e.to_string())?);
        self.send_if_ready()
    }

    /// What this member computes in the round: its masks are bound to it (members told
    /// otherwise cannot be summed with it). A distributed-DP round counting on t contributors
    /// is refused when this member has fewer than t share holders (itself and its neighbours):
    /// it could not check, before revealing, that t of them sent their sums.
    pub fn bind(&mut self, config: &TrainConfig) -> Result<(), String> {
        self.context = config.mask_context();
        let Some(noise) = config.distributed() else {
            return Ok(());
        };
        let t = noise.contributors;
        let neighbours: std::collections::BTreeSet<u32> = self
            .setup
            .neighbours
            .iter()
            .copied()
            .filter(|&m| m != self.setup.member)
            .collect();
        let holders = neighbours.len() as u32 + 1;
        if t > holders {
            return Err(format!(
                "the run counts on {t} contributors for its noise, and this client has {holders} share holders in the round (itself and its neighbours): it could not check that {t} sums are in the total"
            ));
        }
        self.contributors = Some(t);
        Ok(())
    }

    /// Step 3b: the trained update; it goes out masked once the envelopes are in.
    /// `context`: what the job that produced it was told to compute; it must be what this
    /// round bound (an earlier attempt's result is not masked under this attempt's noise).
    pub fn on_trained(
        &mut self,
        update: Update,
        num_examples: u64,
        steps: u64,
        context: &Bytes32,
    ) -> Result<Vec<Outgoing>, String> {
        if *context != self.context {
            return Err(
                "this result was computed under other instructions than this round's (an earlier attempt): not sent".into(),
            );
        }
        self.trained = Some(Trained {
            update,
            num_examples,
            steps,
        });
        self.send_if_ready()
    }

    /// `TrainRes` and the masked frame, when both the update and the shares are here.
    fn send_if_ready(&mut self) -> Result<Vec<Outgoing>, String> {
        if self.trained.is_none() || !matches!(self.step, Step::Holding(_)) {
            return Ok(Vec::new());
        }
        let (Some(t), Step::Holding(holding)) = (
            self.trained.take(),
            std::mem::replace(&mut self.step, Step::Spent),
        ) else {
            return Ok(Vec::new());
        };
        let encoded = self.encode(&t)?;
        let (masked, values) = holding
            .mask(&encoded, &self.context)
            .map_err(|e| e.to_string())?;
        self.step = Step::Masked(masked);
        let frame = MaskedFrame {
            server_round: self.server_round,
            values,
        }
        .encode()
        .map_err(|e| e.to_string())?;
        Ok(vec![
            text(ClientMessage::TrainRes {
                server_round: self.server_round,
                num_examples: t.num_examples,
                steps: t.steps,
            }),
            Outgoing::Binary(frame),
        ])
    }

    /// The vector to mask: FedAvg's [w, w·u] in `levels`, or a distributed round's integers
    /// as residues mod 2³² with a 0 in the weight slot.
    fn encode(&mut self, t: &Trained) -> Result<Vec<u32>, String> {
        match &t.update {
            Update::Delta(update) => {
                let encoding = Encoding {
                    clip: self.setup.clip,
                    levels: self.setup.levels,
                };
                let weight =
                    t.num_examples.min(self.setup.max_weight) as f64 / self.setup.max_weight as f64;
                encoding
                    .encode(weight, update, &mut self.rng)
                    .map_err(|e| e.to_string())
            }
            Update::Integers(sum) => {
                if self.contributors.is_none() {
                    return Err("an integer sum in a round that counts on no contributors".into());
                }
                let mut v = secagg::encode::wrap_integers(sum);
                v.push(0);
                Ok(v)
            }
        }
    }

    /// Step 4: the shares the server asks for (once; never both secrets of a neighbour). In a
    /// distributed-DP round, fewer than t surviving share holders (this member and the
    /// neighbours said to have sent a vector) are refused: the sum would hold fewer than t
    /// noise shares, so less noise than this member's ledger counts on.
    pub fn on_unmask(&mut self, request: &UnmaskRequest) -> Result<Outgoing, String> {
        let Step::Masked(masked) = std::mem::replace(&mut self.step, Step::Spent) else {
            return Err("an unmask request before this member's masked vector, or twice".into());
        };
        if let Some(t) = self.contributors {
            let mut survivors: std::collections::BTreeSet<u32> =
                request.survivors.iter().copied().collect();
            survivors.insert(self.setup.member);
            if survivors.len() < t as usize {
                return Err(format!(
                    "the server asked to unmask a sum of {} members, fewer than the {t} contributors the noise needs: refused",
                    survivors.len()
                ));
            }
        }
        let (reveal, kept) = masked.reveal_keeping(request).map_err(|e| e.to_string())?;
        self.step = Step::Done(kept);
        Ok(text(ClientMessage::SecAggReveal {
            server_round: self.server_round,
            reveal,
        }))
    }

    /// Whether this member's shares went out (then it may train: its masked vector waits only
    /// for its neighbours' shares).
    pub fn shares_sent(&self) -> bool {
        matches!(
            self.step,
            Step::Shared(_) | Step::Holding(_) | Step::Masked(_)
        )
    }
}
