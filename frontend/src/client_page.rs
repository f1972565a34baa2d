//! The client page: join with a shard of the run's task or the user's own IDX files, then
//! watch this tab train (the task, its classes and a few of the tab's images are shown).
//! Training runs in a dedicated Web Worker (`client-wasm`'s `worker` binary); this page only
//! sends intents and renders [`ClientView`].
//!
//! The tab's identity (client key) is kept in `sessionStorage`, so a reloaded tab rejoins as the
//! same client. The privacy ledgers are kept per *dataset* in `localStorage` (they outlive the
//! tab: a new tab on the same files sees what was spent on them), sealed with a checksum; one
//! that does not open blocks training on its data until the user resets it. A tab training on
//! its own files holds a Web Lock named after them, so two tabs never spend on them at once.

use leptos::html::Input;
use leptos::prelude::*;
use protocol::ledger::{self, LedgerSlot};
use protocol::servers::{ServersInfo, servers_to_try};
use protocol::worker::{JoinRequest, PageToWorker, SavedClient, WorkerToPage};
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, Worker};

use crate::client_view::{ClientView, Training};
use crate::storage::{
    DatasetLock, LockOutcome, Scope, add_to_ledger, ledger_at, lock_dataset, store, store_in,
    stored, stored_ledger, stored_ledgers,
};

const SAVED_KEY: &str = "fl-client";
const JOINED_KEY: &str = "fl-joined";
/// The tab's rounds table, so that a reload shows it again.
const ROUNDS_KEY: &str = "fl-rounds";
/// trunk's loader for the worker binary (`data-loader-shim` in index.html).
const WORKER_URL: &str = "/worker_loader.js";

/// `ws://host/ws` for the page's own origin (the server, or trunk serve's proxy).
fn socket_url() -> String {
    let loc = window().location();
    let scheme = if loc.protocol().unwrap_or_default() == "https:" {
        "wss"
    } else {
        "ws"
    };
    format!("{scheme}://{}/ws", loc.host().unwrap_or_default())
}

/// How long a join waits for the list of gateways: a server that accepts the request and never
/// answers must not hold the Join button (the page's own server is tried anyway).
const LISTING_TIMEOUT_MS: i32 = 2_000;

/// The deployment's other gateways (`GET /api/servers`), for the worker to move to when a
/// connection fails. A single server lists none; an unreachable, slow (past
/// [`LISTING_TIMEOUT_MS`]) or garbled answer counts as none, and [`servers_to_try`] checks each
/// URL.
async fn listed_servers() -> Vec<String> {
    use futures::FutureExt;
    let answer = async {
        let res = gloo_net::http::Request::get("/api/servers")
            .send()
            .await
            .ok()?;
        if !res.ok() {
            return None;
        }
        res.json::<ServersInfo>().await.ok()
    };
    let timeout = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::new(&mut |resolve, _| {
        let _id = window()
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, LISTING_TIMEOUT_MS);
    }));
    futures::select! {
        info = answer.fuse() => info.map(|i| i.servers).unwrap_or_default(),
        _ = timeout.fuse() => Vec::new(),
    }
}

/// A running worker and what keeps its handlers alive.
struct WorkerHandle {
    worker: Worker,
    _onmessage: Closure<dyn Fn(MessageEvent)>,
    _onerror: Closure<dyn Fn(web_sys::Event)>,
}

/// A worker that has not said Ready by then did not load (e.g. a browser without wasm SIMD:
/// the loader's promise rejects inside the worker and no error event reaches the page).
const WORKER_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What the user chose when joining, kept so a reloaded tab rejoins the same way.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct JoinPrefs {
    name: String,
    cap: String,
    #[serde(default)]
    delta: String,
    own: bool,
    #[serde(default)]
    require_secure: bool,
    /// Training workers; empty: the device's cores.
    #[serde(default)]
    workers: String,
}

/// The ε cap field: empty for none.
fn parse_cap(text: &str) -> Result<Option<f64>, String> {
    match text.trim() {
        "" => Ok(None),
        t => match t.parse::<f64>() {
            Ok(c) if c > 0.0 && c.is_finite() => Ok(Some(c)),
            _ => Err(format!(
                "ε cap is {t}: expected a number above 0, or empty for no cap"
            )),
        },
    }
}

