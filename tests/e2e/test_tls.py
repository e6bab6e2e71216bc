"""TLS on every listener of `oxeye serve`, checked with real clients: the OpenTelemetry SDK's
gRPC and HTTP exporters given a CA file (OTEL_EXPORTER_OTLP_CERTIFICATE, as deployed services
set it), `requests` and curl against the HTTP API and UI, and `psql` and psycopg with
sslmode=verify-full. Each client that trusts another CA is refused; plain-text clients are
refused with a message that says what to do. (Mutual TLS between nodes is tested with the
cluster, in test_metastore.py.)"""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from certs import Certs, make_certs
from oxeye_client import Oxeye, free_ports, oxeye_binary, sdk_finished_spans, wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(module_oxeye_factory, certs) -> Oxeye:
    return module_oxeye_factory(tls_cert=certs.cert, tls_key=certs.key, client_ca_file=certs.ca)




def _count(server: Oxeye, service: str) -> int:
    return int(server.sql_value(f"SELECT count(*) FROM spans WHERE service_name = '{service}'"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_sdk_exports_over_tls_with_a_ca_file(tls_server, certs, protocol, monkeypatch):
    from opentelemetry.sdk.trace.export import SpanExportResult

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        def exporter():
            # An https:// endpoint: the exporter uses TLS, with the CA file from the environment.
            return OTLPSpanExporter(endpoint=tls_server.grpc_endpoint, timeout=5)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        def exporter():
            return OTLPSpanExporter(endpoint=f"{tls_server.otlp_http}/v1/traces", timeout=5)

    assert tls_server.grpc_endpoint.startswith("https://")
    # The HTTP exporter puts the CA file in its requests session's `verify`, which
    # REQUESTS_CA_BUNDLE (set on some machines) would override.
    for bundle in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(bundle, raising=False)
    service = f"tls-{protocol}-{time.time_ns()}"
    spans = sdk_finished_spans(service)
    # Without the CA (the system's roots only), and with a CA that did not sign the server's
    # certificate, the SDK refuses to talk to the server.
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_CERTIFICATE", raising=False)
    assert exporter().export(spans) == SpanExportResult.FAILURE
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(certs.other_ca))
    assert exporter().export(spans) == SpanExportResult.FAILURE
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(certs.ca))
    assert exporter().export(spans) == SpanExportResult.SUCCESS
    wait_until(lambda: _count(tls_server, service) == len(spans) or None, timeout=20, what="the spans stored")


def test_the_http_api_and_ui_speak_https(tls_server, certs):
    url = f"{tls_server.api}/api/v1/sql"
    assert url.startswith("https://127.0.0.1:")
    r = requests.post(url, json={"sql": "SELECT 41 + 1 AS answer"}, verify=str(certs.ca), timeout=10)
    assert r.status_code == 200 and r.json()["rows"] == [[42]], r.text
    page = requests.get(f"{tls_server.api}/", verify=str(certs.ca), timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    # A client that trusts another CA refuses the server; so does one with the system's roots.
    for verify in (str(certs.other_ca), True):
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{tls_server.api}/healthz", verify=verify, timeout=10)
    # Plain HTTP on the TLS port is answered, in plain HTTP, with what to do.
    for addr in (tls_server.api_addr, tls_server.otlp_http_addr):
        r = requests.get(f"http://{addr}/healthz", timeout=10)
        assert r.status_code == 400 and "https://" in r.text, (addr, r.status_code, r.text)
    # Browsers and curl negotiate HTTP/2 through ALPN.
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(certs.ca), "-o", "/dev/null", "-w", "%{http_version}",
         f"{tls_server.api}/healthz"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0 and out.stdout == "2", (out.stdout, out.stderr)
    # The server keeps serving after all those refused handshakes.
    assert tls_server.session.get(f"{tls_server.api}/readyz", timeout=10).status_code == 200


def test_psql_and_psycopg_verify_the_server_certificate(tls_server, certs):
    # psql with sslmode=verify-full and the CA (the test client's default for TLS servers):
    # the certificate is checked against the CA and the host (127.0.0.1, in its names).
    out = tls_server.psql("SELECT 6 * 7")
    assert out.stdout.strip() == "42"
    # Another CA: psql refuses the server.
    p = tls_server.psql(
        "SELECT 1", check=False, ssl={"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(certs.other_ca)}
    )
    assert p.returncode != 0 and "certificate verify failed" in p.stderr, p.stderr
    # Plain text: the server refuses, and says how to connect.
    p = tls_server.psql("SELECT 1", check=False, ssl={"PGSSLMODE": "disable"})
    assert p.returncode != 0 and "only accepts TLS connections" in p.stderr, p.stderr

    # psycopg: extended protocol with parameters, over TLS.
    with tls_server.pg_connect() as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("SELECT %s::bigint + 1 AS n, %s::text AS s", (41, "tls")).fetchone()
        assert row == (42, "tls")
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="only accepts TLS"):
        tls_server.pg_connect(sslmode="disable")


@pytest.mark.parametrize(
    "case",
    ["cert without key", "key of another certificate", "not PEM", "client CA without a certificate"],
)
def test_bad_certificate_files_stop_the_start_with_a_clear_message(tmp_path, certs, case):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    flags, expected = {
        "cert without key": (["--tls-cert", str(certs.cert)], "--tls-cert and --tls-key go together"),
        "key of another certificate": (
            ["--tls-cert", str(certs.cert), "--tls-key", str(certs.other_key)],
            "cannot use the certificate",
        ),
        "not PEM": (["--tls-cert", str(junk), "--tls-key", str(certs.key)], "holds no PEM certificate"),
        "client CA without a certificate": (["--tls-client-ca", str(certs.ca)], "give --tls-cert and --tls-key too"),
    }[case]
    (http,) = free_ports(1)
    cmd = [str(oxeye_binary()), "serve", "--data-dir", str(tmp_path / "data"), "--http-listen", f"127.0.0.1:{http}"]
    p = subprocess.run(cmd + flags, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert expected in p.stderr + p.stdout, p.stderr + p.stdout


def test_the_ui_session_cookie_is_https_only(oxeye_factory, certs, tmp_path):
    import hashlib

    tokens = tmp_path / "tokens.toml"
    secret = "tls-reader-secret"
    tokens.write_text(
        f'[[tokens]]\nname = "reader"\nrole = "read"\nsha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
    )
    server = oxeye_factory(tls_cert=certs.cert, tls_key=certs.key, auth_tokens_file=tokens, client_ca_file=certs.ca)
    r = server.session.post(
        f"{server.api}/login", data={"token": secret, "next": "/traces"}, allow_redirects=False, timeout=10
    )
    assert r.status_code == 303 and r.headers["Location"] == "/traces", r.text
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie, cookie
    # The browser sends it back over https only; with it, pages load.
    assert server.session.get(f"{server.api}/traces", allow_redirects=False, timeout=10).status_code == 200
    r = server.session.post(f"{server.api}/logout", allow_redirects=False, timeout=10)
    assert "Secure" in r.headers["Set-Cookie"] and "Max-Age=0" in r.headers["Set-Cookie"]
    assert server.session.get(f"{server.api}/traces", allow_redirects=False, timeout=10).status_code == 303
