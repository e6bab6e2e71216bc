#!/usr/bin/env bash
# Builds the release binaries and runs the soak (arguments go to soak.py: --minutes N, --json FILE).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxeye-target}"
cargo build --release -p oxeye -p oxeye-loadgen
if [[ ! -x .venv-bench/bin/python ]]; then
  python3 -m venv .venv-bench
fi
.venv-bench/bin/pip install -q -r examples/bench/requirements.txt
exec .venv-bench/bin/python examples/bench/soak.py "$@"
