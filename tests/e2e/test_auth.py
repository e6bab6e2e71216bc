"""API tokens and roles: OTLP (gRPC and HTTP, through the OpenTelemetry SDK's own exporters and
its OTEL_EXPORTER_OTLP_HEADERS), the HTTP API and the web UI's login, with no token, a wrong
token, a token of the wrong role and the right one; XSS and open-redirect attempts on the login
page; and the refusal to listen on a public address without authentication."""

from __future__ import annotations

import hashlib
import subprocess
import time
import urllib.parse

import pytest
import requests

from oxeye_client import (
    Oxeye,
    free_ports,
    oxeye_binary,
    random_trace_id,
    sdk_finished_spans,
    span,
    trace_request,
    wait_until,
)

SECRETS = {"ingest": "sdk-secret-1", "read": "grafana-secret-2", "admin": "ops-secret-3"}


def _bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[role]}"}


@pytest.fixture(scope="module")
def secured(module_oxeye_factory, tmp_path_factory) -> Oxeye:
    path = tmp_path_factory.mktemp("auth") / "tokens.toml"
    path.write_text(
        "".join(
            f'[[tokens]]\nname = "{role}-token"\nrole = "{role}"\n'
            f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
            for role, secret in SECRETS.items()
        )
    )
    return module_oxeye_factory(auth_tokens_file=str(path))




