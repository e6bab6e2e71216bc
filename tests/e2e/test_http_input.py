"""OTLP input over HTTP (curl and raw sockets) and gRPC (grpcio): the same trace in every
encoding is stored the same, partial success rejects only invalid spans, and malformed,
oversized or mislabelled requests get OTLP's answers without harming the server."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from oxeye_client import (
    Oxeye,
    key_values,
    logs_request,
    random_span_id,
    random_trace_id,
    simple_trace_request,
    span,
    trace_request,
    wait_until,
)

# ---------------------------------------------------------------------------------------------
# One trace, written once as OTLP/JSON (by hand, to exercise the JSON mapping) and once as
# protobuf. Only the trace id differs between copies.

T0 = 1_700_000_000_123_456_789  # ns; not a multiple of 1000, so precision loss would show
ROOT_ID = bytes.fromhex("a1a2a3a4a5a6a7a8")
CHILD_ID = bytes.fromhex("b1b2b3b4b5b6b7b8")
LINKED_TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
LINKED_SPAN = bytes.fromhex("b7ad6b7169203331")
SERVICE = "http-input"

ROOT_ATTRS = {
    "http.request.method": "POST",
    "http.response.status_code": 201,
    "retries": 3,
    "ratio": 0.5,
    "sampled": True,
    "tags": ["x", "y"],
    "sizes": [1, 2, 300000000000],
}


def av_json(v) -> dict:
    """OTLP/JSON AnyValue. Ints alternate between string and number form (both are valid)."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v) if v % 2 else v}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, str):
        return {"stringValue": v}
    if isinstance(v, bytes):
        return {"bytesValue": base64.b64encode(v).decode()}
    if isinstance(v, list):
        return {"arrayValue": {"values": [av_json(x) for x in v]}}
    raise TypeError(type(v))


def kv_json(attrs: dict) -> list[dict]:
    return [{"key": k, "value": av_json(v)} for k, v in attrs.items()]


def sample_json(trace_id: bytes) -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": kv_json({"service.name": SERVICE, "host.name": "box-1", "replicas": 3})
                },
                "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
                "scopeSpans": [
                    {
                        "scope": {
                            "name": "e2e.http",
                            "version": "0.1",
                            "attributes": kv_json({"scope.attr": "s"}),
                        },
                        "spans": [
                            {
                                "traceId": trace_id.hex(),
                                "spanId": ROOT_ID.hex(),
                                "traceState": "vendor=1",
                                "name": "POST /orders",
                                "kind": 2,
                                "startTimeUnixNano": str(T0),  # int64 as string ...
                                "endTimeUnixNano": T0 + 5_000_000,  # ... and as number
                                "attributes": kv_json(ROOT_ATTRS),
                                "events": [
                                    {
                                        "timeUnixNano": T0 + 1_000_001,
                                        "name": "accepted",
                                        "attributes": kv_json({"queue.len": 7}),
                                    }
                                ],
                                "status": {"code": 2, "message": "failed downstream"},
                                "flags": 1,
                            },
                            {
                                "traceId": trace_id.hex(),
                                "spanId": CHILD_ID.hex(),
                                "parentSpanId": ROOT_ID.hex(),
                                "name": "INSERT orders",
                                "kind": 3,
                                "startTimeUnixNano": T0 + 1_000_000,
                                "endTimeUnixNano": str(T0 + 4_000_000),
                                "attributes": kv_json({"db.system.name": "postgresql"}),
                                "links": [
                                    {
                                        "traceId": LINKED_TRACE.hex(),
                                        "spanId": LINKED_SPAN.hex(),
                                        "traceState": "k=v",
                                        "attributes": kv_json({"link.n": 1}),
                                    }
                                ],
                                "status": {"code": 1},
                            },
                        ],
                    }
                ],
            }
        ]
    }


