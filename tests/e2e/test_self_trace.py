"""oxeye's own traces (`--self-trace`, off by default): OTLP exports, API requests, the SQL
queries under them and flushes are stored in oxeye as the service `oxeye`, nested as they ran."""

from __future__ import annotations

import time

from oxeye_client import Oxeye, random_trace_id, span, trace_request, wait_until


def _self_spans(server: Oxeye) -> list[dict]:
    return server.sql_dicts(
        "SELECT trace_id, span_id, parent_span_id, name, kind, status_code, "
        "attributes['db.query.text'] AS statement, attributes['http.response.status_code'] AS status "
        "FROM spans WHERE service_name = 'oxeye'"
    )


def test_oxeye_traces_itself_when_asked(oxeye_factory):
    server = oxeye_factory(self_trace="true")
    body = trace_request([span(random_trace_id(), name="app work")], service="app").SerializeToString()
    assert server.post_otlp("traces", body).status_code == 200
    marker = "SELECT 'self-trace marker' AS m"
    server.sql(marker)
    r = server.session.post(f"{server.api}/api/v1/sql", json={"sql": "SELEC broken"}, timeout=30)
    assert r.status_code == 400
    server.get_json("/api/v1/services")
    assert server.session.post(f"{server.api}/api/v1/admin/flush", timeout=60).status_code == 200

    wanted = {"export traces", "POST /api/v1/sql", "sql.query", "GET /api/v1/services", "store.flush"}

    def stored() -> list[dict] | None:
        spans = _self_spans(server)
        return spans if wanted <= {s["name"] for s in spans} else None

    spans = wait_until(stored, timeout=30, what=f"oxeye's own spans {sorted(wanted)}")
    by_id = {s["span_id"]: s for s in spans}
    export = next(s for s in spans if s["name"] == "export traces")
    assert export["kind"] == "SERVER" and export["status_code"] != "ERROR"
    # The SQL span sits under its HTTP request, in the same trace.
    query = next(s for s in spans if s["name"] == "sql.query" and s["statement"] == marker)
    request = by_id[query["parent_span_id"]]
    assert request["name"] == "POST /api/v1/sql" and request["trace_id"] == query["trace_id"]
    assert request["kind"] == "SERVER" and request["status"] == "200"
    # A failed query is an error span.
    broken = next(s for s in spans if s["name"] == "sql.query" and s["statement"] == "SELEC broken")
    assert broken["status_code"] == "ERROR"
    def stored_count() -> float:
        return server.metric("oxeye_self_trace_spans_total", outcome="stored")

    assert stored_count() >= len(spans)
    # Storing spans makes no spans of its own: once the spans of the requests above are in
    # (they wait up to a second), an idle oxeye (scrapes are not traced) stores nothing new,
    # rather than tracing its own span writes in a loop.
    def settled() -> float | None:
        before = stored_count()
        time.sleep(1.5)
        return before if stored_count() == before else None

    settled_at = wait_until(settled, timeout=30, what="oxeye's own spans settling")
    time.sleep(3)
    assert stored_count() == settled_at


def test_self_trace_is_off_by_default(shared_oxeye: Oxeye):
    shared_oxeye.sql("SELECT 1")
    assert shared_oxeye.sql_dicts("SELECT count(*) AS n FROM spans WHERE service_name = 'oxeye'") == [{"n": 0}]
