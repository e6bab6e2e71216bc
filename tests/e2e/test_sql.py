"""SQL over HTTP (`POST /api/v1/sql`): the same answers in JSON, CSV, NDJSON and Arrow IPC;
attribute maps, full-text `search()`, lowercase hex ids and the `traces` view checked against
what was sent (the OpenTelemetry SDK, `oxeye-loadgen` and protobuf requests); errors, the
read-only surface, the result row cap and the query timeout; and time/index pushdown over several
flushed segments: EXPLAIN shows the pruning and the answers stay exactly those of a full scan."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pytest
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from oxeye_client import (
    LOADGEN_SERVICES,
    Oxeye,
    log_record,
    random_trace_id,
    records_request,
    rfc3339_ns,
    run_loadgen,
    sdk_span_ids,
    sdk_tracer_provider,
    span,
    trace_request,
    wait_until,
)

LOADGEN_IN = "(" + ", ".join(f"'{s}'" for s in LOADGEN_SERVICES) + ")"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

# Log bodies for search(): which contain both words `timeout` and `db` (as whole words, in any
# case, split at non-alphanumerics) is decided by `words()` below, not by this list.
SEARCH_BODIES = [
    "DB timeout after 30s",
    "timeout talking to db",
    "db.query: timeout",
    "TIMEOUT:DB",
    "timeout_db",
    "dbtimeout",
    "timeouts in db",
    "timeout talking to cache",
    "db connection refused",
    "café db timeout ünïcode",
    "nothing to see here",
    "timeout\tdb\nnext line",
]


def words(text: str) -> set[str]:
    """The words of a text as oxeye's full-text index splits them: runs of alphanumerics,
    lower-cased."""
    return set(re.findall(r"[^\W_]+", text.lower()))


@dataclass
class Loaded:
    loadgen: dict[str, Any] = field(repr=False)
    service: str  # SDK spans
    trace_id: str
    spans: dict[str, Any] = field(repr=False)  # SDK spans by name
    log_service: str  # SEARCH_BODIES


@pytest.fixture(scope="module")
def loaded(shared_oxeye: Oxeye) -> Loaded:
    server = shared_oxeye
    summary = run_loadgen(server, "2s")
    assert summary["spans_acked"] > 1000 and summary["logs_acked"] > 100 and summary["points_acked"] > 10

    service = f"sql-{uuid.uuid4().hex[:8]}"
    provider = sdk_tracer_provider(server, service, resource={"deployment.environment.name": "e2e"})
    tracer = provider.get_tracer("e2e.sql", "0.1")
    upstream = tracer.start_span("enqueue", kind=SpanKind.PRODUCER)
    upstream.end()
    root = tracer.start_span(
        "GET /sql",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "ratio": 0.5,
            "hit": True,
        },
    )
    with trace.use_span(root, end_on_exit=True):
        root.add_event("request.received", {"size": 512})
        with tracer.start_as_current_span(
            "SELECT rows", kind=SpanKind.CLIENT, links=[Link(upstream.get_span_context(), {"n": 1})]
        ) as client:
            client.set_attribute("db.system.name", "postgresql")
        with tracer.start_as_current_span("render", kind=SpanKind.INTERNAL) as internal:
            internal.set_status(Status(StatusCode.ERROR, "template missing"))
    assert provider.force_flush(30_000)
    provider.shutdown()
    spans = {"enqueue": upstream, "GET /sql": root, "SELECT rows": client, "render": internal}

    log_service = f"sql-logs-{uuid.uuid4().hex[:8]}"
    t0 = time.time_ns() - 60_000_000_000
    server.export(
        records_request(
            [log_record(b, t0 + i * 1_000_000, attributes={"i": i}) for i, b in enumerate(SEARCH_BODIES)],
            service=log_service,
        )
    )

    # Everything acknowledged is there at once, exactly once.
    assert (
        server.sql_value(f"SELECT count(*) FROM spans WHERE service_name IN {LOADGEN_IN}")
        == summary["spans_acked"]
    )
    assert (
        server.sql_value(f"SELECT count(*) FROM logs WHERE service_name IN {LOADGEN_IN}")
        == summary["logs_acked"]
    )
    points = server.sql_value(
        f"SELECT count(*) FROM metrics WHERE service_name IN {LOADGEN_IN}"
    ) + server.sql_value(f"SELECT count(*) FROM histograms WHERE service_name IN {LOADGEN_IN}")
    assert points == summary["points_acked"]
    assert server.span_count(f"service_name = '{service}'") == (4, 4)
    return Loaded(summary, service, sdk_span_ids(root)[0], spans, log_service)


# ---------------------------------------------------------------------------------------------
# One query, four encodings


def sql_type_of(t: pa.DataType) -> str:
    """The `type` the JSON format should report for an Arrow type."""
    if pa.types.is_dictionary(t):
        return sql_type_of(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_map(t):
        return "map"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return sql_type_of(t.value_type) + "[]"
    if pa.types.is_struct(t):
        return "struct"
    return {
        pa.bool_(): "boolean",
        pa.int16(): "smallint",
        pa.int32(): "integer",
        pa.int64(): "bigint",
        pa.uint32(): "bigint",
        pa.uint64(): "bigint",
        pa.float64(): "double",
    }[t]


def canon(value: Any, t: pa.DataType) -> Any:
    """A JSON/CSV value in a comparable form: timestamps (at any depth) as integer ns."""
    if value is None:
        return None
    if pa.types.is_dictionary(t):
        return canon(value, t.value_type)
    if pa.types.is_timestamp(t):
        return rfc3339_ns(value)
    if pa.types.is_map(t):
        return {k: canon(v, t.item_type) for k, v in value.items()}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [canon(v, t.value_type) for v in value]
    if pa.types.is_struct(t):
        assert set(value) == {f.name for f in t}, (value, t)
        return {f.name: canon(value[f.name], f.type) for f in t}
    return value


def arrow_value(s: pa.Scalar) -> Any:
    """An Arrow scalar as the same comparable form `canon` gives."""
    t = s.type
    if not s.is_valid:
        return None
    if pa.types.is_dictionary(t):
        return arrow_value(s.value)
    if pa.types.is_timestamp(t):
        return s.cast(pa.int64()).as_py()
    if pa.types.is_map(t):
        keys, values = s.values.flatten()
        return {arrow_value(k): arrow_value(v) for k, v in zip(keys, values, strict=True)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [arrow_value(v) for v in s.values]
    if pa.types.is_struct(t):
        return {f.name: arrow_value(s[f.name]) for f in t}
    return s.as_py()


def arrow_rows(table: pa.Table) -> list[list[Any]]:
    columns = []
    for col in table.columns:
        t = col.type
        nested = pa.types.is_map(t) or pa.types.is_list(t) or pa.types.is_struct(t)
        if pa.types.is_timestamp(t):
            columns.append(pc.cast(col, pa.int64()).to_pylist())
        elif nested:
            columns.append([arrow_value(s) for s in col])
        else:
            columns.append(col.to_pylist())  # dictionaries decode to their values
    return [list(r) for r in zip(*columns, strict=True)] if columns else []


def csv_cell(text: str, t: pa.DataType) -> Any:
    """A CSV cell (nested values as JSON text, NULL as empty) in the comparable form."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if text == "" and not pa.types.is_string(t):
        return None
    if pa.types.is_string(t):
        return text
    if pa.types.is_boolean(t):
        assert text in ("true", "false"), text
        return text == "true"
    if pa.types.is_integer(t):
        return int(text)
    if pa.types.is_floating(t):
        return float(text)
    if pa.types.is_timestamp(t):
        return rfc3339_ns(text)
    return canon(json.loads(text), t)


