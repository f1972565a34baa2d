//! The client session: the one state machine a browser tab (in a Web Worker) and a headless
//! simulated client both run. Sans-IO: it turns incoming messages into [`Action`]s (send this,
//! fetch the shard, train, evaluate) and the transport that drives it performs them — gloo-net
//! in the browser, tokio natively. So it is tested without a network.
//!
//! ```text
//! connect ─▶ Hello ─▶ Welcome ─▶ Assignment ─▶ (fetch shard) ─▶ idle
//! idle ─▶ TrainIns + GlobalModel frame ─▶ Train(job) ─▶ on_trained ─▶ TrainRes + Update frame
//! idle ─▶ EvaluateIns + GlobalModel frame ─▶ Evaluate(job) ─▶ on_evaluated ─▶ EvaluateRes
//! RunFinished ─▶ done (the driver may stop)
//! ```
//!
//! What survives a reconnect: the client key (same identity, shard and server ledger), the
//! data, and the privacy ledger (the client's own ε, which caps what it will train).

use std::sync::Arc;

use learning::{ClientPrivacy, Dataset, FitRes, LearningError, TrainConfig};
use protocol::config::FitMetrics;
use protocol::messages::{Assignment, Capabilities, OwnData};
use protocol::worker::SavedClient;
use protocol::{ClientMessage, ErrorCode, FrameKind, PROTOCOL_VERSION, ServerMessage, TensorFrame};

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
    Evaluate(EvalJob),
    /// Something the user should see (a round closed, an error from the server).
    Notify(Notice),
}

/// Things worth showing (dashboard of a tab, simulator log).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Welcome {
        client_id: u64,
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
    RunFinished {
        run_id: u64,
        reason: String,
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
    pub server_round: u64,
    pub global: Vec<f32>,
    pub config: TrainConfig,
    pub data: Arc<Dataset>,
    pub privacy: ClientPrivacy,
}

/// The outcome of a [`TrainJob`].
#[derive(Debug)]
pub struct TrainDone {
    pub server_round: u64,
    pub result: Result<FitRes, LearningError>,
    pub privacy: ClientPrivacy,
}

impl TrainJob {
    /// Trains (blocking, CPU-bound); `progress` sees every step.
    pub fn run(mut self, progress: &mut dyn FnMut(learning::client::FitProgress)) -> TrainDone {
        let result = learning::fit(
            &self.global,
            &self.config,
            &self.data,
            &mut self.privacy,
            progress,
        );
        TrainDone {
            server_round: self.server_round,
            result,
            privacy: self.privacy,
        }
    }
}

/// Evaluation to run.
#[derive(Debug)]
pub struct EvalJob {
    pub server_round: u64,
    pub global: Vec<f32>,
    pub data: Arc<Dataset>,
}

impl EvalJob {
    pub fn run(self) -> (u64, Result<learning::EvaluateRes, LearningError>) {
        (
            self.server_round,
            learning::evaluate(&self.global, &self.data),
        )
    }
}

/// Who the client is and what it brings.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub name: String,
    /// The client's own ε cap (it refuses rounds past it).
    pub epsilon_cap: Option<f64>,
    /// Train on this instead of a server-assigned shard.
    pub own_data: Option<Arc<Dataset>>,
    pub can_evaluate: bool,
    /// Identity and ledger saved by an earlier session of this client (a reloaded tab).
    pub resume: Option<SavedClient>,
}

#[derive(Debug)]
enum Expect {
    Nothing,
    TrainModel {
        server_round: u64,
        config: TrainConfig,
    },
    EvalModel {
        server_round: u64,
    },
}

