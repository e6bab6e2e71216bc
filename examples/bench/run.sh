#!/usr/bin/env bash
# Builds the release binaries, prepares a Python environment with DuckDB and chDB, and runs the
# benchmark suite (arguments go to run.py: --quick, --sizes 1M,10M,100M, --json FILE).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxeye-target}"
cargo build --release -p oxeye -p oxeye-loadgen -p oxeye-bench
if [[ ! -x .venv-bench/bin/python ]]; then
  python3 -m venv .venv-bench
fi
.venv-bench/bin/pip install -q -r examples/bench/requirements.txt
exec .venv-bench/bin/python examples/bench/run.py "$@"
