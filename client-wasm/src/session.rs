//! The client session: the one state machine a browser tab (in a Web Worker) and a headless
//! simulated client both run. Sans-IO: it turns incoming messages into [`Action`]s (send this,
//! fetch the shard, train, evaluate) and the transport that drives it performs them — gloo-net
//! in the browser, tokio natively. So it is tested without a network, and every privacy rule
//! of the client is tested as an attack by a server (`tests/adversarial_server.rs`).
//!
//! ```text
//! connect ─▶ Hello ─▶ Welcome ─▶ Assignment ─▶ (fetch shard) ─▶ idle
//! idle ─▶ TrainIns + GlobalModel frame ─▶ Train(job) ─▶ on_trained ─▶ TrainRes + Update frame
//! secure: SecAggSetup ─▶ keys (or, reusing the last round's keys, shares); SecAggPeers ─▶
//!         shares; SecAggInbox + on_trained ─▶ TrainRes + Masked frame; SecAggUnmask ─▶ reveal
//!         (`secure`)
//! idle ─▶ EvaluateIns + GlobalModel frame ─▶ Evaluate(job) ─▶ on_evaluated ─▶ EvaluateRes (DP)
//! RunFinished ─▶ done (the driver may stop)
//! ```
//!
//! The privacy ledger belongs to the *data*, not to the connection: the session keeps a book of
//! ledgers by dataset fingerprint (given at start from storage, updated as it spends) and
//! trains on a dataset with that dataset's ledger, so a new assignment, a new run or a new key
//! never starts the same records at zero. A dataset whose stored ledger is unreadable is not
//! trained on or evaluated at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use learning::{ClientPrivacy, Dataset, FitRes, LearningError, TrainConfig, Update, default_delta};
use protocol::config::FitMetrics;
use protocol::ledger::{DatasetLedger, LedgerSlot, fingerprint};
use protocol::messages::{Assignment, Capabilities, OwnData, RunPhase, TaskSpec};
use protocol::worker::{SavedClient, Spent};
use protocol::{ClientMessage, ErrorCode, FrameKind, PROTOCOL_VERSION, ServerMessage, TensorFrame};

use crate::secure::SecureRound;

/// A message to put on the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    Send(Outgoing),
    /// Download the assigned shard (paths relative to the server's HTTP origin), then call
    /// [`Session::on_shard`].
    FetchShard {
        images_path: String,
        labels_path: String,
    },
    /// Run the job (off the UI thread / on a blocking thread), then [`Session::on_trained`].
    Train(Box<TrainJob>),
    /// Run the job, then [`Session::on_evaluated`].
    Evaluate(Box<EvalJob>),
    /// Something the user should see (a round closed, an error from the server).
    Notify(Notice),
}

/// Things worth showing (dashboard of a tab, simulator log).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Welcome {
        client_id: u64,
        /// What the server remembers of this key: rounds of the run it was sent, and the round
        /// it was training in when its last connection ended.
        rounds_taken: u64,
        interrupted_round: Option<u64>,
    },
    /// What the run does between this client's rounds (running, paused, waiting for clients).
    RunState {
        run_id: u64,
        /// The run's task (known to this client: an unknown one is also said as an error).
        task: TaskSpec,
        phase: RunPhase,
    },
    Assigned(Assignment),
    RoundClosed {
        server_round: u64,
        test_accuracy: f64,
        epsilon: Option<f64>,
    },
    Trained {
        server_round: u64,
        metrics: FitMetrics,
    },
    TrainFailed {
        server_round: u64,
        reason: String,
    },
    /// An evaluation was refused or failed (nothing was sent).
    EvaluateFailed {
        server_round: u64,
        reason: String,
    },
    RunFinished {
        run_id: u64,
        reason: String,
    },
    /// This round uses secure aggregation: the server sees only the sum of `members` updates.
    Secure {
        server_round: u64,
        members: u32,
    },
    /// The round's result went out (`masked`: as a masked vector).
    Sent {
        server_round: u64,
        masked: bool,
    },
    ServerError {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
}

