//! Native training throughput of TinyCNN (samples/s, one thread): plain step, DP-SGD step,
//! inference. `cargo run -p learning --release --bin throughput -- --batch 64`

use clap::Parser;
use learning::bench::{StepKind, train_step_throughput};

#[derive(Parser, Debug)]
struct Args {
    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps per run.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Runs per kind; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t0 = std::time::Instant::now();
    let now = move || t0.elapsed().as_secs_f64() * 1000.0;
    println!(
        "TinyCNN, flex backend, 1 thread, batch {}, {} steps × {} runs (median)",
        args.batch, args.iters, args.runs
    );
    for (name, kind) in [
        ("plain step", StepKind::Plain),
        ("DP-SGD step", StepKind::DpSgd),
        ("inference", StepKind::Inference),
    ] {
        let mut runs = (0..args.runs)
            .map(|_| train_step_throughput(kind, args.batch, 5, args.iters, &now))
            .collect::<Result<Vec<_>, _>>()?;
        runs.sort_by(f64::total_cmp);
        println!(
            "{name:12} {:8.0} samples/s   (runs: {})",
            runs[runs.len() / 2],
            runs.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
