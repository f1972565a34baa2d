//! The gateway's side of the bus: it serves the gateway's command channel — the one a single
//! server's coordinator serves — by passing client commands up to the coordinator and the
//! coordinator's messages down to the gateway's sockets.
//!
//! The relay holds each client's outbox (the only strong sender, as the coordinator does on a
//! single server: when the relay lets a client go, its socket drains and closes). A client whose
//! outbox is full is let go here, and the coordinator is told it left. The latest global-model
//! frame is kept once and sent to each client the coordinator names; each client's update or
//! masked vector is held until the coordinator accepts it into the round's running sum, which
//! goes up once.

use std::collections::HashMap;
use std::time::Instant;

use async_nats::Client;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::holdings::{HeldVector, Holdings};
use super::{
    Down, GATEWAY_SILENCE, GatewayId, HEARTBEAT, JOIN_TIMEOUT, ShardAnswer, ShardQuery, Subjects,
    Up,
};
use crate::coordinator::{AdminError, Command, Outgoing, ShardGrant};
use crate::coordinator::{RoundRef, VectorKind};

/// At most this many ready messages are taken in one turn of the loop.
const BURST: usize = 4096;
/// How long what the gateway sends up may wait for more: the clients' results of a round come
/// within milliseconds of each other, one per turn of the loop, and would otherwise go up one
/// message each. Nothing here needs an answer faster (rounds take seconds; a join waits 5 ms).
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// What the admin API answers on a gateway.
const NOT_HERE: &str =
    "this server is a gateway: runs, history and the admin API are on the coordinator";

/// Joins sent to the coordinator and not answered yet, at most. The others wait here for
/// their turn, so that a storm of sockets reaches the coordinator at the pace it answers them,
/// rather than all at once, timing out and retrying (which made 10 000 simultaneous clients a
/// storm of retries).
const JOINS_IN_FLIGHT: usize = 256;
/// Sockets waiting for their turn to join, at most; more are told to try again.
const JOINS_WAITING: usize = 100_000;

/// A socket waiting for the coordinator's answer to its join.
struct PendingJoin {
    reply: oneshot::Sender<Result<u64, String>>,
    outbox: mpsc::Sender<Outgoing>,
    /// When its join went to the coordinator; `None` while it waits for its turn.
    sent: Option<Instant>,
}

struct Relay {
    nats: Client,
    subjects: Subjects,
    gateway: GatewayId,
    next_conn: u64,
    pending: HashMap<u64, PendingJoin>,
    /// Joins waiting for their turn (see [`JOINS_IN_FLIGHT`]), in arrival order.
    waiting: std::collections::VecDeque<(u64, Up)>,
    /// Joins sent and not answered.
    in_flight: usize,
    clients: HashMap<u64, mpsc::Sender<Outgoing>>,
    /// The latest global-model frame: its id and bytes.
    model: Option<(u64, Bytes)>,
    /// The coordinator's epoch, once heard, and those it replaced.
    epochs: Epochs,
    /// This gateway process's, drawn at its start (see `Up::Alive`).
    instance: u64,
    /// Where browsers reach this gateway, said in every heartbeat (checked at start).
    public_url: Option<String>,
    /// The messages to go up, sent together after a 5 ms linger (several clients' same
    /// message as one: see [`outbound`](super::outbound)).
    outbound: super::outbound::Outbound<Up>,
    /// The clients' vectors waiting for the coordinator's answer, and the round's sum.
    holdings: Holdings,
}

