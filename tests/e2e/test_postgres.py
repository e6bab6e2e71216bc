"""The PostgreSQL wire protocol, driven by real clients: `psql` (queries, `\\dt`, `\\d`, `\\l`,
errors) and psycopg 3 (simple and extended protocol with typed parameters, binary results,
typed values, SQLSTATE-based exception classes, session statements, the information_schema
queries Grafana's PostgreSQL data source sends), on loopback trust and with a password."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field

import psycopg
import psycopg.errors
import pytest

from oxeye_client import (
    Oxeye,
    SdkTraces,
    SpanSpec,
    log_record,
    records_request,
)

S = 1_000_000_000
TABLES = {
    "spans",
    "logs",
    "metrics",
    "histograms",
    "exp_histograms",
    "summaries",
    # Alerting's history (alert/src/tables.rs).
    "alert_events",
    "alert_notifications",
}
UTC = dt.timezone.utc


def utc(ns: int) -> dt.datetime:
    """The datetime a timestamptz of `ns` reads as (PostgreSQL keeps microseconds)."""
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=ns // 1000)


@dataclass
class Data:
    service: str
    sent: SdkTraces = field(repr=False)
    log_service: str
    log_times: list[int]


@pytest.fixture(scope="module")
def data(shared_oxeye: Oxeye) -> Data:
    u = uuid.uuid4().hex[:8]
    service = f"pg-{u}"
    sent = SdkTraces(shared_oxeye)
    base = (time.time_ns() - 5 * 60 * S) // S * S
    for i in range(10):
        sent.send(
            SpanSpec(
                service,
                f"op {i % 3}",
                "SERVER",
                0,
                1 + i,
                {"i": i, "even": i % 2 == 0, "http.request.method": "GET"},
                error="bad" if i == 7 else None,
                children=[SpanSpec(service, "child", "CLIENT", 0.25, 0.5)],
            ),
            base + i * S,
        )
    sent.flush()
    log_service = f"pg-logs-{u}"
    log_times = [base + i * S + 123_456_789 for i in range(5)]
    shared_oxeye.export(
        records_request(
            [log_record(f"log {i}", t, 9 + 4 * (i % 2), "INFO") for i, t in enumerate(log_times)], log_service
        )
    )
    shared_oxeye.wait_span_count(f"service_name = '{service}'", 20)
    yield Data(service, sent, log_service, log_times)
    sent.shutdown()


@pytest.fixture
def conn(shared_oxeye: Oxeye):
    with shared_oxeye.pg_connect() as c:
        yield c


# ---------------------------------------------------------------------------------------------
# psql


def psql_rows(server: Oxeye, *commands: str) -> list[list[str]]:
    out = server.psql(*commands).stdout
    return [line.split("|") for line in out.splitlines() if line]


def test_psql_queries(shared_oxeye: Oxeye, data: Data):
    ((version,),) = psql_rows(shared_oxeye, "SELECT version()")
    assert version.startswith("PostgreSQL ")
    ((count,),) = psql_rows(shared_oxeye, f"SELECT count(*) FROM spans WHERE service_name = '{data.service}'")
    assert (
        int(count)
        == 20
        == shared_oxeye.sql_value(f"SELECT count(*) FROM spans WHERE service_name = '{data.service}'")
    )
    rows = psql_rows(
        shared_oxeye,
        f"SELECT name, count(*), sum(CASE WHEN status_code = 'ERROR' THEN 1 ELSE 0 END) FROM spans "
        f"WHERE service_name = '{data.service}' AND kind = 'SERVER' GROUP BY name ORDER BY name",
    )
    assert rows == [["op 0", "4", "0"], ["op 1", "3", "1"], ["op 2", "3", "0"]]


def test_psql_lists_tables_columns_and_databases(shared_oxeye: Oxeye, data: Data):
    tables = psql_rows(shared_oxeye, r"\dt")
    assert {t[1] for t in tables} == TABLES
    assert all(t[0] == "public" and t[2] == "table" for t in tables), tables

    columns = {row[0]: row[1] for row in psql_rows(shared_oxeye, r"\d spans")}
    want = {
        "trace_id": "text",
        "span_id": "text",
        "parent_span_id": "text",
        "trace_state": "text",
        "name": "text",
        "kind": "text",
        "service_name": "text",
        "start_time": "timestamptz",
        "end_time": "timestamptz",
        "duration_ns": "int8",
        "status_code": "text",
        "status_message": "text",
        "attributes": "json",
        "resource_attributes": "json",
        "scope_name": "text",
        "scope_version": "text",
        "events": "json",
        "links": "json",
    }
    assert {k: columns.get(k) for k in want} == want
    columns = {row[0]: row[1] for row in psql_rows(shared_oxeye, r"\d logs")}
    assert (columns["time"], columns["severity_number"], columns["body"], columns["attributes"]) == (
        "timestamptz",
        "int4",
        "text",
        "json",
    )
    columns = {row[0]: row[1] for row in psql_rows(shared_oxeye, r"\d metrics")}
    assert (columns["value"], columns["value_int"], columns["is_monotonic"]) == ("float8", "int8", "bool")

    databases = psql_rows(shared_oxeye, r"\l")
    assert "oxeye" in [d[0] for d in databases]


def test_psql_error_exits_nonzero_with_the_message(shared_oxeye: Oxeye, data: Data):
    p = shared_oxeye.psql("SELECT nope FROM spans", "SELECT 'not reached'", check=False)
    assert p.returncode != 0
    assert "ERROR" in p.stderr and "nope" in p.stderr
    assert "not reached" not in p.stdout
    # The server goes on serving.
    assert psql_rows(shared_oxeye, "SELECT 1 + 1") == [["2"]]


# ---------------------------------------------------------------------------------------------
# psycopg


def test_simple_query_protocol(shared_oxeye: Oxeye, data: Data, conn):
    # Several statements in one query string travel with the simple query protocol only.
    cur = conn.execute(
        f"SELECT count(*) FROM spans WHERE service_name = '{data.service}'; "
        f"SELECT body FROM logs WHERE service_name = '{data.log_service}' ORDER BY time"
    )
    assert cur.fetchall() == [(20,)]
    assert cur.nextset()
    assert cur.fetchall() == [(f"log {i}",) for i in range(5)]
    assert not cur.nextset()
    # Client-side binding also uses the simple protocol.
    cur = psycopg.ClientCursor(conn)
    cur.execute("SELECT count(*) FROM spans WHERE service_name = %s AND name = %s", (data.service, "op 1"))
    assert cur.fetchone() == (3,)
    cur.execute("SELECT %s AS quoted", ("it's",))
    assert cur.fetchone() == ("it's",)


def test_extended_protocol_with_parameters(shared_oxeye: Oxeye, data: Data, conn):
    roots = sorted((s for s in data.sent.spans if s.parent_span_id is None), key=lambda s: s.start_ns)
    since = roots[4].start_ns  # a whole second: exact in microseconds
    paris = dt.timezone(dt.timedelta(hours=2))
    query = """SELECT span_id FROM spans
               WHERE service_name = %s AND duration_ns >= %s AND CAST(duration_ns AS DOUBLE) / 1e6 < %s
                 AND start_time >= %s AND parent_span_id IS NULL
               ORDER BY span_id"""
    for prepare in (False, True):
        for low, high in ((3_000_000, 8.5), (1, 100.0)):
            cur = conn.execute(
                query, (data.service, low, high, utc(since).astimezone(paris)), prepare=prepare
            )
            want = sorted(
                s.span_id
                for s in roots
                if s.duration_ns >= low and s.duration_ns / 1e6 < high and s.start_ns >= since
            )
            assert [r[0] for r in cur.fetchall()] == want, (prepare, low, high)
    # Parameters compared with columns of each type.
    (n,) = conn.execute(
        "SELECT count(*) FROM logs WHERE service_name = %s AND severity_number = %s AND time > %s",
        (data.log_service, 13, utc(data.log_times[0])),
    ).fetchone()
    assert n == 2
    (n,) = conn.execute(
        "SELECT count(*) FROM spans WHERE service_name = %s AND (status_code = 'ERROR') = %s",
        (data.service, True),
    ).fetchone()
    assert n == 1


def test_parameters_in_the_select_list_keep_their_types(shared_oxeye: Oxeye, conn):
    when = dt.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    row = conn.execute(
        "SELECT %s AS t, %s AS i, %s AS f, %s AS ts, %s AS b", ("héllo", 42, 2.5, when, True)
    ).fetchone()
    assert row == ("héllo", 42, 2.5, when, True)


def test_result_types_text_and_binary(shared_oxeye: Oxeye, data: Data, conn):
    root = min((s for s in data.sent.spans if s.parent_span_id is None), key=lambda s: s.start_ns)
    query = """SELECT trace_id, start_time, duration_ns, attributes, status_code = 'ERROR' AS is_error,
                      CAST(duration_ns AS DOUBLE) / 1e6 AS ms, events, links, parent_span_id
               FROM spans WHERE span_id = %s"""
    for cursor in (conn.cursor(), conn.cursor(binary=True)):
        row = cursor.execute(query, (root.span_id,)).fetchone()
        trace_id, start, duration, attributes, is_error, ms, events, links, parent = row
        assert trace_id == root.trace_id
        assert start == utc(root.start_ns) and start.tzinfo is not None
        assert type(duration) is int and duration == root.duration_ns
        assert attributes == {"i": "0", "even": "true", "http.request.method": "GET"}
        assert is_error is False
        assert type(ms) is float and ms == root.duration_ns / 1e6
        assert events == [] and links == [] and parent is None
        names = [d.name for d in cursor.description]
        assert names == [
            "trace_id",
            "start_time",
            "duration_ns",
            "attributes",
            "is_error",
            "ms",
            "events",
            "links",
            "parent_span_id",
        ]
    logs = (
        conn.cursor(binary=True)
        .execute(
            "SELECT time, severity_number, body FROM logs WHERE service_name = %s ORDER BY time",
            (data.log_service,),
        )
        .fetchall()
    )
    assert logs == [(utc(t), 9 + 4 * (i % 2), f"log {i}") for i, t in enumerate(data.log_times)]


@pytest.mark.parametrize(
    "statement, error",
    [
        ("SELECT nope FROM spans", psycopg.errors.UndefinedColumn),
        ("SELEC 1", psycopg.errors.SyntaxError),
        ("SELECT count(*) FROM spans WHERE", psycopg.errors.SyntaxError),
        ("DROP TABLE spans", psycopg.errors.ReadOnlySqlTransaction),
        ("INSERT INTO spans (name) VALUES ('x')", psycopg.errors.ReadOnlySqlTransaction),
        ("CREATE TABLE t (a int)", psycopg.errors.ReadOnlySqlTransaction),
        ("DELETE FROM spans", psycopg.errors.ReadOnlySqlTransaction),
    ],
)
@pytest.mark.parametrize("binding", ["server", "client"])
def test_errors_raise_the_right_class(shared_oxeye: Oxeye, data: Data, conn, statement, error, binding):
    cur = conn.cursor() if binding == "server" else psycopg.ClientCursor(conn)
    with pytest.raises(error) as raised:
        cur.execute(statement)
    assert raised.value.diag.message_primary
    conn.rollback()
    assert conn.execute(f"SELECT count(*) FROM spans WHERE service_name = '{data.service}'").fetchone() == (
        20,
    )


def test_unknown_table_is_undefined_table(shared_oxeye: Oxeye, conn):
    with pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM no_such_table")


def test_session_statements(shared_oxeye: Oxeye, data: Data):
    with shared_oxeye.pg_connect(autocommit=True) as conn:
        cur = conn.execute("SET application_name = 'e2e'")
        assert cur.statusmessage == "SET"
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("16")
        assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        assert conn.execute("BEGIN").statusmessage == "BEGIN"
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("COMMIT").statusmessage == "COMMIT"
        assert conn.execute("BEGIN").statusmessage == "BEGIN"
        assert conn.execute("ROLLBACK").statusmessage == "ROLLBACK"
        assert conn.execute("RESET ALL").statusmessage == "RESET"
        assert conn.execute("DISCARD ALL").statusmessage == "DISCARD ALL"
    with shared_oxeye.pg_connect() as conn:
        with conn.transaction():
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert conn.execute(
                "SELECT count(*) FROM logs WHERE service_name = %s", (data.log_service,)
            ).fetchone() == (5,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# ---------------------------------------------------------------------------------------------
# What Grafana's PostgreSQL data source asks

# The schema constraint of Grafana's table and column listings: tables of the search_path.
IN_SEARCH_PATH = """quote_ident(table_schema) IN (
    SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM generate_series(array_lower(string_to_array(current_setting('search_path'), ','), 1),
                         array_upper(string_to_array(current_setting('search_path'), ','), 1)) AS i,
         string_to_array(current_setting('search_path'), ',') s)"""


def test_information_schema(shared_oxeye: Oxeye, conn):
    tables = conn.execute(
        'SELECT quote_ident(table_name) AS "table" FROM information_schema.tables '
        "WHERE quote_ident(table_schema) = %s ORDER BY 1",
        ("public",),
    ).fetchall()
    assert TABLES | {"traces"} == {t[0] for t in tables}
    schemas = conn.execute(
        "SELECT schema_name FROM information_schema.schemata "
        "WHERE schema_name NOT IN ('information_schema', 'pg_catalog', 'pg_toast') ORDER BY schema_name"
    ).fetchall()
    assert ("public",) in schemas
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            ("spans",),
        ).fetchall()
    ]
    assert columns[:3] == ["trace_id", "span_id", "parent_span_id"]
    assert {
        "name",
        "kind",
        "service_name",
        "start_time",
        "duration_ns",
        "attributes",
        "events",
        "links",
    } <= set(columns)


def test_information_schema_data_types_are_postgres_names(shared_oxeye: Oxeye, conn):
    types = dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'spans'"
        ).fetchall()
    )
    assert (types["trace_id"], types["start_time"], types["duration_ns"]) == (
        "text",
        "timestamp with time zone",
        "bigint",
    )


@pytest.mark.parametrize("query", ["version", "tables", "columns"])
def test_grafana_metadata_queries(shared_oxeye: Oxeye, conn, query: str):
    if query == "version":
        assert conn.execute(
            "SELECT current_setting('server_version_num')::int/100 AS version"
        ).fetchone() == (1600,)
    elif query == "tables":
        rows = conn.execute(
            f"""SELECT CASE WHEN {IN_SEARCH_PATH} THEN quote_ident(table_name)
                            ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS "table"
                FROM information_schema.tables
                WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog')
                ORDER BY CASE WHEN {IN_SEARCH_PATH} THEN 0 ELSE 1 END, 1"""
        ).fetchall()
        assert TABLES <= {r[0] for r in rows}
    else:
        rows = conn.execute(
            f"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
                FROM information_schema.columns
                WHERE CASE WHEN array_length(parse_ident('spans'), 1) = 2
                           THEN quote_ident(table_schema) = (parse_ident('spans'))[1]
                                AND quote_ident(table_name) = (parse_ident('spans'))[2]
                           ELSE quote_ident(table_name) = 'spans' AND {IN_SEARCH_PATH} END"""
        ).fetchall()
        assert {"trace_id", "start_time"} <= {r[0] for r in rows}


