"""Durability: every acknowledged span survives kill -9, clean restarts, flushes, compaction,
a damaged WAL tail and concurrent load, exactly once."""

from __future__ import annotations

import random
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from oxeye_client import (
    Oxeye,
    gauge_request,
    logs_request,
    random_trace_id,
    span,
    trace_request,
    wait_until,
)

WAL_MAGIC = b"OXWAL001"


class SpanSender:
    """Sends new spans over OTLP/HTTP protobuf, never the same span twice, and remembers which
    span ids were acknowledged and which were sent without an acknowledgement (those may or may
    not be stored). Several threads may share one sender."""

    def __init__(self, server: Oxeye, spans_per_request: int = 20):
        self.server = server
        self.spans_per_request = spans_per_request
        self.acked: set[str] = set()
        self.unacked: set[str] = set()
        self.traces: list[str] = []  # acknowledged trace ids (each request is one trace)
        self.lock = threading.Lock()
        self.local = threading.local()  # one HTTP session per thread

    def send(self, n_spans: int | None = None) -> bool:
        """Sends one request of new spans (one new trace); True when it was acknowledged."""
        tid = random_trace_id()
        spans = [span(tid, name=f"s{i}") for i in range(n_spans or self.spans_per_request)]
        ids = {s.span_id.hex() for s in spans}
        ok = self._post(trace_request(spans, service="durability").SerializeToString())
        with self.lock:
            if ok:
                self.acked |= ids
                self.traces.append(tid.hex())
            else:
                self.unacked |= ids
        return ok

    def _post(self, body: bytes) -> bool:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        try:
            r = session.post(
                f"{self.server.otlp_http}/v1/traces",
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=30,
            )
        except requests.RequestException:  # e.g. the server was killed
            session.close()
            self.local.session = None
            return False
        if r.status_code != 200:
            return False
        return (
            trace_service_pb2.ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans
            == 0
        )

    def send_acked(self, requests_: int, n_spans: int | None = None) -> None:
        """Sends `requests_` requests, each of which must be acknowledged."""
        for _ in range(requests_):
            assert self.send(n_spans), f"request not acknowledged:\n{self.server.log_tail()}"

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def stored_span_ids(server: Oxeye) -> list[str]:
    _, rows = server.sql("SELECT span_id FROM spans")
    return [r[0] for r in rows]


def assert_exactly(server: Oxeye, expected: set[str]) -> None:
    """The spans table holds exactly `expected` span ids, each once."""
    count, distinct = server.span_count()
    ids = stored_span_ids(server)
    assert (count, distinct) == (len(expected), len(expected)), (
        f"count(*)={count} count(DISTINCT span_id)={distinct}, expected {len(expected)}"
    )
    assert len(ids) == len(set(ids)), "duplicate span ids"
    missing, extra = expected - set(ids), set(ids) - expected
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} unexpected"


def assert_acked_kept_once(server: Oxeye, sender: SpanSender) -> None:
    """After a crash under load: every acknowledged span is there once; unacknowledged ones may
    or may not be; nothing else is."""
    ids = stored_span_ids(server)
    count, distinct = server.span_count()
    assert count == distinct == len(ids), f"count(*)={count} count(DISTINCT)={distinct} rows={len(ids)}"
    assert len(set(ids)) == len(ids), "duplicate span ids"
    stored = set(ids)
    missing = sender.acked - stored
    assert not missing, f"{len(missing)} acknowledged spans lost"
    assert stored <= sender.acked | sender.unacked, "spans that were never sent"


# ---------------------------------------------------------------------------------------------
# WAL files


def wal_records(path: Path) -> list[tuple[int, int]]:
    """(offset, total length incl. the 8-byte header) of every intact record of a WAL file."""
    data = path.read_bytes()
    assert data[:8] == WAL_MAGIC, f"{path} does not start with {WAL_MAGIC!r}"
    out, offset = [], 8
    while offset + 8 <= len(data):
        size, crc = struct.unpack_from("<II", data, offset)
        payload = data[offset + 8 : offset + 8 + size]
        if len(payload) < size or zlib.crc32(payload) != crc:
            break
        out.append((offset, 8 + size))
        offset += 8 + size
    assert offset == len(data), f"{path} has {len(data) - offset} bytes after its last intact record"
    return out