/// The δ field: empty for the default min(1e-5, 1/(10 n)).
fn parse_delta(text: &str) -> Result<Option<f64>, String> {
    match text.trim() {
        "" => Ok(None),
        t => match t.parse::<f64>() {
            Ok(d) if d > 0.0 && d < 1.0 => Ok(Some(d)),
            _ => Err(format!(
                "δ is {t}: expected a number above 0 and below 1 / the number of records (e.g. 1e-6), or empty for the smaller of 1e-5 and 1 / (10 × records)"
            )),
        },
    }
}

/// Why own files are not trained on, before any worker starts: their stored ledger is
/// unreadable.
fn unreadable_message(reason: &str) -> String {
    format!(
        "The privacy ledger stored for these files is unreadable: {reason}. Training on them is blocked: what was spent on them is unknown, not zero. Reset the ledger only if you accept that ε restarts at 0 for these records."
    )
}

/// The message a worker gets once it is ready: JSON plus the user's files, if any.
fn command(msg: &PageToWorker, files: Option<&(Vec<u8>, Vec<u8>)>) -> JsValue {
    let obj = js_sys::Object::new();
    let _set = js_sys::Reflect::set(&obj, &"json".into(), &msg.encode().into());
    if let Some((images, labels)) = files {
        let _set = js_sys::Reflect::set(
            &obj,
            &"images".into(),
            &js_sys::Uint8Array::from(images.as_slice()),
        );
        let _set = js_sys::Reflect::set(
            &obj,
            &"labels".into(),
            &js_sys::Uint8Array::from(labels.as_slice()),
        );
    }
    obj.into()
}

/// Starts a worker that joins with `join` as soon as it is ready. Its reports reach the view
/// only while `generation` is still `mine`: a worker being replaced or left cannot change the
/// page any more.
fn spawn_worker(
    view: RwSignal<ClientView>,
    join: JsValue,
    generation: StoredValue<u64>,
    mine: u64,
) -> Result<WorkerHandle, String> {
    let worker = Worker::new(WORKER_URL)
        .map_err(|e| format!("could not start the training worker: {e:?}"))?;
    let current = move || generation.try_get_value() == Some(mine);
    // Ends this worker's story on the page with `reason` (if it is still the current worker).
    let fail = move |reason: String| {
        if !current() {
            return;
        }
        view.update(|v| {
            v.apply(WorkerToPage::Error {
                message: reason.clone(),
                fatal: true,
            });
            v.apply(WorkerToPage::Connection(
                protocol::worker::Connection::Stopped { reason },
            ));
        });
    };
    let ready = std::rc::Rc::new(std::cell::Cell::new(false));
    // Sent once, on Ready, then dropped: it may hold the user's files.
    let join = std::cell::RefCell::new(Some(join));
    let w = worker.clone();
    let ready_seen = ready.clone();
    let onmessage = Closure::<dyn Fn(MessageEvent)>::new(move |ev: MessageEvent| {
        if !current() {
            return;
        }
        let Some(text) = ev.data().as_string() else {
            return;
        };
        let msg = match WorkerToPage::decode(&text) {
            Ok(m) => m,
            Err(e) => {
                web_sys::console::error_1(&format!("worker report does not decode: {e}").into());
                return;
            }
        };
        let reply = match &msg {
            WorkerToPage::Ready => {
                ready_seen.set(true);
                join.borrow_mut().take()
            }
            WorkerToPage::Save { seq, client, spent } => {
                // Stored first, then confirmed: the worker sends an update only after this. If
                // the ledger cannot be stored there is no confirmation: the worker is told to
                // leave before it releases anything the stored ledger would not count.
                let stored = serde_json::to_string(client)
                    .map_err(|e| e.to_string())
                    .and_then(|json| store(SAVED_KEY, Some(&json)))
                    .and_then(|()| spent.as_ref().map_or(Ok(()), add_to_ledger));
                match stored {
                    Ok(()) => Some(command(&PageToWorker::Saved { seq: *seq }, None)),
                    Err(e) => {
                        fail(format!(
                            "could not store the privacy ledger ({e}): stopped before sending anything more"
                        ));
                        Some(command(&PageToWorker::Leave, None))
                    }
                }
            }
            _ => None,
        };
        if let Some(reply) = reply
            && let Err(e) = w.post_message(&reply)
        {
            web_sys::console::error_2(&"could not answer the worker".into(), &e);
        }
        let rounds_may_change = matches!(
            msg,
            WorkerToPage::Trained { .. }
                | WorkerToPage::RoundClosed { .. }
                | WorkerToPage::Assigned(_)
                | WorkerToPage::RunState { .. }
        );
        view.update(|v| v.apply(msg));
        if rounds_may_change && let Some(json) = view.with_untracked(ClientView::saved_rounds) {
            // Without storage a reload shows an empty table: nothing else is lost.
            let _kept = store(ROUNDS_KEY, Some(&json));
        }
    });
    // A worker script that cannot load (a 404: a plain `Event`) or throws (an `ErrorEvent`).
    let onerror = Closure::<dyn Fn(web_sys::Event)>::new(move |ev: web_sys::Event| {
        let detail = ev
            .dyn_ref::<web_sys::ErrorEvent>()
            .map(|e| e.message())
            .unwrap_or_else(|| format!("could not load {WORKER_URL}"));
        fail(format!("the training worker failed: {detail}"));
    });
    let late = worker.clone();
    set_timeout(
        move || {
            if !ready.get() {
                fail(format!(
                    "the training worker did not start within {} s (does this browser run WebAssembly with SIMD?)",
                    WORKER_READY_TIMEOUT.as_secs()
                ));
                late.terminate();
            }
        },
        WORKER_READY_TIMEOUT,
    );
    worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
    Ok(WorkerHandle {
        worker,
        _onmessage: onmessage,
        _onerror: onerror,
    })
}

