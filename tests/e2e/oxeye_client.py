"""Helpers shared by the end-to-end tests: running an `oxeye serve` process, talking to its
HTTP API and PostgreSQL port, polling with deadlines, running `oxeye-loadgen`, setting up the
OpenTelemetry SDK against a server, and building OTLP requests with the `opentelemetry.proto`
classes."""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
PG_USER = "oxeye"
PG_DATABASE = "oxeye"

T = TypeVar("T")


def oxeye_binary() -> Path:
    return Path(os.environ.get("OXEYE_BIN", DEFAULT_BINARY))


def loadgen_binary() -> Path:
    """`oxeye-loadgen` (OXEYE_LOADGEN_BIN, default: beside the oxeye binary)."""
    return Path(os.environ.get("OXEYE_LOADGEN_BIN", oxeye_binary().parent / "oxeye-loadgen"))


def demo_binary() -> Path:
    """`oxeye-demo` (OXEYE_DEMO_BIN, default: beside the oxeye binary)."""
    return Path(os.environ.get("OXEYE_DEMO_BIN", oxeye_binary().parent / "oxeye-demo"))


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


_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?$")


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp with up to 9 fractional digits
    (`datetime` stops at microseconds); no offset means UTC."""
    m = _RFC3339.match(text)
    assert m, f"not an RFC 3339 timestamp: {text!r}"
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    seconds = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(sec)))
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * 1_000_000_000 + int((frac or "").ljust(9, "0"))


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
        self.flags = dict(flags or {})
        # `data_dir` among the flags puts the data somewhere else (a small disk, say).
        self.data_dir = Path(self.flags.pop("data_dir", data_dir))
        self.log_path = Path(log_path)
        # Not an oxeye flag: the CA this test's clients trust when oxeye speaks TLS.
        self.ca_file = self.flags.pop("client_ca_file", None)
        self.scheme = "https" if "tls_cert" in self.flags else "http"
        grpc, otlp_http, api, pg = free_ports(4)
        self.grpc_addr = f"127.0.0.1:{grpc}"
        self.otlp_http_addr = f"127.0.0.1:{otlp_http}"
        self.api_addr = f"127.0.0.1:{api}"
        self.pg_addr = f"127.0.0.1:{pg}"
        self.proc: subprocess.Popen | None = None
        self.session = self._new_session()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        if self.ca_file:
            session.verify = str(self.ca_file)
            # Else REQUESTS_CA_BUNDLE, where set, beats the session's own `verify`.
            session.trust_env = False
        return session

    # Endpoints ------------------------------------------------------------------------------

    @property
    def grpc_endpoint(self) -> str:
        """For the OTLP gRPC exporters (`endpoint=`, with `insecure=True` over plain text)."""
        return f"{self.scheme}://{self.grpc_addr}"

    @property
    def otlp_http(self) -> str:
        """Base URL of OTLP/HTTP; append `/v1/traces` etc."""
        return f"{self.scheme}://{self.otlp_http_addr}"

    @property
    def api(self) -> str:
        """Base URL of the HTTP API."""
        return f"{self.scheme}://{self.api_addr}"

    # Lifecycle ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """`oxeye serve ...`, or another role given as the flag `role` (e.g. `role="query"`)."""
        cmd = [
            str(self.binary),
            str(self.flags.get("role", "serve")),
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
            if name != "role":
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

    def restart(self) -> None:
        """`stop()` (SIGTERM, asserting a clean exit) then `start()` again: same ports, flags
        and data directory."""
        self.stop()
        self.start()

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

    def wait_metric(self, name: str, minimum: float, timeout: float = 60, **labels: str) -> float:
        """Polls /metrics until `name` (summed over samples with `labels`) is >= `minimum`."""
        return wait_until(
            lambda: (v := self.metric(name, **labels)) >= minimum and v,
            timeout=timeout,
            interval=0.2,
            what=f"{name}{labels} >= {minimum}",
        )

    def get(self, path: str, params: dict[str, Any] | None = None, timeout: float = 30) -> requests.Response:
        """GET on the HTTP API (`path` starts with `/`)."""
        return self.session.get(f"{self.api}{path}", params=params, timeout=timeout)

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET on the HTTP API; asserts 200 and a JSON content type, returns the body."""
        r = self.get(path, params)
        assert r.status_code == 200, f"GET {r.url}: HTTP {r.status_code}: {r.text[:2000]}"
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        return r.json()

    # PostgreSQL protocol --------------------------------------------------------------------

    @property
    def pg_host(self) -> str:
        return self.pg_addr.rpartition(":")[0]

    @property
    def pg_port(self) -> int:
        return int(self.pg_addr.rpartition(":")[2])

    def pg_connect(self, **kwargs: Any):
        """A psycopg 3 connection to the PostgreSQL port (user and database `oxeye` unless
        given; trusted on loopback unless the server has `--pg-password`)."""
        import psycopg

        params = {"user": PG_USER, "dbname": PG_DATABASE, "connect_timeout": 10}
        if self.ca_file:
            params.update(sslmode="verify-full", sslrootcert=str(self.ca_file))
        params.update(kwargs)
        return psycopg.connect(host=self.pg_host, port=self.pg_port, **params)

    def psql(
        self,
        *commands: str,
        check: bool = True,
        user: str = PG_USER,
        password: str | None = None,
        timeout: float = 60,
        ssl: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Runs `psql -X -A -t -v ON_ERROR_STOP=1` with one `-c` per command (never prompting
        for a password); with `check`, asserts exit code 0. Fields are separated by `|`."""
        cmd = [
            "psql",
            "-X",
            "-A",
            "-t",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.pg_host,
            "-p",
            str(self.pg_port),
        ]
        cmd += ["-U", user, "-d", PG_DATABASE]
        for c in commands:
            cmd += ["-c", c]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "10"
        if password is not None:
            env["PGPASSWORD"] = password
        # Over TLS, psql checks the certificate and the host name unless told otherwise.
        if self.ca_file:
            env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(self.ca_file))
        env.update(ssl or {})
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
        if check:
            assert p.returncode == 0, f"psql {commands} exited with {p.returncode}: {p.stderr}"
        return p

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
# Load generator and OpenTelemetry SDK

LOADGEN_SERVICES = (
    "frontend",
    "checkout",
    "payments",
    "inventory",
    "cart",
    "shipping",
    "email",
    "recommendation",
)


GRPC_SERVING, GRPC_NOT_SERVING = 1, 2


def grpc_health(addr: str, service: str = "", timeout: float = 5.0) -> int:
    """`grpc.health.v1.Health/Check` of `service` at `addr` (host:port) with grpcio: the
    serving status (1 SERVING, 2 NOT_SERVING). The messages are one field each, encoded here so
    the test needs no generated stubs."""
    import grpc

    name = service.encode()
    request = (b"\x0a" + _varint(len(name)) + name) if name else b""
    with grpc.insecure_channel(addr) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        answer = check(request, timeout=timeout)
    if not answer:
        return 0  # proto3 default: UNKNOWN
    assert answer[0] == 0x08, f"unexpected HealthCheckResponse bytes {answer!r}"
    return answer[1]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def run_loadgen(server: Oxeye, duration: str = "2s", protocol: str = "grpc", *args: str) -> dict[str, Any]:
    """Runs `oxeye-loadgen` against `server` and returns its JSON summary (spans_acked,
    logs_acked, points_acked, ...); asserts that it exited 0 and nothing was rejected."""
    endpoint = server.grpc_endpoint if protocol == "grpc" else server.otlp_http
    cmd = [str(loadgen_binary()), "--endpoint", endpoint, "--protocol", protocol, "--duration", duration]
    cmd += ["--connections", "1", "--json", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"oxeye-loadgen exited with {p.returncode}: {p.stderr[-2000:]}"
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    rejected = {k: v for k, v in summary.items() if k.endswith("_rejected") or k == "failed_requests"}
    assert not any(rejected.values()), f"loadgen saw rejections: {summary}"
    return summary


def sdk_exporters(protocol: str, server: Oxeye):
    """(span, log, metric) exporters of the OpenTelemetry SDK with default settings apart from
    the endpoint; `protocol` is `grpc` or `http` (protobuf)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        kw: dict[str, Any] = {"endpoint": server.grpc_endpoint, "insecure": True}
        if server.ca_file:
            import grpc

            ca = Path(server.ca_file).read_bytes()
            kw = {"endpoint": server.grpc_endpoint, "credentials": grpc.ssl_channel_credentials(ca)}
        return OTLPSpanExporter(**kw), OTLPLogExporter(**kw), OTLPMetricExporter(**kw)

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = server.otlp_http
    kw = {"certificate_file": str(server.ca_file)} if server.ca_file else {}
    return (
        OTLPSpanExporter(endpoint=f"{base}/v1/traces", **kw),
        OTLPLogExporter(endpoint=f"{base}/v1/logs", **kw),
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics", **kw),
    )


def sdk_finished_spans(service: str, n: int = 2, scope: str = "e2e"):
    """`n` spans of `service` made by the OpenTelemetry SDK and kept in memory (not exported):
    for feeding an exporter under test."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer(scope)
    for i in range(n):
        with tracer.start_as_current_span(f"op {i}"):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


def sdk_tracer_provider(
    server: Oxeye, service: str, protocol: str = "grpc", resource: dict[str, Any] | None = None
):
    """An SDK TracerProvider for `service` (plus `resource` attributes) that exports to `server`
    through a BatchSpanProcessor. Call `force_flush()` and `shutdown()` when done."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service, **(resource or {})}))
    provider.add_span_processor(BatchSpanProcessor(sdk_exporters(protocol, server)[0]))
    return provider


def sdk_span_ids(s) -> tuple[str, str]:
    """(trace id, span id) of an SDK span as lowercase hex."""
    ctx = s.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


@dataclass
class SpanSpec:
    """A span to create with the SDK: times are offsets from the trace's start, in ms;
    `kind` is a SpanKind name; `error` sets an ERROR status with that message; `events` are
    `(name, offset_ms, attributes)`; `links` are other specs already sent (see `SdkTraces`)."""

    service: str
    name: str
    kind: str = "INTERNAL"
    offset_ms: float = 0
    duration_ms: float = 1
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    events: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[SpanSpec, dict[str, Any]]] = field(default_factory=list)
    children: list[SpanSpec] = field(default_factory=list)
    # Filled in when sent:
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str | None = None
    start_ns: int = 0
    end_ns: int = 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def status_code(self) -> str:
        return "ERROR" if self.error is not None else "UNSET"


