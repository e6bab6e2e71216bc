"""Tenants: a token belongs to a tenant, and what it sends and reads is that tenant's alone, on
every surface: SQL over HTTP, the trace, service and log APIs, the Jaeger API, the PostgreSQL
protocol, the UI's session, and alert rules. Each tenant has its own store, so the scan of one
tenant's query has no way to another's rows."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
import requests

from oxeye_client import Oxeye, logs_request, random_trace_id, span, trace_request, wait_until

TOKENS = {
    # name: (role, tenant or None, secret)
    "acme-ingest": ("ingest", "acme", "acme-ingest-secret"),
    "acme-read": ("read", "acme", "acme-read-secret"),
    "acme-admin": ("admin", "acme", "acme-admin-secret"),
    "globex-ingest": ("ingest", "globex", "globex-ingest-secret"),
    "globex-read": ("read", "globex", "globex-read-secret"),
    "default-admin": ("admin", None, "default-admin-secret"),
}
PG_PASSWORD = "pg-secret"


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][2]}"}


@pytest.fixture(scope="module")
def tenants(module_oxeye_factory, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("tenants") / "tokens.toml"
    lines = []
    for name, (role, tenant, secret) in TOKENS.items():
        lines.append(f'[[tokens]]\nname = "{name}"\nrole = "{role}"\n')
        if tenant:
            lines.append(f'tenant = "{tenant}"\n')
        lines.append(f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n')
    path.write_text("".join(lines))
    server = module_oxeye_factory(auth_tokens_file=str(path), pg_password=PG_PASSWORD)
    traces = {}
    for tenant, ingest in (("acme", "acme-ingest"), ("globex", "globex-ingest"), ("default", "default-admin")):
        tid = random_trace_id()
        spans = [span(tid, name=f"{tenant} op {i}") for i in range(3)]
        r = server.post_otlp("traces", trace_request(spans, service=f"shop-{tenant}").SerializeToString(),
                             headers=_auth(ingest))
        assert r.status_code == 200, r.text
        r = server.post_otlp("logs", logs_request([f"{tenant} says hello"], service=f"shop-{tenant}",
                                                  trace_id=tid).SerializeToString(), headers=_auth(ingest))
        assert r.status_code == 200, r.text
        traces[tenant] = tid.hex()
    for tenant, reader in (("acme", "acme-read"), ("globex", "globex-read"), ("default", "default-admin")):
        wait_until(lambda: _services(server, reader) == [f"shop-{tenant}"] or None, timeout=20,
                   what=f"{tenant}'s spans")
    return {"server": server, "traces": traces}


def _sql(server: Oxeye, token: str, sql: str) -> list:
    r = requests.post(f"{server.api}/api/v1/sql", json={"sql": sql}, headers=_auth(token), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def _services(server: Oxeye, token: str) -> list[str]:
    return sorted(r[0] for r in _sql(server, token, "SELECT DISTINCT service_name FROM spans"))


def test_sql_sees_only_the_tenants_rows(tenants):
    server = tenants["server"]
    assert _services(server, "acme-read") == ["shop-acme"]
    assert _services(server, "globex-read") == ["shop-globex"]
    assert _services(server, "default-admin") == ["shop-default"]
    for token in ("acme-read", "globex-read"):
        assert _sql(server, token, "SELECT count(*) FROM spans") == [[3]]
        assert _sql(server, token, "SELECT count(*) FROM logs") == [[1]]
        # Another tenant's trace id names nothing here.
        other = tenants["traces"]["globex" if token.startswith("acme") else "acme"]
        assert _sql(server, token, f"SELECT count(*) FROM spans WHERE trace_id = '{other}'") == [[0]]
        assert _sql(server, token, "SELECT count(*) FROM traces") == [[1]]


def test_the_apis_answer_from_the_tenants_data(tenants):
    server, traces = tenants["server"], tenants["traces"]

    def get(path: str, token: str, **params) -> requests.Response:
        return requests.get(f"{server.api}{path}", params=params, headers=_auth(token), timeout=30)

    r = get(f"/api/v1/traces/{traces['acme']}", "acme-read")
    assert r.status_code == 200 and r.json()["span_count"] == 3
    assert get(f"/api/v1/traces/{traces['acme']}", "globex-read").status_code == 404
    assert get("/api/v1/services", "globex-read").json()["services"] == ["shop-globex"]
    assert get("/api/services", "acme-read").json()["data"] == ["shop-acme"]  # Jaeger
    assert get(f"/api/traces/{traces['globex']}", "acme-read").status_code == 404
    logs = get("/api/v1/logs", "acme-read", query="hello", lookback="1h").json()["logs"]
    assert [entry["body"] for entry in logs] == ["acme says hello"]
    found = get("/api/v1/traces", "globex-read", lookback="1h").json()
    assert [t["trace_id"] for t in found["traces"]] == [traces["globex"]]
    # The process's metrics cover every tenant: not for a tenant's token.
    assert get("/metrics", "acme-read").status_code == 403
    assert get("/metrics", "default-admin").status_code == 200


def test_postgres_connections_see_their_tokens_tenant(tenants):
    server = tenants["server"]
    for token, service in (("acme-read", "shop-acme"), ("globex-read", "shop-globex")):
        out = server.psql("SELECT DISTINCT service_name FROM spans", password=TOKENS[token][2], user=token)
        assert out.stdout.split() == [service]
        with server.pg_connect(password=TOKENS[token][2]) as conn:
            rows = conn.execute("SELECT count(*) FROM spans WHERE service_name = %s", (service,)).fetchall()
            assert rows == [(3,)]
            assert conn.execute("SELECT count(*) FROM spans").fetchall() == [(3,)]
    # The --pg-password login is the default tenant's, whatever the client claims in its
    # startup parameters.
    with server.pg_connect(password=PG_PASSWORD, options="-c oxeye.tenant=acme") as conn:
        assert conn.execute("SELECT DISTINCT service_name FROM spans").fetchall() == [("shop-default",)]
    with pytest.raises(psycopg.OperationalError):
        server.pg_connect(password=TOKENS["acme-ingest"][2])


def test_the_ui_session_and_alert_rules_are_the_tenants(tenants):
    server = tenants["server"]
    browser = requests.Session()
    r = browser.post(f"{server.api}/login", data={"token": TOKENS["globex-read"][2], "next": "/services"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 303
    assert browser.get(f"{server.api}/api/v1/services", timeout=10).json()["services"] == ["shop-globex"]
    page = browser.get(f"{server.api}/services", timeout=30)
    assert page.status_code == 200 and "shop-globex" in page.text and "shop-acme" not in page.text

    rule = {"name": "acme errors", "sql": "SELECT count(*) AS value FROM spans", "condition": {"op": ">", "threshold": 100}}
    r = requests.post(f"{server.api}/api/v1/alerts/rules", json=rule, headers=_auth("acme-admin"), timeout=30)
    assert r.status_code == 201, r.text

    def rules(token: str) -> list[str]:
        r = requests.get(f"{server.api}/api/v1/alerts/rules", headers=_auth(token), timeout=30)
        assert r.status_code == 200, r.text
        return [x["name"] for x in r.json()["rules"]]

    assert "acme errors" in rules("acme-read")
    assert "acme errors" not in rules("globex-read")
    assert "acme errors" not in rules("default-admin")
    # Each tenant's data lives in its own directory.
    assert (server.data_dir / "tenants" / "acme" / "wal").is_dir()
    assert (server.data_dir / "tenants" / "globex" / "wal").is_dir()