@dataclass
class Encoded:
    names: list[str]
    types: list[pa.DataType]
    json_types: list[str]
    json: list[list[Any]]
    ndjson: list[list[Any]]
    csv: list[list[Any]]
    arrow: list[list[Any]]


def all_formats(server: Oxeye, query: str) -> Encoded:
    r = server.sql_response(query, "arrow")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pyarrow.ipc.open_stream(r.content).read_all()
    names, types = table.schema.names, table.schema.types

    r = server.sql_response(query)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert [c["name"] for c in body["columns"]] == names
    assert body["row_count"] == len(body["rows"]) and body["truncated"] is False
    assert isinstance(body["elapsed_ms"], (int, float)) and body["elapsed_ms"] >= 0
    json_rows = [[canon(v, t) for v, t in zip(row, types, strict=True)] for row in body["rows"]]

    r = server.sql_response(query, "ndjson")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = r.text.split("\n")
    assert lines[-1] == "", "NDJSON must end with a newline"
    objects = [json.loads(line) for line in lines[:-1]]
    assert all(list(o) == names for o in objects)
    ndjson_rows = [[canon(o[n], t) for n, t in zip(names, types, strict=True)] for o in objects]

    r = server.sql_response(query, "csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    records = list(csv.reader(io.StringIO(r.text, newline="")))
    assert records[0] == names, "CSV header"
    csv_rows = [[csv_cell(c, t) for c, t in zip(rec, types, strict=True)] for rec in records[1:]]

    return Encoded(
        names,
        types,
        [c["type"] for c in body["columns"]],
        json_rows,
        ndjson_rows,
        csv_rows,
        arrow_rows(table),
    )


def as_csv_sees_it(rows: list[list[Any]], types: list[pa.DataType]) -> list[list[Any]]:
    """CSV cannot tell NULL text from empty text."""
    text = [
        pa.types.is_string(t) or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))
        for t in types
    ]
    return [
        ["" if v is None and is_text else v for v, is_text in zip(row, text, strict=True)] for row in rows
    ]


