//! Native training throughput of TinyCNN (samples/s): plain step, DP-SGD step, a client's
//! distributed-DP step, inference.
//! `cargo run -p learning --release --bin throughput -- --batch 64 --threads 2` (the training
//! steps' gradients shared by 2 threads; the distributed step and inference always on one).
//! `--step-times N` instead prints each of N DP-SGD steps' milliseconds as one JSON array.

use clap::Parser;
use learning::bench::{StepKind, samples_per_second, train_step_times};

/// mimalloc, as in every native training binary: glibc's malloc hands the step's large
/// buffers back to the kernel and faults them in again at the next step (a third of a
/// TinyCNN step went to page faults; BENCHMARKS.md, issue 17).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps per run.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Threads sharing each training step's gradient.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Runs per kind; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Then each matrix product of a batch-64 DP step alone, in GFLOP/s.
    #[arg(long)]
    gemm: bool,
    /// Only the milliseconds of each of this many DP-SGD steps of one setup (after 5 untimed
    /// ones), as one JSON array, and nothing else (`--iters`, `--runs`, `--gemm` are not used;
    /// for `client-wasm/bench/step-times.mjs`).
    #[arg(long)]
    step_times: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t0 = std::time::Instant::now();
    let now = move || t0.elapsed().as_secs_f64() * 1000.0;
    if let Some(steps) = args.step_times {
        let times = train_step_times(StepKind::DpSgd, args.batch, args.threads, 5, steps, &now)?;
        let times: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
        println!("[{}]", times.join(","));
        return Ok(());
    }
    println!(
        "TinyCNN, flex backend, {} thread(s), batch {}, {} steps × {} runs (median)",
        args.threads, args.batch, args.iters, args.runs
    );
    for (name, kind) in [
        ("plain step", StepKind::Plain),
        ("DP-SGD step", StepKind::DpSgd),
        ("distributed", StepKind::Distributed),
        ("inference", StepKind::Inference),
    ] {
        let mut runs = (0..args.runs)
            .map(|_| {
                train_step_times(kind, args.batch, args.threads, 5, args.iters, &now)
                    .map(|ms| samples_per_second(&ms, args.batch))
            })
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
    if args.gemm {
        print_gemm_rates(learning::bench::gemm_rates(&now));
    }
    Ok(())
}

fn print_gemm_rates(rates: Vec<(String, f64, f64)>) {
    println!("the step's matrix products alone (batch 64):");
    for (name, ms, gflops) in rates {
        println!("  {name:62} {ms:7.3} ms  {gflops:6.1} GFLOP/s");
    }
}
