//! The browser transport: runs inside a dedicated Web Worker, so a training step (≈ 60 ms of
//! wasm at batch 64, seconds per round) never blocks the page. It drives the same [`Session`]
//! as the simulator: gloo-net for the socket and the shard download instead of tokio.
//!
//! The page talks to it with [`PageToWorker`] messages (JSON strings, the user's own IDX files
//! beside them as `ArrayBuffer`s) and renders the [`WorkerToPage`] reports. Reconnects use
//! exponential backoff (0.5 s → 10 s, reset once the server welcomes the client), each attempt to
//! the next server of the join's list (the page's own, then the deployment's other gateways:
//! a client whose gateway died reaches another at its next attempt); the client key
//! and the privacy ledgers survive them, and survive the tab through [`WorkerToPage::Save`]: an
//! update or an evaluation result is sent only after the page confirmed it stored the ledger
//! (per dataset, in `localStorage`) that includes it.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt};
use gloo_net::websocket::Message;
use gloo_net::websocket::futures::WebSocket;
use learning::Dataset;
use protocol::ledger::fingerprint;
use protocol::servers::ServerList;
use protocol::worker::{
    Connection, JoinRequest, PageToWorker, Sample, WorkerToPage, training_workers,
};
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::pool::{TrainEvent, Workers};
use crate::session::{Action, Notice, Outgoing, OwnFiles, Session, SessionOptions};

const FIRST_BACKOFF_MS: u32 = 500;
const MAX_BACKOFF_MS: u32 = 10_000;

/// A page command with the files that came with it.
struct Command {
    msg: PageToWorker,
    images: Option<Vec<u8>>,
    labels: Option<Vec<u8>>,
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// Reports to the page. A worker whose page is gone has no one to tell, so a failed post is
/// only logged.
fn post(ev: &WorkerToPage) {
    if let Err(e) = scope().post_message(&JsValue::from_str(&ev.encode())) {
        web_sys::console::error_2(&"worker: postMessage failed".into(), &e);
    }
}

fn bytes_field(data: &JsValue, name: &str) -> Option<Vec<u8>> {
    let v = js_sys::Reflect::get(data, &name.into()).ok()?;
    if v.is_undefined() || v.is_null() {
        return None;
    }
    Some(js_sys::Uint8Array::new(&v).to_vec())
}

/// Entry point of the worker binary: listen, say ready, serve joins until the page goes away.
pub fn start() {
    console_error_panic_hook::set_once();
    let (tx, rx) = mpsc::unbounded::<Command>();
    let onmessage = Closure::<dyn Fn(MessageEvent)>::new(move |ev: MessageEvent| {
        let data = ev.data();
        // A helper's work (this worker was started by a tab's training worker).
        if let Some(header) = js_sys::Reflect::get(&data, &"slice".into())
            .ok()
            .and_then(|v| v.as_string())
        {
            return crate::pool::serve_slice(&data, &header);
        }
        let json = js_sys::Reflect::get(&data, &"json".into())
            .ok()
            .and_then(|v| v.as_string());
        let msg = match json.as_deref().map(PageToWorker::decode) {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                return post(&WorkerToPage::Error {
                    message: format!("worker: page message does not decode: {e}"),
                    fatal: false,
                });
            }
            None => {
                return post(&WorkerToPage::Error {
                    message: "worker: expected {json: string, images?, labels?}".into(),
                    fatal: false,
                });
            }
        };
        let cmd = Command {
            msg,
            images: bytes_field(&data, "images"),
            labels: bytes_field(&data, "labels"),
        };
        if tx.unbounded_send(cmd).is_err() {
            web_sys::console::error_1(&"worker: command loop is gone".into());
        }
    });
    scope().set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    // The handler lives as long as the worker.
    onmessage.forget();
    wasm_bindgen_futures::spawn_local(serve(rx));
    post(&WorkerToPage::Ready);
}

async fn serve(mut rx: mpsc::UnboundedReceiver<Command>) {
    while let Some(cmd) = rx.next().await {
        match cmd.msg {
            PageToWorker::Join(req) => {
                let reason = join(req, cmd.images, cmd.labels, &mut rx).await;
                post(&WorkerToPage::Connection(Connection::Stopped { reason }));
            }
            PageToWorker::Leave | PageToWorker::Saved { .. } | PageToWorker::Ledger(_) => {}
        }
    }
}