/// Why the session cannot go on on this connection.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("server message does not decode: {0}")]
    Message(#[from] protocol::MessageError),
    #[error("server frame does not decode: {0}")]
    Frame(#[from] protocol::FrameError),
    #[error("the server sent {0} when it was not expected")]
    Unexpected(&'static str),
    #[error("shard does not match its assignment: {0}")]
    Shard(String),
}

/// Local training to run.
#[derive(Debug)]
pub struct TrainJob {
    /// The run's task: what the model and the data are.
    pub task: &'static learning::Task,
    pub server_round: u64,
    pub global: Vec<f32>,
    pub config: TrainConfig,
    pub data: Arc<Dataset>,
    /// The data's fingerprint: the ledger the job spends from.
    pub fingerprint: String,
    pub privacy: ClientPrivacy,
}

/// The outcome of a [`TrainJob`].
#[derive(Debug)]
pub struct TrainDone {
    pub server_round: u64,
    pub result: Result<FitRes, LearningError>,
    pub fingerprint: String,
    pub privacy: ClientPrivacy,
    /// What the job was told to compute ([`TrainConfig::mask_context`]): a result of an
    /// earlier attempt of the same round is never masked under a later attempt's instructions.
    pub context: protocol::secagg::Bytes32,
}

impl TrainJob {
    /// Trains on this thread (blocking, CPU-bound); `progress` sees every step.
    pub fn run(self, progress: &mut dyn FnMut(learning::client::FitProgress)) -> TrainDone {
        self.run_with(&mut learning::parallel::Threads::new(1), progress)
    }

    /// Trains with each step's gradient computed by `workers` (the noise, the ledger and the
    /// optimizer stay here, [`learning::steps`]).
    pub fn run_with(
        mut self,
        workers: &mut dyn learning::parallel::StepGradient,
        progress: &mut dyn FnMut(learning::client::FitProgress),
    ) -> TrainDone {
        let result = learning::fit_with(
            self.task,
            &self.global,
            &self.config,
            &self.data,
            &mut self.privacy,
            workers,
            progress,
        );
        self.done(result)
    }

    /// The job's outcome once its training ended (here, or in an async driver that took the
    /// steps itself: the browser's pool of workers).
    pub fn done(self, result: Result<FitRes, LearningError>) -> TrainDone {
        TrainDone {
            server_round: self.server_round,
            result,
            fingerprint: self.fingerprint,
            context: self.config.mask_context(),
            privacy: self.privacy,
        }
    }
}

/// A DP evaluation to run (it spends ε, so it holds the ledger like a train job).
#[derive(Debug)]
pub struct EvalJob {
    pub task: &'static learning::Task,
    pub server_round: u64,
    pub global: Vec<f32>,
    pub data: Arc<Dataset>,
    pub fingerprint: String,
    pub privacy: ClientPrivacy,
}

/// The outcome of an [`EvalJob`].
#[derive(Debug)]
pub struct EvalDone {
    pub server_round: u64,
    pub result: Result<learning::EvaluateRes, LearningError>,
    pub fingerprint: String,
    pub privacy: ClientPrivacy,
}

impl EvalJob {
    pub fn run(mut self) -> EvalDone {
        let result =
            learning::evaluate_private(self.task, &self.global, &self.data, &mut self.privacy);
        EvalDone {
            server_round: self.server_round,
            result,
            fingerprint: self.fingerprint,
            privacy: self.privacy,
        }
    }
}

/// The user's own records and the fingerprint their ledger is kept under.
#[derive(Debug, Clone)]
pub struct OwnFiles {
    pub data: Arc<Dataset>,
    /// [`protocol::ledger::fingerprint`] of the files (or of the records, natively).
    pub fingerprint: String,
}

impl OwnFiles {
    /// Records without files (the simulator): the fingerprint is taken over their contents.
    pub fn from_dataset(data: Dataset) -> Self {
        let fingerprint = fingerprint(&data.images, &data.labels);
        Self {
            data: Arc::new(data),
            fingerprint,
        }
    }
}

/// Who the client is and what it brings.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub name: String,
    /// The client's own ε cap (it refuses rounds past it).
    pub epsilon_cap: Option<f64>,
    /// The δ the client states ε and its cap at; `None`: [`default_delta`] of its data size.
    pub delta: Option<f64>,
    /// Train on this instead of a server-assigned shard.
    pub own_data: Option<OwnFiles>,
    pub can_evaluate: bool,
    /// Identity saved by an earlier session of this client (a reloaded tab).
    pub resume: Option<SavedClient>,
    /// Every dataset ledger in storage (the browser's `localStorage`).
    pub ledgers: Vec<LedgerSlot>,
    /// Send no update in the clear: refuse every round without secure aggregation.
    pub require_secure_aggregation: bool,
}

#[derive(Debug)]
enum Expect {
    Nothing,
    TrainModel {
        server_round: u64,
        task: TaskSpec,
        config: TrainConfig,
    },
    EvalModel {
        server_round: u64,
        task: TaskSpec,
    },
}

/// The task the server names, if this client knows it and lays its model out the same way: a
/// model of another task, or of another layout (a page older or newer than the server), is
/// never trained on — the reason says what to do.
fn known_task(spec: &TaskSpec) -> Result<&'static learning::Task, String> {
    let task = learning::task::find(&spec.id).map_err(|e| {
        format!("the server's run trains a task this page does not know ({e}): reload the page")
    })?;
    let ours = task.spec();
    if &ours != spec {
        return Err(format!(
            "the server's {} model has {} parameters laid out as {}, this page's has {} laid out as {}: reload the page",
            task.name,
            spec.model_params,
            protocol::clip(&spec.model_signature, 20),
            ours.model_params,
            ours.model_signature
        ));
    }
    Ok(task)
}

/// The data being trained on and its ledger's state.
#[derive(Debug)]
struct Loaded {
    data: Arc<Dataset>,
    fingerprint: String,
    /// Why this data is not used (its stored ledger is unreadable).
    blocked: Option<String>,
}

/// The client session.
#[derive(Debug)]
pub struct Session {
    options: SessionOptions,
    client_key: Option<String>,
    client_id: Option<u64>,
    assignment: Option<Assignment>,
    loaded: Option<Loaded>,
    /// Ledgers by dataset fingerprint: what storage held, plus everything spent since.
    book: BTreeMap<String, LedgerSlot>,
    /// The current data's ledger; `None` while a job holds it.
    privacy: Option<ClientPrivacy>,
    /// The ledger a running job started from: what it spent is its ledger since this.
    job_base: Option<DatasetLedger>,
    /// What the last job spent, to store (added to the stored ledger, never written over it).
    last_spend: Option<DatasetLedger>,
    expect: Expect,
    finished: Option<String>,
    /// Rounds this client trained in (for display).
    pub rounds_trained: Vec<u64>,
    /// The secure-aggregation round this client is a member of.
    secure: Option<SecureRound>,
    /// The last round the server set up with secure aggregation (even if joining it failed):
    /// that round's update never goes out in the clear.
    secure_round: Option<u64>,
    /// Training held until this member's shares are out: a browser worker answers nothing
    /// while it trains, so it shares first and the server's share step stays short.
    held: Option<Box<TrainJob>>,
    /// Parameters of the federated model (from `Welcome`).
    model_params: usize,
    /// The run whose task this page does not know, once said (its state and its assignment
    /// would otherwise say it again at every phase change).
    unknown_task_said: Option<u64>,
}

