//! The bus between gateways and the coordinator, over NATS (Debian's `nats-server`).
//!
//! A **gateway** is this server in a gateway role: it terminates client WebSockets and shard
//! downloads and validates every frame as a single server does (`ws`), but its command channel
//! goes to a [`relay`] that speaks to the coordinator over the bus instead of to a coordinator of
//! its own. The **coordinator** is a single server with a [`bridge`]: a client of its command
//! channel, as a socket handler is, for every client of every gateway.
//!
//! * Gateway → coordinator: [`Up`] on `<prefix>.up.<gateway>` (the subject names the sender).
//! * Coordinator → one gateway: [`Down`] on `<prefix>.gw.<gateway>`, in order (NATS keeps one
//!   publisher's order on one subject, which is why a join's answer travels there too).
//! * Gateway → coordinator: its heartbeat on `<prefix>.alive.<gateway>`, watched apart from
//!   everything else, so that a backlog of messages never makes a live gateway look dead.
//! * Coordinator → every gateway: its heartbeat on `<prefix>.gw.all`. A new epoch means the
//!   coordinator restarted and knows none of the gateways' clients: they are disconnected, and
//!   reconnect and join again with their keys (the ledger is in the store).
//! * Shard grants: request/reply on `<prefix>.shard`.
//!
//! The global model crosses the bus once per round per gateway (`Down::Model`); each client of
//! the gateway is then sent only its id. Updates go the other way summed: a gateway holds each
//! checked update (`Up::HeldRes`), folds those the coordinator accepts into one running sum per
//! round (`Down::Accept`), and sends the sum when the round's training is over (`Down::Collect`,
//! `Up::Partial`) — so the coordinator receives one vector per gateway per round, whatever the
//! number of clients. Masked vectors (secure aggregation) are summed the same way, modulo 2³²:
//! the protocol's sum is associative, and the coordinator unmasks the sum of the sums. Rules
//! that look at each update (the robust ones) have it cross in full (`Down::SendInFull`).
//! Messages are a JSON header and a binary payload ([`encode`]): vectors travel as
//! little-endian numbers, never as JSON text. The same message to (or about) several clients
//! of a gateway crosses once, naming them ([`outbound`]), and messages without payload travel
//! in batches ([`Batch`]): a round's control costs the bus little more than an id per client.
//!
//! The bus is the operator's own infrastructure, but what arrives on it is still decoded with
//! bounds ([`decode`]) and a gateway may only speak for its own clients.

pub mod bridge;
pub mod holdings;
pub mod outbound;
pub mod peers;
pub mod relay;

use std::time::Duration;

use protocol::messages::Capabilities;
use serde::{Deserialize, Serialize};

use crate::coordinator::{RoundRef, SecAggAnswer, VectorKind};

/// How often each side says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A gateway not heard from for this long is gone: its clients leave their rounds.
pub const GATEWAY_SILENCE: Duration = Duration::from_secs(5);
/// A join the coordinator has not answered within this time fails (the client retries).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages a subscription queues before NATS drops them (a slow consumer).
pub const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// Largest JSON header accepted (a `SecAgg` answer with its envelopes is the largest).
pub const MAX_HEADER: usize = 4 << 20;