/// Ends a worker: asks for a clean close, then terminates it (a training step in progress
/// cannot be interrupted otherwise; nothing it computed has left the tab). The handlers stay
/// alive until then: the worker may still report.
fn retire(h: WorkerHandle) {
    let _sent = h.worker.post_message(&command(&PageToWorker::Leave, None));
    set_timeout(
        move || {
            // The whole handle, handlers included: a closure that only named `h.worker` would
            // capture just that field and drop the handlers at once, and the worker's last
            // reports would hit freed closures ("closure invoked … after being dropped").
            let h = h;
            h.worker.set_onmessage(None);
            h.worker.set_onerror(None);
            h.worker.terminate();
        },
        std::time::Duration::from_millis(300),
    );
}

/// Another tab changed a dataset ledger in `localStorage` (the `storage` event fires in every
/// other tab of the origin): the worker gets it, so the spending of both tabs counts against
/// this tab's cap. Registered once per page load.
fn forward_ledger_changes(handle: StoredValue<Option<WorkerHandle>, LocalStorage>) {
    let listener =
        Closure::<dyn Fn(web_sys::StorageEvent)>::new(move |ev: web_sys::StorageEvent| {
            let Some(slot) = ev
                .key()
                .and_then(|key| ledger_at(&key, ev.new_value().as_deref()))
            else {
                return;
            };
            handle.with_value(|h| {
                if let Some(h) = h
                    && let Err(e) = h
                        .worker
                        .post_message(&command(&PageToWorker::Ledger(slot), None))
                {
                    web_sys::console::error_2(
                        &"could not pass a ledger change to the worker".into(),
                        &e,
                    );
                }
            });
        });
    if let Err(e) =
        window().add_event_listener_with_callback("storage", listener.as_ref().unchecked_ref())
    {
        web_sys::console::error_2(
            &"no storage events: tabs will not see each other's spending".into(),
            &e,
        );
    }
    // The page lives as long as the listener.
    listener.forget();
}

#[wasm_bindgen]
extern "C" {
    /// The browser's `DecompressionStream` (web-sys has it only behind its unstable APIs).
    type DecompressionStream;

    #[wasm_bindgen(constructor, catch)]
    fn new(format: &str) -> Result<DecompressionStream, JsValue>;
}

/// The first bytes of every gzip file.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The largest own file the page reads, plain or once gunzipped: four times MNIST's training
/// images (47 MB). A few megabytes of gzip can expand to gigabytes; past this the tab says so
/// instead of running out of memory.
const MAX_OWN_FILE_BYTES: usize = 200 * 1024 * 1024;

