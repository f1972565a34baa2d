//! A round: sampling and dispatch (ledger charged first), results, deadline, aggregation, evaluation, commit.

use super::*;
use protocol::config::EVAL_NOISE_MULTIPLIER;

use crate::strategy::cap_allows;
use learning::accountant::Mechanism;

impl Coordinator {
    pub(super) fn candidates(&self) -> Vec<Candidate> {
        let Some(run) = &self.run else {
            return Vec::new();
        };
        let mut v: Vec<Candidate> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                self.could_train(run, c)
                    && !run.bench.sits_out(&c.key, run.summary.completed_rounds)
            })
            .filter_map(|(&client_id, c)| {
                Some(Candidate {
                    client_id,
                    num_examples: c.num_examples.filter(|&n| n > 0)?,
                    ledger: run.clients.get(&c.key)?.ledger.clone(),
                    epsilon_cap: c.caps.epsilon_cap,
                    delta: c.caps.delta,
                    requires_secure_aggregation: c.caps.require_secure_aggregation,
                })
            })
            .collect();
        v.sort_by_key(|c| c.client_id);
        v
    }

    /// A connected client the run could plan for, bench aside: not refused, with examples, its
    /// σ ready.
    fn could_train(&self, run: &ActiveRun, c: &Conn) -> bool {
        !run.refused.contains(&c.key)
            && c.num_examples
                .is_some_and(|n| n > 0 && self.ready_to_plan(run, n))
    }

    /// Connected clients that would be candidates but for their bench.
    fn benched_keys(&self) -> Vec<String> {
        let Some(run) = &self.run else {
            return Vec::new();
        };
        self.clients
            .values()
            .filter(|c| {
                self.could_train(run, c) && run.bench.sits_out(&c.key, run.summary.completed_rounds)
            })
            .map(|c| c.key.clone())
            .collect()
    }

    /// The run waits for clients; benched ones come back if it cannot go on without them.
    fn wait_for_clients(&mut self, eligible: usize, needed: usize) {
        let benched = self.benched_keys();
        if let Some(run) = self.run.as_mut() {
            let patience = Duration::from_secs(run.summary.config.round_timeout_secs);
            let missing = needed.saturating_sub(eligible);
            let lifted = run
                .bench
                .lift_if_stuck(&benched, missing, patience, Instant::now());
            if lifted > 0 {
                info!(
                    run_id = run.id(),
                    lifted, "benched clients are back: the run cannot go on without them"
                );
            }
        }
        self.set_phase(RunPhase::Waiting {
            needed: needed as u64,
        });
    }

    pub(super) fn maybe_start_round(&mut self) {
        // Called often (at most every HOUSEKEEPING_EVERY): decide cheaply before cloning every
        // client's ledger.
        if !self
            .run
            .as_ref()
            .is_some_and(|r| r.summary.status == RunStatus::Running && r.round.is_none())
            || self.accounting_pending()
        {
            return;
        }
        let candidates = self.candidates();
        let Some(run) = self.run.as_mut() else { return };
        let run_id = run.id();
        let server_round = run.summary.completed_rounds + 1;
        let attempt = run.next_attempt;
        let seed = seed();
        let plan = run
            .strategy
            .configure_train(server_round, &candidates, seed);
        let assignments = match plan {
            TrainPlan::Wait { eligible, needed } => return self.wait_for_clients(eligible, needed),
            TrainPlan::BudgetExhausted => {
                self.finish_run(run_id, "privacy budget exhausted: every client's next round would pass the run's target ε");
                return;
            }
            TrainPlan::Train(a) if a.is_empty() => return,
            TrainPlan::Train(a) => a,
        };
        run.bench.planned();
        let span = info_span!("round", run_id, server_round, attempt);
        let Some(model) = ModelFrame::encode(server_round, &run.global) else {
            warn!(parent: &span, "the global model does not fit in a frame");
            return;
        };
        let timeout = Duration::from_secs(run.summary.config.round_timeout_secs);
        // Charge the server ledger before anyone trains (see Store::upsert_clients): on copies
        // first, kept only once they are stored, so memory and store never disagree.
        let mut charged = Vec::new();
        let mut sampled = HashMap::new();
        let mut dispatch = Vec::new();
        let mut expected_batch = HashMap::new();
        for a in assignments {
            let Some(conn) = self.clients.get(&a.client_id) else {
                continue;
            };
            let Some(mut row) = run.clients.get(&conn.key).cloned() else {
                continue;
            };
            let n = conn.num_examples.unwrap_or(0) as usize;
            if let Some((mechanism, steps)) = conn
                .num_examples
                .and_then(|_| learning::client::round_mechanism(&a.config, n))
                && let Err(e) = row.ledger.record_mechanism(mechanism, steps)
            {
                warn!(parent: &span, client_id = a.client_id, error = %e, "cannot account this client's round: not sampling it");
                continue;
            }
            row.rounds += 1;
            expected_batch.insert(a.client_id, a.config.expected_batch(n));
            charged.push(row);
            sampled.insert(a.client_id, (conn.key.clone(), Slot::Pending));
            dispatch.push(a);
        }
        let ids: Vec<u64> = dispatch.iter().map(|a| a.client_id).collect();
        let distributed = run
            .summary
            .config
            .dp
            .and_then(|dp| Some((dp.distributed?, dp.max_grad_norm)));
        let secure = match run.summary.config.secure_aggregation {
            None => None,
            Some(config) => {
                // Every member of a round is told the same (DistributedSgd gives all one z).
                let contexts: std::collections::BTreeSet<_> =
                    dispatch.iter().map(|a| a.config.mask_context().0).collect();
                if contexts.len() > 1 {
                    warn!(parent: &span, "the round's members were given different noise: not starting it (nothing was charged)");
                    return;
                }
                let context =
                    protocol::secagg::Bytes32(contexts.into_iter().next().unwrap_or([0; 32]));
                let noise_multiplier = dispatch
                    .first()
                    .and_then(|a| a.config.dp)
                    .map_or(0.0, |dp| f64::from(dp.noise_multiplier));
                let gradient = distributed.map(|(d, clip)| GradientSum {
                    clip,
                    noise: d.noise(),
                    noise_multiplier,
                    expected_batch,
                });
                match SecureRound::plan(
                    &config,
                    &ids,
                    server_round,
                    // The run's model, and one value for the weight.
                    run.task.num_params() + 1,
                    gradient,
                    context,
                    run.kept_keys.take(),
                ) {
                    Ok(plan) => Some(plan),
                    Err(e) => {
                        warn!(parent: &span, error = %e, "cannot set up secure aggregation: not starting the round (nothing was charged)");
                        return;
                    }
                }
            }
        };
        // Set up before charging: a round that cannot start charges nobody.
        self.accounting_due = true;
        if let Err(e) = keep_charged(&mut self.store, run_id, &mut run.clients, charged) {
            warn!(parent: &span, error = %e, "cannot store the privacy ledger: not starting the round");
            return;
        }
        let (secure, setups) = match secure {
            Some((s, setups)) => (Some(s), setups),
            None => (None, Vec::new()),
        };
        run.round = Some(Round {
            run_id,
            server_round,
            attempt,
            started: Instant::now(),
            started_at_ms: now_ms(),
            deadline: tokio::time::Instant::now() + timeout,
            quorum_reached: false,
            sampled,
            aggregator: run.strategy.aggregator(run.task.num_params()),
            secure,
            held: HashMap::new(),
            participants: Vec::new(),
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
        let sampled = dispatch
            .iter()
            .filter_map(|a| self.clients.get(&a.client_id).map(|c| c.public_id))
            .collect();
        self.publish(Event::RoundStarted {
            run_id,
            server_round,
            attempt,
            sampled,
        });
        self.set_phase(RunPhase::Running);
        for (conn, setup) in setups {
            self.send_msg(conn, &ServerMessage::SecAggSetup(setup));
        }
        let task = self.run.as_ref().map(|r| r.task.spec());
        for a in dispatch {
            let Some(task) = task.clone() else { break };
            let ins = ServerMessage::TrainIns {
                server_round,
                task,
                config: a.config,
                timeout_ms: timeout.as_millis() as u64,
            };
            if self.send_msg(a.client_id, &ins)
                && self.send(a.client_id, Outgoing::Model(model.clone()))
                && let Some(c) = self.clients.get_mut(&a.client_id)
            {
                c.state = ClientState::Training;
            }
        }
        self.maybe_close_training();
    }

    /// Marks a sampled client's slot failed (if it is pending in the current phase).
    pub(super) fn fail_slot(&mut self, client_id: u64, server_round: Option<u64>, reason: &str) {
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
                let key = key.clone();
                let benched = run.bench.failed(&key, run.summary.completed_rounds);
                round.participants.push(Participant {
                    client_key: key.clone(),
                    num_examples: None,
                    outcome: "failed",
                    detail: Some(protocol::clip(reason, 200)),
                });
                round
                    .span
                    .in_scope(|| warn!(client_id, reason, benched, "client failed this round"));
                let server_round = round.server_round;
                if let Some(c) = self.clients.get_mut(&client_id) {
                    c.state = ClientState::Idle;
                }
                self.publish(Event::ClientFailed {
                    client_id: self.public_id(&key),
                    server_round,
                    reason: reason.into(),
                });
                // A member gone from a key or share step may complete it.
                self.advance_secure(false);
                self.maybe_close_training();
            }
            Phase::Unmasking => self.advance_secure(false),
            // Its updates wait at a gateway (which reports what it lost as a missing sum).
            Phase::Collecting => {}
            Phase::FederatedEval { results, .. } => {
                if let Some(slot) = results.get_mut(&client_id)
                    && slot.is_none()
                {
                    results.remove(&client_id);
                }
                self.maybe_close_federated_eval();
            }
            Phase::Evaluating | Phase::Accounting { .. } => {}
        }
    }

    /// A client answered: it is no longer busy with this round.
    fn heard_from(&mut self, client_id: u64) {
        if let Some(c) = self.clients.get_mut(&client_id) {
            c.state = ClientState::Idle;
        }
    }

    pub(super) fn reject(&mut self, client_id: u64, code: ErrorCode, message: String) {
        warn!(client_id, ?code, %message, "result rejected");
        self.send_msg(client_id, &ServerMessage::error(code, message));
    }

    pub(super) fn train_res(
        &mut self,
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        contribution: Contribution,
    ) {
        self.heard_from(client_id);
        let expected_n = self.clients.get(&client_id).and_then(|c| c.num_examples);
        // Named with the number the client knows itself by, not the connection's.
        let shown_id = self.clients.get(&client_id).map_or(0, |c| c.public_id);
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
        let Some((key, slot)) = round.sampled.get(&client_id) else {
            return self.reject(
                client_id,
                ErrorCode::NotSampled,
                format!("client #{shown_id} was not sampled for round {server_round}"),
            );
        };
        if !matches!(slot, Slot::Pending) {
            return self.reject(
                client_id,
                ErrorCode::Duplicate,
                format!(
                    "a result for round {server_round} from client #{shown_id} was already received"
                ),
            );
        }
        let key = key.clone();
        if expected_n != Some(num_examples) {
            let msg = format!(
                "num_examples is {num_examples}: expected this client's data size {}",
                expected_n.map_or("(unknown)".into(), |n| n.to_string())
            );
            self.reject(client_id, ErrorCode::InvalidUpdate, msg.clone());
            return self.fail_slot(client_id, Some(server_round), &msg);
        }
        let t = Instant::now();
        let added = match contribution {
            Contribution::Update(update) => round
                .aggregator
                .add(&update, num_examples)
                .map_err(|e| format!("update rejected: {e}")),
            Contribution::Held(holder, VectorKind::Update)
                if !round.aggregator.takes_partials() =>
            {
                // The slot stays pending until the update itself arrives.
                holder.call(HolderCall::SendInFull {
                    client_id,
                    server_round,
                });
                return;
            }
            Contribution::Held(holder, kind) => round.hold(client_id, num_examples, holder, kind),
            // Into the protocol's running sum; the aggregator only counts it.
            Contribution::Masked(masked) => match round.secure.as_mut() {
                None => Err("a masked vector in a round without secure aggregation".into()),
                Some(secure) => secure
                    .add_masked(client_id, &masked)
                    .and_then(|()| round.aggregator.add_masked().map_err(|e| e.to_string()))
                    .map_err(|e| format!("masked vector rejected: {e}")),
            },
        };
        round.aggregate_ms += t.elapsed().as_secs_f64() * 1e3;
        if let Err(msg) = added {
            self.reject(client_id, ErrorCode::InvalidUpdate, msg.clone());
            return self.fail_slot(client_id, Some(server_round), &msg);
        }
        if let Some((_, slot)) = round.sampled.get_mut(&client_id) {
            *slot = Slot::Done;
        }
        let Some(run) = self.run.as_mut() else { return };
        run.bench.succeeded(&key);
        let Some(round) = run.round.as_mut() else {
            return;
        };
        round.participants.push(Participant {
            client_key: key.clone(),
            num_examples: Some(num_examples),
            outcome: "ok",
            detail: None,
        });
        round.span.in_scope(|| debug!(client_id, "update accepted"));
        let quorum = run.summary.config.quorum;
        round.shorten_for_stragglers(quorum);
        self.publish(Event::ClientTrained {
            client_id: self.public_id(&key),
            server_round,
        });
        self.maybe_close_training();
    }

    pub(super) fn train_failed(
        &mut self,
        client_id: u64,
        server_round: u64,
        reason: &str,
        refuses_run: bool,
    ) {
        self.heard_from(client_id);
        if refuses_run
            && let (Some(run), Some(c)) = (self.run.as_mut(), self.clients.get(&client_id))
        {
            run.refused.insert(c.key.clone());
        }
        self.fail_slot(client_id, Some(server_round), reason);
    }

    pub(super) fn evaluate_res(
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

    pub(super) fn maybe_close_training(&mut self) {
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

    pub(super) fn on_deadline(&mut self) {
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return;
        };
        let step_due = round
            .secure
            .as_ref()
            .is_some_and(|s| s.waiting_step() && s.step_deadline <= tokio::time::Instant::now());
        if step_due {
            self.advance_secure(true);
        }
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return;
        };
        if round.deadline > tokio::time::Instant::now() && matches!(round.phase, Phase::Training) {
            // Only a secure-aggregation step was due.
            return;
        }
        match &mut round.phase {
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
            Phase::FederatedEval { results, .. } => {
                results.retain(|_, v| v.is_some());
                self.maybe_close_federated_eval();
            }
            Phase::Collecting => {
                let missing: Vec<(String, HeldAt)> = round.held.drain().collect();
                for (gateway, at) in missing {
                    let clients: Vec<u64> = at.clients.into_keys().collect();
                    self.lose_held(&gateway, &clients, "its sum did not arrive in time");
                }
                self.maybe_aggregate_collected();
            }
            // Its step deadline was handled above.
            Phase::Unmasking | Phase::Evaluating | Phase::Accounting { .. } => {}
        }
    }

    /// Training is over: aggregate — after the unmask step when the round is secure, after
    /// the gateways' sums when they hold accepted updates.
    pub(super) fn close_training(&mut self) {
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return;
        };
        if !round.held.is_empty() {
            round.phase = Phase::Collecting;
            round.deadline = tokio::time::Instant::now() + COLLECT_TIMEOUT;
            let reference = round.reference();
            for at in round.held.values() {
                at.holder.call(HolderCall::Collect { round: reference });
            }
            round
                .span
                .in_scope(|| info!(gateways = round.held.len(), "collecting the gateways' sums"));
        } else {
            self.aggregate_collected();
        }
    }

    /// Every accepted vector is in: aggregated — after the unmask step when the round is secure.
    fn aggregate_collected(&mut self) {
        let secure = self
            .run
            .as_ref()
            .and_then(|r| r.round.as_ref())
            .is_some_and(|r| r.secure.is_some());
        if secure {
            self.start_unmask();
        } else {
            self.aggregate_round();
        }
    }

    /// A gateway's sum: folded in if every update it claims was accepted from that gateway,
    /// with its weight (accepted updates it lacks fail their clients; a sum claiming more fails
    /// the gateway's clients); the round is aggregated once every gateway's is in.
    pub(super) fn partial(&mut self, partial: PartialSum) {
        let Some(run) = self.run.as_mut() else { return };
        let num_params = run.task.num_params();
        let Some(round) = run.round.as_mut() else {
            return;
        };
        if round.reference() != partial.round || !matches!(round.phase, Phase::Collecting) {
            return warn!(gateway = %partial.gateway, round = ?partial.round, "a gateway's sum for no round collecting: ignored");
        }
        let Some(at) = round.held.remove(&partial.gateway) else {
            return warn!(gateway = %partial.gateway, "a sum from a gateway that holds nothing: ignored");
        };
        // The sum may lack some accepted updates (a client replaced mid-round, a gateway bug):
        // those clients fail; but every update it claims must be one accepted from it, once.
        let mut weight = Some(0u64);
        let mut claimed = std::collections::BTreeSet::new();
        let mut unknown = Vec::new();
        for &c in &partial.clients {
            match at.clients.get(&c) {
                Some(&n) if claimed.insert(c) => weight = weight.and_then(|w| w.checked_add(n)),
                _ => unknown.push(c),
            }
        }
        let folded = match weight {
            Some(w)
                if unknown.is_empty()
                    && partial.total_weight == w
                    && partial.count == claimed.len() =>
            {
                match (at.kind, &partial.sum) {
                    // Nothing in it (the gateway lost them all): nothing to fold.
                    _ if claimed.is_empty() => Ok(()),
                    (VectorKind::Update, PartialVector::Update(_))
                    | (VectorKind::Masked, PartialVector::Masked(_)) => {
                        round.fold(&claimed, w, partial.sum, num_params)
                    }
                    _ => Err(format!(
                        "a sum of the other kind: it holds {:?} vectors",
                        at.kind
                    )),
                }
            }
            _ => Err(format!(
                "the gateway's sum claims {} updates of weight {} (clients not accepted from it or \
                 twice: {unknown:?}): expected a part of the {} accepted, weighing what they weigh",
                partial.count,
                partial.total_weight,
                at.clients.len()
            )),
        };
        match folded {
            Ok(()) => {
                let missing: Vec<u64> = at
                    .clients
                    .keys()
                    .filter(|c| !claimed.contains(c))
                    .copied()
                    .collect();
                self.lose_held(
                    &partial.gateway,
                    &missing,
                    "its update is not in the gateway's sum",
                );
            }
            Err(reason) => {
                let all: Vec<u64> = at.clients.keys().copied().collect();
                self.lose_held(&partial.gateway, &all, &reason);
            }
        }
        self.maybe_aggregate_collected();
    }

    /// A gateway is gone: the round's vectors it held fail their clients now (the round then
    /// closes by quorum or deadline, or aggregates if it waited only for that gateway's sum).
    pub(super) fn gateway_gone(&mut self, gateway: &str) {
        let Some(round) = self.run.as_mut().and_then(|r| r.round.as_mut()) else {
            return;
        };
        let Some(at) = round.held.remove(gateway) else {
            return;
        };
        let clients: Vec<u64> = at.clients.into_keys().collect();
        self.lose_held(gateway, &clients, "the gateway is gone");
        self.maybe_aggregate_collected();
    }

    /// The accepted updates a gateway lost (it died, its sum did not add up, or left them out)
    /// fail their clients' slots.
    fn lose_held(&mut self, gateway: &str, clients: &[u64], reason: &str) {
        if clients.is_empty() {
            return;
        }
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.as_mut() else {
            return;
        };
        round.span.in_scope(|| {
            warn!(
                gateway,
                lost = clients.len(),
                reason,
                "a gateway's updates are lost"
            )
        });
        let detail = protocol::clip(&format!("its gateway {gateway}: {reason}"), 200);
        let mut failed = std::collections::HashSet::new();
        for client_id in clients {
            if let Some((key, slot)) = round.sampled.get_mut(client_id) {
                *slot = Slot::Failed;
                failed.insert(key.clone());
            }
        }
        for p in round
            .participants
            .iter_mut()
            .filter(|p| failed.contains(&p.client_key))
        {
            p.outcome = "failed";
            p.num_examples = None;
            p.detail = Some(detail.clone());
        }
        let server_round = round.server_round;
        for key in failed {
            self.publish(Event::ClientFailed {
                client_id: self.public_id(&key),
                server_round,
                reason: detail.clone(),
            });
        }
    }

    /// Aggregates once no gateway's sum is awaited.
    fn maybe_aggregate_collected(&mut self) {
        let collected = self
            .run
            .as_ref()
            .and_then(|r| r.round.as_ref())
            .is_some_and(|r| matches!(r.phase, Phase::Collecting) && r.held.is_empty());
        if collected {
            self.aggregate_collected();
        }
    }

    /// The round's aggregate applied to the global model, then evaluated (or the round retried).
    pub(super) fn aggregate_round(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.as_mut() else {
            return;
        };
        let t = Instant::now();
        let res = run.strategy.aggregate_train(
            round.server_round,
            &run.global,
            round.aggregator.as_ref(),
            round.sampled.len(),
            round.failures(),
        );
        round.aggregate_ms += t.elapsed().as_secs_f64() * 1e3;
        match res {
            Err(reason) => {
                round
                    .span
                    .in_scope(|| warn!(%reason, "round not aggregated: it will be retried"));
                self.abandon_round(&reason.to_string());
            }
            Ok(next) => {
                round.span.in_scope(|| {
                    info!(
                        results = round.aggregator.count(),
                        failures = round.failures(),
                        aggregate_ms = round.aggregate_ms,
                        "aggregated; evaluating"
                    )
                });
                let next = Arc::new(next);
                round.next_global = Some(next.clone());
                round.phase = Phase::Evaluating;
                let evaluates = run.strategy.evaluates(round.server_round);
                let task = run.task;
                match self.test_sets.get(task.id).cloned().filter(|_| evaluates) {
                    Some(test) => {
                        let span = round.span.clone();
                        self.eval_task = Some(tokio::task::spawn_blocking(move || {
                            span.in_scope(|| {
                                learning::evaluate(task, &next, &test).map_err(|e| e.to_string())
                            })
                        }));
                    }
                    None => self.on_evaluated(Ok(NOT_EVALUATED)),
                }
            }
        }
    }

    pub(super) fn on_evaluated(&mut self, res: Result<EvaluateRes, String>) {
        let candidates = self.candidates();
        let Some(run) = self.run.as_mut() else { return };
        let (run_id, run_delta) = (run.id(), run.delta());
        let Some(round) = run.round.as_mut() else {
            return;
        };
        let test = match res {
            Ok(t) => t,
            Err(e) => {
                round.span.in_scope(|| warn!(error = %e, "evaluation failed; recording the round without test metrics"));
                NOT_EVALUATED
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
        let ledger = RunLedger {
            run_id,
            delta: run_delta,
            rows: &mut run.clients,
        };
        let evaluators = charge_evaluations(
            ledger,
            &mut self.store,
            &self.clients,
            evaluators,
            &round.span,
        );
        self.accounting_due = true;
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
        let Some(model) = ModelFrame::encode(server_round, &global) else {
            return;
        };
        let task = run.task.spec();
        for id in evaluators {
            let task = task.clone();
            if self.send_msg(id, &ServerMessage::EvaluateIns { server_round, task })
                && self.send(id, Outgoing::Model(model.clone()))
                && let Some(c) = self.clients.get_mut(&id)
            {
                c.state = ClientState::Evaluating;
            }
        }
        self.maybe_close_federated_eval();
    }

    pub(super) fn maybe_close_federated_eval(&mut self) {
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

    /// Records the round once the ledgers it charged are accounted (at once when they are).
    pub(super) fn commit(&mut self, test: EvaluateRes, federated: Option<(f64, f64)>) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(round) = run.round.as_mut() else {
            return;
        };
        round.phase = Phase::Accounting { test, federated };
        self.accounting_due = true;
        self.maybe_commit();
    }

    /// Commits a round waiting for its ledgers' tight ε, once no ledger of the run needs it.
    pub(super) fn maybe_commit(&mut self) {
        let Some(run) = self.run.as_ref() else { return };
        let Some(Phase::Accounting { test, federated }) = run.round.as_ref().map(|r| &r.phase)
        else {
            return;
        };
        if self.ledger_job.is_some() || run.spent.needs_any(&run.clients) {
            return;
        }
        let (test, federated) = (*test, *federated);
        self.commit_now(test, federated);
    }

    /// Commits the round: store, events, clients; finishes the run after its last round.
    fn commit_now(&mut self, test: EvaluateRes, federated: Option<(f64, f64)>) {
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
            participants: round.aggregator.count() as u64,
            failures: round.failures() as u64,
            epsilon: run.max_epsilon(),
            attempts: round.attempt,
            secure: round.secure.is_some(),
            recovered: round.secure.as_ref().map_or(0, |s| s.recovered),
            keys_reused: round.secure.as_ref().is_some_and(|s| s.keys_reused),
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
                c.state = ClientState::Idle;
            }
            self.send_msg(id, &closed);
        }
        if let Some(reason) = finished {
            self.finish_run(run_id, &reason);
        }
    }
}

