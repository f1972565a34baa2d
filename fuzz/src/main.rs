//! `cargo run -p fuzz --release -- --inputs 10000000`: a fuzzing campaign over every decoder a
//! peer reaches; exits non-zero if any input panicked (the first one is printed, escaped).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Mutation-fuzz every decoder a peer reaches")]
struct Args {
    /// Inputs in all, shared evenly by the targets.
    #[arg(long, default_value_t = 1_000_000)]
    inputs: u64,
    /// RNG seed (a campaign is reproducible).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let targets = fuzz::targets();
    let per_target = args.inputs.div_ceil(targets.len() as u64);
    fuzz::quiet_panics();
    let mut total = (0, 0, 0.0);
    for (i, t) in targets.iter().enumerate() {
        let r = fuzz::fuzz(t, per_target, args.seed.wrapping_add(i as u64));
        println!(
            "{:<16} {:>10} inputs {:>6} panics {:>8.1} s {:>10.0} inputs/s",
            r.name,
            r.inputs,
            r.panics,
            r.seconds,
            r.inputs as f64 / r.seconds.max(1e-9)
        );
        if let Some(p) = &r.first_panic {
            println!("  first panicking input: {p}");
        }
        total = (total.0 + r.inputs, total.1 + r.panics, total.2 + r.seconds);
    }
    println!(
        "fuzz: {} inputs, {} panics, {:.1} s (seed {})",
        total.0, total.1, total.2, args.seed
    );
    if total.1 == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