def assert_formats_agree(e: Encoded, rows: int) -> None:
    assert len(e.json) == rows
    assert e.json_types == [sql_type_of(t) for t in e.types]
    assert e.arrow == e.json, "Arrow IPC and JSON differ"
    assert e.ndjson == e.json, "NDJSON and JSON differ"
    assert e.csv == as_csv_sees_it(e.json, e.types), "CSV and JSON differ"


def test_sdk_spans_in_every_format(shared_oxeye: Oxeye, loaded: Loaded):
    e = all_formats(
        shared_oxeye,
        f"""SELECT trace_id, span_id, parent_span_id, trace_state, name, kind, service_name, start_time,
                   end_time,
                   duration_ns, status_code, status_message, attributes, resource_attributes, scope_name,
                   scope_version, events, links, flags, status_code = 'ERROR' AS is_error,
                   CAST(duration_ns AS DOUBLE) / 1e6 AS duration_ms
            FROM spans WHERE service_name = '{loaded.service}' ORDER BY span_id""",
    )
    assert_formats_agree(e, 4)
    rows = {r[e.names.index("name")]: dict(zip(e.names, r, strict=True)) for r in e.json}
    for name, s in loaded.spans.items():
        row = rows[name]
        assert (row["trace_id"], row["span_id"]) == sdk_span_ids(s)
        assert (row["start_time"], row["end_time"]) == (s.start_time, s.end_time)
        assert row["duration_ms"] == (s.end_time - s.start_time) / 1e6
    assert rows["GET /sql"]["parent_span_id"] is None
    assert rows["render"]["is_error"] is True and rows["GET /sql"]["is_error"] is False
    assert rows["GET /sql"]["events"][0]["time"] == loaded.spans["GET /sql"].events[0].timestamp
    assert rows["SELECT rows"]["links"][0]["span_id"] == sdk_span_ids(loaded.spans["enqueue"])[1]
    types = dict(zip(e.names, e.json_types, strict=True))
    assert (types["start_time"], types["duration_ns"], types["attributes"], types["is_error"]) == (
        "timestamptz",
        "bigint",
        "map",
        "boolean",
    )


def test_logs_in_every_format(shared_oxeye: Oxeye, loaded: Loaded):
    e = all_formats(
        shared_oxeye,
        f"""SELECT time, observed_time, severity_number, severity_text, body, trace_id, span_id, attributes,
                   service_name, event_name
            FROM logs WHERE service_name = '{loaded.log_service}' ORDER BY time""",
    )
    assert_formats_agree(e, len(SEARCH_BODIES))
    assert [r[e.names.index("body")] for r in e.json] == SEARCH_BODIES  # incl. quotes, tabs, newlines


def test_loadgen_spans_in_every_format(shared_oxeye: Oxeye, loaded: Loaded):
    """Tens of thousands of rows (many batches) come out the same in every encoding."""
    e = all_formats(
        shared_oxeye,
        f"""SELECT trace_id, span_id, name, kind, start_time, duration_ns, attributes['http.route'] AS route
            FROM spans WHERE service_name IN {LOADGEN_IN} ORDER BY span_id""",
    )
    assert_formats_agree(e, loaded.loadgen["spans_acked"])


def test_metrics_in_every_format(shared_oxeye: Oxeye, loaded: Loaded):
    def unordered(rows):
        return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))

    for query in (
        f"""SELECT time, start_time, name, type, is_monotonic, temporality, service_name, attributes, value,
                   value_int FROM metrics WHERE service_name IN {LOADGEN_IN}""",
        f"""SELECT time, name, service_name, attributes, count, sum, bucket_counts, explicit_bounds
            FROM histograms WHERE service_name IN {LOADGEN_IN}""",
    ):
        e = all_formats(shared_oxeye, query)
        assert e.json, query
        assert unordered(e.arrow) == unordered(e.json)
        assert unordered(e.ndjson) == unordered(e.json)
        assert unordered(e.csv) == unordered(as_csv_sees_it(e.json, e.types))


def test_non_finite_floats_are_not_null(shared_oxeye: Oxeye, loaded: Loaded):
    e = all_formats(
        shared_oxeye,
        "SELECT CAST('NaN' AS DOUBLE) AS nan, CAST('Infinity' AS DOUBLE) AS inf, "
        "CAST(NULL AS DOUBLE) AS nothing",
    )
    (nan, inf, nothing), (csv_nan, csv_inf, _) = e.arrow[0], e.csv[0]
    assert nan != nan and inf == float("inf") and nothing is None  # Arrow: exact
    assert csv_nan != csv_nan and csv_inf == float("inf")
    for name, (j_nan, j_inf, j_nothing) in (("json", e.json[0]), ("ndjson", e.ndjson[0])):
        assert j_nothing is None, name
        assert j_nan is not None and j_inf is not None, f"{name}: {e.json[0]}"


