//! What the client page shows, folded from its worker's reports. Plain data, so the page's
//! logic is tested natively; the component only renders a [`ClientView`].

use crate::series::finite;
use protocol::config::ShardScheme;
use protocol::messages::{Assignment, RunPhase};
use protocol::worker::{Connection, Sample, Spent, TaskLabel, WorkerToPage};
use serde::{Deserialize, Serialize};

/// Local training in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    pub server_round: u64,
    pub epoch: u32,
    pub epochs: u32,
    pub step: u64,
    pub steps_per_epoch: u64,
    pub batch_loss: f64,
    /// Web Workers sharing each step.
    pub workers: u32,
    /// Examples trained on per second so far this round.
    pub samples_per_second: Option<f64>,
}

/// The workers field: empty for the device's cores.
pub fn parse_workers(text: &str) -> Result<Option<u32>, String> {
    let max = protocol::worker::MAX_TRAINING_WORKERS;
    match text.trim() {
        "" => Ok(None),
        t => match t.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "workers is {t}: expected a whole number from 1 to {max}, or empty for this device's cores"
            )),
        },
    }
}

/// "3 120 samples/s on 2 workers", or `None` before a step was timed.
pub fn speed(samples_per_second: Option<f64>, workers: u32) -> Option<String> {
    let rate = samples_per_second.filter(|r| r.is_finite() && *r > 0.0)?;
    let workers = match workers {
        1 => "1 worker".to_string(),
        n => format!("{n} workers"),
    };
    Some(format!(
        "{} samples/s on {workers}",
        protocol::fields::grouped(rate.round() as u64)
    ))
}

impl Training {
    /// " · 3 120 samples/s on 2 workers" once a step was timed.
    pub fn speed(&self) -> String {
        speed(self.samples_per_second, self.workers).map_or(String::new(), |s| format!(" · {s}"))
    }

    /// Done fraction over all epochs, in [0, 1].
    pub fn fraction(&self) -> f64 {
        let total = self.epochs as f64 * self.steps_per_epoch as f64;
        if total == 0.0 {
            return 0.0;
        }
        let done =
            self.epoch.saturating_sub(1) as f64 * self.steps_per_epoch as f64 + self.step as f64;
        (done / total).clamp(0.0, 1.0)
    }
}

/// One round this client trained in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRow {
    pub server_round: u64,
    /// The local loss and accuracy; none for a distributed-DP step, which measures neither (it
    /// computes only clipped gradients). Not NaN: the saved table is JSON, where NaN is null.
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub accuracy: Option<f64>,
    pub epsilon: Option<f64>,
    pub seconds: f64,
    /// Examples trained on per second, and the workers that shared the steps.
    #[serde(default)]
    pub samples_per_second: Option<f64>,
    #[serde(default = "protocol::worker::one_worker")]
    pub workers: u32,
    /// The global model's test accuracy once the round closed, if the server evaluated it.
    pub global_accuracy: Option<f64>,
    /// The round closed (so no accuracy means it was not evaluated, not that it is awaited).
    #[serde(default)]
    pub closed: bool,
}

/// A row of the rounds table as the page writes it. Compared as a whole, so the table is
/// redrawn only when what it shows changes, not at every training step.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundCells {
    pub round: u64,
    pub loss: String,
    pub accuracy: String,
    pub epsilon: String,
    pub time: String,
    pub speed: String,
    pub global_accuracy: String,
}

impl RoundRow {
    /// Its cells; `latest`: no later round is listed, so one not closed may still be.
    pub fn cells(&self, latest: bool) -> RoundCells {
        RoundCells {
            round: self.server_round,
            loss: self.loss.map_or("—".into(), |l| format!("{l:.4}")),
            accuracy: self
                .accuracy
                .map_or("—".into(), |a| format!("{:.2} %", a * 100.0)),
            epsilon: self.epsilon.map_or("—".into(), |e| {
                if e.is_finite() {
                    format!("{e:.3}")
                } else {
                    "∞".into()
                }
            }),
            time: format!("{:.2} s", self.seconds),
            speed: speed(self.samples_per_second, self.workers).unwrap_or_else(|| "—".into()),
            global_accuracy: match (self.global_accuracy, self.closed, latest) {
                (Some(a), _, _) => format!("{:.2} %", a * 100.0),
                (None, true, _) => "not evaluated".into(),
                (None, false, true) => "…".into(),
                // A later round started, so this one closed; whether it was evaluated was not
                // heard (a reconnect, or a row saved by an older page).
                (None, false, false) => "—".into(),
            },
        }
    }
}

/// The training data this tab holds.
#[derive(Debug, Clone, PartialEq)]
pub struct DataInfo {
    pub num_examples: u64,
    pub label_histogram: Vec<u32>,
    pub own: bool,
    /// A few examples of each class, drawn in the sample grid.
    pub samples: Vec<Sample>,
}