impl Session {
    pub fn new(options: SessionOptions) -> Result<Self, LearningError> {
        let privacy = ClientPrivacy::new(options.epsilon_cap, options.delta.unwrap_or(1e-5))?;
        let book = options
            .ledgers
            .iter()
            .map(|slot| (slot.fingerprint().to_owned(), slot.clone()))
            .collect();
        let client_key = options.resume.as_ref().and_then(|r| r.client_key.clone());
        let mut session = Self {
            client_key,
            client_id: None,
            assignment: None,
            loaded: None,
            book,
            privacy: Some(privacy),
            job_base: None,
            last_spend: None,
            expect: Expect::Nothing,
            finished: None,
            unknown_task_said: None,
            rounds_trained: Vec::new(),
            secure: None,
            secure_round: None,
            held: None,
            model_params: 0,
            options,
        };
        if let Some(own) = session.options.own_data.clone() {
            session.load(own.data, own.fingerprint);
        }
        Ok(session)
    }

    /// Makes `data` the current data, with the ledger the book holds for it.
    fn load(&mut self, data: Arc<Dataset>, fingerprint: String) {
        self.loaded = Some(Loaded {
            data,
            fingerprint,
            blocked: None,
        });
        self.sync_ledger();
    }

    /// Puts the book's ledger of the current data into the privacy state (a no-op while a job
    /// holds it: [`Self::restore`] calls it again).
    fn sync_ledger(&mut self) {
        let (Some(loaded), Some(privacy)) = (self.loaded.as_mut(), self.privacy.as_mut()) else {
            return;
        };
        privacy.ledger = Default::default();
        privacy.unprotected_rounds = 0;
        privacy.delta = self
            .options
            .delta
            .unwrap_or_else(|| default_delta(loaded.data.len()));
        loaded.blocked = match self.book.get(&loaded.fingerprint) {
            Some(LedgerSlot::Known(l)) => {
                privacy.ledger.history = l.history.clone();
                privacy.ledger.skellam = l.skellam.clone();
                privacy.unprotected_rounds = l.unprotected_rounds;
                None
            }
            Some(LedgerSlot::Unreadable { reason, .. }) => Some(format!(
                "the stored privacy ledger of this data is unreadable ({reason}): it is not trained on until its ledger is reset on the client page"
            )),
            None => None,
        };
    }

    /// The δ to declare: the owner's, or the default of the own data's size; for a shard not
    /// yet known, none (the server then uses the run's δ, ≥ the client's default for shards of
    /// ≤ 10 000 examples).
    fn declared_delta(&self) -> Option<f64> {
        self.options.delta.or_else(|| {
            let own = self.options.own_data.as_ref()?;
            Some(default_delta(own.data.len()))
        })
    }