/// The subjects of one deployment: every name starts with its prefix, so several federations
/// can share one NATS server.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// `prefix` is one or more subject tokens (`fl`, `fl.eu`).
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.split('.').all(token_ok) {
            Ok(Self {
                prefix: prefix.to_string(),
            })
        } else {
            Err(format!(
                "bus prefix {prefix:?}: expected dot-separated names of letters, digits, '-' and '_'"
            ))
        }
    }

    pub fn up(&self, gateway: &GatewayId) -> String {
        format!("{}.up.{}", self.prefix, gateway.0)
    }

    /// What the coordinator subscribes to: every gateway's `up`.
    pub fn up_all(&self) -> String {
        format!("{}.up.*", self.prefix)
    }

    pub fn down(&self, gateway: &GatewayId) -> String {
        format!("{}.gw.{}", self.prefix, gateway.0)
    }

    pub fn heartbeat(&self) -> String {
        format!("{}.gw.all", self.prefix)
    }

    pub fn shard(&self) -> String {
        format!("{}.shard", self.prefix)
    }

    /// Each gateway's heartbeat: its own subject, so that the coordinator hears it at once
    /// however far behind the gateways' other messages it is.
    pub fn alive(&self, gateway: &GatewayId) -> String {
        format!("{}.alive.{}", self.prefix, gateway.0)
    }

    pub fn alive_all(&self) -> String {
        format!("{}.alive.*", self.prefix)
    }

    /// The gateway an `up` subject came from.
    pub fn gateway_of(&self, subject: &str) -> Option<GatewayId> {
        self.sender(subject, ".up.")
    }

    /// The gateway an `alive` subject came from.
    pub fn alive_of(&self, subject: &str) -> Option<GatewayId> {
        self.sender(subject, ".alive.")
    }

    fn sender(&self, subject: &str, kind: &str) -> Option<GatewayId> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(kind)?;
        GatewayId::new(rest).ok()
    }
}

fn token_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A gateway's name on the bus: one subject token, unique in the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GatewayId(String);

