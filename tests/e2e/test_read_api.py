"""The read APIs beside SQL: trace search and traces by id, services and operations, log search
and its histogram, RED figures and the dependency graph (all from spans sent with the
OpenTelemetry SDK at known times, compared with what was sent and with SQL), and metric chart
queries over counters, gauges and histograms with known values (protobuf points at exact
times), whose rates, increases and percentiles are checked exactly."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from oxeye_client import (
    Oxeye,
    SdkTraces,
    SpanSpec,
    gauge_metric,
    histogram_metric,
    log_record,
    metrics_request,
    random_span_id,
    random_trace_id,
    records_request,
    rfc3339_ns,
    sum_metric,
)

MS = 1_000_000
S = 1_000_000_000
HOUR = 3600 * S


# ---------------------------------------------------------------------------------------------
# Traces sent with the SDK


@dataclass
class World:
    front: str
    back: str
    db: str
    sent: SdkTraces = field(repr=False)
    t1: str  # trace ids
    t2: str
    t3: str
    t4: str
    old: str
    lists: list[str] = field(repr=False)


@pytest.fixture(scope="module")
def world(shared_oxeye: Oxeye) -> World:
    u = uuid.uuid4().hex[:8]
    front, back, db = f"front-{u}", f"back-{u}", f"db-{u}"
    sent = SdkTraces(shared_oxeye, resources={front: {"host.name": "front-1"}})
    now = time.time_ns()
    base = now - 20 * 60 * S

    def tier(t: str, method: str = "GET") -> dict[str, Any]:
        return {"customer.tier": t, "http.request.method": method}

    # fmt: off
    t1 = sent.send(
        SpanSpec(front, "GET /a", "SERVER", 0, 5, tier("gold"), children=[
            SpanSpec(front, "call back", "CLIENT", 0.5, 3, children=[
                SpanSpec(back, "GET /items", "SERVER", 1, 2, children=[
                    SpanSpec(back, "SELECT items", "CLIENT", 1.2, 1, children=[
                        SpanSpec(db, "query", "SERVER", 1.3, 0.5),
                    ]),
                ]),
            ]),
        ]),
        base,
    )
    t2 = sent.send(
        SpanSpec(front, "GET /a", "SERVER", 0, 50, tier("silver"), children=[
            SpanSpec(front, "call back", "CLIENT", 1, 40, children=[
                SpanSpec(back, "GET /items", "SERVER", 2, 30, error="items unavailable"),
            ]),
        ]),
        base + 10 * S,
    )
    t3 = sent.send(
        SpanSpec(front, "POST /b", "SERVER", 0, 200, tier("gold", "POST"), children=[
            SpanSpec(front, "render", "INTERNAL", 150, 10),
        ]),
        base + 20 * S,
    )
    t4 = sent.send(
        SpanSpec(front, "consume", "CONSUMER", 0, 8, tier("bronze"), links=[(t1, {"why": "retry"})],
                 children=[SpanSpec(front, "publish", "PRODUCER", 2, 0.5)]),
        base + 30 * S,
    )
    old = sent.send(SpanSpec(front, "GET /a", "SERVER", 0, 7, tier("gold")), now - 2 * HOUR)
    lists = []
    for i in range(20):  # 5 with an error on the root, 4 with an error on the database call
        root_error, db_error = "boom" if i % 4 == 0 else None, "deadlock" if i % 5 == 0 else None
        root = sent.send(
            SpanSpec(front, "GET /list", "SERVER", 0, i + 1, {"page": i}, error=root_error,
                     children=[SpanSpec(db, "query", "SERVER", 0.1, 0.5, error=db_error)]),
            base + 60 * S + i * S,
        )
        lists.append(root.trace_id)
    # fmt: on
    sent.flush()
    shared_oxeye.wait_span_count(f"service_name IN ('{front}', '{back}', '{db}')", len(sent.spans))
    yield World(
        front, back, db, sent, t1.trace_id, t2.trace_id, t3.trace_id, t4.trace_id, old.trace_id, lists
    )
    sent.shutdown()


def tag_matches(w: World, s: SpanSpec, key: str, value: str) -> bool:
    """Jaeger conventions (error, span.kind), else a span or resource attribute as text."""
    if key == "error":
        return (s.status_code == "ERROR") == (value == "true")
    if key == "span.kind":
        return s.kind == value.upper()
    texts = set()
    for attrs in (s.attributes, w.sent.resources.get(s.service, {})):
        if key in attrs:
            v = attrs[key]
            texts.add(str(v).lower() if isinstance(v, bool) else str(v))
    return value in texts


def expected_traces(w: World, q: dict[str, Any], start: int, end: int) -> list[str]:
    """Trace ids with a span matching every condition, newest (latest matching span) first."""
    tags = [t.split("=", 1) for t in q.get("tags", "").split()]
    latest: dict[str, int] = {}
    for s in w.sent.spans:
        if not (start <= s.start_ns < end):
            continue
        if "service" in q and s.service != q["service"]:
            continue
        if "operation" in q and s.name != q["operation"]:
            continue
        if "min_duration_ns" in q and s.duration_ns < q["min_duration_ns"]:
            continue
        if "max_duration_ns" in q and s.duration_ns > q["max_duration_ns"]:
            continue
        if not all(tag_matches(w, s, k, v) for k, v in tags):
            continue
        latest[s.trace_id] = max(latest.get(s.trace_id, 0), s.start_ns)
    return sorted(latest, key=lambda t: -latest[t])


def sql_conditions(q: dict[str, Any]) -> str:
    """The same conditions as SQL, written independently of the API's own translation."""
    c = []
    if "service" in q:
        c.append(f"service_name = '{q['service']}'")
    if "operation" in q:
        c.append(f"name = '{q['operation']}'")
    if "min_duration_ns" in q:
        c.append(f"duration_ns >= {q['min_duration_ns']}")
    if "max_duration_ns" in q:
        c.append(f"duration_ns <= {q['max_duration_ns']}")
    for k, v in (t.split("=", 1) for t in q.get("tags", "").split()):
        if k == "error":
            c.append("status_code = 'ERROR'" if v == "true" else "status_code <> 'ERROR'")
        elif k == "span.kind":
            c.append(f"kind = '{v.upper()}'")
        else:
            c.append(f"(attributes['{k}'] = '{v}' OR resource_attributes['{k}'] = '{v}')")
    return " AND ".join(c) or "TRUE"


