#!/usr/bin/env bash
# A local oxeye cluster in one command, on 127.0.0.1 only:
#
#   PostgreSQL (metastore) + moto (S3) + 3 store nodes (6 shards, 2 replicas of each: 4 shards per
#   node) + 2 collectors (write quorum 2) + 1 query node
#
#   examples/cluster/run.sh            # start, print the endpoints, run until Ctrl-C
#   examples/cluster/run.sh --smoke    # start, send spans, check them from the query node, stop
#
# Environment:
#   BASE_PORT    first port; every component is an offset from it          [17000]
#   CLUSTER_DIR  work directory (data dirs, logs); must be empty or absent  [a new mktemp -d]
#   KEEP=1       keep the work directory (and PostgreSQL's directory) at exit
#   OXEYE_BIN    the oxeye binary [$CARGO_TARGET_DIR/release/oxeye, else .../debug/oxeye;
#                CARGO_TARGET_DIR defaults to ~/.cache/oxeye-target]
#   FLUSH_AGE    store nodes' --flush-age: how long rows wait before the query node can see them
#                [10s here; oxeye's default is 30s]
#   STORE_NODES, STORE_SHARDS, COLLECTOR_NODES   store nodes, shards per store node before
#                replication, collectors [3, 2, 2; at most 3, 9, 2] (examples/bench/cluster.py
#                compares layouts)
#   REPLICATION  replicas of each shard, on that many store nodes [2, or 1 with one store node]
#   WRITE_QUORUM replicas that hold a write before a collector acknowledges it [REPLICATION]
#   READY_TIMEOUT, STOP_TIMEOUT, SMOKE_TIMEOUT   seconds [60, 60, 120]
#
# Everything it starts is stopped on exit, Ctrl-C or SIGTERM: collectors, the query node, then
# the store nodes (SIGTERM: they flush what they acknowledged), then moto, then PostgreSQL.
# See examples/cluster/README.md for what runs where.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE_PORT="${BASE_PORT:-17000}"
FLUSH_AGE="${FLUSH_AGE:-10s}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
STOP_TIMEOUT="${STOP_TIMEOUT:-60}"
SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-120}"
KEEP="${KEEP:-0}"
BUCKET=oxeye-cluster
PREFIX=oxeye
HOST=127.0.0.1

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

if ! [[ "$BASE_PORT" =~ ^[0-9]+$ ]] || ((BASE_PORT < 1024 || BASE_PORT + 61 > 65535)); then
    die "BASE_PORT must be a number from 1024 to 65474 (the cluster uses BASE_PORT..BASE_PORT+61)"
fi

# ---------------------------------------------------------------------------------------------
# Ports: an offset from BASE_PORT each.
PG_PORT=$((BASE_PORT + 0))      # PostgreSQL (the metastore)
S3_PORT=$((BASE_PORT + 1))      # moto (S3)
STORE_NODES="${STORE_NODES:-3}"
STORE_SHARDS="${STORE_SHARDS:-2}"
COLLECTOR_NODES="${COLLECTOR_NODES:-2}"
# The port layout below has room for three store nodes and two collectors.
[[ "$STORE_NODES" =~ ^[1-3]$ ]] || die "STORE_NODES must be 1, 2 or 3"
[[ "$COLLECTOR_NODES" =~ ^[1-2]$ ]] || die "COLLECTOR_NODES must be 1 or 2"
[[ "$STORE_SHARDS" =~ ^[1-9]$ ]] || die "STORE_SHARDS must be 1 to 9"
REPLICATION="${REPLICATION:-$((STORE_NODES < 2 ? 1 : 2))}"
WRITE_QUORUM="${WRITE_QUORUM:-$REPLICATION}"
[[ "$REPLICATION" =~ ^[1-9]$ ]] && ((REPLICATION <= STORE_NODES)) ||
    die "REPLICATION must be 1 to STORE_NODES ($STORE_NODES)"
