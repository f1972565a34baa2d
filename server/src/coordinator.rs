//! The round coordinator: one task that owns the run, the client registry and the round state.
//! Socket handlers and admin routes talk to it over one channel ([`Command`]); it answers over
//! per-client outboxes and oneshot replies, and never waits on a client: a client whose outbox
//! is full is disconnected and counted as a failure.
//!
//! A round goes Training{deadline} → Evaluating (server-side, on a blocking thread) →
//! [FederatedEval{deadline}] → Committed (one SQLite transaction). Every transition is logged
//! in the round's span and published as an [`Event`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use learning::accountant::AccountantError;
use learning::{EvaluateRes, FedAvg, RdpAccountant, TinyCnnConfig};
use protocol::admin::{
    ClientInfo, Event, FieldError, RoundRecord, RunAction, RunConfig, RunHistory, RunStatus,
    RunSummary,
};
use protocol::config::FitMetrics;
use protocol::messages::{Assignment, Capabilities};
use protocol::{ErrorCode, FrameKind, ServerMessage, TensorFrame};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::data::{DemoData, Shards};
use crate::store::{ClientRow, Participant, Store, StoreError};
use crate::strategy::{Candidate, DpFedAvg, FedAvgStrategy, Strategy, TrainPlan};

/// Messages waiting for one client's socket; a client this far behind is disconnected.
pub const OUTBOX_CAPACITY: usize = 16;
/// Most clients connected at once; more are refused at `Hello`.
pub const MAX_CLIENTS: usize = 10_000;
/// How often the coordinator checks whether a round can start.
const TICK: Duration = Duration::from_millis(500);

/// What goes out on one client's socket.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Text(String),
    Binary(Bytes),
    /// Close the connection (after what is queued).
    Close,
}

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
        metrics: FitMetrics,
        update: Vec<f32>,
    },
    /// The client could not train, or its result failed validation in the socket handler.
    TrainFailed {
        client_id: u64,
        server_round: u64,
        reason: String,
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
        reply: oneshot::Sender<Result<RunHistory, AdminError>>,
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
        reply: oneshot::Sender<Option<Arc<Vec<Vec<usize>>>>>,
    },
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
    caps: Capabilities,
    outbox: mpsc::Sender<Outgoing>,
    /// Shard size or own data size, once known.
    num_examples: Option<u64>,
    shard_index: Option<u32>,
    state: &'static str,
    connected_at_ms: u64,
    last_seen_ms: u64,
    rounds_contributed: u64,
    failures: u64,
}

#[derive(Debug)]
enum Slot {
    Pending,
    Done,
    Failed,
}

#[derive(Debug)]
enum Phase {
    Training,
    /// The new global model is being evaluated on the test set.
    Evaluating,
    FederatedEval {
        results: HashMap<u64, Option<(u64, f64, f64)>>,
        test: EvaluateRes,
    },
}

/// The round in flight.
#[derive(Debug)]
struct Round {
    server_round: u64,
    attempt: u32,
    started: Instant,
    started_at_ms: u64,
    deadline: tokio::time::Instant,
    sampled: HashMap<u64, (String, Slot)>,
    sum: FedAvg,
    failures: usize,
    participants: Vec<Participant>,
    train_loss: (f64, u64),
    aggregate_ms: f64,
    next_global: Option<Arc<Vec<f32>>>,
    phase: Phase,
    span: Span,
}

/// The run the coordinator drives (at most one at a time).
struct ActiveRun {
    summary: RunSummary,
    strategy: Box<dyn Strategy>,
    global: Arc<Vec<f32>>,
    clients: HashMap<String, ClientRow>,
    shards: Option<Shards>,
    round: Option<Round>,
    /// Attempt number of the next start of `completed_rounds + 1`.
    next_attempt: u32,
}

impl ActiveRun {
    fn id(&self) -> u64 {
        self.summary.run_id
    }
    fn delta(&self) -> Option<f64> {
        self.summary.config.dp.map(|d| d.delta)
    }
    /// Largest ε any client has spent (server ledger).
    fn max_epsilon(&self) -> Option<f64> {
        let delta = self.delta()?;
        self.clients
            .values()
            .filter_map(|c| c.ledger.epsilon(delta).ok())
            .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.max(e))))
    }
}

fn build_strategy(config: &RunConfig) -> Box<dyn Strategy> {
    let fedavg = FedAvgStrategy::from_run(config);
    match config.dp {
        Some(dp) => Box::new(DpFedAvg {
            inner: fedavg,
            dp,
            rounds: config.rounds,
        }),
        None => Box::new(fedavg),
    }
}

/// Options the binary sets.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Evaluate on only the first N test images (tests); `None` = all 10 000.
    pub eval_limit: Option<usize>,
}

