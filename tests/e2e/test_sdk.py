"""The OpenTelemetry Python SDK, with default settings apart from the endpoint, sends traces,
logs and metrics to oxeye once over the gRPC exporters and once over the HTTP/protobuf
exporters; everything it sent is read back through SQL and the trace API and compared with what
the SDK itself recorded (ids, timestamps, attributes and their types)."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from oxeye_client import Oxeye, wait_until
from oxeye_client import sdk_exporters as exporters
from oxeye_client import sdk_span_ids as span_ids

ROOT_ATTRIBUTES = {
    "http.request.method": "GET",
    "http.response.status_code": 200,
    "sampling.ratio": 0.25,
    "cache.hit": True,
    "cache.stale": False,
    "tags": ["alpha", "beta", "gamma"],
    "ports": [80, 443, 8080],
    "weights": [0.5, 1.5],
    "checks": [True, False],
}
# How oxeye shows each value as SQL text (the typed values are checked via the trace API).
ROOT_ATTRIBUTES_SQL = {
    "http.request.method": "GET",
    "http.response.status_code": "200",
    "sampling.ratio": "0.25",
    "cache.hit": "true",
    "cache.stale": "false",
}
ROOT_LIST_ATTRIBUTES = ("tags", "ports", "weights", "checks")

RESOURCE_EXTRA = {"service.version": "9.8.7", "deployment.environment.name": "e2e", "host.cpu.count": 2}
TRACER_SCOPE = ("e2e.sdk.tracer", "1.2.3")
METER_SCOPE = ("e2e.sdk.meter", "4.5.6")

HISTOGRAM_BOUNDS = [10.0, 100.0, 1000.0]
HISTOGRAM_VALUES = [5, 50, 60, 500, 5000]


@dataclass
class Sent:
    """What the SDK sent and recorded, for comparison with what oxeye stored."""

    protocol: str
    service: str
    trace_id: str
    spans: dict[str, ReadableSpan]  # by name
    upstream_trace_id: str
    logs: list[dict[str, Any]] = field(default_factory=list)  # per log record: expected columns


class RecordCapture(logging.Filter):
    """Keeps the `logging` records so that the test knows their exact creation times."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record):
        self.records.append(record)
        return True