class SdkTraces:
    """Sends traces built from `SpanSpec` trees through the OpenTelemetry SDK (one
    TracerProvider per service, exporting to `server`) with exact timestamps, and remembers every
    span it sent (`spans`, flattened, with ids and times filled in)."""

    def __init__(
        self, server: Oxeye, protocol: str = "grpc", resources: dict[str, dict[str, Any]] | None = None
    ):
        self.server = server
        self.protocol = protocol
        self.resources = resources or {}
        self.providers: dict[str, Any] = {}
        self.spans: list[SpanSpec] = []

    def tracer(self, service: str):
        if service not in self.providers:
            self.providers[service] = sdk_tracer_provider(
                self.server, service, self.protocol, self.resources.get(service)
            )
        return self.providers[service].get_tracer("e2e.sdk-traces", "1.0")

    def send(self, root: SpanSpec, start_ns: int) -> SpanSpec:
        """Creates the spans of `root`'s tree; the trace starts at `start_ns`."""
        from opentelemetry import trace as otel_trace
        from opentelemetry.context import Context
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        def emit(spec: SpanSpec, parent, context) -> None:
            ms = 1_000_000
            spec.start_ns = start_ns + int(spec.offset_ms * ms)
            spec.end_ns = spec.start_ns + int(spec.duration_ms * ms)
            links = [
                Link(
                    otel_trace.SpanContext(int(o.trace_id, 16), int(o.span_id, 16), is_remote=True),
                    attrs,
                )
                for o, attrs in spec.links
            ]
            s = self.tracer(spec.service).start_span(
                spec.name,
                context=context,
                kind=SpanKind[spec.kind],
                attributes=spec.attributes,
                links=links,
                start_time=spec.start_ns,
            )
            for name, offset, attrs in spec.events:
                s.add_event(name, attrs, timestamp=spec.start_ns + int(offset * ms))
            if spec.error is not None:
                s.set_status(Status(StatusCode.ERROR, spec.error))
            spec.trace_id, spec.span_id = sdk_span_ids(s)
            spec.parent_span_id = parent.span_id if parent else None
            self.spans.append(spec)
            child_context = otel_trace.set_span_in_context(s, Context())
            for child in spec.children:
                emit(child, spec, child_context)
            s.end(end_time=spec.end_ns)

        emit(root, None, Context())
        return root

    def flush(self) -> None:
        for p in self.providers.values():
            assert p.force_flush(30_000), "span export timed out"

    def shutdown(self) -> None:
        for p in self.providers.values():
            p.shutdown()

    def trace(self, trace_id: str) -> list[SpanSpec]:
        return [s for s in self.spans if s.trace_id == trace_id]


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


