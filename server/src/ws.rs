//! `/ws`: one task per client connection. It checks `Hello`, registers the client with the
//! coordinator, forwards the coordinator's messages (writer task), and validates everything the
//! client sends before the coordinator sees it: control messages decode, an update frame follows
//! its `TrainRes`, has the model's length, the announced round, and only finite values.
//! Whatever a client sends, it gets an error message and the server goes on.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use protocol::{
    ClientMessage, ErrorCode, FrameKind, MaskedFrame, PROTOCOL_VERSION, ResultFrame, ServerMessage,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, info_span, warn};

use crate::AppState;
use crate::coordinator::{Command, OUTBOX_CAPACITY, Outgoing, SecAggAnswer};

/// Least WebSocket message size accepted, whatever the model (control messages, small models).
pub const MIN_MESSAGE_LIMIT: usize = 64 << 10;

/// Largest WebSocket message accepted for a model of `model_params`: one update frame (TinyCNN's
/// is 51 KB) and a little more, at least [`MIN_MESSAGE_LIMIT`]. A larger message closes the
/// connection (after an error message) before it is buffered. It bounds what hostile clients can
/// make the server hold: every connection may buffer one message, so 900 connections × 64 KiB ≈
/// 56 MiB (with the 1 MiB limit it was 900 MiB, which an attack run reached).
pub fn message_limit(model_params: usize) -> usize {
    (protocol::frame::HEADER_LEN + 4 * model_params + 1024).max(MIN_MESSAGE_LIMIT)
}
/// A message the peer does not accept within this time closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A ping this often keeps a waiting client's connection alive through the listener's idle
/// timeout ([`crate::net::IDLE_TIMEOUT`]), and finds dead peers (the write times out).
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// A connection must say `Hello` within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn ws_handler(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    let limit = message_limit(state.model_params);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let span = info_span!("conn", client_id = tracing::field::Empty);
            handle_socket(socket, state).instrument(span)
        })
}

fn error_text(code: ErrorCode, message: impl Into<String>, fatal: bool) -> Message {
    Message::Text(Utf8Bytes::from(
        ServerMessage::Error {
            code,
            message: message.into(),
            fatal,
        }
        .encode(),
    ))
}

