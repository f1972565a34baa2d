# Sourced by cluster.sh and bench-gateways.sh: the multi-machine topology on one machine.
#
#   cluster_up N     nats-server, a throw-away PostgreSQL cluster (initdb + pg_ctl), a coordinator
#                    with its store in it, and N gateways — release binaries from bench-bins.sh.
#                    Sets CLUSTER_DIR, COORD_URL, GATEWAY_WS (comma-separated), TOKEN, NATS_MONITOR,
#                    COORD_PID, GATEWAY_PIDS.
#   cluster_down     stops everything and removes CLUSTER_DIR (unless CLUSTER_KEEP=1).
#
# Ports: FL_CLUSTER_PORT (default 3300) for the coordinator, the next N for the gateways,
# +100 NATS, +101 its monitor, +102 PostgreSQL. Debian's nats-server and postgresql are installed
# when missing (scripts/setup.sh).

cluster_pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -n "$newest" ]; then echo "$newest"; else dirname "$(command -v initdb)"; fi
}

# Runs a PostgreSQL program as the postgres user when we are root (it refuses to run as root).
cluster_as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cluster_wait_http() { # url what
  for _ in $(seq 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "cluster: $2 did not answer at $1 (see $CLUSTER_DIR/*.log)" >&2; return 1
}

cluster_up() {
  local n=${1:-2} base=${FL_CLUSTER_PORT:-3300}
  bash scripts/setup.sh >/dev/null
  source scripts/bench-bins.sh
  CLUSTER_BIN="$FL_BENCH_BIN"
  CLUSTER_DIR=$(mktemp -d /tmp/fl-cluster.XXXXXX)
  chmod 755 "$CLUSTER_DIR"   # the postgres user must reach its data directory inside
  TOKEN="cluster-token-$(date +%s)-0123456789"
  local nats_port=$((base + 100)) pg_port=$((base + 102))
  NATS_MONITOR="http://127.0.0.1:$((base + 101))"
  local nats_bin; nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  "$nats_bin" -a 127.0.0.1 -p "$nats_port" -m "$((base + 101))" > "$CLUSTER_DIR/nats.log" 2>&1 &
  NATS_PID=$!
  local pg; pg=$(cluster_pg_bin)
  mkdir -p "$CLUSTER_DIR/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$CLUSTER_DIR/pg"
  cluster_as_postgres "$pg/initdb" -D "$CLUSTER_DIR/pg/data" -A trust -U postgres -E UTF8 --no-locale --no-sync > "$CLUSTER_DIR/initdb.log"
  cluster_as_postgres "$pg/pg_ctl" -D "$CLUSTER_DIR/pg/data" -l "$CLUSTER_DIR/pg/log" -w \
    -o "-k $CLUSTER_DIR/pg -p $pg_port -c listen_addresses=127.0.0.1" start > /dev/null
  "$pg/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres fl
  local nats="nats://127.0.0.1:$nats_port"
  ulimit -n "$(ulimit -Hn)"
  COORD_URL="http://127.0.0.1:$base"
  "$CLUSTER_BIN/server" --bind "127.0.0.1:$base" --data-dir "$CLUSTER_DIR/coordinator" \
    --database-url "postgres://postgres@127.0.0.1:$pg_port/fl" --nats "$nats" \
    --admin-token "$TOKEN" --max-clients "${CLUSTER_MAX_CLIENTS:-100000}" ${CLUSTER_SERVER_ARGS:-} \
    > "$CLUSTER_DIR/coordinator.log" 2>&1 &
  COORD_PID=$!
  cluster_wait_http "$COORD_URL/api/health" "the coordinator"
  GATEWAY_PIDS=""; GATEWAY_WS=""
  for i in $(seq "$n"); do
    local port=$((base + i))
    "$CLUSTER_BIN/server" --bind "127.0.0.1:$port" --gateway "gw-$i" --nats "$nats" \
      --public-url "ws://127.0.0.1:$port/ws" --data-dir "$CLUSTER_DIR/gw-$i" --max-connections "${CLUSTER_GATEWAY_CONNECTIONS:-5000}" \
      > "$CLUSTER_DIR/gw-$i.log" 2>&1 &
    GATEWAY_PIDS="$GATEWAY_PIDS $!"
    GATEWAY_WS="${GATEWAY_WS:+$GATEWAY_WS,}ws://127.0.0.1:$port/ws"
    cluster_wait_http "http://127.0.0.1:$port/api/health" "gateway gw-$i"
  done
}

cluster_down() {
  kill $GATEWAY_PIDS $COORD_PID $NATS_PID 2>/dev/null || true
  wait $GATEWAY_PIDS $COORD_PID $NATS_PID 2>/dev/null || true
  cluster_as_postgres "$(cluster_pg_bin)/pg_ctl" -D "$CLUSTER_DIR/pg/data" -m fast stop > /dev/null 2>&1 || true
  [ "${CLUSTER_KEEP:-0}" = 1 ] || rm -rf "$CLUSTER_DIR"
}
