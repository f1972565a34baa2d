//! The round coordinator: one task that owns the run, the client registry and the round state.
//! Socket handlers and admin routes talk to it over one channel ([`Command`]); it answers over
//! per-client outboxes and oneshot replies, and never waits on a client: a client whose outbox
//! is full is disconnected and counted as a failure.
//!
//! A round goes Training{deadline} → Evaluating (server-side, on a blocking thread) →
//! [FederatedEval{deadline}] → Committed (one SQLite transaction). Every transition is logged
//! in the round's span and published as an [`Event`].
//!
//! * `registry`: clients joining and leaving, shard assignment, sending.
//! * `runs`: creating and controlling runs, history.
//! * `round`: a round from sampling to commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use learning::accountant::AccountantError;
use learning::{Aggregator, EvaluateRes, PrivacyLedger};
use protocol::admin::{
    ClientInfo, ClientState, Departure, Event, FieldError, RoundRecord, RunAction, RunConfig,
    RunHistory, RunStatus, RunSummary,
};
use protocol::messages::{Assignment, Capabilities, RunPhase};
use protocol::{ErrorCode, FrameKind, ServerMessage, TensorFrame};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, debug, info, info_span, warn};

mod registry;
mod round;
mod runs;
mod secure;
mod spent;

pub use secure::SecAggAnswer;
use secure::{GradientSum, SecureRound};

use crate::data::{DemoData, Shards};
use crate::store::{ClientRow, Participant, Store, StoreError};
use crate::strategy::{
    Candidate, DistributedSgd, DpFedAvg, FedAvgStrategy, Strategy, TrainPlan, quorum_needed,
    straggler_wait,
};

/// Messages waiting for one client's socket; a client this far behind is disconnected.
pub const OUTBOX_CAPACITY: usize = 16;
/// Most clients connected at once by default (`--max-clients`); more are refused at `Hello`.
/// A coordinator behind gateways takes more: it holds ≈ 12 KiB per client, not a socket.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// How long the gateways get to send their sums once a round's training is over.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two scans of every client (accounting, round planning).
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(50);
/// How often the coordinator checks whether a round can start.
const TICK: Duration = Duration::from_millis(500);

/// What goes out on one client's socket.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Text(String),
    Binary(Bytes),
    /// The global model: the same frame for every client of a round, so a gateway is sent it
    /// once and each of its clients only its id (`bus`).
    Model(ModelFrame),
    /// Close the connection (after what is queued).
    Close,
}

/// A global-model frame, encoded once per round and shared by every send; `id` names it on
/// the bus (unique in this process).
#[derive(Debug, Clone)]
pub struct ModelFrame {
    pub id: u64,
    pub bytes: Bytes,
}

impl ModelFrame {
    /// The global model as the binary frame clients receive.
    pub fn encode(server_round: u64, global: &[f32]) -> Option<Self> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let bytes = TensorFrame {
            kind: FrameKind::GlobalModel,
            server_round,
            values: global.to_vec(),
        }
        .encode()
        .ok()?;
        Some(Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            bytes: Bytes::from(bytes),
        })
    }
}

/// Where a client's update waits while its round trains: a gateway that checked it and folds
/// the accepted ones of a round into one running sum, so that only the sum crosses to the
/// coordinator. The coordinator calls it and never waits: the calls go out on the bus.
#[derive(Debug, Clone)]
pub struct Holder {
    gateway: String,
    calls: mpsc::UnboundedSender<(String, HolderCall)>,
}

/// Which round, and which attempt of it, a gateway's accepted vectors belong to: an abandoned
/// attempt's sum, or another run's round of the same number, must never count for this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoundRef {
    pub run_id: u64,
    pub server_round: u64,
    pub attempt: u32,
}

/// What a gateway holds for a client: an update in the clear, or a masked vector (secure
/// aggregation), which it sums modulo 2³² with the others it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorKind {
    Update,
    Masked,
}

/// What the coordinator asks of a [`Holder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderCall {
    /// Fold this client's vector, of this kind and weight, into the round's sum.
    Accept {
        client_id: u64,
        round: RoundRef,
        kind: VectorKind,
        num_examples: u64,
    },
    /// Send this client's update itself: the run's rule looks at each update.
    SendInFull { client_id: u64, server_round: u64 },
    /// Send the round's sum of the accepted vectors.
    Collect { round: RoundRef },
}