impl GatewayId {
    pub fn new(id: &str) -> Result<Self, String> {
        if token_ok(id) && id != "all" {
            Ok(Self(id.to_string()))
        } else {
            Err(format!(
                "gateway id {id:?}: expected 1 to 64 letters, digits, '-' or '_' (and not \"all\")"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GatewayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Gateway → coordinator. `client_id` is the coordinator's id of a client of the sending
/// gateway; vectors are the payload.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    /// Several messages without payload, framed in the payload ([`Batch`]).
    Batch {
        messages: u32,
    },
    /// The heartbeat (on its own subject), with how many clients the gateway holds. `instance`
    /// is drawn at the gateway's start: a gateway restarted under the same name is a new one,
    /// whose predecessor's clients are gone, however soon it is back. `url`: where browsers
    /// reach it (`--public-url`), listed by every server at `GET /api/servers` ([`peers`]).
    Alive {
        instance: u64,
        clients: u64,
        #[serde(default)]
        url: Option<String>,
    },
    /// A socket said `Hello`; `conn` is the gateway's number for it until the answer.
    Join {
        conn: u64,
        client_key: Option<String>,
        capabilities: Capabilities,
    },
    Leave {
        client_id: u64,
    },
    /// `Leave` for each of these clients ([`outbound`]).
    Leaves {
        clients: Vec<u64>,
    },
    /// Payload: the update, f32 little-endian.
    TrainRes {
        client_id: u64,
        server_round: u64,
        num_examples: u64,
    },
    /// A result whose vector (an update, or a masked vector) the gateway checked and holds:
    /// the coordinator answers `Down::Accept` (it goes into the gateway's sum for the round)
    /// or, for an update, `Down::SendInFull`.
    HeldRes {
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        kind: VectorKind,
    },
    /// `HeldRes` of one round and kind for each of these clients, with its weight.
    HeldMany {
        server_round: u64,
        kind: VectorKind,
        clients: Vec<(u64, u64)>,
    },
    /// The answer to `Down::Collect`: the sum of the round's accepted vectors. Payload:
    /// Σ num_examples·update as f64, or Σ masked vectors mod 2³² as u32, little-endian.
    Partial {
        round: RoundRef,
        kind: VectorKind,
        clients: Vec<u64>,
        total_weight: u64,
        count: usize,
    },
    SecAgg {
        client_id: u64,
        server_round: u64,
        answer: SecAggAnswer,
    },
    TrainFailed {
        client_id: u64,
        server_round: u64,
        reason: String,
        refuses_run: bool,
    },
    EvaluateRes {
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        loss: f64,
        accuracy: f64,
    },
}

/// Coordinator → gateway.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    /// Several messages without payload, framed in the payload ([`Batch`]).
    Batch {
        messages: u32,
    },
    /// On the heartbeat subject: the coordinator's epoch (new at every start).
    Coordinator {
        epoch: u64,
    },
    /// The answer to `Up::Join`: the client's id, or why it may not join. With the
    /// coordinator's epoch: the heartbeat that announces a restarted coordinator travels on
    /// another subject, in no order with this answer.
    Joined {
        conn: u64,
        epoch: u64,
        result: Result<u64, String>,
    },
    Text {
        client_id: u64,
        text: String,
    },
    /// The same text to each of these clients ([`outbound`]).
    Texts {
        clients: Vec<u64>,
        text: String,
    },
    /// Payload: the message.
    Binary {
        client_id: u64,
    },
    /// Payload: a global-model frame, kept until the next one.
    Model {
        model: u64,
    },
    /// Send the client the model frame `model` (sent before, as `Down::Model`).
    SendModel {
        client_id: u64,
        model: u64,
    },
    /// `SendModel` to each of these clients.
    SendModels {
        model: u64,
        clients: Vec<u64>,
    },
    /// Close the client's connection after what is queued.
    Close {
        client_id: u64,
    },
    /// Fold the client's held vector, of this kind and weight, into the round's sum.
    Accept {
        client_id: u64,
        round: RoundRef,
        kind: VectorKind,
        num_examples: u64,
    },
    /// `Accept` for each of these clients, with its weight.
    Accepts {
        round: RoundRef,
        kind: VectorKind,
        clients: Vec<(u64, u64)>,
    },
    /// Send the client's held update itself (`Up::TrainRes`).
    SendInFull {
        client_id: u64,
        server_round: u64,
    },
    /// Send the round's sum (`Up::Partial`).
    Collect {
        round: RoundRef,
    },
    /// The coordinator let the client go (left, replaced, too slow): its connection ends.
    Dropped {
        client_id: u64,
    },
    /// The coordinator does not know this gateway's clients (it took the gateway for gone, or
    /// restarted): they are disconnected, and join again.
    Forget,
}

/// A shard download asks whether the key holds the shard.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardQuery {
    pub run_id: u64,
    pub shard_index: u32,
    pub client_key: String,
}

/// The answer: the shard's task and example indices, if the key holds it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardAnswer {
    pub grant: Option<(String, Vec<usize>)>,
}

/// Why a bus message was refused.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus message of {len} bytes is shorter than its 4-byte header length")]
    Short { len: usize },
    #[error(
        "bus message header of {header} bytes: expected at most {max} and at most the {len} bytes received"
    )]
    Header {
        header: usize,
        max: usize,
        len: usize,
    },
    #[error("bus message header does not decode: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bus payload of {len} bytes: expected a whole number of values, at most {max} bytes")]
    Payload { len: usize, max: usize },
    #[error("a batched message of {len} bytes, past the {left} bytes left in its batch")]
    Frame { len: usize, left: usize },
    #[error("a batch inside a batch")]
    Nested,
}

/// A random number from the OS: a coordinator's epoch, a gateway's instance.
pub fn random_u64(what: &str) -> Result<u64, String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| format!("no OS randomness for the {what}: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

/// A message: the header's length (u32 LE), the JSON header, the payload.
pub fn encode(header: &impl Serialize, payload: &[u8]) -> bytes::Bytes {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len() + payload.len());
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(payload);
    out.into()
}

/// Largest batch of messages sent as one (far below NATS's default 1 MiB payload limit; a
/// single message is at most ≈ 80 KB of shared ids, see `outbound`).
pub const MAX_BATCH: usize = 256 << 10;

/// Messages without payload to one subject, sent together: one NATS message carries many, each
/// framed as its length (u32 LE) and its own encoding. A round's per-client instructions and
/// answers then cost the bus, and the processes at both ends, per batch rather than per
/// client. [`send_in_order`] sends a message with a payload alone after the batch before it,
/// so the order on the subject is the order of sending.
#[derive(Debug, Default)]
pub struct Batch {
    frames: Vec<u8>,
    messages: u32,
}