/// A chosen file's bytes (they stay in the page and its worker), gunzipped if the file is
/// gzipped: datasets ship so (Debian's Fashion-MNIST), and the same records must get the same
/// fingerprint, and so the same ledger and lock, whether chosen plain or compressed.
async fn file_bytes(input: &web_sys::HtmlInputElement) -> Result<Vec<u8>, String> {
    let file = input
        .files()
        .and_then(|f| f.get(0))
        .ok_or("choose both IDX files (images and labels)")?;
    let read = |e: JsValue| format!("could not read {}: {}", file.name(), js_text(&e));
    let head = file.slice_with_f64_and_f64(0.0, 2.0).map_err(read)?;
    if blob_bytes(&head).await.map_err(read)? == GZIP_MAGIC {
        return gunzip(&file).await;
    }
    if file.size() > MAX_OWN_FILE_BYTES as f64 {
        return Err(too_large(&file.name()));
    }
    blob_bytes(&file).await.map_err(read)
}

/// The whole of a blob.
async fn blob_bytes(blob: &web_sys::Blob) -> Result<Vec<u8>, JsValue> {
    let buf = wasm_bindgen_futures::JsFuture::from(blob.array_buffer()).await?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

/// A gzipped file's content, read chunk by chunk through the browser's `DecompressionStream`
/// and stopped past [`MAX_OWN_FILE_BYTES`].
async fn gunzip(file: &web_sys::File) -> Result<Vec<u8>, String> {
    let fail = |e: JsValue| {
        format!(
            "{} starts like a gzip file but does not decompress: {}",
            file.name(),
            js_text(&e)
        )
    };
    let stream = DecompressionStream::new("gzip").map_err(fail)?;
    let reader: web_sys::ReadableStreamDefaultReader = file
        .stream()
        .pipe_through(stream.unchecked_ref::<web_sys::ReadableWritablePair>())
        .get_reader()
        .unchecked_into();
    let mut out = Vec::new();
    loop {
        let chunk = wasm_bindgen_futures::JsFuture::from(reader.read())
            .await
            .map_err(fail)?;
        let field = |name: &str| js_sys::Reflect::get(&chunk, &name.into()).map_err(fail);
        if field("done")?.as_bool() != Some(false) {
            return Ok(out);
        }
        let bytes = js_sys::Uint8Array::new(&field("value")?);
        let start = out.len();
        let end = start.saturating_add(bytes.length() as usize);
        if end > MAX_OWN_FILE_BYTES {
            // The rest is never decompressed.
            let _stopped = reader.cancel();
            return Err(too_large(&file.name()));
        }
        out.resize(end, 0);
        bytes.copy_to(&mut out[start..]);
    }
}

fn too_large(name: &str) -> String {
    format!(
        "{name} is larger than {} MB (uncompressed): expected an IDX file of at most that size",
        MAX_OWN_FILE_BYTES / (1024 * 1024)
    )
}

/// A JavaScript error's message (or what it is, if it is no `Error`).
fn js_text(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| e.dyn_ref::<js_sys::Error>().map(|e| e.message().into()))
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Why own files cannot be joined with, and the dataset whose ledger the user may reset.
struct Refusal {
    message: String,
    reset: Option<String>,
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self {
            message,
            reset: None,
        }
    }
}

/// Releases this tab's hold on its own files, if it has one.
fn release_held(lock: StoredValue<Option<DatasetLock>, LocalStorage>) {
    if let Some(held) = lock.try_update_value(|l| l.take()).flatten() {
        held.release();
    }
}

/// Reads the chosen files, refuses them if their stored ledger is unreadable, and takes their
/// lock (kept in `lock`) so that no other tab spends on them meanwhile.
async fn own_files(
    images_input: NodeRef<Input>,
    labels_input: NodeRef<Input>,
    lock: StoredValue<Option<DatasetLock>, LocalStorage>,
) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
    let (Some(i), Some(l)) = (images_input.get_untracked(), labels_input.get_untracked()) else {
        return Err(String::from("the file inputs are missing").into());
    };
    let (images, labels) = (file_bytes(&i).await?, file_bytes(&l).await?);
    let fingerprint = ledger::fingerprint(&images, &labels);
    let held = lock.with_value(|l| l.as_ref().map(|l| l.fingerprint.clone()));
    if held.as_deref() != Some(fingerprint.as_str()) {
        release_held(lock);
        match lock_dataset(&fingerprint).await? {
            LockOutcome::Held(l) => lock.set_value(Some(l)),
            LockOutcome::Busy => return Err(String::from(
                "Another tab of this browser is training on these files: two tabs would spend their privacy budget twice. Leave (or close) that tab first.",
            )
            .into()),
            LockOutcome::Unsupported => {}
        }
    }
    if let Some(LedgerSlot::Unreadable { reason, .. }) = stored_ledger(&fingerprint) {
        release_held(lock);
        return Err(Refusal {
            message: unreadable_message(&reason),
            reset: Some(fingerprint),
        });
    }
    Ok((images, labels))
}

