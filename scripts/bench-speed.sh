#!/usr/bin/env bash
# Training speed, everything in one run on this machine (BENCHMARKS.md, "Training speed"):
#   * this project's DP-SGD and plain steps natively on 1 thread and on N (the cores), batch 64
#     and 512 (`throughput`), and a client's distributed-DP step (one thread);
#   * the same steps in wasm in node (`bench-wasm.sh`'s build) and in one Chromium worker;
#   * real training rounds of one tab on 1 worker and on N, 3 runs interleaved, nothing watching
#     the page meanwhile; then watched rounds, for the page's frame rate (`e2e/bench-speed.mjs`,
#     against the trunk build in dist/); then the same rounds paired in one worker: 1 worker, N
#     split before each step, N as a tab trains, in turn (`e2e/bench-paired.mjs`);
#   * PyTorch + Opacus, 1 thread and N, same model and batches (`benchmarks/opacus_step.py`, in a
#     virtualenv made here: torch and opacus at pinned versions from PyPI, ≈ 5 GB the first time);
# then one table, with each figure's share of the dense step's wasm SIMD ceiling (≈ 10 000
# samples/s per core: TinyCNN's 3.78 MFLOP per training sample, what Opacus computes, at ≈ 40
# GFLOP/s of wasm SIMD128 per core on this CPU). This project's step does at most 1.75 MFLOP
# (the pool's routes, only the outputs that reach the features), so it can pass 100 %.
#
#   bash scripts/bench-speed.sh                 # the log goes to benchmarks/speed-<date>.log
# Needs what `bash scripts/setup.sh --browser` installs. ≈ 15 min, most of it builds the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
mkdir -p "$target_dir"   # a fresh clone has no target/ yet: the build log goes there
cores=$(nproc)
log="benchmarks/speed-$(date +%Y-%m-%d-%H%M).log"
venv="${OPACUS_VENV:-$HOME/.cache/fl-dp/opacus-venv}"
exec > >(tee "$log") 2>&1
echo "# bash scripts/bench-speed.sh at $(git rev-parse --short HEAD), $(date -u +%FT%TZ), $cores cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# --- Builds (before anything is timed; their output goes to $build_log, not the log).
build_log="$target_dir/bench-speed-build.log"
{
  cargo build --release -p learning -p server --bin throughput --bin server
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.15.0 opacus==1.6.0   # nothing to do when they are there
  cargo build --release --target wasm32-unknown-unknown -p client-wasm --no-default-features --features browser --lib
  wasm-bindgen --target nodejs --out-dir "$target_dir/wasm-bench" "$target_dir/wasm32-unknown-unknown/release/client_wasm.wasm"
  trunk build --release   # never a stale dist/
} > "$build_log" 2>&1 || { tail -30 "$build_log"; exit 1; }
wasm_out="$target_dir/wasm-bench"

declare -A v
# `key value` lines of a command's output into v[prefix-key].
take() { # prefix, then lines "name  N samples/s" on stdin
  local prefix=$1 line
  while IFS= read -r line; do
    echo "$line"
    case "$line" in
      "plain step"*) v[$prefix-plain]=$(awk '{print $3}' <<<"$line") ;;
      "DP-SGD step"*) v[$prefix-dp]=$(awk '{print $3}' <<<"$line") ;;
      "distributed"*) v[$prefix-distributed]=$(awk '{print $2}' <<<"$line") ;;
    esac
  done
}

for batch in 64 512; do
  iters=$(( batch == 64 ? 60 : 10 ))
  for t in 1 "$cores"; do
    gemm=(); [ "$batch-$t" = 64-1 ] && gemm=(--gemm)   # the step's products alone, once
    take "native-$batch-$t" < <("$target_dir/release/throughput" --batch "$batch" --threads "$t" --iters "$iters" --runs 3 "${gemm[@]}")
    take "opacus-$batch-$t" < <("$venv/bin/python" benchmarks/opacus_step.py --batch "$batch" --threads "$t")
  done
  take "node-$batch" < <(BATCH=$batch ITERS=$iters RUNS=3 TRAINING_ONLY=1 node client-wasm/bench/throughput.mjs "$wasm_out")
done

while read -r key value; do
  echo "$key $value"
  [ "$key" = "##" ] || v[$key]=$value
done < <(RUST_LOG=error SERVER_BIN="$target_dir/release/server" node e2e/bench-speed.mjs | grep -E '^(chromium-|workers |## )')
n=${v[workers]}
# The same rounds with the arms side by side in one worker (the order turning every pass): the
# scaling without the run-to-run drift of the runs above. Its whole output goes to the log.
if [ "$n" -ge 2 ]; then
  paired_out=$(RUST_LOG=error WORKERS="$n" PASSES=30 SERVER_BIN="$target_dir/release/server" node e2e/bench-paired.mjs) \
    || echo "!! e2e/bench-paired.mjs failed"
  echo "$paired_out"
  while read -r key value; do v[$key]=$value; done < <(grep -E '^paired-' <<<"$paired_out")
fi