impl Holder {
    /// `calls` carries each call with the gateway's name (to the bus).
    pub fn new(gateway: String, calls: mpsc::UnboundedSender<(String, HolderCall)>) -> Self {
        Self { gateway, calls }
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    fn call(&self, call: HolderCall) {
        if self.calls.send((self.gateway.clone(), call)).is_err() {
            warn!(gateway = %self.gateway, "the bus link to a gateway is gone");
        }
    }
}

/// A gateway's sum of a round's accepted vectors, as it arrived (checked when folded in).
#[derive(Debug)]
pub struct PartialSum {
    pub gateway: String,
    pub round: RoundRef,
    /// The clients whose vectors it holds.
    pub clients: Vec<u64>,
    pub sum: PartialVector,
    /// Σ num_examples over them.
    pub total_weight: u64,
    pub count: usize,
}

/// The sum itself.
#[derive(Debug)]
pub enum PartialVector {
    /// Σ num_examples·update.
    Update(Vec<f64>),
    /// Σ masked vectors mod 2³² (the weights are inside, in secure aggregation's encoding).
    Masked(Vec<u32>),
}

/// A shard's task and example indices, as the shard route serves them.
pub type ShardGrant = (&'static learning::Task, Vec<usize>);

/// Everything the coordinator can be asked.
#[derive(Debug)]
pub enum Command {
    Join {
        client_key: Option<String>,
        capabilities: Capabilities,
        outbox: mpsc::Sender<Outgoing>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Leave {
        client_id: u64,
    },
    TrainRes {
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        update: Vec<f32>,
    },
    /// A result whose vector waits at a gateway ([`Holder`]).
    HeldRes {
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        kind: VectorKind,
        holder: Holder,
    },
    /// A gateway's sum of the vectors of a round it held and the coordinator accepted.
    Partial(PartialSum),
    /// A gateway went silent or restarted: the vectors it held are lost.
    GatewayGone {
        gateway: String,
    },
    /// A masked vector (secure aggregation) instead of an update.
    MaskedRes {
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        masked: Vec<u32>,
    },
    /// A member's answer to a secure-aggregation step.
    SecAgg {
        client_id: u64,
        server_round: u64,
        answer: SecAggAnswer,
    },
    /// The client could not train, or its result failed validation in the socket handler.
    TrainFailed {
        client_id: u64,
        server_round: u64,
        reason: String,
        /// The client said it refuses every further round of this run.
        refuses_run: bool,
    },
    EvaluateRes {
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        loss: f64,
        accuracy: f64,
    },
    CreateRun {
        config: RunConfig,
        reply: oneshot::Sender<Result<RunSummary, AdminError>>,
    },
    Control {
        run_id: u64,
        action: RunAction,
        reply: oneshot::Sender<Result<RunSummary, AdminError>>,
    },
    ListRuns {
        reply: oneshot::Sender<Result<Vec<RunSummary>, AdminError>>,
    },
    History {
        run_id: u64,
        reply: oneshot::Sender<Result<HistoryParts, AdminError>>,
    },
    Model {
        run_id: u64,
        reply: oneshot::Sender<Result<(u64, Vec<f32>), AdminError>>,
    },
    ListClients {
        reply: oneshot::Sender<Vec<ClientInfo>>,
    },
    /// A shard's example indices, if `client_key` holds it in `run_id`.
    Shard {
        run_id: u64,
        shard_index: u32,
        client_key: String,
        reply: oneshot::Sender<Option<ShardGrant>>,
    },
}

/// A run's history as the store holds it: [`HistoryParts::into_history`] computes its
/// ledger's ε, which takes tens of milliseconds per distinct ledger, off the coordinator task.
#[derive(Debug)]
pub struct HistoryParts {
    run: RunSummary,
    rounds: Vec<protocol::admin::RoundRecord>,
    clients: Vec<ClientRow>,
}

impl HistoryParts {
    pub fn into_history(self) -> RunHistory {
        let delta = self.run.config.dp.map(|d| d.delta);
        RunHistory {
            ledger: crate::store::ledger_entries(&self.clients, delta),
            rounds: self.rounds,
            run: self.run,
        }
    }
}

/// Why an admin request failed; mapped to an HTTP status by the admin routes.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A connected client.
#[derive(Debug)]
struct Conn {
    key: String,
    /// What the client and the dashboard call it (see `Coordinator::public_ids`).
    public_id: u64,
    caps: Capabilities,
    outbox: mpsc::Sender<Outgoing>,
    /// Shard size or own data size, once known.
    num_examples: Option<u64>,
    shard_index: Option<u32>,
    state: ClientState,
    connected_at_ms: u64,
}

/// What a client sends for a round: an update in the clear, or a masked vector.
#[derive(Debug)]
enum Contribution {
    Update(Vec<f32>),
    Masked(Vec<u32>),
    /// The vector waits at a gateway, which sums it with the others it holds.
    Held(Holder, VectorKind),
}

/// Vectors of a round accepted while they wait at one gateway: client → weight.
#[derive(Debug)]
struct HeldAt {
    holder: Holder,
    kind: VectorKind,
    clients: std::collections::BTreeMap<u64, u64>,
}

#[derive(Debug)]
enum Slot {
    Pending,
    Done,
    Failed,
}

#[derive(Debug)]
enum Phase {
    /// Clients train (and, with secure aggregation, exchange keys and shares meanwhile).
    Training,
    /// Secure aggregation: the masked vectors are in, the survivors reveal shares.
    Unmasking,
    /// The gateways holding accepted updates send their sums (for at most COLLECT_TIMEOUT).
    Collecting,
    /// The new global model is being evaluated on the test set.
    Evaluating,
    /// Evaluated; the round is recorded once the ledgers it charged are accounted (its record
    /// holds the largest tight ε, computed off this task: see `spent`).
    Accounting {
        test: EvaluateRes,
        federated: Option<(f64, f64)>,
    },
    FederatedEval {
        results: HashMap<u64, Option<(u64, f64, f64)>>,
        test: EvaluateRes,
    },
}

/// The round in flight.
#[derive(Debug)]
struct Round {
    run_id: u64,
    server_round: u64,
    attempt: u32,
    started: Instant,
    started_at_ms: u64,
    deadline: tokio::time::Instant,
    /// Whether the quorum's results are in (the deadline was then brought forward).
    quorum_reached: bool,
    sampled: HashMap<u64, (String, Slot)>,
    /// The round's updates, as the run's aggregation rule takes them.
    aggregator: Box<dyn Aggregator>,
    /// The protocol's state when the run uses secure aggregation.
    secure: Option<SecureRound>,
    /// Accepted vectors (updates or masked) waiting at gateways, by gateway.
    held: HashMap<String, HeldAt>,
    participants: Vec<Participant>,
    aggregate_ms: f64,
    next_global: Option<Arc<Vec<f32>>>,
    phase: Phase,
    span: Span,
}

impl Round {
    /// Once `quorum` of the sampled clients have sent results, the others get
    /// [`straggler_wait`] more, never past the round's timeout (the first time only).
    fn shorten_for_stragglers(&mut self, quorum: f64) {
        if self.quorum_reached || self.accepted() < quorum_needed(quorum, self.sampled.len()) {
            return;
        }
        self.quorum_reached = true;
        let wait = straggler_wait(self.started.elapsed());
        self.deadline = self.deadline.min(tokio::time::Instant::now() + wait);
    }

    /// This attempt of this round, as gateways holding its vectors name it.
    fn reference(&self) -> RoundRef {
        RoundRef {
            run_id: self.run_id,
            server_round: self.server_round,
            attempt: self.attempt,
        }
    }

    /// A vector that waits at its gateway, checked as far as it can be without it: accepted
    /// (the gateway folds it into its sum of the round), or refused.
    fn hold(
        &mut self,
        client_id: u64,
        num_examples: u64,
        holder: Holder,
        kind: VectorKind,
    ) -> Result<(), String> {
        match (kind, self.secure.as_ref()) {
            (VectorKind::Masked, Some(secure)) => secure
                .expects_masked(client_id)
                .map_err(|e| format!("masked vector rejected: {e}"))?,
            (VectorKind::Masked, None) => {
                return Err("a masked vector in a round without secure aggregation".into());
            }
            (VectorKind::Update, _) => {}
        }
        let gateway = holder.gateway().to_string();
        if self.held.get(&gateway).is_some_and(|at| at.kind != kind) {
            return Err(format!(
                "a {kind:?} vector where gateway {gateway} holds the other kind"
            ));
        }
        holder.call(HolderCall::Accept {
            client_id,
            round: self.reference(),
            kind,
            num_examples,
        });
        let at = self.held.entry(gateway).or_insert_with(|| HeldAt {
            holder,
            kind,
            clients: Default::default(),
        });
        at.clients.insert(client_id, num_examples);
        Ok(())
    }

    /// A gateway's sum of the accepted vectors of `clients`, weighing `weight`, into the round:
    /// into the aggregator, or into secure aggregation's running sum (the aggregator counts it).
    fn fold(
        &mut self,
        clients: &std::collections::BTreeSet<u64>,
        weight: u64,
        sum: PartialVector,
        num_params: usize,
    ) -> Result<(), String> {
        match sum {
            PartialVector::Update(sum) => {
                learning::FedAvg::from_parts(num_params, sum, weight, clients.len())
                    .and_then(|sum| self.aggregator.add_partial(&sum))
                    .map_err(|e| e.to_string())
            }
            PartialVector::Masked(sum) => {
                let secure = self
                    .secure
                    .as_mut()
                    .ok_or("a masked sum in a round without secure aggregation")?;
                let conns: Vec<u64> = clients.iter().copied().collect();
                secure.add_masked_sum(&conns, &sum)?;
                for _ in clients {
                    self.aggregator.add_masked().map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }

    /// Results accepted so far: in the aggregator, or waiting at gateways.
    fn accepted(&self) -> usize {
        self.aggregator.count() + self.held.values().map(|h| h.clients.len()).sum::<usize>()
    }

    /// Sampled clients that failed this round (errors, invalid updates, disconnects, deadline).
    fn failures(&self) -> usize {
        self.sampled
            .values()
            .filter(|(_, s)| matches!(s, Slot::Failed))
            .count()
    }
}

/// The run the coordinator drives (at most one at a time).
struct ActiveRun {
    summary: RunSummary,
    /// What the run trains (its config's `task`, from the registry).
    task: &'static learning::Task,
    strategy: Box<dyn Strategy>,
    global: Arc<Vec<f32>>,
    clients: HashMap<String, ClientRow>,
    shards: Option<Shards>,
    round: Option<Round>,
    /// Attempt number of the next start of `completed_rounds + 1`.
    next_attempt: u32,
    /// Keys of clients that said they refuse every further round of this run (their own budget
    /// is spent): not sampled again, even after a reconnect.
    refused: std::collections::HashSet<String>,
    bench: Bench,
    /// Clients of this run that left, by key, as the clients table last saw them (a key that
    /// connects again is removed). At most one entry per key of the run.
    departed: HashMap<String, ClientInfo>,
    /// What the clients were last told the run does (`RunState`), so it is sent on changes only.
    phase: Option<RunPhase>,
    /// The last secure round's keys, when every member was counted: the next round reuses
    /// them if its cohort is the same connections (taken at every plan, so a failed round
    /// leaves none).
    kept_keys: Option<secure::KeptKeys>,
    /// Each client's tight ε, computed off this task (see `spent`).
    spent: spent::SpentBoard,
}

/// Clients that keep failing sit out: a client that fails [`MAX_FAILURES_IN_A_ROW`] rounds in a
/// row (always `train_failed`, or silent until the deadline) is not sampled for the next
/// [`BENCH_ROUNDS`] rounds, so it cannot keep the quorum unmet while the honest clients' ε is
/// charged for every retry. It also counts each key's failed rounds in the run since the server
/// started (the clients table).
#[derive(Debug, Default)]
struct Bench {
    /// Rounds each key failed in a row (reset by an accepted update).
    failed_in_a_row: HashMap<String, u32>,
    /// Rounds each key failed in all.
    failed: HashMap<String, u64>,
    /// Keys that sit out until the run has completed this many rounds.
    until: HashMap<String, u64>,
    /// Since when the run has waited for want of clients (see [`Bench::lift_if_stuck`]).
    waiting_since: Option<Instant>,
}

impl Bench {
    fn sits_out(&self, key: &str, completed_rounds: u64) -> bool {
        self.until
            .get(key)
            .is_some_and(|&until| completed_rounds < until)
    }

    /// Rounds `key` failed in this run.
    fn failures(&self, key: &str) -> u64 {
        self.failed.get(key).copied().unwrap_or(0)
    }

    /// Counts a failed round for `key`; `true` when it now sits out.
    fn failed(&mut self, key: &str, completed_rounds: u64) -> bool {
        *self.failed.entry(key.to_owned()).or_insert(0) += 1;
        let n = self.failed_in_a_row.entry(key.to_owned()).or_insert(0);
        *n += 1;
        if *n < MAX_FAILURES_IN_A_ROW {
            return false;
        }
        *n = 0;
        self.until.insert(
            key.to_owned(),
            completed_rounds.saturating_add(BENCH_ROUNDS),
        );
        true
    }

    fn succeeded(&mut self, key: &str) {
        self.failed_in_a_row.remove(key);
    }

    /// A bench lasts until the run completes more rounds. A run that has waited `patience`
    /// for want of clients, `missing` short, whose `benched` clients connected now would make
    /// up the difference, cannot complete one without them: they come back (how many) rather
    /// than the run waiting for ever. A run merely waiting for absent clients keeps its benches.
    fn lift_if_stuck(
        &mut self,
        benched: &[String],
        missing: usize,
        patience: Duration,
        now: Instant,
    ) -> usize {
        let since = *self.waiting_since.get_or_insert(now);
        if benched.is_empty()
            || benched.len() < missing
            || now.saturating_duration_since(since) < patience
        {
            return 0;
        }
        for key in benched {
            self.until.remove(key);
        }
        self.waiting_since = None;
        benched.len()
    }

    /// The run planned a round: it no longer waits.
    fn planned(&mut self) {
        self.waiting_since = None;
    }
}

/// Failed rounds in a row after which a client sits out [`BENCH_ROUNDS`] rounds.
pub const MAX_FAILURES_IN_A_ROW: u32 = 3;
pub const BENCH_ROUNDS: u64 = 5;

impl ActiveRun {
    fn id(&self) -> u64 {
        self.summary.run_id
    }
    fn delta(&self) -> Option<f64> {
        self.summary.config.dp.map(|d| d.delta)
    }
    /// Largest ε any client has spent (server ledger), exactly: the tight ε.
    fn max_epsilon(&self) -> Option<f64> {
        let delta = self.delta()?;
        self.spent.largest(
            self.clients
                .iter()
                .map(|(key, c)| (key.as_str(), &c.ledger)),
            delta,
        )
    }
}

fn build_strategy(config: &RunConfig) -> Box<dyn Strategy> {
    if let Some(distributed) = DistributedSgd::from_run(config) {
        return Box::new(distributed);
    }
    let fedavg = FedAvgStrategy::from_run(config);
    match config.dp {
        Some(dp) => Box::new(DpFedAvg::new(fedavg, dp, config.rounds)),
        None => Box::new(fedavg),
    }
}

/// Options the binary sets.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Evaluate on only the first N test images (tests); `None` = all 10 000.
    pub eval_limit: Option<usize>,
    /// Most clients connected at once (through this server and every gateway).
    pub max_clients: usize,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            eval_limit: None,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// The coordinator's state; [`Coordinator::run`] is its task.
pub struct Coordinator {
    store: Store,
    data: Option<Arc<DemoData>>,
    /// Each loaded task's test set (cut to `eval_limit`), by task id.
    test_sets: HashMap<&'static str, Arc<learning::Dataset>>,
    events: broadcast::Sender<Event>,
    /// Live connections by connection id: one per socket, so a replaced socket's late messages
    /// name its own id and never touch its successor.
    clients: HashMap<u64, Conn>,
    next_client_id: u64,
    /// The connection of each connected key (a reconnecting key replaces its old one).
    conn_of_key: HashMap<String, u64>,
    /// The id each known client key is shown as, to itself and on the dashboard: the same for
    /// all its connections (a reloaded tab stays "client #1"). Keys the server no longer
    /// honours (not connected, not in the active run) are dropped.
    public_ids: HashMap<String, u64>,
    next_public_id: u64,
    run: Option<ActiveRun>,
    eval_task: Option<JoinHandle<Result<EvaluateRes, String>>>,
    /// The job computing changed ledgers' tight ε, with its run's id (see `spent`).
    ledger_job: Option<JoinHandle<(u64, Vec<spent::Accounted>)>>,
    /// The job solving σ for new shard sizes (see `spent`).
    sigma_job: Option<JoinHandle<()>>,
    /// Something the jobs look at may have changed (a charge, a join, a job's end): without
    /// it, nothing is scanned.
    accounting_due: bool,
    /// The strategy's work ahead failed in this run (a bug): plans solve σ themselves.
    prepare_failed: bool,
    /// The largest model of any task: what `Welcome` and the socket's frame limit use (a
    /// round's vectors have its run's task's length).
    model_params: usize,
    /// Most clients connected at once.
    max_clients: usize,
}

impl Coordinator {
    /// Loads the store; an unfinished run in it is resumed from its last committed round.
    pub fn new(
        store: Store,
        data: Option<Arc<DemoData>>,
        events: broadcast::Sender<Event>,
        options: CoordinatorOptions,
    ) -> Result<Self, StoreError> {
        let test_sets = data
            .iter()
            .flat_map(|d| d.tasks().filter_map(|t| Some((t, &d.of(t)?.test))))
            .map(|(t, test)| {
                let test = match options.eval_limit {
                    Some(n) if n < test.len() => test.subset(&(0..n).collect::<Vec<_>>()),
                    _ => test.clone(),
                };
                (t.id, Arc::new(test))
            })
            .collect();
        let mut c = Self {
            store,
            data,
            test_sets,
            events,
            clients: HashMap::new(),
            conn_of_key: HashMap::new(),
            next_client_id: 1,
            public_ids: HashMap::new(),
            next_public_id: 1,
            run: None,
            eval_task: None,
            ledger_job: None,
            sigma_job: None,
            accounting_due: true,
            prepare_failed: false,
            model_params: learning::task::max_params(),
            max_clients: options.max_clients,
        };
        c.resume()?;
        Ok(c)
    }

    /// The run that is not over, if any (what a restarted server continues).
    fn resume(&mut self) -> Result<(), StoreError> {
        let Some(summary) = self
            .store
            .runs()?
            .into_iter()
            .rev()
            .find(|r| !r.status.is_over())
        else {
            return Ok(());
        };
        let Some((round, params)) = self.store.latest_checkpoint(summary.run_id)? else {
            return Err(StoreError::Corrupt {
                what: "checkpoint",
                detail: format!("run {} has none", summary.run_id),
            });
        };
        // A run of a task this build does not have (a downgrade, a renamed task), or whose
        // checkpoint another layout would read: ended with the reason, never resumed wrongly —
        // and the server still starts.
        let task = learning::task::find(&summary.config.task)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                (params.len() == t.num_params())
                    .then_some(t)
                    .ok_or_else(|| {
                        format!(
                            "its checkpoint holds {} parameters, this build's {} model {}",
                            params.len(),
                            t.name,
                            t.num_params()
                        )
                    })
            });
        let task = match task {
            Ok(t) => t,
            Err(why) => {
                let reason = format!("not resumed: {why}");
                warn!(run_id = summary.run_id, %reason, "a stored run cannot be resumed");
                self.store
                    .set_status(summary.run_id, RunStatus::Finished, Some(&reason))?;
                return Ok(());
            }
        };
        let shards = match (&summary.config.shards, &self.data) {
            (Some(cfg), Some(data)) => data
                .shards(task, *cfg)
                .inspect_err(
                    |e| warn!(run_id = summary.run_id, error = %e, "resumed without its shards"),
                )
                .ok(),
            _ => None,
        };
        let clients = self
            .store
            .clients(summary.run_id)?
            .into_iter()
            .map(|c| (c.client_key.clone(), c))
            .collect();
        info!(
            run_id = summary.run_id,
            completed_rounds = round,
            status = summary.status.as_str(),
            "resuming run from its last checkpoint"
        );
        // A paused run is said to be paused from the first join; a running one is told once its
        // first round starts or waits.
        let phase = (summary.status == RunStatus::Paused).then_some(RunPhase::Paused);
        (self.accounting_due, self.prepare_failed) = (true, false);
        self.run = Some(ActiveRun {
            task,
            strategy: build_strategy(&summary.config),
            summary: RunSummary {
                completed_rounds: round,
                ..summary
            },
            global: Arc::new(params),
            clients,
            shards,
            round: None,
            next_attempt: 1,
            refused: Default::default(),
            bench: Bench::default(),
            departed: HashMap::new(),
            phase,
            kept_keys: None,
            spent: Default::default(),
        });
        Ok(())
    }

    /// Creates the demo run (default config) and starts it, unless the store already has runs.
    pub fn ensure_demo_run(&mut self) -> Result<(), AdminError> {
        if !self.store.runs()?.is_empty() {
            return Ok(());
        }
        let summary = self.create_run(RunConfig::default())?;
        self.control(summary.run_id, RunAction::Start)?;
        Ok(())
    }

    /// The task: handles commands, round deadlines and evaluation results until every sender
    /// is gone.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The accounting scan and the round planning look at every client: after every command
        // they made a storm of 10 000 joins quadratic. At most every HOUSEKEEPING_EVERY instead,
        // and once more after the last command of a burst.
        let mut housekept = tokio::time::Instant::now() - HOUSEKEEPING_EVERY;
        let mut housekeeping_due = false;
        loop {
            let deadline = self.deadline();
            let catch_up = housekeeping_due.then_some(housekept + HOUSEKEEPING_EVERY);
            tokio::select! {
                _ = sleep_until(catch_up) => {}
                cmd = inbox.recv() => match cmd {
                    Some(cmd) => {
                        // An operator's command changes what the planning decides (a run starts,
                        // pauses): clients must hear the outcome, not the phase before it.
                        if matches!(cmd, Command::Control { .. } | Command::CreateRun { .. }) {
                            housekept = tokio::time::Instant::now() - HOUSEKEEPING_EVERY;
                        }
                        self.supervised("a command", |c| c.handle(cmd))
                    }
                    None => break,
                },
                _ = tick.tick() => {}
                _ = sleep_until(deadline) => self.supervised("the deadline", Self::on_deadline),
                res = join_opt(&mut self.eval_task) => {
                    self.eval_task = None;
                    let res = res.unwrap_or_else(|e| Err(format!("evaluation task failed: {e}")));
                    self.supervised("the evaluation", |c| c.on_evaluated(res));
                }
                res = join_opt(&mut self.ledger_job) => {
                    self.ledger_job = None;
                    self.supervised("the accounting", |c| c.on_accounted(res));
                }
                res = join_opt(&mut self.sigma_job) => {
                    self.sigma_job = None;
                    self.supervised("the accounting", |c| c.on_solved(res));
                }
            }
            housekeeping_due = housekept.elapsed() < HOUSEKEEPING_EVERY;
            if !housekeeping_due {
                housekept = tokio::time::Instant::now();
                self.supervised("the accounting", Self::start_accounting);
                self.supervised("starting a round", Self::maybe_start_round);
            }
        }
        info!("coordinator stopped");
    }

    /// Runs one step. A panic inside it — a bug: a peer's input is refused where it is
    /// decoded — fails the round in flight instead of the server: the round is retried, what
    /// the ledger was charged for it stays charged (an over-count, never an under-count), and
    /// the coordinator goes on serving every route.
    fn supervised(&mut self, step: &'static str, f: impl FnOnce(&mut Self)) {
        let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) else {
            return;
        };
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        tracing::error!(step, panic = %what, "internal error: the round in flight is abandoned");
        self.abandon_round(&format!("internal error in {step}: {what}"));
    }

    /// Drops the round in flight, which is retried as the next attempt: below quorum, an
    /// aggregation refused, or an internal error. What it charged stays charged.
    fn abandon_round(&mut self, reason: &str) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.take() else {
            return;
        };
        run.next_attempt += 1;
        // The retry draws fresh keys (this round may have stored its keys before failing later).
        run.kept_keys = None;
        let run_id = run.id();
        if let Some(task) = self.eval_task.take() {
            task.abort();
        }
        for c in self.clients.values_mut() {
            c.state = ClientState::Idle;
        }
        self.publish(Event::RoundRetried {
            run_id,
            server_round: round.server_round,
            reason: reason.into(),
        });
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        let round = self.run.as_ref()?.round.as_ref()?;
        let step = round
            .secure
            .as_ref()
            .filter(|s| s.waiting_step())
            .map(|s| s.step_deadline);
        match round.phase {
            Phase::Training => Some(step.map_or(round.deadline, |s| s.min(round.deadline))),
            Phase::Unmasking => step,
            Phase::FederatedEval { .. } | Phase::Collecting => Some(round.deadline),
            Phase::Evaluating | Phase::Accounting { .. } => None,
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join {
                client_key,
                capabilities,
                outbox,
                reply,
            } => {
                let res = self.join(client_key, capabilities, outbox);
                if reply.send(res).is_err() {
                    warn!("a client left before its join was answered");
                }
            }
            Command::Leave { client_id } => self.leave(client_id, "disconnected"),
            Command::TrainRes {
                client_id,
                server_round,
                num_examples,
                update,
            } => self.train_res(
                client_id,
                server_round,
                num_examples,
                Contribution::Update(update),
            ),
            Command::HeldRes {
                client_id,
                server_round,
                num_examples,
                kind,
                holder,
            } => self.train_res(
                client_id,
                server_round,
                num_examples,
                Contribution::Held(holder, kind),
            ),
            Command::Partial(partial) => self.partial(partial),
            Command::GatewayGone { gateway } => self.gateway_gone(&gateway),
            Command::MaskedRes {
                client_id,
                server_round,
                num_examples,
                masked,
            } => self.train_res(
                client_id,
                server_round,
                num_examples,
                Contribution::Masked(masked),
            ),
            Command::SecAgg {
                client_id,
                server_round,
                answer,
            } => self.secagg_answer(client_id, server_round, answer),
            Command::TrainFailed {
                client_id,
                server_round,
                reason,
                refuses_run,
            } => self.train_failed(client_id, server_round, &reason, refuses_run),
            Command::EvaluateRes {
                client_id,
                server_round,
                num_examples,
                loss,
                accuracy,
            } => self.evaluate_res(client_id, server_round, num_examples, loss, accuracy),
            Command::CreateRun { config, reply } => {
                let _ignored_if_gone = reply.send(self.create_run(config));
            }
            Command::Control {
                run_id,
                action,
                reply,
            } => {
                let _ignored_if_gone = reply.send(self.control(run_id, action));
            }
            Command::ListRuns { reply } => {
                let _ignored_if_gone = reply.send(self.store.runs().map_err(AdminError::from));
            }
            Command::History { run_id, reply } => {
                let _ignored_if_gone = reply.send(self.history(run_id));
            }
            Command::Model { run_id, reply } => {
                let res = self
                    .store
                    .latest_checkpoint(run_id)
                    .map_err(AdminError::from)
                    .and_then(|c| {
                        c.ok_or_else(|| AdminError::NotFound(format!("no run {run_id}")))
                    });
                let _ignored_if_gone = reply.send(res);
            }
            Command::ListClients { reply } => {
                let _ignored_if_gone = reply.send(self.client_infos());
            }
            Command::Shard {
                run_id,
                shard_index,
                client_key,
                reply,
            } => {
                let shards = self.run.as_ref().and_then(|run| {
                    let holds = run.id() == run_id
                        && run
                            .clients
                            .get(&client_key)
                            .is_some_and(|c| c.shard_index == Some(shard_index));
                    let indices = run.shards.as_ref()?.indices.get(shard_index as usize)?;
                    holds.then(|| (run.task, indices.clone()))
                });
                let _ignored_if_gone = reply.send(shards);
            }
        }
    }
}

/// A seed for a round's sampling (sampling is not a privacy mechanism here: Poisson sampling
/// of examples happens in each client with its own CSPRNG).
fn seed() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => now_ms(),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn join_opt<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// Starts the coordinator task; returns its inbox.
pub fn spawn(coordinator: Coordinator) -> (mpsc::Sender<Command>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let span = info_span!("coordinator");
    let handle = tokio::spawn(coordinator.run(rx).instrument(span));
    (tx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply<T>() -> (oneshot::Sender<T>, oneshot::Receiver<T>) {
        oneshot::channel()
    }

    /// A coordinator whose run of `config` has started, with a client of each of `sizes`
    /// examples (own data) joined; the clients' outboxes and the event stream are returned.
    fn started_run(
        config: &str,
        sizes: impl IntoIterator<Item = u64>,
    ) -> (
        Coordinator,
        Vec<mpsc::Receiver<Outgoing>>,
        broadcast::Receiver<Event>,
    ) {
        let (events, seen) = broadcast::channel(4096);
        let mut c = Coordinator::new(
            Store::in_memory().unwrap(),
            None,
            events,
            CoordinatorOptions::default(),
        )
        .unwrap();
        let run_id = c
            .create_run(RunConfig::from_json(config).unwrap())
            .unwrap()
            .run_id;
        let (tx, _started) = reply();
        c.handle(Command::Control {
            run_id,
            action: RunAction::Start,
            reply: tx,
        });
        let mut outboxes = Vec::new();
        for n in sizes {
            let (outbox, rx) = mpsc::channel(16);
            outboxes.push(rx);
            let caps = Capabilities {
                own_data: Some(protocol::messages::OwnData { num_examples: n }),
                ..Default::default()
            };
            c.join(None, caps, outbox).unwrap();
        }
        (c, outboxes, seen)
    }

    /// Past `max_clients` a join is refused with the limit named; a coordinator behind
    /// gateways is given a larger one than a single server's default.
    #[test]
    fn joins_past_the_client_limit_are_refused_and_the_limit_is_set_per_server() {
        let (events, _seen) = broadcast::channel(16);
        let options = CoordinatorOptions {
            max_clients: 2,
            ..Default::default()
        };
        let mut c = Coordinator::new(Store::in_memory().unwrap(), None, events, options).unwrap();
        let mut outboxes = Vec::new();
        let mut join = |c: &mut Coordinator| {
            let (outbox, rx) = mpsc::channel(16);
            outboxes.push(rx);
            c.join(None, Capabilities::default(), outbox)
        };
        join(&mut c).unwrap();
        join(&mut c).unwrap();
        let refused = join(&mut c).unwrap_err();
        assert!(
            refused.contains("2 clients connected, its limit (--max-clients)"),
            "{refused}"
        );
        assert_eq!(
            CoordinatorOptions::default().max_clients,
            DEFAULT_MAX_CLIENTS
        );
    }

    /// Every ledger of the active run.
    fn run_ledgers(c: &Coordinator) -> Vec<PrivacyLedger> {
        let run = c.run.as_ref().unwrap();
        run.clients.values().map(|r| r.ledger.clone()).collect()
    }

    /// Runs the accounting jobs as the coordinator's loop would, until nothing is left.
    async fn settle_accounting(c: &mut Coordinator) {
        loop {
            c.start_accounting();
            if let Some(job) = c.sigma_job.take() {
                let res = job.await;
                c.on_solved(res);
            } else if let Some(job) = c.ledger_job.take() {
                let res = job.await;
                c.on_accounted(res);
            } else {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_panic_fails_the_round_in_flight_not_the_coordinator() {
        let (mut c, _outboxes, mut seen) = started_run(
            r#"{"min_clients":2,"batching":{"batch_size":10},"shards":null}"#,
            [100, 100],
        );
        settle_accounting(&mut c).await;
        c.maybe_start_round();
        assert!(
            c.run.as_ref().unwrap().round.is_some(),
            "a round is in flight"
        );

        c.supervised("a test step", |_| panic!("a bug"));

        let run = c.run.as_ref().unwrap();
        assert!(run.round.is_none(), "the round was abandoned");
        assert_eq!(run.next_attempt, 2);
        let retried = std::iter::from_fn(|| seen.try_recv().ok())
            .find(|e| matches!(e, Event::RoundRetried { .. }));
        assert!(
            matches!(&retried, Some(Event::RoundRetried { reason, .. }) if reason.contains("a bug")),
            "{retried:?}"
        );
        // The coordinator still answers, and the round starts again.
        let (tx, rx) = reply();
        c.handle(Command::ListRuns { reply: tx });
        assert_eq!(rx.await.unwrap().unwrap().len(), 1);
        settle_accounting(&mut c).await;
        c.maybe_start_round();
        assert!(c.run.as_ref().unwrap().round.is_some(), "attempt 2 started");
    }

    /// The messages waiting in a client's outbox, decoded.
    fn received(outbox: &mut mpsc::Receiver<Outgoing>) -> Vec<ServerMessage> {
        std::iter::from_fn(|| outbox.try_recv().ok())
            .filter_map(|out| match out {
                Outgoing::Text(text) => ServerMessage::decode(&text).ok(),
                _ => None,
            })
            .collect()
    }

    /// Between two rounds no round is open: a reveal for a round that closed (the sum needed
    /// only a threshold of them, and distributed-DP rounds follow each other within
    /// milliseconds) is dropped without a word — it was answered "wrong round … expected round
    /// 0", which a tab shows on its page; one for a round not closed yet is still refused.
    #[tokio::test]
    async fn a_late_reveal_between_rounds_is_dropped_not_refused() {
        let (mut c, mut outboxes, _seen) = started_run(
            r#"{"min_clients":2,"batching":{"batch_size":10},"shards":null}"#,
            [100, 100],
        );
        let run = c.run.as_mut().unwrap();
        assert!(run.round.is_none(), "no round open");
        run.summary.completed_rounds = 3;
        // Connections are numbered in the order they joined.
        let conn = *c.clients.keys().min().unwrap();
        let outbox = &mut outboxes[0];
        let _joined = received(outbox);
        let reveal = || {
            secure::SecAggAnswer::Reveal(protocol::secagg::Reveal {
                seeds: vec![],
                masking_keys: vec![],
            })
        };
        for closed in [1, 3] {
            c.secagg_answer(conn, closed, reveal());
            let heard = received(outbox);
            assert!(
                heard.is_empty(),
                "a reveal for closed round {closed}: {heard:?}"
            );
        }
        c.secagg_answer(conn, 4, reveal());
        let heard = received(outbox);
        assert!(
            matches!(&heard[..], [ServerMessage::Error { code: ErrorCode::WrongRound, message, .. }]
                if message == "secure aggregation message for round 4: no round is open"),
            "{heard:?}"
        );
    }

    /// A client whose socket was down when its run ended is told the end when it comes back
    /// (a simulated client waited forever for it in a CI run); a key new to the run is not.
    #[tokio::test]
    async fn a_client_back_after_its_run_ended_hears_the_end() {
        let (mut c, _outboxes, _seen) = started_run(
            r#"{"min_clients":2,"batching":{"batch_size":10},"shards":null}"#,
            [100, 100],
        );
        settle_accounting(&mut c).await;
        c.maybe_start_round();
        // Both were sampled and charged: the run keeps their keys (it forgets a key that
        // leaves unused).
        let (ids, _) = sampled(&c);
        let key = c.clients[&ids[0]].key.clone();
        c.leave(ids[0], "disconnected");
        let run_id = c.run.as_ref().unwrap().id();
        let (tx, _stopped) = reply();
        c.handle(Command::Control {
            run_id,
            action: RunAction::Stop,
            reply: tx,
        });
        let caps = || Capabilities {
            own_data: Some(protocol::messages::OwnData { num_examples: 100 }),
            ..Default::default()
        };

        let (outbox, mut back) = mpsc::channel(16);
        c.join(Some(key), caps(), outbox).unwrap();
        let heard = received(&mut back);
        assert!(
            matches!(heard.first(), Some(ServerMessage::Welcome { .. })),
            "{heard:?}"
        );
        assert!(
            heard.iter().any(
                |m| matches!(m, ServerMessage::RunFinished { run_id: r, reason }
                if *r == run_id && reason == "stopped by the operator")
            ),
            "{heard:?}"
        );

        let (outbox, mut new) = mpsc::channel(16);
        c.join(None, caps(), outbox).unwrap();
        let heard = received(&mut new);
        assert!(
            !heard
                .iter()
                .any(|m| matches!(m, ServerMessage::RunFinished { .. })),
            "{heard:?}"
        );
    }

    /// A run of `min_clients` (round timeout 60 s) with two clients connected, the first of
    /// which has just been benched; its key, and the outboxes (kept open).
    async fn two_clients_one_benched(
        min_clients: usize,
    ) -> (Coordinator, String, Vec<mpsc::Receiver<Outgoing>>) {
        let config = format!(
            r#"{{"min_clients":{min_clients},"round_timeout_secs":60,"batching":{{"batch_size":10}},"shards":null}}"#
        );
        let (mut c, outboxes, _seen) = started_run(&config, [100, 100]);
        settle_accounting(&mut c).await;
        let key = c.clients.values().next().unwrap().key.clone();
        let benched = (0..MAX_FAILURES_IN_A_ROW).fold(false, |_, _| bench(&mut c).failed(&key, 0));
        assert!(benched && bench(&mut c).sits_out(&key, 0));
        (c, key, outboxes)
    }

    fn bench(c: &mut Coordinator) -> &mut Bench {
        &mut c.run.as_mut().unwrap().bench
    }

    /// A bench lasts until the run completes more rounds: when the run cannot complete one
    /// without the benched client (min_clients is every client) and has waited a round's
    /// timeout, it takes it back rather than wait for ever. Before that, or while the client
    /// could not make up what is missing, the bench holds (it exists against clients that
    /// always fail).
    #[tokio::test]
    async fn benched_clients_come_back_when_the_run_cannot_go_on_without_them() {
        let (mut c, key, _outboxes) = two_clients_one_benched(2).await;

        c.maybe_start_round();
        assert!(
            c.run.as_ref().unwrap().round.is_none(),
            "one candidate of two: it waits"
        );
        c.maybe_start_round();
        assert!(
            bench(&mut c).sits_out(&key, 0),
            "it has not waited a round's timeout yet"
        );
        // A round's timeout later.
        bench(&mut c).waiting_since = Some(Instant::now() - Duration::from_secs(61));
        c.maybe_start_round();
        c.maybe_start_round();
        let (sampled, _) = sampled(&c);
        assert_eq!(sampled.len(), 2, "the benched client is back");
        assert!(bench(&mut c).waiting_since.is_none());
    }

    /// A run waiting for clients that are not there keeps its benches: the benched client
    /// alone cannot make up the two missing, and comes back only when they do.
    #[tokio::test]
    async fn a_bench_holds_while_the_run_waits_for_absent_clients() {
        let (mut c, key, _outboxes) = two_clients_one_benched(3).await;
        bench(&mut c).waiting_since = Some(Instant::now() - Duration::from_secs(3600));
        c.maybe_start_round();
        c.maybe_start_round();
        let run = c.run.as_ref().unwrap();
        assert!(run.round.is_none() && run.bench.sits_out(&key, 0));
    }

    /// The sampled clients of the round in flight, in order, and the round's number.
    fn sampled(c: &Coordinator) -> (Vec<u64>, u64) {
        let round = c.run.as_ref().unwrap().round.as_ref().unwrap();
        let mut ids: Vec<u64> = round.sampled.keys().copied().collect();
        ids.sort_unstable();
        (ids, round.server_round)
    }

    fn round_ref(c: &Coordinator) -> RoundRef {
        c.run.as_ref().unwrap().round.as_ref().unwrap().reference()
    }

    /// A gateway's sum of updates as it arrives: `value` in each of `n` coordinates, claiming
    /// `clients` of `total_weight` in all.
    fn update_sum(
        gateway: &str,
        round: RoundRef,
        clients: Vec<u64>,
        value: f64,
        n: usize,
        total_weight: u64,
    ) -> Command {
        Command::Partial(PartialSum {
            gateway: gateway.into(),
            round,
            count: clients.len(),
            clients,
            sum: PartialVector::Update(vec![value; n]),
            total_weight,
        })
    }

    /// Updates that wait at gateways: each is accepted (its gateway hears it), the sums are
    /// asked for when training is over, and a gateway's sum counts only if every update it
    /// claims was accepted from that gateway, with its weight. A sum that claims more fails its
    /// gateway's clients; accepted updates missing from a sum fail their own clients only.
    #[tokio::test]
    async fn a_gateway_s_sum_counts_only_for_updates_accepted_from_it() {
        let (mut c, _outboxes, _seen) = started_run(
            r#"{"min_clients":3,"quorum":0.3,"batching":{"batch_size":10},"shards":null}"#,
            [100, 100, 100],
        );
        settle_accounting(&mut c).await;
        c.maybe_start_round();
        let (ids, server_round) = sampled(&c);
        assert_eq!(ids.len(), 3);
        let initial = c.run.as_ref().unwrap().global.clone();
        let (calls_tx, mut calls) = mpsc::unbounded_channel();
        let gateway = |i: usize| if i < 2 { "gw-a" } else { "gw-b" };
        for (i, &client_id) in ids.iter().enumerate() {
            let holder = Holder::new(gateway(i).into(), calls_tx.clone());
            c.handle(Command::HeldRes {
                client_id,
                server_round,
                num_examples: 100,
                kind: VectorKind::Update,
                holder,
            });
        }
        let mut heard: Vec<(String, HolderCall)> =
            std::iter::from_fn(|| calls.try_recv().ok()).collect();
        heard.sort_by_key(|(g, call)| (g.clone(), format!("{call:?}")));
        let round = round_ref(&c);
        let accept = |client_id| HolderCall::Accept {
            client_id,
            round,
            kind: VectorKind::Update,
            num_examples: 100,
        };
        let collect = HolderCall::Collect { round };
        assert_eq!(
            heard,
            [
                ("gw-a".into(), accept(ids[0])),
                ("gw-a".into(), accept(ids[1])),
                ("gw-a".into(), collect.clone()),
                ("gw-b".into(), accept(ids[2])),
                ("gw-b".into(), collect),
            ]
        );
        let phase = &c.run.as_ref().unwrap().round.as_ref().unwrap().phase;
        assert!(matches!(phase, Phase::Collecting), "{phase:?}");

        let n = initial.len();
        // A sum of another attempt of the same round (abandoned) is not this round's.
        let stale = RoundRef {
            attempt: round.attempt + 1,
            ..round
        };
        c.handle(update_sum("gw-a", stale, vec![ids[0], ids[1]], 1e6, n, 200));
        assert!(
            c.run
                .as_ref()
                .unwrap()
                .round
                .as_ref()
                .unwrap()
                .held
                .contains_key("gw-a")
        );
        // gw-a's sum holds one of its two accepted updates (the other client's was lost at the
        // gateway): it counts, and only the missing client fails. Its update: 0.5 everywhere.
        c.handle(update_sum("gw-a", round, vec![ids[0]], 50.0, n, 100));
        // gw-b claims twice the weight it was accepted for.
        c.handle(update_sum("gw-b", round, vec![ids[2]], 1e6, n, 200));
        settle_accounting(&mut c).await;
        let run = c.run.as_ref().unwrap();
        assert_eq!(run.summary.completed_rounds, 1, "the round closed");
        let record = &c.store.rounds(run.id()).unwrap()[0];
        assert_eq!((record.participants, record.failures), (1, 2), "{record:?}");
        let failed = c.store.participants(run.id(), 1).unwrap();
        assert_eq!(failed.iter().filter(|p| p.outcome == "failed").count(), 2);
        assert!(
            failed
                .iter()
                .any(|p| p.detail.as_deref().is_some_and(|d| d.contains("gw-b")))
        );
        // The new model moved by the one update that counted.
        let (_, global) = c.store.latest_checkpoint(run.id()).unwrap().unwrap();
        assert!(
            global
                .iter()
                .zip(initial.iter())
                .all(|(g, i)| (g - i - 0.5).abs() < 1e-5)
        );
    }

    /// A gateway gone while its sum is awaited: its clients fail at once and the round
    /// aggregates the other gateway's sum, without waiting out the collect timeout.
    #[tokio::test]
    async fn a_gone_gateway_s_held_updates_fail_at_once() {
        let (mut c, _outboxes, _seen) = started_run(
            r#"{"min_clients":2,"quorum":0.3,"batching":{"batch_size":10},"shards":null}"#,
            [100, 100],
        );
        settle_accounting(&mut c).await;
        c.maybe_start_round();
        let (ids, server_round) = sampled(&c);
        let (calls_tx, _calls) = mpsc::unbounded_channel();
        for (&client_id, gateway) in ids.iter().zip(["gw-a", "gw-b"]) {
            c.handle(Command::HeldRes {
                client_id,
                server_round,
                num_examples: 100,
                kind: VectorKind::Update,
                holder: Holder::new(gateway.into(), calls_tx.clone()),
            });
        }
        let n = c.run.as_ref().unwrap().global.len();
        c.handle(update_sum(
            "gw-a",
            round_ref(&c),
            vec![ids[0]],
            50.0,
            n,
            100,
        ));
        let phase = &c.run.as_ref().unwrap().round.as_ref().unwrap().phase;
        assert!(matches!(phase, Phase::Collecting), "{phase:?}");
        c.handle(Command::GatewayGone {
            gateway: "gw-b".into(),
        });
        settle_accounting(&mut c).await;
        let run = c.run.as_ref().unwrap();
        assert_eq!(run.summary.completed_rounds, 1, "the round closed");
        let record = &c.store.rounds(run.id()).unwrap()[0];
        assert_eq!((record.participants, record.failures), (1, 1), "{record:?}");
    }

    /// A rule that looks at each update (the median) asks the gateway for the update itself,
    /// and the client's slot waits for it.
    #[tokio::test]
    async fn a_rule_that_needs_each_update_has_it_sent_in_full() {
        let (mut c, _outboxes, _seen) = started_run(
            r#"{"min_clients":2,"batching":{"batch_size":10},"shards":null,
                "aggregator":{"kind":"median"}}"#,
            [100, 100],
        );
        settle_accounting(&mut c).await;
        c.maybe_start_round();
        let (ids, server_round) = sampled(&c);
        let (calls_tx, mut calls) = mpsc::unbounded_channel();
        c.handle(Command::HeldRes {
            client_id: ids[0],
            server_round,
            num_examples: 100,
            kind: VectorKind::Update,
            holder: Holder::new("gw-a".into(), calls_tx),
        });
        assert_eq!(
            calls.try_recv().unwrap(),
            (
                "gw-a".to_string(),
                HolderCall::SendInFull {
                    client_id: ids[0],
                    server_round
                }
            )
        );
        let round = c.run.as_ref().unwrap().round.as_ref().unwrap();
        assert!(matches!(round.sampled[&ids[0]].1, Slot::Pending));
        assert!(round.held.is_empty());
    }

    /// σ for new shard sizes is solved off the task before the plan; a charged ledger shows
    /// RDP's ε, named as such, until the job off the task computes the tight one; a round does
    /// not start while the job runs; the clients table then shows the tight ε with RDP's
    /// beside it.
    #[tokio::test]
    async fn the_tight_epsilon_is_computed_off_the_task_and_plans_wait_for_it() {
        let (mut c, _outboxes, _seen) = started_run(
            r#"{"min_clients":2,"batching":{"batch_size":10},"shards":null,
                "dp":{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5}}"#,
            [100, 150],
        );
        // First σ for the two shard sizes, off the task; no plan takes a client before it.
        c.start_accounting();
        assert!(c.sigma_job.is_some(), "σ of two new sizes to solve");
        assert!(!c.accounting_pending(), "no ledger charged yet");
        c.maybe_start_round();
        assert!(c.run.as_ref().unwrap().round.is_none(), "no plan before σ");
        let res = c.sigma_job.take().unwrap().await;
        c.on_solved(res);
        c.start_accounting();
        assert!(
            c.sigma_job.is_none() && c.ledger_job.is_none(),
            "nothing left to do"
        );
        c.maybe_start_round();
        let ledgers = run_ledgers(&c);
        assert_eq!(ledgers.len(), 2);
        assert_ne!(ledgers[0], ledgers[1], "a shard size each: two ledgers");
        let rdp: Vec<f64> = ledgers
            .iter()
            .map(|l| l.rdp_epsilon(1e-5).unwrap())
            .collect();
        let tight: Vec<f64> = ledgers.iter().map(|l| l.epsilon(1e-5).unwrap()).collect();
        for info in c.client_infos() {
            assert!(info.epsilon_pending, "{info:?}");
            assert!(
                rdp.contains(&info.epsilon.unwrap()),
                "RDP's ε stands in: {info:?}"
            );
            assert_eq!(info.rdp_epsilon, None);
        }

        c.start_accounting();
        assert!(c.accounting_pending());
        c.supervised("a test step", |_| panic!("drop the round"));
        c.maybe_start_round();
        assert!(
            c.run.as_ref().unwrap().round.is_none(),
            "no plan while the job runs"
        );

        let res = c.ledger_job.take().unwrap().await;
        c.on_accounted(res);
        for info in c.client_infos() {
            assert!(!info.epsilon_pending, "{info:?}");
            let e = info.epsilon.unwrap();
            assert!(tight.contains(&e), "the tight ε: {info:?}");
            assert!(info.rdp_epsilon.unwrap() > e, "RDP's beside it: {info:?}");
        }
        c.start_accounting();
        assert!(!c.accounting_pending(), "nothing changed since: no job");
        c.maybe_start_round();
        assert!(c.run.as_ref().unwrap().round.is_some(), "attempt 2 started");
    }

    /// What the accountant costs the coordinator task with 1 000 clients of a shard size
    /// each (one σ and one ledger each), against the job off the task. A benchmark, not a
    /// test (BENCHMARKS.md "The PLD accountant"):
    /// `cargo test --release -p server --lib accounting_cost -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn accounting_cost_with_a_thousand_shard_sizes() {
        use std::time::Instant;
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let (mut c, _outboxes, _seen) = started_run(
            r#"{"min_clients":1000,"rounds":15,"batching":{"batch_size":512},"shards":null,
                "round_timeout_secs":600,
                "dp":{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5}}"#,
            (0..1000u64).map(|i| 3000 + 3 * i),
        );
        learning::accountant::clear_memos();
        println!(
            "1 000 clients, a shard size each (3 000 … 5 997), batch 512, 15 rounds, target ε 3"
        );
        let t = Instant::now();
        c.start_accounting();
        let res = c.sigma_job.take().unwrap().await;
        c.on_solved(res);
        println!("off the task: σ for 1 000 sizes: {:.1} s wall", ms(t) / 1e3);
        for attempt in 1..=3 {
            let t = Instant::now();
            c.maybe_start_round();
            let plan = ms(t);
            assert!(c.run.as_ref().unwrap().round.is_some());
            let t = Instant::now();
            let infos = c.client_infos();
            let list_pending = ms(t);
            assert!(infos.iter().all(|i| i.epsilon_pending));
            let t = Instant::now();
            c.start_accounting();
            let res = c.ledger_job.take().unwrap().await;
            c.on_accounted(res);
            let job = ms(t);
            let t = Instant::now();
            let infos = c.client_infos();
            let list = ms(t);
            assert!(infos.iter().all(|i| !i.epsilon_pending));
            let t = Instant::now();
            let largest = c.run.as_ref().unwrap().max_epsilon().unwrap();
            let record = ms(t);
            println!(
                "round {attempt}: on the task: plan {plan:.0} ms, clients table {list_pending:.0} ms while pending and {list:.0} ms after, the round's ε {record:.1} ms (ε {largest:.3}); off the task: 1 000 ledgers' tight ε {:.1} s wall",
                job / 1e3
            );
            c.supervised("the benchmark", |_| panic!("next attempt"));
        }
        // What the task did before the job existed: every ledger's tight ε in one thread (the
        // record's ε, and again for every clients table), and σ solved in the plan.
        let ledgers = run_ledgers(&c);
        learning::accountant::clear_memos();
        let t = Instant::now();
        for l in &ledgers {
            l.epsilon(1e-5).unwrap();
        }
        println!(
            "for comparison, on one thread: every ledger's tight ε {:.1} s",
            ms(t) / 1e3
        );
        let t = Instant::now();
        let strategy = build_strategy(&c.run.as_ref().unwrap().summary.config);
        for n in 3000..3020 {
            strategy.train_config(n).unwrap();
        }
        println!(
            "for comparison, on one thread: σ for 20 sizes {:.1} s (× 50 for 1 000)",
            ms(t) / 1e3
        );
    }

    /// A stored run of a task this build does not have (a downgrade, a renamed task) is ended
    /// with the reason, and the server starts: it is never resumed under another model.
    #[test]
    fn a_stored_run_of_an_unknown_task_is_ended_not_resumed() {
        let mut store = Store::in_memory().unwrap();
        let config = RunConfig {
            task: "cifar-10".into(),
            ..RunConfig::default()
        };
        let run_id = store.create_run(&config, &[0.0; 12_810], 0).unwrap();
        store.set_status(run_id, RunStatus::Running, None).unwrap();
        let (events, _seen) = broadcast::channel(4);
        let c = Coordinator::new(store, None, events, CoordinatorOptions::default())
            .expect("the server starts");
        assert!(c.run.is_none());
        let run = c.store.run(run_id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Finished);
        let reason = run.finished_reason.unwrap();
        assert!(
            reason.starts_with("not resumed: unknown task \"cifar-10\""),
            "{reason}"
        );
    }
}
