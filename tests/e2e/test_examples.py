"""The examples against a real `oxeye serve`: the demo shop (OpenTelemetry Rust SDK, OTLP/gRPC)
and the load generator's `--workload demo`, which runs the same shop into memory and sends it
itself."""

from __future__ import annotations

import json
import subprocess

import pytest

from oxeye_client import Oxeye, demo_binary, run_loadgen

SHOP_SERVICES = ("frontend", "checkout", "payments", "inventory")
ALL_SERVICES = (*SHOP_SERVICES, "catalog-importer")
IN_ALL = "(" + ", ".join(f"'{s}'" for s in ALL_SERVICES) + ")"


def run_demo(server: Oxeye, *args: str) -> dict:
    cmd = [str(demo_binary()), "--endpoint", server.grpc_endpoint, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"oxeye-demo exited with {p.returncode}: {p.stderr[-2000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def demo(module_oxeye_factory) -> tuple[Oxeye, dict]:
    server = module_oxeye_factory()
    summary = run_demo(server, "--duration", "4s", "--rate", "25", "--seed", "7", "--metrics-interval", "1s")
    return server, summary


def test_demo_exports_everything_it_made(demo):
    _, s = demo
    assert s["requests"] >= 50, s
    assert s["spans_dropped"] == 0 and s["spans_export_failed"] == 0, s
    assert s["logs_dropped"] == 0 and s["logs_export_failed"] == 0, s
    assert s["export_errors"] == 0 and not s["shutdown_errors"], s
    assert s["spans_exported"] == s["spans_created"] > 10_000, s
    assert s["metric_exports"] > 0, s


def test_demo_spans_and_logs_are_all_stored(demo):
    server, s = demo
    assert server.sql_value(f"SELECT count(*) FROM spans WHERE service_name IN {IN_ALL}") == s["spans_created"]
    assert server.sql_value(f"SELECT count(*) FROM logs WHERE service_name IN {IN_ALL}") == s["log_records"]
    for service, counts in s["services"].items():
        assert server.sql_value(f"SELECT count(*) FROM spans WHERE service_name = '{service}'") == counts["spans"]


def test_demo_large_trace_is_whole_and_found_by_id(demo):
    server, s = demo
    assert s["large_traces"], s
    trace_id, spans = s["large_traces"][0], s["large_trace_spans"][0]
    assert spans >= 10_000
    assert server.sql_value(f"SELECT count(*) FROM spans WHERE trace_id = '{trace_id}'") == spans
    # One root, and every other span's parent is in the trace.
    orphans = server.sql_value(
        f"SELECT count(*) FROM spans s WHERE s.trace_id = '{trace_id}' AND s.parent_span_id IS NOT NULL "
        f"AND s.parent_span_id NOT IN (SELECT span_id FROM spans WHERE trace_id = '{trace_id}')"
    )
    assert orphans == 0
    t = server.trace(trace_id)
    assert t is not None and t["span_count"] == spans and t["services"] == ["catalog-importer"]


def test_demo_traces_cross_services_with_propagated_context(demo):
    server, s = demo
    services_per_trace = server.sql(
        "SELECT trace_id, count(DISTINCT service_name) AS n FROM spans "
        f"WHERE service_name IN {IN_ALL} GROUP BY 1 HAVING count(DISTINCT service_name) >= 3"
    )[1]
    assert services_per_trace, "no trace crossed three services"
    # A downstream server span's parent is the caller's client span, in another service.
    hops = server.sql_value(
        "SELECT count(*) FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id "
        "WHERE c.kind = 'SERVER' AND p.kind = 'CLIENT' AND c.service_name <> p.service_name "
        f"AND c.service_name IN {IN_ALL}"
    )
    assert hops > 0
    # Database and cache calls are client spans with semantic-convention attributes.
    assert server.sql_value(
        f"SELECT count(*) FROM spans WHERE service_name IN {IN_ALL} AND kind = 'CLIENT' "
        "AND attributes['db.system.name'] = 'postgresql'"
    ) > 0


def test_demo_errors_have_status_and_exception_events(demo):
    server, s = demo
    error_spans = server.sql_value(
        f"SELECT count(*) FROM spans WHERE service_name IN {IN_ALL} AND status_code = 'ERROR'"
    )
    assert error_spans > 0
    with_exception = server.sql_value(
        f"SELECT count(*) FROM (SELECT unnest(events) AS e FROM spans WHERE service_name IN {IN_ALL}) "
        "WHERE e['name'] = 'exception'"
    )
    assert with_exception > 0


def test_demo_logs_carry_trace_context(demo):
    server, s = demo
    trace_id = s["trace_ids"][0]
    rows = server.sql_dicts(f"SELECT span_id, severity_text FROM logs WHERE trace_id = '{trace_id}'")
    assert rows, f"no logs for trace {trace_id}"
    span_ids = {r[0] for r in server.sql(f"SELECT span_id FROM spans WHERE trace_id = '{trace_id}'")[1]}
    assert all(r["span_id"] in span_ids for r in rows)


def test_demo_metrics_counters_histograms_and_gauges(demo):
    server, _ = demo
    kinds = dict(
        server.sql(
            f"SELECT name, min(type) FROM metrics WHERE service_name IN {IN_ALL} GROUP BY 1"
        )[1]
    )
    assert kinds.get("http.server.request.count") == "sum", kinds
    assert "gauge" in kinds.values(), kinds
    histograms = {
        r[0]
        for r in server.sql(f"SELECT DISTINCT name FROM histograms WHERE service_name IN {IN_ALL}")[1]
    }
    assert "http.server.request.duration" in histograms


def test_loadgen_demo_workload_acknowledged_equals_stored(oxeye: Oxeye):
    summary = run_loadgen(
        oxeye, "3s", "grpc", "--workload", "demo", "--batch-spans", "300", "--large-trace-every", "100",
        "--large-trace-spans", "3000", "--metrics-interval", "500ms",
    )
    assert summary["spans_acked"] > 3000 and summary["logs_acked"] > 0 and summary["points_acked"] > 0
    assert oxeye.sql_value(f"SELECT count(*) FROM spans WHERE service_name IN {IN_ALL}") == summary["spans_acked"]
    assert oxeye.sql_value(f"SELECT count(*) FROM logs WHERE service_name IN {IN_ALL}") == summary["logs_acked"]
    points = oxeye.sql_value(f"SELECT count(*) FROM metrics WHERE service_name IN {IN_ALL}") + oxeye.sql_value(
        f"SELECT count(*) FROM histograms WHERE service_name IN {IN_ALL}"
    )
    assert points == summary["points_acked"]
    services = {r[0] for r in oxeye.sql("SELECT DISTINCT service_name FROM spans")[1]}
    assert set(ALL_SERVICES) <= services


def assert_snippet_data_stored(server: Oxeye, p: subprocess.CompletedProcess, service: str) -> None:
    """A snippet ran, printed its trace id, and its two spans, log record and counter are stored."""
    assert p.returncode == 0, p.stderr[-2000:]
    trace_id = p.stdout.strip().splitlines()[-1]
    assert len(trace_id) == 32
    spans = server.sql_dicts(f"SELECT name, service_name FROM spans WHERE trace_id = '{trace_id}' ORDER BY name")
    assert [s["name"] for s in spans] == ["GET /hello", "SELECT greetings"]
    assert {s["service_name"] for s in spans} == {service}
    assert server.sql_value(f"SELECT count(*) FROM logs WHERE trace_id = '{trace_id}'") == 1
    assert server.sql_value(
        f"SELECT count(*) FROM metrics WHERE name = 'hello.requests' AND service_name = '{service}'"
    ) >= 1


@pytest.mark.parametrize(
    "protocol,port_attr", [("grpc", "grpc_endpoint"), ("http/protobuf", "otlp_http")]
)
def test_python_snippet_reaches_oxeye(shared_oxeye: Oxeye, protocol: str, port_attr: str):
    import os
    import sys
    from pathlib import Path

    snippet = Path(__file__).resolve().parents[2] / "examples" / "snippets" / "python_app.py"
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": getattr(shared_oxeye, port_attr),
           "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    p = subprocess.run([sys.executable, str(snippet)], capture_output=True, text=True, timeout=120, env=env,
                       stdin=subprocess.DEVNULL)
    assert_snippet_data_stored(shared_oxeye, p, "python-snippet")


