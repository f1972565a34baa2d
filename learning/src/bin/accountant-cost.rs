//! What the accountants cost natively (one thread): one ε evaluation of a ledger (a ledger
//! update) and one σ solve for ε = 3, under PLD and RDP, on the ledgers of
//! `learning::bench::ACCOUNTANT_CASES`. `cargo run -p learning --release --features cli --bin
//! accountant-cost`; the wasm figures: `scripts/bench-wasm.sh`.

use learning::bench::{ACCOUNTANT_CASES, accountant_ms};

fn main() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let now = move || t0.elapsed().as_secs_f64() * 1000.0;
    println!(
        "accountant costs, native, one thread, median [min–max] of 3 (ms: one ε evaluation / one σ solve for ε = 3)"
    );
    for (name, q, sigma, steps) in ACCOUNTANT_CASES {
        let mut cells = Vec::new();
        for pld in [true, false] {
            let runs = (0..3)
                .map(|_| accountant_ms(pld, q, sigma, steps, &now))
                .collect::<Result<Vec<_>, _>>()?;
            let eps = summary(runs.iter().map(|r| r.0).collect());
            let solve = summary(runs.iter().map(|r| r.1).collect());
            cells.push(format!(
                "{} {eps} / {solve}",
                if pld { "PLD" } else { "RDP" }
            ));
        }
        println!("{name:52} {}   {}", cells[0], cells[1]);
    }
    Ok(())
}

/// "median [min–max]" of three timings.
fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!("{:.1} [{:.1}–{:.1}]", ms[1], ms[0], ms[2])
}
