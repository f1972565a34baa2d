# Sourced by the bench scripts: builds the release binaries (bench-bins.sh), starts a server on $PORT with a
# throw-away data directory (stopped on exit), and defines `api` (admin calls with the token) and
# `create_run CONFIG_JSON` (creates and starts a run, sets RUN).
TOKEN="bench-token-$(date +%s)-0123456789"
DIR="$(mktemp -d)"
source scripts/bench-bins.sh
BIN="$FL_BENCH_BIN"
"$BIN/server" --bind "127.0.0.1:$PORT" --data-dir "$DIR" --admin-token "$TOKEN" --no-demo \
  > "$DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/api/health" >/dev/null && break; sleep 0.2; done
api() { curl -fsS -H "Authorization: Bearer $TOKEN" "$@"; }
create_run() {
  RUN=$(api -X POST "http://127.0.0.1:$PORT/api/admin/runs" -d "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
  api -X POST "http://127.0.0.1:$PORT/api/admin/runs/$RUN/start" >/dev/null
}