/// Loads the user's own files (checked like a downloaded shard), named by their fingerprint:
/// the same files are the same records, whichever tab opens them.
fn own_dataset(images: Option<Vec<u8>>, labels: Option<Vec<u8>>) -> Result<OwnFiles, String> {
    let (Some(images), Some(labels)) = (images, labels) else {
        return Err("own data: expected an images file and a labels file (IDX)".into());
    };
    let data = Dataset::from_idx("images file", &images, "labels file", &labels)
        .map_err(|e| e.to_string())?;
    Ok(OwnFiles {
        data: Arc::new(data),
        fingerprint: fingerprint(&images, &labels),
    })
}

/// Examples of each class the page draws: enough to see the data, few enough to post at once.
const SAMPLES_PER_CLASS: usize = 6;

/// The loaded data as the page shows it: its size, its label histogram (counted here, from the
/// records themselves) and a few examples of each class.
fn data_report(data: &Dataset, own: bool) -> WorkerToPage {
    let samples = data
        .first_of_each_class(SAMPLES_PER_CLASS)
        .into_iter()
        .map(|i| Sample {
            label: data.labels[i],
            pixels: data.image(i).to_vec(),
        })
        .collect();
    WorkerToPage::Data {
        num_examples: data.len() as u64,
        label_histogram: data.label_histogram().to_vec(),
        own,
        samples,
    }
}

/// Names the run's task on the page, if this worker knows it (the session says an unknown one
/// as an error).
fn post_task(spec: &protocol::messages::TaskSpec) {
    if let Ok(task) = learning::task::find(&spec.id) {
        post(&WorkerToPage::Task(task.label()));
    }
}

/// A ledger changed in storage (another tab spent on the same records): the session counts it,
/// and the page shows it.
fn other_tab_spent(session: &mut Session, slot: protocol::ledger::LedgerSlot) {
    session.refresh(slot);
    post_privacy(session);
}

/// Tells the page what has been spent on the current data (or why it is blocked).
fn post_privacy(session: &Session) {
    post(&WorkerToPage::Privacy {
        spent: session.spent(),
        dataset: session.dataset().map(str::to_owned),
        blocked: session.blocked().map(str::to_owned),
    });
}