/// Everything the client page renders.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientView {
    pub joined: bool,
    pub connection: Option<Connection>,
    pub client_id: Option<u64>,
    /// Rounds of the active run the server has sent this client (all its connections).
    pub rounds_taken: u64,
    /// The page restored this tab's identity after a reload and has not been welcomed since:
    /// an interrupted round was the reload's doing.
    pub reloaded: bool,
    pub assignment: Option<Assignment>,
    /// The active run's task, named by the worker.
    pub task: Option<TaskLabel>,
    /// What the run does between this client's rounds (the server's `RunState`).
    pub phase: Option<RunPhase>,
    /// The last round with secure aggregation: `(round, members)`.
    pub secure: Option<(u64, u32)>,
    /// Whether the last round this client trained in had secure aggregation.
    pub last_round_secure: Option<bool>,
    /// The last round whose result went out, and whether it was masked.
    pub sent: Option<(u64, bool)>,
    pub data: Option<DataInfo>,
    pub training: Option<Training>,
    /// Training steps seen in all (the progress bar moved this often).
    pub steps_seen: u64,
    /// The latest rounds this client trained in (at most [`MAX_ROUNDS_LISTED`]).
    pub rounds: Vec<RoundRow>,
    /// Earlier rounds of the run no longer listed.
    pub rounds_unlisted: u64,
    /// The run `rounds` belong to (kept with them across a reload).
    pub rounds_run: Option<u64>,
    /// The data changed and its ledger has not been read yet: no ε is shown rather than the
    /// previous data's.
    pub epsilon_pending: bool,
    /// ε spent on the current data (its ledger, which may come from an earlier tab or run)
    /// and the δ it is stated at.
    pub epsilon: Option<Spent>,
    /// The current data's stored ledger is unreadable: `(dataset fingerprint, why)`.
    pub blocked: Option<(Option<String>, String)>,
    /// The latest round that closed, evaluated or not.
    pub last_closed: Option<u64>,
    /// The latest round the server evaluated the global model after, and its test accuracy
    /// (a distributed-DP run evaluates only every few rounds).
    pub last_global_accuracy: Option<(u64, f64)>,
    pub finished: Option<String>,
    /// Latest problems, newest last (at most [`MAX_MESSAGES`]).
    pub messages: Vec<String>,
}

pub const MAX_MESSAGES: usize = 5;

/// Rounds the table lists (the latest): a distributed-DP run is a round per step, a thousand
/// and more, and the table is redrawn and saved to `sessionStorage` whenever it changes.
pub const MAX_ROUNDS_LISTED: usize = 100;

/// What the Data card shows. Built from the view and compared as a whole, so the card (and
/// its canvases) is redrawn only when it changes — not at every training step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataCard {
    pub task_line: Option<String>,
    pub data_line: String,
    /// `(count, class name)` by label, when data is loaded.
    pub histogram: Option<Vec<(u32, String)>>,
    pub samples: Vec<SampleRow>,
}

/// One row of the sample grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub label: usize,
    pub name: String,
    /// Examples of this class in the data.
    pub count: u32,
    /// Pixels of each sample shown.
    pub samples: Vec<Vec<u8>>,
}

impl SampleRow {
    /// The row's heading: label and name ("0 T-shirt/top"), or the name alone when it is the
    /// label (digits).
    pub fn heading(&self) -> String {
        if self.name == self.label.to_string() {
            self.name.clone()
        } else {
            format!("{} {}", self.label, self.name)
        }
    }
}

