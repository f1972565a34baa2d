//! The `dp-budget` command as a user runs it: answer on the last line, clear errors, non-zero
//! exit on bad arguments.

use std::process::Command;

fn dp_budget(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dp-budget"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn last_value(stdout: &str, key: &str) -> f64 {
    let last = stdout.lines().last().expect("output");
    last.strip_prefix(&format!("{key}="))
        .unwrap_or_else(|| panic!("last line {last:?}"))
        .parse()
        .expect("number")
}

#[test]
fn epsilon_for_the_classic_mnist_setting() {
    // Batch 256 of 60 000, σ 1.1, 60 epochs: Opacus's RDP analysis gives 2.6007 with these orders.
    let (ok, out, _) = dp_budget(&[
        "--accountant",
        "rdp",
        "--sample-rate",
        "0.0042666666666666667",
        "--noise-multiplier",
        "1.1",
        "--steps",
        "14100",
        "--delta",
        "1e-5",
    ]);
    assert!(ok);
    assert!(
        (last_value(&out, "epsilon") - 2.600718).abs() < 1e-5,
        "{out}"
    );
}

#[test]
fn noise_multiplier_for_a_target_meets_it() {
    let (ok, out, _) = dp_budget(&[
        "--sample-rate",
        "0.01",
        "--target-epsilon",
        "3",
        "--steps",
        "2000",
        "--delta",
        "1e-5",
    ]);
    assert!(ok);
    let sigma = last_value(&out, "noise_multiplier");
    let eps = learning::accountant::epsilon(0.01, sigma, 2000, 1e-5).expect("valid");
    assert!(eps <= 3.0 && eps > 2.99, "σ {sigma} gives ε {eps}");
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    for (args, expected) in [
        (
            vec![
                "--sample-rate",
                "0",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
            ],
            "sample_rate is 0: expected a number above 0 and at most 1",
        ),
        (
            vec![
                "--sample-rate",
                "1.5",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
            ],
            "sample_rate is 1.5",
        ),
        (
            vec![
                "--sample-rate",
                "0.1",
                "--noise-multiplier",
                "-2",
                "--steps",
                "10",
            ],
            "noise_multiplier is -2: expected a number above 0",
        ),
        (
            vec![
                "--sample-rate",
                "0.1",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
                "--delta",
                "1",
            ],
            "delta is 1: expected a number above 0 and below 1",
        ),
        (
            vec!["--sample-rate", "0.1", "--steps", "10"],
            "--noise-multiplier",
        ),
    ] {
        let (ok, _, err) = dp_budget(&args);
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(expected), "{args:?}: stderr {err:?}");
    }
}

#[test]
fn the_skellam_mechanism_with_its_flags() {
    let flags = |mode: &[&str]| -> Vec<String> {
        let mut v: Vec<&str> = vec![
            "--mechanism",
            "skellam",
            "--sample-rate",
            "1",
            "--steps",
            "10",
            "--delta",
            "1e-5",
            "--scale",
            "100",
            "--dim",
            "100",
            "--beta",
            "0",
        ];
        v.extend_from_slice(mode);
        v.into_iter().map(String::from).collect()
    };
    let run = |args: Vec<String>| dp_budget(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, out, err) = run(flags(&["--noise-multiplier", "2"]));
    assert!(ok, "{err}");
    // q = 1: the plain Skellam bound, computed here in the paper's units (μ = v/2).
    let (z, s, d, steps) = (2.0_f64, 100.0_f64, 100.0_f64, 10.0);
    let l2 = s + d.sqrt(); // β = 0: S + √DIM
    let l1 = l2 * d.sqrt().min(l2);
    let mu = (z * s).powi(2) / 2.0;
    let want = (2..=256)
        .map(|a| {
            let a = a as f64;
            let rdp = steps
                * (a * l2 * l2 / (4.0 * mu)
                    + (((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu))
                        .min(3.0 * l1 / (4.0 * mu)));
            rdp + ((a - 1.0) / a).ln() - (1e-5f64.ln() + a.ln()) / (a - 1.0)
        })
        .fold(f64::INFINITY, f64::min);
    assert!(
        (last_value(&out, "epsilon") - want).abs() < 1e-5,
        "{out} vs {want}"
    );
    // The inverse meets its target.
    let (ok, out, _) = run(flags(&["--target-epsilon", "3"]));
    assert!(ok);
    let z = last_value(&out, "noise_multiplier");
    let (_, check, _) = run(flags(&["--noise-multiplier", &z.to_string()]));
    assert!(last_value(&check, "epsilon") <= 3.0, "{check}");
    // Missing Skellam flags, or Skellam flags for the Gaussian, are named.
    let (ok, _, err) = dp_budget(&[
        "--mechanism",
        "skellam",
        "--sample-rate",
        "1",
        "--noise-multiplier",
        "2",
        "--steps",
        "10",
    ]);
    assert!(!ok && err.contains("needs --scale"), "{err}");
    let (ok, _, err) = dp_budget(&[
        "--sample-rate",
        "1",
        "--noise-multiplier",
        "2",
        "--steps",
        "10",
        "--scale",
        "5",
    ]);
    assert!(!ok && err.contains("for --mechanism skellam"), "{err}");
}

#[test]
fn the_pld_accountant_is_tight_and_solves_sigma_for_a_target() {
    // The classic MNIST setting: dp_accounting's PLD gives 2.385211 (scripts/pld-reference.py),
    // RDP 2.600718 (the test above): the same noise buys a 9 % smaller ε.
    let classic = [
        "--accountant",
        "pld",
        "--sample-rate",
        "0.0042666666666666667",
        "--steps",
        "14100",
        "--delta",
        "1e-5",
    ];
    let (ok, out, err) = dp_budget(&[&classic[..], &["--noise-multiplier", "1.1"]].concat());
    assert!(ok, "{err}");
    let eps = last_value(&out, "epsilon");
    assert!((eps - 2.385211).abs() < 1e-4, "{out}");
    // σ for ε = 3 under PLD: below RDP's σ for the same target, and it meets the target.
    let (ok, out, err) = dp_budget(&[&classic[..], &["--target-epsilon", "3"]].concat());
    assert!(ok, "{err}");
    let sigma = last_value(&out, "noise_multiplier");
    let eps = learning::pld::epsilon(&[(256.0 / 60000.0, sigma, 14100)], 1e-5).unwrap();
    assert!(eps <= 3.0 && eps > 2.99, "σ {sigma}: ε {eps}");
    let rdp =
        learning::accountant::rdp_noise_multiplier_for(3.0, 256.0 / 60000.0, 14100, 1e-5).unwrap();
    assert!(sigma < rdp * 0.97, "PLD σ {sigma} vs RDP σ {rdp}");
    // The Skellam mechanism has no PLD accountant: said, not silently RDP.
    let (ok, _, err) = dp_budget(&[
        "--accountant",
        "pld",
        "--mechanism",
        "skellam",
        "--sample-rate",
        "0.1",
        "--noise-multiplier",
        "2",
        "--steps",
        "10",
        "--scale",
        "1000",
        "--dim",
        "100",
        "--beta",
        "0",
    ]);
    assert!(!ok);
    assert!(err.contains("RDP accountant only"), "{err}");
}