/// One join: connect, reconnect with backoff, until the user leaves or something fatal
/// happens. Returns why it stopped.
async fn join(
    req: JoinRequest,
    images: Option<Vec<u8>>,
    labels: Option<Vec<u8>>,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> String {
    let own_data = if req.own_data {
        match own_dataset(images, labels) {
            Ok(own) => {
                post(&data_report(&own.data, true));
                Some(own)
            }
            Err(message) => {
                post(&WorkerToPage::Error {
                    message: message.clone(),
                    fatal: true,
                });
                return message;
            }
        }
    } else {
        None
    };
    let mut servers = match ServerList::new(&req.servers) {
        Ok(list) => list,
        Err(e) => return e,
    };
    let mut session = match Session::new(SessionOptions {
        name: req.name.clone(),
        epsilon_cap: req.epsilon_cap,
        delta: req.delta,
        own_data,
        can_evaluate: true,
        resume: req.resume.clone(),
        ledgers: req.ledgers.clone(),
        require_secure_aggregation: req.require_secure_aggregation,
    }) {
        Ok(s) => s,
        Err(e) => return format!("could not start the session: {e}"),
    };
    post_privacy(&session);
    let cores = scope().navigator().hardware_concurrency();
    let mut workers = Workers::new(training_workers(req.workers, Some(cores)));
    // The user's own files are loaded already: warm up now (a shard, once downloaded).
    warm_up(&session, &mut workers).await;
    let mut attempt = 0u32;
    let mut backoff = FIRST_BACKOFF_MS;
    loop {
        let server = servers.next_server().clone();
        post(&WorkerToPage::Connection(Connection::Connecting {
            server: server.to_string(),
        }));
        let outcome = match WebSocket::open(server.socket()) {
            Ok(ws) => connection(&mut session, ws, server.origin(), rx, &mut workers).await,
            Err(e) => Outcome::Lost(e.to_string()),
        };
        let reason = match outcome {
            Outcome::Left => return "left".into(),
            Outcome::Fatal(reason) => {
                post(&WorkerToPage::Error {
                    message: reason.clone(),
                    fatal: true,
                });
                return reason;
            }
            Outcome::Lost(reason) => reason,
            Outcome::Established(reason) => {
                attempt = 0;
                backoff = FIRST_BACKOFF_MS;
                reason
            }
        };
        attempt += 1;
        post(&WorkerToPage::Connection(Connection::Reconnecting {
            attempt,
            retry_in_ms: backoff,
            reason,
        }));
        // Wait, but leave at once if asked to.
        let mut sleep = Box::pin(sleep_ms(backoff).fuse());
        loop {
            futures::select! {
                _ = sleep => break,
                cmd = rx.next() => match cmd.map(|c| c.msg) {
                    Some(PageToWorker::Leave) | None => return "left".into(),
                    Some(PageToWorker::Ledger(slot)) => other_tab_spent(&mut session, slot),
                    Some(PageToWorker::Join(_) | PageToWorker::Saved { .. }) => {}
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF_MS);
    }
}

/// Warms the workers up on the loaded data ([`crate::pool::warm_up`]), with the assigned
/// shard's task (the user's own files: the first task's model, whose training code is the
/// same), telling the user if the helpers failed.
async fn warm_up(session: &Session, workers: &mut Workers) {
    let Some(data) = session.data() else { return };
    let task = session.task().unwrap_or(learning::task::TASKS[0]);
    for message in crate::pool::warm_up(workers, task, data).await {
        post(&WorkerToPage::Error {
            message,
            fatal: false,
        });
    }
}

/// Sleeps on the worker's `setTimeout` (a worker has no `window`).
async fn sleep_ms(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let _id =
            scope().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
    });
    let _resolved = wasm_bindgen_futures::JsFuture::from(promise).await;
}

enum Outcome {
    /// The user left.
    Left,
    /// Could not connect, or the connection ended before the server welcomed this client:
    /// the backoff keeps growing.
    Lost(String),
    /// A welcomed connection ended: reconnect from the first backoff.
    Established(String),
    /// Going on cannot help (refused protocol version, a shard that does not match).
    Fatal(String),
}

fn to_message(o: Outgoing) -> Message {
    match o {
        Outgoing::Text(t) => Message::Text(t),
        Outgoing::Binary(b) => Message::Bytes(b),
    }
}

async fn connection(
    session: &mut Session,
    mut ws: WebSocket,
    origin: &str,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    workers: &mut Workers,
) -> Outcome {
    // A connection counts as established only once the server welcomed this client: a socket
    // that is refused, or closed before the welcome (server full), keeps the backoff growing.
    let mut welcomed = false;
    let ended = |welcomed: bool, reason: String| {
        if welcomed {
            Outcome::Established(reason)
        } else {
            Outcome::Lost(reason)
        }
    };
    if let Err(e) = ws.send(to_message(session.hello())).await {
        return Outcome::Lost(format!("could not connect: {e}"));
    }
    loop {
        let incoming = futures::select! {
            msg = ws.next().fuse() => msg,
            cmd = rx.next().fuse() => match cmd.map(|c| c.msg) {
                Some(PageToWorker::Leave) | None => {
                    let _closed = ws.close(Some(1000), Some("left"));
                    return Outcome::Left;
                }
                // Already joined; a late acknowledgement needs nothing.
                Some(PageToWorker::Ledger(slot)) => {
                    other_tab_spent(session, slot);
                    continue;
                }
                Some(PageToWorker::Join(_) | PageToWorker::Saved { .. }) => continue,
            },
        };
        let actions = match incoming {
            Some(Ok(Message::Text(t))) => session.on_text(&t),
            Some(Ok(Message::Bytes(b))) => session.on_binary(&b),
            Some(Err(e)) if welcomed => return ended(welcomed, format!("connection lost: {e}")),
            Some(Err(e)) => return ended(welcomed, format!("could not connect: {e}")),
            None => return ended(welcomed, "the server closed the connection".into()),
        };
        let actions = match actions {
            Ok(a) => a,
            // Reconnecting at once would get the same again: keep backing off.
            Err(e) => return Outcome::Lost(format!("bad message from the server: {e}")),
        };
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(o) => {
                    if let Err(e) = ws.send(to_message(o)).await {
                        return ended(welcomed, format!("send failed: {e}"));
                    }
                }
                Action::FetchShard {
                    images_path,
                    labels_path,
                } => {
                    // A download that fails is retried with the connection; a shard that does
                    // not match its assignment is not (the server would send the same again).
                    let fetched = async {
                        let images = http_get(&format!("{origin}{images_path}")).await?;
                        let labels = http_get(&format!("{origin}{labels_path}")).await?;
                        Ok::<_, String>((images, labels))
                    };
                    let (images, labels) = match fetched.await {
                        Ok(files) => files,
                        // Backing off (not from 0.5 s again): a lasting HTTP error stays slow.
                        Err(e) => return Outcome::Lost(format!("shard download failed: {e}")),
                    };
                    if let Err(e) = session.on_shard(&images, &labels) {
                        return Outcome::Fatal(e.to_string());
                    }
                    if let Some(data) = session.data() {
                        post(&data_report(data, false));
                    }
                    // The shard's records may have a ledger from an earlier run or tab.
                    post_privacy(session);
                    warm_up(session, workers).await;
                }
                Action::Train(job) => {
                    let (release, stop) = train_round(session, *job, workers, rx).await;
                    if let Some(outcome) = stop {
                        return outcome;
                    }
                    queue.extend(release);
                }
                Action::Evaluate(job) => {
                    let release = session.on_evaluated(job.run());
                    if let Some(outcome) = store_spent(session, rx).await {
                        return outcome;
                    }
                    queue.extend(release);
                }
                Action::Notify(n) => {
                    if matches!(n, Notice::Welcome { .. }) {
                        welcomed = true;
                    }
                    if let Some(outcome) = notify(session, n) {
                        return outcome;
                    }
                }
            }
        }
    }
}

