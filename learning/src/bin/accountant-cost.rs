//! What the accountants cost natively (one thread): one ε evaluation of a ledger (a ledger
//! update) and one σ solve for ε = 3, under PLD and RDP, on the ledgers of
//! `learning::bench::ACCOUNTANT_CASES`. `cargo run -p learning --release --features cli --bin
//! accountant-cost`; the wasm figures: `scripts/bench-wasm.sh`.

use learning::bench::{ACCOUNTANT_CASES, accountant_ms};

fn main() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let now = move || t0.elapsed().as_secs_f64() * 1000.0;
    println!("accountant costs, native, one thread (ms: one ε evaluation / one σ solve for ε = 3)");
    for (name, q, sigma, steps) in ACCOUNTANT_CASES {
        let (pld_eps, pld_solve) = accountant_ms(true, q, sigma, steps, &now)?;
        let (rdp_eps, rdp_solve) = accountant_ms(false, q, sigma, steps, &now)?;
        println!(
            "{name:52} PLD {pld_eps:8.1} / {pld_solve:8.1}   RDP {rdp_eps:6.2} / {rdp_solve:7.2}"
        );
    }
    Ok(())
}
