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
TOKEN="bench-token-$(date +%s)-0123456789"
DIR="$(mktemp -d)"
cargo build --release -q -p server -p client-wasm --bins
./target/release/server --bind "127.0.0.1:$PORT" --data-dir "$DIR" --admin-token "$TOKEN" --no-demo \
  > "$DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/api/health" >/dev/null && break; sleep 0.2; done
api() { curl -fsS -H "Authorization: Bearer $TOKEN" "$@"; }
RUN=$(api -X POST "http://127.0.0.1:$PORT/api/admin/runs" -d "$CONFIG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
api -X POST "http://127.0.0.1:$PORT/api/admin/runs/$RUN/start" >/dev/null
echo "config: $CONFIG"
START=$(date +%s.%N)
RUST_LOG=warn ./target/release/sim --server "ws://127.0.0.1:$PORT/ws" --clients "$CLIENTS"
END=$(date +%s.%N)
api "http://127.0.0.1:$PORT/api/admin/runs/$RUN" | python3 scripts/run-report.py
python3 -c "print(f'wall time: {$END - $START:.1f} s')"
