"""Fixtures that run real `oxeye serve` processes on free 127.0.0.1 ports with temporary data
directories. The server's stderr goes to a file; when a test fails, the tail of every server log
it used is added to the report."""

from __future__ import annotations

import pytest

from oxeye_client import Oxeye, oxeye_binary


class OxeyeFactory:
    """`factory(**flags)` starts a new server; flags are `serve` options with `_` for `-`, e.g.
    `factory(flush_age="1s", max_request_size="1MiB")`."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self.tmp = tmp_path_factory
        self.servers: list[Oxeye] = []

    def __call__(self, start: bool = True, **flags) -> Oxeye:
        base = self.tmp.mktemp("oxeye")
        server = Oxeye(base / "data", base / "oxeye.log", flags)
        self.servers.append(server)
        if start:
            server.start()
        return server

    def close(self) -> None:
        """Stops every server; fails (in teardown) when one did not shut down cleanly."""
        problems = [f"{s.log_path}: {p}" for s in self.servers if (p := s.cleanup())]
        if problems:
            pytest.fail("unclean shutdown: " + "; ".join(problems), pytrace=False)


def pytest_sessionstart(session):
    if not oxeye_binary().exists():
        raise pytest.UsageError(f"oxeye binary not found at {oxeye_binary()}; set OXEYE_BIN")


@pytest.fixture
def oxeye_factory(tmp_path_factory):
    factory = OxeyeFactory(tmp_path_factory)
    yield factory
    factory.close()


@pytest.fixture
def oxeye(oxeye_factory) -> Oxeye:
    """A fresh server with default settings."""
    return oxeye_factory()


@pytest.fixture(scope="module")
def module_oxeye_factory(tmp_path_factory):
    """Like `oxeye_factory`, for servers shared by the tests of a module."""
    factory = OxeyeFactory(tmp_path_factory)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def shared_oxeye(module_oxeye_factory) -> Oxeye:
    """One default server for a whole module, for tests that only add data under their own ids."""
    return module_oxeye_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    servers: list[Oxeye] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Oxeye):
            servers.append(value)
        elif isinstance(value, OxeyeFactory):
            servers.extend(value.servers)
    for i, s in enumerate(dict.fromkeys(servers)):
        report.sections.append((f"oxeye log {i} ({s.log_path})", s.log_tail(80)))
