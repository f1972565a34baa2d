#!/usr/bin/env bash
# Every test of the project: the README's test command, and what .ci/run calls.
#   1. setup (installs only what is missing: wasm target, trunk, wasm-bindgen-cli, npm, Chromium)
#   2. trunk build --release: the client page, the dashboard and the training worker
#   3. cargo test: every native unit and integration test
#   4. wasm-bindgen-test: the client's wasm side inside a Web Worker in headless Chromium
#   5. the browser end-to-end tests: the server, the built pages, 3 client tabs and the admin page;
#      a tab on 2 workers whose helper fails; gateways on NATS
#   6. the `trunk serve` smoke test: the development command reuses the release build and proxies
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh --browser
echo "== setup: $(( $(date +%s) - start )) s"
export PATH="$HOME/.cargo/bin:$PWD/node_modules/.bin:$PATH"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
run() { # name command...: runs one stage, keeps going after a failure, tees the output
  local name=$1 t=$SECONDS; shift
  echo "== $name"
  set +e
  "$@" 2>&1 | tee -a "$log"
  local s=${PIPESTATUS[0]}
  set -e
  echo "== $name: $((SECONDS - t)) s"
  last=$s
  [ "$s" = 0 ] || { echo "!! failed: $*"; status=1; }
  return 0
}

run "trunk build --release (frontend + worker, wasm32)" trunk build --release
pages_built=$last
run "cargo test (workspace, native)" cargo test --workspace --all-targets
server_built=$last
run "wasm-bindgen-test (client-wasm in a Chromium Web Worker)" env \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  CHROMEDRIVER="$(command -v chromedriver)" \
  cargo test --release --target wasm32-unknown-unknown -p client-wasm \
    --no-default-features --features browser --test worker
# The end-to-end test needs this run's pages and server: never stale ones from an earlier build.
if [ "$pages_built" = 0 ] && [ "$server_built" = 0 ]; then
  run "browser end-to-end (Playwright + Chromium)" env SERVER_BIN="$TARGET_DIR/debug/server" \
    node e2e/federation.e2e.mjs
  run "browser end-to-end: a tab trains on 2 workers; a helper failing mid-step costs one step's redo, not the round" \
    env SERVER_BIN="$TARGET_DIR/debug/server" node e2e/workers.e2e.mjs
  run "browser end-to-end on several machines (NATS, a coordinator, 2 gateways; a tab moves when its gateway dies)" \
    env SERVER_BIN="$TARGET_DIR/debug/server" node e2e/gateways.e2e.mjs
  run "trunk serve (development command: pages through trunk, a tab through its /ws proxy)" env \
    SERVER_BIN="$TARGET_DIR/debug/server" node e2e/trunk-serve.e2e.mjs
else
  echo "!! skipped the browser end-to-end tests: the pages or the server did not build (or a test failed)"; status=1
fi

echo "tests took $(( $(date +%s) - start ))s"
# One closing line for the whole suite (cargo prints one result line per test binary; the
# browser end-to-end test counts as one).
e2e=$(grep -c '^\[e2e .*\] passed$' "$log" || true)
awk -v e2e="$e2e" -v st="$status" '/^test result:/ { p += $4; f += $6 } END { if (st != 0 && f == 0) f = 1; printf "tests: %d passed, %d failed\n", p + e2e, f }' "$log"
exit "$status"
