//! Privacy budget calculator for DP-SGD (Poisson-subsampled Gaussian, RDP accountant).
//!
//! ```text
//! dp-budget --sample-rate 0.004 --noise-multiplier 1.1 --steps 14100 --delta 1e-5   # → epsilon=…
//! dp-budget --sample-rate 0.004 --target-epsilon 3 --steps 14100 --delta 1e-5       # → noise_multiplier=…
//! ```
//! The answer is always the last line, so scripts can `tail -n1`.

use clap::{ArgGroup, Parser};
use learning::accountant;

/// ε spent by DP-SGD, or the smallest noise multiplier that keeps ε under a target.
#[derive(Parser, Debug)]
#[command(version, allow_negative_numbers = true, group(ArgGroup::new("mode").required(true).args(["noise_multiplier", "target_epsilon"])))]
struct Args {
    /// Poisson sampling rate q = expected batch size / data set size, in (0, 1].
    #[arg(long)]
    sample_rate: f64,
    /// Noise std / clipping norm (σ), > 0. Prints `epsilon=<value>`.
    #[arg(long)]
    noise_multiplier: Option<f64>,
    /// Target ε, > 0. Prints the smallest `noise_multiplier=<value>` that meets it.
    #[arg(long)]
    target_epsilon: Option<f64>,
    /// Number of DP-SGD steps (epochs × steps per epoch).
    #[arg(long)]
    steps: u64,
    /// δ of the (ε, δ) guarantee, in (0, 1); usually below 1 / data set size.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), accountant::AccountantError> {
    let Args {
        sample_rate: q,
        steps,
        delta,
        ..
    } = args;
    match (args.noise_multiplier, args.target_epsilon) {
        (Some(sigma), _) => {
            let eps = accountant::epsilon(q, sigma, steps, delta)?;
            println!("sample_rate={q} noise_multiplier={sigma} steps={steps} delta={delta}");
            println!("epsilon={eps:.6}");
        }
        (None, Some(target)) => {
            let sigma = accountant::noise_multiplier_for(target, q, steps, delta)?;
            let eps = accountant::epsilon(q, sigma, steps, delta)?;
            println!(
                "sample_rate={q} target_epsilon={target} steps={steps} delta={delta} (epsilon at this sigma: {eps:.6})"
            );
            // Rounded up, never down: a larger σ only lowers ε, so the printed value still meets the target.
            println!("noise_multiplier={:.6}", (sigma * 1e6).ceil() / 1e6);
        }
        (None, None) => unreachable!("clap requires one of the two"),
    }
    Ok(())
}