def _count(server: Oxeye, service: str) -> int:
    r = requests.post(
        f"{server.api}/api/v1/sql",
        json={"sql": f"SELECT count(*) FROM spans WHERE service_name = '{service}'"},
        headers=_bearer("read"),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return int(r.json()["rows"][0][0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_otlp_needs_an_ingest_token(secured, protocol, monkeypatch):
    from opentelemetry.sdk.trace.export import SpanExportResult

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        def exporter():
            return OTLPSpanExporter(endpoint=secured.grpc_endpoint, insecure=True, timeout=5)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        def exporter():
            return OTLPSpanExporter(endpoint=f"{secured.otlp_http}/v1/traces", timeout=5)

    service = f"auth-{protocol}-{time.time_ns()}"
    spans = sdk_finished_spans(service)
    # The SDK reads its headers from the environment, as deployed services do.
    for secret in (None, "not-a-token", SECRETS["read"]):
        if secret is None:
            monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
        else:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{secret}")
        assert exporter().export(spans) == SpanExportResult.FAILURE, f"accepted with {secret!r}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{SECRETS['ingest']}")
    assert exporter().export(spans) == SpanExportResult.SUCCESS
    wait_until(lambda: _count(secured, service) == len(spans) or None, timeout=20, what="the spans stored")
    time.sleep(1)
    assert _count(secured, service) == len(spans), "a refused export left rows behind"


def test_otlp_refusals_say_what_to_do(secured):
    body = trace_request([span(random_trace_id())], service="auth-raw").SerializeToString()
    r = secured.post_otlp("traces", body)
    assert r.status_code == 401 and "Bearer" in r.headers.get("WWW-Authenticate", "")
    assert "OTEL_EXPORTER_OTLP_HEADERS" in r.json()["error"]
    r = secured.post_otlp("traces", body, headers=_bearer("read"))
    assert r.status_code == 403 and "ingest role" in r.json()["error"], r.text
    assert secured.post_otlp("traces", body, headers=_bearer("admin")).status_code == 200


def test_the_http_api_checks_roles(secured):
    sql = {"sql": "SELECT 1"}
    url = f"{secured.api}/api/v1/sql"
    r = requests.post(url, json=sql, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), r.text
    assert requests.post(url, json=sql, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    r = requests.post(url, json=sql, headers=_bearer("ingest"), timeout=10)
    assert r.status_code == 403 and "read role" in r.json()["error"], r.text
    for role in ("read", "admin"):
        assert requests.post(url, json=sql, headers=_bearer(role), timeout=10).status_code == 200

    flush = f"{secured.api}/api/v1/admin/flush"
    assert requests.post(flush, headers=_bearer("read"), timeout=30).status_code == 403
    assert requests.post(flush, headers=_bearer("admin"), timeout=30).status_code == 200
    # Reads of the other APIs, and /metrics, need a token too; health checks do not.
    for path in ("/api/v1/services", "/api/services", "/metrics", "/api/v1/alerts/rules"):
        assert requests.get(f"{secured.api}{path}", timeout=10).status_code == 401, path
        assert requests.get(f"{secured.api}{path}", headers=_bearer("read"), timeout=10).status_code == 200, path
    for path in ("/healthz", "/readyz"):
        assert requests.get(f"{secured.api}{path}", timeout=10).status_code == 200, path
    # Changing alert rules is for admins.
    rule = {"name": "auth-e2e", "expr": "SELECT 1", "for": "0s"}
    r = requests.post(f"{secured.api}/api/v1/alerts/rules", json=rule, headers=_bearer("read"), timeout=10)
    assert r.status_code == 403, r.text
    # Path traversal gets nothing but a refusal or a 404, never a file.
    r = requests.get(f"{secured.api}/pkg/..%2F..%2F..%2Fetc%2Fpasswd", timeout=10)
    assert r.status_code in (400, 404) and "root:" not in r.text


def test_the_ui_signs_in_with_a_token_and_out(secured):
    ui = requests.Session()
    r = ui.get(f"{secured.api}/traces?service=x", allow_redirects=False, timeout=10)
    assert r.status_code == 303
    assert r.headers["Location"] == "/login?next=" + urllib.parse.quote("/traces?service=x", safe="/")
    page = ui.get(f"{secured.api}/login", timeout=10)
    assert page.status_code == 200 and 'name="token"' in page.text

    for secret, status in (("wrong", 401), (SECRETS["ingest"], 403)):
        r = ui.post(f"{secured.api}/login", data={"token": secret, "next": "/"}, allow_redirects=False, timeout=10)
        assert r.status_code == status and "oxeye_session" not in r.headers.get("Set-Cookie", ""), r.text

    r = ui.post(
        f"{secured.api}/login", data={"token": SECRETS["read"], "next": "/services"}, allow_redirects=False, timeout=10
    )
    assert r.status_code == 303 and r.headers["Location"] == "/services"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and SECRETS["read"] not in cookie
    assert ui.get(f"{secured.api}/services", timeout=10).status_code == 200
    # The session works for the API calls the UI makes, with the read role's limits.
    assert ui.post(f"{secured.api}/api/v1/sql", json={"sql": "SELECT 1"}, timeout=10).status_code == 200
    assert ui.post(f"{secured.api}/api/v1/admin/flush", timeout=10).status_code == 403

    r = ui.post(f"{secured.api}/logout", allow_redirects=False, timeout=10)
    assert r.status_code == 303 and "Max-Age=0" in r.headers["Set-Cookie"]
    assert ui.get(f"{secured.api}/services", allow_redirects=False, timeout=10).status_code == 303
    assert ui.post(f"{secured.api}/api/v1/sql", json={"sql": "SELECT 1"}, timeout=10).status_code == 401


def test_the_login_page_resists_xss_and_open_redirects(secured):
    attack = '"><script>alert(1)</script>'
    page = requests.get(f"{secured.api}/login", params={"next": attack}, timeout=10).text
    assert "<script>alert(1)" not in page
    r = requests.post(
        f"{secured.api}/login", data={"token": "wrong", "next": "/" + attack}, allow_redirects=False, timeout=10
    )
    assert "<script>alert(1)" not in r.text
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = requests.post(
            f"{secured.api}/login", data={"token": SECRETS["admin"], "next": target}, allow_redirects=False, timeout=10
        )
        assert r.status_code == 303 and r.headers["Location"] == "/", (target, r.headers["Location"])


def test_a_public_address_without_authentication_is_refused(tmp_path):
    (port,) = free_ports(1)
    cmd = [str(oxeye_binary()), "serve", "--data-dir", str(tmp_path / "data"), "--http-listen", f"0.0.0.0:{port}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    err = p.stderr + p.stdout
    assert "refusing to listen without authentication" in err and f"0.0.0.0:{port}" in err, err
    assert "--auth-tokens-file" in err and "--allow-unauthenticated" in err


def test_postgres_logins_take_api_tokens_as_passwords(secured):
    """With API tokens on, the PostgreSQL protocol wants one as the password (read or admin
    role), from loopback too; psql and psycopg send it as they send any password."""
    import psycopg

    p = secured.psql("SELECT 1", check=False)
    assert p.returncode != 0 and "password" in p.stderr, p.stderr
    for wrong, said in (("not-a-token", "password authentication failed"), (SECRETS["ingest"], "ingest role")):
        p = secured.psql("SELECT 1", check=False, password=wrong)
        assert p.returncode != 0 and said in p.stderr, p.stderr
    for role in ("read", "admin"):
        out = secured.psql("SELECT 20 + 22", password=SECRETS[role], user=f"grafana-{role}")
        assert out.stdout.strip() == "42"
    with secured.pg_connect(password=SECRETS["read"]) as conn:
        assert conn.execute("SELECT %s::bigint * 2", (21,)).fetchone() == (42,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        secured.pg_connect(password="wrong")


@pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/bin/chromium").exists() or __import__("shutil").which("node") is None,
    reason="needs /usr/bin/chromium and node (scripts/test installs both)",
)
def test_a_browser_signs_in_and_out(secured):
    """Chromium (playwright-core) through the login page: see node/ui_check.mjs `login`."""
    from test_ui import SHOTS, browser

    result = browser(
        "login",
        base=secured.api,
        read_token=SECRETS["read"],
        ingest_token=SECRETS["ingest"],
        shots=str(SHOTS),
    )
    assert result["signed_in"]


def test_a_token_over_its_ingest_limit_is_told_to_retry(oxeye_factory, tmp_path):
    """`ingest_bytes_per_second` on a token: past it, OTLP/HTTP answers 429 with Retry-After and
    OTLP/gRPC RESOURCE_EXHAUSTED with RetryInfo; nothing of a refused request is stored; other
    tokens are not slowed; after the wait the token may send again."""
    import grpc
    from google.rpc import error_details_pb2, status_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    secrets = {"limited": "limited-secret", "free": "free-secret"}
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[[tokens]]\nname = "limited"\nrole = "ingest"\ningest_bytes_per_second = "2KiB"\n'
        f'sha256 = "{hashlib.sha256(secrets["limited"].encode()).hexdigest()}"\n'
        f'[[tokens]]\nname = "free"\nrole = "admin"\n'
        f'sha256 = "{hashlib.sha256(secrets["free"].encode()).hexdigest()}"\n'
    )
    server = oxeye_factory(auth_tokens_file=str(path))

    def request() -> tuple[bytes, str]:
        body = _sized_request("limited")
        return body, trace_request_from(body).resource_spans[0].scope_spans[0].spans[0].trace_id.hex()

    def post(secret: str) -> tuple[requests.Response, str]:
        body, tid = request()
        return server.post_otlp("traces", body, headers={"Authorization": f"Bearer {secret}"}), tid

    stored, refused = [], []
    r, tid = post(secrets["limited"])
    assert r.status_code == 200, r.text
    stored.append(tid)
    # Less than a second later the bucket holds ~100 bytes: the next request waits.
    r, tid = post(secrets["limited"])
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, (r.status_code, r.text[:300])
    assert "ingest limit" in r.text
    refused.append(tid)
    # Another token is not slowed by it.
    for _ in range(3):
        r, tid = post(secrets["free"])
        assert r.status_code == 200
        stored.append(tid)
    time.sleep(int(r.headers.get("Retry-After", "1")) + 0.2)
    r, tid = post(secrets["limited"])
    assert r.status_code == 200, r.text
    stored.append(tid)
    # gRPC right after: RESOURCE_EXHAUSTED, with how long to wait.
    body, tid = request()
    with grpc.insecure_channel(server.grpc_addr) as channel:
        with pytest.raises(grpc.RpcError) as e:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(
                trace_request_from(body), metadata=[("authorization", f"Bearer {secrets['limited']}")], timeout=10
            )
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    details = status_pb2.Status.FromString(dict(e.value.trailing_metadata())["grpc-status-details-bin"])
    info = next(d for d in details.details if d.type_url.endswith("RetryInfo"))
    assert error_details_pb2.RetryInfo.FromString(info.value).retry_delay.seconds >= 1
    refused.append(tid)
    server.session.headers["Authorization"] = f"Bearer {secrets['free']}"  # /metrics needs read
    assert server.metric("oxeye_collector_rate_limited_requests_total", token="limited") == 2

    def count(tids: list[str]) -> int:
        listed = ", ".join(f"'{t}'" for t in tids)
        r = requests.post(f"{server.api}/api/v1/sql", headers={"Authorization": f"Bearer {secrets['free']}"},
                          json={"sql": f"SELECT count(*) FROM spans WHERE trace_id IN ({listed})"}, timeout=30)
        assert r.status_code == 200, r.text
        return int(r.json()["rows"][0][0])

    wait_until(lambda: count(stored) == 8 * len(stored) or None, timeout=20, what="the accepted spans")
    assert count(refused) == 0, "a refused request left rows behind"


def trace_request_from(body: bytes):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    return trace_service_pb2.ExportTraceServiceRequest.FromString(body)


def _tenant_tokens(path, tenants_toml: str, secrets: dict[str, str], tenant_of) -> str:
    """Writes a token file: `tenants_toml`, then one ingest token per `secrets` entry in the
    tenant `tenant_of(name)`; returns its path."""
    path.write_text(
        tenants_toml
        + "".join(
            f'[[tokens]]\nname = "{name}"\nrole = "ingest"\ntenant = "{tenant_of(name)}"\n'
            f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
            for name, secret in secrets.items()
        )
    )
    return str(path)


def _sized_request(service: str) -> bytes:
    """An OTLP trace request of one new trace of 8 spans, between 1.5 and 2 KiB."""
    tid = random_trace_id()
    spans = [span(tid, name=f"s{i}", attributes={"p": "x" * 150}) for i in range(8)]
    body = trace_request(spans, service=service).SerializeToString()
    assert 1500 < len(body) < 2048, len(body)
    return body


def test_a_tenants_tokens_share_its_ingest_limit(oxeye_factory, tmp_path):
    """`[[tenants]]` with `ingest_bytes_per_second`: all of a tenant's tokens draw on one
    limit; another tenant is not slowed."""
    secrets = {"acme-1": "acme-one", "acme-2": "acme-two", "beta-1": "beta-one"}
    tokens = _tenant_tokens(
        tmp_path / "tokens.toml",
        '[[tenants]]\nname = "acme"\ningest_bytes_per_second = "2KiB"\n',
        secrets,
        lambda name: name.split("-")[0],
    )
    server = oxeye_factory(auth_tokens_file=tokens)

    def post(token: str) -> requests.Response:
        body = _sized_request("tenant-limit")
        return server.post_otlp("traces", body, headers={"Authorization": f"Bearer {secrets[token]}"})

    assert post("acme-1").status_code == 200
    r = post("acme-2")
    assert r.status_code == 429 and "tenant `acme`" in r.text, (r.status_code, r.text[:300])
    assert post("beta-1").status_code == 200


def test_a_tenants_largest_request(oxeye_factory, tmp_path):
    """`max_request_size` on a `[[tenants]]` entry: a bigger OTLP request from its tokens is
    refused with 413; other tenants keep the process's limit."""
    secrets = {"small": "small-secret", "big": "big-secret"}
    tokens = _tenant_tokens(
        tmp_path / "tokens.toml",
        '[[tenants]]\nname = "small"\nmax_request_size = "1KiB"\n',
        secrets,
        lambda name: name,
    )
    server = oxeye_factory(auth_tokens_file=tokens)
    body = _sized_request("sized")
    r = server.post_otlp("traces", body, headers={"Authorization": f"Bearer {secrets['small']}"})
    assert r.status_code == 413 and "1024" in r.text, (r.status_code, r.text[:300])
    assert server.post_otlp("traces", body, headers={"Authorization": f"Bearer {secrets['big']}"}).status_code == 200