/// The coordinator's state; [`Coordinator::run`] is its task.
pub struct Coordinator {
    store: Store,
    data: Option<Arc<DemoData>>,
    test_set: Option<Arc<learning::Dataset>>,
    events: broadcast::Sender<Event>,
    clients: HashMap<u64, Conn>,
    next_client_id: u64,
    run: Option<ActiveRun>,
    eval_task: Option<JoinHandle<Result<EvaluateRes, String>>>,
    model_params: usize,
}

impl Coordinator {
    /// Loads the store; an unfinished run in it is resumed from its last committed round.
    pub fn new(
        store: Store,
        data: Option<Arc<DemoData>>,
        events: broadcast::Sender<Event>,
        options: CoordinatorOptions,
    ) -> Result<Self, StoreError> {
        let test_set = data.as_ref().map(|d| {
            let test = d.test();
            Arc::new(match options.eval_limit {
                Some(n) if n < test.len() => test.subset(&(0..n).collect::<Vec<_>>()),
                _ => test.clone(),
            })
        });
        let mut c = Self {
            store,
            data,
            test_set,
            events,
            clients: HashMap::new(),
            next_client_id: 1,
            run: None,
            eval_task: None,
            model_params: TinyCnnConfig::new().layout().num_params(),
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
        let shards = match (&summary.config.shards, &self.data) {
            (Some(cfg), Some(data)) => data.shards(*cfg).ok(),
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
        self.run = Some(ActiveRun {
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
        loop {
            let deadline = self.deadline();
            tokio::select! {
                cmd = inbox.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                _ = tick.tick() => {}
                _ = sleep_until(deadline) => self.on_deadline(),
                res = join_opt(&mut self.eval_task) => {
                    self.eval_task = None;
                    self.on_evaluated(res.unwrap_or_else(|e| Err(format!("evaluation task failed: {e}"))));
                }
            }
            self.maybe_start_round();
        }
        info!("coordinator stopped");
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        let round = self.run.as_ref()?.round.as_ref()?;
        match round.phase {
            Phase::Training | Phase::FederatedEval { .. } => Some(round.deadline),
            Phase::Evaluating => None,
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
                metrics,
                update,
            } => self.train_res(client_id, server_round, num_examples, metrics, update),
            Command::TrainFailed {
                client_id,
                server_round,
                reason,
            } => self.train_failed(client_id, server_round, &reason),
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
                    holds.then(|| run.shards.as_ref().map(|s| s.indices.clone()))?
                });
                let _ignored_if_gone = reply.send(shards);
            }
        }
    }

    // ---- clients -------------------------------------------------------------------------

    fn send(&mut self, client_id: u64, msg: Outgoing) -> bool {
        let Some(conn) = self.clients.get(&client_id) else {
            return false;
        };
        match conn.outbox.try_send(msg) {
            Ok(()) => true,
            Err(e) => {
                warn!(client_id, error = %e, "client's outbox is full or closed: disconnecting it");
                self.leave(client_id, "too slow to receive (outbox full) or gone");
                false
            }
        }
    }

    fn send_msg(&mut self, client_id: u64, msg: &ServerMessage) -> bool {
        self.send(client_id, Outgoing::Text(msg.encode()))
    }

    fn publish(&self, event: Event) {
        // No subscriber (no dashboard open) is normal: events are a live view, the store has
        // the history.
        let _no_dashboard_is_fine = self.events.send(event);
    }

    fn join(
        &mut self,
        presented: Option<String>,
        caps: Capabilities,
        outbox: mpsc::Sender<Outgoing>,
    ) -> Result<u64, String> {
        if self.clients.len() >= MAX_CLIENTS {
            return Err(format!(
                "the server has {MAX_CLIENTS} clients connected: expected fewer; try later"
            ));
        }
        let key = match presented {
            Some(k) if is_client_key(&k) => k,
            _ => new_client_key().map_err(|e| format!("no randomness for a client key: {e}"))?,
        };
        if let Some((&old, _)) = self.clients.iter().find(|(_, c)| c.key == key) {
            // A tab that reconnects before its old socket timed out: the new one wins.
            self.send_msg(
                old,
                &ServerMessage::Error {
                    code: ErrorCode::BadSequence,
                    message: "replaced by a newer connection with the same client key".into(),
                    fatal: true,
                },
            );
            self.send(old, Outgoing::Close);
            self.leave(old, "replaced by a newer connection");
        }
        let client_id = self.next_client_id;
        self.next_client_id += 1;
        let now = now_ms();
        let own = caps.own_data.as_ref().map(|d| d.num_examples);
        self.clients.insert(
            client_id,
            Conn {
                key: key.clone(),
                caps,
                outbox,
                num_examples: own,
                shard_index: None,
                state: "idle",
                connected_at_ms: now,
                last_seen_ms: now,
                rounds_contributed: 0,
                failures: 0,
            },
        );
        info!(client_id, "client joined");
        self.send_msg(
            client_id,
            &ServerMessage::Welcome {
                client_id,
                client_key: key,
                model_params: self.model_params as u64,
            },
        );
        self.assign(client_id);
        if let Some(info) = self.client_info(client_id) {
            self.publish(Event::ClientJoined { client: info });
        }
        Ok(client_id)
    }