@pytest.fixture(scope="module", params=["grpc", "http"])
def sent(request, shared_oxeye: Oxeye) -> Sent:
    protocol = request.param
    service = f"sdk-{protocol}-{uuid.uuid4().hex[:8]}"
    resource = Resource.create({"service.name": service, **RESOURCE_EXTRA})
    span_exporter, log_exporter, metric_exporter = exporters(protocol, shared_oxeye)

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)]
    )

    py_logger = logging.getLogger(f"e2e.sdk.{protocol}")
    py_logger.setLevel(logging.DEBUG)
    py_logger.propagate = False
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=logger_provider)
    capture = RecordCapture()
    py_logger.addFilter(capture)
    py_logger.addHandler(handler)

    try:
        tracer = tracer_provider.get_tracer(*TRACER_SCOPE)
        ended: dict[str, ReadableSpan] = {}

        # A span in another trace, for the link.
        upstream = tracer.start_span("enqueue order", kind=SpanKind.PRODUCER, context=otel_context.Context())
        upstream.end()
        ended["enqueue order"] = upstream

        log_spans: list[str] = []  # name of the active span of each log record
        root = tracer.start_span("GET /checkout", kind=SpanKind.SERVER, attributes=ROOT_ATTRIBUTES)
        with trace.use_span(root, end_on_exit=True):
            root.add_event("request.received", {"http.request.body.size": 512, "client": "curl"})
            py_logger.info("checkout started for %s", "order-17", extra={"order.id": "order-17", "retry": 2})
            log_spans.append("GET /checkout")
            with tracer.start_as_current_span(
                "SELECT orders",
                kind=SpanKind.CLIENT,
                attributes={"db.system.name": "postgresql", "db.response.returned_rows": 3},
                links=[Link(upstream.get_span_context(), {"link.reason": "follows-from", "link.n": 1})],
            ) as client:
                py_logger.warning("slow query", extra={"db.duration_ms": 1234.5})
                log_spans.append("SELECT orders")
            with tracer.start_as_current_span("render template", kind=SpanKind.INTERNAL) as internal:
                internal.add_event("cache.miss", {"key": "tmpl:checkout", "attempt": 1})
                internal.set_status(Status(StatusCode.ERROR, "template checkout.html missing"))
                py_logger.error("render failed", extra={"template": "checkout.html"})
                log_spans.append("render template")
            py_logger.debug("checkout finished")
            log_spans.append("GET /checkout")
        ended.update({"GET /checkout": root, "SELECT orders": client, "render template": internal})

        meter = meter_provider.get_meter(*METER_SCOPE)
        counter = meter.create_counter("e2e.requests", unit="{request}", description="Requests served")
        counter.add(3, {"route": "/a"})
        counter.add(4, {"route": "/a"})
        counter.add(1, {"route": "/b"})
        queue = meter.create_up_down_counter("e2e.queue.depth", unit="{item}")
        queue.add(10)
        queue.add(-3)
        meter.create_gauge("e2e.temperature", unit="Cel").set(21.5, {"room": "lab"})
        meter.create_observable_gauge(
            "e2e.open.files", callbacks=[lambda _options: [Observation(42, {"proc": "api"})]]
        )
        histogram = meter.create_histogram(
            "e2e.latency", unit="ms", explicit_bucket_boundaries_advisory=HISTOGRAM_BOUNDS
        )
        for v in HISTOGRAM_VALUES:
            histogram.record(v, {"route": "/a"})

        assert tracer_provider.force_flush(), "span flush timed out"
        assert logger_provider.force_flush(), "log flush timed out"
        assert meter_provider.force_flush(), "metric flush timed out"

        trace_id, _ = span_ids(root)
        result = Sent(protocol, service, trace_id, ended, span_ids(upstream)[0])
        for record, span_name in zip(capture.records, log_spans, strict=True):
            result.logs.append(
                {
                    "body": record.getMessage(),
                    "level": record.levelname,
                    "time_ns": int(record.created * 1e9),  # as the SDK's LoggingHandler computes it
                    "span": span_ids(ended[span_name]),
                    "extra": {
                        k: v
                        for k, v in vars(record).items()
                        if k in ("order.id", "retry", "db.duration_ms", "template")
                    },
                }
            )
        yield result
    finally:
        py_logger.removeHandler(handler)
        py_logger.removeFilter(capture)
        tracer_provider.shutdown()
        logger_provider.shutdown()
        meter_provider.shutdown()


# ---------------------------------------------------------------------------------------------
# Traces


def test_spans_match_the_sdk(shared_oxeye: Oxeye, sent: Sent):
    rows = shared_oxeye.wait_rows(
        f"""SELECT trace_id, span_id, parent_span_id, name, kind, status_code, status_message,
                   CAST(start_time AS BIGINT) AS start_ns, CAST(end_time AS BIGINT) AS end_ns, duration_ns,
                   service_name, scope_name, scope_version
            FROM spans WHERE service_name = '{sent.service}' ORDER BY start_ns""",
        4,
    )
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(sent.spans)
    expected_kind = {
        "enqueue order": "PRODUCER",
        "GET /checkout": "SERVER",
        "SELECT orders": "CLIENT",
        "render template": "INTERNAL",
    }
    for name, s in sent.spans.items():
        row = by_name[name]
        trace_id, span_id = span_ids(s)
        parent = format(s.parent.span_id, "016x") if s.parent else None
        assert row["trace_id"] == trace_id
        assert row["span_id"] == span_id
        assert row["parent_span_id"] == parent, name
        assert row["kind"] == expected_kind[name]
        assert row["start_ns"] == s.start_time, name
        assert row["end_ns"] == s.end_time, name
        assert row["duration_ns"] == s.end_time - s.start_time
        assert row["service_name"] == sent.service
        assert (row["scope_name"], row["scope_version"]) == TRACER_SCOPE

    root_id = span_ids(sent.spans["GET /checkout"])[1]
    assert by_name["GET /checkout"]["parent_span_id"] is None
    assert by_name["SELECT orders"]["parent_span_id"] == root_id
    assert by_name["render template"]["parent_span_id"] == root_id
    assert by_name["enqueue order"]["trace_id"] == sent.upstream_trace_id != sent.trace_id

    assert (by_name["render template"]["status_code"], by_name["render template"]["status_message"]) == (
        "ERROR",
        "template checkout.html missing",
    )
    assert by_name["GET /checkout"]["status_code"] == "UNSET"