    /// The first message on every (re)connection. Secure-aggregation keys kept from the last
    /// round go: a new connection is a new member to the server, which never reuses them.
    pub fn hello(&mut self) -> Outgoing {
        self.expect = Expect::Nothing;
        self.finished = None;
        self.secure = None;
        let own_data = self.options.own_data.as_ref().map(|d| OwnData {
            num_examples: d.data.len() as u64,
        });
        Outgoing::Text(
            ClientMessage::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_key: self.client_key.clone(),
                capabilities: Capabilities {
                    name: self.options.name.clone(),
                    own_data,
                    epsilon_cap: self.options.epsilon_cap,
                    delta: self.declared_delta(),
                    can_evaluate: self.options.can_evaluate,
                    require_secure_aggregation: self.options.require_secure_aggregation,
                },
            }
            .encode(),
        )
    }

    pub fn client_id(&self) -> Option<u64> {
        self.client_id
    }
    pub fn client_key(&self) -> Option<&str> {
        self.client_key.as_deref()
    }
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }
    pub fn has_data(&self) -> bool {
        self.loaded.is_some()
    }
    /// Why the run ended, once the server said so.
    pub fn finished(&self) -> Option<&str> {
        self.finished.as_deref()
    }
    /// The current data's fingerprint: the name of its ledger.
    pub fn dataset(&self) -> Option<&str> {
        Some(&self.loaded.as_ref()?.fingerprint)
    }
    /// The task of the shard the server assigned, if this page knows it.
    pub fn task(&self) -> Option<&'static learning::Task> {
        known_task(&self.assignment.as_ref()?.task).ok()
    }
    /// The data trained on (the shard, or the user's files), once loaded.
    pub fn data(&self) -> Option<&Dataset> {
        Some(&self.loaded.as_ref()?.data)
    }
    /// Why the current data is not trained on (its stored ledger is unreadable).
    pub fn blocked(&self) -> Option<&str> {
        self.loaded.as_ref()?.blocked.as_deref()
    }

    /// What a reloaded tab needs to rejoin as this client (its ledgers are saved apart, per
    /// dataset: [`Self::take_spend`]).
    pub fn saved(&self) -> SavedClient {
        SavedClient {
            client_key: self.client_key.clone(),
        }
    }

    /// Drops the identity (after another connection took over this key): a later join is a
    /// new client with a new shard. The ledgers stay: they belong to the data.
    pub fn forget_identity(&mut self) {
        self.client_key = None;
        self.client_id = None;
        self.assignment = None;
    }

    /// Whether a server error means this client must stop rather than reconnect: another
    /// protocol version, or another connection took over this client's key.
    pub fn stops_client(code: ErrorCode, fatal: bool) -> bool {
        fatal && matches!(code, ErrorCode::UnsupportedVersion | ErrorCode::Replaced)
    }

    /// ε spent on the current data and the δ it is stated at; `None` before any data, or
    /// before anything was spent on it.
    pub fn spent(&self) -> Option<Spent> {
        let p = self.privacy.as_ref()?;
        self.loaded.as_ref()?;
        if p.ledger.steps() == 0 && p.unprotected_rounds == 0 {
            return None;
        }
        let collusion = p
            .ledger
            .skellam
            .iter()
            .map(|e| e.mechanism.contributors)
            .max()
            .map(|contributors| protocol::worker::Collusion {
                epsilon: p.worst_case_epsilon().ok(),
                contributors,
            });
        Some(Spent {
            epsilon: p.epsilon().ok(),
            delta: p.delta,
            collusion,
        })
    }

    /// ε spent on the current data (0 before anything was spent).
    pub fn epsilon(&self) -> Option<f64> {
        self.privacy.as_ref()?.epsilon().ok()
    }

    /// Handles a text message.
    pub fn on_text(&mut self, text: &str) -> Result<Vec<Action>, SessionError> {
        let msg = ServerMessage::decode(text)?;
        let mut out = Vec::new();
        match msg {
            ServerMessage::Welcome {
                client_id,
                client_key,
                model_params,
                rounds_taken,
                interrupted_round,
            } => {
                self.model_params = model_params as usize;
                self.client_id = Some(client_id);
                self.client_key = Some(client_key);
                out.push(Action::Notify(Notice::Welcome {
                    client_id,
                    rounds_taken,
                    interrupted_round,
                }));
            }
            ServerMessage::RunState {
                run_id,
                task,
                phase,
            } => {
                out.push(Action::Notify(Notice::RunState {
                    run_id,
                    task: task.clone(),
                    phase,
                }));
                // Said before any round (after the run: a page clears the last run's messages
                // when it hears of a new one): this page cannot take part in the run.
                self.say_unknown_task(run_id, &task, &mut out);
            }
            ServerMessage::Assignment(a) => self.on_assignment(a, &mut out),
            ServerMessage::TrainIns {
                server_round,
                task,
                config,
                ..
            } => {
                self.expect = Expect::TrainModel {
                    server_round,
                    task,
                    config,
                };
            }
            ServerMessage::SecAggSetup(setup) => out.extend(self.on_secagg_setup(setup)),
            ServerMessage::SecAggPeers {
                server_round,
                peers,
            } => {
                out.extend(self.secure_step(server_round, |s| s.on_peers(&peers).map(|o| vec![o])))
            }
            ServerMessage::SecAggInbox {
                server_round,
                envelopes,
            } => out.extend(self.secure_step(server_round, |s| s.on_inbox(&envelopes))),
            ServerMessage::SecAggUnmask {
                server_round,
                request,
            } => out
                .extend(self.secure_step(server_round, |s| s.on_unmask(&request).map(|o| vec![o]))),
            ServerMessage::EvaluateIns { server_round, task } => {
                self.expect = Expect::EvalModel { server_round, task };
            }
            ServerMessage::RoundClosed {
                server_round,
                test_accuracy,
                epsilon,
                ..
            } => {
                out.push(Action::Notify(Notice::RoundClosed {
                    server_round,
                    test_accuracy,
                    epsilon,
                }));
            }
            ServerMessage::RunFinished { run_id, reason } => {
                self.release_held();
                self.finished = Some(reason.clone());
                out.push(Action::Notify(Notice::RunFinished { run_id, reason }));
            }
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => {
                out.push(Action::Notify(Notice::ServerError {
                    code,
                    message,
                    fatal,
                }));
            }
        }
        Ok(out)
    }

    fn secure_in(&self, server_round: u64) -> bool {
        self.secure
            .as_ref()
            .is_some_and(|s| s.server_round == server_round)
    }

    /// Joins a secure-aggregation round (its keys — or, reusing the last round's keys, its
    /// shares — go out at once, while training waits for the model).
    fn on_secagg_setup(&mut self, setup: protocol::secagg::SecAggSetup) -> Vec<Action> {
        let server_round = setup.server_round;
        let members = setup.members;
        self.release_held();
        self.secure_round = Some(server_round);
        let kept = self.secure.take().and_then(SecureRound::into_kept);
        match SecureRound::start(setup, self.model_params + 1, kept) {
            Ok((secure, keys)) => {
                self.secure = Some(secure);
                vec![
                    Action::Send(keys),
                    Action::Notify(Notice::Secure {
                        server_round,
                        members,
                    }),
                ]
            }
            Err(e) => {
                self.secure = None;
                train_failed(server_round, format!("secure aggregation: {e}"), false)
            }
        }
    }

    /// A step of the secure round `server_round` (a message of another round is stale and
    /// ignored); a step that fails drops this client from the round.
    fn secure_step(
        &mut self,
        server_round: u64,
        step: impl FnOnce(&mut SecureRound) -> Result<Vec<Outgoing>, String>,
    ) -> Vec<Action> {
        let Some(secure) = self
            .secure
            .as_mut()
            .filter(|s| s.server_round == server_round)
        else {
            return Vec::new();
        };
        match step(secure) {
            Ok(out) => {
                let sent = out.iter().any(|o| matches!(o, Outgoing::Binary(_)));
                let shared = secure.shares_sent();
                let mut actions: Vec<Action> = out.into_iter().map(Action::Send).collect();
                if sent {
                    actions.push(Action::Notify(Notice::Sent {
                        server_round,
                        masked: true,
                    }));
                }
                // The shares are out: the training held for them starts.
                if shared && let Some(job) = self.held.take() {
                    actions.push(Action::Train(job));
                }
                actions
            }
            Err(e) => {
                self.secure = None;
                self.release_held();
                train_failed(server_round, format!("secure aggregation: {e}"), false)
            }
        }
    }

    /// Gives a held training job's ledger back, untouched (the job never ran).
    fn release_held(&mut self) {
        if let Some(job) = self.held.take() {
            self.privacy = Some(job.privacy);
            self.job_base = None;
            self.sync_ledger();
        }
    }

    /// A shard assignment: the same shard keeps its data; another one is fetched (and trained
    /// with *its* ledger from the book, once its fingerprint is known).
    fn on_assignment(&mut self, a: Assignment, out: &mut Vec<Action>) {
        if self.say_unknown_task(a.run_id, &a.task, out) {
            // A shard of a model this page cannot run: not downloaded.
            return;
        }
        let same = self
            .assignment
            .as_ref()
            .is_some_and(|old| (old.run_id, old.shard_index) == (a.run_id, a.shard_index));
        if !same && self.options.own_data.is_none() {
            self.loaded = None;
        }
        // Notice first: a page shows the assignment before the data it brings.
        out.push(Action::Notify(Notice::Assigned(a.clone())));
        if self.loaded.is_none() {
            out.push(Action::FetchShard {
                images_path: a.images_path.clone(),
                labels_path: a.labels_path.clone(),
            });
        }
        self.assignment = Some(a);
    }

    /// Whether `run_id`'s task is one this page cannot run; said once a run, as an error that
    /// tells the user what to do.
    fn say_unknown_task(&mut self, run_id: u64, spec: &TaskSpec, out: &mut Vec<Action>) -> bool {
        let Err(reason) = known_task(spec) else {
            return false;
        };
        if self.unknown_task_said != Some(run_id) {
            self.unknown_task_said = Some(run_id);
            out.push(Action::Notify(Notice::ServerError {
                code: ErrorCode::BadMessage,
                message: reason,
                fatal: false,
            }));
        }
        true
    }

    /// Handles a binary frame (the global model announced by the last instruction).
    pub fn on_binary(&mut self, bytes: &[u8]) -> Result<Vec<Action>, SessionError> {
        let frame = TensorFrame::decode(bytes)?;
        if frame.kind != FrameKind::GlobalModel {
            return Err(SessionError::Unexpected("an update frame"));
        }
        match std::mem::replace(&mut self.expect, Expect::Nothing) {
            Expect::TrainModel {
                server_round,
                task,
                config,
            } if server_round == frame.server_round => {
                Ok(match self.run_task(&task) {
                    Ok(task) => self.train(server_round, task, config, frame.values),
                    // This client can never run the run's model: it says it refuses the run.
                    Err(reason) => train_failed(server_round, reason, true),
                })
            }
            Expect::EvalModel { server_round, task } if server_round == frame.server_round => {
                Ok(match self.run_task(&task) {
                    Ok(task) => self.evaluate(server_round, task, frame.values),
                    Err(reason) => vec![eval_failed(server_round, reason)],
                })
            }
            _ => Err(SessionError::Unexpected("a model frame")),
        }
    }

    /// The instruction's task, if this client can run it and it is its shard's (a model of
    /// another task would be trained on records it was not made for).
    fn run_task(&self, spec: &TaskSpec) -> Result<&'static learning::Task, String> {
        let task = known_task(spec)?;
        match &self.assignment {
            Some(a) if a.task.id != spec.id => Err(format!(
                "the server asks to train a {} model on this client's {} shard: refusing",
                task.name,
                protocol::clip(&a.task.id, 40)
            )),
            _ => Ok(task),
        }
    }

    /// The data, its fingerprint and its ledger to work with, or why there are none.
    fn take_work(&mut self) -> Result<(Arc<Dataset>, String, ClientPrivacy), String> {
        let Some(loaded) = &self.loaded else {
            return Err("no data: the shard was not downloaded".into());
        };
        if let Some(reason) = &loaded.blocked {
            return Err(reason.clone());
        }
        let (data, fingerprint) = (loaded.data.clone(), loaded.fingerprint.clone());
        let privacy = self
            .privacy
            .take()
            .ok_or("still busy with the previous instruction")?;
        self.job_base = Some(ledger_from(&fingerprint, &privacy));
        Ok((data, fingerprint, privacy))
    }

    fn train(
        &mut self,
        server_round: u64,
        task: &'static learning::Task,
        config: TrainConfig,
        global: Vec<f32>,
    ) -> Vec<Action> {
        if self.secure_round == Some(server_round) && !self.secure_in(server_round) {
            // Joining this round's secure aggregation failed: its update is not sent at all,
            // and never in the clear.
            return train_failed(
                server_round,
                "secure aggregation could not be joined for this round: its update is not sent in the clear".into(),
                false,
            );
        }
        if self.options.require_secure_aggregation && !self.secure_in(server_round) {
            // Refused before anything is trained: this client sends nothing in the clear.
            return train_failed(
                server_round,
                "this client requires secure aggregation, and the round has none".into(),
                true,
            );
        }
        // What this member computes binds its masks; a distributed round's integer sum holds
        // only 1/t of the noise's variance: never sent but masked, with t share holders.
        let joined = match self
            .secure
            .as_mut()
            .filter(|s| s.server_round == server_round)
        {
            Some(s) => s.bind(&config),
            None if config.distributed().is_some() => Err(
                "distributed DP needs secure aggregation: this client's sum carries only its share of the noise, and the round has none".to_string(),
            ),
            None => Ok(()),
        };
        if let Err(reason) = joined {
            self.secure = None;
            return train_failed(server_round, reason, false);
        }
        if let (Some(cap), None) = (self.options.epsilon_cap, &config.dp) {
            // Refused before anything is fetched or computed (fit refuses it too).
            return train_failed(
                server_round,
                format!(
                    "this client has an ε cap ({cap}) and trains only with differential privacy; the run has DP off"
                ),
                true,
            );
        }
        match self.take_work() {
            Ok((data, fingerprint, privacy)) => {
                let job = Box::new(TrainJob {
                    task,
                    server_round,
                    global,
                    config,
                    data,
                    fingerprint,
                    privacy,
                });
                if self
                    .secure
                    .as_ref()
                    .is_some_and(|s| s.server_round == server_round && !s.shares_sent())
                {
                    self.held = Some(job);
                    return Vec::new();
                }
                vec![Action::Train(job)]
            }
            Err(reason) => train_failed(server_round, reason, false),
        }
    }

    fn evaluate(
        &mut self,
        server_round: u64,
        task: &'static learning::Task,
        global: Vec<f32>,
    ) -> Vec<Action> {
        if !self.options.can_evaluate {
            return vec![eval_failed(
                server_round,
                "this client does not evaluate".into(),
            )];
        }
        match self.take_work() {
            Ok((data, fingerprint, privacy)) => vec![Action::Evaluate(Box::new(EvalJob {
                task,
                server_round,
                global,
                data,
                fingerprint,
                privacy,
            }))],
            Err(reason) => vec![eval_failed(server_round, reason)],
        }
    }

    /// The downloaded shard: checked against its assignment (size and label histogram), then
    /// trained on with the ledger of its contents.
    pub fn on_shard(&mut self, images: &[u8], labels: &[u8]) -> Result<(), SessionError> {
        let data = Dataset::from_idx("shard images", images, "shard labels", labels)
            .map_err(|e| SessionError::Shard(e.to_string()))?;
        if let Some(a) = &self.assignment {
            if data.len() as u64 != a.num_examples {
                return Err(SessionError::Shard(format!(
                    "{} examples, expected {}",
                    data.len(),
                    a.num_examples
                )));
            }
            if data.label_histogram().to_vec() != a.label_histogram {
                return Err(SessionError::Shard(
                    "label histogram differs from the assignment".into(),
                ));
            }
        }
        self.load(Arc::new(data), fingerprint(images, labels));
        Ok(())
    }

    /// A job gave its ledger back: it goes into the book under the job's data (which may no
    /// longer be the current data), then the current data's ledger is taken from the book.
    ///
    /// What the job spent is added to the book's entry, which another tab's spending may have
    /// refreshed meanwhile ([`Self::refresh`]): never written back over it.
    fn restore(&mut self, privacy: ClientPrivacy, fingerprint: String) {
        let after = ledger_from(&fingerprint, &privacy);
        let base = self
            .job_base
            .take()
            .filter(|b| b.fingerprint == fingerprint)
            .unwrap_or_else(|| DatasetLedger::new(&fingerprint));
        let spent = after.since(&base);
        // An entry found unreadable meanwhile (edited in another tab) stays so; storing this
        // spend then fails, and nothing of the job is released.
        if !matches!(
            self.book.get(&fingerprint),
            Some(LedgerSlot::Unreadable { .. })
        ) {
            let mut ledger = self
                .ledger_of(&fingerprint)
                .unwrap_or_else(|| DatasetLedger::new(&fingerprint));
            ledger.add(&spent);
            self.book.insert(fingerprint, LedgerSlot::Known(ledger));
        }
        // Added to any spend not yet taken (a driver takes it after every job).
        self.last_spend = Some(match self.last_spend.take() {
            Some(mut pending) if pending.fingerprint == spent.fingerprint => {
                pending.add(&spent);
                pending
            }
            _ => spent,
        });
        self.privacy = Some(privacy);
        self.sync_ledger();
    }

    /// The ledger of dataset `fingerprint` as this session knows it.
    pub fn ledger_of(&self, fingerprint: &str) -> Option<DatasetLedger> {
        match self.book.get(fingerprint)? {
            LedgerSlot::Known(l) => Some(l.clone()),
            LedgerSlot::Unreadable { .. } => None,
        }
    }

    /// What the last job spent: the page adds it to the stored ledger of its dataset (another
    /// tab may have added its own spending there meanwhile).
    pub fn take_spend(&mut self) -> Option<DatasetLedger> {
        self.last_spend.take()
    }

    /// A dataset's ledger as storage holds it now (another tab of this browser spent on the
    /// same records): it replaces the book's entry, and the current ledger if it is that data's.
    pub fn refresh(&mut self, slot: LedgerSlot) {
        self.book.insert(slot.fingerprint().to_owned(), slot);
        self.sync_ledger();
    }

    /// Training finished: the result (or the refusal) to send. Store [`Self::take_spend`]
    /// before sending it.
    pub fn on_trained(&mut self, done: TrainDone) -> Vec<Action> {
        self.restore(done.privacy, done.fingerprint);
        let (server_round, context) = (done.server_round, done.context);
        let res = match done.result {
            Ok(res) => res,
            Err(e) => return refused(server_round, &e),
        };
        self.rounds_trained.push(server_round);
        let trained = Action::Notify(Notice::Trained {
            server_round,
            metrics: res.metrics,
        });
        let update = match res.update {
            Update::Delta(update) => update,
            Update::Integers(sum) if self.secure_in(server_round) => {
                let (n, steps) = (res.num_examples as u64, res.metrics.steps);
                let mut out = self.secure_step(server_round, |s| {
                    s.on_trained(Update::Integers(sum), n, steps, &context)
                });
                out.push(trained);
                return out;
            }
            Update::Integers(_) => {
                return train_failed(
                    server_round,
                    "this round's integer sum carries only a share of the noise and is sent only masked, and this client is not in the round's secure aggregation".into(),
                    false,
                );
            }
        };
        if self.secure_in(server_round) {
            // Masked, and sent once the neighbours' shares are here.
            let num_examples = res.num_examples as u64;
            let steps = res.metrics.steps;
            let mut out = self.secure_step(server_round, |s| {
                s.on_trained(Update::Delta(update), num_examples, steps, &context)
            });
            out.push(trained);
            return out;
        }
        if self.options.require_secure_aggregation || self.secure_round == Some(server_round) {
            return train_failed(
                server_round,
                "this round's update is sent only masked (secure aggregation), and this client is not in the round's secure aggregation".into(),
                self.options.require_secure_aggregation,
            );
        }
        let frame = TensorFrame {
            kind: FrameKind::Update,
            server_round,
            values: update,
        };
        let Ok(bytes) = frame.encode() else {
            return train_failed(server_round, "update too large for a frame".into(), false);
        };
        vec![
            Action::Send(Outgoing::Text(
                ClientMessage::TrainRes {
                    server_round,
                    num_examples: res.num_examples as u64,
                    steps: res.metrics.steps,
                }
                .encode(),
            )),
            Action::Send(Outgoing::Binary(bytes)),
            trained,
            Action::Notify(Notice::Sent {
                server_round,
                masked: false,
            }),
        ]
    }

    /// Evaluation finished: the DP result to send, or a notice of why there is none. Store
    /// [`Self::take_spend`] before sending it.
    pub fn on_evaluated(&mut self, done: EvalDone) -> Vec<Action> {
        self.restore(done.privacy, done.fingerprint);
        match done.result {
            Ok(r) => vec![Action::Send(Outgoing::Text(
                ClientMessage::EvaluateRes {
                    server_round: done.server_round,
                    num_examples: r.num_examples as u64,
                    loss: r.loss,
                    accuracy: r.accuracy,
                }
                .encode(),
            ))],
            Err(e) => vec![eval_failed(done.server_round, e.to_string())],
        }
    }
}

