"""Helpers shared by the tests that keep segments in S3-compatible object storage
(test_object_storage.py) or the catalog in PostgreSQL (test_metastore.py): a `moto_server`
process (moto[server] from tests/e2e/requirements.txt) with a bucket, data sent with the
OpenTelemetry SDK and the answers to compare, admin flushes and compactions, and what
`system.segments`, the bucket and the data directory hold.

The modules that use these turn the `start_moto`, `use_moto_credentials` and `fresh_bucket`
functions into their own fixtures (fixtures imported from another module would be redefined by
every test argument of the same name)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from oxeye_client import (
    Oxeye,
    SdkTraces,
    SpanSpec,
    free_ports,
    log_record,
    records_request,
    wait_until,
)

try:
    import boto3
    from botocore.config import Config as BotoConfig
except ImportError:  # reported by the fixtures, with what to install
    boto3 = None

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "test", "test"
PREFIX = "oxeye"  # the key prefix in --object-store s3://BUCKET/PREFIX
# AWS_* variables of the test environment that could point oxeye elsewhere than the moto server
# or at other credentials.
AWS_OVERRIDES = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ALLOW_HTTP",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
# An admin flush or compaction against S3 (moto is slow-ish, and while S3 is unreachable the
# object_store client retries with backoff for up to a few minutes before giving up).
ADMIN_TIMEOUT = 240.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------------------
# The moto server


class MotoServer:
    """A `moto_server` process (an in-memory S3-compatible server) on a fixed 127.0.0.1 port; it
    can be stopped and started again on the same port (it keeps no state across restarts)."""

    READY_TIMEOUT = 30.0

    def __init__(self, log_path: Path, port: int | None = None):
        self.port = port or free_ports(1)[0]
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, "moto_server is already running"
        if not MOTO_SERVER.exists():
            pytest.fail(
                f"moto_server not found at {MOTO_SERVER}: install the test requirements into the "
                f"interpreter running pytest ({sys.executable} -m pip install -r "
                "tests/e2e/requirements.txt), which include moto[server]",
                pytrace=False,
            )
        if boto3 is None:
            pytest.fail("boto3 is not installed: pip install -r tests/e2e/requirements.txt", pytrace=False)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start: moto_server on {self.endpoint}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"moto_server exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                return requests.get(f"{self.endpoint}/moto-api/", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout=self.READY_TIMEOUT, what=f"moto_server answering on {self.endpoint}")

    def stop(self) -> None:
        """Terminates the process and waits until the port no longer answers."""
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

        def gone() -> bool:
            try:
                requests.get(f"{self.endpoint}/moto-api/", timeout=1)
                return False
            except requests.ConnectionError:
                return True

        wait_until(gone, timeout=15, what=f"nothing answering on {self.endpoint} after stopping moto")

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=BotoConfig(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@dataclass
class S3:
    """A bucket on a moto server, and a boto3 client for it."""

    moto: MotoServer
    bucket: str
    client: Any

    @property
    def endpoint(self) -> str:
        return self.moto.endpoint

    def create_bucket(self) -> None:
        self.client.create_bucket(Bucket=self.bucket)

    def keys(self, prefix: str = f"{PREFIX}/segments/") -> dict[str, int]:
        """Object key -> size of every object under `prefix`."""
        out: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def wait_gets(self, log_offset: int, table: str) -> list[str]:
        """Waits until moto's request log, after `log_offset`, shows a GET of an object of `table`
        in this bucket (proof that a read went to S3); returns those request lines."""
        request = re.compile(
            rf'"GET /{re.escape(self.bucket)}/{PREFIX}/segments/{table}/\S+ HTTP/[\d.]+" (200|206) '
        )

        def gets() -> list[str]:
            text = ANSI_ESCAPE.sub("", self.moto.log()[log_offset:])  # werkzeug colours non-200 lines
            return [line for line in text.splitlines() if request.search(line)]

        return wait_until(gets, timeout=10, what=f"a GET of a {table} object in moto's log")

    def flags(self, **extra: Any) -> dict[str, Any]:
        """`serve` flags for a server whose segments go to this bucket under PREFIX; flushes and
        compactions only happen when a test asks for them."""
        return {
            "object_store": f"s3://{self.bucket}/{PREFIX}",
            "s3_endpoint": self.endpoint,
            "shards": 1,
            "flush_age": "1h",
            "maintenance_interval": "1h",
            **extra,
        }


def new_bucket_name() -> str:
    return f"oxeye-e2e-{uuid.uuid4().hex[:16]}"


def start_moto(log_path: Path) -> Iterator[S3]:
    """The body of a module-scoped `moto` fixture: one moto server with a bucket created, stopped
    when the generator is closed. Tests that write get their own bucket from `fresh_bucket`, so
    that their objects do not mix."""
    server = MotoServer(log_path)
    try:
        server.start()
        s3 = S3(server, new_bucket_name(), server.client())
        s3.create_bucket()
        yield s3
        s3.client.close()
    finally:
        server.stop()


def use_moto_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credentials oxeye reads from the environment (any will do for moto), and nothing
    else AWS-related from the outer environment."""
    for name in AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