@pytest.mark.parametrize("protocol,port_attr", [("http/protobuf", "otlp_http"), ("grpc", "grpc_endpoint")])
def test_node_snippet_reaches_oxeye(shared_oxeye: Oxeye, protocol: str, port_attr: str):
    import os
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    node_modules = root / "tests" / "e2e" / "node" / "node_modules"
    assert node_modules.is_dir(), "run scripts/test (it installs tests/e2e/node with npm ci)"
    node = shutil.which("node")
    assert node, "node is not installed; scripts/test installs it"
    env = {**os.environ, "NODE_PATH": str(node_modules),
           "OTEL_EXPORTER_OTLP_ENDPOINT": getattr(shared_oxeye, port_attr), "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    # ES modules ignore NODE_PATH, so the snippet runs from a copy beside the installed packages.
    snippet = node_modules.parent / "node_app.mjs"
    shutil.copyfile(root / "examples" / "snippets" / "node_app.mjs", snippet)
    try:
        p = subprocess.run([node, str(snippet)], capture_output=True, text=True, timeout=120, env=env,
                           stdin=subprocess.DEVNULL)
    finally:
        snippet.unlink(missing_ok=True)
    assert_snippet_data_stored(shared_oxeye, p, "node-snippet")


def test_the_local_cluster_starts_takes_spans_and_stops_cleanly(tmp_path):
    """`examples/cluster/run.sh --smoke`: PostgreSQL, moto S3, 3 store nodes, 2 collectors and a
    query node come up on 127.0.0.1, 120 spans sent to a collector are visible exactly once from
    the query node, and everything stops (the script checks the count and exits 0)."""
    import os
    import random
    from pathlib import Path

    from oxeye_client import oxeye_binary

    root = Path(__file__).resolve().parents[2]
    for attempt in range(3):
        base = random.randrange(20000, 60000, 100)
        env = {**os.environ, "OXEYE_BIN": str(oxeye_binary()), "BASE_PORT": str(base)}
        env["CLUSTER_DIR"] = str(tmp_path / f"cluster-{attempt}")
        p = subprocess.run(
            ["bash", str(root / "examples/cluster/run.sh"), "--smoke"],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        out = p.stdout + p.stderr
        if p.returncode != 0 and "in use" in out:
            continue  # another process holds one of the ports: try another range
        break
    assert p.returncode == 0, out[-4000:]
    assert "smoke: OK (120 of 120 spans visible from the query node)" in out, out[-4000:]