def log_record(
    body: Any,
    time_ns: int,
    severity_number: int = 9,
    severity_text: str = "INFO",
    trace_id: bytes = b"",
    span_id: bytes = b"",
    attributes: dict[str, Any] | None = None,
) -> logs_pb2.LogRecord:
    return logs_pb2.LogRecord(
        time_unix_nano=time_ns,
        observed_time_unix_nano=time_ns,
        severity_number=severity_number,
        severity_text=severity_text,
        body=any_value(body),
        trace_id=trace_id,
        span_id=span_id,
        attributes=key_values(attributes or {}),
    )


def records_request(
    records: Iterable[logs_pb2.LogRecord], service: str = "e2e"
) -> logs_service_pb2.ExportLogsServiceRequest:
    """A logs request with the given records of one service."""
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=service_resource(service),
                scope_logs=[
                    logs_pb2.ScopeLogs(
                        scope=common_pb2.InstrumentationScope(name="e2e"), log_records=list(records)
                    )
                ],
            )
        ]
    )


def metrics_request(
    metrics: Iterable[metrics_pb2.Metric], service: str = "e2e"
) -> metrics_service_pb2.ExportMetricsServiceRequest:
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=service_resource(service),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(
                        scope=common_pb2.InstrumentationScope(name="e2e"), metrics=list(metrics)
                    )
                ],
            )
        ]
    )


