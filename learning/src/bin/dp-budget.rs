//! Privacy budget calculator for DP-SGD: the Poisson-subsampled Gaussian (default), or the
//! Poisson-subsampled Skellam mechanism of distributed DP-SGD (`learning::skellam`, units where
//! the clipping norm is 1). The Gaussian has two accountants: the tight PLD one
//! (`learning::pld`, the default, and what the ledgers count) and RDP (`learning::accountant`).
//!
//! ```text
//! dp-budget --sample-rate 0.004 --noise-multiplier 1.1 --steps 14100 --delta 1e-5   # → epsilon=…
//! dp-budget --sample-rate 0.004 --target-epsilon 3 --steps 14100 --delta 1e-5       # → noise_multiplier=…
//! dp-budget --accountant rdp --sample-rate 0.004 --noise-multiplier 1.1 --steps 14100  # → epsilon=…
//! dp-budget --mechanism skellam --sample-rate Q --noise-multiplier Z --steps N --delta D \
//!   --scale S --dim DIM --beta B                                                    # → epsilon=…
//! ```
//! The answer is always the last line, so scripts can `tail -n1`.

use clap::{ArgGroup, Parser, ValueEnum};
use learning::skellam::{self, SkellamStep};
use learning::{accountant, pld};

/// Which mechanism each step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mechanism {
    /// DP-SGD with Gaussian noise (one client, or local DP).
    Gaussian,
    /// Distributed DP-SGD: scaled, rounded gradients with Skellam noise, summed securely.
    Skellam,
}

/// How the Gaussian mechanism's steps are composed into (ε, δ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Accountant {
    /// Rényi DP at integer orders 2..256 (never under-reports; 8–27 % above the tight value).
    Rdp,
    /// Privacy loss distributions, connect-the-dots (tight, pessimistic).
    Pld,
}

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
    #[arg(long, value_enum, default_value_t = Mechanism::Gaussian)]
    mechanism: Mechanism,
    /// The Gaussian mechanism's accountant (default: pld); the Skellam mechanism has RDP only.
    #[arg(long, value_enum)]
    accountant: Option<Accountant>,
    /// Skellam: integer units per clipping norm (S), > 0.
    #[arg(long)]
    scale: Option<f64>,
    /// Skellam: coordinates of the gradient (DIM), ≥ 1.
    #[arg(long)]
    dim: Option<u64>,
    /// Skellam: conditional-rounding parameter β in [0, 1); 0: no conditioning (Δ₂ = S + √DIM).
    #[arg(long)]
    beta: Option<f64>,
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

fn run(args: Args) -> Result<(), String> {
    match args.mechanism {
        Mechanism::Gaussian => {
            if args.scale.is_some() || args.dim.is_some() || args.beta.is_some() {
                return Err("--scale, --dim and --beta are for --mechanism skellam".into());
            }
            gaussian(args).map_err(|e| e.to_string())
        }
        Mechanism::Skellam if args.accountant == Some(Accountant::Pld) => {
            Err("--accountant pld is for the Gaussian mechanism; the Skellam mechanism has the RDP accountant only".into())
        }
        Mechanism::Skellam => run_skellam(args),
    }
}

fn run_skellam(args: Args) -> Result<(), String> {
    let (Some(scale), Some(dim), Some(beta)) = (args.scale, args.dim, args.beta) else {
        return Err(
            "--mechanism skellam needs --scale S (integer units per clipping norm), --dim DIM (coordinates) and --beta B (0 for no conditional rounding)".into(),
        );
    };
    let (q, steps, delta) = (args.sample_rate, args.steps, args.delta);
    let step = |z: f64| SkellamStep {
        sample_rate: q,
        noise_multiplier: z,
        scale,
        dim,
        beta,
    };
    let header = format!(
        "mechanism=skellam sample_rate={q} steps={steps} delta={delta} scale={scale} dim={dim} beta={beta}"
    );
    match (args.noise_multiplier, args.target_epsilon) {
        (Some(z), _) => {
            let eps = skellam::epsilon(&step(z), steps, delta).map_err(|e| e.to_string())?;
            println!("{header} noise_multiplier={z}");
            println!("epsilon={eps:.6}");
        }
        (None, Some(target)) => {
            let z = skellam::noise_multiplier_for(target, &step(1.0), steps, delta)
                .map_err(|e| e.to_string())?;
            let eps = skellam::epsilon(&step(z), steps, delta).map_err(|e| e.to_string())?;
            println!("{header} target_epsilon={target} (epsilon at this noise: {eps:.6})");
            println!("noise_multiplier={:.6}", (z * 1e6).ceil() / 1e6);
        }
        (None, None) => unreachable!("clap requires one of the two"),
    }
    Ok(())
}

fn gaussian(args: Args) -> Result<(), accountant::AccountantError> {
    let Args {
        sample_rate: q,
        steps,
        delta,
        ..
    } = args;
    let pld = args.accountant != Some(Accountant::Rdp);
    let epsilon = |sigma| match pld {
        true => pld::epsilon(&[(q, sigma, steps)], delta),
        false => accountant::rdp_epsilon(q, sigma, steps, delta),
    };
    match (args.noise_multiplier, args.target_epsilon) {
        (Some(sigma), _) => {
            let eps = epsilon(sigma)?;
            println!("sample_rate={q} noise_multiplier={sigma} steps={steps} delta={delta}");
            println!("epsilon={eps:.6}");
        }
        (None, Some(target)) => {
            let sigma = match pld {
                true => pld::noise_multiplier_for(target, q, steps, delta)?,
                false => accountant::rdp_noise_multiplier_for(target, q, steps, delta)?,
            };
            let eps = epsilon(sigma)?;
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