/// Runs the relay until the gateway's command channel closes.
pub async fn run(
    nats: Client,
    subjects: Subjects,
    gateway: GatewayId,
    public_url: Option<String>,
    mut commands: mpsc::Receiver<Command>,
) -> Result<(), String> {
    let subscribe_error = |e: async_nats::SubscribeError| format!("cannot subscribe on NATS: {e}");
    let mut down = nats
        .subscribe(subjects.down(&gateway))
        .await
        .map_err(subscribe_error)?;
    let mut heartbeat = nats
        .subscribe(subjects.heartbeat())
        .await
        .map_err(subscribe_error)?;
    nats.flush()
        .await
        .map_err(|e| format!("NATS flush failed: {e}"))?;
    info!(%gateway, "gateway relay on the bus");
    let instance = super::random_u64("gateway's instance")?;
    let mut relay = Relay {
        nats,
        subjects,
        gateway,
        // Not 1: a join answer meant for a predecessor under the same name (restarted within
        // the coordinator's silence window) must not find one of this process's sockets.
        next_conn: super::random_u64("gateway's first connection number")? >> 1,
        instance,
        public_url,
        outbound: Default::default(),
        pending: HashMap::new(),
        waiting: Default::default(),
        in_flight: 0,
        clients: HashMap::new(),
        model: None,
        epochs: Epochs::default(),
        holdings: Holdings::default(),
    };
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => {
                    relay.command(cmd).await;
                    for _ in 0..BURST {
                        let Ok(cmd) = commands.try_recv() else { break };
                        relay.command(cmd).await;
                    }
                }
                None => {
                    relay.flush().await;
                    return Ok(());
                }
            },
            msg = down.next() => {
                let Some(msg) = msg else {
                    return Err("the subscription to the coordinator's messages ended".into());
                };
                relay.down(&msg.payload).await;
                for _ in 0..BURST {
                    let Some(Some(msg)) = down.next().now_or_never() else { break };
                    relay.down(&msg.payload).await;
                }
            }
            msg = heartbeat.next() => match msg {
                Some(msg) => relay.heartbeat(&msg.payload),
                None => return Err("the subscription to the coordinator's heartbeat ended".into()),
            },
            _ = tick.tick() => relay.tick().await,
            () = sleep_until(flush_at), if flush_at.is_some() => {
                relay.flush().await;
                flush_at = None;
            }
        }
        // What this turn queued waits [`LINGER`] for the clients' messages that come just
        // after, so that those of a burst share a message (see `outbound`).
        if flush_at.is_none() && !relay.outbound.is_empty() {
            flush_at = Some(tokio::time::Instant::now() + LINGER);
        }
    }
}