# ---------------------------------------------------------------------------------------------
# Attributes, search(), ids, the traces view


def test_attribute_access_matches_the_maps(shared_oxeye: Oxeye, loaded: Loaded):
    for table, column, key in (
        ("spans", "attributes", "http.request.method"),
        ("spans", "resource_attributes", "host.name"),
        ("spans", "scope_attributes", "absent.key"),
        ("logs", "attributes", "http.route"),
        ("logs", "resource_attributes", "service.version"),
        ("metrics", "attributes", "http.route"),
        ("histograms", "attributes", "http.route"),
    ):
        rows = shared_oxeye.sql_dicts(f"SELECT {column} AS m, {column}['{key}'] AS v FROM {table}")
        assert rows, table
        assert all(r["v"] == r["m"].get(key) for r in rows), f"{table}.{column}['{key}']"
        values = Counter(r["v"] for r in rows)
        if key != "absent.key":
            assert len(values) > 1, values
        for value, n in values.items():
            if value is None:
                continue
            got = shared_oxeye.sql_value(f"SELECT count(*) FROM {table} WHERE {column}['{key}'] = '{value}'")
            assert got == n, f"{table}.{column}['{key}'] = '{value}'"

    # Non-string values read as text.
    (row,) = shared_oxeye.sql_dicts(
        f"""SELECT attributes['http.request.method'] AS method,
                   attributes['http.response.status_code'] AS status,
                   attributes['ratio'] AS ratio, attributes['hit'] AS hit, attributes['nope'] AS nope
            FROM spans WHERE service_name = '{loaded.service}' AND name = 'GET /sql'"""
    )
    assert row == {"method": "GET", "status": "200", "ratio": "0.5", "hit": "true", "nope": None}


SEARCHES = {
    "timeout AND db": lambda w: "timeout" in w and "db" in w,
    "timeout db": lambda w: "timeout" in w and "db" in w,
    "TIMEOUT and DB": lambda w: "timeout" in w and "and" in w and "db" in w,  # `and` is a word
    "timeout OR refused": lambda w: "timeout" in w or "refused" in w,
    "timeout -db": lambda w: "timeout" in w and "db" not in w,
    "timeout*": lambda w: any(x.startswith("timeout") for x in w),
}


@pytest.mark.parametrize("query", list(SEARCHES))
def test_search_finds_exactly_the_matching_bodies(shared_oxeye: Oxeye, loaded: Loaded, query: str):
    bodies = [r[0] for r in shared_oxeye.sql("SELECT body FROM logs")[1]]
    want = Counter(b for b in bodies if SEARCHES[query](words(b)))
    got = Counter(r[0] for r in shared_oxeye.sql(f"SELECT body FROM logs WHERE search(body, '{query}')")[1])
    assert got == want
    # A count reads no body (the scan applies the search exactly): the same number.
    assert shared_oxeye.sql_value(f"SELECT count(*) FROM logs WHERE search(body, '{query}')") == sum(want.values())
    if query == "timeout AND db":
        mine = [b for b in SEARCH_BODIES if b in got]
        assert mine == [
            "DB timeout after 30s",
            "timeout talking to db",
            "db.query: timeout",
            "TIMEOUT:DB",
            "timeout_db",
            "café db timeout ünïcode",
            "timeout\tdb\nnext line",
        ]
        assert any(b not in SEARCH_BODIES for b in got), "loadgen's 'timeout talking to db' bodies"


def test_phrase_search(shared_oxeye: Oxeye, loaded: Loaded):
    got = shared_oxeye.sql(
        f"""SELECT body FROM logs
            WHERE service_name = '{loaded.log_service}' AND search(body, '"talking to db"')"""
    )[1]
    assert [r[0] for r in got] == ["timeout talking to db"]


def test_ids_are_lowercase_hex(shared_oxeye: Oxeye, loaded: Loaded):
    spans = shared_oxeye.sql_dicts("SELECT trace_id, span_id, parent_span_id, links FROM spans")
    assert spans
    for r in spans:
        assert HEX32.match(r["trace_id"]) and HEX16.match(r["span_id"]), r
        assert r["parent_span_id"] is None or HEX16.match(r["parent_span_id"]), r
        for link in r["links"]:
            assert HEX32.match(link["trace_id"]) and HEX16.match(link["span_id"]), link
    logs = shared_oxeye.sql_dicts(f"SELECT trace_id, span_id FROM logs WHERE service_name IN {LOADGEN_IN}")
    assert logs and all(HEX32.match(r["trace_id"]) and HEX16.match(r["span_id"]) for r in logs)
    assert shared_oxeye.sql_value(f"SELECT count(*) FROM spans WHERE trace_id = '{loaded.trace_id}'") == 3
    assert HEX32.match(loaded.trace_id)


