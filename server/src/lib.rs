//! The federation server.
//!
//! # Layout
//!
//! * [`app`]: the axum router, built by a function so tests call it without a port.
//! * [`coordinator`]: the one task that owns the run, the registry and the round state.
//! * [`strategy`]: pure Flower-shaped strategies (FedAvg, DP wrapper).
//! * [`ws`]: one task per client socket; validates everything before the coordinator sees it.
//! * [`admin`]: token-protected admin API, the dashboard event stream, shard downloads.
//! * [`store`]: persistence in SQLite or PostgreSQL (runs, rounds, ledger, checkpoints).
//! * [`bus`]: gateways and the coordinator over NATS (several machines).
//! * [`data`]: the demo data set (MNIST) and its shards.
//! * [`server`]: wiring it all together for the binary and the tests.
//! * [`net`]: the listener's guards: a connection limit and an idle timeout.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod bus;
pub mod coordinator;
pub mod data;
pub mod net;
pub mod server;
pub mod store;
pub mod strategy;
pub mod ws;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{any, get, post};
use axum::{Json, Router, middleware};
use protocol::admin::Event;
use protocol::servers::ServersInfo;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tower_http::services::{ServeDir, ServeFile};

use crate::coordinator::Command;
use crate::data::DemoData;

/// What every handler shares: channels to the coordinator, never the round state itself.
#[derive(Clone)]
pub struct AppState {
    pub coordinator: mpsc::Sender<Command>,
    pub events: broadcast::Sender<Event>,
    pub admin_token: Arc<String>,
    pub data: Option<Arc<DemoData>>,
    pub model_params: usize,
    /// The built frontend (`trunk build --release` output) served at `/`, if any.
    pub static_dir: Option<Arc<std::path::PathBuf>>,
    /// Where the server listens (for the join link other devices use).
    pub listen: Option<std::net::SocketAddr>,
    /// The deployment's live gateways, heard on the bus (empty on a single server).
    pub peers: bus::peers::Peers,
}

/// What `GET /api/health` answers: enough for a client or an operator to check that it talks
/// to a compatible server before anything else.
#[derive(Debug, Serialize, PartialEq)]
pub struct Health {
    pub status: &'static str,
    pub protocol_version: u16,
    /// Parameters of the model this server federates (TinyCNN: 12 810).
    pub model_params: usize,
}

/// The server's router.
pub fn app(state: AppState) -> Router {
    let admin_routes = Router::new()
        .route("/check", get(admin::check))
        .route("/runs", get(admin::list_runs).post(admin::create_run))
        .route("/runs/{id}", get(admin::history))
        .route("/runs/{id}/model", get(admin::model))
        .route("/runs/{id}/{action}", post(admin::control))
        .route("/clients", get(admin::clients))
        .route("/join", get(admin::join_info))
        .route("/events", get(admin::events))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ))
        .fallback(api_not_found);
    let router = Router::new()
        .route("/api/health", get(health))
        .route("/api/tasks", get(tasks))
        .route("/ws", get(ws::ws_handler))
        .route("/api/servers", get(servers))
        // A page served by one gateway downloads its shard from the gateway it moved to.
        .route(
            "/api/runs/{run}/shards/{index}/{part}",
            get(admin::shard).layer(middleware::map_response(readable_from_any_origin)),
        )
        .nest("/api/admin", admin_routes)
        // An unknown API path is a JSON 404, never the frontend's index.html.
        .route("/api/{*rest}", any(api_not_found));
    let router = match state.static_dir.as_deref() {
        // The frontend is a single-page app: any other path (`/admin`) gets index.html and the
        // page routes itself.
        Some(dir) => router.fallback_service(
            Router::new()
                .fallback_service(
                    ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html"))),
                )
                .layer(middleware::map_response(revalidated)),
        ),
        None => router,
    };
    router
        .layer(middleware::map_response(cross_origin_isolated))
        // gzip for the pages (5.7 MB → 1.3 MB, BENCHMARKS.md) and the shard files; tower-http's default
        // predicate leaves the event stream, images and small bodies (a socket upgrade) alone.
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// `bytes` random bytes from the OS's CSPRNG, as lowercase hex: client keys and the admin token.
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Every response says the pages are cross-origin isolated (COOP `same-origin`, COEP
/// `require-corp`): only such a page's workers may share memory, and a tab's workers claim a
/// step's chunks through a SharedArrayBuffer counter (`client-wasm/src/pool.rs`; 2 workers went
/// from 1.48× to 1.54× of one, BENCHMARKS.md). The pages load nothing from other origins but the
/// shards of another gateway, which are CORS fetches (`readable_from_any_origin`), allowed.
async fn cross_origin_isolated(mut res: axum::response::Response) -> axum::response::Response {
    use axum::http::HeaderValue;
    let h = res.headers_mut();
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-embedder-policy",
        HeaderValue::from_static("require-corp"),
    );
    res
}

/// The pages' files are cached but revalidated at every load (`no-cache`: a 304 when unchanged,
/// by their `last-modified`). Without it a browser guesses how long a file stays fresh, and
/// `worker.js` and `worker_bg.wasm` keep their names from build to build: after a new
/// deployment a tab could run an old module under new glue code. A cached module also keeps
/// the code V8 compiled for it, which a fresh tab's workers would otherwise compile again.
async fn revalidated(mut res: axum::response::Response) -> axum::response::Response {
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    res
}

async fn api_not_found(uri: axum::http::Uri) -> admin::AppError {
    admin::AppError::NotFound(format!("no API route {}", uri.path()))
}

async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        protocol_version: protocol::PROTOCOL_VERSION,
        model_params: state.model_params,
    })
}

/// `GET /api/servers`: the socket URLs of the deployment's live gateways, for a client page to
/// move to when its connection fails (none on a single server). Shuffled per request, so the
/// clients of a failed gateway spread over the others.
async fn servers(State(state): State<AppState>) -> Result<Json<ServersInfo>, admin::AppError> {
    let seed = bus::random_u64("order of the gateways").map_err(admin::AppError::Internal)?;
    let servers = match state.peers.lock() {
        Ok(mut table) => table.live(std::time::Instant::now(), seed),
        Err(_) => {
            return Err(admin::AppError::Internal(
                "the gateway table's lock is poisoned".into(),
            ));
        }
    };
    Ok(Json(ServersInfo { servers }))
}

/// Shard files are fetched with the client's key in the URL, which no other site holds: any
/// origin may read the answer (a page served by one gateway, connected to another), and an
/// error's message reaches the page instead of an opaque network failure.
async fn readable_from_any_origin(mut res: axum::response::Response) -> axum::response::Response {
    res.headers_mut().insert(
        axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        axum::http::HeaderValue::from_static("*"),
    );
    res
}

/// `GET /api/tasks`: every registered task, and whether this server holds its data.
async fn tasks(State(state): State<AppState>) -> Json<Vec<protocol::admin::TaskInfo>> {
    let held = |t: &learning::Task| state.data.as_ref().is_some_and(|d| d.of(t).is_some());
    Json(learning::TASKS.iter().map(|t| t.info(held(t))).collect())
}

/// `f` of every item, in order, spread over the machine's cores (scoped threads): for the
/// accountant's work that runs off the coordinator task, tens of milliseconds an item.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}
