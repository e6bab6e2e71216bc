"""Alerting (issue 8) end to end: rules written in SQL or with a builder are evaluated by a real
`oxeye serve` over spans sent with the OpenTelemetry SDK, and their notifications reach real
receivers: a recording HTTP server (webhook, Slack format, named channels, retries after 5xx) and
Debian's Prometheus Alertmanager. Checked: the rules API and its validation, dry runs,
inactive -> pending -> firing -> resolved with `for` timing, rendered annotations, history in the
API and in the `alert_events` / `alert_notifications` tables, query errors, silences, a rules
file that is reloaded when it changes, and restarts that keep pending and firing state without
sending a notification twice.

Every rule evaluates every second (`INTERVAL`); checks that nothing more arrives wait three
intervals (`QUIET_S`). Tests on the module's shared server use their own names, services and
receiver, and delete their rules when they end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.trace import SpanKind, Status, StatusCode

from oxeye_client import Oxeye, rfc3339_ns, sdk_tracer_provider, wait_until
from receivers import ALERTMANAGER_BINARY, Alertmanager, Received, WebhookReceiver

S = 1_000_000_000
INTERVAL = "1s"
INTERVAL_S = 1.0
QUIET_S = 3 * INTERVAL_S  # "nothing else arrives": three evaluation intervals
# Slack when comparing server times with `for`: timestamps are written with millisecond precision.
EPS_NS = 50_000_000


def uid() -> str:
    return uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------------------------
# The alerting API


def call(server: Oxeye, method: str, path: str, body: Any = None) -> requests.Response:
    return server.session.request(method, f"{server.api}{path}", json=body, timeout=30)


def expect(r: requests.Response, status: int) -> Any:
    """Asserts the status code; returns the JSON body (None when empty)."""
    assert r.status_code == status, (
        f"{r.request.method} {r.url}: expected HTTP {status}, got {r.status_code}: {r.text[:2000]}"
    )
    return r.json() if r.content else None


def error_message(r: requests.Response) -> str:
    """The message of an error response, after checking the error shape."""
    body = r.json()
    assert isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("kind"), str), body
    message = body["error"].get("message")
    assert isinstance(message, str) and message.strip(), body
    return message


def rule_body(
    name: str,
    sql: str,
    op: str = ">",
    threshold: float = 0,
    for_: str = "0s",
    notify: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A rule evaluated every `INTERVAL`."""
    return {
        "name": name,
        "sql": sql,
        "condition": {"op": op, "threshold": threshold},
        "interval": INTERVAL,
        "for": for_,
        "notify": notify or [],
        **fields,
    }


def webhook(receiver: WebhookReceiver, path: str) -> dict[str, str]:
    return {"type": "webhook", "url": f"{receiver.url}{path}"}


class Rules:
    """Creates rules on one server and deletes them at teardown, so that a test's rules stop
    evaluating (and notifying) before the next test on a shared server."""

    def __init__(self, server: Oxeye):
        self.server = server
        self.ids: list[str] = []

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        rule = expect(call(self.server, "POST", "/api/v1/alerts/rules", body), 201)
        assert isinstance(rule.get("id"), str) and rule["id"], rule
        self.ids.append(rule["id"])
        return rule

    def get(self, rule_id: str) -> dict[str, Any]:
        return expect(call(self.server, "GET", f"/api/v1/alerts/rules/{rule_id}"), 200)

    def delete(self, rule_id: str) -> None:
        assert expect(call(self.server, "DELETE", f"/api/v1/alerts/rules/{rule_id}"), 200) == {
            "deleted": rule_id
        }

    def cleanup(self) -> None:
        if not self.server.running:
            return
        for rule_id in self.ids:
            with contextlib.suppress(requests.RequestException):
                call(self.server, "DELETE", f"/api/v1/alerts/rules/{rule_id}")


@pytest.fixture
def make_rules():
    made: list[Rules] = []

    def make(server: Oxeye) -> Rules:
        made.append(Rules(server))
        return made[-1]

    yield make
    for rules in made:
        rules.cleanup()


@pytest.fixture
def rules(make_rules, shared_oxeye: Oxeye) -> Rules:
    return make_rules(shared_oxeye)


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


def all_rules(server: Oxeye) -> list[dict[str, Any]]:
    return server.get_json("/api/v1/alerts/rules")["rules"]


def rule_named(server: Oxeye, name: str) -> dict[str, Any] | None:
    return next((r for r in all_rules(server) if r["name"] == name), None)


def alerts_of(server: Oxeye, rule_id: str) -> list[dict[str, Any]]:
    """The rule's pending / firing / error instances from GET /api/v1/alerts."""
    return [a for a in server.get_json("/api/v1/alerts")["alerts"] if a["rule_id"] == rule_id]