def test_traces_view_agrees_with_a_group_by(shared_oxeye: Oxeye, loaded: Loaded):
    spans = shared_oxeye.sql_dicts(
        """SELECT trace_id, parent_span_id, service_name, name, status_code,
                  CAST(start_time AS BIGINT) AS s, CAST(end_time AS BIGINT) AS e FROM spans"""
    )
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for s in spans:
        by_trace[s["trace_id"]].append(s)
    view = shared_oxeye.sql_dicts(
        """SELECT trace_id, root_service, root_name, CAST(start_time AS BIGINT) AS s,
                  CAST(end_time AS BIGINT) AS e,
                  duration_ns, span_count, error_count, service_count FROM traces"""
    )
    assert len(view) == len(by_trace) > 100
    for row in view:
        members = by_trace[row["trace_id"]]
        key = min((m["parent_span_id"] is not None, m["s"]) for m in members)
        roots = {
            (m["service_name"], m["name"])
            for m in members
            if (m["parent_span_id"] is not None, m["s"]) == key
        }
        start, end = min(m["s"] for m in members), max(m["e"] for m in members)
        assert (row["root_service"], row["root_name"]) in roots, row
        assert (row["s"], row["e"], row["duration_ns"]) == (start, end, end - start), row
        assert row["span_count"] == len(members)
        assert row["error_count"] == sum(m["status_code"] == "ERROR" for m in members)
        assert row["service_count"] == len({m["service_name"] for m in members})
    mine = next(r for r in view if r["trace_id"] == loaded.trace_id)
    assert (mine["root_service"], mine["root_name"], mine["span_count"], mine["error_count"]) == (
        loaded.service,
        "GET /sql",
        3,
        1,
    )


# ---------------------------------------------------------------------------------------------
# Errors


def sql_error(server: Oxeye, body: Any, params: dict | None = None, status: int = 400) -> dict:
    """Posts `body` (a query text, or raw bytes) and returns the error object of the answer."""
    if isinstance(body, str):
        r = server.session.post(f"{server.api}/api/v1/sql", json={"sql": body}, params=params, timeout=30)
    else:
        r = server.session.post(
            f"{server.api}/api/v1/sql",
            data=body,
            params=params,
            timeout=30,
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == status, f"HTTP {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"kind", "message", "position"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_still_serving(server: Oxeye) -> None:
    assert server.sql_value("SELECT 1 + 1") == 2
    assert server.sql_value("SELECT count(*) FROM spans") > 0


@pytest.mark.parametrize(
    "query, line, column",
    [
        ("SELEC 1", 1, 1),
        ("SELECT count(*)\nFROM spans\nWHERE name = = 1", 3, 14),
        ("SELECT count(*) FROM spans LIMIT 1 2", 1, 36),
    ],
)
def test_parser_error_has_a_position(shared_oxeye: Oxeye, loaded: Loaded, query: str, line: int, column: int):
    error = sql_error(shared_oxeye, query)
    assert error["kind"] == "invalid"
    assert error["position"] == {"line": line, "column": column}
    assert_still_serving(shared_oxeye)


def test_parser_error_at_end_of_input_has_a_position(shared_oxeye: Oxeye, loaded: Loaded):
    error = sql_error(shared_oxeye, "SELECT count(*)\nFROM spans\nWHERE")
    assert error["kind"] == "invalid"
    assert error["position"] is not None and error["position"]["line"] == 3


def test_unknown_column_and_table(shared_oxeye: Oxeye, loaded: Loaded):
    error = sql_error(shared_oxeye, "SELECT no_such_column FROM spans")
    assert error["kind"] == "invalid" and "no_such_column" in error["message"]
    error = sql_error(shared_oxeye, "SELECT * FROM no_such_table")
    assert error["kind"] == "invalid" and "no_such_table" in error["message"]
    error = sql_error(shared_oxeye, "SELECT attributes['x'] FROM logs WHERE search(body, '(unbalanced')")
    assert error["kind"] == "invalid" and "unbalanced" in error["message"]
    assert_still_serving(shared_oxeye)


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE spans",
        "INSERT INTO spans (name) VALUES ('x')",
        "CREATE TABLE t (a INT)",
        "DELETE FROM spans",
        "UPDATE spans SET name = 'x'",
        "CREATE VIEW v AS SELECT 1",
        "CREATE EXTERNAL TABLE passwd STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '{tmp}/copied.csv'",
        "SET datafusion.execution.batch_size = 1",
        "EXPLAIN DROP TABLE spans",
    ],
)
def test_writes_are_refused(shared_oxeye: Oxeye, loaded: Loaded, tmp_path, statement: str):
    before = shared_oxeye.span_count()
    error = sql_error(shared_oxeye, statement.format(tmp=tmp_path))
    assert error["kind"] == "read_only", error
    assert error["position"] is None
    assert shared_oxeye.span_count() == before
    assert not list(tmp_path.iterdir()), "COPY wrote a file"
    assert sql_error(shared_oxeye, "SELECT * FROM passwd")["kind"] == "invalid"
    assert sql_error(shared_oxeye, "SELECT * FROM v")["kind"] == "invalid"
    assert_still_serving(shared_oxeye)


