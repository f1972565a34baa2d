#!/usr/bin/env bash
# Distributed DP-SGD over secure aggregation: 10 simulated clients × 6 000 MNIST records, every
# round one DP-SGD step over the union of the sampled clients' data (expected batch 205 each,
# ≈ 2 050 in all), the noise split among them, ε ≤ 3 at δ = 1e-5 under the Skellam accountant,
# the server's SGD at lr 6 with a cosine schedule. REPEATS runs of each setting, one after the
# other, each on a fresh server; logs in benchmarks/distributed-*.log.
#
#   bash scripts/bench-distributed.sh [REPEATS] [ROUNDS] [SETTINGS…]
#   SETTINGS: iid-t10 (default), iid-t7, dirichlet-t10; FL_LR sets the server's learning rate
#   (default 6)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${1:-3}"
ROUNDS="${2:-880}"
LR="${FL_LR:-6.0}"
shift 2 || true
SETTINGS=("${@:-iid-t10}")
source scripts/bench-bins.sh
config() {
  local t="$1" shards="$2" batching="${3:-{\"batch_size\":205\}}"
  echo "{\"name\":\"distributed-$t\",\"rounds\":$ROUNDS,\"min_clients\":10,\"batching\":$batching,\"learning_rate\":$LR,\"secure_aggregation\":{},\"dp\":{\"max_grad_norm\":1.0,\"target_epsilon\":3.0,\"delta\":1e-5,\"distributed\":{\"contributors\":$t,\"evaluate_every\":40,\"schedule\":\"cosine\"}},\"shards\":$shards}"
}
IID='{"scheme":{"kind":"iid"},"num_shards":10,"seed":42}'
DIRICHLET='{"scheme":{"kind":"dirichlet","alpha":0.5},"num_shards":10,"seed":42}'
for setting in "${SETTINGS[@]}"; do
  case "$setting" in
    iid-t10) cfg=$(config 10 "$IID") ;;
    iid-t7) cfg=$(config 7 "$IID") ;;
    # Shards of different sizes: the same q for every client (2 050 of 60 000, as the IID
    # runs' batch of 205 of 6 000), so that no small shard's larger q raises everyone's noise.
    dirichlet-t10) cfg=$(config 10 "$DIRICHLET" '{"sample_rate":0.034166666666666665}') ;;
    *) echo "unknown setting $setting: expected iid-t10, iid-t7 or dirichlet-t10" >&2; exit 2 ;;
  esac
  for i in $(seq "$REPEATS"); do
    echo "== $setting, run $i"
    FL_BENCH_PORT=$((3500 + i)) bash scripts/bench-federated.sh 10 "$cfg" 2>&1 | grep -v " WARN \| INFO "
  done
done
