//! The coordinator's side of the bus: every client of every gateway becomes a client of the
//! coordinator's command channel, as a socket handler's is, with an outbox whose messages go
//! down to its gateway. The coordinator itself does not know the bus exists.
//!
//! One task: the gateways' messages, the coordinator's answers to joins, every remote client's
//! outbox (one stream each, polled together) and the heartbeat. A second one watches the
//! gateways' heartbeats: a gateway silent for [`GATEWAY_SILENCE`], or back with another
//! instance number (restarted), is gone, and so are its clients: they leave their rounds,
//! which close by quorum or deadline, and reconnect through another gateway with their keys.
//! The bridge never waits for the coordinator: while its inbox is full, commands wait in order
//! in a backlog, and the clients' outboxes keep draining.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use async_nats::{Client, Message};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, FuturesUnordered, SelectAll};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::outbound::Shareable;
use super::{Down, GATEWAY_SILENCE, GatewayId, HEARTBEAT, ShardAnswer, ShardQuery, Subjects, Up};

/// What the liveness watcher tells the bridge.
#[derive(Debug)]
enum Liveness {
    /// A gateway's first heartbeat (again, after it was taken for gone), with its clients.
    New { gateway: GatewayId, clients: u64 },
    /// Silent for [`GATEWAY_SILENCE`].
    Gone(GatewayId),
}
use crate::coordinator::{
    Command, Holder, HolderCall, OUTBOX_CAPACITY, Outgoing, PartialSum, PartialVector, VectorKind,
};

/// A gateway as the coordinator knows it.
#[derive(Default)]
struct Gateway {
    clients: HashSet<u64>,
    /// The last model frame this gateway was sent.
    model: Option<u64>,
}

/// A join the coordinator answered.
struct Joined {
    gateway: GatewayId,
    conn: u64,
    outbox: mpsc::Receiver<Outgoing>,
    result: Result<u64, String>,
}

struct Bridge {
    nats: Client,
    subjects: Subjects,
    coordinator: mpsc::Sender<Command>,
    gateways: HashMap<GatewayId, Gateway>,
    owner: HashMap<u64, GatewayId>,
    /// The largest vector a client may send (the largest task's model).
    max_params: usize,
    /// Where the coordinator's calls to gateways holding updates go (see [`Holder`]).
    holder_calls: Option<mpsc::UnboundedSender<(String, HolderCall)>>,
    /// This coordinator's, new at every start.
    epoch: u64,
    /// Commands waiting for room in the coordinator's inbox, in order.
    backlog: std::collections::VecDeque<Command>,
    /// Commands dropped because the backlog was full (see [`Bridge::queue`]).
    dropped: u64,
    /// Each gateway's messages of this turn of the loop, sent together at its end.
    outbound: HashMap<GatewayId, super::outbound::Outbound<Down>>,
}

/// At most this many ready messages are taken in one turn of the loop (they share batches).
const BURST: usize = 4096;
/// Commands the bridge keeps while the coordinator's inbox is full.
const MAX_BACKLOG: usize = 1 << 20;