def sample_protobuf(trace_id: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    root = span(
        trace_id,
        ROOT_ID,
        "POST /orders",
        start_ns=T0,
        duration_ns=5_000_000,
        attributes=ROOT_ATTRS,
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        trace_state="vendor=1",
        events=[
            trace_pb2.Span.Event(
                time_unix_nano=T0 + 1_000_001, name="accepted", attributes=key_values({"queue.len": 7})
            )
        ],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="failed downstream"),
        flags=1,
    )
    child = span(
        trace_id,
        CHILD_ID,
        "INSERT orders",
        start_ns=T0 + 1_000_000,
        duration_ns=3_000_000,
        attributes={"db.system.name": "postgresql"},
        parent_span_id=ROOT_ID,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        links=[
            trace_pb2.Span.Link(
                trace_id=LINKED_TRACE,
                span_id=LINKED_SPAN,
                trace_state="k=v",
                attributes=key_values({"link.n": 1}),
            )
        ],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK),
    )
    req = trace_request(
        [root, child], service=SERVICE, scope="e2e.http", resource={"host.name": "box-1", "replicas": 3}
    )
    req.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    scope = req.resource_spans[0].scope_spans[0].scope
    scope.version = "0.1"
    scope.attributes.extend(key_values({"scope.attr": "s"}))
    return req


def normalised_trace(server: Oxeye, trace_id: bytes) -> dict:
    t = server.wait_trace(trace_id.hex(), 2)
    return json.loads(json.dumps(t).replace(trace_id.hex(), "<trace>"))


def assert_sample_trace(t: dict) -> None:
    """The stored sample trace, field by field."""
    assert t["span_count"] == 2 and t["services"] == [SERVICE]
    root, child = t["spans"]
    assert root["span_id"] == ROOT_ID.hex() and root["parent_span_id"] is None
    assert (root["name"], root["kind"], root["trace_state"], root["flags"]) == (
        "POST /orders",
        "SERVER",
        "vendor=1",
        1,
    )
    assert (root["start_time_unix_nano"], root["end_time_unix_nano"]) == (str(T0), str(T0 + 5_000_000))
    assert root["status"] == {"code": "ERROR", "message": "failed downstream"}
    assert root["attributes"] == ROOT_ATTRS
    assert {k: type(v) for k, v in root["attributes"].items()} == {k: type(v) for k, v in ROOT_ATTRS.items()}
    (event,) = root["events"]
    assert (event["name"], event["time_unix_nano"], event["attributes"]) == (
        "accepted",
        str(T0 + 1_000_001),
        {"queue.len": 7},
    )
    assert root["resource"] == {
        "attributes": {"service.name": SERVICE, "host.name": "box-1", "replicas": 3},
        "schema_url": "https://opentelemetry.io/schemas/1.26.0",
    }
    assert root["scope"] == {"name": "e2e.http", "version": "0.1", "attributes": {"scope.attr": "s"}}
    assert child["parent_span_id"] == ROOT_ID.hex()
    assert (child["name"], child["kind"], child["status"]["code"]) == ("INSERT orders", "CLIENT", "OK")
    assert child["start_time_unix_nano"] == str(T0 + 1_000_000)
    assert child["duration_ns"] == 3_000_000
    (link,) = child["links"]
    assert (link["trace_id"], link["span_id"], link["trace_state"], link["attributes"]) == (
        LINKED_TRACE.hex(),
        LINKED_SPAN.hex(),
        "k=v",
        {"link.n": 1},
    )


# ---------------------------------------------------------------------------------------------
# Transport helpers


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