/// The client session.
#[derive(Debug)]
pub struct Session {
    options: SessionOptions,
    client_key: Option<String>,
    client_id: Option<u64>,
    assignment: Option<Assignment>,
    data: Option<Arc<Dataset>>,
    /// `None` while a train job holds it.
    privacy: Option<ClientPrivacy>,
    expect: Expect,
    finished: Option<String>,
    /// The shard a resumed ledger belongs to, until the first assignment.
    resumed_shard: Option<(u64, u32)>,
    /// δ of the last DP training config (ε is stated at it).
    delta: Option<f64>,
    /// Rounds this client trained in (for display).
    pub rounds_trained: Vec<u64>,
}

impl Session {
    pub fn new(options: SessionOptions) -> Result<Self, LearningError> {
        let mut privacy = ClientPrivacy::new(options.epsilon_cap)?;
        let data = options.own_data.clone();
        let mut client_key = None;
        let mut resumed_shard = None;
        let mut delta = None;
        if let Some(saved) = &options.resume {
            delta = saved.delta;
            client_key = saved.client_key.clone();
            if options.own_data.is_some() {
                privacy.ledger.history = saved.own_ledger.clone();
            } else {
                resumed_shard = saved.run_id.zip(saved.shard_index);
                privacy.ledger.history = saved.ledger.clone();
            }
        }
        Ok(Self {
            options,
            client_key,
            resumed_shard,
            delta,
            client_id: None,
            assignment: None,
            data,
            privacy: Some(privacy),
            expect: Expect::Nothing,
            finished: None,
            rounds_trained: Vec::new(),
        })
    }