/// The evaluators that may evaluate, with the server ledger charged and stored for each: a
/// client's DP evaluation is one Gaussian mechanism of noise multiplier
/// [`EVAL_NOISE_MULTIPLIER`] at sample rate 1, which the server counts like a training round.
/// A client whose declared cap that evaluation would cross is not asked (it would refuse).
fn charge_evaluations(
    run: RunLedger<'_>,
    store: &mut Store,
    clients: &HashMap<u64, Conn>,
    evaluators: Vec<u64>,
    span: &Span,
) -> Vec<u64> {
    let mut charged = Vec::new();
    let mut asked = Vec::new();
    for id in evaluators {
        let Some(conn) = clients.get(&id).filter(|c| c.caps.can_evaluate) else {
            continue;
        };
        let Some(mut row) = run.rows.get(&conn.key).cloned() else {
            continue;
        };
        let evaluation = Mechanism::Gaussian {
            sample_rate: 1.0,
            noise_multiplier: EVAL_NOISE_MULTIPLIER,
        };
        if let (Some(cap), Some(delta)) = (conn.caps.epsilon_cap, conn.caps.delta.or(run.delta))
            && !cap_allows(&row.ledger, cap, delta, evaluation, 1)
        {
            continue;
        }
        if row.ledger.record_mechanism(evaluation, 1).is_err() {
            continue;
        }
        charged.push(row);
        asked.push(id);
    }
    if let Err(e) = keep_charged(store, run.run_id, run.rows, charged) {
        warn!(parent: span, error = %e, "cannot store the privacy ledger: no federated evaluation this round");
        return Vec::new();
    }
    asked
}

/// Charged ledgers are stored first and kept in memory only once stored, so memory and store
/// never disagree (a crash can over-count ε, never under-count it).
fn keep_charged(
    store: &mut Store,
    run_id: u64,
    rows: &mut HashMap<String, ClientRow>,
    charged: Vec<ClientRow>,
) -> Result<(), StoreError> {
    store.upsert_clients(run_id, &charged)?;
    for row in charged {
        rows.insert(row.client_key.clone(), row);
    }
    Ok(())
}

/// The server's privacy ledger of a run's clients, by client key.
struct RunLedger<'a> {
    run_id: u64,
    /// The run's δ (`None` without DP): a client that declared no δ of its own caps at it.
    delta: Option<f64>,
    rows: &'a mut HashMap<String, ClientRow>,
}

/// What a round records when the server has no test set, or evaluation failed.
const NOT_EVALUATED: EvaluateRes = EvaluateRes {
    loss: f64::NAN,
    accuracy: f64::NAN,
    num_examples: 0,
};