def test_span_attributes_events_links_and_resource_in_sql(shared_oxeye: Oxeye, sent: Sent):
    select = ", ".join(f"attributes['{k}'] AS \"{k}\"" for k in ROOT_ATTRIBUTES)
    rows = shared_oxeye.wait_rows(
        f"""SELECT {select}, events, resource_attributes['service.name'] AS svc,
                   resource_attributes['service.version'] AS version,
                   resource_attributes['deployment.environment.name'] AS env,
                   resource_attributes['host.cpu.count'] AS cpus,
                   resource_attributes['telemetry.sdk.language'] AS lang
            FROM spans WHERE trace_id = '{sent.trace_id}' AND name = 'GET /checkout'""",
        1,
    )
    root = rows[0]
    for key, text in ROOT_ATTRIBUTES_SQL.items():
        assert root[key] == text, key
    for key in ROOT_LIST_ATTRIBUTES:  # lists read as JSON text
        assert json.loads(root[key]) == ROOT_ATTRIBUTES[key], key
    assert (root["svc"], root["version"], root["env"], root["cpus"], root["lang"]) == (
        sent.service,
        "9.8.7",
        "e2e",
        "2",
        "python",
    )
    events = root["events"]
    assert [e["name"] for e in events] == ["request.received"]
    assert events[0]["attributes"] == {"http.request.body.size": "512", "client": "curl"}

    rows = shared_oxeye.wait_rows(
        f"""SELECT links, events, attributes['db.system.name'] AS db,
                   attributes['db.response.returned_rows'] AS n
            FROM spans WHERE trace_id = '{sent.trace_id}' AND name = 'SELECT orders'""",
        1,
    )
    client = rows[0]
    assert (client["db"], client["n"]) == ("postgresql", "3")
    assert client["events"] == []
    upstream_trace, upstream_span = span_ids(sent.spans["enqueue order"])
    assert len(client["links"]) == 1
    link = client["links"][0]
    assert (link["trace_id"], link["span_id"]) == (upstream_trace, upstream_span)
    assert link["attributes"] == {"link.reason": "follows-from", "link.n": "1"}

    # Map access works on event attributes too (via SQL over the unnested list).
    rows = shared_oxeye.wait_rows(
        f"""SELECT e['name'] AS name, e['attributes']['key'] AS key, e['attributes']['attempt'] AS attempt
            FROM (SELECT unnest(events) AS e FROM spans
                  WHERE trace_id = '{sent.trace_id}' AND name = 'render template')""",
        1,
    )
    assert rows[0] == {"name": "cache.miss", "key": "tmpl:checkout", "attempt": "1"}


def test_traces_view(shared_oxeye: Oxeye, sent: Sent):
    (row,) = shared_oxeye.wait_rows(f"SELECT * FROM traces WHERE trace_id = '{sent.trace_id}'", 1)
    root = sent.spans["GET /checkout"]
    assert row["root_service"] == sent.service and row["root_name"] == "GET /checkout"
    assert (row["span_count"], row["error_count"], row["service_count"]) == (3, 1, 1)
    assert row["duration_ns"] == root.end_time - root.start_time