    /// The first message on every (re)connection.
    pub fn hello(&mut self) -> Outgoing {
        self.expect = Expect::Nothing;
        self.finished = None;
        let own_data = self.options.own_data.as_ref().map(|d| OwnData {
            num_examples: d.len() as u64,
            label_histogram: Some(d.label_histogram().to_vec()),
        });
        Outgoing::Text(
            ClientMessage::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_key: self.client_key.clone(),
                capabilities: Capabilities {
                    name: self.options.name.clone(),
                    own_data,
                    epsilon_cap: self.options.epsilon_cap,
                    can_evaluate: self.options.can_evaluate,
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
        self.data.is_some()
    }
    /// Why the run ended, once the server said so.
    pub fn finished(&self) -> Option<&str> {
        self.finished.as_deref()
    }
    /// ε this client has spent (its own ledger) at `delta`.
    pub fn epsilon(&self, delta: f64) -> Option<f64> {
        self.privacy.as_ref()?.ledger.epsilon(delta).ok()
    }

    /// What a reloaded tab needs to resume as this client: its identity, the ledger of the data
    /// it trains on, and (unchanged) the saved ledger of the other kind of data.
    pub fn saved(&self) -> SavedClient {
        let mut saved = self.options.resume.clone().unwrap_or_default();
        saved.client_key = self.client_key.clone();
        saved.delta = self.delta.or(saved.delta);
        // `None` only while a train job holds the ledger; then the saved one stands.
        if let Some(p) = &self.privacy {
            if self.options.own_data.is_some() {
                saved.own_ledger = p.ledger.history.clone();
            } else {
                let shard = match &self.assignment {
                    Some(a) => Some((a.run_id, a.shard_index)),
                    None => self.resumed_shard,
                };
                saved.run_id = shard.map(|s| s.0);
                saved.shard_index = shard.map(|s| s.1);
                saved.ledger = p.ledger.history.clone();
            }
        }
        saved
    }

    /// Drops the identity (after another connection took over this key): a later join is a new
    /// client with a new shard. The shard's ledger stays with the connection that has the key;
    /// the own-data ledger is kept (the same files may be trained on again).
    pub fn forget_identity(&mut self) {
        self.client_key = None;
        self.client_id = None;
        self.assignment = None;
        self.resumed_shard = None;
        if let Some(resume) = self.options.resume.as_mut() {
            resume.client_key = None;
            resume.run_id = None;
            resume.shard_index = None;
            resume.ledger.clear();
        }
        if self.options.own_data.is_none()
            && let Some(p) = self.privacy.as_mut()
        {
            p.ledger = Default::default();
        }
    }

    /// Whether a server error means this client must stop rather than reconnect: another
    /// protocol version, or another connection took over this client's key.
    pub fn stops_client(code: ErrorCode, fatal: bool) -> bool {
        fatal && matches!(code, ErrorCode::UnsupportedVersion | ErrorCode::Replaced)
    }

    /// ε spent on the current data and the δ it is stated at; `None` before any DP step on it.
    pub fn spent(&self) -> Option<(f64, f64)> {
        let delta = self.delta?;
        let ledger = &self.privacy.as_ref()?.ledger;
        if ledger.steps() == 0 {
            return None;
        }
        Some((ledger.epsilon(delta).ok()?, delta))
    }

    /// Handles a text message.
    pub fn on_text(&mut self, text: &str) -> Result<Vec<Action>, SessionError> {
        let msg = ServerMessage::decode(text)?;
        let mut out = Vec::new();
        match msg {
            ServerMessage::Welcome {
                client_id,
                client_key,
                ..
            } => {
                self.client_id = Some(client_id);
                self.client_key = Some(client_key);
                out.push(Action::Notify(Notice::Welcome { client_id }));
            }
            ServerMessage::Assignment(a) => {
                let previous = match &self.assignment {
                    Some(old) => Some((old.run_id, old.shard_index)),
                    None => self.resumed_shard.take(),
                };
                let same = previous == Some((a.run_id, a.shard_index));
                if !same && self.options.own_data.is_none() {
                    // New data, new ledger: the privacy unit is an example of this shard.
                    self.data = None;
                    if let Some(p) = self.privacy.as_mut() {
                        p.ledger = Default::default();
                    }
                }
                // Notice first: a page shows the assignment before the data it brings.
                out.push(Action::Notify(Notice::Assigned(a.clone())));
                if self.data.is_none() {
                    out.push(Action::FetchShard {
                        images_path: a.images_path.clone(),
                        labels_path: a.labels_path.clone(),
                    });
                }
                self.assignment = Some(a);
            }
            ServerMessage::TrainIns {
                server_round,
                config,
                ..
            } => {
                if let Some(dp) = &config.dp {
                    self.delta = Some(dp.delta);
                }
                self.expect = Expect::TrainModel {
                    server_round,
                    config,
                };
            }
            ServerMessage::EvaluateIns { server_round } => {
                self.expect = Expect::EvalModel { server_round };
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

    /// Handles a binary frame (the global model announced by the last instruction).
    pub fn on_binary(&mut self, bytes: &[u8]) -> Result<Vec<Action>, SessionError> {
        let frame = TensorFrame::decode(bytes)?;
        if frame.kind != FrameKind::GlobalModel {
            return Err(SessionError::Unexpected("an update frame"));
        }
        match std::mem::replace(&mut self.expect, Expect::Nothing) {
            Expect::TrainModel {
                server_round,
                config,
            } if server_round == frame.server_round => {
                if let (Some(cap), None) = (self.options.epsilon_cap, &config.dp) {
                    // Without DP an update has no bound at all: a client with a cap never
                    // sends one, whatever the server asks.
                    return Ok(train_failed(
                        server_round,
                        format!(
                            "this client has an ε cap ({cap}) and trains only with differential privacy; the run has DP off"
                        ),
                    ));
                }
                let Some(data) = self.data.clone() else {
                    return Ok(train_failed(
                        server_round,
                        "no data: the shard was not downloaded".into(),
                    ));
                };
                let Some(privacy) = self.privacy.take() else {
                    return Ok(train_failed(
                        server_round,
                        "still training the previous round".into(),
                    ));
                };
                Ok(vec![Action::Train(Box::new(TrainJob {
                    server_round,
                    global: frame.values,
                    config,
                    data,
                    privacy,
                }))])
            }
            Expect::EvalModel { server_round } if server_round == frame.server_round => {
                match self.data.clone() {
                    Some(data) => Ok(vec![Action::Evaluate(EvalJob {
                        server_round,
                        global: frame.values,
                        data,
                    })]),
                    None => Ok(Vec::new()),
                }
            }
            _ => Err(SessionError::Unexpected("a model frame")),
        }
    }

    /// The downloaded shard: checked against its assignment (size and label histogram).
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
        self.data = Some(Arc::new(data));
        Ok(())
    }

    /// Training finished: the result (or the refusal) to send.
    pub fn on_trained(&mut self, done: TrainDone) -> Vec<Action> {
        self.privacy = Some(done.privacy);
        let server_round = done.server_round;
        match done.result {
            Ok(res) => {
                self.rounds_trained.push(server_round);
                let frame = TensorFrame {
                    kind: FrameKind::Update,
                    server_round,
                    values: res.update,
                };
                let Ok(bytes) = frame.encode() else {
                    return vec![Action::Send(Outgoing::Text(
                        ClientMessage::TrainFailed {
                            server_round,
                            reason: "update too large for a frame".into(),
                        }
                        .encode(),
                    ))];
                };
                vec![
                    Action::Send(Outgoing::Text(
                        ClientMessage::TrainRes {
                            server_round,
                            num_examples: res.num_examples as u64,
                            metrics: res.metrics,
                        }
                        .encode(),
                    )),
                    Action::Send(Outgoing::Binary(bytes)),
                    Action::Notify(Notice::Trained {
                        server_round,
                        metrics: res.metrics,
                    }),
                ]
            }
            Err(e) => {
                let reason = e.to_string();
                train_failed(server_round, reason)
            }
        }
    }

    /// Evaluation finished: the result to send (nothing if it failed).
    pub fn on_evaluated(
        &mut self,
        server_round: u64,
        res: Result<learning::EvaluateRes, LearningError>,
    ) -> Vec<Action> {
        match res {
            Ok(r) => vec![Action::Send(Outgoing::Text(
                ClientMessage::EvaluateRes {
                    server_round,
                    num_examples: r.num_examples as u64,
                    loss: r.loss,
                    accuracy: r.accuracy,
                }
                .encode(),
            ))],
            Err(_) => Vec::new(),
        }
    }
}

/// Tells the server (and the user) that this round was not trained, and why.
fn train_failed(server_round: u64, reason: String) -> Vec<Action> {
    vec![
        Action::Send(Outgoing::Text(
            ClientMessage::TrainFailed {
                server_round,
                reason: reason.clone(),
            }
            .encode(),
        )),
        Action::Notify(Notice::TrainFailed {
            server_round,
            reason,
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use learning::{Batching, RdpAccountant};

    fn tiny_data(n: usize) -> Arc<Dataset> {
        let images = (0..n * 784).map(|i| (i % 251) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Arc::new(Dataset { images, labels })
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
        let mut s = Session::new(SessionOptions {
            name: "t".into(),
            own_data: Some(tiny_data(20)),
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
        s.on_text(
            &ServerMessage::Welcome {
                client_id: 7,
                client_key: "k".repeat(32),
                model_params: 12810,
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
            metrics,
        } = &msgs[0]
        else {
            panic!("{msgs:?}")
        };
        assert!(metrics.epsilon.unwrap() > 0.0);
        let Some(Action::Send(Outgoing::Binary(b))) = out.get(1) else {
            panic!()
        };
        let update = TensorFrame::decode(b).unwrap();
        assert_eq!(
            (update.kind, update.server_round, update.values.len()),
            (FrameKind::Update, 1, 12_810)
        );
        assert!(s.epsilon(1e-5).unwrap() > 0.0);
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
            matches!(&text(&out)[0], ClientMessage::TrainFailed { server_round: 3, reason } if reason.contains("cap"))
        );
        assert_eq!(s.epsilon(1e-5), Some(0.0), "nothing spent");
    }

    #[test]
    fn a_client_with_a_cap_refuses_a_round_without_dp() {
        let mut s = Session::new(SessionOptions {
            own_data: Some(tiny_data(20)),
            epsilon_cap: Some(5.0),
            ..Default::default()
        })
        .unwrap();
        let config = TrainConfig {
            dp: None,
            ..TrainConfig::default()
        };
        let out = instruct(&mut s, 2, config, vec![0.0; 12_810]);
        assert!(
            matches!(&text(&out)[0], ClientMessage::TrainFailed { server_round: 2, reason } if reason.contains("only with differential privacy")),
            "{out:?}"
        );
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

    fn assignment(run_id: u64, shard_index: u32) -> String {
        ServerMessage::Assignment(Assignment {
            run_id,
            shard_index,
            num_shards: 10,
            scheme: protocol::config::ShardScheme::Iid,
            num_examples: 20,
            label_histogram: vec![2; 10],
            images_path: "/i".into(),
            labels_path: "/l".into(),
        })
        .encode()
    }

    #[test]
    fn a_resumed_client_keeps_key_and_ledger_only_for_the_same_shard() {
        let saved = SavedClient {
            client_key: Some("k1".into()),
            run_id: Some(7),
            shard_index: Some(3),
            ledger: vec![(0.1, 1.0, 40)],
            own_ledger: vec![(0.5, 2.0, 3)],
            delta: Some(1e-5),
        };
        let resume = |saved: &SavedClient| {
            Session::new(SessionOptions {
                resume: Some(saved.clone()),
                ..Default::default()
            })
            .unwrap()
        };
        // Same shard: the hello presents the key, the ledger is kept, the shard is re-fetched.
        let mut s = resume(&saved);
        let Outgoing::Text(hello) = s.hello() else {
            panic!()
        };
        assert!(hello.contains(r#""client_key":"k1""#), "{hello}");
        let spent = s.epsilon(1e-5).unwrap();
        assert!(spent > 0.0);
        assert_eq!(s.spent(), Some((spent, 1e-5)));
        let out = s.on_text(&assignment(7, 3)).unwrap();
        assert!(matches!(out[1], Action::FetchShard { .. }));
        assert_eq!(s.epsilon(1e-5), Some(spent));
        assert_eq!(s.saved(), saved);

        // Another shard (a new run): a new privacy unit, a fresh ledger.
        let mut s = resume(&saved);
        s.on_text(&assignment(8, 3)).unwrap();
        assert_eq!(s.epsilon(1e-5), Some(0.0));
        assert_eq!(s.saved().run_id, Some(8));
        assert!(s.saved().ledger.is_empty());
        assert_eq!(
            s.saved().own_ledger,
            saved.own_ledger,
            "own data's ledger untouched"
        );

        // The same tab with its own files: the own ledger is used, the shard's is kept as it was,
        // so going back to the shard later resumes it (no reset by switching data).
        let own = Session::new(SessionOptions {
            resume: Some(saved.clone()),
            own_data: Some(tiny_data(20)),
            ..Default::default()
        })
        .unwrap();
        let own_only = RdpAccountant {
            history: saved.own_ledger.clone(),
        };
        assert_eq!(own.epsilon(1e-5), own_only.epsilon(1e-5).ok());
        let back = own.saved();
        assert_eq!((back.run_id, back.shard_index), (Some(7), Some(3)));
        assert_eq!(back.ledger, saved.ledger);
        assert!(Session::stops_client(ErrorCode::Replaced, true));
        // Replaced by a duplicate: this tab becomes a new client; its own-data ledger stays.
        let mut s = resume(&saved);
        s.forget_identity();
        let gone = s.saved();
        assert_eq!(
            (gone.client_key, gone.run_id, gone.ledger.len()),
            (None, None, 0)
        );
        assert_eq!(gone.own_ledger, saved.own_ledger);
        assert!(!Session::stops_client(ErrorCode::Internal, true));
    }
}
