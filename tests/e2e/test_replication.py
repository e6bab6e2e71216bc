"""Shard replication across store nodes (`oxeye store --shard-ids`), against the PostgreSQL
metastore and moto's S3 of test_metastore.py.

Several store nodes announce the same shard: they are its replicas. One of them leads the shard
(a lease in PostgreSQL with a fencing epoch, 10 s long, renewed every 2 s): only the leader keeps
the shard's rows in memory, serves them to query nodes and flushes them; followers only write the
shard's batches to their WAL. When the leader dies, a follower takes over once the lease has
expired, from its own WAL. Collectors deliver every queued record of a shard to every replica
(`--write-quorum N` replicas before the client is acknowledged; the others get it later from the
queue: hinted handoff).

What the tests hold the cluster to: every span a client had acknowledged is counted exactly once
on a query node, whichever replica leads, while a replica is down, after it comes back and after
flushes by different leaders; a collector restarted while all replicas are down loses nothing;
rows held by two replicas are read once, from the leader."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Self

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

# test_metastore first: it registers storage_helpers for assert rewriting before importing it.
from test_metastore import ConcurrentSender, Metastore, PostgresServer, _send_traces

from oxeye_client import (
    DeadlineExceeded,
    Oxeye,
    SqlError,
    free_ports,
    metric_value,
    random_trace_id,
    span,
    trace_request,
    wait_until,
)
from storage_helpers import S3, flush, fresh_bucket, segments, start_moto, unique, use_moto_credentials

# Store node metrics.
LEADER = "oxeye_store_shard_leader"  # gauge per shard: 1 while this node leads it
TAKEOVERS = "oxeye_store_lease_takeovers_total"
INGESTED = "oxeye_store_ingested_rows_total"  # rows this node made durable (leader or follower)
SNAPSHOT_ROWS = "oxeye_store_snapshot_rows_total"  # unflushed rows sent to query nodes
# Collector metrics.
QUEUE_RECORDS = "oxeye_collector_queue_records"  # gauge, sampled every second
WRITE_QUORUM = "oxeye_collector_write_quorum_total"  # {outcome="met"|"degraded"}

# Three store nodes, each shard on exactly two of them: 1 and 2 share shards 2-3, 2 and 3 share
# 4-5, 3 and 1 share 0-1.
THREE_NODES = ("0,1,2,3", "2,3,4,5", "4,5,0,1")
# A lease expires 10 s after its last renewal; a follower takes over on its next try.
TAKEOVER_TIMEOUT = 40.0


# ---------------------------------------------------------------------------------------------
# Fixtures: those of test_metastore.py, made here from its helpers (a fixture imported from another
# module would be redefined by every test argument of the same name).


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """One PostgreSQL server for the module, with an empty `oxeye` database."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres") / "postgres.log")
    try:
        server.start()
        server.create_database("oxeye")
        yield server
    finally:
        server.stop()


@pytest.fixture
def metastore(postgres):
    """A fresh database of the test's own (request it before `oxeye_factory`, so that oxeye is
    stopped first)."""
    m = Metastore(postgres, f"oxeye_{uuid.uuid4().hex[:12]}")
    postgres.create_database(m.database)
    yield m
    m.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    yield from start_moto(tmp_path_factory.mktemp("moto") / "moto.log")


@pytest.fixture
def s3(moto, monkeypatch) -> S3:
    """A fresh bucket on the module's moto server, with moto's credentials in the environment."""
    use_moto_credentials(monkeypatch)
    return fresh_bucket(moto)


# ---------------------------------------------------------------------------------------------
# The cluster


def _shard_set(ids: str) -> set[int]:
    return {int(s) for s in ids.split(",")}


def _store(oxeye_factory, metastore: Metastore, s3: S3, shard_ids: str, flight_port: int) -> Oxeye:
    """A store node of shards `shard_ids` (`--shard-ids 0,1`), on the shared metastore and bucket,
    that flushes and compacts only when a test asks."""
    flags = s3.flags(
        metastore=metastore.url, role="store", shard_ids=shard_ids, flight_listen=f"127.0.0.1:{flight_port}"
    )
    del flags["shards"]  # --shard-ids replaces --first-shard/--shards
    return oxeye_factory(**flags)