#[component]
pub fn ClientPage() -> impl IntoView {
    let view = RwSignal::new(ClientView::default());
    let handle = StoredValue::new_local(None::<WorkerHandle>);
    let default_name = format!("tab-{:04x}", (js_sys::Math::random() * 65536.0) as u32);
    let (name, set_name) = signal(default_name);
    let (cap, set_cap) = signal(String::new());
    let (delta_text, set_delta_text) = signal(String::new());
    let (own, set_own) = signal(false);
    let (require_secure, set_require_secure) = signal(false);
    let (workers_text, set_workers_text) = signal(String::new());
    let (form_error, set_form_error) = signal(None::<String>);
    // A dataset whose unreadable ledger the user may reset (own files checked by the page).
    let (reset_target, set_reset_target) = signal(None::<String>);
    // This tab's hold on its own files (see `own_files`).
    let lock = StoredValue::new_local(None::<DatasetLock>);
    let release_lock = move || release_held(lock);
    let images_input = NodeRef::<Input>::new();
    let labels_input = NodeRef::<Input>::new();

    let generation = StoredValue::new(0u64);
    let (busy, set_busy) = signal(false);

    // Retires the current worker (if any) and makes its reports stale; returns the next
    // generation's number.
    let retire_current = move || {
        generation.update_value(|g| *g += 1);
        if let Some(h) = handle.try_update_value(|h| h.take()).flatten() {
            retire(h);
        }
        generation.get_value()
    };

    let leave = move || {
        retire_current();
        release_lock();
        let _forgotten = store(JOINED_KEY, None); // nothing to rejoin either way
        view.update(|v| {
            v.apply(WorkerToPage::Connection(
                protocol::worker::Connection::Stopped {
                    reason: "left".into(),
                },
            ))
        });
    };

    let join = move || {
        if busy.get_untracked() {
            return;
        }
        set_form_error.set(None);
        set_reset_target.set(None);
        let (epsilon_cap, delta, workers) = match (
            parse_cap(&cap.get_untracked()),
            parse_delta(&delta_text.get_untracked()),
            crate::client_view::parse_workers(&workers_text.get_untracked()),
        ) {
            (Ok(c), Ok(d), Ok(w)) => (c, d, w),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return set_form_error.set(Some(e)),
        };
        let own_data = own.get_untracked();
        let prefs = JoinPrefs {
            name: name.get_untracked(),
            cap: cap.get_untracked(),
            delta: delta_text.get_untracked(),
            own: own_data,
            require_secure: require_secure.get_untracked(),
            workers: workers_text.get_untracked(),
        };
        set_busy.set(true);
        leptos::task::spawn_local(async move {
            // Before the dataset lock is taken: waiting for it never widens the lock's window.
            let servers = servers_to_try(&socket_url(), &listed_servers().await);
            let files = if own_data {
                match own_files(images_input, labels_input, lock).await {
                    Ok(f) => Some(f),
                    Err(refusal) => {
                        set_reset_target.set(refusal.reset);
                        set_form_error.set(Some(refusal.message));
                        set_busy.set(false);
                        return;
                    }
                }
            } else {
                release_lock();
                None
            };
            let req = PageToWorker::Join(JoinRequest {
                servers,
                name: prefs.name.clone(),
                epsilon_cap,
                delta,
                own_data,
                resume: stored(SAVED_KEY)
                    .and_then(|s| serde_json::from_str::<SavedClient>(&s).ok()),
                // Read after the lock is held: the last holder's ledger is in storage by then.
                ledgers: stored_ledgers(),
                require_secure_aggregation: prefs.require_secure,
                workers,
            });
            // A worker that stopped on its own (a fatal error) is still there: end it first.
            let mine = retire_current();
            match spawn_worker(view, command(&req, files.as_ref()), generation, mine) {
                Ok(h) => {
                    handle.set_value(Some(h));
                    // Without storage a reload just shows the form again.
                    if let Ok(json) = serde_json::to_string(&prefs) {
                        let _kept = store(JOINED_KEY, Some(&json));
                    }
                    view.update(|v| {
                        *v = ClientView {
                            joined: true,
                            // A rejoin keeps what this tab already showed.
                            rounds: v.rounds.clone(),
                            // Kept so that another run's shard clears the old rows.
                            rounds_run: v.rounds_run,
                            assignment: v.assignment.clone(),
                            reloaded: v.reloaded,
                            ..ClientView::default()
                        }
                    });
                    if lock.with_value(Option::is_none) && own_data {
                        view.update(|v| v.apply(WorkerToPage::Error {
                            message: "This browser offers no Web Locks here (plain http from another host): do not train on these files in two tabs at once, or their budget is spent twice.".into(),
                            fatal: false,
                        }));
                    }
                }
                Err(e) => set_form_error.set(Some(e)),
            }
            set_busy.set(false);
        });
    };

    // Forgets a dataset's unreadable ledger, after the user confirmed, and joins again.
    let reset_ledger = move |fingerprint: String| {
        let confirmed = window()
            .confirm_with_message("Reset the privacy ledger of this data? What was spent on these records is forgotten: ε restarts at 0 for them.")
            .unwrap_or(false);
        if !confirmed {
            return;
        }
        if let Err(e) = store_in(Scope::Browser, &ledger::storage_key(&fingerprint), None) {
            return set_form_error.set(Some(e));
        }
        set_reset_target.set(None);
        set_form_error.set(None);
        if view.with_untracked(|v| v.joined) {
            leave();
        }
        join();
    };

    // A reloaded tab that was joined rejoins the same way, as the same client (own files must
    // be chosen again: the page cannot read them without the user).
    if let Some(prefs) = stored(JOINED_KEY).and_then(|j| serde_json::from_str::<JoinPrefs>(&j).ok())
    {
        view.update(|v| {
            v.reloaded = true;
            if let Some(saved) = stored(ROUNDS_KEY) {
                v.restore_rounds(&saved);
            }
        });
        set_name.set(prefs.name);
        set_cap.set(prefs.cap);
        set_delta_text.set(prefs.delta);
        set_own.set(prefs.own);
        set_require_secure.set(prefs.require_secure);
        set_workers_text.set(prefs.workers);
        if prefs.own {
            set_form_error.set(Some("This tab trained on your own files: choose them again and press Join to continue as the same client.".into()));
        } else {
            join();
        }
    }
    on_cleanup(move || {
        retire_current();
        release_lock();
    });
    forward_ledger_changes(handle);

    let joined = move || view.with(|v| v.joined);
    // The dataset whose ledger can be reset: own files refused by the page, or the data the
    // worker found blocked.
    let resettable = move || {
        reset_target
            .get()
            .or_else(|| view.with(|v| v.blocked.clone().and_then(|(fp, _)| fp)))
    };
    view! {
        <section class="card">
            <h2>"This device"</h2>
            <form class="join" on:submit=move |ev| { ev.prevent_default(); if joined() { leave() } else { join() } }>
                <label>"Name " <input id="client-name" prop:value=name on:input=move |ev| set_name.set(event_target_value(&ev)) disabled=joined/></label>
                <label>"My ε cap " <input id="epsilon-cap" placeholder="none" size="6" prop:value=cap on:input=move |ev| set_cap.set(event_target_value(&ev)) disabled=joined/></label>
                <label title="the δ this device states ε and its cap at; default min(1e-5, 1/(10 n)) for n records">"at δ " <input id="delta" placeholder="auto" size="6" prop:value=delta_text on:input=move |ev| set_delta_text.set(event_target_value(&ev)) disabled=joined/></label>
                <label><input type="radio" name="data" prop:checked=move || !own.get() on:change=move |_| set_own.set(false) disabled=joined/>" a shard the server assigns"</label>
                <label><input type="radio" name="data" prop:checked=own on:change=move |_| set_own.set(true) disabled=joined/>" my own IDX files"</label>
                <label title="like the ε cap: this tab then refuses every round without secure aggregation, whatever the server asks"><input type="checkbox" id="require-secure" prop:checked=require_secure on:change=move |ev| set_require_secure.set(event_target_checked(&ev)) disabled=joined/>" require secure aggregation"</label>
                <label title="Web Workers that share each training step (the page stays responsive: training never runs on it); empty: one per core of this device">"workers " <input id="workers" placeholder="auto" size="3" prop:value=workers_text on:input=move |ev| set_workers_text.set(event_target_value(&ev)) disabled=joined/></label>
                <span class="files" class:hidden=move || !own.get()>
                    <label>"images " <input type="file" node_ref=images_input disabled=joined/></label>
                    <label>"labels " <input type="file" node_ref=labels_input disabled=joined/></label>
                    <small>"IDX files, plain or gzipped (.gz): 28×28 grey images, labels 0–9, of the run's task (named once connected). Read in this page and never uploaded; what leaves is the DP update and the number of examples."</small>
                </span>
                <button id="join" type="submit" disabled=busy>{move || if joined() { "Leave" } else { "Join" }}</button>
            </form>
            <p class="error" id="join-error">{move || form_error.get()}</p>
            {move || view.with(|v| v.blocked.clone().map(|(_, reason)| view! { <p class="error" id="blocked">{reason}</p> }))}
            {move || resettable().map(|fp| view! {
                <p><button id="reset-ledger" type="button" on:click=move |_| reset_ledger(fp.clone())>"Reset this ledger (ε restarts at 0 for these records)"</button></p>
            })}
            <p>"Connection: " <b id="connection">{move || view.with(|v| v.connection_text())}</b>
               <span id="client-id">{move || view.with(|v| v.client_id.map(|id| format!(" · client #{id}")))}</span>
               {move || view.with(|v| (v.rounds_taken > 0).then(|| format!(" · sent {} round(s) of this run before this connection", v.rounds_taken)))}</p>
            {move || view.with(|v| v.finished.clone().map(|r| view! { <p class="notice" id="run-finished">"Run finished: " {r}</p> }))}
            <ul class="messages">{move || view.with(|v| v.messages.iter().map(|m| view! { <li>{m.clone()}</li> }).collect_view())}</ul>
        </section>
        <div class="grid">
            <section class="card">
                <h2>"Data"</h2>
                <DataPanel view=view/>
            </section>
            <section class="card">
                <h2>"Local training"</h2>
                <ProgressPanel training=Signal::derive(move || view.with(|v| v.training.clone())) steps=Signal::derive(move || view.with(|v| v.steps_seen)) line=Signal::derive(move || view.with(|v| v.training_line()))/>
                <p class="privacy">"Spent by this client on this data (its own ledger): " <b id="epsilon">{move || view.with(|v| v.epsilon_text())}</b></p>
                <p id="secure">{move || view.with(|v| v.secure_text())}</p>
                <p class="help">"The dashboard shows what the server charged: an upper bound, since it counts every round it sends, also rounds this client refused or never returned."</p>
                {move || view.with(|v| v.last_global_accuracy.map(|(r, a)| view! {
                    <p>"Global model after round " {r} ": " <b id="global-accuracy">{format!("{:.2} %", a * 100.0)}</b> " test accuracy"</p>
                }))}
            </section>
        </div>
        <RoundsTable view=view/>
    }
}

