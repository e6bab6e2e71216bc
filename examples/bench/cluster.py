"""Ingest and query figures of a cluster with 1 shard, with 3 shards, and with 3 shards of 2
replicas each, on this machine.

Each layout is started with examples/cluster/run.sh (PostgreSQL metastore, moto S3, store
nodes, one collector, a query node, all on 127.0.0.1), filled by oxeye-loadgen through the
collector's OTLP/gRPC port, flushed, and queried through the query node. Figures per node and
in total:

- client rate: spans/s the collector acknowledged (its persistent queue is synced first);
- delivered rate: spans/s until every store node had the rows in its WAL (queues drained);
- CPU seconds per million spans of each store node and of the collector;
- rows each store node took in, and query times (median of the runs) on the query node, which
  reads every shard's segments from S3 through the shared catalog.

All processes share this machine's cores, so a 3-shard layout on one machine shows the cost
of the extra hops and processes, not the gain of three machines; the per-node figures are
the inputs of the capacity model in examples/cluster/README.md.

Usage: .venv-bench/bin/python examples/bench/cluster.py [--spans 1M] [--runs 5] [--json FILE]
(run by `bash examples/bench/cluster.sh`, which builds the release binaries first).
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/oxeye-target"))
RELEASE = TARGET / "release"
# (name, store nodes, shards led per node, replicas of each shard)
LAYOUTS = [
    ("1 shard (1 store node)", 1, 1, 1),
    ("3 shards (3 store nodes)", 3, 1, 1),
    ("3 shards x 2 replicas (3 store nodes, write quorum 2)", 3, 1, 2),
]


def free_base_port() -> int:
    """A base port with the 62 ports run.sh uses all free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 62 > 65535:
            continue
        ok = True
        for p in range(base, base + 62):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("no free range of 62 ports on 127.0.0.1")


def parse_count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def pids_with(fragment: str) -> list:
    out = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmd and "oxeye" in cmd:
            out.append(int(proc.name))
    return out


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in requests.get(url, timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def sql(base: str, query: str) -> list:
    r = requests.post(f"{base}/api/v1/sql", json={"sql": query}, timeout=600)
    if not r.ok:
        raise RuntimeError(f"{base}: {r.status_code}: {r.text[:300]}\n{query}")
    return r.json()["rows"]


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


class Cluster:
    def __init__(self, stores: int, shards: int, replication: int, work: pathlib.Path):
        self.stores, self.shards, self.work = stores, shards, work
        self.base = free_base_port()
        self.log = open(work.parent / f"{work.name}.log", "w")
        env = dict(os.environ)
        env.update({
            "BASE_PORT": str(self.base),
            "CLUSTER_DIR": str(work),
            "STORE_NODES": str(stores),
            "STORE_SHARDS": str(shards),
            "REPLICATION": str(replication),
            "COLLECTOR_NODES": "1",
            # Rows reach segments when the bench flushes, not in the middle of the ingest.
            "FLUSH_AGE": "3600s",
            "OXEYE_BIN": str(RELEASE / "oxeye"),
            "READY_TIMEOUT": "120",
        })
        self.proc = subprocess.Popen(
            ["bash", str(ROOT / "examples/cluster/run.sh")],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 240
        log_path = pathlib.Path(self.log.name)
        while "oxeye local cluster is up" not in log_path.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise SystemExit(f"the cluster did not start; see {log_path}")
            if time.time() > deadline:
                self.stop()
                raise SystemExit(f"the cluster was not up after 240s; see {log_path}")
            time.sleep(0.5)

    def store_http(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base + 10 * i}"

    @property
    def collector_grpc(self) -> str:
        return f"http://127.0.0.1:{self.base + 41}"

    @property
    def collector_http(self) -> str:
        return f"http://127.0.0.1:{self.base + 40}"

    @property
    def query_http(self) -> str:
        return f"http://127.0.0.1:{self.base + 60}"

    def pid(self, name: str) -> int:
        pids = pids_with(f"{self.work}/{name} ") or pids_with(f"{self.work}/{name}")
        if len(pids) != 1:
            raise SystemExit(f"expected one process for {name}, found {pids}")
        return pids[0]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def run_layout(
    name: str, stores: int, shards: int, replication: int, spans: int, runs: int, work_dir: pathlib.Path
) -> dict:
    print(f"\n== {name}", flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="oxeye-cluster-bench-", dir=work_dir)) / "cluster"
    cluster = Cluster(stores, shards, replication, work)
    try:
        nodes = {f"store-{i}": cluster.pid(f"store-{i}") for i in range(1, stores + 1)}
        nodes["collector-1"] = cluster.pid("collector-1")
        cpu0 = {n: cpu_seconds(p) for n, p in nodes.items()}
        t0 = time.perf_counter()
        out = subprocess.run(
            [
                str(RELEASE / "oxeye-loadgen"), "--endpoint", cluster.collector_grpc,
                "--protocol", "grpc", "--count", str(spans), "--duration", "3600s",
                "--connections", "4", "--batch-spans", "2000", "--workload", "synthetic", "--json",
            ],
            check=True, capture_output=True, text=True,
        )
        load = json.loads(out.stdout.strip().splitlines()[-1])
        # Delivered: the collector's queues are empty, so every replica has the rows.
        deadline = time.time() + 1800
        while metric(f"{cluster.collector_http}/metrics", "oxeye_collector_queue_records") > 0:
            if time.time() > deadline:
                raise SystemExit("the collector's queues did not drain within 30 minutes")
            time.sleep(0.2)
        delivered_s = time.perf_counter() - t0
        cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in nodes.items()}
        acked = load["spans_acked"]
        per_store_rows = {
            f"store-{i}": metric(f"{cluster.store_http(i)}/metrics", "oxeye_store_ingested_rows_total")
            for i in range(1, stores + 1)
        }
        print(f"  client: {load['spans_per_second']:,.0f} spans/s acknowledged; delivered to the stores in "
              f"{delivered_s:.1f}s ({acked / delivered_s:,.0f} spans/s)", flush=True)

        # Flush and compact, so that queries see settled segments (compactions running in the
        # background would replace segments under the query node's read cache mid-run).
        for i in range(1, stores + 1):
            requests.post(f"{cluster.store_http(i)}/api/v1/admin/flush", timeout=600).raise_for_status()
            requests.post(f"{cluster.store_http(i)}/api/v1/admin/compact", timeout=600).raise_for_status()
        # The query node takes in catalog commits every few seconds.
        deadline = time.time() + 120
        while sql(cluster.query_http, "SELECT count(*) FROM spans")[0][0] != acked:
            if time.time() > deadline:
                raise SystemExit("the query node does not count every acknowledged span")
            time.sleep(0.5)

        # ...and once the query node has taken in the compactions' commits too: its segment
        # list stays the same over more than one catalog refresh (every 5 s).
        deadline = time.time() + 120
        segments, since = None, time.time()
        while time.time() < deadline:
            now = sql(cluster.query_http, "SELECT count(*) FROM system.segments")[0][0]
            if now != segments:
                segments, since = now, time.time()
            elif time.time() - since > 6:
                break
            time.sleep(0.5)
        trace = sql(cluster.query_http, "SELECT min(trace_id) FROM spans WHERE parent_span_id IS NULL")[0][0]
        queries = [
            ("trace by id", f"SELECT span_id, name, duration_ns FROM spans WHERE trace_id = '{trace}'"),
            ("p99 latency by service", "SELECT service_name, approx_percentile_cont(duration_ns, 0.99) FROM spans GROUP BY 1"),
            ("error rate by operation", "SELECT name, avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) FROM spans GROUP BY 1"),
            ("top-10 attribute values", "SELECT attributes['http.route'] AS v, count(*) AS n FROM spans GROUP BY 1 ORDER BY 2 DESC LIMIT 10"),
        ]
        query_ms = {}
        for qname, q in queries:
            query_ms[qname] = {"query node": median_ms(lambda: sql(cluster.query_http, q), runs)}
            print(f"    {qname:<28} " + "  ".join(f"{k} {v:8.1f} ms" for k, v in query_ms[qname].items()), flush=True)
        result = {
            "layout": name,
            "stores": stores,
            "shards": stores * shards,
            "replication": replication,
            "spans": acked,
            "client_spans_per_second": load["spans_per_second"],
            "delivered_seconds": delivered_s,
            "cpu_seconds": cpu,
            "store_rows": per_store_rows,
            "segments": segments,
            "queries_ms": query_ms,
        }
    finally:
        cluster.stop()
    # Kept (with the cluster's log) only when the layout failed.
    shutil.rmtree(work.parent, ignore_errors=True)
    return result


