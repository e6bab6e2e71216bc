"""The Jaeger query API (`/api/...`), which Grafana's Jaeger data source and Jaeger's UI use:
services, operations, trace search and traces by id in Jaeger's JSON shape, every field's type
checked and every value compared with what the OpenTelemetry SDK sent (span kinds, error tags,
typed attributes, events as logs, links as FOLLOWS_FROM references, processes), plus the
dependency graph."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from oxeye_client import (
    Oxeye,
    SdkTraces,
    SpanSpec,
    random_span_id,
    random_trace_id,
    span,
    trace_request,
)

S = 1_000_000_000
RESOURCE = {"host.name": "j-host-1", "host.cpu.count": 4, "deploy.canary": True, "deploy.weight": 0.5}
ROOT_ATTRIBUTES = {
    "http.request.method": "GET",
    "http.response.status_code": 200,
    "sampling.ratio": 0.25,
    "cache.hit": True,
    "tags": ["a", "b"],
}
BINARY = b"\x00\x01\xfe\xff"


@dataclass
class Sent:
    service: str
    db: str
    sent: SdkTraces = field(repr=False)
    trace_id: str
    upstream_trace_id: str
    binary_trace_id: str  # a 64-bit id (upper half zero), with a bytes attribute
    start_ns: int


@pytest.fixture(scope="module")
def sent(shared_oxeye: Oxeye) -> Sent:
    u = uuid.uuid4().hex[:8]
    service, db = f"jaeger-{u}", f"jaeger-db-{u}"
    sent = SdkTraces(shared_oxeye, protocol="http", resources={service: RESOURCE})
    start = time.time_ns() - 10 * 60 * S
    upstream = sent.send(SpanSpec(service, "enqueue j", "PRODUCER", 0, 1), start - S)
    # fmt: off
    root = sent.send(
        SpanSpec(
            service, "GET /j", "SERVER", 0, 12.5, ROOT_ATTRIBUTES,
            events=[("request.received", 1, {"size": 512, "client": "curl"}), ("cache.miss", 2, {})],
            children=[
                SpanSpec(service, "SELECT j", "CLIENT", 1, 3, {"db.system.name": "postgresql"},
                         links=[(upstream, {"link.reason": "retry"})]),
                SpanSpec(service, "render j", "INTERNAL", 5, 2, error="template missing"),
                SpanSpec(db, "query j", "SERVER", 8, 1.25),
            ],
        ),
        start,
    )
    # fmt: on
    sent.flush()
    low = random_trace_id()[8:]
    tid = bytes(8) + low
    shared_oxeye.export(
        trace_request(
            [span(tid, random_span_id(), "binary op", start, kind=1, attributes={"payload": BINARY})],
            service=service,
        )
    )
    shared_oxeye.wait_span_count(f"service_name IN ('{service}', '{db}')", len(sent.spans) + 1)
    yield Sent(service, db, sent, root.trace_id, upstream.trace_id, tid.hex(), start)
    sent.shutdown()


def jaeger(server: Oxeye, path: str, params: dict[str, Any] | None = None, status: int = 200) -> dict:
    r = server.get(path, params)
    assert r.status_code == status, f"GET {r.url}: HTTP {r.status_code}: {r.text[:1000]}"
    body = r.json()
    assert set(body) == {"data", "total", "limit", "offset", "errors"}, body
    assert (body["limit"], body["offset"]) == (0, 0)
    if status == 200:
        assert body["errors"] is None
        assert isinstance(body["data"], list) and body["total"] == len(body["data"])
    else:
        assert body["data"] is None
        assert [e["code"] for e in body["errors"]] == [status] and body["errors"][0]["msg"]
    return body


def jaeger_tag(key: str, value: Any) -> dict[str, Any]:
    """The Jaeger tag an OTLP attribute should become."""
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, bytes):
        return {"key": key, "type": "binary", "value": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    return {"key": key, "type": "string", "value": json.dumps(value, separators=(",", ":"))}


def assert_tag_shape(tag: dict[str, Any]) -> None:
    assert set(tag) == {"key", "type", "value"}, tag
    python_type = {"string": str, "bool": bool, "int64": int, "float64": float, "binary": str}[tag["type"]]
    assert type(tag["value"]) is python_type, tag


def tags_by_key(tags: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for t in tags:
        assert_tag_shape(t)
    by_key = {t["key"]: t for t in tags}
    assert len(by_key) == len(tags), f"repeated tag keys: {tags}"
    return by_key


def tag_value_equal(got: dict[str, Any], want: dict[str, Any]) -> bool:
    if got["type"] == want["type"] == "string" and want["value"].startswith("["):
        return json.loads(got["value"]) == json.loads(want["value"])
    return got == want


def assert_jaeger_trace(t: dict[str, Any], s: Sent, trace_id: str) -> None:
    assert set(t) == {"traceID", "spans", "processes", "warnings"}, set(t)
    assert t["traceID"] == trace_id and t["warnings"] is None
    sent = {x.span_id: x for x in s.sent.trace(trace_id)}
    assert sorted(x["spanID"] for x in t["spans"]) == sorted(sent)
    assert [x["startTime"] for x in t["spans"]] == sorted(x["startTime"] for x in t["spans"])
    for pid, process in t["processes"].items():
        assert set(process) == {"serviceName", "tags"} and isinstance(pid, str)
        ptags = tags_by_key(process["tags"])
        assert "service.name" not in ptags
        if process["serviceName"] == s.service:
            for key, value in RESOURCE.items():
                assert ptags[key] == jaeger_tag(key, value), key
            assert ptags["telemetry.sdk.language"] == jaeger_tag("telemetry.sdk.language", "python")
    for x in t["spans"]:
        assert set(x) == {
            "traceID",
            "spanID",
            "operationName",
            "references",
            "startTime",
            "duration",
            "tags",
            "logs",
            "processID",
            "warnings",
            "flags",
        }, set(x)
        want = sent[x["spanID"]]
        assert x["traceID"] == trace_id and x["operationName"] == want.name
        assert type(x["startTime"]) is int and x["startTime"] == want.start_ns // 1000
        assert type(x["duration"]) is int and x["duration"] == want.duration_ns // 1000
        assert x["warnings"] is None and type(x["flags"]) is int
        assert t["processes"][x["processID"]]["serviceName"] == want.service

        refs = []
        if want.parent_span_id:
            refs.append({"refType": "CHILD_OF", "traceID": trace_id, "spanID": want.parent_span_id})
        refs += [
            {"refType": "FOLLOWS_FROM", "traceID": o.trace_id, "spanID": o.span_id} for o, _ in want.links
        ]
        assert x["references"] == refs, want.name

        tags = tags_by_key(x["tags"])
        for key, value in want.attributes.items():
            assert tag_value_equal(tags[key], jaeger_tag(key, value)), (key, tags[key])
        assert tags["span.kind"] == {"key": "span.kind", "type": "string", "value": want.kind.lower()}
        if want.error is not None:
            assert tags["error"] == {"key": "error", "type": "bool", "value": True}
            assert tags["otel.status_code"]["value"] == "ERROR"
            assert tags["otel.status_description"]["value"] == want.error
        else:
            assert "error" not in tags, want.name
        assert tags["otel.scope.name"]["value"] == "e2e.sdk-traces"

        assert len(x["logs"]) == len(want.events)
        for log, (name, offset_ms, attrs) in zip(x["logs"], want.events, strict=True):
            assert set(log) == {"timestamp", "fields"}
            assert type(log["timestamp"]) is int
            assert log["timestamp"] == (want.start_ns + int(offset_ms * 1_000_000)) // 1000
            fields = tags_by_key(log["fields"])
            assert fields["event"] == {"key": "event", "type": "string", "value": name}
            assert {k: v for k, v in fields.items() if k != "event"} == {
                k: jaeger_tag(k, v) for k, v in attrs.items()
            }


def test_trace_by_id(shared_oxeye: Oxeye, sent: Sent):
    body = jaeger(shared_oxeye, f"/api/traces/{sent.trace_id}")
    (t,) = body["data"]
    assert_jaeger_trace(t, sent, sent.trace_id)
    spans = {x["operationName"]: x for x in t["spans"]}
    assert spans["GET /j"]["references"] == []
    assert spans["SELECT j"]["references"][1]["refType"] == "FOLLOWS_FROM"
    assert len(t["processes"]) == 2  # two services
    assert spans["query j"]["processID"] != spans["GET /j"]["processID"]
    assert jaeger(shared_oxeye, f"/api/traces/{sent.trace_id.upper()}")["data"][0]["traceID"] == sent.trace_id


def test_binary_tags_and_64_bit_trace_ids(shared_oxeye: Oxeye, sent: Sent):
    short = sent.binary_trace_id[16:]
    for tid in (short, sent.binary_trace_id):
        (t,) = jaeger(shared_oxeye, f"/api/traces/{tid}")["data"]
        assert int(t["traceID"], 16) == int(sent.binary_trace_id, 16)
        (x,) = t["spans"]
        tags = tags_by_key(x["tags"])
        assert tags["payload"] == jaeger_tag("payload", BINARY)
        assert base64.b64decode(tags["payload"]["value"]) == BINARY


def test_unknown_and_invalid_trace_ids(shared_oxeye: Oxeye, sent: Sent):
    jaeger(shared_oxeye, f"/api/traces/{random_trace_id().hex()}", status=404)
    jaeger(shared_oxeye, "/api/traces/not-hex", status=400)
    jaeger(shared_oxeye, "/api/traces/" + "a" * 33, status=400)


def test_services_and_operations(shared_oxeye: Oxeye, sent: Sent):
    services = jaeger(shared_oxeye, "/api/services")["data"]
    assert {sent.service, sent.db} <= set(services)
    assert all(isinstance(s, str) for s in services)

    ops = jaeger(shared_oxeye, f"/api/services/{sent.service}/operations")["data"]
    assert ops == sorted({x.name for x in sent.sent.spans if x.service == sent.service} | {"binary op"})

    body = jaeger(shared_oxeye, "/api/operations", {"service": sent.service, "spanKind": "server"})
    assert body["data"] == [{"name": "GET /j", "spanKind": "server"}]
    body = jaeger(shared_oxeye, "/api/operations", {"service": sent.service})
    want = {(x.name, x.kind.lower()) for x in sent.sent.spans if x.service == sent.service} | {
        ("binary op", "internal")
    }
    assert {(o["name"], o["spanKind"]) for o in body["data"]} == want
    assert all(set(o) == {"name", "spanKind"} for o in body["data"])
    assert jaeger(shared_oxeye, "/api/operations", {"service": sent.db, "spanKind": "client"})["data"] == []


def search(server: Oxeye, s: Sent, **params: Any) -> list[str]:
    """Trace ids a Jaeger search finds, in the order given (as Grafana sends it: µs times)."""
    window = {
        "start": (s.start_ns - 30 * 60 * S) // 1000,
        "end": time.time_ns() // 1000,
        "lookback": "custom",
        "limit": 20,
    }
    body = jaeger(server, "/api/traces", {"service": s.service, **window, **params})
    for t in body["data"]:
        if t["traceID"] in (s.trace_id, s.upstream_trace_id):
            assert_jaeger_trace(t, s, t["traceID"])
    return [t["traceID"] for t in body["data"]]


def test_trace_search(shared_oxeye: Oxeye, sent: Sent):
    everything = {sent.trace_id, sent.upstream_trace_id, sent.binary_trace_id}
    assert set(search(shared_oxeye, sent)) == everything
    assert search(shared_oxeye, sent, operation="GET /j") == [sent.trace_id]
    assert set(search(shared_oxeye, sent, operation="all")) == everything
    assert search(shared_oxeye, sent, tags=json.dumps({"http.response.status_code": "200"})) == [
        sent.trace_id
    ]
    assert search(shared_oxeye, sent, tags=json.dumps({"cache.hit": True, "http.request.method": "GET"})) == [
        sent.trace_id
    ]
    assert search(shared_oxeye, sent, tags=json.dumps({"error": "true"})) == [sent.trace_id]
    assert search(shared_oxeye, sent, tags=json.dumps({"span.kind": "producer"})) == [sent.upstream_trace_id]
    assert search(shared_oxeye, sent, tags=json.dumps({"http.request.method": "POST"})) == []
    assert search(shared_oxeye, sent, minDuration="10ms") == [sent.trace_id]
    assert search(shared_oxeye, sent, minDuration="10ms", maxDuration="12ms") == []
    assert search(shared_oxeye, sent, minDuration="12ms", maxDuration="13ms") == [sent.trace_id]
    assert set(search(shared_oxeye, sent, maxDuration="1ms")) == {
        sent.upstream_trace_id,
        sent.binary_trace_id,
    }
    # The root starts 1 s after the upstream trace: newest first.
    assert search(shared_oxeye, sent, limit=1) == [sent.trace_id]
    # Outside the window.
    assert search(shared_oxeye, sent, start=(sent.start_ns + S) // 1000) == []
    assert search(shared_oxeye, sent, end=(sent.start_ns - 2 * S) // 1000) == []
    # Lookback instead of start/end.
    body = jaeger(
        shared_oxeye, "/api/traces", {"service": sent.service, "operation": "GET /j", "lookback": "1h"}
    )
    assert [t["traceID"] for t in body["data"]] == [sent.trace_id]
    body = jaeger(
        shared_oxeye, "/api/traces", {"service": sent.service, "operation": "GET /j", "lookback": "1m"}
    )
    assert body["data"] == []


def test_bad_search_parameters(shared_oxeye: Oxeye, sent: Sent):
    jaeger(shared_oxeye, "/api/traces", {"service": sent.service, "start": "yesterday"}, status=400)
    jaeger(shared_oxeye, "/api/traces", {"service": sent.service, "tags": "{not json"}, status=400)


def test_dependencies(shared_oxeye: Oxeye, sent: Sent):
    now_ms = time.time_ns() // 1_000_000
    body = jaeger(shared_oxeye, "/api/dependencies", {"endTs": now_ms, "lookback": 3_600_000})
    for d in body["data"]:
        assert set(d) == {"parent", "child", "callCount"} and type(d["callCount"]) is int
    mine = [d for d in body["data"] if sent.service in (d["parent"], d["child"])]
    assert mine == [{"parent": sent.service, "child": sent.db, "callCount": 1}]
    # A window that ends before the trace has no edge.
    body = jaeger(
        shared_oxeye, "/api/dependencies", {"endTs": sent.start_ns // 1_000_000 - 60_000, "lookback": 60_000}
    )
    assert not [d for d in body["data"] if sent.service in (d["parent"], d["child"])]