/// The rounds this client trained in, the latest first.
#[component]
fn RoundsTable(
    /// The page state.
    view: RwSignal<ClientView>,
) -> impl IntoView {
    // The view changes at every step; the rows only when a round ends or closes.
    let rows = Memo::new(move |_| view.with(ClientView::round_cells));
    let caption = Memo::new(move |_| view.with(ClientView::rounds_caption));
    view! {
        <section class="card">
            <h2>"Rounds this client trained in"</h2>
            <table id="rounds">
                <thead><tr><th>"round"</th><th>"local loss"</th><th>"local accuracy"</th><th>"ε after"</th><th>"time"</th><th>"speed"</th><th>"global accuracy"</th></tr></thead>
                <tbody>{move || rows.get().into_iter().map(|r| view! {
                    <tr>
                        <td>{r.round}</td>
                        <td>{r.loss}</td>
                        <td>{r.accuracy}</td>
                        <td>{r.epsilon}</td>
                        <td>{r.time}</td>
                        <td class="speed">{r.speed}</td>
                        <td>{r.global_accuracy}</td>
                    </tr>
                }).collect_view()}</tbody>
            </table>
            {move || caption.get().map(|c| view! { <p class="help" id="rounds-caption">{c}</p> })}
        </section>
    }
}

/// The run's task, the shard (or own files), its label histogram and a few of its images.
#[component]
fn DataPanel(
    /// The page state.
    view: RwSignal<ClientView>,
) -> impl IntoView {
    // Only a change of the card's content redraws it (the view changes at every step).
    let card = Memo::new(move |_| view.with(ClientView::data_card));
    move || {
        let c = card.get();
        let histogram = c.histogram.map(|bars| {
            let max = bars.iter().map(|(n, _)| *n).max().unwrap_or(1).max(1) as f64;
            view! {
                <div class="histogram" id="histogram">
                    {bars.into_iter().enumerate().map(|(label, (n, name))| view! {
                        <div class="bar" title=format!("{n} examples of {name}")>
                            <span style=format!("height: {:.0}%", n as f64 / max * 100.0)></span>
                            <small>{label}</small>
                        </div>
                    }).collect_view()}
                </div>
            }
        });
        let rows = c.samples;
        view! {
            <p id="task">{c.task_line}</p>
            <p id="shard">{c.data_line}</p>
            {histogram}
            {(!rows.is_empty()).then(|| view! {
                <table class="samples" id="samples">
                    <caption>"A few examples of each class in this tab's data (drawn here; they never leave the browser)"</caption>
                    <tbody>{rows.into_iter().map(|r| view! {
                        <tr data-label=r.label>
                            <th><span class="class-name">{r.heading()}</span><small>{format!("{} examples", r.count)}</small></th>
                            <td><SampleStrip samples=r.samples/></td>
                        </tr>
                    }).collect_view()}</tbody>
                </table>
            })}
        }
    }
}

