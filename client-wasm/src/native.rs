//! The native transport for headless simulated clients: tokio-tungstenite for the socket,
//! hyper for the shard download, `spawn_blocking` for training. It drives the same
//! [`Session`] the browser worker drives, and reconnects with backoff when the connection drops.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use learning::parallel::Threads;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use crate::attack::Attack;
use crate::session::{Action, Notice, Outgoing, Session, SessionError, TrainJob};

/// Why a simulated client stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Url(String),
    #[error("could not reach the server for {0:?}; last error: {1}")]
    Unreachable(Duration, String),
    #[error("shard download failed: {0}")]
    Shard(String),
    #[error("a training or evaluation task failed: {0}")]
    Task(String),
    #[error("the server refused this client: {0}")]
    Refused(String),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// How long a connection attempt may take before the client tries the next server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a simulated client behaves around its connection.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// `ws://host:port/ws` of the server, or of each gateway of a deployment on several
    /// machines: a client whose connection fails or ends moves to the next, keeping its key,
    /// shard and ledger (its session).
    pub servers: Vec<String>,
    /// Give up after failing to (re)connect for this long.
    pub reconnect_for: Duration,
    /// Stop when the server says the run finished.
    pub exit_when_finished: bool,
    /// Trainings allowed at once in this process (the CPU is shared by every client).
    pub training_slots: Arc<Semaphore>,
    /// Behave as a hostile client (benchmarks of the robust aggregators).
    pub attack: Option<Attack>,
    /// Threads that share each of this client's training steps (`learning::parallel`).
    pub threads: usize,
}

/// What a client did, when it stops.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    pub client_id: Option<u64>,
    pub rounds_trained: Vec<u64>,
    pub epsilon: Option<f64>,
    pub last_accuracy: Option<f64>,
    pub finished: Option<String>,
    /// The errors the server sent that did not stop the client (a browser tab shows each on
    /// its page): an honest client in a healthy run gets none.
    pub server_errors: Vec<(protocol::ErrorCode, String)>,
}