def newest_wal_with_records(server: Oxeye) -> tuple[Path, list[tuple[int, int]]]:
    for path in reversed(server.wal_files()):
        records = wal_records(path)
        if records:
            return path, records
    raise AssertionError(f"no WAL records in {server.wal_files()}")


# ---------------------------------------------------------------------------------------------
# (a) (b) restarts


def test_kill9_keeps_every_acknowledged_row(oxeye_factory):
    server = oxeye_factory(flush_age="1h")
    sender = SpanSender(server)
    sender.send_acked(100)
    for i in range(20):
        server.export(logs_request([f"log {i}-{j}" for j in range(10)], service="durability"))
    server.export(gauge_request("durability.gauge", [float(i) for i in range(50)], service="durability"))
    server.kill9()
    server.start()
    assert_exactly(server, sender.acked)
    assert server.sql_value("SELECT count(*) FROM logs") == 200
    assert server.sql_value("SELECT count(DISTINCT body) FROM logs") == 200
    assert server.sql_value("SELECT count(*) FROM metrics WHERE name = 'durability.gauge'") == 50

    # Again, with data from both lives in the WAL.
    sender.send_acked(50)
    server.kill9()
    server.start()
    assert_exactly(server, sender.acked)
    assert len(sender.acked) == 150 * 20
    assert server.sql_value("SELECT count(*) FROM logs") == 200


def test_sigterm_restart_keeps_every_acknowledged_row(oxeye_factory):
    server = oxeye_factory()
    sender = SpanSender(server)
    sender.send_acked(100)
    server.stop()
    server.start()
    assert_exactly(server, sender.acked)
    sender.send_acked(20)
    server.stop()
    server.start()
    assert_exactly(server, sender.acked)
    assert len(sender.acked) == 120 * 20


# ---------------------------------------------------------------------------------------------
# (c) (d) flushed and compacted data


def test_kill9_after_flush(oxeye_factory):
    server = oxeye_factory(flush_age="1s")
    sender = SpanSender(server)
    sender.send_acked(50)
    # One trace whose root is flushed and whose children are not (yet).
    tid = random_trace_id()
    root = span(tid, name="split-root")
    server.export(trace_request([root], service="split"))
    wait_until(lambda: server.metric("oxeye_store_memtable_bytes") == 0, what="everything flushed")
    assert server.metric("oxeye_store_segments", signal="spans") >= 1
    assert server.segment_files("spans"), "the metric says a segment exists but no .parquet file does"
    children = [span(tid, name=f"split-child-{i}", parent_span_id=root.span_id) for i in range(3)]
    server.export(trace_request(children, service="split"))
    sender.send_acked(25)  # some of these are likely still only in the WAL
    expected = sender.acked | {s.span_id.hex() for s in [root, *children]}
    assert server.trace(tid.hex())["span_count"] == 4

    server.kill9()
    server.start()
    assert_exactly(server, expected)
    t = server.trace(tid.hex())
    assert sorted(s["name"] for s in t["spans"]) == [
        "split-child-0",
        "split-child-1",
        "split-child-2",
        "split-root",
    ]


def test_kill9_after_compaction(oxeye_factory):
    server = oxeye_factory(flush_age="1s", maintenance_interval="1s")
    sender = SpanSender(server)
    for round_ in range(1, 4):
        sender.send_acked(20)
        server.wait_metric("oxeye_store_flushes_total", round_)
    server.wait_metric("oxeye_store_compactions_total", 1)
    sender.send_acked(10)
    server.kill9()
    server.start()
    assert_exactly(server, sender.acked)
    # Compacted data is queryable by trace id too (index of the merged segment).
    for tid in random.sample(sender.traces, 5):
        assert server.trace(tid)["span_count"] == sender.spans_per_request


