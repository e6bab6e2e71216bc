#!/usr/bin/env python3
"""oxeye benchmark suite.

Every figure is measured against a baseline in the same run, because this machine is shared and
noisy: OTLP decode + convert against plain protobuf decode; ingest with WAL fsync against a raw
sequential write of the same bytes with the same number of fsyncs; each query in oxeye against
DuckDB and chDB reading the very same Parquet segment files.

    examples/bench/run.sh            # 1M and 10M spans
    examples/bench/run.sh --quick    # 1M spans, fewer repetitions (under 5 minutes)
    examples/bench/run.sh --sizes 1M,10M,100M
"""

import argparse
import datetime as dt
import http.client
import json
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import chdb
import duckdb
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache" / "oxeye-target"))
RELEASE = TARGET / "release"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_size(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(t[-1], 1)
    return int(float(t[:-1] if t[-1] in "KMG" else t) * mult)


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


class Server:
    """A release `oxeye serve` on free loopback ports."""

    def __init__(self, data_dir: pathlib.Path, *flags: str):
        self.data_dir = data_dir
        self.grpc, self.http, self.api, self.pg = (free_port() for _ in range(4))
        self.log = open(data_dir.parent / f"{data_dir.name}.log", "w")
        self.proc = subprocess.Popen(
            [
                str(RELEASE / "oxeye"), "serve", "--data-dir", str(data_dir),
                "--otlp-grpc-listen", f"127.0.0.1:{self.grpc}",
                "--otlp-http-listen", f"127.0.0.1:{self.http}",
                "--http-listen", f"127.0.0.1:{self.api}",
                "--pg-listen", f"127.0.0.1:{self.pg}",
                "--query-max-rows", "10000000", "--query-timeout", "300s",
                *flags,
            ],
            stderr=self.log,
            stdout=self.log,
        )
        self.session = requests.Session()
        self.sql_conn = None
        self.last_elapsed_ms = None
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.session.get(f"http://127.0.0.1:{self.api}/readyz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("oxeye did not become ready; see " + self.log.name)

    def sql(self, query: str) -> list:
        # A plain keep-alive connection rather than `requests`: the timed figure is the round
        # trip, and `requests` adds about 0.4 ms of Python per call, which a 2 ms query feels.
        if self.sql_conn is None:
            self.sql_conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=600)
        body = json.dumps({"sql": query})
        try:
            self.sql_conn.request("POST", "/api/v1/sql", body, {"content-type": "application/json"})
            r = self.sql_conn.getresponse()
            data = r.read()
        except (http.client.HTTPException, OSError):
            self.sql_conn.close()
            self.sql_conn = None
            raise
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {data[:500]!r}\n{query}")
        answer = json.loads(data)
        # The server's own time (planning, execution, JSON), without the network and client.
        self.last_elapsed_ms = answer.get("elapsed_ms")
        return answer["rows"]

    def server_ms(self, query: str, runs: int) -> float:
        """Median of the server's own time for `query` over `runs` calls."""
        times = []
        for _ in range(runs):
            self.sql(query)
            times.append(self.last_elapsed_ms)
        return statistics.median(times)

    def post(self, path: str) -> dict:
        r = self.session.post(f"http://127.0.0.1:{self.api}{path}", timeout=3600)
        r.raise_for_status()
        return r.json()

    def metric(self, name: str) -> float:
        text = self.session.get(f"http://127.0.0.1:{self.api}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu_seconds(self) -> float:
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_bytes(self) -> int:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def raw_sequential_write(directory: pathlib.Path, total_bytes: int, fsyncs: int) -> float:
    """Seconds to write `total_bytes` sequentially in `fsyncs` chunks, each followed by fsync."""
    fsyncs = max(1, int(fsyncs))
    chunk = max(1, total_bytes // fsyncs)
    block = os.urandom(min(chunk, 1 << 20))
    path = directory / "raw-write-baseline.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        written = 0
        while written < total_bytes:
            this = min(chunk, total_bytes - written)
            left = this
            while left > 0:
                n = os.write(fd, block[: min(left, len(block))])
                left -= n
            written += this
            os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def median_time(fn, runs: int) -> float:
    fn()  # warm-up: caches, footers, indexes
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def decode_bench(quick: bool) -> list:
    args = [str(RELEASE / "decode-bench"), "--json"] + (["--requests", "60", "--rounds", "5"] if quick else [])
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


# Per workload: the route of the trace-search query and the two words of the full-text query,
# chosen from what that workload's services and logs really contain.
WORKLOADS = {
    "synthetic": {"route": "/cart", "words": ("talking", "db")},
    "demo": {"route": "/checkout", "words": ("card", "declined")},
}
WORKLOAD = "synthetic"
ROUTE = WORKLOADS[WORKLOAD]["route"]
W1, W2 = WORKLOADS[WORKLOAD]["words"]


def ingest(server: Server, spans: int, connections: int) -> dict:
    cpu0 = server.cpu_seconds()
    out = subprocess.run(
        [
            str(RELEASE / "oxeye-loadgen"), "--endpoint", f"http://127.0.0.1:{server.grpc}",
            "--protocol", "grpc", "--count", str(spans), "--duration", "3600s",
            "--connections", str(connections), "--batch-spans", "2000", "--workload", WORKLOAD, "--json",
        ],
        check=True, capture_output=True, text=True,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    summary["oxeye_cpu_seconds"] = server.cpu_seconds() - cpu0
    return summary


def segment_files(server: Server, table: str) -> list:
    rows = server.sql(f"SELECT data_path FROM system.segments WHERE table_name = '{table}'")
    return [str(server.data_dir / "objects" / r[0]) for r in rows]


def storage(server: Server) -> dict:
    rows = server.sql(
        "SELECT table_name, sum(rows), sum(data_bytes), sum(index_bytes), count(*) FROM system.segments GROUP BY 1"
    )
    return {r[0]: {"rows": r[1], "data_bytes": r[2], "index_bytes": r[3], "segments": r[4]} for r in rows}


def ts_literal(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S") + f".{(ns % 1_000_000_000) // 1000:06d}"


def probe_traces(server: Server) -> tuple:
    """A trace id from spans and one from logs for the lookups (fixed by min(), because a
    parallel scan returns rows in no particular order)."""
    trace = server.sql("SELECT min(trace_id) FROM spans WHERE parent_span_id IS NULL")[0][0]
    log_trace = server.sql("SELECT min(trace_id) FROM logs WHERE trace_id IS NOT NULL")[0][0]
    return trace, log_trace


def queries(server: Server, trace: str, log_trace: str) -> list:
    """The query set, each as (name, oxeye SQL, DuckDB SQL, chDB SQL)."""
    hi = server.sql("SELECT CAST(max(start_time) AS BIGINT) FROM spans")[0][0]
    lo = hi - 3600 * 1_000_000_000
    since = ts_literal(lo)
    t_ox = f"TIMESTAMP '{since}Z'"
    t_duck = f"TIMESTAMPTZ '{since}+00'"
    t_ch = f"toDateTime64('{since}', 9, 'UTC')"
    spans_ch = "spans"
    return [
        ("trace by id (no time range)",
         f"SELECT span_id, name, duration_ns FROM spans WHERE trace_id = '{trace}'",
         f"SELECT span_id, name, duration_ns FROM spans WHERE trace_id = from_hex('{trace}')",
         f"SELECT span_id, name, duration_ns FROM {spans_ch} WHERE trace_id = unhex('{trace}')"),
        ("trace search: service + attribute + min duration",
         f"SELECT trace_id, max(duration_ns) FROM spans WHERE service_name = 'checkout' AND attributes['http.route'] = '{ROUTE}' AND duration_ns > 1000000 GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
         f"SELECT trace_id, max(duration_ns) FROM spans WHERE service_name = 'checkout' AND attributes['http.route'] = '{ROUTE}' AND duration_ns > 1000000 GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
         f"SELECT trace_id, max(duration_ns) FROM {spans_ch} WHERE service_name = 'checkout' AND attributes['http.route'] = '{ROUTE}' AND duration_ns > 1000000 GROUP BY 1 ORDER BY 2 DESC LIMIT 20"),
        ("p99 latency by service over 1h",
         f"SELECT service_name, approx_percentile_cont(duration_ns, 0.99) FROM spans WHERE start_time >= {t_ox} GROUP BY 1",
         f"SELECT service_name, approx_quantile(duration_ns, 0.99) FROM spans WHERE start_time >= {t_duck} GROUP BY 1",
         f"SELECT service_name, quantile(0.99)(duration_ns) FROM {spans_ch} WHERE start_time >= {t_ch} GROUP BY 1"),
        ("error rate by operation",
         "SELECT name, avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) FROM spans GROUP BY 1",
         "SELECT name, avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) FROM spans GROUP BY 1",
         f"SELECT name, avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) FROM {spans_ch} GROUP BY 1"),
        ("top-10 attribute values",
         "SELECT attributes['http.route'] AS v, count(*) AS n FROM spans GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
         "SELECT attributes['http.route'] AS v, count(*) AS n FROM spans GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
         f"SELECT attributes['http.route'] AS v, count(*) AS n FROM {spans_ch} GROUP BY 1 ORDER BY 2 DESC LIMIT 10"),
        ("logs full-text search",
         f"SELECT count(*) FROM logs WHERE search(body, '{W1} AND {W2}')",
         f"SELECT count(*) FROM logs WHERE regexp_matches(body, '(?i)\\b{W1}\\b') AND regexp_matches(body, '(?i)\\b{W2}\\b')",
         f"SELECT count(*) FROM logs WHERE match(body, '(?i)\\\\b{W1}\\\\b') AND match(body, '(?i)\\\\b{W2}\\\\b')"),
        ("logs of one trace",
         f"SELECT time, body FROM logs WHERE trace_id = '{log_trace}'",
         f"SELECT time, body FROM logs WHERE trace_id = from_hex('{log_trace}')",
         f"SELECT time, body FROM logs WHERE trace_id = unhex('{log_trace}')"),
        ("metrics rate over 1h",
         f"SELECT service_name, (max(value) - min(value)) / 3600.0 FROM metrics WHERE name = 'http.server.request.count' AND time >= {t_ox} GROUP BY 1",
         f"SELECT service_name, (max(value) - min(value)) / 3600.0 FROM metrics WHERE name = 'http.server.request.count' AND time >= {t_duck} GROUP BY 1",
         f"SELECT service_name, (max(value) - min(value)) / 3600.0 FROM metrics WHERE name = 'http.server.request.count' AND time >= {t_ch} GROUP BY 1"),
    ]


def scan_twins(trace: str, log_trace: str) -> dict:
    """For the index-backed queries, the same question asked so the index cannot answer it: the
    predicate wraps the column in a function, so oxeye reads the whole column (still in its own
    parallel, late-materialising scan). This is the full scan the index replaces."""
    return {
        "trace by id (no time range)":
            f"SELECT span_id, name, duration_ns FROM spans WHERE lower(trace_id) = '{trace}'",
        "logs full-text search":
            f"SELECT count(*) FROM logs WHERE regexp_like(body, '(?i)\\b{W1}\\b') AND regexp_like(body, '(?i)\\b{W2}\\b')",
        "logs of one trace":
            f"SELECT time, body FROM logs WHERE lower(trace_id) = '{log_trace}'",
    }


def run_queries(server: Server, runs: int) -> list:
    files = {t: segment_files(server, t) for t in ("spans", "logs", "metrics")}
    duck = duckdb.connect()
    duck.execute("SET threads = 2")
    for t, fs in files.items():
        duck.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet({fs!r})")
    ch = chdb.session.Session()
    for t, fs in files.items():
        ch.query(f"CREATE OR REPLACE VIEW {t} AS " + " UNION ALL ".join(f"SELECT * FROM file('{f}', Parquet)" for f in fs))
    ch.query("SET max_threads = 2")
    results = []
    trace, log_trace = probe_traces(server)
    twins = scan_twins(trace, log_trace)
    for name, ox_sql, duck_sql, ch_sql in queries(server, trace, log_trace):
        ox_rows = server.sql(ox_sql)
        duck_rows = duck.execute(duck_sql).fetchall()
        ch_rows = ch.query(ch_sql, "JSONCompact")
        ch_count = len(json.loads(str(ch_rows))["data"]) if str(ch_rows).strip() else 0
        entry = {
            "query": name,
            "rows": {"oxeye": len(ox_rows), "duckdb": len(duck_rows), "chdb": ch_count},
            "oxeye_s": median_time(lambda: server.sql(ox_sql), runs),
            "oxeye_server_ms": server.server_ms(ox_sql, runs),
            "duckdb_s": median_time(lambda: duck.execute(duck_sql).fetchall(), runs),
            "chdb_s": median_time(lambda: ch.query(ch_sql, "JSONCompact"), runs),
        }
        scan_sql = twins.get(name)
        if scan_sql:
            scan_rows = server.sql(scan_sql)
            if len(scan_rows) != len(ox_rows) or (name.startswith("logs full-text") and scan_rows != ox_rows):
                raise SystemExit(f"{name}: the scan answers {scan_rows[:3]} but the index answers {ox_rows[:3]}")
            entry["oxeye_scan_s"] = median_time(lambda: server.sql(scan_sql), runs)
        if name.startswith("logs full-text"):
            entry["answers"] = {"oxeye": ox_rows[0][0], "duckdb": duck_rows[0][0]}
        results.append(entry)
        print(f"    {name:<52} oxeye {entry['oxeye_s'] * 1000:9.1f} ms (server {entry['oxeye_server_ms']:.1f})   duckdb {entry['duckdb_s'] * 1000:9.1f} ms   chdb {entry['chdb_s'] * 1000:9.1f} ms   rows {entry['rows']}" + (f"   (oxeye without index {entry['oxeye_scan_s'] * 1000:.1f} ms)" if "oxeye_scan_s" in entry else ""), flush=True)
    return results


def run_size(spans: int, args) -> dict:
    print(f"\n== {human(spans)} spans", flush=True)
    base = pathlib.Path(tempfile.mkdtemp(prefix="oxeye-bench-", dir=args.work_dir))
    server = Server(base / "data", "--compaction-target-rows", "4000000")
    try:
        t0 = time.perf_counter()
        load = ingest(server, spans, args.connections)
        ingest_s = time.perf_counter() - t0
        wal_bytes = server.metric("oxeye_store_wal_bytes_total")
        fsyncs = server.metric("oxeye_store_wal_fsyncs_total")
        raw_s = raw_sequential_write(base, int(wal_bytes), int(fsyncs))
        print(f"  ingest: {load['spans_per_second']:,.0f} spans/s, {load['logs_per_second']:,.0f} logs/s, "
              f"{load['points_per_second']:,.0f} points/s; WAL {wal_bytes / 1e6:,.0f} MB in {int(fsyncs)} fsyncs; "
              f"raw write of the same: {raw_s:.2f}s", flush=True)
        t1 = time.perf_counter()
        server.post("/api/v1/admin/flush")
        merges = server.post("/api/v1/admin/compact")["merges"]
        settle_s = time.perf_counter() - t1
        store = storage(server)
        print(f"  flush + compaction: {settle_s:.1f}s, {merges} merges; storage: "
              + ", ".join(f"{t} {v['segments']} segs" for t, v in store.items()), flush=True)
        q = run_queries(server, args.runs)
        # What every oxeye figure includes and DuckDB's in-process calls do not: an HTTP
        # round trip from this Python client, with planning and JSON for a trivial query.
        roundtrip_s = median_time(lambda: server.sql("SELECT 1"), max(args.runs, 5) * 4)
        return {
            "roundtrip_s": roundtrip_s,
            "spans": spans,
            "ingest": load,
            "ingest_seconds": ingest_s,
            "wal_bytes": wal_bytes,
            "wal_fsyncs": fsyncs,
            "raw_write_seconds": raw_s,
            "peak_rss_bytes": server.peak_rss_bytes(),
            "flush_compact_seconds": settle_s,
            "storage": store,
            "queries": q,
        }
    finally:
        server.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(base)], check=False)


def report(decode: list, sizes: list) -> str:
    out = []
    out.append("### OTLP decode + convert to Arrow (per item), against plain prost decode\n")
    out.append("| signal | items | prost decode/s | decode + convert/s | cost ratio |\n|---|---|---|---|---|")
    for d in decode:
        out.append(f"| {d['signal']} | {d['items']:,} | {d['decode_items_per_s']:,.0f} | {d['decode_convert_items_per_s']:,.0f} | {d['ratio']:.2f}x |")
    out.append("\n### Ingest (load generator -> oxeye serve over OTLP/gRPC, WAL fsync on)\n")
    out.append("| spans | spans/s | logs/s | points/s | oxeye CPU s per 1M spans | peak RSS | ack p99 | WAL MB/s | raw write MB/s (same bytes, same fsyncs) | WAL vs raw |\n|---|---|---|---|---|---|---|---|---|---|")
    for s in sizes:
        ld = s["ingest"]
        wal_mbs = s["wal_bytes"] / 1e6 / s["ingest_seconds"]
        raw_mbs = s["wal_bytes"] / 1e6 / max(s["raw_write_seconds"], 1e-9)
        out.append(
            f"| {human(s['spans'])} | {ld['spans_per_second']:,.0f} | {ld['logs_per_second']:,.0f} | {ld['points_per_second']:,.0f} "
            f"| {ld['oxeye_cpu_seconds'] / (ld['spans_acked'] / 1e6):.1f} | {s['peak_rss_bytes'] / 2**20:,.0f} MiB "
            f"| {ld['latency_ms']['p99']:.1f} ms | {wal_mbs:,.0f} | {raw_mbs:,.0f} | {wal_mbs / raw_mbs:.2f}x |"
        )
    out.append("\n### Bytes on disk after flush and compaction (Parquet + index)\n")
    out.append("| spans | bytes/span | bytes/log line | bytes/metric point | spans: OTLP protobuf bytes / stored bytes | logs: OTLP / stored |\n|---|---|---|---|---|---|")
    for s in sizes:
        st, ld = s["storage"], s["ingest"]
        def per(t):
            v = st.get(t)
            return (v["data_bytes"] + v["index_bytes"]) / v["rows"] if v and v["rows"] else float("nan")
        def total(t):
            v = st.get(t)
            return (v["data_bytes"] + v["index_bytes"]) if v else 0
        points = sum(st.get(t, {}).get("rows", 0) for t in ("metrics", "histograms"))
        point_bytes = total("metrics") + total("histograms")
        out.append(
            f"| {human(s['spans'])} | {per('spans'):.1f} | {per('logs'):.1f} | {point_bytes / points if points else float('nan'):.1f} "
            f"| {ld['trace_request_bytes'] / max(total('spans'), 1):.1f}x | {ld['log_request_bytes'] / max(total('logs'), 1):.1f}x |"
        )
    out.append("\n### Queries: oxeye against DuckDB and chDB on the same Parquet files (median of the runs)\n")
    header = "| query | " + " | ".join(f"{human(s['spans'])}: oxeye (server) / DuckDB / chDB (ms) | vs DuckDB" for s in sizes) + " |"
    out.append(header)
    out.append("|---|" + "---|---|" * len(sizes))
    for i, q in enumerate(sizes[0]["queries"]):
        cells = []
        for s in sizes:
            e = s["queries"][i]
            server = f" ({e['oxeye_server_ms']:,.1f})" if "oxeye_server_ms" in e else ""
            cells.append(f"{e['oxeye_s'] * 1000:,.1f}{server} / {e['duckdb_s'] * 1000:,.1f} / {e['chdb_s'] * 1000:,.1f}")
            cells.append(f"{e['duckdb_s'] / e['oxeye_s']:.1f}x faster" if e["oxeye_s"] <= e["duckdb_s"] else f"{e['oxeye_s'] / e['duckdb_s']:.1f}x slower")
        out.append(f"| {q['query']} | " + " | ".join(cells) + " |")
    out.append("\noxeye's times are HTTP round trips from the Python client (a keep-alive `http.client` "
               "connection); in brackets, the server's own time (`elapsed_ms`: planning, execution, JSON). "
               "DuckDB and chDB run in-process; \"vs DuckDB\" compares the round trip. "
               "The round trip of `SELECT 1` in the same run: "
               + ", ".join(f"{human(s['spans'])}: {s['roundtrip_s'] * 1000:.2f} ms" for s in sizes if "roundtrip_s" in s) + ".")
    out.append("\n### Index against the full scan it replaces, inside oxeye (same data, same run)\n")
    out.append("| query | " + " | ".join(f"{human(s['spans'])}: index / scan (ms) | speed-up" for s in sizes) + " |")
    out.append("|---|" + "---|---|" * len(sizes))
    for i, q in enumerate(sizes[0]["queries"]):
        if "oxeye_scan_s" not in q:
            continue
        cells = []
        for s in sizes:
            e = s["queries"][i]
            cells.append(f"{e['oxeye_s'] * 1000:,.1f} / {e['oxeye_scan_s'] * 1000:,.1f}")
            cells.append(f"{e['oxeye_scan_s'] / e['oxeye_s']:.0f}x")
        out.append(f"| {q['query']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1M spans, fewer repetitions")
    p.add_argument("--sizes", default="1M,10M", help="span counts, e.g. 1M,10M,100M")
    p.add_argument("--runs", type=int, default=5, help="timed runs per query (median)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--work-dir", default=str(ROOT / "target-bench"), help="where data directories go (needs disk)")
    p.add_argument("--json", help="also write raw results here")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="synthetic",
                   help="what the load generator sends: its synthetic shapes, or the demo shop's traffic")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.runs = "1M", 3
    global WORKLOAD, ROUTE, W1, W2
    WORKLOAD = args.workload
    ROUTE = WORKLOADS[WORKLOAD]["route"]
    W1, W2 = WORKLOADS[WORKLOAD]["words"]
    pathlib.Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"oxeye benchmark suite ({WORKLOAD} workload), {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} cores, duckdb {duckdb.__version__}, chdb {chdb.__version__}", flush=True)
    decode = decode_bench(args.quick)
    sizes = [run_size(parse_size(s), args) for s in args.sizes.split(",")]
    text = report(decode, sizes)
    print("\n" + text)
    print(f"\n(suite took {time.time() - started:.0f}s)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"decode": decode, "sizes": sizes}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