/// Runs the bridge until the coordinator stops.
pub async fn run(
    nats: Client,
    subjects: Subjects,
    coordinator: mpsc::Sender<Command>,
) -> Result<(), String> {
    let epoch = super::random_u64("coordinator's epoch")?;
    let subscribe_error = |e: async_nats::SubscribeError| format!("cannot subscribe on NATS: {e}");
    let mut up = nats
        .subscribe(subjects.up_all())
        .await
        .map_err(subscribe_error)?;
    let mut shards = nats
        .subscribe(subjects.shard())
        .await
        .map_err(subscribe_error)?;
    let alive = nats
        .subscribe(subjects.alive_all())
        .await
        .map_err(subscribe_error)?;
    nats.flush()
        .await
        .map_err(|e| format!("NATS flush failed: {e}"))?;
    info!(epoch, "coordinator on the bus");
    let (liveness_tx, mut liveness) = mpsc::unbounded_channel();
    tokio::spawn(watch_liveness(alive, subjects.clone(), liveness_tx));
    let mut bridge = Bridge {
        nats,
        subjects,
        coordinator,
        gateways: HashMap::new(),
        owner: HashMap::new(),
        max_params: learning::task::max_params(),
        holder_calls: None,
        epoch,
        backlog: Default::default(),
        dropped: 0,
        outbound: HashMap::new(),
    };
    let (holder_calls, mut calls) = mpsc::unbounded_channel();
    bridge.holder_calls = Some(holder_calls);
    let mut joins: FuturesUnordered<BoxFuture<'static, Joined>> = FuturesUnordered::new();
    let mut outboxes: SelectAll<BoxStream<'static, (u64, Option<Outgoing>)>> = SelectAll::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    let inbox = bridge.coordinator.clone();
    loop {
        // Its coordinator stopped: the bridge stops at once, not at its next heartbeat. Until
        // then it would answer joins for a coordinator that is gone, under an epoch the
        // gateways may already have replaced by the next coordinator's. Checked before each
        // turn (the branches below are taken in random order) and awaited among them (idle).
        if inbox.is_closed() {
            return Ok(());
        }
        tokio::select! {
            Ok(room) = inbox.reserve(), if !bridge.backlog.is_empty() => {
                if let Some(cmd) = bridge.backlog.pop_front() {
                    room.send(cmd);
                }
                bridge.drain_backlog();
            }
            msg = up.next() => {
                let Some(msg) = msg else {
                    return Err("the subscription to the gateways' messages ended".into());
                };
                joins.extend(bridge.up(msg).await);
                for _ in 0..BURST {
                    let Some(Some(msg)) = up.next().now_or_never() else { break };
                    joins.extend(bridge.up(msg).await);
                }
            }
            Some(joined) = joins.next() => {
                outboxes.extend(bridge.joined(joined).await);
                for _ in 0..BURST {
                    let Some(Some(joined)) = joins.next().now_or_never() else { break };
                    outboxes.extend(bridge.joined(joined).await);
                }
            }
            Some((client_id, out)) = outboxes.next() => {
                bridge.outgoing(client_id, out).await;
                for _ in 0..BURST {
                    let Some(Some((client_id, out))) = outboxes.next().now_or_never() else { break };
                    bridge.outgoing(client_id, out).await;
                }
            }
            request = shards.next() => match request {
                Some(request) => bridge.shard(request),
                None => return Err("the subscription to shard queries ended".into()),
            },
            Some((gateway, call)) = calls.recv() => {
                bridge.holder_call(gateway, call).await;
                for _ in 0..BURST {
                    let Ok((gateway, call)) = calls.try_recv() else { break };
                    bridge.holder_call(gateway, call).await;
                }
            }
            news = liveness.recv() => match news {
                Some(news) => bridge.liveness(news).await,
                // Without it no gateway is ever taken for gone: the process must stop.
                None => return Err("the gateways' liveness watcher stopped".into()),
            },
            () = inbox.closed() => return Ok(()),
            _ = tick.tick() => {
                if !bridge.tick().await {
                    return Ok(());
                }
            }
        }
        bridge.flush().await;
    }
}

impl Bridge {
    /// A message to a gateway, sent with the others of this turn by [`Bridge::flush`] (the
    /// same message to several clients once: see [`outbound`](super::outbound)).
    fn down(&mut self, gateway: &GatewayId, msg: Down, payload: Vec<u8>) {
        self.outbound
            .entry(gateway.clone())
            .or_default()
            .push(msg, payload);
    }

    /// Sends every gateway's messages of this turn: those without payload in batches, those
    /// with one alone, in order.
    async fn flush(&mut self) {
        for (gateway, out) in &mut self.outbound {
            if out.is_empty() {
                continue;
            }
            let subject = self.subjects.down(gateway);
            let batch = |messages| Down::Batch { messages };
            super::send_in_order(&self.nats, &subject, out.take(), batch).await;
        }
    }