# ---------------------------------------------------------------------------------------------
# (e) damaged WAL tail


def garbage_tail(path: Path, records: list[tuple[int, int]]) -> None:
    """A plausible record header whose payload fails the checksum."""
    with path.open("ab") as f:
        f.write(struct.pack("<II", 64, 0xDEADBEEF) + b"\xab" * 64 + b"trailing junk")


def torn_copy_tail(path: Path, records: list[tuple[int, int]]) -> None:
    """A torn write: a copy of the last record, missing its last bytes."""
    offset, length = records[-1]
    data = path.read_bytes()
    with path.open("ab") as f:
        f.write(data[offset : offset + length - 5])


def truncate_last_record(path: Path, records: list[tuple[int, int]]) -> None:
    """The last record itself loses its last bytes (its rows are lost, the rest must stay)."""
    offset, length = records[-1]
    with path.open("r+b") as f:
        f.truncate(offset + length - 3)


@pytest.mark.parametrize(
    "damage, last_request_survives",
    [(garbage_tail, True), (torn_copy_tail, True), (truncate_last_record, False)],
    ids=["garbage", "torn-copy-of-last-record", "truncated-last-record"],
)
def test_damaged_wal_tail_is_cut_and_the_rest_kept(oxeye_factory, damage, last_request_survives):
    server = oxeye_factory(flush_age="1h")
    sender = SpanSender(server, spans_per_request=10)
    sender.send_acked(40)
    before_last = set(sender.acked)
    sender.send_acked(1, n_spans=7)  # the last record holds exactly this request
    last_ids = sender.acked - before_last
    server.kill9()
    assert not server.segment_files("spans"), "nothing should have been flushed yet"

    path, records = newest_wal_with_records(server)
    damage(path, records)
    server.start()

    warnings = [
        line for line in server.log_of_last_start().splitlines() if "WARN" in line and path.name in line
    ]
    assert warnings, f"no warning about {path.name} in the log"
    assert server.metric("oxeye_store_wal_tails_cut_total") == 1
    expected = sender.acked if last_request_survives else sender.acked - last_ids
    assert_exactly(server, expected)
    if not last_request_survives:
        assert len(expected) == 40 * 10

    # New writes after the cut survive the next crash, and the cut is not reported again.
    sender.send_acked(5)
    expected |= sender.acked - before_last - last_ids
    server.kill9()
    server.start()
    assert server.metric("oxeye_store_wal_tails_cut_total") == 0
    assert_exactly(server, expected)


# ---------------------------------------------------------------------------------------------
# (f) concurrent writers and readers during flushes and compaction


