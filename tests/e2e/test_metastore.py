"""The segment catalog in PostgreSQL (`--metastore postgres://...`), against a real PostgreSQL
server started by the tests (Debian's `postgresql` package: `initdb` and `postgres` from
/usr/lib/postgresql/<version>/bin, run as the `postgres` user when the tests run as root), one
fresh database per test.

The catalog's tables (created by oxeye's migrations) are read with psycopg 3, each read one
REPEATABLE READ snapshot, and compared with `system.segments`: the same segments, rows, shards
and times; no `<data-dir>/catalog.json`; the migrations applied once; one transaction and one
generation per flush of a shard and per merge. A node with an empty disk serves what another
node committed (segments in moto's S3); compaction and concurrent flushes of four shards under
ingest are never half visible to a concurrent reader; a metastore that cannot be opened stops
`oxeye serve` at once with a clear message that does not show the password."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import psycopg
import pytest
import requests

from oxeye_client import (
    EXPORTS,
    GRPC_SERVING,
    Oxeye,
    free_ports,
    grpc_health,
    log_record,
    random_trace_id,
    records_request,
    span,
    trace_request,
    wait_until,
)

# Registered before the import, so that its asserts explain their failures like the tests' own.
pytest.register_assert_rewrite("storage_helpers")
from storage_helpers import (
    S3,
    Sent,
    admin,
    answers,
    assert_segments_in_bucket,
    flush,
    fresh_bucket,
    index_path,
    local_segment_files,
    segments,
    send_data,
    start_moto,
    unique,
    use_moto_credentials,
)

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_SUPERUSER = "postgres"
PG_READY_TIMEOUT = 60.0
PG_STOP_TIMEOUT = 30.0
# How long `oxeye serve` may take to give up on a metastore it cannot open.
REFUSAL_TIMEOUT = 30.0
# The first migration, which creates the catalog's tables: (version, name).
CATALOG_MIGRATION = (1, "segment catalog")
# system.segments with the times as nanoseconds, as the catalog stores them.
SYSTEM_SEGMENTS = (
    "SELECT id, table_name, shard, level, CAST(min_time AS BIGINT) AS min_time, "
    "CAST(max_time AS BIGINT) AS max_time, rows, data_path FROM system.segments ORDER BY id"
)


# ---------------------------------------------------------------------------------------------
# A throwaway PostgreSQL server


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with `initdb` and `postgres`."""

    def version(d: Path) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in d.parent.name.split("."))
        except ValueError:
            return (0,)

    found = [
        Path(d)
        for d in glob.glob(PG_BIN_GLOB)
        if (Path(d) / "initdb").is_file() and (Path(d) / "postgres").is_file()
    ]
    if not found:
        pytest.fail(
            f"no PostgreSQL server found ({PG_BIN_GLOB}/initdb): the metastore tests start their "
            "own; install it with `apt-get install postgresql`",
            pytrace=False,
        )
    return max(found, key=version)


class PostgresServer:
    """A PostgreSQL server of its own: a cluster made by `initdb` (trust authentication,
    superuser `postgres`) in a temporary directory, `postgres` listening on a free 127.0.0.1
    port (and a socket in that directory). As root, both run as the `postgres` user, which owns
    the directory; otherwise as the current user."""

    def __init__(self, log_path: Path):
        self.bin = postgres_bin_dir()
        self.log_path = Path(log_path)
        self.base: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    def _as_postgres(self) -> dict[str, Any]:
        """Popen arguments that drop root to the `postgres` user (it refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        return {"user": PG_SUPERUSER, "group": PG_SUPERUSER, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_", "LANG"))}
        env["LC_ALL"] = "C"
        return env

    def start(self) -> None:
        # Not under pytest's temporary directory: that one is private to root (mode 0700).
        self.base = Path(tempfile.mkdtemp(prefix="oxeye-e2e-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, PG_SUPERUSER, PG_SUPERUSER)
        initdb = [
            str(self.bin / "initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            PG_SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        p = subprocess.run(
            initdb,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.base,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            **self._as_postgres(),
        )
        with open(self.log_path, "a") as log:
            log.write(f"===== {' '.join(initdb)}\n{p.stdout}{p.stderr}")
        assert p.returncode == 0, f"initdb exited with {p.returncode}:\n{p.stderr[-3000:]}"
        # A port found free can be taken before postgres binds it: then try another.
        for attempt in range(3):
            self.port = free_ports(1)[0]
            if self._run_postgres(last_attempt=attempt == 2):
                return

    def _run_postgres(self, last_attempt: bool) -> bool:
        cmd = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.base),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ]
        log_offset = len(self.log())
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                env=self._env(),
                **self._as_postgres(),
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                return True  # reported below
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        wait_until(
            ready,
            timeout=PG_READY_TIMEOUT,
            interval=0.1,
            what=f"PostgreSQL answering on port {self.port} (its log: {self.log_path})",
        )
        if self.proc.poll() is None:
            return True
        output = self.log()[log_offset:]
        if "already in use" in output and not last_attempt:
            return False
        raise AssertionError(f"postgres exited with {self.proc.returncode} while starting:\n{output[-3000:]}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open sessions are ended), then the directory is removed."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                escalation = ((signal.SIGINT, PG_STOP_TIMEOUT), (signal.SIGQUIT, 10), (signal.SIGKILL, 10))
                for sig, wait in escalation:
                    self.proc.send_signal(sig)
                    try:
                        self.proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)

    def conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        """The URL oxeye is given (`--metastore`)."""
        return f"postgres://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.conninfo("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ---------------------------------------------------------------------------------------------
# The catalog as PostgreSQL holds it


@dataclass(frozen=True)
class CatalogSegment:
    """A row of `oxeye_segments`."""

    id: str
    table_name: str
    shard: int
    min_time: int
    max_time: int
    rows: int
    meta: dict[str, Any]
    committed_at: datetime


@dataclass(frozen=True)
class Catalog:
    """The metastore's tables at one moment (one REPEATABLE READ transaction)."""

    format: int
    generation: int
    segments: dict[str, CatalogSegment]
    shards: dict[int, int]  # shard -> flushed_wal_seq
    migrations: list[tuple[int, str, datetime]]  # (version, name, applied_at)

    def table(self, name: str) -> list[CatalogSegment]:
        return sorted((s for s in self.segments.values() if s.table_name == name), key=lambda s: s.id)

    def rows(self, table: str) -> int:
        return sum(s.rows for s in self.table(table))

    def transactions(self) -> dict[tuple[int, datetime], list[CatalogSegment]]:
        """The segments grouped by the transaction that committed them: `committed_at` is the
        transaction's time (`now()`), and one shard's flushes commit one after another."""
        out: dict[tuple[int, datetime], list[CatalogSegment]] = {}
        for s in self.segments.values():
            out.setdefault((s.shard, s.committed_at), []).append(s)
        return out


def read_catalog(conn: psycopg.Connection) -> Catalog:
    """Reads every catalog table in one snapshot (`conn` is in autocommit mode with REPEATABLE
    READ as its isolation level, so `transaction()` opens one)."""
    with conn.transaction():
        heads = conn.execute("SELECT format, generation FROM oxeye_catalog").fetchall()
        assert len(heads) == 1, f"oxeye_catalog should hold one row, holds {heads}"
        fmt, generation = heads[0]
        segs = conn.execute(
            "SELECT id, table_name, shard, min_time, max_time, rows, meta, committed_at "
            "FROM oxeye_segments ORDER BY id"
        ).fetchall()
        shards = conn.execute("SELECT shard, flushed_wal_seq FROM oxeye_shards ORDER BY shard").fetchall()
        migrations = conn.execute(
            "SELECT version, name, applied_at FROM oxeye_migrations ORDER BY version"
        ).fetchall()
    return Catalog(
        format=fmt,
        generation=generation,
        segments={r[0]: CatalogSegment(*r) for r in segs},
        shards=dict(shards),
        migrations=[tuple(m) for m in migrations],
    )


def snapshot_connection(conninfo: str) -> psycopg.Connection:
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