def sum_metric(
    name: str,
    points: Iterable[tuple[int, int | float]],
    start_ns: int,
    attributes: dict[str, Any] | None = None,
    monotonic: bool = True,
    cumulative: bool = True,
    unit: str = "",
) -> metrics_pb2.Metric:
    """A sum with one point per `(time_ns, value)`; ints become `as_int`, floats `as_double`."""
    temporality = (
        metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        if cumulative
        else metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    )
    dps = []
    for t, v in points:
        value = {"as_int": v} if isinstance(v, int) else {"as_double": v}
        dps.append(
            metrics_pb2.NumberDataPoint(
                start_time_unix_nano=start_ns,
                time_unix_nano=t,
                attributes=key_values(attributes or {}),
                **value,
            )
        )
    return metrics_pb2.Metric(
        name=name,
        unit=unit,
        sum=metrics_pb2.Sum(data_points=dps, aggregation_temporality=temporality, is_monotonic=monotonic),
    )


def gauge_metric(
    name: str, points: Iterable[tuple[int, float]], attributes: dict[str, Any] | None = None, unit: str = ""
) -> metrics_pb2.Metric:
    dps = [
        metrics_pb2.NumberDataPoint(time_unix_nano=t, as_double=v, attributes=key_values(attributes or {}))
        for t, v in points
    ]
    return metrics_pb2.Metric(name=name, unit=unit, gauge=metrics_pb2.Gauge(data_points=dps))


def histogram_metric(
    name: str,
    points: Iterable[tuple[int, list[int]]],
    bounds: list[float],
    start_ns: int,
    attributes: dict[str, Any] | None = None,
    cumulative: bool = True,
    unit: str = "",
) -> metrics_pb2.Metric:
    """An explicit-bucket histogram with one point per `(time_ns, bucket_counts)` (one more
    count than bounds); `sum` is left unset and `count` is the sum of the buckets."""
    temporality = (
        metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        if cumulative
        else metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    )
    dps = [
        metrics_pb2.HistogramDataPoint(
            start_time_unix_nano=start_ns,
            time_unix_nano=t,
            count=sum(counts),
            bucket_counts=counts,
            explicit_bounds=bounds,
            attributes=key_values(attributes or {}),
        )
        for t, counts in points
    ]
    return metrics_pb2.Metric(
        name=name,
        unit=unit,
        histogram=metrics_pb2.Histogram(data_points=dps, aggregation_temporality=temporality),
    )