impl ClientView {
    /// Folds one worker report into the view.
    pub fn apply(&mut self, ev: WorkerToPage) {
        match ev {
            WorkerToPage::Ready | WorkerToPage::Save { .. } => {}
            WorkerToPage::Connection(c) => {
                if matches!(c, Connection::Stopped { .. }) {
                    self.joined = false;
                    self.training = None;
                }
                self.connection = Some(c);
            }
            WorkerToPage::Welcome {
                client_id,
                rounds_taken,
                interrupted_round,
            } => {
                self.client_id = Some(client_id);
                self.rounds_taken = rounds_taken;
                if let Some(r) = interrupted_round {
                    let cause = if self.reloaded {
                        "the reload"
                    } else {
                        "the lost connection"
                    };
                    self.note(format!(
                        "round {r} was interrupted by {cause}: nothing of it was sent, and the server counts it as failed"
                    ));
                }
                self.reloaded = false;
            }
            WorkerToPage::Secure {
                server_round,
                members,
            } => self.secure = Some((server_round, members)),
            WorkerToPage::Sent {
                server_round,
                masked,
            } => self.sent = Some((server_round, masked)),
            WorkerToPage::RunState { run_id, phase } => {
                self.set_rounds_run(run_id);
                self.phase = Some(phase);
            }
            WorkerToPage::Task(task) => self.task = Some(task),
            WorkerToPage::Assigned(a) => self.on_assigned(a),
            WorkerToPage::Data {
                num_examples,
                label_histogram,
                own,
                samples,
            } => {
                self.data = Some(DataInfo {
                    num_examples,
                    label_histogram,
                    own,
                    samples,
                })
            }
            WorkerToPage::TrainStarted {
                server_round,
                epochs,
                steps_per_epoch,
                workers,
            } => {
                self.last_round_secure =
                    Some(self.secure.is_some_and(|(round, _)| round == server_round));
                self.training = Some(Training {
                    server_round,
                    epoch: 1,
                    epochs,
                    step: 0,
                    steps_per_epoch,
                    batch_loss: f64::NAN,
                    workers,
                    samples_per_second: None,
                })
            }
            WorkerToPage::Progress {
                server_round,
                epoch,
                epochs,
                step,
                steps_per_epoch,
                batch_loss,
                samples_per_second,
            } => {
                self.steps_seen += 1;
                let workers = self.training.as_ref().map_or(1, |t| t.workers);
                self.training = Some(Training {
                    server_round,
                    epoch,
                    epochs,
                    step,
                    steps_per_epoch,
                    batch_loss,
                    workers,
                    samples_per_second,
                });
            }
            WorkerToPage::Trained {
                server_round,
                metrics,
                delta,
                seconds,
                samples_per_second,
                workers,
            } => {
                if let Some(t) = self.training.as_mut() {
                    t.step = t.steps_per_epoch;
                    t.epoch = t.epochs;
                }
                if let (Some(e), Some(delta)) = (metrics.epsilon, delta) {
                    self.epsilon_pending = false;
                    self.epsilon = Some(Spent {
                        epsilon: Some(e),
                        delta,
                        collusion: None,
                    });
                }
                self.rounds.retain(|r| r.server_round != server_round);
                self.rounds.push(RoundRow {
                    server_round,
                    loss: finite(metrics.loss),
                    accuracy: finite(metrics.accuracy),
                    epsilon: metrics.epsilon,
                    seconds,
                    samples_per_second,
                    workers,
                    global_accuracy: None,
                    closed: false,
                });
                self.keep_latest_rounds();
            }
            WorkerToPage::TrainFailed {
                server_round,
                reason,
            } => {
                self.training = None;
                self.note(format!("round {server_round} not trained: {reason}"));
            }
            WorkerToPage::Privacy {
                spent,
                dataset,
                blocked,
            } => {
                self.epsilon_pending = false;
                self.epsilon = spent;
                self.blocked = blocked.map(|reason| (dataset, reason));
            }
            WorkerToPage::RoundClosed {
                server_round,
                test_accuracy,
            } => {
                // The round is over: the bar empties until the next one starts.
                self.training = None;
                self.last_closed = Some(server_round);
                // NaN: the server did not evaluate after this round.
                let measured = finite(test_accuracy);
                if let Some(a) = measured {
                    self.last_global_accuracy = Some((server_round, a));
                }
                if let Some(r) = self
                    .rounds
                    .iter_mut()
                    .find(|r| r.server_round == server_round)
                {
                    r.closed = true;
                    r.global_accuracy = measured;
                }
            }
            WorkerToPage::RunFinished { reason } => {
                self.training = None;
                self.phase = None;
                self.finished = Some(reason);
            }
            WorkerToPage::Error { message, .. } => self.note(message),
        }
    }

    /// A shard of another run (or another shard): its rounds are listed from scratch and its
    /// ε is read from its own ledger (the worker reports it once the files are in).
    fn on_assigned(&mut self, a: Assignment) {
        let same_shard = self
            .assignment
            .as_ref()
            .is_some_and(|old| (old.run_id, old.shard_index) == (a.run_id, a.shard_index));
        self.set_rounds_run(a.run_id);
        if !same_shard && self.data.as_ref().is_none_or(|d| !d.own) {
            self.epsilon_pending = true;
        }
        if self.assignment.is_some() && !same_shard {
            self.finished = None;
            self.last_closed = None;
            self.last_global_accuracy = None;
            if self.data.as_ref().is_some_and(|d| !d.own) {
                self.data = None;
            }
        }
        self.assignment = Some(a);
    }

    /// What is shown is of `run_id` from now on: another run's rounds, state, count, task and
    /// messages go (the worker names the new run's task, and says what is wrong with it, after
    /// saying the run changed).
    fn set_rounds_run(&mut self, run_id: u64) {
        if self.rounds_run.is_some_and(|run| run != run_id) {
            self.task = None;
            self.messages.clear();
            self.rounds.clear();
            self.rounds_unlisted = 0;
            self.phase = None;
            self.rounds_taken = 0;
            self.secure = None;
            self.last_round_secure = None;
        }
        self.rounds_run = Some(run_id);
    }

    /// The rounds table as kept in the tab's `sessionStorage` (a reload shows it again):
    /// `(run, rows, rounds no longer listed)`.
    pub fn saved_rounds(&self) -> Option<String> {
        let run = self.rounds_run?;
        serde_json::to_string(&(run, &self.rounds, self.rounds_unlisted)).ok()
    }

    /// The rounds table a reloaded tab kept (ignored if it does not parse); an older page
    /// saved `(run, rows)`.
    pub fn restore_rounds(&mut self, saved: &str) {
        let parsed = serde_json::from_str::<(u64, Vec<RoundRow>, u64)>(saved).or_else(|_| {
            serde_json::from_str::<(u64, Vec<RoundRow>)>(saved).map(|(run, rows)| (run, rows, 0))
        });
        if let Ok((run, rounds, unlisted)) = parsed {
            self.rounds_run = Some(run);
            self.rounds = rounds;
            self.rounds_unlisted = unlisted;
            self.keep_latest_rounds();
        }
    }

    fn keep_latest_rounds(&mut self) {
        let extra = self.rounds.len().saturating_sub(MAX_ROUNDS_LISTED);
        self.rounds.drain(..extra);
        self.rounds_unlisted = self.rounds_unlisted.saturating_add(extra as u64);
    }

