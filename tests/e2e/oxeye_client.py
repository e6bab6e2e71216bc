"""Helpers shared by the end-to-end tests: running an `oxeye serve` process, talking to its
HTTP API, polling with deadlines, and building OTLP requests with the `opentelemetry.proto`
classes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import requests
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

DEFAULT_BINARY = Path.home() / ".cache" / "oxeye-target" / "debug" / "oxeye"

T = TypeVar("T")


def oxeye_binary() -> Path:
    return Path(os.environ.get("OXEYE_BIN", DEFAULT_BINARY))


# --------------------------------------------------------------------------------------------
# Polling


class DeadlineExceeded(AssertionError):
    pass


def wait_until(
    probe: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Calls `probe` until it returns a truthy value and returns that value. Fails with the last
    value (or exception) seen once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except (requests.ConnectionError, requests.Timeout) as e:
            last = e
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"{what} not reached within {timeout}s; last: {last!r}")
        time.sleep(interval)


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (bind to port 0, all held open at once)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# The oxeye process


class SqlError(AssertionError):
    def __init__(self, status: int, body: Any):
        super().__init__(f"SQL failed with HTTP {status}: {body}")
        self.status = status
        self.body = body


class Oxeye:
    """One `oxeye serve` process on fixed ports and a data directory; it can be stopped, killed
    and started again on the same ports and directory."""

    READY_TIMEOUT = 30.0
    STOP_TIMEOUT = 30.0

    def __init__(self, data_dir: Path, log_path: Path, flags: dict[str, Any] | None = None):
        self.binary = oxeye_binary()
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.flags = dict(flags or {})
        grpc, otlp_http, api, pg = free_ports(4)
        self.grpc_addr = f"127.0.0.1:{grpc}"
        self.otlp_http_addr = f"127.0.0.1:{otlp_http}"
        self.api_addr = f"127.0.0.1:{api}"
        self.pg_addr = f"127.0.0.1:{pg}"
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()

    # Endpoints ------------------------------------------------------------------------------

    @property
    def grpc_endpoint(self) -> str:
        """For the OTLP gRPC exporters (`endpoint=`, with `insecure=True`)."""
        return f"http://{self.grpc_addr}"

    @property
    def otlp_http(self) -> str:
        """Base URL of OTLP/HTTP; append `/v1/traces` etc."""
        return f"http://{self.otlp_http_addr}"

    @property
    def api(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.api_addr}"

    # Lifecycle ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--otlp-grpc-listen",
            self.grpc_addr,
            "--otlp-http-listen",
            self.otlp_http_addr,
            "--http-listen",
            self.api_addr,
            "--pg-listen",
            self.pg_addr,
        ]
        for name, value in self.flags.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        return cmd

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "oxeye is already running"
        if not self.binary.exists():
            raise FileNotFoundError(f"oxeye binary not found at {self.binary} (set OXEYE_BIN)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OXEYE_")}
        env["NO_COLOR"] = "1"
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"oxeye exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                return self.session.get(f"{self.api}/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout=self.READY_TIMEOUT, what="oxeye /readyz")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM; asserts a clean exit (code 0) within STOP_TIMEOUT seconds."""
        assert self.running, "oxeye is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"oxeye did not exit within {self.STOP_TIMEOUT}s of SIGTERM") from None
        self.session.close()
        assert code == 0, f"oxeye exited with {code} after SIGTERM:\n{self.log_tail()}"
        return code

    def kill9(self) -> None:
        assert self.running, "oxeye is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.session.close()

    def cleanup(self) -> str | None:
        """Teardown: whatever state the process is in, it is gone afterwards. Returns a problem
        with the shutdown (no exit within STOP_TIMEOUT, or a non-zero exit code), if any."""
        problem = None
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=self.STOP_TIMEOUT)
                if code != 0:
                    problem = f"exited with {code} after SIGTERM"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problem = f"did not exit within {self.STOP_TIMEOUT}s of SIGTERM"
        self.session.close()
        return problem

    # Logs -----------------------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_of_last_start(self) -> str:
        """The log of the current (or last) process only."""
        return self.log().rpartition("===== start:")[2]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # HTTP API -------------------------------------------------------------------------------

    def sql_response(self, query: str, fmt: str | None = None) -> requests.Response:
        params = {"format": fmt} if fmt else None
        return self.session.post(f"{self.api}/api/v1/sql", json={"sql": query}, params=params, timeout=30)

    def sql(self, query: str) -> tuple[list[str], list[list[Any]]]:
        """Runs SQL; returns (column names, rows)."""
        r = self.sql_response(query)
        if r.status_code != 200:
            raise SqlError(r.status_code, r.text)
        body = r.json()
        assert not body["truncated"], f"result truncated: {query}"
        return [c["name"] for c in body["columns"]], body["rows"]

    def sql_dicts(self, query: str) -> list[dict[str, Any]]:
        columns, rows = self.sql(query)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def sql_value(self, query: str) -> Any:
        _, rows = self.sql(query)
        assert len(rows) == 1 and len(rows[0]) == 1, f"expected one value from {query!r}, got {rows}"
        return rows[0][0]

    def wait_rows(self, query: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Polls `query` until it returns `n` rows (as dicts); fails at once if more appear."""

        def probe():
            rows = self.sql_dicts(query)
            assert len(rows) <= n, f"more rows than expected ({len(rows)} > {n}): {rows}"
            return rows if len(rows) == n else None

        return wait_until(probe, timeout=timeout, what=f"{n} rows from {query!r}")

    def wait_span_count(self, where: str, n: int, timeout: float = 30) -> None:
        """Polls until exactly `n` spans, all distinct, match `where`."""
        wait_until(lambda: self.span_count(where) == (n, n), timeout=timeout, what=f"{n} spans where {where}")

    def wait_trace(self, trace_id: str, span_count: int, timeout: float = 30) -> dict:
        """Polls the trace API until the trace has `span_count` spans; returns it."""

        def probe():
            t = self.trace(trace_id)
            return t if t and t["span_count"] == span_count else None

        return wait_until(probe, timeout=timeout, what=f"trace {trace_id} with {span_count} spans")

    def trace(self, trace_id: str, fmt: str | None = None) -> dict | None:
        """The trace API's JSON, or None on 404."""
        params = {"format": fmt} if fmt else None
        r = self.session.get(f"{self.api}/api/v1/traces/{trace_id}", params=params, timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def metrics_text(self) -> str:
        r = self.session.get(f"{self.api}/metrics", timeout=10)
        r.raise_for_status()
        return r.text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        return metric_value(self.metrics_text(), name, **labels)

    # OTLP/HTTP ------------------------------------------------------------------------------

    def post_otlp(
        self,
        signal_path: str,
        body: bytes,
        content_type: str = "application/x-protobuf",
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        h = {"Content-Type": content_type, **(headers or {})}
        return self.session.post(f"{self.otlp_http}/v1/{signal_path}", data=body, headers=h, timeout=30)

    def export(self, request) -> None:
        """Sends an Export*ServiceRequest over OTLP/HTTP protobuf and asserts full acceptance."""
        path, response_type = EXPORTS[type(request)]
        r = self.post_otlp(path, request.SerializeToString())
        assert r.status_code == 200, f"HTTP {r.status_code}: {r.content!r}"
        response = response_type.FromString(r.content)
        assert not response.partial_success.ListFields(), response

    def span_count(self, where: str = "TRUE") -> tuple[int, int]:
        """(count(*), count(DISTINCT span_id)) of spans matching `where`."""
        _, rows = self.sql(f"SELECT count(*), count(DISTINCT span_id) FROM spans WHERE {where}")
        return rows[0][0], rows[0][1]

    def wal_files(self) -> list[Path]:
        return sorted((self.data_dir / "wal").glob("shard-*/*.wal"))

    def segment_files(self, table: str = "spans") -> list[Path]:
        return sorted((self.data_dir / "objects" / "segments" / table).glob("*.parquet"))


EXPORTS = {
    trace_service_pb2.ExportTraceServiceRequest: ("traces", trace_service_pb2.ExportTraceServiceResponse),
    logs_service_pb2.ExportLogsServiceRequest: ("logs", logs_service_pb2.ExportLogsServiceResponse),
    metrics_service_pb2.ExportMetricsServiceRequest: (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# --------------------------------------------------------------------------------------------
# OTLP protobuf builders


def any_value(v: Any) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if isinstance(v, str):
        return common_pb2.AnyValue(string_value=v)
    if isinstance(v, bytes):
        return common_pb2.AnyValue(bytes_value=v)
    if isinstance(v, (list, tuple)):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(x) for x in v]))
    raise TypeError(type(v))


def key_values(attrs: dict[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def random_trace_id() -> bytes:
    b = os.urandom(16)
    return b if any(b) else random_trace_id()


def random_span_id() -> bytes:
    b = os.urandom(8)
    return b if any(b) else random_span_id()


def span(
    trace_id: bytes,
    span_id: bytes | None = None,
    name: str = "op",
    start_ns: int | None = None,
    duration_ns: int = 1_000_000,
    **fields: Any,
) -> trace_pb2.Span:
    start_ns = start_ns if start_ns is not None else time.time_ns()
    attrs = fields.pop("attributes", {})
    return trace_pb2.Span(
        trace_id=trace_id,
        span_id=span_id or random_span_id(),
        name=name,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + duration_ns,
        attributes=key_values(attrs),
        **fields,
    )


def service_resource(service: str, extra: dict[str, Any] | None = None) -> resource_pb2.Resource:
    return resource_pb2.Resource(attributes=key_values({"service.name": service, **(extra or {})}))


def trace_request(
    spans: Iterable[trace_pb2.Span],
    service: str = "e2e",
    scope: str = "e2e-scope",
    resource: dict[str, Any] | None = None,
) -> trace_service_pb2.ExportTraceServiceRequest:
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=service_resource(service, resource),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name=scope, version="1.0"),
                        spans=list(spans),
                    )
                ],
            )
        ]
    )