/// Owns one connection from `Hello` to close.
pub async fn handle_socket(mut socket: WebSocket, state: AppState) {
    // 1. Hello, with a deadline.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => ClientMessage::decode(t.as_str()),
        Ok(Some(Ok(_))) => {
            let _closing = socket
                .send(error_text(
                    ErrorCode::BadSequence,
                    "expected a hello text message first",
                    true,
                ))
                .await;
            return;
        }
        _ => return,
    };
    let (client_key, capabilities) = match hello {
        Ok(ClientMessage::Hello {
            protocol_version,
            client_key,
            capabilities,
        }) => {
            if protocol_version != PROTOCOL_VERSION {
                let _closing = socket
                    .send(error_text(
                        ErrorCode::UnsupportedVersion,
                        format!("protocol version {protocol_version}: expected {PROTOCOL_VERSION}"),
                        true,
                    ))
                    .await;
                return;
            }
            (client_key, capabilities)
        }
        Ok(_) => {
            let _closing = socket
                .send(error_text(
                    ErrorCode::BadSequence,
                    "expected hello first",
                    true,
                ))
                .await;
            return;
        }
        Err(e) => {
            let _closing = socket
                .send(error_text(ErrorCode::BadMessage, e.to_string(), true))
                .await;
            return;
        }
    };

    // 2. Register with the coordinator.
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(OUTBOX_CAPACITY);
    let (reply_tx, reply_rx) = oneshot::channel();
    // The coordinator holds the only strong sender: when it drops this client (left, replaced,
    // too slow), the writer drains what is queued and ends, and so does this connection.
    let outbox = out_tx.downgrade();
    let join = Command::Join {
        client_key,
        capabilities,
        outbox: out_tx,
        reply: reply_tx,
    };
    if state.coordinator.send(join).await.is_err() {
        return;
    }
    let client_id = match reply_rx.await {
        Ok(Ok(id)) => id,
        Ok(Err(message)) => {
            let _closing = socket
                .send(error_text(ErrorCode::Internal, message, true))
                .await;
            return;
        }
        Err(_) => return,
    };
    tracing::Span::current().record("client_id", client_id);
    info!("connected");

    // 3. Writer: the coordinator's messages (and our own errors) to the socket.
    let (mut sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(
        async move {
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let out = tokio::select! {
                    out = out_rx.recv() => match out {
                        Some(out) => Some(out),
                        None => break,
                    },
                    _ = ping.tick() => None,
                };
                let msg = match out {
                    None => Message::Ping(bytes::Bytes::new()),
                    Some(Outgoing::Text(t)) => Message::Text(Utf8Bytes::from(t)),
                    Some(Outgoing::Binary(b)) => Message::Binary(b),
                    Some(Outgoing::Model(m)) => Message::Binary(m.bytes),
                    Some(Outgoing::Close) => {
                        let _closing = sink.send(Message::Close(None::<CloseFrame>)).await;
                        break;
                    }
                };
                // A peer that stops reading must not hold the connection open forever.
                match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        warn!("client stopped reading for {WRITE_TIMEOUT:?}: closing");
                        break;
                    }
                }
            }
        }
        .in_current_span(),
    );

    // 4. Reader: validate, then forward.
    let mut reader = Reader {
        client_id,
        coordinator: state.coordinator.clone(),
        outbox,
        pending: None,
        model_params: state.model_params,
    };
    let mut writer_done = false;
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            // The coordinator dropped this client (replaced, too slow): stop reading.
            _ = &mut writer => { writer_done = true; break }
            // The coordinator is gone (shutdown): the client should reconnect elsewhere.
            _ = state.coordinator.closed() => break,
        };
        match msg {
            Some(Ok(Message::Text(t))) => reader.on_text(t.as_str()).await,
            Some(Ok(Message::Binary(b))) => reader.on_binary(&b).await,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(e)) => {
                let text = e.to_string();
                warn!(error = %text, "socket error");
                if text.contains("too long") || text.contains("limit") {
                    reader.error(
                        ErrorCode::BadMessage,
                        format!(
                            "{text}: messages are limited to {} bytes; closing",
                            message_limit(reader.model_params)
                        ),
                        true,
                    );
                }
                break;
            }
        }
    }
    if state
        .coordinator
        .send(Command::Leave { client_id })
        .await
        .is_err()
    {
        warn!("coordinator gone while a client left");
    }
    drop(reader);
    // Let the writer flush a final error, but never hang on a dead peer.
    if !writer_done
        && tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .is_err()
    {
        warn!("writer did not finish in 2 s");
    }
    info!("disconnected");
}

/// What a result frame announced by `train_res` must look like (an update, or a masked vector).
struct FrameShape {
    frame: &'static str,
    values: &'static str,
    expected: usize,
    holds: &'static str,
}

impl FrameShape {
    /// Why a frame of `frame_round` with `len` values does not answer `train_res` for `round`.
    fn misfit(&self, round: u64, frame_round: u64, len: usize) -> Option<String> {
        if frame_round != round {
            return Some(format!(
                "{} is for round {frame_round}: expected {round} (from train_res)",
                self.frame
            ));
        }
        (len != self.expected).then(|| {
            format!(
                "{} has {len} values: expected {} ({})",
                self.values, self.expected, self.holds
            )
        })
    }
}

/// The per-connection validation state.
struct Reader {
    client_id: u64,
    coordinator: mpsc::Sender<Command>,
    outbox: mpsc::WeakSender<Outgoing>,
    /// A `TrainRes` waiting for its update frame: `(round, num_examples)`.
    pending: Option<(u64, u64)>,
    model_params: usize,
}

impl Reader {
    fn error(&self, code: ErrorCode, message: String, fatal: bool) {
        warn!(?code, %message, "client input rejected");
        let text = ServerMessage::Error {
            code,
            message,
            fatal,
        }
        .encode();
        let sent = self
            .outbox
            .upgrade()
            .is_some_and(|tx| tx.try_send(Outgoing::Text(text)).is_ok());
        if !sent {
            warn!("could not queue an error message for a client (outbox full or closed)");
        }
    }

    async fn forward(&self, cmd: Command) {
        if self.coordinator.send(cmd).await.is_err() {
            warn!("coordinator gone");
        }
    }

    async fn secagg(&self, server_round: u64, answer: SecAggAnswer) {
        self.forward(Command::SecAgg {
            client_id: self.client_id,
            server_round,
            answer,
        })
        .await
    }