def test_trace_api_keeps_attribute_types(shared_oxeye: Oxeye, sent: Sent):
    t = shared_oxeye.wait_trace(sent.trace_id, 3)
    assert t["trace_id"] == sent.trace_id
    assert t["services"] == [sent.service]
    spans = {s["name"]: s for s in t["spans"]}
    root = spans["GET /checkout"]
    sdk_root = sent.spans["GET /checkout"]
    assert t["start_time"] == root["start_time"]
    assert t["duration_ns"] == sdk_root.end_time - sdk_root.start_time
    assert root["start_time_unix_nano"] == str(sdk_root.start_time)
    assert root["end_time_unix_nano"] == str(sdk_root.end_time)

    attrs = root["attributes"]
    assert attrs == ROOT_ATTRIBUTES
    # == alone would accept 1 == 1.0 == True; the JSON types must be the SDK's types.
    for key, value in ROOT_ATTRIBUTES.items():
        assert type(attrs[key]) is type(value), key
        if isinstance(value, list):
            assert [type(x) for x in attrs[key]] == [type(x) for x in value], key
    assert type(root["events"][0]["attributes"]["http.request.body.size"]) is int
    assert root["events"][0]["time_unix_nano"] == str(sdk_root.events[0].timestamp)
    assert root["kind"] == "SERVER" and root["parent_span_id"] is None

    resource = root["resource"]["attributes"]
    assert {k: resource[k] for k in RESOURCE_EXTRA} == RESOURCE_EXTRA
    assert type(resource["host.cpu.count"]) is int
    assert resource["service.name"] == sent.service
    assert root["scope"]["name"] == TRACER_SCOPE[0] and root["scope"]["version"] == TRACER_SCOPE[1]

    render = spans["render template"]
    assert render["status"] == {"code": "ERROR", "message": "template checkout.html missing"}
    assert render["parent_span_id"] == root["span_id"]
    assert render["events"][0]["attributes"] == {"key": "tmpl:checkout", "attempt": 1}

    client = spans["SELECT orders"]
    assert client["kind"] == "CLIENT"
    assert client["attributes"] == {"db.system.name": "postgresql", "db.response.returned_rows": 3}
    (link,) = client["links"]
    assert (link["trace_id"], link["span_id"]) == span_ids(sent.spans["enqueue order"])
    assert link["attributes"] == {"link.reason": "follows-from", "link.n": 1}
    assert type(link["attributes"]["link.n"]) is int