    /// The table's rows as the page writes them, the latest first.
    pub fn round_cells(&self) -> Vec<RoundCells> {
        let latest = self.rounds.iter().map(|r| r.server_round).max();
        self.rounds
            .iter()
            .rev()
            .map(|r| r.cells(Some(r.server_round) == latest))
            .collect()
    }

    /// Said under the table once it no longer lists every round this client trained in.
    pub fn rounds_caption(&self) -> Option<String> {
        (self.rounds_unlisted > 0).then(|| {
            format!(
                "The latest {MAX_ROUNDS_LISTED} rounds this client trained in are listed; {} earlier ones are not.",
                self.rounds_unlisted
            )
        })
    }

    fn note(&mut self, message: String) {
        self.messages.push(message);
        let extra = self.messages.len().saturating_sub(MAX_MESSAGES);
        self.messages.drain(..extra);
    }

    /// One line for the privacy badge.
    pub fn epsilon_text(&self) -> String {
        if self.blocked.is_some() {
            // Never "0": what was spent on these records is unknown.
            return "ε unknown: the stored ledger of this data is unreadable".into();
        }
        if self.epsilon_pending {
            // Not the previous data's ε, nor 0: the ledger of these records is being read.
            return "reading this data's ledger…".into();
        }
        let Some(spent) = self.epsilon else {
            return "ε = 0 (nothing released yet)".into();
        };
        let delta = spent.delta;
        let main = match spent.epsilon {
            Some(e) if e.is_infinite() => {
                return format!("ε = ∞ (δ = {delta:e}): these records were trained on without DP");
            }
            Some(e) => format!("ε = {e:.3} (δ = {delta:e})"),
            None => format!("ε unknown (δ = {delta:e})"),
        };
        match spent.collusion {
            None => main,
            Some(c) => {
                let worst = c.epsilon.map_or("unknown".into(), |w| format!("{w:.1}"));
                format!(
                    "{main} while the server follows the protocol and at least {} clients of each distributed round are honest · ε = {worst} whatever the server and the other clients do (this client's own noise share alone)",
                    c.contributors
                )
            }
        }
    }

    /// What the tab trains on, or why it has nothing yet.
    pub fn data_line(&self) -> String {
        if let Some(d) = self.data.as_ref().filter(|d| d.own) {
            return format!("your own files · {} examples", d.num_examples);
        }
        if let Some(a) = &self.assignment {
            let scheme = match a.scheme {
                ShardScheme::Iid => "IID".to_string(),
                ShardScheme::Dirichlet { alpha } => format!("Dirichlet α = {alpha}"),
            };
            return format!(
                "run {} · shard {} of {} ({scheme}) · {} examples",
                a.run_id,
                a.shard_index + 1,
                a.num_shards,
                a.num_examples
            );
        }
        match (&self.connection, &self.finished) {
            (Some(Connection::Connected), Some(reason)) => {
                format!("the run finished ({reason}): waiting for the admin to start another")
            }
            (Some(Connection::Connected), None) => {
                "no run yet: waiting for the admin to start one".into()
            }
            _ => "no data yet: join to get a shard".into(),
        }
    }

    /// The run's task in one line: its name and classes.
    pub fn task_line(&self) -> Option<String> {
        let t = self.task.as_ref()?;
        Some(format!(
            "Task: {} · {} classes: {}",
            t.name,
            t.classes.len(),
            t.classes.join(", ")
        ))
    }

    /// A class's name in the run's task, or its label when the task is not known yet.
    pub fn class_name(&self, label: usize) -> String {
        self.task
            .as_ref()
            .and_then(|t| t.classes.get(label).cloned())
            .unwrap_or_else(|| label.to_string())
    }

    /// The Data card's content.
    pub fn data_card(&self) -> DataCard {
        DataCard {
            task_line: self.task_line(),
            data_line: self.data_line(),
            histogram: self.data.as_ref().map(|d| {
                d.label_histogram
                    .iter()
                    .enumerate()
                    .map(|(label, &n)| (n, self.class_name(label)))
                    .collect()
            }),
            samples: self.sample_rows(),
        }
    }