    /// Queues a command for the coordinator without waiting: while its inbox is full, the
    /// bridge goes on draining the clients' outboxes (waiting here would stall them, and the
    /// coordinator would then take its remote clients for too slow and drop them).
    fn command(&mut self, cmd: Command) {
        if !self.backlog.is_empty() {
            return self.queue(cmd);
        }
        match self.coordinator.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => self.queue(cmd),
            Err(mpsc::error::TrySendError::Closed(_)) => warn!("coordinator gone"),
        }
    }

    /// Waits in the backlog. Past [`MAX_BACKLOG`] a client's message is dropped, as NATS drops a
    /// slow consumer's (its round closes by deadline); never a client leaving, a gateway gone or
    /// a gateway's sum, which would leave the coordinator with clients nobody serves or a round
    /// waiting for nothing.
    fn queue(&mut self, cmd: Command) {
        let vital = matches!(
            cmd,
            Command::Leave { .. } | Command::GatewayGone { .. } | Command::Partial(_)
        );
        if self.backlog.len() >= MAX_BACKLOG && !vital {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!(
                    dropped = self.dropped,
                    "the coordinator is too far behind: gateways' messages are dropped"
                );
            }
            return;
        }
        self.backlog.push_back(cmd);
    }

    /// Moves commands from the backlog to the coordinator's inbox while it has room.
    fn drain_backlog(&mut self) {
        while let Some(cmd) = self.backlog.pop_front() {
            match self.coordinator.try_send(cmd) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    self.backlog.push_front(cmd);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return warn!("coordinator gone");
                }
            }
        }
    }

    /// A gateway's message (or batch of them); joins come back as the coordinator's answers to
    /// wait for.
    async fn up(&mut self, msg: Message) -> Vec<BoxFuture<'static, Joined>> {
        let Some(gateway) = self.subjects.gateway_of(msg.subject.as_str()) else {
            warn!(subject = %msg.subject, "a message on the bus from no gateway");
            return Vec::new();
        };
        self.gateways.entry(gateway.clone()).or_default();
        let mut joins = Vec::new();
        match super::decode::<Up>(&msg.payload) {
            Ok((Up::Batch { .. }, batch)) => {
                for item in super::unbatch(batch, |m| matches!(m, Up::Batch { .. })) {
                    match item {
                        Ok((up, payload)) => joins.extend(self.one_up(&gateway, up, payload)),
                        Err(e) => {
                            warn!(%gateway, error = %e, "a gateway's batch was cut short");
                            break;
                        }
                    }
                }
            }
            Ok((up, payload)) => joins.extend(self.one_up(&gateway, up, payload)),
            Err(e) => warn!(%gateway, error = %e, "a gateway's message does not decode"),
        }
        joins
    }

    /// One message of a gateway.
    fn one_up(
        &mut self,
        gateway: &GatewayId,
        up: Up,
        payload: &[u8],
    ) -> Option<BoxFuture<'static, Joined>> {
        match up {
            // Several clients' messages in one: each as if alone.
            Up::HeldMany {
                server_round,
                kind,
                clients,
            } => {
                for (client_id, num_examples) in clients {
                    let held = Up::HeldRes {
                        client_id,
                        server_round,
                        num_examples,
                        kind,
                    };
                    self.one_up(gateway, held, &[]);
                }
                None
            }
            Up::Leaves { clients } => {
                // Once each: a leave is never dropped from the backlog, so no repeats.
                let unique: HashSet<u64> = clients.into_iter().collect();
                for client_id in unique {
                    self.one_up(gateway, Up::Leave { client_id }, &[]);
                }
                None
            }
            // On its own subject (the liveness watcher's).
            Up::Alive { .. } | Up::Batch { .. } => None,
            Up::Join {
                conn,
                client_key,
                capabilities,
            } => {
                let (outbox, rx) = mpsc::channel(OUTBOX_CAPACITY);
                let (reply, answer) = oneshot::channel();
                let join = Command::Join {
                    client_key,
                    capabilities,
                    outbox,
                    reply,
                };
                self.command(join);
                let gateway = gateway.clone();
                Some(
                    async move {
                        let result = answer
                            .await
                            .unwrap_or_else(|_| Err("the coordinator is stopping".into()));
                        Joined {
                            gateway,
                            conn,
                            outbox: rx,
                            result,
                        }
                    }
                    .boxed(),
                )
            }
            other => {
                match self.client_command(gateway, other, payload) {
                    Ok(Some(cmd)) => self.command(cmd),
                    Ok(None) => {}
                    Err(e) => warn!(%gateway, error = %e, "a gateway's message was refused"),
                }
                None
            }
        }
    }

    /// The command for a message about one of `gateway`'s clients; `None` when the client is
    /// not the gateway's (it left, or the coordinator restarted since).
    fn client_command(
        &self,
        gateway: &GatewayId,
        up: Up,
        payload: &[u8],
    ) -> Result<Option<Command>, super::BusError> {
        if let Up::Partial {
            round,
            kind,
            clients,
            total_weight,
            count,
        } = up
        {
            let sum = match kind {
                VectorKind::Update => PartialVector::Update(super::f64s(payload, self.max_params)?),
                // The model's values and the weight (secagg's encoding).
                VectorKind::Masked => PartialVector::Masked(
                    super::words(payload, self.max_params + 1)?
                        .map(u32::from_le_bytes)
                        .collect(),
                ),
            };
            return Ok(Some(Command::Partial(PartialSum {
                gateway: gateway.as_str().to_string(),
                round,
                clients,
                sum,
                total_weight,
                count,
            })));
        }
        // A message about one client (the others were handled before this).
        let Some(client_id) = Shareable::client(&up) else {
            return Ok(None);
        };
        if self.owner.get(&client_id) != Some(gateway) {
            return Ok(None);
        }
        let words = |max| super::words(payload, max);
        Ok(Some(match up {
            Up::Leave { client_id } => Command::Leave { client_id },
            Up::HeldRes {
                client_id,
                server_round,
                num_examples,
                kind,
            } => match &self.holder_calls {
                Some(calls) => Command::HeldRes {
                    client_id,
                    server_round,
                    num_examples,
                    kind,
                    holder: Holder::new(gateway.as_str().to_string(), calls.clone()),
                },
                None => return Ok(None),
            },
            Up::TrainRes {
                client_id,
                server_round,
                num_examples,
            } => Command::TrainRes {
                client_id,
                server_round,
                num_examples,
                update: words(self.max_params)?.map(f32::from_le_bytes).collect(),
            },
            Up::SecAgg {
                client_id,
                server_round,
                answer,
            } => Command::SecAgg {
                client_id,
                server_round,
                answer,
            },
            Up::TrainFailed {
                client_id,
                server_round,
                reason,
                refuses_run,
            } => Command::TrainFailed {
                client_id,
                server_round,
                reason,
                refuses_run,
            },
            Up::EvaluateRes {
                client_id,
                server_round,
                num_examples,
                loss,
                accuracy,
            } => Command::EvaluateRes {
                client_id,
                server_round,
                num_examples,
                loss,
                accuracy,
            },
            _ => return Ok(None),
        }))
    }

    /// The coordinator answered a join: the gateway hears it, and the client's outbox is
    /// watched from now on.
    async fn joined(
        &mut self,
        joined: Joined,
    ) -> Option<BoxStream<'static, (u64, Option<Outgoing>)>> {
        let Joined {
            gateway,
            conn,
            outbox,
            result,
        } = joined;
        let answer = Down::Joined {
            conn,
            epoch: self.epoch,
            result: result.clone(),
        };
        let client_id = result.ok();
        if let Some(id) = client_id {
            self.owner.insert(id, gateway.clone());
            if let Some(g) = self.gateways.get_mut(&gateway) {
                g.clients.insert(id);
            }
        }
        self.down(&gateway, answer, Vec::new());
        let id = client_id?;
        let messages = stream::unfold(outbox, move |mut rx| async move {
            let out = rx.recv().await?;
            Some(((id, Some(out)), rx))
        });
        // The end of the stream says the coordinator let the client go.
        Some(
            messages
                .chain(stream::once(async move { (id, None) }))
                .boxed(),
        )
    }

    /// A message from the coordinator to a remote client, or (`None`) the client's end.
    async fn outgoing(&mut self, client_id: u64, out: Option<Outgoing>) {
        let Some(gateway) = self.owner.get(&client_id).cloned() else {
            return;
        };
        let Some(out) = out else {
            self.owner.remove(&client_id);
            if let Some(g) = self.gateways.get_mut(&gateway) {
                g.clients.remove(&client_id);
            }
            return self.down(&gateway, Down::Dropped { client_id }, Vec::new());
        };
        match out {
            Outgoing::Text(text) => self.down(&gateway, Down::Text { client_id, text }, Vec::new()),
            Outgoing::Binary(bytes) => {
                self.down(&gateway, Down::Binary { client_id }, bytes.to_vec())
            }
            Outgoing::Model(frame) => {
                let sent = self.gateways.get(&gateway).and_then(|g| g.model);
                if sent != Some(frame.id) {
                    let model = Down::Model { model: frame.id };
                    self.down(&gateway, model, frame.bytes.to_vec());
                    if let Some(g) = self.gateways.get_mut(&gateway) {
                        g.model = Some(frame.id);
                    }
                }
                let send = Down::SendModel {
                    client_id,
                    model: frame.id,
                };
                self.down(&gateway, send, Vec::new());
            }
            Outgoing::Close => self.down(&gateway, Down::Close { client_id }, Vec::new()),
        }
    }

    /// The coordinator's call to a gateway that holds updates.
    async fn holder_call(&mut self, gateway: String, call: HolderCall) {
        let Ok(gateway) = GatewayId::new(&gateway) else {
            return;
        };
        let msg = match call {
            HolderCall::Accept {
                client_id,
                round,
                kind,
                num_examples,
            } => Down::Accept {
                client_id,
                round,
                kind,
                num_examples,
            },
            HolderCall::SendInFull {
                client_id,
                server_round,
            } => Down::SendInFull {
                client_id,
                server_round,
            },
            HolderCall::Collect { round } => Down::Collect { round },
        };
        self.down(&gateway, msg, Vec::new());
    }

    /// A gateway's shard download asks whether its client holds the shard.
    fn shard(&self, request: Message) {
        let Some(reply_to) = request.reply.clone() else {
            return;
        };
        let (nats, coordinator) = (self.nats.clone(), self.coordinator.clone());
        tokio::spawn(async move {
            let grant = match serde_json::from_slice::<ShardQuery>(&request.payload) {
                Ok(q) => {
                    let (reply, answer) = oneshot::channel();
                    let ask = Command::Shard {
                        run_id: q.run_id,
                        shard_index: q.shard_index,
                        client_key: q.client_key,
                        reply,
                    };
                    let asked = coordinator.send(ask).await.is_ok();
                    let granted = if asked {
                        answer.await.ok().flatten()
                    } else {
                        None
                    };
                    granted.map(|(task, indices)| (task.id.to_string(), indices))
                }
                Err(e) => {
                    warn!(error = %e, "a shard query does not decode");
                    None
                }
            };
            let body = serde_json::to_vec(&ShardAnswer { grant }).unwrap_or_default();
            if let Err(e) = nats.publish(reply_to, body.into()).await {
                warn!(error = %e, "cannot answer a shard query");
            }
        });
    }

    /// The coordinator's heartbeat. `false` once the coordinator has stopped.
    async fn tick(&mut self) -> bool {
        if self.coordinator.is_closed() {
            return false;
        }
        let beat = Down::Coordinator { epoch: self.epoch };
        super::publish(&self.nats, self.subjects.heartbeat(), &beat, &[]).await;
        true
    }

    /// A gateway gone takes its clients with it; one that holds clients this coordinator does
    /// not know (it took the gateway for gone, or restarted) has them join again.
    async fn liveness(&mut self, news: Liveness) {
        match news {
            Liveness::New { gateway, clients } => {
                info!(%gateway, clients, "gateway on the bus");
                let known = self.gateways.entry(gateway.clone()).or_default();
                if clients > 0 && known.clients.is_empty() {
                    warn!(%gateway, clients, "a gateway holds clients this coordinator does not know: they join again");
                    self.down(&gateway, Down::Forget, Vec::new());
                }
            }
            Liveness::Gone(gateway) => {
                // The vectors it held for the round are lost now, not at the collect deadline.
                self.command(Command::GatewayGone {
                    gateway: gateway.as_str().to_string(),
                });
                self.outbound.remove(&gateway);
                let Some(g) = self.gateways.remove(&gateway) else {
                    return;
                };
                warn!(%gateway, clients = g.clients.len(), "gateway gone: its clients leave");
                for client_id in g.clients {
                    self.owner.remove(&client_id);
                    self.command(Command::Leave { client_id });
                }
            }
        }
    }
}