/// Resolves at `at` (never when `None`).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Relay {
    /// A message to the coordinator, sent with the others of this moment by [`Relay::flush`]
    /// (several clients' same message as one).
    fn up(&mut self, msg: Up, payload: Vec<u8>) {
        self.outbound.push(msg, payload);
    }

    /// Sends what waits to go up: messages without payload in batches, those with one alone,
    /// in order.
    async fn flush(&mut self) {
        if self.outbound.is_empty() {
            return;
        }
        let subject = self.subjects.up(&self.gateway);
        let batch = |messages| Up::Batch { messages };
        super::send_in_order(&self.nats, &subject, self.outbound.take(), batch).await;
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join {
                client_key,
                capabilities,
                outbox,
                reply,
            } => {
                if self.waiting.len() >= JOINS_WAITING {
                    let busy = format!(
                        "this gateway has {JOINS_WAITING} sockets waiting to join: try again"
                    );
                    let _ignored_if_gone = reply.send(Err(busy));
                    return;
                }
                let conn = self.next_conn;
                self.next_conn = self.next_conn.wrapping_add(1);
                let join = PendingJoin {
                    reply,
                    outbox,
                    sent: None,
                };
                self.pending.insert(conn, join);
                let join = Up::Join {
                    conn,
                    client_key,
                    capabilities,
                };
                self.waiting.push_back((conn, join));
                self.send_joins().await;
            }
            Command::Leave { client_id } => {
                self.clients.remove(&client_id);
                self.up(Up::Leave { client_id }, Vec::new());
            }
            Command::TrainRes {
                client_id,
                server_round,
                num_examples,
                update,
            } => {
                let vector = HeldVector::Update(update);
                self.hold(client_id, server_round, num_examples, vector)
                    .await;
            }
            Command::MaskedRes {
                client_id,
                server_round,
                num_examples,
                masked,
            } => {
                let vector = HeldVector::Masked(masked);
                self.hold(client_id, server_round, num_examples, vector)
                    .await;
            }
            Command::SecAgg {
                client_id,
                server_round,
                answer,
            } => {
                let msg = Up::SecAgg {
                    client_id,
                    server_round,
                    answer,
                };
                self.up(msg, Vec::new());
            }
            Command::TrainFailed {
                client_id,
                server_round,
                reason,
                refuses_run,
            } => {
                let msg = Up::TrainFailed {
                    client_id,
                    server_round,
                    reason,
                    refuses_run,
                };
                self.up(msg, Vec::new());
            }
            Command::EvaluateRes {
                client_id,
                server_round,
                num_examples,
                loss,
                accuracy,
            } => {
                let msg = Up::EvaluateRes {
                    client_id,
                    server_round,
                    num_examples,
                    loss,
                    accuracy,
                };
                self.up(msg, Vec::new());
            }
            Command::Shard {
                run_id,
                shard_index,
                client_key,
                reply,
            } => {
                let query = ShardQuery {
                    run_id,
                    shard_index,
                    client_key,
                };
                let (nats, subject) = (self.nats.clone(), self.subjects.shard());
                tokio::spawn(async move {
                    let _ignored_if_gone = reply.send(ask_shard(&nats, subject, &query).await);
                });
            }
            Command::CreateRun { reply, .. } | Command::Control { reply, .. } => {
                let _ignored_if_gone = reply.send(Err(AdminError::NotFound(NOT_HERE.into())));
            }
            Command::ListRuns { reply } => {
                let _ignored_if_gone = reply.send(Err(AdminError::NotFound(NOT_HERE.into())));
            }
            Command::History { reply, .. } => {
                let _ignored_if_gone = reply.send(Err(AdminError::NotFound(NOT_HERE.into())));
            }
            Command::Model { reply, .. } => {
                let _ignored_if_gone = reply.send(Err(AdminError::NotFound(NOT_HERE.into())));
            }
            Command::ListClients { reply } => {
                let _ignored_if_gone = reply.send(Vec::new());
            }
            // What the bridge sends a coordinator, never a socket a gateway.
            Command::HeldRes { .. } | Command::Partial(_) | Command::GatewayGone { .. } => {}
        }
    }

    /// A client's checked result: held here, and the coordinator told what it may judge
    /// without the vector; its answer decides the vector's fate.
    async fn hold(
        &mut self,
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        vector: HeldVector,
    ) {
        let kind = self
            .holdings
            .hold(client_id, server_round, num_examples, vector);
        let res = Up::HeldRes {
            client_id,
            server_round,
            num_examples,
            kind,
        };
        self.up(res, Vec::new());
    }

    /// A message (or batch of them) from the coordinator.
    async fn down(&mut self, bytes: &[u8]) {
        match super::decode::<Down>(bytes) {
            Ok((Down::Batch { .. }, batch)) => {
                for item in super::unbatch(batch, |m| matches!(m, Down::Batch { .. })) {
                    match item {
                        Ok((msg, payload)) => self.one_down(msg, payload).await,
                        Err(e) => {
                            warn!(error = %e, "a batch from the coordinator was cut short");
                            break;
                        }
                    }
                }
            }
            Ok((msg, payload)) => self.one_down(msg, payload).await,
            Err(e) => warn!(error = %e, "a message from the coordinator does not decode"),
        }
    }

    async fn one_down(&mut self, msg: Down, payload: &[u8]) {
        match msg {
            Down::Joined {
                conn,
                epoch,
                result,
            } => self.joined(conn, epoch, result).await,
            Down::Text { client_id, text } => self.deliver(client_id, Outgoing::Text(text)).await,
            Down::Texts { clients, text } => {
                for client_id in clients {
                    if self.clients.contains_key(&client_id) {
                        self.deliver(client_id, Outgoing::Text(text.clone())).await;
                    }
                }
            }
            Down::SendModels { model, clients } => {
                for client_id in clients {
                    self.send_model(client_id, model).await;
                }
            }
            Down::Accepts {
                round,
                kind,
                clients,
            } => {
                for (client_id, num_examples) in clients {
                    self.accept(client_id, round, kind, num_examples);
                }
            }
            Down::Binary { client_id } => {
                let bytes = Bytes::copy_from_slice(payload);
                self.deliver(client_id, Outgoing::Binary(bytes)).await;
            }
            Down::Model { model } => self.model = Some((model, Bytes::copy_from_slice(payload))),
            Down::SendModel { client_id, model } => self.send_model(client_id, model).await,
            Down::Close { client_id } => self.deliver(client_id, Outgoing::Close).await,
            Down::Accept {
                client_id,
                round,
                kind,
                num_examples,
            } => self.accept(client_id, round, kind, num_examples),
            Down::SendInFull {
                client_id,
                server_round,
            } => self.send_in_full(client_id, server_round).await,
            Down::Collect { round } => self.collect(round).await,
            Down::Dropped { client_id } => {
                self.clients.remove(&client_id);
            }
            Down::Forget => self.forget_all("the coordinator does not know this gateway's clients"),
            // The heartbeat's (another subject); a batch was opened by `down`.
            Down::Coordinator { .. } | Down::Batch { .. } => {}
        }
    }

    /// Disconnects every client (they reconnect and join again with their keys) and fails the
    /// joins in flight.
    fn forget_all(&mut self, why: &str) {
        warn!(
            clients = self.clients.len(),
            "{why}: disconnecting this gateway's clients so they join again"
        );
        self.clients.clear();
        self.holdings = Holdings::default();
        for (_, join) in self.pending.drain() {
            let _ignored_if_gone = join.reply.send(Err(format!("{why}: join again")));
        }
        self.waiting.clear();
        self.in_flight = 0;
        // What was about to go up concerns clients the coordinator no longer has (its ids
        // restart: a stale Leave could drop a new client of the same id).
        let _stale = self.outbound.take();
        self.model = None;
    }

    /// The coordinator accepted a held vector: into its round's sum. (Checked by the socket
    /// handler already: a refusal here leaves the client out of the sum, and the coordinator
    /// then fails that client alone — so it is logged.)
    fn accept(&mut self, client_id: u64, round: RoundRef, kind: VectorKind, num_examples: u64) {
        if let Err(e) = self.holdings.accept(client_id, round, kind, num_examples) {
            warn!(client_id, ?round, ?kind, num_examples, "{e}");
        }
    }

    /// The run's rule looks at each update: the held one goes up whole.
    async fn send_in_full(&mut self, client_id: u64, server_round: u64) {
        match self.holdings.take_update(client_id, server_round) {
            Some((num_examples, update)) => {
                let res = Up::TrainRes {
                    client_id,
                    server_round,
                    num_examples,
                };
                self.up(res, super::f32s_to_bytes(&update));
            }
            None => warn!(
                client_id,
                server_round, "asked for an update in full that this gateway does not hold"
            ),
        }
    }

    /// The round's training is over: its sum goes to the coordinator (an empty one when this
    /// gateway holds none), and the vectors held for it or earlier go.
    async fn collect(&mut self, round: RoundRef) {
        let clients = &self.clients;
        let (partial, payload) = self.holdings.collect(round, |c| clients.contains_key(&c));
        self.up(partial, payload);
    }

    /// Sends waiting joins while fewer than [`JOINS_IN_FLIGHT`] are unanswered (a socket gone
    /// before its turn is skipped).
    async fn send_joins(&mut self) {
        while self.in_flight < JOINS_IN_FLIGHT {
            let Some((conn, join)) = self.waiting.pop_front() else {
                return;
            };
            match self.pending.get_mut(&conn) {
                Some(p) if !p.reply.is_closed() => {
                    p.sent = Some(Instant::now());
                    self.in_flight += 1;
                    self.up(join, Vec::new());
                }
                _ => {
                    self.pending.remove(&conn);
                }
            }
        }
    }

    async fn joined(&mut self, conn: u64, epoch: u64, result: Result<u64, String>) {
        if self.epochs.ignores(epoch, Instant::now()) {
            // A replaced coordinator answered (late): its client id means nothing to the
            // coordinator of now, which got the same join and answers it too (or the join
            // times out).
            return warn!(
                conn,
                epoch, "a join answered by a replaced coordinator: ignored"
            );
        }
        let Some(join) = self.pending.remove(&conn) else {
            // Timed out here already, or forgotten since: the coordinator's client has no
            // socket. Said only to the coordinator that answered (ids restart with it: another
            // one's client may have the same).
            if let Ok(client_id) = result
                && self.epochs.is_current(epoch)
            {
                self.up(Up::Leave { client_id }, Vec::new());
            }
            return;
        };
        if join.sent.is_some() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        // A pending join went up after the last forget: its answer is from the coordinator of
        // now (maybe before its heartbeat is heard), never from one before.
        self.heard_epoch(epoch);
        self.send_joins().await;
        if let Ok(client_id) = result {
            self.clients.insert(client_id, join.outbox);
            if join.reply.send(Ok(client_id)).is_err() {
                self.let_go(client_id).await;
            }
        } else {
            let _ignored_if_gone = join.reply.send(result);
        }
    }

    /// Sends a client the model frame `model`, kept once for all.
    async fn send_model(&mut self, client_id: u64, model: u64) {
        match &self.model {
            Some((id, bytes)) if *id == model => {
                let frame = Outgoing::Binary(bytes.clone());
                self.deliver(client_id, frame).await;
            }
            _ => {
                // Cannot happen while the bus keeps the coordinator's order; if it does, the
                // client leaves (its round counts it failed) rather than wait forever.
                warn!(
                    client_id,
                    model, "asked to send a model this gateway was not sent"
                );
                self.let_go(client_id).await;
            }
        }
    }

    /// Queues a message for a client; a client too slow to take it is let go.
    async fn deliver(&mut self, client_id: u64, msg: Outgoing) {
        let Some(outbox) = self.clients.get(&client_id) else {
            return;
        };
        if let Err(e) = outbox.try_send(msg) {
            warn!(client_id, error = %e, "client's outbox is full or closed: disconnecting it");
            self.let_go(client_id).await;
        }
    }

    async fn let_go(&mut self, client_id: u64) {
        self.clients.remove(&client_id);
        self.up(Up::Leave { client_id }, Vec::new());
    }

    /// A new coordinator epoch after another: the coordinator restarted and knows none of this
    /// gateway's clients. They are disconnected, and join again with their keys.
    fn heartbeat(&mut self, bytes: &[u8]) {
        let Ok((Down::Coordinator { epoch }, _)) = super::decode::<Down>(bytes) else {
            return warn!("a heartbeat from the coordinator does not decode");
        };
        self.heard_epoch(epoch);
    }

    /// The coordinator's epoch, from its heartbeat or a join answer (whichever comes first):
    /// another one than before means it restarted, and knows none of the clients here.
    fn heard_epoch(&mut self, epoch: u64) {
        match self.epochs.hear(epoch, Instant::now()) {
            Heard::Current | Heard::Retired { again: true } => {}
            Heard::New => self.forget_all("the coordinator restarted"),
            Heard::Retired { again: false } => warn!(
                epoch,
                "a replaced coordinator is still on the bus: ignored while the coordinator of \
                 now is heard (two coordinators on one bus would each disconnect the other's \
                 clients)"
            ),
        }
    }

    async fn tick(&mut self) {
        let alive = Up::Alive {
            instance: self.instance,
            clients: self.clients.len() as u64,
            url: self.public_url.clone(),
        };
        let subject = self.subjects.alive(&self.gateway);
        super::publish(&self.nats, subject, &alive, &[]).await;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, j)| j.sent.is_some_and(|t| t.elapsed() > JOIN_TIMEOUT))
            .map(|(&conn, _)| conn)
            .collect();
        for conn in expired {
            if let Some(join) = self.pending.remove(&conn) {
                self.in_flight = self.in_flight.saturating_sub(1);
                let message = format!(
                    "the coordinator did not answer within {} s: try again",
                    JOIN_TIMEOUT.as_secs()
                );
                let _ignored_if_gone = join.reply.send(Err(message));
            }
        }
        self.send_joins().await;
    }
}