ceiling=10000
row() { # label, then the DP and plain values for batch 64 and 512, and the cores the row uses
  local label=$1 d64=$2 p64=$3 d512=$4 p512=$5 used=$6
  local pct=""
  [ -n "$d64" ] && [ -n "$d512" ] && pct=$(awk -v a="$d64" -v b="$d512" -v u="$used" -v c=$ceiling 'BEGIN { printf "%.0f %% / %.0f %%", 100*a/(u*c), 100*b/(u*c) }')
  printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "${d64:-—}" "${p64:-—}" "${d512:-—}" "${p512:-—}" "${pct:-—}"
}
echo
echo "## Training speed (samples/s, median of 3; DP-SGD = per-example clipping + noise)"
echo
echo "| where | DP batch 64 | plain 64 | DP batch 512 | plain 512 | DP ÷ dense ceiling (10 000 × cores used): 64 / 512 |"
echo "|---|---|---|---|---|---|"
row "this project, native, 1 thread" "${v[native-64-1-dp]}" "${v[native-64-1-plain]}" "${v[native-512-1-dp]}" "${v[native-512-1-plain]}" 1
row "this project, native, $cores threads" "${v[native-64-$cores-dp]}" "${v[native-64-$cores-plain]}" "${v[native-512-$cores-dp]}" "${v[native-512-$cores-plain]}" "$cores"
row "this project, wasm in node $(node --version)" "${v[node-64-dp]}" "${v[node-64-plain]}" "${v[node-512-dp]}" "${v[node-512-plain]}" 1
row "this project, wasm, one Chromium worker (step)" "${v[chromium-step-dp-64]}" "${v[chromium-step-plain-64]}" "${v[chromium-step-dp-512]}" "${v[chromium-step-plain-512]}" 1
row "this project, Chromium tab, real DP round, 1 worker" "${v[chromium-round-64-1w-samples]}" "" "${v[chromium-round-512-1w-samples]}" "" 1
row "this project, Chromium tab, real DP round, $n workers" "${v[chromium-round-64-${n}w-samples]}" "" "${v[chromium-round-512-${n}w-samples]}" "" "$n"
row "PyTorch + Opacus, 1 thread" "${v[opacus-64-1-dp]}" "${v[opacus-64-1-plain]}" "${v[opacus-512-1-dp]}" "${v[opacus-512-1-plain]}" 1
row "PyTorch + Opacus, $cores threads" "${v[opacus-64-$cores-dp]}" "${v[opacus-64-$cores-plain]}" "${v[opacus-512-$cores-dp]}" "${v[opacus-512-$cores-plain]}" "$cores"
echo
echo "A client's distributed-DP step (every example clipped and conditionally rounded, its noise share, the update; one thread): batch 64 / 512," \
  "native ${v[native-64-1-distributed]} / ${v[native-512-1-distributed]}, wasm in node ${v[node-64-distributed]} / ${v[node-512-distributed]}," \
  "one Chromium worker ${v[chromium-step-distributed-64]} / ${v[chromium-step-distributed-512]} samples/s (no Opacus counterpart)."
echo "Real DP rounds of one tab (6 000 examples, 1 epoch): batch 64 ${v[chromium-round-64-1w-seconds]} s on 1 worker → ${v[chromium-round-64-${n}w-seconds]} s on $n;" \
  "batch 512 (the demo's batch) ${v[chromium-round-512-1w-seconds]} s → ${v[chromium-round-512-${n}w-seconds]} s."
scaling() { # batch: each run's N-worker speed over its 1-worker speed, then the medians' ratio
  local b=$1
  awk -v a="${v[chromium-round-$b-1w-runs]}" -v c="${v[chromium-round-$b-${n}w-runs]}" -v m1="${v[chromium-round-$b-1w-samples]}" -v mn="${v[chromium-round-$b-${n}w-samples]}" \
    'BEGIN { k = split(a, x, ","); split(c, y, ","); s = ""; for (i = 1; i <= k; i++) s = s sprintf("%s%.2f", i > 1 ? ", " : "", y[i] / x[i]); printf "%.2f× (runs: %s)", mn / m1, s }'
}
echo "Scaling of a tab's real DP rounds, $n workers over 1 (target ≥ 0.8 × $n): batch 64 $(scaling 64); batch 512 $(scaling 512)."
paired() { # a paired-… value as "ratio (95 % interval)", or n/a when the benchmark gave none
  if [ -n "${v[$1]:-}" ]; then awk '{ printf "%s (95 %% %s)", $1, $2 }' <<<"${v[$1]}"; else printf 'n/a'; fi
}
echo "Paired in one worker (30 passes of one batch-64 round per arm, geometric mean of the passes' ratios): $n workers as a tab over 1 $(paired paired-tab-over-1)," \
  "split fixed before each step over 1 $(paired paired-fixed-over-1), as a tab over the fixed split $(paired paired-tab-over-fixed); page cross-origin isolated (chunks claimed): ${v[paired-isolated]:-n/a}."
echo "Page while $n workers train: ${v[chromium-round-64-${n}w-fps]} / ${v[chromium-round-512-${n}w-fps]} frames/s (batch 64 / 512)," \
  "longest gap between frames ${v[chromium-round-64-${n}w-gap]} / ${v[chromium-round-512-${n}w-gap]} ms; on 1 worker ${v[chromium-round-64-1w-fps]} / ${v[chromium-round-512-1w-fps]} frames/s."
echo "Log: $log"