def simple_trace_request(n_spans: int = 1, service: str = "e2e", **span_fields: Any):
    """A request with `n_spans` spans of one new trace; returns (request, trace id hex)."""
    tid = random_trace_id()
    req = trace_request([span(tid, name=f"span-{i}", **span_fields) for i in range(n_spans)], service=service)
    return req, tid.hex()


def logs_request(
    bodies: Iterable[str], service: str = "e2e", **fields: Any
) -> logs_service_pb2.ExportLogsServiceRequest:
    now = time.time_ns()
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=now + i, observed_time_unix_nano=now + i, body=any_value(b), **fields
        )
        for i, b in enumerate(bodies)
    ]
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=service_resource(service),
                scope_logs=[
                    logs_pb2.ScopeLogs(scope=common_pb2.InstrumentationScope(name="e2e"), log_records=records)
                ],
            )
        ]
    )


def gauge_request(
    name: str, values: Iterable[float], service: str = "e2e"
) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """One gauge point per value, each with its own `i` attribute."""
    now = time.time_ns()
    points = [
        metrics_pb2.NumberDataPoint(time_unix_nano=now, as_double=v, attributes=key_values({"i": i}))
        for i, v in enumerate(values)
    ]
    metric = metrics_pb2.Metric(name=name, gauge=metrics_pb2.Gauge(data_points=points))
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=service_resource(service),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(
                        scope=common_pb2.InstrumentationScope(name="e2e"), metrics=[metric]
                    )
                ],
            )
        ]
    )