/// The stored form of a privacy state's ledger.
fn ledger_from(fingerprint: &str, privacy: &ClientPrivacy) -> DatasetLedger {
    DatasetLedger {
        fingerprint: fingerprint.into(),
        history: privacy.ledger.history.clone(),
        unprotected_rounds: privacy.unprotected_rounds,
        skellam: privacy.ledger.skellam.clone(),
    }
}

/// Tells the server (and the user) that this round was not trained, and why; `refuses_run`
/// when every further round of this run would be refused too.
fn train_failed(server_round: u64, reason: String, refuses_run: bool) -> Vec<Action> {
    told_apart(server_round, reason.clone(), reason, refuses_run)
}

/// [`train_failed`] with one reason for the server and another for the user.
fn told_apart(
    server_round: u64,
    to_server: String,
    to_user: String,
    refuses_run: bool,
) -> Vec<Action> {
    vec![
        Action::Send(Outgoing::Text(
            ClientMessage::TrainFailed {
                server_round,
                reason: to_server,
                refuses_run,
            }
            .encode(),
        )),
        Action::Notify(Notice::TrainFailed {
            server_round,
            reason: to_user,
        }),
    ]
}

/// A refusal by `fit`. The user reads the whole reason; the server is not told the ε spent
/// (the ledger spans other runs and keys on the same records: its exact value would link
/// them), only that the client's own budget forbids the round.
fn refused(server_round: u64, e: &LearningError) -> Vec<Action> {
    let refuses_run = matches!(
        e,
        LearningError::BudgetExhausted { .. }
            | LearningError::NoDpWithCap
            | LearningError::DeltaTooLarge { .. }
            | LearningError::LedgerFull(_)
            | LearningError::Config(_)
    );
    let to_server = match e {
        LearningError::BudgetExhausted { cap, .. } => {
            format!("this round would take this client past its own ε cap of {cap}")
        }
        // The details (a worker's own error text, the sizes of a step's slices) stay here.
        LearningError::Worker(_) => "a training worker of this client failed".into(),
        other => other.to_string(),
    };
    told_apart(server_round, to_server, e.to_string(), refuses_run)
}