    /// The sample grid: for each class with examples, its label, name, count and samples.
    pub fn sample_rows(&self) -> Vec<SampleRow> {
        let Some(d) = &self.data else {
            return Vec::new();
        };
        d.label_histogram
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(label, &count)| SampleRow {
                label,
                name: self.class_name(label),
                count,
                samples: d
                    .samples
                    .iter()
                    .filter(|s| s.label as usize == label)
                    .map(|s| s.pixels.clone())
                    .collect(),
            })
            .collect()
    }

    /// The line under the progress bar: the step of the round being trained, or what the tab
    /// waits for.
    pub fn training_line(&self) -> String {
        if let Some(t) = &self.training
            && let Some((round, masked)) = self.sent.filter(|(r, _)| *r == t.server_round)
        {
            let what = if masked {
                "masked update"
            } else {
                "update (DP-noised)"
            };
            return format!("round {round} · {what} sent: waiting for the round to close");
        }
        if let Some(t) = &self.training {
            let loss = if t.batch_loss.is_finite() {
                format!("{:.4}", t.batch_loss)
            } else {
                "…".into()
            };
            return format!(
                "round {} · epoch {}/{} · step {}/{} · batch loss {loss}{}",
                t.server_round,
                t.epoch,
                t.epochs,
                t.step,
                t.steps_per_epoch,
                t.speed()
            );
        }
        if self.finished.is_some() {
            return "no more rounds: the run is over".into();
        }
        match (self.phase, self.last_closed) {
            (Some(RunPhase::Paused), _) => {
                "paused by the admin: no new round starts until the run is resumed".into()
            }
            (Some(RunPhase::Waiting { needed }), _) => {
                format!("waiting for {needed} clients that can train")
            }
            (_, Some(round)) => format!("round {round} closed: waiting for the next round"),
            (_, None) => "waiting for a round".into(),
        }
    }

    /// What the server sees of this client's updates.
    pub fn secure_text(&self) -> String {
        match (self.last_round_secure, self.secure) {
            (Some(true), Some((_, members))) => format!(
                "secure aggregation: on — the server sees only the sum of {members} clients' updates"
            ),
            (Some(false), _) => {
                "secure aggregation: off — the server sees this client's update (with its DP noise)"
                    .into()
            }
            _ => "secure aggregation: known at the first round".into(),
        }
    }

    /// One line for the connection badge.
    pub fn connection_text(&self) -> String {
        match &self.connection {
            None => "not joined".into(),
            Some(Connection::Connecting { server }) => format!("connecting to {server}…"),
            Some(Connection::Connected) => "connected".into(),
            Some(Connection::Reconnecting {
                attempt,
                retry_in_ms,
                reason,
            }) => format!(
                "reconnecting (attempt {attempt}, in {:.1} s): {reason}",
                *retry_in_ms as f64 / 1000.0
            ),
            Some(Connection::Stopped { reason }) => format!("stopped: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::config::FitMetrics;

    /// Round 1 starts with `epochs` epochs and reaches `(epoch, step)`.
    fn train_round_1(v: &mut ClientView, epochs: u32, at: (u32, u64), steps_per_epoch: u64) {
        v.apply(WorkerToPage::TrainStarted {
            server_round: 1,
            epochs,
            steps_per_epoch,
            workers: 2,
        });
        v.apply(WorkerToPage::Progress {
            server_round: 1,
            epoch: at.0,
            epochs,
            step: at.1,
            steps_per_epoch,
            batch_loss: 0.5,
            samples_per_second: Some(3120.4),
        });
    }

    fn assignment(run_id: u64) -> Assignment {
        Assignment {
            task: protocol::messages::TaskSpec {
                id: "mnist".into(),
                model_params: 12_810,
                model_signature: "0123456789abcdef".into(),
            },
            run_id,
            shard_index: 1,
            num_shards: 10,
            scheme: ShardScheme::Iid,
            num_examples: 6000,
            label_histogram: vec![600; 10],
            images_path: String::new(),
            labels_path: String::new(),
        }
    }

    #[test]
    fn a_round_moves_the_bar_and_records_epsilon() {
        let mut v = ClientView::default();
        assert_eq!(v.data_line(), "no data yet: join to get a shard");
        v.apply(WorkerToPage::Connection(Connection::Connected));
        assert_eq!(
            v.data_line(),
            "no run yet: waiting for the admin to start one"
        );
        v.apply(WorkerToPage::Assigned(assignment(1)));
        assert_eq!(v.data_line(), "run 1 · shard 2 of 10 (IID) · 6000 examples");
        train_round_1(&mut v, 2, (2, 5), 10);
        assert_eq!(v.training.as_ref().unwrap().fraction(), 0.75);
        assert_eq!(v.steps_seen, 1);
        assert_eq!(
            v.training_line(),
            "round 1 · epoch 2/2 · step 5/10 · batch loss 0.5000 · 3\u{a0}120 samples/s on 2 workers"
        );
        let metrics = FitMetrics {
            loss: 0.4,
            accuracy: 0.9,
            epsilon: Some(0.7),
            steps: 20,
            clipped_fraction: 0.5,
        };
        v.apply(WorkerToPage::Trained {
            server_round: 1,
            metrics,
            delta: Some(1e-5),
            seconds: 3.0,
            samples_per_second: Some(4000.0),
            workers: 2,
        });
        assert_eq!(v.training.as_ref().unwrap().fraction(), 1.0);
        let row = &v.rounds[0];
        assert_eq!(
            speed(row.samples_per_second, row.workers).as_deref(),
            Some("4\u{a0}000 samples/s on 2 workers")
        );
        assert_eq!(
            v.epsilon,
            Some(Spent {
                epsilon: Some(0.7),
                delta: 1e-5,
                collusion: None,
            })
        );
        assert_eq!(v.epsilon_text(), "ε = 0.700 (δ = 1e-5)");
        v.apply(WorkerToPage::RoundClosed {
            server_round: 1,
            test_accuracy: 0.91,
        });
        assert_eq!(v.rounds[0].global_accuracy, Some(0.91));
        assert_eq!(v.connection_text(), "connected");
        // The round is over: the bar empties and the tab says what it waits for.
        assert!(v.training.is_none());
        assert_eq!(
            v.training_line(),
            "round 1 closed: waiting for the next round"
        );
        v.apply(WorkerToPage::RunFinished {
            reason: "all 1 rounds done".into(),
        });
        assert_eq!(v.training_line(), "no more rounds: the run is over");
    }

    #[test]
    fn epsilon_is_what_the_worker_reports() {
        let mut v = ClientView::default();
        let spent = Spent {
            epsilon: Some(1.5),
            delta: 1e-5,
            collusion: None,
        };
        v.apply(WorkerToPage::Privacy {
            spent: Some(spent),
            dataset: Some("fp1".into()),
            blocked: None,
        });
        assert_eq!(v.epsilon, Some(spent), "a resumed ledger shows at once");
        v.apply(WorkerToPage::Assigned(assignment(2)));
        v.apply(WorkerToPage::Privacy {
            spent: None,
            dataset: Some("fp2".into()),
            blocked: Some("checksum".into()),
        });
        assert_eq!(v.epsilon, None, "another shard: its own ledger");
        assert_eq!(v.blocked, Some((Some("fp2".into()), "checksum".into())));
        assert!(
            v.epsilon_text().starts_with("ε unknown"),
            "never 0 when blocked"
        );
        v.apply(WorkerToPage::Privacy {
            spent: Some(Spent {
                epsilon: Some(f64::INFINITY),
                delta: 1e-5,
                collusion: None,
            }),
            dataset: None,
            blocked: None,
        });
        assert!(
            v.epsilon_text().starts_with("ε = ∞"),
            "{}",
            v.epsilon_text()
        );
        // Distributed rounds: ε under the run's assumption, then the worst case, both named.
        v.apply(WorkerToPage::Privacy {
            spent: Some(Spent {
                epsilon: Some(2.1),
                delta: 1e-5,
                collusion: Some(protocol::worker::Collusion {
                    epsilon: Some(48.04),
                    contributors: 7,
                }),
            }),
            dataset: None,
            blocked: None,
        });
        assert_eq!(
            v.epsilon_text(),
            "ε = 2.100 (δ = 1e-5) while the server follows the protocol and at least 7 clients of each distributed round are honest · ε = 48.0 whatever the server and the other clients do (this client's own noise share alone)"
        );
    }

    #[test]
    fn the_table_keeps_the_latest_rounds_of_a_long_run() {
        let trained = |server_round| WorkerToPage::Trained {
            server_round,
            metrics: FitMetrics {
                loss: f64::NAN,
                accuracy: f64::NAN,
                epsilon: Some(1.0),
                steps: 1,
                clipped_fraction: 0.5,
            },
            delta: Some(1e-5),
            seconds: 0.2,
            samples_per_second: Some(1_000.0),
            workers: 2,
        };
        let mut v = ClientView::default();
        v.apply(WorkerToPage::Assigned(assignment(1)));
        for round in 1..=100 {
            v.apply(trained(round));
        }
        assert_eq!(v.rounds_caption(), None, "every round is listed");
        // A distributed run: a round per step, far more than a table can show at a glance.
        for round in 101..=1_172 {
            v.apply(trained(round));
        }
        let listed: Vec<u64> = v.rounds.iter().map(|r| r.server_round).collect();
        assert_eq!(listed, (1_073..=1_172).collect::<Vec<_>>());
        assert_eq!(
            v.rounds_caption().as_deref(),
            Some(
                "The latest 100 rounds this client trained in are listed; 1072 earlier ones are not."
            )
        );
        // The global accuracy still lands on its row; a round closed without an evaluation
        // (a distributed run evaluates every few rounds) says so, not "NaN %".
        let global = |v: &ClientView| -> Vec<String> {
            v.round_cells()[..3]
                .iter()
                .map(|c| c.global_accuracy.clone())
                .collect()
        };
        v.apply(WorkerToPage::RoundClosed {
            server_round: 1_171,
            test_accuracy: 0.9,
        });
        // Round 1 170's closing was not heard: it closed (1 171 started), evaluated or not.
        assert_eq!(global(&v), ["…", "90.00 %", "—"]);
        v.apply(WorkerToPage::RoundClosed {
            server_round: 1_172,
            test_accuracy: f64::NAN,
        });
        assert_eq!(global(&v), ["not evaluated", "90.00 %", "—"]);
        assert_eq!(v.last_global_accuracy, Some((1_171, 0.9)));
        assert_eq!(
            v.training_line(),
            "round 1172 closed: waiting for the next round"
        );
        // A distributed step's row (no loss, no accuracy) survives a reload: saved with NaN,
        // it was JSON null and the whole table failed to restore.
        assert_eq!((v.rounds[0].loss, v.rounds[0].accuracy), (None, None));
        let mut reloaded = ClientView::default();
        reloaded.restore_rounds(&v.saved_rounds().unwrap());
        assert_eq!(reloaded.rounds, v.rounds);
        assert_eq!(reloaded.rounds_caption(), v.rounds_caption());
        // A table saved by an older page, which kept every row: cut to the latest on restore.
        let rows: Vec<RoundRow> = (1..=1_172)
            .map(|server_round| RoundRow {
                server_round,
                ..v.rounds[0].clone()
            })
            .collect();
        let mut restored = ClientView::default();
        restored.restore_rounds(&serde_json::to_string(&(1u64, &rows)).unwrap());
        assert_eq!(restored.rounds.len(), MAX_ROUNDS_LISTED);
        assert_eq!(restored.rounds[0].server_round, 1_073);
        assert_eq!(restored.rounds_caption(), v.rounds_caption());
    }

    #[test]
    fn rows_saved_by_the_previous_page_restore() {
        // Its distributed rows: NaN loss and accuracy saved as null, no `closed`.
        let saved = r#"[1,[{"server_round":1,"loss":null,"accuracy":null,"epsilon":2.0,"seconds":0.1,"global_accuracy":null},{"server_round":2,"loss":0.5,"accuracy":0.9,"epsilon":2.1,"seconds":0.1,"global_accuracy":null}]]"#;
        let mut v = ClientView::default();
        v.restore_rounds(saved);
        let cells = v.round_cells();
        let shown: Vec<(&str, &str, &str)> = cells
            .iter()
            .map(|c| {
                (
                    c.loss.as_str(),
                    c.accuracy.as_str(),
                    c.global_accuracy.as_str(),
                )
            })
            .collect();
        assert_eq!(shown, [("0.5000", "90.00 %", "…"), ("—", "—", "—")]);
        assert_eq!(v.rounds_caption(), None);
    }

    #[test]
    fn a_reloaded_tab_keeps_its_rounds_and_hears_what_the_reload_cost() {
        let mut before = ClientView::default();
        before.apply(WorkerToPage::Assigned(assignment(1)));
        before.apply(WorkerToPage::Trained {
            server_round: 1,
            metrics: FitMetrics {
                loss: 0.4,
                accuracy: 0.9,
                epsilon: Some(0.7),
                steps: 20,
                clipped_fraction: 0.5,
            },
            delta: Some(1e-5),
            seconds: 3.0,
            samples_per_second: None,
            workers: 1,
        });
        let saved = before.saved_rounds().unwrap();
        // Rows saved by an older page (no speed) still restore.
        let old = saved.replace(",\"samples_per_second\":null,\"workers\":1", "");
        assert!(!old.contains("workers"), "{old}");
        let mut restored = ClientView::default();
        restored.restore_rounds(&old);
        assert_eq!(restored.rounds, before.rounds);
        // The reloaded page restores the table before it is welcomed again.
        let mut v = ClientView {
            reloaded: true,
            ..ClientView::default()
        };
        v.restore_rounds(&saved);
        assert_eq!(v.rounds, before.rounds);
        v.apply(WorkerToPage::Welcome {
            client_id: 1,
            rounds_taken: 2,
            interrupted_round: Some(2),
        });
        assert_eq!(
            v.messages,
            [
                "round 2 was interrupted by the reload: nothing of it was sent, and the server counts it as failed"
            ]
        );
        assert_eq!(v.rounds_taken, 2);
        // The same run: the rows stay; a later lost connection is not called a reload.
        v.apply(WorkerToPage::Assigned(assignment(1)));
        assert_eq!(v.rounds.len(), 1);
        v.apply(WorkerToPage::Welcome {
            client_id: 1,
            rounds_taken: 3,
            interrupted_round: Some(3),
        });
        assert!(
            v.messages[1].contains("by the lost connection"),
            "{:?}",
            v.messages
        );
        // Another run: its rows start empty, and the old run's state and count are gone.
        v.apply(WorkerToPage::RunState {
            run_id: 1,
            phase: RunPhase::Waiting { needed: 9 },
        });
        v.apply(WorkerToPage::RunFinished {
            reason: "stopped".into(),
        });
        assert_eq!(v.phase, None);
        v.apply(WorkerToPage::Assigned(assignment(2)));
        assert!(v.rounds.is_empty() && v.rounds_taken == 0);
        assert_eq!(v.training_line(), "waiting for a round", "not run 1's wait");
        v.restore_rounds("not json");
        assert!(v.rounds.is_empty(), "a broken saved table is ignored");
    }

    #[test]
    fn the_tab_says_what_the_run_waits_for_and_never_shows_another_datas_epsilon() {
        let mut v = ClientView::default();
        v.apply(WorkerToPage::Connection(Connection::Connected));
        v.apply(WorkerToPage::Privacy {
            spent: Some(Spent {
                epsilon: Some(2.8),
                delta: 1e-5,
                collusion: None,
            }),
            dataset: Some("run-1-shard".into()),
            blocked: None,
        });
        v.apply(WorkerToPage::Assigned(assignment(2)));
        assert_eq!(
            v.epsilon_text(),
            "reading this data's ledger…",
            "not the run-1 shard's ε while the new shard's ledger is read"
        );
        v.apply(WorkerToPage::Privacy {
            spent: None,
            dataset: Some("run-2-shard".into()),
            blocked: None,
        });
        assert_eq!(v.epsilon_text(), "ε = 0 (nothing released yet)");
        v.apply(WorkerToPage::RunState {
            run_id: 2,
            phase: RunPhase::Waiting { needed: 4 },
        });
        assert_eq!(v.training_line(), "waiting for 4 clients that can train");
        v.apply(WorkerToPage::RunState {
            run_id: 2,
            phase: RunPhase::Paused,
        });
        assert_eq!(
            v.training_line(),
            "paused by the admin: no new round starts until the run is resumed"
        );
        // A round in flight when the run was paused still shows its progress.
        v.apply(WorkerToPage::TrainStarted {
            server_round: 1,
            epochs: 1,
            steps_per_epoch: 10,
            workers: 1,
        });
        assert!(v.training_line().starts_with("round 1 · epoch 1/1"));
        v.apply(WorkerToPage::RoundClosed {
            server_round: 1,
            test_accuracy: 0.5,
        });
        assert!(v.training_line().starts_with("paused by the admin"));
        v.apply(WorkerToPage::RunState {
            run_id: 2,
            phase: RunPhase::Running,
        });
        assert_eq!(
            v.training_line(),
            "round 1 closed: waiting for the next round"
        );
    }

    #[test]
    fn the_task_names_the_classes_of_the_histogram_and_the_sample_grid() {
        let mut v = ClientView::default();
        let sample = |label: u8| Sample {
            label,
            pixels: vec![label; 784],
        };
        v.apply(WorkerToPage::Data {
            num_examples: 5,
            label_histogram: vec![2, 0, 3, 0, 0, 0, 0, 0, 0, 0],
            own: true,
            samples: vec![sample(0), sample(0), sample(2)],
        });
        // Before the run names its task: labels, and no task line.
        assert_eq!(v.task_line(), None);
        assert_eq!(v.sample_rows()[0].heading(), "0");
        v.apply(WorkerToPage::Task(TaskLabel {
            id: "fashion-mnist".into(),
            name: "Fashion-MNIST".into(),
            classes: ["T-shirt/top", "Trouser", "Pullover"]
                .map(String::from)
                .to_vec(),
        }));
        assert_eq!(
            v.task_line().unwrap(),
            "Task: Fashion-MNIST · 3 classes: T-shirt/top, Trouser, Pullover"
        );
        // One row per class present, with its count and its own samples only.
        let rows = v.sample_rows();
        assert_eq!(
            rows.iter()
                .map(|r| (r.label, r.name.as_str(), r.count, r.samples.len()))
                .collect::<Vec<_>>(),
            [(0, "T-shirt/top", 2, 2), (2, "Pullover", 3, 1)]
        );
        assert!(rows[1].samples[0].iter().all(|&p| p == 2));
        assert_eq!(rows[1].heading(), "2 Pullover");
        // The Data card names the bars too, and a training step leaves it as it is (the page
        // redraws it, canvases included, only when it changes).
        let card = v.data_card();
        assert_eq!(card.histogram.as_ref().unwrap()[2], (3, "Pullover".into()));
        train_round_1(&mut v, 1, (1, 1), 3);
        assert_eq!(v.data_card(), card);
        // A label past the task's classes (a page behind its worker) shows as its number.
        assert_eq!(v.class_name(7), "7");
        // Another run forgets the task until the worker names the new one (a run of a task
        // this page does not know is never shown under the old name).
        v.apply(WorkerToPage::RunState {
            run_id: 1,
            phase: RunPhase::Running,
        });
        assert!(v.task.is_some());
        v.apply(WorkerToPage::Error {
            message: "round 2 was interrupted by the reload".into(),
            fatal: false,
        });
        v.apply(WorkerToPage::RunState {
            run_id: 2,
            phase: RunPhase::Running,
        });
        assert_eq!(v.task_line(), None);
        assert!(v.messages.is_empty(), "run 1's messages are gone");
    }

    #[test]
    fn a_new_run_clears_the_old_shard_and_messages_are_bounded() {
        let mut v = ClientView::default();
        v.apply(WorkerToPage::Assigned(assignment(1)));
        v.apply(WorkerToPage::Data {
            num_examples: 6000,
            label_histogram: vec![600; 10],
            own: false,
            samples: Vec::new(),
        });
        v.apply(WorkerToPage::RunFinished {
            reason: "done".into(),
        });
        v.apply(WorkerToPage::Assigned(assignment(1)));
        assert!(v.data.is_some() && v.finished.is_some(), "same shard: kept");
        v.apply(WorkerToPage::Assigned(assignment(2)));
        assert!(v.data.is_none() && v.finished.is_none());
        for i in 0..8 {
            v.apply(WorkerToPage::Error {
                message: format!("e{i}"),
                fatal: false,
            });
        }
        assert_eq!(v.messages, ["e3", "e4", "e5", "e6", "e7"]);
        v.apply(WorkerToPage::Connection(Connection::Stopped {
            reason: "left".into(),
        }));
        assert_eq!(v.connection_text(), "stopped: left");
    }

    #[test]
    fn the_workers_field_takes_1_to_16_or_nothing() {
        assert_eq!(parse_workers(""), Ok(None));
        assert_eq!(parse_workers(" 4 "), Ok(Some(4)));
        assert_eq!(parse_workers("16"), Ok(Some(16)));
        for bad in ["0", "17", "-2", "2.5", "many"] {
            let e = parse_workers(bad).expect_err(bad);
            assert_eq!(
                e,
                format!(
                    "workers is {bad}: expected a whole number from 1 to 16, or empty for this device's cores"
                )
            );
        }
    }
}
