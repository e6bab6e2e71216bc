"""Segments and index files in S3-compatible object storage (`--object-store s3://BUCKET/PREFIX`,
`--s3-endpoint`, `--cache-size`), against a real S3-compatible server started by the tests:
`moto_server` from moto[server] (tests/e2e/requirements.txt). Flushed segments land in the
bucket and not under `<data-dir>/objects`; SQL and the trace API read them back; a restart with
the local read cache wiped and a cache of 1 KiB still give the same answers; compaction writes
its merged segment to the bucket; a flush while S3 is unreachable loses nothing and succeeds
once S3 is back."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
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


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """One moto server for the module: (endpoint, bucket, boto3 client) with the bucket created.
    Tests that write get their own bucket from `s3`, so that their objects do not mix."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.start()
        s3 = S3(server, new_bucket_name(), server.client())
        s3.create_bucket()
        yield s3
        s3.client.close()
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    """The credentials oxeye reads from the environment (any will do for moto), and nothing
    else AWS-related from the outer environment."""
    for name in AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture
def s3(moto, aws_env) -> S3:
    """A fresh bucket on the module's moto server."""
    bucket = S3(moto.moto, new_bucket_name(), moto.client)
    bucket.create_bucket()
    return bucket


@pytest.fixture
def moto_factory(tmp_path):
    """`moto_factory()` starts another moto server of the test's own; all are stopped at the end
    (request this fixture before `oxeye_factory`, so that oxeye is stopped first)."""
    servers: list[MotoServer] = []

    def start(port: int | None = None) -> MotoServer:
        server = MotoServer(tmp_path / f"moto-{len(servers)}.log", port)
        servers.append(server)
        server.start()
        return server

    yield start
    for s in servers:
        s.stop()


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


def cache_files(server: Oxeye) -> dict[str, int]:
    """Path relative to `<data-dir>/cache` -> size of every file in the read cache."""
    root = server.data_dir / "cache"
    out: dict[str, int] = {}
    for dirpath, _, names in os.walk(root):  # no such directory: nothing; errors while walking: skipped
        for name in names:
            p = Path(dirpath) / name
            try:
                out[p.relative_to(root).as_posix()] = p.stat().st_size
            except FileNotFoundError:  # evicted while listing
                continue
    return out


def assert_cache_within(server: Oxeye, limit: int) -> None:
    """The read cache's files add up to at most `limit` bytes (polled briefly, for an eviction
    that finishes just after a query returned)."""
    wait_until(
        lambda: sum(cache_files(server).values()) <= limit,
        timeout=10,
        what=f"<data-dir>/cache within {limit} bytes (now {cache_files(server)})",
    )


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


# ---------------------------------------------------------------------------------------------
# Tests


def test_segments_land_in_s3_and_not_on_local_disk(s3, oxeye_factory):
    server = oxeye_factory(**s3.flags())
    sent = send_data(server, unique("s3-basic"))
    assert not s3.keys(), f"objects in S3 before any flush: {s3.keys()}"
    assert not segments(server), "segments before any flush"

    flush(server)
    keys = assert_segments_in_bucket(server, s3, ("spans", "logs"))
    assert not local_segment_files(server), (
        f"segment files under <data-dir>/objects with an object store: {local_segment_files(server)}"
    )
    assert (server.data_dir / "catalog.json").exists(), "the catalog should stay in the local data dir"

    spans = segments(server, "spans")
    logs = segments(server, "logs")
    assert sum(s["rows"] for s in spans) == len(sent.span_ids), spans
    assert sum(s["rows"] for s in logs) == len(sent.log_bodies), logs
    for s in spans:
        data = s3.get(f"{PREFIX}/{s['data_path']}")
        assert len(data) == keys[f"{PREFIX}/{s['data_path']}"]
        assert data[:4] == b"PAR1" and data[-4:] == b"PAR1", f"{s['data_path']} in S3 is not a Parquet file"
        assert pq.ParquetFile(io.BytesIO(data)).metadata.num_rows == s["rows"], s
        assert keys[f"{PREFIX}/{index_path(s['data_path'])}"] > 0, f"empty index object for {s['id']}"

    answers(server, [sent])  # SQL over the segments in S3 and the trace API (index from S3)


def test_restart_with_the_read_cache_wiped_gives_the_same_answers(s3, oxeye_factory):
    server = oxeye_factory(**s3.flags())
    sent = send_data(server, unique("s3-wiped"))
    flush(server)
    before = answers(server, [sent])
    keys = assert_segments_in_bucket(server, s3, ("spans", "logs"))

    server.stop()
    cache = server.data_dir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    assert not cache.exists()
    moto_log = len(s3.moto.log())
    server.start()

    after = answers(server, [sent])
    s3.wait_gets(moto_log, "spans")  # the cache was empty: the reads went to S3
    assert after == before, "answers changed after a restart with the read cache wiped"
    assert s3.keys() == keys, "the restart changed the objects in S3"
    assert not local_segment_files(server)

    cached = cache_files(server)
    objects = {k.removeprefix(f"{PREFIX}/"): size for k, size in keys.items()}
    read = {p: size for p, size in cached.items() if p in objects}
    assert any(p.startswith("segments/spans/") for p in read), (
        f"no spans segment objects in <data-dir>/cache after querying them: cache holds {cached}, "
        f"S3 holds {sorted(objects)}"
    )
    for p, size in read.items():
        assert size == objects[p], f"cached {p} has {size} bytes, the object in S3 {objects[p]}"