def test_trace_api_otlp_format_round_trips_ids(shared_oxeye: Oxeye, sent: Sent):
    shared_oxeye.wait_trace(sent.trace_id, 3)
    otlp = shared_oxeye.trace(sent.trace_id, fmt="otlp")
    spans = [s for rs in otlp["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    # OTLP/JSON writes ids as hex and int64 timestamps as strings.
    got = {(s["traceId"].lower(), s["spanId"].lower(), str(s["startTimeUnixNano"])) for s in spans}
    want = {(*span_ids(s), str(s.start_time)) for name, s in sent.spans.items() if name != "enqueue order"}
    assert got == want


# ---------------------------------------------------------------------------------------------
# Logs

SEVERITY = {"DEBUG": (5, "DEBUG"), "INFO": (9, "INFO"), "WARNING": (13, "WARN"), "ERROR": (17, "ERROR")}


def test_logs_match_the_sdk(shared_oxeye: Oxeye, sent: Sent):
    rows = shared_oxeye.wait_rows(
        f"""SELECT body, severity_number, severity_text, trace_id, span_id, CAST(time AS BIGINT) AS time_ns,
                   attributes, scope_name, service_name, resource_attributes['service.version'] AS version
            FROM logs WHERE service_name = '{sent.service}' ORDER BY time_ns, severity_number""",
        len(sent.logs),
    )
    assert len({r["body"] for r in rows}) == len(rows)
    by_body = {r["body"]: r for r in rows}
    for want in sent.logs:
        row = by_body[want["body"]]
        assert (row["severity_number"], row["severity_text"]) == SEVERITY[want["level"]], want["body"]
        assert (row["trace_id"], row["span_id"]) == want["span"], want["body"]
        assert row["trace_id"] == sent.trace_id
        assert row["time_ns"] == want["time_ns"], want["body"]
        assert row["scope_name"] == f"e2e.sdk.{sent.protocol}"
        assert row["version"] == "9.8.7"
        for key, value in want["extra"].items():
            assert row["attributes"][key] == str(value), key
    assert by_body["checkout started for order-17"]["attributes"]["order.id"] == "order-17"
    assert by_body["slow query"]["attributes"]["db.duration_ms"] == "1234.5"
    # The logging bridge adds the code location.
    assert by_body["render failed"]["attributes"]["code.function.name"] == "sent"


def test_logs_attribute_lookup_and_full_text_search(shared_oxeye: Oxeye, sent: Sent):
    rows = shared_oxeye.wait_rows(
        f"""SELECT body FROM logs
            WHERE service_name = '{sent.service}' AND attributes['template'] = 'checkout.html'""",
        1,
    )
    assert rows[0]["body"] == "render failed"
    rows = shared_oxeye.wait_rows(
        f"""SELECT body FROM logs
            WHERE service_name = '{sent.service}' AND search(body, 'checkout AND order-17')""",
        1,
    )
    assert rows[0]["body"] == "checkout started for order-17"


# ---------------------------------------------------------------------------------------------
# Metrics


def metric_rows(
    server: Oxeye, sent: Sent, name: str, table: str = "metrics", series: int = 1
) -> list[dict[str, Any]]:
    """Every exported point of `name` (each collection of the SDK adds one per series), once
    points of `series` different attribute sets are there."""
    query = f"SELECT * FROM {table} WHERE service_name = '{sent.service}' AND name = '{name}' ORDER BY time"

    def probe():
        rows = server.sql_dicts(query)
        return rows if len({json.dumps(r["attributes"], sort_keys=True) for r in rows}) >= series else None

    return wait_until(probe, what=f"{series} series of metric {name}")


def test_counter(shared_oxeye: Oxeye, sent: Sent):
    series: dict[str, list[dict[str, Any]]] = {}
    for p in metric_rows(shared_oxeye, sent, "e2e.requests", series=2):
        series.setdefault(p["attributes"]["route"], []).append(p)
    assert set(series) == {"/a", "/b"}
    for route, total in (("/a", 7), ("/b", 1)):
        for p in series[route]:  # cumulative: every export repeats the running total
            assert p["type"] == "sum"
            assert p["is_monotonic"] is True
            assert p["temporality"] == "cumulative"
            assert p["value_int"] == total
            assert p["value"] in (None, total)
            assert p["unit"] == "{request}" and p["description"] == "Requests served"
            assert (p["scope_name"], p["scope_version"]) == METER_SCOPE
            assert p["start_time"] is not None and p["start_time"] <= p["time"]


def test_up_down_counter(shared_oxeye: Oxeye, sent: Sent):
    for p in metric_rows(shared_oxeye, sent, "e2e.queue.depth"):
        assert (p["type"], p["is_monotonic"], p["temporality"]) == ("sum", False, "cumulative")
        assert p["value_int"] == 7
        assert p["unit"] == "{item}"


def test_gauges(shared_oxeye: Oxeye, sent: Sent):
    for p in metric_rows(shared_oxeye, sent, "e2e.temperature"):
        assert p["type"] == "gauge"
        assert p["value"] == 21.5
        assert p["value_int"] is None
        assert p["attributes"] == {"room": "lab"}
        assert p["unit"] == "Cel"
    for p in metric_rows(shared_oxeye, sent, "e2e.open.files"):
        assert p["type"] == "gauge"
        assert p["value_int"] == 42
        assert p["attributes"] == {"proc": "api"}


def test_histogram(shared_oxeye: Oxeye, sent: Sent):
    for p in metric_rows(shared_oxeye, sent, "e2e.latency", table="histograms"):
        assert p["temporality"] == "cumulative"
        assert p["unit"] == "ms"
        assert p["attributes"] == {"route": "/a"}
        assert p["count"] == len(HISTOGRAM_VALUES)
        assert p["sum"] == sum(HISTOGRAM_VALUES)
        assert (p["min"], p["max"]) == (min(HISTOGRAM_VALUES), max(HISTOGRAM_VALUES))
        assert p["explicit_bounds"] == HISTOGRAM_BOUNDS
        assert p["bucket_counts"] == [1, 2, 1, 1]
        assert (p["scope_name"], p["scope_version"]) == METER_SCOPE
