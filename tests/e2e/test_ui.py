"""The web UI in a real browser: Debian's chromium driven by playwright-core (npm) against a real
`oxeye serve` filled by the demo shop (OpenTelemetry Rust SDK) and the OpenTelemetry Python SDK.

Each test runs one scenario of node/ui_check.mjs; screenshots of every page land in
tests/artifacts/screenshots/."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from oxeye_client import Oxeye, sdk_span_ids, sdk_tracer_provider
from test_examples import run_demo

NODE_DIR = Path(__file__).parent / "node"
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss=2">'

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() or shutil.which("node") is None,
    reason="needs /usr/bin/chromium and node (scripts/test installs both)",
)


def browser(scenario: str, **args) -> dict:
    p = subprocess.run(
        ["node", str(NODE_DIR / "ui_check.mjs"), scenario, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=NODE_DIR,
        stdin=subprocess.DEVNULL,
    )
    lines = p.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": p.stderr[-3000:]}
    assert p.returncode == 0 and result.get("ok"), f"{scenario}: {result.get('error')}\n{p.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def filled(module_oxeye_factory) -> dict:
    server: Oxeye = module_oxeye_factory()
    summary = run_demo(server, "--duration", "4s", "--rate", "25", "--seed", "11", "--metrics-interval", "1s")
    # A span whose attributes and name carry markup, sent with the Python SDK.
    provider = sdk_tracer_provider(server, "xss-svc")
    tracer = provider.get_tracer("ui-test")
    with tracer.start_as_current_span("render <b>bold</b>") as root:
        with tracer.start_as_current_span("child") as child:
            child.set_attribute("user.comment", XSS)
        trace_id, _ = sdk_span_ids(root)
        _, xss_span = sdk_span_ids(child)
    provider.force_flush()
    provider.shutdown()
    server.wait_trace(trace_id, 2)
    large = summary["large_traces"][0]
    server.wait_span_count(f"trace_id = '{large}'", summary["large_trace_spans"][0], timeout=60)
    # A checkout trace that has logs: small enough to render whole.
    checkout = server.wait_rows(
        "SELECT t.trace_id FROM traces t WHERE t.root_name = 'POST /api/checkout' AND t.span_count < 40 "
        "AND t.trace_id IN (SELECT trace_id FROM logs) LIMIT 1",
        1,
    )[0]["trace_id"]
    warn_body = server.sql_value("SELECT body FROM logs WHERE severity_number >= 13 AND service_name = 'frontend' LIMIT 1")
    word = max(re.findall(r"[A-Za-z]{5,}", warn_body), key=len)
    return {
        "server": server,
        "base": server.api,
        "checkout": checkout,
        "large": large,
        "large_spans": summary["large_trace_spans"][0],
        "xss_trace": trace_id,
        "xss_span": xss_span,
        "word": word,
    }


def test_every_page_loads_hydrates_and_stays_local(filled):
    r = browser("pages", base=filled["base"], trace_id=filled["checkout"], shots=str(SHOTS))
    assert r["pages"] == 8


def test_search_form_results_and_waterfall(filled):
    r = browser("search", base=filled["base"])
    assert r["results"] >= 1


def test_trace_view_detail_logs_collapse_find_and_url_state(filled):
    r = browser("waterfall", base=filled["base"], trace_id=filled["checkout"], shots=str(SHOTS))
    assert r["logs"] >= 1


def test_large_trace_is_virtualised_and_scrolls_to_the_end(filled):
    r = browser("large", base=filled["base"], trace_id=filled["large"], spans=filled["large_spans"], shots=str(SHOTS))
    assert r["rendered_rows"] < 300


def test_trace_id_box_goes_to_the_trace(filled):
    browser("goto", base=filled["base"], trace_id=filled["checkout"])


def test_logs_search_histogram_and_trace_link(filled):
    r = browser("logs", base=filled["base"], text=filled["word"])
    assert r["logs"] >= 1


def test_sql_console_runs_charts_and_downloads(filled):
    r = browser("sql", base=filled["base"], services=["frontend", "checkout", "payments", "inventory"])
    assert r["rows"] >= 4


def test_alerts_page_creates_a_rule_that_fires(filled):
    server: Oxeye = filled["server"]
    name = f"ui-rule-{secrets.token_hex(4)}"
    try:
        r = browser(
            "alerts",
            base=filled["base"],
            name=name,
            sql="SELECT service_name, count(*) AS value FROM spans GROUP BY service_name",
            threshold=0,
            shots=str(SHOTS),
        )
        assert r["dry_run_rows"] >= 1
        # What the page showed is what the API says: the rule's instances fire.
        alerts = server.get_json("/api/v1/alerts")["alerts"]
        mine = [a for a in alerts if a["rule_name"] == name]
        firing = [a for a in mine if a["state"] == "firing"]
        assert firing, f"no firing alert of {name}: {mine}"
        assert all(a["severity"] == "critical" for a in firing), firing
        assert all(a["annotations"]["summary"].startswith("fired") for a in firing), firing
        assert {a["labels"].get("service_name") for a in firing} >= {"frontend", "checkout"}, firing
    finally:
        # The rule runs every second; remove it so it does not load the rest of the module.
        rules = server.get_json("/api/v1/alerts/rules")["rules"]
        for rule in rules:
            if rule["name"] == name:
                server.session.delete(f"{server.api}/api/v1/alerts/rules/{rule['id']}", timeout=30)


def test_telemetry_markup_is_shown_not_run(filled):
    browser(
        "xss",
        base=filled["base"],
        trace_id=filled["xss_trace"],
        span_id=filled["xss_span"],
        payload=XSS,
        service="xss-svc",
    )


def test_pages_work_without_javascript(filled):
    browser("nojs", base=filled["base"])


def test_page_html_is_server_rendered_with_escaped_text(filled):
    server: Oxeye = filled["server"]
    html = server.get(f"/traces/{filled['xss_trace']}?span={filled['xss_span']}").text
    assert "&lt;script&gt;window.__xss" in html
    assert "<script>window.__xss" not in html
    assert "render &lt;b&gt;bold&lt;/b&gt;" in html
    # Unknown pages are 404s with a page; unknown API paths are JSON 404s.
    assert server.get("/no/such/page").status_code == 404
    r = server.get("/api/v1/no-such-endpoint")
    assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"
    # The bundle is served from the binary, compressed when asked.
    js = server.get("/pkg/oxeye_ui.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    wasm = server.get("/pkg/oxeye_ui_bg.wasm")
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
    assert wasm.content[:4] == b"\0asm"