def fresh_bucket(moto: S3) -> S3:
    """A new bucket on the moto server of `moto`."""
    bucket = S3(moto.moto, new_bucket_name(), moto.client)
    bucket.create_bucket()
    return bucket


# ---------------------------------------------------------------------------------------------
# Data


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@dataclass
class Sent:
    """What one `send_data` call sent."""

    service: str
    traces: dict[str, set[str]] = field(default_factory=dict)  # trace id -> span ids
    log_bodies: list[str] = field(default_factory=list)

    @property
    def span_ids(self) -> set[str]:
        return set().union(*self.traces.values()) if self.traces else set()


def send_data(server: Oxeye, service: str, traces: int = 3, children: int = 4, logs: int = 5) -> Sent:
    """Sends `traces` traces of 1 + `children` spans of `service` with the OpenTelemetry SDK
    (OTLP/gRPC), and `logs` log records of the first trace over OTLP/HTTP; waits until all are
    queryable."""
    sent = Sent(service)
    sdk = SdkTraces(server)
    start = time.time_ns() - 120 * 1_000_000_000
    try:
        for t in range(traces):
            root = SpanSpec(
                service,
                f"GET /objects/{t}",
                kind="SERVER",
                duration_ms=40,
                attributes={"http.route": "/objects/{n}", "round": t},
                children=[
                    SpanSpec(service, f"step {c}", kind="INTERNAL", offset_ms=1 + 5 * c, duration_ms=3)
                    for c in range(children)
                ],
            )
            sdk.send(root, start + t * 1_000_000_000)
        sdk.flush()
    finally:
        sdk.shutdown()
    for s in sdk.spans:
        sent.traces.setdefault(s.trace_id, set()).add(s.span_id)
    ids = ", ".join(f"'{t}'" for t in sent.traces)
    server.wait_span_count(f"trace_id IN ({ids})", len(sent.span_ids))

    if logs:
        tag = uuid.uuid4().hex[:8]
        first = next(iter(sent.traces))
        sent.log_bodies = [f"{service} {tag} log {i}" for i in range(logs)]
        records = [
            log_record(body, start + i * 1_000_000, trace_id=bytes.fromhex(first))
            for i, body in enumerate(sent.log_bodies)
        ]
        server.export(records_request(records, service=service))
        server.wait_rows(
            f"SELECT body FROM logs WHERE service_name = '{service}' AND body LIKE '%{tag}%'", logs
        )
    return sent


