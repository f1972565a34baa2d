#!/usr/bin/env bash
# Load through gateways: 1 coordinator (store in PostgreSQL) and G gateways (default 4) on this
# machine, N lightweight simulated clients (default 2 500) spread over the gateways — each brings
# 6 MNIST examples of its own and trains one DP-SGD step a round; 2 rounds, every client sampled.
# Prints each round's wall time, the coordinator's CPU time and memory, each gateway's memory per
# client, and what crossed the bus in round 2 (the NATS server's own counters).
#
#   bash scripts/bench-gateways.sh [CLIENTS] [GATEWAYS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CLIENTS="${1:-2500}"
GATEWAYS="${2:-4}"
source scripts/cluster-lib.sh
CLUSTER_SERVER_ARGS="--no-demo"
CLUSTER_GATEWAY_CONNECTIONS=$(( CLIENTS / GATEWAYS + 1000 ))
trap cluster_down EXIT
cluster_up "$GATEWAYS"

TICK=$(getconf CLK_TCK)
api() { curl -fsS -H "Authorization: Bearer $TOKEN" "$@"; }
cpu() { awk -v t="$TICK" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
mib() { awk -v x="$1" 'BEGIN { printf "%.1f", x / 1024 }'; }
varz() { curl -fsS "$NATS_MONITOR/varz" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["in_bytes"], v["out_bytes"], v["in_msgs"], v["out_msgs"])'; }
completed() { api "$COORD_URL/api/admin/runs" | python3 -c 'import json,sys; print(max([r["completed_rounds"] for r in json.load(sys.stdin)] or [0]))'; }

sleep 2
COORD_IDLE=$(kib "$COORD_PID" VmRSS)
declare -A GW_IDLE
for p in $GATEWAY_PIDS; do GW_IDLE[$p]=$(kib "$p" VmRSS); done
CONFIG="{\"name\":\"gateways-load\",\"rounds\":2,\"min_clients\":$CLIENTS,\"round_timeout_secs\":900,
  \"batching\":{\"batch_size\":6},\"learning_rate\":0.1,
  \"dp\":{\"max_grad_norm\":1.0,\"noise_multiplier\":1.0,\"delta\":1e-5},\"shards\":null}"
RUN=$(api -X POST "$COORD_URL/api/admin/runs" -d "$CONFIG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
api -X POST "$COORD_URL/api/admin/runs/$RUN/start" >/dev/null
CPU0=$(cpu "$COORD_PID")
START=$(date +%s.%N)
RUST_LOG=warn "$CLUSTER_BIN/sim" --server "$GATEWAY_WS" --clients "$CLIENTS" --own-examples 6 \
  > "$CLUSTER_DIR/sim.log" 2>&1 &
SIM=$!
ROUND1=""
while kill -0 $SIM 2>/dev/null; do
  if [ -z "$ROUND1" ] && [ "$(completed)" -ge 1 ]; then
    ROUND1=$(varz); CPU1=$(cpu "$COORD_PID")
  fi
  sleep 1
done
wait $SIM || { echo "the simulated clients failed:"; tail -5 "$CLUSTER_DIR/sim.log"; exit 1; }
END=$(date +%s.%N)
sleep 1
ROUND2=$(varz); CPU2=$(cpu "$COORD_PID")

echo "== $CLIENTS clients, $GATEWAYS gateways, 1 coordinator (store in PostgreSQL), one NATS server"
api "$COORD_URL/api/admin/runs/$RUN" | python3 scripts/run-report.py
python3 -c "print(f'wall time (connect + 2 rounds): {$END - $START:.1f} s')"
echo "coordinator: RSS idle $(mib "$COORD_IDLE") MiB, peak (VmHWM) $(mib "$(kib "$COORD_PID" VmHWM)") MiB, now $(mib "$(kib "$COORD_PID" VmRSS)") MiB"
echo "coordinator CPU: $(awk -v a="$CPU0" -v b="$CPU1" 'BEGIN { printf "%.2f", b - a }') s for the joins and round 1, $(awk -v a="$CPU1" -v b="$CPU2" 'BEGIN { printf "%.2f", b - a }') s for round 2"
for p in $GATEWAY_PIDS; do
  peak=$(kib "$p" VmHWM)
  echo "gateway pid $p: RSS idle $(mib "${GW_IDLE[$p]}") MiB, peak $(mib "$peak") MiB, $(awk -v i="${GW_IDLE[$p]}" -v h="$peak" -v n="$(( CLIENTS / GATEWAYS ))" 'BEGIN { printf "%.1f", (h - i) / n }') KiB per client"
done
read -r in1 out1 msgs_in1 msgs_out1 <<< "$ROUND1"
read -r in2 out2 msgs_in2 msgs_out2 <<< "$ROUND2"
echo "bus in round 2: $(( (in2 - in1) / 1024 )) KiB in / $(( (out2 - out1) / 1024 )) KiB out, $(( msgs_in2 - msgs_in1 )) / $(( msgs_out2 - msgs_out1 )) messages"
echo "bus for the joins and round 1: $(( in1 / 1024 )) KiB in / $(( out1 / 1024 )) KiB out"
