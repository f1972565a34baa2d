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