class Metastore:
    """One test's database on the module's PostgreSQL server."""

    def __init__(self, pg: PostgresServer, database: str):
        self.pg = pg
        self.database = database
        self.url = pg.url(database)
        self._conn: psycopg.Connection | None = None

    def catalog(self) -> Catalog:
        if self._conn is None or self._conn.closed:
            self._conn = snapshot_connection(self.pg.conninfo(self.database))
        return read_catalog(self._conn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class CatalogWatcher:
    """Reads the catalog over and over from its own connection (a thread) while the test
    changes it, keeping every read in order (`reads`)."""

    def __init__(self, metastore: Metastore, interval: float = 0.01):
        self.metastore = metastore
        self.interval = interval
        self.reads: list[Catalog] = []
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalog-watcher", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        wait_until(lambda: self.reads or self.error, timeout=10, what="a first read of the catalog")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the catalog watcher did not stop"

    def wait_for_a_new_read(self) -> None:
        """Waits until the watcher has read the catalog once more, from start to end, after now."""
        n = len(self.reads)
        wait_until(
            lambda: self.error or len(self.reads) >= n + 2,
            timeout=10,
            what="the catalog watcher reading the catalog again",
        )

    def _run(self) -> None:
        try:
            with snapshot_connection(self.metastore.pg.conninfo(self.metastore.database)) as conn:
                while not self._stop.is_set():
                    self.reads.append(read_catalog(conn))
                    self._stop.wait(self.interval)
        except Exception as e:  # noqa: BLE001 - reported by check()
            self.error = e

    def check(self, each: Callable[[Catalog], None] | None = None) -> list[int]:
        """Asserts that the reads form one history: the generation never goes back, one
        generation is always the same set of segments, and `each` holds for every read.
        Returns the generations seen, in order, without repeats."""
        assert self.error is None, f"reading the catalog failed: {self.error!r}"
        assert self.reads, "the watcher read nothing"
        by_generation: dict[int, Catalog] = {}
        seen: list[int] = []
        for i, c in enumerate(self.reads):
            if seen:
                assert c.generation >= seen[-1], (
                    f"read {i}: generation went back from {seen[-1]} to {c.generation}"
                )
            first = by_generation.setdefault(c.generation, c)
            assert set(c.segments) == set(first.segments) and c.shards == first.shards, (
                f"read {i}: generation {c.generation} with two different catalogs: "
                f"{sorted(first.segments)} / shards {first.shards} and {sorted(c.segments)} / "
                f"shards {c.shards}"
            )
            if each is not None:
                each(c)
            if not seen or seen[-1] != c.generation:
                seen.append(c.generation)
        return seen


def assert_matches_system_segments(server: Oxeye, catalog: Catalog) -> list[dict[str, Any]]:
    """`system.segments` (the server's view) and `oxeye_segments` hold the same segments with the
    same table, shard, rows and times; `meta` is the segment's description. Returns the
    `system.segments` rows."""
    system = server.sql_dicts(SYSTEM_SEGMENTS)
    ids = [s["id"] for s in system]
    assert len(ids) == len(set(ids)), f"a segment id appears twice in system.segments: {ids}"
    assert set(ids) == set(catalog.segments), (
        f"system.segments and oxeye_segments differ: only in system.segments "
        f"{sorted(set(ids) - set(catalog.segments))}, only in PostgreSQL "
        f"{sorted(set(catalog.segments) - set(ids))}"
    )
    for s in system:
        c = catalog.segments[s["id"]]
        assert (c.table_name, c.shard, c.rows, c.min_time, c.max_time) == (
            s["table_name"],
            s["shard"],
            s["rows"],
            s["min_time"],
            s["max_time"],
        ), f"oxeye_segments row {c} differs from system.segments {s}"
        keys = ("id", "shard", "rows", "level", "data_path", "min_time", "max_time")
        meta = {k: c.meta.get(k) for k in keys}
        want = {k: s[k] for k in meta}
        assert meta == want, f"oxeye_segments.meta of {c.id} is {c.meta}; system.segments says {s}"
    return system


def assert_one_segment_per_table_per_transaction(catalog: Catalog) -> None:
    for (shard, at), segs in catalog.transactions().items():
        tables = [s.table_name for s in segs]
        assert len(tables) == len(set(tables)), (
            f"shard {shard}'s transaction at {at} committed two segments of one table: {segs}"
        )


def quiet_flags(metastore: Metastore, **extra: Any) -> dict[str, Any]:
    """Flags for a server on `metastore` whose flushes and compactions happen only when a test
    asks for them."""
    return {"metastore": metastore.url, "flush_age": "1h", "maintenance_interval": "1h", **extra}


def log_search(server: Oxeye, sent: Sent) -> list[dict[str, Any]]:
    """The log search API for the unique tag of `sent`'s log bodies; asserts they all come back."""
    tag = sent.log_bodies[0].split()[1]
    body = server.get_json("/api/v1/logs", {"service": sent.service, "query": tag, "limit": 1000})
    got = sorted(e["body"] for e in body["logs"])
    assert got == sorted(sent.log_bodies), f"log search for {tag!r}: got {got}, sent {sent.log_bodies}"
    return body["logs"]


# ---------------------------------------------------------------------------------------------
# Fixtures


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
    """A fresh database of the test's own, so that tests never see each other's catalogs
    (request it before `oxeye_factory`, so that oxeye is stopped first)."""
    m = Metastore(postgres, f"oxeye_{uuid.uuid4().hex[:12]}")
    postgres.create_database(m.database)
    yield m
    m.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """One moto server for the module, with a bucket."""
    yield from start_moto(tmp_path_factory.mktemp("moto") / "moto.log")


@pytest.fixture
def aws_env(monkeypatch):
    use_moto_credentials(monkeypatch)


@pytest.fixture
def s3(moto, aws_env) -> S3:
    """A fresh bucket on the module's moto server."""
    return fresh_bucket(moto)


# ---------------------------------------------------------------------------------------------
# Tests


def test_the_catalog_lives_in_postgresql(metastore, oxeye_factory):
    server = oxeye_factory(**quiet_flags(metastore, shards=2))
    empty = metastore.catalog()
    applied = [(v, n) for v, n, _ in empty.migrations]
    assert applied and applied[0] == CATALOG_MIGRATION, f"oxeye_migrations: {empty.migrations}"
    assert [v for v, _ in applied] == list(range(1, len(applied) + 1)), (
        f"migrations should be numbered 1, 2, ... and applied once each: {empty.migrations}"
    )
    assert (empty.generation, empty.segments, empty.shards) == (0, {}, {}), empty

    sent = send_data(server, unique("pg-catalog"), traces=6, children=3, logs=5)
    assert metastore.catalog() == empty, "the catalog changed before any flush"
    flush(server)

    catalog = metastore.catalog()
    system = assert_matches_system_segments(server, catalog)
    assert catalog.rows("spans") == len(sent.span_ids), catalog.table("spans")
    assert catalog.rows("logs") == len(sent.log_bodies), catalog.table("logs")
    flushed = {s.shard for s in catalog.segments.values()}
    assert flushed <= {0, 1}, f"segments of shards other than 0 and 1: {flushed}"
    # Each shard's flush is one transaction: its spans and logs segments share one commit time,
    # and the generation counts one change per shard that had rows.
    shards_of_transactions = sorted(shard for shard, _ in catalog.transactions())
    assert shards_of_transactions == sorted(flushed), (
        f"one transaction per flushed shard expected; transactions: {catalog.transactions()}"
    )
    assert_one_segment_per_table_per_transaction(catalog)
    assert catalog.generation == len(flushed), (
        f"generation {catalog.generation} after one flush of shards {sorted(flushed)}"
    )
    assert set(catalog.shards) == flushed, f"oxeye_shards {catalog.shards}, shards that flushed {flushed}"
    assert all(seq >= 1 for seq in catalog.shards.values()), catalog.shards
    assert catalog.migrations == empty.migrations

    assert not (server.data_dir / "catalog.json").exists(), "catalog.json written with --metastore"
    objects = server.data_dir / "objects"
    files = {p.relative_to(objects).as_posix() for p in local_segment_files(server)}
    assert files == {p for s in system for p in (s["data_path"], index_path(s["data_path"]))}, (
        f"segment files under <data-dir>/objects: {sorted(files)}; system.segments: {system}"
    )

    # One more trace lands on one shard: the next flush is exactly one change with one segment.
    more = send_data(server, unique("pg-one-more"), traces=1, children=2, logs=0)
    flush(server)
    after = metastore.catalog()
    added = set(after.segments) - set(catalog.segments)
    assert set(catalog.segments) <= set(after.segments), "a flush removed segments"
    assert len(added) == 1, f"one new segment expected, got {sorted(added)}"
    new = after.segments[added.pop()]
    assert (new.table_name, new.rows) == ("spans", 3), new
    assert after.generation == catalog.generation + 1, (catalog.generation, after.generation)
    assert after.shards[new.shard] > catalog.shards.get(new.shard, 0), (catalog.shards, after.shards)
    assert {k: v for k, v in after.shards.items() if k != new.shard} == {
        k: v for k, v in catalog.shards.items() if k != new.shard
    }, f"the checkpoint of a shard that did not flush moved: {catalog.shards} -> {after.shards}"
    assert_matches_system_segments(server, after)

    # A flush with nothing to flush commits nothing.
    r = admin(server, "flush")
    assert r.status_code == 200, f"flush: HTTP {r.status_code}: {r.text[:2000]}"
    assert metastore.catalog() == after, "an empty flush changed the catalog"

    before = answers(server, [sent, more])
    server.restart()
    restarted = metastore.catalog()
    assert restarted.migrations == after.migrations, (
        f"migrations re-applied on restart: {after.migrations} -> {restarted.migrations}"
    )
    assert restarted == after, "the catalog changed across a restart with nothing unflushed"
    assert_matches_system_segments(server, restarted)
    assert answers(server, [sent, more]) == before, "answers changed after a restart"
    assert not (server.data_dir / "catalog.json").exists(), "catalog.json written with --metastore"


def test_a_node_with_an_empty_disk_serves_what_another_committed(metastore, s3, oxeye_factory):
    a = oxeye_factory(**s3.flags(metastore=metastore.url))
    sent = [
        send_data(a, unique("pg-node")),
        send_data(a, unique("pg-node-other"), traces=2, children=2, logs=3),
    ]
    flush(a)
    assert_segments_in_bucket(a, s3, ("spans", "logs"))
    catalog = metastore.catalog()
    assert_matches_system_segments(a, catalog)
    before = answers(a, sent)
    searches = [log_search(a, s) for s in sent]
    segments_a = segments(a)
    a.stop()
    assert metastore.catalog() == catalog, "stopping a node with nothing unflushed changed the catalog"
    assert not (a.data_dir / "catalog.json").exists(), "catalog.json written with --metastore"

    moto_log = len(s3.moto.log())
    b = oxeye_factory(**s3.flags(metastore=metastore.url))
    assert b.data_dir != a.data_dir
    assert segments(b) == segments_a, "the new node lists other segments"
    assert answers(b, sent) == before, "the new node answers differently"
    assert [log_search(b, s) for s in sent] == searches, "the new node's log search answers differently"
    s3.wait_gets(moto_log, "spans")  # its cache was empty: it read the segments from S3
    assert metastore.catalog() == catalog, "starting and querying a node changed the catalog"

    entries = sorted(p.name for p in b.data_dir.iterdir())
    assert "catalog.json" not in entries, "catalog.json written with --metastore"
    assert "wal" in entries, entries
    assert set(entries) <= {"wal", "cache", "alerts"}, (
        f"with --metastore and --object-store the data dir should hold only wal/, cache/ (and "
        f"alerts/), holds {entries}"
    )
    assert not local_segment_files(b)


def test_compaction_is_one_transaction(metastore, oxeye_factory):
    server = oxeye_factory(**quiet_flags(metastore, shards=1))
    service = unique("pg-compact")
    sent = []
    for round_ in range(4):
        sent.append(send_data(server, service, traces=2, children=3, logs=2))
        flush(server)
        assert len(segments(server, "spans")) == round_ + 1, segments(server, "spans")
    before = metastore.catalog()
    assert_matches_system_segments(server, before)
    assert before.generation == 4, f"4 flushes of one shard, generation {before.generation}"
    assert len(before.table("spans")) == 4 and len(before.table("logs")) == 4, before.segments
    spans_rows, logs_rows = before.rows("spans"), before.rows("logs")
    answers_before = answers(server, sent)

    def whole(c: Catalog) -> None:
        # A reader never sees a merge half done: inputs gone but not the output, or both.
        assert (c.rows("spans"), c.rows("logs")) == (spans_rows, logs_rows), (
            f"generation {c.generation}: spans/logs rows {c.rows('spans')}/{c.rows('logs')}, "
            f"expected {spans_rows}/{logs_rows}: {sorted(c.segments)}"
        )

    with CatalogWatcher(metastore) as watcher:
        r = admin(server, "compact")
        assert r.status_code == 200, f"compact: HTTP {r.status_code}: {r.text[:2000]}"
        merges = r.json()["merges"]
    generations = watcher.check(whole)

    after = metastore.catalog()
    system = assert_matches_system_segments(server, after)
    # All 4 spans and all 4 logs segments are far below the compaction target and the most
    # inputs of one merge: each table ends as one segment, after at least one merge each.
    assert merges >= 2, f"compaction reported {merges} merges"
    assert len(after.table("spans")) == 1 and len(after.table("logs")) == 1, after.segments
    assert (after.rows("spans"), after.rows("logs")) == (spans_rows, logs_rows), after.segments
    assert after.generation == before.generation + merges, (
        f"generation {before.generation} -> {after.generation} after {merges} merges"
    )
    assert all(before.generation <= g <= after.generation for g in generations), generations
    new = set(after.segments) - set(before.segments)
    assert new == set(after.segments), f"an input segment survived compaction: {sorted(after.segments)}"
    assert all(s["level"] >= 1 for s in system), system
    assert len({after.segments[i].committed_at for i in new}) == len(new), (
        f"two merges committed in one transaction: {[after.segments[i] for i in new]}"
    )
    assert after.shards == before.shards, "compaction moved a WAL checkpoint"

    assert answers(server, sent) == answers_before, "answers changed after compaction"
    server.restart()
    assert metastore.catalog() == after, "the catalog changed across a restart"
    assert_matches_system_segments(server, after)
    assert answers(server, sent) == answers_before, "answers changed after compaction and a restart"


class ConcurrentSender:
    """Sends new traces (OTLP/HTTP protobuf, one trace per request, so a request lands on one
    shard) and log records (of several services, so they spread over the shards) from several
    threads until stopped; remembers what was acknowledged."""

    SPANS_PER_TRACE = 4
    LOGS_PER_REQUEST = 3

    def __init__(self, server: Oxeye, prefix: str, threads: int):
        self.server = server
        self.prefix = prefix
        self.span_ids: set[str] = set()
        self.log_bodies: list[str] = []
        self.requests = [0] * threads
        self.errors: list[Exception] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(k,), name=f"sender-{k}", daemon=True)
            for k in range(threads)
        ]

    def _post(self, session: requests.Session, request) -> None:
        path, response_type = EXPORTS[type(request)]
        r = session.post(
            f"{self.server.otlp_http}/v1/{path}",
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert r.status_code == 200, f"POST /v1/{path}: HTTP {r.status_code}: {r.content[:1000]!r}"
        response = response_type.FromString(r.content)
        assert not response.partial_success.ListFields(), response

    def _run(self, k: int) -> None:
        session = requests.Session()
        try:
            i = 0
            while not self.stop.is_set():
                now = time.time_ns()
                tid = random_trace_id()
                spans = [
                    span(tid, name=f"op-{j}", start_ns=now - 60_000_000_000 + j)
                    for j in range(self.SPANS_PER_TRACE)
                ]
                self._post(session, trace_request(spans, service=f"{self.prefix}-spans-{k}"))
                bodies = [
                    f"{self.prefix} sender {k} request {i} log {j}" for j in range(self.LOGS_PER_REQUEST)
                ]
                records = [log_record(b, now - 60_000_000_000 + j) for j, b in enumerate(bodies)]
                self._post(session, records_request(records, service=f"{self.prefix}-logs-{k}-{i % 5}"))
                with self.lock:
                    self.span_ids |= {s.span_id.hex() for s in spans}
                    self.log_bodies += bodies
                    self.requests[k] += 1
                i += 1
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 - reported by raise_errors()
            with self.lock:
                self.errors.append(e)
        finally:
            session.close()

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        wait_until(
            lambda: self.errors or all(self.requests),
            timeout=30,
            what="every sender thread acknowledged once",
        )
        self.raise_errors()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a sender thread did not stop within 60s"

    def raise_errors(self) -> None:
        if self.errors:
            raise AssertionError(f"{len(self.errors)} sender thread(s) failed; first: {self.errors[0]!r}")


def test_concurrent_flushes_of_four_shards_under_ingest(metastore, oxeye_factory):
    # Besides the admin flushes, every shard's own flusher commits once its oldest row is a
    # second old: four shards commit concurrently, each flush one transaction.
    server = oxeye_factory(metastore=metastore.url, shards=4, flush_age="1s", maintenance_interval="1h")
    prefix = unique("pg-concurrent")
    admin_flushes = 6
    with CatalogWatcher(metastore) as watcher:
        with ConcurrentSender(server, prefix, threads=4) as sender:
            for _ in range(admin_flushes):
                time.sleep(0.4)
                r = admin(server, "flush")
                assert r.status_code == 200, f"flush under ingest: HTTP {r.status_code}: {r.text[:2000]}"
                sender.raise_errors()
                assert all(t.is_alive() for t in sender.threads), "a sender stopped during the flushes"
        sender.raise_errors()
        flush(server)  # nothing is left unflushed
        watcher.wait_for_a_new_read()

    def consistent(c: Catalog) -> None:
        # Every change is one transaction and one generation, visible all at once.
        assert c.generation == len(c.transactions()), (
            f"generation {c.generation} with {len(c.transactions())} committed flush transactions"
        )
        assert_one_segment_per_table_per_transaction(c)

    generations = watcher.check(consistent)
    for earlier, later in itertools.pairwise(watcher.reads):
        assert set(earlier.segments) <= set(later.segments), (
            f"segments disappeared between generation {earlier.generation} and {later.generation} "
            f"with nothing but flushes: {sorted(set(earlier.segments) - set(later.segments))}"
        )
    assert len(generations) >= 3, (
        f"the watcher saw only generations {generations} during {admin_flushes} flushes"
    )

    catalog = metastore.catalog()
    consistent(catalog)
    assert catalog.generation >= generations[-1]
    assert_matches_system_segments(server, catalog)
    n_spans, n_logs = len(sender.span_ids), len(sender.log_bodies)
    assert n_spans and n_logs
    assert catalog.rows("spans") == n_spans, f"{catalog.rows('spans')} spans in PostgreSQL, sent {n_spans}"
    assert catalog.rows("logs") == n_logs, f"{catalog.rows('logs')} logs in PostgreSQL, sent {n_logs}"
    assert server.span_count(f"service_name LIKE '{prefix}-spans-%'") == (n_spans, n_spans)
    ids = {r[0] for r in server.sql(f"SELECT span_id FROM spans WHERE service_name LIKE '{prefix}-%'")[1]}
    assert ids == sender.span_ids, "the stored span ids are not those sent"
    _, rows = server.sql(f"SELECT body FROM logs WHERE service_name LIKE '{prefix}-%'")
    bodies = sorted(r[0] for r in rows)
    assert bodies == sorted(sender.log_bodies), "the stored log bodies are not those sent"

    flushed = {s.shard for s in catalog.segments.values()}
    assert flushed == {0, 1, 2, 3}, f"random trace ids should reach all 4 shards; segments of {flushed}"
    assert set(catalog.shards) == flushed, f"oxeye_shards {catalog.shards}"
    per_shard: dict[int, int] = {}
    for shard, _ in catalog.transactions():
        per_shard[shard] = per_shard.get(shard, 0) + 1
    for shard, count in per_shard.items():
        # Each flush seals at least one WAL file of its shard.
        assert catalog.shards[shard] >= count, (
            f"shard {shard}: {count} flush transactions but flushed_wal_seq {catalog.shards[shard]}"
        )
    assert catalog.generation >= admin_flushes, (
        f"generation {catalog.generation} after {admin_flushes} flushes under ingest"
    )


@pytest.mark.parametrize("case", ["closed-port", "no-such-database"])
def test_a_metastore_that_cannot_be_opened_refuses_the_start(case, request, oxeye_factory):
    password = f"secret{uuid.uuid4().hex[:8]}"
    if case == "closed-port":
        port = free_ports(1)[0]
        url = f"postgres://oxeye:{password}@127.0.0.1:{port}/oxeye"
        shown = f"postgres://oxeye@127.0.0.1:{port}/oxeye"
    else:
        pg: PostgresServer = request.getfixturevalue("postgres")
        database = f"oxeye_missing_{uuid.uuid4().hex[:8]}"
        url = f"postgres://{PG_SUPERUSER}:{password}@127.0.0.1:{pg.port}/{database}"
        shown = f"postgres://{PG_SUPERUSER}@127.0.0.1:{pg.port}/{database}"
    server = oxeye_factory(start=False, metastore=url, shards=1)
    server.data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXEYE_")}
    env["NO_COLOR"] = "1"
    started = time.monotonic()
    try:
        p = subprocess.run(
            server.command(),
            check=False,
            capture_output=True,
            timeout=REFUSAL_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        code, output = p.returncode, (p.stdout + p.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired as e:  # run() has killed it
        code, output = None, ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace")
    finally:
        elapsed = time.monotonic() - started
    with open(server.log_path, "a") as log:  # for the failure report
        log.write(f"\n===== start: {' '.join(server.command())}\n{output}")

    assert code is not None, (
        f"oxeye kept running for {REFUSAL_TIMEOUT}s with a metastore it cannot open ({case}):\n"
        f"{output[-3000:]}"
    )
    assert code != 0, f"oxeye exited with 0 with a metastore it cannot open ({case}):\n{output[-3000:]}"
    assert "cannot open the metastore" in output, output[-3000:]
    assert shown in output, f"the message should name the metastore as {shown}:\n{output[-3000:]}"
    assert password not in output, f"the password shows in oxeye's output:\n{output[-3000:]}"
    assert not (server.data_dir / "catalog.json").exists(), "oxeye fell back to a local catalog"
    assert elapsed < REFUSAL_TIMEOUT


# --- Alerting shared by several query nodes -------------------------------------------------


def _leads(server: Oxeye) -> bool:
    """Whether this node holds the alert-evaluator lease now (its last lease message says so)."""
    log = server.log_of_last_start()
    took = log.rfind("this node evaluates alert rules")
    lost = log.rfind("another node took the alerting lease")
    return took > lost


def test_two_nodes_share_rules_and_one_evaluates_through_a_leader_kill(metastore, oxeye_factory):
    """Two nodes on one metastore: a rule made on either shows on both, only the lease holder
    notifies, and when the holder dies (`kill -9`) the other takes over from the saved state
    without notifying again; it resolves the alert once when the rule stops holding."""
    from receivers import WebhookReceiver

    a = oxeye_factory(metastore=metastore.url)
    b = oxeye_factory(metastore=metastore.url)
    leader, follower = wait_until(
        lambda: (a, b) if _leads(a) else (b, a) if _leads(b) else None,
        timeout=30,
        what="one node taking the alert-evaluator lease",
    )
    assert not _leads(follower)
    with WebhookReceiver() as hook:
        rule = {
            "name": f"cluster-{uuid.uuid4().hex[:8]}",
            "sql": "SELECT 'x' AS k, 1.0 AS value",
            "condition": {"op": ">", "threshold": 0},
            "interval": "1s",
            "for": "2s",
            "notify": [{"type": "webhook", "url": hook.url + "/c"}],
        }
        # Made on the follower: the leader takes it in and evaluates it.
        r = follower.session.post(f"{follower.api}/api/v1/alerts/rules", json=rule, timeout=10)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        wait_until(
            lambda: any(x["id"] == rid for x in leader.get_json("/api/v1/alerts/rules")["rules"]),
            timeout=15,
            what="the rule on the other node",
        )
        hook.wait_for(1, "/c", "firing", timeout=30)

        def firing_on(node: Oxeye) -> list[dict[str, Any]]:
            return [x for x in node.get_json("/api/v1/alerts")["alerts"] if x["rule_id"] == rid and x["state"] == "firing"]

        (on_leader,) = wait_until(lambda: firing_on(leader) or None, what="firing on the leader")
        # The follower shows the leader's state.
        (on_follower,) = wait_until(lambda: firing_on(follower) or None, timeout=15, what="firing on the follower")
        assert on_follower["fired_at"] == on_leader["fired_at"]
        time.sleep(3)
        assert len(hook.received("/c", "firing")) == 1, hook.received("/c")

        # The leader dies; the follower takes the lease once it expires and carries on.
        leader.kill9()
        wait_until(lambda: _leads(follower), timeout=40, what="the follower taking the lease")
        evaluated = wait_until(
            lambda: (ev := follower.get_json(f"/api/v1/alerts/rules/{rid}")["last_evaluation"])
            and ev["at"] > on_leader["last_evaluated"]
            and ev,
            timeout=20,
            what="an evaluation by the new leader",
        )
        assert evaluated["error"] is None
        time.sleep(3)
        (still,) = firing_on(follower)
        assert (still["active_since"], still["fired_at"]) == (on_leader["active_since"], on_leader["fired_at"])
        assert len(hook.received("/c", "firing")) == 1, "the new leader notified again"

        # The rule stops holding: one resolved message from the new leader.
        changed = dict(rule, condition={"op": ">", "threshold": 5})
        r = follower.session.put(f"{follower.api}/api/v1/alerts/rules/{rid}", json=changed, timeout=10)
        assert r.status_code == 200, r.text
        hook.wait_for(1, "/c", "resolved", timeout=20)
        time.sleep(2)
        assert [x.status for x in hook.received("/c")] == ["firing", "resolved"]
        leader.start()  # so the factory can stop it cleanly


def test_a_query_node_serves_what_two_store_nodes_commit(metastore, s3, oxeye_factory):
    """Two ingesting nodes with disjoint shards and a query node, all on one metastore and one
    bucket: the query node answers for both nodes' flushed data, follows their later flushes and
    compactions, and the shared catalog stays consistent while both commit at once."""
    quiet = {"flush_age": "1h", "maintenance_interval": "1h", "shards": 1}
    a = oxeye_factory(**s3.flags(metastore=metastore.url, first_shard=0, **quiet))
    b = oxeye_factory(**s3.flags(metastore=metastore.url, first_shard=1, **quiet))
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))

    sent_a = [send_data(a, unique("node-a"))]
    sent_b = [send_data(b, unique("node-b"), traces=2, children=3, logs=4)]
    flush(a)
    flush(b)
    # Each store node answers for its own data; the query node for both, once it refreshed.
    answers(a, sent_a)
    answers(b, sent_b)
    both = sent_a + sent_b
    wait_until(
        lambda: _answers_or_none(q, both),
        timeout=20,
        what="the query node answering for both store nodes",
    )
    assert {s["shard"] for s in _segment_rows(q)} == {0, 1}, _segment_rows(q)

    # Both commit at once, several times: every commit lands, none is lost or doubled.
    more_a, more_b = [], []

    def churn(node: Oxeye, name: str, out: list) -> None:
        for i in range(3):
            out.append(send_data(node, unique(f"{name}-{i}"), traces=1, children=2, logs=1))
            flush(node)

    threads = [
        threading.Thread(target=churn, args=(a, "churn-a", more_a)),
        threading.Thread(target=churn, args=(b, "churn-b", more_b)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    everything = both + more_a + more_b
    wait_until(lambda: _answers_or_none(q, everything), timeout=20, what="the query node after the churn")
    catalog = metastore.catalog()
    assert_matches_system_segments(q, catalog)

    # A compacts its own shard only; the query node follows, with the same answers.
    r = admin(a, "compact")
    assert r.status_code == 200, r.text
    wait_until(
        lambda: {s["id"] for s in _segment_rows(q)} == set(metastore.catalog().segments),
        timeout=20,
        what="the query node taking in the compaction",
    )
    merged = [s for s in metastore.catalog().segments.values() if s.meta["level"] > 0]
    assert merged, "A merged nothing"
    assert {s.shard for s in merged} == {0}, "A merged B's segments"
    assert _answers_or_none(q, everything), "answers changed after compaction"
    assert not (q.data_dir / "wal").exists() or not any((q.data_dir / "wal").iterdir()), "a query node wrote a WAL"


def _segment_rows(server: Oxeye) -> list[dict[str, Any]]:
    return server.sql_dicts("SELECT id, table_name, shard, level, rows FROM system.segments ORDER BY id")


def _answers_or_none(server: Oxeye, sent: list) -> dict[str, Any] | None:
    """`answers` when they are already exactly what was sent, else None (for polling)."""
    try:
        return answers(server, sent)
    except AssertionError:
        return None


def test_grpc_health_checks_on_store_collector_and_serve(metastore, s3, oxeye_factory):
    """Store nodes (on their Flight port), collectors and `oxeye serve` (on the OTLP/gRPC port)
    answer the standard gRPC health check (grpc.health.v1), for the server as a whole and per
    service; an unknown service is NOT_FOUND, as the protocol says."""
    import grpc

    (fa,) = free_ports(1)
    oxeye_factory(
        **s3.flags(metastore=metastore.url, role="store", first_shard=0, flight_listen=f"127.0.0.1:{fa}", flush_age="1h")
    )
    collector = oxeye_factory(metastore=metastore.url, role="collector")
    serve = oxeye_factory()
    flight = f"127.0.0.1:{fa}"
    assert grpc_health(flight) == GRPC_SERVING
    assert grpc_health(flight, "arrow.flight.protocol.FlightService") == GRPC_SERVING
    for node in (collector, serve):
        assert grpc_health(node.grpc_addr) == GRPC_SERVING
        for signal in ("trace", "logs", "metrics"):
            name = {"trace": "TraceService", "logs": "LogsService", "metrics": "MetricsService"}[signal]
            service = f"opentelemetry.proto.collector.{signal}.v1.{name}"
            assert grpc_health(node.grpc_addr, service) == GRPC_SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        grpc_health(flight, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_collector_routes_over_flight_to_store_nodes(metastore, s3, oxeye_factory):
    """`oxeye collector` takes OTLP from the SDK and sends each trace, whole, to the store node
    that owns its shard over Arrow Flight (the shard map comes from the store nodes' heartbeats
    in the metastore); a query node answers for all of it; a store node killed with `kill -9`
    keeps every row it acknowledged."""
    a, b, c, q = _flight_cluster(metastore, s3, oxeye_factory)

    service = unique("via-flight")
    traces = _send_traces(c, service, 24)
    total = sum(len(v) for v in traces.values())
    assert total == 24 * 4

    def count(node: Oxeye, where: str = "") -> int:
        rows = node.sql_dicts(f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}'{where}")
        return int(rows[0]["n"])

    def count_of(svc: str) -> int:
        return sum(
            int(n.sql_dicts(f"SELECT count(*) AS n FROM spans WHERE service_name = '{svc}'")[0]["n"])
            for n in (a, b)
        )

    # Every acknowledged span is in a store node's shards, each exactly once.
    wait_until(lambda: count(a) + count(b) == total or None, timeout=20, what="all spans in the stores")
    assert count(a) > 0 and count(b) > 0, (count(a), count(b))
    for trace_id, spans in traces.items():
        on = [count(n, f" AND trace_id = '{trace_id}'") for n in (a, b)]
        assert sorted(on) == [0, len(spans)], f"trace {trace_id} split across store nodes: {on}"

    # A batch far larger than one Flight message's usual 2 MiB: delivered once, not re-sent
    # for ever (a regression: acknowledgements were counted per message, not per batch).
    big = unique("big-batch")
    trace_id = random_trace_id()
    spans = [span(trace_id, name=f"op {i}", attributes={"payload": "x" * 1500}) for i in range(3000)]
    r = c.post_otlp("traces", trace_request(spans, service=big).SerializeToString())
    assert r.status_code == 200, (r.status_code, r.content[:300])
    wait_until(
        lambda: (n := count_of(big)) == 3000 or (n > 3000 and pytest.fail(f"{n} rows for 3000 spans")),
        timeout=30,
        what="the 3000-span request in a store exactly once",
    )
    time.sleep(3)
    assert count_of(big) == 3000, "the big batch was delivered more than once"
    assert not list((c.data_dir / "queue").glob("shard-*/*.rec")), "the big batch is stuck in the queue"

    # A store node dies with unflushed rows; its WAL brings them back.
    before_b = count(b)
    b.kill9()
    b.start()
    assert count(b) == before_b, "rows acknowledged by the killed store node are gone"
    flush(a)
    flush(b)
    wait_until(lambda: count(q) == total or None, timeout=20, what="the query node seeing every span once")
    spans_on_q = q.sql_dicts(
        f"SELECT trace_id, count(*) AS n FROM spans WHERE service_name = '{service}' GROUP BY trace_id"
    )
    assert {r["trace_id"]: int(r["n"]) for r in spans_on_q} == {t: len(s) for t, s in traces.items()}


def test_a_query_node_sees_unflushed_rows_of_store_nodes_exactly_once(metastore, s3, oxeye_factory):
    """A query node reads each store node's shards from that node's own snapshot over Flight
    (its committed segments and unflushed rows, taken at one instant): rows show up before any
    flush, each exactly once while the store nodes flush and compact under the queries, and
    with a store node gone the query still answers, from the catalog."""
    a, b, c, q = _flight_cluster(metastore, s3, oxeye_factory)
    service = unique("hot")
    traces = _send_traces(c, service, 16)
    total = sum(len(v) for v in traces.values())

    def count() -> int:
        return int(q.sql_dicts(f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}'")[0]["n"])

    wait_until(lambda: count() == total or None, timeout=30, what="the query node seeing unflushed spans")
    assert segments(a, "spans") == [] and segments(b, "spans") == [], "the spans were flushed already"
    # A trace lookup moves that trace's unflushed rows only (the store nodes filter their
    # snapshot by the trace id), not their memtables.
    one_trace, its_spans = next(iter(traces.items()))
    sent_before = sum(n.metric("oxeye_store_snapshot_rows_total") for n in (a, b))
    rows = q.sql_dicts(f"SELECT span_id FROM spans WHERE trace_id = '{one_trace}'")
    assert {r["span_id"] for r in rows} == its_spans
    sent = sum(n.metric("oxeye_store_snapshot_rows_total") for n in (a, b)) - sent_before
    assert sent == len(its_spans), f"{sent} unflushed rows moved for a {len(its_spans)}-span trace"
    # Other filters travel too: the store nodes send only the rows they keep.
    sent_before = sum(n.metric("oxeye_store_snapshot_rows_total") for n in (a, b))
    rows = q.sql_dicts(f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}' AND name = 'step 0'")
    assert int(rows[0]["n"]) == len(traces)
    sent = sum(n.metric("oxeye_store_snapshot_rows_total") for n in (a, b)) - sent_before
    assert sent == len(traces), f"{sent} unflushed rows moved for {len(traces)} matching spans"
    # The service list (from the index terms of segments and of unflushed rows) has it too.
    assert service in q.get_json("/api/v1/services")["services"]

    # Flushes and a compaction on both store nodes while the query node keeps counting: every
    # count is exact, whether a row was in a memtable, a new segment or a merged one.
    def counted_while(work) -> list[int]:
        seen: list[int] = []
        done = threading.Event()

        def keep_counting() -> None:
            while not done.is_set():
                seen.append(count())

        counter = threading.Thread(target=keep_counting)
        counter.start()
        try:
            work()
        finally:
            done.set()
            counter.join(timeout=60)
        return seen

    seen = counted_while(lambda: [flush(node) for node in (a, b)])
    assert seen and set(seen) == {total}, f"counts while flushing, of {total}: {sorted(set(seen))}"

    more = _send_traces(c, service, 4)
    total += sum(len(v) for v in more.values())
    wait_until(lambda: count() == total or None, timeout=30, what="the query node seeing the later spans")

    def flush_and_compact() -> None:
        for node in (a, b):
            flush(node)
            assert admin(node, "compact").status_code == 200

    seen = counted_while(flush_and_compact)
    assert seen and set(seen) == {total}, f"counts while compacting, of {total}: {sorted(set(seen))}"

    # A store node gone: its shards come from the catalog (its rows were flushed), and the
    # query answers rather than failing.
    b.kill9()
    wait_until(lambda: count() == total or None, timeout=30, what="the query node answering without store b")


def test_aggregates_over_many_unflushed_rows_run_their_partial_stage_on_the_store_nodes(
    metastore, s3, oxeye_factory
):
    """A store node with more unflushed rows than travel with a snapshot (8192) sets them aside
    for the query until its scan runs; an aggregate over them runs its partial stage on the
    store node, so only partial states travel, not the rows. Answers stay exact while both
    store nodes flush and compact under the queries (the rows set aside are those of the
    snapshot's instant, whatever is flushed before the scan reads them), and nothing stays set
    aside once the queries are done."""
    a, b, c, q = _flight_cluster(metastore, s3, oxeye_factory)
    service = unique("many-hot")
    # 6,000 traces of a root and three steps, as OTLP/HTTP protobuf requests of 2,000 spans
    # (the SDK's span queue would drop some of so many spans made at once).
    start = time.time_ns() - 60 * 1_000_000_000
    spans = []
    for t in range(6000):
        trace_id = random_trace_id()
        spans.append(span(trace_id, name=f"GET /q/{t}", start_ns=start + t * 1_000_000, duration_ns=20_000_000))
        spans.extend(span(trace_id, name=f"step {i}", start_ns=start + t * 1_000_000 + i) for i in range(3))
    total = len(spans)
    for i in range(0, total, 2000):
        r = c.post_otlp("traces", trace_request(spans[i : i + 2000], service=service).SerializeToString())
        assert r.status_code == 200, (r.status_code, r.content[:300])
    by_step = (
        "SELECT CASE WHEN name LIKE 'step %' THEN name ELSE 'root' END AS step, count(*) AS n, "
        f"count(DISTINCT trace_id) AS traces FROM spans WHERE service_name = '{service}' GROUP BY 1 ORDER BY 1"
    )
    expected = [{"step": s, "n": 6000, "traces": 6000} for s in ("root", "step 0", "step 1", "step 2")]

    def answer() -> list[dict]:
        return [{k: (int(v) if k != "step" else v) for k, v in r.items()} for r in q.sql_dicts(by_step)]

    wait_until(lambda: answer() == expected or None, timeout=60, what="the query node seeing 24,000 unflushed spans")
    assert segments(a, "spans") == [] and segments(b, "spans") == [], "the spans were flushed already"
    plan = "\n".join(r["plan"] for r in q.sql_dicts(f"EXPLAIN {by_step}"))
    assert "OxeyeRemotePartialAggregate" in plan and "nodes=2" in plan, plan

    def moved() -> tuple[float, float]:
        return (
            sum(n.metric("oxeye_store_snapshot_rows_total") for n in (a, b)),
            sum(n.metric("oxeye_store_partial_aggregate_rows_total") for n in (a, b)),
        )

    sent_before, aggregated_before = moved()
    assert answer() == expected
    sent, aggregated = moved()
    assert sent == sent_before, f"{sent - sent_before} unflushed rows travelled for an aggregate"
    assert aggregated - aggregated_before == total, "every unflushed row was aggregated on its store node"

    # Flushes and compactions between the snapshots and the scans reading the rows set aside.
    seen: list[list[dict]] = []
    done = threading.Event()

    def keep_asking() -> None:
        while not done.is_set():
            seen.append(answer())

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        for node in (a, b):
            flush(node)
            assert admin(node, "compact").status_code == 200
    finally:
        done.set()
        asker.join(timeout=60)
    assert seen and all(s == expected for s in seen), [s for s in seen if s != expected][:3]
    assert answer() == expected, "from segments alone"
    for node in (a, b):
        wait_until(
            lambda node=node: node.metric("oxeye_store_snapshot_pins") == 0 or None,
            timeout=30,
            what="no unflushed rows left set aside",
        )


def test_unflushed_rows_beyond_the_query_memory_limit_fail_the_query_clearly(metastore, s3, oxeye_factory):
    """A query node takes store nodes' unflushed rows into memory: when a query needs more of
    them than its memory limit (`--query-memory`), it fails with a 400 that says what to do,
    instead of the node running out of memory. A trace lookup, which moves one trace, works, and
    so does a count, for which store nodes send one narrow column, not the 300-byte payloads."""
    (fa,) = free_ports(1)
    oxeye_factory(
        **s3.flags(metastore=metastore.url, role="store", first_shard=0, flight_listen=f"127.0.0.1:{fa}", flush_age="1h")
    )
    c = oxeye_factory(metastore=metastore.url, role="collector")
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query", query_memory="256KiB"))
    wait_until(lambda: f"127.0.0.1:{fa}" in c.log() or None, timeout=20, what="the collector seeing the store node")
    service = unique("big-hot")
    traces = [random_trace_id() for _ in range(100)]
    spans = [span(traces[i % 100], name=f"op {i}", attributes={"payload": "x" * 300}) for i in range(2000)]
    r = c.post_otlp("traces", trace_request(spans, service=service).SerializeToString())
    assert r.status_code == 200, (r.status_code, r.content[:300])

    lookup = f"SELECT count(*) AS n FROM spans WHERE trace_id = '{traces[7].hex()}'"
    wait_until(
        lambda: int(q.sql_dicts(lookup)[0]["n"]) == 20 or None,
        timeout=30,
        what="the query node finding one unflushed trace",
    )
    counted = q.sql_dicts(f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}'")
    assert int(counted[0]["n"]) == 2000, counted
    answer = q.session.post(
        f"{q.api}/api/v1/sql",
        json={"sql": f"SELECT span_id, attributes FROM spans WHERE service_name = '{service}'"},
        timeout=30,
    )
    assert answer.status_code == 400, (answer.status_code, answer.text[:500])
    assert "unflushed rows" in answer.text and "--query-memory" in answer.text, answer.text[:500]


def test_nodes_talk_over_mutual_tls(metastore, s3, oxeye_factory, tmp_path):
    """Every node with a certificate: the collector and query node reach the store node's
    Flight listener over TLS, each showing its own certificate (mutual TLS), and the SDK sends
    to the collector over TLS. A Flight client with no certificate, or with one another CA
    signed, or in plain text, is turned away; with the nodes' certificate it is served."""
    import json

    import pyarrow.flight as flight

    from certs import make_certs

    certs = make_certs(tmp_path / "certs")
    tls = {
        "tls_cert": certs.cert,
        "tls_key": certs.key,
        "tls_client_ca": certs.ca,
        "tls_ca": certs.ca,
        "client_ca_file": certs.ca,
    }
    (fa,) = free_ports(1)
    store = oxeye_factory(
        **s3.flags(
            metastore=metastore.url, role="store", shards=2, flight_listen=f"127.0.0.1:{fa}",
            flush_age="1h", maintenance_interval="1h", **tls,
        )
    )
    collector = oxeye_factory(metastore=metastore.url, role="collector", **tls)
    query = oxeye_factory(**s3.flags(metastore=metastore.url, role="query", **tls))
    wait_until(
        lambda: f"https://127.0.0.1:{fa}" in collector.log() or None,
        timeout=20,
        what="the collector seeing the store node's https:// Flight address",
    )
    service = unique("mtls")
    traces = _send_traces(collector, service, 6)
    total = sum(len(v) for v in traces.values())

    # Unflushed rows reach the query node from the store node's snapshot, over mutual TLS.
    def count() -> int:
        return int(query.sql_value(f"SELECT count(*) FROM spans WHERE service_name = '{service}'"))

    wait_until(lambda: count() == total or None, timeout=30, what="the query node seeing the spans over Flight")
    assert segments(store, "spans") == [], "the spans were flushed; the snapshot path was not tested"

    ticket = flight.Ticket(json.dumps({"table": "spans", "start": None, "end": None}).encode())
    ca = certs.ca.read_bytes()

    def snapshot_rows(location: str, **client_tls: Any) -> int:
        if location.startswith("grpc+tls"):
            client = flight.connect(location, tls_root_certs=ca, **client_tls)
        else:
            client = flight.connect(location)
        try:
            return client.do_get(ticket, options=flight.FlightCallOptions(timeout=10)).read_all().num_rows
        finally:
            client.close()

    tls_location = f"grpc+tls://127.0.0.1:{fa}"
    refused = {
        "no client certificate": lambda: snapshot_rows(tls_location),
        "a certificate of another CA": lambda: snapshot_rows(
            tls_location, cert_chain=certs.other_cert.read_bytes(), private_key=certs.other_key.read_bytes()
        ),
        "plain text": lambda: snapshot_rows(f"grpc://127.0.0.1:{fa}"),
    }
    for what, attempt in refused.items():
        with pytest.raises(flight.FlightError, match="UNAVAILABLE"):
            attempt()
            pytest.fail(f"the store node served a Flight client with {what}")
    rows = snapshot_rows(tls_location, cert_chain=certs.cert.read_bytes(), private_key=certs.key.read_bytes())
    assert rows >= total
    # The nodes keep serving after the refused handshakes.
    more = _send_traces(collector, service, 2)
    total += sum(len(v) for v in more.values())
    wait_until(lambda: count() == total or None, timeout=30, what="the query node seeing the later spans")


def test_a_store_node_joining_with_new_shards_takes_new_traces_and_loses_or_doubles_none(
    metastore, s3, oxeye_factory
):
    """Adding shards: a store node that joins with shards 2-3 enters the collector's shard map,
    and rendezvous hashing hands it its share of the traces that arrive after; spans sent
    before, while and after it joins are each stored exactly once, before and after flushes."""
    fa, fb = free_ports(2)
    store = {"flush_age": "1h", "maintenance_interval": "1h", "shards": 2}
    a = oxeye_factory(
        **s3.flags(metastore=metastore.url, role="store", first_shard=0, flight_listen=f"127.0.0.1:{fa}", **store)
    )
    c = oxeye_factory(metastore=metastore.url, role="collector")
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))
    wait_until(lambda: f"127.0.0.1:{fa}" in c.log() or None, timeout=20, what="the collector seeing store a")
    service = unique("grow")
    traces = _send_traces(c, service, 20)

    # Keep sending while store b joins.
    during: list[dict[str, set[str]]] = []
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            during.append(_send_traces(c, service, 4))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        b = oxeye_factory(
            **s3.flags(metastore=metastore.url, role="store", first_shard=2, flight_listen=f"127.0.0.1:{fb}", **store)
        )
        wait_until(lambda: f"127.0.0.1:{fb}" in c.log() or None, timeout=20, what="the collector seeing store b")
        time.sleep(1)
    finally:
        stop.set()
        sender.join(timeout=60)
    assert during, "nothing was sent while store b joined"
    after = _send_traces(c, service, 40)
    for batch in [*during, after]:
        traces.update(batch)
    total = sum(len(v) for v in traces.values())

    def count(node: Oxeye, where: str = "") -> int:
        return int(node.sql_dicts(f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}'{where}")[0]["n"])

    def per_trace() -> dict[str, int]:
        rows = q.sql_dicts(f"SELECT trace_id, count(*) AS n FROM spans WHERE service_name = '{service}' GROUP BY 1")
        return {r["trace_id"]: int(r["n"]) for r in rows}

    want = {t: len(s) for t, s in traces.items()}
    wait_until(lambda: count(q) == total or None, timeout=30, what="the query node seeing every span")
    assert per_trace() == want
    # The new shards took part of the traces sent after the join, each trace whole.
    on_b = [t for t in after if count(b, f" AND trace_id = '{t}'") > 0]
    assert 0 < len(on_b) < len(after), f"{len(on_b)} of {len(after)} new traces went to the new shards"
    for t in on_b:
        assert count(b, f" AND trace_id = '{t}'") == len(after[t]), f"trace {t} split across store nodes"
    assert count(a) + count(b) == total

    flush(a)
    flush(b)
    wait_until(lambda: count(q) == total or None, timeout=30, what="the query node after the flushes")
    assert per_trace() == want


def _flight_cluster(metastore, s3, oxeye_factory) -> tuple[Oxeye, Oxeye, Oxeye, Oxeye]:
    """Two store nodes (shards 0-1 and 2-3, no timed flushes), a collector that sees both, and a
    query node: `(a, b, collector, query)`."""
    fa, fb = free_ports(2)
    store = {"flush_age": "1h", "maintenance_interval": "1h", "shards": 2}
    a = oxeye_factory(
        **s3.flags(metastore=metastore.url, role="store", first_shard=0, flight_listen=f"127.0.0.1:{fa}", **store)
    )
    b = oxeye_factory(
        **s3.flags(metastore=metastore.url, role="store", first_shard=2, flight_listen=f"127.0.0.1:{fb}", **store)
    )
    c = oxeye_factory(metastore=metastore.url, role="collector")
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))
    wait_until(
        lambda: "shard map changed" in c.log() and all(f"127.0.0.1:{p}" in c.log() for p in (fa, fb)),
        timeout=20,
        what="the collector seeing both store nodes",
    )
    return a, b, c, q


def _send_traces(collector: Oxeye, service: str, n: int) -> dict[str, set[str]]:
    """`n` traces of 4 spans through `collector` with the SDK; returns trace id -> span ids."""
    from oxeye_client import SdkTraces, SpanSpec

    sdk = SdkTraces(collector)
    start = time.time_ns() - 60 * 1_000_000_000
    try:
        for t in range(n):
            root = SpanSpec(
                service,
                f"GET /q/{t}",
                kind="SERVER",
                duration_ms=20,
                children=[SpanSpec(service, f"step {i}", offset_ms=1 + i, duration_ms=1) for i in range(3)],
            )
            sdk.send(root, start + t * 1_000_000)
        sdk.flush()
    finally:
        sdk.shutdown()
    traces: dict[str, set[str]] = {}
    for s in sdk.spans:
        traces.setdefault(s.trace_id, set()).add(s.span_id)
    return traces


def test_the_collector_queue_keeps_writes_while_stores_are_down(metastore, s3, oxeye_factory):
    """With its store node down, a collector keeps acknowledging into its on-disk queue (which
    survives a restart of the collector), refuses with 429 + Retry-After once the queue is full,
    and delivers everything exactly once when the store is back."""
    (fa,) = free_ports(1)
    a = oxeye_factory(
        **s3.flags(
            metastore=metastore.url,
            role="store",
            shards=2,
            flight_listen=f"127.0.0.1:{fa}",
            flush_age="1h",
            maintenance_interval="1h",
        )
    )
    c = oxeye_factory(metastore=metastore.url, role="collector")
    q = oxeye_factory(**s3.flags(metastore=metastore.url, role="query"))
    wait_until(lambda: f"127.0.0.1:{fa}" in c.log(), timeout=20, what="the collector seeing the store")

    service = unique("queued")
    first = _send_traces(c, service, 5)
    a.stop()
    # The store is down: the SDK is still acknowledged, by the collector's queue.
    second = _send_traces(c, service, 7)
    queued = list((c.data_dir / "queue").glob("shard-*/*.rec"))
    assert queued, "nothing waits in the collector's queue while the store is down"
    c.stop()
    c.start()  # the queue survives a restart of the collector
    assert list((c.data_dir / "queue").glob("shard-*/*.rec")), "the queue was lost in the restart"

    # A small queue fills up and pushes back with OTLP's retryable answer.
    small = oxeye_factory(metastore=metastore.url, role="collector", queue_size="64KiB")
    wait_until(lambda: "shard map changed" in small.log(), timeout=20, what="the small collector's shard map")
    statuses = []
    for i in range(200):
        records = [log_record(f"filler {i} {'x' * 2000}", time.time_ns()) for _ in range(20)]
        r = small.post_otlp("logs", records_request(records, service=unique("filler")).SerializeToString())
        statuses.append(r.status_code)
        if r.status_code != 200:
            assert r.status_code == 429, (r.status_code, r.content[:300])
            assert r.headers.get("retry-after"), r.headers
            break
    assert statuses[-1] == 429, f"the 64 KiB queue never filled: {statuses[:5]}..."

    a.start()
    wanted = {**first, **second}
    total = sum(len(s) for s in wanted.values())

    def count(node: Oxeye) -> int:
        return int(node.sql_dicts(f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}'")[0]["n"])

    wait_until(lambda: count(a) == total or None, timeout=60, what="the queue delivering every span to the store")
    wait_until(
        lambda: not list((c.data_dir / "queue").glob("shard-*/*.rec")) or None,
        timeout=30,
        what="the collector's queue emptying",
    )
    flush(a)
    wait_until(lambda: count(q) == total or None, timeout=20, what="the query node seeing every span")
    rows = q.sql_dicts(f"SELECT trace_id, count(*) AS n FROM spans WHERE service_name = '{service}' GROUP BY 1")
    assert {r["trace_id"]: int(r["n"]) for r in rows} == {t: len(s) for t, s in wanted.items()}


def test_a_redelivered_batch_is_stored_once_through_crashes_and_flushes(metastore, s3, oxeye_factory):
    """Exactly-once at the collector -> store edge, with a real Arrow Flight client (pyarrow):
    a `DoPut` whose acknowledgement was lost is sent again with the same delivery positions, and
    the store node keeps one copy. The positions it holds survive `kill -9` (in the WAL) and a
    flush plus restart (in the metastore's checkpoint). Batches of the wrong schema and
    malformed marks are refused for good, with nothing written."""
    import json

    import pyarrow as pa
    import pyarrow.flight as flight

    (fa,) = free_ports(1)
    store = oxeye_factory(
        **s3.flags(
            metastore=metastore.url,
            role="store",
            shards=1,
            flight_listen=f"127.0.0.1:{fa}",
            flush_age="1h",
            maintenance_interval="1h",
        )
    )
    collector = oxeye_factory(metastore=metastore.url, role="collector")
    wait_until(lambda: f"127.0.0.1:{fa}" in collector.log(), timeout=20, what="the collector seeing the store")
    service = unique("redelivered")
    traces = _send_traces(collector, service, 3)
    n = sum(len(v) for v in traces.values())

    def count() -> int:
        return int(store.sql_value(f"SELECT count(*) FROM spans WHERE service_name = '{service}'"))

    wait_until(lambda: count() == n or None, timeout=20, what="the spans in the store")

    def client() -> flight.FlightClient:
        return flight.connect(f"grpc://127.0.0.1:{fa}")

    # The store's own rows, in its storage schema, from a DoGet snapshot.
    ticket = json.dumps({"table": "spans", "start": None, "end": None}).encode()
    table = client().do_get(flight.Ticket(ticket)).read_all()
    names = table.column("service_name").to_pylist()
    rows = table.filter(pa.array([s == service for s in names])).combine_chunks()
    assert rows.num_rows == n
    batch = rows.to_batches()[0]

    def put(batches: list, producer: str = "e2e-collector", positions: list | None = None) -> None:
        command = {"table": "spans", "shard": 0, "producer": producer, "positions": positions}
        writer, acks = client().do_put(flight.FlightDescriptor.for_command(json.dumps(command)), batch.schema)
        for b in batches:
            writer.write_batch(b)
        writer.done_writing()
        acked = sum(1 for _ in batches if acks.read() is not None)
        writer.close()  # raises the store's refusal, if any
        assert acked == len(batches), f"{acked} of {len(batches)} batches acknowledged"

    dups = lambda: store.metric("oxeye_store_duplicate_batches_total")  # noqa: E731
    put([batch], positions=[1 << 16])
    assert count() == 2 * n
    # The acknowledgement was lost: the same delivery again, then one that is half new.
    put([batch], positions=[1 << 16])
    assert count() == 2 * n
    put([batch, batch], positions=[1 << 16, 2 << 16])
    assert count() == 3 * n
    assert dups() == 2

    # Killed before any flush: the WAL brings back the positions with the rows.
    store.kill9()
    store.start()
    put([batch, batch], positions=[1 << 16, 2 << 16])
    assert count() == 3 * n
    assert dups() == 2, "the restarted node counts from zero; both batches were duplicates"

    # Flushed and restarted: the WAL is gone and the metastore's checkpoint holds the positions.
    flush(store)
    store.restart()
    assert not store.wal_files() or all(f.stat().st_size <= 8 for f in store.wal_files())
    put([batch], positions=[2 << 16])
    assert count() == 3 * n
    with psycopg.connect(metastore.url) as conn:
        (delivered,) = conn.execute("SELECT delivered FROM oxeye_shards WHERE shard = 0").fetchone()
    producer = (collector.data_dir / "queue" / "producer").read_text().strip()
    assert delivered["e2e-collector/spans"] == 2 << 16, delivered
    assert f"{producer}/spans" in delivered, (producer, delivered)
    # Another producer's stream is its own.
    put([batch], producer="e2e-other", positions=[1])
    assert count() == 4 * n

    # Refused for good, nothing written: a batch of another schema, a malformed producer id,
    # more batches than positions.
    wrong = pa.record_batch([pa.array([1, 2, 3])], names=["trace_id"])
    for bad, kwargs in (
        ([wrong], {"positions": [99 << 16]}),
        ([batch], {"producer": "no/slashes", "positions": [99 << 16]}),
        ([batch, batch], {"positions": [99 << 16]}),
    ):
        # INVALID_ARGUMENT reaches pyarrow as ArrowInvalid.
        with pytest.raises((flight.FlightError, pa.ArrowInvalid)) as err:
            if bad[0] is wrong:
                command = {"table": "spans", "shard": 0, "producer": "e2e-collector", **kwargs}
                writer, acks = client().do_put(flight.FlightDescriptor.for_command(json.dumps(command)), wrong.schema)
                writer.write_batch(wrong)
                writer.done_writing()
                acks.read()
                writer.close()
            else:
                put(bad, **kwargs)
        assert "invalid argument" in str(err.value).lower(), err.value
    assert count() == 4 * n
    store.restart()
    assert count() == 4 * n, "a refused batch reached the WAL"