def report(results: list) -> str:
    out = ["### Ingest through the collector (OTLP/gRPC, 4 connections, WAL fsync on every store node)\n",
           "| layout | spans | client spans/s (acknowledged) | delivered spans/s (in every replica's WAL) "
           "| per store node: rows ingested (spans + logs + points) | CPU s per 1M spans: collector / each store node |",
           "|---|---|---|---|---|---|"]
    for r in results:
        mspans = r["spans"] / 1e6
        stores = sorted(k for k in r["cpu_seconds"] if k.startswith("store-"))
        rows = ", ".join("%s %s" % (k, format(r["store_rows"][k], ",.0f")) for k in stores)
        store_cpu = ", ".join("%.1f" % (r["cpu_seconds"][k] / mspans) for k in stores)
        collector_cpu = r["cpu_seconds"]["collector-1"] / mspans
        delivered = r["spans"] / r["delivered_seconds"]
        out.append(
            f"| {r['layout']} | {r['spans']:,} | {r['client_spans_per_second']:,.0f} | {delivered:,.0f} "
            f"| {rows} | {collector_cpu:.1f} / {store_cpu} |"
        )
    out.append("\n### Queries through the query node (median ms, every shard's segments read from S3)\n")
    out.append("| query | " + " | ".join(r["layout"] for r in results) + " |")
    out.append("|---|" + "---|" * len(results))
    for q in results[0]["queries_ms"]:
        out.append(f"| {q} | " + " | ".join("%.1f" % r["queries_ms"][q]["query node"] for r in results) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", default="1M", help="spans to send per layout, e.g. 500K, 1M")
    p.add_argument("--runs", type=int, default=5, help="timed runs per query (median)")
    p.add_argument("--work-dir", default=str(ROOT / "target-bench"))
    p.add_argument("--json", help="also write raw results here")
    args = p.parse_args()
    work_dir = pathlib.Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = [run_layout(name, stores, shards, replication, parse_count(args.spans), args.runs, work_dir)
               for name, stores, shards, replication in LAYOUTS]
    print("\n" + report(results))
    print(f"\n(cluster bench took {time.time() - started:.0f}s)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