/// Watches the gateways' heartbeats on their own subject, apart from the bridge's work: a
/// gateway is gone after [`GATEWAY_SILENCE`] without one, however busy the bridge is.
async fn watch_liveness(
    mut alive: async_nats::Subscriber,
    subjects: Subjects,
    news: mpsc::UnboundedSender<Liveness>,
) {
    // Each gateway's instance and when it was last heard.
    let mut seen: HashMap<GatewayId, (u64, Instant)> = HashMap::new();
    // Each gateway's instance before its last restart, and when it was replaced: heard again
    // soon after, two processes run under one id (each heartbeat then looks like a restart).
    let mut replaced: HashMap<GatewayId, (u64, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            msg = alive.next() => {
                let Some(msg) = msg else { return };
                let Some(gateway) = subjects.alive_of(msg.subject.as_str()) else { continue };
                let Ok((Up::Alive { instance, clients, .. }, _)) = super::decode::<Up>(&msg.payload) else {
                    warn!(%gateway, "a gateway's heartbeat does not decode");
                    continue;
                };
                let before = seen.insert(gateway.clone(), (instance, Instant::now()));
                let restarted = before.is_some_and(|(i, _)| i != instance);
                if let Some((old, _)) = before.filter(|_| restarted) {
                    let twin = replaced
                        .get(&gateway)
                        .is_some_and(|&(i, at)| i == instance && at.elapsed() < GATEWAY_SILENCE);
                    if twin {
                        tracing::error!(%gateway, "two gateway processes run under the id {gateway}: their clients are dropped at every heartbeat; give each its own --gateway id");
                    }
                    replaced.insert(gateway.clone(), (old, Instant::now()));
                    warn!(%gateway, "gateway restarted: its former clients are gone");
                    if news.send(Liveness::Gone(gateway.clone())).is_err() {
                        return;
                    }
                }
                if (before.is_none() || restarted)
                    && news.send(Liveness::New { gateway, clients }).is_err()
                {
                    return;
                }
            }
            _ = tick.tick() => {
                let silent: Vec<GatewayId> = seen
                    .iter()
                    .filter(|(_, (_, t))| t.elapsed() > GATEWAY_SILENCE)
                    .map(|(g, _)| g.clone())
                    .collect();
                for gateway in silent {
                    seen.remove(&gateway);
                    replaced.remove(&gateway);
                    if news.send(Liveness::Gone(gateway)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}