impl Batch {
    /// Adds a message; the batch goes first if the message would take it past [`MAX_BATCH`].
    pub async fn add<H: Serialize>(
        &mut self,
        nats: &async_nats::Client,
        subject: &str,
        message: &H,
        batch: impl Fn(u32) -> H,
    ) {
        let m = encode(message, &[]);
        if self.messages > 0 && self.frames.len() + 4 + m.len() > MAX_BATCH {
            self.flush(nats, subject, &batch).await;
        }
        self.push(&m);
    }

    /// Appends one encoded message as a frame: its length (u32 LE), then itself.
    fn push(&mut self, m: &[u8]) {
        self.frames
            .extend_from_slice(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.frames.extend_from_slice(m);
        self.messages += 1;
    }

    /// A batch of these encoded messages, unsent: how many, and the framed payload that
    /// [`frames`] and [`unbatch`] read (tests and the fuzz seeds build batches with it).
    pub fn framed<M: AsRef<[u8]>>(messages: &[M]) -> (u32, Vec<u8>) {
        let mut batch = Self::default();
        for m in messages {
            batch.push(m.as_ref());
        }
        (batch.messages, batch.frames)
    }

    /// Sends what it holds: one message as itself, several as a batch.
    pub async fn flush<H: Serialize>(
        &mut self,
        nats: &async_nats::Client,
        subject: &str,
        batch: impl Fn(u32) -> H,
    ) {
        let frames = std::mem::take(&mut self.frames);
        let messages = std::mem::take(&mut self.messages);
        let bytes = match messages {
            0 => return,
            1 => bytes::Bytes::copy_from_slice(&frames[4..]),
            n => encode(&batch(n), &frames),
        };
        if let Err(e) = nats.publish(subject.to_string(), bytes).await {
            tracing::warn!(subject, error = %e, "cannot publish on NATS");
        }
    }
}

/// Sends `messages` on `subject` in order: those without payload in batches, one with a
/// payload alone after the batch before it.
pub async fn send_in_order<H: Serialize>(
    nats: &async_nats::Client,
    subject: &str,
    messages: Vec<(H, Vec<u8>)>,
    batch: impl Fn(u32) -> H,
) {
    let mut pending = Batch::default();
    for (msg, payload) in messages {
        if payload.is_empty() {
            pending.add(nats, subject, &msg, &batch).await;
        } else {
            pending.flush(nats, subject, &batch).await;
            publish(nats, subject.to_string(), &msg, &payload).await;
        }
    }
    pending.flush(nats, subject, &batch).await;
}

/// The messages of a batch's payload, each decoded with [`decode`]'s bounds; a frame cut short,
/// one that does not decode, or a batch inside the batch (`is_batch`) ends it with an error.
pub fn unbatch<T: for<'de> Deserialize<'de>>(
    payload: &[u8],
    is_batch: fn(&T) -> bool,
) -> impl Iterator<Item = Result<(T, &[u8]), BusError>> {
    frames(payload).map(move |frame| {
        let (msg, payload) = decode::<T>(frame?)?;
        if is_batch(&msg) {
            return Err(BusError::Nested);
        }
        Ok((msg, payload))
    })
}

/// The messages of a batch's payload, each still to be decoded (with [`decode`]'s bounds); a
/// frame that does not fit what is left ends it with an error.
pub fn frames(payload: &[u8]) -> impl Iterator<Item = Result<&[u8], BusError>> {
    let mut rest = payload;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((head, tail)) = rest.split_first_chunk::<4>() else {
            let len = rest.len();
            rest = &[];
            return Some(Err(BusError::Short { len }));
        };
        let len = u32::from_le_bytes(*head) as usize;
        if len > tail.len() {
            let left = tail.len();
            rest = &[];
            return Some(Err(BusError::Frame { len, left }));
        }
        let (frame, after) = tail.split_at(len);
        rest = after;
        Some(Ok(frame))
    })
}