/// Side of a sample image in pixels (every task's today; a sample of another size is skipped).
const SAMPLE_SIDE: usize = 28;

/// One class's samples side by side on one canvas (grey pixels; the CSS scales them up).
#[component]
fn SampleStrip(
    /// Pixels of each sample, `SAMPLE_SIDE`² grey values each.
    samples: Vec<Vec<u8>>,
) -> impl IntoView {
    let canvas = NodeRef::<leptos::html::Canvas>::new();
    let count = samples.len().max(1);
    canvas.on_load(move |c| {
        if let Err(e) = draw_samples(&c, &samples) {
            web_sys::console::error_2(&"could not draw the sample images".into(), &e);
        }
    });
    view! {
        <canvas node_ref=canvas class="sample-strip" width=(count * SAMPLE_SIDE).to_string() height=SAMPLE_SIDE.to_string()></canvas>
    }
}

/// Paints `samples` left to right on `canvas`.
fn draw_samples(canvas: &web_sys::HtmlCanvasElement, samples: &[Vec<u8>]) -> Result<(), JsValue> {
    let ctx: web_sys::CanvasRenderingContext2d = canvas
        .get_context("2d")?
        .ok_or_else(|| JsValue::from_str("no 2d context"))?
        .unchecked_into();
    let side = SAMPLE_SIDE as u32;
    for (i, pixels) in samples
        .iter()
        .enumerate()
        .filter(|(_, p)| p.len() == SAMPLE_SIDE * SAMPLE_SIDE)
    {
        let rgba: Vec<u8> = pixels.iter().flat_map(|&g| [g, g, g, 255]).collect();
        let image = web_sys::ImageData::new_with_u8_clamped_array_and_sh(
            wasm_bindgen::Clamped(&rgba),
            side,
            side,
        )?;
        ctx.put_image_data(&image, (i * SAMPLE_SIDE) as f64, 0.0)?;
    }
    Ok(())
}

/// The local training progress bar.
#[component]
fn ProgressPanel(
    /// Training in progress, if any.
    training: Signal<Option<Training>>,
    /// Steps seen so far (tests check that the bar moved).
    steps: Signal<u64>,
    /// The line under the bar ([`ClientView::training_line`]).
    line: Signal<String>,
) -> impl IntoView {
    view! {
        <progress id="train-progress" max="1" prop:value=move || training.get().map_or(0.0, |t| t.fraction()) data-steps=move || steps.get().to_string()></progress>
        <p id="train-status">{move || line.get()}</p>
    }
}
