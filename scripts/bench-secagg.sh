#!/usr/bin/env bash
# Secure aggregation's effect on accuracy and time: the 10-client demo config (local DP-SGD,
# ε ≤ 3) run REPEATS times with it on and off, alternating, each on a fresh server (logs in
# benchmarks/). Per-round client CPU, bytes and server unmask time: the `secagg-cost` binary
# (native) and e2e/bench-secagg.mjs (in Chromium).
#
#   bash scripts/bench-secagg.sh [REPEATS]          (default 3; ≈ 5 min per run on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${1:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p server -p client-wasm --bins
export FL_BENCH_BIN="$CARGO_TARGET_DIR/release"
for i in $(seq "$REPEATS"); do
  for secure in off on; do
    if [ "$secure" = on ]; then
      config='{"min_clients":10,"secure_aggregation":{}}'
    else
      config='{"min_clients":10}'
    fi
    echo "== run $i, secure aggregation $secure"
    FL_BENCH_PORT=$((3300 + i)) bash scripts/bench-federated.sh 10 "$config"
  done
done