[[ "$WRITE_QUORUM" =~ ^[0-9]$ ]] && ((WRITE_QUORUM <= REPLICATION)) ||
    die "WRITE_QUORUM must be 0 to REPLICATION ($REPLICATION)"
mapfile -t STORES < <(seq 1 "$STORE_NODES")
store_http() { echo $((BASE_PORT + 10 * $1)); }        # 17010, 17020, 17030
store_pg() { echo $((BASE_PORT + 10 * $1 + 1)); }      # 17011, ...
store_flight() { echo $((BASE_PORT + 10 * $1 + 2)); }  # 17012, ...
TOTAL_SHARDS=$((STORE_NODES * STORE_SHARDS))
# Store node N serves STORE_SHARDS x REPLICATION shards from (N-1) x STORE_SHARDS on, wrapping
# around, so every shard is on REPLICATION consecutive nodes: 0,1,2,3 / 2,3,4,5 / 4,5,0,1.
store_shard_ids() {
    local j ids=()
    for ((j = 0; j < STORE_SHARDS * REPLICATION; j++)); do
        ids+=($((((($1 - 1) * STORE_SHARDS) + j) % TOTAL_SHARDS)))
    done
    local IFS=,
    echo "${ids[*]}"
}
mapfile -t COLLECTORS < <(seq 1 "$COLLECTOR_NODES")
collector_http() { echo $((BASE_PORT + 30 + 10 * $1)); }       # 17040, 17050 (/metrics, /readyz)
collector_otlp_grpc() { echo $((BASE_PORT + 31 + 10 * $1)); }  # 17041, 17051
collector_otlp_http() { echo $((BASE_PORT + 32 + 10 * $1)); }  # 17042, 17052
QUERY_HTTP=$((BASE_PORT + 60))
QUERY_PG=$((BASE_PORT + 61))

ALL_PORTS=("$PG_PORT" "$S3_PORT" "$QUERY_HTTP" "$QUERY_PG")
for i in "${STORES[@]}"; do ALL_PORTS+=("$(store_http "$i")" "$(store_pg "$i")" "$(store_flight "$i")"); done
for i in "${COLLECTORS[@]}"; do
    ALL_PORTS+=("$(collector_http "$i")" "$(collector_otlp_grpc "$i")" "$(collector_otlp_http "$i")")
done

# ---------------------------------------------------------------------------------------------
# What it needs: the oxeye binary (with the cluster roles), PostgreSQL's server, moto, curl.

supports_roles() {
    "$1" store --help 2>/dev/null | grep -q -- '--shard-ids' &&
        "$1" collector --help 2>/dev/null | grep -q -- '--write-quorum'
}

