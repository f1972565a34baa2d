//! `cargo run -p server --release -- --bind 127.0.0.1:3000`

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(about = "Federated learning server (DP-SGD clients, FedAvg)")]
struct Args {
    /// Address to listen on (use a LAN address so phones on the same network can join).
    #[arg(long, env = "FL_BIND", default_value = "127.0.0.1:3000")]
    bind: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, server::app())
        .with_graceful_shutdown(async {
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
            tokio::select! { _ = ctrl_c => {}, _ = term => {} }
            tracing::info!("shutting down");
        })
        .await?;
    Ok(())
}
