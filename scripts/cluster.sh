#!/usr/bin/env bash
# The deployment on several machines, started on this one for development: nats-server, a
# throw-away PostgreSQL cluster, the coordinator (store in PostgreSQL, dashboard, admin API, the
# demo run) and N gateways (default 2) that clients join. Ctrl-C stops all of it.
#
#   bash scripts/cluster.sh [GATEWAYS]
#   cargo run -p client-wasm --release --bin sim -- --server <the gateway URLs it prints> --clients 10
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/cluster-lib.sh
trap cluster_down EXIT
cluster_up "${1:-2}"
echo "coordinator:  $COORD_URL/admin  (admin token: $TOKEN; store in PostgreSQL; logs in $CLUSTER_DIR)"
echo "gateways:     $GATEWAY_WS"
echo "clients:      $CLUSTER_BIN/sim --server $GATEWAY_WS --clients 10"
echo "NATS monitor: $NATS_MONITOR/varz"
echo "Ctrl-C stops everything."
wait "$COORD_PID"