def curl_post(url: str, data_file: Path, headers: dict[str, str]) -> Reply:
    out = data_file.with_suffix(data_file.suffix + ".response")
    cmd = ["curl", "-sS", "--max-time", "20", "-o", str(out), "-w", "%{http_code} %{content_type}"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd += ["--data-binary", f"@{data_file}", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    code, _, ctype = done.stdout.partition(" ")
    return Reply(int(code), ctype, out.read_bytes())


def raw_http_post(
    addr: str, path: str, headers: dict[str, str], body: Iterable[bytes], timeout: float = 15
) -> tuple[Reply, float, int]:
    """POSTs over a plain socket: the body is streamed by a thread while the response is read,
    so a server that answers early (and closes) is seen as it is. Returns the reply, seconds
    until the status line arrived, and the number of body bytes the socket took."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    head = f"POST {path} HTTP/1.1\r\nHost: {addr}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sent = 0
    stop = threading.Event()

    def send():
        nonlocal sent
        try:
            sock.sendall(head.encode() + b"\r\n")
            for chunk in body:
                if stop.is_set():
                    return
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed; the reply tells what happened

    started = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    first_line_at = None
    try:
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            if first_line_at is None and b"\r\n" in data:
                first_line_at = time.monotonic() - started
            if reply_complete(data):
                break
    finally:
        stop.set()
        sock.close()
        sender.join(timeout=5)
    assert first_line_at is not None, f"no HTTP response (got {data!r})"
    return parse_reply(data), first_line_at, sent


def reply_complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(rest) >= int(v)
    return False


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Reply(int(lines[0].split()[1]), headers.get("content-type", ""), body)


def chunked(payload: bytes, chunk_size: int = 64 * 1024) -> Iterable[bytes]:
    for i in range(0, len(payload), chunk_size):
        part = payload[i : i + chunk_size]
        yield b"%x\r\n%s\r\n" % (len(part), part)
    yield b"0\r\n\r\n"


def assert_still_serving(server: Oxeye) -> None:
    """A valid request after a bad one is accepted and stored."""
    req, tid = simple_trace_request(2, service="after-bad-input")
    server.export(req)
    server.wait_span_count(f"trace_id = '{tid}'", 2)


def rpc_status(reply: Reply) -> status_pb2.Status:
    assert reply.content_type.startswith("application/x-protobuf"), reply.content_type
    return status_pb2.Status.FromString(reply.body)


def big_request(approx_bytes: int) -> tuple[trace_service_pb2.ExportTraceServiceRequest, str]:
    """A valid request of about `approx_bytes` (spans with a 16 KiB attribute)."""
    tid = random_trace_id()
    n = max(1, approx_bytes // (16 * 1024 + 64))
    spans = [span(tid, name=f"big-{i}", attributes={"blob": "x" * 16 * 1024}) for i in range(n)]
    return trace_request(spans, service="big"), tid.hex()


# ---------------------------------------------------------------------------------------------
# The same trace in four encodings


def test_same_trace_in_every_http_encoding_is_stored_equal(shared_oxeye: Oxeye, tmp_path: Path):
    url = f"{shared_oxeye.otlp_http}/v1/traces"
    traces = {}

    tid = random_trace_id()
    (tmp_path / "trace.json").write_text(json.dumps(sample_json(tid)))
    reply = curl_post(url, tmp_path / "trace.json", {"Content-Type": "application/json"})
    assert reply.status == 200, reply
    assert reply.content_type.startswith("application/json")
    # A fully accepted request may leave partialSuccess unset (absent or null).
    assert int((json.loads(reply.body).get("partialSuccess") or {}).get("rejectedSpans", 0)) == 0
    traces["json"] = normalised_trace(shared_oxeye, tid)

    tid = random_trace_id()
    (tmp_path / "trace.json.gz").write_bytes(gzip.compress(json.dumps(sample_json(tid)).encode()))
    reply = curl_post(
        url, tmp_path / "trace.json.gz", {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert reply.status == 200, reply
    traces["json+gzip"] = normalised_trace(shared_oxeye, tid)

    if shutil.which("zstd"):
        tid = random_trace_id()
        (tmp_path / "trace.json").write_text(json.dumps(sample_json(tid)))
        subprocess.run(["zstd", "-q", "-f", str(tmp_path / "trace.json")], check=True)
        reply = curl_post(
            url, tmp_path / "trace.json.zst", {"Content-Type": "application/json", "Content-Encoding": "zstd"}
        )
        assert reply.status == 200, reply
        traces["json+zstd"] = normalised_trace(shared_oxeye, tid)

    tid = random_trace_id()
    (tmp_path / "trace.pb").write_bytes(sample_protobuf(tid).SerializeToString())
    reply = curl_post(url, tmp_path / "trace.pb", {"Content-Type": "application/x-protobuf"})
    assert reply.status == 200, reply
    assert reply.content_type.startswith("application/x-protobuf")
    assert (
        trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body).partial_success.rejected_spans
        == 0
    )
    traces["protobuf"] = normalised_trace(shared_oxeye, tid)

    assert_sample_trace(traces["protobuf"])
    for name, t in traces.items():
        assert t == traces["protobuf"], f"{name} differs from protobuf"


OTLP_ID_FIELDS = {"traceId", "spanId", "parentSpanId"}


def otlp_json_to_protobuf(doc: dict) -> trace_service_pb2.ExportTraceServiceRequest:
    """OTLP/JSON differs from the protobuf JSON mapping only in its hex ids."""

    def fix(v):
        if isinstance(v, dict):
            return {
                k: base64.b64encode(bytes.fromhex(x)).decode() if k in OTLP_ID_FIELDS else fix(x)
                for k, x in v.items()
            }
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return json_format.ParseDict(
        fix(doc), trace_service_pb2.ExportTraceServiceRequest(), ignore_unknown_fields=True
    )


def flat_spans(req: trace_service_pb2.ExportTraceServiceRequest) -> list[tuple[bytes, bytes, bytes]]:
    """(resource, scope, span) of every span, serialized and sorted: equal for requests that
    carry the same spans however they group them."""
    out = []
    for rs in req.resource_spans:
        resource = rs.resource.SerializeToString(deterministic=True) + rs.schema_url.encode()
        for ss in rs.scope_spans:
            scope = ss.scope.SerializeToString(deterministic=True) + ss.schema_url.encode()
            out += [(resource, scope, sp.SerializeToString(deterministic=True)) for sp in ss.spans]
    return sorted(out)


def test_trace_api_otlp_format_is_lossless(shared_oxeye: Oxeye):
    """Every OTLP field sent comes back from `?format=otlp`, and that JSON is accepted as input."""
    tid = random_trace_id()
    req = sample_protobuf(tid)
    root = req.resource_spans[0].scope_spans[0].spans[0]
    kvlist = common_pb2.KeyValueList(values=key_values({"a": 1, "b": ["x", 2.5]}))
    root.attributes.add(key="map", value=common_pb2.AnyValue(kvlist_value=kvlist))
    root.attributes.add(key="raw", value=common_pb2.AnyValue(bytes_value=b"\x00\xff\x10"))
    root.dropped_attributes_count, root.dropped_events_count, root.dropped_links_count = 3, 4, 5
    root.events[0].dropped_attributes_count = 6
    root.links.add(trace_id=LINKED_TRACE, span_id=LINKED_SPAN, flags=0x101, dropped_attributes_count=2)
    req.resource_spans[0].resource.dropped_attributes_count = 7
    req.resource_spans[0].scope_spans[0].schema_url = "https://example.com/scope-schema"
    shared_oxeye.export(req)
    shared_oxeye.wait_trace(tid.hex(), 2)

    otlp = shared_oxeye.trace(tid.hex(), fmt="otlp")
    assert flat_spans(otlp_json_to_protobuf(otlp)) == flat_spans(req)

    # oxeye's own output is valid OTLP/JSON input.
    copy_tid = random_trace_id()
    r = shared_oxeye.post_otlp(
        "traces", json.dumps(otlp).replace(tid.hex(), copy_tid.hex()).encode(), "application/json"
    )
    assert r.status_code == 200, r.text
    shared_oxeye.wait_trace(copy_tid.hex(), 2)
    assert normalised_trace(shared_oxeye, copy_tid) == normalised_trace(shared_oxeye, tid)


def test_json_int64_as_string_and_number(shared_oxeye: Oxeye):
    """Every int64/fixed64 field of the OTLP/JSON mapping may be a string or a number."""
    ids = {}
    for form in (str, int):
        tid = random_trace_id()
        body = sample_json(tid)
        s = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        s["startTimeUnixNano"] = form(T0)
        s["endTimeUnixNano"] = form(T0 + 5_000_000)
        s["attributes"] = [{"key": "n", "value": {"intValue": form(-9007199254740993)}}]  # beyond 2^53
        r = shared_oxeye.post_otlp("traces", json.dumps(body).encode(), "application/json")
        assert r.status_code == 200, r.text
        ids[form] = tid.hex()
    for tid in ids.values():
        rows = shared_oxeye.wait_rows(
            f"""SELECT CAST(start_time AS BIGINT) AS s, CAST(end_time AS BIGINT) AS e, attributes['n'] AS n
                FROM spans WHERE trace_id = '{tid}' AND name = 'POST /orders'""",
            1,
        )
        assert rows == [{"s": T0, "e": T0 + 5_000_000, "n": "-9007199254740993"}]
        root = shared_oxeye.trace(tid)["spans"][0]
        assert root["attributes"]["n"] == -9007199254740993


def test_json_ignores_unknown_fields_and_accepts_uppercase_hex_ids(shared_oxeye: Oxeye):
    tid = random_trace_id()
    body = sample_json(tid)
    body["resourceSpans"][0]["futureField"] = {"nested": [1, 2]}
    s = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    s["traceId"] = tid.hex().upper()
    s["spanId"] = ROOT_ID.hex().upper()
    s["notAnOtlpField"] = "ignored"
    r = shared_oxeye.post_otlp("traces", json.dumps(body).encode(), "application/json")
    assert r.status_code == 200, r.text
    assert_sample_trace(normalised_trace(shared_oxeye, tid))


# ---------------------------------------------------------------------------------------------
# Partial success and empty requests


def mixed_request() -> tuple[trace_service_pb2.ExportTraceServiceRequest, str]:
    """Three valid spans and one whose trace id has 5 bytes."""
    tid = random_trace_id()
    spans = [span(tid, name=f"valid-{i}") for i in range(3)]
    spans.insert(1, span(b"\x01\x02\x03\x04\x05", name="bad-trace-id"))
    return trace_request(spans, service="partial"), tid.hex()


def test_partial_success_protobuf(shared_oxeye: Oxeye):
    req, tid = mixed_request()
    r = shared_oxeye.post_otlp("traces", req.SerializeToString())
    assert r.status_code == 200, r.content
    partial = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 1
    assert partial.error_message
    rows = shared_oxeye.wait_rows(f"SELECT name FROM spans WHERE trace_id = '{tid}' ORDER BY name", 3)
    assert [r["name"] for r in rows] == ["valid-0", "valid-1", "valid-2"]
    assert shared_oxeye.sql_value("SELECT count(*) FROM spans WHERE name = 'bad-trace-id'") == 0


def test_partial_success_json(shared_oxeye: Oxeye):
    tid = random_trace_id()
    body = sample_json(tid)
    spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append({**spans[1], "spanId": "c1c2c3c4c5", "name": "bad-span-id"})  # 5-byte span id
    r = shared_oxeye.post_otlp("traces", json.dumps(body).encode(), "application/json")
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert partial["errorMessage"]
    shared_oxeye.wait_span_count(f"trace_id = '{tid.hex()}'", 2)


def test_all_zero_trace_id_is_rejected(shared_oxeye: Oxeye):
    tid = random_trace_id()
    req = trace_request([span(tid, name="good"), span(b"\x00" * 16, name="zero-trace-id")])
    r = shared_oxeye.post_otlp("traces", req.SerializeToString())
    assert r.status_code == 200
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_spans == 1
    shared_oxeye.wait_span_count(f"trace_id = '{tid.hex()}'", 1)


def test_partial_success_logs(shared_oxeye: Oxeye):
    req = logs_request(["kept", "bad trace id", "also kept"], service="partial-logs")
    records = req.resource_logs[0].scope_logs[0].log_records
    records[0].trace_id, records[0].span_id = random_trace_id(), random_span_id()
    records[1].trace_id = b"\x01\x02\x03"
    r = shared_oxeye.post_otlp("logs", req.SerializeToString())
    assert r.status_code == 200
    partial = logs_service_pb2.ExportLogsServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_log_records == 1 and partial.error_message
    rows = shared_oxeye.wait_rows(
        "SELECT body, trace_id, span_id FROM logs WHERE service_name = 'partial-logs' ORDER BY body", 2
    )
    assert rows == [
        {"body": "also kept", "trace_id": None, "span_id": None},
        {"body": "kept", "trace_id": records[0].trace_id.hex(), "span_id": records[0].span_id.hex()},
    ]


@pytest.mark.parametrize(
    "content_type, body",
    [("application/x-protobuf", b""), ("application/json", b"{}")],
    ids=["empty-protobuf", "empty-json"],
)
def test_empty_request_is_ok(shared_oxeye: Oxeye, content_type: str, body: bytes):
    for signal_path in ("traces", "logs", "metrics"):
        r = shared_oxeye.post_otlp(signal_path, body, content_type)
        assert r.status_code == 200, (signal_path, r.status_code, r.content)
        assert r.headers["Content-Type"].startswith(content_type)


# ---------------------------------------------------------------------------------------------
# Bad input: each is refused with the right answer, and the server carries on


def test_truncated_protobuf_is_400_with_rpc_status(shared_oxeye: Oxeye):
    good, _ = simple_trace_request(3)
    data = good.SerializeToString()
    r = shared_oxeye.post_otlp("traces", data[: len(data) - 3])
    reply = Reply(r.status_code, r.headers.get("Content-Type", ""), r.content)
    assert reply.status == 400, reply
    status = rpc_status(reply)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message
    assert_still_serving(shared_oxeye)


def test_invalid_json_is_400(shared_oxeye: Oxeye):
    r = shared_oxeye.post_otlp("traces", b'{"resourceSpans": [', "application/json")
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and body["message"]
    # Well-formed JSON of the wrong shape is malformed too.
    r = shared_oxeye.post_otlp("traces", b'{"resourceSpans": {"not": "a list"}}', "application/json")
    assert r.status_code == 400
    assert_still_serving(shared_oxeye)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"},
    ],
    ids=["content-type", "content-encoding"],
)
def test_unsupported_media_type_is_415(shared_oxeye: Oxeye, headers: dict[str, str]):
    req, tid = simple_trace_request(1)
    r = shared_oxeye.session.post(
        f"{shared_oxeye.otlp_http}/v1/traces", data=req.SerializeToString(), headers=headers, timeout=10
    )
    assert r.status_code == 415, r.content
    assert shared_oxeye.trace(tid) is None
    assert_still_serving(shared_oxeye)


def test_corrupt_gzip_is_400(shared_oxeye: Oxeye):
    req, _ = simple_trace_request(1)
    data = gzip.compress(req.SerializeToString())
    r = shared_oxeye.post_otlp("traces", data[:10] + b"\xff" * 20, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert_still_serving(shared_oxeye)


def test_declared_1gb_body_is_refused_without_reading_it(shared_oxeye: Oxeye):
    def body():
        # Offer at most 8 MiB; the server should answer long before reading it all.
        for _ in range(128):
            yield b"\0" * 65536

    reply, seconds, sent = raw_http_post(
        shared_oxeye.otlp_http_addr,
        "/v1/traces",
        {"Content-Type": "application/x-protobuf", "Content-Length": str(1 << 30)},
        body(),
    )
    assert reply.status == 413, reply
    assert seconds < 5, f"413 took {seconds:.1f}s"
    assert rpc_status(reply).message
    assert_still_serving(shared_oxeye)


@pytest.fixture(scope="module")
def small_limit_oxeye(module_oxeye_factory) -> Oxeye:
    return module_oxeye_factory(max_request_size="1MiB", max_decompressed_size="2MiB")


def test_chunked_body_over_the_limit_is_413(small_limit_oxeye: Oxeye):
    headers = {"Content-Type": "application/x-protobuf", "Transfer-Encoding": "chunked"}
    # Control: a chunked body under the limit is accepted.
    small, small_tid = big_request(512 * 1024)
    reply, _, _ = raw_http_post(
        small_limit_oxeye.otlp_http_addr, "/v1/traces", headers, chunked(small.SerializeToString())
    )
    assert reply.status == 200, reply
    wait_until(lambda: small_limit_oxeye.trace(small_tid), what="the small chunked trace")

    large, large_tid = big_request(3 * 1024 * 1024)
    reply, seconds, _ = raw_http_post(
        small_limit_oxeye.otlp_http_addr, "/v1/traces", headers, chunked(large.SerializeToString())
    )
    assert reply.status == 413, reply
    assert rpc_status(reply).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert small_limit_oxeye.trace(large_tid) is None
    assert_still_serving(small_limit_oxeye)


def test_content_length_over_the_limit_is_413(small_limit_oxeye: Oxeye):
    large, tid = big_request(3 * 1024 * 1024)
    r = small_limit_oxeye.post_otlp("traces", large.SerializeToString())
    assert r.status_code == 413
    assert small_limit_oxeye.trace(tid) is None
    assert_still_serving(small_limit_oxeye)


def test_gzip_bomb_is_refused(small_limit_oxeye: Oxeye):
    """Under 1 MiB compressed, 3 MiB decompressed (over --max-decompressed-size 2MiB)."""
    large, tid = big_request(3 * 1024 * 1024)
    data = gzip.compress(large.SerializeToString())
    assert len(data) < 1024 * 1024
    r = small_limit_oxeye.post_otlp("traces", data, headers={"Content-Encoding": "gzip"})
    assert r.status_code in (400, 413), r.status_code
    assert small_limit_oxeye.trace(tid) is None
    assert_still_serving(small_limit_oxeye)


# ---------------------------------------------------------------------------------------------
# Overload: retryable refusals


def retry_delay(status: status_pb2.Status) -> float | None:
    from google.rpc import error_details_pb2

    for detail in status.details:
        if detail.type_url.endswith("google.rpc.RetryInfo"):
            info = error_details_pb2.RetryInfo.FromString(detail.value)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def test_low_disk_refuses_writes_retryably(oxeye_factory):
    server = oxeye_factory(min_free_disk="1000TiB")  # more than any disk has
    req, tid = simple_trace_request(5)
    r = server.post_otlp("traces", req.SerializeToString())
    assert r.status_code in (429, 503), r.status_code
    assert int(r.headers["Retry-After"]) >= 1
    status = rpc_status(Reply(r.status_code, r.headers["Content-Type"], r.content))
    assert status.code in (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], grpc.StatusCode.UNAVAILABLE.value[0])
    assert retry_delay(status), "no RetryInfo in the Status"

    r = server.post_otlp("traces", json.dumps(sample_json(random_trace_id())).encode(), "application/json")
    assert r.status_code in (429, 503) and "Retry-After" in r.headers
    assert r.json()["code"] in (
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        grpc.StatusCode.UNAVAILABLE.value[0],
    )

    with grpc.insecure_channel(server.grpc_addr) as channel:
        with pytest.raises(grpc.RpcError) as e:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(req, timeout=10)
    assert e.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
    if e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # only retryable with RetryInfo
        trailers = dict(e.value.trailing_metadata() or ())
        assert retry_delay(status_pb2.Status.FromString(trailers["grpc-status-details-bin"]))

    assert server.span_count() == (0, 0)
    assert (
        server.metric("oxeye_collector_requests_total", signal="traces", protocol="http", outcome="ok") == 0
    )
    assert server.metric("oxeye_collector_requests_total", signal="traces", protocol="grpc") == 1


def test_max_unflushed_below_flush_size_does_not_block_writes(oxeye_factory):
    server = oxeye_factory(start=False, max_unflushed="256KiB", flush_age="1h")
    try:
        server.start()
    except AssertionError:
        # Refusing the configuration at startup is a fine answer too.
        assert server.proc.returncode != 0 and "max-unflushed" in server.log_of_last_start()
        return
    accepted = 0
    deadline = time.monotonic() + 10
    while accepted < 2 * 1024 * 1024 and time.monotonic() < deadline:
        req, _ = big_request(64 * 1024)
        r = server.post_otlp("traces", req.SerializeToString())
        if r.status_code == 200:
            accepted += req.ByteSize()
        else:
            assert r.status_code in (429, 503), r.status_code
            time.sleep(float(r.headers.get("Retry-After", "1")))  # as an OTLP client does
    assert accepted >= 2 * 1024 * 1024, f"only {accepted} bytes accepted in 10 s"


# ---------------------------------------------------------------------------------------------
# gRPC with grpcio directly

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def grpc_channel(shared_oxeye: Oxeye):
    with grpc.insecure_channel(shared_oxeye.grpc_addr) as channel:
        yield channel


def test_grpc_garbage_is_invalid_argument(shared_oxeye: Oxeye, grpc_channel):
    raw = grpc_channel.unary_unary(EXPORT_METHOD)  # no serializers: bytes in, bytes out
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x0a\xff\xff\xff\xff\x0f\x00garbage", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    # Still serving over gRPC.
    req, tid = simple_trace_request(1)
    trace_service_pb2_grpc.TraceServiceStub(grpc_channel).Export(req, timeout=10)
    wait_until(lambda: shared_oxeye.trace(tid), what="trace after garbage")


def test_grpc_partial_success(shared_oxeye: Oxeye, grpc_channel):
    req, tid = mixed_request()
    response = trace_service_pb2_grpc.TraceServiceStub(grpc_channel).Export(req, timeout=10)
    assert response.partial_success.rejected_spans == 1
    assert response.partial_success.error_message
    shared_oxeye.wait_span_count(f"trace_id = '{tid}'", 3)


def test_grpc_gzip(shared_oxeye: Oxeye, grpc_channel):
    tid = random_trace_id()
    response = trace_service_pb2_grpc.TraceServiceStub(grpc_channel).Export(
        sample_protobuf(tid), timeout=10, compression=grpc.Compression.Gzip
    )
    assert response.partial_success.rejected_spans == 0
    assert_sample_trace(normalised_trace(shared_oxeye, tid))


def test_grpc_over_the_size_limit_is_refused(small_limit_oxeye: Oxeye):
    large, tid = big_request(3 * 1024 * 1024)
    with grpc.insecure_channel(small_limit_oxeye.grpc_addr) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Export(large, timeout=10)
        small, small_tid = simple_trace_request(1)
        stub.Export(small, timeout=10)
    wait_until(lambda: small_limit_oxeye.trace(small_tid), what="trace after refusal")
    assert small_limit_oxeye.trace(tid) is None


# OTLP clients retry CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and
# DATA_LOSS always, and RESOURCE_EXHAUSTED only with RetryInfo. A request that is too large will
# never succeed, so its answer must not be one of those (gRPC's own code for "message larger than
# the limit" is RESOURCE_EXHAUSTED; the HTTP answer is a non-retryable 413).
OTLP_ALWAYS_RETRYABLE = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


def test_grpc_over_the_size_limit_is_not_retryable(small_limit_oxeye: Oxeye):
    large, _ = big_request(3 * 1024 * 1024)
    with grpc.insecure_channel(small_limit_oxeye.grpc_addr) as channel:
        with pytest.raises(grpc.RpcError) as e:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(large, timeout=10)
    code = e.value.code()
    assert code not in OTLP_ALWAYS_RETRYABLE, f"{code}: {e.value.details()}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        trailers = dict(e.value.trailing_metadata() or ())
        status = status_pb2.Status.FromString(trailers.get("grpc-status-details-bin", b""))
        assert not any(d.type_url.endswith("google.rpc.RetryInfo") for d in status.details), status


def test_attribute_caps_drop_and_cut_as_the_sdks_do(shared_oxeye: Oxeye):
    """A client that ignores the SDKs' limits sends 200 attributes, one of them 100 KB long:
    oxeye keeps the first 128 (the SDKs' default), records the other 72 in
    dropped_attributes_count, cuts the long value to 16 KiB, and counts both in /metrics."""
    before_dropped = shared_oxeye.metric("oxeye_collector_attributes_dropped_total", signal="traces")
    before_cut = shared_oxeye.metric("oxeye_collector_attribute_values_truncated_total", signal="traces")
    tid = random_trace_id()
    attributes = {"big": "é" * 50_000} | {f"k{i:03d}": i for i in range(199)}
    r = shared_oxeye.post_otlp(
        "traces", trace_request([span(tid, attributes=attributes)], service="caps").SerializeToString()
    )
    assert r.status_code == 200, r.text
    rows = shared_oxeye.wait_rows(
        f"""SELECT cardinality(attributes) AS kept, dropped_attributes_count AS dropped,
                   octet_length(attributes['big']) AS big_bytes, attributes['k126'] AS k126,
                   attributes['k127'] AS k127
            FROM spans WHERE trace_id = '{tid.hex()}'""",
        1,
    )
    # "big" first, then k000..k126: 128 kept, k127 and later dropped.
    assert rows == [{"kept": 128, "dropped": 72, "big_bytes": 16 * 1024, "k126": "126", "k127": None}], rows
    assert shared_oxeye.metric("oxeye_collector_attributes_dropped_total", signal="traces") - before_dropped == 72
    assert shared_oxeye.metric("oxeye_collector_attribute_values_truncated_total", signal="traces") - before_cut == 1
