//! What each aggregation rule costs the coordinator for one round: N TinyCNN-sized updates
//! taken in, then the aggregate formed. Median of 5 repetitions, one thread.
//!
//! `cargo run -p learning --release --bin aggregate-cost -- --updates 10,50,200`

use std::time::Instant;

use clap::Parser;
use learning::aggregate::{self, AggregatorConfig};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

#[derive(Parser, Debug)]
struct Args {
    /// Updates per round to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    updates: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let params = learning::TinyCnnConfig::new().layout().num_params();
    let rules = [
        AggregatorConfig::FedAvg,
        AggregatorConfig::NormBound { bound: None },
        AggregatorConfig::Median,
        AggregatorConfig::TrimmedMean { trim: 0.2 },
        AggregatorConfig::MultiKrum {
            byzantine: 3,
            keep: None,
        },
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    println!(
        "{params} parameters per update; ms per round (take in every update + aggregate), median of 5"
    );
    println!(
        "{:>8} {}",
        "updates",
        rules.map(|r| format!("{:>24}", r.name())).join("")
    );
    for &n in &args.updates {
        let updates: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..params).map(|_| rng.random::<f32>() - 0.5).collect())
            .collect();
        let mut row = format!("{n:>8}");
        for rule in &rules {
            let mut times: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let mut agg = aggregate::build(rule, params);
                    for u in &updates {
                        agg.add(u, 600).expect("valid update");
                    }
                    std::hint::black_box(agg.aggregate().expect("non-empty"));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            row += &format!("{:>24.1}", times[2]);
        }
        println!("{row}");
    }
    Ok(())
}
