//! What secure aggregation costs per round, natively: each member's CPU time per step and the
//! bytes it sends and receives (the real messages, encoded as on the wire), and the server's
//! time to close each step and unmask — for cohorts of 10, 100 and 1 000 members with
//! TinyCNN's vector (12 810 parameters + the weight), 5 % of them dropping after their shares
//! (so the unmask step rebuilds their masking keys too). Each size runs `--repeats` times; the
//! median and the range are printed.
//!
//!   cargo run -p secagg --release --bin secagg-cost -- [--repeats 3] [--sizes 10,100,1000]

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use secagg::bench::{Costs, VECTOR_LEN, round};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let repeats: usize =
        flag("--repeats").map_or(3, |v| v.parse().expect("--repeats: a whole number"));
    let sizes: Vec<u32> = flag("--sizes").map_or(vec![10, 100, 1000], |v| {
        v.split(',')
            .map(|s| s.parse().expect("--sizes: whole numbers, e.g. 10,100"))
            .collect()
    });
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    println!(
        "secure aggregation, one round, {VECTOR_LEN} values per member, 5 % dropping after their shares; median of {repeats} runs [min–max]"
    );
    for n in sizes {
        let k = secagg_default_neighbours(n);
        let start = Instant::now();
        let now = move || start.elapsed().as_secs_f64();
        let runs: Vec<Costs> = (0..repeats).map(|_| round(n, k, &mut rng, &now)).collect();
        let member_ms = |step: usize| {
            let per_run: Vec<f64> = runs
                .iter()
                .map(|c| median(c.client_s[step].clone()) * 1e3)
                .collect();
            (median(per_run.clone()), range(&per_run))
        };
        let server_ms = |step: usize| {
            let per_run: Vec<f64> = runs.iter().map(|c| c.server_s[step] * 1e3).collect();
            (median(per_run.clone()), range(&per_run))
        };
        let bytes = |v: fn(&Costs) -> &Vec<usize>| {
            let per_run: Vec<f64> = runs
                .iter()
                .map(|c| median(v(c)[1..].iter().map(|&b| b as f64).collect()))
                .collect();
            median(per_run)
        };
        let show = |(m, (lo, hi)): (f64, (f64, f64))| format!("{m:.2} ms [{lo:.2}–{hi:.2}]");
        println!("n={n} neighbours={k}");
        println!(
            "  member cpu: keys {} · shares {} · unseal+encode+mask {} · reveal {} · total {}",
            show(member_ms(0)),
            show(member_ms(1)),
            show(member_ms(2)),
            show(member_ms(3)),
            show(member_ms(4))
        );
        println!(
            "  member bytes (median member): sent {:.0} · received {:.0}",
            bytes(|c| &c.sent),
            bytes(|c| &c.received)
        );
        println!(
            "  server: close keys {} · close shares {} · add masked (all) {} · close masked {} · unmask+decode {}",
            show(server_ms(0)),
            show(server_ms(1)),
            show(server_ms(2)),
            show(server_ms(3)),
            show(server_ms(4))
        );
    }
}

/// The run config's default neighbourhood, capped at the cohort (then it is everyone).
fn secagg_default_neighbours(n: u32) -> u32 {
    protocol::admin::SecureAggregationConfig::default()
        .neighbours
        .min(n - 1)
}
