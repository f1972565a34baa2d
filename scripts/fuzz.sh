#!/usr/bin/env bash
# The long fuzzing campaign (BENCHMARKS.md): every decoder a peer reaches, mutated inputs from a
# fixed seed, 0 panics expected. CI runs a short one (fuzz/tests/short_campaign.rs).
#   bash scripts/fuzz.sh [INPUTS] [SEED]      (default 10 000 000 inputs, seed 1)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
inputs=${1:-10000000}
seed=${2:-1}
mkdir -p benchmarks
log="benchmarks/fuzz-seed$seed.log"
# The test profile (dependencies optimised, our crates at opt-level 1): no separate release build.
cargo run -q -p fuzz -- --inputs "$inputs" --seed "$seed" | tee "$log"
echo "log: $log"
