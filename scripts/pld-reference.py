"""Reference ε for the PLD accountant's tests (learning/src/pld.rs), from an independent
implementation: Google's dp_accounting (PyPI `dp-accounting==0.6.0`), its PLDAccountant under
add/remove adjacency with its defaults (connect the dots, interval 1e-4, pessimistic).

    python3 -m venv /tmp/pld && /tmp/pld/bin/pip install dp-accounting==0.6.0
    /tmp/pld/bin/python scripts/pld-reference.py     # prints the rows pasted into the tests

Each case is a history of (sample rate q, noise multiplier σ, steps) and a δ."""
import time

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant

CASES = [
    # The example: RDP ≈ 10 % above PLD here.
    ([(0.085, 1.95, 180)], 1e-5),
    # Abadi et al. / TF Privacy's MNIST tutorial: batch 256 of 60 000, σ 1.1, 60 epochs.
    ([(256 / 60000, 1.1, 14100)], 1e-5),
    # The demo's local DP: batch 256 of 6 000, 2 epochs a round, ε ≈ 3 over a few rounds.
    ([(256 / 6000, 1.0, 470)], 1e-5),
    # A tiny q with many steps.
    ([(0.001, 0.8, 100000)], 1e-6),
    # q = 1 (a DP evaluation, or full-batch steps).
    ([(1.0, 3.0, 50)], 1e-5),
    # Little noise, few steps.
    ([(0.01, 0.6, 500)], 1e-5),
    # Much noise, few steps (a small ε).
    ([(0.1, 5.0, 10)], 1e-5),
    # A heterogeneous ledger: training at two settings and DP evaluations at q = 1.
    ([(0.05, 1.5, 100), (0.2, 3.0, 20), (1.0, 20.0, 5)], 1e-5),
    # The central run's kind: batch 512 of 60 000, 40 epochs, σ 1.2.
    ([(512 / 60000, 1.2, 4688)], 1e-5),
]


def epsilon(history, delta):
    acc = pld_privacy_accountant.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    for q, sigma, steps in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def rdp_epsilon(history, delta):
    acc = dp_accounting.rdp.RdpAccountant(list(range(2, 257)))
    for q, sigma, steps in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


for history, delta in CASES:
    t = time.time()
    e = epsilon(history, delta)
    secs = time.time() - t
    r = rdp_epsilon(history, delta)
    rows = ", ".join(f"({q!r}, {s!r}, {n})" for q, s, n in history)
    print(f"    (&[{rows}], {delta:e}, {e!r}),  // RDP {r:.4f} (+{(r / e - 1) * 100:.1f} %), {secs:.2f} s")