    /// Gives a client its shard in the active run (or records its own data).
    fn assign(&mut self, client_id: u64) {
        let Some(run) = self.run.as_mut().filter(|r| !r.summary.status.is_over()) else {
            return;
        };
        let Some(conn) = self.clients.get_mut(&client_id) else {
            return;
        };
        let run_id = run.summary.run_id;
        let existing_shard = run
            .clients
            .entry(conn.key.clone())
            .or_insert_with(|| ClientRow {
                client_key: conn.key.clone(),
                shard_index: None,
                ledger: RdpAccountant::default(),
                rounds: 0,
            })
            .shard_index;
        let mut message = None;
        if conn.caps.own_data.is_none() {
            match &run.shards {
                None => {
                    message = Some(ServerMessage::error(
                        ErrorCode::NoShardAvailable,
                        "this run has no server-held data: clients bring their own (own_data in Hello)",
                    ));
                }
                Some(shards) => {
                    let index = existing_shard
                        .or_else(|| free_shard(shards, &run_clients_shards(&run.clients)));
                    match index {
                        None => {
                            message = Some(ServerMessage::error(
                                ErrorCode::NoShardAvailable,
                                format!(
                                    "all {} shards of run {run_id} are taken: bring your own data or wait for the next run",
                                    shards.indices.len()
                                ),
                            ))
                        }
                        Some(i) => {
                            let idx = &shards.indices[i as usize];
                            let labels: Vec<u8> = self
                                .data
                                .as_ref()
                                .map(|d| idx.iter().map(|&j| d.mnist.train.labels[j]).collect())
                                .unwrap_or_default();
                            let mut hist = vec![0u32; 10];
                            for l in labels {
                                hist[l as usize % 10] += 1;
                            }
                            if let Some(row) = run.clients.get_mut(&conn.key) {
                                row.shard_index = Some(i);
                            }
                            conn.shard_index = Some(i);
                            conn.num_examples = Some(idx.len() as u64);
                            let base = format!("/api/runs/{run_id}/shards/{i}");
                            message = Some(ServerMessage::Assignment(Assignment {
                                run_id,
                                shard_index: i,
                                num_shards: shards.indices.len() as u32,
                                scheme: shards.config.scheme,
                                num_examples: idx.len() as u64,
                                label_histogram: hist,
                                images_path: format!("{base}/images?client_key={}", conn.key),
                                labels_path: format!("{base}/labels?client_key={}", conn.key),
                            }));
                        }
                    }
                }
            }
        }
        let rows: Vec<ClientRow> = run.clients.get(&conn.key).cloned().into_iter().collect();
        if let Err(e) = self.store.upsert_clients(run_id, &rows) {
            warn!(error = %e, "could not store a client's assignment");
        }
        if let Some(m) = message {
            self.send_msg(client_id, &m);
        }
    }

    fn leave(&mut self, client_id: u64, reason: &str) {
        if self.clients.remove(&client_id).is_none() {
            return;
        }
        info!(client_id, reason, "client left");
        self.publish(Event::ClientLeft { client_id });
        self.fail_slot(client_id, None, reason);
    }

    fn client_info(&self, client_id: u64) -> Option<ClientInfo> {
        let c = self.clients.get(&client_id)?;
        let epsilon = self.run.as_ref().and_then(|r| {
            let delta = r.delta()?;
            r.clients.get(&c.key)?.ledger.epsilon(delta).ok()
        });
        Some(ClientInfo {
            client_id,
            name: c.caps.name.clone(),
            state: c.state.into(),
            num_examples: c.num_examples,
            shard_index: c.shard_index,
            own_data: c.caps.own_data.is_some(),
            connected_at_ms: c.connected_at_ms,
            last_seen_ms: c.last_seen_ms,
            rounds_contributed: c.rounds_contributed,
            failures: c.failures,
            epsilon,
        })
    }

