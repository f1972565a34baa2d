#!/usr/bin/env bash
# Load benchmark: N (default 1 000) concurrent lightweight clients (each brings 16 MNIST examples
# of its own and trains one DP-SGD step per round) against a release server; one round is
# aggregated. Prints the server's peak memory and the round's aggregation time.
#
#   bash scripts/bench-load.sh [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${1:-1000}"
PORT="${FL_BENCH_PORT:-3198}"
ulimit -n "$(( CLIENTS * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
source scripts/bench-server.sh
rss() { awk '/VmRSS|VmHWM/ {printf "%s %.1f MiB  ", $1, $2/1024}' "/proc/$SERVER/status"; echo; }
echo "server idle: $(rss)"
CONFIG="{\"name\":\"load\",\"rounds\":1,\"min_clients\":$CLIENTS,\"round_timeout_secs\":600,
  \"batching\":{\"batch_size\":16},\"learning_rate\":0.1,
  \"dp\":{\"max_grad_norm\":1.0,\"noise_multiplier\":1.0,\"delta\":1e-5},\"shards\":null}"
create_run "$CONFIG"
START=$(date +%s.%N)
RUST_LOG=warn "$BIN/sim" --server "ws://127.0.0.1:$PORT/ws" --clients "$CLIENTS" --own-examples 16 &
SIM=$!
# Sample the server while clients connect and the round runs.
PEAK_CLIENTS=0
while kill -0 $SIM 2>/dev/null; do
  N=$(api "http://127.0.0.1:$PORT/api/admin/clients" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' || echo 0)
  (( N > PEAK_CLIENTS )) && PEAK_CLIENTS=$N
  sleep 1
done
wait $SIM
END=$(date +%s.%N)
echo "peak connected clients seen by the server: $PEAK_CLIENTS"
echo "server after the round: $(rss)"
api "http://127.0.0.1:$PORT/api/admin/runs/$RUN" | python3 scripts/run-report.py
python3 -c "print(f'wall time (connect + round): {$END - $START:.1f} s')"