def answers(server: Oxeye, sent: list[Sent]) -> dict[str, Any]:
    """Everything the tests ask about `sent` (SQL over spans and logs, the trace API), asserted
    to be exactly what was sent; returned for comparison with later answers."""
    services = sorted({s.service for s in sent})
    where = "service_name IN ({})".format(", ".join(f"'{s}'" for s in services))
    span_ids = set().union(*(s.span_ids for s in sent))
    bodies = sorted(b for s in sent for b in s.log_bodies)
    traces = {t: ids for s in sent for t, ids in s.traces.items()}

    got: dict[str, Any] = {
        "span_count": server.span_count(where),
        "span_ids": sorted(r[0] for r in server.sql(f"SELECT span_id FROM spans WHERE {where}")[1]),
        "per_service": server.sql(
            f"SELECT service_name, count(*) FROM spans WHERE {where} GROUP BY 1 ORDER BY 1"
        )[1],
        "log_bodies": sorted(r[0] for r in server.sql(f"SELECT body FROM logs WHERE {where}")[1]),
        "traces": {t: server.trace(t) for t in traces},
    }
    n = len(span_ids)
    assert got["span_count"] == (n, n), f"(count(*), count(DISTINCT span_id)) = {got['span_count']}, sent {n}"
    assert set(got["span_ids"]) == span_ids, "the stored span ids are not those sent"
    assert got["log_bodies"] == bodies, f"log bodies: got {got['log_bodies']}, sent {bodies}"
    for t, ids in traces.items():
        body = got["traces"][t]
        assert body is not None, f"GET /api/v1/traces/{t}: 404"
        assert body["span_count"] == len(ids), f"trace {t}: {body['span_count']} spans, sent {len(ids)}"
        assert {s["span_id"] for s in body["spans"]} == ids, f"trace {t}: other span ids than sent"
    return got


# ---------------------------------------------------------------------------------------------
# Server side


def admin(server: Oxeye, action: str, timeout: float = ADMIN_TIMEOUT) -> requests.Response:
    return server.session.post(f"{server.api}/api/v1/admin/{action}", timeout=timeout)


def flush(server: Oxeye) -> None:
    """POST /api/v1/admin/flush; asserts success and that nothing is left unflushed."""
    r = admin(server, "flush")
    assert r.status_code == 200, f"flush: HTTP {r.status_code}: {r.text[:2000]}"
    wait_until(
        lambda: server.metric("oxeye_store_memtable_bytes") == 0,
        timeout=10,
        what="no unflushed bytes after the flush",
    )


def segments(server: Oxeye, table: str | None = None) -> list[dict[str, Any]]:
    where = f" WHERE table_name = '{table}'" if table else ""
    return server.sql_dicts(
        f"SELECT id, table_name, level, rows, data_path FROM system.segments{where} ORDER BY id"
    )


def index_path(data_path: str) -> str:
    assert data_path.endswith(".parquet"), data_path
    return data_path.removesuffix(".parquet") + ".index"


def object_keys(segs: list[dict[str, Any]]) -> set[str]:
    """The S3 keys of the data and index objects of `segs`."""
    return {f"{PREFIX}/{p}" for s in segs for p in (s["data_path"], index_path(s["data_path"]))}


def local_segment_files(server: Oxeye) -> list[Path]:
    """Segment and index files under `<data-dir>/objects` (where they go without an object store)."""
    root = server.data_dir / "objects"
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix in (".parquet", ".index") and p.is_file())


def assert_segments_in_bucket(server: Oxeye, s3: S3, tables: tuple[str, ...]) -> dict[str, int]:
    """The bucket holds exactly the data and index objects of the committed segments (named
    `segments/<table>/<id>.parquet|.index` under PREFIX), and each of `tables` has some."""
    segs = segments(server)
    keys = s3.keys()
    for s in segs:
        assert s["data_path"] == f"segments/{s['table_name']}/{s['id']}.parquet", s
    for table in tables:
        mine = [k for k in keys if k.startswith(f"{PREFIX}/segments/{table}/")]
        for suffix in (".parquet", ".index"):
            assert any(k.endswith(suffix) for k in mine), (
                f"no {table} {suffix} objects in S3: {sorted(keys)}\nmoto log:\n{s3.moto.log_tail()}"
            )
    assert set(keys) == object_keys(segs), (
        f"S3 objects and system.segments differ: only in S3 {sorted(set(keys) - object_keys(segs))}, "
        f"only in system.segments {sorted(object_keys(segs) - set(keys))}\nmoto log:\n{s3.moto.log_tail()}"
    )
    return keys