def _collector(oxeye_factory, metastore: Metastore, ports: list[int], **flags: Any) -> Oxeye:
    """A collector, once its shard map has the store nodes listening on the Flight `ports`."""
    c = oxeye_factory(metastore=metastore.url, role="collector", **flags)
    wait_until(
        lambda: "shard map changed" in c.log() and all(f"127.0.0.1:{p}" in c.log() for p in ports),
        timeout=20,
        what=f"the collector seeing the store nodes on Flight ports {ports}",
    )
    return c


def _leaders(shards_of: dict[Oxeye, set[int]]) -> dict[int, Oxeye] | None:
    """Shard -> the node that leads it (`oxeye_store_shard_leader` = 1), when every shard of these
    (running) nodes has exactly one leader among them; else None."""
    claims: dict[int, list[Oxeye]] = {s: [] for shards in shards_of.values() for s in shards}
    for node, shards in shards_of.items():
        text = node.metrics_text()
        for s in shards:
            if metric_value(text, LEADER, shard=str(s)) == 1:
                claims[s].append(node)
    if all(len(nodes) == 1 for nodes in claims.values()):
        return {s: nodes[0] for s, nodes in claims.items()}
    return None


def _wait_leaders(
    shards_of: dict[Oxeye, set[int]], what: str, timeout: float = TAKEOVER_TIMEOUT
) -> dict[int, Oxeye]:
    return wait_until(lambda: _leaders(shards_of), timeout=timeout, interval=0.5, what=what)


def _queued(collectors: list[Oxeye]) -> float:
    return sum(c.metric(QUEUE_RECORDS) for c in collectors)


def _wait_queues_empty(collectors: list[Oxeye], timeout: float = 60) -> None:
    """Waits until no collector holds a queued record (every replica of every shard has them), on
    every look for 1.5 s: the gauge is sampled once a second, so one 0 may be an old sample."""
    empty_since: float | None = None

    def empty_for_a_while() -> bool:
        nonlocal empty_since
        if _queued(collectors) != 0:
            empty_since = None
            return False
        empty_since = empty_since or time.monotonic()
        return time.monotonic() - empty_since >= 1.5

    wait_until(empty_for_a_while, timeout=timeout, interval=0.25, what="the collectors' queues empty")


# ---------------------------------------------------------------------------------------------
# Sending, and what was acknowledged


def _post_traces(collector: Oxeye, service: str, traces: int, per_request: int = 4) -> dict[str, set[str]]:
    """`traces` traces of 4 spans over OTLP/HTTP, `per_request` traces a request, each request
    asserted fully accepted (HTTP 200, no partial success); returns trace id -> span ids."""
    sent: dict[str, set[str]] = {}
    start = time.time_ns() - 60 * 1_000_000_000
    for first in range(0, traces, per_request):
        spans = []
        for t in range(first, min(traces, first + per_request)):
            tid = random_trace_id()
            mine = [span(tid, name=f"op {j}", start_ns=start + t * 1_000_000 + j) for j in range(4)]
            sent[tid.hex()] = {s.span_id.hex() for s in mine}
            spans += mine
        collector.export(trace_request(spans, service=service))
    return sent


