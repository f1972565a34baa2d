# Sourced by the bench scripts: the release server and sim, built once unless FL_BENCH_BIN
# already names a directory holding them (a long benchmark keeps its own copies while the tree is
# rebuilt). Exports FL_BENCH_BIN, which every run of bench-server.sh then takes them from.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if [ -z "${FL_BENCH_BIN:-}" ]; then
  cargo build --release -q -p server -p client-wasm --bins
  export FL_BENCH_BIN="$CARGO_TARGET_DIR/release"
fi
