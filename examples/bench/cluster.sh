#!/usr/bin/env bash
# Builds the release binaries and compares 1-shard, 3-shard and 3-shard-2-replica local clusters (see
# examples/bench/cluster.py; arguments go to it: --spans 1M, --runs 5, --json FILE).
# Needs what examples/cluster/run.sh needs: PostgreSQL's server and .venv's moto (scripts/test).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxeye-target}"
cargo build --release -p oxeye -p oxeye-loadgen
if [[ ! -x .venv-bench/bin/python ]]; then
  python3 -m venv .venv-bench
fi
.venv-bench/bin/pip install -q -r examples/bench/requirements.txt
exec .venv-bench/bin/python examples/bench/cluster.py "$@"