/// Trains one round (on the tab's workers), reporting progress to the page, and stores what it
/// spent before anything is released: returns the session's next actions, or why the connection
/// ends (the page stopped answering the save).
async fn train_round(
    session: &mut Session,
    job: crate::session::TrainJob,
    workers: &mut Workers,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> (Vec<Action>, Option<Outcome>) {
    let server_round = job.server_round;
    if let Some(message) = workers.prepare().await {
        post(&WorkerToPage::Error {
            message,
            fatal: false,
        });
    }
    let started = js_sys::Date::now();
    let mut announced = false;
    let mut count = workers.count() as u32;
    let mut last_rate = None;
    let mut gate = crate::pool::ProgressGate::default();
    let done = crate::pool::train(job, workers, &mut |event| match event {
        TrainEvent::HelpersLost(message) => {
            count = 1;
            post(&WorkerToPage::Error {
                message: format!("round {server_round}: {message}"),
                fatal: false,
            });
        }
        TrainEvent::Step(p, rate) => {
            last_rate = rate;
            if !announced {
                announced = true;
                post(&WorkerToPage::TrainStarted {
                    server_round,
                    epochs: p.epochs,
                    steps_per_epoch: p.steps_per_epoch,
                    workers: count,
                });
            }
            if !gate.due(p.step, p.steps_per_epoch, js_sys::Date::now()) {
                return;
            }
            post(&WorkerToPage::Progress {
                server_round,
                epoch: p.epoch + 1,
                epochs: p.epochs,
                step: p.step + 1,
                steps_per_epoch: p.steps_per_epoch,
                batch_loss: p.batch_loss,
                samples_per_second: rate,
            });
        }
    })
    .await;
    let seconds = (js_sys::Date::now() - started) / 1000.0;
    let ok = done.result.as_ref().ok().map(|r| r.metrics);
    let delta = done.privacy.delta;
    let release = session.on_trained(done);
    if let Some(outcome) = store_spent(session, rx).await {
        return (Vec::new(), Some(outcome));
    }
    if let Some(metrics) = ok {
        post(&WorkerToPage::Trained {
            server_round,
            metrics,
            delta: Some(delta),
            seconds,
            samples_per_second: last_rate,
            // The workers that took its last steps (one if the helpers were lost).
            workers: count,
        });
        // The whole ledger's view again (a distributed round's worst case too), after the
        // round's own ε.
        post_privacy(session);
    }
    (release, None)
}

/// Asks the page to store the session's identity and what the last job spent (added to its
/// dataset's stored ledger); returns the request's number.
fn save(session: &mut Session) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
    post(&WorkerToPage::Save {
        seq,
        client: session.saved(),
        spent: session.take_spend(),
    });
    seq
}