/// Asks the coordinator whether the key holds the shard; `None` when it does not, or the
/// coordinator cannot be asked.
async fn ask_shard(nats: &Client, subject: String, query: &ShardQuery) -> Option<ShardGrant> {
    let body = serde_json::to_vec(query).ok()?;
    let answer = match nats.request(subject, body.into()).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot ask the coordinator for a shard");
            return None;
        }
    };
    let ShardAnswer { grant } = serde_json::from_slice(&answer.payload).ok()?;
    let (task, indices) = grant?;
    Some((learning::task::find(&task).ok()?, indices))
}

/// What one heard epoch means for this gateway.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    /// The coordinator of now (or the first one heard).
    Current,
    /// Another coordinator than the one of now: it restarted, and knows none of our clients.
    New,
    /// One this gateway saw replaced, while the one of now is still heard: ignored. `again`
    /// after the first time for this epoch (said once).
    Retired { again: bool },
}

/// The coordinators' epochs as this gateway heard them: the one of now, when it was last
/// heard, and the last ones it replaced. Only a heartbeat and a join answer carry an epoch. A
/// replaced one heard again (a killed coordinator's late answers, or two coordinators on one
/// bus) is ignored while the one of now is heard: going back and forth would disconnect every
/// client at each change. Once the one of now has been silent for [`GATEWAY_SILENCE`], any
/// epoch heard is taken (a second coordinator stopped, the first still running).
#[derive(Debug, Default)]
struct Epochs {
    current: Option<(u64, Instant)>,
    /// The last [`Epochs::KEPT`] replaced, oldest first.
    retired: std::collections::VecDeque<u64>,
    /// The last retired epoch that was ignored (to say it once).
    ignored: Option<u64>,
}

