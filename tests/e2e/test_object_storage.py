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
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from oxeye_client import Oxeye, wait_until

# Registered before the import, so that its asserts explain their failures like the tests' own.
pytest.register_assert_rewrite("storage_helpers")
from storage_helpers import (
    ADMIN_TIMEOUT,
    PREFIX,
    REGION,
    S3,
    MotoServer,
    admin,
    answers,
    assert_segments_in_bucket,
    flush,
    fresh_bucket,
    index_path,
    local_segment_files,
    new_bucket_name,
    object_keys,
    segments,
    send_data,
    start_moto,
    unique,
    use_moto_credentials,
)

# ---------------------------------------------------------------------------------------------
# Fixtures (the moto server, S3 and the data helpers are in storage_helpers.py)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """One moto server for the module: (endpoint, bucket, boto3 client) with the bucket created.
    Tests that write get their own bucket from `s3`, so that their objects do not mix."""
    yield from start_moto(tmp_path_factory.mktemp("moto") / "moto.log")


@pytest.fixture
def aws_env(monkeypatch):
    """The credentials oxeye reads from the environment (any will do for moto), and nothing
    else AWS-related from the outer environment."""
    use_moto_credentials(monkeypatch)


@pytest.fixture
def s3(moto, aws_env) -> S3:
    """A fresh bucket on the module's moto server."""
    return fresh_bucket(moto)


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
# The read cache


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
