"""Soak: a release `oxeye serve` under half its maximum ingest rate for a long time (30 minutes by
default) while queries run, with its resident memory (RSS) and data directory size sampled every
10 s. Passes when RSS plateaus: the highest RSS of the last third of the run is at most 10% (or
64 MiB) above the highest of the middle third, and no query failed.

    bash examples/bench/soak.sh                 # 30 minutes
    bash examples/bench/soak.sh --minutes 5     # shorter

The maximum rate is measured first, in the same run (the load generator sending as fast as
acknowledgements return for 20 s), so the figure fits this machine as it is now. Retention is
short (5 minutes) so the disk plateaus too: retention, compaction and flushes all run during
the soak, as they do in production.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/oxeye-target")) / "release"

QUERIES = [
    ("trace search", "GET", "/api/v1/traces", {"lookback": "5m", "limit": "20"}),
    ("services", "GET", "/api/v1/services", None),
    ("p99 by service", "SQL",
     "SELECT service_name, approx_percentile_cont(duration_ns, 0.99) FROM spans "
     "WHERE start_time >= now() - INTERVAL '5 minutes' GROUP BY 1", None),
    ("error rate by operation", "SQL",
     "SELECT name, avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) FROM spans "
     "WHERE start_time >= now() - INTERVAL '5 minutes' GROUP BY 1", None),
    ("log search", "GET", "/api/v1/logs", {"query": "error", "lookback": "5m", "limit": "50"}),
    ("RED", "GET", "/api/v1/red", {"lookback": "5m"}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: pathlib.Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass  # removed by compaction or retention while walking
    return total


def loadgen(endpoint: str, rate: int, duration: str, log: pathlib.Path) -> subprocess.Popen:
    # Its complaints go to a file: a pipe nobody reads until the end would fill and stall it.
    return subprocess.Popen(
        [str(RELEASE / "oxeye-loadgen"), "--endpoint", endpoint, "--rate", str(rate),
         "--duration", duration, "--connections", "4", "--json"],
        stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
    )


def summary(proc: subprocess.Popen, log: pathlib.Path) -> dict:
    out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:  # a non-zero exit with a summary only means some requests failed
        raise RuntimeError(f"oxeye-loadgen failed ({proc.returncode}): {log.read_text()[-2000:]}")
    return json.loads(lines[-1])


class QueryLoop(threading.Thread):
    """Runs the query set in a loop, one query a second, counting failures and latencies."""

    def __init__(self, api: str):
        super().__init__(daemon=True)
        self.api = api
        self.stop = threading.Event()
        self.latencies: dict[str, list[float]] = {name: [] for name, *_ in QUERIES}
        self.failures: list[str] = []

    def run(self) -> None:
        session = requests.Session()
        i = 0
        while not self.stop.is_set():
            name, kind, what, params = QUERIES[i % len(QUERIES)]
            i += 1
            started = time.perf_counter()
            try:
                if kind == "SQL":
                    r = session.post(f"{self.api}/api/v1/sql", json={"sql": what}, timeout=60)
                else:
                    r = session.get(f"{self.api}{what}", params=params, timeout=60)
                if r.status_code != 200:
                    self.failures.append(f"{name}: HTTP {r.status_code}: {r.text[:200]}")
            except requests.RequestException as e:
                self.failures.append(f"{name}: {e}")
            self.latencies[name].append(time.perf_counter() - started)
            self.stop.wait(1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--json", help="write the samples and summary here")
    p.add_argument("--work-dir", default=str(ROOT / "target-bench"))
    args = p.parse_args()

    pathlib.Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    base = pathlib.Path(tempfile.mkdtemp(prefix="oxeye-soak-", dir=args.work_dir))
    data = base / "data"
    grpc, otlp_http, api_port, pg = (free_port() for _ in range(4))
    api = f"http://127.0.0.1:{api_port}"
    log = open(base / "oxeye.log", "w")
    server = subprocess.Popen(
        [str(RELEASE / "oxeye"), "serve", "--data-dir", str(data),
         "--otlp-grpc-listen", f"127.0.0.1:{grpc}", "--otlp-http-listen", f"127.0.0.1:{otlp_http}",
         "--http-listen", f"127.0.0.1:{api_port}", "--pg-listen", f"127.0.0.1:{pg}",
         "--retention", "traces=5m,logs=5m,metrics=5m", "--maintenance-interval", "30s"],
        stdout=log, stderr=log,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{api}/readyz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError(f"oxeye did not start; see {base / 'oxeye.log'}")
            time.sleep(0.2)

        endpoint = f"http://127.0.0.1:{grpc}"
        print("measuring the maximum ingest rate (20 s) ...", flush=True)
        peak_log = base / "loadgen-peak.log"
        peak = summary(loadgen(endpoint, 0, "20s", peak_log), peak_log)
        max_rate = peak["spans_per_second"]
        rate = int(max_rate / 2)
        print(f"maximum {max_rate:,.0f} spans/s; soaking at {rate:,} spans/s for {args.minutes} min", flush=True)

        seconds = int(args.minutes * 60)
        load_log = base / "loadgen-soak.log"
        load = loadgen(endpoint, rate, f"{seconds}s", load_log)
        queries = QueryLoop(api)
        queries.start()
        samples = []
        started = time.time()
        while load.poll() is None:
            t = time.time() - started
            samples.append({"t_s": round(t), "rss_bytes": rss_bytes(server.pid), "data_bytes": dir_bytes(data)})
            if len(samples) % 6 == 1:
                s = samples[-1]
                print(f"  {s['t_s']:>5} s  RSS {s['rss_bytes'] / 2**20:8.1f} MiB  data {s['data_bytes'] / 2**20:8.1f} MiB",
                      flush=True)
            if server.poll() is not None:
                raise RuntimeError(f"oxeye exited during the soak; see {base / 'oxeye.log'}")
            try:
                load.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        queries.stop.set()
        queries.join(timeout=60)
        sent = summary(load, load_log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    third = max(1, len(samples) // 3)
    middle = max(s["rss_bytes"] for s in samples[third:2 * third] or samples)
    last = max(s["rss_bytes"] for s in samples[2 * third:] or samples)
    growth = last - middle
    plateau = growth <= max(0.10 * middle, 64 * 2**20)
    result = {
        "minutes": args.minutes,
        "max_spans_per_s": max_rate,
        "soak_spans_per_s": rate,
        "achieved_spans_per_s": sent["spans_per_second"],
        "spans_acked": sent["spans_acked"],
        "failed_requests": sent["failed_requests"],
        "rss_max_middle_third_bytes": middle,
        "rss_max_last_third_bytes": last,
        "rss_plateau": plateau,
        "data_bytes_last": samples[-1]["data_bytes"] if samples else None,
        "queries": {name: {"runs": len(v), "p50_ms": round(statistics.median(v) * 1000, 1) if v else None,
                           "max_ms": round(max(v) * 1000, 1) if v else None}
                    for name, v in queries.latencies.items()},
        "query_failures": queries.failures[:20],
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    shutil.rmtree(base, ignore_errors=True)
    ok = plateau and not queries.failures
    print("PASS" if ok else "FAIL: " + ("RSS kept growing" if not plateau else f"{len(queries.failures)} queries failed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
