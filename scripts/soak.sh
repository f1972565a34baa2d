#!/usr/bin/env bash
# Soak: 100 simulated clients, the server killed with SIGKILL every 30 s for 10 minutes and
# restarted on the same store; fails if a committed round or any ledger spending is lost.
#
#   bash scripts/soak.sh [--minutes 10] [--kill-every 30] [--clients 100]
#   bash scripts/soak.sh > benchmarks/soak-1.log
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FL_BENCH_BIN:-}" ]; then
  BIN="$FL_BENCH_BIN"
else
  cargo build --release -q -p server -p client-wasm --bins
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
exec python3 scripts/soak.py "$BIN" "$@"
