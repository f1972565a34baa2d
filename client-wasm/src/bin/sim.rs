//! Headless simulated clients: N clients in one process, each the same session a browser tab
//! runs, against a server.
//!
//! `cargo run -p client-wasm --release --bin sim -- --server ws://127.0.0.1:3000/ws --clients 10`
//! (add `--attack sign-flip --attackers 2` to make two of them hostile)

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use client_wasm::attack::Attack;
use client_wasm::native::{DriverOptions, run_client};
use client_wasm::session::OwnFiles;
use client_wasm::{Session, SessionOptions};
use tokio::sync::Semaphore;
use tracing_subscriber::EnvFilter;

/// mimalloc: glibc's malloc hands a training step's large buffers back to the kernel and
/// faults them in again at the next step (a third of a TinyCNN step; BENCHMARKS.md, issue 17).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Start N simulated federated clients against a server")]
struct Args {
    /// The server's WebSocket URL; on several machines, every gateway's, comma-separated:
    /// client i starts at the (i mod n)-th and moves to the next when its connection fails.
    #[arg(
        long,
        env = "FL_SERVER",
        default_value = "ws://127.0.0.1:3000/ws",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// Number of clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Each client's own ε cap: it refuses rounds that would pass it (default: trust the run).
    #[arg(long)]
    epsilon_cap: Option<f64>,
    /// The δ each client states its ε (and its cap) at (default: min(1e-5, 1/(10 n)) for n
    /// examples; it must stay below 1/n).
    #[arg(long)]
    delta: Option<f64>,
    /// Bring own data instead of a server shard: each client takes this many training examples
    /// of `--task`'s data set of its own (lightweight clients for load tests).
    #[arg(long)]
    own_examples: Option<usize>,
    /// The task whose training set `--own-examples` draws from (mnist or fashion-mnist); the
    /// run's task must be the same, or the clients refuse its models.
    #[arg(long, default_value = "mnist")]
    task: String,
    /// Trainings at once (default: the number of CPUs).
    #[arg(long)]
    parallel: Option<usize>,
    /// Threads that share each client's training step (its Poisson batch cut into slices; the
    /// noise is still drawn once per step). Trainings at once × threads should not pass the
    /// CPUs.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Give up after failing to reach the server for this many seconds.
    #[arg(long, default_value_t = 60)]
    reconnect_secs: u64,
    /// Answer the server's evaluation requests (with DP, charged to each client's ledger).
    #[arg(long)]
    evaluate: bool,
    /// Send no update in the clear: refuse every round without secure aggregation (as a
    /// client page with "require secure aggregation" does).
    #[arg(long)]
    require_secure_aggregation: bool,
    /// Make some clients hostile: sign-flip, scale:K, random:NORM, label-flip or zero.
    #[arg(long, requires = "attackers")]
    attack: Option<Attack>,
    /// How many of the clients attack (the first ones started).
    #[arg(long, requires = "attack")]
    attackers: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,sim=info")),
        )
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.clients >= 1,
        "--clients is {}: expected at least 1",
        args.clients
    );
    anyhow::ensure!(
        (1..=256).contains(&args.threads),
        "--threads is {}: expected 1 to 256",
        args.threads
    );
    let attackers = args.attackers.unwrap_or(0);
    anyhow::ensure!(
        attackers <= args.clients,
        "--attackers is {attackers}: expected at most --clients ({})",
        args.clients
    );
    let parallel = args
        .parallel
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let slots = Arc::new(Semaphore::new(parallel.max(1)));
    let own = match args.own_examples {
        Some(k) => {
            let task = learning::task::find(&args.task)?;
            let data = task
                .load_default()
                .with_context(|| format!("loading {} for --own-examples", task.name))?;
            anyhow::ensure!(
                k >= 1 && k * args.clients <= data.train.len(),
                "--own-examples is {k}: expected 1..={} for {} clients",
                data.train.len() / args.clients,
                args.clients
            );
            Some((data, k))
        }
        None => None,
    };
    let start = Instant::now();
    tracing::info!(target: "sim", clients = args.clients, servers = ?args.server, parallel, "starting simulated clients");
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let own_data = own.as_ref().map(|(m, k)| {
            OwnFiles::from_dataset(m.train.subset(&(i * k..(i + 1) * k).collect::<Vec<_>>()))
        });
        let session = Session::new(SessionOptions {
            name: format!("sim-{i}"),
            epsilon_cap: args.epsilon_cap,
            delta: args.delta,
            own_data,
            can_evaluate: args.evaluate,
            require_secure_aggregation: args.require_secure_aggregation,
            ..Default::default()
        })?;
        let mut servers = args.server.clone();
        let first = i % servers.len().max(1);
        servers.rotate_left(first);
        let options = DriverOptions {
            servers,
            reconnect_for: Duration::from_secs(args.reconnect_secs),
            exit_when_finished: true,
            training_slots: slots.clone(),
            attack: args.attack.filter(|_| i < attackers),
            threads: args.threads,
        };
        tasks.push(tokio::spawn(run_client(session, options)));
    }
    let mut failed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok(r)) => tracing::info!(
                target: "sim",
                client = i,
                client_id = ?r.client_id,
                rounds = r.rounds_trained.len(),
                epsilon = ?r.epsilon,
                accuracy = ?r.last_accuracy,
                finished = ?r.finished,
                "client done"
            ),
            Ok(Err(e)) => {
                failed += 1;
                tracing::error!(target: "sim", client = i, error = %e, "client stopped");
            }
            Err(e) => {
                failed += 1;
                tracing::error!(target: "sim", client = i, error = %e, "client task failed");
            }
        }
    }
    tracing::info!(target: "sim", seconds = start.elapsed().as_secs_f64(), failed, "all clients done");
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} clients stopped with an error",
        args.clients
    );
    Ok(())
}