async fn http_get(url: &str) -> Result<Vec<u8>, ClientError> {
    let shown = protocol::servers::without_query(url); // the query holds the client's key
    let err = |e: &dyn std::fmt::Display| ClientError::Shard(format!("{shown}: {e}"));
    let uri: hyper::Uri = url.parse().map_err(|e| err(&e))?;
    let host = uri.host().ok_or_else(|| err(&"no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| err(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| err(&e))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| err(&e))?;
    let res = sender.send_request(req).await.map_err(|e| err(&e))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| err(&e))?
        .to_bytes();
    if !status.is_success() {
        return Err(err(&format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(body.to_vec())
}

/// Runs one client until the run finishes (or it gives up reconnecting).
pub async fn run_client(
    mut session: Session,
    options: DriverOptions,
) -> Result<ClientReport, ClientError> {
    let mut servers =
        protocol::servers::ServerList::new(&options.servers).map_err(ClientError::Url)?;
    let mut report = ClientReport::default();
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let server = servers.next_server().clone();
        // A server that never answers (a dead host) must not hold the client past the next.
        let connecting = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async(server.socket()),
        );
        let connected = match connecting.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
        };
        match connected {
            Ok((ws, _)) => {
                failing_since = None;
                backoff = Duration::from_millis(100);
                match connection(&mut session, ws, server.origin(), &options, &mut report).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(
                        e
                        @ (ClientError::Refused(_) | ClientError::Shard(_) | ClientError::Task(_)),
                    ) => {
                        return Err(e);
                    }
                    Err(e) => warn!(error = %e, "connection ended with an error; reconnecting"),
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > options.reconnect_for {
                    return Err(ClientError::Unreachable(options.reconnect_for, e));
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    report.client_id = session.client_id();
    report.rounds_trained = session.rounds_trained.clone();
    report.finished = session.finished().map(String::from);
    Ok(report)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection; `Ok(true)` when the client is done.
async fn connection(
    session: &mut Session,
    ws: Ws,
    origin: &str,
    options: &DriverOptions,
    report: &mut ClientReport,
) -> Result<bool, ClientError> {
    let (mut sink, mut stream) = ws.split();
    let send = |o: Outgoing| match o {
        Outgoing::Text(t) => Message::text(t),
        Outgoing::Binary(b) => Message::binary(b),
    };
    if sink.send(send(session.hello())).await.is_err() {
        return Ok(false); // the connection dropped at once: reconnect
    }
    while let Some(msg) = stream.next().await {
        let actions = match msg {
            Ok(Message::Text(t)) => session.on_text(t.as_str())?,
            Ok(Message::Binary(b)) => session.on_binary(&b)?,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(o) => {
                    if sink.send(send(o)).await.is_err() {
                        return Ok(false);
                    }
                }
                Action::FetchShard {
                    images_path,
                    labels_path,
                } => {
                    let images = http_get(&format!("{origin}{images_path}")).await?;
                    let labels = http_get(&format!("{origin}{labels_path}")).await?;
                    session.on_shard(&images, &labels)?;
                }
                Action::Train(job) => {
                    let slot = options.training_slots.clone().acquire_owned().await;
                    let (attack, threads) = (options.attack, Threads::new(options.threads));
                    let who = session.client_id().unwrap_or(0);
                    let done = tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        train(*job, attack, who, threads)
                    })
                    .await
                    .map_err(|e| ClientError::Task(format!("training: {e}")))?;
                    queue.extend(session.on_trained(done));
                }
                Action::Evaluate(job) => {
                    let done = tokio::task::spawn_blocking(move || job.run())
                        .await
                        .map_err(|e| ClientError::Task(format!("evaluation: {e}")))?;
                    queue.extend(session.on_evaluated(done));
                }
                Action::Notify(n) => {
                    if on_notice(session, &n, report)? && options.exit_when_finished {
                        let _closing = sink.send(Message::Close(None)).await;
                        return Ok(true);
                    }
                }
            }
        }
    }
    Ok(false)
}

/// Runs a training job, as an honest client or as `attack` says (client `who`'s random
/// updates differ from other attackers').
fn train(
    mut job: TrainJob,
    attack: Option<Attack>,
    who: u64,
    mut threads: Threads,
) -> crate::session::TrainDone {
    let Some(attack) = attack else {
        return job.run_with(&mut threads, &mut |_| {});
    };
    if let Some(poisoned) = attack.poison_data(&job.data) {
        job.data = Arc::new(poisoned);
    }
    let mut done = job.run_with(&mut threads, &mut |_| {});
    if let Ok(res) = &mut done.result
        && let learning::Update::Delta(update) = &mut res.update
    {
        attack.poison_update(update, who.rotate_left(32) ^ done.server_round);
    }
    done
}

/// Logs a notice; `Ok(true)` when the run is over.
fn on_notice(
    session: &Session,
    n: &Notice,
    report: &mut ClientReport,
) -> Result<bool, ClientError> {
    let id = session.client_id().unwrap_or(0);
    match n {
        Notice::Welcome {
            client_id,
            rounds_taken,
            interrupted_round,
        } => info!(client_id, rounds_taken, ?interrupted_round, "welcomed"),
        Notice::RunState {
            run_id,
            task,
            phase,
        } => info!(client_id = id, run_id, task = task.id, ?phase, "run state"),
        Notice::Sent {
            server_round,
            masked,
        } => info!(client_id = id, server_round, masked, "result sent"),
        Notice::Secure {
            server_round,
            members,
        } => info!(
            client_id = id,
            server_round, members, "secure aggregation round"
        ),
        Notice::Assigned(a) => info!(
            client_id = id,
            shard = a.shard_index,
            examples = a.num_examples,
            "shard assigned"
        ),
        Notice::Trained {
            server_round,
            metrics,
        } => {
            report.epsilon = metrics.epsilon;
            info!(client_id = id, server_round, loss = metrics.loss, epsilon = ?metrics.epsilon, "trained")
        }
        Notice::TrainFailed {
            server_round,
            reason,
        } => warn!(client_id = id, server_round, %reason, "did not train"),
        Notice::EvaluateFailed {
            server_round,
            reason,
        } => warn!(client_id = id, server_round, %reason, "did not evaluate"),
        Notice::RoundClosed {
            server_round,
            test_accuracy,
            epsilon,
        } => {
            report.last_accuracy = Some(*test_accuracy);
            tracing::debug!(
                client_id = id,
                server_round,
                test_accuracy,
                ?epsilon,
                "round closed"
            )
        }
        Notice::RunFinished { run_id, reason } => {
            info!(client_id = id, run_id, %reason, "run finished");
            return Ok(true);
        }
        Notice::ServerError {
            code,
            message,
            fatal,
        } => {
            warn!(client_id = id, ?code, %message, fatal, "server error");
            if Session::stops_client(*code, *fatal) {
                return Err(ClientError::Refused(message.clone()));
            }
            report.server_errors.push((*code, message.clone()));
        }
    }
    Ok(false)
}