    fn client_infos(&self) -> Vec<ClientInfo> {
        let mut ids: Vec<u64> = self.clients.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.client_info(id))
            .collect()
    }

    // ---- runs ----------------------------------------------------------------------------

    fn create_run(&mut self, config: RunConfig) -> Result<RunSummary, AdminError> {
        config.validate().map_err(AdminError::Invalid)?;
        if let Some(run) = &self.run
            && !run.summary.status.is_over()
        {
            return Err(AdminError::Conflict(format!(
                "run {} is {}: stop it before creating another",
                run.id(),
                run.summary.status.as_str()
            )));
        }
        if let (Some(dp), Some(shards)) = (config.dp, config.shards) {
            // Every shard size must reach the target ε with some σ; say so now, not mid-run.
            if let Some(data) = &self.data {
                let split = data.shards(shards).map_err(AdminError::Invalid)?;
                let dp_strategy = DpFedAvg {
                    inner: FedAvgStrategy::from_run(&config),
                    dp,
                    rounds: config.rounds,
                };
                for part in split.indices.iter() {
                    let n = part.len() as u64;
                    let local = dp_strategy.inner.train_config(n);
                    dp_strategy
                        .noise_multiplier(&local, n)
                        .map_err(|e| AdminError::Invalid(accountant_field_error(e)))?;
                }
            }
        }
        let shards = match (&config.shards, &self.data) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(AdminError::Invalid(FieldError {
                    field: "shards".into(),
                    value: "set".into(),
                    expected: "null: this server was started without MNIST (--mnist-dir), so clients must bring their own data".into(),
                }));
            }
            (Some(cfg), Some(data)) => Some(data.shards(*cfg).map_err(AdminError::Invalid)?),
        };
        let initial = learning::TinyCnnConfig::new()
            .init(&burn_device())
            .to_flat();
        let now = now_ms();
        let run_id = self.store.create_run(&config, &initial, now)?;
        let summary = RunSummary {
            run_id,
            config: config.clone(),
            status: RunStatus::Created,
            completed_rounds: 0,
            finished_reason: None,
            created_at_ms: now,
        };
        info!(run_id, name = %config.name, "run created");
        self.run = Some(ActiveRun {
            strategy: build_strategy(&config),
            summary: summary.clone(),
            global: Arc::new(initial),
            clients: HashMap::new(),
            shards,
            round: None,
            next_attempt: 1,
        });
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            self.assign(id);
        }
        self.publish(Event::RunCreated {
            run: summary.clone(),
        });
        Ok(summary)
    }

    fn control(&mut self, run_id: u64, action: RunAction) -> Result<RunSummary, AdminError> {
        let run = match &mut self.run {
            Some(run) if run.id() == run_id => run,
            _ => {
                return match self.store.run(run_id)? {
                    Some(r) => Err(AdminError::Conflict(format!(
                        "run {run_id} is {}: it cannot be {action:?}ed",
                        r.status.as_str()
                    ))),
                    None => Err(AdminError::NotFound(format!("no run {run_id}"))),
                };
            }
        };
        use RunStatus as S;
        let next = match (run.summary.status, action) {
            (S::Created, RunAction::Start) => S::Running,
            (S::Running, RunAction::Pause) => S::Paused,
            (S::Paused, RunAction::Resume) => S::Running,
            (s, RunAction::Stop) if !s.is_over() => S::Stopped,
            (s, a) => {
                return Err(AdminError::Conflict(format!(
                    "run {run_id} is {}: cannot {} it",
                    s.as_str(),
                    match a {
                        RunAction::Start => "start",
                        RunAction::Pause => "pause",
                        RunAction::Resume => "resume",
                        RunAction::Stop => "stop",
                    }
                )));
            }
        };
        let reason = (next == S::Stopped).then_some("stopped by the operator");
        self.store.set_status(run_id, next, reason)?;
        run.summary.status = next;
        if let Some(r) = reason {
            run.summary.finished_reason = Some(r.into());
            // A round in flight is abandoned: later results are answered "wrong round".
            run.round = None;
            if let Some(task) = self.eval_task.take() {
                task.abort();
            }
        }
        info!(run_id, status = next.as_str(), "run status changed");
        let summary = run.summary.clone();
        self.publish(Event::RunStatus {
            run_id,
            status: next,
            reason: reason.map(String::from),
        });
        if let Some(r) = reason {
            self.broadcast_run_finished(run_id, r);
        }
        Ok(summary)
    }

    fn broadcast_run_finished(&mut self, run_id: u64, reason: &str) {
        let msg = ServerMessage::RunFinished {
            run_id,
            reason: reason.into(),
        };
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            self.send_msg(id, &msg);
        }
    }

    fn history(&self, run_id: u64) -> Result<RunHistory, AdminError> {
        let mut run = self
            .store
            .run(run_id)?
            .ok_or_else(|| AdminError::NotFound(format!("no run {run_id}")))?;
        if let Some(active) = self.run.as_ref().filter(|r| r.id() == run_id) {
            run.status = active.summary.status;
        }
        let delta = run.config.dp.map(|d| d.delta);
        Ok(RunHistory {
            rounds: self.store.rounds(run_id)?,
            ledger: self.store.ledger(run_id, delta)?,
            run,
        })
    }

    // ---- rounds --------------------------------------------------------------------------

    fn candidates(&self) -> Vec<Candidate> {
        let Some(run) = &self.run else {
            return Vec::new();
        };
        let mut v: Vec<Candidate> = self
            .clients
            .iter()
            .filter_map(|(&client_id, c)| {
                Some(Candidate {
                    client_id,
                    num_examples: c.num_examples.filter(|&n| n > 0)?,
                    ledger: run.clients.get(&c.key)?.ledger.clone(),
                })
            })
            .collect();
        v.sort_by_key(|c| c.client_id);
        v
    }

    fn maybe_start_round(&mut self) {
        let candidates = self.candidates();
        let Some(run) = self.run.as_mut() else { return };
        if run.summary.status != RunStatus::Running || run.round.is_some() {
            return;
        }
        let run_id = run.id();
        let server_round = run.summary.completed_rounds + 1;
        let attempt = run.next_attempt;
        let seed = seed();
        let plan = run
            .strategy
            .configure_train(server_round, &candidates, seed);
        let assignments = match plan {
            TrainPlan::Wait { .. } => return,
            TrainPlan::BudgetExhausted => {
                self.finish_run(run_id, "privacy budget exhausted: every client's next round would pass the run's target ε");
                return;
            }
            TrainPlan::Train(a) if a.is_empty() => return,
            TrainPlan::Train(a) => a,
        };
        let span = info_span!("round", run_id, server_round, attempt);
        let timeout = Duration::from_secs(run.summary.config.round_timeout_secs);
        // Charge the server ledger before anyone trains (see Store::upsert_clients).
        let mut charged = Vec::new();
        let mut sampled = HashMap::new();
        for a in &assignments {
            let Some(conn) = self.clients.get(&a.client_id) else {
                continue;
            };
            let Some(row) = run.clients.get_mut(&conn.key) else {
                continue;
            };
            if let (Some(dp), Some(n)) = (a.config.dp, conn.num_examples) {
                let n = n as usize;
                if let Err(e) = row.ledger.record(
                    a.config.sample_rate(n),
                    dp.noise_multiplier as f64,
                    a.config.steps_per_round(n),
                ) {
                    warn!(parent: &span, client_id = a.client_id, error = %e, "cannot account this client's round: not sampling it");
                    continue;
                }
            }
            row.rounds += 1;
            charged.push(row.clone());
            sampled.insert(a.client_id, (conn.key.clone(), Slot::Pending));
        }
        if let Err(e) = self.store.upsert_clients(run_id, &charged) {
            warn!(parent: &span, error = %e, "cannot store the privacy ledger: not starting the round");
            return;
        }
        let frame = TensorFrame {
            kind: FrameKind::GlobalModel,
            server_round,
            values: run.global.to_vec(),
        };
        let Ok(bytes) = frame.encode().map(Bytes::from) else {
            warn!(parent: &span, "the global model does not fit in a frame");
            return;
        };
        let ids: Vec<u64> = sampled.keys().copied().collect();
        run.round = Some(Round {
            server_round,
            attempt,
            started: Instant::now(),
            started_at_ms: now_ms(),
            deadline: tokio::time::Instant::now() + timeout,
            sampled,
            sum: FedAvg::new(self.model_params),
            failures: 0,
            participants: Vec::new(),
            train_loss: (0.0, 0),
            aggregate_ms: 0.0,
            next_global: None,
            phase: Phase::Training,
            span: span.clone(),
        });
        span.in_scope(|| {
            info!(
                sampled = ids.len(),
                candidates = candidates.len(),
                "round started"
            )
        });
        self.publish(Event::RoundStarted {
            run_id,
            server_round,
            attempt,
            sampled: ids.clone(),
        });
        for a in assignments {
            if !ids.contains(&a.client_id) {
                continue;
            }
            let ins = ServerMessage::TrainIns {
                server_round,
                config: a.config,
                timeout_ms: timeout.as_millis() as u64,
            };
            if self.send_msg(a.client_id, &ins)
                && self.send(a.client_id, Outgoing::Binary(bytes.clone()))
            {
                if let Some(c) = self.clients.get_mut(&a.client_id) {
                    c.state = "training";
                }
            }
        }
        self.maybe_close_training();
    }

    /// Marks a sampled client's slot failed (if it is pending in the current phase).
    fn fail_slot(&mut self, client_id: u64, server_round: Option<u64>, reason: &str) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.as_mut() else {
            return;
        };
        if server_round.is_some_and(|r| r != round.server_round) {
            return;
        }
        match &mut round.phase {
            Phase::Training => {
                let Some((key, slot)) = round.sampled.get_mut(&client_id) else {
                    return;
                };
                if !matches!(slot, Slot::Pending) {
                    return;
                }
                *slot = Slot::Failed;
                round.failures += 1;
                round.participants.push(Participant {
                    client_key: key.clone(),
                    num_examples: None,
                    outcome: "failed",
                    detail: Some(reason.chars().take(200).collect()),
                });
                round
                    .span
                    .in_scope(|| warn!(client_id, reason, "client failed this round"));
                let server_round = round.server_round;
                if let Some(c) = self.clients.get_mut(&client_id) {
                    c.failures += 1;
                    c.state = "idle";
                }
                self.publish(Event::ClientFailed {
                    client_id,
                    server_round,
                    reason: reason.into(),
                });
                self.maybe_close_training();
            }
            Phase::FederatedEval { results, .. } => {
                if let Some(slot) = results.get_mut(&client_id) {
                    if slot.is_none() {
                        results.remove(&client_id);
                    }
                }
                self.maybe_close_federated_eval();
            }
            Phase::Evaluating => {}
        }
    }

    fn reject(&mut self, client_id: u64, code: ErrorCode, message: String) {
        warn!(client_id, ?code, %message, "result rejected");
        self.send_msg(client_id, &ServerMessage::error(code, message));
    }

    fn train_res(
        &mut self,
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        metrics: FitMetrics,
        update: Vec<f32>,
    ) {
        if let Some(c) = self.clients.get_mut(&client_id) {
            c.last_seen_ms = now_ms();
            c.state = "idle";
        }
        let expected_n = self.clients.get(&client_id).and_then(|c| c.num_examples);
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return self.reject(
                client_id,
                ErrorCode::WrongRound,
                format!("no round is open: result for round {server_round} discarded"),
            );
        };
        if round.server_round != server_round || !matches!(round.phase, Phase::Training) {
            let current = round.server_round;
            self.reject(client_id, ErrorCode::WrongRound, format!("result for round {server_round}: expected round {current}, and only while it is training"));
            return self.fail_slot(client_id, Some(current), "result for another round");
        }
        let Some((key, slot)) = round.sampled.get_mut(&client_id) else {
            return self.reject(
                client_id,
                ErrorCode::NotSampled,
                format!("client {client_id} was not sampled for round {server_round}"),
            );
        };
        if !matches!(slot, Slot::Pending) {
            return self.reject(
                client_id,
                ErrorCode::Duplicate,
                format!(
                    "a result for round {server_round} from client {client_id} was already received"
                ),
            );
        }
        if expected_n != Some(num_examples) {
            let msg = format!(
                "num_examples is {num_examples}: expected this client's data size {}",
                expected_n.map_or("(unknown)".into(), |n| n.to_string())
            );
            self.reject(client_id, ErrorCode::InvalidUpdate, msg.clone());
            return self.fail_slot(client_id, Some(server_round), &msg);
        }
        let t = Instant::now();
        let added = round.sum.add(&update, num_examples);
        round.aggregate_ms += t.elapsed().as_secs_f64() * 1e3;
        if let Err(e) = added {
            let msg = format!("update rejected: {e}");
            self.reject(client_id, ErrorCode::InvalidUpdate, msg.clone());
            return self.fail_slot(client_id, Some(server_round), &msg);
        }
        *slot = Slot::Done;
        round.participants.push(Participant {
            client_key: key.clone(),
            num_examples: Some(num_examples),
            outcome: "ok",
            detail: None,
        });
        round.train_loss.0 += metrics.loss;
        round.train_loss.1 += 1;
        round.span.in_scope(
            || info!(client_id, loss = metrics.loss, epsilon = ?metrics.epsilon, "update accepted"),
        );
        if let Some(c) = self.clients.get_mut(&client_id) {
            c.rounds_contributed += 1;
        }
        self.publish(Event::ClientTrained {
            client_id,
            server_round,
            loss: metrics.loss,
            epsilon: metrics.epsilon,
        });
        self.maybe_close_training();
    }

    fn train_failed(&mut self, client_id: u64, server_round: u64, reason: &str) {
        if let Some(c) = self.clients.get_mut(&client_id) {
            c.last_seen_ms = now_ms();
            c.state = "idle";
        }
        self.fail_slot(client_id, Some(server_round), reason);
    }

    fn evaluate_res(
        &mut self,
        client_id: u64,
        server_round: u64,
        n: u64,
        loss: f64,
        accuracy: f64,
    ) {
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return;
        };
        if round.server_round != server_round {
            let open = round.server_round;
            return self.reject(
                client_id,
                ErrorCode::WrongRound,
                format!("evaluation for round {server_round}: round {open} is open"),
            );
        }
        let Phase::FederatedEval { results, .. } = &mut round.phase else {
            return self.reject(
                client_id,
                ErrorCode::WrongRound,
                format!("round {server_round} is not evaluating"),
            );
        };
        match results.get_mut(&client_id) {
            Some(slot @ None) if loss.is_finite() && (0.0..=1.0).contains(&accuracy) => {
                *slot = Some((n, loss, accuracy))
            }
            Some(None) => {
                return self.reject(
                    client_id,
                    ErrorCode::BadMessage,
                    "evaluation result out of range: expected a finite loss and accuracy in [0, 1]"
                        .into(),
                );
            }
            Some(Some(_)) => {
                return self.reject(
                    client_id,
                    ErrorCode::Duplicate,
                    "evaluation already received".into(),
                );
            }
            None => {
                return self.reject(
                    client_id,
                    ErrorCode::NotSampled,
                    "not asked to evaluate this round".into(),
                );
            }
        }
        self.maybe_close_federated_eval();
    }

    fn maybe_close_training(&mut self) {
        let Some(round) = self.run.as_ref().and_then(|r| r.round.as_ref()) else {
            return;
        };
        if matches!(round.phase, Phase::Training)
            && round
                .sampled
                .values()
                .all(|(_, s)| !matches!(s, Slot::Pending))
        {
            self.close_training();
        }
    }

    fn on_deadline(&mut self) {
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return;
        };
        match &round.phase {
            Phase::Training => {
                let late: Vec<u64> = round
                    .sampled
                    .iter()
                    .filter(|(_, (_, s))| matches!(s, Slot::Pending))
                    .map(|(&id, _)| id)
                    .collect();
                let r = round.server_round;
                for id in late {
                    self.fail_slot(id, Some(r), "deadline passed");
                }
                // fail_slot closes the round once nothing is pending.
                self.maybe_close_training();
            }
            Phase::FederatedEval { .. } => {
                if let Phase::FederatedEval { results, .. } = &mut round.phase {
                    results.retain(|_, v| v.is_some());
                }
                self.maybe_close_federated_eval();
            }
            Phase::Evaluating => {}
        }
    }

    fn close_training(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let run_id = run.id();
        let Some(round) = run.round.as_mut() else {
            return;
        };
        let t = Instant::now();
        let res = run.strategy.aggregate_train(
            round.server_round,
            &run.global,
            &round.sum,
            round.sampled.len(),
            round.failures,
        );
        round.aggregate_ms += t.elapsed().as_secs_f64() * 1e3;
        match res {
            Err(reason) => {
                let server_round = round.server_round;
                round
                    .span
                    .in_scope(|| warn!(%reason, "round not aggregated: it will be retried"));
                run.round = None;
                run.next_attempt += 1;
                for c in self.clients.values_mut() {
                    c.state = "idle";
                }
                self.publish(Event::RoundRetried {
                    run_id,
                    server_round,
                    reason: reason.to_string(),
                });
            }
            Ok(next) => {
                round.span.in_scope(|| {
                    info!(
                        results = round.sum.count(),
                        failures = round.failures,
                        aggregate_ms = round.aggregate_ms,
                        "aggregated; evaluating"
                    )
                });
                let next = Arc::new(next);
                round.next_global = Some(next.clone());
                round.phase = Phase::Evaluating;
                match self.test_set.clone() {
                    Some(test) => {
                        let span = round.span.clone();
                        self.eval_task = Some(tokio::task::spawn_blocking(move || {
                            span.in_scope(|| {
                                learning::evaluate(&next, &test).map_err(|e| e.to_string())
                            })
                        }));
                    }
                    None => self.on_evaluated(Ok(EvaluateRes {
                        loss: f64::NAN,
                        accuracy: f64::NAN,
                        num_examples: 0,
                    })),
                }
            }
        }
    }

    fn on_evaluated(&mut self, res: Result<EvaluateRes, String>) {
        let candidates = self.candidates();
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.as_mut() else {
            return;
        };
        let test = match res {
            Ok(t) => t,
            Err(e) => {
                round.span.in_scope(|| warn!(error = %e, "evaluation failed; recording the round without test metrics"));
                EvaluateRes {
                    loss: f64::NAN,
                    accuracy: f64::NAN,
                    num_examples: 0,
                }
            }
        };
        round.span.in_scope(|| {
            info!(
                accuracy = test.accuracy,
                loss = test.loss,
                "evaluated on the test set"
            )
        });
        let evaluators = run
            .strategy
            .configure_evaluate(round.server_round, &candidates, seed());
        let evaluators: Vec<u64> = evaluators
            .into_iter()
            .filter(|id| self.clients.get(id).is_some_and(|c| c.caps.can_evaluate))
            .collect();
        if evaluators.is_empty() {
            return self.commit(test, None);
        }
        let server_round = round.server_round;
        let Some(global) = round.next_global.clone() else {
            return;
        };
        let timeout = Duration::from_secs(run.summary.config.round_timeout_secs);
        round.deadline = tokio::time::Instant::now() + timeout;
        round.phase = Phase::FederatedEval {
            results: evaluators.iter().map(|&id| (id, None)).collect(),
            test,
        };
        let frame = TensorFrame {
            kind: FrameKind::GlobalModel,
            server_round,
            values: global.to_vec(),
        };
        let Ok(bytes) = frame.encode().map(Bytes::from) else {
            return;
        };
        for id in evaluators {
            if self.send_msg(id, &ServerMessage::EvaluateIns { server_round }) {
                self.send(id, Outgoing::Binary(bytes.clone()));
            }
        }
        self.maybe_close_federated_eval();
    }

    fn maybe_close_federated_eval(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.as_mut() else {
            return;
        };
        let Phase::FederatedEval { results, test } = &round.phase else {
            return;
        };
        if results.values().any(Option::is_none) {
            return;
        }
        let done: Vec<(u64, f64, f64)> = results.values().flatten().copied().collect();
        let fed = run.strategy.aggregate_evaluate(round.server_round, &done);
        let test = *test;
        self.commit(test, fed);
    }

    /// Commits the round: store, events, clients; finishes the run after its last round.
    fn commit(&mut self, test: EvaluateRes, federated: Option<(f64, f64)>) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.take() else {
            return;
        };
        let Some(next) = round.next_global.clone() else {
            return;
        };
        let finished = (round.server_round >= run.summary.config.rounds as u64)
            .then(|| format!("all {} rounds done", run.summary.config.rounds));
        run.global = next;
        run.summary.completed_rounds = round.server_round;
        let record = RoundRecord {
            server_round: round.server_round,
            started_at_ms: round.started_at_ms,
            duration_ms: round.started.elapsed().as_millis() as u64,
            aggregate_ms: round.aggregate_ms,
            test_loss: test.loss,
            test_accuracy: test.accuracy,
            federated_loss: federated.map(|f| f.0),
            federated_accuracy: federated.map(|f| f.1),
            train_loss: (round.train_loss.1 > 0)
                .then(|| round.train_loss.0 / round.train_loss.1 as f64),
            participants: round.sum.count() as u64,
            failures: round.failures as u64,
            epsilon: run.max_epsilon(),
            attempts: round.attempt,
        };
        run.next_attempt = 1;
        let run_id = run.id();
        if let Err(e) = self.store.commit_round(
            run_id,
            &record,
            &round.participants,
            &run.global,
            finished.as_deref(),
        ) {
            // The in-memory run goes on; a restart would redo this round from the previous
            // checkpoint (the ledger was charged at dispatch, so ε is never under-counted).
            round
                .span
                .in_scope(|| warn!(error = %e, "could not commit the round"));
        }
        round.span.in_scope(|| info!(accuracy = record.test_accuracy, epsilon = ?record.epsilon, duration_ms = record.duration_ms, "round committed"));
        let closed = ServerMessage::RoundClosed {
            server_round: record.server_round,
            test_accuracy: record.test_accuracy,
            test_loss: record.test_loss,
            participants: record.participants,
            epsilon: record.epsilon,
        };
        self.publish(Event::RoundClosed { run_id, record });
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.clients.get_mut(&id) {
                c.state = "idle";
            }
            self.send_msg(id, &closed);
        }
        if let Some(reason) = finished {
            self.finish_run(run_id, &reason);
        }
    }

    fn finish_run(&mut self, run_id: u64, reason: &str) {
        let Some(run) = self.run.as_mut().filter(|r| r.id() == run_id) else {
            return;
        };
        run.summary.status = RunStatus::Finished;
        run.summary.finished_reason = Some(reason.into());
        run.round = None;
        if let Err(e) = self
            .store
            .set_status(run_id, RunStatus::Finished, Some(reason))
        {
            warn!(error = %e, "could not store the run's end");
        }
        info!(run_id, reason, "run finished");
        self.publish(Event::RunStatus {
            run_id,
            status: RunStatus::Finished,
            reason: Some(reason.into()),
        });
        self.broadcast_run_finished(run_id, reason);
    }
}

fn run_clients_shards(clients: &HashMap<String, ClientRow>) -> Vec<u32> {
    clients.values().filter_map(|c| c.shard_index).collect()
}

/// The lowest shard index no client holds.
fn free_shard(shards: &Shards, taken: &[u32]) -> Option<u32> {
    (0..shards.indices.len() as u32).find(|i| !taken.contains(i))
}

fn burn_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}

/// A fresh 128-bit client key (hex), from the OS's CSPRNG: it is the client's credential.
fn new_client_key() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn is_client_key(k: &str) -> bool {
    k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())
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

/// Maps an accountant error to a config field error (σ unreachable for a shard size).
pub fn accountant_field_error(e: AccountantError) -> FieldError {
    FieldError {
        field: "dp.target_epsilon".into(),
        value: "unreachable".into(),
        expected: e.to_string(),
    }
}