def test_bad_requests(shared_oxeye: Oxeye, loaded: Loaded):
    assert sql_error(shared_oxeye, b"SELECT 1")["kind"] == "invalid"  # not JSON
    assert sql_error(shared_oxeye, b'{"query": "SELECT 1"}')["kind"] == "invalid"  # no `sql`
    assert sql_error(shared_oxeye, b'{"sql": 5}')["kind"] == "invalid"
    error = sql_error(shared_oxeye, "SELECT 1", params={"format": "xml"})
    assert error["kind"] == "invalid" and "xml" in error["message"]
    error = sql_error(shared_oxeye, "SELECT 1; SELECT 2")
    assert error["kind"] == "invalid"
    assert_still_serving(shared_oxeye)


# ---------------------------------------------------------------------------------------------
# Limits


@pytest.fixture(scope="module")
def capped(module_oxeye_factory) -> Oxeye:
    server = module_oxeye_factory(query_max_rows=10)
    tid = random_trace_id()
    server.export(trace_request([span(tid, name=f"s{i:02}") for i in range(25)], service="capped"))
    return server


def test_row_cap_truncates(capped: Oxeye):
    query = "SELECT name FROM spans ORDER BY name"
    r = capped.sql_response(query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["truncated"] is True
    assert body["row_count"] == 10
    assert [row[0] for row in body["rows"]] == [f"s{i:02}" for i in range(10)]
    assert r.headers["x-oxeye-truncated-at"] == "10"

    ndjson = capped.sql_response(query, "ndjson")
    assert [json.loads(line)["name"] for line in ndjson.text.splitlines()] == [f"s{i:02}" for i in range(10)]
    assert ndjson.headers["x-oxeye-truncated-at"] == "10"
    assert len(list(csv.reader(io.StringIO(capped.sql_response(query, "csv").text)))) == 11  # + header
    assert pyarrow.ipc.open_stream(capped.sql_response(query, "arrow").content).read_all().num_rows == 10

    # Exactly the cap is not truncated; aggregates over more rows are not either.
    for q, n in (("SELECT name FROM spans ORDER BY name LIMIT 10", 10), ("SELECT count(*) FROM spans", 1)):
        r = capped.sql_response(q)
        assert r.json()["truncated"] is False and r.json()["row_count"] == n, q
        assert "x-oxeye-truncated-at" not in r.headers
    assert capped.sql_value("SELECT count(*) FROM spans") == 25


HEAVY = "SELECT count(*) FROM generate_series(1, 100000000000)"


def process_cpu_seconds(server: Oxeye) -> float:
    fields = open(f"/proc/{server.proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(server: Oxeye, timeout: float = 20) -> None:
    """Polls until the server uses less than a fifth of a core over half a second."""

    def idle() -> bool:
        before, t0 = process_cpu_seconds(server), time.monotonic()
        time.sleep(0.5)  # the measurement window, not an assertion on timing
        return (process_cpu_seconds(server) - before) / (time.monotonic() - t0) < 0.2

    wait_until(idle, timeout=timeout, interval=0, what="oxeye idle after the timed-out query")


def test_query_timeout(oxeye_factory):
    server = oxeye_factory(query_timeout="300ms")
    started = time.monotonic()
    error = sql_error(server, HEAVY, status=408)
    assert time.monotonic() - started < 10
    assert error["kind"] == "timeout" and "300ms" in error["message"]
    # The query was stopped, not left running: the server is idle again and answers at once.
    wait_idle(server)
    assert server.sql_value("SELECT 1") == 1
    assert server.sql_value("SELECT count(*) FROM generate_series(1, 1000)") == 1000


# ---------------------------------------------------------------------------------------------
# Pushdown over several segments

HOUR = 3600 * 1_000_000_000
WAVES = 3
TRACES_PER_WAVE = 150  # x 10 spans: more than one 1024-row granule per segment
SCAN = re.compile(
    r"OxeyeScan: table=(\w+)(?P<rest>.*?), segments=(?P<read>\d+)/(?P<total>\d+) "
    r"\(pruned by time (?P<time>\d+), by index (?P<index>\d+)\), granules=(?P<granules>\d+)"
)


@dataclass
class Segmented:
    server: Oxeye
    t0: int
    traces: list[list[str]] = field(repr=False)  # trace ids per wave
    spans: list[dict[str, Any]] = field(repr=False)  # every span, from a full scan


@pytest.fixture(scope="module")
def segmented(module_oxeye_factory) -> Segmented:
    """Three waves of spans and logs, each an hour apart in event time and each flushed into its
    own segment (no compaction)."""
    server = module_oxeye_factory(flush_age="1s", maintenance_interval="1h")
    t0 = (time.time_ns() // HOUR - 6) * HOUR
    traces: list[list[str]] = []
    for k in range(WAVES):
        spans, ids = [], []
        for t in range(TRACES_PER_WAVE):
            tid = random_trace_id()
            ids.append(tid.hex())
            attrs = {"wave": f"w{k}", "n": t % 7, "ok": t % 2 == 0, "eq": "a=b" if t % 5 == 0 else "a"}
            spans += [
                span(
                    tid, name=f"w{k} op {i}", start_ns=t0 + k * HOUR + t * 1_000_000_000 + i, attributes=attrs
                )
                for i in range(10)
            ]
        traces.append(ids)
        server.export(trace_request(spans, service=f"wave{k}", resource={"wave.n": k}))
        logs = [log_record(f"wave{k}word entry {j}", t0 + k * HOUR + j) for j in range(50)]
        server.export(records_request(logs, service=f"wave{k}"))
        server.wait_metric("oxeye_store_segments", k + 1, signal="spans")
        server.wait_metric("oxeye_store_segments", k + 1, signal="logs")
    assert server.metric("oxeye_store_segments", signal="spans") == WAVES
    rows = server.sql_dicts(
        """SELECT trace_id, span_id, name, service_name, CAST(start_time AS BIGINT) AS st,
                  CAST(end_time AS BIGINT) AS et, attributes, resource_attributes FROM spans"""
    )
    assert len(rows) == WAVES * TRACES_PER_WAVE * 10
    return Segmented(server, t0, traces, rows)


def scan_line(server: Oxeye, query: str, analyze: bool = False) -> re.Match:
    _, rows = server.sql(("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + query)
    text = "\n".join(r[-1] for r in rows)
    (m,) = [m for line in text.splitlines() if (m := SCAN.search(line))]
    return m


def span_ids_where(server: Oxeye, where: str) -> list[str]:
    return sorted(r[0] for r in server.sql(f"SELECT span_id FROM spans WHERE {where}")[1])


def test_trace_id_query_prunes_segments_by_index(segmented: Segmented):
    s = segmented
    # Segments keep traces in order of their start: wave 1's last trace lies in its last granule.
    tid = s.traces[1][-1]
    m = scan_line(s.server, f"SELECT * FROM spans WHERE trace_id = '{tid}'")
    assert m.group(1) == "spans"
    assert "index=TraceId(" in m.group("rest")
    assert (m.group("read"), m.group("total"), m.group("index"), m.group("time")) == ("1", "3", "2", "0")
    assert span_ids_where(s.server, f"trace_id = '{tid}'") == sorted(
        r["span_id"] for r in s.spans if r["trace_id"] == tid
    )

    # EXPLAIN ANALYZE ran it: only the trace's granule was read, not the whole segment.
    _, rows = s.server.sql(f"EXPLAIN ANALYZE SELECT count(*) FROM spans WHERE trace_id = '{tid}'")
    text = "\n".join(r[-1] for r in rows)
    m = SCAN.search(text)
    assert (m.group("read"), m.group("index"), m.group("granules")) == ("1", "2", "1"), text
    filtered, read = re.search(r"FilterExec: .*selectivity=[^(]*\(([^/]+)/([^)]+)\)", text).groups()
    assert (metric_count(filtered), metric_count(read)) == (10, TRACES_PER_WAVE * 10 % GRANULE), text


GRANULE = 1024  # rows per index granule (ARCHITECTURE.md)


def metric_count(text: str) -> float:
    """A row count as DataFusion's EXPLAIN ANALYZE prints it (`476`, `1.02 K`, `3.1 M`)."""
    number, _, unit = text.strip().partition(" ")
    return float(number) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[unit]


def test_time_range_prunes_segments_by_time(segmented: Segmented):
    s = segmented
    lo, hi = s.t0 + HOUR, s.t0 + HOUR + TRACES_PER_WAVE * 1_000_000_000
    where = f"start_time >= to_timestamp_nanos({lo}) AND start_time < to_timestamp_nanos({hi})"
    m = scan_line(s.server, f"SELECT * FROM spans WHERE {where}")
    assert "time=[" in m.group("rest")
    assert (m.group("read"), m.group("time")) == ("1", "2")
    m = scan_line(s.server, f"SELECT count(*) FROM spans WHERE {where}", analyze=True)
    assert (m.group("read"), m.group("time")) == ("1", "2")
    want = sorted(r["span_id"] for r in s.spans if lo <= r["st"] < hi)
    assert len(want) == TRACES_PER_WAVE * 10
    assert span_ids_where(s.server, where) == want


def test_log_search_prunes_segments_by_index(segmented: Segmented):
    server = segmented.server
    m = scan_line(server, "SELECT body FROM logs WHERE search(body, 'wave2word')")
    assert m.group(1) == "logs" and int(m.group("index")) == 2
    bodies = sorted(r[0] for r in server.sql("SELECT body FROM logs WHERE search(body, 'wave2word')")[1])
    assert bodies == sorted(f"wave2word entry {j}" for j in range(50))
    # Log segments index every line: a count of the lines a search finds comes from the index
    # alone, without reading a page of the segments.
    unread = server.metric("oxeye_store_scan_rows_counted_unread_total")
    assert server.sql_value("SELECT count(*) FROM logs WHERE search(body, 'wave2word')") == 50
    assert server.metric("oxeye_store_scan_rows_counted_unread_total") - unread == 50
    plan = "\n".join(r[1] for r in server.sql("EXPLAIN SELECT count(*) FROM logs WHERE search(body, 'wave2word')")[1])
    assert "FilterExec" not in plan, plan


def pushdown_cases(s: Segmented) -> dict[str, Any]:
    lo = s.t0 + HOUR  # the first span of wave 1
    hi = lo + (TRACES_PER_WAVE - 1) * 1_000_000_000 + 9  # its last
    a, b = s.traces[0][3], s.traces[2][5]
    return {
        f"trace_id = '{a}' OR trace_id = '{b}'": lambda r: r["trace_id"] in (a, b),
        f"trace_id IN ('{a}', '{b}')": lambda r: r["trace_id"] in (a, b),
        f"trace_id = '{a}' AND name = 'w0 op 3'": lambda r: r["trace_id"] == a and r["name"] == "w0 op 3",
        f"trace_id = '{a}' OR name = 'w1 op 3'": lambda r: r["trace_id"] == a or r["name"] == "w1 op 3",
        f"trace_id = '{a.upper()}'": lambda r: False,  # ids are lowercase text
        "attributes['n'] = '3'": lambda r: r["attributes"].get("n") == "3",
        "attributes['ok'] = 'true'": lambda r: r["attributes"].get("ok") == "true",
        "attributes['eq'] = 'a=b'": lambda r: r["attributes"].get("eq") == "a=b",
        "attributes['wave'] = 'w2' AND attributes['n'] = '0'": lambda r: (
            r["attributes"].get("wave") == "w2" and r["attributes"].get("n") == "0"
        ),
        "attributes['Wave'] = 'w2'": lambda r: False,
        "resource_attributes['wave.n'] = '1'": lambda r: r["resource_attributes"].get("wave.n") == "1",
        "service_name = 'wave1'": lambda r: r["service_name"] == "wave1",
        "service_name = 'WAVE1'": lambda r: False,
        "name = 'w1 op 3'": lambda r: r["name"] == "w1 op 3",
        f"start_time <= to_timestamp_nanos({lo})": lambda r: r["st"] <= lo,
        f"start_time < to_timestamp_nanos({lo})": lambda r: r["st"] < lo,
        f"start_time >= to_timestamp_nanos({hi})": lambda r: r["st"] >= hi,
        f"start_time > to_timestamp_nanos({hi})": lambda r: r["st"] > hi,
        f"start_time BETWEEN to_timestamp_nanos({lo}) AND to_timestamp_nanos({hi})": lambda r: (
            lo <= r["st"] <= hi
        ),
        f"to_timestamp_nanos({lo}) >= start_time": lambda r: r["st"] <= lo,
        f"NOT (start_time < to_timestamp_nanos({lo}))": lambda r: r["st"] >= lo,
        f"end_time <= to_timestamp_nanos({lo + 1_000_000})": lambda r: r["et"] <= lo + 1_000_000,
        f"start_time >= to_timestamp_nanos({lo}) AND trace_id = '{a}'": lambda r: (
            r["st"] >= lo and r["trace_id"] == a
        ),
        f"start_time >= to_timestamp_nanos({lo}) OR trace_id = '{a}'": lambda r: (
            r["st"] >= lo or r["trace_id"] == a
        ),
    }


def test_pushdown_never_changes_answers(segmented: Segmented):
    """Each filter gives exactly the rows that the full scan, filtered in Python, gives."""
    s = segmented
    wrong = []
    for where, keep in pushdown_cases(s).items():
        want = sorted(r["span_id"] for r in s.spans if keep(r))
        got = span_ids_where(s.server, where)
        if got != want:
            wrong.append(f"{where}: {len(got)} rows, expected {len(want)}")
    assert not wrong, wrong
