"""Receivers for the alert notifications of the end-to-end tests: a threaded HTTP server on
127.0.0.1 that records every request (and can answer errors to the first few), and a real
Prometheus Alertmanager process (Debian's `prometheus-alertmanager`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from oxeye_client import free_ports, wait_until

# --------------------------------------------------------------------------------------------
# A recording HTTP receiver


@dataclass
class Received:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes
    body: Any  # the parsed JSON body, or None when it is not JSON
    time_ns: int  # time.time_ns() when the body had been read
    answered: int  # the status code sent back

    @property
    def status(self) -> str | None:
        """The `status` field of a JSON object body (firing / resolved / error for webhooks)."""
        return self.body.get("status") if isinstance(self.body, dict) else None

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} -> {self.answered} status={self.status!r} {self.raw[:300]!r}>"


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (port 0, one thread per connection) that records every
    request with its path, JSON body and arrival time, and answers `200 {}` — or `fail_status`
    to the first `fail_first` POST requests. Use as a context manager or call `close()`."""

    def __init__(self, fail_first: int = 0, fail_status: int = 500):
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self._posts = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Recording ------------------------------------------------------------------------------

    def _answer(self, method: str) -> int:
        with self.lock:
            if method != "POST":
                return 200
            self._posts += 1
            return self.fail_status if self._posts <= self.fail_first else 200

    def _record(self, r: Received) -> None:
        with self.lock:
            self.requests.append(r)

    def received(
        self, path: str | None = None, status: str | None = None, method: str | None = "POST"
    ) -> list[Received]:
        """The requests so far (POSTs unless `method` is None), oldest first, optionally only
        those to `path` and/or whose JSON body has this `status`."""
        with self.lock:
            out = list(self.requests)
        return [
            r
            for r in out
            if (method is None or r.method == method)
            and (path is None or r.path == path)
            and (status is None or r.status == status)
        ]

    def wait_for(
        self, n: int = 1, path: str | None = None, status: str | None = None, timeout: float = 30
    ) -> list[Received]:
        """Polls until at least `n` matching POSTs arrived; returns all matching ones."""
        return wait_until(
            lambda: got if len(got := self.received(path, status)) >= n else None,
            timeout=timeout,
            interval=0.05,
            what=f"{n} POST(s) to {self.url}{path or ''} with status {status or 'any'} "
            f"(received so far: {self.received(method=None)})",
        )


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real webhook receivers do

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # CRLF after the chunk
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            raw = self._read_body()
            arrived = time.time_ns()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            code = receiver._answer(self.command)
            receiver._record(
                Received(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    raw=raw,
                    body=body,
                    time_ns=arrived,
                    answered=code,
                )
            )
            out = b"{}" if code < 400 else json.dumps({"error": f"told to fail with {code}"}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_POST = _serve
        do_PUT = _serve
        do_GET = _serve

        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            pass

    return Handler


# --------------------------------------------------------------------------------------------
# Prometheus Alertmanager

ALERTMANAGER_BINARY = Path(os.environ.get("ALERTMANAGER_BIN", "/usr/bin/prometheus-alertmanager"))

# One receiver without integrations: Alertmanager keeps and lists the alerts it is sent and
# notifies no one.
ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: blackhole
"""


class Alertmanager:
    """A `prometheus-alertmanager` process on a free 127.0.0.1 port with clustering disabled,
    its storage, configuration and log under `workdir`."""

    READY_TIMEOUT = 30.0

    def __init__(self, workdir: Path, binary: Path = ALERTMANAGER_BINARY):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.port = free_ports(1)[0]
        self.config_path = self.workdir / "alertmanager.yml"
        self.log_path = self.workdir / "alertmanager.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # empty: no clustering (no gossip port, no settle wait)
        ]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(ALERTMANAGER_CONFIG)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"alertmanager exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout=self.READY_TIMEOUT, what="alertmanager /-/ready")

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: the active (unresolved) alerts, silenced and inhibited included."""
        r = requests.get(f"{self.url}/api/v2/alerts", timeout=10)
        assert r.status_code == 200, f"alertmanager GET /api/v2/alerts: HTTP {r.status_code}: {r.text}"
        return r.json()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