class _Acknowledged(SpanExporter):
    """Wraps the SDK's OTLP exporter and records the spans of each export it reported a success
    for (the collector acknowledged them), and how many spans it gave up on."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.lock = threading.Lock()
        self.traces: dict[str, set[str]] = {}
        self.failed = 0

    def export(self, spans) -> SpanExportResult:
        result = self.inner.export(spans)
        with self.lock:
            if result is SpanExportResult.SUCCESS:
                for s in spans:
                    tid, sid = format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")
                    self.traces.setdefault(tid, set()).add(sid)
            else:
                self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class SdkSender:
    """Makes traces of 4 spans with the OpenTelemetry SDK from a background thread, turn about for
    each collector (one TracerProvider each: BatchSpanProcessor + OTLP/HTTP exporter, service
    `<prefix>-sdk-<i>`), until the `with` block ends; then flushes the SDK. `traces()` are the
    acknowledged spans."""

    def __init__(self, collectors: list[Oxeye], prefix: str):
        self.exporters: list[_Acknowledged] = []
        self.providers: list[TracerProvider] = []
        for i, c in enumerate(collectors):
            exporter = _Acknowledged(OTLPSpanExporter(endpoint=f"{c.otlp_http}/v1/traces", timeout=30))
            provider = TracerProvider(resource=Resource.create({"service.name": f"{prefix}-sdk-{i}"}))
            provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=200, export_timeout_millis=60_000)
            )
            self.exporters.append(exporter)
            self.providers.append(provider)
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdk-sender", daemon=True)

    def _run(self) -> None:
        try:
            tracers = [p.get_tracer("e2e.replication") for p in self.providers]
            i = 0
            while not self._stop.is_set():
                tracer = tracers[i % len(tracers)]
                with tracer.start_as_current_span(f"GET /replicated/{i}", kind=SpanKind.SERVER):
                    for j in range(3):
                        with tracer.start_as_current_span(f"step {j}"):
                            pass
                i += 1
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - reported by check()
            self.error = e

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            flushed = [p.force_flush(60_000) for p in self.providers]
        finally:
            for p in self.providers:
                p.shutdown()
        assert all(flushed), "the SDK's span export did not finish within 60s"

    def acknowledged(self) -> int:
        return sum(len(ids) for ids in self.traces().values())

    def traces(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for e in self.exporters:
            with e.lock:
                for t, ids in e.traces.items():
                    out.setdefault(t, set()).update(ids)
        return out

    def check(self) -> None:
        """The sender thread ran through and every export was acknowledged."""
        assert self.error is None, f"the SDK sender thread failed: {self.error!r}"
        assert not self._thread.is_alive(), "the SDK sender thread did not stop"
        failed = sum(e.failed for e in self.exporters)
        assert failed == 0, f"the SDK gave up on {failed} spans: the collectors stopped acknowledging"


# ---------------------------------------------------------------------------------------------
# What the query node counts


def _wait_each_span_once(
    q: Oxeye, where: str, want: set[str], what: str, timeout: float = TAKEOVER_TIMEOUT
) -> None:
    """Polls the query node until the spans matching `where` are exactly `want` (span ids), each
    once; fails at once when a span is counted twice. A query that fails (a replica being taken
    over) is retried."""
    last = "no answer yet"

    def probe() -> bool:
        nonlocal last
        try:
            rows = q.sql_dicts(f"SELECT span_id, count(*) AS n FROM spans WHERE {where} GROUP BY span_id")
        except SqlError as e:
            last = f"the query failed: {e}"
            return False
        copies = {r["span_id"]: int(r["n"]) for r in rows}
        twice = {s: n for s, n in copies.items() if n > 1}
        if twice:
            pytest.fail(f"{what}: {len(twice)} spans counted more than once, e.g. {sorted(twice.items())[:5]}")
        missing, extra = want - copies.keys(), copies.keys() - want
        last = (
            f"{len(copies)} spans of {len(want)} acknowledged; {len(missing)} missing "
            f"(e.g. {sorted(missing)[:3]}), {len(extra)} never acknowledged (e.g. {sorted(extra)[:3]})"
        )
        return not missing and not extra

    try:
        wait_until(probe, timeout=timeout, interval=0.5, what=what)
    except DeadlineExceeded:
        raise AssertionError(f"{what}: not reached within {timeout}s; last: {last}") from None
    n = len(want)
    assert q.span_count(where) == (n, n), f"{what}: (count(*), count(DISTINCT span_id)) of {n} spans"


def _wait_each_log_once(
    q: Oxeye, where: str, bodies: list[str], what: str, timeout: float = TAKEOVER_TIMEOUT
) -> None:
    """Polls until the log records matching `where` are as many as `bodies` (all different), each
    body once; fails at once on a body counted twice."""
    n = len(bodies)
    assert len(set(bodies)) == n, "the sent log bodies should all differ"

    def probe() -> bool:
        try:
            _, rows = q.sql(f"SELECT count(*), count(DISTINCT body) FROM logs WHERE {where}")
        except SqlError:
            return False
        total, distinct = rows[0]
        if total > distinct:
            pytest.fail(f"{what}: {total - distinct} log records counted more than once")
        return (total, distinct) == (n, n)

    wait_until(probe, timeout=timeout, interval=0.5, what=f"{what} ({n} records)")


def _assert_per_trace(q: Oxeye, where: str, traces: dict[str, set[str]]) -> None:
    """Each trace has on the query node the number of spans it was sent with."""
    rows = q.sql_dicts(f"SELECT trace_id, count(*) AS n FROM spans WHERE {where} GROUP BY trace_id")
    got = {r["trace_id"]: int(r["n"]) for r in rows}
    wanted = {t: len(ids) for t, ids in traces.items()}
    wrong = {t: (got.get(t), n) for t, n in wanted.items() if got.get(t) != n}
    assert not wrong and got.keys() == wanted.keys(), (
        f"spans per trace (got, sent) differ for {len(wrong)} traces, e.g. {sorted(wrong.items())[:5]}; "
        f"traces never sent: {sorted(got.keys() - wanted.keys())[:5]}"
    )


def _wait_segment_rows(q: Oxeye, want: dict[str, int], shards: set[int], what: str) -> list[dict[str, Any]]:
    """After every leader flushed: `system.segments` on the query node holds each table's rows once
    (its segments' rows add up to what was sent, in a metastore and bucket of the test's own), in
    segments of `shards` only. Fails at once on more rows than sent (a shard flushed twice)."""

    def probe() -> list[dict[str, Any]] | None:
        rows = q.sql_dicts("SELECT id, table_name, shard, rows FROM system.segments ORDER BY id")
        got = {t: sum(int(r["rows"]) for r in rows if r["table_name"] == t) for t in want}
        doubled = {t: (got[t], n) for t, n in want.items() if got[t] > n}
        if doubled:
            pytest.fail(f"{what}: segments hold more rows than were sent (rows, sent): {doubled}\n{rows}")
        return rows if got == want else None

    rows = wait_until(probe, timeout=20, interval=0.5, what=what)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"a segment listed twice: {ids}"
    assert {int(r["shard"]) for r in rows} <= shards, f"segments of shards outside {sorted(shards)}: {rows}"
    return rows


# ---------------------------------------------------------------------------------------------
# Tests


def test_three_store_nodes_with_two_replicas_survive_a_kill_mid_ingest(metastore, s3, oxeye_factory):
    """Three store nodes, two replicas of each of six shards, two collectors with
    `--write-quorum 2`, a query node. The SDK and plain OTLP/HTTP clients send to both collectors
    while a store node that leads shards is killed (`kill -9`): the collectors keep acknowledging
    (quorum degraded), the other replicas take its shards over, and the query node counts every
    acknowledged span and log record exactly once while it is down. Restarted, the node catches up
    from the collectors' queues (hinted handoff): killing the other replica of its shards then
    loses nothing. Flushes by the surviving leaders, and later by another leader of the same
    shards after one more takeover, double nothing."""
    ports = free_ports(3)
    stores = [_store(oxeye_factory, metastore, s3, ids, p) for ids, p in zip(THREE_NODES, ports, strict=True)]
    shards_of = {n: _shard_set(ids) for n, ids in zip(stores, THREE_NODES, strict=True)}
    collectors = [
        _collector(oxeye_factory, metastore, ports, write_quorum=2, write_quorum_timeout="5s") for _ in range(2)
    ]
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))
    leaders = _wait_leaders(shards_of, "one leader for each of shards 0-5", timeout=30)
    assert set(leaders) == set(range(6)), leaders

    # The node to kill leads shards (so that killing it moves leases); the second node to kill is
    # the other replica of two of its shards: store 3 (shards 0-1) when store 1 is the first.
    victim = max(stores, key=lambda n: sum(1 for leader in leaders.values() if leader is n))
    second = stores[stores.index(victim) - 1]
    shared = shards_of[victim] & shards_of[second]
    third = next(n for n in stores if n is not victim and n is not second)
    led = sorted(s for s, n in leaders.items() if n is victim)
    assert led, f"no store node leads a shard: {leaders}"

    prefix = unique("replicated")
    where = f"service_name LIKE '{prefix}-%'"
    with (
        SdkSender(collectors, prefix) as sdk,
        ConcurrentSender(collectors[0], f"{prefix}-c0", threads=1) as plain0,
        ConcurrentSender(collectors[1], f"{prefix}-c1", threads=1) as plain1,
    ):
        plain = (plain0, plain1)

        def acknowledged_at_least(sdk_spans: int, plain_spans: list[int]) -> bool:
            for p in plain:
                p.raise_errors()
            return sdk.acknowledged() >= sdk_spans and all(
                len(p.span_ids) >= n for p, n in zip(plain, plain_spans, strict=True)
            )

        wait_until(lambda: acknowledged_at_least(40, [40, 40]), timeout=30, what="acknowledged spans before the kill")
        assert sum(c.metric(WRITE_QUORUM, outcome="met") for c in collectors) > 0, "no write met its quorum of 2"

        victim.kill9()
        survivors = {n: s for n, s in shards_of.items() if n is not victim}
        _wait_leaders(survivors, f"the other replicas taking over shards {led} of the killed node")
        assert sum(n.metric(TAKEOVERS) for n in survivors) >= 1, "a lease moved but no takeover was counted"
        # Keep sending a while after the takeover.
        marks = sdk.acknowledged() + 40, [len(p.span_ids) + 40 for p in plain]
        wait_until(lambda: acknowledged_at_least(*marks), timeout=30, what="acknowledged spans after the takeover")
    for p in plain:
        p.raise_errors()
    sdk.check()
    degraded = sum(c.metric(WRITE_QUORUM, outcome="degraded") for c in collectors)
    assert degraded > 0, "no write was acknowledged with one replica short while a store node was down"

    sdk_traces = sdk.traces()
    want = set().union(*sdk_traces.values()) | plain0.span_ids | plain1.span_ids
    bodies = plain0.log_bodies + plain1.log_bodies
    assert len(want) >= 240, f"only {len(want)} spans acknowledged"

    # The killed node is still down: its shards come from their other replicas.
    _wait_each_span_once(q, where, want, "every acknowledged span once, a store node down")
    _assert_per_trace(q, f"service_name LIKE '{prefix}-sdk-%'", sdk_traces)
    _wait_each_log_once(q, where, bodies, "every acknowledged log record once, a store node down")
    assert not victim.running

    # What the killed node missed waits in the collectors' queues, and reaches it once it is back.
    wait_until(
        lambda: _queued(collectors) > 0,
        timeout=10,
        what="records for the killed replica waiting in the collectors' queues",
    )
    victim.start()
    _wait_queues_empty(collectors)
    assert victim.metric(INGESTED) > 0, "the restarted node took no rows from the collectors' queues"

    # The other replica of two of its shards dies: the restarted node leads them, from its WAL.
    second.kill9()
    living = {n: s for n, s in shards_of.items() if n is not second}
    taken = _wait_leaders(living, f"shards {sorted(shared)} taken over by the restarted node")
    assert all(taken[s] is victim for s in shared), taken
    _wait_each_span_once(q, where, want, "every span once after the restarted replica took over")
    _wait_each_log_once(q, where, bodies, "every log record once after the restarted replica took over")

    # The living leaders flush everything: counted once, from segments.
    for n in living:
        flush(n)
    _wait_each_span_once(q, where, want, "every span once after the flushes", timeout=20)
    _wait_each_log_once(q, where, bodies, "every log record once after the flushes", timeout=20)
    _wait_segment_rows(q, {"spans": len(want), "logs": len(bodies)}, set(range(6)), "every row in one segment")

    # One more round: spans while `second` is down, `second` back (its WAL partly flushed by
    # others), the restarted node killed: `second` leads the shards they share again, replaying
    # its WAL past what the restarted node flushed, and flushes them after it.
    late = _post_traces(collectors[0], f"{prefix}-late", traces=8)
    want |= set().union(*late.values())
    second.start()
    _wait_queues_empty(collectors)
    victim.kill9()
    last = {second: shards_of[second], third: shards_of[third]}
    taken = _wait_leaders(last, f"shards {sorted(shared)} back with the node killed second")
    assert all(taken[s] is second for s in shared), taken
    _wait_each_span_once(q, where, want, "every span once after the second takeover")
    for n in last:
        flush(n)
    _wait_each_span_once(q, where, want, "every span once after flushes by another leader", timeout=20)
    _wait_each_log_once(q, where, bodies, "every log record once after flushes by another leader", timeout=20)
    _wait_segment_rows(q, {"spans": len(want), "logs": len(bodies)}, set(range(6)), "every row in one segment")


def test_a_collector_restart_while_stores_are_down_loses_nothing(metastore, s3, oxeye_factory):
    """Both replicas of shards 0-1 down: a collector with `--write-quorum 2` still acknowledges,
    from its on-disk queue (the quorum counted as degraded). Killed and restarted with both still
    down, then both back: every span reaches the query node exactly once, and after both replicas
    are asked to flush, only the leader of each shard flushed it (segments hold each row once)."""
    ports = free_ports(2)
    a, b = (_store(oxeye_factory, metastore, s3, "0,1", p) for p in ports)
    c = _collector(oxeye_factory, metastore, ports, write_quorum=2, write_quorum_timeout="5s")
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))
    _wait_leaders({a: {0, 1}, b: {0, 1}}, "one leader for shards 0 and 1", timeout=30)

    a.kill9()
    b.kill9()
    degraded = c.metric(WRITE_QUORUM, outcome="degraded")
    service = unique("stores-down")
    sent = _post_traces(c, service, traces=20)  # asserts each request acknowledged
    want = set().union(*sent.values())
    wait_until(
        lambda: c.metric(WRITE_QUORUM, outcome="degraded") > degraded,
        timeout=10,
        what="writes acknowledged with no replica counted as degraded",
    )
    wait_until(lambda: c.metric(QUEUE_RECORDS) > 0, timeout=10, what="the acknowledged writes in the queue")

    c.kill9()
    c.start()
    a.start()
    b.start()
    where = f"service_name = '{service}'"
    _wait_each_span_once(q, where, want, "every span once after the restarts", timeout=60)
    _assert_per_trace(q, where, sent)
    _wait_queues_empty([c])

    flush(a)
    flush(b)
    _wait_each_span_once(q, where, want, "every span once after flushing both replicas", timeout=20)
    _wait_segment_rows(q, {"spans": len(want)}, {0, 1}, "the spans in segments once")


def test_rows_held_by_two_replicas_are_read_once_from_the_leader(metastore, s3, oxeye_factory):
    """Two store nodes with shards 0-1 each: both write every row to their WAL, exactly one of
    them leads each shard, and the query node, before any flush, counts each span once: a trace
    lookup moves the trace's unflushed rows once, from the leader, never from the follower too."""
    ports = free_ports(2)
    a, b = (_store(oxeye_factory, metastore, s3, "0,1", p) for p in ports)
    c = _collector(oxeye_factory, metastore, ports)  # the default write quorum, 1
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))
    _wait_leaders({a: {0, 1}, b: {0, 1}}, "one leader for shards 0 and 1", timeout=30)

    service = unique("read-once")
    traces = _send_traces(c, service, 8)
    want = set().union(*traces.values())
    where = f"service_name = '{service}'"
    _wait_each_span_once(q, where, want, "every span once before any flush", timeout=30)

    # Both replicas hold every row once (the queue drains only when every replica has it).
    _wait_queues_empty([c])
    for node in (a, b):
        wait_until(
            lambda node=node: node.metric(INGESTED) == len(want),
            timeout=20,
            what=f"{len(want)} rows made durable on each replica",
        )
    for shard in (0, 1):
        flags = sorted(n.metric(LEADER, shard=str(shard)) for n in (a, b))
        assert flags == [0, 1], f"shard {shard}: leader gauges of the two replicas {flags}"

    for trace_id, ids in list(traces.items())[:3]:
        before = sum(n.metric(SNAPSHOT_ROWS) for n in (a, b))
        rows = q.sql_dicts(f"SELECT span_id FROM spans WHERE trace_id = '{trace_id}'")
        assert sorted(r["span_id"] for r in rows) == sorted(ids), f"trace {trace_id}: {rows}"
        moved = sum(n.metric(SNAPSHOT_ROWS) for n in (a, b)) - before
        assert moved == len(ids), f"{moved} unflushed rows moved for a {len(ids)}-span trace on two replicas"

    assert q.span_count(where) == (len(want), len(want))
    assert segments(q, "spans") == [], "the spans were flushed: the unflushed path was not tested"