/// Publishes a message; a failure (the connection to NATS is down) is logged, and what it
/// carried is lost as a dropped connection loses it: rounds close by their deadlines.
pub async fn publish(
    nats: &async_nats::Client,
    subject: String,
    header: &impl Serialize,
    payload: &[u8],
) {
    if let Err(e) = nats.publish(subject.clone(), encode(header, payload)).await {
        tracing::warn!(subject, error = %e, "cannot publish on NATS");
    }
}

/// The header and the payload of a message, the header's length bounded.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<(T, &[u8]), BusError> {
    let len = bytes.len();
    let (head, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(BusError::Short { len })?;
    let header = u32::from_le_bytes(*head) as usize;
    if header > MAX_HEADER || header > rest.len() {
        return Err(BusError::Header {
            header,
            max: MAX_HEADER,
            len,
        });
    }
    let (json, payload) = rest.split_at(header);
    Ok((serde_json::from_slice(json)?, payload))
}

/// A payload of 4-byte little-endian values, at most `max` of them.
pub fn words(payload: &[u8], max: usize) -> Result<impl Iterator<Item = [u8; 4]> + '_, BusError> {
    if !payload.len().is_multiple_of(4) || payload.len() / 4 > max {
        return Err(BusError::Payload {
            len: payload.len(),
            max: max.saturating_mul(4),
        });
    }
    Ok(payload.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]))
}