    /// The result announced by `TrainRes` failed validation: the client hears why, and the
    /// coordinator counts the failure in the round.
    async fn fail(&mut self, server_round: u64, message: String) {
        self.error(ErrorCode::InvalidUpdate, message.clone(), false);
        self.forward(Command::TrainFailed {
            client_id: self.client_id,
            server_round,
            reason: message,
            refuses_run: false,
        })
        .await;
    }

    async fn on_text(&mut self, text: &str) {
        let msg = match ClientMessage::decode(text) {
            Ok(m) => m,
            Err(e) => return self.error(ErrorCode::BadMessage, e.to_string(), false),
        };
        match msg {
            ClientMessage::Hello { .. } => self.error(
                ErrorCode::BadSequence,
                "hello was already received".into(),
                false,
            ),
            ClientMessage::TrainRes {
                server_round,
                num_examples,
                ..
            } => {
                if let Some((r, ..)) = self.pending.take() {
                    self.fail(
                        r,
                        format!("train_res for round {r} was not followed by its update frame"),
                    )
                    .await;
                }
                self.pending = Some((server_round, num_examples));
            }
            ClientMessage::TrainFailed {
                server_round,
                reason,
                refuses_run,
            } => {
                self.forward(Command::TrainFailed {
                    client_id: self.client_id,
                    server_round,
                    reason: format!("client: {reason}"),
                    refuses_run,
                })
                .await
            }
            ClientMessage::SecAggKeys { server_round, keys } => {
                self.secagg(server_round, SecAggAnswer::Keys(keys)).await
            }
            ClientMessage::SecAggShares {
                server_round,
                shared,
            } => {
                self.secagg(server_round, SecAggAnswer::Shares(shared))
                    .await
            }
            ClientMessage::SecAggReveal {
                server_round,
                reveal,
            } => {
                self.secagg(server_round, SecAggAnswer::Reveal(reveal))
                    .await
            }
            ClientMessage::EvaluateRes {
                server_round,
                num_examples,
                loss,
                accuracy,
            } => {
                self.forward(Command::EvaluateRes {
                    client_id: self.client_id,
                    server_round,
                    num_examples,
                    loss,
                    accuracy,
                })
                .await
            }
        }
    }

    async fn on_binary(&mut self, bytes: &[u8]) {
        let Some((round, num_examples)) = self.pending.take() else {
            return self.error(
                ErrorCode::BadSequence,
                "binary frame without a preceding train_res".into(),
                false,
            );
        };
        let frame = match ResultFrame::decode(bytes) {
            Ok(ResultFrame::Tensor(f)) => f,
            Ok(ResultFrame::Masked(m)) => return self.on_masked(round, num_examples, m).await,
            Err(e) => return self.fail(round, format!("update frame: {e}")).await,
        };
        if frame.kind != FrameKind::Update {
            return self
                .fail(
                    round,
                    format!("frame kind {:?}: expected Update", frame.kind),
                )
                .await;
        }
        let shape = FrameShape {
            frame: "update frame",
            values: "update",
            expected: self.model_params,
            holds: "TinyCNN",
        };
        if let Some(why) = shape.misfit(round, frame.server_round, frame.values.len()) {
            return self.fail(round, why).await;
        }
        if let Some(i) = frame.values.iter().position(|v| !v.is_finite()) {
            return self
                .fail(
                    round,
                    format!(
                        "update value {i} is {}: expected finite numbers only",
                        frame.values[i]
                    ),
                )
                .await;
        }
        self.forward(Command::TrainRes {
            client_id: self.client_id,
            server_round: round,
            num_examples,
            update: frame.values,
        })
        .await;
    }

    /// A masked vector (secure aggregation): the model's values and the weight, as u32s.
    async fn on_masked(&mut self, round: u64, num_examples: u64, frame: MaskedFrame) {
        let shape = FrameShape {
            frame: "masked frame",
            values: "masked vector",
            expected: self.model_params + 1,
            holds: "the weight and TinyCNN's parameters",
        };
        if let Some(why) = shape.misfit(round, frame.server_round, frame.values.len()) {
            return self.fail(round, why).await;
        }
        self.forward(Command::MaskedRes {
            client_id: self.client_id,
            server_round: round,
            num_examples,
            masked: frame.values,
        })
        .await;
    }
}