def test_a_query_right_after_a_leader_is_killed_sees_every_acknowledged_span(metastore, s3, oxeye_factory):
    """Two store nodes hold both replicas of shards 0-3 (write quorum 2). The node that leads
    shards is killed (`kill -9`) while its shards' rows are unflushed: a query asked at that
    very moment answers with every acknowledged span, not without the dead leader's unflushed
    rows. The other replica sees that nothing listens on the dead leader's Flight port and takes
    its shards over at its next lease round, well before the leases run out (10 s); the query
    waits for it rather than answering from the catalog alone. The same holds for a query that
    aggregates on the store nodes, and for a trace lookup."""
    ports = free_ports(2)
    stores = [_store(oxeye_factory, metastore, s3, "0,1,2,3", p) for p in ports]
    shards_of = {n: {0, 1, 2, 3} for n in stores}
    c = _collector(oxeye_factory, metastore, ports, write_quorum=2, write_quorum_timeout="5s")
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))
    leaders = _wait_leaders(shards_of, "one leader for each of shards 0-3", timeout=30)

    service = unique("gap")
    sent = _post_traces(c, service, traces=2500, per_request=100)
    want = sum(len(v) for v in sent.values())
    count = f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}'"
    by_name = f"SELECT name, count(*) AS n FROM spans WHERE service_name = '{service}' GROUP BY 1 ORDER BY 1"
    wait_until(lambda: q.sql_value(count) == want or None, timeout=30, what="every span on the query node")
    _wait_queues_empty([c])  # both replicas hold every span
    assert all(segments(n, "spans") == [] for n in stores), "nothing may be flushed yet"

    victim = max(stores, key=lambda n: sum(1 for leader in leaders.values() if leader is n))
    survivor = next(n for n in stores if n is not victim)
    led = sorted(s for s, n in leaders.items() if n is victim)
    assert led
    victim.kill9()
    killed_at = time.monotonic()
    assert q.sql_value(count) == want, "a query right after the kill missed the dead leader's unflushed rows"
    answered_in = time.monotonic() - killed_at
    assert answered_in < 10, f"the query waited {answered_in:.1f}s for a new leader, as long as a lease lives"
    rows = q.sql_dicts(by_name)
    assert [(r["name"], int(r["n"])) for r in rows] == [(f"op {j}", want // 4) for j in range(4)], rows
    one_trace, its_spans = next(iter(sent.items()))
    got = {r["span_id"] for r in q.sql_dicts(f"SELECT span_id FROM spans WHERE trace_id = '{one_trace}'")}
    assert got == its_spans
    assert "taking the shard over before its lease runs out" in survivor.log()
    assert _leaders({survivor: {0, 1, 2, 3}}) is not None, "the survivor leads every shard"