def test_pg_catalog_is_on_the_search_path(shared_oxeye: Oxeye, conn):
    assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchall() == []
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'spans'").fetchone() == (1,)


# ---------------------------------------------------------------------------------------------
# Limits and authentication


def test_query_timeout(oxeye_factory):
    server = oxeye_factory(query_timeout="300ms")
    with server.pg_connect() as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM generate_series(1, 100000000000)")
        conn.rollback()
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)


def test_password(oxeye_factory):
    server = oxeye_factory(pg_user="me", pg_password="secret")
    with server.pg_connect(user="me", password="secret") as conn:
        assert conn.execute("SELECT count(*) FROM spans").fetchone() == (0,)
        assert conn.info.user == "me"
    assert server.psql("SELECT 7", user="me", password="secret").stdout.strip() == "7"
    for user, password in (("me", "wrong"), ("oxeye", "secret"), ("someone", "secret"), ("me", "")):
        with pytest.raises(psycopg.OperationalError):
            server.pg_connect(user=user, password=password)
    p = server.psql("SELECT 1", user="me", password="wrong", check=False)
    assert p.returncode != 0 and "password" in p.stderr.lower()


def test_current_user_is_the_login_user(oxeye_factory):
    server = oxeye_factory(pg_user="me", pg_password="secret")
    with server.pg_connect(user="me", password="secret") as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == ("me", "me")
