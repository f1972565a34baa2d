#!/usr/bin/env bash
# Robust aggregation against hostile clients: a release server and 10 simulated clients, of which
# 0–3 attack (each mode of `sim --attack`), under each aggregator; one run per cell and repeat,
# one after another on the same server. Prints one line per run and, at the end, the table of
# final test accuracies (median of the repeats, with their range). Every run's per-round table
# goes to the log too.
#
#   bash scripts/bench-robust.sh [REPEATS] [BASE_RUN_CONFIG_JSON] [AGGREGATORS] [ATTACKERS] [MODES]
#   bash scripts/bench-robust.sh 3 > benchmarks/robust-1.log
#
# Defaults: 3 repeats; 10 rounds, 10 clients, 10 IID shards of 1 000 images (60 shards, 10
# used), no DP, batch 32, lr 0.05; all five aggregators; 0 1 2 3 attackers; all five modes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${1:-3}"
DEFAULT_BASE='{"rounds":10,"min_clients":10,"quorum":1.0,"round_timeout_secs":600,"dp":null,"batching":{"batch_size":32},"learning_rate":0.05,"shards":{"scheme":{"kind":"iid"},"num_shards":60,"seed":42}}'
BASE="${2:-$DEFAULT_BASE}"
AGGREGATORS="${3:-fedavg norm_bound median trimmed_mean multi_krum}"
ATTACKERS="${4:-0 1 2 3}"
MODES="${5:-sign-flip scale:10 random:1000 label-flip zero}"
PORT="${FL_BENCH_PORT:-3198}"
source scripts/bench-server.sh
RESULTS="$DIR/results.tsv"

aggregator_json() {
  case "$1" in
    fedavg) echo '{"kind":"fedavg"}' ;;
    norm_bound) echo '{"kind":"norm_bound"}' ;;                 # bound: the round's median norm
    median) echo '{"kind":"median"}' ;;
    trimmed_mean) echo '{"kind":"trimmed_mean","trim":0.3}' ;;   # drops 3 of 10 at each end
    multi_krum) echo '{"kind":"multi_krum","byzantine":3}' ;;    # keeps n − f = 7 of 10
    *) echo "unknown aggregator $1" >&2; exit 2 ;;
  esac
}

one_run() { # aggregator attackers mode repeat
  local config attack=()
  config=$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["aggregator"]=json.loads(sys.argv[2]); c["name"]=sys.argv[3]; print(json.dumps(c))' \
    "$BASE" "$(aggregator_json "$1")" "$1 $2x$3 #$4")
  [ "$2" -gt 0 ] && attack=(--attack "$3" --attackers "$2")
  create_run "$config"
  local start end
  start=$(date +%s.%N)
  RUST_LOG=error "$BIN/sim" --server "ws://127.0.0.1:$PORT/ws" --clients 10 "${attack[@]}"
  end=$(date +%s.%N)
  api "http://127.0.0.1:$PORT/api/admin/runs/$RUN" > "$DIR/run.json"
  echo "== $1, $2 attackers ($3), repeat $4: $(python3 -c "print(f'{$end - $start:.0f}')") s"
  python3 scripts/run-report.py < "$DIR/run.json"
  python3 - "$DIR/run.json" "$@" >> "$RESULTS" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
acc = h["rounds"][-1]["test_accuracy"] if h["rounds"] else float("nan")
print("\t".join(sys.argv[2:6] + [f"{acc:.4f}", str(len(h["rounds"]))]))
PY
}

echo "base config: $BASE"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for rep in $(seq "$REPEATS"); do
  for agg in $AGGREGATORS; do
    for n in $ATTACKERS; do
      if [ "$n" -eq 0 ]; then modes="none"; else modes="$MODES"; fi
      for mode in $modes; do one_run "$agg" "$n" "$mode" "$rep"; done
    done
  done
done
echo "== summary: final test accuracy after the last round, median of $REPEATS (min–max)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
from collections import defaultdict
cells = defaultdict(list)
for line in open(sys.argv[1]):
    agg, n, mode, rep, acc, rounds = line.split("\t")
    cells[(agg, int(n), mode)].append(float(acc) * 100)
aggs = list(dict.fromkeys(k[0] for k in cells))
rows = list(dict.fromkeys((k[1], k[2]) for k in cells))
print("| attackers | mode | " + " | ".join(aggs) + " |")
print("|---|---|" + "---|" * len(aggs))
for n, mode in rows:
    out = []
    for a in aggs:
        v = cells.get((a, n, mode))
        out.append(f"{statistics.median(v):.2f} ({min(v):.1f}–{max(v):.1f})" if v else "—")
    print(f"| {n} | {mode} | " + " | ".join(out) + " |")
PY
