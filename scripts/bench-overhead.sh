#!/usr/bin/env bash
# A distributed-DP round's fixed cost, with and without reusing secure-aggregation keys across the
# rounds of the stable cohort: 10 simulated clients at batch 1 each (next to nothing to compute),
# ROUNDS rounds, no evaluation but the last; REPEATS runs of each setting, alternating, each on a
# fresh server. The report's "round time" line is the figure.
#
#   bash scripts/bench-overhead.sh [REPEATS] [ROUNDS]      # log: tee it to benchmarks/
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${1:-3}"
ROUNDS="${2:-200}"
source scripts/bench-bins.sh
config() {
  echo "{\"name\":\"overhead-reuse-$1\",\"rounds\":$ROUNDS,\"min_clients\":10,\"batching\":{\"batch_size\":1},\"learning_rate\":6.0,\"secure_aggregation\":{\"reuse_keys\":$1},\"dp\":{\"max_grad_norm\":1.0,\"target_epsilon\":3.0,\"delta\":1e-5,\"distributed\":{\"contributors\":10,\"evaluate_every\":1000}}}"
}
for i in $(seq "$REPEATS"); do
  for reuse in true false; do
    echo "== reuse_keys $reuse, run $i"
    FL_BENCH_PORT=$((3600 + i)) bash scripts/bench-federated.sh 10 "$(config $reuse)" 2>&1 | grep -v " WARN \| INFO "
  done
done
