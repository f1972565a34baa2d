//! Runs: creation (validated, with its initial model stored), start/pause/resume/stop, history, the end.

use protocol::config::Batching;
use protocol::fields;

use super::*;

impl Coordinator {
    pub(super) fn create_run(&mut self, config: RunConfig) -> Result<RunSummary, AdminError> {
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
        let task = learning::task::find(&config.task).map_err(|e| {
            AdminError::Invalid(
                fields::TASK.error_because(format!("{:?}", e.given), format!("one of {}", e.known)),
            )
        })?;
        let shards = match (&config.shards, &self.data) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(AdminError::Invalid(fields::SHARDS.error_because(
                    "on",
                    "off: this server was started without data sets, so clients must bring their own data".into(),
                )));
            }
            (Some(cfg), Some(data)) => Some(data.shards(task, *cfg).map_err(AdminError::Invalid)?),
        };
        if let Some(split) = &shards {
            let sizes: std::collections::BTreeSet<u64> =
                split.indices.iter().map(|part| part.len() as u64).collect();
            check_shard_sizes(&config, &sizes).map_err(AdminError::Invalid)?;
        }
        let initial = task.model().init(&burn::tensor::Device::flex()).to_flat();
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
        (self.accounting_due, self.prepare_failed) = (true, false);
        self.run = Some(ActiveRun {
            task,
            strategy: build_strategy(&config),
            summary: summary.clone(),
            global: Arc::new(initial),
            clients: HashMap::new(),
            shards,
            round: None,
            next_attempt: 1,
            refused: Default::default(),
            bench: Bench::default(),
            departed: HashMap::new(),
            phase: None,
            kept_keys: None,
            spent: Default::default(),
        });
        // Keys of the previous run that are gone are not honoured any more: nor are their ids.
        let connected: std::collections::HashSet<&String> =
            self.clients.values().map(|c| &c.key).collect();
        self.public_ids.retain(|key, _| connected.contains(key));
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            self.assign(id);
        }
        self.publish(Event::RunCreated {
            run: summary.clone(),
        });
        Ok(summary)
    }

    pub(super) fn control(
        &mut self,
        run_id: u64,
        action: RunAction,
    ) -> Result<RunSummary, AdminError> {
        let run = match &mut self.run {
            Some(run) if run.id() == run_id => run,
            _ => {
                return match self.store.run(run_id)? {
                    Some(r) => Err(AdminError::Conflict(format!(
                        "run {run_id} is {} and no longer the active run: only the latest run can be controlled",
                        r.status.as_str()
                    ))),
                    None => Err(AdminError::NotFound(format!("no run {run_id}"))),
                };
            }
        };
        use RunStatus as S;
        // A started or resumed run's clients may need σ.
        self.accounting_due = true;
        let next = match (run.summary.status, action) {
            (S::Created, RunAction::Start) => S::Running,
            (S::Running, RunAction::Pause) => S::Paused,
            (S::Paused, RunAction::Resume) => S::Running,
            (s, RunAction::Stop) if !s.is_over() => S::Stopped,
            (s, a) => {
                return Err(AdminError::Conflict(format!(
                    "run {run_id} is {}: cannot {} it",
                    s.as_str(),
                    a.as_str()
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
        match (next, reason) {
            (_, Some(r)) => self.broadcast_run_finished(run_id, r),
            (S::Paused, None) => self.set_phase(RunPhase::Paused),
            // Then `maybe_start_round` says whether it waits for clients.
            (_, None) => self.set_phase(RunPhase::Running),
        }
        Ok(summary)
    }

    /// Tells every client what the active run now does, if that changed.
    pub(super) fn set_phase(&mut self, phase: RunPhase) {
        let Some(run) = self.run.as_mut().filter(|r| r.phase != Some(phase)) else {
            return;
        };
        run.phase = Some(phase);
        let msg = ServerMessage::RunState {
            run_id: run.id(),
            task: run.task.spec(),
            phase,
        };
        for &id in self.clients.keys() {
            self.send_lossy(id, &msg);
        }
    }

    pub(super) fn broadcast_run_finished(&mut self, run_id: u64, reason: &str) {
        let msg = ServerMessage::RunFinished {
            run_id,
            reason: reason.into(),
        };
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            self.send_msg(id, &msg);
        }
    }

    /// A run's history as stored; its ledger's ε are computed by the caller, off this task.
    pub(super) fn history(&self, run_id: u64) -> Result<HistoryParts, AdminError> {
        let mut run = self
            .store
            .run(run_id)?
            .ok_or_else(|| AdminError::NotFound(format!("no run {run_id}")))?;
        if let Some(active) = self.run.as_ref().filter(|r| r.id() == run_id) {
            run.status = active.summary.status;
        }
        Ok(HistoryParts {
            rounds: self.store.rounds(run_id)?,
            clients: self.store.clients(run_id)?,
            run,
        })
    }

    pub(super) fn finish_run(&mut self, run_id: u64, reason: &str) {
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

/// Maps an accountant error to a config field error (σ unreachable for a shard size).
/// What every client of a shard size would be asked must be something it can do: a train
/// config it accepts (steps bounded), a δ below 1/n (clients refuse others), and with a target
/// ε some σ that reaches it. Said at creation, not mid-run.
fn check_shard_sizes(
    config: &RunConfig,
    sizes: &std::collections::BTreeSet<u64>,
) -> Result<(), FieldError> {
    let fedavg = FedAvgStrategy::from_run(config);
    for &n in sizes {
        let local = fedavg.local_config(n);
        local
            .validate(n as usize)
            .map_err(|e| batching_error(config, n, e))?;
        let Some(dp) = config.dp else { continue };
        if dp.delta * n as f64 >= 1.0 {
            return Err(fields::DELTA.error_because(
                dp.delta,
                format!(
                    "a number below 1/{n}: shards hold {n} examples (clients refuse a δ ≥ 1/n)"
                ),
            ));
        }
        let dp_strategy = DpFedAvg::new(fedavg.clone(), dp, config.rounds);
        dp_strategy
            .noise_multiplier(&local, n)
            .map_err(accountant_field_error)?;
    }
    Ok(())
}

pub fn accountant_field_error(e: AccountantError) -> FieldError {
    fields::TARGET_EPSILON.error_because("unreachable", e.to_string())
}

/// A config the shards cannot run, named on the form's batching input. Every field's own range
/// was checked before, so what is left is the number of steps a round.
fn batching_error(config: &RunConfig, n: u64, e: protocol::config::ConfigError) -> FieldError {
    if e.field != "sample_rate" {
        let expected = format!("{} for shards of {n} examples", e.expected);
        return fields::BATCHING.error_because(e.value, expected);
    }
    let why = |what: &str| {
        format!(
            "{what} that needs at most 100 000 steps a round on shards of {n} examples (Local epochs × shard size / batch size)"
        )
    };
    match config.batching {
        Batching::BatchSize(b) => fields::BATCH_SIZE.error_because(b, why("a batch size")),
        Batching::SampleRate(q) => fields::SAMPLE_RATE.error_because(q, why("a sample rate")),
    }
}
