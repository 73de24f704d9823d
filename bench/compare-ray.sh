#!/usr/bin/env bash
# Runs Ray's microbenchmark suite (`ray microbenchmark`) and ferry's equivalent
# (`ferry-bench`) on this machine, back to back, and prints one table: test, Ray, ferry,
# ratio. Not part of CI: it documents how the comparison in docs/benchmarks.md was made.
#
#   bash bench/compare-ray.sh            # everything (about 15 minutes on 2 cores)
#
# Environment:
#   RAY_VERSION    Ray release to install from PyPI (default 2.60.0)
#   VENV           virtual environment to create or reuse (default target/ray-venv)
#   OUT            where the raw outputs and the table go (default target/compare-ray)
#   TESTS_TO_RUN   run only tests whose Ray name contains this (Ray's own variable; ferry's
#                  suite gets the same filter, with spaces turned into underscores)
#   TESTS_TO_SKIP  Ray's own variable; default "client:", which skips the Ray Client tests
#                  (a remote-driver proxy ferry has no counterpart of)
set -euo pipefail
cd "$(dirname "$0")/.."

RAY_VERSION=${RAY_VERSION:-2.60.0}
VENV=${VENV:-target/ray-venv}
OUT=${OUT:-target/compare-ray}
export TESTS_TO_SKIP=${TESTS_TO_SKIP-client:}
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/ray" ] || ! "$VENV/bin/python" -c "import ray, sys; sys.exit(ray.__version__ != '$RAY_VERSION')"; then
    echo "== installing Ray $RAY_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "ray[default]==$RAY_VERSION" numpy
fi

echo "== building ferry-bench"
rustup target add wasm32-unknown-unknown
cargo build --release -p ferry-bench

echo "== ray microbenchmark (Ray $RAY_VERSION; raw output in $OUT/ray.txt)"
"$VENV/bin/ray" microbenchmark 2>"$OUT/ray.stderr" | tee "$OUT/ray.txt"

echo "== ferry-bench (raw output in $OUT/ferry.txt)"
filter=()
if [ -n "${TESTS_TO_RUN:-}" ]; then
    filter=("${TESTS_TO_RUN// /_}")
fi
target/release/ferry-bench "${filter[@]}" | tee "$OUT/ferry.txt"

echo "== table ($OUT/table.md)"
{
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB," \
        "$(uname -sr); Ray $RAY_VERSION, ferry $(git rev-parse --short HEAD);" \
        "\`bash bench/compare-ray.sh\`."
    echo
    "$VENV/bin/python" bench/compare_ray.py "$OUT/ray.txt" "$OUT/ferry.txt"
} | tee "$OUT/table.md"