fn eval_failed(server_round: u64, reason: String) -> Action {
    Action::Notify(Notice::EvaluateFailed {
        server_round,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use learning::Batching;

    fn tiny_data(n: usize) -> OwnFiles {
        let images = (0..n * 784).map(|i| (i % 251) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        OwnFiles::from_dataset(Dataset { images, labels })
    }

    /// A train instruction as the server sends it: `TrainIns` (which asks for nothing yet), then
    /// the global model frame; returns what the session answers to the frame.
    fn instruct(
        s: &mut Session,
        server_round: u64,
        config: TrainConfig,
        values: Vec<f32>,
    ) -> Vec<Action> {
        let ins = ServerMessage::TrainIns {
            task: learning::task::MNIST.spec(),
            server_round,
            config,
            timeout_ms: 1000,
        };
        assert!(s.on_text(&ins.encode()).unwrap().is_empty());
        let frame = TensorFrame {
            kind: FrameKind::GlobalModel,
            server_round,
            values,
        };
        s.on_binary(&frame.encode().unwrap()).unwrap()
    }

    fn text(actions: &[Action]) -> Vec<ClientMessage> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Outgoing::Text(t)) => Some(ClientMessage::decode(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_full_round_without_a_network() {
        let own = tiny_data(20);
        let fp = own.fingerprint.clone();
        let mut s = Session::new(SessionOptions {
            name: "t".into(),
            own_data: Some(own),
            ..Default::default()
        })
        .unwrap();
        let Outgoing::Text(hello) = s.hello() else {
            panic!()
        };
        assert!(matches!(
            ClientMessage::decode(&hello).unwrap(),
            ClientMessage::Hello {
                client_key: None,
                ..
            }
        ));
        // Only the size of the own data is released: no label histogram.
        assert!(
            hello.contains(r#""own_data":{"num_examples":20}"#),
            "{hello}"
        );
        s.on_text(
            &ServerMessage::Welcome {
                client_id: 7,
                client_key: "k".repeat(32),
                model_params: 12810,
                rounds_taken: 0,
                interrupted_round: None,
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(s.client_id(), Some(7));
        let config = TrainConfig {
            batching: Batching::BatchSize(10),
            ..TrainConfig::default()
        };
        let global = learning::TinyCnnConfig::new()
            .init(&burn::tensor::Device::flex())
            .to_flat();
        let mut actions = instruct(&mut s, 1, config, global);
        let Some(Action::Train(job)) = actions.pop() else {
            panic!("expected a train job")
        };
        let done = job.run(&mut |_| {});
        let out = s.on_trained(done);
        let msgs = text(&out);
        let ClientMessage::TrainRes {
            server_round: 1,
            num_examples: 20,
            steps: 2,
        } = msgs[0]
        else {
            panic!("{msgs:?}")
        };
        let eps = s.epsilon().unwrap();
        assert!(eps > 0.0);
        assert_eq!(s.spent().unwrap().delta, default_delta(20));
        let Some(Action::Send(Outgoing::Binary(b))) = out.get(1) else {
            panic!()
        };
        let update = TensorFrame::decode(b).unwrap();
        assert_eq!(
            (update.kind, update.server_round, update.values.len()),
            (FrameKind::Update, 1, 12_810)
        );
        assert_eq!(s.ledger_of(&fp).unwrap().history.len(), 1);
        // A reconnect presents the key it was given.
        let Outgoing::Text(hello) = s.hello() else {
            panic!()
        };
        assert!(matches!(
            ClientMessage::decode(&hello).unwrap(),
            ClientMessage::Hello {
                client_key: Some(_),
                ..
            }
        ));
    }

    /// A worker's failure is told to the user in full and to the server only as a failure: its
    /// text may carry a step's slice sizes (how many of this client's examples were sampled).
    #[test]
    fn a_worker_failure_s_details_stay_with_the_user() {
        let why = "a step's gradient covers 17 examples and 3 values: expected 17 and 12810";
        let actions = refused(4, &LearningError::Worker(why.into()));
        let sent = text(&actions);
        let [ClientMessage::TrainFailed { reason, .. }] = sent.as_slice() else {
            panic!("one TrainFailed to the server: {actions:?}");
        };
        assert_eq!(reason, "a training worker of this client failed");
        assert!(actions.iter().any(|a| matches!(a,
            Action::Notify(Notice::TrainFailed { reason, .. }) if reason == why)));
    }

    #[test]
    fn the_clients_own_cap_refuses_training() {
        let mut s = Session::new(SessionOptions {
            own_data: Some(tiny_data(20)),
            epsilon_cap: Some(0.01),
            ..Default::default()
        })
        .unwrap();
        let config = TrainConfig {
            batching: Batching::BatchSize(10),
            ..TrainConfig::default()
        };
        let Some(Action::Train(job)) = instruct(&mut s, 3, config, vec![0.0; 12_810]).pop() else {
            panic!()
        };
        let out = s.on_trained(job.run(&mut |_| {}));
        assert!(
            matches!(&text(&out)[0], ClientMessage::TrainFailed { server_round: 3, reason, refuses_run: true } if reason.contains("cap")),
            "{out:?}"
        );
        assert_eq!(s.epsilon(), Some(0.0), "nothing spent");
    }

    #[test]
    fn unexpected_frames_and_garbage_are_errors() {
        let mut s = Session::new(SessionOptions::default()).unwrap();
        let frame = TensorFrame {
            kind: FrameKind::GlobalModel,
            server_round: 1,
            values: vec![0.0; 4],
        }
        .encode()
        .unwrap();
        assert!(matches!(
            s.on_binary(&frame),
            Err(SessionError::Unexpected(_))
        ));
        assert!(s.on_binary(b"junk").is_err());
        assert!(s.on_text("{").is_err());
        // No data: a train instruction is answered with a failure, not a panic.
        s.on_text(
            &ServerMessage::TrainIns {
                task: learning::task::MNIST.spec(),
                server_round: 1,
                config: TrainConfig::default(),
                timeout_ms: 1,
            }
            .encode(),
        )
        .unwrap();
        let out = s.on_binary(&frame).unwrap();
        assert!(matches!(&text(&out)[0], ClientMessage::TrainFailed { .. }));
    }

    #[test]
    fn a_resumed_client_keeps_its_key_and_a_replaced_one_forgets_it() {
        let saved = SavedClient {
            client_key: Some("k1".into()),
        };
        let mut s = Session::new(SessionOptions {
            resume: Some(saved.clone()),
            ..Default::default()
        })
        .unwrap();
        let Outgoing::Text(hello) = s.hello() else {
            panic!()
        };
        assert!(hello.contains(r#""client_key":"k1""#), "{hello}");
        assert_eq!(s.saved(), saved);
        assert!(Session::stops_client(ErrorCode::Replaced, true));
        assert!(!Session::stops_client(ErrorCode::Internal, true));
        s.forget_identity();
        assert_eq!(s.saved().client_key, None);
    }
}
