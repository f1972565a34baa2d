#!/usr/bin/env bash
# What the tight (PLD) accountant buys: the demo config (10 IID clients × 6 000, batch 512, 15
# rounds, ε ≤ 3 at δ = 1e-5) with σ solved under the tight accountant (the default) against the
# same config at RDP's σ for the same target, REPEATS runs of each, alternating, each on a fresh
# server. Logs: tee to benchmarks/.
#
#   bash scripts/bench-accountant.sh [REPEATS]
# RDP's σ for the demo: dp-budget --accountant rdp --sample-rate 0.085333 --target-epsilon 3
#   --steps 180 --delta 1e-5 (15 rounds × 12 steps) → 1.963135.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${1:-3}"
RDP_SIGMA="${RDP_SIGMA:-1.963135}"
source scripts/bench-bins.sh
TIGHT='{"name":"demo-tight","min_clients":10}'
RDP="{\"name\":\"demo-rdp-sigma\",\"min_clients\":10,\"dp\":{\"max_grad_norm\":1.0,\"noise_multiplier\":$RDP_SIGMA,\"target_epsilon\":3.0,\"delta\":1e-5}}"
for i in $(seq "$REPEATS"); do
  for cfg in "$TIGHT" "$RDP"; do
    echo "== run $i: $cfg"
    FL_BENCH_PORT=$((3700 + i)) bash scripts/bench-federated.sh 10 "$cfg" 2>&1 | grep -v " WARN \| INFO "
  done
done
