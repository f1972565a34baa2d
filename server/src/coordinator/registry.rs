//! The client registry: joining (identity by client key), shard assignment, leaving, sending.

use std::collections::HashSet;

use learning::shard::label_histogram;

use super::*;

impl Coordinator {
    pub(super) fn send(&mut self, client_id: u64, msg: Outgoing) -> bool {
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

    pub(super) fn send_msg(&mut self, client_id: u64, msg: &ServerMessage) -> bool {
        self.send(client_id, Outgoing::Text(msg.encode()))
    }

    /// Sends a message the client can do without (a status line): a client whose outbox is full
    /// misses it rather than being disconnected for it.
    pub(super) fn send_lossy(&self, client_id: u64, msg: &ServerMessage) {
        if let Some(conn) = self.clients.get(&client_id) {
            let _missed_if_full = conn.outbox.try_send(Outgoing::Text(msg.encode()));
        }
    }

    pub(super) fn publish(&self, event: Event) {
        // No subscriber (no dashboard open) is normal: events are a live view, the store has
        // the history.
        let _no_dashboard_is_fine = self.events.send(event);
    }

    pub(super) fn join(
        &mut self,
        presented: Option<String>,
        caps: Capabilities,
        outbox: mpsc::Sender<Outgoing>,
    ) -> Result<u64, String> {
        if self.clients.len() >= self.max_clients {
            return Err(format!(
                "the server has {} clients connected, its limit (--max-clients): try later",
                self.max_clients
            ));
        }
        // Only a key this server issued is honoured (a connected client's, or one the active
        // run knows): a client cannot pick its own and claim an identity, shard or ledger.
        let key = match presented {
            Some(k) if is_client_key(&k) && self.knows_key(&k) => k,
            _ => new_client_key().map_err(|e| format!("no randomness for a client key: {e}"))?,
        };
        // Looked up first: replacing the old connection below may drop a key with no run.
        let known_id = self.public_ids.get(&key).copied();
        if let Some(&old) = self.conn_of_key.get(&key) {
            // A tab that reconnects before its old socket timed out: the new one wins.
            self.send_msg(
                old,
                &ServerMessage::Error {
                    code: ErrorCode::Replaced,
                    message: "replaced by a newer connection with the same client key".into(),
                    fatal: true,
                },
            );
            self.send(old, Outgoing::Close);
            self.leave(old, "replaced by a newer connection");
        }
        let client_id = self.next_client_id;
        self.next_client_id += 1;
        let public_id = known_id.unwrap_or_else(|| {
            self.next_public_id += 1;
            self.next_public_id - 1
        });
        self.public_ids.insert(key.clone(), public_id);
        let now = now_ms();
        let own = caps.own_data.as_ref().map(|d| d.num_examples);
        let returning = self.returning(&key);
        if let Some(run) = self.run.as_mut() {
            // Back: listed as connected again, not as left.
            run.departed.remove(&key);
        }
        self.conn_of_key.insert(key.clone(), client_id);
        self.clients.insert(
            client_id,
            Conn {
                key: key.clone(),
                public_id,
                caps,
                outbox,
                num_examples: own,
                shard_index: None,
                state: ClientState::Idle,
                connected_at_ms: now,
            },
        );
        info!(client_id, public_id, "client joined");
        self.send_msg(
            client_id,
            &ServerMessage::Welcome {
                client_id: public_id,
                client_key: key,
                model_params: self.model_params as u64,
                rounds_taken: returning.rounds_taken,
                interrupted_round: returning.interrupted_round,
            },
        );
        // The run's state (with its task) first: the page names the task before the shard.
        self.tell_phase(client_id);
        self.tell_run_over(client_id);
        self.assign(client_id);
        if let Some(info) = self.client_info(client_id) {
            self.publish(Event::ClientJoined { client: info });
        }
        Ok(client_id)
    }

    /// Tells a joining client what the run does (the others heard it when it changed).
    fn tell_phase(&mut self, client_id: u64) {
        let Some(msg) = self
            .run
            .as_ref()
            .filter(|r| !r.summary.status.is_over())
            .and_then(|r| {
                Some(ServerMessage::RunState {
                    run_id: r.id(),
                    task: r.task.spec(),
                    phase: r.phase?,
                })
            })
        else {
            return;
        };
        self.send_lossy(client_id, &msg);
    }

    /// A client of the active run back after it ended hears the end now: its socket was down
    /// when the end was said to everyone connected, and it would otherwise wait for a round
    /// that never comes. A key new to the run has nothing to hear.
    fn tell_run_over(&mut self, client_id: u64) {
        let Some(key) = self.clients.get(&client_id).map(|c| c.key.as_str()) else {
            return;
        };
        let Some(msg) = self
            .run
            .as_ref()
            .filter(|r| r.summary.status.is_over() && r.clients.contains_key(key))
            .map(|r| ServerMessage::RunFinished {
                run_id: r.id(),
                reason: r
                    .summary
                    .finished_reason
                    .clone()
                    .unwrap_or_else(|| format!("the run is {}", r.summary.status.as_str())),
            })
        else {
            return;
        };
        self.send_msg(client_id, &msg);
    }

    /// What the active run remembers of a key that connects again (a reloaded tab), told to it
    /// in `Welcome`.
    fn returning(&self, key: &str) -> Returning {
        let Some(run) = self.run.as_ref() else {
            return Returning::default();
        };
        let left = run.departed.get(key).and_then(|info| info.left.as_ref());
        Returning {
            rounds_taken: run.clients.get(key).map_or(0, |r| r.rounds),
            interrupted_round: left.filter(|d| d.was_training).and_then(|d| d.in_round),
        }
    }

    /// The id `key` is shown as (see `Coordinator::public_ids`).
    pub(super) fn public_id(&self, key: &str) -> u64 {
        self.public_ids.get(key).copied().unwrap_or(0)
    }

    fn knows_key(&self, key: &str) -> bool {
        self.clients.values().any(|c| c.key == key)
            || self
                .run
                .as_ref()
                .is_some_and(|r| r.clients.contains_key(key))
    }

    /// Gives a client its shard in the active run (or records its own data).
    pub(super) fn assign(&mut self, client_id: u64) {
        // Its shard size may be new: σ to solve.
        self.accounting_due = true;
        let connected: HashSet<String> = self.clients.values().map(|c| c.key.clone()).collect();
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
                ledger: PrivacyLedger::default(),
                rounds: 0,
            })
            .shard_index;
        let mut message = None;
        let mut reclaimed_from = None;
        if conn.caps.own_data.is_none() {
            match &run.shards {
                None => {
                    message = Some(ServerMessage::error(
                        ErrorCode::NoShardAvailable,
                        "this run has no server-held data: clients bring their own (own_data in Hello)",
                    ));
                }
                Some(shards) => {
                    let mut index = existing_shard
                        .or_else(|| free_shard(shards, &run_clients_shards(&run.clients)));
                    if index.is_none()
                        && let Some((i, key)) = reclaim_shard(&mut run.clients, &connected)
                    {
                        info!(
                            client_id,
                            shard = i,
                            "shard reclaimed from a key that never trained and left"
                        );
                        index = Some(i);
                        reclaimed_from = Some(key);
                    }
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
                            let hist = self
                                .data
                                .as_ref()
                                .and_then(|d| d.of(run.task))
                                .map(|d| label_histogram(&d.train.labels, idx).to_vec())
                                .unwrap_or_default();
                            if let Some(row) = run.clients.get_mut(&conn.key) {
                                row.shard_index = Some(i);
                            }
                            conn.shard_index = Some(i);
                            conn.num_examples = Some(idx.len() as u64);
                            let base = format!("/api/runs/{run_id}/shards/{i}");
                            message = Some(ServerMessage::Assignment(Assignment {
                                run_id,
                                task: run.task.spec(),
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
        // This client's row, and the row whose shard was reclaimed for it (now without one).
        let rows: Vec<ClientRow> = [Some(&conn.key), reclaimed_from.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|k| run.clients.get(k).cloned())
            .collect();
        if let Err(e) = self.store.upsert_clients(run_id, &rows) {
            warn!(error = %e, "could not store a client's assignment");
        }
        if let Some(m) = message {
            self.send_msg(client_id, &m);
        }
    }

    pub(super) fn leave(&mut self, client_id: u64, reason: &str) {
        self.remember_departure(client_id, reason);
        let Some(conn) = self.clients.remove(&client_id) else {
            return;
        };
        if self.conn_of_key.get(&conn.key) == Some(&client_id) {
            self.conn_of_key.remove(&conn.key);
        }
        info!(client_id, public_id = conn.public_id, reason, "client left");
        self.publish(Event::ClientLeft {
            client_id: conn.public_id,
        });
        self.fail_slot(client_id, None, reason);
        self.forget_if_unused(&conn.key);
    }

    /// Forgets a key that left without a trace in the run: no shard, never charged (a socket
    /// that said hello with its own data and went away). Without this every such hello would
    /// add a run row, a departed row and a number for good. A key the server no longer honours
    /// loses its number.
    fn forget_if_unused(&mut self, key: &str) {
        if self.clients.values().any(|c| c.key == key) {
            return;
        }
        if let Some(run) = self.run.as_mut()
            && run.clients.get(key).is_some_and(|row| {
                row.rounds == 0 && row.shard_index.is_none() && row.ledger.steps() == 0
            })
        {
            run.clients.remove(key);
            run.departed.remove(key);
        }
        if !self.knows_key(key) {
            self.public_ids.remove(key);
        }
    }

    /// Keeps a leaving client of the current run in the clients table, marked with when and
    /// why it left — unless its key is still connected (a reload replaced the connection).
    fn remember_departure(&mut self, client_id: u64, reason: &str) {
        let Some(mut info) = self.client_info(client_id) else {
            return;
        };
        let Some(key) = self.clients.get(&client_id).map(|c| c.key.clone()) else {
            return;
        };
        let still_here = self
            .clients
            .iter()
            .any(|(&id, c)| id != client_id && c.key == key);
        let Some(run) = self.run.as_mut() else { return };
        if still_here || !run.clients.contains_key(&key) {
            return;
        }
        info.state = ClientState::Left;
        let was_training = run.round.as_ref().is_some_and(|r| {
            matches!(r.phase, Phase::Training)
                && matches!(r.sampled.get(&client_id), Some((_, Slot::Pending)))
        });
        info.left = Some(Departure {
            in_round: run.round.as_ref().map(|r| r.server_round),
            after_round: run.summary.completed_rounds,
            reason: protocol::clip(reason, 200),
            was_training,
        });
        run.departed.insert(key, info);
    }

    pub(super) fn client_info(&self, client_id: u64) -> Option<ClientInfo> {
        let c = self.clients.get(&client_id)?;
        // Every count is of the current run, like ε.
        let run = self.run.as_ref();
        let row = run.and_then(|r| r.clients.get(&c.key));
        let spent = run.map(|r| r.spent_columns(&c.key)).unwrap_or_default();
        Some(ClientInfo {
            client_id: c.public_id,
            name: c.caps.name.clone(),
            state: c.state,
            num_examples: c.num_examples,
            shard_index: c.shard_index,
            own_data: c.caps.own_data.is_some(),
            connected_at_ms: c.connected_at_ms,
            rounds: row.map_or(0, |r| r.rounds),
            failures: run.map_or(0, |r| r.bench.failures(&c.key)),
            epsilon: spent.epsilon,
            epsilon_pending: spent.pending,
            collusion_epsilon: spent.collusion,
            rdp_epsilon: spent.rdp,
            refuses: run.is_some_and(|r| r.refused.contains(&c.key)),
            left: None,
        })
    }

    pub(super) fn client_infos(&self) -> Vec<ClientInfo> {
        let mut infos: Vec<ClientInfo> = self
            .clients
            .keys()
            .filter_map(|&id| self.client_info(id))
            .collect();
        infos.sort_by_key(|c| c.client_id);
        // Then the run's clients that left, with their counts as they are now (a round in
        // flight when they left has failed since).
        if let Some(run) = &self.run {
            let connected: HashSet<&str> = self.clients.values().map(|c| c.key.as_str()).collect();
            let mut gone: Vec<ClientInfo> = run
                .departed
                .iter()
                .filter(|(key, _)| !connected.contains(key.as_str()))
                .map(|(key, info)| {
                    let spent = run.spent_columns(key);
                    ClientInfo {
                        failures: run.bench.failures(key),
                        refuses: run.refused.contains(key),
                        epsilon: spent.epsilon,
                        epsilon_pending: spent.pending,
                        collusion_epsilon: spent.collusion,
                        rdp_epsilon: spent.rdp,
                        ..info.clone()
                    }
                })
                .collect();
            gone.sort_by_key(|c| c.client_id);
            infos.extend(gone);
        }
        infos
    }
}

/// What the active run remembers of a returning key.
#[derive(Debug, Default)]
struct Returning {
    rounds_taken: u64,
    interrupted_round: Option<u64>,
}

fn run_clients_shards(clients: &HashMap<String, ClientRow>) -> Vec<u32> {
    clients.values().filter_map(|c| c.shard_index).collect()
}

/// A shard held by a key that is not connected and never trained in this run (a socket that
/// said hello and went away): it goes to the client that asks now. Without this, ten hellos
/// closed at once took all ten shards of a run, and honest clients waited forever. A key that
/// trained keeps its shard: its ledger belongs to those records.
fn reclaim_shard(
    clients: &mut HashMap<String, ClientRow>,
    connected: &HashSet<String>,
) -> Option<(u32, String)> {
    let row = clients
        .values_mut()
        .filter(|r| r.rounds == 0 && r.shard_index.is_some() && !connected.contains(&r.client_key))
        .min_by_key(|r| r.shard_index)?;
    Some((row.shard_index.take()?, row.client_key.clone()))
}

/// The lowest shard index no client holds.
fn free_shard(shards: &Shards, taken: &[u32]) -> Option<u32> {
    (0..shards.indices.len() as u32).find(|i| !taken.contains(i))
}

/// A fresh 128-bit client key (hex), from the OS's CSPRNG: it is the client's credential.
fn new_client_key() -> Result<String, getrandom::Error> {
    crate::random_hex(16)
}

fn is_client_key(k: &str) -> bool {
    k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())
}