/// After a job: the page adds what it spent to the stored ledger and confirms, and only then
/// may the job's result leave (a reload, a new tab or a later run must never resume from a
/// ledger older than what was released). `Some` if the user left meanwhile.
async fn store_spent(
    session: &mut Session,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<Outcome> {
    let seq = save(session);
    let left = wait_saved(session, rx, seq).await;
    if left.is_none() {
        post_privacy(session);
    }
    left
}

/// Waits until the page confirms save `seq`; `Some` if the user left meanwhile.
async fn wait_saved(
    session: &mut Session,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    seq: u64,
) -> Option<Outcome> {
    loop {
        match rx.next().await.map(|c| c.msg) {
            Some(PageToWorker::Saved { seq: done }) if done >= seq => return None,
            Some(PageToWorker::Leave) | None => return Some(Outcome::Left),
            Some(PageToWorker::Ledger(slot)) => other_tab_spent(session, slot),
            Some(PageToWorker::Saved { .. } | PageToWorker::Join(_)) => {}
        }
    }
}

/// Shows a session notice; `Some` when the connection must end.
fn notify(session: &mut Session, n: Notice) -> Option<Outcome> {
    match n {
        Notice::Welcome {
            client_id,
            rounds_taken,
            interrupted_round,
        } => {
            post(&WorkerToPage::Connection(Connection::Connected));
            post(&WorkerToPage::Welcome {
                client_id,
                rounds_taken,
                interrupted_round,
            });
            save(session);
        }
        Notice::RunState {
            run_id,
            task,
            phase,
        } => {
            // The run first: a new run clears the page's task, then this names it.
            post(&WorkerToPage::RunState { run_id, phase });
            post_task(&task);
        }
        Notice::Secure {
            server_round,
            members,
        } => post(&WorkerToPage::Secure {
            server_round,
            members,
        }),
        Notice::Sent {
            server_round,
            masked,
        } => post(&WorkerToPage::Sent {
            server_round,
            masked,
        }),
        // The shard's ledger is known once its files are (their fingerprint names it).
        Notice::Assigned(a) => {
            let task = a.task.clone();
            post(&WorkerToPage::Assigned(a));
            post_task(&task);
        }
        // `Trained` is reported by the driver, with δ and the time it took.
        Notice::Trained { .. } => {}
        Notice::TrainFailed {
            server_round,
            reason,
        } => post(&WorkerToPage::TrainFailed {
            server_round,
            reason,
        }),
        Notice::EvaluateFailed {
            server_round,
            reason,
        } => post(&WorkerToPage::Error {
            message: format!("did not evaluate round {server_round}: {reason}"),
            fatal: false,
        }),
        Notice::RoundClosed {
            server_round,
            test_accuracy,
            ..
        } => post(&WorkerToPage::RoundClosed {
            server_round,
            test_accuracy,
        }),
        Notice::RunFinished { reason, .. } => post(&WorkerToPage::RunFinished { reason }),
        Notice::ServerError {
            code,
            message,
            fatal,
        } => {
            if Session::stops_client(code, fatal) {
                if code == protocol::ErrorCode::Replaced {
                    // A duplicated tab (same saved key) took over: this one must not take it
                    // back on its next join, or the two would split one ledger between them.
                    session.forget_identity();
                    save(session);
                    return Some(Outcome::Fatal(
                        "another tab or device joined as this client (same client key): this tab stopped; Join again to continue as a new client".into(),
                    ));
                }
                return Some(Outcome::Fatal(message));
            }
            post(&WorkerToPage::Error {
                message: format!("server: {message}"),
                fatal: false,
            });
        }
    }
    None
}

async fn http_get(url: &str) -> Result<Vec<u8>, String> {
    let shown = protocol::servers::without_query(url); // the query holds the client's key
    let res = gloo_net::http::Request::get(url)
        .send()
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    let body = res.binary().await.map_err(|e| format!("{shown}: {e}"))?;
    if !res.ok() {
        return Err(format!(
            "{shown}: HTTP {}: {}",
            res.status(),
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body)
}