def wait_alert(server: Oxeye, rule_id: str, state: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
    """Polls GET /api/v1/alerts until the rule has exactly one instance, in `state` (and with
    `fields`); returns it."""

    def probe():
        alerts = alerts_of(server, rule_id)
        assert len(alerts) <= 1, f"more than one instance: {alerts}"
        if alerts and alerts[0]["state"] == state and all(alerts[0].get(k) == v for k, v in fields.items()):
            return alerts[0]
        return None

    return wait_until(
        probe, timeout=timeout, interval=0.05, what=f"a {state} alert of rule {rule_id} {fields}"
    )


def wait_rule_state(server: Oxeye, rule_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    def probe():
        rule = expect(call(server, "GET", f"/api/v1/alerts/rules/{rule_id}"), 200)
        return rule if rule["state"] == state else None

    return wait_until(probe, timeout=timeout, what=f"rule {rule_id} in state {state}")


def history(server: Oxeye, rule_id: str) -> list[dict[str, Any]]:
    """The rule's events, oldest first (the API answers newest first)."""
    events = server.get_json("/api/v1/alerts/history", {"rule_id": rule_id, "limit": 200})["events"]
    times = [rfc3339_ns(e["time"]) for e in events]
    assert times == sorted(times, reverse=True), f"history not newest first: {events}"
    return list(reversed(events))


def transitions(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in events]


LIFECYCLE = [("inactive", "pending"), ("pending", "firing"), ("firing", "resolved")]


def assert_counts(receiver: WebhookReceiver, path: str, **expected: int) -> None:
    """Exactly `expected[status]` POSTs with each status (firing=1, resolved=1, ...) and no
    other POST to `path`."""
    got = receiver.received(path)
    counts = {s: sum(r.status == s for r in got) for s in ("firing", "resolved", "error")}
    want = {s: expected.get(s, 0) for s in counts}
    assert counts == want and len(got) == sum(want.values()), f"expected {want} POSTs, got {got}"


def assert_value_in_text(text: str, pattern: str, value: float) -> None:
    """`text` matches `pattern`, whose one group is `{{ $value }}` rendered; that number is
    `value` (however the server formats it: 3, 3.0, 3.000)."""
    m = re.fullmatch(pattern, text)
    assert m, f"{text!r} does not match {pattern!r}"
    assert float(m[1]) == pytest.approx(value, rel=1e-3), f"{text!r}: rendered value is not {value}"


# ---------------------------------------------------------------------------------------------
# Spans from the SDK


class SpanFeeder:
    """Sends spans of `service` with the OpenTelemetry SDK (OTLP/HTTP): every `period` seconds
    `errors` spans with an ERROR status and `oks` with an OK status, each batch flushed at once.
    Use as a context manager (the first batch goes out on entry); `paused()` holds it (e.g.
    while the server restarts); `set_mix()` changes the batch."""

    def __init__(self, server: Oxeye, service: str, errors: int = 1, oks: int = 0, period: float = 0.5):
        self.service = service
        self.errors, self.oks = errors, oks
        self.period = period
        self.provider = sdk_tracer_provider(server, service, protocol="http")
        self.tracer = self.provider.get_tracer("e2e.alerts", "1.0")
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.batches = 0
        self.flush_failures = 0

    def set_mix(self, errors: int, oks: int) -> None:
        with self.lock:
            self.errors, self.oks = errors, oks

    def send_batch(self) -> None:
        with self.lock:
            for i in range(self.errors + self.oks):
                s = self.tracer.start_span("GET /alert", kind=SpanKind.SERVER, attributes={"i": i})
                if i < self.errors:
                    s.set_status(Status(StatusCode.ERROR, "boom"))
                else:
                    s.set_status(Status(StatusCode.OK))
                s.end()
            if not self.provider.force_flush(10_000):
                self.flush_failures += 1
            self.batches += 1

    def _run(self) -> None:
        while not self.stopping.wait(self.period):
            self.send_batch()

    @contextlib.contextmanager
    def paused(self):
        with self.lock:  # waits for a batch in flight, then holds the thread
            yield

    def __enter__(self) -> SpanFeeder:
        self.send_batch()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        self.provider.shutdown()


def recent_spans_sql(service: str, seconds: int, errors_only: bool = False) -> str:
    """One instance (label service_name) whose value is the number of spans of `service`
    started in the last `seconds` seconds; no row at all when there are none."""
    error = " AND status_code = 'ERROR'" if errors_only else ""
    return (
        "SELECT service_name, CAST(count(*) AS DOUBLE) AS value FROM spans "
        f"WHERE service_name = '{service}'{error} AND start_time > now() - INTERVAL '{seconds} seconds' "
        "GROUP BY service_name"
    )


# ---------------------------------------------------------------------------------------------
# Rules API


def test_rule_crud(shared_oxeye: Oxeye, rules: Rules):
    server, u = shared_oxeye, uid()
    sql = "SELECT 'a' AS k, 1.0 AS value"

    # Only the required fields: the defaults of the contract.
    minimal = rules.create(
        {"name": f"crud minimal {u}", "sql": sql, "condition": {"op": ">", "threshold": 5}}
    )
    assert minimal["sql"] == sql
    assert minimal["source"] == "api"
    assert minimal["condition"] == {"op": ">", "threshold": 5}
    assert (minimal["interval"], minimal["for"], minimal["repeat_interval"]) == ("1m", "0s", "4h")
    assert (minimal["severity"], minimal["labels"], minimal["notify"], minimal["enabled"]) == (
        "warning",
        {},
        [],
        True,
    )
    assert minimal["state"] == "inactive"  # 1.0 > 5 does not hold
    assert minimal["instances"] == []
    assert rfc3339_ns(minimal["created_at"]) <= rfc3339_ns(minimal["updated_at"])

    full_body = {
        "name": f"crud full {u}",
        "sql": sql,
        "condition": {"op": ">=", "threshold": 5},
        "interval": "30s",
        "for": "2m",
        "labels": {"team": "shop", "tier": "1"},
        "annotations": {"summary": "{{ $labels.k }} at {{ $value }}"},
        "severity": "critical",
        "notify": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
        "repeat_interval": "2h",
        "enabled": True,
    }
    full = rules.create(full_body)
    for key, value in full_body.items():
        assert full[key] == value, key
    assert full["id"] != minimal["id"]

    # A builder is compiled to SQL.
    svc = f"crud-svc-{u}"
    built = rules.create(
        {
            "name": f"crud builder {u}",
            "builder": {"kind": "error_rate", "service": svc, "window": "5m"},
            "condition": {"op": ">", "threshold": 5},
        }
    )
    assert isinstance(built["sql"], str) and "select" in built["sql"].lower(), built
    assert svc in built["sql"], built["sql"]
    assert {k: built["builder"].get(k) for k in ("kind", "service", "window")} == {
        "kind": "error_rate",
        "service": svc,
        "window": "5m",
    }

    # Get, list.
    stable = ("id", "name", "sql", "condition", "interval", "for", "labels", "annotations", "severity",
              "notify", "repeat_interval", "enabled", "source", "created_at")  # fmt: skip
    got = rules.get(full["id"])
    assert {k: got[k] for k in stable} == {k: full[k] for k in stable}
    listing = all_rules(server)
    names = [r["name"] for r in listing]
    assert names == sorted(names), "rules not sorted by name"
    ours = {r["id"]: r for r in listing if r["id"] in (minimal["id"], full["id"], built["id"])}
    assert len(ours) == 3
    assert ours[built["id"]]["sql"] == built["sql"]

    # A rule as GET shows it (with its compiled `sql` beside the builder) can be sent back as it
    # is; the SQL is the builder's again.
    fetched = rules.get(built["id"])
    resent = expect(call(server, "PUT", f"/api/v1/alerts/rules/{built['id']}", fetched), 200)
    assert (resent["sql"], resent["builder"]) == (built["sql"], built["builder"])

    unknown = call(server, "GET", "/api/v1/alerts/rules/r-no-such-rule")
    assert unknown.status_code == 404, unknown.text
    error_message(unknown)

    # Update.
    changed = {
        **full_body,
        "condition": {"op": "<", "threshold": 0.5},
        "labels": {"team": "payments"},
        "annotations": {"summary": "changed"},
        "severity": "info",
    }
    updated = expect(call(server, "PUT", f"/api/v1/alerts/rules/{full['id']}", changed), 200)
    for key, value in changed.items():
        assert updated[key] == value, key
    assert (updated["id"], updated["created_at"]) == (full["id"], full["created_at"])
    assert rfc3339_ns(updated["updated_at"]) >= rfc3339_ns(full["updated_at"])
    assert rules.get(full["id"])["labels"] == {"team": "payments"}

    # An invalid update is refused and changes nothing.
    bad = call(server, "PUT", f"/api/v1/alerts/rules/{full['id']}", {**changed, "sql": "SELEC 1.0 AS value"})
    assert bad.status_code == 400, bad.text
    error_message(bad)
    assert rules.get(full["id"])["sql"] == sql
    missing = call(server, "PUT", "/api/v1/alerts/rules/r-no-such-rule", changed)
    assert missing.status_code == 404, missing.text

    # Disable, enable.
    disabled = expect(call(server, "POST", f"/api/v1/alerts/rules/{full['id']}/disable"), 200)
    assert (disabled["enabled"], disabled["state"]) == (False, "disabled")
    assert rules.get(full["id"])["state"] == "disabled"
    assert alerts_of(server, full["id"]) == []
    enabled = expect(call(server, "POST", f"/api/v1/alerts/rules/{full['id']}/enable"), 200)
    assert enabled["enabled"] is True and enabled["state"] != "disabled", enabled

    # Delete.
    rules.delete(full["id"])
    assert call(server, "GET", f"/api/v1/alerts/rules/{full['id']}").status_code == 404
    assert call(server, "DELETE", f"/api/v1/alerts/rules/{full['id']}").status_code == 404
    assert full["id"] not in {r["id"] for r in all_rules(server)}


def test_duplicate_names_are_refused(shared_oxeye: Oxeye, rules: Rules):
    server, u = shared_oxeye, uid()
    one = rules.create(rule_body(f"dup one {u}", "SELECT 'a' AS k, 1.0 AS value", threshold=5))
    two = rules.create(rule_body(f"dup two {u}", "SELECT 'a' AS k, 1.0 AS value", threshold=5))

    same_name = rule_body(one["name"], "SELECT 2.0 AS value", threshold=5)
    again = call(server, "POST", "/api/v1/alerts/rules", same_name)
    assert again.status_code in (400, 409), again.text
    message = error_message(again)
    words = (one["name"], "exist", "duplicate", "already", "unique")
    assert any(w in message.lower() for w in words), message
    assert [r["id"] for r in all_rules(server) if r["name"] == one["name"]] == [one["id"]]

    rename = call(server, "PUT", f"/api/v1/alerts/rules/{two['id']}", same_name)
    assert rename.status_code in (400, 409), rename.text
    error_message(rename)
    assert rules.get(two["id"])["name"] == two["name"]


VALID = rule_body("valid", "SELECT 'a' AS k, 1.0 AS value", threshold=5)
# (id, changes to VALID (None removes the field), words of which the message must contain one,
#  whether a dry run must refuse it too)
INVALID: list[tuple[str, dict[str, Any], list[str], bool]] = [
    ("bad-sql", {"sql": "SELEC 1.0 AS value"}, ["selec", "syntax", "expected", "pars"], True),
    ("unknown-column", {"sql": "SELECT service_name, no_such_column AS value FROM spans"},
     ["no_such_column"], True),
    ("unknown-table", {"sql": "SELECT 1.0 AS value FROM no_such_table"}, ["no_such_table"], True),
    ("no-value-column", {"sql": "SELECT 'a' AS k, 1.0 AS v"}, ["value"], True),
    ("text-value", {"sql": "SELECT 'a' AS k, 'high' AS value"}, ["value", "numeric"], True),
    ("bad-op", {"condition": {"op": "=>", "threshold": 1}}, ["=>", "op"], True),
    ("bad-threshold", {"condition": {"op": ">", "threshold": "high"}}, ["threshold", "high"], True),
    ("bad-interval", {"interval": "soon"}, ["soon", "interval", "duration"], True),
    ("bad-for", {"for": "later"}, ["later", "for", "duration"], True),
    ("bad-severity", {"severity": "urgent"}, ["urgent", "severity"], True),
    ("missing-name", {"name": None}, ["name"], False),
    ("no-sql-nor-builder", {"sql": None}, ["sql", "builder"], True),
    ("unknown-builder", {"sql": None, "builder": {"kind": "nope", "window": "5m"}}, ["nope", "kind"], True),
    ("bad-builder-window", {"sql": None, "builder": {"kind": "error_rate", "window": "ages"}},
     ["ages", "window", "duration"], True),
]  # fmt: skip


@pytest.mark.parametrize("changes,words,dry_run", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_rules_are_refused(shared_oxeye: Oxeye, changes, words, dry_run):
    name = f"invalid {uid()}"
    body = {**VALID, "name": name, **changes}
    body = {k: v for k, v in body.items() if v is not None}
    endpoints = ["/api/v1/alerts/rules"] + (["/api/v1/alerts/rules/dry-run"] if dry_run else [])
    for endpoint in endpoints:
        r = call(shared_oxeye, "POST", endpoint, body)
        assert r.status_code == 400, f"{endpoint} {body}: HTTP {r.status_code}: {r.text}"
        message = error_message(r)
        assert any(w.lower() in message.lower() for w in words), f"{message!r} mentions none of {words}"
    assert rule_named(shared_oxeye, name) is None


# ---------------------------------------------------------------------------------------------
# Dry run


def test_dry_run(shared_oxeye: Oxeye, receiver: WebhookReceiver):
    server, u = shared_oxeye, uid()
    name = f"dry run {u}"
    sql = "SELECT 'a' AS k, 1.0 AS value UNION ALL SELECT 'b' AS k, 10.0 AS value"
    body = rule_body(
        name,
        sql,
        ">",
        5,
        labels={"team": "dry"},
        annotations={"summary": "k={{ $labels.k }}"},
        notify=[webhook(receiver, "/dry")],
    )
    out = expect(call(server, "POST", "/api/v1/alerts/rules/dry-run", body), 200)
    assert out["error"] is None, out
    assert out["sql"] == sql
    assert isinstance(out["elapsed_ms"], (int, float)) and out["elapsed_ms"] >= 0
    by_k = {i["labels"]["k"]: i for i in out["instances"]}
    assert set(by_k) == {"a", "b"} and len(out["instances"]) == 2, out
    assert (by_k["a"]["value"], by_k["a"]["active"]) == (1.0, False)
    assert (by_k["b"]["value"], by_k["b"]["active"]) == (10.0, True)
    assert by_k["b"]["labels"] == {"alertname": name, "severity": "warning", "team": "dry", "k": "b"}
    assert by_k["b"]["annotations"] == {"summary": "k=b"}

    # The same with the other operator: the condition decides `active`.
    at_most_one = {**body, "condition": {"op": "<=", "threshold": 1}}
    out = expect(call(server, "POST", "/api/v1/alerts/rules/dry-run", at_most_one), 200)
    assert {i["labels"]["k"]: i["active"] for i in out["instances"]} == {"a": True, "b": False}

    # Each builder compiles to SQL that runs (no data for these unique names: nothing active).
    svc = f"dry-svc-{u}"
    builders = [
        {"kind": "error_rate", "service": svc, "window": "5m"},
        {"kind": "error_rate", "service": svc, "operation": "GET /x", "window": "5m"},
        {"kind": "latency", "service": svc, "operation": "GET /x", "percentile": 99, "window": "5m"},
        {"kind": "log_count", "query": "timeout", "service": svc, "severity": "ERROR", "window": "5m"},
        {"kind": "metric", "name": f"dry.metric.{u}", "aggregation": "avg", "filters": {"k": "v"},
         "group_by": ["service_name"], "window": "5m"},
    ]  # fmt: skip
    for builder in builders:
        b = {k: v for k, v in body.items() if k != "sql"} | {"builder": builder}
        out = expect(call(server, "POST", "/api/v1/alerts/rules/dry-run", b), 200)
        assert out["error"] is None, (builder, out)
        assert isinstance(out["sql"], str) and out["sql"].strip(), (builder, out)
        assert not any(i["active"] for i in out["instances"]), (builder, out)

    # A dry run creates nothing and notifies no one.
    assert rule_named(server, name) is None
    time.sleep(QUIET_S)
    assert receiver.received(method=None) == []


# ---------------------------------------------------------------------------------------------
# Pending -> firing -> resolved


def test_fires_after_for_and_resolves(shared_oxeye: Oxeye, rules: Rules, receiver: WebhookReceiver):
    server, u = shared_oxeye, uid()
    svc, team = f"alert-errors-{u}", f"team-{u}"
    name = f"errors of {svc}"
    rule = rules.create(
        rule_body(
            name,
            recent_spans_sql(svc, 5, errors_only=True),
            ">",
            0,
            for_="2s",
            severity="critical",
            labels={"team": team},
            annotations={"summary": "{{ $labels.service_name }} has {{ $value }} errors"},
            notify=[webhook(receiver, "/hook")],
        )
    )
    rid = rule["id"]
    # Before any span: evaluated, no row, inactive.
    wait_until(
        lambda: (r := rules.get(rid))["last_evaluation"] is not None and r["state"] == "inactive",
        what="a first evaluation with no instance",
    )
    assert alerts_of(server, rid) == []

    with SpanFeeder(server, svc, errors=1):
        pending = wait_alert(server, rid, "pending")
        since = rfc3339_ns(pending["active_since"])
        assert pending["fired_at"] is None
        assert pending["labels"]["service_name"] == svc
        assert receiver.received() == [], "notified while pending"

        (post,) = receiver.wait_for(1, "/hook", "firing")
        assert post.time_ns >= since + 2 * S - EPS_NS, "fired before `for` (2s) had elapsed"
        firing = wait_alert(server, rid, "firing")
        assert rfc3339_ns(firing["active_since"]) == since
        fired_at = rfc3339_ns(firing["fired_at"])
        assert since + 2 * S - EPS_NS <= fired_at <= since + 2 * S + int((INTERVAL_S + 1.5) * S), firing
        assert firing["silenced"] is False
        assert rules.get(rid)["state"] == "firing"

        # The notification.
        body = post.body
        assert post.headers.get("content-type", "").startswith("application/json"), post.headers
        assert body["version"] == "1"
        assert (body["status"], body["rule_name"], body["error"]) == ("firing", name, None)
        assert body["rule"] == {"id": rid, "name": name, "severity": "critical"}
        assert body["group_labels"]["alertname"] == name
        (alert,) = body["alerts"]
        labels = {"alertname": name, "severity": "critical", "service_name": svc, "team": team}
        assert alert["status"] == "firing"
        assert alert["labels"] == labels
        assert alert["value"] >= 1
        summary = alert["annotations"]["summary"]
        assert_value_in_text(summary, rf"{re.escape(svc)} has (\S+) errors", alert["value"])
        assert alert["ends_at"] is None
        assert since - EPS_NS <= rfc3339_ns(alert["starts_at"]) <= post.time_ns
        assert alert["fingerprint"] == firing["fingerprint"]
        assert firing["labels"] == labels

        # Still firing: nothing more (repeat_interval is 4h).
        time.sleep(QUIET_S)
        assert_counts(receiver, "/hook", firing=1)
        assert wait_alert(server, rid, "firing")["fired_at"] == firing["fired_at"]

    # No more error spans: no row after ~5 s, resolved once.
    (resolved,) = receiver.wait_for(1, "/hook", "resolved", timeout=30)
    (ralert,) = resolved.body["alerts"]
    assert (resolved.body["rule_name"], ralert["status"]) == (name, "resolved")
    assert ralert["labels"] == labels
    assert ralert["fingerprint"] == firing["fingerprint"]
    assert ralert["ends_at"] is not None and rfc3339_ns(ralert["ends_at"]) >= fired_at
    time.sleep(QUIET_S)
    assert_counts(receiver, "/hook", firing=1, resolved=1)
    assert alerts_of(server, rid) == []
    assert rules.get(rid)["state"] == "inactive"

    # History: the API ...
    events = wait_until(lambda: e if len(e := history(server, rid)) >= 3 else None, what="3 history events")
    assert transitions(events) == LIFECYCLE, events
    assert all(e["rule_name"] == name and e["labels"]["service_name"] == svc for e in events), events
    assert all(e["fingerprint"] == firing["fingerprint"] for e in events), events
    assert rfc3339_ns(events[1]["time"]) - rfc3339_ns(events[0]["time"]) >= 2 * S - EPS_NS, events
    assert events[0]["value"] >= 1 and events[1]["value"] >= 1
    # ... and SQL.
    rows = server.wait_rows(
        f"""SELECT from_state, to_state, labels['service_name'] AS svc, severity, rule_id
            FROM alert_events WHERE rule_name = '{name}' ORDER BY time""",
        3,
    )
    assert [(r["from_state"], r["to_state"]) for r in rows] == LIFECYCLE
    assert {(r["svc"], r["severity"], r["rule_id"]) for r in rows} == {(svc, "critical", rid)}
    rows = server.wait_rows(
        f"SELECT status, ok, attempt FROM alert_notifications WHERE rule_name = '{name}' ORDER BY time", 2
    )
    assert [(r["status"], r["ok"]) for r in rows] == [("firing", True), ("resolved", True)]


def test_error_rate_builder(shared_oxeye: Oxeye, rules: Rules, receiver: WebhookReceiver):
    server, u = shared_oxeye, uid()
    svc = f"alert-rate-{u}"
    name = f"error rate of {svc}"
    rule = rules.create(
        {
            "name": name,
            "builder": {"kind": "error_rate", "service": svc, "window": "10s"},
            "condition": {"op": ">", "threshold": 20},
            "interval": INTERVAL,
            "for": "0s",
            "annotations": {"summary": "{{ $labels.service_name }} fails {{ $value }}%"},
            "notify": [webhook(receiver, "/rate")],
        }
    )
    assert svc in rule["sql"], rule["sql"]

    with SpanFeeder(server, svc, errors=1, oks=1) as feeder:  # 50% errors
        (post,) = receiver.wait_for(1, "/rate", "firing")
        (alert,) = post.body["alerts"]
        assert alert["labels"]["service_name"] == svc and alert["labels"]["alertname"] == name
        assert 20 < alert["value"] <= 100, alert
        summary = alert["annotations"]["summary"]
        assert_value_in_text(summary, rf"{re.escape(svc)} fails (\S+)%", alert["value"])
        firing = wait_alert(server, rule["id"], "firing")
        assert firing["value"] > 20

        feeder.set_mix(errors=0, oks=2)  # the errors age out of the 10 s window
        (resolved,) = receiver.wait_for(1, "/rate", "resolved", timeout=45)
        assert resolved.body["alerts"][0]["labels"]["service_name"] == svc
        time.sleep(QUIET_S)
    assert_counts(receiver, "/rate", firing=1, resolved=1)
    assert alerts_of(server, rule["id"]) == []


# ---------------------------------------------------------------------------------------------
# Channels: Alertmanager, Slack, named channels


@pytest.fixture
def alertmanager(tmp_path):
    if not ALERTMANAGER_BINARY.exists():
        pytest.skip(
            f"Prometheus Alertmanager not found at {ALERTMANAGER_BINARY} "
            "(Debian package prometheus-alertmanager, installed by scripts/test; or set ALERTMANAGER_BIN)"
        )
    am = Alertmanager(tmp_path / "alertmanager")
    try:
        am.start()
        yield am
    finally:
        am.stop()


def test_alertmanager(shared_oxeye: Oxeye, rules: Rules, alertmanager: Alertmanager):
    server, u = shared_oxeye, uid()
    svc, team = f"alert-am-{u}", f"team-{u}"
    name = f"alertmanager {svc}"
    rules.create(
        rule_body(
            name,
            recent_spans_sql(svc, 5),
            labels={"team": team},
            annotations={"summary": "{{ $labels.service_name }} is sending spans"},
            notify=[{"type": "alertmanager", "url": alertmanager.url}],
        )
    )

    def ours() -> list[dict[str, Any]]:
        return [a for a in alertmanager.alerts() if a["labels"].get("alertname") == name]

    with SpanFeeder(server, svc, errors=0, oks=1):
        try:
            (alert,) = wait_until(ours, timeout=30, what=f"alert {name!r} in Alertmanager")
        except AssertionError as e:
            raise AssertionError(f"{e}\nalertmanager log:\n{alertmanager.log_tail()}") from None
        want = {"alertname": name, "severity": "warning", "service_name": svc, "team": team}
        assert {k: alert["labels"].get(k) for k in want} == want, alert
        assert alert["annotations"].get("summary") == f"{svc} is sending spans"
        assert alert["status"]["state"] == "active"
        assert rfc3339_ns(alert["startsAt"]) <= time.time_ns()
    # Resolved: oxeye sends the alert again with endsAt set, and Alertmanager stops listing it.
    wait_until(lambda: ours() == [], timeout=40, what=f"alert {name!r} resolved in Alertmanager")
    rows = server.wait_rows(
        f"SELECT status, ok FROM alert_notifications WHERE rule_name = '{name}' ORDER BY time", 2
    )
    assert [(r["status"], r["ok"]) for r in rows] == [("firing", True), ("resolved", True)]


def test_slack_format(shared_oxeye: Oxeye, rules: Rules, receiver: WebhookReceiver):
    name = f"slack {uid()}"
    rules.create(
        rule_body(
            name,
            "SELECT 'slack' AS k, 1.0 AS value",
            annotations={"summary": "the slack test"},
            notify=[{"type": "slack", "url": f"{receiver.url}/slack"}],
        )
    )
    (post,) = receiver.wait_for(1, "/slack")
    assert post.headers.get("content-type", "").startswith("application/json"), post.headers
    assert isinstance(post.body, dict), post
    assert isinstance(post.body.get("text"), str) and post.body["text"].strip(), post.body
    assert name in post.body["text"], post.body
    time.sleep(QUIET_S)
    assert len(receiver.received("/slack")) == 1


def test_named_channel(shared_oxeye: Oxeye, rules: Rules, receiver: WebhookReceiver):
    server, u = shared_oxeye, uid()
    channel = f"ops-{u}"

    def channels() -> list[dict[str, Any]]:
        return [c for c in server.get_json("/api/v1/alerts/channels")["channels"] if c["name"] == channel]

    def fields(c: dict[str, Any]) -> dict[str, Any]:
        return {k: c.get(k) for k in ("name", "type", "url")}

    old = {"name": channel, "type": "webhook", "url": f"{receiver.url}/old"}
    assert fields(expect(call(server, "POST", "/api/v1/alerts/channels", old), 201)) == old
    new = {**old, "url": f"{receiver.url}/channel"}  # the same name replaces it
    assert fields(expect(call(server, "POST", "/api/v1/alerts/channels", new), 201)) == new
    assert [fields(c) for c in channels()] == [new]

    name = f"channel rule {u}"
    rule = rules.create(rule_body(name, "SELECT 'chan' AS k, 1.0 AS value", notify=[{"channel": channel}]))
    assert rule["notify"] == [{"channel": channel}]
    (post,) = receiver.wait_for(1, "/channel", "firing")
    assert post.body["rule_name"] == name
    assert post.body["alerts"][0]["labels"]["k"] == "chan"
    time.sleep(QUIET_S)
    assert_counts(receiver, "/channel", firing=1)
    assert receiver.received("/old") == []

    rules.delete(rule["id"])
    r = call(server, "DELETE", f"/api/v1/alerts/channels/{channel}")
    assert r.status_code in (200, 204), r.text
    assert channels() == []


# ---------------------------------------------------------------------------------------------
# Delivery retries, query errors, silences


def test_retries_failed_deliveries(shared_oxeye: Oxeye, rules: Rules):
    server = shared_oxeye
    name = f"retry {uid()}"
    with WebhookReceiver(fail_first=2, fail_status=500) as receiver:
        rules.create(
            rule_body(name, "SELECT 'retry' AS k, 1.0 AS value", notify=[webhook(receiver, "/retry")])
        )
        posts = receiver.wait_for(3, "/retry", timeout=30)
        time.sleep(QUIET_S)
        posts = receiver.received("/retry")
    assert [p.answered for p in posts] == [500, 500, 200], posts
    assert [p.status for p in posts] == ["firing"] * 3
    assert {p.body["rule_name"] for p in posts} == {name}
    # The same notification each time (sent_at may differ).
    assert len({json.dumps(p.body["alerts"], sort_keys=True) for p in posts}) == 1, posts
    # Backoff 1 s, then 2 s (a little early is allowed for timer resolution).
    gaps = [(b.time_ns - a.time_ns) / S for a, b in zip(posts, posts[1:], strict=False)]
    assert gaps[0] >= 0.8 and gaps[1] >= 1.6, f"retry gaps {gaps}"

    rows = server.wait_rows(
        f"""SELECT attempt, ok, status, error FROM alert_notifications
            WHERE rule_name = '{name}' ORDER BY attempt""",
        3,
    )
    assert [(r["attempt"], r["ok"], r["status"]) for r in rows] == [
        (1, False, "firing"),
        (2, False, "firing"),
        (3, True, "firing"),
    ], rows
    assert all(r["error"] and "500" in r["error"] for r in rows[:2]), rows
    assert not rows[2]["error"], rows


def test_query_error_state(shared_oxeye: Oxeye, rules: Rules, receiver: WebhookReceiver):
    server, u = shared_oxeye, uid()
    svc = f"alert-cast-{u}"
    name = f"query error {u}"
    # This SQL must fail when it is executed, not when the rule is validated: the cast reads the
    # span names ('GET /alert' is no number), so there is no constant to fold while planning, and
    # there is no span of `svc` yet when the rule is created (even a validation that runs the
    # query gets no row). The type of `value` is DOUBLE, so it passes the schema check.
    sql = f"SELECT service_name, CAST(name AS DOUBLE) AS value FROM spans WHERE service_name = '{svc}'"
    rule = rules.create(rule_body(name, sql, notify=[webhook(receiver, "/error")]))
    rid = rule["id"]

    with SpanFeeder(server, svc, errors=0, oks=1, period=3600):  # one batch is enough
        failing = wait_rule_state(server, rid, "error")
    assert failing["last_evaluation"]["error"], failing
    (alert,) = wait_until(
        lambda: [a for a in alerts_of(server, rid) if a["state"] == "error"], what="an error instance"
    )
    assert alert["rule_name"] == name

    (post,) = receiver.wait_for(1, "/error", "error")[:1]
    assert post.body["rule_name"] == name
    message = post.body["error"]
    assert isinstance(message, str) and "cast" in message.lower(), post.body
    assert receiver.received("/error", "firing") == []

    events = wait_until(
        lambda: [e for e in history(server, rid) if e["to"] == "error"], what="an error event in the history"
    )
    assert events[0]["message"], events

    # A fixed query leaves the error state.
    fixed = rule_body(
        name,
        f"SELECT service_name, CAST(count(*) AS DOUBLE) AS value FROM spans WHERE service_name = '{svc}' "
        "GROUP BY service_name",
        ">",
        1000,
        notify=[webhook(receiver, "/error")],
    )
    expect(call(server, "PUT", f"/api/v1/alerts/rules/{rid}", fixed), 200)
    wait_until(
        lambda: (r := rules.get(rid))["state"] == "inactive"
        and r["last_evaluation"] is not None
        and r["last_evaluation"]["error"] is None,
        what="the fixed rule evaluated without an error",
    )
    wait_until(lambda: alerts_of(server, rid) == [], what="no error instance any more")


def test_silence(shared_oxeye: Oxeye, rules: Rules, receiver: WebhookReceiver):
    server, u = shared_oxeye, uid()
    name, team = f"silenced {u}", f"sil-{u}"
    silence = expect(
        call(
            server,
            "POST",
            "/api/v1/alerts/silences",
            {
                "matchers": [
                    {"name": "alertname", "op": "=", "value": name},
                    {"name": "team", "op": "=~", "value": "sil-.*"},
                ],
                "duration": "1h",
                "comment": "e2e",
                "created_by": "test_alerts",
            },
        ),
        201,
    )
    assert silence["status"] == "active", silence
    length = rfc3339_ns(silence["ends_at"]) - rfc3339_ns(silence["starts_at"])
    assert length == pytest.approx(3600 * S, abs=2 * S), silence
    assert (silence["comment"], silence["created_by"]) == ("e2e", "test_alerts")
    assert len(silence["matchers"]) == 2

    rule = rules.create(
        rule_body(
            name,
            "SELECT 'quiet' AS k, 1.0 AS value",
            labels={"team": team},
            notify=[webhook(receiver, "/silence")],
        )
    )
    alert = wait_alert(server, rule["id"], "firing", silenced=True)
    assert alert["labels"]["team"] == team
    time.sleep(QUIET_S)
    assert receiver.received() == [], "notified although silenced"

    r = call(server, "DELETE", f"/api/v1/alerts/silences/{silence['id']}")
    assert r.status_code in (200, 204), r.text
    listed = [s for s in server.get_json("/api/v1/alerts/silences")["silences"] if s["id"] == silence["id"]]
    assert [s["status"] for s in listed] == ["expired"], listed

    (post,) = receiver.wait_for(1, "/silence", "firing")
    assert post.body["rule_name"] == name
    assert wait_alert(server, rule["id"], "firing", silenced=False)
    time.sleep(QUIET_S)
    assert_counts(receiver, "/silence", firing=1)


# ---------------------------------------------------------------------------------------------
# Rules file


def rules_file_text(receiver: WebhookReceiver, name: str, threshold: float) -> str:
    q = json.dumps  # a TOML basic string is a JSON string for this ASCII text
    return f"""\
[[channel]]
name = "ops"
type = "webhook"
url = {q(receiver.url + "/file")}

[[rule]]
name = {q(name)}
sql = "SELECT 'a' AS k, 1.0 AS value"
condition = {{ op = ">", threshold = {threshold} }}
interval = "1s"
for = "0s"
severity = "info"
labels = {{ team = "core" }}
annotations = {{ summary = "k={{{{ $labels.k }}}} v={{{{ $value }}}}" }}
notify = [{{ channel = "ops" }}]
"""


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_rules_file(oxeye_factory, tmp_path: Path, receiver: WebhookReceiver):
    name = f"file rule {uid()}"
    path = tmp_path / "alert-rules.toml"
    write_atomically(path, rules_file_text(receiver, name, 0))
    server = oxeye_factory(alert_rules_file=path)

    rule = wait_until(lambda: rule_named(server, name), timeout=15, what=f"file rule {name!r}")
    assert rule["source"] == "file"
    assert rule["sql"] == "SELECT 'a' AS k, 1.0 AS value"
    assert rule["condition"] == {"op": ">", "threshold": 0}
    assert (rule["severity"], rule["labels"]) == ("info", {"team": "core"})
    assert rule["notify"] == [{"channel": "ops"}]

    (post,) = receiver.wait_for(1, "/file", "firing")
    (alert,) = post.body["alerts"]
    assert post.body["rule_name"] == name
    assert alert["labels"] == {"alertname": name, "severity": "info", "team": "core", "k": "a"}
    assert_value_in_text(alert["annotations"]["summary"], r"k=a v=(\S+)", 1.0)

    # The file owns the rule.
    put = call(server, "PUT", f"/api/v1/alerts/rules/{rule['id']}", rule_body(name, "SELECT 2.0 AS value"))
    assert put.status_code == 409, put.text
    error_message(put)
    delete = call(server, "DELETE", f"/api/v1/alerts/rules/{rule['id']}")
    assert delete.status_code == 409, delete.text
    error_message(delete)
    assert rule_named(server, name)["sql"] == rule["sql"]

    # Editing the file: 1.0 > 5 no longer holds -> resolved.
    write_atomically(path, rules_file_text(receiver, name, 5))
    wait_until(
        lambda: (r := rule_named(server, name)) and r["condition"]["threshold"] == 5,
        timeout=15,
        what="the edited rules file reloaded",
    )
    receiver.wait_for(1, "/file", "resolved", timeout=20)
    time.sleep(QUIET_S)
    assert_counts(receiver, "/file", firing=1, resolved=1)
    assert rule_named(server, name)["source"] == "file"


# ---------------------------------------------------------------------------------------------
# Restarts


def test_restart_keeps_pending_and_firing_state(oxeye_factory, make_rules, receiver: WebhookReceiver):
    server = oxeye_factory()
    rules = make_rules(server)
    u = uid()
    svc = f"alert-restart-{u}"
    name = f"restart {svc}"
    for_s = 5
    # Spans of the last 20 s: the condition keeps holding while the feeder is paused for a restart.
    rule = rules.create(
        rule_body(name, recent_spans_sql(svc, 20), for_=f"{for_s}s", notify=[webhook(receiver, "/r")])
    )
    rid = rule["id"]

    def firing_posts() -> list[Received]:
        return receiver.received("/r", "firing")

    with SpanFeeder(server, svc, errors=0, oks=1) as feeder:
        pending = wait_alert(server, rid, "pending")
        since_text = pending["active_since"]
        since = rfc3339_ns(since_text)
        due = since + for_s * S

        # Restart while pending.
        with feeder.paused():
            server.restart()
        ready = time.time_ns()
        after = wait_until(lambda: alerts_of(server, rid), timeout=10, what="the alert after the restart")
        assert len(after) == 1 and after[0]["state"] in ("pending", "firing"), after
        assert after[0]["active_since"] == since_text, "the restart reset active_since"
        if after[0]["state"] == "firing":  # only if it was due while the server restarted
            assert rfc3339_ns(after[0]["fired_at"]) >= due - EPS_NS, after

        (post,) = receiver.wait_for(1, "/r", "firing")
        assert post.time_ns >= due - EPS_NS, "fired before `for` had elapsed since the original active_since"
        # About when it would have fired without the restart (or right after it, if it was due
        # while the server was down).
        assert post.time_ns <= max(due, ready) + int((INTERVAL_S + 2) * S), (post.time_ns - due) / S
        firing = wait_alert(server, rid, "firing")
        assert firing["active_since"] == since_text
        assert rfc3339_ns(firing["fired_at"]) >= due - EPS_NS

        # Restart while firing: no second firing notification.
        with feeder.paused():
            server.restart()
        ready = time.time_ns()
        again = wait_alert(server, rid, "firing", timeout=10)
        assert (again["active_since"], again["fired_at"]) == (since_text, firing["fired_at"])
        settled = ready + int(3.5 * INTERVAL_S * S)
        wait_until(
            lambda: (ev := rules.get(rid)["last_evaluation"]) and rfc3339_ns(ev["at"]) >= settled,
            what="3 evaluations after the second restart",
        )
        assert len(firing_posts()) == 1, firing_posts()
        again = wait_alert(server, rid, "firing")
        assert (again["active_since"], again["fired_at"]) == (since_text, firing["fired_at"])

    # No more spans: resolved (once) when the last ones leave the 20 s window.
    receiver.wait_for(1, "/r", "resolved", timeout=45)
    time.sleep(QUIET_S)
    assert_counts(receiver, "/r", firing=1, resolved=1)
    assert transitions(history(server, rid)) == LIFECYCLE
    rows = server.wait_rows(
        f"SELECT status, ok FROM alert_notifications WHERE rule_name = '{name}' ORDER BY time", 2
    )
    assert [(r["status"], r["ok"]) for r in rows] == [("firing", True), ("resolved", True)]
