#!/usr/bin/env bash
# The main job. Installs what is missing (scripts/setup.sh: wasm target, trunk, wasm-bindgen-cli,
# npm packages, MNIST), builds the pages (trunk build --release) and the server, starts the server
# — its defaults create and start the demo run: 10 IID MNIST shards, DP-SGD to ε ≤ 3 at δ = 1e-5,
# a round as soon as 2 clients are connected — and prints the client URL, the admin URL and the
# admin token. Open the client page in two or more tabs (or devices) and watch the dashboard.
#
#   bash scripts/demo.sh             server on 127.0.0.1:3000 (FL_BIND), store in fl-data/ (FL_DATA_DIR)
#   bash scripts/demo.sh --lan       listen on every interface: phones on this network can join
#   bash scripts/demo.sh --sims 8    also start 8 headless simulated clients
#
# Ctrl-C stops everything; the store keeps the runs (a restart resumes an unfinished one).
set -euo pipefail
cd "$(dirname "$0")/.."
BIND="${FL_BIND:-127.0.0.1:3000}"
DATA="${FL_DATA_DIR:-fl-data}"
SIMS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --lan) BIND="0.0.0.0:${BIND##*:}" ;;
    --sims) SIMS="${2:?--sims needs a number}"; shift ;;
    *) echo "demo.sh: unknown argument $1: expected --lan or --sims N" >&2; exit 2 ;;
  esac
  shift
done
case "$SIMS" in ''|*[!0-9]*) echo "demo.sh: --sims $SIMS: expected a whole number" >&2; exit 2 ;; esac

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
echo "== building the pages (trunk build --release; the first build takes a few minutes)"
trunk build --release
echo "== building the server and the simulator (release)"
cargo build --release -p server -p client-wasm --bins

mkdir -p "$DATA"
"$TARGET_DIR/release/server" --bind "$BIND" --data-dir "$DATA" --static-dir dist > "$DATA/server.log" 2>&1 &
SERVER=$!
PIDS="$SERVER"
trap 'kill $PIDS 2>/dev/null || true' EXIT INT TERM
# Where this machine reaches the server: the bound host, or loopback for 0.0.0.0 / [::].
HOST="${BIND%:*}"
case "$HOST" in 0.0.0.0|"[::]") HOST=127.0.0.1 ;; esac
LOCAL="$HOST:${BIND##*:}"
up=0
for _ in $(seq 150); do
  kill -0 "$SERVER" 2>/dev/null || break # it exited (port taken, bad flag): say so below
  if curl -fs "http://$LOCAL/api/health" >/dev/null; then up=1; break; fi
  sleep 0.2
done
if [ "$up" != 1 ]; then
  echo "the server did not start; its log ($DATA/server.log):" >&2
  cat "$DATA/server.log" >&2
  exit 1
fi
TOKEN="${FL_ADMIN_TOKEN:-$(cat "$DATA/admin-token")}"
JOIN="$(curl -fs -H "Authorization: Bearer $TOKEN" "http://$LOCAL/api/admin/join" \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const u=JSON.parse(s).lan_urls;console.log(u.length?u[0]:"")})' || true)"
cat <<MSG

  client page   http://$LOCAL/        (open it in 2+ tabs: the demo run starts with 2 clients)
  admin page    http://$LOCAL/admin
  admin token   $TOKEN
MSG
[ -n "$JOIN" ] && echo "  other devices $JOIN   (the dashboard shows its QR code)"
echo "  server log    $DATA/server.log      (Ctrl-C stops the server)"
echo
if [ "$SIMS" -gt 0 ]; then
  RUST_LOG="${RUST_LOG:-warn}" "$TARGET_DIR/release/sim" --server "ws://$LOCAL/ws" --clients "$SIMS" > "$DATA/sim.log" 2>&1 &
  PIDS="$PIDS $!"
  echo "  $SIMS simulated clients started (log: $DATA/sim.log)"
fi
wait "$SERVER"
