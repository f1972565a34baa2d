#!/usr/bin/env bash
# Federated DP benchmark: a release server + N simulated clients on this machine, one run with
# the given config; prints every round (server-evaluated test accuracy on all 10 000 images,
# largest client ε) and the wall time.
#
#   bash scripts/bench-federated.sh [CLIENTS] [RUN_CONFIG_JSON]
#   bash scripts/bench-federated.sh 10 '{"rounds":15,"min_clients":10,"shards":{"scheme":{"kind":"dirichlet","alpha":0.5},"num_shards":10,"seed":42}}'
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${1:-10}"
CONFIG="${2:-{\"min_clients\":10\}}"
PORT="${FL_BENCH_PORT:-3199}"
source scripts/bench-server.sh
create_run "$CONFIG"
echo "config: $CONFIG"
START=$(date +%s.%N)
RUST_LOG=warn "$BIN/sim" --server "ws://127.0.0.1:$PORT/ws" --clients "$CLIENTS"
END=$(date +%s.%N)
api "http://127.0.0.1:$PORT/api/admin/runs/$RUN" | python3 scripts/run-report.py
python3 -c "print(f'wall time: {$END - $START:.1f} s')"