def test_concurrent_writers_and_readers_see_no_duplicates(oxeye_factory):
    server = oxeye_factory(flush_age="1s", maintenance_interval="1s")
    sender = SpanSender(server, spans_per_request=10)
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def writer():
        while not stop.is_set():
            if not sender.send():
                errors.append("a write was not acknowledged")
                return

    def reader():
        session = requests.Session()
        last = 0
        while not stop.is_set():
            acked_before = sender.acked_count()
            r = session.post(
                f"{server.api}/api/v1/sql",
                json={"sql": "SELECT count(*), count(DISTINCT span_id) FROM spans"},
                timeout=30,
            )
            if r.status_code != 200:
                errors.append(f"SQL failed: {r.status_code} {r.text}")
                return
            count, distinct = r.json()["rows"][0]
            if count != distinct:
                errors.append(f"duplicates visible: count(*)={count} distinct={distinct}")
            if count < acked_before:
                errors.append(f"acknowledged rows not visible: {count} < {acked_before}")
            if count < last:
                errors.append(f"row count went backwards: {last} -> {count}")
            last = count
            reads[0] += 1
            with sender.lock:
                tid = random.choice(sender.traces) if sender.traces else None
            if tid:
                t = session.get(f"{server.api}/api/v1/traces/{tid}", timeout=30)
                if t.status_code != 200 or t.json()["span_count"] != sender.spans_per_request:
                    errors.append(f"trace {tid}: HTTP {t.status_code} {t.text[:200]}")
            if errors:
                return

    threads = [threading.Thread(target=writer) for _ in range(3)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    try:
        # Run through several flushes and at least two compactions.
        wait_until(
            lambda: (
                errors
                or (
                    server.metric("oxeye_store_flushes_total") >= 4
                    and server.metric("oxeye_store_compactions_total") >= 2
                )
            ),
            timeout=90,
            interval=0.5,
            what="flushes and compactions under load",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:5]
    assert reads[0] > 10
    assert not sender.unacked
    assert_exactly(server, sender.acked)
    server.kill9()
    server.start()
    assert_exactly(server, sender.acked)


def test_repeated_kill9_under_load(oxeye_factory):
    """Crashes at arbitrary moments while writes, flushes and compactions run."""
    server = oxeye_factory(flush_age="1s", maintenance_interval="1s")
    sender = SpanSender(server, spans_per_request=10)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            if not sender.send():
                time.sleep(0.05)  # the server is down; try again shortly with new spans

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()

    def wait_for_progress(spans: int = 100):
        target = sender.acked_count() + spans
        wait_until(
            lambda: sender.acked_count() >= target, timeout=30, what=f"{spans} more spans acknowledged"
        )

    rng = random.Random(7)
    try:
        for _ in range(4):
            wait_for_progress()
            time.sleep(rng.uniform(0.2, 1.5))  # a random crash point, not a timing assertion
            server.kill9()
            server.start()
        wait_for_progress()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert_acked_kept_once(server, sender)
    server.kill9()
    server.start()
    assert_acked_kept_once(server, sender)


# ---------------------------------------------------------------------------------------------
# (g) graceful shutdown


def test_sigterm_flushes_everything_and_empties_the_wal(oxeye_factory):
    server = oxeye_factory(flush_age="1h")
    sender = SpanSender(server)
    sender.send_acked(60)
    assert not server.segment_files("spans")
    assert sum(len(wal_records(p)) for p in server.wal_files()) > 0

    server.stop()  # asserts exit code 0
    assert server.segment_files("spans"), "SIGTERM did not flush the memtable to a segment"
    leftover = {p.name: len(wal_records(p)) for p in server.wal_files()}
    assert sum(leftover.values()) == 0, f"WAL records of flushed data remain: {leftover}"

    server.start()
    assert_exactly(server, sender.acked)


def test_segment_gauge_is_right_after_a_restart(oxeye_factory):
    server = oxeye_factory()
    SpanSender(server).send_acked(5)
    server.stop()  # flushes one spans segment
    assert len(server.segment_files("spans")) == 1
    server.start()
    assert server.span_count() == (100, 100)
    assert server.metric("oxeye_store_segments", signal="spans") == 1


def test_sigterm_under_load_drains_acknowledged_writes(oxeye_factory):
    server = oxeye_factory()
    sender = SpanSender(server, spans_per_request=10)
    stop = threading.Event()

    def writer():
        while not stop.is_set() and sender.send():
            pass

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sender.acked_count() >= 500, timeout=30, what="writes under way")
        server.stop()  # while writers are sending; asserts exit code 0
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    server.start()
    assert_acked_kept_once(server, sender)