def test_tiny_read_cache_still_answers_everything(s3, oxeye_factory):
    limit = 1024
    server = oxeye_factory(**s3.flags(cache_size="1KiB", s3_region=REGION))
    sent = send_data(server, unique("s3-tiny"))
    flush(server)
    keys = assert_segments_in_bucket(server, s3, ("spans", "logs"))
    assert max(keys.values()) > limit, f"every object fits the cache; the test proves nothing: {keys}"

    first = answers(server, [sent])
    assert_cache_within(server, limit)
    assert answers(server, [sent]) == first, "a second round of the same queries answered differently"
    assert_cache_within(server, limit)

    moto_log = len(s3.moto.log())
    server.restart()  # no index or footer held in memory any more: everything comes from S3
    assert answers(server, [sent]) == first, "answers changed after a restart"
    s3.wait_gets(moto_log, "spans")
    assert_cache_within(server, limit)
    assert not local_segment_files(server)


def test_compaction_writes_the_merged_segment_to_s3(s3, oxeye_factory):
    server = oxeye_factory(**s3.flags())
    service = unique("s3-compact")
    sent = []
    for round_ in range(3):
        sent.append(send_data(server, service, traces=2, children=3, logs=2))
        flush(server)
        assert len(segments(server, "spans")) == round_ + 1, segments(server, "spans")
    before = segments(server, "spans")
    answers_before = answers(server, sent)
    assert_segments_in_bucket(server, s3, ("spans", "logs"))

    r = admin(server, "compact")
    assert r.status_code == 200, f"compact: HTTP {r.status_code}: {r.text[:2000]}"
    assert r.json()["merges"] >= 1, r.json()

    after = segments(server, "spans")
    assert len(after) < len(before), f"spans segments before {before}, after compaction {after}"
    assert sum(s["rows"] for s in after) == sum(s["rows"] for s in before), (before, after)
    new = [s for s in after if s["id"] not in {b["id"] for b in before}]
    assert new, f"no new spans segment after compaction: {after}"
    keys = s3.keys()
    for s in new:
        for k in object_keys([s]):
            assert k in keys, f"compacted segment object {k} not in S3: {sorted(keys)}"
            assert keys[k] > 0, k
    # Every segment still listed is readable from S3 (the merged inputs may linger until their
    # deletion grace period is over; that is not waited for).
    assert object_keys(segments(server)) <= set(keys)
    assert answers(server, sent) == answers_before, "answers changed after compaction"


def test_flush_while_s3_is_unreachable_loses_nothing(aws_env, moto_factory, oxeye_factory):
    moto = moto_factory()
    s3 = S3(moto, new_bucket_name(), moto.client())
    s3.create_bucket()
    server = oxeye_factory(**s3.flags())
    sent = [send_data(server, unique("s3-outage"))]

    log_offset = len(server.log())
    moto.stop()
    try:
        started = time.monotonic()
        try:
            r = admin(server, "flush")
            outcome, response_text = f"HTTP {r.status_code}: {r.text[:1000]}", r.text
        except requests.Timeout:
            outcome, response_text = f"no answer within {ADMIN_TIMEOUT}s", ""
        outcome += f" after {time.monotonic() - started:.1f}s"

        assert server.running, f"oxeye exited during a flush with S3 down ({outcome}):\n{server.log_tail()}"
        health = server.get("/healthz", timeout=10)
        assert health.status_code == 200, f"/healthz: HTTP {health.status_code} with S3 down ({outcome})"

        mentions = (f"127.0.0.1:{moto.port}", f"s3://{s3.bucket}", s3.bucket, "object store", "object_store")

        def failure_reported() -> bool:
            text = (response_text + server.log()[log_offset:]).lower()
            return any(m.lower() in text for m in mentions)

        wait_until(
            failure_reported,
            timeout=ADMIN_TIMEOUT,
            interval=0.5,
            what=f"the flush failure reported (response or log naming any of {mentions}); flush: {outcome}",
        )
        assert not segments(server), f"segments committed while S3 was down ({outcome}): {segments(server)}"
        assert server.wal_files(), f"no WAL files while the rows are unflushed ({outcome})"

        # Ingest keeps working while the object store is down.
        sent.append(send_data(server, unique("s3-outage-more"), traces=1, logs=2))
        answers_down = answers(server, sent)
    finally:
        if not moto.running:
            moto.start()  # same port; moto keeps nothing across restarts
            s3.create_bucket()

    def flushed() -> bool:
        resp = admin(server, "flush")
        return resp.status_code == 200

    wait_until(flushed, timeout=2 * ADMIN_TIMEOUT, interval=1, what="a successful flush once S3 is back")
    wait_until(
        lambda: server.metric("oxeye_store_memtable_bytes") == 0,
        timeout=30,
        what="nothing unflushed once S3 is back",
    )
    assert_segments_in_bucket(server, s3, ("spans", "logs"))
    assert sum(s["rows"] for s in segments(server, "spans")) == sum(len(s.span_ids) for s in sent)
    assert answers(server, sent) == answers_down, "answers changed after flushing to S3"
    assert not local_segment_files(server)