impl Epochs {
    const KEPT: usize = 16;

    fn hear(&mut self, epoch: u64, now: Instant) -> Heard {
        if self.ignores(epoch, now) {
            let again = self.ignored.replace(epoch) == Some(epoch);
            return Heard::Retired { again };
        }
        self.retired.retain(|&e| e != epoch);
        match self.current.replace((epoch, now)) {
            None => Heard::Current,
            Some((before, _)) if before == epoch => Heard::Current,
            Some((before, _)) => {
                if self.retired.len() == Self::KEPT {
                    self.retired.pop_front();
                }
                self.retired.push_back(before);
                Heard::New
            }
        }
    }

    /// `epoch` is a replaced one and the coordinator of now was heard lately.
    fn ignores(&self, epoch: u64, now: Instant) -> bool {
        self.retired.contains(&epoch)
            && self
                .current
                .is_some_and(|(_, at)| now.saturating_duration_since(at) <= GATEWAY_SILENCE)
    }

    fn is_current(&self, epoch: u64) -> bool {
        self.current.is_some_and(|(e, _)| e == epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A killed coordinator's join answers may arrive after its successor was heard: taking
    /// its epoch back would disconnect every client, and again at the successor's next
    /// heartbeat.
    #[test]
    fn a_replaced_coordinator_is_not_taken_back_while_the_new_one_is_heard() {
        let t = Instant::now();
        let mut epochs = Epochs::default();
        assert_eq!(epochs.hear(1, t), Heard::Current);
        assert_eq!(epochs.hear(1, t), Heard::Current);
        assert_eq!(epochs.hear(2, t), Heard::New);
        assert_eq!(epochs.hear(1, t), Heard::Retired { again: false });
        assert_eq!(epochs.hear(1, t), Heard::Retired { again: true });
        assert!(epochs.is_current(2) && !epochs.is_current(1));
        assert_eq!(epochs.hear(2, t), Heard::Current);
        assert_eq!(epochs.hear(3, t), Heard::New);
        assert!(epochs.ignores(1, t) && epochs.ignores(2, t) && !epochs.ignores(3, t));
    }

    /// A second coordinator started by mistake and stopped: the first, still running, is
    /// taken back once the second has been silent for the gateways' silence window, or every
    /// join would time out for good.
    #[test]
    fn a_replaced_coordinator_is_taken_back_once_the_new_one_is_silent() {
        let t = Instant::now();
        let mut epochs = Epochs::default();
        epochs.hear(1, t);
        epochs.hear(2, t);
        let later = t + GATEWAY_SILENCE + Duration::from_millis(1);
        assert!(epochs.ignores(1, t + GATEWAY_SILENCE));
        assert!(epochs.ignores(1, t + Duration::from_secs(1)));
        assert!(!epochs.ignores(1, later));
        assert_eq!(epochs.hear(1, later), Heard::New);
        assert!(epochs.is_current(1) && epochs.ignores(2, later));
    }

    #[test]
    fn the_retired_epochs_are_bounded() {
        let t = Instant::now();
        let mut epochs = Epochs::default();
        for e in 0..100 {
            epochs.hear(e, t);
        }
        assert_eq!(epochs.retired.len(), Epochs::KEPT);
        assert!(epochs.ignores(98, t) && !epochs.ignores(98 - Epochs::KEPT as u64, t));
    }
}