/// A payload of f64 little-endian values, at most `max` of them.
pub fn f64s(payload: &[u8], max: usize) -> Result<Vec<f64>, BusError> {
    if !payload.len().is_multiple_of(8) || payload.len() / 8 > max {
        return Err(BusError::Payload {
            len: payload.len(),
            max: max.saturating_mul(8),
        });
    }
    Ok(payload
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

pub fn f64s_to_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f32s_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn u32s_to_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Connects to the NATS server at `url` (`nats://host:4222`, with `user:password@` if the server
/// asks for them), retrying while it starts.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .name(name)
        // Messages a subscriber has not taken yet: a join storm of 10 000 clients must wait
        // in the queue, not be dropped (the default holds 65 536).
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to NATS at {}: {e}",
                crate::store::redacted(url)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_comes_back_as_it_went_and_bad_ones_are_named() {
        let msg = Up::TrainRes {
            client_id: 7,
            server_round: 3,
            num_examples: 600,
        };
        let bytes = encode(&msg, &f32s_to_bytes(&[1.5, -2.0]));
        let (back, payload): (Up, _) = decode(&bytes).unwrap();
        assert!(matches!(
            back,
            Up::TrainRes {
                client_id: 7,
                server_round: 3,
                num_examples: 600
            }
        ));
        let values: Vec<f32> = words(payload, 2).unwrap().map(f32::from_le_bytes).collect();
        assert_eq!(values, [1.5, -2.0]);

        assert!(matches!(words(payload, 1), Err(BusError::Payload { .. })));
        assert!(matches!(
            words(&payload[1..], 2),
            Err(BusError::Payload { .. })
        ));
        assert!(matches!(
            decode::<Up>(&[1, 0]),
            Err(BusError::Short { len: 2 })
        ));
        // A header length past the message is refused before anything is read.
        let mut lying = bytes.to_vec();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode::<Up>(&lying), Err(BusError::Header { .. })));
        assert!(matches!(
            decode::<Up>(&encode(&"x", &[])),
            Err(BusError::Json(_))
        ));
    }

    /// A batch's frames come back in order; one whose length runs past the batch ends it with
    /// an error naming the lengths, after the frames before it.
    #[test]
    fn a_batch_gives_back_its_frames_and_a_cut_one_ends_with_an_error() {
        let (_, batch) = Batch::framed(&[b"ab".as_slice(), b"", b"cde"]);
        let all: Vec<&[u8]> = frames(&batch).map(Result::unwrap).collect();
        assert_eq!(all, [b"ab".as_slice(), b"", b"cde"]);
        let cut: Vec<_> = frames(&batch[..batch.len() - 1]).collect();
        assert_eq!(cut.len(), 3);
        assert!(matches!(cut[2], Err(BusError::Frame { len: 3, left: 2 })));
        assert!(matches!(
            frames(&[1, 0]).next(),
            Some(Err(BusError::Short { len: 2 }))
        ));
    }

    /// Whatever arrives on the bus, decoding answers with a value or an error, never a panic:
    /// valid messages of every kind, mutated byte by byte, cut short and grown.
    #[test]
    fn mutated_bus_messages_decode_or_fail_without_panicking() {
        use rand::{RngExt, SeedableRng};
        let seeds = [
            encode(
                &Up::Alive {
                    instance: 5,
                    clients: 3,
                    url: Some("ws://gw-a:3000/ws".into()),
                },
                &[],
            ),
            encode(
                &Up::Partial {
                    round: RoundRef {
                        run_id: 1,
                        server_round: 2,
                        attempt: 1,
                    },
                    kind: VectorKind::Update,
                    clients: vec![1, 2],
                    total_weight: 12,
                    count: 2,
                },
                &f64s_to_bytes(&[0.5, -1.0]),
            ),
            encode(
                &Up::HeldRes {
                    client_id: 3,
                    server_round: 2,
                    num_examples: 60,
                    kind: VectorKind::Masked,
                },
                &[],
            ),
            encode(
                &Down::Joined {
                    conn: 1,
                    epoch: 8,
                    result: Err("no".into()),
                },
                &[],
            ),
            encode(
                &Down::SendModel {
                    client_id: 4,
                    model: 9,
                },
                &[],
            ),
            {
                let (messages, frames) = Batch::framed(&[
                    encode(&Down::Forget, &[]),
                    encode(&Down::Close { client_id: 2 }, &[]),
                ]);
                encode(&Down::Batch { messages }, &frames)
            },
            encode(
                &ShardAnswer {
                    grant: Some(("mnist".into(), vec![1, 2, 3])),
                },
                &[],
            ),
        ];
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(7);
        for i in 0..20_000 {
            let mut m = seeds[i % seeds.len()].to_vec();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 if !m.is_empty() => {
                        let at = rng.random_range(0..m.len());
                        m[at] = rng.random();
                    }
                    1 => m.truncate(rng.random_range(0..=m.len())),
                    _ => m.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
                }
            }
            if let Ok((_, payload)) = decode::<Up>(&m) {
                let _ = f64s(payload, 4);
                let _ = words(payload, 4).map(|w| w.count());
            }
            if let Ok((_, payload)) = decode::<Down>(&m) {
                for frame in frames(payload) {
                    let _ = frame.and_then(decode::<Down>);
                }
            }
            let _ = decode::<ShardAnswer>(&m);
        }
    }

    #[test]
    fn names_on_the_bus_are_single_subject_tokens() {
        let s = Subjects::new("fl.eu").unwrap();
        let g = GatewayId::new("gw-1").unwrap();
        assert_eq!(s.up(&g), "fl.eu.up.gw-1");
        assert_eq!(s.gateway_of("fl.eu.up.gw-1"), Some(g.clone()));
        assert_eq!(s.gateway_of("fl.eu.up.gw.1"), None);
        assert_eq!(s.gateway_of("fl.up.gw-1"), None);
        assert_eq!(s.down(&g), "fl.eu.gw.gw-1");
        assert_eq!(s.alive_of(&s.alive(&g)), Some(g.clone()));
        assert_eq!(s.alive_of(&s.up(&g)), None);
        for bad in ["", "a.b", "a*", "a>", "all", &"x".repeat(65)] {
            assert!(GatewayId::new(bad).is_err(), "{bad:?}");
        }
        assert!(Subjects::new("fl..x").is_err());
        assert!(Subjects::new("fl.*").is_err());
    }
}
