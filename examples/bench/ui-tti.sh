#!/usr/bin/env bash
# Benchmark: time to interactive of /traces/{id} for a 12,000-span trace (the demo's catalog
# import), against the time to fetch and parse the same trace's raw JSON in the same browser.
#   bash examples/bench/ui-tti.sh [runs]
# Builds release binaries with the UI bundle, starts `oxeye serve` on free loopback ports with a
# temporary data directory, fills it with oxeye-demo, measures, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxeye-target}"
runs=${1:-5}
[[ -x /usr/bin/chromium ]] || { echo "needs /usr/bin/chromium (apt-get install -y chromium)" >&2; exit 1; }
[[ -d tests/e2e/node/node_modules/playwright-core ]] || npm ci --prefix tests/e2e/node --no-audit --no-fund --loglevel=error
scripts/build-ui
cargo build --release --bin oxeye
cargo build --release -p oxeye-demo

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http=$(port); grpc=$(port); otlp_http=$(port); pg=$(port)
data=$(mktemp -d)
"$CARGO_TARGET_DIR/release/oxeye" serve --data-dir "$data" --http-listen "127.0.0.1:$http" \
  --otlp-grpc-listen "127.0.0.1:$grpc" --otlp-http-listen "127.0.0.1:$otlp_http" \
  --pg-listen "127.0.0.1:$pg" --log warn &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$http/readyz" >/dev/null && break; sleep 0.1; done

summary=$("$CARGO_TARGET_DIR/release/oxeye-demo" --endpoint "http://127.0.0.1:$grpc" --duration 5s --seed 3 | tail -1)
trace=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["large_traces"][0])' "$summary")
spans=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["large_trace_spans"][0])' "$summary")
echo "trace $trace with $spans spans" >&2
node examples/bench/ui/tti.mjs "http://127.0.0.1:$http" "$trace" "$runs"
