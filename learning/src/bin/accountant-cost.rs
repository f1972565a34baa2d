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
    thousand_clients(&now)?;
    Ok(())
}

/// What a plan and a round's record cost the server for 1 000 clients of the demo's kind
/// (batch 512 of ≈ 6 000, 12 steps a round, σ 1.83, after 10 rounds): budget checks (RDP
/// first, as `PrivacyLedger::allows`), and every client's tight ε — with one shard size (IID:
/// one ledger for all) and with a shard size each (Dirichlet: 1 000 ledgers; 20 timed, scaled).
fn thousand_clients(now: &dyn Fn() -> f64) -> anyhow::Result<()> {
    use learning::accountant::{Mechanism, PrivacyLedger};
    let ledger = |n: f64| PrivacyLedger::of(512.0 / n, 1.83, 120);
    let step = |n: f64| Mechanism::Gaussian {
        sample_rate: 512.0 / n,
        noise_multiplier: 1.83,
    };
    let iid: Vec<PrivacyLedger> = (0..1000)
        .map(|_| ledger(6000.0))
        .collect::<Result<_, _>>()?;
    let t = now();
    let allowed = iid
        .iter()
        .filter(|l| l.allows(step(6000.0), 12, 1e-5, 3.0).unwrap_or(false))
        .count();
    let checks = now() - t;
    learning::accountant::clear_memos();
    let t = now();
    for l in &iid {
        l.epsilon(1e-5)?;
    }
    let same = now() - t;
    let t = now();
    for i in 0..20 {
        ledger(5000.0 + 50.0 * i as f64)?.epsilon(1e-5)?;
    }
    let distinct = (now() - t) * 50.0;
    println!(
        "1 000 clients: budget checks {checks:.0} ms ({allowed} allowed); every tight ε: {same:.0} ms with one ledger for all, ≈ {:.1} s with 1 000 distinct ledgers",
        distinct / 1000.0
    );
    Ok(())
}

/// "median [min–max]" of three timings.
fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!("{:.1} [{:.1}–{:.1}]", ms[1], ms[0], ms[2])
}