def test_spans_from_the_far_past_and_future_are_stored_and_found(oxeye: Oxeye):
    """Clock skew: spans stamped 1990 and 2090 (a client with a broken clock) are acknowledged,
    kept through a flush, a compaction and a restart, and found by trace id, through the trace
    API, and by time range."""
    past_ns = 631_152_000 * 1_000_000_000  # 1990-01-01T00:00:00Z
    future_ns = 3_786_912_000 * 1_000_000_000  # 2090-01-01T00:00:00Z
    now_ns = time.time_ns()
    traces = {}
    for label, start in (("past", past_ns), ("future", future_ns), ("now", now_ns)):
        tid = random_trace_id()
        spans = [span(tid, name=f"{label}-{i}", start_ns=start + i * 1_000_000) for i in range(3)]
        r = oxeye.post_otlp("traces", trace_request(spans, service="skew").SerializeToString())
        assert r.status_code == 200, r.text
        traces[label] = tid.hex()

    def check() -> None:
        for label, tid in traces.items():
            rows = oxeye.sql_dicts(f"SELECT name FROM spans WHERE trace_id = '{tid}' ORDER BY name")
            assert [r["name"] for r in rows] == [f"{label}-{i}" for i in range(3)], (label, rows)
            found = oxeye.trace(tid)
            assert found is not None and len(found["spans"]) == 3, (label, found)
        early = oxeye.sql_dicts(
            "SELECT count(*) AS n FROM spans WHERE service_name = 'skew' AND start_time < TIMESTAMP '1991-01-01T00:00:00Z'"
        )
        late = oxeye.sql_dicts(
            "SELECT count(*) AS n FROM spans WHERE service_name = 'skew' AND start_time >= TIMESTAMP '2089-12-31T00:00:00Z'"
        )
        assert (int(early[0]["n"]), int(late[0]["n"])) == (3, 3)

    check()
    assert oxeye.session.post(f"{oxeye.api}/api/v1/admin/flush", timeout=120).status_code == 200
    check()
    assert oxeye.session.post(f"{oxeye.api}/api/v1/admin/compact", timeout=120).status_code == 200
    check()
    oxeye.stop()
    oxeye.start()
    check()