def assert_summary(w: World, t: dict[str, Any]) -> None:
    spans = w.sent.trace(t["trace_id"])
    assert spans, t
    root = next(s for s in spans if s.parent_span_id is None)
    start, end = min(s.start_ns for s in spans), max(s.end_ns for s in spans)
    assert set(t) >= {
        "trace_id",
        "root_service",
        "root_name",
        "start_time",
        "start_time_unix_nano",
        "duration_ns",
        "span_count",
        "error_count",
        "services",
    }, t
    assert (t["root_service"], t["root_name"]) == (root.service, root.name)
    assert t["start_time_unix_nano"] == start and rfc3339_ns(t["start_time"]) == start
    assert t["duration_ns"] == end - start
    assert t["span_count"] == len(spans)
    assert t["error_count"] == sum(s.status_code == "ERROR" for s in spans)
    assert sorted(t["services"]) == sorted({s.service for s in spans})


def search_cases(w: World) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(model query, API parameters) pairs."""
    return [
        ({"service": w.front}, {"service": w.front}),
        ({"service": w.front, "operation": "GET /a"}, {"service": w.front, "operation": "GET /a"}),
        (
            {"service": w.front, "tags": "customer.tier=gold"},
            {"service": w.front, "tags": "customer.tier=gold"},
        ),
        ({"service": w.back, "tags": "error=true"}, {"service": w.back, "tags": "error=true"}),
        ({"service": w.db, "tags": "error=true"}, {"service": w.db, "tags": "error=true"}),
        ({"service": w.front, "min_duration_ns": 100 * MS}, {"service": w.front, "min_duration": "100ms"}),
        ({"service": w.front, "max_duration_ns": 1 * MS}, {"service": w.front, "max_duration": "1ms"}),
        (
            {"service": w.front, "min_duration_ns": 4 * MS, "max_duration_ns": 6 * MS},
            {"service": w.front, "min_duration": "4ms", "max_duration": "6000us"},
        ),
        (
            {"service": w.front, "operation": "GET /a", "tags": "customer.tier=gold", "min_duration_ns": MS},
            {"service": w.front, "operation": "GET /a", "tags": "customer.tier=gold", "min_duration": "1ms"},
        ),
        (
            {"service": w.front, "tags": "customer.tier=gold http.request.method=POST"},
            {"service": w.front, "tags": "customer.tier=gold,http.request.method=POST"},
        ),
        (
            {"service": w.front, "tags": "span.kind=consumer"},
            {"service": w.front, "tags": "span.kind=consumer"},
        ),
        ({"tags": "host.name=front-1 page=3"}, {"tags": "host.name=front-1&page=3"}),  # resource & span
        ({"operation": "GET /items"}, {"operation": "GET /items"}),
    ]


def test_trace_search(shared_oxeye: Oxeye, world: World):
    now = time.time_ns()
    for model, params in search_cases(world):
        want = expected_traces(world, model, now - HOUR, now)
        assert want, model
        body = shared_oxeye.get_json("/api/v1/traces", {**params, "limit": 100})
        got = [t["trace_id"] for t in body["traces"]]
        assert body["count"] == len(got)
        assert sorted(got) == sorted(want), params
        assert [t["start_time_unix_nano"] for t in body["traces"]] == sorted(
            (t["start_time_unix_nano"] for t in body["traces"]), reverse=True
        ), "newest first"
        for t in body["traces"]:
            assert_summary(world, t)
            n = shared_oxeye.sql_value(
                f"SELECT count(*) FROM spans WHERE trace_id = '{t['trace_id']}' AND {sql_conditions(model)}"
            )
            assert n >= 1, f"{t['trace_id']} has no span matching {params}"
    # The cases cover what they should.
    assert expected_traces(world, {"service": world.back, "tags": "error=true"}, now - HOUR, now) == [
        world.t2
    ]
    assert expected_traces(world, {"service": world.front, "min_duration_ns": 100 * MS}, now - HOUR, now) == [
        world.t3
    ]


def test_trace_search_time_window_and_limit(shared_oxeye: Oxeye, world: World):
    old_start = next(s.start_ns for s in world.sent.spans if s.trace_id == world.old)
    # RFC 3339 and epoch microseconds.
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((old_start - 60 * S) / S))
    end = (old_start + 60 * S) // 1000
    body = shared_oxeye.get_json(
        "/api/v1/traces", {"service": world.front, "operation": "GET /a", "start": start, "end": end}
    )
    assert [t["trace_id"] for t in body["traces"]] == [world.old]
    # Not in the default window (the last hour).
    body = shared_oxeye.get_json(
        "/api/v1/traces", {"service": world.front, "operation": "GET /a", "limit": 100}
    )
    assert world.old not in [t["trace_id"] for t in body["traces"]]
    # lookback
    body = shared_oxeye.get_json("/api/v1/traces", {"service": world.front, "lookback": "3h", "limit": 100})
    assert world.old in [t["trace_id"] for t in body["traces"]]

    now = time.time_ns()
    newest = expected_traces(world, {"service": world.front}, now - HOUR, now)
    for limit in (1, 3):
        body = shared_oxeye.get_json("/api/v1/traces", {"service": world.front, "limit": limit})
        assert [t["trace_id"] for t in body["traces"]] == newest[:limit]
        assert body["count"] == limit
    # The default limit is 20 (there are more matching traces).
    assert len(newest) > 20
    assert shared_oxeye.get_json("/api/v1/traces", {"service": world.front})["count"] == 20


def test_trace_search_bad_parameters(shared_oxeye: Oxeye, world: World):
    for params in (
        {"min_duration": "fast"},
        {"start": "yesterday-ish"},
        {"tags": "novalue"},
        {"start": "now-1h", "end": "now-2h"},
    ):
        r = shared_oxeye.get("/api/v1/traces", params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["kind"] == "invalid"


def test_trace_by_id(shared_oxeye: Oxeye, world: World):
    t = shared_oxeye.get_json(f"/api/v1/traces/{world.t1}")
    spans = world.sent.trace(world.t1)
    assert t["trace_id"] == world.t1 and t["span_count"] == len(spans) == 5
    assert t["services"] == sorted({world.front, world.back, world.db})
    assert rfc3339_ns(t["start_time"]) == min(s.start_ns for s in spans)
    assert t["duration_ns"] == max(s.end_ns for s in spans) - min(s.start_ns for s in spans)
    by_id = {s.span_id: s for s in spans}
    assert [s["span_id"] for s in t["spans"]] == [s.span_id for s in sorted(spans, key=lambda s: s.start_ns)]
    for got in t["spans"]:
        want = by_id[got["span_id"]]
        assert (got["name"], got["kind"], got["service_name"], got["parent_span_id"]) == (
            want.name,
            want.kind,
            want.service,
            want.parent_span_id,
        )
        assert (int(got["start_time_unix_nano"]), int(got["end_time_unix_nano"])) == (
            want.start_ns,
            want.end_ns,
        )
        assert rfc3339_ns(got["start_time"]) == want.start_ns and got["duration_ns"] == want.duration_ns
        assert got["attributes"] == want.attributes
    # upper-case ids are accepted too
    assert shared_oxeye.get_json(f"/api/v1/traces/{world.t1.upper()}")["trace_id"] == world.t1

    r = shared_oxeye.get(f"/api/v1/traces/{random_trace_id().hex()}")
    assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"
    r = shared_oxeye.get("/api/v1/traces/not-a-trace-id")
    assert r.status_code == 400 and r.json()["error"]["kind"] == "invalid"


def test_services_and_operations(shared_oxeye: Oxeye, world: World):
    services = shared_oxeye.get_json("/api/v1/services")["services"]
    assert {world.front, world.back, world.db} <= set(services)
    assert services == sorted(set(services)), "sorted, no duplicates"

    for service in (world.front, world.back, world.db):
        body = shared_oxeye.get_json(f"/api/v1/services/{service}/operations")
        assert body["service"] == service
        want: dict[str, set[str]] = defaultdict(set)
        for s in world.sent.spans:
            if s.service == service:
                want[s.name].add(s.kind)
        got = {op["name"]: op["span_kinds"] for op in body["operations"]}
        assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
        assert all(len(v) == len(set(v)) for v in got.values())
    body = shared_oxeye.get_json(f"/api/v1/services/nope-{uuid.uuid4().hex}/operations")
    assert body["operations"] == []


# ---------------------------------------------------------------------------------------------
# Logs

LEVELS = [(5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR"), (21, "FATAL")]
LOG_BODIES = [
    "timeout talking to db",
    "DB timeout after 30s",
    "cache miss",
    "user logged in",
    "db connection refused",
    "request served",
    "timeout talking to cache",
]


@dataclass
class Logs:
    service: str
    recent: list[dict[str, Any]] = field(repr=False)  # as sent
    old: list[dict[str, Any]] = field(repr=False)
    old_trace: str
    trace: str


@pytest.fixture(scope="module")
def logs(shared_oxeye: Oxeye, world: World) -> Logs:
    service = f"logs-{uuid.uuid4().hex[:8]}"
    now = time.time_ns()
    base = (now - 30 * 60 * S) // (60 * S) * (60 * S) + 17 * S  # 17s into a minute, ~half an hour ago
    tid, sid = bytes.fromhex(world.t1), bytes.fromhex(world.sent.trace(world.t1)[0].span_id)
    recent, records = [], []
    for i in range(40):
        sev, text = LEVELS[i % len(LEVELS)]
        body = f"{LOG_BODIES[i % len(LOG_BODIES)]} #{i}"
        t = base + i * 7 * S  # spans a few minutes
        with_trace = i % 6 == 0
        records.append(
            log_record(body, t, sev, text, tid if with_trace else b"", sid if with_trace else b"", {"i": i})
        )
        recent.append(
            {"body": body, "time": t, "sev": sev, "text": text, "trace_id": world.t1 if with_trace else None}
        )
    old_tid = random_trace_id()
    old = []
    for i in range(3):
        t = now - 2 * 86_400 * S + i * S
        records.append(log_record(f"old entry {i}", t, 13, "WARN", old_tid, random_span_id()))
        old.append(
            {"body": f"old entry {i}", "time": t, "sev": 13, "text": "WARN", "trace_id": old_tid.hex()}
        )
    shared_oxeye.export(records_request(records, service=service))
    return Logs(service, recent, old, old_tid.hex(), world.t1)


LOG_FIELDS = {
    "time",
    "time_unix_nano",
    "severity_number",
    "severity_text",
    "body",
    "trace_id",
    "span_id",
    "service_name",
    "attributes",
    "resource_attributes",
    "scope_name",
    "event_name",
}


def log_search(server: Oxeye, **params: Any) -> list[dict[str, Any]]:
    body = server.get_json("/api/v1/logs", params)
    assert body["count"] == len(body["logs"])
    for entry in body["logs"]:
        assert set(entry) >= LOG_FIELDS, entry
        assert rfc3339_ns(entry["time"]) == entry["time_unix_nano"]
        assert isinstance(entry["severity_number"], int) and isinstance(entry["attributes"], dict)
    times = [e["time_unix_nano"] for e in body["logs"]]
    assert times == sorted(times, reverse=True), "newest first"
    return body["logs"]


def test_log_search(shared_oxeye: Oxeye, logs: Logs):
    got = log_search(shared_oxeye, service=logs.service, limit=1000)
    assert [e["body"] for e in got] == [r["body"] for r in sorted(logs.recent, key=lambda r: -r["time"])]
    by_body = {e["body"]: e for e in got}
    for r in logs.recent:
        e = by_body[r["body"]]
        assert (e["time_unix_nano"], e["severity_number"], e["severity_text"]) == (
            r["time"],
            r["sev"],
            r["text"],
        )
        assert e["service_name"] == logs.service and e["scope_name"] == "e2e"
        assert e["attributes"]["i"] == str(int(r["body"].rsplit("#", 1)[1]))
        if r["trace_id"]:
            assert e["trace_id"] == r["trace_id"]
        else:
            assert not e["trace_id"]

    for severity, floor in (("warn", 13), ("WARNING", 13), ("error", 17), ("17", 17), ("debug", 5)):
        got = log_search(shared_oxeye, service=logs.service, severity=severity, limit=1000)
        assert sorted(e["body"] for e in got) == sorted(
            r["body"] for r in logs.recent if r["sev"] >= floor
        ), severity

    got = log_search(shared_oxeye, service=logs.service, query="timeout AND db", limit=1000)
    want = [r["body"] for r in logs.recent if {"timeout", "db"} <= set(r["body"].lower().split())]
    assert want and sorted(e["body"] for e in got) == sorted(want)

    got = log_search(shared_oxeye, service=logs.service, query="timeout", severity="error", limit=1000)
    assert sorted(e["body"] for e in got) == sorted(
        r["body"] for r in logs.recent if "timeout" in r["body"].split() and r["sev"] >= 17
    )

    newest = sorted(logs.recent, key=lambda r: -r["time"])
    got = log_search(shared_oxeye, service=logs.service, limit=3)
    assert [e["body"] for e in got] == [r["body"] for r in newest[:3]]

    lo, hi = logs.recent[10]["time"], logs.recent[20]["time"]
    got = log_search(shared_oxeye, service=logs.service, start=str(lo), end=str(hi), limit=1000)
    assert sorted(e["body"] for e in got) == sorted(r["body"] for r in logs.recent if lo <= r["time"] < hi)


def test_logs_of_a_trace_need_no_time_range(shared_oxeye: Oxeye, logs: Logs):
    got = log_search(shared_oxeye, trace_id=logs.old_trace)
    assert sorted(e["body"] for e in got) == sorted(r["body"] for r in logs.old)
    assert log_search(shared_oxeye, trace_id=logs.old_trace, lookback="1h") == []
    got = log_search(shared_oxeye, trace_id=logs.trace.upper(), service=logs.service)
    assert sorted(e["body"] for e in got) == sorted(
        r["body"] for r in logs.recent if r["trace_id"] == logs.trace
    )


def test_log_histogram(shared_oxeye: Oxeye, logs: Logs):
    step = 60 * S
    for params, keep in (
        ({}, lambda r: True),
        ({"severity": "warn"}, lambda r: r["sev"] >= 13),
        ({"query": "timeout"}, lambda r: "timeout" in r["body"].split()),
    ):
        body = shared_oxeye.get_json(
            "/api/v1/logs/histogram", {"service": logs.service, "step": "1m", **params}
        )
        assert body["step_ns"] == step
        want = Counter((r["time"] // step * step, r["text"]) for r in logs.recent if keep(r))
        got = Counter()
        for b in body["buckets"]:
            assert set(b) == {"bucket_unix_nano", "severity_text", "count"}
            assert b["bucket_unix_nano"] % step == 0
            got[(b["bucket_unix_nano"], b["severity_text"])] += b["count"]
        assert got == want, params
        matching = log_search(shared_oxeye, service=logs.service, limit=1000, **params)
        assert sum(b["count"] for b in body["buckets"]) == len(matching)


def test_log_api_bad_parameters(shared_oxeye: Oxeye, logs: Logs):
    for path, params in (
        ("/api/v1/logs", {"severity": "loud"}),
        ("/api/v1/logs", {"trace_id": "xyz"}),
        ("/api/v1/logs", {"query": "(unbalanced"}),
        ("/api/v1/logs", {"lookback": "forever"}),
        ("/api/v1/logs/histogram", {"step": "0s"}),
    ):
        r = shared_oxeye.get(path, params)
        assert r.status_code == 400, (path, params, r.text)
        assert r.json()["error"]["kind"] == "invalid"


# ---------------------------------------------------------------------------------------------
# RED and dependencies


def is_request(s: SpanSpec) -> bool:
    return s.kind in ("SERVER", "CONSUMER") or s.parent_span_id is None


def test_red(shared_oxeye: Oxeye, world: World):
    body = shared_oxeye.get_json("/api/v1/red", {"service": world.front, "lookback": "1h", "step": "1m"})
    assert body["window_seconds"] == pytest.approx(3600, rel=1e-6)
    assert body["step_ns"] == 60 * S
    now = time.time_ns()
    want: dict[str, list[SpanSpec]] = defaultdict(list)
    for s in world.sent.spans:
        if s.service == world.front and is_request(s) and s.start_ns >= now - HOUR:
            want[s.name].append(s)
    ops = {o["operation"]: o for o in body["operations"]}
    assert set(ops) == set(want)
    sql = {
        r["name"]: r
        for r in shared_oxeye.sql_dicts(
            f"""SELECT name, count(*) AS requests, count(*) FILTER (WHERE status_code = 'ERROR') AS errors
                FROM spans WHERE service_name = '{world.front}' AND start_time >= now() - INTERVAL '1 hour'
                  AND (kind IN ('SERVER', 'CONSUMER') OR parent_span_id IS NULL)
                GROUP BY name"""
        )
    }
    for name, spans in want.items():
        o = ops[name]
        errors = sum(s.status_code == "ERROR" for s in spans)
        assert o["service_name"] == world.front
        assert (o["requests"], o["errors"]) == (len(spans), errors), name
        assert (sql[name]["requests"], sql[name]["errors"]) == (len(spans), errors), name
        assert o["rate_per_second"] == pytest.approx(len(spans) / 3600, rel=1e-3)
        assert o["error_rate"] == pytest.approx(errors / len(spans))
        durations = [s.duration_ns for s in spans]
        assert min(durations) <= o["p50_ns"] <= o["p95_ns"] <= o["p99_ns"] <= max(durations), o
    assert (ops["GET /list"]["requests"], ops["GET /list"]["errors"]) == (20, 5)

    per_op = Counter()
    for b in body["series"]:
        assert b["bucket_unix_nano"] % (60 * S) == 0
        assert b["service_name"] == world.front
        assert b["p50_ns"] <= b["p99_ns"]
        per_op[b["operation"]] += b["requests"]
    assert per_op == Counter({name: len(spans) for name, spans in want.items()})

    # Without a service: every service's request spans.
    everything = shared_oxeye.get_json("/api/v1/red", {"lookback": "1h"})
    mine = {(o["service_name"], o["operation"]): o["requests"] for o in everything["operations"]}
    assert mine[(world.back, "GET /items")] == 2
    assert mine[(world.db, "query")] == 21
    assert (world.front, "call back") not in mine  # a client span is not a request


def expected_edges(w: World) -> dict[tuple[str, str], tuple[int, int]]:
    by_id = {s.span_id: s for s in w.sent.spans}
    calls: Counter = Counter()
    errors: Counter = Counter()
    now = time.time_ns()
    for s in w.sent.spans:
        parent = by_id.get(s.parent_span_id or "")
        if parent and parent.service != s.service and s.start_ns >= now - HOUR:
            calls[(parent.service, s.service)] += 1
            errors[(parent.service, s.service)] += s.status_code == "ERROR"
    return {k: (calls[k], errors[k]) for k in calls}


def test_dependencies(shared_oxeye: Oxeye, world: World):
    want = expected_edges(world)
    assert want == {
        (world.front, world.back): (2, 1),
        (world.back, world.db): (1, 0),
        (world.front, world.db): (20, 4),
    }
    body = shared_oxeye.get_json("/api/v1/dependencies", {"lookback": "1h"})
    mine = {world.front, world.back, world.db}
    got = {
        (e["caller"], e["callee"]): (e["calls"], e["errors"])
        for e in body["edges"]
        if e["caller"] in mine or e["callee"] in mine
    }
    assert got == want
    for e in body["edges"]:
        assert e["rate_per_second"] == pytest.approx(e["calls"] / 3600, rel=1e-3)
    sql = shared_oxeye.sql_dicts(
        f"""SELECT p.service_name AS caller, c.service_name AS callee, count(*) AS calls
            FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id
            WHERE c.service_name <> p.service_name AND c.service_name IN ('{world.back}', '{world.db}')
            GROUP BY 1, 2"""
    )
    assert {(r["caller"], r["callee"]): r["calls"] for r in sql} == {k: v[0] for k, v in want.items()}


# ---------------------------------------------------------------------------------------------
# Metric charts


@dataclass
class Metrics:
    service: str
    t0: int
    counter: str
    delta: str
    reset: str
    gauge: str
    updown: str
    histogram: str
    delta_histogram: str


HIST_BOUNDS = [10.0, 20.0, 40.0]


@pytest.fixture(scope="module")
def metrics(shared_oxeye: Oxeye) -> Metrics:
    u = uuid.uuid4().hex[:8]
    service = f"metrics-{u}"
    t0 = (time.time_ns() - 10 * 60 * S) // (10 * S) * (10 * S)
    m = Metrics(
        service,
        t0,
        f"e2e.requests.{u}",
        f"e2e.delta.{u}",
        f"e2e.restarts.{u}",
        f"e2e.temp.{u}",
        f"e2e.queue.{u}",
        f"e2e.latency.{u}",
        f"e2e.latency.delta.{u}",
    )
    at = [t0 + i * S for i in range(5)]
    shared_oxeye.export(
        metrics_request(
            [
                # Cumulative counters: +10/s on /a, +5/s on /b.
                sum_metric(
                    m.counter,
                    [(t, 100 + 10 * i) for i, t in enumerate(at)],
                    t0 - S,
                    {"route": "/a"},
                    unit="{request}",
                ),
                sum_metric(
                    m.counter,
                    [(t, 50 + 5 * i) for i, t in enumerate(at)],
                    t0 - S,
                    {"route": "/b"},
                    unit="{request}",
                ),
                sum_metric(m.delta, [(t, 10) for t in at], t0 - S, {"route": "/a"}, cumulative=False),
                # A running total that restarts from zero after its third point.
                sum_metric(m.reset, [(t, v) for t, v in zip(at, [100, 110, 5, 15, 25], strict=True)], t0 - S),
                gauge_metric(
                    m.gauge, [(t, 1.0 + 2 * i) for i, t in enumerate(at)], {"room": "a"}, unit="Cel"
                ),
                gauge_metric(
                    m.gauge, [(t, 11.0 + 2 * i) for i, t in enumerate(at)], {"room": "b"}, unit="Cel"
                ),
                sum_metric(
                    m.updown,
                    [(t, v) for t, v in zip(at, [5, 7, 3, 9, 1], strict=True)],
                    t0 - S,
                    monotonic=False,
                ),
                # Cumulative histogram: nothing, then 20 in [0,10), 40 in [10,20), 40 in [20,40).
                histogram_metric(
                    m.histogram,
                    [(at[0], [0, 0, 0, 0]), (at[1], [20, 40, 40, 0])],
                    HIST_BOUNDS,
                    t0 - S,
                    {"route": "/a"},
                    unit="ms",
                ),
                # The same counts as deltas, in two points of one bucket.
                histogram_metric(
                    m.delta_histogram,
                    [(at[0], [10, 0, 0, 0]), (at[1], [10, 40, 40, 0])],
                    HIST_BOUNDS,
                    t0 - S,
                    cumulative=False,
                ),
            ],
            service=service,
        )
    )
    return m


def metric_query(
    server: Oxeye, m: Metrics, name: str, step: str, end_offset_s: int = 4, **params: Any
) -> dict:
    return server.get_json(
        "/api/v1/metrics/query",
        {"name": name, "step": step, "start": str(m.t0), "end": str(m.t0 + end_offset_s * S), **params},
    )


def points(series: dict) -> list[tuple[int, float]]:
    return [(t, v) for t, v in series["points"]]


def test_counter_increase_and_rate(shared_oxeye: Oxeye, metrics: Metrics):
    m, t0 = metrics, metrics.t0
    body = metric_query(shared_oxeye, m, m.counter, "1s", agg="increase", filters="route=/a")
    assert (body["name"], body["type"], body["unit"], body["step_ns"]) == (
        m.counter,
        "counter",
        "{request}",
        S,
    )
    (series,) = body["series"]
    assert series["labels"] == {} and series["series_count"] == 1
    assert points(series) == [(t0 + i * S, 10.0) for i in range(1, 5)]

    (series,) = metric_query(shared_oxeye, m, m.counter, "1s", agg="rate", filters="route=/a")["series"]
    assert points(series) == [(t0 + i * S, 10.0) for i in range(1, 5)]

    # One 5 s bucket: 4 increases of 10 (the first point only sets the baseline) = 40, 8/s.
    (series,) = metric_query(shared_oxeye, m, m.counter, "5s", agg="increase", filters="route=/a")["series"]
    assert points(series) == [(t0, 40.0)]
    (series,) = metric_query(shared_oxeye, m, m.counter, "5s", agg="rate", filters="route=/a")["series"]
    assert points(series) == [(t0, 8.0)]

    # Both series: summed, or one group each.
    (series,) = metric_query(shared_oxeye, m, m.counter, "1s", agg="increase")["series"]
    assert series["series_count"] == 2 and points(series) == [(t0 + i * S, 15.0) for i in range(1, 5)]
    grouped = metric_query(shared_oxeye, m, m.counter, "1s", agg="rate", group_by="route")["series"]
    assert {s["labels"]["route"]: points(s) for s in grouped} == {
        "/a": [(t0 + i * S, 10.0) for i in range(1, 5)],
        "/b": [(t0 + i * S, 5.0) for i in range(1, 5)],
    }
    (series,) = metric_query(shared_oxeye, m, m.counter, "1s", agg="rate", group_by="service_name")["series"]
    assert series["labels"] == {"service_name": m.service}
    # Rate is the default for a counter.
    assert metric_query(shared_oxeye, m, m.counter, "1s")["series"][0]["points"] == series["points"]


def test_delta_counter(shared_oxeye: Oxeye, metrics: Metrics):
    m, t0 = metrics, metrics.t0
    body = metric_query(shared_oxeye, m, m.delta, "1s", agg="increase")
    assert body["type"] == "counter"
    assert points(body["series"][0]) == [(t0 + i * S, 10.0) for i in range(5)]
    assert points(metric_query(shared_oxeye, m, m.delta, "5s", agg="rate")["series"][0]) == [(t0, 10.0)]


def test_counter_reset(shared_oxeye: Oxeye, metrics: Metrics):
    m, t0 = metrics, metrics.t0
    (series,) = metric_query(shared_oxeye, m, m.reset, "1s", agg="increase")["series"]
    assert points(series) == [(t0 + S, 10.0), (t0 + 2 * S, 5.0), (t0 + 3 * S, 10.0), (t0 + 4 * S, 10.0)]


def test_gauge_and_updown(shared_oxeye: Oxeye, metrics: Metrics):
    m, t0 = metrics, metrics.t0
    body = metric_query(shared_oxeye, m, m.gauge, "1s", agg="avg")
    assert (body["type"], body["unit"]) == ("gauge", "Cel")
    (series,) = body["series"]
    assert series["series_count"] == 2
    assert points(series) == [(t0 + i * S, 6.0 + 2 * i) for i in range(5)]  # mean of rooms a and b
    for agg, want in (("max", 11.0), ("min", 1.0), ("sum", 12.0), ("count", 2.0)):
        (series,) = metric_query(shared_oxeye, m, m.gauge, "1s", agg=agg)["series"]
        assert points(series)[0] == (t0, want), agg
    body = metric_query(shared_oxeye, m, m.updown, "1s", agg="last")
    assert body["type"] == "updown_sum"
    assert points(body["series"][0]) == [(t0 + i * S, float(v)) for i, v in enumerate([5, 7, 3, 9, 1])]


def test_histogram_percentiles(shared_oxeye: Oxeye, metrics: Metrics):
    m, t0 = metrics, metrics.t0
    for agg, want in (("p50", 17.5), ("p90", 35.0), ("p25", 11.25), ("p10", 5.0)):
        body = metric_query(shared_oxeye, m, m.histogram, "5s", agg=agg)
        assert (body["type"], body["unit"]) == ("histogram", "ms")
        (series,) = body["series"]
        ((t, v),) = points(series)
        assert t == t0 and v == pytest.approx(want, abs=1e-9), agg
    for agg, want in (("p50", 17.5), ("p90", 35.0)):
        body = metric_query(shared_oxeye, m, m.delta_histogram, "5s", agg=agg)
        ((t, v),) = points(body["series"][0])
        assert t == t0 and v == pytest.approx(want, abs=1e-9), agg
    # Default: p95; rate of the histogram's count.
    ((_, v),) = points(metric_query(shared_oxeye, m, m.histogram, "5s")["series"][0])
    assert v == pytest.approx(20 + 20 * (95 - 60) / 40)
    ((_, v),) = points(metric_query(shared_oxeye, m, m.histogram, "5s", agg="rate")["series"][0])
    assert v == pytest.approx(100 / 5)


def test_metric_names_labels_and_errors(shared_oxeye: Oxeye, metrics: Metrics):
    m = metrics
    names = {e["name"]: e["kind"] for e in shared_oxeye.get_json("/api/v1/metrics/names")["metrics"]}
    assert {n: names.get(n) for n in (m.counter, m.gauge, m.updown, m.histogram)} == {
        m.counter: "number",
        m.gauge: "number",
        m.updown: "number",
        m.histogram: "histogram",
    }
    body = shared_oxeye.get_json("/api/v1/metrics/labels", {"name": m.counter})
    assert body == {"name": m.counter, "labels": ["service_name", "route"]}
    body = shared_oxeye.get_json("/api/v1/metrics/labels", {"name": m.gauge})
    assert body["labels"] == ["service_name", "room"]

    body = metric_query(shared_oxeye, m, f"nope.{uuid.uuid4().hex}", "1s")
    assert body["series"] == [] and body["type"] is None
    for params in ({"agg": "median"}, {"agg": "p99"}, {"step": "0s"}):
        r = shared_oxeye.get(
            "/api/v1/metrics/query",
            {"name": m.counter, "start": str(m.t0), "end": str(m.t0 + 4 * S), **params},
        )
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["kind"] == "invalid"


# ---------------------------------------------------------------------------------------------
# Hostile and malformed parameters


def test_parameters_are_values_not_sql(shared_oxeye: Oxeye, world: World, logs: Logs, metrics: Metrics):
    """Quotes in parameters are data: they match nothing instead of widening the query."""
    injection = "x' OR '1'='1"
    for path, params, key in (
        ("/api/v1/traces", {"service": injection}, "traces"),
        ("/api/v1/traces", {"operation": injection}, "traces"),
        ("/api/v1/traces", {"tags": "customer.tier=gold'OR'1'='1"}, "traces"),
        ("/api/v1/logs", {"service": injection}, "logs"),
        ("/api/v1/red", {"service": injection}, "operations"),
        (f"/api/v1/services/{injection}/operations", {}, "operations"),
        ("/api/v1/metrics/query", {"name": injection}, "series"),
        (
            "/api/v1/metrics/query",
            {"name": metrics.counter, "filters": "route=/a'OR'1'='1", "start": str(metrics.t0)},
            "series",
        ),
    ):
        body = shared_oxeye.get_json(path, params)
        assert body[key] == [], (path, params)
    # ... and still find what they name exactly.
    assert shared_oxeye.get_json("/api/v1/logs", {"service": logs.service, "limit": 1})["count"] == 1


@pytest.mark.parametrize("path", ["/api/v1/traces", "/api/v1/logs"])
def test_malformed_query_string_is_a_json_error(shared_oxeye: Oxeye, path: str):
    r = shared_oxeye.get(path, {"limit": "abc"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    assert r.json()["error"]["kind"] == "invalid"


def test_log_search_for_a_word_with_an_apostrophe(shared_oxeye: Oxeye):
    service = f"apostrophe-{uuid.uuid4().hex[:8]}"
    now = time.time_ns()
    shared_oxeye.export(
        records_request(
            [log_record("can't connect to db", now), log_record("connected", now + 1)], service=service
        )
    )
    body = shared_oxeye.get_json("/api/v1/logs", {"service": service, "query": "can't connect"})
    assert [e["body"] for e in body["logs"]] == ["can't connect to db"]
