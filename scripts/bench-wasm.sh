#!/usr/bin/env bash
# Builds the client for wasm32 (SIMD128, release), binds it for node and measures training
# throughput there. Needs wasm-bindgen-cli at the version in Cargo.lock (bash .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cargo build --release --target wasm32-unknown-unknown -p client-wasm --no-default-features --features browser
out="$target_dir/wasm-bench"
wasm-bindgen --target nodejs --out-dir "$out" "$target_dir/wasm32-unknown-unknown/release/client_wasm.wasm"
printf 'client_wasm_bg.wasm: %s bytes, %s gzip\n' "$(stat -c %s "$out/client_wasm_bg.wasm")" "$(gzip -9c "$out/client_wasm_bg.wasm" | wc -c)"
node client-wasm/bench/throughput.mjs "$out"