find_oxeye() {
    if [[ -n "${OXEYE_BIN:-}" ]]; then
        [[ -x "$OXEYE_BIN" ]] || die "OXEYE_BIN=$OXEYE_BIN is not an executable file"
        supports_roles "$OXEYE_BIN" ||
            die "$OXEYE_BIN has no 'store --shard-ids' / 'collector --write-quorum': it predates replicated shards; rebuild it"
        return
    fi
    local target="${CARGO_TARGET_DIR:-$HOME/.cache/oxeye-target}" candidate stale=()
    for candidate in "$target/release/oxeye" "$target/debug/oxeye"; do
        [[ -x "$candidate" ]] || continue
        if supports_roles "$candidate"; then
            OXEYE_BIN="$candidate"
            ((${#stale[@]} == 0)) || log "skipping ${stale[*]}: it predates replicated shards"
            return
        fi
        stale+=("$candidate")
    done
    {
        if ((${#stale[@]})); then
            echo "[cluster] error: ${stale[*]} predate(s) replicated shards (oxeye store --shard-ids)."
        else
            echo "[cluster] error: no oxeye binary in $target/{release,debug}."
        fi
        echo "Build it first (from $REPO):"
        echo "    scripts/build-ui && cargo build --release --bin oxeye"
        echo "or point OXEYE_BIN at one."
    } >&2
    exit 1
}
find_oxeye

command -v curl >/dev/null || die "curl is needed (apt-get install curl)"

PG_BIN=""
for d in /usr/lib/postgresql/*/bin; do
    # The glob is sorted, but 9.6 < 10 is not alphabetical: keep the highest major version.
    if [[ -x "$d/initdb" && -x "$d/postgres" && -x "$d/pg_ctl" ]]; then
        v="$(basename "$(dirname "$d")")"
        if [[ -z "$PG_BIN" ]] || ((${v%%.*} > $(basename "$(dirname "$PG_BIN")" | cut -d. -f1))); then
            PG_BIN="$d"
        fi
    fi
done
[[ -n "$PG_BIN" ]] || die "no PostgreSQL server in /usr/lib/postgresql/*/bin (apt-get install postgresql)"

MOTO="$REPO/.venv/bin/moto_server"
if [[ ! -x "$MOTO" ]]; then
    {
        echo "[cluster] error: no moto S3 server at $MOTO."
        echo "Run scripts/test once (it creates .venv with moto), or:"
        echo "    python3 -m venv .venv && .venv/bin/pip install 'moto[server]' boto3"
    } >&2
    exit 1
fi

AS_ROOT=0
if ((EUID == 0)); then
    AS_ROOT=1
    id postgres >/dev/null 2>&1 ||
        die "running as root, PostgreSQL must run as the 'postgres' user, which does not exist (apt-get install postgresql creates it)"
fi

# PostgreSQL refuses to run as root: run its commands as `postgres` then.
as_pg() {
    if ((AS_ROOT)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() { (: <"/dev/tcp/$HOST/$1") 2>/dev/null; }
for p in "${ALL_PORTS[@]}"; do
    port_in_use "$p" && die "port $p on $HOST is in use; pick other ports with BASE_PORT=..."
done

# ---------------------------------------------------------------------------------------------
# The work directory and the cleanup that always runs.

if [[ -n "${CLUSTER_DIR:-}" ]]; then
    mkdir -p "$CLUSTER_DIR"
    [[ -z "$(ls -A "$CLUSTER_DIR")" ]] ||
        die "CLUSTER_DIR=$CLUSTER_DIR is not empty (each run starts a fresh metastore and bucket, so old data dirs would not match them)"
    WORK="$(cd "$CLUSTER_DIR" && pwd)"
else
    WORK="$(mktemp -d -t oxeye-cluster.XXXXXX)"
fi
touch "$WORK/.oxeye-cluster"  # the mark that lets the cleanup remove it
LOGS="$WORK/logs"
mkdir -p "$LOGS"

PG_DIR=""
PG_STARTED=0
MOTO_PID=""
OX_NAMES=()  # oxeye processes in start order
OX_PIDS=()

# "running" = exists and is not a zombie waiting to be reaped.
running() {
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z* ]]
}

# Sends SIGTERM to the given pids, waits up to STOP_TIMEOUT for them, then SIGKILLs the rest.
terminate() {
    local pid deadline=$((SECONDS + STOP_TIMEOUT)) left
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    while :; do
        left=0
        for pid in "$@"; do running "$pid" && left=1; done
        ((left)) || break
        if ((SECONDS >= deadline)); then
            for pid in "$@"; do
                if running "$pid"; then
                    log "pid $pid did not stop within ${STOP_TIMEOUT}s; killing it"
                    kill -KILL "$pid" 2>/dev/null || true
                fi
            done
            break
        fi
        sleep 0.2
    done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# The pids of the oxeye processes whose name starts with $1.
pids_of() {
    local i
    for i in "${!OX_NAMES[@]}"; do
        [[ "${OX_NAMES[$i]}" == "$1"* ]] && echo "${OX_PIDS[$i]}"
    done
    return 0
}

stop_stage() {
    local pids
    mapfile -t pids < <(pids_of "$1")
    ((${#pids[@]})) || return 0
    log "stopping $1 (pid ${pids[*]})"
    terminate "${pids[@]}"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # Collectors first (nothing new comes in), then the query node, then the store nodes, which
    # flush what they acknowledged into S3 and PostgreSQL, which therefore stop last.
    stop_stage collector
    stop_stage query
    stop_stage store
    if [[ -n "$MOTO_PID" ]]; then
        log "stopping moto ($MOTO_PID)"
        terminate "$MOTO_PID"
    fi
    if ((PG_STARTED)) && [[ -f "$PG_DIR/data/postmaster.pid" ]]; then
        log "stopping PostgreSQL"
        if ! (cd "$PG_DIR" && as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop) \
            >>"$LOGS/postgres.log" 2>&1; then
            local pm
            pm="$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null)"
            if [[ "$pm" =~ ^[0-9]+$ ]]; then
                kill -INT "$pm" 2>/dev/null
                for _ in $(seq 1 100); do kill -0 "$pm" 2>/dev/null || break; sleep 0.1; done
                kill -0 "$pm" 2>/dev/null && kill -KILL "$pm" 2>/dev/null
            fi
        fi
    fi
    if [[ "$KEEP" == 1 ]]; then
        log "kept the work directory: $WORK"
        [[ -z "$PG_DIR" || "$PG_DIR" == "$WORK"/* ]] || log "and PostgreSQL's data directory: $PG_DIR"
    else
        [[ -n "$PG_DIR" && -d "$PG_DIR" ]] && rm -rf -- "$PG_DIR"
        [[ -f "$WORK/.oxeye-cluster" ]] && rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until $2 answers 200, failing early when process $3 (if given) has exited.
wait_http() {
    local what="$1" url="$2" pid="${3:-}" log_file="${4:-}" deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; do
        if [[ -n "$pid" ]] && ! running "$pid"; then
            [[ -n "$log_file" ]] && tail -n 30 "$log_file" >&2
            die "$what exited while starting (log: $log_file)"
        fi
        if ((SECONDS >= deadline)); then
            [[ -n "$log_file" ]] && tail -n 30 "$log_file" >&2
            die "$what is not ready at $url after ${READY_TIMEOUT}s (log: $log_file)"
        fi
        sleep 0.2
    done
}

# Runs a command in the background in a session of its own (so that a Ctrl-C in the terminal
# reaches only this script, which then stops everything in order); its pid goes to SPAWNED.
# (In a script there is no job control, so the child is no process group leader and setsid
# execs in place: the pid is the command's own.)
SETSID=()
command -v setsid >/dev/null && SETSID=(setsid)
spawn() {
    local log_file="$1"
    shift
    "${SETSID[@]}" "$@" </dev/null >>"$log_file" 2>&1 &
    SPAWNED=$!
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster, trust authentication, listening on 127.0.0.1 only.

if ((AS_ROOT)); then
    # Not under $WORK: the postgres user may not be able to enter it (e.g. under /root).
    PG_DIR="$(mktemp -d -t oxeye-cluster-pg.XXXXXX)"
    chown postgres:postgres "$PG_DIR"
else
    PG_DIR="$WORK/postgres"
    mkdir -p "$PG_DIR"
fi
unset PGDATA PGHOST PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE PGPASSWORD
export LC_ALL=C
log "PostgreSQL ($PG_BIN) in $PG_DIR on $HOST:$PG_PORT"
(cd "$PG_DIR" && as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 \
    --locale=C --no-sync) >>"$LOGS/postgres.log" 2>&1 ||
    { tail -n 20 "$LOGS/postgres.log" >&2; die "initdb failed (log: $LOGS/postgres.log)"; }
PG_STARTED=1
(cd "$PG_DIR" && as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -w -t "$READY_TIMEOUT" \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=$HOST -c fsync=off" start) \
    >>"$LOGS/postgres.log" 2>&1 ||
    { tail -n 20 "$LOGS/postgres.log" >&2; die "PostgreSQL did not start (log: $LOGS/postgres.log)"; }
"$PG_BIN/createdb" -h "$HOST" -p "$PG_PORT" -U postgres oxeye >>"$LOGS/postgres.log" 2>&1 ||
    die "cannot create the database 'oxeye' (log: $LOGS/postgres.log)"
METASTORE="postgres://postgres@$HOST:$PG_PORT/oxeye"

# ---------------------------------------------------------------------------------------------
# S3: moto's server, and a bucket.

log "moto S3 on $HOST:$S3_PORT, bucket $BUCKET"
spawn "$LOGS/moto.log" "$MOTO" -H "$HOST" -p "$S3_PORT"
MOTO_PID=$SPAWNED
S3_ENDPOINT="http://$HOST:$S3_PORT"
wait_http moto "$S3_ENDPOINT/moto-api/" "$MOTO_PID" "$LOGS/moto.log"
curl -fsS -m 10 -o /dev/null -X PUT "$S3_ENDPOINT/$BUCKET" || die "cannot create the bucket $BUCKET"
code="$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -I "$S3_ENDPOINT/$BUCKET")"
[[ "$code" == 200 ]] || die "the bucket $BUCKET is not there after creating it (HEAD: HTTP $code)"

# oxeye's S3 client: moto takes any credentials; nothing AWS-related from the outer environment.
unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ENDPOINT \
    AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_REGION AWS_DEFAULT_REGION AWS_ROLE_ARN \
    AWS_WEB_IDENTITY_TOKEN_FILE AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \
    AWS_CONTAINER_CREDENTIALS_FULL_URI
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export NO_COLOR=1  # plain log files
OBJECT_STORE="s3://$BUCKET/$PREFIX"
SHARED=(--metastore "$METASTORE" --object-store "$OBJECT_STORE" --s3-endpoint "$S3_ENDPOINT")

start_oxeye() {  # name, then the oxeye arguments
    local name="$1"
    shift
    spawn "$LOGS/$name.log" "$OXEYE_BIN" "$@"
    OX_NAMES+=("$name")
    OX_PIDS+=("$SPAWNED")
}

pid_of() {
    local i
    for i in "${!OX_NAMES[@]}"; do [[ "${OX_NAMES[$i]}" == "$1" ]] && echo "${OX_PIDS[$i]}"; done
    return 0
}

# ---------------------------------------------------------------------------------------------
# Store nodes: shards 0,1,2,3 / 2,3,4,5 / 4,5,0,1 (two replicas of each). All three start at
# once; the collectors start once every store node has announced itself in the metastore, so
# that they route over all six shards, to both replicas, from their first request. One replica
# of each shard leads it (a lease in PostgreSQL): it serves the shard's unflushed rows and
# flushes them; the other keeps them in its WAL and takes over if the leader dies.

for i in "${STORES[@]}"; do
    log "store-$i: shards $(store_shard_ids "$i"), Flight $HOST:$(store_flight "$i")"
    start_oxeye "store-$i" store "${SHARED[@]}" \
        --shard-ids "$(store_shard_ids "$i")" \
        --flight-listen "$HOST:$(store_flight "$i")" \
        --http-listen "$HOST:$(store_http "$i")" --pg-listen "$HOST:$(store_pg "$i")" \
        --flush-age "$FLUSH_AGE" --data-dir "$WORK/store-$i"
done
for i in "${STORES[@]}"; do
    wait_http "store-$i" "http://$HOST:$(store_http "$i")/readyz" "$(pid_of "store-$i")" "$LOGS/store-$i.log"
done
deadline=$((SECONDS + READY_TIMEOUT))
while :; do
    n="$("$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U postgres -d oxeye -Atq \
        -c "SELECT count(*) FROM oxeye_nodes WHERE role = 'store'" 2>/dev/null || true)"
    [[ "$n" == "${#STORES[@]}" ]] && break
    ((SECONDS < deadline)) || die "only ${n:-0} of ${#STORES[@]} store nodes announced themselves in the metastore"
    sleep 0.2
done

# ---------------------------------------------------------------------------------------------
# Collectors and the query node.

for i in "${COLLECTORS[@]}"; do
    log "collector-$i: OTLP gRPC $HOST:$(collector_otlp_grpc "$i"), HTTP $HOST:$(collector_otlp_http "$i")"
    start_oxeye "collector-$i" collector --metastore "$METASTORE" \
        --otlp-grpc-listen "$HOST:$(collector_otlp_grpc "$i")" \
        --otlp-http-listen "$HOST:$(collector_otlp_http "$i")" \
        --http-listen "$HOST:$(collector_http "$i")" \
        --write-quorum "$WRITE_QUORUM" \
        --data-dir "$WORK/collector-$i"
done
log "query: HTTP $HOST:$QUERY_HTTP, PostgreSQL protocol $HOST:$QUERY_PG"
start_oxeye query query "${SHARED[@]}" \
    --http-listen "$HOST:$QUERY_HTTP" --pg-listen "$HOST:$QUERY_PG" --data-dir "$WORK/query"
for i in "${COLLECTORS[@]}"; do
    wait_http "collector-$i" "http://$HOST:$(collector_http "$i")/readyz" "$(pid_of "collector-$i")" "$LOGS/collector-$i.log"
done
wait_http query "http://$HOST:$QUERY_HTTP/readyz" "$(pid_of query)" "$LOGS/query.log"

# ---------------------------------------------------------------------------------------------
# The endpoints.

{
    echo
    echo "oxeye local cluster is up (binary: $OXEYE_BIN)"
    echo
    printf '  %-12s %-26s %s\n' "component" "what" "where"
    printf '  %-12s %-26s %s\n' "---------" "----" "-----"
    for i in "${COLLECTORS[@]}"; do
        printf '  %-12s %-26s %s\n' "collector-$i" "OTLP/gRPC" "http://$HOST:$(collector_otlp_grpc "$i")"
        printf '  %-12s %-26s %s\n' "" "OTLP/HTTP" "http://$HOST:$(collector_otlp_http "$i")/v1/{traces,logs,metrics}"
        printf '  %-12s %-26s %s\n' "" "metrics, readyz" "http://$HOST:$(collector_http "$i")/metrics"
    done
    printf '  %-12s %-26s %s\n' "query" "web UI, HTTP API" "http://$HOST:$QUERY_HTTP   (SQL: POST /api/v1/sql)"
    printf '  %-12s %-26s %s\n' "" "PostgreSQL protocol" "psql -h $HOST -p $QUERY_PG -U oxeye oxeye"
    for i in "${STORES[@]}"; do
        printf '  %-12s %-26s %s\n' "store-$i" "shards $(store_shard_ids "$i"), HTTP API" "http://$HOST:$(store_http "$i")   (POST /api/v1/admin/flush)"
        printf '  %-12s %-26s %s\n' "" "Arrow Flight" "http://$HOST:$(store_flight "$i")"
    done
    printf '  %-12s %-26s %s\n' "metastore" "PostgreSQL" "psql -h $HOST -p $PG_PORT -U postgres oxeye"
    printf '  %-12s %-26s %s\n' "S3 (moto)" "$OBJECT_STORE" "$S3_ENDPOINT"
    echo
    echo "  logs:     $LOGS"
    echo "  data:     $WORK/{store-N,collector-N,query}"
    echo
    echo "  Send telemetry:  export OTEL_EXPORTER_OTLP_ENDPOINT=http://$HOST:$(collector_otlp_grpc 1)"
    echo "  The query node sees rows as soon as a store node holds them (it asks each store node"
    echo "  for its unflushed rows); stores flush to S3 every --flush-age ($FLUSH_AGE)."
    echo
} >&2

# ---------------------------------------------------------------------------------------------
# --smoke: spans in through collector-1, out of the query node.

hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

sql() {  # $1: base URL, $2: SQL without double quotes; prints the CSV answer's rows
    curl -fsS -m 30 "$1/api/v1/sql?format=csv" -H 'content-type: application/json' \
        -d "{\"sql\": \"$2\"}" | tr -d '\r' | tail -n +2
}

smoke() {
    local traces=30 children=3 now spans=() t trace root c start sent
    now="$(date +%s%N)"
    for ((t = 0; t < traces; t++)); do
        trace="$(hex 16)"
        root="$(hex 8)"
        start=$((now - 2000000000 + t * 1000000))
        spans+=("{\"traceId\":\"$trace\",\"spanId\":\"$root\",\"name\":\"GET /smoke/$t\",\"kind\":2,\"startTimeUnixNano\":\"$start\",\"endTimeUnixNano\":\"$((start + 50000000))\",\"attributes\":[{\"key\":\"http.route\",\"value\":{\"stringValue\":\"/smoke/{n}\"}}],\"status\":{}}")
        for ((c = 0; c < children; c++)); do
            spans+=("{\"traceId\":\"$trace\",\"spanId\":\"$(hex 8)\",\"parentSpanId\":\"$root\",\"name\":\"step $c\",\"kind\":1,\"startTimeUnixNano\":\"$((start + (c + 1) * 5000000))\",\"endTimeUnixNano\":\"$((start + (c + 1) * 5000000 + 3000000))\",\"status\":{}}")
        done
    done
    sent=${#spans[@]}
    local joined
    joined="$(IFS=,; echo "${spans[*]}")"
    local body="{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"cluster-smoke\"}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"examples/cluster/run.sh\"},\"spans\":[$joined]}]}]}"

    local url code answer deadline=$((SECONDS + 30))
    url="http://$HOST:$(collector_otlp_http 1)/v1/traces"
    answer="$WORK/smoke-answer.json"
    while :; do
        code="$(curl -sS -m 10 -o "$answer" -w '%{http_code}' "$url" \
            -H 'content-type: application/json' -d "$body" || true)"
        [[ "$code" == 200 ]] && break
        # 429/503: the collector has no shard map yet, or is busy; both are retryable.
        ((SECONDS < deadline)) || die "smoke: collector-1 answered HTTP $code: $(cat "$answer" 2>/dev/null)"
        sleep 0.5
    done
    if grep -q '"rejectedSpans"' "$answer" && ! grep -Eq '"rejectedSpans" *: *"?0"?' "$answer"; then
        die "smoke: collector-1 rejected spans: $(cat "$answer")"
    fi
    log "smoke: collector-1 acknowledged $sent spans ($traces traces) over OTLP/HTTP JSON"

    # The rows go collector queue -> Flight -> store WAL. Flush every store node (their segments
    # go to S3 and the catalog to PostgreSQL) until the query node counts them all, exactly once
    # (it reads each store node's snapshot: its segments and unflushed rows).
    local q="SELECT count(*) AS n FROM spans WHERE service_name = 'cluster-smoke'" n="" began=$SECONDS
    deadline=$((SECONDS + SMOKE_TIMEOUT))
    while :; do
        for i in "${STORES[@]}"; do
            curl -fsS -m 60 -o /dev/null -X POST "http://$HOST:$(store_http "$i")/api/v1/admin/flush" ||
                log "smoke: flush of store-$i failed; retrying"
        done
        n="$(sql "http://$HOST:$QUERY_HTTP" "$q" || true)"
        [[ "$n" == "$sent" ]] && break
        if [[ "$n" =~ ^[0-9]+$ ]] && ((n > sent)); then
            die "smoke: the query node counts $n spans, more than the $sent sent: rows were stored twice"
        fi
        if ((SECONDS >= deadline)); then
            die "smoke: the query node counts ${n:-nothing} of $sent spans after ${SMOKE_TIMEOUT}s (logs: $LOGS)"
        fi
        sleep 1
    done
    log "smoke: the query node counts $n spans of service cluster-smoke ($((SECONDS - began))s after the send)"
    # Where they landed: a whole trace goes to one shard, picked by rendezvous hashing of its
    # trace id over the six shards, so 30 traces reach every store node (all but surely:
    # a given node misses all 30 with probability (2/3)^30, about 5 in a million). The query
    # node's segment list follows the catalog every few seconds: wait until it has them all.
    local per_shard shard rows store total empty=()
    declare -A per_store=()
    while :; do
        per_shard="$(sql "http://$HOST:$QUERY_HTTP" "SELECT shard, sum(rows) AS spans FROM system.segments WHERE table_name = 'spans' GROUP BY shard ORDER BY shard" || true)"
        total="$(awk -F, '{ n += $2 } END { print n + 0 }' <<<"$per_shard")"
        ((total >= sent)) && break
        if ((SECONDS >= deadline)); then
            die "smoke: the query node's catalog lists $total of $sent spans in segments after ${SMOKE_TIMEOUT}s (logs: $LOGS)"
        fi
        sleep 1
    done
    log "smoke: where they landed (system.segments on the query node):"
    local replicas
    while IFS=, read -r shard rows; do
        [[ -n "$shard" ]] || continue
        replicas=()
        for store in "${STORES[@]}"; do
            if [[ ",$(store_shard_ids "$store")," == *",$shard,"* ]]; then
                per_store[$store]=$((${per_store[$store]:-0} + rows))
                replicas+=("store-$store")
            fi
        done
        log "    shard $shard (${replicas[*]}): $rows spans"
    done <<<"$per_shard"
    for i in "${STORES[@]}"; do
        [[ -n "${per_store[$i]:-}" ]] || empty+=("store-$i")
    done
    ((${#empty[@]} == 0)) || die "smoke: no spans reached ${empty[*]}: do the collectors route over every store node?"
    # Every replica took every row of its shards once: REPLICATION copies of each span in the
    # store nodes' WALs.
    local written=0 w
    for i in "${STORES[@]}"; do
        w="$(curl -fsS -m 10 "http://$HOST:$(store_http "$i")/metrics" |
            awk '$1 == "oxeye_store_ingested_rows_total" { print int($2) }')"
        written=$((written + ${w:-0}))
    done
    ((written == sent * REPLICATION)) ||
        die "smoke: the store nodes wrote $written rows for $sent spans and $REPLICATION replicas of each"
    log "smoke: the store nodes wrote each span $REPLICATION times ($written rows), once per replica"
    local objects
    objects="$(curl -fsS -m 10 "$S3_ENDPOINT/$BUCKET?list-type=2&prefix=$PREFIX/segments/spans/" | grep -o '<Key>' | wc -l)"
    log "smoke: $objects span segment objects (Parquet + index) in $OBJECT_STORE"
    echo "smoke: OK ($n of $sent spans visible from the query node)"
}

if ((SMOKE)); then
    smoke
    exit 0
fi

if [[ "$KEEP" == 1 ]]; then
    log "running; Ctrl-C stops everything (KEEP=1: the work directory stays)"
else
    log "running; Ctrl-C stops everything and removes $WORK (KEEP=1 keeps it)"
fi
while :; do
    for i in "${!OX_NAMES[@]}"; do
        if ! running "${OX_PIDS[$i]}"; then
            tail -n 20 "$LOGS/${OX_NAMES[$i]}.log" >&2
            die "${OX_NAMES[$i]} exited (log: $LOGS/${OX_NAMES[$i]}.log)"
        fi
    done
    # In the background, so that Ctrl-C runs the trap at once.
    sleep 2 &
    wait $! || true
done