# ---------------------------------------------------------------------------------------------
# (h) a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs: a disk that really fills (ENOSPC from the kernel, not oxeye's own
    --min-free-disk guard). Request it before `oxeye_factory`, so oxeye stops before the
    unmount."""
    import subprocess

    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if p.returncode != 0:
        pytest.skip(f"a full-disk test needs to mount a small tmpfs (root): {p.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(path: Path, leave: int) -> None:
    """Writes `path` until the disk has about `leave` bytes free."""
    import os
    import shutil

    chunk = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        while shutil.disk_usage(path.parent).free > leave + len(chunk):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def test_a_full_disk_refuses_writes_retryably_and_recovers(small_disk, oxeye_factory):
    """The WAL's disk fills up during ingest: writes are refused with OTLP's retryable answer
    (never acknowledged and then lost), the server stays up, and once space returns, writes are
    accepted again. Every acknowledged span is there exactly once, also after a restart; no
    refused request left rows behind."""
    server = oxeye_factory(
        data_dir=small_disk / "data", min_free_disk="0", flush_age="1h", maintenance_interval="1h"
    )
    filler = small_disk / "filler"
    _fill(filler, leave=6 << 20)
    sender = SpanSender(server, spans_per_request=200)

    def post_big() -> requests.Response:
        """One ~100 KB request of new spans, remembered as acknowledged or not."""
        tid = random_trace_id()
        spans = [span(tid, name=f"s{i}", attributes={"payload": "x" * 400}) for i in range(200)]
        r = server.session.post(
            f"{server.otlp_http}/v1/traces",
            data=trace_request(spans, service="durability").SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        ids = {s.span_id.hex() for s in spans}
        if r.status_code == 200:
            sender.acked |= ids
        else:
            sender.unacked |= ids
        return r

    refusals = []
    for _ in range(400):
        r = post_big()
        if r.status_code != 200:
            refusals.append(r)
            if len(refusals) >= 5:
                break
    assert refusals, "the disk never filled up"
    for r in refusals:
        assert r.status_code in (429, 503) and int(r.headers["Retry-After"]) >= 1, (r.status_code, r.text[:300])
    assert server.running and server.session.get(f"{server.api}/healthz", timeout=10).status_code == 200
    assert "appending to the WAL" in server.log() or "disk" in server.log().lower()
    assert sender.acked, "nothing was acknowledged before the disk filled up"

    # A flush cannot write its segment: it fails clearly and keeps the rows where they were.
    r = server.session.post(f"{server.api}/api/v1/admin/flush", timeout=60)
    assert r.status_code >= 400 and "space" in r.text.lower(), (r.status_code, r.text[:500])
    # A crash on the full disk: the server comes back, with what it acknowledged, still full.
    server.kill9()
    server.start()
    assert_exactly(server, sender.acked)
    r = next((r for r in (post_big() for _ in range(20)) if r.status_code != 200), None)
    assert r is not None and r.status_code in (429, 503), "the restarted server took writes on a full disk"

    # Space returns: writes are accepted again, as an OTLP client retrying would find.
    filler.unlink()
    wait_until(lambda: sender.send() or None, timeout=30, what="a write accepted once space returned")
    sender.send_acked(5)
    stored = set(stored_span_ids(server))
    assert sender.acked <= stored, f"{len(sender.acked - stored)} acknowledged spans missing"
    assert not (sender.unacked & stored), "a refused request left rows behind"
    assert_exactly(server, sender.acked)
    server.restart()
    assert_exactly(server, sender.acked)


# ---------------------------------------------------------------------------------------------
# (i) a 100k-span trace


def test_a_100k_span_trace_is_stored_and_served_whole(oxeye_factory):
    """One trace of 100,000 spans (a root, 100 services' worth of subtrees) sent in 100 OTLP
    requests: SQL, the traces view, the trace API (oxeye's JSON and Jaeger's) and the trace
    page all see every span, before and after it is flushed to a segment."""
    server = oxeye_factory(flush_age="1h", maintenance_interval="1h")
    tid = random_trace_id()
    start = time.time_ns() - 600 * 1_000_000_000
    root = span(tid, name="batch job", start_ns=start, duration_ns=60_000_000_000)
    total = 100_000
    per_request = 1_000
    sent = 1
    assert server.post_otlp("traces", trace_request([root], service="jobs").SerializeToString()).status_code == 200
    for r in range(total // per_request):
        parent = span(tid, name=f"stage {r}", start_ns=start + r * 1_000_000, duration_ns=500_000_000,
                      parent_span_id=root.span_id)
        children = [
            span(tid, name=f"step {i % 50}", start_ns=start + r * 1_000_000 + i * 1_000, duration_ns=10_000,
                 parent_span_id=parent.span_id)
            for i in range(per_request - 1 if r < total // per_request - 1 else per_request - 2)
        ]
        body = trace_request([parent, *children], service=f"worker-{r % 10}").SerializeToString()
        resp = server.post_otlp("traces", body)
        assert resp.status_code == 200, (resp.status_code, resp.text[:300])
        sent += 1 + len(children)
    assert sent == total
    where = f"trace_id = '{tid.hex()}'"

    def check_all_there() -> None:
        server.wait_span_count(where, total, timeout=60)
        row = server.sql_dicts(f"SELECT span_count, root_name, root_service FROM traces WHERE {where}")
        assert row == [{"span_count": total, "root_name": "batch job", "root_service": "jobs"}], row
        trace = server.get_json(f"/api/v1/traces/{tid.hex()}")
        assert trace["span_count"] == total and len(trace["spans"]) == total
        assert len({s["span_id"] for s in trace["spans"]}) == total
        jaeger = server.get_json(f"/api/traces/{tid.hex()}")
        assert len(jaeger["data"][0]["spans"]) == total
        page = server.session.get(f"{server.api}/traces/{tid.hex()}", timeout=120)
        assert page.status_code == 200 and tid.hex() in page.text

    check_all_there()
    r = server.session.post(f"{server.api}/api/v1/admin/flush", timeout=120)
    assert r.status_code == 200, r.text
    check_all_there()
